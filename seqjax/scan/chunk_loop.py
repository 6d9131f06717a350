"""A loop over chunks with its own VJP, for the matrix-state engines whose chunk body is a pure function
of the state at the chunk's start and the chunk's inputs (`matrix_recurrence.linear_attention_chunked`,
`delta_rule`, `generalized_delta_rule`).

The inputs stay in their [B, n, C, H, ...] layout, a free reshape of [B, T, H, ...]: each step slices its
chunk and turns it to the body's heads-first [B, H, C, ...] layout (a transpose of one chunk, in cache),
and writes its output into a [B, n, C, H, d_v] buffer in place. A `lax.scan` over chunks laid out
[n, B, H, C, ...] would need that transpose of every whole input before the loop, and of every whole
gradient after it: on 2 CPU cores at 4,096 tokens (batch 8, 8 heads of 64) those transposes took about
0.6 s of RWKV-7's 4.3 s layer.

The backward pass loops over the chunks in reverse: it recomputes each chunk from its inputs and the
saved state at its start (training stores the inputs and one state per chunk, never a chunk's
internals), carries dS backwards, and writes each chunk's input gradients into full-size buffers in
place. Only reverse mode is defined (no `jax.jvp`).

16-bit float inputs (bf16, f16) are sliced, and 16-bit gradient buffers updated, as uint16 (`as_bits`):
XLA's CPU backend does not slice or update them natively, and would widen each whole array to float32
once, before the loop (a full float32 copy of every input).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["ChunkBody", "ChunkVjp", "as_bits", "chunk_loop", "from_bits"]

#: (S [B, H, d_k, d_v], chunk inputs in the body's layout, segment ids [B, C]) -> (S', y [B, H, C, d_v])
ChunkBody = Callable[[jax.Array, tuple[Any, ...], jax.Array], tuple[jax.Array, jax.Array]]
#: (S, chunk inputs, segment ids, (dS', dy)) -> (dS, d chunk inputs); the VJP of a `ChunkBody`
ChunkVjp = Callable[[jax.Array, tuple[Any, ...], jax.Array, tuple[jax.Array, jax.Array]], tuple[Any, ...]]


def _heads_first(x: jax.Array | None) -> jax.Array | None:
    """[B, C, H, ...] -> [B, H, C, ...]; [B, C] (a per-token scalar without heads) is left as it is."""
    return x if x is None or x.ndim < 3 else jnp.swapaxes(x, 1, 2)


def as_bits(x: jax.Array) -> jax.Array:
    """16-bit floats as uint16 (a free bitcast), for slicing and in-place updates; other dtypes as they are.

    XLA's CPU backend does not slice or update bf16 arrays natively: it widens the whole array to f32, and
    hoists that convert out of the loop, a full f32 copy of every input. Integer slices stay narrow.

    >>> as_bits(jnp.ones(2, jnp.bfloat16)).dtype, as_bits(jnp.ones(2)).dtype
    (dtype('uint16'), dtype('float32'))
    """
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
        return lax.bitcast_convert_type(x, jnp.uint16)
    return x


def from_bits(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The inverse of `as_bits` for an array of `dtype`.

    >>> from_bits(as_bits(jnp.ones(2, jnp.bfloat16)), jnp.bfloat16).dtype
    dtype(bfloat16)
    """
    return x if x.dtype == dtype else lax.bitcast_convert_type(x, dtype)


def _take(x: jax.Array | None, i: jax.Array) -> jax.Array | None:
    """Chunk i of a [B, n, C, ...] array, as [B, C, ...]."""
    if x is None:
        return None
    return from_bits(lax.dynamic_index_in_dim(as_bits(x), i, axis=1, keepdims=False), x.dtype)


def _put(buf: jax.Array | None, chunk: jax.Array | None, i: jax.Array, dtype: jnp.dtype) -> jax.Array | None:
    """Writes a [B, H, C, ...] chunk into slot i of a [B, n, C, H, ...] buffer of `dtype` (held as
    `as_bits`), in place."""
    if buf is None:
        return None
    return lax.dynamic_update_index_in_dim(buf, as_bits(_heads_first(chunk).astype(dtype)), i, axis=1)


def _default_vjp(body: ChunkBody) -> ChunkVjp:
    def vjp(s, chunk, seg, cts):
        _, pullback = jax.vjp(lambda s, chunk: body(s, chunk, seg), s, chunk)
        ds, dchunk = pullback(cts)
        return ds, dchunk

    return vjp


def _forward(body, s0, xs, seg, keep_states):
    b, n, c = seg.shape
    inputs = lambda i: tuple(_heads_first(_take(x, i)) for x in xs)
    out = jax.eval_shape(body, s0, inputs(0), seg[:, 0])[1]  # [B, H, C, d_v]
    ys0 = as_bits(jnp.zeros((b, n, c, out.shape[1], *out.shape[3:]), out.dtype))

    def step(carry, i):
        s, ys = carry
        s_next, y = body(s, inputs(i), _take(seg, i))
        return (s_next, _put(ys, y, i, out.dtype)), (s if keep_states else None)

    (final, ys), states = lax.scan(step, (s0, ys0), jnp.arange(n))
    return from_bits(ys, out.dtype), final, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _loop(body, body_vjp, s0, xs, seg):
    ys, final, _ = _forward(body, s0, xs, seg, keep_states=False)
    return ys, final


def _loop_fwd(body, body_vjp, s0, xs, seg):
    ys, final, states = _forward(body, s0, xs, seg, keep_states=True)
    return (ys, final), (xs, seg, states)


def _loop_bwd(body, body_vjp, res, cts):
    xs, seg, states = res
    dys, dfinal = cts

    def step(carry, i):
        ds, dxs = carry
        chunk = tuple(_heads_first(_take(x, i)) for x in xs)
        dy = _heads_first(_take(dys, i)).astype(ds.dtype)
        ds, dchunk = body_vjp(states[i], chunk, _take(seg, i), (ds, dy))
        dxs = tuple(
            _put(buf, g, i, None if x is None else x.dtype) for buf, g, x in zip(dxs, dchunk, xs, strict=True)
        )
        return (ds, dxs), None

    zeros = tuple(None if x is None else as_bits(jnp.zeros_like(x)) for x in xs)
    (ds0, dxs), _ = lax.scan(
        step, (dfinal.astype(states.dtype), zeros), jnp.arange(seg.shape[1]), reverse=True
    )
    dxs = tuple(None if x is None else from_bits(g, x.dtype) for g, x in zip(dxs, xs, strict=True))
    return ds0, dxs, None


_loop.defvjp(_loop_fwd, _loop_bwd)


def chunk_loop(
    body: ChunkBody,
    s0: jax.Array,
    xs: tuple[jax.Array | None, ...],
    seg: jax.Array,
    *,
    body_vjp: ChunkVjp | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs `body` over the n chunks of `xs`, carrying the state; reverse mode by its own VJP (module
    docstring).

    Args:
      body: one chunk, `(S, chunk, seg_i) -> (S', y)`; the chunk's inputs arrive heads first, [B, H, C, ...]
        (a [B, C] input without heads as it is). A function that `jax.jit` can cache on (a module-level
        function or a `functools.partial` of one), since it is a static argument.
      s0: [B, H, d_k, d_v] state before the first chunk.
      xs: the inputs, each [B, n, C, H, ...] or [B, n, C] or None (passed to `body` as None).
      seg: [B, n, C] int32, the segment id of each token within its chunk.
      body_vjp: the VJP of `body` (`ChunkVjp`), for a body with a cheaper one than `jax.vjp` of it
        (e.g. one that picks a path per chunk); None: `jax.vjp(body)`.

    Returns:
      ys [B, n, C, H, d_v] and the final state [B, H, d_k, d_v].

    >>> import jax.numpy as jnp
    >>> def body(s, chunk, seg):                      # S' = S + Σ_t k_t v_tᵀ, y_t = S (the state before)
    ...     k, v = chunk
    ...     y = jnp.broadcast_to(s[:, :, :1, :], v.shape)
    ...     return s + jnp.einsum("bhck,bhcv->bhkv", k, v), y
    >>> ones = jnp.ones((1, 3, 2, 1, 1))              # B = 1, n = 3 chunks of C = 2, one head, d = 1
    >>> ys, final = chunk_loop(body, jnp.zeros((1, 1, 1, 1)), (ones, ones), jnp.zeros((1, 3, 2), jnp.int32))
    >>> ys[0, :, 0, 0, 0].tolist(), float(final[0, 0, 0, 0])
    ([0.0, 2.0, 4.0], 6.0)
    """
    return _loop(body, body_vjp or _default_vjp(body), s0, tuple(xs), seg)
