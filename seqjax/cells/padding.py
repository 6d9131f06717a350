"""Padding for cells with a causal conv: valid tokens first, then back in place.

A short causal conv must see a row's valid tokens in order, with no padding between them (fla's
unpadded "varlen" path). The cells with one (DeltaNet, Mamba-2, RG-LRU, mLSTM, sLSTM) move each row's
valid tokens to the front, stably, run the conv and the recurrence with the padding at the end, where
the engines pass the state through, and put the outputs back where their tokens were.

    >>> import jax.numpy as jnp
    >>> u = jnp.arange(4.0)[None, :, None]
    >>> mask = jnp.array([[False, True, False, True]])
    >>> packed, _, order, n_valid, valid = valid_tokens_first(u, None, mask)
    >>> packed[0, :, 0].tolist(), n_valid.tolist()
    ([1.0, 3.0, 0.0, 2.0], [2])
    >>> restore_token_order(packed, order, valid)[0, :, 0].tolist()
    [0.0, 1.0, 0.0, 3.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["restore_token_order", "valid_tokens_first"]


def valid_tokens_first(
    u: jax.Array, resets: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None, jax.Array | None]:
    """(u, resets, order, n_valid, valid) with each row's valid tokens moved to the front, stably.

    u [B, L, F]; resets and mask [B, L] or None. `order` [B, L] is the permutation applied, `n_valid`
    [B] the valid tokens per row and `valid` [B, L] marks the first n_valid positions; resets are moved
    with their tokens and cleared on the padding. Without a mask, u and resets come back unchanged and
    the other three are None.
    """
    if mask is None:
        return u, resets, None, None, None
    order = jnp.argsort(~mask, axis=1, stable=True)
    u = jnp.take_along_axis(u, order[..., None], axis=1)
    n_valid = mask.sum(axis=1)
    valid = jnp.arange(u.shape[1])[None] < n_valid[:, None]
    resets = None if resets is None else jnp.take_along_axis(resets, order, axis=1) & valid
    return u, resets, order, n_valid, valid


def restore_token_order(ys: jax.Array, order: jax.Array | None, valid: jax.Array | None) -> jax.Array:
    """Outputs [B, L, F] of `valid_tokens_first`'s rows back in their tokens' places, 0 at padding
    (`order` None: ys unchanged)."""
    if order is None:
        return ys
    ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return jnp.take_along_axis(ys, jnp.argsort(order, axis=1)[..., None], axis=1)
