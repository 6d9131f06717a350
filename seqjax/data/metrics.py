"""Task metrics, computed on the host from whole-split predictions (NumPy, float64).

- Classification: accuracy, balanced accuracy, macro-F1 (the unweighted mean of the per-class F1 over
  the classes in the labels or the predictions, as scikit-learn's `f1_score(average="macro")`),
  Matthews correlation (MCC, multiclass by Gorodkin's R_K), AUROC (binary; macro one-vs-rest of the
  softmax probabilities for more classes). Computed from every example of the split,
  since AUROC and MCC are not means of per-batch values.
- Forecasting: MSE and MAE on the normalised scale over every (example, step, variable), plus per
  horizon prefix (`mse@96` = the first 96 steps) when the model forecasts further.
- Language modeling: bits per byte from summed nats and byte counts; perplexity per token.

Trivial baselines the tests and the main job compare against: the majority class (accuracy; balanced
accuracy is 1/K and MCC 0 for it), last-value and mean forecasts, and unigram bits per byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "auroc",
    "classification_metrics",
    "forecast_metrics",
    "forecast_metrics_from_sums",
    "lm_metrics",
    "macro_f1",
    "majority_class_metrics",
    "matthews_corrcoef",
]

#: Per-task name of the eval metric that is better when larger (for best-checkpoint selection).
HIGHER_IS_BETTER = {"accuracy", "balanced_accuracy", "macro_f1", "mcc", "auroc"}


def _confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """MCC (Gorodkin's multiclass R_K; the usual φ coefficient for two classes). 0 when undefined."""
    c = _confusion(labels, predictions, num_classes).astype(np.float64)
    t, p = c.sum(1), c.sum(0)  # true and predicted counts per class
    n, correct = c.sum(), np.trace(c)
    denominator = math.sqrt((n**2 - p @ p) * (n**2 - t @ t))
    return float((correct * n - t @ p) / denominator) if denominator > 0 else 0.0


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in `labels` or `predictions` of F1 = 2 TP / (2 TP + FP + FN)
    (scikit-learn's `f1_score(average="macro")`); NaN with no examples.

    >>> macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)  # F1 2/3 and 4/5
    0.7333333333333334
    """
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    c = _confusion(labels, predictions, num_classes).astype(np.float64)
    tp, true, predicted = np.diag(c), c.sum(1), c.sum(0)
    present = (true + predicted) > 0
    if not present.any():
        return math.nan
    return float(np.mean(2 * tp[present] / (true + predicted)[present]))


def _binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U with average ranks for ties; NaN when one class is absent."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # average rank within runs of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC from class log-scores [N, K]: logits or log-probabilities (what `classification_metrics`
    is given by the models and the baselines), not probabilities. Binary uses class 1's score minus
    class 0's, the log-odds (any scores whose difference orders class 1 work, e.g. [0, GC fraction]).
    K > 2 is the macro mean over the classes present of the one-vs-rest AUROC of the softmax probability
    of class k, as scikit-learn's `roc_auc_score(multi_class="ovr")` on probabilities: a raw logit k
    ranks examples differently from p_k (the other classes' logits move p_k too), so it is not used.
    Probabilities: pass their logarithm.

    >>> labels = np.array([0, 1, 2, 2])
    >>> logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 3.0, 3.5], [-2.0, -1.0, -1.5]])
    >>> auroc(labels, logits)  # p_2 = 0.25, 0.21, 0.61, 0.31: both 2s first (raw logit 2 would give 0.72)
    1.0
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"auroc: scores must be [N, num_classes], got shape {scores.shape}.")
    if scores.shape[1] == 2:
        return _binary_auroc(labels == 1, scores[:, 1] - scores[:, 0])
    shifted = scores - scores.max(1, keepdims=True)  # softmax, stable for large logits
    probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    per_class = [_binary_auroc(labels == k, probabilities[:, k]) for k in range(scores.shape[1])]
    present = [a for a in per_class if not math.isnan(a)]
    return float(np.mean(present)) if present else math.nan


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall over the classes present), macro_f1, mcc, auroc."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise ValueError(
            f"classification_metrics: logits must be [N, num_classes] with N = {labels.size} labels, "
            f"got {logits.shape}."
        )
    num_classes = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"classification_metrics: labels must lie in [0, {num_classes}).")
    predictions = logits.argmax(-1)
    c = _confusion(labels, predictions, num_classes)
    support = c.sum(1)
    recall = np.diag(c)[support > 0] / support[support > 0]
    return {
        "accuracy": float((predictions == labels).mean()) if labels.size else math.nan,
        "balanced_accuracy": float(recall.mean()) if recall.size else math.nan,
        "macro_f1": macro_f1(labels, predictions, num_classes),
        "mcc": matthews_corrcoef(labels, predictions, num_classes),
        "auroc": auroc(labels, logits),
        "examples": float(labels.size),
    }


def majority_class_metrics(train_labels: np.ndarray, eval_labels: np.ndarray, num_classes: int) -> dict:
    """The trivial baseline: always predict the most frequent training class."""
    majority = int(np.bincount(np.asarray(train_labels).reshape(-1), minlength=num_classes).argmax())
    logits = np.zeros((np.asarray(eval_labels).size, num_classes))
    logits[:, majority] = 1.0
    return classification_metrics(eval_labels, logits)


#: The horizon prefixes (`mse@h`, `mae@h`) reported when a model forecasts further.
FORECAST_HORIZONS = (96, 192, 336, 720)


def forecast_metrics(
    forecasts: np.ndarray, targets: np.ndarray, horizons: Sequence[int] = FORECAST_HORIZONS
) -> dict[str, float]:
    """MSE and MAE over [N, horizon, V]; `mse@h`/`mae@h` for each listed h shorter than the horizon."""
    forecasts = np.asarray(forecasts, np.float64)
    targets = np.asarray(targets, np.float64)
    if forecasts.shape != targets.shape or forecasts.ndim != 3:
        raise ValueError(
            f"forecast_metrics: forecasts {forecasts.shape} and targets {targets.shape} must both be "
            f"[N, horizon, variables]."
        )
    error = forecasts - targets
    out = {"mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error))), "examples": len(error)}
    for h in horizons:
        if h < error.shape[1]:
            out[f"mse@{h}"] = float(np.mean(error[:, :h] ** 2))
            out[f"mae@{h}"] = float(np.mean(np.abs(error[:, :h])))
    return out


def forecast_metrics_from_sums(
    squared: np.ndarray, absolute: np.ndarray, count: float, horizons: Sequence[int] = FORECAST_HORIZONS
) -> dict[str, float]:
    """`forecast_metrics` from sums: `squared` and `absolute` [..., horizon] the errors of `count`
    forecasts summed over every axis but the horizon step and averaged over the variables (a carried
    stream evaluation cannot keep every forecast). "examples" is `count`."""
    squared = np.asarray(squared, np.float64).reshape(-1, np.shape(squared)[-1]).sum(0)
    absolute = np.asarray(absolute, np.float64).reshape(-1, np.shape(absolute)[-1]).sum(0)
    per_step = max(float(count), 1.0)
    out = {
        "mse": float(squared.sum() / per_step / len(squared)),
        "mae": float(absolute.sum() / per_step / len(absolute)),
        "examples": float(count),
    }
    for h in horizons:
        if h < len(squared):
            out[f"mse@{h}"] = float(squared[:h].sum() / per_step / h)
            out[f"mae@{h}"] = float(absolute[:h].sum() / per_step / h)
    return out


def lm_metrics(nll_nats: float, tokens: float, num_bytes: float | None = None) -> dict[str, float]:
    """Loss per token, perplexity per token, and bits per byte (`num_bytes` defaults to `tokens`:
    byte-level models)."""
    num_bytes = tokens if num_bytes is None else num_bytes
    per_token = nll_nats / max(tokens, 1.0)
    return {
        "loss": per_token,
        "perplexity": float(math.exp(min(per_token, 700.0))),
        "bits_per_byte": nll_nats / math.log(2.0) / max(num_bytes, 1.0),
        "tokens": float(tokens),
    }
