"""Byte-level BPE for the document tasks, trained on a training split only (`tokenizers` package).

Why byte-level BPE: every byte string has an encoding (the 256 bytes are the initial alphabet), so no
document can hold an unknown token, and decoding gives the original bytes back exactly. That makes
bits per byte well defined for BPE models: each token stands for a known byte string
(`token_byte_histograms`), so a scored token's nats convert to bits per byte over the bytes of the
targets actually scored (`DocumentSplit.token_byte_lengths`), not a split-wide average bytes/token.

The vocabulary is a pure function of the training texts and `vocab_size` (the trainer is
deterministic; tested), which is what keeps validation/test documents out of it.
"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["BpeTokenizer", "train_bpe"]

MIN_VOCAB_SIZE = 256


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-unicode table that the ByteLevel pre-tokenizer uses."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


class BpeTokenizer:
    """A trained byte-level BPE: `encode_documents` gives one int array of token ids per document.

    `vocab_size` is the configured size (an upper bound on ids); the trained vocabulary can be smaller
    when the training text has too few distinct merges (`trained_vocab_size`).
    """

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.trained_vocab_size = tokenizer.get_vocab_size()
        if self.trained_vocab_size > self.vocab_size:
            raise ValueError(
                f"BPE vocabulary has {self.trained_vocab_size} tokens, more than vocab_size={vocab_size}."
            )

    def encode_documents(self, documents: Sequence[bytes]) -> list[np.ndarray]:
        """Token ids (int32) of each document (UTF-8 bytes)."""
        texts = [d.decode("utf-8") for d in documents]
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: Sequence[int]) -> bytes:
        """The bytes that `ids` stand for (exact inverse of `encode_documents`)."""
        table = self.token_bytes()
        return b"".join(table[int(i)] for i in ids)

    def token_bytes(self) -> list[bytes]:
        """The byte string of each token id (index = id; ids never trained map to b"")."""
        inverse = _unicode_to_byte()
        table = [b""] * self.vocab_size
        for piece, index in self.tokenizer.get_vocab().items():
            table[index] = bytes(inverse[ch] for ch in piece)
        return table

    def token_byte_histograms(self) -> np.ndarray:
        """float64[vocab_size, 256]: how often each byte value occurs in each token's byte string."""
        hist = np.zeros((self.vocab_size, 256), dtype=np.float64)
        for index, piece in enumerate(self.token_bytes()):
            if piece:
                np.add.at(hist[index], np.frombuffer(piece, dtype=np.uint8), 1.0)
        return hist

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer JSON atomically (a reader never sees a half-written file)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".partial") as f:
            f.write(self.to_str())
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int) -> BpeTokenizer:
        return cls(Tokenizer.from_file(str(path)), vocab_size)


def train_bpe(train_documents: Sequence[bytes], vocab_size: int) -> BpeTokenizer:
    """Trains a byte-level BPE with `vocab_size` tokens on `train_documents` (UTF-8 bytes) only.

    No normalizer and no prefix space, so decoding returns the exact bytes; no special tokens (document
    boundaries are carried by `resets`, not by a token).
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"bpe_vocab_size={vocab_size} is below {MIN_VOCAB_SIZE} (the byte alphabet); use at least 256."
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator([d.decode("utf-8") for d in train_documents], trainer=trainer)
    return BpeTokenizer(tokenizer, vocab_size)
