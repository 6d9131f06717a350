"""The delta rule: the engine (chunked WY form == token scan == a plain NumPy port of fla's
`naive_recurrent_gated_delta_rule`, values and gradients) and the DeltaNet / GatedDeltaNet cells (against
a plain NumPy float64 port of fla's layers, state carried across calls, chunked == recurrent gradients,
initialisation). The cell contract (tests/test_cell_contract.py) runs over both cells too.

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
from seqjax.scan.delta_rule import delta_rule, delta_rule_chunked, delta_rule_recurrent, unit_lower_inverse
from tests.cell_cases import max_abs_diff, random_flags

B, T, H, DK, DV = 2, 21, 2, 4, 3  # T is not a multiple of the chunk sizes below
INPUT_SIZE = 5


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _engine_inputs(seed: int, length: int = T) -> tuple[np.ndarray, ...]:
    """float64 NumPy q, k (L2-normalised, as the cells feed them), v, β ∈ (0, 1), log α, s0."""
    q = _normal(seed, (B, length, H, DK)) / math.sqrt(DK)
    k = _normal(seed + 1, (B, length, H, DK))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = _normal(seed + 2, (B, length, H, DV))
    beta = 1 / (1 + np.exp(-_normal(seed + 3, (B, length, H))))
    log_alpha = -np.logaddexp(0.0, -(1.5 + _normal(seed + 4, (B, length, H))))  # α in ~(0.3, 1)
    s0 = _normal(seed + 5, (B, H, DK, DV), 0.5)
    return q, k, v, beta, log_alpha, s0


def naive_gated_delta_rule(q, k, v, beta, g, s0, resets=None, mask=None):
    """fla's `naive_recurrent_gated_delta_rule` (state [K, V]) in NumPy float64, token by token, with
    q already scaled; plus seqjax's flags: a reset zeroes the state before its token, padding leaves it
    unchanged and outputs 0."""
    o = np.zeros(v.shape)
    h = s0.copy()
    for i in range(q.shape[1]):
        if resets is not None:
            h = np.where(resets[:, i, None, None, None], 0.0, h)
        old = h
        h = h * np.exp(g[:, i])[..., None, None]
        b_v = v[:, i] - (h * k[:, i][..., None]).sum(-2)
        b_v = b_v * beta[:, i][..., None]
        h = h + k[:, i][..., None] * b_v[..., None, :]
        o[:, i] = np.einsum("bhd,bhdm->bhm", q[:, i], h)
        if mask is not None:
            h = np.where(mask[:, i, None, None, None], h, old)
            o[:, i] = np.where(mask[:, i, None, None], o[:, i], 0.0)
    return o, h


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------
ENGINE_CASES = [
    # (id, gated, flags, chunk_size)
    ("ungated-resets-mask-chunk8", False, True, 8),
    ("gated-chunk>T", True, False, 64),
    ("gated-resets-mask-chunk5", True, True, 5),
    ("gated-resets-mask-chunk1", True, True, 1),
]


@pytest.mark.parametrize(
    ("gated", "flags", "chunk"), [c[1:] for c in ENGINE_CASES], ids=[c[0] for c in ENGINE_CASES]
)
def test_chunked_equals_recurrent_values_and_gradients(gated, flags, chunk):
    """In float64, so any difference beyond rounding is a real discrepancy; gradients wrt every input."""
    with jax.enable_x64(True):
        q, k, v, beta, la, s0 = (jnp.asarray(a) for a in _engine_inputs(0))
        resets = random_flags(1, (B, T), 0.2) if flags else None
        mask = random_flags(2, (B, T), 0.7) if flags else None

        def loss(fn, q, k, v, beta, la, s0):
            ys, final = fn(q, k, v, beta, la if gated else None, s0, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final)), (ys, final)

        chunked = lambda *a, **kw: delta_rule_chunked(*a, **kw, chunk_size=chunk)
        grad = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=range(6), has_aux=True))
        g_c, (ys_c, f_c) = grad(chunked)(q, k, v, beta, la, s0)
        g_r, (ys_r, f_r) = grad(delta_rule_recurrent)(q, k, v, beta, la, s0)
        assert ys_c.dtype == jnp.float64
        assert max_abs_diff((ys_c, f_c), (ys_r, f_r)) < 1e-12
        assert max_abs_diff(g_c, g_r) < 1e-11
        assert max(float(jnp.max(jnp.abs(g))) for g in g_r) > 0.1  # the gradients are not trivially 0
        if not gated:
            np.testing.assert_array_equal(g_c[4], 0.0)
        if flags:
            np.testing.assert_array_equal(np.asarray(ys_c)[~np.asarray(mask)], 0.0)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_engine_matches_fla_naive_recurrence(gated):
    """Both forms against the plain float64 port of fla's naive recurrence (decay first, then the delta
    correction on the decayed state), with a given state, resets and padding; float32 within 1e-5."""
    q, k, v, beta, la, s0 = _engine_inputs(10)
    la = la if gated else np.zeros_like(la)
    resets, mask = np.asarray(random_flags(11, (B, T), 0.15)), np.asarray(random_flags(12, (B, T), 0.8))
    ref_ys, ref_s = naive_gated_delta_rule(q, k, v, beta, la, s0, resets & mask, mask)
    for dtype, tol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        with jax.enable_x64(dtype == jnp.float64):
            args = [jnp.asarray(a, dtype) for a in (q, k, v, beta, la, s0)]
            if not gated:
                args[4] = None

            @jax.jit
            def both(*a):
                kw = dict(resets=jnp.asarray(resets), mask=jnp.asarray(mask))
                return delta_rule(*a, **kw, chunk_size=4), delta_rule(*a, **kw, method="recurrent")

            for ys, s in both(*args):
                assert ys.dtype == dtype
                assert max_abs_diff((ys, s), (ref_ys, ref_s)) < tol


@pytest.mark.parametrize("c", [1, 3, 8, 13, 16, 40, 64])
def test_unit_lower_inverse(c):
    """(I + A)⁻¹ (substitution up to 16 × 16, doubling above) equals NumPy's inverse, for sizes that are
    not powers of two too; entries on and above the diagonal are ignored."""
    a = np.tril(_normal(70 + c, (2, 3, c, c)), -1) / np.sqrt(c)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(unit_lower_inverse)(jnp.asarray(a + np.triu(np.ones((c, c))))))
    np.testing.assert_allclose(got, np.linalg.inv(np.eye(c) + a), atol=1e-12)


@pytest.mark.parametrize("c", [5, 40])
def test_unit_lower_inverse_derivatives(c):
    """The derivative rule dT = −T tril(dA, −1) T against finite differences in float64, forward and
    reverse mode; entries on and above the diagonal get a zero gradient."""
    from jax.test_util import check_grads

    a = np.tril(_normal(90 + c, (2, c, c)), -1) / np.sqrt(c)
    with jax.enable_x64(True):
        args = (jnp.asarray(a),)
        # under jit: each derivative compiles once rather than op by op
        check_grads(jax.jit(unit_lower_inverse), args, order=2, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
        w = jnp.asarray(_normal(91, (2, c, c)))
        grad = jax.jit(jax.grad(lambda m: jnp.sum(w * unit_lower_inverse(m))))(jnp.asarray(a))
    assert np.all(np.asarray(grad)[:, np.triu_indices(c)[0], np.triu_indices(c)[1]] == 0)


def test_unit_lower_inverse_stable_for_parallel_keys():
    """A = β · K Kᵀ with identical unit keys and β = 1 (the worst WY system: every power of A is large,
    the inverse is not): float32 within 1e-5 of the float64 inverse at C = 64."""
    c = 64
    a = np.tril(np.ones((c, c)), -1)
    with jax.enable_x64(True):
        ref = np.asarray(jax.jit(unit_lower_inverse)(jnp.asarray(a)))
    got = np.asarray(jax.jit(unit_lower_inverse)(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(ref, np.linalg.inv(np.eye(c) + a), atol=1e-12)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_chunked_float32_accurate_with_nearly_parallel_keys():
    """Nearly identical keys and β near 1 (an ill-conditioned WY system in a chunk of 64): float32 chunked
    stays as close to the float64 recurrence as the float32 token scan does."""
    length, dk = 256, 16
    q = _normal(80, (1, length, 1, dk)) / 4
    k = 1.0 + 0.01 * _normal(81, (1, length, 1, dk))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = _normal(82, (1, length, 1, 8))
    beta, la = np.full((1, length, 1), 0.99), np.full((1, length, 1), -1e-3)
    ref, _ = naive_gated_delta_rule(q, k, v, beta, la, np.zeros((1, 1, dk, 8)))
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, beta, la)]
    ys, _ = jax.jit(lambda *a: delta_rule_chunked(*a, chunk_size=64))(*f32)
    assert np.max(np.abs(np.asarray(ys) - ref)) < 1e-5 * max(1.0, np.max(np.abs(ref)))


def test_chunked_backward_stores_no_per_token_states():
    """The chunk body is rematerialised: autodiff keeps the inputs and one state per chunk, not a state
    per token (which the token scan does keep: the check can tell them apart)."""
    length, chunk = 64, 8
    args = [jnp.asarray(a, jnp.float32) for a in _engine_inputs(20, length)]
    resets, mask = random_flags(21, (B, length), 0.1), random_flags(22, (B, length), 0.9)

    def residual_sizes(fn):
        vjp = lambda *a: jax.vjp(lambda *a: fn(*a, resets=resets, mask=mask), *a)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, *args))]

    per_token_states = length * B * H * DK * DV
    chunked = residual_sizes(lambda *a, **kw: delta_rule_chunked(*a, **kw, chunk_size=chunk))
    assert max(chunked) < per_token_states, chunked
    assert sum(chunked) < 12 * B * length * H * max(DK, DV) + 2 * (length // chunk) * B * H * DK * DV
    assert max(residual_sizes(delta_rule_recurrent)) >= per_token_states


def test_engine_empty_sequence_and_bad_inputs():
    q, k, v, beta, la, s0 = (jnp.asarray(a, jnp.float32) for a in _engine_inputs(30))
    ys, final = delta_rule_chunked(q[:, :0], k[:, :0], v[:, :0], beta[:, :0], la[:, :0], s0)
    assert ys.shape == (B, 0, H, DV)
    np.testing.assert_array_equal(final, s0)
    with pytest.raises(ValueError, match=r"`beta` has shape \(2, 21\), expected \(2, 21, 2\)"):
        delta_rule(q, k, v, beta[..., 0])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        delta_rule_chunked(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        delta_rule(q, k, v, beta, method="fast")


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------
CELL_CASES = [
    ("deltanet", cells.DeltaNet(num_heads=H, head_dim=DK, chunk_size=8)),
    ("gated-deltanet", cells.GatedDeltaNet(num_heads=H, head_dim=DK, chunk_size=8)),
    (
        "deltanet-gate-conv2-out3",
        cells.DeltaNet(num_heads=H, head_dim=DK, expand_v=1.5, output_gate=True, conv_size=2, out_features=3),
    ),
]
CELL_IDS = [name for name, _ in CELL_CASES]
CELLS = [cell for _, cell in CELL_CASES]


def _silu(x):
    return x / (1 + np.exp(-x))


def fla_layer_reference(cell, params, x):
    """fla's `DeltaNet` / `GatedDeltaNet` layer forward for one sequence x [T, input], written plainly in
    NumPy float64 from the reference code: q/k/v projections, depthwise causal convs (no bias) + SiLU,
    L2 q/k (eps 1e-6), q scaled by d_k^-½, β = σ(b_proj x), g = −exp(A_log) softplus(a_proj x +
    dt_bias), the naive recurrence, RMSNorm (weight, eps) gated by SiLU(g_proj x), o_proj."""
    p = {name: np.asarray(a, np.float64) for name, a in params.items()}
    x = np.asarray(x, np.float64)
    length, kc = x.shape[0], cell.conv_size
    streams = {}
    for name in ("q", "k", "v"):
        proj = np.einsum("ti,ihd->thd", x, p[f"w_{name}"])
        padded = np.concatenate([np.zeros((kc - 1, *proj.shape[1:])), proj])
        conv = sum(p[f"conv_{name}"][tap] * padded[tap : tap + length] for tap in range(kc))
        streams[name] = _silu(conv)
    l2 = lambda a: a / np.sqrt(np.sum(a * a, -1, keepdims=True) + 1e-6)
    q, k, v = l2(streams["q"]) / math.sqrt(cell.head_dim), l2(streams["k"]), streams["v"]
    beta = 1 / (1 + np.exp(-(x @ p["w_beta"])))
    if cell.gated:
        g = -np.exp(p["A_log"]) * np.logaddexp(0.0, x @ p["w_a"] + p["dt_bias"])
    else:
        g = np.zeros_like(beta)
    s0 = np.zeros((1, cell.num_heads, cell.head_dim, v.shape[-1]))
    o, _ = naive_gated_delta_rule(q[None], k[None], v[None], beta[None], g[None], s0)
    o = o[0] / np.sqrt(np.mean(o[0] ** 2, -1, keepdims=True) + cell.norm_eps) * p["norm_scale"]
    if cell.output_gate:
        o = o * _silu(np.einsum("ti,ihd->thd", x, p["w_g"]))
    return np.einsum("thd,hdo->to", o, p["w_o"])


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_cell_matches_fla_layer_reference(cell):
    """The cell (chunked, float32 and float64) computes fla's layer function, token for token."""
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(0, impl="rbg"), INPUT_SIZE)
    xs = _normal(40, (B, T, INPUT_SIZE))
    ref = np.stack([fla_layer_reference(cell, params, x) for x in xs])
    assert np.max(np.abs(ref)) > 0.1
    ys32, _ = jax.jit(cell.apply)(params, jnp.asarray(xs, jnp.float32))
    np.testing.assert_allclose(ys32, ref, atol=2e-5 * np.max(np.abs(ref)))
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        ys64, _ = jax.jit(cell64.apply)(p64, jnp.asarray(xs))
        assert ys64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(ys64), ref, atol=1e-11)


@pytest.mark.parametrize("cell", CELLS[:2], ids=CELL_IDS[:2])
def test_cell_chunked_equals_recurrent_gradients_float64(cell):
    """apply("chunked") against apply("recurrent") in float64: values and gradients wrt the parameters,
    the inputs and every state leaf, with resets and padding, to rounding."""
    with jax.enable_x64(True):
        cell = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        params = jax.jit(cell.init, static_argnums=1)(jax.random.key(1, impl="rbg"), INPUT_SIZE)
        xs = jnp.asarray(_normal(50, (B, T, INPUT_SIZE)))
        state = cell.initial_state((B,), jnp.float64)
        state = type(state)(*(jnp.asarray(_normal(51 + i, s.shape, 0.5)) for i, s in enumerate(state)))
        resets, mask = random_flags(52, (B, T), 0.2), random_flags(53, (B, T), 0.75)

        def grads(c):
            def loss(p, x, s):
                ys, final = c.apply(p, x, s, resets=resets, mask=mask)
                return jnp.sum(jnp.sin(3 * ys)) + sum(jnp.sum(jnp.cos(f)) for f in final), (ys, final)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)

        g_c, out_c = grads(cell)
        g_r, out_r = grads(dataclasses.replace(cell, method="recurrent"))
        assert max_abs_diff(out_c, out_r) < 1e-11
        assert max_abs_diff(g_c, g_r) < 1e-9


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_state_carried_across_two_calls_equals_one_call(cell):
    """apply on [0, 9) then on [9, T) from the returned state (conv windows and S) equals one apply, with
    padding in both parts (also at the split) and resets in the second."""
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(2, impl="rbg"), INPUT_SIZE)
    xs = jnp.asarray(_normal(60, (B, T, INPUT_SIZE)), jnp.float32)
    resets = random_flags(61, (B, T), 0.1).at[:, :9].set(False)
    mask = random_flags(62, (B, T), 0.75).at[:, 8].set(False)

    @jax.jit
    def run(params, xs):
        whole = cell.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = cell.apply(params, xs[:, :9], mask=mask[:, :9])
        ys_b, final = cell.apply(params, xs[:, 9:], state, resets=resets[:, 9:], mask=mask[:, 9:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final)

    whole, split = run(params, xs)
    assert max_abs_diff(whole, split) < 1e-5


def test_gated_initialisation_follows_the_reference():
    """A = exp(A_log) ∈ (0, 16], dt = softplus(dt_bias) ∈ [1e-3, 0.1] (log-uniform), α_t < 1; the decay
    parameters are in the "ssm" group; DeltaNet has none of them."""
    cell = cells.GatedDeltaNet(num_heads=4096, head_dim=1, expand_v=1.0, out_features=1)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(3, impl="rbg"), 2)
    a = np.exp(np.asarray(params["A_log"], np.float64))
    assert a.min() > 0 and a.max() <= 16 and abs(a.mean() - 8) < 0.3
    dt = np.logaddexp(0.0, np.asarray(params["dt_bias"], np.float64))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert abs(np.mean(np.log(dt)) - 0.5 * (math.log(1e-3) + math.log(0.1))) < 0.1
    groups = cell.param_groups()
    assert {name for name, g in groups.items() if g == "ssm"} == {"A_log", "dt_bias"}
    plain = cells.DeltaNet(num_heads=2, head_dim=4).init(jax.random.PRNGKey(0), 3)
    assert not {"A_log", "dt_bias", "w_a", "w_g"} & set(plain)
    np.testing.assert_array_equal(params["norm_scale"], 1.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cells.DeltaNet(num_heads=0, head_dim=4), "num_heads"),
        (lambda: cells.GatedDeltaNet(num_heads=2, head_dim=3, expand_v=0.5), "head_dim \\* expand_v"),
        (lambda: cells.DeltaNet(num_heads=2, head_dim=4, conv_size=0), "conv_size"),
        (lambda: cells.DeltaNet(num_heads=2, head_dim=4, method="fast"), "method must be one of"),
        (lambda: cells.DeltaNet(num_heads=2, head_dim=4, norm_eps=0.0), "norm_eps must be > 0"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_registry_and_sizes():
    assert cells.get("gated_deltanet", num_heads=2, head_dim=4) == cells.GatedDeltaNet(
        num_heads=2, head_dim=4
    )
    cell = cells.get("deltanet", num_heads=3, head_dim=4)
    assert isinstance(cell, cells.DeltaNet) and cell.value_dim == 4 and cell.output_size == 12
    assert cells.GatedDeltaNet(num_heads=3, head_dim=4).output_size == 24  # d_v = 2 d_k
