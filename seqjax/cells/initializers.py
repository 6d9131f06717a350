"""Weight initialisers shared by the recurrent cells."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["stacked_glorot_uniform", "stacked_orthogonal", "torch_linear_uniform"]


def stacked_orthogonal(key: jax.Array, size: int, num_gates: int, dtype=jnp.float32) -> jax.Array:
    """[size, num_gates * size]: one orthogonal [size, size] block per gate.

    Orthogonal recurrent weights keep the recurrent Jacobian's singular values near one at
    initialisation (Saxe et al. 2014), so gradients neither explode nor vanish over long sequences.
    """
    keys = jax.random.split(key, num_gates)
    ortho = jax.nn.initializers.orthogonal()
    return jnp.concatenate([ortho(k, (size, size), dtype) for k in keys], axis=1)


def stacked_glorot_uniform(
    key: jax.Array, fan_in: int, fan_out: int, num_gates: int, dtype=jnp.float32
) -> jax.Array:
    """[fan_in, num_gates * fan_out]: Glorot-uniform per gate, so fan-out counts one gate, not all."""
    keys = jax.random.split(key, num_gates)
    glorot = jax.nn.initializers.glorot_uniform()
    return jnp.concatenate([glorot(k, (fan_in, fan_out), dtype) for k in keys], axis=1)


def torch_linear_uniform(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """[fan_in, fan_out] uniform in ±fan_in^-½: torch's `nn.Linear` default weight (`kaiming_uniform_`
    with a = √5), the initialisation of the PyTorch references (Mamba's projections).

    >>> w = torch_linear_uniform(jax.random.PRNGKey(0), (16, 4))
    >>> bool(jnp.abs(w).max() <= 0.25)
    True
    """
    bound = shape[0] ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
