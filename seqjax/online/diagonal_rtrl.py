"""Exact real-time recurrent learning for the diagonal linear recurrences S4D, S5 and LRU (and, through
`seqjax.online.mamba_rtrl`, Mamba's selective recurrence).

These cells update h_t = λ(θ) ⊙ h_{t−1} + b(θ, u_t) with a diagonal (complex) λ, so the sensitivity of
the state to a recurrence parameter never mixes state units (Zucchet et al. 2023, "Online learning of
long-range dependencies"). Two kinds of recurrence parameters, two kinds of traces (per example):

- element-wise parameters p, where every state unit depends on at most one entry of p (LRU's ν, θ, γ;
  S5's Λ and Δ; all of S4D's A, B and Δ): one trace per state unit,
      e^p_t = λ ⊙ e^p_{t−1} + (∂λ/∂p) ⊙ h_{t−1} + ∂b/∂p,
  with ∂λ/∂p and ∂b/∂p taken by `jax.jvp` through the cell's own `decay` and `project_inputs` (no
  formula is duplicated here). The gradient is Re(δ ⊙ e) summed over the units each entry feeds.
- the input matrix B of LRU and S5 (b_re, b_im [H_in, N]; b_n = κ_n Σ_j u_j B_jn): one trace per
  entry, E_t[j, n] = λ_n E_{t−1}[j, n] + κ_n u_{t,j}; the trace of b_im is i·E, so one array serves both.

C and D act after the state and get their exact gradient from the current token. Memory per example:
O(N) per element-wise parameter and O(H_in·N) for B, i.e. O(state × parameters per unit); work per token
the same order. Exact for the cell's own parameters (equal to BPTT's gradient); parameters before the
cell (the model's encoder, earlier layers) get only the gradient through the current token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell
from seqjax.cells.mamba import Mamba
from seqjax.cells.ssm import LRU, S4D, S5
from seqjax.online.learner import LayerTracer, TraceLearner
from seqjax.online.mamba_rtrl import MambaTracer

__all__ = ["DIAGONAL_CELLS", "DiagonalRTRL", "DiagonalTracer"]

PyTree = Any

#: cell type -> (element-wise recurrence parameters, input-matrix parameters (re, im) or None)
DIAGONAL_CELLS: dict[type, tuple[tuple[str, ...], tuple[str, str] | None]] = {
    S4D: (("log_dt", "a_re_log", "a_im", "b_re", "b_im"), None),
    S5: (("lambda_re", "lambda_im", "log_dt"), ("b_re", "b_im")),
    LRU: (("nu_log", "theta_log", "gamma_log"), ("b_re", "b_im")),
}


def _one_hot_tangent(params: PyTree, name: str) -> PyTree:
    return {k: (jnp.ones_like(v) if k == name else jnp.zeros_like(v)) for k, v in params.items()}


def _to_units(g: jax.Array, leaf_shape: tuple[int, ...]) -> jax.Array:
    """Sums a per-unit gradient over the state axes the parameter is broadcast along (S4D's Δ [H] feeds
    the N/2 modes of its feature)."""
    extra = g.ndim - len(leaf_shape)
    return jnp.sum(g, axis=tuple(range(g.ndim - extra, g.ndim))) if extra else g


@dataclasses.dataclass(frozen=True)
class DiagonalTracer(LayerTracer):
    """Exact traces of one S4D, S5 or LRU cell (see the module docstring)."""

    cell: Cell

    @property
    def _spec(self) -> tuple[tuple[str, ...], tuple[str, str] | None]:
        return DIAGONAL_CELLS[type(self.cell)]

    def init(self, params: PyTree, state: jax.Array, input_size: int) -> dict[str, jax.Array]:
        elementwise, matrix = self._spec
        traces = {name: jnp.zeros_like(state) for name in elementwise}
        if matrix is not None:
            traces["input_matrix"] = jnp.zeros((input_size, *state.shape), state.dtype)
        return traces

    def update(
        self, params: PyTree, traces: dict[str, jax.Array], state: jax.Array, u: jax.Array
    ) -> dict[str, jax.Array]:
        cell = self.cell
        elementwise, matrix = self._spec
        lam = cell.decay(params)
        bu = lambda p: cell.project_inputs(p, u)[0]
        new = {}
        for name in elementwise:
            tangent = _one_hot_tangent(params, name)
            _, d_lam = jax.jvp(cell.decay, (params,), (tangent,))
            _, d_bu = jax.jvp(bu, (params,), (tangent,))
            new[name] = (lam * traces[name] + d_lam * state + d_bu).astype(state.dtype)
        if matrix is not None:
            # κ_n = ∂b_n/∂(u B_re)_n: b's derivative along B_re = 1 for the unit input e_0.
            e0 = jnp.zeros_like(u).at[0].set(1)
            _, kappa = jax.jvp(
                lambda p: cell.project_inputs(p, e0)[0], (params,), (_one_hot_tangent(params, matrix[0]),)
            )
            e = lam * traces["input_matrix"] + u[:, None] * kappa
            new["input_matrix"] = e.astype(state.dtype)
        return new

    def contract(self, params: PyTree, traces: dict[str, jax.Array], delta: jax.Array) -> PyTree:
        elementwise, matrix = self._spec
        grads = {k: jnp.zeros_like(v) for k, v in params.items()}
        for name in elementwise:
            grads[name] = _to_units(jnp.real(delta * traces[name]), params[name].shape).astype(
                params[name].dtype
            )
        if matrix is not None:
            prod = delta * traces["input_matrix"]
            grads[matrix[0]] = jnp.real(prod).astype(params[matrix[0]].dtype)
            grads[matrix[1]] = -jnp.imag(prod).astype(params[matrix[1]].dtype)  # Re(δ · iE)
        return grads


@dataclasses.dataclass(frozen=True)
class DiagonalRTRL(TraceLearner):
    """Exact RTRL for models whose cells are all diagonal recurrences (S4D, S5, LRU, Mamba).

    Each cell's traces are exact for its own recurrence; between layers (and into the encoder) the
    error flows through the current token only (the "spatial" gradient). So a one-layer model without
    encoder gets exactly BPTT's gradient; deeper models get the approximation of Zucchet et al. (2023).
    Cost per token and example: O(state × recurrence parameters per unit), e.g. O(N·(3 + H_in)) for LRU;
    for Mamba, whose decay and input depend on the token through shared projections, the traces are
    larger (O(Di·N·(d_model + R + K)·Di); `seqjax.online.mamba_rtrl`).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> from seqjax.online import OnlineModel
    >>> model = OnlineModel((cells.LRU(hidden_size=4, state_size=3),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> learner = DiagonalRTRL(model)
    >>> st = learner.init(params, batch_shape=(5,))
    >>> st, pred, loss, grads = jax.jit(learner.step)(params, st, jnp.ones((5, 2)), jnp.zeros((5, 1)))
    >>> pred.shape, loss.shape, grads["layers"][0]["nu_log"].shape
    ((5, 1), (5,), (3,))
    """

    def tracer_for(self, index: int, cell: Cell) -> LayerTracer:
        if type(cell) is Mamba:
            return MambaTracer(cell)
        if type(cell) not in DIAGONAL_CELLS:
            supported = ", ".join(sorted([c.__name__ for c in DIAGONAL_CELLS] + ["Mamba"]))
            if getattr(cell, "nonlinear_recurrence", False):
                hint = (
                    f"{type(cell).__name__} is a nonlinear recurrence, whose state Jacobian is not "
                    f"diagonal: use seqjax.online.SnAp1 (approximate, O(parameters) memory) or "
                    f"seqjax.online.DenseRTRL (exact, O(H^4) per token, for small hidden sizes)"
                )
            else:
                hint = "use seqjax.online.DenseRTRL (exact, for small states) or OnlineTBPTT"
            raise TypeError(
                f"DiagonalRTRL: cells[{index}] is {type(cell).__name__}; exact diagonal RTRL supports "
                f"{supported} only. {hint}."
            )
        return DiagonalTracer(cell)
