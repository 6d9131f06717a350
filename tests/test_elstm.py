"""E-LSTM computes the equations in its docstring (checked against an independent NumPy transcription)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import cells


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _reference_step(p, h, c, memory, x, m):
    """The docstring's equations, for one unbatched token, in float64 NumPy."""
    q = p["w_q"].T @ h
    scores = memory @ q / np.sqrt(m)
    alpha = np.exp(scores - scores.max())
    alpha /= alpha.sum()
    r = alpha @ memory
    pre = p["w_ih"].T @ x + p["w_hh"].T @ h + p["w_rh"].T @ r + p["b"]
    i, f, g, o = np.split(pre, 4)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    z = _sigmoid(p["w_zx"].T @ x + p["w_zh"].T @ h + p["b_z"])
    u = np.tanh(p["w_u"].T @ c)
    memory = (1 - z)[:, None] * memory + z[:, None] * u[None, :]
    return h, c, memory


def test_elstm_follows_documented_equations(key):
    cell = cells.ELSTM(hidden_size=8, memory_slots=3, memory_width=5)
    params = cell.init(key, 4)
    # Perturb every parameter so no term hides behind a zero initialisation.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    params = treedef.unflatten(
        [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    )
    xs = np.random.default_rng(0).standard_normal((2, 9, 4))

    ys, state = cell.apply(params, jnp.asarray(xs, jnp.float32))
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for b in range(2):
        h, c, memory = np.zeros(8), np.zeros(8), np.zeros((3, 5))
        for t in range(9):
            h, c, memory = _reference_step(p64, h, c, memory, xs[b, t], 5)
            np.testing.assert_allclose(ys[b, t], h, atol=1e-5)
        np.testing.assert_allclose(state.memory[b], memory, atol=1e-5)
        np.testing.assert_allclose(state.c[b], c, atol=1e-5)


def test_elstm_initialisation_makes_memory_slow(key):
    cell = cells.ELSTM(hidden_size=8, memory_slots=3, memory_width=5)
    params = cell.init(key, 4)
    np.testing.assert_allclose(params["b_z"], -3.0)
    np.testing.assert_allclose(params["b"][8:16], 1.0)  # forget-gate slice
    # orthogonal recurrent blocks
    for k in range(4):
        block = np.asarray(params["w_hh"][:, 8 * k : 8 * (k + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    # At initialisation with small inputs each slot keeps ~95% per token: the memory is a slow average.
    xs = 0.01 * jax.random.normal(key, (1, 50, 4))
    _, s1 = cell.apply(params, xs[:, :1])
    _, s2 = cell.apply(params, xs[:, :2])
    # memory after one token is z*u with z = σ(≈ -3)
    u1 = np.tanh(np.asarray(s1.c) @ np.asarray(params["w_u"]))
    z1 = np.asarray(s1.memory)[0] / u1[0][None, :]
    assert np.all((z1 > 0.03) & (z1 < 0.07))
    assert np.all(np.isfinite(np.asarray(s2.memory)))


def test_lstm_and_gru_initialisation(key):
    lstm = cells.LSTM(hidden_size=6)
    p = lstm.init(key, 3)
    np.testing.assert_allclose(p["b_ih"][6:12], 1.0)
    np.testing.assert_allclose(np.delete(np.asarray(p["b_ih"]), np.s_[6:12]), 0.0)
    np.testing.assert_allclose(p["b_hh"], 0.0)
    gru = cells.GRU(hidden_size=6)
    q = gru.init(key, 3)
    for w, gates in ((p["w_hh"], 4), (q["w_hh"], 3)):
        for k in range(gates):
            block = np.asarray(w[:, 6 * k : 6 * (k + 1)])
            np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-5)
