"""xLSTM: the mLSTM engine (chunked == recurrent, values and gradients, with resets and padding; against
NumPy float64 ports of the authors' recurrent, chunkwise and parallel references (NX-AI/xlstm and
NX-AI/mlstm_kernels, tests/xlstm_reference.py); against a float64 loop written from the paper's
equations, values and gradients; extreme gates over 2048 tokens; bfloat16 inputs; what the backward
pass stores) and the MLSTM / SLSTM cells (against NumPy float64 ports of the authors' layers; the sLSTM
against a float64 loop written from the paper's equations, values and gradients, extreme gates over 2048
tokens and bfloat16 inputs; state carried across calls, initialisation). The cell contract
(tests/test_cell_contract.py) runs over both cells too.

Everything runs under `jit`: on a small CPU, op-by-op dispatch costs more than the compiles it saves.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.scan.mlstm import MLSTMMemory, mlstm, mlstm_chunked, mlstm_recurrent
from tests import xlstm_reference as ref
from tests.cell_cases import (
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
)

B, T, H, DK, DV = 2, 21, 2, 4, 3  # T is not a multiple of the chunk sizes below


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _engine_inputs(seed: int, length: int = T, dv: int = DV, batch: int = B):
    """float64 q, k, v, ĩ (spread over ±4), f̃ (mostly remembering), and a memory (c, n, m)."""
    q = _normal(seed, (batch, length, H, DK))
    k = _normal(seed + 1, (batch, length, H, DK))
    v = _normal(seed + 2, (batch, length, H, dv))
    ig = _normal(seed + 3, (batch, length, H), 2.0)
    fg = 1.5 + _normal(seed + 4, (batch, length, H), 2.0)
    memory = MLSTMMemory(
        _normal(seed + 5, (batch, H, DK, dv), 0.5),
        _normal(seed + 6, (batch, H, DK), 0.5),
        _normal(seed + 7, (batch, H), 1.0),
    )
    return (q, k, v, ig, fg), memory


def _heads_first(x: np.ndarray) -> np.ndarray:
    """[B, T, H, ...] -> [B, H, T, ...], the authors' layout."""
    return np.swapaxes(x, 1, 2)


def _loss(hs, memory):
    return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(jnp.cos(a)) for a in memory)


@functools.cache
def _grad_fn(method: str, chunk: int, flags: bool, eps: float = 1e-6):
    """jit(grad) of `_loss` over (q, k, v, ĩ, f̃, c, n, m) for one engine form; flags are arguments."""

    def loss(q, k, v, ig, fg, c, n, m, resets, mask):
        hs, final = mlstm(
            q,
            k,
            v,
            ig,
            fg,
            MLSTMMemory(c, n, m),
            resets=resets,
            mask=mask,
            method=method,
            chunk_size=chunk,
            eps=eps,
        )
        return _loss(hs, final), (hs, final)

    if not flags:
        return jax.jit(jax.grad(lambda *a: loss(*a, None, None), argnums=range(8), has_aux=True))
    return jax.jit(jax.grad(loss, argnums=range(8), has_aux=True))


# --------------------------------------------------------------------------------------------------
# Engine: the two forms agree
# --------------------------------------------------------------------------------------------------
ENGINE_CASES = [
    # (id, flags, chunk_size)
    ("resets-mask-chunk5", True, 5),
    ("resets-mask-chunk1", True, 1),
    ("plain-chunk>T", False, 64),
]


@pytest.mark.parametrize(("flags", "chunk"), [c[1:] for c in ENGINE_CASES], ids=[c[0] for c in ENGINE_CASES])
def test_chunked_equals_recurrent_values_and_gradients(flags, chunk):
    """In float64 from a given memory, so any difference beyond rounding is a real discrepancy; gradients
    wrt every input and every memory leaf; resets and padding inside and across chunks."""
    with jax.enable_x64(True):
        inputs, memory = _engine_inputs(0)
        args = [jnp.asarray(a) for a in (*inputs, *memory)]
        extra = (random_flags(1, (B, T), 0.2), random_flags(2, (B, T), 0.7)) if flags else ()
        g_c, (hs_c, f_c) = _grad_fn("chunked", chunk, flags)(*args, *extra)
        g_r, (hs_r, f_r) = _grad_fn("recurrent", 0, flags)(*args, *extra)
        assert hs_c.dtype == jnp.float64
        assert max_abs_diff((hs_c, f_c), (hs_r, f_r)) < 1e-12
        assert max_abs_diff(g_c, g_r) < 1e-10
        assert min(float(jnp.max(jnp.abs(g))) for g in g_r) > 1e-3  # every gradient is exercised
        if flags:
            np.testing.assert_array_equal(np.asarray(hs_c)[~np.asarray(extra[1])], 0.0)


# --------------------------------------------------------------------------------------------------
# Engine: against the authors' references
# --------------------------------------------------------------------------------------------------
def test_engine_matches_authors_recurrent_and_chunkwise_references():
    """From a given memory, without flags (the references have none): both forms against the loop of
    xlstm's `recurrent_step_stabilized_simple`, xlstm's `chunkwise_simple`, the loop of mlstm_kernels'
    `mlstm_recurrent_step__native_fw` and mlstm_kernels' `mlstm_chunkwise_fw`; outputs and final memory.
    The q-scaled references (chunkwise_simple, both of mlstm_kernels) keep √d_k times our C and n."""
    length, chunk = 16, 4
    (q, k, v, ig, fg), (c0, n0, m0) = _engine_inputs(10, length, dv=DK)
    qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
    igh, fgh = np.swapaxes(ig, 1, 2), np.swapaxes(fg, 1, 2)  # (B, NH, S)
    scale = math.sqrt(DK)
    refs = {}
    # xlstm: recurrent_step_stabilized_simple, token by token
    c, n, m, hs = c0, n0[..., None], m0[..., None, None], []
    for t in range(length):
        s = slice(t, t + 1)
        h, (c, n, m) = ref.recurrent_step_stabilized_simple(
            c, n, m, qh[:, :, s], kh[:, :, s], vh[:, :, s], igh[:, :, s, None], fgh[:, :, s, None]
        )
        hs.append(h[:, :, 0])
    refs["xlstm recurrent step"] = (np.stack(hs, axis=1), (c, n[..., 0], m[..., 0, 0]))
    # xlstm: chunkwise_simple
    h, (c, n, m) = ref.chunkwise_simple(qh, kh, vh, igh, fgh, scale * c0, scale * n0, m0, chunk)
    refs["xlstm chunkwise_simple"] = (_heads_first(h), (c / scale, n / scale, m[..., 0, 0]))
    # mlstm_kernels: mlstm_recurrent_step__native_fw, token by token
    c, n, m, hs = scale * c0, scale * n0, m0[..., None], []
    for t in range(length):
        h, (c, n, m) = ref.mlstm_recurrent_step__native_fw(
            c, n, m, qh[:, :, t], kh[:, :, t], vh[:, :, t], igh[:, :, t, None], fgh[:, :, t, None]
        )
        hs.append(h)
    refs["mlstm_kernels native step"] = (np.stack(hs, axis=1), (c / scale, n / scale, m[..., 0]))
    # mlstm_kernels: mlstm_chunkwise_fw
    h, (c, n, m) = ref.mlstm_chunkwise_fw(qh, kh, vh, igh, fgh, scale * c0, scale * n0, m0[..., None], chunk)
    refs["mlstm_kernels chunkwise"] = (_heads_first(h), (c / scale, n / scale, m[..., 0]))
    assert np.max(np.abs(refs["xlstm recurrent step"][0])) > 0.5

    for dtype, tol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        with jax.enable_x64(dtype == jnp.float64):
            args = [jnp.asarray(a, dtype) for a in (q, k, v, ig, fg)]
            mem = MLSTMMemory(*(jnp.asarray(a, dtype) for a in (c0, n0, m0)))

            @jax.jit
            def both(args, mem):
                return mlstm(*args, mem, chunk_size=chunk), mlstm(*args, mem, method="recurrent")

            for hs, final in both(args, mem):
                assert hs.dtype == dtype
                for name, (ref_hs, ref_final) in refs.items():
                    scale_ = max(1.0, float(np.max(np.abs(ref_hs))))
                    assert max_abs_diff(hs, ref_hs) < tol * scale_, name
                    assert max_abs_diff(tuple(final), ref_final) < tol * 10, name


def test_engine_matches_authors_parallel_form():
    """xlstm's `parallel_stabilized_simple` (the authors' training form) from the zero memory. Its
    stabiliser is the row maximum of log D, not the recurrent m (which also holds the initial m = 0
    decayed): the two differ only in the eps term, eps · e^m / max(|ñᵀq|, 1). With eps = 0 they agree to
    rounding; with the default eps to that term's size."""
    (q, k, v, ig, fg), _ = _engine_inputs(20, 16, dv=DK)
    qh, kh, vh = _heads_first(q), _heads_first(k), _heads_first(v)
    igh, fgh = _heads_first(ig)[..., None], _heads_first(fg)[..., None]
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (q, k, v, ig, fg)]
        run = jax.jit(lambda args, eps: mlstm(*args, chunk_size=5, eps=eps)[0])
        for eps, tol in ((0.0, 1e-12), (1e-6, 1e-5)):
            expected = _heads_first(ref.parallel_stabilized_simple(qh, kh, vh, igh, fgh, eps=eps))
            got = np.asarray(run(args, eps))
            assert np.max(np.abs(got - expected)) < tol * np.max(np.abs(expected)), eps


def paper_mlstm(q, k, v, ig, fg, memory, resets, mask, eps=1e-6, stabilised=True):
    """The mLSTM of Beck et al. 2024 (§2.3, with the stabilisation of its appendix), one token per step of
    a `lax.scan`, in the paper's layout (C ∈ R^{d_v × d_k}, written v kᵀ), in jax.numpy so that it
    differentiates:

        i_t = exp(ĩ_t), f_t = σ(f̃_t), k̂_t = k_t / √d_k
        C_t = f_t C_{t−1} + i_t v_t k̂_tᵀ ;  n_t = f_t n_{t−1} + i_t k̂_t ;  h_t = C_t q_t / max(|n_tᵀ q_t|, 1)
        stabilised: m_t = max(log f_t + m_{t−1}, ĩ_t); i'_t = exp(ĩ_t − m_t), f'_t = exp(log f_t +
        m_{t−1} − m_t) replace i_t, f_t and exp(−m_t) replaces the max's 1; plus the authors' eps.

    Unstabilised (`stabilised=False`, valid for moderate gates) the memory holds C̃ = e^m C, ñ = e^m n.
    A reset returns to the zero memory (m = 0) before its token; padding (which wins over a reset) leaves
    the memory unchanged and outputs 0.
    """
    c = jnp.swapaxes(memory.c, -1, -2)  # [B, H, d_v, d_k]
    n, m = memory.n, memory.m
    if not stabilised:
        c, n = c * jnp.exp(m)[..., None, None], n * jnp.exp(m)[..., None]

    def step(carry, token):
        c, n, m = carry
        q_t, k_t, v_t, i_t, f_t, reset, keep = token
        reset = (reset & keep)[:, None]
        c, n, m = (
            jnp.where(reset[..., None, None], 0.0, c),
            jnp.where(reset[..., None], 0.0, n),
            jnp.where(reset, 0.0, m),
        )
        k_t = k_t / math.sqrt(q.shape[-1])
        log_f = jax.nn.log_sigmoid(f_t)
        if stabilised:
            m_new = jnp.maximum(log_f + m, i_t)
            i_act, f_act, floor = jnp.exp(i_t - m_new), jnp.exp(log_f + m - m_new), jnp.exp(-m_new)
        else:
            m_new, i_act, f_act, floor = m, jnp.exp(i_t), jnp.exp(log_f), 1.0
        c_new = f_act[..., None, None] * c + i_act[..., None, None] * v_t[..., :, None] * k_t[..., None, :]
        n_new = f_act[..., None] * n + i_act[..., None] * k_t
        den = jnp.maximum(jnp.abs(jnp.sum(n_new * q_t, -1)), floor) + eps
        h = jnp.einsum("bhvk,bhk->bhv", c_new, q_t) / den[..., None]
        keep = keep[:, None]
        c_new, n_new = jnp.where(keep[..., None, None], c_new, c), jnp.where(keep[..., None], n_new, n)
        return (c_new, n_new, jnp.where(keep, m_new, m)), jnp.where(keep[..., None], h, 0.0)

    tokens = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, ig, fg, resets, mask))
    (c, n, m), hs = jax.lax.scan(step, (c, n, m), tokens)
    return jnp.moveaxis(hs, 0, 1), MLSTMMemory(jnp.swapaxes(c, -1, -2), n, m)


def test_engine_matches_the_papers_equations_values_and_gradients():
    """The chunked form against `paper_mlstm` in float64, from a given memory with resets and padding:
    values and gradients wrt every input and memory leaf. And the stabilisation itself: with eps = 0 the
    stabilised engine equals the paper's unstabilised recurrence (exp(ĩ) and σ(f̃) used directly)."""
    with jax.enable_x64(True):
        inputs, memory = _engine_inputs(30)
        args = [jnp.asarray(a) for a in (*inputs, *memory)]
        resets, mask = random_flags(31, (B, T), 0.2), random_flags(32, (B, T), 0.7)

        def paper_loss(q, k, v, ig, fg, c, n, m, resets, mask):
            hs, final = paper_mlstm(q, k, v, ig, fg, MLSTMMemory(c, n, m), resets, mask)
            return _loss(hs, final), (hs, final)

        g_p, out_p = jax.jit(jax.grad(paper_loss, argnums=range(8), has_aux=True))(*args, resets, mask)
        g_c, out_c = _grad_fn("chunked", 5, True)(*args, resets, mask)
        assert max_abs_diff(out_c, out_p) < 1e-12
        assert max_abs_diff(g_c, g_p) < 1e-10

        # eps = 0: the stabiliser changes nothing (the memory is reported stabilised, C = e^-m C̃)
        unstab = jax.jit(
            lambda a, r, k: paper_mlstm(*a[:5], MLSTMMemory(*a[5:]), r, k, eps=0.0, stabilised=False)
        )
        hs_u, (c_u, n_u, _) = unstab(args, resets, mask)
        hs_s, final = jax.jit(
            lambda a, r, k: mlstm(*a[:5], MLSTMMemory(*a[5:]), resets=r, mask=k, chunk_size=5, eps=0.0)
        )(args, resets, mask)
        assert np.max(np.abs(np.asarray(hs_s - hs_u))) < 1e-11 * float(jnp.max(jnp.abs(hs_u)))
        em = jnp.exp(final.m)
        assert max_abs_diff((final.c * em[..., None, None], final.n * em[..., None]), (c_u, n_u)) < 1e-9


# --------------------------------------------------------------------------------------------------
# Engine: numerics
# --------------------------------------------------------------------------------------------------
def _extreme_inputs(length: int = 2048):
    """Input gates ±50; forget gates near 0 (f̃ ≈ −50: log f ≈ −50) and near 1 (f̃ ≈ +50: f = 1 − 2e-22)
    in runs of 1 to 200 tokens, with moderate stretches between; 2 rows of 2 heads. Row 0 has random q,
    k; row 1 positive ones, so that its normaliser nᵀq cannot cancel (see the test)."""
    rng = np.random.default_rng(40)
    shape = (2, length, H)
    ig = rng.choice([-50.0, 50.0], size=shape) + rng.standard_normal(shape)
    runs = np.repeat(rng.choice([-50.0, 50.0, 0.0], size=2 * length), rng.integers(1, 200, size=2 * length))
    fg = runs[: 2 * length].reshape(2, length, 1) + 3 * rng.standard_normal(shape)
    q, k, v = (rng.standard_normal((2, length, H, DK)) for _ in range(3))
    q[1], k[1] = np.abs(q[1]) + 0.2, np.abs(k[1]) + 0.2
    return q, k, v, ig, fg


def test_extreme_gates_over_2048_tokens():
    """Input gates ±50 and forget gates near 0 and 1 over 2048 tokens, float32: chunked and recurrent
    values and gradients are finite and agree with float64 (the authors' recurrent step in NumPy for the
    values, the float64 engine for the gradients).

    The stabiliser keeps every exponent ≤ 0; what float32 cannot fix is the normaliser's own
    conditioning. With m ≈ 50 the floor e^{−m} is negligible, so h = Cᵀq / |nᵀq| where nᵀq may cancel to
    near 0 (row 0: h up to ~3000): there any float error is amplified by (|C||q| + |h||n||q|) / den, in
    the authors' recurrence as in the chunked form, and both are checked against that bound. Row 1's
    positive q, k keep nᵀq away from 0, and there values and gradients match float64 to ~1e-5."""
    q, k, v, ig, fg = _extreme_inputs()
    weights = np.random.default_rng(41).standard_normal(v.shape)
    c, n, m = np.zeros((2, H, DK, DK)), np.zeros((2, H, DK, 1)), np.zeros((2, H, 1, 1))
    expected, bound = [], []
    for t in range(q.shape[1]):
        q_t, k_t, v_t = (_heads_first(a[:, t : t + 1]) for a in (q, k, v))
        h, (c, n, m) = ref.recurrent_step_stabilized_simple(
            c, n, m, q_t, k_t, v_t, ig[:, t, :, None, None], fg[:, t, :, None, None]
        )
        den = np.maximum(np.abs(np.sum(q_t[:, :, 0] * n[..., 0], -1)), np.exp(-m[..., 0, 0]))
        norms = np.linalg.norm(q_t[:, :, 0], axis=-1) / den
        expected.append(h[:, :, 0])
        bound.append(
            norms
            * (
                np.linalg.norm(c, axis=(-2, -1))
                + np.max(np.abs(h[:, :, 0]), -1) * np.linalg.norm(n[..., 0], axis=-1)
            )
        )
    expected, bound = np.stack(expected, axis=1), np.stack(bound, axis=1)  # [2, T, H, d], [2, T, H]
    assert np.all(np.isfinite(expected)) and np.max(np.abs(expected[0])) > 100  # row 0 is ill-conditioned

    def run(method, w, *a):
        loss = lambda *a: (lambda hs: (jnp.sum(hs * w), hs))(mlstm(*a, method=method, chunk_size=64)[0])
        return jax.grad(loss, argnums=range(5), has_aux=True)(*a)

    f32 = [jnp.asarray(a, jnp.float32) for a in (weights, q, k, v, ig, fg)]
    outs = [jax.jit(functools.partial(run, method))(*f32) for method in ("chunked", "recurrent")]
    with jax.enable_x64(True):
        g64, _ = jax.jit(functools.partial(run, "chunked"))(
            *(jnp.asarray(a) for a in (weights, q, k, v, ig, fg))
        )
        g64 = [np.asarray(g)[1] for g in g64]
    for g32, hs32 in outs:
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in (*g32, hs32))
        err = np.max(np.abs(np.asarray(hs32) - expected), axis=-1)
        assert np.max(err[0] / bound[0]) < 3e-5
        assert np.max(err[1]) < 2e-5 * np.max(np.abs(expected[1]))
        for got, want in zip(g32, g64, strict=True):
            assert np.max(np.abs(np.asarray(got)[1] - want)) < 2e-5 * np.max(np.abs(want))


def test_chunked_gradients_at_extreme_forget_gates():
    """Forget gates saturated per head over 2040 tokens, float32, chunks of 64 (the last one ends in the
    engine's own padding) and the last 5 tokens padded: f̃ = −14, −30 and +14 (f ≈ 1e-6, e^-30 and
    1 − 1e-6), input gates ~N(0, 1), positive q and k (a well-conditioned normaliser, see
    `test_extreme_gates_over_2048_tokens`). The chunked form's gradients wrt q, k, v, ĩ, f̃ and the
    memory (C, n, m) equal the float64 token scan's, each leaf to 1e-4 of its own largest entry and
    d/df̃ head by head to 1e-4 of that head's largest (measured ≤ 2e-6). Before the chunk body took
    F_ii = 0 as a constant and the last row's F_Lj from the tokens it spans (`mlstm._chunk_body`),
    d/df̃ was off by 0.2% in the f ≈ 1e-6 head and by 40% in the e^-30 head (1.4% from the padded end
    alone). The float32 token scan is no reference: over 2040 tokens of f ≈ 1 its own gradients are
    ~2e-4 off."""
    length, heads = 2040, 3
    rng = np.random.default_rng(42)
    q, k = (np.abs(rng.standard_normal((1, length, heads, DK))) + 0.2 for _ in range(2))
    v = rng.standard_normal((1, length, heads, DV))
    ig = rng.standard_normal((1, length, heads))
    fg = np.broadcast_to(np.asarray([-14.0, -30.0, 14.0]), (1, length, heads))
    memory = (
        rng.standard_normal((1, heads, DK, DV)),
        np.abs(rng.standard_normal((1, heads, DK))),
        np.ones((1, heads)),
    )
    mask = jnp.arange(length)[None] < length - 5
    chunked = lambda *a: mlstm_chunked(*a[:5], MLSTMMemory(*a[5:]), mask=mask, chunk_size=64)
    recurrent = lambda *a: mlstm_recurrent(*a[:5], MLSTMMemory(*a[5:]), mask=mask)
    g32, g64 = float32_and_float64_gradients(chunked, recurrent, (q, k, v, ig, fg, *memory))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[4], g64[4], axis=-1)) < 1e-4


def test_bfloat16_inputs_float32_memory():
    """bfloat16 q, k, v and gates: the recurrence, its memory and its outputs are float32, finite, and
    within bfloat16 rounding of the float32 run."""
    inputs, memory = _engine_inputs(50)
    f32 = [jnp.asarray(a, jnp.float32) for a in inputs]
    bf16 = [a.astype(jnp.bfloat16) for a in f32]
    mem = MLSTMMemory(*(jnp.asarray(a, jnp.float32) for a in memory))
    resets, mask = random_flags(51, (B, T), 0.2), random_flags(52, (B, T), 0.8)
    run = jax.jit(lambda a: mlstm_chunked(*a, mem, resets=resets, mask=mask, chunk_size=8))
    (hs16, final16), (hs32, _) = run(bf16), run([a.astype(jnp.bfloat16).astype(jnp.float32) for a in f32])
    assert hs16.dtype == jnp.float32 and all(a.dtype == jnp.float32 for a in final16)
    assert bool(jnp.all(jnp.isfinite(hs16)))
    np.testing.assert_allclose(hs16, hs32, atol=1e-5)  # bf16 inputs are computed on exactly, in float32


def test_chunked_backward_stores_no_per_token_states():
    """The chunk body is rematerialised: autodiff keeps the inputs and one memory per chunk, not a
    memory per token (which the token scan does keep: the check can tell them apart)."""
    length, chunk = 64, 8
    inputs, memory = _engine_inputs(60, length)
    args = [jnp.asarray(a, jnp.float32) for a in inputs]
    mem = MLSTMMemory(*(jnp.asarray(a, jnp.float32) for a in memory))
    resets, mask = random_flags(61, (B, length), 0.1), random_flags(62, (B, length), 0.9)

    def residual_sizes(fn):
        vjp = lambda *a: jax.vjp(lambda *a: fn(*a, mem, resets=resets, mask=mask)[0], *a)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, *args))]

    per_token_states = length * B * H * DK * DV
    chunked = residual_sizes(lambda *a, **kw: mlstm_chunked(*a, **kw, chunk_size=chunk))
    assert max(chunked) < per_token_states, chunked
    assert sum(chunked) < 12 * B * length * H * (DK + DV + 2) + 2 * (length // chunk) * B * H * DK * (DV + 2)
    assert max(residual_sizes(mlstm_recurrent)) >= per_token_states


def test_engine_empty_sequence_and_bad_inputs():
    inputs, memory = _engine_inputs(70)
    q, k, v, ig, fg = (jnp.asarray(a, jnp.float32) for a in inputs)
    mem = MLSTMMemory(*(jnp.asarray(a, jnp.float32) for a in memory))
    hs, final = mlstm_chunked(q[:, :0], k[:, :0], v[:, :0], ig[:, :0], fg[:, :0], mem)
    assert hs.shape == (B, 0, H, DV)
    assert max_abs_diff(final, mem) == 0.0
    with pytest.raises(ValueError, match=r"`fgate` has shape \(2, 21\), expected \(2, 21, 2\)"):
        mlstm(q, k, v, ig, fg[..., 0])
    with pytest.raises(ValueError, match=r"`memory.m` has shape \(2,\), expected \(2, 2\)"):
        mlstm(q, k, v, ig, fg, mem._replace(m=mem.m[:, 0]))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        mlstm_chunked(q, k, v, ig, fg, chunk_size=0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        mlstm(q, k, v, ig, fg, method="fast")


# --------------------------------------------------------------------------------------------------
# Cells: against the authors' layers
# --------------------------------------------------------------------------------------------------
def _mlstm_torch_params(seed: int, d_model: int, cell: cells.MLSTM) -> dict[str, np.ndarray]:
    """Random parameters of the authors' `mLSTMLayer` in torch's layouts, with input-dependent gates
    (their init has zero gate weights) and a non-trivial norm weight and skip."""
    di, nh, bs, ks = cell.inner_size, cell.num_heads, cell.qkv_block_size, cell.conv_size
    shapes = {
        "proj_up.weight": ((2 * di, d_model), 0.5),
        "conv1d.conv.weight": ((di, 1, ks), 0.5),
        "conv1d.conv.bias": ((di,), 0.5),
        "q_proj.weight": ((di // bs, bs, bs), 0.5),
        "k_proj.weight": ((di // bs, bs, bs), 0.5),
        "v_proj.weight": ((di // bs, bs, bs), 0.5),
        "mlstm_cell.igate.weight": ((nh, 3 * di), 0.5),
        "mlstm_cell.igate.bias": ((nh,), 1.0),
        "mlstm_cell.fgate.weight": ((nh, 3 * di), 0.5),
        "mlstm_cell.fgate.bias": ((nh,), 1.0),
        "mlstm_cell.outnorm.weight": ((di,), 0.3),
        "learnable_skip": ((di,), 1.0),
        "proj_down.weight": ((d_model, di), 0.3),
    }
    p = {name: _normal(seed + i, shape, s) for i, (name, (shape, s)) in enumerate(shapes.items())}
    p["mlstm_cell.fgate.bias"] += 3.0
    return p


def _mlstm_params_from_torch(p: dict[str, np.ndarray], cell: cells.MLSTM) -> dict[str, np.ndarray]:
    di, nh = cell.inner_size, cell.num_heads
    return {
        "w_x": p["proj_up.weight"][:di].T,
        "w_z": p["proj_up.weight"][di:].T,
        "conv_w": p["conv1d.conv.weight"][:, 0, :].T,
        "conv_b": p["conv1d.conv.bias"],
        "w_q": np.swapaxes(p["q_proj.weight"], 1, 2),
        "w_k": np.swapaxes(p["k_proj.weight"], 1, 2),
        "w_v": np.swapaxes(p["v_proj.weight"], 1, 2),
        "w_i": p["mlstm_cell.igate.weight"].T.reshape(3, di, nh),
        "b_i": p["mlstm_cell.igate.bias"],
        "w_f": p["mlstm_cell.fgate.weight"].T.reshape(3, di, nh),
        "b_f": p["mlstm_cell.fgate.bias"],
        "norm_w": p["mlstm_cell.outnorm.weight"].reshape(nh, -1),
        "skip": p["learnable_skip"],
        "w_down": p["proj_down.weight"].T,
    }


def _slstm_torch_params(seed: int, cell: cells.SLSTM) -> dict[str, np.ndarray]:
    """Random parameters of the authors' `sLSTMLayer` (headwise gate projections, external cell layouts)."""
    nh, dh, hid = cell.num_heads, cell.head_dim, cell.hidden_size
    shapes = {f"{g}gate.weight": ((nh, dh, dh), 0.6) for g in "ifzo"}
    shapes.update(
        {
            "slstm_cell.recurrent_kernel": ((nh, dh, 4, dh), 0.5),
            "slstm_cell.bias": ((nh, 4, dh), 1.0),
            "group_norm.weight": ((hid,), 0.3),
        }
    )
    if cell.conv_size > 0:
        shapes.update(
            {"conv1d.conv.weight": ((hid, 1, cell.conv_size), 0.5), "conv1d.conv.bias": ((hid,), 0.5)}
        )
    return {name: _normal(seed + i, shape, s) for i, (name, (shape, s)) in enumerate(shapes.items())}


def _slstm_params_from_torch(p: dict[str, np.ndarray], cell: cells.SLSTM) -> dict[str, np.ndarray]:
    nh, dh = cell.num_heads, cell.head_dim

    def dense(w):  # headwise (NH, out, in) -> dense [input, H, d]: zero off the diagonal blocks
        full = np.zeros((nh, dh, nh, dh))
        for h in range(nh):
            full[h, :, h, :] = w[h].T
        return full.reshape(nh * dh, nh, dh)

    params = {
        # the authors' layer feeds i from its module `fgate` and f from `igate`
        "w_i": dense(p["fgate.weight"]),
        "w_f": dense(p["igate.weight"]),
        "w_z": dense(p["zgate.weight"]),
        "w_o": dense(p["ogate.weight"]),
        "r": p["slstm_cell.recurrent_kernel"],
        "b": np.transpose(p["slstm_cell.bias"], (1, 0, 2)),
        "norm_w": p["group_norm.weight"].reshape(nh, dh),
    }
    if cell.conv_size > 0:
        params.update(conv_w=p["conv1d.conv.weight"][:, 0, :].T, conv_b=p["conv1d.conv.bias"])
    return params


def _both_precisions(cell, params, xs):
    """(ys, final state) of `cell.apply` in float32 and in float64."""
    out32 = jax.jit(cell.apply)(
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), jnp.asarray(xs, jnp.float32)
    )
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        state64 = cell64.initial_state(xs.shape[:1], jnp.float64)
        out64 = jax.jit(cell64.apply)(jax.tree.map(jnp.asarray, params), jnp.asarray(xs), state64)
        assert out64[0].dtype == jnp.float64
        out64 = jax.tree.map(np.asarray, out64)
    return out32, out64


def test_mlstm_matches_the_authors_layer():
    """`MLSTM` (chunked, chunks of 4 over 11 tokens) computes the authors' `mLSTMLayer`: the step loop with
    the recurrent backend (outputs and final c, n, m) to rounding in float64 and 1e-5 in float32; the
    parallel backend's forward to its eps term (see test_engine_matches_authors_parallel_form)."""
    d_model, length = 6, 11
    cell = cells.MLSTM(d_model=d_model, num_heads=2, qkv_block_size=3, chunk_size=4)
    p = _mlstm_torch_params(80, d_model, cell)
    xs = _normal(90, (B, length, d_model))
    ys_step, (c, n, m) = ref.mlstm_layer_step_loop(p, xs, cell.num_heads)
    ys_par = ref.mlstm_layer_forward(p, xs, cell.num_heads)
    scale = np.max(np.abs(ys_step))
    assert scale > 0.5
    (ys32, _), (ys64, state64) = _both_precisions(cell, _mlstm_params_from_torch(p, cell), xs)
    assert np.max(np.abs(ys64 - ys_step)) < 1e-11 * scale
    assert max_abs_diff((state64.c, state64.n, state64.m), (c, n, m)) < 1e-10
    assert np.max(np.abs(np.asarray(ys32) - ys_step)) < 1e-5 * scale
    assert np.max(np.abs(ys64 - ys_par)) < 1e-6 * scale


def test_slstm_matches_the_authors_layer():
    """`SLSTM` computes the authors' `sLSTMLayer` with the vanilla cell (headwise gate projections as
    dense ones with zero off-diagonal blocks): outputs and the final (h, c, n, m), float64 to rounding,
    float32 to 1e-5; with and without the conv."""
    length = 13
    for cell in (
        cells.SLSTM(hidden_size=6, num_heads=2, conv_size=4),
        cells.SLSTM(hidden_size=6, num_heads=3, conv_size=0),
    ):
        p = _slstm_torch_params(100, cell)
        xs = _normal(110, (B, length, cell.hidden_size))
        expected, final = ref.slstm_layer_forward(p, xs, cell.num_heads)
        (ys32, _), (ys64, state64) = _both_precisions(cell, _slstm_params_from_torch(p, cell), xs)
        assert np.max(np.abs(expected)) > 0.5
        np.testing.assert_allclose(ys64, expected, atol=1e-11)
        np.testing.assert_allclose(np.stack([state64.h, state64.c, state64.n, state64.m]), final, atol=1e-11)
        np.testing.assert_allclose(np.asarray(ys32), expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Cells: the sLSTM against the paper's equations; numerics
# --------------------------------------------------------------------------------------------------
def paper_slstm(params, xs, state, resets, mask, num_heads, norm_eps=1e-5, stabilised=True):
    """The sLSTM of Beck et al. 2024 (§2.2, with the stabilisation of its appendix) inside the layer that
    `SLSTM` is (docs/cells.md: a causal conv + SiLU feeding ĩ and f̃, the per-head LayerNorm after h),
    one token per step of a `lax.scan`, in jax.numpy so that it differentiates. Input weights as dense
    [input, hidden] matrices, the recurrent matrices as dense block-diagonal [hidden, hidden] ones built
    from the heads' blocks (row vectors: h R_g):

        x_c = SiLU(Σ_k conv_w[k] ⊙ x_{t−K+1+k} + conv_b)        (no conv: x_c = x_t)
        ĩ, f̃ = W_i x_c, W_f x_c ;  z̃, õ = W_z x_t, W_o x_t      each + R_g h_{t−1} + b_g
        i_t = exp(ĩ_t), f_t = σ(f̃_t), z_t = tanh(z̃_t), o_t = σ(õ_t)      (the cell's forget gate is the
                                                                 paper's sigmoid one, not exp(f̃_t))
        c_t = f_t c_{t−1} + i_t z_t ;  n_t = f_t n_{t−1} + i_t ;  h_t = o_t c_t / n_t
        stabilised: m_t = max(log f_t + m_{t−1}, log i_t), and i'_t = exp(log i_t − m_t),
        f'_t = exp(log f_t + m_{t−1} − m_t) replace i_t, f_t
        y_t = LN_heads(h_t): mean and biased variance over each head's units, scale 1 + norm_w

    The paper's max holds at every token, the first after the zero state too, where the authors' code
    (and the cell) take m = ĩ instead; the two then differ by a factor common to c and n, so h, c·e^m
    and n·e^m agree, and so do all later outputs. Unstabilised (`stabilised=False`) the state holds the
    paper's c̃ = e^m c, ñ = e^m n (returned with m = 0). A reset returns to the zero state (conv window
    included) before its token; padding (which wins over a reset) leaves the state unchanged, output 0.
    """
    bsz, _, width = xs.shape
    hidden = params["norm_w"].size
    d = hidden // num_heads
    w = {g: params[f"w_{g}"].reshape(width, hidden) for g in "ifzo"}
    b = {g: params["b"][j].reshape(hidden) for j, g in enumerate("ifzo")}
    rec = {
        g: jax.scipy.linalg.block_diag(*(params["r"][h, :, j, :] for h in range(num_heads)))
        for j, g in enumerate("ifzo")
    }
    window, h, c, n, m = state
    if not stabilised:
        c, n, m = c * jnp.exp(m), n * jnp.exp(m), jnp.zeros_like(m)
    where = lambda flag, a, b: jnp.where(flag.reshape(-1, *(1,) * (a.ndim - 1)), a, b)

    def step(carry, token):
        x, reset, keep = token
        window, h, c, n, m = (where(reset & keep, jnp.zeros_like(a), a) for a in carry)
        if "conv_w" in params:
            full = jnp.concatenate([window, x[:, None]], axis=1)  # [B, K, input]
            u = jnp.sum(full * params["conv_w"], axis=1) + params["conv_b"]
            x_c, window = u / (1.0 + jnp.exp(-u)), full[:, 1:]
        else:
            x_c = x
        pre = {g: (x_c if g in "if" else x) @ w[g] + h @ rec[g] + b[g] for g in "ifzo"}
        log_i, log_f = pre["i"], -jnp.logaddexp(0.0, -pre["f"])
        z, o = jnp.tanh(pre["z"]), 1.0 / (1.0 + jnp.exp(-pre["o"]))
        if stabilised:
            m_new = jnp.maximum(log_f + m, log_i)
            i_act, f_act = jnp.exp(log_i - m_new), jnp.exp(log_f + m - m_new)
        else:
            m_new, i_act, f_act = m, jnp.exp(log_i), jnp.exp(log_f)
        c, n = f_act * c + i_act * z, f_act * n + i_act
        h = o * c / n
        heads = h.reshape(bsz, num_heads, d)
        centred = heads - jnp.mean(heads, axis=-1, keepdims=True)
        var = jnp.mean(centred**2, axis=-1, keepdims=True)
        y = (centred / jnp.sqrt(var + norm_eps) * (1.0 + params["norm_w"])).reshape(bsz, hidden)
        new = tuple(where(keep, a, old) for a, old in zip((window, h, c, n, m_new), carry, strict=True))
        return new, where(keep, y, jnp.zeros_like(y))

    tokens = tuple(jnp.moveaxis(a, 1, 0) for a in (xs, resets, mask))
    final, ys = jax.lax.scan(step, (window, h, c, n, m), tokens)
    return jnp.moveaxis(ys, 0, 1), cells.SLSTMState(*final)


def _slstm_loss(ys, final, weights):
    """A loss that reaches every output and every leaf of the final state, the state through what the
    choice of stabiliser leaves unchanged: h, the conv window, c·e^m and n·e^m."""
    scale = jnp.exp(final.m)
    return (
        jnp.sum(jnp.sin(ys) * weights)
        + jnp.sum(jnp.cos(final.h))
        + jnp.sum(jnp.sin(final.conv))
        + jnp.sum(jnp.sin(final.c * scale))
        + jnp.sum(jnp.cos(final.n * scale))
    )


def _slstm_random_params(seed: int, cell: cells.SLSTM, width: int) -> dict[str, np.ndarray]:
    """Random parameters in the cell's layouts, none trivial (R, the biases and the norm weight are 0 at
    init): input gates spread over about ±10, so that each side of the stabiliser's max wins somewhere,
    and forget gates mostly remembering."""
    nh, d = cell.num_heads, cell.head_dim
    shapes = {f"w_{g}": ((width, nh, d), 0.6) for g in "ifzo"}
    shapes.update(r=((nh, d, 4, d), 0.5), b=((4, nh, d), 1.0), norm_w=((nh, d), 0.3))
    if cell.conv_size > 0:
        shapes.update(conv_w=((cell.conv_size, width), 0.5), conv_b=((width,), 0.5))
    p = {name: _normal(seed + i, shape, s) for i, (name, (shape, s)) in enumerate(shapes.items())}
    p["w_i"] *= 3.0
    p["b"][0] *= 2.0
    p["b"][1] += 1.0
    return p


SLSTM_PAPER_CASES = [
    # (id, cell, input width)
    ("conv4-2heads", cells.SLSTM(hidden_size=6, num_heads=2, conv_size=4), 6),
    ("noconv-3heads", cells.SLSTM(hidden_size=6, num_heads=3, conv_size=0), 5),
]


@pytest.mark.parametrize(
    ("cell", "width"), [c[1:] for c in SLSTM_PAPER_CASES], ids=[c[0] for c in SLSTM_PAPER_CASES]
)
def test_slstm_matches_the_papers_equations_values_and_gradients(cell, width):
    """`SLSTM.apply` against `paper_slstm` in float64, from a given state (conv window, h, c, n > 0, m)
    with resets and padding: outputs, the final h and conv window, and c·e^m, n·e^m (the stabiliser-free
    state) to rounding; gradients wrt every parameter, the inputs and every leaf of the initial state to
    1e-10 of their size. And the stabilisation itself: the paper's unstabilised recurrence (exp(ĩ), σ(f̃)
    used directly) gives the same outputs, and its c̃, ñ are the cell's c·e^m, n·e^m."""
    bsz = 3
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        params = jax.tree.map(jnp.asarray, _slstm_random_params(150, cell, width))
        xs = jnp.asarray(_normal(160, (bsz, T, width)))
        hid = cell.hidden_size
        state = cells.SLSTMState(
            conv=jnp.asarray(_normal(161, (bsz, max(cell.conv_size - 1, 0), hid), 0.5)),
            h=jnp.asarray(_normal(162, (bsz, hid), 0.5)),
            c=jnp.asarray(_normal(163, (bsz, hid))),
            n=jnp.asarray(1.0 + 2.0 * np.random.default_rng(164).random((bsz, hid))),
            m=jnp.asarray(_normal(165, (bsz, hid))),
        )
        resets = random_flags(166, (bsz, T), 0.2).at[0, 0].set(True)  # row 0 starts from the zero state
        mask = random_flags(167, (bsz, T), 0.75).at[0, 0].set(True)
        weights = jnp.asarray(_normal(168, (bsz, T, hid)))

        def grad_fn(fn):
            def loss(params, xs, state):
                ys, final = fn(params, xs, state)
                return _slstm_loss(ys, final, weights), (ys, final)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))

        g_c, (ys_c, f_c) = grad_fn(lambda p, x, s: cell64.apply(p, x, s, resets=resets, mask=mask))(
            params, xs, state
        )
        g_p, (ys_p, f_p) = grad_fn(lambda p, x, s: paper_slstm(p, x, s, resets, mask, cell.num_heads))(
            params, xs, state
        )
        assert ys_c.dtype == jnp.float64 and f_c.c.dtype == jnp.float64
        assert float(jnp.max(jnp.abs(ys_p))) > 1.0
        invariant = lambda f: (f.h, f.conv, f.c * jnp.exp(f.m), f.n * jnp.exp(f.m))
        assert max_abs_diff(ys_c, ys_p) < 1e-12
        for got, want in zip(invariant(f_c), invariant(f_p), strict=True):
            assert max_abs_diff(got, want) < 1e-12 * max(1.0, float(np.max(np.abs(want), initial=0)))
        # after a reset where log σ(f̃) > ĩ the paper's m and the cell's differ: the comparison above is
        # of the stabiliser-free state, not of two identical computations
        assert max_abs_diff(f_c.m, f_p.m) > 1.0, "no reset where the two stabilisers differ"
        for (path, got), want in zip(
            jax.tree_util.tree_flatten_with_path(g_c)[0], jax.tree.leaves(g_p), strict=True
        ):
            name = jax.tree_util.keystr(path)
            if want.size == 0:  # no conv: an empty window
                continue
            size = float(jnp.max(jnp.abs(want)))
            assert size > 1e-5, name  # every gradient is exercised (the initial m: 6e-4 without conv)
            assert float(jnp.max(jnp.abs(got - want))) < 1e-10 * size, name

        ys_u, f_u = jax.jit(
            lambda p, x, s: paper_slstm(p, x, s, resets, mask, cell.num_heads, stabilised=False)
        )(params, xs, state)
        assert max_abs_diff(ys_u, ys_c) < 1e-11
        for got, want in zip((f_u.c, f_u.n), invariant(f_c)[2:], strict=True):
            assert max_abs_diff(got, want) < 1e-12 * float(jnp.max(jnp.abs(want)))


def _slstm_extreme_case(length: int = 2048):
    """An `SLSTM` of 2 heads of 4 without conv whose 4 input features drive its gates directly: feature 0
    the input gates (weights 1 ± 5%) at ±30 and ±90 (beyond float32's exp range: e^88.8 overflows), feature
    1 the forget gates at −30 (f ≈ 1e-13), +30 (f = 1 − 1e-13) or 0, in runs of 1 to 200 tokens, features
    2 and 3 mostly z̃ and õ. R ~ U(±0.3) and |h| < 1, so the recurrence moves a gate by less than 1.2."""
    cell = cells.SLSTM(hidden_size=8, num_heads=2, conv_size=0)
    rng = np.random.default_rng(170)
    w = {g: np.zeros((4, 8)) for g in "ifzo"}
    w["i"][0] = 1.0 + 0.05 * rng.standard_normal(8)
    w["f"][1] = 1.0 + 0.05 * rng.standard_normal(8)
    for g in "ifzo":
        w[g][2:] += (0.3 if g in "if" else 1.0) * rng.standard_normal((2, 8))
    params = {f"w_{g}": w[g].reshape(4, 2, 4) for g in "ifzo"}
    params.update(
        r=rng.uniform(-0.3, 0.3, (2, 4, 4, 4)),
        b=0.5 * rng.standard_normal((4, 2, 4)),
        norm_w=0.3 * rng.standard_normal((2, 4)),
    )
    shape = (2, length)
    xs = rng.standard_normal((*shape, 4))
    xs[..., 0] += rng.choice([-90.0, -30.0, 30.0, 90.0], size=shape)
    runs = np.repeat(rng.choice([-30.0, 30.0, 0.0], size=2 * length), rng.integers(1, 200, size=2 * length))
    xs[..., 1] += runs[: 2 * length].reshape(shape)
    return cell, params, xs


def test_slstm_extreme_gates_over_2048_tokens():
    """Input gates ±30 and ±90, forget gates near 0 and near 1, over 2048 tokens in float32
    (`_slstm_extreme_case`): outputs, final state and gradients (wrt every parameter and the inputs) are
    finite; `apply` equals a loop of `step` (outputs to 1e-5, the final state to 1e-5 relative);
    against `paper_slstm` in float64, outputs agree to 3e-4, the final state to 3e-5 relative and the
    gradients to 1e-4 of their size. The stabiliser is what makes this work: the paper's unstabilised
    c̃ = e^m c, ñ = e^m n leave float32's range on both sides (log ñ = m + log n above 88.8 and below
    −87.4, read from the step loop's states), and the unstabilised recurrence run in float32 gives
    non-finite outputs; the stabilised n stays in [1, t] and |c| ≤ n."""
    cell, params, xs = _slstm_extreme_case()
    length = xs.shape[1]
    weights = _normal(171, (2, length, cell.hidden_size))
    no_flags = np.zeros((2, length), bool), np.ones((2, length), bool)

    def grads_and_outputs(fn, params, xs, weights):
        loss = lambda p, x: (lambda out: (jnp.sum(out[0] * weights), out))(fn(p, x))
        return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, xs)

    @jax.jit
    def run32(params, xs, weights):
        grads, (ys, final) = grads_and_outputs(cell.apply, params, xs, weights)
        step = lambda s, x: (lambda s, y: (s, (y, s)))(*cell.step(params, s, x))
        init = cell.initial_state((2,))
        _, (ys_step, states) = jax.lax.scan(step, init, jnp.swapaxes(xs, 0, 1))
        ys_unstab, _ = paper_slstm(params, xs, init, *no_flags, cell.num_heads, stabilised=False)
        return grads, ys, final, jnp.swapaxes(ys_step, 0, 1), states, ys_unstab

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    grads, ys, final, ys_step, states, ys_unstab = run32(jax.tree.map(f32, params), f32(xs), f32(weights))
    with jax.enable_x64(True):
        init64 = cell.initial_state((2,), jnp.float64)
        paper = lambda p, x: paper_slstm(p, x, init64, *no_flags, cell.num_heads)
        g64, (ys64, final64) = jax.jit(functools.partial(grads_and_outputs, paper))(
            jax.tree.map(jnp.asarray, params), jnp.asarray(xs), jnp.asarray(weights)
        )
        g64, ys64, final64 = jax.tree.map(np.asarray, (g64, ys64, final64))

    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves((grads, ys, final)))
    # apply == a loop of step (the same float32 operations, but for the projections' summation order)
    assert max_abs_diff(ys, ys_step) < 1e-5
    for got, want in zip(final, jax.tree.map(lambda a: a[-1], states), strict=True):
        assert max_abs_diff(got, want) < 1e-5 * max(1.0, float(np.max(np.abs(want), initial=0)))
    # against float64: an input gate of 90 carries float32's absolute error of ~1e-5 into i = e^{ĩ − m},
    # and the norm over a head's 4 units amplifies it where they nearly agree (seen: 7e-5 of outputs ~2)
    assert max_abs_diff(ys, ys64) < 3e-4
    for got, want in zip(final, final64, strict=True):  # the same m here: ĩ = 90 resets both stabilisers
        assert max_abs_diff(got, want) < 3e-5 * max(1.0, float(np.max(np.abs(want), initial=0)))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(g64), strict=True):  # seen: 3e-5
        assert np.max(np.abs(np.asarray(got) - want)) < 1e-4 * np.max(np.abs(want))
    # the stabiliser: the unstabilised state would leave float32's range on both sides ...
    m, n, c = (np.asarray(a, np.float64) for a in (states.m, states.n, states.c))  # [T, 2, hidden]
    log_n_tilde = m + np.log(n)
    assert log_n_tilde.max() > np.log(np.finfo(np.float32).max) + 10
    assert log_n_tilde.min() < np.log(np.finfo(np.float32).tiny) - 10
    assert np.mean(np.isfinite(np.asarray(ys_unstab))) < 0.01  # ... and does: NaN from the first ĩ ≈ 90
    # ... while the stabilised n stays between 1 (one of i, f is 1 at every token) and the token count
    tokens = np.arange(1, length + 1)[:, None, None]
    assert np.all(n >= 1 - 1e-6) and np.all(n <= tokens) and np.all(np.abs(c) <= n * (1 + 1e-6))


def test_slstm_bfloat16_inputs_float32_state():
    """`dtype=bfloat16, param_dtype=bfloat16` on `_slstm_extreme_case` (gates ±90 over 2048 tokens):
    `init` makes bfloat16 parameters; `apply` on bfloat16 inputs gives bfloat16 outputs and a float32
    state. Against the float32 cell on the same bfloat16 values: the projections multiply bfloat16
    operands exactly and sum in float32, the recurrence is float32, so the state agrees to 1e-5 relative
    (a loop of `step` carrying a bfloat16 state is off by 0.2 relative, its outputs by 1.8) and the
    outputs to their bfloat16 rounding, 2^-8 relative (+ 1e-4: float32 summation order, through the
    norm)."""
    cell, params, xs = _slstm_extreme_case()
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda key: cell16.init(key, xs.shape[-1]), jax.random.PRNGKey(0))
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(shapes))
    params16 = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
    xs16 = jnp.asarray(xs, jnp.bfloat16)

    @jax.jit
    def run(params16, xs16):
        up = lambda a: a.astype(jnp.float32)
        return cell16.apply(params16, xs16), cell.apply(jax.tree.map(up, params16), up(xs16))

    (ys16, state16), (ys32, state32) = run(params16, xs16)
    assert ys16.dtype == jnp.bfloat16 and all(a.dtype == jnp.float32 for a in state16)
    assert bool(jnp.all(jnp.isfinite(ys16.astype(jnp.float32))))
    for got, want in zip(state16, state32, strict=True):
        assert max_abs_diff(got, want) < 1e-5 * max(1.0, float(np.max(np.abs(want), initial=0)))
    err = np.abs(np.asarray(ys16, np.float32) - np.asarray(ys32))
    assert np.all(err <= 2.0**-8 * np.abs(np.asarray(ys32)) + 1e-4)  # seen: 0.99 of 2^-8 |y| + 1e-5


# --------------------------------------------------------------------------------------------------
# Cells: forms, state, initialisation
# --------------------------------------------------------------------------------------------------
def test_mlstm_state_carried_across_two_calls_equals_one_call():
    """apply on [0, 9) then on [9, T) from the returned state (conv window and memory) equals one apply,
    with padding in both parts (also at the split) and resets in the second. (The sLSTM's apply shares
    the conv and padding code; the contract's apply == step loop from a given state covers both.)"""
    cell = cells.MLSTM(d_model=5, num_heads=2, qkv_block_size=5, chunk_size=4)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(2, impl="rbg"), 5)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(3), a.shape), params)
    xs = jnp.asarray(_normal(140, (B, T, 5)), jnp.float32)
    resets = random_flags(141, (B, T), 0.1).at[:, :9].set(False)
    mask = random_flags(142, (B, T), 0.75).at[:, 8].set(False)

    @jax.jit
    def run(params, xs):
        whole = cell.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = cell.apply(params, xs[:, :9], mask=mask[:, :9])
        ys_b, final = cell.apply(params, xs[:, 9:], state, resets=resets[:, 9:], mask=mask[:, 9:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final)

    whole, split = run(params, xs)
    assert max_abs_diff(whole, split) < 1e-5


def test_initialisation_follows_the_authors():
    """mLSTM: forget-gate biases linspace(3, 6) over the heads, input-gate biases N(0, 0.1²), gate weights
    zero, small-init projections N(0, 2 / (5 d_model)), norm weight 0, skip 1. sLSTM: R = 0 (or
    U(±hidden^-½) with recurrent_init="standard"), the power-law forget bias of every head, the other
    biases 0, small-init gate projections. Parameter groups as the authors' optimiser groups."""
    mcell, scell = cells.MLSTM(d_model=64, num_heads=8), cells.SLSTM(hidden_size=64, num_heads=4)
    standard = dataclasses.replace(scell, recurrent_init="standard")
    p, p_s, p_std = jax.jit(lambda k: (mcell.init(k, 64), scell.init(k, 64), standard.init(k, 64)))(
        jax.random.PRNGKey(0)
    )
    cell = mcell
    np.testing.assert_allclose(p["b_f"], np.linspace(3, 6, 8), rtol=1e-6)
    assert 0.02 < float(jnp.std(p["b_i"])) < 0.2 and float(jnp.abs(jnp.mean(p["b_i"]))) < 0.1
    for name in ("w_i", "w_f", "norm_w"):
        np.testing.assert_array_equal(p[name], 0.0)
    np.testing.assert_array_equal(p["skip"], 1.0)
    for name in ("w_x", "w_z", "w_q"):
        assert abs(float(jnp.std(p[name])) / math.sqrt(2 / (5 * 64)) - 1) < 0.1, name
    assert cell.inner_size == 128 and cell.head_dim == 16 and p["conv_w"].shape == (4, 128)
    no_decay = {n for n, g in cell.param_groups().items() if g == "no_decay"}
    assert no_decay == {"conv_b", "b_i", "b_f", "norm_w", "skip"}

    cell, p = scell, p_s
    np.testing.assert_array_equal(p["r"], 0.0)
    bias = np.asarray(p["b"])
    np.testing.assert_array_equal(bias[[0, 2, 3]], 0.0)
    f_bias = 5.0 - 12.0 * (np.arange(16) / 15) ** 0.3  # the authors' powerlaw_blockdependent, block 0
    np.testing.assert_allclose(bias[1], np.broadcast_to(f_bias, (4, 16)), rtol=1e-5, atol=1e-6)
    assert abs(float(jnp.std(p["w_o"])) / math.sqrt(2 / (5 * 64)) - 1) < 0.1
    assert {n for n, g in cell.param_groups().items() if g == "no_decay"} == {"r", "b", "norm_w", "conv_b"}
    assert 0 < float(jnp.max(jnp.abs(p_std["r"]))) <= 1 / 8


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cells.MLSTM(d_model=0), "d_model"),
        (lambda: cells.MLSTM(d_model=6, num_heads=5), "multiple of num_heads=5"),
        (lambda: cells.MLSTM(d_model=6, qkv_block_size=5), "multiple of qkv_block_size=5"),
        (lambda: cells.MLSTM(d_model=8, proj_factor=0.0), "proj_factor must be > 0"),
        (lambda: cells.MLSTM(d_model=8, method="parallel"), "method must be one of"),
        (lambda: cells.SLSTM(hidden_size=6, num_heads=4), "multiple of num_heads=4"),
        (lambda: cells.SLSTM(hidden_size=8, conv_size=-1), "conv_size must be an integer >= 0"),
        (lambda: cells.SLSTM(hidden_size=8, recurrent_init="orthogonal"), "recurrent_init must be one of"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_registry_sizes_and_input_width():
    assert cells.get("mlstm", d_model=8) == cells.MLSTM(d_model=8)
    assert cells.get("slstm", hidden_size=8) == cells.SLSTM(hidden_size=8)
    assert cells.MLSTM(d_model=8, proj_factor=1.5, num_heads=3).head_dim == 4
    with pytest.raises(ValueError, match="input_size=5 but d_model=8"):
        cells.MLSTM(d_model=8).init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match="input_size=5 but hidden_size=8"):
        cells.SLSTM(hidden_size=8).init(jax.random.PRNGKey(0), 5)
    # without the conv the sLSTM reads any input width
    params = cells.SLSTM(hidden_size=8, conv_size=0).init(jax.random.PRNGKey(0), 5)
    assert params["w_i"].shape == (5, 4, 2) and "conv_w" not in params
