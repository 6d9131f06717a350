"""The sequential engine: `lax.scan` over a nonlinear recurrence with resets and padding masks.

Every cell's `apply` that has no faster engine runs through `scan_recurrence`, and `step` applies the
same reset/mask rule to one token, so `apply` equals a loop of `step` by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any

__all__ = ["broadcast_flags", "reverse_resets", "scan_recurrence", "select_tree"]


def broadcast_flags(flags: jax.Array, like: jax.Array) -> jax.Array:
    """Right-pads `flags` of shape [*batch] with unit axes so it broadcasts against `like` [*batch, ...]."""
    return flags.reshape(flags.shape + (1,) * (like.ndim - flags.ndim))


def select_tree(flags: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """`where(flags, on_true, on_false)` leaf by leaf; `flags` is [*batch] and leaves are [*batch, ...]."""
    return jax.tree.map(lambda a, b: jnp.where(broadcast_flags(flags, a), a, b), on_true, on_false)


def reverse_resets(resets: jax.Array, time_axis: int) -> jax.Array:
    """Reset flags for a right-to-left pass.

    `resets[t]` means "token t starts a segment". Going right to left, the state must be cleared before
    the last token of each segment, i.e. before t whenever t + 1 starts a segment.
    """
    shifted = lax.slice_in_dim(resets, 1, resets.shape[time_axis], axis=time_axis)
    pad_shape = list(resets.shape)
    pad_shape[time_axis] = 1
    return jnp.concatenate([shifted, jnp.zeros(pad_shape, resets.dtype)], axis=time_axis)


def scan_recurrence(
    recur: Callable[[PyTree, PyTree], tuple[PyTree, jax.Array]],
    state: PyTree,
    inputs: PyTree,
    *,
    initial: PyTree,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[jax.Array, PyTree]:
    """Runs `recur(state, input_t) -> (state, y_t)` over time-major inputs.

    Args:
      recur: one recurrence step on a batch.
      state: pytree of [B, ...] arrays, the state before the first processed token.
      inputs: pytree of [T, B, ...] arrays.
      initial: the state a reset returns to (same structure as `state`).
      resets: [T, B] bool; the state is replaced by `initial` before token t. For `reverse=True`, pass
        flags already converted with `reverse_resets`.
      mask: [T, B] bool; False marks padding, where the state is unchanged and y_t is zero. Padding wins
        over a reset at the same token.
      reverse: scan from the last token to the first (outputs stay in input order).
      unroll: `lax.scan` unroll factor.

    Returns:
      ys [T, B, ...] and the final state.
    """

    def body(carry, xs_t):
        inp, reset_t, mask_t = xs_t
        prev = carry
        if reset_t is not None:
            prev = select_tree(reset_t, initial, prev)
        new, y = recur(prev, inp)
        if mask_t is not None:
            new = select_tree(mask_t, new, carry)
            y = jnp.where(broadcast_flags(mask_t, y), y, jnp.zeros((), y.dtype))
        return new, y

    final, ys = lax.scan(body, state, (inputs, resets, mask), reverse=reverse, unroll=unroll)
    return ys, final
