"""One comparison (one task, one length) summarised: every model's metric with its interval (and, under
"secondary" with the same cluster x seed bootstrap, `report.SECONDARY`: macro-F1 and MCC for
classification, MAE for forecasts), cost and
matched size, the strong baselines with theirs, each model's paired difference to the strongest baseline
(chosen on validation where the baselines' validation scores are given: `strongest_baseline`) on the
same test examples, the best of each family (chosen on validation) and their paired difference;
and the markdown tables of it. The summary is plain JSON-able data, so a table or a
plot can be redrawn from `*.json` without the predictions.

    >>> row = {"model": "lstm", "family": "recurrent", "estimate": 0.8, "low": 0.7, "high": 0.9,
    ...        "parameters": 1000, "ratio": 1.0, "learning_rate": 1e-3, "tokens_per_s": 5e4,
    ...        "flops_per_token": 6e3, "train_seconds": 10.0, "steps": 100, "train_tokens": 819200,
    ...        "step_memory_bytes": 2**20, "validation": 0.81, "seeds": 5}
    >>> model_table([row], "balanced_accuracy").splitlines()[2].split(" | ")[:5]
    ['| lstm', '0.8000 [0.7000, 0.9000]', '5', '1,000 (1.000)', '1e-03']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.experiment.protocol import HEADLINE, ModelResult
from seqjax.experiment.report import (
    SECONDARY,
    Claim,
    baseline_difference,
    baseline_interval,
    family_of,
    metric_interval,
    paired_difference,
)

__all__ = [
    "baseline_difference_table",
    "baseline_rows",
    "best_by_family",
    "metrics_table",
    "model_table",
    "strongest_baseline",
    "summarize_length",
]


def _ends(interval: Any) -> dict[str, float]:
    """{estimate, low, high} of a `BootstrapInterval` (NaN when it is None)."""
    if interval is None:
        return {"estimate": math.nan, "low": math.nan, "high": math.nan}
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high}


def baseline_rows(
    baselines: Sequence[Any],
    task: str,
    clusters: np.ndarray | None,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> list[dict[str, Any]]:
    """One row per `BaselineResult`: its headline metric with a cluster bootstrap interval (NaN ends when
    the baseline has no per-example values), name and settings (`baseline_table`'s input)."""
    metric = HEADLINE[task][0]
    kwargs = {"confidence_level": confidence_level, "n_resamples": n_resamples}
    rows = []
    for b in baselines:
        interval = baseline_interval(b, task, clusters, **kwargs)
        secondary = {
            name: {"estimate": float(b.metrics.get(name, math.nan)), "low": math.nan, "high": math.nan}
            if interval is None
            else _ends(baseline_interval(b, task, clusters, metric=name, **kwargs))
            for name in SECONDARY.get(task, ())
        }
        rows.append(
            {
                "model": b.name,
                "estimate": float(b.metrics.get(metric, math.nan)) if interval is None else interval.estimate,
                "low": math.nan if interval is None else interval.low,
                "high": math.nan if interval is None else interval.high,
                "settings": {k: str(v) for k, v in b.settings.items()},
                "secondary": secondary,
            }
        )
    return rows


def strongest_baseline(
    rows: Sequence[Mapping[str, Any]], larger: bool, validation: Mapping[str, float] | None = None
) -> tuple[Mapping[str, Any] | None, str]:
    """(the strongest of the baseline rows (`baseline_rows`) with a finite test estimate, what chose it):
    the best on `validation` (each baseline's headline metric on the validation split, by name:
    `comparison.baseline_validation_estimates`) when given, as the models' rates and families are
    chosen, so no test number picks the row the models are paired with; else (summaries without
    them) the best on test, which favours the baselines. A tie keeps the row listed first (the
    simpler baseline: the smaller k or n-gram order). (None, ...) when no row qualifies.

        >>> rows = [{"model": "3-gram", "estimate": 2.10}, {"model": "5-gram", "estimate": 2.05}]
        >>> strongest_baseline(rows, larger=False)[0]["model"]
        '5-gram'
        >>> strongest_baseline(rows, larger=False, validation={"3-gram": 2.0, "5-gram": 2.2})
        ({'model': '3-gram', 'estimate': 2.1}, 'validation')
    """
    finite = [r for r in rows if math.isfinite(r["estimate"])]
    pick = max if larger else min
    if validation is None:
        return (pick(finite, key=lambda r: r["estimate"]) if finite else None), "test"
    scored = [r for r in finite if math.isfinite(validation.get(r["model"], math.nan))]
    return (pick(scored, key=lambda r: validation[r["model"]]) if scored else None), "validation"


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def best_by_family(results: Mapping[str, ModelResult], metric: str, larger: bool) -> dict[str, str]:
    """Per family, the model whose seeds' mean validation metric is best (the test split is not used; a
    model whose mean is not finite, a seed having diverged, only where no other model is finite; a tie
    keeps the model met first)."""
    from seqjax.experiment.protocol import validation_rank

    best: dict[str, tuple[tuple[bool, float], str]] = {}
    for name, result in results.items():
        rank = validation_rank(float(np.mean([r.validation[metric] for r in result.seeds])), larger)
        family = family_of(name)
        if family not in best or rank < best[family][0]:
            best[family] = (rank, name)
    return {family: name for family, (_, name) in best.items()}


def summarize_length(
    results: Mapping[str, ModelResult],
    task: str,
    *,
    baselines: Sequence[Any] = (),
    baseline_clusters: np.ndarray | None = None,
    claims: Sequence[Claim] = (),
    horizon: int | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    baseline_validation: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The summary of one comparison (module docstring). `confidence_level` applies to every interval:
    pass 1 - alpha / m for intervals that hold jointly over m lengths (Bonferroni). `horizon`: a
    forecaster's, for the claims' Diebold-Mariano lag window (needed when runs were carried without
    their targets). `baseline_validation`: each baseline's validation score, by name, which chooses
    the strongest baseline (`strongest_baseline`; without it, the test split chooses)."""
    metric, larger = HEADLINE[task]
    rows = []
    for name, result in results.items():
        interval = metric_interval(
            result.predictions, task, confidence_level=confidence_level, n_resamples=n_resamples
        )
        seeds = result.seeds
        no_cpu_time = any(r.train_cpu_seconds is None or not r.train_cpu_seconds > 0 for r in seeds)
        secondary = {
            name: _ends(
                metric_interval(
                    result.predictions,
                    task,
                    metric=name,
                    confidence_level=confidence_level,
                    n_resamples=n_resamples,
                )
            )
            for name in SECONDARY.get(task, ())
        }
        rows.append(
            {
                "model": name,
                "family": family_of(name),
                "estimate": interval.estimate,
                "low": interval.low,
                "high": interval.high,
                "n_clusters": interval.n_clusters,
                "secondary": secondary,
                "seeds": len(seeds),
                "seed_values": [r.test[metric] for r in seeds],
                "validation": float(np.mean([r.validation[metric] for r in seeds])),
                "learning_rate": result.learning_rate,
                "grid": {f"{r.learning_rate:g}": r.validation[metric] for r in result.grid},
                # a rate at the end of the grid may be short of the best one: widen the grid there
                "grid_edge": len(result.grid) > 1
                and result.learning_rate
                in (min(r.learning_rate for r in result.grid), max(r.learning_rate for r in result.grid)),
                "parameters": seeds[0].num_params,
                "ratio": result.matched["ratio"],
                # parameters on the sequence-length axis (the Linformer's E), outside the match
                "unmatched": result.matched.get("unmatched", 0),
                "override": result.matched["override"],
                "steps": seeds[0].steps,
                "train_tokens": seeds[0].train_tokens,
                "tokens_per_s": _median([r.tokens_per_s for r in seeds]),
                "train_seconds": _median([r.train_seconds for r in seeds]),
                # None unless every seed's record kept it (records before 2026-12-05 did not)
                "train_cpu_seconds": None if no_cpu_time else _median([r.train_cpu_seconds for r in seeds]),
                # training tokens per CPU second (the timed steps'): a cost that sharing and pauses leave
                "tokens_per_cpu_s": None
                if no_cpu_time
                else _median([r.tokens_per_s * r.train_seconds / r.train_cpu_seconds for r in seeds]),
                "compile_seconds": _median([r.compile_seconds for r in seeds]),
                "flops_per_token": result.flops_per_token,
                "step_memory_bytes": seeds[0].step_memory_bytes,
                "peak_memory_bytes": max(r.peak_memory_bytes for r in seeds),
                "predictions": list(result.predictions),
                "workdirs": [r.workdir for r in seeds],
            }
        )
    baselines_found = baseline_rows(
        baselines, task, baseline_clusters, confidence_level=confidence_level, n_resamples=n_resamples
    )
    best = best_by_family(results, metric, larger)
    comparisons = []
    for claim in claims:
        if claim.better not in best or claim.worse not in best:
            comparisons.append(
                {"claim": claim.name, "missing": [f for f in (claim.better, claim.worse) if f not in best]}
            )
            continue
        a, b = best[claim.better], best[claim.worse]
        difference = paired_difference(
            results[a].predictions,
            results[b].predictions,
            task,
            horizon=horizon,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
        )
        comparisons.append({"claim": claim.name, "better": a, "worse": b, **difference})
    if baseline_validation is not None:
        for row in baselines_found:
            row["validation"] = float(baseline_validation.get(row["model"], math.nan))
    strongest, chosen_on = strongest_baseline(baselines_found, larger, baseline_validation)
    against = {}
    if strongest is not None:
        found = next(b for b in baselines if b.name == strongest["model"])
        for name, result in results.items():
            try:
                against[name] = baseline_difference(
                    result.predictions,
                    found,
                    task,
                    confidence_level=confidence_level,
                    n_resamples=n_resamples,
                )
            except ValueError as error:  # kept in the summary, not lost with the report
                against[name] = {"error": str(error)}
    return {
        "task": task,
        "metric": metric,
        "larger_is_better": larger,
        "confidence_level": confidence_level,
        "models": rows,
        "baselines": baselines_found,
        "strongest_baseline": None if strongest is None else strongest["model"],
        # which split chose it: "validation", or "test" (no validation scores given; favours the baseline)
        "strongest_chosen_on": chosen_on,
        # model minus the strongest baseline on the same test examples (None: the baseline has no values
        # for those examples, e.g. whole documents)
        "against_strongest_baseline": against,
        "best_by_family": best,
        "comparisons": comparisons,
    }


def baseline_difference_table(summary: Mapping[str, Any]) -> str:
    """The markdown table of each model's paired difference to the strongest baseline (a summary's
    "against_strongest_baseline"); "" when there is none to show.

    >>> summary = {"metric": "bits_per_byte", "confidence_level": 0.95, "strongest_baseline": "5-gram",
    ...            "larger_is_better": False,
    ...            "against_strongest_baseline": {"lstm": {"estimate": 1.0, "low": 0.9, "high": 1.1,
    ...                                                    "p_value": 0.0}}}
    >>> baseline_difference_table(summary).splitlines()[-1]
    '| lstm | +1.0000 [+0.9000, +1.1000] | 0.0000 | the baseline |'
    """
    against = {k: v for k, v in (summary.get("against_strongest_baseline") or {}).items() if v is not None}
    if not against:
        return ""
    metric, level, larger = summary["metric"], summary["confidence_level"], summary["larger_is_better"]
    # summaries written before 2026-12-06 22:40 UTC chose it on test
    chosen_on = summary.get("strongest_chosen_on", "test")
    lines = [
        f"| model | {metric}: model − {summary['strongest_baseline']} (chosen on {chosen_on}) "
        f"[{level:.1%} CI] | bootstrap p | better on this interval |",
        "|---|---:|---:|---|",
    ]
    for model, d in against.items():
        if "error" in d:
            lines.append(f"| {model} | not paired: {d['error']} | | |")
            continue
        model_ahead = d["low"] > 0 if larger else d["high"] < 0
        baseline_ahead = d["high"] < 0 if larger else d["low"] > 0
        better = "the model" if model_ahead else "the baseline" if baseline_ahead else "neither"
        lines.append(
            f"| {model} | {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] | "
            f"{d['p_value']:.4f} | {better} |"
        )
    return "\n".join(lines)


def _parameters(row: Mapping[str, Any]) -> str:
    """ "437,742 (1.000)"; a model with parameters outside the match (the Linformer's E, on the sequence
    length axis) says how many: "1,224,174 (1.000 without the 786,432 on the length axis)"."""
    text = f"{row['parameters']:,} ({row['ratio']:.3f}"
    if row.get("unmatched"):
        text += f" without the {row['unmatched']:,} on the length axis"
    return text + ")"


def _memory(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**20:.1f} MiB"


#: Under every model table: what its time columns measure.
TIME_NOTE = (
    "tokens/s and train s: wall-clock time of the training steps (batch fetch to finished update; "
    "medians over seeds), on the machine as it was: where other jobs shared the cores, or the run was "
    "paused, they grow with that, so they compare models only on a machine given to one run (the "
    "`benchmarks/` tables are timed so). CPU s: the process's CPU time over the same steps, which "
    "pauses do not inflate (host time only on an accelerator; n/a for runs recorded before it was kept)."
)


def _cpu_seconds(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0f}"


def model_table(rows: Sequence[Mapping[str, Any]], metric: str, confidence_level: float = 0.95) -> str:
    """The per-model markdown table of a summary's "models"."""
    header = [
        "model",
        f"{metric} [{confidence_level:.1%} CI]",
        "seeds",
        "parameters (x target)",
        "lr",
        "train tokens",
        "steps (trained = scored)",
        "tokens/s",
        "FLOPs/token",
        "train s",
        "CPU s",
        "step memory",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    f"{r['estimate']:.4f} [{r['low']:.4f}, {r['high']:.4f}]",
                    str(r["seeds"]),
                    _parameters(r),
                    f"{r['learning_rate']:.0e}" + (" (edge)" if r.get("grid_edge") else ""),
                    f"{r['train_tokens']:,}",
                    str(r["steps"]),
                    f"{r['tokens_per_s']:,.0f}",
                    f"{r['flops_per_token']:.1e}",
                    f"{r['train_seconds']:.0f}",
                    _cpu_seconds(r.get("train_cpu_seconds")),
                    _memory(r.get("step_memory_bytes")),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n\n" + TIME_NOTE


def metrics_table(
    rows: Sequence[Mapping[str, Any]], metric: str, confidence_level: float = 0.95, label: str = "model"
) -> str:
    """One row per model or baseline: the headline `metric` and each secondary metric (the rows'
    "secondary", e.g. macro_f1 and mcc), each with its interval.

    >>> row = {"model": "lstm", "estimate": 0.8, "low": 0.7, "high": 0.9,
    ...        "secondary": {"mcc": {"estimate": 0.6, "low": 0.4, "high": 0.8}}}
    >>> metrics_table([row], "balanced_accuracy").splitlines()[2]
    '| lstm | 0.800 [0.700, 0.900] | 0.600 [0.400, 0.800] |'
    """
    names = list(dict.fromkeys(name for r in rows for name in r.get("secondary", {})))

    def cell(v: Mapping[str, float] | None) -> str:
        if v is None or not math.isfinite(v["estimate"]):
            return "n/a"
        interval = f" [{v['low']:.3f}, {v['high']:.3f}]" if math.isfinite(v["low"]) else ""
        return f"{v['estimate']:.3f}{interval}"

    header = [label, *(f"{m} [{confidence_level:.1%} CI]" for m in [metric, *names])]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        cells = [cell(r), *(cell(r.get("secondary", {}).get(m)) for m in names)]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_table(rows: Sequence[Mapping[str, Any]], metric: str, confidence_level: float = 0.95) -> str:
    """The markdown table of a summary's "baselines", with their validation scores where the rows carry
    them (what chose the strongest: `strongest_baseline`).

        >>> rows = [{"model": "5-gram", "estimate": 2.0, "low": 1.9, "high": 2.1, "settings": {"order": 5},
        ...          "validation": 2.2}]
        >>> baseline_table(rows, "bits_per_byte").splitlines()[2]
        '| 5-gram | 2.0000 [1.9000, 2.1000] | 2.2000 | order=5 |'
    """
    validated = any("validation" in r for r in rows)
    head = f"| baseline | {metric} [{confidence_level:.1%} CI] |" + (" validation |" if validated else "")
    lines = [f"{head} settings |", "|---|---:|" + ("---:|" if validated else "") + "---|"]
    for r in rows:
        interval = "" if not math.isfinite(r["low"]) else f" [{r['low']:.4f}, {r['high']:.4f}]"
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        validation = f" {r.get('validation', math.nan):.4f} |" if validated else ""
        lines.append(f"| {r['model']} | {r['estimate']:.4f}{interval} |{validation} {settings} |")
    return "\n".join(lines)


def comparison_lines(comparisons: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """One line per claim: the paired difference of the families' best models, with its tests."""
    lines = []
    for c in comparisons:
        if "missing" in c:
            lines.append(f"- {c['claim']}: no {', '.join(c['missing'])} model in this comparison.")
            continue
        test = c.get("paired_test")
        extra = "" if test is None else f"; {test['name']}: p = {test['p_value']:.3g}"
        lines.append(
            f"- {c['claim']}: {c['better']} - {c['worse']} {metric} = {c['estimate']:+.4f} "
            f"[{c['low']:+.4f}, {c['high']:+.4f}] ({c['confidence_level']:.1%} paired cluster bootstrap, "
            f"{c['n_clusters']} clusters; bootstrap p = {c['p_value']:.3g}{extra})"
        )
    return lines


def composition_line(splits: Mapping[str, Mapping[str, Any]]) -> str | None:
    r"""A report line on the GC-content cue of a two-class genomic task per split (the `gc_auroc` of
    `GenomicSplit.composition`, in a data summary's splits), or None when the splits carry none. A cue
    whose AUROC sits on the other side of 0.5 in a split than in train scores below chance there.

    >>> line = composition_line({"train": {"gc_auroc": 0.574}, "validation": {"gc_auroc": 0.32}})
    >>> print(line.replace("; ", ";\n"))
    - composition: GC content as a score for label 1, AUROC train 0.574, validation 0.320;
    validation on the other side of 0.5 from train (docs/data.md)
    >>> composition_line({"train": {"examples": 3}}) is None
    True
    """
    aurocs = {name: split["gc_auroc"] for name, split in splits.items() if "gc_auroc" in split}
    if not aurocs:
        return None
    text = ", ".join(f"{name} {value:.3f}" for name, value in aurocs.items())
    line = f"- composition: GC content as a score for label 1, AUROC {text}"
    train = aurocs.get("train")
    if train is not None:
        flipped = [n for n, a in aurocs.items() if n != "train" and (a - 0.5) * (train - 0.5) < 0]
        if flipped:
            line += f"; {' and '.join(flipped)} on the other side of 0.5 from train (docs/data.md)"
    return line
