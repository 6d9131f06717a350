"""Key/value caches of the softmax attention cells: segment ids and positions by the step rule, row
writes and resets of a cache, and the positions a sliding-window ring buffer holds.

    >>> import jax.numpy as jnp
    >>> valid = jnp.array([[True, True, False, True]])
    >>> resets = jnp.array([[False, False, False, True]])
    >>> seg, pos = segments_and_positions(valid, resets, jnp.array([5]))
    >>> seg.tolist(), pos.tolist()           # the 4th token starts a new segment at position 0
    ([[0, 0, 0, 1]], [[5, 6, 7, 0]])
    >>> ring_positions(jnp.array([5]), 3).tolist()   # slots of a 3-token ring after 5 tokens
    [[3, 4, 2]]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clear_rows", "ring_positions", "ring_write_index", "scatter_rows", "segments_and_positions"]


def segments_and_positions(
    valid: jax.Array, resets: jax.Array | None, start: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Segment ids and positions of a sequence, by the step rule.

    Args:
      valid: [*batch, T] bool, False for padding.
      resets: [*batch, T] bool or None; a reset on a padded token does nothing (padding wins).
      start: [*batch] int32, the position the first segment continues from (the state's length).

    Returns:
      seg [*batch, T] int32: 0 for the segment that continues the state, +1 at every effective reset;
      pos [*batch, T] int32: valid tokens before t in its segment (plus `start` in segment 0).
    """
    v = valid.astype(jnp.int32)
    before = jnp.cumsum(v, axis=-1) - v
    if resets is None:
        return jnp.zeros_like(before), before + start[..., None]
    r = resets & valid
    seg = jnp.cumsum(r.astype(jnp.int32), axis=-1)
    # `before` at the latest reset at or before t (it only grows), or −start before the first reset.
    origin = jax.lax.cummax(jnp.where(r, before, -start[..., None]), axis=before.ndim - 1)
    return seg, before - origin


def scatter_rows(base: jax.Array, values: jax.Array, index: jax.Array) -> jax.Array:
    """base [*b, S, ...] with base[..., index[t], ...] = values[..., t, ...]; index [*b, T], where an
    index ≥ S skips that row. The indices below S must be distinct."""

    def one(b: jax.Array, vals: jax.Array, idx: jax.Array) -> jax.Array:
        return b.at[idx].set(vals.astype(b.dtype), mode="drop")

    if base.shape[index.ndim - 1] == 0:  # nothing to write (no global tokens)
        return base
    for _ in range(index.ndim - 1):
        one = jax.vmap(one)
    return one(base, values, index)


def clear_rows(rows: jax.Array, cache: jax.Array) -> jax.Array:
    """cache [*b, S, ...] with the rows where `rows` [*b] is True zeroed (a reset), skipping the pass over
    the cache when no row resets."""
    flags = rows.reshape(rows.shape + (1,) * (cache.ndim - rows.ndim))
    return jax.lax.cond(
        jnp.any(rows), lambda c: jnp.where(flags, jnp.zeros((), c.dtype), c), lambda c: c, cache
    )


def ring_positions(length: jax.Array, window: int) -> jax.Array:
    """[*batch, window]: the position held by each ring slot after `length` tokens (negative = empty).
    Slot s holds the latest position p < length with p ≡ s (mod window)."""
    last = length[..., None] - 1
    return last - jnp.mod(last - jnp.arange(window), window)


def ring_write_index(pos: jax.Array, written: jax.Array, length: jax.Array, size: int) -> jax.Array:
    """[*batch, T] the ring slot (`scatter_rows` index) each token of a sequence is written to, for a ring
    of `size` slots that must end holding the last `size` of the `written` [*batch, T] tokens, whose
    positions are `pos` [*batch, T] and which end at `length` [*batch] tokens. Earlier tokens (which
    later ones would overwrite) and unwritten ones get `size`: skipped, so every slot is written at most
    once."""
    return jnp.where(written & (pos >= length[..., None] - size), pos % size, size)
