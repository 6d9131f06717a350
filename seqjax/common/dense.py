"""Projections as one 2-D matmul: x [..., *in] · w [*in, *out] -> [..., *out].

A cell's projection written as an einsum over [batch, time, features] inputs, such as
"...i,ihd->...hd", makes autodiff form the weight gradient as a dot that contracts two or more dimensions
(batch and time). XLA's CPU backend runs such a dot by first copying an operand into a transposed layout,
and it picks the large one, the [batch · time, heads · head_dim] output gradient: measured on one CPU
core for 8 x 4,096 tokens of 128 features into 8 heads of 64, forward + backward took 0.66 s as the
einsum and 0.25 s as one 2-D matmul. Flattening the leading dimensions of x into one, and the weight's
input and output dimensions into one each, makes every dot of the forward and backward pass a plain
[M, K] x [K, N] matmul; the result is the same function (the same products and sums), and forward-mode
differentiation still works (no custom derivative rule).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["dense"]


def _split_spec(spec: str) -> tuple[str, str, str] | None:
    """ "...<in>,<in><out>->...<out>" -> (in, out, spec); None for any other einsum spec."""
    compact = spec.replace(" ", "")
    if "->" not in compact or compact.count(",") != 1:
        return None
    inputs, out = compact.split("->")
    lhs, rhs = inputs.split(",")
    if not (lhs.startswith("...") and out.startswith("...")):
        return None
    x_dims, out_dims = lhs[3:], out[3:]
    if not x_dims or "." in x_dims + rhs + out_dims:
        return None
    if rhs != x_dims + out_dims or len(set(rhs)) != len(rhs):
        return None
    return x_dims, out_dims, compact


def dense(
    spec: str,
    x: jax.Array,
    w: jax.Array,
    *,
    preferred_element_type: jnp.dtype | None = None,
    flatten: bool = True,
) -> jax.Array:
    """`jnp.einsum(spec, x, w)` for a projection spec "...<in>,<in><out>->...<out>" (the weight's leading
    dimensions are x's trailing ones, contracted; its other dimensions are the output's), computed as one
    2-D matmul (module docstring). Other specs fall back to `jnp.einsum`.

    Args:
      spec: the einsum spec, e.g. "...i,ihd->...hd" (8 heads of 64 from i features), "...hd,hdo->...o"
        (heads back to o features), "...i,io->...o".
      x: [..., *in]; w: [*in, *out].
      preferred_element_type: the accumulation and result dtype (float32 for bfloat16 operands).
      flatten: False runs `jnp.einsum` as written. Cells pass False under sequence parallelism: merging a
        time axis sharded over devices into the batch axis before it is not a sharding XLA can keep, so
        the flattened matmul would gather the sequence onto every device.

    Returns:
      [..., *out].

    >>> import jax.numpy as jnp
    >>> x, w = jnp.ones((2, 5, 3)), jnp.ones((3, 4, 6))
    >>> dense("...i,ihd->...hd", x, w).shape
    (2, 5, 4, 6)
    >>> bool(jnp.allclose(dense("...i,ihd->...hd", x, w), jnp.einsum("...i,ihd->...hd", x, w)))
    True
    """
    parts = _split_spec(spec) if flatten else None
    if parts is None:
        return jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)
    x_dims, out_dims, _ = parts
    n_in = len(x_dims)
    if x.ndim < n_in or w.ndim != n_in + len(out_dims) or x.shape[x.ndim - n_in :] != w.shape[:n_in]:
        raise ValueError(
            f"dense({spec!r}): x has shape {x.shape} and w {w.shape}; the weight's first {n_in} dimension(s) "
            f"must equal x's last {n_in}."
        )
    batch, in_shape, out_shape = x.shape[: x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
    k, n = math.prod(in_shape), math.prod(out_shape)
    y = jnp.matmul(
        x.reshape(math.prod(batch), k), w.reshape(k, n), preferred_element_type=preferred_element_type
    )
    return y.reshape(*batch, *out_shape)
