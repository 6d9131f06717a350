"""Transformer-XL attention (Dai et al. 2019): causal softmax attention over the current segment plus a
memory of the last `memory_length` keys and values of the previous segments.

The cell is `_SoftmaxAttention` (projections, positions, the engine of `seqjax.scan.attention`, resets
and padding as in `Attention`) with a fixed-size memory as its state: a ring buffer of the last M
(rotated) keys and values and the position counter. Its size does not depend on the stream's length, so
segment recurrence (`seqjax.train.segments`) carries it from batch to batch, where `Attention`'s KV
cache would fill up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.attention import _SoftmaxAttention
from seqjax.cells.base import DType, Params
from seqjax.cells.kv_cache import ring_positions, ring_write_index, scatter_rows
from seqjax.cells.registry import register
from seqjax.common.checks import check_positive_int

__all__ = ["TransformerXLAttention", "XLAttentionState"]


class XLAttentionState(NamedTuple):
    k: jax.Array  # [*batch, memory_length, kv_heads, head_dim]: ring, slot p % M holds position p (rotated)
    v: jax.Array  # [*batch, memory_length, kv_heads, head_dim]
    length: jax.Array  # [*batch] int32: valid tokens of the current document so far = the next position


@register("xl_attention")
@dataclasses.dataclass(frozen=True)
class TransformerXLAttention(_SoftmaxAttention):
    """Causal multi-head softmax attention with Transformer-XL's segment memory.

    One `apply` over a segment of T tokens, from a state holding the memory:

        y_p = W_o [ Σ_j softmax_j(q_p·k_j / √d − slope_h·(p − p_j)) v_j ]_heads
              over the memory (the last ≤ M valid tokens before the segment, of the same document)
              and the segment's own tokens at positions p_j ≤ p (causal); the ALiBi term only for
              positional="alibi".

    So a query at offset i of the segment sees up to M + i + 1 tokens. The returned state holds the last
    M keys and values of memory ∪ segment and the position counter, so the next `apply` continues the
    stream. Positions are counted across segments (the state's `length`), as in
    `SlidingWindowAttention`: rotary, ALiBi and sinusoidal encodings see the true distance between a
    query and a memory key. Resets (a new document) start again at position 0 and empty the memory;
    padding (mask=False) moves no position, is never attended or stored, and outputs zero. `step` is
    `apply` on one token (a segment of length 1: it sees the last M tokens and itself).

    Deliberate differences from the paper:
      - XL caches the previous layer's hidden states and re-projects them with the current weights; this
        cell caches the already-projected (rotated) keys and values. Identical at evaluation; in
        training the memory is one optimizer step stale.
      - Positions are rotary (or ALiBi, sinusoidal) at the stream position instead of XL's learned
        relative encoding (the r, u, v terms).
      - The cell does not stop gradients into the memory it is given; segment recurrence does at the
        batch boundary (XL's SG(·)), so several `apply` calls inside one loss differentiate through.
      - XL's function depends on the segmentation: a query at segment offset i sees M + i + 1 tokens.
        `apply` over a sequence therefore equals a loop of `step` (or `apply` over other segment
        lengths) only when M covers the sequence (M ≥ the tokens in memory + T); with M ≥ the whole
        stream it equals causal `Attention` over the concatenation.

    State (`XLAttentionState`): the memory k, v [*batch, M, H_kv, d] as a ring buffer (slot p % M holds
    position p), in the state's dtype (`initial_state(dtype=...)`, float32 by default), and `length`
    [*batch] int32. Positions grow along a document: float32 rotary angles lose precision past ~10⁶.

    Hyperparameters: those of `Attention` but `max_length` (num_heads, head_dim, num_kv_heads,
    out_features, positional, rotary_base, method, block_size, dtype, param_dtype), plus
      memory_length: M ≥ 1, the past keys and values kept (XL uses the training segment length).
      causal: must stay True (the memory holds the past of a causal stream).
    Parameters: `w_q` [input_size, H, d], `w_k`, `w_v` [input_size, H_kv, d], `w_o` [H, d, out], as
    `Attention` (the same parameters work in both cells).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=3)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))          # segment 1
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)), state)   # segment 2 sees 3 of segment 1
    >>> ys.shape, state.k.shape, state.length.tolist()              # a memory of 3 slots
    ((2, 5, 8), (2, 3, 2, 4), [10, 10])
    """

    memory_length: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(
            "TransformerXLAttention",
            "memory_length",
            self.memory_length,
            " (the past keys and values each segment attends; e.g. the training segment length)",
        )
        if not self.causal:
            raise ValueError(
                f"TransformerXLAttention: causal must be True, got {self.causal!r}: the memory holds the "
                f"past of a causal stream. For bidirectional attention use Attention(causal=False)."
            )

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> XLAttentionState:
        shape = (*batch_shape, self.memory_length, self.kv_heads, self.head_dim)
        return XLAttentionState(
            k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), length=jnp.zeros(batch_shape, jnp.int32)
        )

    # -- step ----------------------------------------------------------------------------------------
    def step(
        self,
        params: Params,
        state: XLAttentionState,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[XLAttentionState, jax.Array]:
        """One token x [*batch, input_size] -> (state, y [*batch, output_size]): `apply` on a segment of
        length 1, which attends the memory and itself and writes ring slot `length % M`."""
        x, reset, mask = self._step_flags(params, state, x, reset, mask)
        ys, new = self.apply(
            params,
            x[..., None, :],
            state,
            resets=None if reset is None else reset[..., None],
            mask=None if mask is None else mask[..., None],
        )
        return new, ys[..., 0, :]

    # -- the memory, as `_SoftmaxAttention.apply` reads and writes it -------------------------------
    def _cached(self, state: XLAttentionState, length: jax.Array) -> tuple[jax.Array, ...]:
        """The memory's keys and values [*b, M, H_kv, d] (compute dtype), positions and validity [*b, M]
        after `length` tokens, and no global flags."""
        positions = ring_positions(length, self.memory_length)
        keys, values = state.k.astype(self.dtype), state.v.astype(self.dtype)
        return keys, values, positions, positions >= 0, None

    def _state_after(
        self,
        state: XLAttentionState,
        k: jax.Array,
        v: jax.Array,
        pos: jax.Array,
        in_last: jax.Array,
        cont: jax.Array,
        length: jax.Array,
    ) -> XLAttentionState:
        """The last M keys and values of memory ∪ segment (of the sequence's last document)."""
        index = ring_write_index(pos, in_last, length, self.memory_length)
        return XLAttentionState(
            k=scatter_rows(self._kept(cont, state.k), k, index),
            v=scatter_rows(self._kept(cont, state.v), v, index),
            length=length,
        )
