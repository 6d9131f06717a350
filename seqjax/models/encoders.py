"""Input encoders: token embedding, DNA (IUPAC one-hot), and a linear map of continuous features.

Each encoder maps inputs [*batch, time, ...] to features [*batch, time, d_model] token by token, so the
same module serves whole sequences and single tokens ([*batch, ...] → [*batch, d_model]).

DNA
---
`DNAEncoder` turns nucleotides into a probability vector over (A, C, G, T) and maps it linearly to
`d_model` (a `nucleotide × d_model` matrix plus a bias). IUPAC ambiguity codes spread their mass evenly:

    A C G T       one-hot            U             = T (RNA)
    R = A/G       S = C/G    W = A/T    K = G/T    M = A/C    Y = C/T      ½ each
    B = C/G/T     D = A/G/T  H = A/C/T  V = A/C/G                           ⅓ each
    N             ¼ each
    - and .       gap / padding: the zero vector (only the bias remains)

Lowercase letters (soft-masked repeats) encode exactly like uppercase.

Two input forms:
- **ids** (`dna_to_ids`): small integers indexing `DNA_VOCAB = "ACGTNRYSWKMBDHV-"`; `DNA_PAD_ID` (15,
  "-") is the padding id. `dna_to_ids` raises on a character outside the alphabet, naming it and its
  position.
- **bytes**: the ASCII codes of the sequence text, dtype uint8 (e.g. `np.frombuffer(b"ACGT", np.uint8)`).
`input_format="auto"` (default) reads uint8 arrays as bytes and any other integer dtype as ids. The byte
0 (NUL) is padding, like "-". An unknown byte, or an id outside [0, 16), raises a ValueError naming it
and its index when the inputs are concrete (eager calls); inside `jit` nothing can raise on data, so
there it encodes as N.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.models.block import dense
from seqjax.models.partitioning import boxed

__all__ = [
    "DNA_PAD_ID",
    "DNA_VOCAB",
    "ENCODERS",
    "IUPAC",
    "DNAEncoder",
    "LinearEncoder",
    "TokenEmbedding",
    "dna_to_ids",
    "ids_to_dna",
]

ENCODERS = ("embedding", "dna", "linear")

#: nucleotide code → (A, C, G, T) probabilities.
IUPAC: dict[str, tuple[float, float, float, float]] = {}
for _code, _bases in {
    "A": "A",
    "C": "C",
    "G": "G",
    "T": "T",
    "U": "T",
    "R": "AG",
    "Y": "CT",
    "S": "CG",
    "W": "AT",
    "K": "GT",
    "M": "AC",
    "B": "CGT",
    "D": "AGT",
    "H": "ACT",
    "V": "ACG",
    "N": "ACGT",
    "-": "",
    ".": "",
}.items():
    IUPAC[_code] = tuple(float(b in _bases) / max(len(_bases), 1) for b in "ACGT")  # type: ignore[assignment]

#: the id vocabulary of `dna_to_ids`: id i is DNA_VOCAB[i]; "-" (15) is gap/padding.
DNA_VOCAB = "ACGTNRYSWKMBDHV-"
DNA_PAD_ID = DNA_VOCAB.index("-")
_N_ID = DNA_VOCAB.index("N")

_CHAR_TO_ID: dict[str, int] = {}
for _i, _c in enumerate(DNA_VOCAB):
    _CHAR_TO_ID[_c] = _i
    _CHAR_TO_ID[_c.lower()] = _i
_CHAR_TO_ID.update({"U": DNA_VOCAB.index("T"), "u": DNA_VOCAB.index("T"), ".": DNA_PAD_ID})

_ID_TABLE = np.asarray([IUPAC[c] for c in DNA_VOCAB], np.float32)  # [16, 4]
_BYTE_TABLE = np.tile(np.asarray(IUPAC["N"], np.float32), (256, 1))  # unknown bytes → N
_BYTE_KNOWN = np.zeros(256, bool)
for _c, _p in IUPAC.items():
    for _b in (ord(_c), ord(_c.lower())):
        _BYTE_TABLE[_b] = _p
        _BYTE_KNOWN[_b] = True
_BYTE_TABLE[0] = 0.0  # NUL: padding of fixed-width byte buffers
_BYTE_KNOWN[0] = True


def dna_to_ids(sequence: str | bytes) -> np.ndarray:
    """Nucleotide text → int32 ids into `DNA_VOCAB` (case-insensitive; U = T; "." = "-").

    Raises ValueError naming the first character outside the IUPAC alphabet and its position.
    """
    if isinstance(sequence, bytes | bytearray):
        sequence = sequence.decode("ascii", errors="replace")
    lut = np.full(128, -1, np.int32)
    for c, i in _CHAR_TO_ID.items():
        lut[ord(c)] = i
    codes = np.frombuffer(sequence.encode("utf-32-le"), np.uint32).astype(np.int64)
    ids = np.where(codes < 128, lut[np.minimum(codes, 127)], -1)
    bad = np.flatnonzero(ids < 0)
    if bad.size:
        pos = int(bad[0])
        raise ValueError(
            f"dna_to_ids: character {sequence[pos]!r} at position {pos} is not an IUPAC nucleotide code; "
            f"allowed: {DNA_VOCAB[:-1]} (either case), U, and '-'/'.' for gaps."
        )
    return ids.astype(np.int32)


def ids_to_dna(ids: Any) -> str:
    """The inverse of `dna_to_ids` (uppercase)."""
    return "".join(DNA_VOCAB[int(i)] for i in np.asarray(ids).reshape(-1))


def _check_integer(name: str, x: jax.Array, hint: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer inputs, got dtype {x.dtype}. {hint}")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(bad)[0])


class TokenEmbedding(nn.Module):
    """ids [*batch, time] → embeddings [*batch, time, d_model]; `attend` is the tied output map.

    The table is N(0, 1/d_model) (so tied logits start at unit scale), axes ('vocab', 'embed'). An id
    outside [0, vocab_size) raises when the ids are concrete (eager calls); under `jit` it embeds as
    the zero vector (a NaN there could leak through engines that multiply padded tokens by zero).
    """

    vocab_size: int
    d_model: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        init = nn.initializers.normal(stddev=float(self.d_model) ** -0.5)
        self.embedding = self.param(
            "embedding", boxed(init, ("vocab", "embed")), (self.vocab_size, self.d_model), self.param_dtype
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        ids = jnp.asarray(ids)
        _check_integer("TokenEmbedding", ids, "Use encoder='linear' for continuous inputs.")
        if _is_concrete(ids):
            values = np.asarray(ids)
            bad = (values < 0) | (values >= self.vocab_size)
            if bad.any():
                at = _first_bad(bad)
                raise ValueError(
                    f"TokenEmbedding: token id {values[at]} at index {at} is outside [0, {self.vocab_size}); "
                    f"raise vocab_size or fix the data."
                )
        valid = (ids >= 0) & (ids < self.vocab_size)
        out = jnp.take(self.embedding, jnp.where(valid, ids, 0), axis=0)
        out = jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))
        return out.astype(self.dtype) if self.dtype is not None else out

    def attend(self, x: jax.Array) -> jax.Array:
        """x [..., d_model] → logits [..., vocab_size] against the embedding table (tied LM head)."""
        table = self.embedding if self.dtype is None else self.embedding.astype(self.dtype)
        return jnp.einsum("...d,vd->...v", x.astype(table.dtype), table, preferred_element_type=jnp.float32)


class DNAEncoder(nn.Module):
    """Nucleotides (ids or ASCII bytes, see the module docstring) → IUPAC probabilities → linear → d_model."""

    d_model: int
    input_format: str = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.input_format not in ("auto", "ids", "bytes"):
            raise ValueError(
                f"DNAEncoder: input_format must be 'auto', 'ids' or 'bytes', got {self.input_format!r}."
            )
        self.proj = dense(
            self.d_model,
            ("nucleotide", "embed"),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def probabilities(self, seq: jax.Array) -> jax.Array:
        """[*shape] ids or bytes → [*shape, 4] probabilities over (A, C, G, T)."""
        seq = jnp.asarray(seq)
        _check_integer("DNAEncoder", seq, "Pass dna_to_ids(...) ids or uint8 ASCII bytes.")
        as_bytes = self.input_format == "bytes" or (self.input_format == "auto" and seq.dtype == jnp.uint8)
        if _is_concrete(seq):
            self._check_codes(np.asarray(seq), as_bytes)
        if as_bytes:
            return jnp.asarray(_BYTE_TABLE)[seq.astype(jnp.int32) & 0xFF]
        idx = seq.astype(jnp.int32)
        idx = jnp.where((idx >= 0) & (idx < len(DNA_VOCAB)), idx, _N_ID)
        return jnp.asarray(_ID_TABLE)[idx]

    def _check_codes(self, values: np.ndarray, as_bytes: bool) -> None:
        if as_bytes:
            bad = (values < 0) | (values > 255) | ~_BYTE_KNOWN[np.clip(values, 0, 255)]
            if bad.any():
                at = _first_bad(bad)
                byte = int(values[at])
                raise ValueError(
                    f"DNAEncoder: byte {byte} ({chr(byte % 256)!r}) at index {at} is not an IUPAC nucleotide "
                    f"code (allowed: {DNA_VOCAB[:-1]} in either case, U, '-', '.', and NUL as padding)."
                )
        else:
            bad = (values < 0) | (values >= len(DNA_VOCAB))
            if bad.any():
                at = _first_bad(bad)
                raise ValueError(
                    f"DNAEncoder: id {int(values[at])} at index {at} is outside the DNA vocabulary "
                    f"[0, {len(DNA_VOCAB)}); build ids with dna_to_ids, or pass uint8 ASCII bytes."
                )

    def __call__(self, seq: jax.Array) -> jax.Array:
        return self.proj(self.probabilities(seq))


class LinearEncoder(nn.Module):
    """Continuous features [*batch, time, input_size] → [*batch, time, d_model].

    Kernel axes ('features', 'embed').
    """

    input_size: int
    d_model: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self.proj = dense(
            self.d_model,
            ("features", "embed"),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"LinearEncoder: expected floating-point features, got dtype {x.dtype}; use "
                f"encoder='embedding' for token ids."
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"LinearEncoder: inputs have {x.shape[-1]} features (shape {x.shape}), but the model was "
                f"built with input_size={self.input_size}."
            )
        return self.proj(x)
