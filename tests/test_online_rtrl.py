"""seqjax.online: exact RTRL equals BPTT (float64, resets and padding), SnAp-1 equals exact RTRL when the
recurrent weights are diagonal, online TBPTT with a full window equals BPTT, and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from seqjax import cells
from seqjax.online import (
    DenseRTRL,
    DiagonalRTRL,
    OnlineModel,
    OnlineTBPTT,
    SnAp1,
    accumulate,
    bptt_gradient,
)

B, T, D_IN, D_OUT = 2, 12, 3, 2
F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}


def relative_error(got, want) -> float:
    g, w = ravel_pytree(got)[0], ravel_pytree(want)[0]
    return float(jnp.linalg.norm(g - w) / jnp.linalg.norm(w))


def stream():
    """Inputs, targets, a reset inside a sequence and padding (one padded token mid-sequence, a padded
    tail), in float64."""
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D_IN), jnp.float64)
    ys = jax.random.normal(jax.random.PRNGKey(2), (B, T, D_OUT), jnp.float64)
    resets = jnp.zeros((B, T), bool).at[0, 5].set(True).at[1, 7].set(True)
    mask = jnp.ones((B, T), bool).at[0, 3].set(False).at[1, 9:].set(False)
    return xs, ys, resets, mask


def one_layer(cell) -> OnlineModel:
    # No encoder: every parameter is the cell's own or the readout's, so exact RTRL gives all of BPTT.
    return OnlineModel((cell,), input_size=D_IN, output_size=D_OUT, encoder=False, param_dtype=jnp.float64)


def learner_vs_bptt(learner, params) -> tuple[dict, dict]:
    xs, ys, resets, mask = stream()
    _, want = jax.jit(lambda p: bptt_gradient(learner.model, p, xs, ys, resets=resets, mask=mask))(params)
    got, losses, _ = jax.jit(lambda p: accumulate(learner, p, xs, ys, resets=resets, mask=mask))(params)
    assert not np.any(np.asarray(losses)[~np.asarray(mask)]), "padded tokens must not count"
    return got, want


EXACT = [
    ("lru-diagonal", lambda: DiagonalRTRL(one_layer(cells.LRU(D_IN, 4, **F64)))),
    ("s4d-diagonal", lambda: DiagonalRTRL(one_layer(cells.S4D(D_IN, 4, **F64)))),
    ("s5-diagonal", lambda: DiagonalRTRL(one_layer(cells.S5(D_IN, 4, blocks=2, **F64)))),
    (
        "s5-bilinear-diagonal",
        lambda: DiagonalRTRL(one_layer(cells.S5(D_IN, 4, discretization="bilinear", **F64))),
    ),
    ("lstm-dense", lambda: DenseRTRL(one_layer(cells.LSTM(4, engine="scan", **F64)))),
    ("gru-dense", lambda: DenseRTRL(one_layer(cells.GRU(4, **F64)))),
    # Mamba's selective recurrence: diagonal in the state, its traces over every parameter (shared
    # projections included); dense RTRL is a second exact reference.
    ("mamba-dense", lambda: DenseRTRL(one_layer(cells.Mamba(d_model=D_IN, state_size=2, expand=1, **F64)))),
    (
        "mamba-diagonal",
        lambda: DiagonalRTRL(one_layer(cells.Mamba(d_model=D_IN, state_size=3, expand=2, dt_rank=2, **F64))),
    ),
    ("lstm-tbptt-full-window", lambda: OnlineTBPTT(one_layer(cells.LSTM(4, engine="scan", **F64)), window=T)),
]


@pytest.mark.parametrize("make", [m for _, m in EXACT], ids=[n for n, _ in EXACT])
def test_exact_online_gradient_equals_bptt(make) -> None:
    with jax.enable_x64(True):
        learner = make()
        params = learner.model.init(jax.random.PRNGKey(0))
        got, want = learner_vs_bptt(learner, params)
        err = relative_error(got, want)
        per_leaf = {k: relative_error(got["layers"][0][k], want["layers"][0][k]) for k in want["layers"][0]}
        print(f"\n{type(learner).__name__} {type(learner.model.cells[0]).__name__}: relative error {err:.2e}")
        assert err <= 1e-6, per_leaf
        assert max(per_leaf.values()) <= 1e-6, per_leaf


def diagonal_recurrence(params: dict, hidden: int, gates: int) -> dict:
    """The cell's params with every gate block of w_hh made diagonal (w_ih untouched)."""
    layer = params["layers"][0]
    w = layer["w_hh"] * jnp.tile(jnp.eye(hidden, dtype=layer["w_hh"].dtype), (1, gates))
    return {**params, "layers": ({**layer, "w_hh": w},)}


SNAP = [
    ("lstm", lambda: cells.LSTM(4, engine="scan", **F64), 4),
    ("gru", lambda: cells.GRU(4, **F64), 3),
]


@pytest.mark.parametrize(("make", "gates"), [(m, g) for _, m, g in SNAP], ids=[n for n, _, _ in SNAP])
def test_snap1_equals_exact_rtrl_when_recurrent_weights_are_diagonal(make, gates) -> None:
    """With every gate block of w_hh diagonal the state Jacobian is block-diagonal over units (h_k, c_k),
    so the influence of a parameter never leaves the unit it writes: SnAp-1 drops nothing. The input
    weights w_ih stay dense (they do not enter the state Jacobian). Otherwise SnAp-1 is biased; the test
    reports by how much."""
    with jax.enable_x64(True):
        model = one_layer(make())
        params = model.init(jax.random.PRNGKey(0))
        xs, ys, resets, mask = stream()
        run = lambda learner, p: jax.jit(
            lambda q: accumulate(learner, q, xs, ys, resets=resets, mask=mask)[0]
        )(p)
        diag = diagonal_recurrence(params, 4, gates)
        _, bptt = jax.jit(lambda p: bptt_gradient(model, p, xs, ys, resets=resets, mask=mask))(diag)
        assert relative_error(run(SnAp1(model), diag), run(DenseRTRL(model), diag)) <= 1e-10
        assert relative_error(run(SnAp1(model), diag), bptt) <= 1e-6

        dense_grads, snap_grads = run(DenseRTRL(model), params), run(SnAp1(model), params)
        diff = relative_error(snap_grads["layers"], dense_grads["layers"])
        print(
            f"\nSnAp-1 vs exact RTRL, {type(model.cells[0]).__name__} with dense w_hh: relative difference "
            f"{diff:.3f} (cell parameters)"
        )
        assert np.isfinite(diff) and diff > 1e-3
        # the readout's gradient needs no trace: the same for both
        assert relative_error(snap_grads["readout"], dense_grads["readout"]) <= 1e-10


@pytest.mark.parametrize(("make", "gates"), [(m, g) for _, m, g in SNAP], ids=[n for n, _, _ in SNAP])
def test_snap1_fast_gated_update_equals_the_dense_jacobian_form(make, gates) -> None:
    """LSTM and GRU run SnAp-1 without forming J_t or I_t (O(P·K²) per token); from random states,
    traces, inputs and dense (random, non-zero bias) parameters, one update equals the generic form
    that gathers the kept entries of the full Jacobians."""
    from seqjax.online.snap import SnApTracer

    with jax.enable_x64(True):
        cell = make()
        params = cell.init(jax.random.PRNGKey(0), D_IN)
        params = jax.tree.map(
            lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(7), p.shape, p.dtype), params
        )
        tracer = SnApTracer(cell)
        state = jax.tree.map(
            lambda s: jax.random.normal(jax.random.PRNGKey(3), s.shape, s.dtype),
            cell.initial_state((), jnp.float64),
        )
        traces = jax.random.normal(jax.random.PRNGKey(4), tracer.init(params, state, D_IN).shape, jnp.float64)
        u = jax.random.normal(jax.random.PRNGKey(5), (D_IN,), jnp.float64)
        fast = jax.jit(tracer._gated_update)(params, traces, state, u)
        dense = jax.jit(tracer._dense_update)(params, traces, state, u)
        np.testing.assert_allclose(np.asarray(fast), np.asarray(dense), rtol=1e-12, atol=1e-13)
        assert float(jnp.max(jnp.abs(fast - traces))) > 0.1  # the update did something


def test_snap1_elstm_runs_and_reports_its_bias() -> None:
    """E-LSTM's read and write couple every unit, so SnAp-1 is never exact for it; it is finite and its
    difference to exact RTRL is reported."""
    with jax.enable_x64(True):
        model = one_layer(cells.ELSTM(4, memory_slots=2, memory_width=3, **F64))
        params = model.init(jax.random.PRNGKey(0))
        xs, ys, resets, mask = stream()
        run = lambda learner: jax.jit(lambda q: accumulate(learner, q, xs, ys, resets=resets, mask=mask)[0])(
            params
        )
        dense_grads, snap_grads = run(DenseRTRL(model)), run(SnAp1(model))
        _, bptt = jax.jit(lambda p: bptt_gradient(model, p, xs, ys, resets=resets, mask=mask))(params)
        assert relative_error(dense_grads, bptt) <= 1e-6
        diff = relative_error(snap_grads["layers"], dense_grads["layers"])
        print(f"\nSnAp-1 vs exact RTRL, ELSTM: relative difference {diff:.3f} (cell parameters)")
        assert np.isfinite(diff) and diff > 1e-3


def test_stacked_layers_get_the_spatial_gradient() -> None:
    """Two LRU layers behind an encoder: the readout and the top layer's own parameters are exact (their
    traces are exact for their recurrence and their inputs do not depend on them); the lower layer and the
    encoder get the gradient through the current token only, which differs from BPTT."""
    with jax.enable_x64(True):
        model = OnlineModel(
            (cells.LRU(4, 3, **F64), cells.LRU(4, 3, **F64)),
            input_size=D_IN,
            output_size=D_OUT,
            param_dtype=jnp.float64,
        )
        params = model.init(jax.random.PRNGKey(0))
        got, want = learner_vs_bptt(DiagonalRTRL(model), params)
        assert relative_error(got["readout"], want["readout"]) <= 1e-6
        assert relative_error(got["layers"][1], want["layers"][1]) <= 1e-6
        lower = relative_error(got["layers"][0], want["layers"][0])
        encoder = relative_error(got["encoder"], want["encoder"])
        print(f"\nspatial-only gradient vs BPTT: lower LRU {lower:.3f}, encoder {encoder:.3f}")
        assert lower > 1e-3 and encoder > 1e-3


def test_short_window_tbptt_is_truncated() -> None:
    with jax.enable_x64(True):
        learner = OnlineTBPTT(one_layer(cells.GRU(4, **F64)), window=2)
        params = learner.model.init(jax.random.PRNGKey(0))
        got, want = learner_vs_bptt(learner, params)
        err = relative_error(got, want)
        print(f"\nonline TBPTT window 2 vs BPTT: relative difference {err:.3f}")
        assert np.isfinite(err) and err > 1e-3


def test_learner_step_matches_model_step() -> None:
    """The predictions of every learner are the model's own `step` under the same flags."""
    model = OnlineModel((cells.GRU(4),), input_size=D_IN, output_size=D_OUT)
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(3), (B, D_IN))
    y = jnp.zeros((B, D_OUT))
    mask = jnp.array([True, False])
    _, want = model.step(params, model.initial_state((B,)), x, mask=mask)
    for learner in (SnAp1(model), OnlineTBPTT(model, window=3)):
        st = learner.init(params, (B,))
        st, pred, loss, grads = jax.jit(learner.step)(params, st, x, y, None, mask)
        np.testing.assert_allclose(pred, want, atol=1e-6)
        assert float(loss[1]) == 0.0 and int(st.position) == 1
        assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_errors_name_the_fix() -> None:
    lstm = OnlineModel((cells.LSTM(4),), input_size=D_IN, output_size=D_OUT)
    params = lstm.init(jax.random.PRNGKey(0))
    with pytest.raises(
        TypeError, match=r"LSTM; exact diagonal RTRL supports LRU, Mamba, S4D, S5 only.*SnAp1.*DenseRTRL"
    ):
        DiagonalRTRL(lstm)
    lru = OnlineModel((cells.LRU(4, 3),), input_size=D_IN, output_size=D_OUT)
    with pytest.raises(TypeError, match=r"supports ELSTM, GRU, LSTM;.*DiagonalRTRL"):
        SnAp1(lru)
    gla = OnlineModel(
        (cells.GatedLinearAttention(num_heads=2, head_dim=2),), input_size=D_IN, output_size=D_OUT
    )
    with pytest.raises(
        TypeError, match=r"GatedLinearAttention; exact diagonal RTRL supports LRU, Mamba, S4D, S5"
    ):
        DiagonalRTRL(gla)
    with pytest.raises(ValueError, match=r"cannot run on a stream: LSTM with reverse=True"):
        OnlineModel((cells.LSTM(4, reverse=True),), input_size=D_IN, output_size=D_OUT)
    with pytest.raises(ValueError, match=r"y has shape \(2, 3\); expected \(2, 2\)"):
        SnAp1(lstm).step(params, SnAp1(lstm).init(params, (B,)), jnp.ones((B, D_IN)), jnp.ones((B, 3)))
    with pytest.raises(ValueError, match="window must be a positive integer"):
        OnlineTBPTT(lstm, window=0)
