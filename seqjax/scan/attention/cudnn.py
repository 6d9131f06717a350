"""The "cudnn" method: `jax.nn.dot_product_attention` for the calls its fused kernel computes."""

from __future__ import annotations

import math

import jax

from seqjax.scan.attention.inputs import _Args


def _cudnn_unsupported(a: _Args) -> str | None:
    """Why `jax.nn.dot_product_attention(implementation="cudnn")` cannot compute this call, or None."""
    vis = a.visibility
    given = vis.per_token_given()
    if given:
        return f"`{given[0]}` is not supported"
    if a.alibi_slopes is not None:
        return "`alibi_slopes` is not supported"
    if vis.window is not None and not vis.causal:
        return "cuDNN's sliding window is causal only (got causal=False with a window)"
    if (vis.causal or vis.window is not None) and a.lq != a.lk:
        return f"causal or windowed attention needs Lq == Lk (got Lq={a.lq}, Lk={a.lk})"
    if a.v.shape != a.k.shape:
        return f"`v` must have the shape of `k` (got {a.v.shape} and {a.k.shape})"
    return None


def _attention_cudnn(a: _Args, implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` for a call `_cudnn_unsupported` accepts. (`implementation="xla"`
    runs the same argument mapping anywhere; the tests use it on CPU.)"""
    batch, lq, hq, d = a.q.shape[:-3], *a.q.shape[-3:]
    bsz = math.prod(batch)
    lk, hkv = a.k.shape[-3:-1]
    vis = a.visibility
    # visible iff 0 <= q - k < window, i.e. jax's (left, right) = (window - 1, 0); causal only.
    window = None if vis.window is None else (vis.window - 1, 0)
    out = jax.nn.dot_product_attention(
        a.q.reshape(bsz, lq, hq, d),
        a.k.reshape(bsz, lk, hkv, d),
        a.v.reshape(bsz, lk, hkv, d),
        scale=a.scale,
        is_causal=vis.causal,
        local_window_size=window,
        implementation=implementation,
    )
    return out.reshape(*batch, lq, hq, d).astype(a.q.dtype)
