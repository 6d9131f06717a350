"""A small pure-functional model for online learning: linear encoder → stack of cells → linear readout."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, DType, RecurrentCell
from seqjax.common.checks import check_positive_int
from seqjax.scan.sequential import select_tree

__all__ = ["OnlineModel"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OnlineModel:
    """`x_t` [*batch, input_size] → (linear encoder) → cells[0] → … → cells[-1] → (linear readout).

    Everything is a pure function of an explicit params pytree::

        {"encoder": {"w": [input_size, width], "b": [width]},      # absent when encoder=False
         "layers": (params of cells[0], params of cells[1], ...),
         "readout": {"w": [output_size_of_last_cell, output_size], "b": [output_size]}}

    With `readout_hidden=M` the readout is a small MLP, `gelu(y W_h + b_h) W + b` with {"w_hidden":
    [output_size_of_last_cell, M], "b_hidden": [M]} added: a linear recurrence (LRU, S5, S4D) with a
    linear readout is a linear filter of its inputs, which cannot fit a nonlinear system such as
    NARMA-10. The readout acts after the states, so every learner's gradient of it is exact.

    and of the tuple of the cells' states. Each cell reads the previous one's output, so a cell's input
    width must be what it accepts (S4D, S5 and LRU map `hidden_size` features to `hidden_size`).
    `width` is the encoder's output width; by default the first cell's output size. With
    `encoder=False` the tokens go straight into the first cell (then every parameter of a one-layer model
    is a recurrence or readout parameter, which is what the exactness tests use).

    Only cells that run token by token (a `RecurrentCell` with a left-to-right `step`) are accepted.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> model = OnlineModel((cells.LRU(hidden_size=4, state_size=3),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> preds = model.apply(params, jnp.ones((5, 7, 2)))     # [batch, time, input_size]
    >>> preds.shape
    (5, 7, 1)
    """

    cells: tuple[Cell, ...]
    input_size: int
    output_size: int
    width: int | None = None
    encoder: bool = True
    readout_hidden: int | None = None
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(self.cells))
        if not self.cells:
            raise ValueError("OnlineModel: give at least one cell, e.g. cells=(seqjax.cells.LRU(16),).")
        check_positive_int("OnlineModel", "input_size", self.input_size)
        check_positive_int("OnlineModel", "output_size", self.output_size)
        if self.width is not None:
            check_positive_int("OnlineModel", "width", self.width)
        if self.readout_hidden is not None:
            check_positive_int("OnlineModel", "readout_hidden", self.readout_hidden)
        for i, cell in enumerate(self.cells):
            if not isinstance(cell, RecurrentCell):
                raise TypeError(
                    f"OnlineModel: cells[{i}] is {type(cell).__name__}, which has no project_inputs/recur "
                    f"split; online learning needs a recurrent cell (LSTM, GRU, ELSTM, S4D, S5, LRU, ...)."
                )
            reason = cell.step_unsupported(streaming=True)
            if reason is not None:
                raise ValueError(f"OnlineModel: cells[{i}] cannot run on a stream: {reason}.")

    @property
    def first_width(self) -> int:
        """Features entering the first cell."""
        if not self.encoder:
            return self.input_size
        return self.width if self.width is not None else self.cells[0].output_size

    def init(self, key: jax.Array) -> dict[str, Any]:
        """The params pytree (see the class docstring)."""
        keys = jax.random.split(key, len(self.cells) + 2)
        params: dict[str, Any] = {}
        pd = self.param_dtype
        if self.encoder:
            w = jax.random.normal(keys[0], (self.input_size, self.first_width), pd)
            params["encoder"] = {"w": w / math.sqrt(self.input_size), "b": jnp.zeros((self.first_width,), pd)}
        layers, width = [], self.first_width
        for i, cell in enumerate(self.cells):
            layers.append(cell.init(keys[i + 1], width))
            width = cell.output_size
        params["layers"] = tuple(layers)
        readout: dict[str, Any] = {}
        out_key = keys[-1]  # without readout_hidden, the same key (and weights) as before it existed
        if self.readout_hidden is not None:
            hidden_key, out_key = jax.random.split(out_key)
            w = jax.random.normal(hidden_key, (width, self.readout_hidden), pd) / math.sqrt(width)
            readout = {"w_hidden": w, "b_hidden": jnp.zeros((self.readout_hidden,), pd)}
            width = self.readout_hidden
        w = jax.random.normal(out_key, (width, self.output_size), pd) / math.sqrt(width)
        params["readout"] = {**readout, "w": w, "b": jnp.zeros((self.output_size,), pd)}
        return params

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> tuple[Any, ...]:
        """The tuple of every cell's initial state."""
        return tuple(cell.initial_state(tuple(batch_shape), dtype) for cell in self.cells)

    # -- the pieces, for one token (any leading batch axes, or none) ----------------------------------
    def encode(self, params: dict[str, Any], x: jax.Array) -> jax.Array:
        if not self.encoder:
            return x
        return x @ params["encoder"]["w"] + params["encoder"]["b"]

    def layer(self, index: int, params_l: Any, state: Any, u: jax.Array) -> tuple[Any, jax.Array]:
        """cells[index] on one token without flags: (state_{t-1}, u_t) -> (state_t, y_t)."""
        cell = self.cells[index]
        return cell.recur(params_l, state, cell.project_inputs(params_l, u))

    def readout(self, params: dict[str, Any], y: jax.Array) -> jax.Array:
        r = params["readout"]
        if "w_hidden" in r:  # readout_hidden: one GELU layer (after the state: exact in every learner)
            y = jax.nn.gelu(y @ r["w_hidden"] + r["b_hidden"])
        return y @ r["w"] + r["b"]

    def token(
        self, params: dict[str, Any], states: tuple[Any, ...], x: jax.Array
    ) -> tuple[tuple[Any, ...], jax.Array, tuple[jax.Array, ...]]:
        """One token without flags: (states_{t-1}, x_t) -> (states_t, prediction_t, inputs of each cell)."""
        u = self.encode(params, x)
        new, inputs = [], []
        for i in range(len(self.cells)):
            inputs.append(u)
            s, u = self.layer(i, params["layers"][i], states[i], u)
            new.append(s)
        return tuple(new), self.readout(params, u), tuple(inputs)

    def step(
        self,
        params: dict[str, Any],
        states: tuple[Any, ...],
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[tuple[Any, ...], jax.Array]:
        """One token `x` [*batch, input_size] under the cell contract's flags (a reset clears every layer's
        state before the token; a padded token keeps the states). Returns (states, prediction)."""
        u = self.encode(params, x)
        new = []
        for i, cell in enumerate(self.cells):
            s, u = cell.step(params["layers"][i], states[i], u, reset=reset, mask=mask)
            new.append(s)
        pred = self.readout(params, u)
        if mask is not None:
            pred = jnp.where(jnp.asarray(mask)[..., None], pred, 0)
        return tuple(new), pred

    def apply(
        self,
        params: dict[str, Any],
        xs: jax.Array,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Whole sequences `xs` [*batch, time, input_size] -> predictions [*batch, time, output_size], from
        the initial state, through each cell's own `apply` (the BPTT reference)."""
        u = self.encode(params, xs)
        dtype = jax.tree.leaves(params["layers"])[0].dtype  # float64 params keep float64 states
        for i, cell in enumerate(self.cells):
            state = cell.initial_state(u.shape[:-2], dtype)
            u, _ = cell.apply(params["layers"][i], u, state, resets=resets, mask=mask)
        pred = self.readout(params, u)
        if mask is not None:
            pred = jnp.where(jnp.asarray(mask)[..., None], pred, 0)
        return pred

    def select(self, flags: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
        """`select_tree` for per-example flags [*batch] over state-like pytrees."""
        return select_tree(flags, on_true, on_false)
