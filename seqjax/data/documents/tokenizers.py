"""Tokenizers of the documents task: UTF-8 bytes (the default) and a byte-level BPE trained on the train
split only, cached next to the prepared data.

    >>> ByteTokenizer().encode_documents([b"hi"])[0].tolist()
    [104, 105]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.data.bpe import BpeTokenizer, train_bpe
from seqjax.data.documents.builder import config_name
from seqjax.data.preparation import preparation_lock, route_dir

__all__ = ["ByteTokenizer", "bpe_tokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): needs no training and no decoding."""

    vocab_size = 256

    def encode_documents(self, documents: Sequence[bytes]) -> list[np.ndarray]:
        return [np.frombuffer(d, dtype=np.uint8).astype(np.int32) for d in documents]

    def token_byte_histograms(self) -> np.ndarray:
        return np.eye(256, dtype=np.float64)


def bpe_tokenizer(
    config: Mapping[str, Any], data_dir: str | os.PathLike, train: Sequence[tuple[str, bytes]]
) -> BpeTokenizer:
    """The BPE of the train split, trained once (one process at a time) and cached under
    `<route dir>/bpe/` (the file name holds a hash of the train documents, so a changed train split never
    reuses a stale vocabulary)."""
    digest = hashlib.sha256()
    for doc_id, text in train:
        digest.update(doc_id.encode("utf-8") + b"\0" + hashlib.sha256(text).digest())
    name = f"{config_name(config['corpus'], config['split_fractions'])}-vocab{config['bpe_vocab_size']}"
    path = route_dir(data_dir, config["route"]) / "bpe" / f"{name}-{digest.hexdigest()[:16]}.json"
    with preparation_lock(path.with_name(f".{path.stem}.lock")):
        if path.exists():
            return BpeTokenizer.load(path, config["bpe_vocab_size"])
        tokenizer = train_bpe([text for _, text in train], config["bpe_vocab_size"])
        tokenizer.save(path)
    return tokenizer
