"""Longformer against a dense masked reference written plainly here: the [T, T] masks materialised, the
local and the global projection sets applied in full, softmax over the visible keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.cells.attention import rotary_embedding

T, D = 11, 5


def dense_longformer(cell: cells.Longformer, params, xs, mask=None, resets=None):
    """xs [B, T, D] -> ys [B, T, out], by the definition, one batch row at a time."""
    out = []
    for b in range(xs.shape[0]):
        valid = np.ones(xs.shape[1], bool) if mask is None else np.asarray(mask[b])
        starts = np.zeros(xs.shape[1], bool) if resets is None else np.asarray(resets[b])
        seg = np.cumsum(starts)
        # position = valid tokens before this one in its segment
        pos = np.array([np.sum(valid[:t] & (seg[:t] == seg[t])) for t in range(xs.shape[1])])
        is_global = valid & (pos < cell.num_global)
        same = seg[:, None] == seg[None, :]
        near = np.abs(pos[:, None] - pos[None, :]) <= cell.window // 2
        local_mask = valid[None, :] & same & (near | is_global[None, :])
        global_mask = valid[None, :] & same

        y_global = _dense_attention(cell, params, "_global", xs[b], pos, global_mask)
        y = jnp.where(
            is_global[:, None, None], y_global, _dense_attention(cell, params, "", xs[b], pos, local_mask)
        )
        y = jnp.einsum("thd,hdo->to", y, params["w_o"])
        out.append(jnp.where(valid[:, None], y, 0.0))
    return jnp.stack(out)


def _heads(cell, x, w, positions, rotate=True):
    h = jnp.einsum("ti,ihd->thd", x, w)
    if rotate and cell.positional == "rotary":  # queries and keys only
        h = rotary_embedding(h, jnp.asarray(positions), cell.rotary_base)
    return jnp.repeat(h, cell.num_heads // h.shape[1], axis=1)  # grouped-query: share kv heads


def _dense_attention(cell, params, suffix, x, pos, visible):
    """Softmax attention of one row x [T, D] with the projection set `suffix` over the [T, T] mask."""
    q = _heads(cell, x, params["w_q" + suffix], pos)
    k = _heads(cell, x, params["w_k" + suffix], pos)
    v = _heads(cell, x, params["w_v" + suffix], pos, rotate=False)
    scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(cell.head_dim)
    scores = jnp.where(visible[None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(visible.any(-1)[None, :, None], probs, 0.0)  # a row with no key: zero
    return jnp.einsum("hqk,khd->qhd", probs, v)


CASES = {
    "plain": cells.Longformer(num_heads=2, head_dim=4, window=4, num_global=2, positional="none"),
    "rotary-gqa": cells.Longformer(num_heads=4, head_dim=2, num_kv_heads=2, window=2, num_global=1),
    "no-global": cells.Longformer(num_heads=2, head_dim=4, window=6, num_global=0, positional="none"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("flags", ["plain", "padding", "padding+resets"])
def test_values_and_gradients_match_dense_reference(name, flags):
    cell = CASES[name]
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, T, D))
    rng = np.random.default_rng(2)
    mask = None
    if "padding" in flags:  # left padding in one row, scattered padding in the other
        mask = np.ones((2, T), bool)
        mask[0, :3] = False
        mask[1] = rng.random(T) < 0.8
        mask = jnp.asarray(mask)
    resets = None
    if "resets" in flags:
        resets = jnp.zeros((2, T), bool).at[:, 6].set(True).at[1, 9].set(True)

    def loss(fn, p):
        ys = fn(p)
        return jnp.sum(jnp.sin(ys) * ys), ys

    # one compiled program per form (eager autodiff compiles op by op); the reference reads the flags
    # with numpy, so it gets them as numpy arrays (constants of its program)
    flags_np = [None if f is None else np.asarray(f) for f in (mask, resets)]
    (_, ys), grads = jax.jit(
        jax.value_and_grad(
            lambda p: loss(lambda q: cell.apply(q, xs, mask=mask, resets=resets)[0], p), has_aux=True
        )
    )(params)
    (_, ref), ref_grads = jax.jit(
        jax.value_and_grad(
            lambda p: loss(lambda q: dense_longformer(cell, q, xs, *flags_np), p), has_aux=True
        )
    )(params)
    np.testing.assert_allclose(ys, ref, atol=1e-5, rtol=1e-5)
    for key in params:
        np.testing.assert_allclose(grads[key], ref_grads[key], atol=1e-5, rtol=1e-4, err_msg=key)


def test_global_projections_are_separate_and_used():
    cell = CASES["plain"]
    params = cell.init(jax.random.PRNGKey(0), D)
    assert set(params) == {"w_q", "w_k", "w_v", "w_o", "w_q_global", "w_k_global", "w_v_global"}
    assert not np.allclose(params["w_q"], params["w_q_global"])
    xs = jax.random.normal(jax.random.PRNGKey(1), (1, T, D))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(cell.apply(p, xs)[0][:, 0] ** 2)))(params)
    # the first (global) token's output reads the global projections only
    assert float(jnp.abs(grads["w_q_global"]).max()) > 0
    assert float(jnp.abs(grads["w_q"]).max()) == 0


def test_window_is_symmetric():
    cell = cells.Longformer(num_heads=1, head_dim=2, window=2, num_global=0, positional="none")
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, D))
    jac = jax.jit(jax.jacobian(lambda x: cell.apply(params, x)[0][5]))(xs)  # [out, T, D]
    reads = np.abs(np.asarray(jac)).sum(axis=(0, 2)) > 0
    np.testing.assert_array_equal(np.flatnonzero(reads), [4, 5, 6])  # window/2 = 1 on each side


def test_no_step_and_refused_by_streaming_models():
    cell = CASES["plain"]
    assert "both sides" in cell.step_unsupported(streaming=False)
    params = cell.init(jax.random.PRNGKey(0), D)
    with pytest.raises(TypeError, match="use `apply`"):
        cell.step(params, cell.initial_state(()), jnp.ones(D))


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"window": 3}, "window must be an even int"),
        ({"window": 0}, "window must be an even int"),
        ({"num_global": -1}, "num_global must be a non-negative int"),
        ({"causal": True}, "causal must be False"),
    ],
)
def test_bad_hyperparameters_name_the_fix(hparams, match):
    with pytest.raises(ValueError, match=match):
        cells.Longformer(num_heads=2, head_dim=4, **hparams)
