"""`CellLayer`: the one adapter that turns any seqjax cell into a Flax linen module.

    layer = CellLayer(cells.LSTM(hidden_size=64))
    variables = layer.init(key, xs)                      # xs [*batch, time, input_size]
    ys, state = layer.apply(variables, xs, mask=mask)    # runs cell.apply
    state, y = layer.apply(variables, x, state, method=CellLayer.step)   # runs cell.step

The cell's parameter tree is one linen parameter named `"cell"`, created by `cell.init` (so a
`CellLayer` initialised with key k holds exactly `cell.init(k', input_size)` for the key k' linen
derives), with every leaf boxed in a `GroupedPartitioned` carrying its logical axes
(`cell.param_axes()`) and optimizer group (`cell.param_groups()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, Params, State
from seqjax.models.partitioning import GROUPS, GroupedPartitioned

__all__ = ["CellLayer", "box_cell_params", "step_error"]


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def box_cell_params(cell: Cell, params: Params) -> Any:
    """Boxes each leaf of `cell`'s `params` with its logical axes and optimizer group."""
    axes = cell.param_axes()
    groups = cell.param_groups()
    label = type(cell).__name__

    def box(path: Any, value: Any, names: Any, group: Any) -> GroupedPartitioned:
        where = f"{label} parameter {jax.tree_util.keystr(path)}"
        if not _is_axes(names) or len(names) != jnp.ndim(value):
            raise ValueError(
                f"{where} has shape {jnp.shape(value)} but its param_axes() entry is {names!r}; a cell must "
                f"give one logical axis name (or None) per dimension."
            )
        if group not in GROUPS:
            raise ValueError(f"{where} is in unknown optimizer group {group!r}; groups are {GROUPS}.")
        return GroupedPartitioned(value, tuple(names), group=group)

    return jax.tree_util.tree_map_with_path(box, params, axes, groups)


def step_error(cell: Cell, *, streaming: bool = True) -> str | None:
    """Why `cell` cannot run token by token, or None if it can: the cell's own `step_unsupported`.

    With `streaming=True` (a left-to-right model: prefill, decode, generation) reversed cells are refused
    too: their `step` exists, but a model streams tokens left to right.
    """
    return cell.step_unsupported(streaming=streaming)


class CellLayer(nn.Module):
    """Any seqjax cell as a linen layer.

    Attributes:
      cell: the cell (a frozen dataclass of hyperparameters).
      input_size: the input width; None (default) takes it from the first input seen at `init`.
    """

    cell: Cell
    input_size: int | None = None

    @nn.compact
    def cell_params(self, input_size: int | None = None) -> Params:
        """The cell's (unboxed) parameter tree; created at `init` for `input_size` features."""
        size = self.input_size if self.input_size is not None else input_size

        def init(key: jax.Array) -> Params:
            if size is None:
                raise ValueError(
                    f"CellLayer({type(self.cell).__name__}): the input width is unknown; set `input_size` or "
                    f"initialise with an input."
                )
            return box_cell_params(self.cell, self.cell.init(key, int(size)))

        return self.param("cell", init)

    def __call__(
        self,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """`cell.apply` on `xs` [*batch, time, features]: returns (ys [*batch, time, output_size], state)."""
        params = self.cell_params(jnp.shape(xs)[-1])
        return self.cell.apply(params, xs, state, resets=resets, mask=mask)

    def step(
        self,
        x: jax.Array,
        state: State,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        """`cell.step` on one token `x` [*batch, features]: returns (state, y [*batch, output_size])."""
        problem = step_error(self.cell, streaming=False)
        if problem is not None:
            raise TypeError(f"CellLayer {self.name!r}: {problem}. Use `__call__` on whole sequences.")
        params = self.cell_params(jnp.shape(x)[-1])
        return self.cell.step(params, state, x, reset=reset, mask=mask)

    @nn.nowrap
    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> State:
        """The cell's state before the first token (needs no parameters)."""
        return self.cell.initial_state(tuple(batch_shape), dtype)

    @property
    def output_size(self) -> int:
        return int(self.cell.output_size)
