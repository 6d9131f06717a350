"""Validation of hyperparameters and per-token flags, with errors that name the owner, the field and the
value."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_flags", "check_positive_int"]


def check_positive_int(owner: str, field: str, value: Any, what: str = "") -> None:
    """Raises ValueError unless `value` is an integer >= 1 (a bool is not an integer here).

    `what` adds to the requirement, e.g. " (a multiple of kv_heads)".

        >>> check_positive_int("LSTM", "hidden_size", 8)
        >>> check_positive_int("LSTM", "hidden_size", 0)
        Traceback (most recent call last):
        ...
        ValueError: LSTM: hidden_size must be a positive integer, got 0.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{owner}: {field} must be a positive integer{what}, got {value!r}.")


def check_flags(owner: str, what: str, flags: Any, expected_shape: tuple[int, ...]) -> jax.Array:
    """`flags` (a cell's or model's `mask`/`resets`, owned by `owner`) as a boolean array of exactly
    `expected_shape`.

    Any shape that broadcasts to `expected_shape` under numpy's rules is accepted and broadcast: a mask
    [1, time] or [time] shared by the whole batch, a scalar, a per-sequence flag [*batch, 1]. Any other
    shape is a ValueError naming the argument, its shape and the expected one.

    >>> check_flags("LSTM", "mask", jnp.arange(4)[None] < 3, (2, 4))
    Array([[ True,  True,  True, False],
           [ True,  True,  True, False]], dtype=bool)
    >>> check_flags("LSTM", "mask", jnp.ones((2, 3), bool), (2, 4))
    Traceback (most recent call last):
    ...
    ValueError: LSTM: `mask` has shape (2, 3), expected (2, 4) or a shape that broadcasts to it ...
    """
    flags = jnp.asarray(flags)
    expected_shape = tuple(expected_shape)
    if flags.shape != expected_shape:
        try:
            broadcastable = jnp.broadcast_shapes(flags.shape, expected_shape) == expected_shape
        except ValueError:
            broadcastable = False
        if not broadcastable:
            raise ValueError(
                f"{owner}: `{what}` has shape {flags.shape}, expected {expected_shape} or a shape that "
                f"broadcasts to it (the input's shape without its feature axis, i.e. [*batch, time] for "
                f"apply or [*batch] for step; e.g. [1, time] or [time] for one mask shared by the batch)."
            )
    if flags.dtype != jnp.bool_:
        if not (jnp.issubdtype(flags.dtype, jnp.integer) or jnp.issubdtype(flags.dtype, jnp.bool_)):
            raise TypeError(
                f"{owner}: `{what}` must be boolean (True/False per token), got dtype {flags.dtype}."
            )
        flags = flags.astype(jnp.bool_)
    if flags.shape != expected_shape:
        flags = jnp.broadcast_to(flags, expected_shape)
    return flags
