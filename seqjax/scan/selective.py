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

The recurrence inside each chunk has three backends, the selective scan's own (not `linear_recurrence`'s):
- `remat_sequential`: exp(ΔA) and ΔxB formed for the chunk's tokens, then `lax.scan` over them;
- `remat_associative`: the same tensors, then `lax.associative_scan` over them (log depth, more work);
- `remat_unrolled`: the chunk's tokens unrolled into straight-line code, each token's decay and drive
  formed from the compact inputs inside its own update, so no [C, B, D, N] tensor exists and XLA fuses
  each token's update with its output. Unrolling makes the program grow with the chunk, so this backend
  takes short chunks (`DEFAULT_CHUNK`: 8 tokens); its memory is then O(L/8 · B·D·N) for the saved chunk
  states, which for N = 16 is about two [B, L, D] arrays, the size of the layer's other activations. On
  2 CPU cores it ran forward + backward 1.5-3x faster than `remat_sequential` with 64-token chunks, at
  every length (64 to 16k) and state size measured at batch 8, and 1.7x at batch 4 and 64k; at batch
  1 the two tie (within noise at 64k: the sequential chunks are then the bound)
  (`benchmarks/selective_scan_tuning_cpu.md`).
`method="auto"` picks the one measured fastest nearest the call's (length, B·D·N state size) on this
platform, from the `selective_scan` tables that `scripts/tune_scan.py --kinds=selective_scan` writes
(`seqjax.scan.tuning`); without a table it is `remat_sequential`. `chunk_size=None` takes the chosen
backend's `DEFAULT_CHUNK`.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.checks import check_positive_int
from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan import tuning
from seqjax.scan.combine import diagonal_combine

__all__ = [
    "DEFAULT_CHUNK",
    "SELECTIVE_METHODS",
    "choose_selective_method",
    "selective_scan",
    "selective_scan_reference",
]

SelectiveMethod = Literal["auto", "remat_sequential", "remat_associative", "remat_unrolled"]
SELECTIVE_METHODS: tuple[str, ...] = ("auto", *tuning.BACKENDS_BY_KIND["selective_scan"])
# Tokens per rematerialised chunk when `chunk_size` is None. The unrolled backend's program grows with
# its chunk: 16 tokens compiled in ~2x the time of 8 for ~10% less run time (CPU), 64 in ~8x.
DEFAULT_CHUNK: dict[str, int] = {"remat_sequential": 64, "remat_associative": 64, "remat_unrolled": 8}


def choose_selective_method(
    length: int, state_elems: int, platform: str | None = None, device_kind: str | None = None
) -> str:
    """The backend `selective_scan(method="auto")` uses at this size on this platform.

    `state_elems` counts one step's whole state, batch included (B·D·N), as the tables do. The choice
    is the fastest backend of the measured point nearest (length, state_elems) in the `selective_scan`
    tables of `seqjax.scan.tuning`; with no table for the platform it is `remat_sequential`.

        >>> choose_selective_method(4096, 8 * 128 * 16, platform="no-such-platform")
        'remat_sequential'
    """
    if platform is None:
        platform = jax.default_backend()
        if device_kind is None:
            device_kind = jax.devices()[0].device_kind
    measured = tuning.measured_method(length, state_elems, platform, device_kind, kind="selective_scan")
    return measured if measured is not None else "remat_sequential"


def _chunk(h0, inputs, a_mat, inner: str):
    """One chunk, time-major: x, dt [C, B, D]; b, c [C, B, N]; keep [C, B] (False = reset before t)."""
    x, dt, b, c, keep = inputs
    if inner == "remat_unrolled":

        def token(h, inp):
            x_t, dt_t, b_t, c_t, keep_t = inp
            decay = jnp.where(keep_t[:, None, None], jnp.exp(dt_t[..., None] * a_mat), 0)
            h = decay * h + (dt_t * x_t)[..., None] * b_t[:, None, :]
            return h, jnp.einsum("bdn,bn->bd", h, c_t)

        # Fully unrolled: a loop (even partly unrolled) stacks per-token residuals through dynamic
        # slices and measured as slow as `remat_sequential`.
        return lax.scan(token, h0, inputs, unroll=True)
    decay = jnp.exp(dt[..., None] * a_mat)  # [C, B, D, N]
    decay = jnp.where(keep[:, :, None, None], decay, 0)
    drive = (dt * x)[..., None] * b[:, :, None, :]  # [C, B, D, N]
    if inner == "remat_sequential":

        def body(h, ab):
            a_t, b_t = ab
            h = a_t * h + b_t
            return h, h

        h_last, hs = lax.scan(body, h0, (decay, drive))
    else:
        drive = drive.at[0].add(decay[0] * h0)
        _, hs = lax.associative_scan(diagonal_combine, (decay, drive), axis=0)
        h_last = hs[-1]
    y = jnp.einsum("tbdn,tbn->tbd", hs, c)
    return h_last, y


def selective_scan(
    x: jax.Array,
    dt: jax.Array,
    a_mat: jax.Array,
    b: jax.Array,
    c: jax.Array,
    h0: jax.Array | None = None,
    resets: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    method: SelectiveMethod = "auto",
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
        chunk · B·D·N). None: the backend's `DEFAULT_CHUNK` (64, or 8 for "remat_unrolled").
      method: the recurrence inside a chunk: "remat_sequential" (`lax.scan`), "remat_associative"
        (`lax.associative_scan`), "remat_unrolled" (the chunk's tokens as straight-line code), or
        "auto" (measured; see `choose_selective_method`). The choice is made when the function is
        traced.

    Returns:
      y [B, L, D] in float32 (float64 for float64 inputs) and the final state [B, D, N].

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = dt = jnp.full((2, 10, 3), 0.1)               # [B, L, D]
        >>> a_mat = -jnp.ones((3, 4))                        # [D, N]
        >>> b = c = jnp.ones((2, 10, 4))                     # [B, L, N]
        >>> y, h = selective_scan(x, dt, a_mat, b, c, chunk_size=4)
        >>> y.shape, h.shape
        ((2, 10, 3), (2, 3, 4))
    """
    if method not in SELECTIVE_METHODS:
        raise ValueError(
            f"selective_scan: unknown method {method!r}; choose one of {', '.join(SELECTIVE_METHODS)}."
        )
    if chunk_size is not None:
        check_positive_int("selective_scan", "chunk_size", chunk_size)
    bsz, length, d = x.shape
    n = a_mat.shape[-1]
    if method == "auto":
        method = choose_selective_method(length, bsz * d * n)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK[method]
    f32 = accumulation_dtype(x.dtype)  # float32, or float64 for reference runs
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
    body = jax.checkpoint(functools.partial(_chunk, a_mat=a_mat.astype(f32), inner=method))
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
