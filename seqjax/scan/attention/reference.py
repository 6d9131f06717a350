"""The materialised attention: the plain reference the other engines are tested against, and its weights
(`attention_weights`) for analysis."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.attention.visibility import Visibility, _from_call

__all__ = ["attention_reference", "attention_weights"]


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
    vis = _from_call("attention_reference", locals())
    *batch, lq, hq, _ = q.shape
    acc = accumulation_dtype(q.dtype)
    weights = _grouped_weights("attention", q, k, vis, alibi_slopes, scale)
    out = jnp.einsum("...hgqk,...khd->...qhgd", weights.astype(v.dtype), v, preferred_element_type=acc)
    return out.reshape(*batch, lq, hq, v.shape[-1]).astype(q.dtype)


def attention_weights(
    q: jax.Array,
    k: jax.Array,
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
    """The attention weights [*batch, Hq, Lq, Lk] that `attention_reference` multiplies the values by:
    softmax over the visible keys, in the accumulation dtype (float32 for float32 and lower, float64 for
    float64); a row with no visible key is all zeros. Same arguments as `attention_reference`, less `v`.
    The engines do not return weights; this is where an analysis reads them (O(L²) memory).

    Example:
      >>> q = k = jnp.ones((1, 3, 2, 4))  # [batch, L, heads, head_dim]: equal logits
      >>> attention_weights(q, k, causal=True)[0, 0].tolist()
      [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]]
    """
    vis = _from_call("attention_weights", locals())
    weights = _grouped_weights("attention_weights", q, k, vis, alibi_slopes, scale)
    *batch, hkv, group, lq, lk = weights.shape
    return weights.reshape(*batch, hkv * group, lq, lk)


def _grouped_weights(
    owner: str,
    q: jax.Array,
    k: jax.Array,
    vis: Visibility,
    alibi_slopes: jax.Array | None,
    scale: float | None,
) -> jax.Array:
    """[*batch, Hkv, group, Lq, Lk] softmax weights, the query heads grouped by their key/value head."""
    *batch, lq, hq, d = q.shape
    lk, hkv = k.shape[-3], k.shape[-2]
    if hq % hkv:
        raise ValueError(f"{owner}: {hq} query heads is not a multiple of {hkv} key/value heads.")
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
    return weights / jnp.where(denom > 0, denom, 1.0)
