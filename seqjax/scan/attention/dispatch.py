"""`attention`: validates a call and runs the method it names, or the one "auto" chooses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from seqjax.scan.attention.blockwise import _attention_blockwise
from seqjax.scan.attention.cudnn import _attention_cudnn, _cudnn_unsupported
from seqjax.scan.attention.heuristics import choose_attention_method, choose_blocks
from seqjax.scan.attention.inputs import _check, _check_block
from seqjax.scan.attention.reference import attention_reference
from seqjax.scan.attention.visibility import Visibility, _from_call

__all__ = ["METHODS", "attention"]

METHODS = ("auto", "blockwise", "naive", "cudnn")


def attention(
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
    method: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Exact softmax attention; same arguments and result as `attention_reference`.

    Args:
      q: [*batch, Lq, Hq, D]; k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], Hq a multiple of Hkv.
      visibility: which keys each query sees, as one `Visibility` value (the rule and its fields are
        described there). Or, instead, the same fields as keywords; passing both is an error:
      q_positions, kv_positions: [*batch, Lq] / [*batch, Lk] integer positions (default: arange; a KV
        cache before the new tokens passes its own). Leading axes of the per-token arrays broadcast.
      q_segment_ids, kv_segment_ids: [*batch, Lq] / [*batch, Lk] integer ids (both or neither).
      kv_mask: [*batch, Lk] bool, False = a key no query sees (padding).
      kv_global, q_global: [*batch, Lk] / [*batch, Lq] bool, tokens exempt from `window`.
      causal: keys at later positions are invisible.
      window: int >= 1 or None, see `Visibility`.
      alibi_slopes: [Hq]; adds −slope·|q_pos − kv_pos| to the logits. Differentiable in every method.
      scale: logit scale (a Python float), default 1/√D.
      method: "blockwise" (online softmax over key blocks, custom VJP, O(L·d) memory, skips block pairs
        with no visible pair), "naive" (`attention_reference`), "cudnn" (`jax.nn.dot_product_attention`
        with cuDNN's fused kernel, GPU only, no positions/segments/masks/global tokens/ALiBi), or "auto"
        (`choose_attention_method`).
      block_q, block_k: the blockwise form's block sizes; None chooses them (`choose_blocks`).

    Returns:
      [*batch, Lq, Hq, Dv] in q's dtype. Gradients flow to q, k, v and alibi_slopes.

    Example:
      >>> q = k = v = jnp.ones((2, 16, 4, 8))  # [batch, L, heads, head_dim]
      >>> attention(q, k, v, causal=True, window=4).shape
      (2, 16, 4, 8)
      >>> attention(q, k, v, Visibility(causal=True, window=4), method="blockwise").shape
      (2, 16, 4, 8)
    """
    if method not in METHODS:
        raise ValueError(f"attention: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    block_q, block_k = _check_block("block_q", block_q), _check_block("block_k", block_k)
    vis = _from_call("attention", locals())
    a = _check("attention", q, k, v, vis, alibi_slopes=alibi_slopes, scale=scale)
    unsupported = _cudnn_unsupported(a)
    if method == "auto":
        method = choose_attention_method(
            a.lq,
            a.lk,
            dtype=jnp.result_type(a.q, a.k, a.v),
            head_dim=a.q.shape[-1],
            cudnn_supported=unsupported is None,
        )
    if method == "cudnn":
        if unsupported is not None:
            raise ValueError(
                f"attention: method='cudnn' cannot compute this call: {unsupported}. Use method='blockwise' "
                "(any visibility rule) or 'auto'."
            )
        return _attention_cudnn(a)
    if method == "naive":
        return attention_reference(a.q, a.k, a.v, a.visibility, alibi_slopes=a.alibi_slopes, scale=a.scale)
    rows = math.prod(a.batch) * a.q.shape[-2]
    bq, bk = choose_blocks(a.lq, a.lk, block_q, block_k, rows=rows)
    return _attention_blockwise(a, bq, bk)
