"""`CellLayer`: the one adapter that turns any seqjax cell into a Flax linen module.

    layer = CellLayer(cells.LSTM(hidden_size=64))
    variables = layer.init(key, xs)                      # xs [*batch, time, input_size]
    ys, state = layer.apply(variables, xs, mask=mask)    # runs cell.apply
    state, y = layer.apply(variables, x, state, method=CellLayer.step)   # runs cell.step

The cell's parameter tree is one linen parameter named `"cell"`, created by `cell.init` (so a
`CellLayer` initialised with key k holds exactly `cell.init(k', input_size)` for the key k' linen
derives), with every leaf boxed in a `GroupedPartitioned` carrying its logical axes
(`cell.param_axes()`) and optimizer group (`cell.param_groups()`).

Parameters shared across layers (`cell.shared_params()`, e.g. Linformer's E with sharing="layerwise"):
a layer built with `external_params` names does not hold them; its owner holds them once
(`init_shared_params`) and passes them to every call as `shared`:

    layer = CellLayer(cell, external_params=cell.shared_params())
    ys, state = layer.apply(variables, xs, shared={"e": e})      # {**own params, **shared} reach cell.apply
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, Params, State
from seqjax.models.partitioning import GROUPS, GroupedPartitioned

__all__ = ["CellLayer", "box_cell_params", "init_shared_params", "step_error"]


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def box_cell_params(cell: Cell, params: Params) -> Any:
    """Boxes each leaf of `cell`'s `params` with its logical axes and optimizer group. `params` may hold
    only some of the cell's top-level parameters (a layer's own, or the shared ones)."""
    axes = cell.param_axes()
    groups = cell.param_groups()
    if isinstance(params, dict) and isinstance(axes, dict) and set(params) < set(axes):
        axes, groups = ({name: tree[name] for name in params} for tree in (axes, groups))
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


def init_shared_params(cell: Cell, key: jax.Array, input_size: int) -> Any:
    """The parameters `cell` lets a model share across layers (`cell.shared_params()`), initialised as
    `cell.init(key, input_size)` initialises them and boxed like a layer's: what a model holds once and
    passes to every `CellLayer(cell, external_params=cell.shared_params())` as `shared`."""
    names = cell.shared_params()
    params = cell.init(key, input_size)
    return box_cell_params(cell, {name: params[name] for name in names})


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
      external_params: names of the cell's parameters this layer does not hold (a subset of
        `cell.shared_params()`): its owner holds them, shared across layers, and passes them to every call
        as `shared`. Empty (default): the layer holds all of the cell's parameters.
    """

    cell: Cell
    input_size: int | None = None
    external_params: tuple[str, ...] = ()

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
            params = self.cell.init(key, int(size))
            own = {name: value for name, value in params.items() if name not in self.external_params}
            return box_cell_params(self.cell, own)

        return self.param("cell", init)

    @nn.nowrap
    def _with_shared(self, params: Params, shared: Params | None) -> Params:
        """The layer's own parameters and the shared ones its owner passed: what the cell reads."""
        foreign = sorted(set(self.external_params) - set(self.cell.shared_params()))
        if foreign:
            raise ValueError(
                f"CellLayer({type(self.cell).__name__}): external_params {foreign} are not among the "
                f"parameters the cell lets a model share ({self.cell.shared_params()})."
            )
        missing = [name for name in self.external_params if shared is None or name not in shared]
        if missing:
            raise ValueError(
                f"CellLayer({type(self.cell).__name__}) holds no {missing} (external_params: its owner "
                f"shares them across layers) and the call passed none; pass shared={{{missing[0]!r}: ...}} "
                f"(a Backbone does), or build the layer without external_params to hold them itself."
            )
        if not self.external_params:
            return params
        return {**params, **{name: shared[name] for name in self.external_params}}

    def __call__(
        self,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        shared: Params | None = None,
    ) -> tuple[jax.Array, State]:
        """`cell.apply` on `xs` [*batch, time, features]: returns (ys [*batch, time, output_size], state).
        `shared` holds the `external_params` (ignored when there are none)."""
        params = self._with_shared(self.cell_params(jnp.shape(xs)[-1]), shared)
        return self.cell.apply(params, xs, state, resets=resets, mask=mask)

    def step(
        self,
        x: jax.Array,
        state: State,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
        shared: Params | None = None,
    ) -> tuple[State, jax.Array]:
        """`cell.step` on one token `x` [*batch, features]: returns (state, y [*batch, output_size])."""
        problem = step_error(self.cell, streaming=False)
        if problem is not None:
            raise TypeError(f"CellLayer {self.name!r}: {problem}. Use `__call__` on whole sequences.")
        params = self._with_shared(self.cell_params(jnp.shape(x)[-1]), shared)
        return self.cell.step(params, state, x, reset=reset, mask=mask)

    @nn.nowrap
    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> State:
        """The cell's state before the first token (needs no parameters)."""
        return self.cell.initial_state(tuple(batch_shape), dtype)

    @property
    def output_size(self) -> int:
        return int(self.cell.output_size)
