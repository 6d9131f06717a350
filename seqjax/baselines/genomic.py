"""Genomic baselines: k-mer count profiles and GC content, each fed to a logistic regression.

- `kmer_frequencies(windows, k)`: per window, the frequency of each of the 4**k k-mers over A, C, G, T
  (a k-mer touching any other byte, N or an IUPAC code, is not counted). Frequencies, not counts, so
  windows with some N compare with clean ones. `canonical=True` merges each k-mer with its reverse
  complement (2080 features at k=6 instead of 4096): right when the strand is arbitrary; the default
  keeps strands apart because the promoter task orients every positive window along its gene.
- `gc_content(windows)`: the G+C fraction of the A/C/G/T bases of each window (one feature).
- `fit_evaluate(train_features, train_labels, eval_features, eval_labels, num_classes)`: standardise
  (scikit-learn's StandardScaler, fit on train only), then a multinomial L2 logistic regression with a
  fixed C (default 1.0; no cross-validation: the species task splits by genome, and random folds of
  the train split would share genomes and reward overfitting). Metrics by
  `seqjax.data.metrics.classification_metrics` on the log-probabilities, as for the models.
- `evaluate_baselines(data, data_dir, split)`: every genomic baseline on a split of the real task.

    >>> import numpy as np
    >>> float(kmer_frequencies(np.frombuffer(b"ACGTA", np.uint8)[None], k=2).reshape(4, 4)[0, 1])  # "AC"
    0.25
    >>> gc_content(np.frombuffer(b"GGCCATNN", np.uint8)[None])
    array([0.66666667])
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from seqjax.baselines.result import BaselineResult
from seqjax.data import metrics

__all__ = [
    "KMER_SIZES",
    "evaluate_baselines",
    "fit_evaluate",
    "gc_content",
    "kmer_frequencies",
    "split_arrays",
]

#: k values `kmer_frequencies` accepts: 4**8 = 65,536 features is where the dense matrix stops being small.
KMER_SIZES = range(1, 9)
#: k values `evaluate_baselines` reports (the issue's 3..6).
REPORTED_KMER_SIZES = (3, 4, 5, 6)

# A, C, G, T -> 0..3 (either case); every other byte -> 4 (not a base: k-mers touching it are skipped).
_BASE_CODE = np.full(256, 4, np.int64)
for _code, _letters in enumerate(("Aa", "Cc", "Gg", "Tt")):
    for _letter in _letters:
        _BASE_CODE[ord(_letter)] = _code


def _check_windows(windows: np.ndarray, name: str) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.dtype != np.uint8:
        raise ValueError(
            f"{name}: windows must be uint8[num_windows, length] ASCII bases, got {windows.dtype}"
            f"{list(windows.shape)}; stack the split's 'inputs' arrays."
        )
    return windows


def kmer_frequencies(windows: np.ndarray, k: int, *, canonical: bool = False) -> np.ndarray:
    """float64[N, 4**k] k-mer frequencies of uint8[N, L] windows (k-mer index: base-4 number, A=0 C=1
    G=2 T=3, first base most significant). Rows with no countable k-mer are all zero. With
    `canonical`, a k-mer's count is added to the smaller of its and its reverse complement's index and
    the other column is dropped.

    >>> kmer_frequencies(np.frombuffer(b"AAAT", np.uint8)[None], k=3)[0, [0, 3]]  # AAA, AAT
    array([0.5, 0.5])
    """
    windows = _check_windows(windows, "kmer_frequencies")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k not in KMER_SIZES:
        raise ValueError(
            f"kmer_frequencies: k must be an int in [{KMER_SIZES.start}, {KMER_SIZES.stop - 1}], got {k!r}."
        )
    num_windows, length = windows.shape
    num_kmers = 4**k
    if length < k:
        raise ValueError(f"kmer_frequencies: windows of {length} bp are shorter than k = {k}; lower k.")
    bases = _BASE_CODE[windows]
    index = np.zeros((num_windows, length - k + 1), np.int64)
    valid = np.ones_like(index, dtype=bool)
    for offset in range(k):  # Horner's rule over the k positions of every k-mer at once
        column = bases[:, offset : offset + length - k + 1]
        valid &= column < 4
        index = index * 4 + np.minimum(column, 3)
    rows = np.broadcast_to(np.arange(num_windows)[:, None], index.shape)
    counts = np.bincount((rows * num_kmers + index)[valid], minlength=num_windows * num_kmers).reshape(
        num_windows, num_kmers
    )
    if canonical:
        reverse = _reverse_complement_index(k)
        keep = np.arange(num_kmers) <= reverse
        counts = np.where(keep, counts + np.where(np.arange(num_kmers) != reverse, counts[:, reverse], 0), 0)
        counts = counts[:, keep]
    totals = valid.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)


def _reverse_complement_index(k: int) -> np.ndarray:
    """For every k-mer index, its reverse complement's index (complement of base b is 3 - b)."""
    index = np.arange(4**k)
    digits = [(index // 4**p) % 4 for p in range(k)]  # least significant (last base) first
    reverse = np.zeros_like(index)
    for digit in digits:  # the last base, complemented, becomes the first
        reverse = reverse * 4 + (3 - digit)
    return reverse


def gc_content(windows: np.ndarray) -> np.ndarray:
    """float64[N]: (G + C) / (A + C + G + T) per window (0.5 for a window without any of them).

    >>> gc_content(np.frombuffer(b"ATAT", np.uint8)[None])
    array([0.])
    """
    bases = _BASE_CODE[_check_windows(windows, "gc_content")]
    counted = (bases < 4).sum(axis=1)
    gc = ((bases == 1) | (bases == 2)).sum(axis=1)
    return np.where(counted > 0, gc / np.maximum(counted, 1), 0.5)


def fit_evaluate(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int,
    *,
    name: str = "logistic regression",
    C: float = 1.0,
) -> BaselineResult:
    """Standardise + L2 logistic regression fit on the train features only, evaluated on the eval
    features. Per example: "probabilities" [N, num_classes], "prediction", "label", "log_loss" (nats).

    >>> x = np.array([[0.0], [1.0], [0.1], [0.9]])
    >>> y = np.array([0, 1, 0, 1])
    >>> fit_evaluate(x, y, x, y, 2).metrics["accuracy"]
    1.0
    """
    train_features = np.asarray(train_features, np.float64)
    eval_features = np.asarray(eval_features, np.float64)
    train_labels = np.asarray(train_labels).astype(np.int64).reshape(-1)
    eval_labels = np.asarray(eval_labels).astype(np.int64).reshape(-1)
    if train_features.ndim == 1:
        train_features = train_features[:, None]
    if eval_features.ndim == 1:
        eval_features = eval_features[:, None]
    if len(train_features) == 0:
        raise ValueError("fit_evaluate: the train split is empty; a baseline needs training examples.")
    if len(eval_features) == 0:
        raise ValueError("fit_evaluate: the evaluation split is empty; evaluate on a split with examples.")
    if len(train_features) != len(train_labels) or len(eval_features) != len(eval_labels):
        raise ValueError(
            f"fit_evaluate: features and labels differ in length (train {len(train_features)} vs "
            f"{len(train_labels)}, eval {len(eval_features)} vs {len(eval_labels)})."
        )
    present = np.unique(train_labels)
    if len(present) < 2:
        raise ValueError(
            f"fit_evaluate: train_labels hold only class {present.tolist()}; a classifier needs two classes."
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    model.fit(train_features, train_labels)
    # Classes absent from the train split get probability 0 (log-probability -inf would break AUROC).
    probabilities = np.zeros((len(eval_features), num_classes))
    probabilities[:, model.classes_] = model.predict_proba(eval_features)
    log_probabilities = np.log(np.clip(probabilities, 1e-300, None))
    label_probability = probabilities[np.arange(len(eval_labels)), eval_labels]
    return BaselineResult(
        name=name,
        metrics=metrics.classification_metrics(eval_labels, log_probabilities),
        per_example={
            "probabilities": probabilities,
            "prediction": probabilities.argmax(axis=1),
            "label": eval_labels,
            "log_loss": -np.log(np.clip(label_probability, 1e-300, None)),
        },
        settings={"C": C, "features": train_features.shape[1]},
    )


def split_arrays(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[N, length] windows, int64[N] labels) of a genomic split source (`GenomicSplit`)."""
    if len(source) == 0:
        raise ValueError(
            f"split_arrays: the {getattr(source, 'name', '')} split is empty; check the data config "
            "(length, max_examples_per_split)."
        )
    examples = [source[i] for i in range(len(source))]
    windows = np.stack([e["inputs"] for e in examples]).astype(np.uint8)
    labels = np.array([int(e["label"]) for e in examples], np.int64)
    return windows, labels


def evaluate_baselines(
    data: Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    kmer_sizes: Sequence[int] = REPORTED_KMER_SIZES,
    canonical: bool = False,
    C: float = 1.0,
) -> list[BaselineResult]:
    """Majority class, GC content and one k-mer model per k, fit on the train split of the genomic
    task `data` (a data config) and evaluated on `split`."""
    from seqjax.data import genomic  # pulls in tensorflow_datasets: only when a task is evaluated

    sources = genomic.make_sources(data, data_dir)
    if split not in sources:
        raise ValueError(f"evaluate_baselines: split must be one of {sorted(sources)}, got {split!r}.")
    num_classes = len(sources["train"].label_names)
    train_windows, train_labels = split_arrays(sources["train"])
    eval_windows, eval_labels = split_arrays(sources[split])
    majority = int(np.bincount(train_labels, minlength=num_classes).argmax())
    majority_probabilities = np.eye(num_classes)[np.full(len(eval_labels), majority)]
    results = [
        BaselineResult(
            "majority class",
            metrics.majority_class_metrics(train_labels, eval_labels, num_classes),
            {"prediction": majority_probabilities.argmax(1), "label": eval_labels},
            {"class": majority},
        ),
        fit_evaluate(
            gc_content(train_windows),
            train_labels,
            gc_content(eval_windows),
            eval_labels,
            num_classes,
            name="GC content + logistic regression",
            C=C,
        ),
    ]
    for k in kmer_sizes:
        result = fit_evaluate(
            kmer_frequencies(train_windows, k, canonical=canonical),
            train_labels,
            kmer_frequencies(eval_windows, k, canonical=canonical),
            eval_labels,
            num_classes,
            name=f"{k}-mer frequencies + logistic regression",
            C=C,
        )
        result.settings.update(k=k, canonical=canonical)
        results.append(result)
    return results
