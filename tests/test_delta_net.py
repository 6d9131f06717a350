"""The delta rule: the engine (chunked WY form == token scan == a plain NumPy port of fla's
`naive_recurrent_gated_delta_rule`, values and gradients) and the DeltaNet / GatedDeltaNet cells (against
a plain NumPy float64 port of fla's layers, against the papers' equations in float64 with gradients,
state carried across calls, chunked == recurrent gradients, initialisation; numerics at saturated gates
over 2048 tokens, at zero and tiny keys, and in bfloat16). The cell contract
(tests/test_cell_contract.py) runs over both cells too.

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
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
)

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


def test_engine_gradients_at_extreme_decays_with_trailing_padding():
    """α = 1e-6, e^-30 and 1 − 1e-6 per token in three heads (`EXTREME_LOG_DECAYS`) over 2040 tokens,
    float32: chunks of 64, so the last chunk ends in the engine's own padding, and the last 5 tokens
    padded. The chunked form's gradients wrt q, k, v, β, log α and s0 equal the float64 token scan's,
    each leaf to 1e-4 of its own largest entry and d/d log α head by head to 1e-4 of that head's largest
    (measured ≤ 2e-5, in the 1e-6 head). Before a write's decay to the chunk's end was summed from the
    tokens it spans (`delta_rule._chunk_body`), exp(b_C − b_j) at the last real token of a chunk that
    ends in padding (b_C = b_j, log α = 0 after it) cancelled its O(1) gradient in float32: d/d log α was
    4e-4 off in the 1e-6 head and 28% in the e^-30 head, which
    `test_extreme_gates_over_2048_tokens` (2048 tokens, no padding) does not reach."""
    length, heads = 2040, len(EXTREME_LOG_DECAYS)
    rng = np.random.default_rng(24)
    q, k = (rng.standard_normal((1, length, heads, DK)) for _ in range(2))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((1, length, heads, DV))
    beta = 1 / (1 + np.exp(-rng.standard_normal((1, length, heads))))
    log_alpha = np.broadcast_to(np.asarray(EXTREME_LOG_DECAYS), (1, length, heads))
    s0 = rng.standard_normal((1, heads, DK, DV)) / 2
    mask = jnp.arange(length)[None] < length - 5
    chunked = lambda *a: delta_rule_chunked(*a, mask=mask, chunk_size=64)
    recurrent = lambda *a: delta_rule_recurrent(*a, mask=mask)
    g32, g64 = float32_and_float64_gradients(chunked, recurrent, (q, k, v, beta, log_alpha, s0))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[4], g64[4], axis=-1)) < 1e-4


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


# --------------------------------------------------------------------------------------------------
# Cells: the papers' equations
# --------------------------------------------------------------------------------------------------
def _perturbed(params, seed: int, scale: float = 0.3):
    """The initialisation with every parameter moved off its structured values (norm_scale = 1 would hide
    a missing or misplaced scale), in the parameters' own dtype."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(params))
    return {
        name: a + scale * jax.random.normal(kk, a.shape, a.dtype)
        for (name, a), kk in zip(sorted(params.items()), keys, strict=True)
    }


def paper_cell(cell, params, xs, state, resets=None, mask=None):
    """The whole DeltaNet / Gated DeltaNet layer from the papers' equations, one token per step of a
    `lax.scan`, in the papers' layout S ∈ R^{d_v × d_k} (the transpose of the cell's), in jax.numpy so
    that it differentiates (float64 under `jax.enable_x64`). Per head, with the cell's projections and
    short convs around the recurrence (docs/cells.md):

        q, k, v = SiLU(Σ_tap w_tap · (W x)_{t−K+1+tap})      depthwise causal conv over the carried window
        q ← q / √(|q|² + 1e-6) / √d_k ;  k ← k / √(|k|² + 1e-6) ;  β_t = σ(W_β x_t)
        α_t = 1 (DeltaNet, Yang et al. 2024a) or exp(−exp(A_log) · softplus(W_a x_t + dt_bias)) (Gated
        DeltaNet, Yang, Kautz & Hatamizadeh 2024)
        S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ ;  o_t = S_t q_t
        y_t = W_o [ o_t / √(mean(o_t²) + norm_eps) ⊙ norm_scale (⊙ SiLU(W_g x_t)) ]_heads

    The transition I − β_t k_t k_tᵀ is formed as a matrix, not as the engine's v − Sᵀk correction. A
    reset clears S and the conv windows before its token; padding (which wins over a reset) leaves both
    unchanged and outputs 0. `state` is a `DeltaNetState` in the cell's layout; returns (ys, final state)
    in the same layout.
    """
    sigmoid = lambda a: 1 / (1 + jnp.exp(-a))
    silu = lambda a: a * sigmoid(a)
    l2 = lambda a: a / jnp.sqrt(jnp.sum(a * a, -1, keepdims=True) + 1e-6)
    dk = cell.head_dim
    eye = jnp.eye(dk, dtype=xs.dtype)
    bsz, length = xs.shape[:2]
    resets = jnp.zeros((bsz, length), bool) if resets is None else resets
    mask = jnp.ones((bsz, length), bool) if mask is None else mask

    def step(carry, token):
        windows, s = carry
        x, reset, keep = token
        clear = (reset & keep)[:, None, None, None]
        windows = {name: jnp.where(clear, 0.0, w) for name, w in windows.items()}
        s = jnp.where(clear, 0.0, s)
        feats, new_windows = {}, {}
        for name in ("q", "k", "v"):
            taps = jnp.concatenate(
                [windows[name], jnp.einsum("bi,ihd->bhd", x, params[f"w_{name}"])[:, None]], 1
            )
            feats[name] = silu(jnp.einsum("bkhd,khd->bhd", taps, params[f"conv_{name}"]))
            new_windows[name] = taps[:, 1:]
        q, k, v = l2(feats["q"]) / math.sqrt(dk), l2(feats["k"]), feats["v"]
        beta = sigmoid(x @ params["w_beta"])[..., None, None]  # [B, H, 1, 1]
        if cell.gated:
            g = -jnp.exp(params["A_log"]) * jnp.logaddexp(0.0, x @ params["w_a"] + params["dt_bias"])
            alpha = jnp.exp(g)[..., None, None]
        else:
            alpha = 1.0
        transition = eye - beta * k[..., :, None] * k[..., None, :]  # [B, H, d_k, d_k]
        s_new = alpha * s @ transition + beta * v[..., :, None] * k[..., None, :]
        o = jnp.einsum("bhvk,bhk->bhv", s_new, q)
        o = o / jnp.sqrt(jnp.mean(o * o, -1, keepdims=True) + cell.norm_eps) * params["norm_scale"]
        if cell.output_gate:
            o = o * silu(jnp.einsum("bi,ihd->bhd", x, params["w_g"]))
        y = jnp.einsum("bhd,hdo->bo", o, params["w_o"])
        keep4 = keep[:, None, None, None]
        windows = {name: jnp.where(keep4, new_windows[name], windows[name]) for name in windows}
        return (windows, jnp.where(keep4, s_new, s)), jnp.where(keep[:, None], y, 0.0)

    windows = {name: getattr(state, f"conv_{name}") for name in ("q", "k", "v")}
    tokens = tuple(jnp.moveaxis(a, 1, 0) for a in (xs, resets, mask))
    (windows, s), ys = jax.lax.scan(step, (windows, jnp.swapaxes(state.s, -1, -2)), tokens)
    final = type(state)(windows["q"], windows["k"], windows["v"], jnp.swapaxes(s, -1, -2))
    return jnp.moveaxis(ys, 0, 1), final


def _loss(ys, final):
    return jnp.sum(jnp.sin(3 * ys)) + sum(jnp.sum(jnp.cos(f)) for f in final)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_cell_matches_the_papers_equations_values_and_gradients(cell):
    """apply (the default chunked form, chunks of 5 so resets and padding fall inside and across chunks,
    and method="recurrent") against `paper_cell` in float64, from a random state (conv windows and S)
    with resets and padding: values to 1e-12, gradients (up to ~100) wrt every parameter, the inputs and
    every state leaf to 1e-10 (measured: 3e-15 and 3e-13). The fla port above checks the layer's forward
    pass against fla's code; this checks it against the delta rule as the papers write it, derivatives
    included."""
    with jax.enable_x64(True):
        cell = dataclasses.replace(cell, chunk_size=5, dtype=jnp.float64, param_dtype=jnp.float64)
        params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(4), INPUT_SIZE), 5)
        xs = jnp.asarray(_normal(90, (B, T, INPUT_SIZE)))
        template = cell.initial_state((B,), jnp.float64)
        state = type(template)(*(jnp.asarray(_normal(91 + i, s.shape, 0.5)) for i, s in enumerate(template)))
        resets, mask = random_flags(95, (B, T), 0.2), random_flags(96, (B, T), 0.75)

        def grads(fn):
            def loss(p, x, s):
                ys, final = fn(p, x, s)
                return _loss(ys, final), (ys, final)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)

        g_ref, out_ref = grads(lambda p, x, s: paper_cell(cell, p, x, s, resets, mask))
        assert float(jnp.max(jnp.abs(out_ref[0]))) > 0.1
        assert all(float(jnp.max(jnp.abs(g))) > 1e-3 for g in jax.tree.leaves(g_ref)), "a zero gradient"
        for method in ("auto", "recurrent"):
            c = dataclasses.replace(cell, method=method)
            g, out = grads(lambda p, x, s, c=c: c.apply(p, x, s, resets=resets, mask=mask))
            assert out[0].dtype == jnp.float64
            assert max_abs_diff(out, out_ref) < 1e-12, method
            assert max_abs_diff(g, g_ref) < 1e-10, method


# --------------------------------------------------------------------------------------------------
# Cells: numerics
# --------------------------------------------------------------------------------------------------
def _grads_and_outputs(cell, params, xs, state=None):
    """d/d(params, xs) of `_loss` over apply's outputs and final state, under `jit`; returns (grads, out)."""

    def loss(p, x):
        ys, final = cell.apply(p, x, state)
        return _loss(ys, final), (ys, final)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, xs)


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _leafwise_relative_diff(a, b) -> float:
    """max over leaves of max|a − b| / max|b|: every gradient leaf is held to its own scale, so a small
    leaf (the decay parameters of a saturated gate) cannot hide under a large one."""
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.subtract(x, y, dtype=np.float64))) / np.max(np.abs(y))) for x, y in leaves
    )


@pytest.mark.parametrize(
    "cell",
    [cells.DeltaNet(num_heads=H, head_dim=DK), cells.GatedDeltaNet(num_heads=H, head_dim=DK)],
    ids=["deltanet", "gated-deltanet"],
)
def test_extreme_gates_over_2048_tokens(cell):
    """β saturated (W_β × 20: about a third of the tokens have β < 1e-4 and a third β > 1 − 1e-4) and, for
    Gated DeltaNet, α forced per head (W_a = 0, A = 1, dt_bias = softplus⁻¹(−log α)) to 1e-6 in head 0
    and 1 − 1e-6 in head 1, over 2048 tokens (64 chunks of the CPU default 32; a chunk's cumulative log
    decay reaches −442, where exp underflows in float32), float32: values and gradients wrt every
    parameter and the inputs are finite, S stays bounded (the delta rule's transition is a contraction
    for β ∈ [0, 1]), and the chunked form equals the token scan: values to 1e-5 of their scale, each
    gradient leaf to 1e-4 of its own scale (measured: ≤ 2e-6 and ≤ 7e-6; the decay parameters'
    gradients of the α = 1e-6 head were 6.5e-4 off before the chunk body stopped differentiating
    Γ_ii = exp(b_i − b_i), see `seqjax.scan.delta_rule._chunk_body`)."""
    length = 2048
    params = jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(7), INPUT_SIZE)
    params = {**params, "w_beta": 20.0 * params["w_beta"]}
    if cell.gated:
        log_alpha = np.array([math.log(1e-6), math.log1p(-1e-6)])
        dt_bias = np.log(np.expm1(-log_alpha))  # softplus(dt_bias) = −log α, with A = exp(A_log) = 1
        params = {
            **params,
            "w_a": jnp.zeros_like(params["w_a"]),
            "A_log": jnp.zeros((H,)),
            "dt_bias": jnp.asarray(dt_bias, jnp.float32),
        }
    xs = jnp.asarray(_normal(100, (1, length, INPUT_SIZE)), jnp.float32)
    beta = 1 / (1 + np.exp(-np.asarray(xs, np.float64) @ np.asarray(params["w_beta"], np.float64)))
    assert np.mean(beta < 1e-4) > 0.25 and np.mean(beta > 1 - 1e-4) > 0.25
    if cell.gated:
        _, got_log_alpha = jax.jit(lambda p, x: cell._gates(p, cell.project_inputs(p, x)))(params, xs)
        np.testing.assert_allclose(np.exp(np.asarray(got_log_alpha[0, 0])), [1e-6, 1 - 1e-6], rtol=1e-6)

    g_c, out_c = _grads_and_outputs(cell, params, xs)
    g_r, out_r = _grads_and_outputs(dataclasses.replace(cell, method="recurrent"), params, xs)
    assert _all_finite((g_c, out_c, g_r, out_r))
    assert float(jnp.max(jnp.abs(out_c[1].s))) < 10.0
    scale = float(jnp.max(jnp.abs(out_r[0])))
    assert max_abs_diff(out_c, out_r) < 1e-5 * scale
    assert _leafwise_relative_diff(g_c, g_r) < 1e-4


@pytest.mark.parametrize(
    "cell",
    [
        cells.DeltaNet(num_heads=H, head_dim=DK, chunk_size=8),
        cells.GatedDeltaNet(num_heads=H, head_dim=DK, chunk_size=8),
    ],
    ids=["deltanet", "gated-deltanet"],
)
def test_zero_and_tiny_keys(cell):
    """Keys at and below the L2 normalisation's epsilon (x / √(|x|² + 1e-6)): head 0 has W_k = 0 (k = 0
    exactly: nothing is written, S only decays), head 1 has W_k × 1e-6 (|k|² ~ 1e-13 ≪ 1e-6), and batch
    row 0 is an all-zero input (q = k = v = 0 and o = 0, where RMSNorm and the L2 norm are at their
    epsilons). From a random S, float32: the chunked values and gradients wrt the parameters and the
    inputs are finite and equal the float64 `paper_cell` to 1e-5 of each leaf's scale (values: of the
    outputs' scale; measured ≤ 3e-7 for values, ≤ 2e-6 for gradients); a zero key leaves DeltaNet's S
    exactly as it was."""
    params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(8), INPUT_SIZE), 9)
    params = {**params, "w_k": params["w_k"] * jnp.asarray([0.0, 1e-6])[None, :, None]}
    xs = jnp.asarray(_normal(110, (B, T, INPUT_SIZE)), jnp.float32).at[0].set(0.0)
    template = cell.initial_state((B,))
    state = template._replace(s=jnp.asarray(_normal(111, template.s.shape, 0.5), jnp.float32))

    g, out = _grads_and_outputs(cell, params, xs, state)
    assert _all_finite((g, out))
    if not cell.gated:
        np.testing.assert_array_equal(out[1].s[:, 0], state.s[:, 0])
    with jax.enable_x64(True):
        c64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), tree)

        def loss(p, x, s):
            ys, final = paper_cell(c64, p, x, s)
            return _loss(ys, final), (ys, final)

        g64, out64 = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
            to64(params), to64(xs), to64(state)
        )
    assert np.max(np.abs(out64[0][1])) > 0.1  # the tiny-key rows are not trivially zero
    assert max_abs_diff(out, out64) < 1e-5 * np.max(np.abs(out64[0]))
    assert _leafwise_relative_diff(g, g64) < 1e-5


@pytest.mark.parametrize("cell", CELLS[:2], ids=CELL_IDS[:2])
def test_bfloat16_inputs_float32_state(cell):
    """dtype=bfloat16 with param_dtype float32 and bfloat16 (`init` follows it; both runs read the
    parameters rounded to bfloat16, as float32 or bfloat16 arrays), with resets and padding: bfloat16
    operands into the projections, float32 accumulation, and float32 conv, features, gates, recurrence
    and state (conv windows and S). Against the float32 cell on the same rounded inputs and parameters
    the state agrees to 1e-6 (its computation sees the same numbers; measured 1.5e-8) and the bfloat16
    outputs to 1e-2 of their scale (the head outputs are rounded to bfloat16 for W_o, and the result
    again; measured 4e-3). Against the float32 cell on the unrounded inputs and parameters, outputs and S
    within 5e-2 of their scales (measured 1.8e-2 and 6e-3)."""
    params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(10), INPUT_SIZE), 11)
    rounded = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), params)
    xs = jnp.asarray(_normal(120, (B, 64, INPUT_SIZE)), jnp.float32)
    resets, mask = random_flags(121, (B, 64), 0.1), random_flags(122, (B, 64), 0.8)
    run = lambda c: jax.jit(lambda p, x: c.apply(p, x, resets=resets, mask=mask))
    ys32, s32 = run(cell)(params, xs)
    ys_rounded, s_rounded = run(cell)(rounded, xs.astype(jnp.bfloat16).astype(jnp.float32))
    scale, s_scale = float(jnp.max(jnp.abs(ys32))), float(jnp.max(jnp.abs(s32.s)))
    for param_dtype in (jnp.float32, jnp.bfloat16):
        c = dataclasses.replace(cell, dtype=jnp.bfloat16, param_dtype=param_dtype)
        made = jax.eval_shape(lambda key, c=c: c.init(key, INPUT_SIZE), jax.random.PRNGKey(0))
        assert all(leaf.dtype == param_dtype for leaf in jax.tree.leaves(made))
        ys16, s16 = run(c)(
            jax.tree.map(lambda a, d=param_dtype: a.astype(d), rounded), xs.astype(jnp.bfloat16)
        )
        assert ys16.dtype == jnp.bfloat16
        assert all(leaf.dtype == jnp.float32 for leaf in s16)
        assert _all_finite((ys16, s16))
        assert max_abs_diff(s16, s_rounded) < 1e-6
        assert max_abs_diff(ys16, ys_rounded) < 1e-2 * scale
        assert max_abs_diff(ys16, ys32) < 5e-2 * scale
        assert max_abs_diff(s16.s, s32.s) < 5e-2 * s_scale


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
