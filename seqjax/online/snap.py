"""SnAp-1 (Menick et al. 2021, "Practical real time recurrent learning with a sparse approximation") for
LSTM, GRU and E-LSTM.

Exact RTRL carries M_t = ∂s_t/∂θ = J_t M_{t−1} + I_t (J_t = ∂f/∂s, I_t = ∂f/∂θ), an [S, P] matrix.
SnAp-1 keeps only the entries of M where a parameter writes a state unit directly within one token
(the sparsity pattern of I_t) and drops the rest after every token:
    M_t ≈ P ⊙ (J_t M_{t−1} + I_t),
so each parameter entry carries K numbers (its influence on the K state numbers of the unit it writes)
instead of S. The patterns used here (`owners`):

- LSTM: every column of w_ih, w_hh, b_ih, b_hh belongs to gate unit k = column mod H and writes
  (h_k, c_k): K = 2.
- GRU: column mod H writes h_k: K = 1.
- E-LSTM: the gate parameters (w_ih, w_hh, w_rh, b) write (h_k, c_k); the write gate's w_zx[:, s],
  w_zh[:, s], b_z[s] write memory slot s (its m numbers); w_u[:, j] writes column j of every slot. The
  read query w_q writes no unit directly (it acts through the softmax read, on every gate), so it gets
  its gradient through the current token only.

Bias: the dropped entries are the influence of θ_i on the other units through the recurrent weights
(θ_i → unit k → unit j via W_hh[k, j], then onwards). The estimate is therefore exact only when J_t is
block-diagonal over units, i.e. every gate block of the recurrent matrix w_hh is diagonal (and, for
E-LSTM, never: its read and write couple all units); otherwise it is biased, typically towards
underestimating long-range credit assignment across units. Menick et al. found it a good trade-off in
practice; tests/test_online_rtrl.py measures the difference to exact RTRL.

Cost per token and example: stored traces O(P·K). For LSTM and GRU the kept entries of I_t and J_t
come from a few forward-mode products of the cell's own `recur` (one per gate block of each bias, two
along the state) and the weights' chain rule, so an update costs O(P·K²) = O(H²) work, SnAp-1's own
order (`SnApTracer._gated_update`). E-LSTM, whose memory slots do not follow the gate-column pattern,
forms J_t and I_t densely with `jax.jacfwd`/`jax.jacrev` (O(S) derivative passes of one step: O(H³))
and gathers the kept entries; that generic form is also the reference the fast one is tested against.
Measured (this machine, 2 cores shared with other jobs, LSTM, one example, median of 7 × 50 steps):
about 1.5 ms against 6.9 ms per token at H = 32, and 1.2 ms against 175 ms at H = 64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from seqjax.cells.base import Cell
from seqjax.cells.elstm import ELSTM
from seqjax.cells.gru import GRU
from seqjax.cells.lstm import LSTM
from seqjax.online.learner import LayerTracer, TraceLearner

__all__ = ["SNAP_CELLS", "SnAp1", "SnApTracer", "snap_owners"]

PyTree = Any


def _pad(rows: list[list[int]], k: int) -> np.ndarray:
    return np.array([r + [-1] * (k - len(r)) for r in rows], np.int64)


def _gate_owners(
    shape: tuple[int, ...], hidden: int, units: Callable[[int], list[int]], k: int
) -> np.ndarray:
    """Owners of a leaf whose last axis is gate columns: column c writes unit c mod hidden."""
    cols = _pad([units(c % hidden) for c in range(shape[-1])], k)
    return np.broadcast_to(cols, (*shape, k))


def _lstm_owners(cell: LSTM, params: PyTree) -> dict[str, np.ndarray]:
    h = cell.hidden_size
    return {n: _gate_owners(v.shape, h, lambda u: [u, h + u], 2) for n, v in params.items()}


def _gru_owners(cell: GRU, params: PyTree) -> dict[str, np.ndarray]:
    h = cell.hidden_size
    return {n: _gate_owners(v.shape, h, lambda u: [u], 1) for n, v in params.items()}


def _elstm_owners(cell: ELSTM, params: PyTree) -> dict[str, np.ndarray]:
    d, slots, m = cell.hidden_size, cell.memory_slots, cell.memory_width
    k = max(2, slots, m)
    mem = lambda s, j: 2 * d + s * m + j  # state order: h [d], c [d], memory [slots, m]
    slot = _pad([[mem(s, j) for j in range(m)] for s in range(slots)], k)  # [slots, k]
    column = _pad([[mem(s, j) for s in range(slots)] for j in range(m)], k)  # [m, k]
    owners = {
        n: _gate_owners(params[n].shape, d, lambda u: [u, d + u], k) for n in ("w_ih", "w_hh", "w_rh", "b")
    }
    for n in ("w_zx", "w_zh", "b_z"):
        owners[n] = np.broadcast_to(slot, (*params[n].shape, k))
    owners["w_u"] = np.broadcast_to(column, (*params["w_u"].shape, k))
    owners["w_q"] = np.full((*params["w_q"].shape, k), -1, np.int64)
    return owners


#: cell type -> owners(cell, params): for every parameter leaf, int [*leaf.shape, K] of the flat state
#: indices (in `ravel_pytree(state)` order) each entry writes directly; -1 pads.
SNAP_CELLS: dict[type, Callable[[Any, PyTree], dict[str, np.ndarray]]] = {
    LSTM: _lstm_owners,
    GRU: _gru_owners,
    ELSTM: _elstm_owners,
}


def snap_owners(cell: Cell, params: PyTree) -> np.ndarray:
    """The SnAp-1 pattern of `cell` as int [P, K] over `ravel_pytree(params)`'s order (-1 pads).

    >>> import jax
    >>> from seqjax.cells import GRU
    >>> cell = GRU(hidden_size=2)
    >>> snap_owners(cell, cell.init(jax.random.PRNGKey(0), 1)).shape   # P = 6 + 6 + 12 + 6
    (30, 1)
    """
    owners = SNAP_CELLS[type(cell)](cell, params)
    leaves = jax.tree.leaves(owners, is_leaf=lambda x: isinstance(x, np.ndarray))
    k = leaves[0].shape[-1]
    return np.concatenate([np.asarray(o).reshape(-1, k) for o in leaves], axis=0)


@dataclasses.dataclass(frozen=True)
class SnApTracer(LayerTracer):
    """SnAp-1 traces of one LSTM, GRU or E-LSTM cell: [P, K] per example (see the module docstring)."""

    cell: Cell

    def _owners(self, params: PyTree) -> tuple[jax.Array, jax.Array]:
        o = snap_owners(self.cell, params)
        return jnp.asarray(np.maximum(o, 0)), jnp.asarray(o >= 0)

    def init(self, params: PyTree, state: PyTree, input_size: int) -> jax.Array:
        o = snap_owners(self.cell, params)
        return jnp.zeros(o.shape, ravel_pytree(state)[0].dtype)

    def update(self, params: PyTree, traces: jax.Array, state: PyTree, u: jax.Array) -> jax.Array:
        if type(self.cell) in (LSTM, GRU):
            return self._gated_update(params, traces, state, u)
        return self._dense_update(params, traces, state, u)

    def _gated_update(self, params: PyTree, traces: jax.Array, state: PyTree, u: jax.Array) -> jax.Array:
        """SnAp-1 for LSTM and GRU in O(P·K²) per token, without forming J_t or I_t.

        Both cells compute their gates from z_ih = u W_ih + b_ih and z_hh = h W_hh + b_hh (GRU: b_hh's
        candidate block inside the reset gate, where z_hh is too), and column c of each belongs to unit
        k = c mod H. So ∂s/∂W_ih[i, c] = u_i ∂s/∂b_ih[c] and ∂s/∂W_hh[i, c] = h_i ∂s/∂b_hh[c]: one jvp
        per gate block of each bias gives every kept entry of I_t (column c's own unit is the only one
        it reaches within a token). The kept blocks of J_t, ∂s_k/∂s_k(prev): the cell state c (LSTM)
        feeds only its own unit, so one jvp along all of c gives them; h feeds every unit through W_hh,
        so one jvp along all of h gives the direct path plus Σ_j W_hh[j, c] ∂s/∂z_hh[c], from which the
        other units' share (j ≠ k) is removed. Equal to `_dense_update` (tested)."""
        cell, hidden = self.cell, self.cell.hidden_size
        gates = params["b_ih"].shape[0] // hidden
        s_flat, unravel_s = ravel_pytree(state)
        dtype = s_flat.dtype
        cols = np.arange(gates * hidden)
        own = cols % hidden  # column c's unit
        owners = jnp.asarray(np.stack([own, hidden + own], -1) if type(cell) is LSTM else own[:, None])

        def new_state(p: PyTree, s: jax.Array) -> jax.Array:
            new, _ = cell.recur(p, unravel_s(s), cell.project_inputs(p, u))
            return ravel_pytree(new)[0].astype(dtype)

        def along(name: str, block: int) -> jax.Array:  # ∂s/∂(bias block), at each column's own unit
            tangent = {k: jnp.zeros_like(v) for k, v in params.items()}
            tangent[name] = tangent[name].at[block * hidden : (block + 1) * hidden].set(1)
            d = jax.jvp(lambda p: new_state(p, s_flat), (params,), (tangent,))[1]
            return d[owners[block * hidden : (block + 1) * hidden]]  # [H, K]

        d_ih = jnp.concatenate([along("b_ih", g) for g in range(gates)])  # [G·H, K]
        d_hh = jnp.concatenate([along("b_hh", g) for g in range(gates)])
        h_prev = (state.h if type(cell) is LSTM else state).astype(dtype)
        i_leaf = {
            "w_ih": u.astype(dtype)[:, None, None] * d_ih[None],
            "w_hh": h_prev[:, None, None] * d_hh[None],
            "b_ih": d_ih,
            "b_hh": d_hh,
        }
        # J's kept blocks [H, K, K]: column a of unit k's block is ∂s_k/∂(its a-th own state number).
        ones = lambda part: jax.jvp(
            lambda s: new_state(params, s), (s_flat,), (jnp.zeros_like(s_flat).at[part].set(1),)
        )[1]
        unit = owners[:hidden]  # [H, K]: unit k's state numbers
        w_hh = params["w_hh"].astype(dtype)
        own_w = w_hh[own, cols]  # W_hh[k, c] for c's own unit k
        other_w = jnp.sum(w_hh, axis=0) - own_w  # Σ_{j≠k} W_hh[j, c]
        through_others = jnp.sum((d_hh * other_w[:, None]).reshape(gates, hidden, -1), axis=0)  # [H, K]
        h_column = ones(unit[:, 0])[unit] - through_others  # ∂s_k/∂h_k(prev) [H, K]
        blocks = [h_column]
        if type(cell) is LSTM:
            blocks.append(ones(unit[:, 1])[unit])  # ∂s_k/∂c_k(prev): c feeds its own unit only
        j_unit = jnp.stack(blocks, axis=-1)  # [H, K, K]
        j_col = j_unit[own]  # [G·H, K, K]
        updated = {}
        leaf_traces = self._by_leaf(params, traces)
        for name, tr in leaf_traces.items():
            updated[name] = jnp.einsum("cab,...cb->...ca", j_col, tr) + i_leaf[name]
        return jnp.concatenate([updated[name].reshape(-1, traces.shape[-1]) for name in sorted(updated)])

    @staticmethod
    def _by_leaf(params: PyTree, traces: jax.Array) -> dict[str, jax.Array]:
        """The flat [P, K] traces as {leaf: [*leaf.shape, K]} (ravel_pytree's order: sorted keys)."""
        out, start = {}, 0
        for name in sorted(params):
            size = int(np.prod(params[name].shape))
            out[name] = traces[start : start + size].reshape(*params[name].shape, traces.shape[-1])
            start += size
        return out

    def _dense_update(self, params: PyTree, traces: jax.Array, state: PyTree, u: jax.Array) -> jax.Array:
        cell = self.cell
        p_flat, unravel_p = ravel_pytree(params)
        s_flat, unravel_s = ravel_pytree(state)

        def f(p: jax.Array, s: jax.Array) -> jax.Array:
            new, _ = cell.recur(unravel_p(p), unravel_s(s), cell.project_inputs(unravel_p(p), u))
            return ravel_pytree(new)[0].astype(s_flat.dtype)

        jac_s = jax.jacfwd(f, argnums=1)(p_flat, s_flat)  # [S, S]
        jac_p = jax.jacrev(f, argnums=0)(p_flat, s_flat)  # [S, P]
        idx, valid = self._owners(params)
        both = valid[:, :, None] & valid[:, None, :]
        j_kept = jnp.where(both, jac_s[idx[:, :, None], idx[:, None, :]], 0)  # [P, K, K]
        i_kept = jnp.where(valid, jac_p[idx, jnp.arange(idx.shape[0])[:, None]], 0)  # [P, K]
        return jnp.einsum("pab,pb->pa", j_kept, traces) + i_kept

    def contract(self, params: PyTree, traces: jax.Array, delta: PyTree) -> PyTree:
        p_flat, unravel_p = ravel_pytree(params)
        d_flat, _ = ravel_pytree(delta)
        idx, valid = self._owners(params)
        g = jnp.sum(jnp.where(valid, d_flat[idx], 0) * traces, axis=1)
        return unravel_p(g.astype(p_flat.dtype))


@dataclasses.dataclass(frozen=True)
class SnAp1(TraceLearner):
    """SnAp-1 online learning for models whose cells are LSTM, GRU or E-LSTM (module docstring: the
    pattern kept, its bias, its cost). Between layers the error flows through the current token only.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> from seqjax.online import OnlineModel
    >>> model = OnlineModel((cells.LSTM(hidden_size=3),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> learner = SnAp1(model)
    >>> st = learner.init(params, batch_shape=(4,))
    >>> st.traces[0].shape                      # [batch, cell parameters, K = (h_k, c_k)]
    (4, 96, 2)
    >>> st, pred, loss, grads = jax.jit(learner.step)(params, st, jnp.ones((4, 2)), jnp.zeros((4, 1)))
    >>> grads["layers"][0]["w_hh"].shape
    (3, 12)
    """

    def tracer_for(self, index: int, cell: Cell) -> LayerTracer:
        if type(cell) not in SNAP_CELLS:
            supported = ", ".join(sorted(c.__name__ for c in SNAP_CELLS))
            hint = (
                "its recurrence is diagonal and linear: use seqjax.online.DiagonalRTRL, which is exact at "
                "the same cost"
                if type(cell).__name__ in ("S4D", "S5", "LRU")
                else "use seqjax.online.DenseRTRL (exact, small states) or OnlineTBPTT"
            )
            raise TypeError(
                f"SnAp1: cells[{index}] is {type(cell).__name__}; SnAp-1 here supports {supported}; {hint}."
            )
        return SnApTracer(cell)
