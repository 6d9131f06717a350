"""Exact real-time recurrent learning for any recurrent cell, with the full influence matrix.

For one cell with state s (flattened to S numbers) and parameters θ (flattened to P numbers), the
influence matrix M_t = ∂s_t/∂θ [S, P] follows
    M_t = (∂f/∂s) M_{t−1} + ∂f/∂θ,
computed here as P forward-mode derivatives (`jax.jvp`, vmapped) of the cell's own `recur`, each with
tangent (e_p, M_{t−1}[:, p]). The gradient through the previous state is δ · M_{t−1}.

Cost per token and example: memory O(S·P) and work O(P · cost of one step) = O(S·P) for a dense RNN.
For an LSTM or GRU of hidden size H, S ∝ H and P ∝ H² (+ H·input), so memory grows as H³ and work as
H⁴: this is the reference the approximations are measured against, for hidden sizes of a few dozen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from seqjax.cells.base import Cell, RecurrentCell
from seqjax.online.learner import LayerTracer, TraceLearner

__all__ = ["DenseRTRL", "DenseTracer"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DenseTracer(LayerTracer):
    """The full influence matrix of one cell (see the module docstring)."""

    cell: Cell

    def init(self, params: PyTree, state: PyTree, input_size: int) -> jax.Array:
        s_flat, _ = ravel_pytree(state)
        p_flat, _ = ravel_pytree(params)
        return jnp.zeros((s_flat.shape[0], p_flat.shape[0]), s_flat.dtype)

    def update(self, params: PyTree, traces: jax.Array, state: PyTree, u: jax.Array) -> jax.Array:
        cell = self.cell
        p_flat, unravel_p = ravel_pytree(params)
        s_flat, unravel_s = ravel_pytree(state)

        def f(p: jax.Array, s: jax.Array) -> jax.Array:
            new, _ = cell.recur(unravel_p(p), unravel_s(s), cell.project_inputs(unravel_p(p), u))
            return ravel_pytree(new)[0].astype(s_flat.dtype)

        def column(e_p: jax.Array, m_p: jax.Array) -> jax.Array:
            return jax.jvp(f, (p_flat, s_flat), (e_p, m_p))[1]

        eye = jnp.eye(p_flat.shape[0], dtype=p_flat.dtype)
        return jax.vmap(column, in_axes=(0, 1), out_axes=1)(eye, traces)

    def contract(self, params: PyTree, traces: jax.Array, delta: PyTree) -> PyTree:
        p_flat, unravel_p = ravel_pytree(params)
        d_flat, _ = ravel_pytree(delta)
        return unravel_p(jnp.real(d_flat @ traces).astype(p_flat.dtype))


@dataclasses.dataclass(frozen=True)
class DenseRTRL(TraceLearner):
    """Exact RTRL with each cell's full influence matrix ∂s_t/∂θ (Williams & Zipser 1989).

    Works for every recurrent cell (LSTM, GRU, E-LSTM, S4D, S5, LRU, ...) and is exact for each cell's
    own parameters: a one-layer model without encoder gets BPTT's gradient exactly. Between layers, as
    for every trace learner here, the error flows through the current token only.

    Cost: for an LSTM or GRU of hidden size H the influence matrix has O(H) × O(H²) entries, so memory
    is O(H³) and each token costs O(H⁴) work per example — use it as the exact reference for hidden
    sizes of a few dozen, and SnAp-1 or diagonal RTRL beyond.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> from seqjax.online import OnlineModel
    >>> model = OnlineModel((cells.GRU(hidden_size=3),), input_size=2, output_size=1, encoder=False)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> learner = DenseRTRL(model)
    >>> st = learner.init(params, batch_shape=(4,))
    >>> st.traces[0].shape                                  # [batch, state, cell parameters]
    (4, 3, 63)
    >>> st, pred, loss, grads = jax.jit(learner.step)(params, st, jnp.ones((4, 2)), jnp.zeros((4, 1)))
    >>> grads["layers"][0]["w_hh"].shape
    (3, 9)
    """

    def tracer_for(self, index: int, cell: Cell) -> LayerTracer:
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"DenseRTRL: cells[{index}] is {type(cell).__name__}, not a recurrent cell.")
        return DenseTracer(cell)
