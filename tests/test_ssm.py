"""S4D, S5, LRU: apply == loop of step, engine backends, dtypes, initialisations, discretisation, errors."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from seqjax.cells import registry
from seqjax.cells.ssm import LRU, MAX_REAL_EIG, S4D, S5
from seqjax.cells.ssm_init import block_hippo_n, hippo_legs, hippo_n, hippo_n_eig, s4d_modes
from tests.cell_cases import random_flags, step_loop

H, N, B, T = 4, 8, 2, 13
CHUNK = 8  # T is not a multiple of it, so the chunked backend's padding is exercised

CASES = [
    ("s4d-lin", S4D(H, N, chunk_size=CHUNK)),
    ("s4d-inv", S4D(H, N, a_init="inv", chunk_size=CHUNK)),
    ("s4d-legs", S4D(H, N, a_init="legs", chunk_size=CHUNK)),
    ("s4d-reverse", S4D(H, N, reverse=True, chunk_size=CHUNK)),
    ("s5-zoh", S5(H, N, blocks=2, chunk_size=CHUNK)),
    ("s5-bilinear", S5(H, N, discretization="bilinear", chunk_size=CHUNK)),
    ("s5-reverse-clip", S5(H, N, blocks=2, clip_eigs=True, reverse=True, chunk_size=CHUNK)),
    ("lru", LRU(H, N, chunk_size=CHUNK)),
    ("lru-reverse", LRU(H, N, reverse=True, chunk_size=CHUNK)),
]
IDS = [name for name, _ in CASES]
CELLS = [cell for _, cell in CASES]
BY_NAME = dict(CASES)


# ------------------------------------------------------------------------------------------------------
# Helpers. The states are complex, so comparisons and losses look at both parts (the shared
# `max_abs_diff` converts to float64 and would drop imaginary parts).
# ------------------------------------------------------------------------------------------------------
def cdiff(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.complex128) - np.asarray(y, np.complex128)))), a, b
    )
    return max(jax.tree.leaves(diffs))


def complex_state(cell, key, batch_shape):
    template = cell.initial_state(batch_shape)
    leaves, treedef = jax.tree.flatten(template)
    keys = jax.random.split(key, 2 * len(leaves))
    return treedef.unflatten(
        [
            (0.5 * jax.random.normal(k1, leaf.shape) + 0.5j * jax.random.normal(k2, leaf.shape)).astype(
                leaf.dtype
            )
            for k1, k2, leaf in zip(keys[::2], keys[1::2], leaves, strict=True)
        ]
    )


def state_loss(final) -> jax.Array:
    return sum(jnp.sum(jnp.cos(s.real) + jnp.sin(2 * s.imag)) for s in jax.tree.leaves(final))


def inputs(key, length=T, batch=B):
    return jax.random.normal(key, (batch, length, H))


def scaled_diff(a, b) -> float:
    """Largest difference relative to the reference's largest magnitude, leaf by leaf."""
    out = jax.tree.map(
        lambda x, y: float(
            np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-12)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(out))


# ------------------------------------------------------------------------------------------------------
# The cell contract.
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_apply_equals_step_loop(cell, key):
    """With a given state, resets and padding; values and gradients (params, inputs, state)."""
    params = cell.init(key, H)
    xs = inputs(jax.random.PRNGKey(1))
    state = complex_state(cell, jax.random.PRNGKey(2), (B,))
    resets = random_flags(3, (B, T), 0.25)
    mask = random_flags(4, (B, T), 0.7)

    def loss(fn, p, x, s):
        ys, final = fn(p, x, s)
        return jnp.sum(jnp.sin(3 * ys)) + state_loss(final), (ys, final)

    by_apply = lambda p, x, s: cell.apply(p, x, s, resets=resets, mask=mask)
    by_steps = lambda p, x, s: step_loop(cell, p, x, s, resets=resets, mask=mask)
    # apply's values and gradients in one compiled program; the reference, a Python loop of step, eager
    grad = lambda fn: jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2), has_aux=True)
    g_apply, (ys, final) = jax.jit(grad(by_apply))(params, xs, state)
    g_steps, (ref_ys, ref_final) = grad(by_steps)(params, xs, state)
    assert ys.shape == (B, T, H) and ys.dtype == jnp.float32
    assert final.shape == state.shape and final.dtype == jnp.complex64
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    assert cdiff(final, ref_final) < 1e-5
    np.testing.assert_array_equal(ys[~mask], 0.0)
    assert scaled_diff(g_apply, g_steps) < 1e-4


@pytest.mark.parametrize("name", ["s4d-reverse", "s5-bilinear", "s5-reverse-clip", "lru"])
def test_engine_methods_agree(name, key):
    """sequential, associative and chunked give the same values and gradients; gradients are finite.

    The backend only sees Ā and B̄x, so one case per cell and direction covers it."""
    cell = BY_NAME[name]
    length = 21
    params = cell.init(key, H)
    xs = inputs(jax.random.PRNGKey(1), length)
    state = complex_state(cell, jax.random.PRNGKey(2), (B,))
    # without flags or a state, apply is the step loop from zeros
    np.testing.assert_allclose(cell.apply(params, xs)[0], step_loop(cell, params, xs)[0], atol=1e-5)
    resets = random_flags(3, (B, length), 0.15)
    mask = random_flags(4, (B, length), 0.8)

    def run(method):
        c = dataclasses.replace(cell, method=method)

        def loss(p, x, s):
            ys, final = c.apply(p, x, s, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(3 * ys)) + state_loss(final), (ys, final)

        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            params, xs, state
        )
        return out, grads

    ref_out, ref_grads = run("sequential")
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(ref_grads))
    for method in ("associative", "chunked"):
        out, grads = run(method)
        assert cdiff(out, ref_out) < 1e-5, method
        assert scaled_diff(grads, ref_grads) < 1e-4, method


@pytest.mark.parametrize("name", ["s4d-legs", "s5-zoh", "lru"])
def test_bfloat16_compute_close_to_float32(name, key):
    cell = BY_NAME[name]
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16)
    params = cell.init(key, H)
    xs = inputs(jax.random.PRNGKey(1), 32)
    ys32, _ = jax.jit(cell.apply)(params, xs)

    def loss(p):
        ys, final = cell16.apply(p, xs)
        return jnp.sum(ys.astype(jnp.float32) ** 2), (ys, final)

    (_, (ys16, s16)), g16 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert ys16.dtype == jnp.bfloat16
    assert s16.dtype == jnp.complex64  # the state stays full precision
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g16))
    np.testing.assert_allclose(np.asarray(ys16, np.float32), ys32, atol=0.05)
    assert float(jnp.mean(jnp.abs(ys16.astype(jnp.float32) - ys32))) < 0.01
    # step runs the same bf16 arithmetic as apply
    _, y0 = cell16.step(params, cell16.initial_state((B,)), xs[:, 0])
    assert y0.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y0, np.float32), np.asarray(ys16[:, 0], np.float32), atol=0.02)


@pytest.mark.parametrize("name", ["s4d-legs", "s5-bilinear", "s5-reverse-clip", "lru-reverse"])
def test_float32_matches_float64_reference(name, key):
    cell = BY_NAME[name]
    length = 40
    params = cell.init(key, H)
    xs = inputs(jax.random.PRNGKey(1), length)
    resets = random_flags(3, (B, length), 0.05)
    mask = random_flags(4, (B, length), 0.9)

    def run(c, p, x, s):
        def loss(p):
            ys, final = c.apply(p, x, s, resets=resets, mask=mask)
            return jnp.sum(ys**2), (ys, final)

        (_, (ys, final)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(p)
        return ys, final, grads

    ys32, _, g32 = run(cell, params, xs, cell.initial_state((B,)))
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        x64 = jnp.asarray(np.asarray(xs), jnp.float64)
        s64 = cell64.initial_state((B,), jnp.float64)
        assert s64.dtype == jnp.complex128
        ys64, final64, g64 = run(cell64, p64, x64, s64)
        assert ys64.dtype == jnp.float64 and final64.dtype == jnp.complex128
        assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(g64))
        ys64, g64 = np.asarray(ys64), jax.tree.map(np.asarray, g64)
    np.testing.assert_allclose(ys32, ys64, atol=1e-5)
    for pname in params:
        scale = np.max(np.abs(g64[pname])) + 1e-12
        assert np.max(np.abs(np.asarray(g32[pname]) - g64[pname])) / scale < 1e-4, pname


def test_s5_bidirectional_sums_a_forward_and_a_backward_pass(key):
    bi = S5(H, N, blocks=2, bidirectional=True, chunk_size=CHUNK)
    params = bi.init(key, H)
    fwd = S5(H, N, blocks=2, chunk_size=CHUNK)
    bwd = S5(H, N, blocks=2, reverse=True, chunk_size=CHUNK)
    p_fwd = {k: v for k, v in params.items() if not k.startswith("c_bwd")}
    p_bwd = {**p_fwd, "c_re": params["c_bwd_re"], "c_im": params["c_bwd_im"], "d": jnp.zeros(H)}
    length = 21
    xs = inputs(jax.random.PRNGKey(1), length)
    state = complex_state(bi, jax.random.PRNGKey(2), (B,))
    assert set(state) == {"forward", "backward"}
    resets = random_flags(3, (B, length), 0.15)
    mask = random_flags(4, (B, length), 0.8)

    def run(c):
        def loss(p, s):
            ys, final = c.apply(p, xs, s, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(3 * ys)) + state_loss(final), (ys, final)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    (_, (ys, final)), grads = run(bi)(params, state)
    ys_f, final_f = jax.jit(fwd.apply)(p_fwd, xs, state["forward"], resets=resets, mask=mask)
    ys_b, final_b = jax.jit(bwd.apply)(p_bwd, xs, state["backward"], resets=resets, mask=mask)
    np.testing.assert_allclose(ys, ys_f + ys_b, atol=1e-5)
    assert cdiff(final, {"forward": final_f, "backward": final_b}) < 1e-6
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    (_, out_c), grads_c = run(dataclasses.replace(bi, method="chunked"))(params, state)
    assert cdiff(out_c, (ys, final)) < 1e-5 and scaled_diff(grads_c, grads) < 1e-4
    with pytest.raises(TypeError, match="no step form"):
        bi.step(params, bi.initial_state((B,)), xs[:, 0])


def test_param_axes_and_groups_name_every_parameter(key):
    expected_ssm = {
        S4D: {"log_dt", "a_re_log", "a_im", "b_re", "b_im"},
        S5: {"lambda_re", "lambda_im", "log_dt", "b_re", "b_im"},
        LRU: {"nu_log", "theta_log", "gamma_log"},
    }
    for cell in [*CELLS, S5(H, N, bidirectional=True)]:
        params = cell.init(key, H)
        axes, groups = cell.param_axes(), cell.param_groups()
        assert set(axes) == set(params) == set(groups)
        for name, leaf in params.items():
            assert leaf.dtype == jnp.float32, name
            assert len(axes[name]) == leaf.ndim and all(isinstance(a, str) for a in axes[name]), name
        assert {k for k, g in groups.items() if g == "ssm"} == expected_ssm[type(cell)]
        assert set(groups.values()) == {"ssm", "default"}
        assert cell.input_size_of(params) == H and cell.output_size == H


def test_registry_builds_the_ssm_cells():
    assert isinstance(registry.get("S4D", hidden_size=4), S4D)
    assert registry.get("s5", hidden_size=4, state_size=8, blocks=2) == S5(4, 8, blocks=2)
    assert isinstance(registry.get("lru", hidden_size=4), LRU)


# ------------------------------------------------------------------------------------------------------
# Initialisations.
# ------------------------------------------------------------------------------------------------------
def test_lru_ring_initialisation(key):
    cell = LRU(H, 512, r_min=0.4, r_max=0.8, max_phase=math.pi / 3)
    params = cell.init(key, H)
    lam = np.asarray(cell.decay(params))
    r, phase = np.abs(lam), np.asarray(jnp.exp(params["theta_log"]))
    assert r.min() >= 0.4 - 1e-6 and r.max() <= 0.8 + 1e-6
    assert phase.min() >= 0 and phase.max() <= math.pi / 3
    # the ring is filled: both ends of both ranges are reached
    assert r.min() < 0.45 and r.max() > 0.75 and phase.max() > 0.9 * math.pi / 3 and phase.min() < 0.1
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - r**2), rtol=1e-5)
    default = LRU(H, 256).init(key, H)
    r = np.abs(np.asarray(LRU(H, 256).decay(default)))
    assert r.min() >= 0.9 - 1e-6 and r.max() <= 0.999 + 1e-6


def test_hippo_n_eigendecomposition_reconstructs_the_normal_matrix():
    for n in (2, 4, 8, 16):
        a, b = hippo_legs(n)
        if n >= 2:  # A_10 = −√3·√1, A_11 = −2, upper triangle zero, B_1 = √3
            np.testing.assert_allclose(
                [a[1, 0], a[1, 1], a[0, 1], b[1]], [-math.sqrt(3), -2, 0, math.sqrt(3)]
            )
        s, _ = hippo_n(n)
        np.testing.assert_allclose(s @ s.T, s.T @ s, atol=1e-10)  # normal
        lam, v = hippo_n_eig(n)
        np.testing.assert_allclose(v @ np.diag(lam) @ np.linalg.inv(v), s, atol=1e-10)
        np.testing.assert_allclose(v.conj().T @ v, np.eye(n), atol=1e-10)  # V⁻¹ = Vᴴ
    # block-diagonal with conjugate symmetry: the kept half plus its conjugate gives back the real matrix
    lam, v, v_inv = block_hippo_n(12, 2)
    assert lam.shape == (6,) and v.shape == (12, 6) and v_inv.shape == (6, 12)
    s6, _ = hippo_n(6)
    np.testing.assert_allclose(
        2 * np.real(v @ np.diag(lam) @ v_inv), scipy.linalg.block_diag(s6, s6), atol=1e-10
    )
    np.testing.assert_allclose(v_inv @ v, np.eye(6), atol=1e-10)


def test_s5_b_is_lecun_normal_with_the_references_fan_in(key):
    """lindermanlab/S5 draws B with `lecun_normal()` on shape (P, H): fan-in P, so Var(B) = 1/P (not
    1/H); B = V B̃ recovers it from the stored B̃ = V⁻¹B."""
    h, p = 12, 64
    params = S5(h, p).init(key, h)
    _, v, _ = block_hippo_n(p, 1)
    b_tilde = np.asarray(params["b_re"]) + 1j * np.asarray(params["b_im"])  # [H, P/2]
    b = 2 * (np.asarray(v) @ b_tilde.T).real  # B = V B̃ + conj(V B̃): the conjugate half mirrors it
    assert np.var(b) == pytest.approx(1 / p, rel=0.2), np.var(b)


def test_s5_keeps_one_eigenvalue_per_conjugate_pair(key):
    cell = S5(H, 16, blocks=2)
    params = cell.init(key, H)
    lam = np.asarray(cell.eigenvalues(params))
    assert lam.shape == (8,)
    assert np.all(lam.real < 0) and np.all(lam.imag > 0)
    np.testing.assert_allclose(lam.real, -0.5)
    # each block: kept half ∪ its conjugates == the block's whole spectrum
    full, _ = hippo_n_eig(8)
    for block in (lam[:4], lam[4:]):
        both = np.sort_complex(np.concatenate([block, block.conj()]))
        np.testing.assert_allclose(both, np.sort_complex(full), atol=1e-5)


def test_s4d_initialisations(key):
    n = np.arange(N // 2)
    lin = S4D(H, N).init(key, H)
    np.testing.assert_allclose(lin["a_im"], np.broadcast_to(np.pi * n, (H, N // 2)), rtol=1e-6)
    np.testing.assert_allclose(-np.exp(lin["a_re_log"]), -0.5, rtol=1e-6)
    np.testing.assert_allclose(lin["b_re"], 1.0)
    np.testing.assert_allclose(lin["b_im"], 0.0)
    inv = S4D(H, N, a_init="inv").init(key, H)
    np.testing.assert_allclose(inv["a_im"][0], N / np.pi * (N / (2 * n + 1) - 1), rtol=1e-6)
    legs_cell = S4D(H, N, a_init="legs")
    legs = np.asarray(legs_cell.eigenvalues(legs_cell.init(key, H)))
    full, _ = hippo_n_eig(N)
    np.testing.assert_allclose(legs[1], np.sort_complex(full[full.imag > 0]), rtol=1e-5)
    _, b = s4d_modes("legs", N)
    lam_half, v_half = full[N // 2 :], hippo_n_eig(N)[1][:, N // 2 :]
    # B in the eigenbasis: the kept modes and their conjugates reproduce HiPPO's B
    np.testing.assert_allclose(2 * np.real(v_half @ b), hippo_n(N)[1], atol=1e-10)
    assert lam_half.shape == (N // 2,)


def test_log_dt_within_its_range(key):
    for cell in [S4D(64, 8, dt_min=1e-3, dt_max=0.1), S5(4, 256, dt_min=1e-2, dt_max=0.5)]:
        log_dt = np.asarray(cell.init(key, cell.hidden_size)["log_dt"])
        lo, hi = math.log(cell.dt_min), math.log(cell.dt_max)
        assert log_dt.min() >= lo - 1e-6 and log_dt.max() <= hi + 1e-6
        assert log_dt.min() < lo + 0.2 * (hi - lo) and log_dt.max() > hi - 0.2 * (hi - lo)  # spread out


def test_clip_eigs_keeps_every_mode_stable(key):
    clipped, free = S5(H, N, clip_eigs=True), S5(H, N)
    params = clipped.init(key, H)
    params = {**params, "lambda_re": jnp.array([0.3, -1e-6, -2.0, 0.0])}
    lam = np.asarray(clipped.eigenvalues(params))
    assert np.all(lam.real <= MAX_REAL_EIG)
    np.testing.assert_allclose(lam.real[2], -2.0)
    assert np.all(np.abs(np.asarray(clipped.decay(params))) < 1)
    assert np.abs(np.asarray(free.decay(params)))[0] > 1  # the unclipped mode grows


# ------------------------------------------------------------------------------------------------------
# Discretisation, checked against the continuous system.
# ------------------------------------------------------------------------------------------------------
def test_s4d_zoh_matches_the_continuous_solution():
    """One mode, constant input: h(t) = B/A (e^{At} − 1) exactly at t = kΔ under zero-order hold."""
    cell = S4D(1, 2)
    a, b_, c, d, dt = -0.3 + 2.0j, 0.7 - 0.2j, 0.4 + 0.9j, 0.5, 0.05
    params = {
        "log_dt": jnp.array([math.log(dt)]),
        "a_re_log": jnp.array([[math.log(-a.real)]]),
        "a_im": jnp.array([[a.imag]]),
        "b_re": jnp.array([[b_.real]]),
        "b_im": jnp.array([[b_.imag]]),
        "c_re": jnp.array([[c.real]]),
        "c_im": jnp.array([[c.imag]]),
        "d": jnp.array([d]),
    }
    length = 60
    ys, final = cell.apply(params, jnp.ones((length, 1)))
    t = dt * np.arange(1, length + 1)
    h = b_ / a * (np.exp(a * t) - 1)
    np.testing.assert_allclose(ys[:, 0], 2 * np.real(c * h) + d, atol=1e-5)
    np.testing.assert_allclose(final[0, 0], h[-1], atol=1e-5)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s5_matches_the_real_hippo_system(discretization, key):
    """The diagonalised S5 with B̃ = V⁻¹B, C̃ = CV equals the real block-HiPPO-N system
    x' = Sx + Bu, y = Cx + Du, discretised independently: ZOH by the matrix exponential of
    [[S, B], [0, 0]]·Δ (Van Loan), bilinear by its matrix formula."""
    p, blocks, dt, length = 8, 2, 0.07, 30
    cell = S5(H, p, blocks=blocks, discretization=discretization)
    lam, v, v_inv = block_hippo_n(p, blocks)
    rng = np.random.default_rng(0)
    b_real, c_real, d = rng.standard_normal((p, H)), rng.standard_normal((H, p)), rng.standard_normal(H)
    b_tilde, c_tilde = v_inv @ b_real, c_real @ v
    params = {
        "lambda_re": jnp.asarray(lam.real, jnp.float32),
        "lambda_im": jnp.asarray(lam.imag, jnp.float32),
        "log_dt": jnp.full((p // 2,), math.log(dt)),
        "b_re": jnp.asarray(b_tilde.T.real, jnp.float32),
        "b_im": jnp.asarray(b_tilde.T.imag, jnp.float32),
        # the real state is x = 2·Re(V h), so C x = 2·Re(C̃ h): the readout's conjugate-pair convention
        "c_re": jnp.asarray(c_tilde.T.real, jnp.float32),
        "c_im": jnp.asarray(c_tilde.T.imag, jnp.float32),
        "d": jnp.asarray(d, jnp.float32),
    }
    u = rng.standard_normal((length, H))
    ys, _ = cell.apply(params, jnp.asarray(u, jnp.float32))

    s = scipy.linalg.block_diag(*[hippo_n(p // blocks)[0]] * blocks)
    if discretization == "zoh":
        aug = np.zeros((p + H, p + H))
        aug[:p, :p], aug[:p, p:] = s, b_real
        m = scipy.linalg.expm(aug * dt)
        a_bar, b_bar = m[:p, :p], m[:p, p:]
    else:
        inv = np.linalg.inv(np.eye(p) - dt / 2 * s)
        a_bar, b_bar = inv @ (np.eye(p) + dt / 2 * s), inv @ (dt * b_real)
    x, ref = np.zeros(p), []
    for t in range(length):
        x = a_bar @ x + b_bar @ u[t]
        ref.append(c_real @ x + d * u[t])
    np.testing.assert_allclose(ys, np.stack(ref), atol=1e-4)


# ------------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------------
BAD_HPARAMS = [
    (lambda: S4D(H, 7), "state_size=7 is odd"),
    (lambda: S5(H, 7), "state_size=7 is odd"),
    (lambda: S5(H, 12, blocks=5), "blocks=5 must be a positive divisor"),
    (lambda: S5(H, 12, blocks=4), "blocks of 3 dimensions"),
    (lambda: S4D(H, N, a_init="hippo"), "unknown a_init 'hippo'"),
    (lambda: S5(H, N, discretization="euler"), "unknown discretization 'euler'"),
    (lambda: S4D(H, N, method="fast"), "unknown method 'fast'"),
    (lambda: LRU(H, N, method="parallel"), "unknown method 'parallel'"),
    (lambda: S5(H, N, chunk_size=0), "chunk_size must be >= 1"),
    (lambda: LRU(H, N, r_min=0.99, r_max=0.9), "r_min=0.99, r_max=0.9"),
    (lambda: LRU(H, N, r_max=1.0), "r_max=1.0"),
    (lambda: LRU(H, N, r_min=-0.5), "r_min=-0.5"),
    (lambda: S4D(H, N, dt_min=0.1, dt_max=0.01), "dt_min=0.1, dt_max=0.01"),
    (lambda: S5(H, N, bidirectional=True, reverse=True), "leave reverse=False"),
    (lambda: LRU(0, N), "hidden_size must be a positive integer"),
]


@pytest.mark.parametrize("build, message", BAD_HPARAMS, ids=[m for _, m in BAD_HPARAMS])
def test_bad_hyperparameters_raise(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


@pytest.mark.parametrize("cell", [S4D(H, N), S5(H, N), LRU(H, N)], ids=["s4d", "s5", "lru"])
def test_bad_inputs_raise(cell, key):
    with pytest.raises(ValueError, match="input_size=5"):
        cell.init(key, 5)
    params = cell.init(key, H)
    with pytest.raises(ValueError, match="has 5 features"):
        cell.apply(params, jnp.ones((B, T, 5)))
    with pytest.raises(ValueError, match="state leaf has shape"):
        cell.apply(params, jnp.ones((B, T, H)), cell.initial_state((B + 1,)))
    with pytest.raises(ValueError, match="`mask` has shape"):
        cell.apply(params, jnp.ones((B, T, H)), mask=jnp.ones((B, T + 1), bool))
    with pytest.raises(TypeError, match="dtype int32"):
        cell.apply(params, jnp.ones((B, T, H), jnp.int32))
