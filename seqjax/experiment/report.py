"""The statistics side of the experiment protocol: intervals, paired differences and verdicts from the
saved predictions of `seqjax.experiment.protocol`, and the markdown table.

- `metric_interval`: a model's headline metric (or, for classification, another one: `metric=`
  "macro_f1", "mcc", "accuracy"; `SECONDARY` lists those the summaries add) with a bootstrap interval
  that resamples the test clusters (genome block, document, time block) and the seeds
  (`statistics.cluster_bootstrap`).
- `baseline_interval`: the same for a non-neural baseline (one deterministic "seed").
- `paired_difference`: metric(a) - metric(b) on the same test examples (`statistics.paired_bootstrap`),
  with a two-sided bootstrap p-value, and McNemar's exact test (classification; majority vote over
  seeds) or Diebold-Mariano (forecasting; per-window loss averaged over seeds, in time order) beside it.
- `Claim` and `judge`: the verdict rule of `seqjax.experiment.verdict`, applied to the difference of the
  best model of one family against the best of another, each best chosen on validation (never on test).

    >>> claim = Claim("recurrent beats attention", "recurrent", "attention")
    >>> claim.direction(larger_is_better=False)  # a lower bits per byte is better: a - b < 0 is claimed
    'less'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.experiment import statistics, weighted_metrics
from seqjax.experiment.predictions import RunPredictions, read_predictions, stack_seeds
from seqjax.experiment.verdict import classify_interval, verdict

__all__ = [
    "FAMILIES",
    "SECONDARY",
    "Claim",
    "baseline_interval",
    "family_of",
    "judge",
    "metric_interval",
    "paired_difference",
]

#: Which side of "recurrent vs transformer" each preset is on. Softmax and kernelised attention
#: (Performer, linear attention) are transformer layers; every model with a fixed-size recurrent state
#: that is not an attention kernel (RNNs, SSMs, Mamba, GLA's gated recurrence, (Gated) DeltaNet's delta
#: rule) is recurrent.
FAMILIES: dict[str, str] = {
    **{
        p: "attention"
        for p in (
            "attention",
            "swa",
            "xl_attention",
            "longformer",
            "encoder",
            "performer",
            "linear_attention",
            "linformer",
        )
    },
    **{
        p: "recurrent"
        for p in ("lstm", "elstm", "gru", "bilstm", "mamba", "s5", "s4d", "lru", "gla", "mlstm", "slstm")
    },
    **{p: "recurrent" for p in ("deltanet", "gated_deltanet")},
}


#: Metrics reported beside the headline one, with the same intervals, per task.
SECONDARY: dict[str, tuple[str, ...]] = {"classification": ("macro_f1", "mcc")}


def _weighted_metric(task: str, metric: str | None) -> Any:
    """The weighted metric `metric` of a classification task (None: the headline one)."""
    choices = weighted_metrics.CLASSIFICATION_METRICS
    if metric is None:
        return choices["balanced_accuracy"]
    if task != "classification" or metric not in choices:
        known = sorted(choices) if task == "classification" else "only the headline metric (metric=None)"
        raise ValueError(f"report: no metric {metric!r} for task {task!r}; known: {known}.")
    return choices[metric]


def family_of(model: str) -> str:
    """The family of a preset name ("name" or "name@anything"); unknown names are their own family."""
    return FAMILIES.get(model.split("@")[0], model)


def _inputs(
    runs: Sequence[RunPredictions], task: str, metric: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, Any]:
    """(per-seed values [seeds, n], targets, clusters, weighted metric) of the task's headline metric, or
    of classification metric `metric`."""
    if metric is not None:
        _weighted_metric(task, metric)  # a clear error for a metric the task lacks
    if task == "classification":
        logits, targets, clusters = stack_seeds(runs, "predictions")
        return logits.argmax(-1), targets, clusters, _weighted_metric(task, metric)
    if task == "forecast":
        losses, _, clusters = stack_seeds(runs, "losses")
        return losses, None, clusters, weighted_metrics.mean_value
    if task == "lm":
        nll, targets, clusters = stack_seeds(runs, "predictions")
        return nll, targets, clusters, weighted_metrics.bits_per_byte
    raise ValueError(f"report: unknown task {task!r}; known: classification, forecast, lm.")


def _load(paths: Sequence[str]) -> list[RunPredictions]:
    return [read_predictions(p) for p in paths]


def metric_interval(
    paths: Sequence[str],
    task: str,
    *,
    metric: str | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> statistics.BootstrapInterval:
    """The headline metric (or classification metric `metric`) of one model's seeds (their predictions
    files) with its cluster x seed bootstrap interval.

        >>> metric_interval(["seed0.npz", "seed1.npz"], "classification", metric="mcc")  # doctest: +SKIP
        BootstrapInterval(estimate=0.61, low=0.48, high=0.72, ...)
    """
    values, targets, clusters, weighted = _inputs(_load(paths), task, metric)
    return statistics.cluster_bootstrap(
        values,
        targets=targets,
        metric=weighted,
        cluster_ids=clusters,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )


def baseline_interval(
    result: Any,
    task: str,
    clusters: np.ndarray | None,
    *,
    metric: str | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> statistics.BootstrapInterval | None:
    """A `BaselineResult`'s headline metric with a cluster bootstrap interval (None when the baseline has
    no per-example values, e.g. skipped). Document baselines are per document, so each document is its
    own cluster there; other baselines score the split's examples in order and take `clusters`.
    `metric`: another classification metric than the headline one (as `metric_interval`)."""
    weighted = _weighted_metric(task, metric) if task == "classification" or metric is not None else None
    per_example = result.per_example
    if not per_example:
        return None
    kwargs = {"confidence_level": confidence_level, "n_resamples": n_resamples}
    if task == "classification":
        return statistics.cluster_bootstrap(
            per_example["prediction"],
            targets=per_example["label"],
            metric=weighted,
            cluster_ids=clusters,
            **kwargs,
        )
    if task == "forecast":
        return statistics.cluster_bootstrap(per_example["mse"], cluster_ids=clusters, **kwargs)
    bits = np.asarray(per_example["bits"], np.float64)
    return statistics.cluster_bootstrap(
        bits * np.log(2.0), targets=per_example["bytes"], metric=weighted_metrics.bits_per_byte, **kwargs
    )


def _p_value(distribution: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is zero": twice the smaller tail mass at zero."""
    d = np.asarray(distribution, np.float64)
    tail = min(np.mean(d <= 0.0), np.mean(d >= 0.0))
    return float(min(1.0, 2.0 * tail))


def paired_difference(
    paths_a: Sequence[str],
    paths_b: Sequence[str],
    task: str,
    *,
    clusters: np.ndarray | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """metric(a) - metric(b) on the same test examples: estimate, interval, bootstrap p-value, and the
    task's classical paired test (McNemar or Diebold-Mariano).

    `clusters`: the cluster ids to resample for both, instead of those saved with the runs, which must
    then score the same example ids (in order) with the same targets. For the same loci cropped to two
    lengths (`seqjax.data.genomic`'s nested windows), whose start-based ids may differ across a block
    edge: pass the longer crop's ids.

        >>> paired_difference(long_paths, short_paths, "classification", clusters=ids)  # doctest: +SKIP
    """
    runs_a, runs_b = _load(paths_a), _load(paths_b)
    values_a, targets, saved_clusters, metric = _inputs(runs_a, task)
    values_b, targets_b, clusters_b, _ = _inputs(runs_b, task)
    if clusters is None:
        same = np.array_equal(saved_clusters, clusters_b)
        clusters = saved_clusters
    else:
        same = np.array_equal(runs_a[0].example_ids, runs_b[0].example_ids)
        clusters = np.asarray(clusters)
    if not same or (targets is not None and not np.array_equal(targets, targets_b)):
        raise ValueError(
            "paired_difference: the two models scored different test examples; pair runs of one split."
        )
    interval = statistics.paired_bootstrap(
        values_a,
        values_b,
        targets=targets,
        metric=metric,
        cluster_ids=clusters,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    out: dict[str, Any] = {
        "estimate": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "confidence_level": confidence_level,
        "n_clusters": interval.n_clusters,
        "p_value": _p_value(interval.distribution),
    }
    if task == "classification":

        def vote(values: np.ndarray) -> np.ndarray:  # majority label over seeds (ties: the smaller label)
            counts = np.apply_along_axis(np.bincount, 0, values, minlength=int(values.max()) + 1)
            return counts.argmax(0)

        test = statistics.mcnemar_exact(vote(values_a) == targets, vote(values_b) == targets)
        out["paired_test"] = {
            "name": "McNemar exact (majority vote over seeds; assumes independent examples)",
            "p_value": test.p_value,
        }
    elif task == "forecast":
        name = "Diebold-Mariano (HLN, seed-mean losses)"
        try:
            p_value = statistics.diebold_mariano(values_a.mean(0), values_b.mean(0)).p_value
        except ValueError:  # identical losses: no variance to test against
            p_value = float("nan")
        out["paired_test"] = {"name": name, "p_value": p_value}
    return out


@dataclasses.dataclass(frozen=True)
class Claim:
    """ "Family `better` beats family `worse` on the headline metric", judged on the difference of their
    best models (each chosen on validation): *supported* where every interval excludes zero on the
    claimed side, *contradicted* where every one excludes it on the other, *depends* where both occur,
    *inconclusive* otherwise (`seqjax.experiment.verdict`)."""

    name: str
    better: str
    worse: str

    def direction(self, *, larger_is_better: bool) -> str:
        return "greater" if larger_is_better else "less"


def judge(
    claim: Claim, differences: Mapping[Any, Mapping[str, float]], *, larger_is_better: bool
) -> dict[str, Any]:
    """The verdict of `claim` from its difference per key (length or task), with each key's class and
    the Holm-adjusted p-values across keys."""
    direction = claim.direction(larger_is_better=larger_is_better)
    keys = list(differences)
    intervals = {k: (differences[k]["low"], differences[k]["high"]) for k in keys}
    p_values = [differences[k]["p_value"] for k in keys]
    adjusted = statistics.holm_adjusted_p_values(p_values) if keys else []
    return {
        "claim": claim.name,
        "direction": direction,
        "verdict": verdict(direction, intervals),
        "per_key": {
            str(k): {"class": classify_interval(direction, *intervals[k]), "holm_p": float(p)}
            for k, p in zip(keys, adjusted, strict=True)
        },
    }
