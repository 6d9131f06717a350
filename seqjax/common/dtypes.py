"""The dtype rules shared by every engine and cell."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["accumulation_dtype"]


def accumulation_dtype(compute_dtype: Any) -> jnp.dtype:
    """float32 accumulation for low-precision compute, float64 when the computation is in float64.

    >>> accumulation_dtype(jnp.bfloat16), accumulation_dtype(jnp.float32)
    (dtype('float32'), dtype('float32'))
    """
    return jnp.promote_types(compute_dtype, jnp.float32)
