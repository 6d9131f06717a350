"""Which key each query sees: the visibility rule of the attention engines."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["visibility"]


def visibility(
    q_positions: jax.Array,
    kv_positions: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
) -> jax.Array:
    """[*batch, Lq, Lk] bool: the rule in the module docstring, for positions [*batch, Lq] / [*batch, Lk]."""
    qp = q_positions[..., :, None]
    kp = kv_positions[..., None, :]
    visible = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), bool)
    if causal:
        visible &= kp <= qp
    if window is not None:
        near = (qp - kp < window) if causal else (jnp.abs(qp - kp) < window)
        if kv_global is not None:
            near |= kv_global[..., None, :]
        if q_global is not None:
            near |= q_global[..., :, None]
        visible &= near
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither.")
        visible &= q_segment_ids[..., :, None] == kv_segment_ids[..., None, :]
    if kv_mask is not None:
        visible &= kv_mask[..., None, :]
    return visible
