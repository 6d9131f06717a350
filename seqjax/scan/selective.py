"""The selective scan of Mamba, lean in memory: expanded [.., D, N] tensors exist one chunk at a time.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_tᵀ        h_t ∈ R^{D×N}, A ∈ R^{D×N} (negative)
    y_t = h_t C_t                                       y_t ∈ R^D

From the compact inputs x, Δ [B, L, D] and B, C [B, L, N], a materialised scan would build
exp(ΔA) and ΔxB for every token, [B, L, D, N]: 1 GiB in float32 at B=8, L=16k, D=128, N=16, and
autodiff through `lax.scan` keeps several of those (10.8 GiB measured). Here an outer `lax.scan` runs
over chunks of `chunk_size` tokens. Its body forms the expanded tensors for one chunk only and runs the
recurrence inside the chunk, and it is wrapped in `jax.checkpoint`. Autodiff therefore saves only each
chunk's inputs and its starting state, O(L/chunk · B·D·N), and recomputes the chunk's interior during
the backward pass.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["selective_scan", "selective_scan_reference"]

InnerMethod = Literal["sequential", "associative"]


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def _chunk(h0, inputs, a_mat, inner: str):
    """One chunk, time-major: x, dt [C, B, D]; b, c [C, B, N]; keep [C, B] (False = reset before t)."""
    x, dt, b, c, keep = inputs
    decay = jnp.exp(dt[..., None] * a_mat)  # [C, B, D, N]
    decay = jnp.where(keep[:, :, None, None], decay, 0)
    drive = (dt * x)[..., None] * b[:, :, None, :]  # [C, B, D, N]
    if inner == "sequential":

        def body(h, ab):
            a_t, b_t = ab
            h = a_t * h + b_t
            return h, h

        h_last, hs = lax.scan(body, h0, (decay, drive))
    else:
        drive = drive.at[0].add(decay[0] * h0)
        _, hs = lax.associative_scan(_combine, (decay, drive), axis=0)
        h_last = hs[-1]
    y = jnp.einsum("tbdn,tbn->tbd", hs, c)
    return h_last, y


@functools.partial(jax.jit, static_argnames=("chunk_size", "inner"))
def selective_scan(
    x: jax.Array,
    dt: jax.Array,
    a_mat: jax.Array,
    b: jax.Array,
    c: jax.Array,
    h0: jax.Array | None = None,
    resets: jax.Array | None = None,
    *,
    chunk_size: int = 64,
    inner: InnerMethod = "sequential",
) -> tuple[jax.Array, jax.Array]:
    """y_t = C_t · h_t for the selective SSM, chunked and rematerialised.

    Args:
      x: [B, L, D] inputs to the SSM (after Mamba's conv and SiLU).
      dt: [B, L, D] positive step sizes Δ. A padded token should have Δ = 0: its decay is then 1 and its
        drive 0, so the state passes through unchanged.
      a_mat: [D, N] continuous-time diagonal A (negative).
      b, c: [B, L, N] input and output matrices per token.
      h0: [B, D, N] initial state (zeros if None).
      resets: [B, L] bool; the state is zeroed before token t.
      chunk_size: tokens per rematerialised chunk; memory of the backward pass is O(L/chunk · B·D·N +
        chunk · B·D·N).
      inner: recurrence inside a chunk, "sequential" (`lax.scan`) or "associative".

    Returns:
      y [B, L, D] in float32 (float64 for float64 inputs) and the final state [B, D, N].
    """
    bsz, length, d = x.shape
    n = a_mat.shape[-1]
    f32 = jnp.promote_types(x.dtype, jnp.float32)  # float32, or float64 for reference runs
    h0 = jnp.zeros((bsz, d, n), f32) if h0 is None else h0.astype(f32)
    keep = jnp.ones((bsz, length), bool) if resets is None else ~resets
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length

    def chunks(arr, fill=0):
        # [B, L, ...] -> [n_chunks, C, B, ...]; padded tokens get Δ = 0 (and keep = True): a no-op.
        arr = jnp.swapaxes(arr, 0, 1)
        if pad:
            arr = jnp.pad(arr, [(0, pad)] + [(0, 0)] * (arr.ndim - 1), constant_values=fill)
        return arr.reshape(n_chunks, chunk_size, *arr.shape[1:])

    inputs = (
        chunks(x.astype(f32)),
        chunks(dt.astype(f32)),
        chunks(b.astype(f32)),
        chunks(c.astype(f32)),
        chunks(keep, fill=True),
    )
    body = jax.checkpoint(functools.partial(_chunk, a_mat=a_mat.astype(f32), inner=inner))
    h_last, ys = lax.scan(lambda h, inp: body(h, inp), h0, inputs)
    ys = ys.reshape(n_chunks * chunk_size, bsz, d)[:length]
    return jnp.swapaxes(ys, 0, 1), h_last


def selective_scan_reference(x, dt, a_mat, b, c, h0=None, resets=None):
    """The materialised form: every [B, L, D, N] tensor built up front, then one `lax.scan`. Tests only."""
    bsz, _, d = x.shape
    h0 = jnp.zeros((bsz, d, a_mat.shape[-1]), x.dtype) if h0 is None else h0
    decay = jnp.exp(dt[..., None] * a_mat)
    if resets is not None:
        decay = jnp.where(resets[..., None, None], 0, decay)
    drive = (dt * x)[..., None] * b[:, :, None, :]

    def body(h, ab):
        a_t, b_t, c_t = ab
        h = a_t * h + b_t
        return h, jnp.einsum("bdn,bn->bd", h, c_t)

    h_last, ys = lax.scan(body, h0, tuple(jnp.swapaxes(t, 0, 1) for t in (decay, drive, c)))
    return jnp.swapaxes(ys, 0, 1), h_last
