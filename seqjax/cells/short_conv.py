"""The short depthwise causal convolution in front of the recurrence of Mamba, Mamba-2, DeltaNet, RG-LRU,
mLSTM and sLSTM: one copy of its taps, its reset rule, its carried window and its sequence-parallel form.

`apply` of those cells convolves a whole segment at once: the window carried in the state supplies the
K − 1 inputs before the segment, taps that reach across a reset read zeros, and the new window is the
last K − 1 inputs up to the last valid token (valid tokens come first: `seqjax.cells.padding`). With the
time axis split over a mesh axis (`sequence_axis`), each shard takes the K − 1 inputs before it from the
previous shard (`seqjax.scan.sequence_halo`, one `ppermute`) instead of gathering the sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from seqjax.scan.sequence_parallel import sequence_halo, sequence_shards

__all__ = ["conv_taps", "segment_ids", "short_conv"]


def segment_ids(resets: jax.Array | None, batch: int, length: int, taps: int) -> jax.Array:
    """[B, K − 1 + L] int32: 0 for the window's K − 1 inputs, then the segment index of each token (the
    number of resets up to it), so a tap reads another token only inside the same segment.

    >>> segment_ids(jnp.array([[False, True, False]]), 1, 3, 2).tolist()
    [[0, 0, 1, 1]]
    """
    if resets is None:
        return jnp.zeros((batch, length + taps - 1), jnp.int32)
    return jnp.concatenate(
        [jnp.zeros((batch, taps - 1), jnp.int32), jnp.cumsum(resets, axis=1, dtype=jnp.int32)], axis=1
    )


def conv_taps(weight: jax.Array, ext: jax.Array, seg: jax.Array, length: int) -> jax.Array:
    """Σ_tap w[tap] · ext[t + tap] for the `length` positions after the first K − 1 of `ext`, taps in
    another segment than the current token zeroed.

    Args:
      weight: [K, *features], tap K − 1 on the current token.
      ext: [B, K − 1 + length, *features]: the K − 1 inputs before the first position, then the positions.
      seg: [B, K − 1 + length] int (`segment_ids`).

    >>> conv_taps(jnp.ones((2, 1)), jnp.ones((1, 3, 1)), jnp.zeros((1, 3), jnp.int32), 2)[0, :, 0]
    Array([2., 2.], dtype=float32)
    """
    taps = weight.shape[0]
    bsz = ext.shape[0]
    feat = (1,) * (ext.ndim - 2)
    seg_now = seg[:, taps - 1 :]
    out = jnp.zeros((bsz, length, *ext.shape[2:]), ext.dtype)
    for tap in range(taps):  # tap K-1 is the current token, tap 0 the oldest
        same = (seg[:, tap : tap + length] == seg_now).reshape(bsz, length, *feat)
        out = out + jnp.where(same, ext[:, tap : tap + length], 0.0) * weight[tap].astype(ext.dtype)
    return out


def _sharded_taps(
    weight: jax.Array, x: jax.Array, seg: jax.Array, window: jax.Array, sequence_axis: str
) -> jax.Array:
    """`conv_taps` with the time axis of x [B, L, ...] and seg [B, L] split over `sequence_axis`: each
    shard prepends the last K − 1 inputs and segment ids of the previous shard (the first shard: the
    window, segment 0). Only `sequence_axis` is manual; the batch keeps its own sharding."""
    taps = weight.shape[0]
    spec = P(None, sequence_axis)

    def body(weight, x_local, seg_local, window):
        halo = sequence_halo(x_local, taps - 1, sequence_axis, time_axis=1, initial=window)
        seg_halo = sequence_halo(
            seg_local, taps - 1, sequence_axis, time_axis=1, initial=jnp.zeros_like(seg_local[:, : taps - 1])
        )
        ext = jnp.concatenate([halo, x_local], axis=1)
        seg_ext = jnp.concatenate([seg_halo, seg_local], axis=1)
        return conv_taps(weight, ext, seg_ext, x_local.shape[1])

    return jax.shard_map(
        body,
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=(P(), spec, spec, P()),
        out_specs=spec,
        axis_names={sequence_axis},
        check_vma=False,
    )(weight, x, seg, window)


def short_conv(
    x: jax.Array,
    window: jax.Array,
    weight: jax.Array,
    resets: jax.Array | None = None,
    n_valid: jax.Array | None = None,
    *,
    sequence_axis: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Depthwise causal conv over [window; x] (no bias, no activation) and the window after it.

    Taps that reach across a segment start (a reset) read zeros, so packed sequences never see each
    other; the returned window holds the last `K − 1` inputs up to the last valid token (the first
    `n_valid` tokens of each row are the valid ones), cleared across a reset.

    Args:
      x: [B, L, *features]; window: [B, K − 1, *features] (the inputs before x); weight: [K, *features],
        tap K − 1 on the current token.
      resets: [B, L] bool or None; n_valid: [B] int or None (all L valid).
      sequence_axis: a mesh axis that splits L (None: not split); inside `jax.set_mesh`, each shard
        takes its K − 1 inputs from the previous shard. Shards shorter than K − 1, or a length the shards
        do not divide, fall back to the unsplit taps (XLA then moves what it needs).

    Returns:
      (out [B, L, *features], new window [B, K − 1, *features]).

    >>> out, w = short_conv(jnp.ones((1, 3, 2)), jnp.zeros((1, 1, 2)), jnp.ones((2, 2)))
    >>> out[0, :, 0], w.shape                     # taps [previous, current]; the window starts at zero
    (Array([1., 2., 2.], dtype=float32), (1, 1, 2))
    """
    bsz, length = x.shape[:2]
    taps = weight.shape[0]
    seg = segment_ids(resets, bsz, length, taps)
    ext = jnp.concatenate([window.astype(x.dtype), x], axis=1)  # [B, K-1+L, ...]
    shards = sequence_shards(sequence_axis)
    if shards > 1 and taps > 1 and length % shards == 0 and length // shards >= taps - 1:
        out = _sharded_taps(weight, x, seg[:, taps - 1 :], window.astype(x.dtype), sequence_axis)
    else:
        out = conv_taps(weight, ext, seg, length)
    if taps == 1:
        return out, window
    feat = (1,) * (x.ndim - 2)
    n_valid = jnp.full((bsz,), length) if n_valid is None else n_valid
    idx = n_valid[:, None] + jnp.arange(taps - 1)[None]  # positions in `ext`
    new = jnp.take_along_axis(ext, idx.reshape(bsz, taps - 1, *feat), axis=1)
    seg_last = jnp.take_along_axis(seg, (n_valid + taps - 2)[:, None], axis=1)
    keep = (jnp.take_along_axis(seg, idx, axis=1) == seg_last).reshape(bsz, taps - 1, *feat)
    return out, jnp.where(keep, new, 0.0).astype(window.dtype)
