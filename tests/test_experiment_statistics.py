"""seqjax.experiment: the statistics and the verdict rule of issue 15, checked against plain references.

References: scipy.stats.bootstrap (percentile, BCa), scipy.stats.binomtest, scikit-learn's weighted
metrics, brute-force loops over the same resamples, and hand-computed cases.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

from seqjax.experiment import statistics
from seqjax.experiment.statistics import (
    cluster_bootstrap,
    contiguous_block_ids,
    diebold_mariano,
    holm_adjusted_p_values,
    mcnemar_exact,
    paired_bootstrap,
)
from seqjax.experiment.verdict import classify_intervals, verdict
from seqjax.experiment.weighted_metrics import (
    accuracy,
    balanced_accuracy,
    from_sklearn,
    macro_f1,
    mcc,
    mean_value,
)


def _endpoint_tolerance(sample: np.ndarray, n_resamples: int) -> float:
    """Six Monte-Carlo standard deviations of a 2.5% bootstrap quantile of the mean (normal approximation:
    sd of a p-quantile estimate is sqrt(p(1-p)/B) / phi(z_p) times the standard error), for two
    independent bootstraps."""
    standard_error = sample.std(ddof=1) / np.sqrt(sample.shape[0])
    quantile_sd = np.sqrt(0.025 * 0.975 / n_resamples) / stats.norm.pdf(1.96) * standard_error
    return 6.0 * np.sqrt(2.0) * quantile_sd


# ----------------------------------------------------------------------------------------------------
# Weighted metrics against scikit-learn.


def test_weighted_metrics_equal_sklearn_with_sample_weight():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 60)
    predictions = np.where(rng.random(60) < 0.6, targets, rng.integers(0, 3, 60))
    weights = rng.integers(0, 4, (25, 60)).astype(np.float64)
    weights[0, targets == 2] = 0.0  # a class absent from a resample is left out of the mean, as in sklearn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the absent class
        expected_balanced = [balanced_accuracy_score(targets, predictions, sample_weight=w) for w in weights]
    expected_accuracy = [accuracy_score(targets, predictions, sample_weight=w) for w in weights]
    np.testing.assert_allclose(
        balanced_accuracy(predictions, targets, weights), expected_balanced, rtol=1e-12
    )
    np.testing.assert_allclose(accuracy(predictions, targets, weights), expected_accuracy, rtol=1e-12)
    np.testing.assert_allclose(
        from_sklearn(accuracy_score)(predictions, targets, weights), expected_accuracy, rtol=1e-12
    )
    values = rng.normal(size=60)
    np.testing.assert_allclose(
        mean_value(values, None, weights[1:]), [np.average(values, weights=w) for w in weights[1:]]
    )


@pytest.mark.parametrize("num_classes", [2, 4])
def test_weighted_macro_f1_and_mcc_equal_sklearn_with_sample_weight(num_classes):
    rng = np.random.default_rng(num_classes)
    targets = rng.integers(0, num_classes, 80)
    predictions = np.where(rng.random(80) < 0.5, targets, rng.integers(0, num_classes, 80))
    predictions[predictions == 1] = 0  # a class never predicted: its F1 is 0
    weights = rng.integers(0, 4, (20, 80)).astype(np.float64)
    weights[0, targets == 0] = 0.0  # a class absent from one resample
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about undefined F1 / MCC terms
        f1 = [f1_score(targets, predictions, average="macro", sample_weight=w) for w in weights]
        phi = [matthews_corrcoef(targets, predictions, sample_weight=w) for w in weights]
    np.testing.assert_allclose(macro_f1(predictions, targets, weights), f1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(mcc(predictions, targets, weights), phi, rtol=1e-12, atol=1e-15)
    constant = np.zeros(80, np.int64)  # MCC undefined (one predicted class): 0, as sklearn
    np.testing.assert_allclose(mcc(constant, targets, weights[:2]), 0.0)


def test_metrics_that_need_targets_say_so():
    with pytest.raises(ValueError, match="balanced_accuracy: targets is None"):
        cluster_bootstrap([0, 1, 1], metric=balanced_accuracy)


# ----------------------------------------------------------------------------------------------------
# cluster_bootstrap against scipy.stats.bootstrap and known cases.


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_one_example_per_cluster_and_one_seed_agrees_with_scipy(method):
    # Skewed data so that BCa differs visibly from the percentile interval.
    sample = np.random.default_rng(1).exponential(size=40)
    n_resamples = 20_000
    ours = cluster_bootstrap(sample, n_resamples=n_resamples, method=method, rng_seed=2)
    reference = stats.bootstrap(
        (sample,), np.mean, n_resamples=n_resamples, method=method, rng=np.random.default_rng(3)
    )
    tolerance = _endpoint_tolerance(sample, n_resamples)
    assert ours.estimate == pytest.approx(sample.mean())
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=tolerance)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=tolerance)


def test_balanced_accuracy_with_one_example_per_cluster_agrees_with_scipy():
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, 80)
    targets[:10] = 1  # imbalanced classes: balanced accuracy is not the accuracy
    predictions = np.where(rng.random(80) < 0.7, targets, 1 - targets)
    n_resamples = 1000  # scipy calls sklearn once per resample: ~3 ms each
    ours = cluster_bootstrap(
        predictions, targets=targets, metric=balanced_accuracy, n_resamples=n_resamples, rng_seed=5
    )
    reference = stats.bootstrap(
        (targets, predictions),
        balanced_accuracy_score,
        paired=True,
        vectorized=False,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(6),
    )
    assert ours.estimate == pytest.approx(balanced_accuracy_score(targets, predictions))
    # A balanced accuracy of 80 examples has a standard error near 0.05, so a 2.5% quantile of 1000
    # resamples has a Monte-Carlo sd near 0.005; 0.03 is ~4 sds of the difference of two bootstraps.
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.03)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.03)


def test_clusters_of_identical_values_give_the_interval_of_one_value_per_cluster():
    cluster_values = np.random.default_rng(7).normal(size=15)
    cluster_ids = np.arange(15)
    copies = np.repeat(np.arange(15), 4)
    np.random.default_rng(8).shuffle(copies)  # cluster members need not be adjacent
    for method in ("percentile", "bca"):
        one = cluster_bootstrap(cluster_values, cluster_ids=cluster_ids, n_resamples=500, method=method)
        many = cluster_bootstrap(cluster_values[copies], cluster_ids=copies, n_resamples=500, method=method)
        assert many.n_clusters == one.n_clusters == 15
        np.testing.assert_allclose(many.distribution, one.distribution, rtol=1e-12)
        np.testing.assert_allclose(many.interval, one.interval, rtol=1e-12)


def _coverage(cluster_aware: bool, n_datasets: int = 150) -> float:
    """Fraction of 95% intervals that contain the true mean 0.5 of clustered data (between-cluster and
    within-cluster standard deviation 1, 20 clusters of 1-6 examples)."""
    rng = np.random.default_rng(9)
    covered = 0
    for dataset in range(n_datasets):
        sizes = rng.integers(1, 7, 20)
        cluster_ids = np.repeat(np.arange(20), sizes)
        values = 0.5 + rng.normal(size=20)[cluster_ids] + rng.normal(size=cluster_ids.shape[0])
        result = cluster_bootstrap(
            values, cluster_ids=cluster_ids if cluster_aware else None, n_resamples=400, rng_seed=dataset
        )
        covered += result.low <= 0.5 <= result.high
    return covered / n_datasets


def test_coverage_of_a_known_mean_is_close_to_95_percent_only_when_clusters_are_resampled():
    # Percentile intervals of 20 clusters undercover a little (~93%); the binomial sd of 150 runs is 0.018.
    assert 0.88 <= _coverage(cluster_aware=True) <= 0.99
    # Treating correlated examples as independent gives intervals far too narrow.
    assert _coverage(cluster_aware=False) < 0.85


def test_identical_seeds_give_the_one_seed_interval():
    values = np.random.default_rng(10).normal(size=30)
    clusters = contiguous_block_ids(30, 3)
    one_seed = cluster_bootstrap(values, cluster_ids=clusters, n_resamples=300)
    three_seeds = cluster_bootstrap(np.stack([values] * 3), cluster_ids=clusters, n_resamples=300)
    np.testing.assert_allclose(three_seeds.distribution, one_seed.distribution, rtol=1e-12)


def test_seed_level_alone_agrees_with_scipy_on_the_seed_means():
    # Every example of a seed has that seed's value: only the seed resampling varies the metric.
    seed_means = np.random.default_rng(11).normal(size=12)
    per_example = np.repeat(seed_means[:, None], 20, axis=1)
    n_resamples = 20_000
    ours = cluster_bootstrap(per_example, n_resamples=n_resamples, rng_seed=12)
    reference = stats.bootstrap(
        (seed_means,), np.mean, n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(13)
    )
    tolerance = _endpoint_tolerance(seed_means, n_resamples)
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=tolerance)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=tolerance)


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(14)
    values = rng.normal(size=(1, 50)) + rng.normal(scale=0.5, size=(5, 1))
    width = lambda result: result.high - result.low
    assert width(cluster_bootstrap(values, n_resamples=500)) > width(
        cluster_bootstrap(values[:1], n_resamples=500)
    )


def test_fixed_rng_seed_reproduces_and_chunking_does_not_change_the_result(monkeypatch):
    values = np.random.default_rng(15).normal(size=(2, 40))
    clusters = contiguous_block_ids(40, 4)
    first = cluster_bootstrap(values, cluster_ids=clusters, n_resamples=300, method="bca", rng_seed=3)
    again = cluster_bootstrap(values, cluster_ids=clusters, n_resamples=300, method="bca", rng_seed=3)
    other = cluster_bootstrap(values, cluster_ids=clusters, n_resamples=300, method="bca", rng_seed=4)
    np.testing.assert_array_equal(first.distribution, again.distribution)
    assert first.interval == again.interval
    assert first.interval != other.interval
    monkeypatch.setattr(statistics, "_MAX_WEIGHT_ELEMENTS", 100)  # chunks of 2 resamples, 2 jackknife rows
    chunked = cluster_bootstrap(values, cluster_ids=clusters, n_resamples=300, method="bca", rng_seed=3)
    np.testing.assert_allclose(chunked.distribution, first.distribution, rtol=1e-12)
    np.testing.assert_allclose(chunked.interval, first.interval, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# paired_bootstrap.


def test_paired_mean_difference_is_the_bootstrap_of_per_example_differences():
    rng = np.random.default_rng(16)
    losses_a, losses_b = rng.normal(size=(2, 45))
    clusters = rng.integers(0, 9, 45)
    paired = paired_bootstrap(losses_a, losses_b, cluster_ids=clusters, n_resamples=400, rng_seed=1)
    difference = cluster_bootstrap(losses_a - losses_b, cluster_ids=clusters, n_resamples=400, rng_seed=1)
    assert paired.estimate == pytest.approx(difference.estimate)
    np.testing.assert_allclose(paired.distribution, difference.distribution, rtol=1e-9, atol=1e-12)


def test_paired_accuracy_difference_is_the_bootstrap_of_correctness_differences():
    rng = np.random.default_rng(17)
    targets = rng.integers(0, 4, 50)
    predictions_a = np.where(rng.random(50) < 0.8, targets, 0)
    predictions_b = np.where(rng.random(50) < 0.6, targets, 1)
    correct = lambda predictions: (predictions == targets).astype(float)
    paired = paired_bootstrap(predictions_a, predictions_b, targets=targets, metric=accuracy, n_resamples=300)
    reference = cluster_bootstrap(correct(predictions_a) - correct(predictions_b), n_resamples=300)
    np.testing.assert_allclose(paired.distribution, reference.distribution, rtol=1e-9, atol=1e-12)


def test_paired_balanced_accuracy_matches_a_brute_force_loop_over_the_same_cluster_draws():
    rng = np.random.default_rng(18)
    targets = rng.integers(0, 3, 36)
    predictions_a = np.where(rng.random(36) < 0.7, targets, 2)
    predictions_b = np.where(rng.random(36) < 0.5, targets, 0)
    clusters = contiguous_block_ids(36, 3)
    n_resamples = 150
    ours = paired_bootstrap(
        predictions_a,
        predictions_b,
        targets=targets,
        metric=balanced_accuracy,
        cluster_ids=clusters,
        n_resamples=n_resamples,
        rng_seed=2,
    )
    # The same draws as the implementation: all cluster resamples first, from a generator seeded rng_seed.
    cluster_counts = np.random.default_rng(2).multinomial(12, np.full(12, 1 / 12), size=n_resamples)
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for counts in cluster_counts:
            # Repeat each example as often as its cluster was drawn: the resampled data set itself.
            rows = np.repeat(np.arange(36), counts[clusters])
            expected.append(
                balanced_accuracy_score(targets[rows], predictions_a[rows])
                - balanced_accuracy_score(targets[rows], predictions_b[rows])
            )
    np.testing.assert_allclose(ours.distribution, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.interval, np.quantile(expected, [0.025, 0.975]), rtol=1e-12)


def test_pairing_narrows_the_interval_of_correlated_models():
    rng = np.random.default_rng(19)
    shared = rng.normal(size=60)  # example difficulty, common to both models
    losses_a = shared + 0.1 * rng.normal(size=60)
    losses_b = shared + 0.2 + 0.1 * rng.normal(size=60)
    paired = paired_bootstrap(losses_a, losses_b, n_resamples=500)
    separate_a = cluster_bootstrap(losses_a, n_resamples=500, rng_seed=1)
    separate_b = cluster_bootstrap(losses_b, n_resamples=500, rng_seed=2)
    unpaired_width = np.quantile(separate_a.distribution - separate_b.distribution, [0.025, 0.975]) @ [-1, 1]
    assert paired.high - paired.low < 0.5 * unpaired_width
    assert paired.high < 0  # a's losses are clearly smaller


def test_paired_models_may_have_different_numbers_of_seeds():
    rng = np.random.default_rng(20)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(5, 20)) + 1.0
    result = paired_bootstrap(a, b, n_resamples=200)
    # each model's mean over its own seeds, differenced: not a mean over paired seeds (there are none)
    assert result.estimate == pytest.approx(a.mean() - b.mean())
    assert result.n_clusters == 20 and result.high < 0


# ----------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument.


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cluster_bootstrap([]), "predictions is empty"),
        (lambda: cluster_bootstrap(np.zeros((2, 2, 2))), r"predictions must be \[examples\]"),
        (lambda: cluster_bootstrap([1.0, np.nan, 2.0]), "predictions has 1 non-finite"),
        (lambda: cluster_bootstrap([1.0, 2.0], cluster_ids=[0, 0]), "needs at least 2"),
        (lambda: cluster_bootstrap([1.0]), "needs at least 2"),
        (lambda: cluster_bootstrap([1.0, 2.0], cluster_ids=[0, 1, 2]), "cluster_ids has shape"),
        (lambda: cluster_bootstrap([1, 0], targets=[1], metric=accuracy), "targets has shape"),
        (
            lambda: cluster_bootstrap([1, 0], targets=[1.0, np.inf], metric=accuracy),
            "targets has 1 non-finite",
        ),
        (lambda: cluster_bootstrap([1.0, 2.0], confidence_level=95), "confidence_level must be in"),
        (lambda: cluster_bootstrap([1.0, 2.0], n_resamples=0), "n_resamples must be a positive integer"),
        (lambda: cluster_bootstrap([1.0, 2.0], method="basic"), "method must be 'percentile' or 'bca'"),
        (lambda: paired_bootstrap([1.0, 2.0], [1.0, 2.0, 3.0]), "same examples"),
        (lambda: paired_bootstrap([1.0, 2.0], [[np.nan, 1.0]]), "predictions_b has 1 non-finite"),
    ],
)
def test_bootstrap_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_contiguous_block_ids():
    np.testing.assert_array_equal(contiguous_block_ids(7, 3), [0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="block_length must be a positive integer"):
        contiguous_block_ids(7, 0)


# ----------------------------------------------------------------------------------------------------
# McNemar's exact test.


def test_mcnemar_hand_case():
    # 6 examples only a gets right, 1 only b: p = 2 * (1 + 7) / 2**7 = 0.125; concordant ones do not count.
    correct_a = [True] * 6 + [False] + [True, False] * 5
    correct_b = [False] * 6 + [True] + [True, False] * 5
    result = mcnemar_exact(correct_a, correct_b)
    assert (result.only_a_correct, result.only_b_correct) == (6, 1)
    assert result.p_value == pytest.approx(0.125, abs=1e-15)


def test_mcnemar_equals_scipy_binomtest_on_the_discordant_counts():
    rng = np.random.default_rng(21)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        correct_a = rng.random(n) < rng.uniform(0.3, 0.9)
        correct_b = rng.random(n) < rng.uniform(0.3, 0.9)
        result = mcnemar_exact(correct_a, correct_b)
        discordant = result.only_a_correct + result.only_b_correct
        expected = stats.binomtest(result.only_a_correct, discordant, 0.5).pvalue if discordant else 1.0
        assert result.p_value == pytest.approx(expected, rel=1e-12)
        assert mcnemar_exact(correct_b, correct_a).p_value == pytest.approx(result.p_value, rel=1e-12)


def test_mcnemar_without_discordant_examples_and_bad_input():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="correct_a has 3 examples and correct_b 2"):
        mcnemar_exact([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="correct_b must hold correct"):
        mcnemar_exact([1, 0], [1, 2])
    with pytest.raises(ValueError, match="correct_a must be a non-empty 1-D array"):
        mcnemar_exact([], [])


# ----------------------------------------------------------------------------------------------------
# Diebold-Mariano with the HLN correction.


def _diebold_mariano_by_loops(losses_a, losses_b, horizon, kernel):
    """The textbook formulas, one scalar at a time."""
    d = [a - b for a, b in zip(losses_a, losses_b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    gamma = [sum((d[t] - mean) * (d[t - k] - mean) for t in range(k, n)) / n for k in range(horizon)]
    weight = (lambda k: 1.0) if kernel == "rectangular" else (lambda k: 1.0 - k / horizon)
    variance = gamma[0] + 2.0 * sum(weight(k) * gamma[k] for k in range(1, horizon))
    dm = mean / (variance / n) ** 0.5
    return dm * ((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n) ** 0.5


def test_diebold_mariano_hand_cases():
    # d = [1, -1, 2, 0]: mean 0.5, gamma_0 = 5/4, DM = 0.5 / sqrt(5/16), HLN factor sqrt(3/4).
    result = diebold_mariano([1.0, 2.0, 1.0, 3.0], [0.0, 3.0, -1.0, 3.0])
    assert result.statistic == pytest.approx(np.sqrt(0.6), rel=1e-12)  # 0.5 / sqrt(5/16) * sqrt(3/4)
    assert result.p_value == pytest.approx(2 * stats.t.sf(np.sqrt(0.6), df=3), rel=1e-12)
    assert result.long_run_variance == pytest.approx(1.25)
    # h = 2: gamma_1 = -15/16; the Bartlett variance 5/4 - 15/16 = 5/16; HLN factor sqrt(1.5/4).
    bartlett = diebold_mariano([1.0, 2.0, 1.0, 3.0], [0.0, 3.0, -1.0, 3.0], horizon=2, kernel="bartlett")
    assert bartlett.long_run_variance == pytest.approx(5 / 16)
    assert bartlett.statistic == pytest.approx(0.5 / np.sqrt(5 / 64) * np.sqrt(1.5 / 4), rel=1e-12)
    # ... and the rectangular one, 5/4 - 15/8, is negative: a clear error, not a nan.
    with pytest.raises(ValueError, match="kernel='bartlett'"):
        diebold_mariano([1.0, 2.0, 1.0, 3.0], [0.0, 3.0, -1.0, 3.0], horizon=2)


@pytest.mark.parametrize("kernel", ["rectangular", "bartlett"])
@pytest.mark.parametrize("horizon", [1, 3])
def test_diebold_mariano_equals_the_textbook_loops(horizon, kernel):
    rng = np.random.default_rng(22)
    losses_a = rng.exponential(size=40) + np.convolve(rng.normal(size=42), np.ones(3) / 3, "valid") ** 2
    losses_b = rng.exponential(size=40)
    result = diebold_mariano(losses_a, losses_b, horizon=horizon, kernel=kernel)
    expected = _diebold_mariano_by_loops(losses_a.tolist(), losses_b.tolist(), horizon, kernel)
    assert result.statistic == pytest.approx(expected, rel=1e-10)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(expected), df=39), rel=1e-10)


def test_diebold_mariano_is_antisymmetric_in_the_two_models():
    rng = np.random.default_rng(23)
    losses_a, losses_b = rng.exponential(size=(2, 30))
    losses_b += 0.3
    forward = diebold_mariano(losses_a, losses_b, horizon=2, kernel="bartlett")
    backward = diebold_mariano(losses_b, losses_a, horizon=2, kernel="bartlett")
    assert backward.statistic == pytest.approx(-forward.statistic, rel=1e-12)
    assert backward.p_value == pytest.approx(forward.p_value, rel=1e-12)
    less = diebold_mariano(losses_a, losses_b, horizon=2, kernel="bartlett", alternative="less")
    greater = diebold_mariano(losses_b, losses_a, horizon=2, kernel="bartlett", alternative="greater")
    assert less.p_value == pytest.approx(greater.p_value, rel=1e-12)
    assert less.p_value == pytest.approx(forward.p_value / 2, rel=1e-12)  # a's losses are the smaller


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: diebold_mariano([1.0, 2.0, 3.0], [1.0, 2.0]), "same length"),
        (lambda: diebold_mariano([1.0, 2.0], [0.0, 1.0]), "too few"),
        (lambda: diebold_mariano([1.0] * 4, [2.0] * 4, horizon=3), "too few"),
        (lambda: diebold_mariano([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]), "not positive"),
        (lambda: diebold_mariano([1.0, np.nan, 3.0], [0.0, 1.0, 2.0]), "losses_a has 1 non-finite"),
        (lambda: diebold_mariano([1.0, 2.0, 4.0], [0.0, 1.0, 2.0], horizon=0), "horizon must be a positive"),
        (lambda: diebold_mariano([1.0, 2.0, 4.0], [0.0, 1.0, 2.0], alternative="lower"), "alternative must"),
        (lambda: diebold_mariano([1.0, 2.0, 4.0], [0.0, 1.0, 2.0], kernel="parzen"), "kernel must"),
    ],
)
def test_diebold_mariano_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------
# Holm-Bonferroni.


def test_holm_hand_cases():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone).
    np.testing.assert_allclose(holm_adjusted_p_values([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjusted_p_values([0.2, 0.5, 0.9]), [0.6, 1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm_adjusted_p_values([0.02, 0.02]), [0.04, 0.04])  # ties
    np.testing.assert_allclose(holm_adjusted_p_values([0.3]), [0.3])  # one test: no correction


def test_holm_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        holm_adjusted_p_values([])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        holm_adjusted_p_values([0.1, 1.5])
    with pytest.raises(ValueError, match="p_values has 1 non-finite"):
        holm_adjusted_p_values([0.1, np.nan])


# ----------------------------------------------------------------------------------------------------
# The verdict rule: every branch.


@pytest.mark.parametrize(
    ("direction", "intervals", "expected"),
    [
        ("greater", {"dna": (0.01, 0.2), "lra": (0.05, 0.1)}, "supported"),
        ("less", {256: (-0.3, -0.1), 4096: (-0.2, -0.01)}, "supported"),
        ("greater", {256: (-0.3, -0.1), 4096: (-0.2, -0.01)}, "contradicted"),
        ("less", {"dna": (0.01, 0.2)}, "contradicted"),
        ("greater", {256: (0.1, 0.3), 4096: (-0.3, -0.1)}, "depends"),
        ("less", {256: (0.1, 0.3), 1024: (-0.1, 0.1), 4096: (-0.3, -0.1)}, "depends"),
        ("greater", {256: (-0.1, 0.3), 4096: (-0.2, 0.1)}, "inconclusive"),
        ("greater", {256: (0.1, 0.3), 4096: (-0.1, 0.2)}, "inconclusive"),  # support, not everywhere
        ("greater", {256: (-0.3, -0.1), 4096: (-0.1, 0.2)}, "inconclusive"),  # against, not everywhere
        ("greater", {256: (0.0, 0.3)}, "inconclusive"),  # an end point at zero does not exclude it
        ("less", {256: (-0.3, 0.0)}, "inconclusive"),
    ],
)
def test_verdict_branches(direction, intervals, expected):
    assert verdict(direction, intervals) == expected


def test_verdict_takes_bootstrap_intervals_and_reports_each_key():
    better = paired_bootstrap([2.0, 3.0, 4.0, 5.0] * 3, [1.0, 1.5, 2.5, 3.0] * 3, n_resamples=200)
    unclear = paired_bootstrap([1.0, -1.0, 2.0, -2.0] * 3, [0.0] * 12, n_resamples=200)
    intervals = {("dna", 1024): better, ("dna", 8192): unclear}
    assert classify_intervals("greater", intervals) == {("dna", 1024): "claimed", ("dna", 8192): "neither"}
    assert verdict("greater", {("dna", 1024): better}) == "supported"
    assert verdict("greater", intervals) == "inconclusive"
    # the same clear difference over 4 resampled units (or 4 clusters) is not judged: too coarse
    coarse = paired_bootstrap([2.0, 3.0, 4.0, 5.0], [1.0, 1.5, 2.5, 3.0], n_resamples=200)
    assert coarse.low > 0 and coarse.n_clusters == 4
    assert verdict("greater", {("dna", 1024): coarse}) == "inconclusive"


def test_a_claim_over_too_few_clusters_is_not_judged():
    from seqjax.experiment.report import Claim, judge

    claim = Claim("rec beats att", "recurrent", "attention")
    many = {"estimate": 1.0, "low": 0.5, "high": 1.5, "p_value": 0.001, "n_clusters": 27}
    few = {**many, "n_clusters": 3}
    assert judge(claim, {1024: many}, larger_is_better=True)["verdict"] == "supported"
    judged = judge(claim, {1024: many, 8192: few}, larger_is_better=True)
    assert judged["verdict"] == "inconclusive"
    assert judged["per_key"]["8192"] == {
        "class": "neither", "holm_p": pytest.approx(0.002), "not_judged": "3 clusters, fewer than 10"
    }  # fmt: skip
    assert "not_judged" not in judged["per_key"]["1024"]


@pytest.mark.parametrize(
    ("direction", "intervals", "message"),
    [
        ("up", {1: (0.1, 0.2)}, "claimed_direction must be 'greater'"),
        ("greater", {}, "non-empty mapping"),
        ("greater", [(0.1, 0.2)], "non-empty mapping"),
        ("greater", {1: (0.3, 0.2)}, "low 0.3 > high 0.2"),
        ("greater", {1: (np.nan, 0.2)}, "must be finite"),
        ("greater", {1: 0.2}, r"pass a \(low, high\) pair"),
    ],
)
def test_verdict_bad_input(direction, intervals, message):
    with pytest.raises(ValueError, match=message):
        verdict(direction, intervals)


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99, 1 - 0.05 / 9])
@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 30), (1, 30), (15, 30), (29, 30), (30, 30), (617, 1000)])
def test_wilson_interval_matches_scipy(k, n, level):
    from scipy.stats import binomtest

    from seqjax.experiment.statistics import wilson_interval

    reference = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = wilson_interval(k, n, level)
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)  # exact at the ends


def test_wilson_interval_narrows_with_trials_and_rejects_bad_counts():
    from seqjax.experiment.statistics import wilson_interval

    few, many = wilson_interval(9, 10), wilson_interval(900, 1000)
    assert many[1] - many[0] < few[1] - few[0]
    for k, n, match in [
        (11, 10, "successes"),
        (-1, 10, "successes"),
        (2.5, 10, "successes"),
        (0, 0, "trials"),
    ]:
        with pytest.raises(ValueError, match=match):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="confidence_level"):
        wilson_interval(1, 10, 1.0)


def test_paired_seeds_cancel_what_the_seeds_share():
    # Two variants of one model: seed i of each is the same run up to a small constant offset, while the
    # seeds differ a lot. Unpaired seeds bury the offset in seed noise; paired seeds recover it exactly.
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.0, 1.0, size=(5, 1))
    a = seed_effect + rng.normal(0.0, 0.1, size=(5, 40))
    b = a - 0.01
    unpaired = statistics.paired_bootstrap(a, b, n_resamples=500)
    paired = statistics.paired_bootstrap(a, b, n_resamples=500, paired_seeds=True)
    assert unpaired.estimate == pytest.approx(0.01) and paired.estimate == pytest.approx(0.01)
    assert unpaired.low < 0.0 < unpaired.high
    assert paired.low == pytest.approx(0.01) and paired.high == pytest.approx(0.01)
    # Without the option, the draws are those of before (independent seed resamples per model).
    again = statistics.paired_bootstrap(a, b, n_resamples=500, paired_seeds=False)
    np.testing.assert_array_equal(again.distribution, unpaired.distribution)
    with pytest.raises(ValueError, match="paired_seeds=True pairs seed i"):
        statistics.paired_bootstrap(a, b[:3], paired_seeds=True)
