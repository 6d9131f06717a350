"""PNG plots of the protocol's results (matplotlib, Agg backend: no display needed).

- `learning_curves`: training loss against training tokens, the mean over seeds, one line per model.
- `metric_by_model`: each model's headline metric with its interval, baselines as horizontal lines.
- `metric_by_length`: the headline metric against sequence length with interval bands.
- `cost_by_length`: tokens/s and train-step memory against length, log-log.
- `metric_by_position`: bits per byte against position in the document (bucket midpoints, log x), one
  line and interval band per model (`seqjax.experiment.positions.position_curve`).

matplotlib comes with the `experiments` extra (and `notebook`, `all`, `test`); without it the first plot
raises an ImportError naming it (`seqjax.common.extras.require`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.common.extras import require

__all__ = [
    "cost_by_length",
    "learning_curves",
    "metric_by_length",
    "metric_by_model",
    "metric_by_position",
    "read_train_losses",
]


def _pyplot() -> Any:
    require(__name__, "experiments", "matplotlib")
    import matplotlib

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


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def learning_curves(summary: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
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
    return _save(fig, path)


def metric_by_model(summary: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
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
    return _save(fig, path)


def metric_by_length(
    summaries: Mapping[int, Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "",
    baselines: Sequence[str] = (),
) -> Path:
    """The headline metric against length, one line and interval band per model (log-2 length axis);
    the named baselines dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lengths = sorted(summaries)
    models = sorted({r["model"] for s in summaries.values() for r in s["models"]})
    for i, model in enumerate(models):
        points = [(n, r) for n in lengths for r in summaries[n]["models"] if r["model"] == model]
        if not points:
            continue
        xs = [n for n, _ in points]
        ax.plot(xs, [r["estimate"] for _, r in points], marker="o", color=f"C{i % 10}", label=model)
        ax.fill_between(
            xs, [r["low"] for _, r in points], [r["high"] for _, r in points], color=f"C{i % 10}", alpha=0.15
        )
    for name in baselines:
        points = [(n, b) for n in lengths for b in summaries[n]["baselines"] if b["model"] == name]
        if points:
            ax.plot(
                [n for n, _ in points], [b["estimate"] for _, b in points], "k--", linewidth=0.8, label=name
            )
    first = summaries[lengths[0]]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(f"{first['metric']} ({first['confidence_level']:.1%} CI)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def cost_by_length(summaries: Mapping[int, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Training tokens/s and XLA's train-step memory against length, log-log, one line per model."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    lengths = sorted(summaries)
    models = sorted({r["model"] for s in summaries.values() for r in s["models"]})
    for i, model in enumerate(models):
        rows = [(n, r) for n in lengths for r in summaries[n]["models"] if r["model"] == model]
        xs = [n for n, _ in rows]
        left.plot(xs, [r["tokens_per_s"] for _, r in rows], marker="o", color=f"C{i % 10}", label=model)
        memory = [(n, r["step_memory_bytes"]) for n, r in rows if r.get("step_memory_bytes")]
        if memory:
            right.plot(
                [n for n, _ in memory],
                [m / 2**20 for _, m in memory],
                marker="o",
                color=f"C{i % 10}",
                label=model,
            )
    for ax, label in ((left, "train tokens/s"), (right, "train-step memory (MiB, XLA plan)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
    left.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def metric_by_position(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str = "bits_per_byte",
    title: str = "",
) -> Path:
    """`metric` ("bits_per_byte" or "perplexity") against position in the document, one line and
    interval band per model: `curves` maps a model's name (e.g. "lstm 4k, carried") to its
    `position_curve`. x is each bucket's midpoint in bytes (log scale; the open last bucket at 1.5 × its
    start), so a model that uses long context slopes down.

    >>> from seqjax.experiment.positions import position_curve  # doctest: +SKIP
    >>> metric_by_position({"gla": position_curve(seeds, edges)}, "positions.png")  # doctest: +SKIP
    """
    if metric not in ("bits_per_byte", "perplexity"):
        raise ValueError(
            f"metric_by_position: metric must be 'bits_per_byte' or 'perplexity', got {metric!r}."
        )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    level = None
    for i, (model, curve) in enumerate(curves.items()):
        rows = [b for b in curve["buckets"] if b["documents"] > 0]
        if not rows:
            continue
        xs = [b["midpoint"] for b in rows]
        values = [b[metric] for b in rows]
        color = f"C{i % 10}"
        ax.plot(xs, [v["estimate"] for v in values], marker="o", color=color, label=model)
        ax.fill_between(xs, [v["low"] for v in values], [v["high"] for v in values], color=color, alpha=0.15)
        level = curve.get("confidence_level", level)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in the document (bytes, bucket midpoint)")
    interval = f" ({level:.0%} CI)" if level else " (bootstrap CI)"
    ax.set_ylabel(("bits per byte" if metric == "bits_per_byte" else "perplexity per token") + interval)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)
