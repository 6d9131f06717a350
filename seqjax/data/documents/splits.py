"""The documents entry points: `make_sources` (the splits as `DocumentSplit`s of fixed-shape next-token
examples), `prepare`, and the unigram baseline `unigram_bits_per_byte`.

    >>> splits = make_sources({"corpus": "gutenberg", "length": 512}, "datasets")  # doctest: +SKIP
    >>> splits["train"][0]["inputs"].shape  # doctest: +SKIP
    (512,)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.data.bpe import BpeTokenizer
from seqjax.data.documents.builder import prepare_builder, read_split_documents
from seqjax.data.documents.catalog import PACKINGS, resolve_config
from seqjax.data.documents.tokenizers import ByteTokenizer, bpe_tokenizer
from seqjax.data.preparation import route_dir
from seqjax.data.stream import TokenStream

__all__ = ["DocumentSplit", "make_sources", "prepare", "unigram_bits_per_byte"]


class DocumentSplit:
    """Fixed-shape next-token examples over one split's documents (random access, deterministic).

    `src[i]` (0 <= i < len(src)) is a dict of numpy arrays, all of shape [length]:
    - "inputs" int32: token ids (0 on padding).
    - "targets" int32: targets[t] is the token after inputs[t] (0 on padding).
    - "weights" float32: 1 where the target counts, 0 on padding.
    - "resets" bool: True where inputs[t] is the first token of a document.
    - "mask" bool: False where inputs[t] is padding.

    "packed": the split's documents (sorted by id) form one token stream; sequence k takes stream tokens
    [k*length, k*length + length + 1), so consecutive sequences overlap by one token and every token
    but the first is a target exactly once. Only the last sequence can be padded (so "mask" is all True
    elsewhere). A target that is the first token of the next document still counts: there is no
    separator token, the boundary is in "resets".
    "padded": each document alone, in consecutive chunks with the same one-token overlap; the last
    chunk of a document is padded. resets[0] is True on a document's first chunk.

    `max_examples_per_split` keeps that many examples spread evenly over the split (indices
    floor(j * n / max)), so a capped evaluation still sees every part of the split.
    `token_byte_lengths` [vocab_size] int64 is the bytes each token id stands for (1 for bytes; for BPE
    the length of its decoded byte string): bits per byte is NLL / ln 2 / the bytes of the counted
    targets, summed through it (`seqjax.train.evaluation.collect_split`), exact on any subset of the
    split. `bytes_per_token` (total bytes / total tokens of the split) only describes the split: a
    subset's targets, or a document's first tokens, can be much shorter or longer than its average.
    """

    def __init__(
        self,
        *,
        split: str,
        corpus: str,
        document_ids: Sequence[str],
        document_bytes: Sequence[int],
        tokens: Sequence[np.ndarray],
        vocab_size: int,
        token_byte_histograms: np.ndarray,
        length: int,
        packing: str,
        tokenizer_name: str,
        max_examples: int | None = None,
    ):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}.")
        self.split = split
        self.corpus = corpus
        self.document_ids = list(document_ids)
        self.length = int(length)
        self.packing = packing
        self.tokenizer_name = tokenizer_name
        self.vocab_size = int(vocab_size)
        self._token_byte_histograms = token_byte_histograms
        self.token_byte_lengths = np.rint(token_byte_histograms.sum(axis=1)).astype(np.int64)
        lengths = np.asarray([len(t) for t in tokens], dtype=np.int64)
        # the documents `token_stream()` holds (an empty one has no token there), in its order: what an
        # evaluation by document indexes
        self.stream_document_ids = [i for i, n in zip(self.document_ids, lengths, strict=True) if n > 0]
        self.num_documents = len(self.document_ids)
        self.num_bytes = int(np.sum(document_bytes))
        self.num_tokens = int(lengths.sum())
        self.bytes_per_token = self.num_bytes / self.num_tokens if self.num_tokens else 1.0
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
        self._stream = (
            np.concatenate([np.asarray(t, dtype=dtype) for t in tokens])
            if len(tokens)
            else np.zeros(0, dtype)
        )
        self._starts = (
            np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(tokens) else lengths
        )
        if packing == "packed":
            self._is_start = np.zeros(len(self._stream), dtype=bool)
            self._is_start[self._starts[lengths > 0]] = True
            total = math.ceil((len(self._stream) - 1) / self.length) if len(self._stream) > 1 else 0
            self._chunks = None
        else:
            per_document = [math.ceil((n - 1) / self.length) if n > 1 else 0 for n in lengths]
            self._chunks = np.asarray(
                [
                    (s, n, j * self.length)
                    for s, n, c in zip(self._starts, lengths, per_document, strict=True)
                    for j in range(c)
                ],
                dtype=np.int64,
            ).reshape(-1, 3)  # (document start in stream, document length, chunk offset in document)
            total = len(self._chunks)
        self.num_sequences = total
        if max_examples is not None and max_examples < total:
            self._positions = (np.arange(max_examples, dtype=np.int64) * total) // max_examples
        else:
            self._positions = np.arange(total, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"DocumentSplit index must be an integer, got {type(index).__name__}.")
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} examples.")
        position = int(self._positions[index])
        length = self.length
        example = {
            "inputs": np.zeros(length, np.int32),
            "targets": np.zeros(length, np.int32),
            "weights": np.zeros(length, np.float32),
            "resets": np.zeros(length, bool),
            "mask": np.zeros(length, bool),
        }
        if self.packing == "packed":
            start = position * length
            count = min(length, len(self._stream) - 1 - start)
            example["resets"][:count] = self._is_start[start : start + count]
        else:
            document_start, document_length, offset = (int(v) for v in self._chunks[position])
            start = document_start + offset
            count = min(length, document_length - 1 - offset)
            example["resets"][0] = offset == 0
        example["inputs"][:count] = self._stream[start : start + count]
        example["targets"][:count] = self._stream[start + 1 : start + 1 + count]
        example["weights"][:count] = 1.0
        example["mask"][:count] = True
        return example

    def token_stream(self) -> TokenStream:
        """The whole split as one stream (documents in order, whatever `packing` and
        `max_examples_per_split`), for segment recurrence (`seqjax.data.stream`).

        `counted` follows this split's examples: every target for "packed" (a target that starts the
        next document counts there too), none that is a document's first token for "padded".
        `token_bytes` is each token's byte length (1 for bytes; for BPE the length of its decoded byte
        string, from the tokenizer's byte histograms), so positions in a document count bytes.
        """
        lengths = np.diff(np.append(self._starts, len(self._stream)))
        starts = np.zeros(len(self._stream), dtype=bool)
        starts[self._starts[lengths > 0]] = True
        counted = np.ones(max(len(self._stream) - 1, 0), dtype=bool)
        if self.packing == "padded":
            counted &= ~starts[1:]
        token_bytes = self.token_byte_lengths[self._stream.astype(np.int64)]
        return TokenStream(self._stream, starts, counted, token_bytes)

    def target_byte_histogram(self) -> np.ndarray:
        """float64[256]: how often each byte value is covered by a counted target of this source's
        examples (BPE targets count each byte of their token). Feeds `unigram_bits_per_byte`."""
        token_counts = np.zeros(self.vocab_size, dtype=np.float64)
        for i in range(len(self)):
            example = self[i]
            token_counts += np.bincount(
                example["targets"], weights=example["weights"].astype(np.float64), minlength=self.vocab_size
            )
        return token_counts @ self._token_byte_histograms

    def describe(self) -> dict[str, Any]:
        """Counts for logs: documents, bytes, tokens, sequences, examples served, padding fraction."""
        weights = sum(float(self[i]["weights"].sum()) for i in range(len(self)))
        return {
            "split": self.split,
            "corpus": self.corpus,
            "packing": self.packing,
            "tokenizer": self.tokenizer_name,
            "vocab_size": self.vocab_size,
            "length": self.length,
            "documents": self.num_documents,
            "bytes": self.num_bytes,
            "tokens": self.num_tokens,
            "bytes_per_token": round(self.bytes_per_token, 4),
            "sequences": self.num_sequences,
            "examples": len(self),
            "padding_fraction": round(1.0 - weights / max(1, len(self) * self.length), 4),
        }


def make_sources(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, DocumentSplit]:
    """Prepares the builder (idempotent) and returns {"train", "validation", "test"} sequence sources.

    `data`: the data config (keys and defaults in `DEFAULTS`). With "tokenizer": "bpe" the vocabulary is
    trained on the train split only (cached in data_dir).
    """
    config = resolve_config(data)
    builder = prepare_builder(config, data_dir)
    split_documents = read_split_documents(builder)
    if config["tokenizer"] == "bpe":
        tokenizer: ByteTokenizer | BpeTokenizer = bpe_tokenizer(config, data_dir, split_documents["train"])
    else:
        tokenizer = ByteTokenizer()
    histograms = tokenizer.token_byte_histograms()
    sources = {}
    for split, documents in split_documents.items():
        texts = [text for _, text in documents]
        sources[split] = DocumentSplit(
            split=split,
            corpus=config["corpus"],
            document_ids=[doc_id for doc_id, _ in documents],
            document_bytes=[len(t) for t in texts],
            tokens=tokenizer.encode_documents(texts),
            vocab_size=tokenizer.vocab_size,
            token_byte_histograms=histograms,
            length=config["length"],
            packing=config["packing"],
            tokenizer_name=config["tokenizer"],
            max_examples=config["max_examples_per_split"],
        )
    return sources


def prepare(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Prepares everything `make_sources` needs (builder files, BPE vocabulary) and summarizes it."""
    config = resolve_config(data)
    sources = make_sources(config, data_dir)
    return {
        "kind": "documents",
        "corpus": config["corpus"],
        "route": config["route"],
        "data_dir": str(route_dir(data_dir, config["route"])),
        "splits": {split: source.describe() for split, source in sources.items()},
        "unigram_bits_per_byte_validation": round(
            unigram_bits_per_byte(sources["train"], sources["validation"]), 4
        ),
    }


def unigram_bits_per_byte(train_source: DocumentSplit, eval_source: DocumentSplit) -> float:
    """Cross-entropy (bits per byte) on `eval_source`'s target bytes of a unigram byte model fit on
    `train_source`'s target bytes with add-one smoothing: the trivial baseline a model must beat."""
    train = train_source.target_byte_histogram()
    probabilities = (train + 1.0) / (train.sum() + 256.0)
    evaluated = eval_source.target_byte_histogram()
    if evaluated.sum() == 0:
        raise ValueError(f"unigram_bits_per_byte: the {eval_source.split} source has no targets.")
    return float(-(evaluated * np.log2(probabilities)).sum() / evaluated.sum())
