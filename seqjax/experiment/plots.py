"""Plots of the protocol's results and of the committed benchmark tables (matplotlib).

- `learning_curves`: training loss against training tokens, the mean over seeds, one line per model.
- `metric_by_model`: each model's headline metric with its interval, baselines as horizontal lines.
- `metric_by_length`: the headline metric against sequence length with interval bands.
- `cost_by_length`: training speed (tokens per CPU second, or tokens/s) and train-step memory against
  length, log-log.
- `metric_by_training_examples`: a learning curve, the metric against the training examples (log x),
  one color per model, solid without augmentation and dotted with, the baseline dashed.
- `metric_by_position`: bits per byte against position in the document (bucket midpoints, log x), one
  line and interval band per model (`seqjax.experiment.positions.position_curve`).
- `by_length`: any {label: {length: value}} series against length, one panel each (the benchmarks).
- `run_metrics`: one training run's loss and eval metric against the step (`metrics.jsonl` records).
- `cells_figure`, `models_figure`, `memory_scaling_figure`, `crossover_figure`, `linformer_figure`: the
  committed benchmark tables and experiment results, by length (the notebook
  `experiments/notebooks/results.ipynb` shows them);
- `guide_figures`: those figures as the PNG files of `docs/choosing_a_cell.md`
  (`python -m seqjax.experiment.plots --out=docs/images`).

Every plotting function takes `path`: given, the figure is written there as a PNG, closed, and the path
returned (scripts); None (the default), the matplotlib Figure is returned open, so a notebook shows it.

Backend: a script with no backend chosen gets Agg (no display needed). Where one is chosen, it is left
alone: the `MPLBACKEND` variable, a `matplotlib.pyplot` imported earlier (with `matplotlib.use(...)`
before it), or an IPython kernel (a notebook's inline backend).

matplotlib comes with the `experiments` extra (and `notebook`, `all`, `test`); without it the first plot
raises an ImportError naming it (`seqjax.common.extras.require`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seqjax.common.extras import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GUIDE_BASELINES",
    "backend_is_chosen",
    "by_length",
    "cells_figure",
    "cost_by_length",
    "crossover_figure",
    "guide_figures",
    "learning_curves",
    "linformer_figure",
    "memory_scaling_figure",
    "metric_by_length",
    "metric_by_model",
    "metric_by_position",
    "metric_by_training_examples",
    "models_figure",
    "read_train_losses",
    "run_metrics",
]


def backend_is_chosen(
    environ: Mapping[str, str] = os.environ, modules: Mapping[str, Any] = sys.modules
) -> bool:
    """True when something other than this module has chosen matplotlib's backend: `MPLBACKEND`, an
    imported `matplotlib.pyplot`, or a running IPython shell (a notebook kernel's inline backend).

        >>> backend_is_chosen(environ={"MPLBACKEND": "Agg"}, modules={})
        True
        >>> backend_is_chosen(environ={}, modules={})
        False
    """
    if environ.get("MPLBACKEND") or "matplotlib.pyplot" in modules:
        return True
    ipython = modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def _pyplot() -> Any:
    require(__name__, "experiments", "matplotlib")
    import matplotlib

    # Forcing Agg unconditionally (as this module once did) switched a notebook's inline backend off, so
    # its figures never showed; scripts still need Agg where no display exists and nothing chose.
    if not backend_is_chosen():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_train_losses(workdir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, train losses) from a run's `metrics.jsonl` (the trainer's log)."""
    steps, losses = [], []
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "loss" in record:
            steps.append(record["step"])
            losses.append(record["loss"])
    return np.asarray(steps, np.float64), np.asarray(losses, np.float64)


def _series_style(i: int) -> dict[str, str]:
    """Color, marker and line style of the i-th model of a plot: the 10 default colors, and past 10 another
    marker and dash, so that 11+ models (the synthetic-memory plots have 12) stay told apart."""
    lap = i // 10
    return {"color": f"C{i % 10}", "marker": "osD^v"[lap % 5], "linestyle": ("-", "--", "-.")[lap % 3]}


def _finish(fig: Any, path: str | Path | None, *, bottom: float = 0.0) -> Path | Figure:
    """Writes `fig` to `path` and closes it (returns the path), or returns it open when `path` is None.
    `bottom`: the fraction of the height kept free under the axes (for a figure legend)."""
    fig.tight_layout(rect=(0, bottom, 1, 1))
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def learning_curves(
    summary: Mapping[str, Any], path: str | Path | None = None, *, title: str = ""
) -> Path | Figure:
    """Training loss (mean over seeds) against training tokens, one line per model of a summary."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row in summary["models"]:
        curves = [read_train_losses(w) for w in row["workdirs"]]
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = curves[0][0][:n]
        loss = np.mean([c[1][:n] for c in curves], axis=0)
        tokens_per_step = row["train_tokens"] / max(row["steps"], 1)
        ax.plot(steps * tokens_per_step, loss, label=row["model"])
    ax.set_xlabel("training tokens")
    ax.set_ylabel("train loss (mean over seeds)")
    ax.set_title(title)
    ax.legend()
    return _finish(fig, path)


def metric_by_model(
    summary: Mapping[str, Any], path: str | Path | None = None, *, title: str = ""
) -> Path | Figure:
    """Each model's headline metric with its interval; each baseline as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rows = summary["models"]
    x = np.arange(len(rows))
    estimate = np.array([r["estimate"] for r in rows])
    low = np.array([r["low"] for r in rows])
    high = np.array([r["high"] for r in rows])
    ax.errorbar(x, estimate, yerr=[estimate - low, high - estimate], fmt="o", capsize=4)
    for i, b in enumerate(summary["baselines"]):
        if math.isfinite(b["estimate"]):
            ax.axhline(
                b["estimate"], linestyle="--", linewidth=0.8, color=f"C{(i + 1) % 10}", label=b["model"]
            )
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_ylabel(f"{summary['metric']} ({summary['confidence_level']:.0%} CI)")
    ax.set_title(title)
    if summary["baselines"]:
        ax.legend(fontsize=7)
    return _finish(fig, path)


def metric_by_length(
    summaries: Mapping[int, Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    title: str = "",
    baselines: Sequence[str] = (),
    xlabel: str = "sequence length",
    reference: tuple[float, str] | None = None,
) -> Path | Figure:
    """The headline metric against length, one line and interval band per model (log-2 length axis);
    the named baselines dashed; `xlabel` names the length (e.g. "look-back (steps)"); `reference` =
    (value, label): a dotted horizontal line (a threshold)."""
    plt = _pyplot()
    lengths = sorted(summaries)
    models = sorted({r["model"] for s in summaries.values() for r in s["models"]})
    # Past 8 lines a legend inside the axes hides the data: it goes to the right, in a wider figure.
    outside = len(models) + len(baselines) > 8
    fig, ax = plt.subplots(figsize=(8.4 if outside else 6.4, 4.2))
    for i, model in enumerate(models):
        points = [(n, r) for n in lengths for r in summaries[n]["models"] if r["model"] == model]
        if not points:
            continue
        xs = [n for n, _ in points]
        style = _series_style(i)
        ax.plot(xs, [r["estimate"] for _, r in points], **style, label=model)
        ax.fill_between(
            xs,
            [r["low"] for _, r in points],
            [r["high"] for _, r in points],
            color=style["color"],
            alpha=0.15,
        )
    for j, name in enumerate(baselines):
        points = [(n, b) for n in lengths for b in summaries[n]["baselines"] if b["model"] == name]
        if points:
            style = ("--", ":", "-.")[j % 3]  # black like every baseline, told apart by the dash
            ax.plot(
                [n for n, _ in points],
                [b["estimate"] for _, b in points],
                "k" + style,
                linewidth=0.9,
                label=name,
            )
    if reference is not None:
        ax.axhline(reference[0], color="0.4", linestyle=":", linewidth=0.9, label=reference[1])
    first = summaries[lengths[0]]
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(_length_formatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{first['metric']} ({first['confidence_level']:.1%} CI)")
    ax.set_title(textwrap.fill(title, width=70), fontsize=10)
    if outside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.legend(fontsize=7)
    return _finish(fig, path)


def metric_by_training_examples(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    title: str = "",
    ylabel: str = "balanced accuracy",
    baseline: Sequence[Mapping[str, Any]] = (),
    styles: Mapping[str, str] | None = None,
) -> Path | Figure:
    """Learning curves: each row {"n", "model", "arm", "estimate", "low", "high"} is one point; one color
    per model, one line style per arm (`styles`, default "none" solid and "augmented" dotted), interval
    bands; `baseline` rows ({"n", "model", "estimate", "low", "high"}) black and dashed. Log-10 x axis.

        >>> import matplotlib; matplotlib.use("Agg")
        >>> rows = [{"n": n, "model": "lstm", "arm": a, "estimate": e, "low": e - 0.1, "high": e + 0.1}
        ...         for n, e in ((50, 0.6), (500, 0.8)) for a in ("none", "augmented")]
        >>> fig = metric_by_training_examples(rows)
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['lstm', 'lstm (augmented)']
        >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    plt = _pyplot()
    styles = dict(styles or {"none": "-", "augmented": ":"})
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, model in enumerate(models):
        for arm, style in styles.items():
            points = sorted((r["n"], r) for r in rows if r["model"] == model and r.get("arm") == arm)
            if not points:
                continue
            xs = [n for n, _ in points]
            label = model if arm == "none" else f"{model} ({arm})"
            ax.plot(
                xs,
                [r["estimate"] for _, r in points],
                style,
                marker="o",
                markersize=3.5,
                color=f"C{i % 10}",
                label=label,
            )
            ax.fill_between(
                xs,
                [r["low"] for _, r in points],
                [r["high"] for _, r in points],
                color=f"C{i % 10}",
                alpha=0.12 if arm == "none" else 0.06,
            )
    if baseline:
        points = sorted((r["n"], r) for r in baseline)
        xs = [n for n, _ in points]
        ax.plot(xs, [r["estimate"] for _, r in points], "k--", linewidth=1.0, label=points[0][1]["model"])
        ax.fill_between(
            xs, [r["low"] for _, r in points], [r["high"] for _, r in points], color="k", alpha=0.06
        )
    ax.set_xscale("log")
    sizes = sorted({r["n"] for r in [*rows, *baseline]})
    ax.set_xticks(sizes, [f"{n / 1000:g}k" if n >= 1000 else str(n) for n in sizes])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel("training examples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _finish(fig, path)


def cost_by_length(
    summaries: Mapping[int, Mapping[str, Any]], path: str | Path | None = None, *, title: str = ""
) -> Path | Figure:
    """Training speed and XLA's train-step memory against length, log-log, one line per model. The speed
    is in training tokens per CPU second where every run kept its CPU time (`tokens_per_cpu_s`: on a
    CPU host shared with other jobs, or paused, wall-clock tokens/s measure the sharing as much as the
    model), else in wall-clock tokens/s, and the axis says which."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    lengths = sorted(summaries)
    models = sorted({r["model"] for s in summaries.values() for r in s["models"]})
    every = [r for s in summaries.values() for r in s["models"]]
    per_cpu = bool(every) and all(r.get("tokens_per_cpu_s") for r in every)
    speed_key = "tokens_per_cpu_s" if per_cpu else "tokens_per_s"
    speed_label = "train tokens per CPU second" if per_cpu else "train tokens/s (wall clock)"
    for i, model in enumerate(models):
        rows = [(n, r) for n in lengths for r in summaries[n]["models"] if r["model"] == model]
        xs = [n for n, _ in rows]
        style = _series_style(i)
        left.plot(xs, [r[speed_key] for _, r in rows], **style, label=model)
        memory = [(n, r["step_memory_bytes"]) for n, r in rows if r.get("step_memory_bytes")]
        if memory:
            right.plot(
                [n for n, _ in memory],
                [m / 2**20 for _, m in memory],
                **style,
                label=model,
            )
    for ax, label in ((left, speed_label), (right, "train-step memory (MiB, XLA plan)")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_length_formatter())
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
    left.legend(fontsize=7)
    fig.suptitle(title)
    return _finish(fig, path)


def by_length(
    panels: Mapping[str, Mapping[str, Mapping[int, float]]],
    path: str | Path | None = None,
    *,
    ylabels: str | Mapping[str, str] = "",
    ncols: int | None = None,
    title: str = "",
    log_y: bool = True,
    sharey: bool | str = False,
) -> Path | Figure:
    """Series against sequence length, one panel per key of `panels` (its title), one line per label of
    the panel's {label: {length: value}}; log-2 length axis, log y unless `log_y=False`. A label keeps
    its color in every panel, so the same cell is the same color in a speed and a memory panel.

        >>> import matplotlib; matplotlib.use("Agg")
        >>> fig = by_length({"train tokens/s": {"LSTM": {1024: 2e4, 4096: 2.1e4}, "attention": {1024: 9e3}}})
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['LSTM', 'attention']
        >>> import matplotlib.pyplot as plt; plt.close(fig)  # a notebook shows it instead
    """
    plt = _pyplot()
    names = list(panels)
    ncols = ncols or min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.4 * nrows), sharey=sharey, squeeze=False)
    labels = list(dict.fromkeys(label for panel in panels.values() for label in panel))
    colors = {
        label: plt.get_cmap("tab20" if len(labels) > 10 else "tab10")(i % 20)
        for i, label in enumerate(labels)
    }
    # Panels that all show the same lines share one legend under them (it would hide data in each).
    label_sets = {tuple(panel) for panel in panels.values() if panel}
    shared_legend = len(label_sets) == 1 and len(names) > 1
    for ax, name in zip(axes.flat, names, strict=False):
        for label, points in panels[name].items():
            if not points:
                continue
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", markersize=4, color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_length_formatter())
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(ylabels if isinstance(ylabels, str) else ylabels.get(name, ""))
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if panels[name] and not shared_legend:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(textwrap.fill(title, width=int(43 * ncols)), fontsize=11)
    bottom = 0.0
    if shared_legend:
        # about 14 characters of 8-point text per inch of figure width, plus the line sample
        columns = max(1, min(len(labels), int(4.3 * ncols * 14 / (max(map(len, labels)) + 8))))
        rows = math.ceil(len(labels) / columns)
        bottom = min(0.4, 0.06 * rows / nrows + 0.03)
        handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
        fig.legend(
            [handles[x] for x in labels if x in handles],
            [x for x in labels if x in handles],
            loc="lower center",
            ncol=columns,
            fontsize=8,
            frameon=False,
        )
    return _finish(fig, path, bottom=bottom)


def _length_label(value: float, _position: Any = None) -> str:
    """1024 → "1k", 65536 → "64k", 512 → "512" (tick labels of a log-2 length axis)."""
    n = round(value)
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else f"{value:g}"


def _length_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(_length_label)


def run_metrics(
    records: str | Path | Sequence[Mapping[str, Any]],
    metric: str,
    path: str | Path | None = None,
    *,
    title: str = "",
) -> Path | Figure:
    """One training run: train loss against the step (left) and the eval `metric` against the step
    (right), from its `metrics.jsonl` records (`seqjax.train.metrics_log.read_records`) or its workdir.

        >>> import matplotlib; matplotlib.use("Agg")
        >>> records = [{"step": 1, "split": "train", "loss": 1.4}, {"step": 2, "split": "train", "loss": 1.1},
        ...            {"step": 2, "split": "eval", "accuracy": 0.5}]
        >>> fig = run_metrics(records, "accuracy")
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['train loss', 'eval accuracy']
        >>> import matplotlib.pyplot as plt; plt.close(fig)
    """
    if isinstance(records, str | Path):
        from seqjax.train.metrics_log import read_records

        records = read_records(str(records))
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]
    evals = [(r["step"], r[metric]) for r in records if r.get("split") == "eval" and metric in r]
    if train:
        left.plot(*zip(*train, strict=True), color="C0")
    if evals:
        right.plot(*zip(*evals, strict=True), marker="o", color="C1")
    left.set_ylabel("train loss")
    right.set_ylabel(f"eval {metric}")
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# ----------------------------------------------------------------------------------------------------
# The figures of docs/choosing_a_cell.md, from the committed tables.

#: The crossover plot's dashed lines: the weakest informative baseline and the k-mer one that solves it.
GUIDE_BASELINES = ("GC content + logistic regression", "6-mer frequencies + logistic regression")


def cells_figure(root: str | Path, platform: str, path: str | Path | None = None) -> Path | Figure:
    """Each cell's forward + backward tokens/s (top row) and XLA peak memory (bottom row) against length,
    one panel per family, from `root/benchmarks/{rnn,ssm,linear_attention,attention}_<platform>.md`
    (seqjax's default form of each cell: `benchmarks.CELL_LABELS`). The title names the machine."""
    from seqjax.experiment import benchmarks

    timings, files = benchmarks.read_cell_benchmarks(root, platform)
    if not timings:
        raise FileNotFoundError(
            f"no cell benchmark tables for {platform!r} under {Path(root) / 'benchmarks'}"
        )
    panels = {
        f"{family}: tokens/s": s for family, s in benchmarks.family_series(timings, "tokens_per_s").items()
    }
    panels.update(
        {f"{family}: XLA peak MiB": s for family, s in benchmarks.family_series(timings, "peak_mib").items()}
    )
    machine = ", ".join(sorted({f.machine for f in files}))
    partial = " (partial: missing points were not measured)" if any(f.partial for f in files) else ""
    title = f"One cell, forward + backward, batch 8, input width 128 — measured on {machine}{partial}"
    return by_length(panels, path, ncols=len(panels) // 2, sharey="row", title=title)


def models_figure(root: str | Path, platform: str, path: str | Path | None = None) -> Path | Figure:
    """`root/benchmarks/models_<platform>.md`: whole byte-level LMs at equal parameter count, training
    tokens/s at a fixed 65,536 tokens per batch, and generation time and cache size per token."""
    from seqjax.experiment import benchmarks

    bench = benchmarks.read_benchmark(Path(root) / "benchmarks" / f"models_{platform}.md")
    generation = bench.table("Generation")

    def cache_kib(cell: str) -> float | None:
        size = benchmarks.size_in_bytes(cell.split("/")[-1]) if "/" in cell else None
        return None if size is None else size / 2**10

    panels = {
        "training tokens/s (65,536 tokens per batch)": benchmarks.series_by_length(bench.table("tokens/s")),
        "generation ms per token (batch 1)": benchmarks.series_by_length(
            generation, lambda cell: benchmarks.number(cell.split("/")[0])
        ),
        "generation cache KiB": benchmarks.series_by_length(generation, cache_kib),
    }
    title = f"2-layer byte LMs of width 128 at equal parameter count — measured on {bench.machine}"
    if bench.partial:
        title += " (partial: missing points were not measured)"
    return by_length(panels, path, title=title)


def memory_scaling_figure(results: str | Path, path: str | Path | None = None) -> Path | Figure:
    """`experiments/memory_scaling.py`'s JSON: the train step's XLA memory plan and the generation state
    after L tokens, per model variant."""
    data = json.loads(Path(results).read_text())
    train_mib: dict[str, dict[int, float]] = {}
    state_kib: dict[str, dict[int, float]] = {}
    for row in data["rows"]:
        train_mib.setdefault(row["variant"], {})[row["length"]] = row["train_bytes"] / 2**20
        state_kib.setdefault(row["variant"], {})[row["length"]] = row["state_bytes"] / 2**10
    panels = {"train step, XLA plan (MiB)": train_mib, "generation state after L tokens (KiB)": state_kib}
    title = (
        f"Document LM, size {data['size']}, batch {data['batch']}: XLA memory plans "
        f"(compiled on platform {data['platform']}, nothing run)"
    )
    return by_length(panels, path, title=title)


def crossover_figure(
    results: str | Path, path: str | Path | None = None, *, baselines: Sequence[str] | None = None
) -> Path | Figure:
    """`experiments/length_crossover.py`'s JSON: the headline metric by length with its intervals, the
    named baselines dashed (default: `GUIDE_BASELINES` where the task has them, else the table's
    strongest baseline, e.g. a Kneser–Ney model for documents), and the claim's verdict in the title."""
    data = json.loads(Path(results).read_text())
    summaries = {s["length"]: s for s in data["summaries"]}
    present = {b["model"] for s in data["summaries"] for b in s["baselines"]}
    if baselines is None:
        strongest = data["summaries"][0].get("strongest_baseline")
        baselines = [b for b in GUIDE_BASELINES if b in present] or ([strongest] if strongest else [])
    title = (
        f"{data['config']} {data['options']}, platform {data['platform']}: "
        f"{data['verdict']['claim']}? {data['verdict']['verdict']}"
    )
    return metric_by_length(summaries, path, title=title, baselines=[b for b in baselines if b in present])


def linformer_figure(root: str | Path, path: str | Path | None = None) -> Path | Figure:
    """`root/benchmarks/linformer_cpu.md`: Linformer against exact bidirectional attention, seconds and
    XLA peak memory by length."""
    from seqjax.experiment import benchmarks

    bench = benchmarks.read_benchmark(Path(root) / "benchmarks" / "linformer_cpu.md")
    timings = benchmarks.cell_timings(bench)
    panels = {
        "forward + backward seconds": benchmarks.cell_series(timings, "median_s"),
        "XLA peak MiB": benchmarks.cell_series(timings, "peak_mib"),
    }
    title = (
        f"Linformer vs exact bidirectional attention, batch {bench.batch}, 2 heads of 32 — {bench.machine}"
    )
    return by_length(panels, path, title=title)


def guide_figures(root: str | Path = ".", out: str | Path = "docs/images") -> list[Path]:
    """Writes the PNG figures of `docs/choosing_a_cell.md` into `out`, from the repository's committed
    `benchmarks/*.md` and `experiments/results/*.json` (nothing is measured); returns their paths.

    `cells_{cpu,gpu}.png` (`cells_figure`), `models_{cpu,gpu}.png` (`models_figure`),
    `memory_scaling_cpu.png`, `length_crossover_<task>_<size>.png` and `linformer_cpu.png`; a figure
    whose table is not committed is left out.
    """
    root, out = Path(root), Path(out)
    results = root / "experiments" / "results"
    written = []
    for platform in ("cpu", "gpu"):
        if any((root / "benchmarks").glob(f"*_{platform}.md")):
            written.append(cells_figure(root, platform, out / f"cells_{platform}.png"))
        if (root / "benchmarks" / f"models_{platform}.md").exists():
            written.append(models_figure(root, platform, out / f"models_{platform}.png"))
    if (results / "memory_scaling_cpu_cpu.json").exists():
        written.append(
            memory_scaling_figure(results / "memory_scaling_cpu_cpu.json", out / "memory_scaling_cpu.png")
        )
    for path in sorted(results.glob("length_crossover_*.json")):
        name = path.stem.removeprefix("length_crossover_").rsplit("_", 1)[0]  # drop the platform suffix
        written.append(crossover_figure(path, out / f"length_crossover_{name}.png"))
    if (root / "benchmarks" / "linformer_cpu.md").exists():
        written.append(linformer_figure(root, out / "linformer_cpu.png"))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m seqjax.experiment.plots [--root=.] [--out=docs/images]`: the guide's figures."""
    parser = argparse.ArgumentParser(
        prog="python -m seqjax.experiment.plots", description=guide_figures.__doc__
    )
    parser.add_argument("--root", default=".", help="the repository root (benchmarks/, experiments/results/)")
    parser.add_argument("--out", default="docs/images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    for path in guide_figures(args.root, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()


def metric_by_position(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | Path | None = None,
    *,
    metric: str = "bits_per_byte",
    title: str = "",
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path | Figure:
    """`metric` ("bits_per_byte" or "perplexity") against position in the document, one line and
    interval band per model: `curves` maps a model's name (e.g. "lstm 4k, carried") to its
    `position_curve`. x is each bucket's midpoint in bytes (log scale; the open last bucket at 1.5 × its
    start), so a model that uses long context slopes down. `baselines` (name: `position_curve`, e.g. an
    n-gram model's) are drawn dashed in grey, without bands.

    >>> from seqjax.experiment.positions import position_curve  # doctest: +SKIP
    >>> metric_by_position({"gla": position_curve(seeds, edges)}, "positions.png")  # doctest: +SKIP
    """
    if metric not in ("bits_per_byte", "perplexity"):
        raise ValueError(
            f"metric_by_position: metric must be 'bits_per_byte' or 'perplexity', got {metric!r}."
        )
    plt = _pyplot()
    # Past 5 lines a legend inside the axes hides curves (they span the whole width): it goes to the
    # right, in a wider figure, in two columns past 20 lines, and the figure is as tall as it needs.
    lines = len(curves) + len(baselines or {})
    outside = lines > 5
    columns = 2 if lines > 20 else 1
    height = max(4.2, 0.8 + 0.16 * math.ceil(lines / columns)) if outside else 4.2
    fig, ax = plt.subplots(figsize=((6.4 + 2.6 * columns) if outside else 6.4, height))
    level = None
    for i, (model, curve) in enumerate(curves.items()):
        rows = [b for b in curve["buckets"] if b["documents"] > 0]
        if not rows:
            continue
        xs = [b["midpoint"] for b in rows]
        values = [b[metric] for b in rows]
        style = _series_style(i)
        color = style["color"]
        ax.plot(xs, [v["estimate"] for v in values], **style, label=model)
        ax.fill_between(xs, [v["low"] for v in values], [v["high"] for v in values], color=color, alpha=0.15)
        level = curve.get("confidence_level", level)
    for j, (name, curve) in enumerate((baselines or {}).items()):
        rows = [b for b in curve["buckets"] if b["documents"] > 0]
        style = ("--", ":", "-.")[j % 3]
        ys = [b[metric]["estimate"] for b in rows]
        ax.plot([b["midpoint"] for b in rows], ys, style, color="0.4", marker="x", label=f"{name} (baseline)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the document (bytes, bucket midpoint)")
    interval = f" ({level:.0%} CI)" if level else " (bootstrap CI)"
    ax.set_ylabel(("bits per byte" if metric == "bits_per_byte" else "perplexity per token") + interval)
    ax.set_title(textwrap.fill(title, width=70), fontsize=10)
    if outside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, ncol=columns)
    else:
        ax.legend(fontsize=7)
    return _finish(fig, path)
