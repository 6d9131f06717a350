"""`NnxCellLayer`: any seqjax cell as a Flax NNX module, the NNX counterpart of `CellLayer`.

    layer = NnxCellLayer(cells.LSTM(hidden_size=64), input_size=32, rngs=nnx.Rngs(0))
    ys, state = layer(xs, mask=mask)                     # runs cell.apply
    state, y = layer.step(x, state)                      # runs cell.step

The cell's parameter tree (`cell.init(key, input_size)`, key drawn from `rngs.params()`) is held as
`layer.params`: the same nested dict, every leaf an `nnx.Param` whose metadata carries the leaf's
logical axes as `out_sharding` (what `nnx.get_partition_spec` reads; the names `CellLayer`'s boxed
parameters carry, from `cell.param_axes()`) and its optimizer group as `group` (`cell.param_groups()`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta

from seqjax.cells.base import Cell, Params, State
from seqjax.models.layer import box_cell_params, step_error

__all__ = ["NnxCellLayer"]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _to_param(box: Any) -> nnx.Param:
    """A `GroupedPartitioned` box as an `nnx.Param` with the same logical axes and group."""
    return nnx.Param(box.value, out_sharding=box.names, group=box.group, eager_sharding=False)


class NnxCellLayer(nnx.Module):
    """Any seqjax cell as a Flax NNX layer.

    Args:
      cell: the cell (a frozen dataclass of hyperparameters).
      input_size: the input width the parameters are created for.
      rngs: where the parameters' key comes from (`rngs.params()`).
      params: instead of `rngs`, the cell's parameters to hold: `cell.init`'s tree, or a linen
        `CellLayer`'s (`variables["params"]["cell"]`, boxed or not). `input_size` is then optional.

    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from seqjax import cells
    >>> from seqjax.models.nnx_layer import NnxCellLayer
    >>> layer = NnxCellLayer(cells.LSTM(hidden_size=8), input_size=4, rngs=nnx.Rngs(0))
    >>> xs = jnp.ones((2, 5, 4))  # [batch, time, features]
    >>> ys, state = layer(xs)
    >>> ys.shape
    (2, 5, 8)
    >>> state, y = layer.step(xs[:, 0], layer.initial_state((2,)))  # one token, for streaming
    >>> bool(jnp.allclose(y, ys[:, 0], atol=1e-5))
    True
    >>> layer.params["w_ih"].out_sharding  # logical axes, as CellLayer's boxed parameters carry them
    ('embed', 'gates')
    >>> optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    >>> @nnx.jit
    ... def train_step(layer, optimizer, xs):
    ...     loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(xs)[0] ** 2))(layer)
    ...     optimizer.update(layer, grads)
    ...     return loss
    >>> loss = train_step(layer, optimizer, xs)
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        params: Params | None = None,
    ) -> None:
        label = type(cell).__name__
        if (rngs is None) == (params is None):
            raise ValueError(
                f"NnxCellLayer({label}): pass exactly one of `rngs` (to initialise the parameters with "
                f"cell.init) and `params` (to hold given ones)."
            )
        if params is None:
            if input_size is None:
                raise ValueError(f"NnxCellLayer({label}): give `input_size` to initialise the parameters.")
            params = cell.init(rngs.params(), int(input_size))
        else:
            params = meta.unbox(params)
            given = int(cell.input_size_of(params))
            if input_size is not None and int(input_size) != given:
                raise ValueError(
                    f"NnxCellLayer({label}): input_size={input_size} but the given params were initialised "
                    f"for {given} features."
                )
            input_size = given
        self.cell = cell
        self.input_size = int(input_size)
        # The same axes and groups (and the same checks) as CellLayer's boxed parameters.
        boxes = box_cell_params(cell, dict(params))
        # eager_sharding=False: logical names are not mesh axes; map them with the user's rules
        # (nnx.get_partition_spec + nn.logical_to_mesh_sharding) as for linen variables.
        self.params = nnx.data(jax.tree.map(_to_param, boxes, is_leaf=_is_box))

    def cell_params(self) -> Params:
        """The cell's parameter tree as plain arrays (what `cell.apply` and `cell.step` read)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)

    def __call__(
        self,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """`cell.apply` on `xs` [*batch, time, features]: returns (ys [*batch, time, output_size], state)."""
        return self.cell.apply(self.cell_params(), xs, state, resets=resets, mask=mask)

    def step(
        self,
        x: jax.Array,
        state: State,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        """`cell.step` on one token `x` [*batch, features]: returns (state, y [*batch, output_size]),
        state first like `cell.step` and `CellLayer.step` (a `lax.scan` carry)."""
        problem = step_error(self.cell, streaming=False)
        if problem is not None:
            label = type(self.cell).__name__
            raise TypeError(f"NnxCellLayer({label}): {problem}. Call the layer on whole sequences.")
        return self.cell.step(self.cell_params(), state, x, reset=reset, mask=mask)

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> State:
        """The cell's state before the first token (needs no parameters)."""
        return self.cell.initial_state(tuple(batch_shape), dtype)

    @property
    def output_size(self) -> int:
        return int(self.cell.output_size)
