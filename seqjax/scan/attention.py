"""Exact softmax attention engines: a blockwise form with an online softmax (O(L·d) memory) and the
materialised reference.

Which key j a query i sees is decided by data, not by index, so the same engine serves causal and
bidirectional attention, packed sequences (segment ids), padding (kv_mask), a KV cache placed before
the new tokens, sliding windows and global tokens:

    visible(i, j) = kv_mask[j]
                    and q_segment_ids[i] == kv_segment_ids[j]
                    and (kv_positions[j] <= q_positions[i]                if causal)
                    and (q_positions[i] - kv_positions[j] < window        if causal and window
                         |q_positions[i] - kv_positions[j]| < window      if not causal and window
                         or kv_global[j] or q_global[i])

A query that sees no key returns zeros (and zero gradients), never NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["METHODS", "attention", "attention_reference", "visibility"]

METHODS = ("auto", "blockwise", "naive", "cudnn")


def visibility(
    q_positions: jax.Array,
    kv_positions: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
) -> jax.Array:
    """[*batch, Lq, Lk] bool: the rule in the module docstring, for positions [*batch, Lq] / [*batch, Lk]."""
    qp = q_positions[..., :, None]
    kp = kv_positions[..., None, :]
    visible = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), bool)
    if causal:
        visible &= kp <= qp
    if window is not None:
        near = (qp - kp < window) if causal else (jnp.abs(qp - kp) < window)
        if kv_global is not None:
            near |= kv_global[..., None, :]
        if q_global is not None:
            near |= q_global[..., :, None]
        visible &= near
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither.")
        visible &= q_segment_ids[..., :, None] == kv_segment_ids[..., None, :]
    if kv_mask is not None:
        visible &= kv_mask[..., None, :]
    return visible


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


def attention(
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
    method: str = "auto",
    block_q: int = 512,
    block_k: int = 512,
) -> jax.Array:
    """Exact softmax attention; same arguments and result as `attention_reference`.

    `method`: "blockwise" (online softmax over key blocks, custom VJP, O(L·d) memory, skips blocks with
    no visible pair), "naive" (the reference), "cudnn" (`jax.nn.dot_product_attention` on GPU), or
    "auto".
    """
    # Placeholder until the blockwise engine lands: the reference, same signature.
    if method not in METHODS:
        raise ValueError(f"attention: method must be one of {METHODS}, got {method!r}.")
    del block_q, block_k
    return attention_reference(
        q,
        k,
        v,
        q_positions=q_positions,
        kv_positions=kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        kv_global=kv_global,
        q_global=q_global,
        causal=causal,
        window=window,
        alibi_slopes=alibi_slopes,
        scale=scale,
    )
