"""Loss by position in the document (issue 18): bits per byte and perplexity per byte-offset bucket,
with bootstrap intervals over documents and seeds, and a late-minus-early contrast.

The input is what `trainer.evaluate(..., by_document=True, position_buckets=edges)` returns per
document, once per seed: "bucket_nll" (nats), "bucket_tokens" and "bucket_bytes", each [documents,
buckets]. A model that uses long context has lower loss late in a document than early, so the curve
falls with position and the contrast bpb(late) - bpb(early) is negative.

Units of independence: documents (clusters) and seeds, resampled at two levels
(`statistics.cluster_bootstrap`). A bucket's interval resamples only the documents that reach it (have
targets in it): the others add nothing to its sums, and a resample without any would have no bytes.
The contrast is over the documents that reach both buckets, both buckets of a document drawn together
(paired), so it compares positions within the same documents.

    >>> rng = np.random.default_rng(0)
    >>> bytes_ = np.tile([1000.0, 1000.0], (20, 1))
    >>> seeds = [{"bucket_nll": bytes_ * [2.0, 1.0] * np.log(2) * rng.uniform(0.9, 1.1, (20, 2)),
    ...           "bucket_tokens": bytes_ / 4, "bucket_bytes": bytes_} for _ in range(2)]
    >>> curve = position_curve(seeds, (0, 1024), contrast=(1024, 0), n_resamples=200)
    >>> [round(b["bits_per_byte"]["estimate"], 1) for b in curve["buckets"]], curve["contrast"]["high"] < 0
    ([2.0, 1.0], True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.experiment.statistics import BootstrapInterval, cluster_bootstrap
from seqjax.experiment.weighted_metrics import bits_per_byte

__all__ = ["KEYS", "bucket_label", "nats_per_token", "position_curve"]

#: The per-document sums `position_curve` reads, each [documents, buckets].
KEYS = ("bucket_nll", "bucket_tokens", "bucket_bytes")


def nats_per_token(nll_nats: np.ndarray, tokens: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """`WeightedMetric`: weighted total NLL over weighted total targets (nats per token; its exp is the
    perplexity per token).

    >>> nats_per_token(np.array([2.0, 4.0]), np.array([1.0, 3.0]), np.array([[1.0, 1.0]]))
    array([1.5])
    """
    if tokens is None:
        raise ValueError("nats_per_token: pass the per-document target counts as `targets`.")
    return (weights @ nll_nats) / (weights @ tokens)


def bucket_label(edges: Sequence[int], index: int) -> str:
    """A bucket's range in bytes, "1k-2k" style (k = 1024), the last one open: "16k+".

    >>> [bucket_label((0, 1024, 1536), i) for i in range(3)]
    ['0-1k', '1k-1.5k', '1.5k+']
    """

    def size(n: int) -> str:
        return f"{n / 1024:g}k" if n >= 1024 else str(n)

    if index == len(edges) - 1:
        return f"{size(int(edges[index]))}+"
    return f"{size(int(edges[index]))}-{size(int(edges[index + 1]))}"


def _check_edges(edges: Sequence[int]) -> np.ndarray:
    array = np.asarray(edges)
    if array.ndim != 1 or not len(array) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"position_curve: edges must be a non-empty sequence of integer byte offsets, got {edges!r}."
        )
    if array[0] != 0 or np.any(np.diff(array) <= 0):
        raise ValueError(f"position_curve: edges={array.tolist()} must start at 0 and strictly increase.")
    return array


def _stack_seeds(per_seed: Sequence[Mapping[str, np.ndarray]], buckets: int) -> dict[str, np.ndarray]:
    """{"nll" [seeds, documents, buckets], "tokens", "bytes" [documents, buckets]}, checked: every seed
    scored the same targets (the same documents, tokens and bytes per bucket)."""
    if not per_seed:
        raise ValueError("position_curve: no seeds; pass one per-document sums mapping per seed.")
    for i, sums in enumerate(per_seed):
        missing = [k for k in KEYS if k not in sums]
        if missing:
            raise ValueError(
                f"position_curve: seed {i} has no {missing}; evaluate with by_document=True and "
                f"position_buckets (its 'per_document')."
            )
    nll = np.stack([np.asarray(s["bucket_nll"], np.float64) for s in per_seed])
    if nll.ndim != 3 or nll.shape[2] != buckets:
        raise ValueError(
            f"position_curve: bucket_nll has shape {nll.shape[1:]} per seed; expected [documents, {buckets}] "
            f"(one column per edge)."
        )
    tokens = np.asarray(per_seed[0]["bucket_tokens"], np.float64)
    size = np.asarray(per_seed[0]["bucket_bytes"], np.float64)
    for i, sums in enumerate(per_seed[1:], 1):
        same = np.array_equal(sums["bucket_tokens"], tokens) and np.array_equal(sums["bucket_bytes"], size)
        if not same:
            raise ValueError(
                f"position_curve: seed {i}'s bucket_tokens/bucket_bytes differ from seed 0's; every seed "
                f"must be scored on the same documents and targets (the same split and length)."
            )
    if tokens.shape != nll.shape[1:] or size.shape != nll.shape[1:]:
        raise ValueError(
            f"position_curve: bucket_tokens {tokens.shape} and bucket_bytes {size.shape} must match "
            f"bucket_nll {nll.shape[1:]}."
        )
    return {"nll": nll, "tokens": tokens, "bytes": size}


def _interval(value: BootstrapInterval | None, estimate: float, transform: Any = float) -> dict[str, float]:
    if value is None:  # fewer than 2 documents: an estimate without an interval
        return {"estimate": transform(estimate), "low": math.nan, "high": math.nan}
    return {"estimate": transform(value.estimate), "low": transform(value.low), "high": transform(value.high)}


def position_curve(
    per_seed: Sequence[Mapping[str, np.ndarray]],
    edges: Sequence[int],
    *,
    contrast: tuple[int, int] | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Bits per byte and perplexity per token by position in the document, with bootstrap intervals.

    Args:
      per_seed: one mapping per seed with "bucket_nll" (nats), "bucket_tokens" and "bucket_bytes"
        [documents, buckets] (`trainer.evaluate(..., by_document=True, position_buckets=edges)`'s
        "per_document"); every seed must have the same tokens and bytes (same documents and targets).
      edges: the bucket edges those sums were made with (byte offsets; bucket i is [edges[i],
        edges[i + 1]), the last open-ended).
      contrast: (late, early) bucket start offsets, e.g. (4096, 0): bpb(late bucket) - bpb(early
        bucket) over the documents that reach both, with its paired interval; negative when the model
        predicts later bytes better (it uses the context).
      confidence_level, n_resamples, rng_seed: as `statistics.cluster_bootstrap` (percentile intervals).

    Returns {"edges", "confidence_level", "seeds", "buckets": [...], "contrast": {...} or None}. Each
    bucket: "start", "stop" (None: open), "label", "midpoint" (bytes; the open bucket's is 1.5 × its
    start), "documents" (that reach it), "tokens", "bytes" (summed over documents), "bits_per_byte"
    and "perplexity" ({"estimate", "low", "high"}: a ratio of sums per seed, averaged over seeds;
    perplexity per token = exp(nats per token), its interval the exp of the nats interval; NaN bounds
    for a bucket with fewer than 2 documents, all NaN for an empty one). The contrast: "late", "early"
    (labels), "documents", "estimate", "low", "high".

    >>> ones = np.ones((4, 2))
    >>> sums = {"bucket_nll": ones * np.log(2), "bucket_tokens": ones, "bucket_bytes": ones}
    >>> curve = position_curve([sums], (0, 8), contrast=(8, 0), n_resamples=50)
    >>> curve["buckets"][0]["bits_per_byte"]["estimate"], curve["contrast"]["estimate"]
    (1.0, 0.0)
    """
    array = _check_edges(edges)
    sums = _stack_seeds(per_seed, len(array))
    nll, tokens, size = sums["nll"], sums["tokens"], sums["bytes"]
    settings = {"confidence_level": confidence_level, "n_resamples": n_resamples, "rng_seed": rng_seed}
    buckets = []
    for k, start in enumerate(array.tolist()):
        stop = int(array[k + 1]) if k + 1 < len(array) else None
        reached = size[:, k] > 0
        row = {
            "start": start,
            "stop": stop,
            "label": bucket_label(array, k),
            "midpoint": (start + stop) / 2 if stop is not None else 1.5 * max(start, 1),
            "documents": int(reached.sum()),
            "tokens": float(tokens[:, k].sum()),
            "bytes": float(size[:, k].sum()),
        }
        if not reached.any():
            nan = {"estimate": math.nan, "low": math.nan, "high": math.nan}
            buckets.append(row | {"bits_per_byte": dict(nan), "perplexity": dict(nan)})
            continue
        values = nll[:, reached, k]
        bpb = (values.sum(1) / size[reached, k].sum() / math.log(2)).mean()
        nats = (values.sum(1) / tokens[reached, k].sum()).mean()
        bpb_interval = nats_interval = None
        if reached.sum() >= 2:
            bpb_interval = cluster_bootstrap(
                values, targets=size[reached, k], metric=bits_per_byte, **settings
            )
            nats_interval = cluster_bootstrap(
                values, targets=tokens[reached, k], metric=nats_per_token, **settings
            )
        buckets.append(
            row
            | {
                "bits_per_byte": _interval(bpb_interval, bpb),
                "perplexity": _interval(nats_interval, nats, transform=lambda x: float(math.exp(x))),
            }
        )
    result: dict[str, Any] = {
        "edges": array.tolist(),
        "confidence_level": confidence_level,
        "seeds": int(nll.shape[0]),
        "buckets": buckets,
        "contrast": None,
    }
    if contrast is not None:
        result["contrast"] = _contrast(nll, size, array, contrast, settings)
    return result


def _contrast(
    nll: np.ndarray,
    size: np.ndarray,
    edges: np.ndarray,
    contrast: tuple[int, int],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """bpb(late) - bpb(early) over the documents with bytes in both buckets, paired by document."""
    starts = edges.tolist()
    late, early = contrast
    for name, value in (("late", late), ("early", early)):
        if value not in starts:
            raise ValueError(
                f"position_curve: contrast {name}={value} is not a bucket start; the buckets start at "
                f"{starts}."
            )
    if late == early:
        raise ValueError(f"position_curve: contrast=({late}, {early}) compares a bucket with itself.")
    i, j = starts.index(late), starts.index(early)
    both = (size[:, i] > 0) & (size[:, j] > 0)
    documents = int(both.sum())
    out = {"late": bucket_label(edges, i), "early": bucket_label(edges, j), "documents": documents}
    if documents == 0:
        return out | {"estimate": math.nan, "low": math.nan, "high": math.nan}
    # Each document is two examples (its late and its early bucket) of one cluster: a resample draws
    # both, so the difference is paired within documents.
    n = documents
    values = np.concatenate([nll[:, both, i], nll[:, both, j]], axis=1)  # [seeds, 2n]
    targets = np.concatenate([size[both, i], size[both, j]])
    is_late = np.arange(2 * n) < n

    def late_minus_early(
        predictions: np.ndarray, num_bytes: np.ndarray | None, weights: np.ndarray
    ) -> np.ndarray:
        assert num_bytes is not None
        return bits_per_byte(predictions[is_late], num_bytes[is_late], weights[:, is_late]) - bits_per_byte(
            predictions[~is_late], num_bytes[~is_late], weights[:, ~is_late]
        )

    estimate = float(np.mean([late_minus_early(v, targets, np.ones((1, 2 * n)))[0] for v in values]))
    if documents < 2:
        return out | {"estimate": estimate, "low": math.nan, "high": math.nan}
    interval = cluster_bootstrap(
        values, targets=targets, metric=late_minus_early, cluster_ids=np.tile(np.arange(n), 2), **settings
    )
    return out | _interval(interval, estimate)
