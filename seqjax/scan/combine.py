"""The associative operator of the diagonal recurrence h_t = a_t ⊙ h_{t-1} + b_t.

Composing step (a_l, b_l) then step (a_r, b_r) gives h = a_r ⊙ (a_l ⊙ h + b_l) + b_r, i.e. the step
(a_l ⊙ a_r, a_r ⊙ b_l + b_r). `lax.associative_scan` with this operator over (a, b) yields the
cumulative decays and the states started from zero.
"""

from __future__ import annotations

import jax

__all__ = ["diagonal_combine"]


def diagonal_combine(
    left: tuple[jax.Array, jax.Array], right: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Composes two diagonal recurrence steps (left first, then right).

    >>> import jax.numpy as jnp
    >>> from jax import lax
    >>> a, b = jnp.array([0.5, 0.5, 0.5]), jnp.array([1.0, 1.0, 1.0])
    >>> lax.associative_scan(diagonal_combine, (a, b))[1]  # h_t from h_{-1} = 0
    Array([1.  , 1.5 , 1.75], dtype=float32)
    """
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r
