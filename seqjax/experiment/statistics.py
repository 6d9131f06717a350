"""Confidence intervals and paired tests for comparing sequence models (issue 15, item 6).

Units of independence. Examples of one genome block, one document or one time block are correlated, and
so are the examples scored by one trained model (one seed); resampling examples as if independent gives
intervals that are too narrow. `cluster_bootstrap` therefore resamples at two levels, both with
replacement: the clusters (every example of a drawn cluster comes along) and the training seeds. A
metric of a resample is the metric with cluster draw counts as example weights (see `weighted_metrics`),
averaged over the resampled seeds.

Paired comparisons. Two models scored on the same test examples are compared on the same cluster
resample (`paired_bootstrap`), which removes the between-example variance both share. Their seeds are
separate trainings, so each model's seeds are resampled on their own. `contrast_bootstrap` does the same
for any signed sum of several models' metrics on the same examples, e.g. a difference of differences
(how much more one model gains from a longer look-back than another). `mcnemar_exact` is the exact
paired test of two classifiers' correct/incorrect on the same examples (it assumes independent
examples: with clustered examples prefer `paired_bootstrap`); `diebold_mariano` compares two forecast
loss series with the Harvey-Leybourne-Newbold small-sample correction; `holm_adjusted_p_values` corrects
a family of p-values (one per sequence length, say) for multiple comparisons. `wilson_interval` is the
score interval of a binomial proportion (k successes in n independent trials, e.g. sequences solved).

Everything is numpy/scipy, with a fixed `rng_seed` so a rerun gives the same interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy import stats as scipy_stats

from seqjax.common.checks import check_positive_int
from seqjax.experiment.weighted_metrics import WeightedMetric, mean_value

__all__ = [
    "BootstrapInterval",
    "DieboldMarianoResult",
    "McNemarResult",
    "bootstrap_p_value",
    "cluster_bootstrap",
    "contiguous_block_ids",
    "contrast_bootstrap",
    "diebold_mariano",
    "holm_adjusted_p_values",
    "mcnemar_exact",
    "paired_bootstrap",
    "wilson_interval",
]

IntervalMethod = Literal["percentile", "bca"]
Alternative = Literal["two-sided", "less", "greater"]

# Bound on one chunk of the [resamples, examples] weights matrix (32 MiB of float64), so a test set of
# 10^5 examples with 10^4 resamples still fits in memory.
_MAX_WEIGHT_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class BootstrapInterval:
    """A bootstrap confidence interval: `estimate` is the metric on the data as observed (mean over
    seeds), `distribution` the [n_resamples] resampled metrics the interval is read from."""

    estimate: float
    low: float
    high: float
    confidence_level: float
    method: str
    n_clusters: int
    distribution: np.ndarray = field(repr=False)

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts of two classifiers on the same examples and the exact two-sided p-value."""

    only_a_correct: int
    only_b_correct: int
    p_value: float


@dataclass(frozen=True)
class DieboldMarianoResult:
    """The HLN-corrected Diebold-Mariano statistic of mean(losses_a - losses_b), t-distributed with n - 1
    degrees of freedom under equal predictive accuracy."""

    statistic: float
    p_value: float
    mean_difference: float
    long_run_variance: float
    horizon: int
    kernel: str


# ----------------------------------------------------------------------------------------------------
# Input checks: each error names the argument and says what to pass instead.


def _check_finite(owner: str, name: str, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{owner}: {name} has {bad} non-finite value(s) (nan/inf); drop or fix those examples."
        )


def _seed_matrix(owner: str, name: str, values: ArrayLike) -> np.ndarray:
    """`values` as [seeds, examples]: a 1-D array is one seed."""
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{owner}: {name} must be [examples] or [seeds, examples], got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{owner}: {name} is empty (shape {array.shape}); pass at least one seed and example."
        )
    _check_finite(owner, name, array)
    return array


def _example_vector(owner: str, name: str, values: ArrayLike, n_examples: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != n_examples:
        raise ValueError(
            f"{owner}: {name} has shape {array.shape} but the predictions have {n_examples} examples; "
            f"pass one {name[:-1] if name.endswith('s') else name} per example."
        )
    _check_finite(owner, name, array)
    return array


def _cluster_index(owner: str, cluster_ids: ArrayLike | None, n_examples: int) -> tuple[np.ndarray, int]:
    """Cluster ids (any sortable labels) -> (index in [0, n_clusters) per example, n_clusters)."""
    if cluster_ids is None:
        index = np.arange(n_examples)
    else:
        ids = _example_vector(owner, "cluster_ids", cluster_ids, n_examples)
        _, index = np.unique(ids, return_inverse=True)
    n_clusters = int(index.max()) + 1
    if n_clusters < 2:
        raise ValueError(
            f"{owner}: the examples form {n_clusters} cluster; a bootstrap over clusters needs at least 2 "
            "(pass finer cluster_ids, or more examples)."
        )
    return index, n_clusters


def _check_interval_settings(owner: str, confidence_level: float, n_resamples: int, method: str) -> None:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"{owner}: confidence_level must be in (0, 1), e.g. 0.95; got {confidence_level!r}.")
    check_positive_int(owner, "n_resamples", n_resamples)
    if method not in ("percentile", "bca"):
        raise ValueError(f"{owner}: method must be 'percentile' or 'bca', got {method!r}.")


# ----------------------------------------------------------------------------------------------------
# The two-level bootstrap engine, shared by the one-model and the paired interval.


def _seed_mean(
    owner: str,
    metric: WeightedMetric,
    predictions: np.ndarray,
    targets: np.ndarray | None,
    weights: np.ndarray,
) -> np.ndarray:
    """[rows, seeds] metric values for every weighting row and every seed."""
    values = np.stack(
        [metric(seed_predictions, targets, weights) for seed_predictions in predictions], axis=1
    )
    if not np.all(np.isfinite(values)):
        name = getattr(metric, "__name__", "metric")
        raise ValueError(f"{owner}: {name} returned non-finite values; check the metric and its inputs.")
    return values


def _resampled_metrics(
    owner: str,
    models: list[np.ndarray],
    targets: np.ndarray | None,
    metric: WeightedMetric,
    cluster_index: np.ndarray,
    n_clusters: int,
    n_resamples: int,
    rng: np.random.Generator,
    paired_seeds: bool = False,
) -> list[np.ndarray]:
    """Per model, the [n_resamples] metric of each two-level resample. All models share each cluster
    resample (the pairing); each model's seeds are resampled independently (separate trainings), or,
    with `paired_seeds`, with one seed resample shared by every model (seed i of each is one pair).

    Seeds and clusters are crossed (every seed scores every cluster) and are resampled independently,
    Owen's (2007) "pigeonhole" bootstrap, whose variance is not the sampling variance term by term:

    - the seed x cluster interaction (what one seed gets right on one block and another seed not) is
      counted about 3 times (2.6 times measured at 5 seeds x 50 clusters, towards 3 with more of
      both): conservative, widest where that interaction dominates;
    - the seed-level variance is counted (S - 1) / S times, as any bootstrap of S values: with 3 seeds
      about 1/3 too small, so an interval dominated by seed-to-seed spread is too narrow. The two do not
      cancel in general; which one wins depends on the variance components of the data at hand.
    """
    n_examples = cluster_index.shape[0]
    per_seed = [np.empty((n_resamples, predictions.shape[0])) for predictions in models]
    chunk = max(1, _MAX_WEIGHT_ELEMENTS // n_examples)
    uniform = np.full(n_clusters, 1.0 / n_clusters)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        # numpy draws multinomial rows one after another, so the result does not depend on `chunk`.
        cluster_counts = rng.multinomial(n_clusters, uniform, size=stop - start)
        weights = cluster_counts[:, cluster_index].astype(np.float64)
        for model_values, predictions in zip(per_seed, models, strict=True):
            model_values[start:stop] = _seed_mean(owner, metric, predictions, targets, weights)
    resampled = []
    shared = None
    for model_values in per_seed:
        n_seeds = model_values.shape[1]
        if shared is None or not paired_seeds:
            shared = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_resamples)
        resampled.append((shared * model_values).sum(axis=1) / n_seeds)
    return resampled


def _leave_one_cluster_out(
    owner: str,
    models: list[np.ndarray],
    signs: list[float],
    targets: np.ndarray | None,
    metric: WeightedMetric,
    cluster_index: np.ndarray,
    n_clusters: int,
) -> np.ndarray:
    """[n_clusters] jackknife values of sum(sign * seed-mean metric), for the BCa acceleration."""
    n_examples = cluster_index.shape[0]
    jackknife = np.zeros(n_clusters)
    chunk = max(1, _MAX_WEIGHT_ELEMENTS // n_examples)
    for start in range(0, n_clusters, chunk):
        left_out = np.arange(start, min(start + chunk, n_clusters))
        weights = (cluster_index[None, :] != left_out[:, None]).astype(np.float64)
        for sign, predictions in zip(signs, models, strict=True):
            jackknife[left_out] += sign * _seed_mean(owner, metric, predictions, targets, weights).mean(
                axis=1
            )
    return jackknife


def _interval(
    distribution: np.ndarray,
    estimate: float,
    jackknife: np.ndarray | None,
    confidence_level: float,
    method: str,
) -> tuple[float, float]:
    """Percentile or BCa (Efron & Tibshirani 1993, 14.3) end points, computed as scipy.stats.bootstrap
    does: z0 from the 'mean' percentile of the estimate, acceleration from the jackknife skewness."""
    alpha = (1.0 - confidence_level) / 2.0
    if method == "percentile":
        quantiles = np.array([alpha, 1.0 - alpha])
    else:
        assert jackknife is not None
        below = np.count_nonzero(distribution < estimate) + np.count_nonzero(distribution <= estimate)
        z0 = special.ndtri(below / (2.0 * distribution.shape[0]))
        deviation = jackknife.mean() - jackknife
        spread = np.sum(deviation**2) ** 1.5
        # A constant jackknife (no skewness to correct) gives acceleration 0, not 0/0.
        acceleration = np.sum(deviation**3) / (6.0 * spread) if spread > 0 else 0.0
        z = special.ndtri(np.array([alpha, 1.0 - alpha]))
        quantiles = special.ndtr(z0 + (z0 + z) / (1.0 - acceleration * (z0 + z)))
    low, high = np.quantile(distribution, quantiles)
    return float(low), float(high)


def _bootstrap(
    owner: str,
    models: list[np.ndarray],
    signs: list[float],
    targets: ArrayLike | None,
    metric: WeightedMetric,
    cluster_ids: ArrayLike | None,
    confidence_level: float,
    n_resamples: int,
    method: str,
    rng_seed: int,
    paired_seeds: bool = False,
) -> BootstrapInterval:
    _check_interval_settings(owner, confidence_level, n_resamples, method)
    if paired_seeds and len({m.shape[0] for m in models}) != 1:
        seeds = ", ".join(str(m.shape[0]) for m in models)
        raise ValueError(
            f"{owner}: paired_seeds=True pairs seed i of every model, but the models have {seeds} seeds; "
            "give each the same seeds, or paired_seeds=False."
        )
    n_examples = models[0].shape[1]
    target_vector = None if targets is None else _example_vector(owner, "targets", targets, n_examples)
    cluster_index, n_clusters = _cluster_index(owner, cluster_ids, n_examples)
    observed = np.ones((1, n_examples))
    estimate = float(
        sum(
            sign * _seed_mean(owner, metric, predictions, target_vector, observed).mean()
            for sign, predictions in zip(signs, models, strict=True)
        )
    )
    rng = np.random.default_rng(rng_seed)
    resampled = _resampled_metrics(
        owner, models, target_vector, metric, cluster_index, n_clusters, n_resamples, rng, paired_seeds
    )
    distribution = sum(sign * values for sign, values in zip(signs, resampled, strict=True))
    jackknife = None
    if method == "bca":
        jackknife = _leave_one_cluster_out(
            owner, models, signs, target_vector, metric, cluster_index, n_clusters
        )
    low, high = _interval(distribution, estimate, jackknife, confidence_level, method)
    return BootstrapInterval(estimate, low, high, confidence_level, method, n_clusters, distribution)


# ----------------------------------------------------------------------------------------------------
# Public API.


def contiguous_block_ids(n_examples: int, block_length: int) -> np.ndarray:
    """Cluster ids of consecutive blocks of `block_length` examples (time blocks of a forecast test
    set, adjacent windows of one chromosome), for `cluster_ids`.

    >>> contiguous_block_ids(5, 2)
    array([0, 0, 1, 1, 2])
    """
    check_positive_int("contiguous_block_ids", "n_examples", n_examples)
    check_positive_int("contiguous_block_ids", "block_length", block_length)
    return np.arange(n_examples) // block_length


def cluster_bootstrap(
    predictions: ArrayLike,
    *,
    targets: ArrayLike | None = None,
    metric: WeightedMetric = mean_value,
    cluster_ids: ArrayLike | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    method: IntervalMethod = "percentile",
    rng_seed: int = 0,
) -> BootstrapInterval:
    """Two-level bootstrap interval of `metric`: clusters and seeds resampled with replacement.

    `predictions` is [examples] (one seed) or [seeds, examples]: per-example values (a loss, 0/1
    correctness) with the default `metric=mean_value`, or predicted labels with `targets` and a metric
    such as `weighted_metrics.balanced_accuracy`. `cluster_ids` gives each example's unit of
    independence (genome block, document, time block); None makes every example its own cluster.

    Seeds and clusters are resampled independently although they are crossed: the seed x cluster
    interaction is counted about 3 times and, with 3 seeds, the seed-level variance about 1/3 too small
    (`_resampled_metrics`). The ends are Monte Carlo estimates too: at Bonferroni levels above 0.99
    with the default 2000 resamples they move by about 5% of the half-width from one `rng_seed` to
    another (measured at 99.69%; about 3% at 95%), so an end within that of zero can flip the interval's
    side: raise `n_resamples` (the error falls as 1/sqrt(n_resamples)) before reading such an end.

    >>> result = cluster_bootstrap([1.0, 2.0, 3.0, 4.0], cluster_ids=[0, 0, 1, 1], n_resamples=200)
    >>> result.estimate, result.n_clusters, result.low <= result.estimate <= result.high
    (2.5, 2, True)
    """
    owner = "cluster_bootstrap"
    models = [_seed_matrix(owner, "predictions", predictions)]
    return _bootstrap(
        owner, models, [1.0], targets, metric, cluster_ids, confidence_level, n_resamples, method, rng_seed
    )


def paired_bootstrap(
    predictions_a: ArrayLike,
    predictions_b: ArrayLike,
    *,
    targets: ArrayLike | None = None,
    metric: WeightedMetric = mean_value,
    cluster_ids: ArrayLike | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    method: IntervalMethod = "percentile",
    rng_seed: int = 0,
    paired_seeds: bool = False,
) -> BootstrapInterval:
    """Bootstrap interval of metric(a) - metric(b) for two models scored on the same examples.

    Both models see the same cluster resample each time (the pairing); their seeds ([seeds, examples],
    the counts may differ) are resampled independently, since seed i of one model is no pair of seed i of
    the other. `paired_seeds=True` is for two variants of one model where seed i of each shares its
    initialisation and data order (the same architecture trained with and without truncated BPTT, say):
    one seed resample serves both, so what the seeds share cancels in the difference.

    >>> result = paired_bootstrap([3.0, 4.0, 5.0], [1.0, 2.0, 3.0], n_resamples=100)
    >>> result.estimate, [round(end, 9) for end in result.interval]
    (2.0, [2.0, 2.0])
    """
    return _contrast(
        "paired_bootstrap",
        {"predictions_a": predictions_a, "predictions_b": predictions_b},
        [1.0, -1.0],
        targets,
        metric,
        cluster_ids,
        confidence_level,
        n_resamples,
        method,
        rng_seed,
        paired_seeds,
    )


def contrast_bootstrap(
    predictions: Sequence[ArrayLike],
    coefficients: Sequence[float],
    *,
    targets: ArrayLike | None = None,
    metric: WeightedMetric = mean_value,
    cluster_ids: ArrayLike | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    method: IntervalMethod = "percentile",
    rng_seed: int = 0,
    paired_seeds: bool = False,
) -> BootstrapInterval:
    """Bootstrap interval of sum_i coefficients[i] * metric(predictions[i]) for models scored on the same
    examples: every model sees the same cluster resample (the pairing), and each model's seeds
    ([seeds, examples]; counts may differ) are resampled on their own. `paired_bootstrap` is the contrast
    (1, -1); (1, -1, -1, 1) is a difference of differences, e.g. (a_long - a_short) - (b_long - b_short).
    `paired_seeds=True` (as `paired_bootstrap`'s): seed i of every model is one unit, resampled together
    (e.g. one training subsample that every model of a learning curve trained on).

    >>> result = contrast_bootstrap([[4.0, 5.0], [1.0, 2.0], [3.0, 3.0], [2.0, 2.0]], [1, -1, -1, 1],
    ...                             n_resamples=100)
    >>> result.estimate, [round(end, 9) for end in result.interval]
    (2.0, [2.0, 2.0])
    """
    owner = "contrast_bootstrap"
    if len(predictions) == 0 or len(predictions) != len(coefficients):
        raise ValueError(
            f"{owner}: got {len(predictions)} models and {len(coefficients)} coefficients; pass one "
            "coefficient per model (at least one model)."
        )
    signs = [float(c) for c in coefficients]
    if not all(np.isfinite(signs)):
        raise ValueError(f"{owner}: coefficients must be finite numbers, got {list(coefficients)!r}.")
    named = {f"predictions[{i}]": p for i, p in enumerate(predictions)}
    return _contrast(
        owner,
        named,
        signs,
        targets,
        metric,
        cluster_ids,
        confidence_level,
        n_resamples,
        method,
        rng_seed,
        paired_seeds,
    )


def _contrast(
    owner: str,
    predictions: Mapping[str, ArrayLike],
    signs: Sequence[float],
    targets: ArrayLike | None,
    metric: WeightedMetric,
    cluster_ids: ArrayLike | None,
    confidence_level: float,
    n_resamples: int,
    method: IntervalMethod,
    rng_seed: int,
    paired_seeds: bool = False,
) -> BootstrapInterval:
    """`_bootstrap` of sum_i signs[i] * metric(model i) after checking that every model ({name: [seeds,
    examples]}) scored the same number of examples (`paired_bootstrap`, `contrast_bootstrap`)."""
    models = [_seed_matrix(owner, name, p) for name, p in predictions.items()]
    sizes = [m.shape[1] for m in models]
    if len(set(sizes)) != 1:
        counts = ", ".join(f"{name} {n}" for name, n in zip(predictions, sizes, strict=True))
        raise ValueError(
            f"{owner}: the models have different numbers of examples ({counts}); a paired comparison "
            "needs every model scored on the same examples, in the same order."
        )
    return _bootstrap(
        owner,
        models,
        list(signs),
        targets,
        metric,
        cluster_ids,
        confidence_level,
        n_resamples,
        method,
        rng_seed,
        paired_seeds,
    )


def bootstrap_p_value(distribution: ArrayLike) -> float:
    """Two-sided bootstrap p-value of "the difference is zero": twice the smaller tail mass at zero of a
    bootstrap distribution (`BootstrapInterval.distribution`), at most 1.

    >>> bootstrap_p_value([0.5, 1.0, 2.0, -0.1])
    0.5
    """
    d = np.asarray(distribution, np.float64)
    tail = min(np.mean(d <= 0.0), np.mean(d >= 0.0))
    return float(min(1.0, 2.0 * tail))


def _correct_vector(name: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"mcnemar_exact: {name} must be a non-empty 1-D array, got shape {array.shape}.")
    if array.dtype != np.bool_:
        _check_finite("mcnemar_exact", name, array)
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(
                f"mcnemar_exact: {name} must hold correct (True/1) or wrong (False/0) per example."
            )
    return array.astype(bool)


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemarResult:
    """McNemar's exact test: under equal accuracy, the discordant examples split Binomial(n, 1/2).

    `correct_a`, `correct_b`: per example, whether each model was right. Two-sided p-value
    min(1, 2 P[X <= min(b, c)]), which for p = 1/2 equals `scipy.stats.binomtest(b, b + c).pvalue`.

    >>> mcnemar_exact([1, 1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1])
    McNemarResult(only_a_correct=6, only_b_correct=1, p_value=0.125)
    """
    a = _correct_vector("correct_a", correct_a)
    b = _correct_vector("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(
            f"mcnemar_exact: correct_a has {a.shape[0]} examples and correct_b {b.shape[0]}; pass both "
            "models' results on the same examples."
        )
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    discordant = only_a + only_b
    if discordant == 0:
        return McNemarResult(only_a, only_b, 1.0)
    p_value = min(1.0, 2.0 * float(scipy_stats.binom.cdf(min(only_a, only_b), discordant, 0.5)))
    return McNemarResult(only_a, only_b, p_value)


def diebold_mariano(
    losses_a: ArrayLike,
    losses_b: ArrayLike,
    *,
    horizon: int = 1,
    alternative: Alternative = "two-sided",
    kernel: Literal["rectangular", "bartlett"] = "rectangular",
) -> DieboldMarianoResult:
    """Diebold-Mariano test of equal forecast accuracy, with the Harvey-Leybourne-Newbold correction.

    d_t = losses_a[t] - losses_b[t] over n time steps; the long-run variance of d is
    gamma_0 + 2 sum_{k=1}^{h-1} w_k gamma_k (autocovariances divided by n), with w_k = 1 ("rectangular",
    as Diebold & Mariano 1995) or w_k = 1 - k/h ("bartlett", Newey-West, never negative). The statistic
    mean(d) / sqrt(variance / n) times sqrt((n + 1 - 2h + h(h - 1)/n) / n) is compared with Student t on
    n - 1 degrees of freedom. alternative "less": a's losses are smaller; "greater": larger.

    >>> result = diebold_mariano([1.0, 2.0, 1.0, 3.0], [0.0, 3.0, -1.0, 3.0])
    >>> round(result.statistic, 4), round(result.p_value, 4)
    (0.7746, 0.495)
    """
    owner = "diebold_mariano"
    a = np.asarray(losses_a, dtype=np.float64)
    b = np.asarray(losses_b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"{owner}: losses_a {a.shape} and losses_b {b.shape} must be 1-D series of the same length "
            "(one loss per forecast origin, same origins for both models)."
        )
    _check_finite(owner, "losses_a", a)
    _check_finite(owner, "losses_b", b)
    check_positive_int(owner, "horizon", horizon)
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(
            f"{owner}: alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}."
        )
    if kernel not in ("rectangular", "bartlett"):
        raise ValueError(f"{owner}: kernel must be 'rectangular' or 'bartlett', got {kernel!r}.")
    n = a.shape[0]
    correction = (n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n
    # Fewer steps leave the h - 1 autocovariances and the HLN factor without enough data behind them.
    if n < max(3, 2 * horizon) or correction <= 0:
        raise ValueError(
            f"{owner}: {n} time steps are too few for horizon {horizon}; pass a longer loss series "
            "(at least max(3, 2 * horizon) steps)."
        )
    difference = a - b
    deviation = difference - difference.mean()
    autocovariance = np.array([deviation[k:] @ deviation[: n - k] / n for k in range(horizon)])
    lags = np.arange(1, horizon)
    lag_weights = np.ones(horizon - 1) if kernel == "rectangular" else 1.0 - lags / horizon
    long_run_variance = float(autocovariance[0] + 2.0 * lag_weights @ autocovariance[1:])
    if long_run_variance <= 0:
        raise ValueError(
            f"{owner}: the long-run variance of the loss differences is {long_run_variance:.3g} (not "
            "positive): the losses are equal or, with the rectangular kernel, the autocovariances are "
            "negative; use kernel='bartlett' or check the losses."
        )
    statistic = float(difference.mean() / np.sqrt(long_run_variance / n) * np.sqrt(correction))
    t = scipy_stats.t(df=n - 1)
    if alternative == "two-sided":
        p_value = float(2.0 * t.sf(abs(statistic)))
    elif alternative == "less":
        p_value = float(t.cdf(statistic))
    else:
        p_value = float(t.sf(statistic))
    return DieboldMarianoResult(
        statistic, p_value, float(difference.mean()), long_run_variance, horizon, kernel
    )


def holm_adjusted_p_values(p_values: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). Reject at level alpha where adjusted <= alpha; this
    controls the family-wise error across, e.g., the sequence lengths of one claim.

    >>> holm_adjusted_p_values([0.01, 0.04, 0.03, 0.005])
    array([0.03, 0.06, 0.06, 0.02])
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or p.shape[0] == 0:
        raise ValueError(
            f"holm_adjusted_p_values: p_values must be a non-empty 1-D array, got shape {p.shape}."
        )
    _check_finite("holm_adjusted_p_values", "p_values", p)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(
            "holm_adjusted_p_values: p_values must lie in [0, 1]; pass p-values, not statistics."
        )
    m = p.shape[0]
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def wilson_interval(successes: int, trials: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion: `successes` of `trials` independent trials.
    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where
    a task is solved or failed. Equals `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`.

    >>> [round(end, 4) for end in wilson_interval(7, 10)]
    [0.3968, 0.8922]
    >>> wilson_interval(0, 50)[0], round(wilson_interval(0, 50)[1], 4)
    (0.0, 0.0713)
    """
    check_positive_int("wilson_interval", "trials", trials)
    if isinstance(successes, bool) or not 0 <= int(successes) <= trials or int(successes) != successes:
        raise ValueError(
            f"wilson_interval: successes must be an integer in [0, {trials}], got {successes!r}."
        )
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"wilson_interval: confidence_level must be in (0, 1), got {confidence_level}.")
    z = float(scipy_stats.norm.ppf(0.5 + confidence_level / 2.0))
    p = int(successes) / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2.0 * trials)) / denominator
    half = z * np.sqrt(p * (1.0 - p) / trials + z * z / (4.0 * trials * trials)) / denominator
    # At k = 0 (k = n) the lower (upper) end is exactly 0 (1); the formula leaves rounding there.
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == trials else min(1.0, float(centre + half))
    return low, high
