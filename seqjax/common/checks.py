"""Validation of hyperparameters, with errors that name the owner, the field and the value."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_positive_int"]


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
