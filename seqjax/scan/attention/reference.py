"""The materialised attention: the plain reference the other engines are tested against."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.attention.visibility import Visibility, _from_call

__all__ = ["attention_reference"]


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    visibility: Visibility | None = None,
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """The materialised [*batch, heads, Lq, Lk] form: the plain reference the blockwise form is tested
    against. O(L²) memory.

    Args:
      q: [*batch, Lq, Hq, D]; k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], with Hq a multiple of
        Hkv (grouped-query / multi-query attention when Hkv < Hq).
      visibility: which keys each query sees (`Visibility`); or, instead, its fields as keywords
        (q_positions, kv_positions, ..., causal, window), as in `attention`.
      alibi_slopes: [Hq]; adds −slope·|q_pos − kv_pos| to the logits.
      scale: logit scale, default 1/√D.

    Returns:
      [*batch, Lq, Hq, Dv] in q's dtype; softmax and sums accumulate in float32 (float64 for float64).

    Example:
      >>> q = k = v = jnp.ones((2, 16, 4, 8))  # [batch, L, heads, head_dim]
      >>> attention_reference(q, k, v, causal=True).shape
      (2, 16, 4, 8)
    """
    vis = _from_call(
        "attention_reference",
        visibility,
        q_positions=q_positions,
        kv_positions=kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        kv_global=kv_global,
        q_global=q_global,
        causal=causal,
        window=window,
    )
    *batch, lq, hq, d = q.shape
    lk, hkv = k.shape[-3], k.shape[-2]
    if hq % hkv:
        raise ValueError(f"attention: {hq} query heads is not a multiple of {hkv} key/value heads.")
    acc = accumulation_dtype(q.dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q_positions, kv_positions = vis.q_positions, vis.kv_positions
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(lq), (*batch, lq))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(lk), (*batch, lk))
    vis = dataclasses.replace(vis, q_positions=q_positions, kv_positions=kv_positions)
    visible = vis.pairs(lq, lk)
    group = hq // hkv
    qg = q.reshape(*batch, lq, hkv, group, d)
    logits = jnp.einsum("...qhgd,...khd->...hgqk", qg, k, preferred_element_type=acc) * scale
    if alibi_slopes is not None:
        dist = jnp.abs(q_positions[..., :, None] - kv_positions[..., None, :]).astype(acc)
        slopes = jnp.asarray(alibi_slopes, acc).reshape(hkv, group)
        logits = logits - slopes[..., None, None] * dist[..., None, None, :, :]
    visible = visible[..., None, None, :, :]
    logits = jnp.where(visible, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.where(visible, jnp.exp(logits - jax.lax.stop_gradient(row_max)), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("...hgqk,...khd->...qhgd", weights.astype(v.dtype), v, preferred_element_type=acc)
    return out.reshape(*batch, lq, hq, v.shape[-1]).astype(q.dtype)
