"""The statistics side of the experiment protocol: intervals, paired differences and verdicts from the
saved predictions of `seqjax.experiment.protocol`, and the markdown table.

- `metric_interval`: a model's headline metric (or, for classification, another one: `metric=`
  "macro_f1", "mcc", "accuracy"; `SECONDARY` lists those the summaries add) with a bootstrap interval
  that resamples the test clusters (genome block, document, time block) and the seeds
  (`statistics.cluster_bootstrap`).
- `baseline_interval`: the same for a non-neural baseline (one deterministic "seed").
- `paired_difference`: metric(a) - metric(b) on the same test examples (`statistics.paired_bootstrap`),
  with a two-sided bootstrap p-value, and McNemar's exact test (classification; majority vote over
  seeds) or Diebold-Mariano (forecasting; per-window loss averaged over seeds, in time order, with the
  overlap of the windows' targets in its lag window: `forecast_diebold_mariano`) beside it.
- `contrast_interval`: sum_i c_i metric(model i) over several models' seeds on the same test examples
  (`statistics.contrast_bootstrap`), with `paired_seeds` when seed i of every model shares something
  (a learning curve's training subsample i).
- `Claim` and `judge`: the verdict rule of `seqjax.experiment.verdict`, applied to the difference of the
  best model of one family against the best of another, each best chosen on validation (never on test).

    >>> claim = Claim("recurrent beats attention", "recurrent", "attention")
    >>> claim.direction(larger_is_better=False)  # a lower bits per byte is better: a - b < 0 is claimed
    'less'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from seqjax.experiment import statistics, weighted_metrics
from seqjax.experiment.predictions import RunPredictions, read_predictions, reduce_forecasts, stack_seeds
from seqjax.experiment.verdict import (
    MIN_CLUSTERS,
    classify_interval,
    too_few_clusters,
    verdict_of_classes,
)

__all__ = [
    "FAMILIES",
    "FORECAST_ERRORS",
    "SECONDARY",
    "Claim",
    "baseline_difference",
    "baseline_estimate",
    "baseline_interval",
    "contrast_interval",
    "difference_fields",
    "family_of",
    "forecast_diebold_mariano",
    "forecast_errors",
    "judge",
    "key_class",
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
    "gla_scalar": "recurrent",
    **{p: "recurrent" for p in ("deltanet", "gated_deltanet", "rwkv7")},
    "rglru": "recurrent",
    # Griffin mixes RG-LRU and local-attention layers: a family of its own, on neither side.
    "griffin": "hybrid",
    **{p: "recurrent" for p in ("mamba2",)},  # Mamba-2's SSD: a scalar-decay matrix state per head
}


#: Metrics reported beside the headline one, with the same intervals, per task (a forecaster's MAE on
#: the normalised scale beside its MSE).
SECONDARY: dict[str, tuple[str, ...]] = {"classification": ("macro_f1", "mcc"), "forecast": ("mae",)}
#: A forecaster's per-window errors by name: the headline MSE first.
FORECAST_ERRORS = ("mse", "mae")


def _weighted_metric(task: str, metric: str | None) -> Any:
    """The weighted metric `metric` of a task (None: the headline one): a classification metric, or a
    forecast error (`FORECAST_ERRORS`, each a mean over windows)."""
    choices = weighted_metrics.CLASSIFICATION_METRICS
    if task == "forecast" and metric in (None, *FORECAST_ERRORS):
        return weighted_metrics.mean_value
    if metric is None:
        return choices["balanced_accuracy"]
    if task not in ("classification", "forecast") or (task == "classification" and metric not in choices):
        known = {"classification": sorted(choices), "forecast": list(FORECAST_ERRORS)}.get(
            task, "only the headline metric (metric=None)"
        )
        raise ValueError(f"report: no metric {metric!r} for task {task!r}; known: {known}.")
    return choices[metric]


def family_of(model: str) -> str:
    """The family of a preset name ("name" or "name@anything"); unknown names are their own family."""
    return FAMILIES.get(model.split("@")[0], model)


def _inputs(
    runs: Sequence[RunPredictions], task: str, metric: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, Any]:
    """(per-seed values [seeds, n], targets, clusters, weighted metric) of the task's headline metric, or
    of classification metric / forecast error `metric`."""
    if metric is not None:
        _weighted_metric(task, metric)  # a clear error for a metric the task lacks
    if task == "classification":
        logits, targets, clusters = stack_seeds(runs, "predictions")
        return logits.argmax(-1), targets, clusters, _weighted_metric(task, metric)
    if task == "forecast":
        errors, clusters = _forecast_errors(runs, metric or "mse")
        return errors, None, clusters, weighted_metrics.mean_value
    if task == "lm":
        nll, targets, clusters = stack_seeds(runs, "predictions")
        if nll.ndim == 3:  # [seeds, n, LM_COLUMNS]: the summed NLL is the first column
            nll = nll[..., 0]
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
    """The headline metric (or classification metric / forecast error `metric`, e.g. "mcc", "mae") of
    one model's seeds (their predictions files) with its cluster x seed bootstrap interval.

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


def _forecast_errors(runs: Sequence[RunPredictions], error: str) -> tuple[np.ndarray, np.ndarray]:
    """([seeds, windows] per-window `error` of a forecaster's seeds, cluster ids): "mse" (the saved
    losses) or "mae" (mean |forecast - truth| over horizon and variables), normalised scale. Runs whose
    forecasts were reduced for carrying (`predictions.reduce_forecasts`) give the same values."""
    # Reduced first, so full and carried seeds of one model stack together (their targets then agree).
    runs = [reduce_forecasts(run) for run in runs]
    if error == "mae":
        runs = [dataclasses.replace(run, losses=run.predictions) for run in runs]
    values, _, clusters = stack_seeds(runs, "losses")
    return values, clusters


def forecast_errors(paths: Sequence[str], error: str = "mse") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([seeds, examples] per-example forecast errors, example ids, cluster ids) of one model's seeds:
    `error` one of `FORECAST_ERRORS` ("mse": the saved losses; "mae": mean |forecast - truth| over
    horizon and variables), on the normalised scale the forecasts are saved in.

        >>> errors, ids, clusters = forecast_errors(["predictions/lstm/seed0.npz"], "mae")  # doctest: +SKIP
    """
    if error not in FORECAST_ERRORS:
        raise ValueError(f"forecast_errors: error must be one of {FORECAST_ERRORS}, got {error!r}.")
    runs = _load(paths)
    values, clusters = _forecast_errors(runs, error)
    return values, np.asarray(runs[0].example_ids), clusters


def _baseline_inputs(
    result: Any, task: str, clusters: np.ndarray | None, metric: str | None
) -> tuple[np.ndarray, np.ndarray | None, Any, np.ndarray | None] | None:
    """(per-example values, targets, weighted metric, clusters) of a `BaselineResult`'s headline metric
    (or `metric`), as `baseline_interval` resamples them; None when it has no per-example values."""
    per_example = result.per_example
    if not per_example:
        return None
    if task == "classification":
        weighted = _weighted_metric(task, metric)
        return np.asarray(per_example["prediction"]), np.asarray(per_example["label"]), weighted, clusters
    if task == "forecast":
        mean = _weighted_metric(task, metric)
        return np.asarray(per_example[metric or "mse"], np.float64), None, mean, clusters
    bits = np.asarray(per_example["bits"], np.float64)
    by_window = result.settings.get("scored") == "windows"
    nats, num_bytes = bits * np.log(2.0), np.asarray(per_example["bytes"], np.float64)
    return nats, num_bytes, weighted_metrics.bits_per_byte, clusters if by_window else None


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
    no per-example values, e.g. skipped). Document baselines of whole documents are per document, so
    each document is its own cluster there; other baselines (document baselines scored on the models'
    windows too: settings["scored"] == "windows") score the examples in order and take `clusters`.
    `metric`: another classification metric or forecast error than the headline one (as
    `metric_interval`)."""
    inputs = _baseline_inputs(result, task, clusters, metric)
    if inputs is None:
        return None
    values, targets, weighted, cluster_ids = inputs
    return statistics.cluster_bootstrap(
        values,
        targets=targets,
        metric=weighted,
        cluster_ids=cluster_ids,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )


def baseline_estimate(result: Any, task: str) -> float:
    """A `BaselineResult`'s headline metric over all its per-example values: `baseline_interval`'s
    estimate, with no interval (so no clusters: a split of one time block has an estimate too); its
    split metric when it has no per-example values (NaN when it has none).

        >>> from seqjax.baselines.result import BaselineResult
        >>> per_example = {"prediction": np.array([0, 1, 1]), "label": np.array([0, 1, 0])}
        >>> kmer = BaselineResult("k-mer", {}, per_example)
        >>> baseline_estimate(kmer, "classification")  # balanced accuracy: (1/2 + 1/1) / 2
        0.75
    """
    inputs = _baseline_inputs(result, task, None, None)
    if inputs is None:
        from seqjax.experiment.protocol import HEADLINE

        return float(result.metrics.get(HEADLINE[task][0], math.nan))
    values, targets, weighted, _ = inputs
    return float(weighted(values, targets, np.ones((1, len(values))))[0])


def _baseline_values(result: Any, task: str, n: int) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(per-example values of a `BaselineResult` in the form `_inputs` gives a model's seeds, its own
    targets) for the headline metric, or None when it has none for the models' `n` examples (skipped, or
    scored on whole documents rather than the models' windows)."""
    per_example = result.per_example
    if task == "classification" and "prediction" in per_example:
        values, targets = np.asarray(per_example["prediction"]), np.asarray(per_example["label"])
    elif task == "forecast" and "mse" in per_example:
        values, targets = np.asarray(per_example["mse"], np.float64), None
    elif task == "lm" and "bits" in per_example and result.settings.get("scored") == "windows":
        values = np.asarray(per_example["bits"], np.float64) * np.log(2.0)
        targets = np.asarray(per_example["bytes"], np.float64)
    else:
        return None
    return (values, targets) if len(values) == n else None


def baseline_difference(
    paths: Sequence[str],
    baseline: Any,
    task: str,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any] | None:
    """The headline metric of a model's seeds (their predictions files) minus that of a `BaselineResult`
    scored on the same test examples, resampling the runs' clusters (both sides see each resample; the
    model's seeds are resampled too): estimate, interval and bootstrap p-value (`difference_fields`).
    None when the baseline has no values for those examples (`_baseline_values`). A baseline whose
    targets differ from the runs' (another split, other examples) is an error; forecast baselines carry
    no targets, so for them only the number of windows is checked (both must be the split's windows at
    `pipeline.spread_indices`, as `task_baselines` gives them).

        >>> baseline_difference(mamba_paths, kmer_result, "classification")  # doctest: +SKIP
        {'estimate': 0.041, 'low': 0.012, 'high': 0.069, ...}
    """
    values, targets, clusters, weighted = _inputs(_load(paths), task)
    found = _baseline_values(baseline, task, values.shape[1])
    if found is None:
        return None
    baseline_values, baseline_targets = found
    if targets is not None and not np.array_equal(np.asarray(targets, np.float64), baseline_targets):
        raise ValueError(
            f"baseline_difference: {baseline.name!r} scored other test examples than the runs "
            f"({paths[0]}); score it on the examples the models are evaluated on (`task_baselines` with "
            "examples=the protocol's evaluation_examples)."
        )
    interval = statistics.paired_bootstrap(
        values,
        baseline_values[None],
        targets=targets,
        metric=weighted,
        cluster_ids=clusters,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    return difference_fields(interval)


def forecast_diebold_mariano(
    losses_a: ArrayLike, losses_b: ArrayLike, example_ids: ArrayLike, horizon: int
) -> dict[str, Any]:
    """Diebold-Mariano (HLN) test of two forecasters' losses ([seeds, windows]: the seed means are
    compared) on windows in time order whose first target rows are `example_ids` (stride-1 windows of
    the split, as the evaluation numbers them). A p-value of NaN when the test cannot be run (equal
    losses, too few windows).

    Windows closer than `horizon` rows share target rows, so their loss differences are MA(q) with
    q + 1 = ceil(horizon / the median gap between windows): the lag window. The plain test (a lag window
    of 1) rejects a true null of such MA(9) differences over 256 windows in about half the runs at the
    5% level. Of the long-run variances with rectangular weights (Diebold & Mariano 1995: unbiased for
    MA(q), but its sum of noisy autocovariances can come out near zero or negative) and Bartlett
    weights (never negative, but it shrinks the MA terms: 11% rejections of that true null at 5%), the
    larger is used, so the test is never more liberal than either: 6-7% on that null, and no
    p = 1e-43 from a rectangular variance near zero (electricity, 40 lags). Many lags for few windows
    still over-reject (12% at 43 lags over 256 windows: H = 720 with windows 17 rows apart), as any
    kernel estimate of a long-run variance does.

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(1.0, 0.1, (2, 50)); b = a + 0.2 + rng.normal(0, 0.05, (1, 50))
    >>> result = forecast_diebold_mariano(a, b, np.arange(0, 500, 10), horizon=96)
    >>> result["lags"], result["p_value"] < 0.01
    (10, True)
    """
    a = np.asarray(losses_a, np.float64)
    b = np.asarray(losses_b, np.float64)
    a = a.mean(0) if a.ndim == 2 else a
    b = b.mean(0) if b.ndim == 2 else b
    gaps = np.diff(np.asarray(example_ids, np.int64))
    gap = float(np.median(gaps)) if len(gaps) else 1.0
    lags = max(1, math.ceil(horizon / max(gap, 1.0)))
    results, note = [], ""
    for kernel in ("rectangular", "bartlett"):
        try:
            results.append(statistics.diebold_mariano(a, b, horizon=lags, kernel=kernel))
        except ValueError as error:  # a variance not positive, or too few windows for the lags
            note = str(error)
    if not results:
        name = f"Diebold-Mariano (HLN, {lags} lags, seed-mean losses)"
        return {"name": name, "p_value": math.nan, "lags": lags, "note": note}
    result = max(results, key=lambda r: r.long_run_variance)
    name = f"Diebold-Mariano (HLN, {result.kernel}, {lags} lags, seed-mean losses)"
    return {
        "name": name,
        "p_value": result.p_value,
        "statistic": result.statistic,
        "lags": lags,
        "kernel": result.kernel,
    }


def _forecast_horizon(runs: Sequence[RunPredictions]) -> int | None:
    """The horizon of forecasts saved as [n, horizon, variables] targets; None when every run was
    reduced for carrying (`predictions.reduce_forecasts`: the targets are gone)."""
    for run in runs:
        targets = np.asarray(run.targets)
        if not run.reduced and targets.ndim >= 2:
            return int(targets.shape[1])
    return None


def _run_name(run: RunPredictions, path: str) -> str:
    return f"{run.model} at length {run.length} ({path})"


def paired_difference(
    paths_a: Sequence[str],
    paths_b: Sequence[str],
    task: str,
    *,
    metric: str | None = None,
    clusters: np.ndarray | None = None,
    horizon: int | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """metric(a) - metric(b) on the same test examples: estimate, interval, bootstrap p-value, and the
    task's classical paired test (McNemar or Diebold-Mariano). `metric`: the headline one (None) or
    another (as `metric_interval`, e.g. a forecaster's "mae").

    The two models must score the same example ids (a forecast window's id is its first target row) in
    the same order, with the same targets where both runs keep them: a forecaster's run carried between
    machines keeps its errors, not its targets, so its windows are checked by their ids alone.

    `clusters`: the cluster ids to resample for both, instead of those saved with the runs (which must
    otherwise agree). For the same loci cropped to two lengths (`seqjax.data.genomic`'s nested windows),
    whose start-based ids may differ across a block edge, or the same forecast windows read with two
    look-backs (whose time blocks differ): pass the longer one's ids.

    `horizon`: a forecaster's horizon in rows, for the Diebold-Mariano lag window
    (`forecast_diebold_mariano`); by default read from the saved targets, and the test's p-value is NaN
    (with a note) when both models' runs were reduced for carrying and no horizon is given.

        >>> paired_difference(long_paths, short_paths, "classification", clusters=ids)  # doctest: +SKIP
    """
    runs_a, runs_b = _load(paths_a), _load(paths_b)
    values_a, targets, saved_clusters, weighted = _inputs(runs_a, task, metric)
    values_b, targets_b, clusters_b, _ = _inputs(runs_b, task, metric)
    first_a, first_b = runs_a[0], runs_b[0]  # `stack_seeds` checked that every seed of each agrees
    full = not (first_a.reduced or first_b.reduced)
    if not np.array_equal(first_a.example_ids, first_b.example_ids):
        problem = "scored different test examples (their example ids, a forecast window's first target row)"
    elif (targets is not None and not np.array_equal(targets, targets_b)) or (
        full and not np.array_equal(first_a.targets, first_b.targets)
    ):
        problem = "scored the same example ids with different targets"
    elif clusters is None and not np.array_equal(saved_clusters, clusters_b):
        problem = "saved different cluster ids for the same examples (pass the coarser ones as clusters=)"
    else:
        problem = None
    if problem is not None:
        raise ValueError(
            f"paired_difference: {_run_name(first_a, paths_a[0])} and {_run_name(first_b, paths_b[0])} "
            f"{problem}; pair runs of one split, evaluated on the same examples."
        )
    clusters = saved_clusters if clusters is None else np.asarray(clusters)
    interval = statistics.paired_bootstrap(
        values_a,
        values_b,
        targets=targets,
        metric=weighted,
        cluster_ids=clusters,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    out = difference_fields(interval)
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
        # Windows spread closer than a horizon share target rows, so the per-window loss differences
        # are autocorrelated: the lag window must cover that overlap (a plain DM test over-rejects).
        horizon = horizon if horizon is not None else _forecast_horizon([*runs_a, *runs_b])
        if horizon is None:
            out["paired_test"] = {
                "name": "Diebold-Mariano (HLN, Bartlett, seed-mean losses)",
                "p_value": math.nan,
                "note": "horizon unknown (both runs reduced for carrying): pass horizon= for the lag window",
            }
        else:
            out["paired_test"] = forecast_diebold_mariano(values_a, values_b, first_a.example_ids, horizon)
    return out


def contrast_interval(
    runs: Sequence[Sequence[str]],
    coefficients: Sequence[float],
    task: str,
    *,
    metric: str | None = None,
    paired_seeds: bool = False,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> statistics.BootstrapInterval:
    """sum_i coefficients[i] * metric(model i) from each model's seeds (their predictions files, `runs`)
    on the same test examples, with the cluster x seed bootstrap of `statistics.contrast_bootstrap`:
    (1, -1) is a paired difference, (1, -1, -1, 1) a difference of differences. The runs must score
    the same example ids with the same targets; the first run's clusters are resampled.

        >>> contrast_interval([lstm_aug, lstm, attention_aug, attention], [1, -1, -1, 1], "classification",
        ...                   paired_seeds=True)  # doctest: +SKIP
    """
    loaded = [_load(paths) for paths in runs]
    inputs = [_inputs(r, task, metric) for r in loaded]
    _, targets, clusters, weighted = inputs[0]
    for r, (_, other_targets, _, _) in zip(loaded[1:], inputs[1:], strict=True):
        same_ids = np.array_equal(r[0].example_ids, loaded[0][0].example_ids)
        if not same_ids or (targets is not None and not np.array_equal(targets, other_targets)):
            raise ValueError(
                f"contrast_interval: {r[0].model} scored other test examples than {loaded[0][0].model}; a "
                "contrast needs runs of one split, on the same examples."
            )
    return statistics.contrast_bootstrap(
        [v for v, _, _, _ in inputs],
        coefficients,
        targets=targets,
        metric=weighted,
        cluster_ids=clusters,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        paired_seeds=paired_seeds,
    )


def difference_fields(interval: statistics.BootstrapInterval) -> dict[str, Any]:
    """The JSON fields of a difference's bootstrap interval: estimate, low, high, confidence_level,
    n_clusters and the two-sided bootstrap p-value (`statistics.bootstrap_p_value`).

    >>> d = difference_fields(statistics.paired_bootstrap([3.0, 4.0], [1.0, 2.0], n_resamples=50))
    >>> d["estimate"], d["p_value"]
    (2.0, 0.0)
    """
    return {
        "estimate": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "confidence_level": interval.confidence_level,
        "n_clusters": interval.n_clusters,
        "p_value": statistics.bootstrap_p_value(interval.distribution),
    }


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


def key_class(per_key: Mapping[str, Any]) -> str:
    """A `judge` key's class as a table prints it: the class, with why an interval that was not judged
    counts as "neither" (`verdict.MIN_CLUSTERS`).

        >>> key_class({"class": "claimed", "holm_p": 0.01})
        'claimed'
        >>> key_class({"class": "neither", "holm_p": 0.01, "not_judged": "4 clusters, fewer than 10"})
        'neither (not judged: 4 clusters, fewer than 10)'
    """
    if "not_judged" in per_key:
        return f"{per_key['class']} (not judged: {per_key['not_judged']})"
    return str(per_key["class"])


def judge(
    claim: Claim, differences: Mapping[Any, Mapping[str, float]], *, larger_is_better: bool
) -> dict[str, Any]:
    """The verdict of `claim` from its difference per key (length or task), with each key's class and
    the Holm-adjusted p-values across keys."""
    direction = claim.direction(larger_is_better=larger_is_better)
    keys = list(differences)
    p_values = [differences[k]["p_value"] for k in keys]
    adjusted = statistics.holm_adjusted_p_values(p_values) if keys else []
    per_key = {}
    for k, p in zip(keys, adjusted, strict=True):
        d = differences[k]
        n_clusters = d.get("n_clusters")
        per_key[str(k)] = {
            "class": classify_interval(direction, d["low"], d["high"], n_clusters=n_clusters),
            "holm_p": float(p),
        }
        if too_few_clusters(n_clusters):
            per_key[str(k)]["not_judged"] = f"{n_clusters} clusters, fewer than {MIN_CLUSTERS}"
    return {
        "claim": claim.name,
        "direction": direction,
        "verdict": verdict_of_classes(c["class"] for c in per_key.values()),
        "per_key": per_key,
    }
