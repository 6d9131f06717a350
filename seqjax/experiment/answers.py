"""Accuracy on the answer tokens of a synthetic memory task (`seqjax.data.synthetic`), from the saved
test predictions of the protocol (`protocol.run_predictions`: an LM run's [n, 3] columns `LM_COLUMNS`,
the summed NLL, the answer tokens whose argmax is the target, and the answer tokens).

- *Exact match* (the headline): a test sequence counts as solved when every answer token is right
  (teacher forced: the inputs after GO are the true symbols). The test sequences are drawn independently
  (`SyntheticTask`: a pure function of (seed, index)), so a seed's exact matches are Bernoulli trials and
  its accuracy gets a Wilson interval (`statistics.wilson_interval`).
- *Token accuracy* (reported beside it): answer tokens right over answer tokens. The tokens of one
  sequence are not independent (a model that lost the memory misses them all), so its interval is the
  bootstrap over sequences (each sequence a cluster) and seeds, never a binomial one over tokens.
- `solved_class`: "solved" when every seed's Wilson interval lies at or above the threshold, "not
  solved" when every one lies below it, "unsettled" otherwise.
- `paired_exact_match`: exact match of model a minus model b on the same test sequences, paired
  bootstrap over sequences and seeds (`statistics.paired_bootstrap`), its two-sided p-value, and
  McNemar's exact test on the seeds' majority vote beside it.

    >>> correct = np.array([[3, 3, 1], [3, 2, 3]]); tokens = np.full((2, 3), 3)
    >>> exact_match(correct, tokens).tolist()
    [[True, True, False], [True, False, True]]
    >>> seed_rows = [{"low": 0.93, "high": 0.99}, {"low": 0.91, "high": 0.98}]
    >>> solved_class(seed_rows, 0.9)
    'solved'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.experiment import statistics
from seqjax.experiment.predictions import read_predictions, stack_seeds
from seqjax.experiment.report import difference_fields

__all__ = ["accuracy_row", "answer_counts", "exact_match", "paired_exact_match", "solved_class"]

Paths = Sequence[str | os.PathLike[str]]


def answer_counts(paths: Paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct answer tokens [seeds, n], answer tokens [seeds, n], example ids [n]) of one model's
    seeds (their predictions files), which must score the same test sequences in the same order."""
    runs = [read_predictions(p) for p in paths]
    columns, _, _ = stack_seeds(runs, "predictions")
    if columns.ndim != 3 or columns.shape[-1] != 3:
        raise ValueError(
            f"answer_counts: {paths[0]} holds predictions of shape {columns.shape[1:]}, not the LM's "
            "[n, 3] columns (nll, correct, tokens); it was saved before the evaluation counted correct "
            "tokens: train the run again."
        )
    return columns[..., 1], columns[..., 2], np.asarray(runs[0].example_ids)


def exact_match(correct: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Per sequence, whether every answer token is right (a sequence without answer tokens: False)."""
    correct, tokens = np.asarray(correct), np.asarray(tokens)
    return (tokens > 0) & (correct >= tokens)


def _token_accuracy(values: np.ndarray, targets: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """A `WeightedMetric`: correct answer tokens over answer tokens (`targets`), a ratio of sums."""
    assert targets is not None
    return (weights @ values) / np.maximum(weights @ targets, 1e-12)


def accuracy_row(paths: Paths, *, confidence_level: float = 0.95, n_resamples: int = 2000) -> dict[str, Any]:
    """One model's exact match and token accuracy over its seeds (module docstring): "estimate" (the
    mean of the seeds' exact-match accuracies), "low"/"high" (the Wilson interval of the seeds pooled,
    which treats the seeds' sequences as one sample: read with "seeds"), "seeds" (each seed's accuracy
    and Wilson interval) and "token_accuracy" (with its sequence x seed bootstrap interval).

        >>> accuracy_row(["predictions/lstm/seed0.npz", "predictions/lstm/seed1.npz"])  # doctest: +SKIP
        {'estimate': 0.12, 'low': 0.09, 'high': 0.16, 'seeds': [{'seed': 0, 'accuracy': 0.1, ...}], ...}
    """
    correct, tokens, _ = answer_counts(paths)
    solved = exact_match(correct, tokens)
    n = solved.shape[1]
    seeds = []
    for k, row in enumerate(solved):
        low, high = statistics.wilson_interval(int(row.sum()), n, confidence_level)
        seeds.append({"seed": k, "accuracy": float(row.mean()), "low": low, "high": high, "n": n})
    low, high = statistics.wilson_interval(int(solved.sum()), solved.size, confidence_level)
    token = statistics.cluster_bootstrap(
        correct,
        targets=tokens[0],
        metric=_token_accuracy,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    if not np.array_equal(tokens, np.broadcast_to(tokens[0], tokens.shape)):
        raise ValueError("accuracy_row: the seeds counted different answer tokens on the same sequences.")
    return {
        "metric": "exact_match",
        "estimate": float(solved.mean(1).mean()),
        "low": low,
        "high": high,
        "confidence_level": confidence_level,
        "sequences": n,
        "seeds": seeds,
        "token_accuracy": {"estimate": token.estimate, "low": token.low, "high": token.high},
    }


def solved_class(seeds: Sequence[Mapping[str, float]], threshold: float) -> str:
    """ "solved" when every seed's interval lies at or above `threshold`, "not solved" when every one
    lies below it, else "unsettled" (module docstring).

    >>> solved_class([{"low": 0.0, "high": 0.05}, {"low": 0.85, "high": 0.95}], 0.9)
    'unsettled'
    """
    if not seeds:
        raise ValueError("solved_class: no seeds; pass each seed's interval ({'low', 'high'}).")
    if all(s["low"] >= threshold for s in seeds):
        return "solved"
    if all(s["high"] < threshold for s in seeds):
        return "not solved"
    return "unsettled"


def paired_exact_match(
    paths_a: Paths, paths_b: Paths, *, confidence_level: float = 0.95, n_resamples: int = 2000
) -> dict[str, Any]:
    """Exact match of a minus b on the same test sequences: estimate, paired bootstrap interval over
    sequences and seeds (`statistics.paired_bootstrap`, each sequence its own cluster), its two-sided
    p-value, and McNemar's exact test on the seeds' majority vote (ties count as not solved).

        >>> paired_exact_match(s4d_paths, lstm_paths, confidence_level=0.99)  # doctest: +SKIP
        {'estimate': 0.31, 'low': 0.25, 'high': 0.37, 'p_value': 0.0, ...}
    """
    correct_a, tokens_a, ids_a = answer_counts(paths_a)
    correct_b, tokens_b, ids_b = answer_counts(paths_b)
    if not (np.array_equal(ids_a, ids_b) and np.array_equal(tokens_a[0], tokens_b[0])):
        raise ValueError("paired_exact_match: the two models scored different test sequences.")
    a = exact_match(correct_a, tokens_a).astype(np.float64)
    b = exact_match(correct_b, tokens_b).astype(np.float64)
    interval = statistics.paired_bootstrap(a, b, confidence_level=confidence_level, n_resamples=n_resamples)
    test = statistics.mcnemar_exact(a.mean(0) > 0.5, b.mean(0) > 0.5)
    return {
        **difference_fields(interval),
        "paired_test": {
            "name": "McNemar exact (majority vote over seeds)",
            "only_a": test.only_a_correct,
            "only_b": test.only_b_correct,
            "p_value": test.p_value,
        },
    }
