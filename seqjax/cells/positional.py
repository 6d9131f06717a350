"""Positional encodings of the softmax attention cells: rotary embeddings, ALiBi slopes and the
Transformer's sinusoidal embedding. Each reads integer token positions (the cells count them per
segment, skipping padding), so a cell's `apply` and its `step` loop encode alike.

Example:
  >>> import jax.numpy as jnp
  >>> q = jnp.ones((5, 2, 8))  # [time, heads, head_dim]
  >>> rotary_embedding(q, jnp.arange(5)).shape
  (5, 2, 8)
  >>> alibi_slopes(4)
  array([0.25      , 0.0625    , 0.015625  , 0.00390625])
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.base import DType
from seqjax.common.dtypes import accumulation_dtype

__all__ = ["POSITIONALS", "alibi_slopes", "rotary_embedding", "sinusoidal_embedding"]

POSITIONALS = ("rotary", "alibi", "sinusoidal", "none")  # the cells' `positional` choices


def alibi_slopes(num_heads: int) -> np.ndarray:
    """[num_heads] ALiBi slopes (Press et al. 2022), float64.

    For a power of two n: the geometric sequence 2^(−8/n), 2^(−16/n), …, 2^(−8) (1/2 … 1/256 for 8
    heads). Otherwise, with m the largest power of two below n: the m slopes for m heads, then every
    other slope of the sequence for 2m heads (2^(−4/m), 2^(−12/m), …) for the n − m remaining heads, as
    in the paper's reference code.
    """

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads <= 0:
        raise ValueError(f"alibi_slopes: num_heads must be positive, got {num_heads}.")
    closest = 1 << (int(num_heads).bit_length() - 1)
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, np.float64)


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (RoFormer, Su et al. 2021) in the half-split ("rotate half") layout.

    x [..., heads, d] with d even; positions [...] (integers). Feature pairs (i, i + d/2) are rotated by
    the angle position · base^(−2i/d). Computed in x's dtype promoted to at least float32; returns that
    dtype.
    """
    acc = accumulation_dtype(x.dtype)
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=acc) * 2 / x.shape[-1])
    angle = positions.astype(acc)[..., None, None] * inv_freq
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x = x.astype(acc)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def sinusoidal_embedding(positions: jax.Array, dim: int, dtype: DType = jnp.float32) -> jax.Array:
    """[..., dim] the Transformer's sinusoidal embedding (Vaswani et al. 2017) of integer positions [...]:
    feature 2i is sin(p / 10000^(2i/dim)), feature 2i + 1 is cos(p / 10000^(2i/dim)); `dim` may be odd."""
    idx = jnp.arange(dim)
    freq = 10000.0 ** (-(idx - idx % 2).astype(dtype) / dim)
    angle = positions.astype(dtype)[..., None] * freq
    return jnp.where(idx % 2 == 0, jnp.sin(angle), jnp.cos(angle))
