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

from seqjax.cells.bidirectional import Bidirectional
from seqjax.models.partitioning import GROUPS, GroupedPartitioned

__all__ = ["CellLayer", "box_cell_params", "step_error"]


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def box_cell_params(cell: Any, params: Any) -> Any:
    """Boxes each leaf of `cell`'s `params` with its logical axes and optimizer group."""
    axes = cell.param_axes()
    groups_fn = getattr(cell, "param_groups", None)
    groups = (
        groups_fn() if groups_fn is not None else jax.tree.map(lambda _: "default", axes, is_leaf=_is_axes)
    )
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


def step_error(cell: Any, *, streaming: bool = True) -> str | None:
    """Why `cell` cannot run token by token, or None if it can.

    With `streaming=True` (a left-to-right model: prefill, decode, generation) reversed cells are refused
    too: their `step` exists, but a model streams tokens left to right.
    """
    name = type(cell).__name__
    if isinstance(cell, Bidirectional):
        return f"{name} has no step form (its backward direction reads future tokens)"
    if getattr(cell, "bidirectional", False):
        return f"{name} with bidirectional=True has no step form (it reads future tokens)"
    if streaming and (getattr(cell, "is_reversed", False) or getattr(cell, "reverse", False)):
        return f"{name} with reverse=True runs right to left, so it cannot stream tokens left to right"
    if getattr(cell, "causal", True) is False:
        return f"{name} with causal=False attends to future tokens, so it cannot stream"
    if not callable(getattr(cell, "step", None)):
        return f"{name} has no `step` method"
    return None


class CellLayer(nn.Module):
    """Any seqjax cell as a linen layer.

    Attributes:
      cell: the cell (a frozen dataclass of hyperparameters).
      input_size: the input width; None (default) takes it from the first input seen at `init`.
    """

    cell: Any
    input_size: int | None = None

    @nn.compact
    def cell_params(self, input_size: int | None = None) -> Any:
        """The cell's (unboxed) parameter tree; created at `init` for `input_size` features."""
        size = self.input_size if self.input_size is not None else input_size

        def init(key: jax.Array) -> Any:
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
        state: Any = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """`cell.apply` on `xs` [*batch, time, features]: returns (ys [*batch, time, output_size], state)."""
        params = self.cell_params(jnp.shape(xs)[-1])
        return self.cell.apply(params, xs, state, resets=resets, mask=mask)

    def step(
        self,
        x: jax.Array,
        state: Any,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[Any, jax.Array]:
        """`cell.step` on one token `x` [*batch, features]: returns (state, y [*batch, output_size])."""
        problem = step_error(self.cell, streaming=False)
        if problem is not None:
            raise TypeError(f"CellLayer {self.name!r}: {problem}. Use `__call__` on whole sequences.")
        params = self.cell_params(jnp.shape(x)[-1])
        return self.cell.step(params, state, x, reset=reset, mask=mask)

    @nn.nowrap
    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> Any:
        """The cell's state before the first token (needs no parameters)."""
        return self.cell.initial_state(tuple(batch_shape), dtype)

    @property
    def output_size(self) -> int:
        return int(self.cell.output_size)
