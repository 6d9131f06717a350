"""The materialised attention: the plain reference the other engines are tested against."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqjax.scan.attention.visibility import visibility

__all__ = ["attention_reference"]


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
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
      q_positions, kv_positions: [*batch, Lq] / [*batch, Lk] integer positions (default: arange).
      alibi_slopes: [Hq]; adds −slope·|q_pos − kv_pos| to the logits.
      scale: logit scale, default 1/√D.

    Returns:
      [*batch, Lq, Hq, Dv] in q's dtype; softmax and sums accumulate in float32 (float64 for float64).
    """
    *batch, lq, hq, d = q.shape
    lk, hkv = k.shape[-3], k.shape[-2]
    if hq % hkv:
        raise ValueError(f"attention: {hq} query heads is not a multiple of {hkv} key/value heads.")
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(lq), (*batch, lq))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(lk), (*batch, lk))
    visible = visibility(
        q_positions,
        kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        kv_global=kv_global,
        q_global=q_global,
        causal=causal,
        window=window,
    )
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
