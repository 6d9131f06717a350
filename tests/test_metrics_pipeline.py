"""Task metrics against brute-force definitions, and the batch pipeline's guarantees: processes split a
global batch without overlap, a resumed position gives the same batches, eval has no drop_last."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from seqjax.data import metrics
from seqjax.data.pipeline import TrainBatches, eval_batches


def _auroc_by_pairs(labels, scores):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_binary_metrics_match_definitions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = rng.normal(size=(200, 2)) + labels[:, None] * np.array([-0.5, 0.5])
    logits[:20] = np.round(logits[:20])  # ties in the scores
    out = metrics.classification_metrics(labels, logits)
    pred = logits.argmax(-1)
    tp = np.sum((pred == 1) & (labels == 1))
    tn = np.sum((pred == 0) & (labels == 0))
    fp = np.sum((pred == 1) & (labels == 0))
    fn = np.sum((pred == 0) & (labels == 1))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert out["mcc"] == pytest.approx(mcc, abs=1e-12)
    assert out["accuracy"] == pytest.approx((tp + tn) / 200)
    assert out["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert out["auroc"] == pytest.approx(_auroc_by_pairs(labels, logits[:, 1] - logits[:, 0]), abs=1e-12)
    f1_positive, f1_negative = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
    assert out["macro_f1"] == pytest.approx((f1_positive + f1_negative) / 2, abs=1e-12)


def test_macro_f1_hand_case_and_absent_classes():
    # class 0: TP 1, FN 1 -> F1 2/3; class 1: TP 2, FP 1 -> 4/5; class 2: never seen or predicted (left out)
    labels, predictions = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert metrics.macro_f1(labels, predictions, 3) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # a class predicted but never true counts, with F1 0 (scikit-learn's f1_score(average="macro"))
    assert metrics.macro_f1(np.array([0, 0]), np.array([0, 2]), 3) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(metrics.macro_f1(np.zeros(0, int), np.zeros(0, int), 2))


def test_multiclass_metrics_and_majority_baseline():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    perfect = np.eye(4)[labels] * 5
    out = metrics.classification_metrics(labels, perfect)
    assert out["accuracy"] == out["balanced_accuracy"] == out["mcc"] == out["auroc"] == out["macro_f1"] == 1.0
    base = metrics.majority_class_metrics(labels, labels, 4)
    assert base["accuracy"] == pytest.approx(0.4)
    assert base["balanced_accuracy"] == pytest.approx(0.25)
    assert base["mcc"] == 0.0
    assert base["auroc"] == pytest.approx(0.5)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def test_multiclass_auroc_is_one_vs_rest_on_softmax_probabilities():
    # A raw logit k ranks examples differently from p_k (the other logits move p_k too): hand case where
    # class 2's raw logits put a true 2 (-1.5) last, while its probability (0.31) puts it above both others.
    labels = np.array([0, 1, 2, 2])
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 3.0, 3.5], [-2.0, -1.0, -1.5]])
    probabilities = _softmax(logits)
    by_pairs = np.mean([_auroc_by_pairs((labels == k).astype(int), probabilities[:, k]) for k in range(3)])
    raw = np.mean([_auroc_by_pairs((labels == k).astype(int), logits[:, k]) for k in range(3)])
    assert metrics.auroc(labels, logits) == pytest.approx(by_pairs) == 1.0
    assert raw < 0.75
    # log-probabilities (the baselines' scores) give the same as logits; a large shift changes nothing
    assert metrics.auroc(labels, np.log(probabilities)) == pytest.approx(1.0)
    assert metrics.auroc(labels, logits + 1e4) == pytest.approx(1.0)


def test_auroc_matches_scikit_learn_on_random_logits():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(0)
    for trial in range(60):
        k = (2, 3, 4)[trial % 3]
        labels = rng.integers(0, k, 40)
        labels[:k] = np.arange(k)  # every class present
        logits = rng.normal(size=(40, k)) + np.eye(k)[labels]
        logits[:5] = np.round(logits[:5])  # ties
        probabilities = _softmax(logits)
        expected = (
            roc_auc_score(labels, probabilities[:, 1])
            if k == 2
            else roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
        )
        assert metrics.auroc(labels, logits) == pytest.approx(expected, abs=1e-12)
        assert metrics.classification_metrics(labels, logits)["auroc"] == pytest.approx(expected, abs=1e-12)


def test_forecast_metrics_per_horizon_prefix():
    rng = np.random.default_rng(1)
    forecasts, targets = rng.normal(size=(2, 5, 200, 3))
    out = metrics.forecast_metrics(forecasts, targets, horizons=(96, 200))
    assert out["mse"] == pytest.approx(np.mean((forecasts - targets) ** 2))
    assert out["mae@96"] == pytest.approx(np.mean(np.abs(forecasts[:, :96] - targets[:, :96])))
    assert "mse@200" not in out  # equal to the whole horizon: reported as mse
    with pytest.raises(ValueError, match=r"\[N, horizon, variables\]"):
        metrics.forecast_metrics(forecasts[0], targets[0])


def test_bits_per_byte():
    out = metrics.lm_metrics(nll_nats=math.log(256) * 1000, tokens=1000)
    assert out["bits_per_byte"] == pytest.approx(8.0)
    assert out["perplexity"] == pytest.approx(256.0)
    # BPE: 1000 tokens covering 4000 bytes
    assert metrics.lm_metrics(math.log(2) * 1000, 1000, 4000)["bits_per_byte"] == pytest.approx(0.25)


class _Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"inputs": np.array([i, i]), "label": np.array(i % 3)}


def test_processes_split_global_batches_and_resume_is_pure():
    source = _Numbers(37)
    single = TrainBatches(source, 8, seed=3)
    first = [next(single)["inputs"][:, 0] for _ in range(12)]  # crosses epoch boundaries
    two = [TrainBatches(source, 8, seed=3, process_index=p, process_count=2) for p in range(2)]
    for i in range(12):
        rows = np.concatenate([next(t)["inputs"][:, 0] for t in two])
        np.testing.assert_array_equal(rows, first[i])
    resumed = TrainBatches(source, 8, seed=3, start=7)
    np.testing.assert_array_equal(next(resumed)["inputs"][:, 0], first[7])
    stream = np.concatenate(first)
    for epoch in (stream[:37], stream[37:74]):  # each epoch is a permutation, and a different one
        assert sorted(epoch.tolist()) == list(range(37))
    assert not np.array_equal(stream[:37], stream[37:74])
    for t in (single, resumed, *two):
        t.close()
    with pytest.raises(ValueError, match="does not divide over 3 processes"):
        TrainBatches(source, 8, process_count=3)


def test_eval_has_no_drop_last():
    source = _Numbers(21)
    seen = []
    for batch in eval_batches(source, 8):
        seen += batch["inputs"][batch["valid"], 0].tolist()
        assert batch["inputs"].shape == (8, 2)
    assert seen == list(range(21))
    halves = [list(eval_batches(source, 8, process_index=p, process_count=2)) for p in range(2)]
    union = sorted(v for h in halves for b in h for v in b["inputs"][b["valid"], 0].tolist())
    assert union == list(range(21))


def test_an_eval_cap_reads_examples_spread_over_the_split_not_its_first_ones():
    # e.g. a genomic split stored class by class: its first examples are all of one class
    source = _Numbers(21)
    capped = [v for b in eval_batches(source, 4, max_examples=6) for v in b["inputs"][b["valid"], 0].tolist()]
    assert capped == [0, 3, 7, 10, 14, 17]
    halves = [
        list(eval_batches(source, 4, max_examples=6, process_index=p, process_count=2)) for p in range(2)
    ]
    union = sorted(v for h in halves for b in h for v in b["inputs"][b["valid"], 0].tolist())
    assert union == capped
    assert [v for b in eval_batches(source, 8, max_examples=99) for v in b["inputs"][b["valid"], 0]] == list(
        range(21)
    )
