"""What XLA plans for a compiled program: the bytes its arguments, outputs and temporaries take."""

from __future__ import annotations

from typing import Any

__all__ = ["plan_bytes"]


def plan_bytes(compiled: Any) -> int | None:
    """Arguments + outputs + temporaries of a compiled program (`jax.jit(f).lower(...).compile()`).

    This is the device memory the program needs while it runs, as XLA's buffer assignment counts it
    (donated arguments are counted once, with the outputs that alias them). None where the backend
    gives no memory analysis.

        >>> import jax, jax.numpy as jnp
        >>> compiled = jax.jit(lambda x: x * 2).lower(jnp.ones((256,), jnp.float32)).compile()
        >>> plan_bytes(compiled) >= 2 * 256 * 4
        True
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # some backends have no memory analysis
        return None
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)
