"""Validation of the engines' arguments, with errors that name the argument and the fix."""

from __future__ import annotations

import dataclasses
import math
import operator

import jax
import jax.numpy as jnp

from seqjax.scan.attention.visibility import Visibility


@dataclasses.dataclass
class _Args:
    """Validated inputs; `visibility` has its per-token arrays broadcast to [*batch, L] (or None)."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    visibility: Visibility
    alibi_slopes: jax.Array | None
    scale: float

    @property
    def batch(self) -> tuple[int, ...]:
        return self.q.shape[:-3]

    @property
    def lq(self) -> int:
        return self.q.shape[-3]

    @property
    def lk(self) -> int:
        return self.k.shape[-3]


def _check(fn: str, q, k, v, visibility: Visibility, *, alibi_slopes, scale) -> _Args:
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
        if x.ndim < 3:
            raise ValueError(
                f"{fn}: `{name}` has shape {x.shape}; expected [*batch, time, heads, head_dim] (rank >= 3)."
            )
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(
            f"{fn}: `q`, `k`, `v` have ranks {q.ndim}, {k.ndim}, {v.ndim} (shapes {q.shape}, {k.shape}, "
            f"{v.shape}); all three are [*batch, time, heads, head_dim] with the same batch axes."
        )
    if q.shape[:-3] != k.shape[:-3] or q.shape[:-3] != v.shape[:-3]:
        raise ValueError(
            f"{fn}: batch axes differ: `q` {q.shape}, `k` {k.shape}, `v` {v.shape}; broadcast them to one "
            "batch shape first."
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{fn}: `k` has head_dim {k.shape[-1]} but `q` has {q.shape[-1]}; q·k needs the same width "
            f"(shapes {q.shape}, {k.shape})."
        )
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"{fn}: `v` has shape {v.shape}, expected {k.shape[:-1]} + (Dv,) to match `k` {k.shape} "
            "(one value per key, same heads)."
        )
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv:
        raise ValueError(
            f"{fn}: {hq} query heads is not a multiple of {hkv} key/value heads; use Hkv dividing Hq "
            "(Hkv = Hq for multi-head, 1 for multi-query attention)."
        )
    visibility = visibility.checked(fn, q.shape[:-3], q.shape[-3], k.shape[-3])
    if alibi_slopes is not None:
        alibi_slopes = jnp.asarray(alibi_slopes)
        if alibi_slopes.shape != (hq,):
            raise ValueError(
                f"{fn}: `alibi_slopes` has shape {alibi_slopes.shape}, expected ({hq},): one slope per "
                "query head."
            )
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(max(q.shape[-1], 1))
    return _Args(q=q, k=k, v=v, visibility=visibility, alibi_slopes=alibi_slopes, scale=scale)


def _check_block(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"attention: `{name}` must be a Python int or None, got {value!r}.") from None
    if value < 1:
        raise ValueError(f"attention: `{name}` must be >= 1 (or None to choose it), got {value}.")
    return value
