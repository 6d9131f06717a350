"""Document baselines: bits per byte of each evaluated document under a unigram model, an interpolated
Kneser–Ney byte n-gram model (both fit on the train split's bytes), and two general-purpose compressors.

- `unigram_document_bits`: add-one unigram over the 256 bytes, the formula of the project's trivial
  baseline `seqjax.data.documents.unigram_bits_per_byte`, here per document.
- `ngram_document_bits`: `KneserNeyBytes` (see `seqjax.baselines.kneser_ney`), each document from its
  start.
- `compressor_document_bits`: 8 x the compressed size of each document alone, with the standard
  library's lzma (`.xz` container, preset 9 | PRESET_EXTREME: what `xz -9e` writes, header and
  checksum included) or bz2 (level 9). A compressor sees only the document itself, no train split.

Aggregates are bits per byte over the whole split (total bits / total bytes, through
`seqjax.data.metrics.lm_metrics` as for the models), not means of per-document ratios. The models are
scored on every byte of every document; the trainer's packed stream scores every byte but the split's
first, a difference of one byte per split.

`evaluate_window_baselines` scores the same baselines on a model's own evaluation windows instead (the
fixed-length examples of a byte-tokenised split, `seqjax.data.documents.DocumentSplit`): each window's
counted targets, each conditioned only on the window's bytes since its last document start, as a model
that starts every window from a fresh state sees them. Its per-example values then pair exactly with
the models' (same windows, same targets).

    >>> bits = compressor_document_bits([b"a" * 10_000], "bz2")
    >>> bool(bits[0] / 10_000 < 0.05)
    True
"""

from __future__ import annotations

import bz2
import itertools
import lzma
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.baselines.kneser_ney import KneserNeyBytes
from seqjax.baselines.result import BaselineResult
from seqjax.data import metrics

__all__ = [
    "COMPRESSORS",
    "compressor_document_bits",
    "evaluate_baselines",
    "evaluate_window_baselines",
    "ngram_document_bits",
    "ngram_position_sums",
    "read_split_documents",
    "unigram_document_bits",
]

COMPRESSORS = {
    "xz": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "bz2": lambda data: bz2.compress(data, compresslevel=9),
}
#: n-gram orders `evaluate_baselines` reports.
REPORTED_ORDERS = (3, 5)


def _check_documents(documents: Sequence[bytes], name: str) -> list[bytes]:
    documents = [bytes(d) for d in documents]
    if not any(documents):
        raise ValueError(f"{name}: the documents hold no byte; use a split with at least one document.")
    return documents


def unigram_document_bits(train_documents: Sequence[bytes], documents: Sequence[bytes]) -> np.ndarray:
    """float64[num_documents]: bits of each document under the add-one unigram byte model of the
    train documents.

    >>> unigram_document_bits([b"ab"], [b"a"])  # P(a) = (1 + 1) / (2 + 256)
    array([7.01122726])
    """
    train = _check_documents(train_documents, "unigram_document_bits")
    counts = np.bincount(np.frombuffer(b"".join(train), np.uint8), minlength=256).astype(np.float64)
    bits_per_value = -np.log2((counts + 1.0) / (counts.sum() + 256.0))
    return np.array([bits_per_value[np.frombuffer(bytes(d), np.uint8)].sum() for d in documents])


def ngram_document_bits(
    train_documents: Sequence[bytes], documents: Sequence[bytes], order: int
) -> np.ndarray:
    """float64[num_documents]: bits of each document under an order-`order` interpolated Kneser–Ney
    byte model of the train documents.

    >>> bits = ngram_document_bits([b"abcabcabc"], [b"abcabc"], order=3)
    >>> bool(bits[0] / 6 < 2.0)
    True
    """
    model = KneserNeyBytes(_check_documents(train_documents, "ngram_document_bits"), order)
    return np.array([model.document_nats(bytes(d)).sum() / math.log(2.0) for d in documents])


def ngram_position_sums(
    model: KneserNeyBytes,
    documents: Sequence[bytes],
    edges: Sequence[int],
    scored_bytes: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The n-gram model's loss by position in each document, in the per-document sums a model's
    `trainer.evaluate(by_document=True, position_buckets=edges)` returns (`seqjax.experiment.positions`):
    "bucket_nll" (nats), "bucket_tokens" and "bucket_bytes" [documents, buckets], and "nll", "tokens"
    [documents]. A byte is a token here.

    The targets are a model's: every byte after a document's first (the first is the model's first
    input, never a target), at byte offsets 1, 2, ... from the document's start; with `scored_bytes`
    (per document, e.g. a model's `bucket_bytes.sum(1)` under `max_document_tokens`) only the first that
    many, so the baseline covers the same span as the models it sits beside. Why this baseline by
    position: an n-gram model sees only `order - 1` bytes, so whatever its loss does along a document
    is the documents' content changing with position (boilerplate up front, say), not context use.

        >>> model = KneserNeyBytes([b"abcabcabc"], order=3)
        >>> sums = ngram_position_sums(model, [b"abcabc"], edges=(0, 4))
        >>> sums["bucket_bytes"].tolist()  # offsets 1-3 and 4-5
        [[3.0, 2.0]]
    """
    from seqjax.data.stream import check_position_buckets

    edges = check_position_buckets(edges)
    documents = _check_documents(documents, "ngram_position_sums")
    if scored_bytes is not None and len(scored_bytes) != len(documents):
        raise ValueError(
            f"ngram_position_sums: scored_bytes has {len(scored_bytes)} entries for {len(documents)} "
            f"documents; pass one count per document (in the split's order)."
        )
    out = {k: np.zeros((len(documents), len(edges))) for k in ("bucket_nll", "bucket_tokens", "bucket_bytes")}
    for i, document in enumerate(documents):
        end = len(document) if scored_bytes is None else min(len(document), 1 + int(scored_bytes[i]))
        nats = model.document_nats(document[:end])[1:]  # targets at offsets 1 .. end - 1
        bucket = np.searchsorted(edges, np.arange(1, end), side="right") - 1
        out["bucket_nll"][i] = np.bincount(bucket, weights=nats, minlength=len(edges))
        out["bucket_bytes"][i] = np.bincount(bucket, minlength=len(edges))
    out["bucket_tokens"] = out["bucket_bytes"].copy()
    out["nll"] = out["bucket_nll"].sum(1)
    out["tokens"] = out["bucket_bytes"].sum(1)
    return out


def compressor_document_bits(documents: Sequence[bytes], compressor: str) -> np.ndarray:
    """float64[num_documents]: 8 x the compressed size in bytes of each document, compressed alone.

    >>> compressor_document_bits([b"hello"], "xz")  # 5 bytes -> 64: headers and checksum dominate
    array([512.])
    """
    if compressor not in COMPRESSORS:
        raise ValueError(
            f"compressor_document_bits: compressor must be one of {sorted(COMPRESSORS)}, got {compressor!r}."
        )
    compress = COMPRESSORS[compressor]
    return np.array([8.0 * len(compress(bytes(d))) for d in documents])


def read_split_documents(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, list[bytes]]:
    """{split: [document bytes]} of the documents task `data` (a data config), in the order the
    project's sources use (sorted by document id); prepares the data set if needed."""
    from seqjax.data.documents import builder, catalog  # pulls in tensorflow_datasets

    config = catalog.resolve_config(data)
    split_documents = builder.read_split_documents(builder.prepare_builder(config, data_dir))
    return {split: [text for _, text in documents] for split, documents in split_documents.items()}


def _result(name: str, bits: np.ndarray, documents: Sequence[bytes], settings: dict) -> BaselineResult:
    num_bytes = np.array([len(d) for d in documents], np.float64)
    scores = metrics.lm_metrics(float(bits.sum()) * math.log(2.0), float(num_bytes.sum()))
    return BaselineResult(
        name,
        {"bits_per_byte": scores["bits_per_byte"], "bytes": float(num_bytes.sum()), "documents": len(bits)},
        {"bits": bits, "bytes": num_bytes, "bits_per_byte": bits / np.maximum(num_bytes, 1.0)},
        settings,
    )


def evaluate_baselines(
    data: Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    orders: Sequence[int] = REPORTED_ORDERS,
    compressors: Sequence[str] = tuple(COMPRESSORS),
) -> list[BaselineResult]:
    """Unigram, one Kneser–Ney n-gram model per order and each compressor on the `split` documents of
    the documents task `data`; the models are fit on the train split's documents."""
    documents = read_split_documents(data, data_dir)
    if split not in documents:
        raise ValueError(f"evaluate_baselines: split must be one of {sorted(documents)}, got {split!r}.")
    train, evaluated = documents["train"], _check_documents(documents[split], f"the {split} split")
    results = [_result("unigram (add-one)", unigram_document_bits(train, evaluated), evaluated, {})]
    for order in orders:
        bits = ngram_document_bits(train, evaluated, order)
        results.append(_result(f"{order}-gram interpolated Kneser–Ney", bits, evaluated, {"order": order}))
    for compressor in compressors:
        name = {"xz": "xz -9e (lzma)", "bz2": "bz2 -9"}.get(compressor, compressor)
        bits = compressor_document_bits(evaluated, compressor)
        results.append(_result(name, bits, evaluated, {"compressor": compressor}))
    return results


def _window_spans(window: Mapping[str, np.ndarray]) -> tuple[list[bytes], bytes]:
    """(the byte strings to score a byte-token example's targets with, one per document span of the
    window: the span's inputs and its last target, whose nats after the first byte are the span's
    targets; the targets themselves). Only the counted targets (weight > 0, a prefix) are taken."""
    counted = int(np.count_nonzero(np.asarray(window["weights"]) > 0))
    inputs = np.asarray(window["inputs"])[:counted]
    targets = np.asarray(window["targets"])[:counted]
    if counted and (inputs.min() < 0 or max(inputs.max(), targets.max()) > 255):
        raise ValueError(
            "evaluate_window_baselines: the windows hold token ids above 255; the window baselines score "
            "byte-tokenised documents only (tokenizer='bytes'); use `evaluate_baselines` for whole documents."
        )
    starts = [0, *(int(t) for t in np.flatnonzero(np.asarray(window["resets"])[:counted]) if t > 0), counted]
    spans = [
        bytes(np.append(inputs[a:b], targets[b - 1]).astype(np.uint8))
        for a, b in itertools.pairwise(starts)
        if b > a
    ]
    return spans, bytes(targets.astype(np.uint8))


def _window_result(name: str, bits: np.ndarray, num_bytes: np.ndarray, settings: dict) -> BaselineResult:
    scores = metrics.lm_metrics(float(bits.sum()) * math.log(2.0), float(num_bytes.sum()))
    return BaselineResult(
        name,
        {"bits_per_byte": scores["bits_per_byte"], "bytes": float(num_bytes.sum()), "windows": len(bits)},
        {"bits": bits, "bytes": num_bytes, "bits_per_byte": bits / np.maximum(num_bytes, 1.0)},
        {**settings, "scored": "windows"},
    )


def evaluate_window_baselines(
    train_documents: Sequence[bytes],
    windows: Sequence[Mapping[str, np.ndarray]],
    *,
    orders: Sequence[int] = REPORTED_ORDERS,
    compressors: Sequence[str] = tuple(COMPRESSORS),
) -> list[BaselineResult]:
    """`evaluate_baselines`' unigram, n-gram and compressor baselines on a model's evaluation windows:
    each window (an example of a byte-tokenised `DocumentSplit`: "inputs", "targets", "weights",
    "resets") scores its counted targets, the n-gram model conditioning each only on the window's
    bytes since its last document start (a reset), and each compressor compressing the window's target
    bytes alone (its header and checksum then weigh more than on a whole document: ~60 bytes for xz).
    Per-example values are in the windows' order, with settings["scored"] = "windows".

        >>> as_bytes = lambda text: np.frombuffer(text, np.uint8)
        >>> window = {"inputs": as_bytes(b"abcab"), "targets": as_bytes(b"bcabc"), "weights": np.ones(5),
        ...           "resets": np.array([True, False, False, False, False])}
        >>> results = evaluate_window_baselines([b"abc" * 50], [window], compressors=())
        >>> [r.name for r in results][1:]
        ['3-gram interpolated Kneser–Ney', '5-gram interpolated Kneser–Ney']
        >>> [float(r.per_example["bytes"][0]) for r in results]
        [5.0, 5.0, 5.0]
        >>> bool(results[1].metrics["bits_per_byte"] < results[0].metrics["bits_per_byte"])
        True
    """
    train = _check_documents(train_documents, "evaluate_window_baselines")
    for compressor in compressors:
        if compressor not in COMPRESSORS:
            raise ValueError(
                f"evaluate_window_baselines: compressor must be one of {sorted(COMPRESSORS)}, "
                f"got {compressor!r}."
            )
    spans, targets = zip(*(_window_spans(w) for w in windows), strict=True) if windows else ((), ())
    num_bytes = np.array([len(t) for t in targets], np.float64)
    results = [
        _window_result("unigram (add-one)", unigram_document_bits(train, targets), num_bytes, {}),
    ]
    for order in orders:
        model = KneserNeyBytes(train, order)
        nats = np.array([sum(model.document_nats(s)[1:].sum() for s in span) for span in spans])
        name = f"{order}-gram interpolated Kneser–Ney"
        results.append(_window_result(name, nats / math.log(2.0), num_bytes, {"order": order}))
    for compressor in compressors:
        name = {"xz": "xz -9e (lzma)", "bz2": "bz2 -9"}.get(compressor, compressor)
        bits = compressor_document_bits(targets, compressor)
        results.append(_window_result(name, bits, num_bytes, {"compressor": compressor}))
    return results
