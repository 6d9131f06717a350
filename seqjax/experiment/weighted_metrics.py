"""Metrics evaluated under many bootstrap weightings of the same examples at once.

A bootstrap resample of clusters is, for every example, a count of how often its cluster was drawn; a
metric of the resampled data is the metric with those counts as example weights. A `WeightedMetric`
takes one set of predictions, the targets (or None) and a weights matrix [resamples, examples], and
returns one value per resample, so thousands of resamples cost a few matrix products, not a Python loop.

Metrics that are not a mean of per-example values (balanced accuracy) fit the same form: they are
ratios of weighted sums. `from_sklearn` wraps any scikit-learn score that takes `sample_weight`
(slower: one call per resample) and is the reference the built-in metrics are tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "CLASSIFICATION_METRICS",
    "WeightedMetric",
    "accuracy",
    "balanced_accuracy",
    "bits_per_byte",
    "from_sklearn",
    "macro_f1",
    "mcc",
    "mean_value",
]

# (predictions [examples], targets [examples] or None, weights [resamples, examples]) -> [resamples]
WeightedMetric = Callable[[np.ndarray, np.ndarray | None, np.ndarray], np.ndarray]


def _require_targets(name: str, targets: np.ndarray | None) -> np.ndarray:
    if targets is None:
        raise ValueError(f"{name}: targets is None; pass the per-example targets (labels) as `targets`.")
    return targets


def mean_value(values: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of per-example values (a loss, a 0/1 correctness); `targets` is not used.

    >>> mean_value(np.array([1.0, 3.0]), None, np.array([[1.0, 1.0], [2.0, 0.0]]))
    array([2., 1.])
    """
    del targets  # the values are already per-example scores
    return (weights @ values) / weights.sum(axis=1)


def accuracy(predictions: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Weighted fraction of predicted labels equal to the targets.

    >>> accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]), np.ones((1, 3)))
    array([0.66666667])
    """
    correct = (predictions == _require_targets("accuracy", targets)).astype(np.float64)
    return mean_value(correct, None, weights)


def balanced_accuracy(predictions: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Mean over classes of the weighted recall, as `sklearn.metrics.balanced_accuracy_score` with
    `sample_weight`: a class whose examples all have weight zero in a resample is left out of that
    resample's mean (sklearn does the same, with a warning).

    >>> balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), np.ones((1, 4)))
    array([0.75])
    """
    targets = _require_targets("balanced_accuracy", targets)
    classes, class_index = np.unique(targets, return_inverse=True)
    one_hot = np.zeros((targets.shape[0], classes.shape[0]))
    one_hot[np.arange(targets.shape[0]), class_index] = 1.0
    correct = (predictions == targets).astype(np.float64)
    class_weight = weights @ one_hot  # [resamples, classes]
    correct_weight = weights @ (one_hot * correct[:, None])
    present = class_weight > 0
    recall = np.where(present, correct_weight / np.where(present, class_weight, 1.0), 0.0)
    return recall.sum(axis=1) / present.sum(axis=1)


def _weighted_confusion(predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[resamples, K, K] weighted confusion matrices (rows: target, columns: prediction) over the K
    classes that occur in the targets or the predictions."""
    classes, index = np.unique(np.concatenate([targets, predictions]), return_inverse=True)
    k, n = classes.shape[0], targets.shape[0]
    cell = index[:n] * k + index[n:]  # (target, prediction) pair of every example
    one_hot = np.zeros((n, k * k))
    one_hot[np.arange(n), cell] = 1.0
    return (weights @ one_hot).reshape(-1, k, k)


def macro_f1(predictions: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Mean over classes of the weighted F1 = 2 TP / (2 TP + FP + FN), as `sklearn.metrics.f1_score(
    average="macro")` with `sample_weight`: the classes are those in the targets or the predictions
    (of all examples, whatever their weight), and a class with no weighted TP, FP or FN scores 0.

    >>> macro_f1(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), np.ones((1, 4)))
    array([0.73333333])
    """
    targets = _require_targets("macro_f1", targets)
    confusion = _weighted_confusion(predictions, targets, weights)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # 2 TP + FP + FN
    f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1.0), 0.0)
    return f1.mean(axis=1)


def mcc(predictions: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The weighted Matthews correlation (Gorodkin's R_K for more than two classes), as
    `sklearn.metrics.matthews_corrcoef` with `sample_weight`; 0 where it is undefined.

    >>> mcc(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), np.ones((1, 4)))
    array([0.57735027])
    """
    targets = _require_targets("mcc", targets)
    confusion = _weighted_confusion(predictions, targets, weights)
    t, p = confusion.sum(axis=2), confusion.sum(axis=1)  # weighted true and predicted counts per class
    n = t.sum(axis=1)
    correct = np.trace(confusion, axis1=1, axis2=2)
    tp_sum = (t * p).sum(axis=1)
    denominator = np.sqrt(
        np.maximum(n**2 - (p * p).sum(axis=1), 0.0) * np.maximum(n**2 - (t * t).sum(axis=1), 0.0)
    )
    ok = denominator > 0
    return np.where(ok, (correct * n - tp_sum) / np.where(ok, denominator, 1.0), 0.0)


def bits_per_byte(nll_nats: np.ndarray, num_bytes: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Weighted total negative log-likelihood (nats) over weighted total bytes, in bits per byte: the
    language-modelling metric of a split, a ratio of sums (not a mean of per-example ratios).

    >>> bits_per_byte(np.array([2.0, 4.0]) * np.log(2), np.array([1.0, 3.0]), np.array([[1.0, 1.0]]))
    array([1.5])
    """
    num_bytes = _require_targets("bits_per_byte", num_bytes)
    return (weights @ nll_nats) / (weights @ num_bytes) / np.log(2.0)


def from_sklearn(score: Callable[..., float]) -> WeightedMetric:
    """A `WeightedMetric` from a scikit-learn score `score(y_true, y_pred, sample_weight=...)`.

    One call per resample: use it for metrics without a built-in vectorised version here.

    >>> from sklearn.metrics import accuracy_score
    >>> from_sklearn(accuracy_score)(np.array([0, 1]), np.array([0, 0]), np.array([[1.0, 1.0], [3.0, 1.0]]))
    array([0.5 , 0.75])
    """

    def metric(predictions: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
        targets = _require_targets(getattr(score, "__name__", "score"), targets)
        return np.array([score(targets, predictions, sample_weight=row) for row in weights], dtype=np.float64)

    metric.__name__ = getattr(score, "__name__", "sklearn_score")
    return metric


#: The classification metrics by name, for intervals of secondary metrics from saved predicted labels.
CLASSIFICATION_METRICS: dict[str, WeightedMetric] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "macro_f1": macro_f1,
    "mcc": mcc,
}
