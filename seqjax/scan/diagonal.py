"""The diagonal linear recurrence engine, `linear_recurrence`: h_t = a_t ⊙ h_{t-1} + b_t, with a
diagonal (elementwise) real or complex a.

Three backends compute the same thing:
- `sequential`: `lax.scan`, T steps of O(N) work; the fastest on CPU.
- `associative`: `lax.associative_scan`, log T depth; the usual choice on GPU/TPU.
- `chunked`: an associative scan inside chunks of `chunk_size` tokens (all chunks in parallel), then a
  sequential pass over chunk boundaries; bounded depth with a short sequential loop.
`auto` picks one per platform and size from measurements (see `choose_method`).

Gradients never go through the backend's own autodiff: a custom VJP runs the adjoint recurrence
    λ_t = g_t + a_{t+1} ⊙ λ_{t+1}   (right to left),   ∂b_t = λ_t,   ∂a_t = λ_t ⊙ h_{t-1}
with the same backend. It keeps only a, h and h0 as residuals, so training memory is O(inputs) rather
than the O(T · log T) intermediates of an associative scan. JAX's complex convention (VJP = transpose,
not Hermitian adjoint) applies, so no conjugates appear.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.scan import tuning
from seqjax.scan.combine import diagonal_combine

__all__ = ["METHODS", "choose_method", "linear_recurrence"]

Method = Literal["auto", "sequential", "associative", "chunked"]
METHODS: tuple[str, ...] = ("auto", "sequential", "associative", "chunked")
DEFAULT_CHUNK = 64


def choose_method(
    length: int, state_elems: int, platform: str | None = None, device_kind: str | None = None
) -> str:
    """The backend `auto` uses: the fastest one measured nearest this size on this platform.

    The measurements are tables written by `scripts/tune_scan.py` (see `seqjax.scan.tuning`: one ships
    for CPU, and `$SEQJAX_SCAN_TUNING` or `register_table` add others). On the project's CPU `lax.scan`
    wins at every measured size: the associative scan does O(T log T) work against the scan's O(T) and
    compiles 5-10x longer.

    Without a table for the platform the rule is: sequential on CPU and for at most 64 tokens, else
    associative, because on GPU and TPU the scan is latency-bound (one step per loop iteration) and the
    log-depth form fills the device. That rule is unmeasured in this project; run the tuner once on an
    accelerator to replace it.
    """
    if platform is None:
        platform = jax.default_backend()
        if device_kind is None:
            device_kind = jax.devices()[0].device_kind
    measured = tuning.measured_method(length, state_elems, platform, device_kind)
    if measured is not None:
        return measured
    if platform == "cpu" or length <= 64:
        return "sequential"
    return "associative"


def _scan_sequential(a, b, h0):
    def body(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    _, hs = lax.scan(body, h0, (jnp.broadcast_to(a, b.shape), b))
    return hs


def _scan_associative(a, b, h0):
    a = jnp.broadcast_to(a, b.shape)
    b = b.at[0].add(a[0] * h0)
    _, hs = lax.associative_scan(diagonal_combine, (a, b), axis=0)
    return hs


def _scan_chunked(a, b, h0, chunk_size):
    a = jnp.broadcast_to(a, b.shape)
    t = b.shape[0]
    n_chunks = -(-t // chunk_size)
    pad = n_chunks * chunk_size - t
    if pad:
        # Padding with (a=1, b=0) leaves the state unchanged, so the trailing chunk is exact.
        widths = [(0, pad)] + [(0, 0)] * (b.ndim - 1)
        a = jnp.pad(a, widths, constant_values=1)
        b = jnp.pad(b, widths)
    rest = b.shape[1:]
    a = a.reshape(n_chunks, chunk_size, *rest)
    b = b.reshape(n_chunks, chunk_size, *rest)
    # Inside every chunk at once: cumulative decay and the state started from zero.
    a_cum, h_local = lax.associative_scan(diagonal_combine, (a, b), axis=1)

    def carry_over(h_prev, chunk):
        a_last, h_last = chunk
        h_end = a_last * h_prev + h_last
        return h_end, h_prev

    _, h_starts = lax.scan(carry_over, h0, (a_cum[:, -1], h_local[:, -1]))
    hs = h_local + a_cum * h_starts[:, None]
    return hs.reshape(n_chunks * chunk_size, *rest)[:t]


def _run(method, a, b, h0, reverse, chunk_size):
    if reverse:
        a, b = jnp.flip(jnp.broadcast_to(a, b.shape), 0), jnp.flip(b, 0)
    if method == "sequential":
        hs = _scan_sequential(a, b, h0)
    elif method == "associative":
        hs = _scan_associative(a, b, h0)
    else:
        hs = _scan_chunked(a, b, h0, chunk_size)
    return jnp.flip(hs, 0) if reverse else hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _recurrence(a, b, h0, method, reverse, chunk_size):
    return _run(method, a, b, h0, reverse, chunk_size)


def _recurrence_fwd(a, b, h0, method, reverse, chunk_size):
    hs = _run(method, a, b, h0, reverse, chunk_size)
    return hs, (a, hs, h0)


def _recurrence_bwd(method, reverse, chunk_size, res, g):
    a, hs, h0 = res
    a = jnp.broadcast_to(a, hs.shape)
    # λ_t = g_t + a_{t+1} λ_{t+1}: the same recurrence in the other direction, with a shifted by one.
    if reverse:
        a_next = jnp.concatenate([jnp.zeros_like(a[:1]), a[:-1]], axis=0)
        h_prev = jnp.concatenate([hs[1:], h0[None]], axis=0)
    else:
        a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)
        h_prev = jnp.concatenate([h0[None], hs[:-1]], axis=0)
    lam = _run(method, a_next, g, jnp.zeros_like(h0), not reverse, chunk_size)
    first = -1 if reverse else 0
    dh0 = a[first] * lam[first]
    return lam * h_prev, lam, dh0


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _check_flags(what: str, flags: jax.Array | None, expected: tuple[int, ...]) -> jax.Array | None:
    if flags is None:
        return None
    flags = jnp.asarray(flags)
    if flags.shape != expected:
        raise ValueError(
            f"linear_recurrence: `{what}` has shape {flags.shape}, expected {expected} (the leading axes of "
            f"`b` up to and including the time axis)."
        )
    if flags.dtype != jnp.bool_:
        raise TypeError(f"linear_recurrence: `{what}` must be boolean, got dtype {flags.dtype}.")
    return flags


def linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    axis: int = 0,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    reverse: bool = False,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """All states of h_t = a_t ⊙ h_{t-1} + b_t, and the final state.

    Args:
      a: decays, broadcastable to `b`'s shape; real or complex.
      b: inputs [*batch, T, *state] with time on `axis` (`axis` = number of batch axes).
      h0: state before the first processed token, `b`'s shape without the time axis; zeros if None.
      axis: the time axis of `a` and `b`.
      resets: [*batch, T] bool: the state is zeroed before token t (for `reverse=True`, before t going
        right to left; pass flags already converted with `seqjax.scan.reverse_resets`).
      mask: [*batch, T] bool: False marks padding, where the state passes through unchanged.
      reverse: run from the last token to the first (h0 then precedes the last token).
      method: "sequential", "associative", "chunked" or "auto".
      chunk_size: tokens per chunk of the chunked backend.

    Returns:
      hs with `b`'s shape (the state after each token), and the final state.
    """
    if method not in METHODS:
        raise ValueError(f"linear_recurrence: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if chunk_size < 1:
        raise ValueError(f"linear_recurrence: chunk_size must be >= 1, got {chunk_size}.")
    a, b = jnp.asarray(a), jnp.asarray(b)
    if not 0 <= axis < b.ndim:
        raise ValueError(f"linear_recurrence: axis={axis} is out of range for `b` of shape {b.shape}.")
    dtype = jnp.result_type(a, b)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"linear_recurrence: `a` and `b` must be floating or complex, got {dtype}.")
    a = jnp.broadcast_to(a, b.shape).astype(dtype)
    b = b.astype(dtype)
    flag_shape = b.shape[: axis + 1]
    resets = _check_flags("resets", resets, flag_shape)
    mask = _check_flags("mask", mask, flag_shape)

    def to_time_major(x):
        return jnp.moveaxis(x, axis, 0)

    def flags_time_major(f):
        return to_time_major(f.reshape(f.shape + (1,) * (b.ndim - f.ndim)))

    a, b = to_time_major(a), to_time_major(b)
    if resets is not None:
        a = jnp.where(flags_time_major(resets), jnp.zeros((), dtype), a)
    if mask is not None:
        valid = flags_time_major(mask)
        a = jnp.where(valid, a, jnp.ones((), dtype))
        b = jnp.where(valid, b, jnp.zeros((), dtype))
    state_shape = b.shape[1:]
    if h0 is None:
        h0 = jnp.zeros(state_shape, dtype)
    else:
        h0 = jnp.asarray(h0)
        if h0.shape != state_shape:
            raise ValueError(
                f"linear_recurrence: h0 has shape {h0.shape}, expected {state_shape} (`b` without its time "
                f"axis)."
            )
        h0 = h0.astype(dtype)
    if method == "auto":
        method = choose_method(b.shape[0], int(b[0].size))
    hs = _recurrence(a, b, h0, method, bool(reverse), int(chunk_size))
    final = hs[0] if reverse else hs[-1]
    return jnp.moveaxis(hs, 0, axis), final
