"""RG-LRU / Griffin's recurrent block (`cells.RGLRU`): against a NumPy float64 port of recurrentgemma's
`RecurrentBlock` (training and decode paths, document starts from `segment_pos`), against a float64
token loop of the paper's equations (values and gradients, every diagonal engine backend, resets and
padding), state carried across calls, the bounded-derivative square root as a → 1, long sequences with
saturated gates, bfloat16 compute with float32 states, the initialisation and the backward pass's
residuals. The cell contract (tests/test_cell_contract.py -k rglru) runs over it too.

Everything runs under `jit`: on a small CPU, op-by-op dispatch costs more than the compiles it saves.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.cells.rglru import rglru_a_param_init, sqrt_bound_derivative
from tests.cell_cases import max_abs_diff, random_flags, relative_diff

B, T, D, W, H = 3, 21, 5, 6, 2
CELL = cells.RGLRU(d_model=D, lru_width=W, num_heads=H, method="chunked", chunk_size=4)


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _init(cell: cells.RGLRU, seed: int) -> dict[str, jax.Array]:
    """The cell's parameters with non-zero biases, so every term of the block is exercised."""
    params = jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(seed), cell.d_model)
    for i, name in enumerate(("b_x", "b_y", "conv_b", "gate_x_b", "gate_a_b", "b_out")):
        params[name] = jnp.asarray(_normal(seed + i, params[name].shape, 0.3), jnp.float32)
    return params


# --------------------------------------------------------------------------------------------------
# recurrentgemma, ported to NumPy float64
# --------------------------------------------------------------------------------------------------
def _gelu(x: np.ndarray) -> np.ndarray:  # jax.nn.gelu (approximate=True), as recurrentgemma calls it
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _block_diagonal_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """recurrentgemma/jax/layers.py `BlockDiagonalLinear.__call__`."""
    xh = x.reshape(*x.shape[:-1], w.shape[0], -1)
    return (np.einsum("...hi,hij->...hj", xh, w) + b).reshape(*x.shape[:-1], -1)


def ref_conv1d(x, segment_pos, w, b, cache=None):
    """recurrentgemma/jax/layers.py `Conv1D.__call__`: training mode (cache None, windows masked at
    document starts) or decoding mode (one token, the cache's previous inputs, no mask)."""
    bsz, output_len, width = x.shape
    temporal_width = w.shape[0]
    if cache is not None:
        assert output_len == 1
        x = np.concatenate([cache, x], axis=1)
        prompt_len = temporal_width - 1
    else:
        prompt_len = 0
    out = 0.0
    for shift in range(min(temporal_width, prompt_len + output_len)):
        start, end = max(prompt_len - shift, 0), prompt_len + output_len - shift
        window = x[:, start:end]
        if cache is None:
            not_boundary = (segment_pos != 0).astype(np.int32)
            mask = np.ones((bsz, end - start))
            for look in range(1, shift + 1):
                mask = mask * not_boundary[:, start + look : end + look]
            window = window * mask[:, :, None]
        window = np.concatenate([np.zeros((bsz, output_len - window.shape[1], width)), window], axis=1)
        out = out + window * w[temporal_width - shift - 1][None, None]
    out = out + b[None, None]
    new_cache = x[:, 1 - temporal_width :]
    pad = np.zeros((bsz, temporal_width - 1 - new_cache.shape[1], width))
    return out, np.concatenate([pad, new_cache], axis=1)


def ref_rglru(x, segment_pos, p, cache=None):
    """recurrentgemma/jax/layers.py `RGLRU.__call__` (only_real=True) with `scan.linear_scan`'s loop."""
    gate_x = _sigmoid(_block_diagonal_linear(x, p["gate_x_w"], p["gate_x_b"]))
    gate_a = _sigmoid(_block_diagonal_linear(x, p["gate_a_w"], p["gate_a_b"]))
    log_a = -8.0 * gate_a * np.logaddexp(0.0, p["a_param"])
    a, a_squared = np.exp(log_a), np.exp(2 * log_a)
    gated_x = x * gate_x
    reset = (segment_pos == 0).astype(np.float64)[..., None]
    multiplier = reset + (1 - reset) * np.sqrt(1 - a_squared)
    normalized_x = gated_x * multiplier
    a = a * (1 - reset)
    h = np.zeros(x[:, 0].shape) if cache is None else cache
    y = np.zeros(x.shape)
    for t in range(x.shape[1]):
        h = a[:, t] * h + normalized_x[:, t]
        y[:, t] = h
    return y, h


def ref_recurrent_block(x, segment_pos, p, cache=None):
    """recurrentgemma/jax/modules.py `RecurrentBlock.__call__`: (y, (rg_lru_state, conv1d_state))."""
    y = _gelu(x @ p["w_y"] + p["b_y"])
    x = x @ p["w_x"] + p["b_x"]
    x, conv_state = ref_conv1d(x, segment_pos, p["conv_w"], p["conv_b"], None if cache is None else cache[1])
    x, h = ref_rglru(x, segment_pos, p, None if cache is None else cache[0])
    return (x * y) @ p["w_out"] + p["b_out"], (h, conv_state)


def _segment_pos(resets: np.ndarray) -> np.ndarray:
    """Position of each token in its document; 0 at t = 0 and at every reset."""
    pos = np.zeros(resets.shape, np.int64)
    for t in range(1, resets.shape[1]):
        pos[:, t] = np.where(resets[:, t], 0, pos[:, t - 1] + 1)
    return pos


def _as64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize(
    "cell",
    [CELL, cells.RGLRU(d_model=D, lru_width=4, conv_size=2, method="sequential")],
    ids=["2-heads-conv4", "1-head-conv2"],
)
def test_matches_recurrentgemma_recurrent_block(cell):
    """apply (resets = document starts) equals the reference's training call, float32 to ~1e-5 and
    float64 to 1e-10; then `step` from apply's state equals the reference's decoding with its cache."""
    params = _init(cell, 0)
    xs = _normal(1, (B, T, D))
    resets = np.zeros((B, T), bool)
    resets[1, [5, 6, 13]] = True  # two documents back to back, one of a single token
    resets[2, [0, 9]] = True  # an explicit reset at t = 0 is the start it already is
    decode = 5
    ref, (h_ref, conv_ref) = ref_recurrent_block(
        xs[:, : T - decode], _segment_pos(resets)[:, : T - decode], _as64(params)
    )
    dec_ref = []
    cache = (h_ref, conv_ref)
    for t in range(T - decode, T):
        pos = _segment_pos(resets)[:, t : t + 1]
        out, cache = ref_recurrent_block(xs[:, t : t + 1], pos, _as64(params), cache)
        dec_ref.append(out)
    ref = np.concatenate([ref, *dec_ref], axis=1)
    assert np.max(np.abs(ref)) > 0.1

    def run(cell, params, xs):
        state = cell.initial_state((B,), xs.dtype)  # float64 in the float64 run
        ys, state = cell.apply(params, xs[:, : T - decode], state, resets=resets[:, : T - decode])
        outs = []
        for t in range(T - decode, T):
            state, y = cell.step(params, state, xs[:, t])
            outs.append(y[:, None])
        return jnp.concatenate([ys, *outs], axis=1), state

    ys32, state32 = jax.jit(lambda p, x: run(cell, p, x))(params, jnp.asarray(xs, jnp.float32))
    np.testing.assert_allclose(ys32, ref, atol=1e-5 * np.max(np.abs(ref)))
    np.testing.assert_allclose(state32.h, cache[0], atol=1e-5)
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        ys64, state64 = jax.jit(lambda p, x: run(cell64, p, x))(_as64(params), jnp.asarray(xs))
        assert ys64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(ys64), ref, atol=1e-10)
        np.testing.assert_allclose(np.asarray(state64.h), cache[0], atol=1e-10)
        np.testing.assert_allclose(np.asarray(state64.conv), cache[1], atol=1e-10)


# --------------------------------------------------------------------------------------------------
# The paper's equations, token by token, in float64 (differentiable)
# --------------------------------------------------------------------------------------------------
def paper_loop(cell, params, xs, state, resets, mask):
    """Griffin's recurrent block from the paper's equations (De et al. 2024, §2.4, eqs. 1-4), one token
    at a time (`lax.scan`): r = σ(W_a x + b_a), i = σ(W_x x + b_x), a_t = a^{c r_t} with a = σ(Λ_paper)
    (Λ_paper = −a_param: the code's exp(−softplus(Λ)) is σ(−Λ)), h_t = a_t h_{t−1} + √(1 − a_t²)(i_t
    x_t). The paper gives no rule for document starts: the code's (h_{t−1} ignored, √(1 − a²) → 1) is
    used, and seqjax's flags (a reset clears the conv window and h; a padded token changes nothing and
    outputs 0)."""
    a_base = jax.nn.sigmoid(-params["a_param"])

    def blocks(u, w, b):
        return (jnp.einsum("bhi,hij->bhj", u.reshape(u.shape[0], cell.heads, -1), w) + b).reshape(u.shape)

    def token(carry, inputs):
        window, h, started = carry
        x, r, m = inputs
        win_t = jnp.where(r[:, None, None], 0.0, window)
        h_prev = jnp.where(r[:, None], 0.0, h)
        fresh = (r | (started == 0))[:, None]
        y = jax.nn.gelu(x @ params["w_y"] + params["b_y"])
        taps = jnp.concatenate([win_t, (x @ params["w_x"] + params["b_x"])[:, None]], axis=1)
        u = sum(taps[:, j] * params["conv_w"][j] for j in range(cell.conv_size)) + params["conv_b"]
        r_gate = jax.nn.sigmoid(blocks(u, params["gate_a_w"], params["gate_a_b"]))
        i_gate = jax.nn.sigmoid(blocks(u, params["gate_x_w"], params["gate_x_b"]))
        a_t = a_base ** (cell.c * r_gate)
        scale = jnp.where(fresh, 1.0, jnp.sqrt(1 - a_t**2))
        h_new = jnp.where(fresh, 0.0, a_t) * h_prev + scale * i_gate * u
        out = (h_new * y) @ params["w_out"] + params["b_out"]
        carry = (
            jnp.where(m[:, None, None], taps[:, 1:], window),
            jnp.where(m[:, None], h_new, h),
            jnp.where(m, 1, started),
        )
        return carry, jnp.where(m[:, None], out, 0.0)

    time_major = lambda a: jnp.moveaxis(a, 1, 0)
    (window, h, started), ys = jax.lax.scan(
        token, tuple(state), (time_major(xs), time_major(resets), time_major(mask))
    )
    return time_major(ys), cells.RGLRUState(conv=window, h=h, started=started)


def step_scan(cell, params, xs, state, resets, mask):
    """The loop of `cell.step` (a `lax.scan`, so it compiles once whatever the length)."""

    def token(state, inputs):
        x, r, m = inputs
        return cell.step(params, state, x, reset=r, mask=m)

    state, ys = jax.lax.scan(token, state, (jnp.moveaxis(xs, 1, 0), resets.T, mask.T))
    return jnp.moveaxis(ys, 0, 1), state


def test_every_backend_and_the_step_loop_match_the_paper_equations_float64():
    """apply with each engine backend, and the loop of `step`, against the paper's equations in float64:
    outputs, final state and gradients wrt the parameters, the inputs, h and the conv window, with
    resets, padding and a state that has seen no token in one row."""
    with jax.enable_x64(True):
        cell = dataclasses.replace(CELL, dtype=jnp.float64, param_dtype=jnp.float64)
        params = jax.tree.map(jnp.asarray, _as64(_init(CELL, 10)))
        xs = jnp.asarray(_normal(11, (B, T, D)))
        state = cell.initial_state((B,), jnp.float64)
        state = cells.RGLRUState(
            conv=jnp.asarray(_normal(12, state.conv.shape, 0.5)),
            h=jnp.asarray(_normal(13, state.h.shape, 0.5)),
            started=jnp.array([1, 0, 3], jnp.int32),
        )
        resets, mask = random_flags(14, (B, T), 0.2), random_flags(15, (B, T), 0.75)

        def grads(forward):
            def loss(p, x, conv, h):
                ys, final = forward(p, x, state._replace(conv=conv, h=h))
                extra = jnp.sum(jnp.cos(final.conv)) + jnp.sum(jnp.cos(final.h))
                return jnp.sum(jnp.sin(3 * ys)) + extra, (ys, final)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
                params, xs, state.conv, state.h
            )

        g_ref, out_ref = grads(lambda p, x, s: paper_loop(cell, p, x, s, resets, mask))
        assert np.max(np.abs(out_ref[0])) > 0.1
        forms = {
            "step loop": lambda p, x, s: step_scan(cell, p, x, s, resets, mask),
            **{
                method: lambda p, x, s, m=method: dataclasses.replace(cell, method=m).apply(
                    p, x, s, resets=resets, mask=mask
                )
                for method in ("sequential", "associative", "chunked")
            },
        }
        for name, forward in forms.items():
            g, out = grads(forward)
            assert max_abs_diff(out, out_ref) < 1e-10, name
            assert relative_diff(g, g_ref) < 1e-9, name


def test_state_carried_across_two_calls_equals_one_call():
    """apply on [0, 9) then on [9, T) from the returned state equals one apply, with padding in both
    parts (also at the split), resets in the second, and one row whose first part is all padding (its
    first valid token in the second part still starts the segment)."""
    params = _init(CELL, 20)
    xs = jnp.asarray(_normal(21, (B, T, D)), jnp.float32)
    resets = random_flags(22, (B, T), 0.1).at[:, :9].set(False)
    mask = random_flags(23, (B, T), 0.75).at[:, 8].set(False).at[0, :9].set(False)

    @jax.jit
    def run(params, xs):
        whole = CELL.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = CELL.apply(params, xs[:, :9], mask=mask[:, :9])
        ys_b, final = CELL.apply(params, xs[:, 9:], state, resets=resets[:, 9:], mask=mask[:, 9:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final), state.started

    whole, split, started = run(params, xs)
    assert started.tolist() == [0, 1, 1]
    assert max_abs_diff(whole, split) < 1e-5


# --------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------
def test_sqrt_bound_derivative_bounds_the_gradient_as_a_tends_to_one():
    """d/da √(1 − a²) = −a/√(1 − a²) is unbounded at a = 1; with the bound it is at most 2·a·1000, equal
    to the true derivative while 1 − a² ≥ 1/(4·1000²), and finite in float32 where 1 − 1e-9 rounds to 1."""
    f = lambda a: sqrt_bound_derivative(1 - a * a, 1000.0)
    with jax.enable_x64(True):
        grad = jax.jit(jax.vmap(jax.grad(f)))
        a = jnp.array([0.5, 1 - 1e-3, 1 - 1e-6, 1 - 1e-9, 1 - 1e-12, 1.0])
        g = np.asarray(grad(a))
        assert np.all(np.isfinite(g)) and np.all(np.abs(g) <= 2000 * np.asarray(a) * (1 + 1e-12))
        exact = -np.asarray(a[:2]) / np.sqrt(1 - np.asarray(a[:2]) ** 2)
        np.testing.assert_allclose(g[:2], exact, rtol=1e-12)
        np.testing.assert_allclose(g[3:], -2000 * np.asarray(a[3:]), rtol=1e-12)  # the bound holds
        np.testing.assert_allclose(np.asarray(jax.vmap(f)(a)), np.sqrt(1 - np.asarray(a) ** 2), rtol=1e-12)
        plain = jax.grad(lambda a: jnp.sqrt(1 - a * a))(1.0)  # what the bound prevents
        assert not np.isfinite(plain)
    g32 = jax.jit(jax.grad(f))(jnp.float32(1 - 1e-9))
    assert g32.dtype == jnp.float32 and float(g32) == -2000.0


def _saturated(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Recurrence and input gates at exactly 0 and 1 in float32 (biases ±100) and near them (±15), and Λ
    from softplus(Λ) = 0 in float32 (a = 1) to a = 0.09: where r_t = 0 or softplus(Λ) = 0, a_t = 1 and
    1 − a_t² = 0, where d√x/dx is infinite."""
    gate_a_b = jnp.array([100.0, -100.0, 15.0, -15.0, 100.0, -100.0]).reshape(H, W // H)
    gate_x_b = jnp.array([-100.0, 100.0, -15.0, 15.0, 0.0, 0.0]).reshape(H, W // H)
    a_param = jnp.array([-100.0, -30.0, -5.0, 0.0, 1.0, 2.25])
    return {**params, "gate_a_b": gate_a_b, "gate_x_b": gate_x_b, "a_param": a_param}


def test_long_sequences_with_saturated_gates_and_bfloat16_stay_finite():
    """2048 tokens with recurrence and input gates at 0 and 1 and a = 1: finite outputs and gradients
    (√(1 − a²) at 0 without the bound has an infinite derivative); in bfloat16 compute with float32
    states too, close to float32."""
    length = 2048
    cell = dataclasses.replace(CELL, chunk_size=64)
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16)
    params = _saturated(_init(CELL, 30))
    xs = jnp.asarray(_normal(31, (2, length, D)), jnp.float32)
    resets = jnp.zeros((2, length), bool).at[1, 1000].set(True)

    @jax.jit
    def run(params, xs):
        def loss(c, p, x):
            ys, state = c.apply(p, x, resets=resets)
            return jnp.sum(ys.astype(jnp.float32) ** 2) + jnp.sum(state.h**2), (ys, state)

        (g32, out32), (g16, out16) = (
            jax.grad(lambda p, c=c, x=x: loss(c, p, x), has_aux=True)(params)
            for c, x in ((cell, xs), (cell16, xs.astype(jnp.bfloat16)))
        )
        return g32, out32, g16, out16

    g32, (ys32, s32), g16, (ys16, s16) = run(params, xs)
    assert ys16.dtype == jnp.bfloat16 and s16.h.dtype == jnp.float32 and s16.conv.dtype == jnp.float32
    for tree in (ys32, s32.h, g32, ys16, s16.h, g16):
        assert all(bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32)))) for leaf in jax.tree.leaves(tree))
    scale = float(jnp.max(jnp.abs(ys32)))
    assert scale > 0.1
    assert float(jnp.mean(jnp.abs(ys16.astype(jnp.float32) - ys32))) < 0.02 * scale
    np.testing.assert_allclose(s16.h, s32.h, atol=0.05 * float(jnp.max(jnp.abs(s32.h))))


# --------------------------------------------------------------------------------------------------
# Initialisation, memory, hyperparameters
# --------------------------------------------------------------------------------------------------
def test_initialisation_follows_recurrentgemma():
    """Λ is recurrentgemma's `rnn_real_param_init` for the same uniform draw (a² uniform on [0.9²,
    0.999²]); weights N(0, scale / fan_in) with scale 1 (linear x/y, gates: fan-in W), 0.01 (conv:
    fan-in conv_size) and out_init_scale (linear_out); biases 0; only Λ is in the "ssm" group."""
    cell = cells.RGLRU(d_model=64, lru_width=4096, num_heads=16, out_init_scale=0.5)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(40), 64)
    key = jax.random.PRNGKey(41)
    unif = np.asarray(jax.random.uniform(key, (4096,)), np.float64)
    a_real = 0.5 * np.log(unif * (0.999**2 - 0.9**2) + 0.9**2 + 1e-8)
    np.testing.assert_allclose(rglru_a_param_init(key, (4096,)), np.log(np.exp(-a_real) - 1), rtol=2e-5)
    a = np.exp(-np.logaddexp(0.0, np.asarray(params["a_param"], np.float64)))
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
    assert abs(np.mean(a**2) - (0.81 + 0.999**2) / 2) < 0.005
    stds = {
        "w_x": 1 / 8,
        "w_y": 1 / 8,
        "conv_w": 0.05,
        "gate_x_w": 1 / 64,
        "gate_a_w": 1 / 64,
        "w_out": 0.5**0.5 / 64,
    }
    for name, std in stds.items():
        assert abs(float(jnp.std(params[name])) / std - 1) < 0.1, name
    for name in ("b_x", "b_y", "conv_b", "gate_x_b", "gate_a_b", "b_out"):
        np.testing.assert_array_equal(params[name], 0.0)
    assert params["gate_x_w"].shape == (16, 256, 256)
    assert {name for name, g in cell.param_groups().items() if g == "ssm"} == {"a_param"}
    # default gate blocks of 256 features, one block for widths up to 256 or not divisible by 256
    assert [cells.RGLRU(d_model=d).heads for d in (64, 256, 300, 2560)] == [1, 1, 1, 10]


@pytest.mark.parametrize("method", ["associative", "chunked"])
def test_backward_keeps_the_residuals_of_the_sequential_form(method):
    """The engine's custom VJP keeps a, h and h0 whatever the backend: the parallel forms keep exactly
    what the sequential scan keeps (no O(L log L) scan intermediates), O(inputs) in all."""
    length = 256
    xs = jnp.ones((2, length, D))

    def residual_sizes(cell):
        params = jax.eval_shape(lambda k: cell.init(k, D), jax.random.PRNGKey(0))
        vjp = lambda p, x: jax.vjp(lambda p, x: cell.apply(p, x)[0], p, x)[1]
        return sorted(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, params, xs)))

    parallel = residual_sizes(dataclasses.replace(CELL, method=method, chunk_size=16))
    assert parallel == residual_sizes(dataclasses.replace(CELL, method="sequential"))
    # The largest residual is one [batch, time, W] array; ~38 such arrays' worth in all (the
    # projections, gates and the engine's a, h), whatever the backend.
    assert max(parallel) <= 2 * length * max(W, D) and sum(parallel) < 40 * 2 * length * W


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cells.RGLRU(d_model=0), "d_model"),
        (lambda: cells.RGLRU(d_model=4, lru_width=6, num_heads=4), "num_heads=4 must divide lru_width=6"),
        (lambda: cells.RGLRU(d_model=4, min_rad=0.999, max_rad=0.9), "min_rad < max_rad"),
        (lambda: cells.RGLRU(d_model=4, c=0.0), "c must be > 0"),
        (lambda: cells.RGLRU(d_model=4, method="fast"), "method must be one of"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_registry_sizes_and_input_width():
    assert cells.get("rglru", d_model=8, num_heads=2) == cells.RGLRU(d_model=8, num_heads=2)
    cell = cells.RGLRU(d_model=8, lru_width=12, num_heads=3)
    assert (cell.width, cell.heads, cell.output_size) == (12, 3, 8)
    with pytest.raises(ValueError, match="input_size=5 but d_model=8"):
        cell.init(jax.random.PRNGKey(0), 5)
