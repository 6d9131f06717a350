"""One query per row against a KV cache: the decoding form of the attention engine."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.attention.inputs import _check_block

__all__ = ["decode_attention"]


def decode_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_length: jax.Array,
    *,
    k_new: jax.Array | None = None,
    v_new: jax.Array | None = None,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
    block: int | None = None,
) -> jax.Array:
    """Causal attention of one query per row over a contiguous KV cache plus, optionally, the query's own
    key/value: what `attention` computes for Lq = 1, cache slot j at position j, the query at position
    `kv_length`, and keys `kv_mask = slot < kv_length` (followed by `k_new`).

    Args:
      q: [*batch, Hq, D], the query at position `kv_length`.
      k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], Hq a multiple of Hkv. Only the slots below
        `kv_length` are read into the result; the others may hold anything finite.
      kv_length: [*batch] integers, the visible cache slots.
      k_new, v_new: [*batch, Hkv, D] / [*batch, Hkv, Dv] or None: one more key at the query's position.
      alibi_slopes: [Hq]; adds −slope·(kv_length − j) to the logit of slot j (0 for `k_new`).
      scale: logit scale, default 1/√D.
      block: cache slots per step of the loop below; None (default): the whole cache in one step.

    Returns:
      [*batch, Hq, Dv] in q's dtype; zeros for a row that sees no key. The logits and the softmax are
      float32 (float64 for float64); the softmax weights are rounded to q's dtype before they multiply
      v, as in `attention`. Differentiable (reverse mode).

    How. A loop over blocks of `block` slots keeps an online softmax (running max, sum and output) and
    skips (`lax.cond`) the blocks past the longest row. Each block is one matmul over its slots viewed
    as [block, Hkv·D], against the queries laid out block-diagonally ([Hkv·D, Hq]: query head h only
    meets its key/value head h // group): Hkv times the minimal flops, but an einsum batched over heads,
    which are not the cache's leading axis, makes XLA transpose the whole cache first, and decoding is
    bound by reading the cache, not by flops. The new key is one extra logit in q's dtype, exactly as
    `attention` sees it whatever the cache's dtype; a caller that has already written it at slot
    `kv_length` may pass that cache (the slot is not read).

    Measured on XLA:CPU (docs/performance.md): a donated cache written with a dynamic-update-slice and
    then read inside the `cond` is updated in place; reading it before the write, or reading the
    written cache outside a control-flow boundary (XLA then fuses the write into the reader too),
    copies the whole cache every call. A block smaller than the cache is sliced out with a copy, which
    made a 64k cache about twice as slow to read in blocks of 512 to 8192 slots as in one block: hence
    the default. Smaller blocks pay off only when the cache is mostly empty.
    """
    *batch, hq, d = q.shape
    lk, hkv, dv = k.shape[-3], k.shape[-2], v.shape[-1]
    if hq % hkv:
        raise ValueError(f"decode_attention: {hq} query heads is not a multiple of {hkv} key/value heads.")
    if (k_new is None) != (v_new is None):
        raise ValueError("decode_attention: pass both k_new and v_new, or neither.")
    group = hq // hkv
    dtype = q.dtype
    acc = accumulation_dtype(jnp.result_type(q, k, v))
    scale = jnp.asarray(1.0 / math.sqrt(d) if scale is None else float(scale), acc)
    rows = math.prod(batch)
    block = lk if block is None else min(_check_block("block", block), lk)
    # The cache keeps its dtype: a float32 cache holding bfloat16 keys computes exactly what the
    # engine computes on the keys cast to bfloat16, without a conversion pass over the whole cache.
    mm_k, mm_v = jnp.promote_types(dtype, k.dtype), jnp.promote_types(dtype, v.dtype)
    qg = q.reshape(rows, hkv, group, d)
    eye = jnp.eye(hkv, dtype=dtype)
    q_bd = jnp.einsum("gh,bhjd->bgdhj", eye, qg).reshape(rows, hkv * d, hq).astype(mm_k)
    k = k.reshape(rows, lk, hkv, d)
    v = v.reshape(rows, lk, hkv, dv)
    length = jnp.broadcast_to(kv_length, tuple(batch)).reshape(rows).astype(jnp.int32)
    slopes = None if alibi_slopes is None else jnp.asarray(alibi_slopes, acc)
    heads = jnp.arange(hkv)

    if k_new is None:
        m = jnp.full((rows, hq), -jnp.inf, acc)
        denom = jnp.zeros((rows, hq), acc)
        out = jnp.zeros((rows, hq, dv), acc)
    else:  # the new key first: its weight is exp(0) = 1 against its own logit as the running max
        kn = k_new.reshape(rows, hkv, 1, d).astype(acc)
        m = jnp.sum(qg.astype(acc) * kn, axis=-1).reshape(rows, hq) * scale
        denom = jnp.ones((rows, hq), acc)
        vn = v_new.reshape(rows, hkv, 1, dv).astype(acc)
        out = jnp.broadcast_to(vn, (rows, hkv, group, dv)).reshape(rows, hq, dv)

    def one_block(carry: tuple, j: jax.Array) -> tuple:
        m, denom, out = carry
        # dynamic_slice clamps the last block's start; the slots it repeats are masked out below.
        start = jnp.minimum(j * block, lk - block)
        slot = start + jnp.arange(block)
        k_b = lax.dynamic_slice_in_dim(k, start, block, axis=1).reshape(rows, block, hkv * d)
        v_b = lax.dynamic_slice_in_dim(v, start, block, axis=1).reshape(rows, block, hkv * dv)
        s = lax.dot_general(k_b.astype(mm_k), q_bd, (((2,), (1,)), ((0,), (0,))), preferred_element_type=acc)
        s = s * scale  # [rows, block, Hq]
        if slopes is not None:
            s = s - slopes * (length[:, None] - slot)[..., None].astype(acc)
        visible = ((slot >= j * block)[None, :] & (slot[None, :] < length[:, None]))[..., None]
        m_new = jnp.maximum(m, jnp.max(jnp.where(visible, s, -jnp.inf), axis=1))
        m_new = lax.stop_gradient(jnp.where(jnp.isfinite(m_new), m_new, 0.0))
        alpha = jnp.exp(m - m_new)  # 0 while m is −inf
        p = jnp.exp(jnp.where(visible, s - m_new[:, None, :], -jnp.inf))
        pv = lax.dot_general(
            p.astype(dtype).astype(mm_v),
            v_b.astype(mm_v),
            (((1,), (1,)), ((0,), (0,))),
            preferred_element_type=acc,
        )  # [rows, Hq, Hkv·Dv]: keep each head's own key/value head
        pv = pv.reshape(rows, hkv, group, hkv, dv)[:, heads, :, heads, :]
        pv = jnp.moveaxis(pv, 0, 1).reshape(rows, hq, dv)
        return m_new, alpha * denom + jnp.sum(p, axis=1), alpha[..., None] * out + pv

    def step(carry: tuple, j: jax.Array) -> tuple[tuple, None]:
        # A block past every row's length holds no visible slot: cond skips its reads. The cond also
        # keeps XLA from fusing the caller's cache write into these reads (see above).
        needed = j * block < jnp.max(length, initial=0)
        return lax.cond(needed, one_block, lambda c, _: c, carry, j), None

    (m, denom, out), _ = lax.scan(step, (m, denom, out), jnp.arange(-(-lk // block)))
    out = out / jnp.where(denom > 0, denom, 1.0)[..., None]
    return out.reshape(*batch, hq, dv).astype(dtype)
