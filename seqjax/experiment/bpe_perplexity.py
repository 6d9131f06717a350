"""Perplexity per BPE token of a byte-level language model, by position in the document (issue 18 §1).

Papers report perplexity per (BPE) token; a byte-level model's natural unit is bits per byte. The
conversion is exact by the chain rule: a BPE token stands for a byte string, and a byte-level model's
log-probability of that string given everything before it is the sum of its bytes' log-probabilities.
So over a set of whole BPE tokens, perplexity per BPE token = 2^(bits of their bytes / number of
tokens) = exp(nats / tokens), whatever the tokenizer; only which tokens there are depends on it.

What counts (`bpe_position_sums`), for each document scored by a byte-level model (its per-byte
losses, `ByteLosses`: the targets at byte offsets 1, 2, ... from the document's start):

- a BPE token of the document counts when *every* one of its bytes was scored: its loss is the sum of
  its bytes' losses, and it goes to the bucket of its *first* byte's offset (all its bytes with it);
- a token only partly scored is left out with its scored bytes: always the document's first token (its
  first byte is the model's first input, never a target) and, when the model scored only a prefix
  (`max_document_tokens`), the token that straddles the span's end;
- a scored byte outside the document's text is left out too: in a packed stream a document's last
  input predicts the next document's first byte (offset = the document's length).

The per-document sums have the keys `seqjax.experiment.positions.position_curve` reads, with BPE tokens
as its tokens, so its "perplexity" is perplexity per BPE token, with the same intervals (bootstrap over
documents and seeds) as bits per byte.

    >>> losses = ByteLosses.from_targets(
    ...     {"document": np.zeros(9, np.int64), "offset": np.arange(1, 10), "bytes": np.ones(9, np.int64),
    ...      "nll": np.full(9, np.log(2), np.float32)}, ["doc"])
    >>> sums = bpe_position_sums(losses, [np.array([0, 2, 5, 6, 10])], edges=(0, 5))
    >>> sums["bucket_tokens"].tolist(), sums["bucket_bytes"].tolist(), sums["partial_tokens"].tolist()
    ([[1.0, 2.0]], [[3.0, 5.0]], [1.0])
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BYTE_LOSS_FORMAT",
    "ByteLosses",
    "bpe_position_sums",
    "load_byte_losses",
    "perplexity_curve",
    "save_byte_losses",
    "split_bpe",
    "token_boundaries",
]

#: The version of `save_byte_losses`' file; a file of another version is refused, never read as this one.
BYTE_LOSS_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ByteLosses:
    """One scoring's per-byte losses of a byte-level model on a split's documents: document d's targets
    are `offsets[starts[d]:starts[d + 1]]` (byte offsets from its start, increasing) with losses
    `nll[...]` (nats, float32). `document_ids`: the split's ids, in its order; `max_tokens`: the
    scoring's bound on each document's tokens (None: whole documents)."""

    document_ids: tuple[str, ...]
    starts: np.ndarray
    offsets: np.ndarray
    nll: np.ndarray
    max_tokens: int | None = None

    @classmethod
    def from_targets(
        cls, per_target: Mapping[str, np.ndarray], document_ids: Sequence[str], max_tokens: int | None = None
    ) -> ByteLosses:
        """From `trainer.evaluate(..., per_target=True)`'s "per_target" (sorted by document, then
        offset) and "document_ids". Refuses targets of more than one byte: the model is not byte-level."""
        document = np.asarray(per_target["document"], np.int64)
        offsets = np.asarray(per_target["offset"], np.int64)
        if np.any(np.asarray(per_target["bytes"]) != 1):
            raise ValueError(
                "ByteLosses: some targets stand for more than one byte; per-byte losses (and perplexity "
                "per BPE token by the chain rule) need a byte-level model (tokenizer=bytes)."
            )
        if len(document) and (document.min() < 0 or document.max() >= len(document_ids)):
            raise ValueError(
                f"ByteLosses: target documents run to {document.max()}, but there are {len(document_ids)} "
                "document ids; pass the split's ids."
            )
        key = document * (int(offsets.max(initial=0)) + 1) + offsets
        if np.any(np.diff(key) <= 0):
            raise ValueError("ByteLosses: targets must be sorted by (document, offset), each offset once.")
        starts = np.searchsorted(document, np.arange(len(document_ids) + 1), side="left")
        return cls(
            tuple(str(i) for i in document_ids),
            starts.astype(np.int64),
            offsets,
            np.asarray(per_target["nll"], np.float32),
            max_tokens,
        )

    def document(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, nll) of document `d`."""
        span = slice(int(self.starts[d]), int(self.starts[d + 1]))
        return self.offsets[span], self.nll[span]

    def document_nats(self) -> np.ndarray:
        """float64[documents]: each document's summed loss (nats)."""
        owner = np.repeat(np.arange(len(self.document_ids)), np.diff(self.starts))
        return np.bincount(owner, weights=self.nll.astype(np.float64), minlength=len(self.document_ids))

    def targets_per_document(self) -> np.ndarray:
        return np.diff(self.starts)

    def check_documents(self, document_ids: Sequence[str], what: str) -> None:
        """Refuses losses scored on other documents (or in another order) than `document_ids`."""
        ids = tuple(str(i) for i in document_ids)
        if ids != self.document_ids:
            differ = next(
                (i for i, (a, b) in enumerate(zip(ids, self.document_ids, strict=False)) if a != b),
                min(len(ids), len(self.document_ids)),
            )
            raise ValueError(
                f"{what}: the cached per-byte losses were scored on other documents "
                f"({len(self.document_ids)} ids) than these ({len(ids)} ids; the first difference at index "
                f"{differ}); they cannot be "
                "regrouped by these documents' tokens. Delete the cache to score the run again."
            )


def save_byte_losses(path: str | os.PathLike[str], losses: ByteLosses) -> None:
    """Writes `losses` to `path` (an .npz, with `BYTE_LOSS_FORMAT`), atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        partial,
        format=np.asarray(BYTE_LOSS_FORMAT),
        document_ids=np.asarray(losses.document_ids, dtype=str),
        starts=losses.starts.astype(np.int64),
        offsets=losses.offsets.astype(np.int32),
        nll=losses.nll.astype(np.float32),
        max_tokens=np.asarray(-1 if losses.max_tokens is None else losses.max_tokens),
    )
    os.replace(partial, path)  # a killed run leaves no half-written cache


def load_byte_losses(path: str | os.PathLike[str]) -> ByteLosses:
    """The `ByteLosses` of `save_byte_losses`' file; a file of another format is refused."""
    with np.load(path) as saved:
        version = int(saved["format"]) if "format" in saved.files else None
        if version != BYTE_LOSS_FORMAT:
            raise ValueError(
                f"{path} holds per-byte losses in format {version}, not {BYTE_LOSS_FORMAT} (what this code "
                "reads); they are not read as this format. Delete it to score the run again."
            )
        bound = int(saved["max_tokens"])
        return ByteLosses(
            tuple(str(i) for i in saved["document_ids"]),
            saved["starts"].astype(np.int64),
            saved["offsets"].astype(np.int64),
            saved["nll"].astype(np.float32),
            None if bound < 0 else bound,
        )


def token_boundaries(tokenizer: Any, documents: Sequence[bytes]) -> list[np.ndarray]:
    """Per document, the byte offsets where its BPE tokens start, and its length last ([tokens + 1]
    int64: token j is bytes [b[j], b[j + 1])), from `seqjax.data.bpe.BpeTokenizer`; checked to cover the
    document exactly."""
    table = np.asarray([len(piece) for piece in tokenizer.token_bytes()], np.int64)
    out = []
    for text, ids in zip(documents, tokenizer.encode_documents(documents), strict=True):
        bounds = np.concatenate([[0], np.cumsum(table[ids])]).astype(np.int64)
        if bounds[-1] != len(text):
            raise ValueError(
                f"token_boundaries: a document of {len(text)} bytes encodes to tokens of {bounds[-1]} bytes; "
                "the tokenizer must be byte-level and lossless."
            )
        out.append(bounds)
    return out


def bpe_position_sums(
    losses: ByteLosses, boundaries: Sequence[np.ndarray], edges: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per document (the module docstring's rules): "bucket_nll" (nats of the counted BPE tokens' bytes),
    "bucket_tokens" (counted BPE tokens) and "bucket_bytes" (their bytes) [documents, buckets], a token
    in the bucket of its first byte; "partial_tokens" (tokens left out, partly scored) and
    "excluded_bytes" (scored bytes left out: of those tokens, or outside the text) [documents].
    `boundaries`: `token_boundaries` of the same documents, in `losses`' order."""
    from seqjax.data.stream import check_position_buckets

    edges = check_position_buckets(edges)
    if len(boundaries) != len(losses.document_ids):
        raise ValueError(
            f"bpe_position_sums: {len(boundaries)} tokenized documents for losses on "
            f"{len(losses.document_ids)}; pass the same documents in the same order."
        )
    shape = (len(boundaries), len(edges))
    out = {k: np.zeros(shape) for k in ("bucket_nll", "bucket_tokens", "bucket_bytes")}
    out["partial_tokens"] = np.zeros(len(boundaries))
    out["excluded_bytes"] = np.zeros(len(boundaries))
    for d, bounds in enumerate(boundaries):
        offsets, nll = losses.document(d)
        size = int(bounds[-1])
        inside = offsets < size
        scored = np.zeros(size, np.int64)
        nats = np.zeros(size, np.float64)
        scored[offsets[inside]] = 1
        nats[offsets[inside]] = nll[inside]
        scored_before = np.concatenate([[0], np.cumsum(scored)])
        nats_before = np.concatenate([[0.0], np.cumsum(nats)])
        first, stop = bounds[:-1], bounds[1:]
        length = stop - first
        have = scored_before[stop] - scored_before[first]
        whole = (have == length) & (length > 0)
        bucket = np.searchsorted(edges, first[whole], side="right") - 1
        token_nats = nats_before[stop[whole]] - nats_before[first[whole]]
        out["bucket_nll"][d] = np.bincount(bucket, weights=token_nats, minlength=len(edges))
        out["bucket_tokens"][d] = np.bincount(bucket, minlength=len(edges))
        out["bucket_bytes"][d] = np.bincount(bucket, weights=length[whole], minlength=len(edges))
        out["partial_tokens"][d] = float(((have > 0) & ~whole).sum())
        out["excluded_bytes"][d] = float(len(offsets) - out["bucket_bytes"][d].sum())
    return out


def perplexity_curve(
    per_seed: Sequence[Mapping[str, np.ndarray]],
    edges: Sequence[int],
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """Perplexity per BPE token by bucket ("buckets") and over all of them ("overall"), from one
    `bpe_position_sums` per seed: each {"label", "documents", "tokens", "bytes", "perplexity":
    {"estimate", "low", "high"}}, by `positions.position_curve` (so its interval is the bootstrap over
    documents and seeds of bits per byte's, and its estimate the exp of the seeds' mean nats per token).

    >>> ones = np.ones((3, 2))
    >>> sums = {"bucket_nll": ones * 2 * np.log(2), "bucket_tokens": ones, "bucket_bytes": 2 * ones}
    >>> curve = perplexity_curve([sums], (0, 8), n_resamples=20)
    >>> curve["buckets"][0]["perplexity"]["estimate"], curve["overall"]["perplexity"]["estimate"]
    (4.0, 4.0)
    """
    from seqjax.experiment.positions import KEYS, position_curve

    def kept(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in ("label", "documents", "tokens", "bytes", "perplexity")}

    settings = {"confidence_level": confidence_level, "n_resamples": n_resamples}
    buckets = position_curve(per_seed, edges, **settings)["buckets"]
    pooled = [{k: np.asarray(s[k]).sum(1, keepdims=True) for k in KEYS} for s in per_seed]
    overall = position_curve(pooled, (0,), **settings)["buckets"][0]
    return {"buckets": [kept(b) for b in buckets], "overall": kept(overall) | {"label": "all"}}


def split_bpe(data: Mapping[str, Any], data_dir: str | os.PathLike[str], vocab_size: int) -> dict[str, Any]:
    """The byte-level BPE (`seqjax.data.bpe.train_bpe`, vocabulary `vocab_size`) of the train split of the
    documents task `data` (a data config), trained and cached as the documents task trains its own
    (`seqjax.data.documents.tokenizers.bpe_tokenizer`), and the test split's documents: {"tokenizer",
    "test_ids", "test_documents" (the non-empty ones, in the split's order: the documents an evaluation by
    document scores), "train_documents" (count), "train_bytes", "corpus"}."""
    from seqjax.data.documents import builder, catalog
    from seqjax.data.documents.tokenizers import bpe_tokenizer

    config = catalog.resolve_config({**data, "tokenizer": "bpe", "bpe_vocab_size": int(vocab_size)})
    split_documents = builder.read_split_documents(builder.prepare_builder(config, data_dir))
    train = split_documents["train"]
    return {
        "tokenizer": bpe_tokenizer(config, data_dir, train),
        "test_ids": [doc_id for doc_id, text in split_documents["test"] if text],
        "test_documents": [text for _, text in split_documents["test"] if text],
        "train_documents": len(train),
        "train_bytes": int(sum(len(text) for _, text in train)),
        "corpus": config["corpus"],
    }
