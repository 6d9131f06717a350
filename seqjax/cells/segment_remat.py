"""Training memory that does not grow with a cell's activations: `apply` in rematerialised time segments.

A chunked engine (the delta rules, SSD, mLSTM, GLA) keeps its own scan at O(inputs + chunk states), but
the layer around it does not: its projections, short convolutions, gates and norms store activations of
several times the input width at every token for the backward pass (Gated DeltaNet at 8 heads of 64 on
a 128-wide input: ~35 floats per input float). `SegmentRemat` runs the wrapped cell's `apply` over
segments of `segment_length` tokens under a `lax.scan` that carries the cell's state from one segment
to the next, each segment under `jax.checkpoint`: the backward pass stores the inputs and one state per
segment, and recomputes one segment's activations at a time. Peak training memory becomes
O(inputs + states per segment + one segment's activations), whatever the length; the price is one more
forward pass of the cell.

The result is the wrapped cell's function exactly (same parameters, states, outputs and gradients):
the cell contract's `apply` with a carried state is what makes a sequence splittable at any token. The
last segment is padded with masked tokens (state unchanged, output dropped), so any length works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.cells.base import Cell, DType, Params, PyTree, State
from seqjax.common.checks import check_flags
from seqjax.scan.sequential import select_tree

__all__ = ["AUTO_SEGMENT_LENGTH", "SegmentRemat", "cpu_auto_segments"]

#: Tokens per segment of `cpu_auto_segments`.
AUTO_SEGMENT_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class SegmentRemat(Cell):
    """`cell` whose `apply` runs in rematerialised segments of `segment_length` tokens (module docstring).

    Everything else (`init`, `initial_state`, `step`, parameters and their axes) is `cell`'s, so a model
    can wrap a layer's cell without touching its parameters or checkpoints. Cells whose state grows with
    the sequence (softmax attention's KV cache) are refused: their state cannot be carried at a fixed
    size, and blockwise attention already trains in O(length) memory.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> inner = cells.GatedDeltaNet(num_heads=2, head_dim=4)
    >>> cell = cells.SegmentRemat(inner, segment_length=8)
    >>> params = cell.init(jax.random.PRNGKey(0), 6)
    >>> xs = jax.random.normal(jax.random.PRNGKey(1), (2, 21, 6))   # 21 tokens: 3 segments, the last padded
    >>> ys, state = cell.apply(params, xs)
    >>> bool(jnp.allclose(ys, inner.apply(params, xs)[0], atol=1e-5))
    True
    """

    cell: Cell
    segment_length: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.segment_length, int) or self.segment_length <= 0:
            raise ValueError(
                f"SegmentRemat: segment_length must be a positive int, got {self.segment_length!r}."
            )
        label = type(self.cell).__name__
        if self.cell.state_grows_with_sequence:
            raise ValueError(
                f"SegmentRemat: {label}'s state grows with the sequence (a KV cache), so it cannot be "
                f"carried from segment to segment at a fixed size. Blockwise attention already trains in "
                f"memory linear in the length; wrap the model's recurrent layers only."
            )
        if getattr(self.cell, "sequence_axis", None) is not None:
            raise ValueError(
                f"SegmentRemat: {label} splits its time axis over the mesh axis "
                f"{self.cell.sequence_axis!r}; segmenting time as well would reorder the shards. Use one of "
                f"the two: sequence parallelism (memory per device falls with the shards) or SegmentRemat."
            )

    # -- the wrapped cell's, unchanged ---------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        return self.cell.init(key, input_size)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> State:
        return self.cell.initial_state(batch_shape, dtype)

    def param_axes(self) -> PyTree:
        return self.cell.param_axes()

    def param_groups(self) -> PyTree:
        return self.cell.param_groups()

    def shared_params(self) -> tuple[str, ...]:
        return self.cell.shared_params()

    def input_size_of(self, params: Params) -> int:
        return self.cell.input_size_of(params)

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    @property
    def is_reversed(self) -> bool:
        return self.cell.is_reversed

    @property
    def _label(self) -> str:
        return f"SegmentRemat({type(self.cell).__name__})"

    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        return self.cell.step_unsupported(streaming=streaming)

    def causal_unsupported(self) -> str | None:
        return self.cell.causal_unsupported()

    def sequence_parallel_unsupported(self) -> str | None:
        inner = self.cell.sequence_parallel_unsupported()
        if inner is not None:
            return inner
        return (
            f"{self._label} segments the time axis on one device; to split it over devices instead, "
            f"use the cell itself (model.segment_remat = 0) with the `sequence` mesh axis."
        )

    def step(
        self,
        params: Params,
        state: State,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        return self.cell.step(params, state, x, reset=reset, mask=mask)

    # -- apply in segments ---------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """The wrapped cell's `apply` on `xs` [*batch, time, input_size], segment by segment."""
        xs = self._check_input(params, xs, min_rank=2, what="xs", form="apply")
        *batch, length, _ = xs.shape
        batch_shape = tuple(batch)
        if length <= self.segment_length:  # one segment: nothing to carry or to rematerialise
            return self.cell.apply(params, xs, state, resets=resets, mask=mask)
        if state is None:  # the cell's own default, as its `apply` would take (float32 for bf16 inputs)
            state = self.cell.initial_state(batch_shape)
        else:
            self._check_state(state, batch_shape)
        flags_shape = (*batch_shape, length)
        resets = None if resets is None else check_flags(self._label, "resets", resets, flags_shape)
        mask = None if mask is None else check_flags(self._label, "mask", mask, flags_shape)
        n = -(-length // self.segment_length)
        pad = n * self.segment_length - length
        if pad and mask is None:
            mask = jnp.ones(flags_shape, bool)
        nb = len(batch_shape)

        def segments(a: jax.Array | None, fill: bool | float) -> jax.Array | None:
            """[*batch, time, ...] -> [n, *batch, segment_length, ...], the tail padded with `fill`."""
            if a is None:
                return None
            widths = [(0, 0)] * a.ndim
            widths[nb] = (0, pad)
            a = jnp.pad(a, widths, constant_values=fill)
            a = a.reshape(*a.shape[:nb], n, self.segment_length, *a.shape[nb + 1 :])
            return jnp.moveaxis(a, nb, 0)

        xs_seg, resets_seg, mask_seg = segments(xs, 0.0), segments(resets, False), segments(mask, False)
        # A right-to-left cell meets segment k + 1 before segment k: a reset at the first token of k + 1
        # ("a sequence starts here") clears the state it hands to segment k.
        clear = None
        if resets_seg is not None and self.is_reversed:
            firsts = resets_seg[..., 0]  # [n, *batch]
            clear = jnp.concatenate([firsts[1:], jnp.zeros_like(firsts[:1])])
        initial = jax.tree.map(lambda i, s: i.astype(s.dtype), self.cell.initial_state(batch_shape), state)

        def segment(carry: State, inputs: tuple[Any, ...]) -> tuple[State, jax.Array]:
            x, r, m, c = inputs
            if c is not None:
                carry = select_tree(c, initial, carry)
            ys, carry = self.cell.apply(params, x, carry, resets=r, mask=m)
            return carry, ys

        # prevent_cse=False: inside a scan, CSE cannot undo the rematerialisation (jax.checkpoint's docs).
        final, ys = lax.scan(
            jax.checkpoint(segment, prevent_cse=False),
            state,
            (xs_seg, resets_seg, mask_seg, clear),
            reverse=self.is_reversed,
        )
        ys = jnp.moveaxis(ys, 0, nb)  # [*batch, n, segment_length, features]
        ys = ys.reshape(*batch_shape, n * self.segment_length, ys.shape[-1])
        return ys[..., :length, :], final


def cpu_auto_segments(cell: Cell, xs: jax.Array, above: int) -> SegmentRemat | None:
    """The `SegmentRemat` in `AUTO_SEGMENT_LENGTH`-token segments that `cell.apply` runs instead of the
    whole sequence, or None where it runs the whole sequence.

    Cells whose `method="auto"` is memory-aware on CPU call this first in `apply`: on the CPU backend,
    a sequence of more than `above` tokens (time is the second-to-last axis of xs) is run in segments,
    when the cell's `method` is "auto" and its time axis is not split over devices (`sequence_axis`).
    On CPU the whole-sequence plans of the layers grow to several GiB at 16k tokens (batch 8, 8 heads
    of 64: 5.5 to 9.6 GiB) where segments plan under 1.1 GiB; each cell states its measured price in
    time next to its `auto_segment_above`. Any other `method`, or another backend, runs the sequence
    whole. Each segment calls `cell.apply` on at most `AUTO_SEGMENT_LENGTH` <= `above` tokens, so it
    runs whole.

    >>> import jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Mamba2(d_model=8, head_dim=4)
    >>> cpu_auto_segments(cell, jnp.ones((1, 16, 8)), above=8192) is None   # short: whole sequence
    True
    """
    if above < AUTO_SEGMENT_LENGTH:
        raise ValueError(
            f"{type(cell).__name__}: auto_segment_above ({above}) must be >= AUTO_SEGMENT_LENGTH "
            f"({AUTO_SEGMENT_LENGTH}), or each segment would be split again."
        )
    if (
        getattr(cell, "method", None) != "auto"
        or getattr(cell, "sequence_axis", None) is not None
        or jnp.ndim(xs) < 2
        or jnp.shape(xs)[-2] <= above
        or jax.default_backend() != "cpu"
    ):
        return None
    return SegmentRemat(cell, segment_length=AUTO_SEGMENT_LENGTH)
