"""GLA (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training") against its
references, and its numerics at extreme gates.

- The engine's per-channel decay (`seqjax.scan.matrix_recurrence`, chunked and token scan) against a float64
  token loop of the paper's equations (values and gradients) and against a NumPy float64 port of fla's
  `naive_recurrent_gla` (fla-org/flash-linear-attention, `fla/ops/gla/naive.py`).
- `cells.GatedLinearAttention` against a NumPy float64 port of fla's `GatedLinearAttention` layer
  (`fla/layers/gla.py`, with `FusedRMSNormGated` of `fla/modules/fused_norm_gate.py`), weights copied from
  the seqjax parameters into fla's torch layout ([out, in] `nn.Linear` weights, heads flattened as
  `(h d)`); ported from fla at commit bc3b101dcb713ddc5bd8924b66754eb68b5ccf89.
- Extreme per-channel log-decays (−1e4, −30, −1e-7 and mixed) over 2048 tokens, float32 and bfloat16
  inputs with float32 states: finite values and gradients, close to the float64 reference.
- Chunked == token scan for the cell in float64 (values, gradients wrt parameters, inputs and state), the
  state carried across calls, the training residuals, initialisation and parameter counts.

The cell contract (tests/test_cell_contract.py) and tests/test_linear_attention.py run over the cell too.
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
from seqjax.scan import matrix_recurrence as mr
from seqjax.scan.matrix_recurrence import (
    linear_attention,
    linear_attention_chunked,
    linear_attention_recurrent,
)
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
)

B, T, H, DK, DV = 2, 37, 2, 3, 4  # 37 tokens: chunks of 32 in sub-chunks of 8, the last ones padded
INPUT_SIZE = 5


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _engine_inputs(seed: int, length: int = T) -> tuple[np.ndarray, ...]:
    """float64 q, k [B, T, H, d_k], v [B, T, H, d_v], per-channel log-decays in ~(−2, 0), s0."""
    q = _normal(seed, (B, length, H, DK))
    k = _normal(seed + 1, (B, length, H, DK))
    v = _normal(seed + 2, (B, length, H, DV))
    gk = -np.logaddexp(0.0, -(1.0 + _normal(seed + 3, (B, length, H, DK))))
    s0 = _normal(seed + 4, (B, H, DK, DV), 0.5)
    return q, k, v, gk, s0


def naive_recurrent_gla(q, k, v, gk, initial_state=None, resets=None, mask=None):
    """fla's `naive_recurrent_gla` (fla/ops/gla/naive.py) in NumPy float64: q, k, gk [B, T, H, K], v [B, T,
    H, V], state h [B, H, K, V]; q is scaled by K^-½ inside, as there. Plus seqjax's flags, which fla has
    not: a reset zeroes h before its token; padding leaves h unchanged and outputs 0."""
    q, k, v, gk = (np.swapaxes(np.asarray(a, np.float64), 1, 2) for a in (q, k, v, gk))
    _, _, length, key_dim = q.shape
    o = np.zeros(v.shape)
    scale = key_dim**-0.5
    h = np.zeros((*q.shape[:2], key_dim, v.shape[-1]))
    if initial_state is not None:
        h = h + initial_state
    for i in range(length):
        if resets is not None:
            h = np.where(resets[:, i, None, None, None], 0.0, h)
        old = h
        q_i = q[:, :, i] * scale
        k_i = k[:, :, i]
        v_i = v[:, :, i]
        gk_i = np.exp(gk[:, :, i])
        kv_i = k_i[..., None] * v_i[..., None, :]
        h = h * gk_i[..., None] + kv_i
        o[:, :, i] = (q_i[..., None] * h).sum(-2)
        if mask is not None:
            h = np.where(mask[:, i, None, None, None], h, old)
            o[:, :, i] = np.where(mask[:, i, None, None], o[:, :, i], 0.0)
    return np.swapaxes(o, 1, 2), h


def paper_loop(q, k, v, log_alpha, s0, resets=None, mask=None):
    """The paper's recurrence token by token (eq. 3 of Yang et al. with G_t = α_tᵀ 1, S ∈ R^{d_k × d_v}):
    S_t = G_t ⊙ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t, in plain jnp (differentiable; no seqjax code)."""
    s = s0
    ys = []
    for t in range(q.shape[1]):
        prev = s if resets is None else jnp.where(resets[:, t, None, None, None], 0.0, s)
        gate = jnp.exp(log_alpha[:, t])[..., :, None] * jnp.ones(prev.shape)  # G_t = α_tᵀ 1
        new = gate * prev + k[:, t][..., :, None] * v[:, t][..., None, :]
        y = jnp.einsum("bhk,bhkv->bhv", q[:, t], new)
        if mask is not None:
            new = jnp.where(mask[:, t, None, None, None], new, s)
            y = jnp.where(mask[:, t, None, None], y, 0.0)
        s = new
        ys.append(y)
    return jnp.stack(ys, axis=1), s


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------
def _engine_grads(fn, resets, mask, args):
    def loss(*a):
        ys, final = fn(*a, resets=resets, mask=mask)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final)), (ys, final)

    return jax.jit(jax.grad(loss, argnums=range(5), has_aux=True))(*args)


@functools.cache
def _engine_case():
    """The float64 case of the engine tests and the paper loop's values and gradients on it (computed
    once: the unrolled loop is the slowest compile here)."""
    q, k, v, gk, s0 = _engine_inputs(0)
    resets, mask = random_flags(1, (B, T), 0.1), random_flags(2, (B, T), 0.8)
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (q, k, v, gk, s0)]
        g_ref, out_ref = _engine_grads(paper_loop, resets, mask, args)
    return resets, mask, args, g_ref, out_ref


@pytest.mark.parametrize("chunk", [1, 8, 12, 32, 64, "recurrent"])
def test_engine_equals_the_papers_loop_values_and_gradients_float64(chunk):
    """Chunked (one sub-chunk of 8; two, the second padded; four; chunk > T) and the token scan against
    the paper's loop in float64, with a given state, resets and padding: values and gradients wrt q, k,
    v, log α and s0 to 1e-10."""
    resets, mask, args, g_ref, out_ref = _engine_case()
    with jax.enable_x64(True):
        assert max(float(jnp.max(jnp.abs(g))) for g in g_ref) > 0.1  # not trivially zero
        if chunk == "recurrent":
            fn = linear_attention_recurrent
        else:
            fn = lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=chunk)
        g, out = _engine_grads(fn, resets, mask, args)
        assert out[0].dtype == jnp.float64
        assert max_abs_diff(out, out_ref) < 1e-10
        assert max_abs_diff(g, g_ref) < 1e-10
        np.testing.assert_array_equal(np.asarray(out[0])[~np.asarray(mask)], 0.0)


def test_engine_matches_fla_naive_recurrent_gla():
    """Both forms against the NumPy port of fla's naive recurrence (which scales q by K^-½ itself), with a
    given state, resets and padding: float64 to 1e-10, float32 to 1e-5."""
    q, k, v, gk, s0 = _engine_inputs(10)
    resets, mask = np.asarray(random_flags(11, (B, T), 0.1)), np.asarray(random_flags(12, (B, T), 0.8))
    ref = naive_recurrent_gla(q, k, v, gk, s0, resets & mask, mask)
    ref_plain = naive_recurrent_gla(q, k, v, gk)  # fla's own case: no state, no flags
    for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-5)):
        with jax.enable_x64(dtype == jnp.float64):
            args = [jnp.asarray(a, dtype) for a in (q * DK**-0.5, k, v, gk, s0)]

            @jax.jit
            def run(q, k, v, gk, s0):
                kw = dict(resets=jnp.asarray(resets), mask=jnp.asarray(mask))
                return [
                    linear_attention(q, k, v, gk, s0, **kw, chunk_size=32),
                    linear_attention(q, k, v, gk, s0, **kw, method="recurrent"),
                    linear_attention(q, k, v, gk, chunk_size=16),
                ]

            flagged_c, flagged_r, plain = run(*args)
            scale = max(1.0, float(np.max(np.abs(ref[0]))))
            for got, want in ((flagged_c, ref), (flagged_r, ref), (plain, ref_plain)):
                assert got[0].dtype == dtype
                assert max_abs_diff(got, want) < tol * scale


def test_engine_grouped_queries_and_keys_with_a_per_channel_decay():
    """One group of q, k shared by both heads (Mamba-2's grouping) with a decay per head and key channel:
    chunked and token scan equal the per-head copies of q and k, values and gradients, in float64."""
    q, k, v, gk, s0 = _engine_inputs(90)
    q, k = q[:, :, :1], k[:, :, :1]  # [B, T, 1, d_k]
    resets, mask = random_flags(91, (B, T), 0.1), random_flags(92, (B, T), 0.8)
    with jax.enable_x64(True):
        args = [jnp.asarray(a) for a in (q, k, v, gk, s0)]

        def grads(fn, repeat):
            def loss(q, k, v, gk, s0):
                if repeat:
                    q, k = jnp.repeat(q, H, axis=2), jnp.repeat(k, H, axis=2)
                ys, final = fn(q, k, v, gk, s0, resets=resets, mask=mask)
                return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final)), (ys, final)

            return jax.jit(jax.grad(loss, argnums=range(5), has_aux=True))(*args)

        want = grads(linear_attention_recurrent, True)
        chunked = lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=16)
        for fn in (chunked, linear_attention_recurrent):
            got = grads(fn, False)
            assert got[0][0].shape == q.shape
            assert max_abs_diff(got, want) < 1e-10


def _extreme_log_decays(length: int) -> np.ndarray:
    """[1, T, H, 4] log-decays per key channel: −1e4 (forget at once), −30 (exp(−b) would overflow
    float32 within 3 tokens), −1e-7 (keep everything: γ ≈ 1 for 2048 tokens) and a per-token mix of
    −50 … −1e-6."""
    rng = np.random.default_rng(5)
    mixed = -np.exp(rng.uniform(np.log(1e-6), np.log(50.0), (1, length, H)))
    fixed = [np.full((1, length, H), value) for value in (-1e4, -30.0, -1e-7)]
    return np.stack([*fixed, mixed], axis=-1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_engine_extreme_gates_2048_tokens(dtype):
    """Per-channel log-decays from −1e4 to −1e-7 over 2048 tokens, with resets: the chunked form (chunks
    of 64 in sub-chunks of 8) has finite values and gradients, float32 states, and tracks the float64
    reference (float32 to 1e-5 of the output's scale; bfloat16 q, k, v to 2%)."""
    length, dk = 2048, 4
    gk = _extreme_log_decays(length)
    cast = lambda a: jnp.asarray(a, jnp.float32).astype(dtype)
    # q, k, v as the engine sees them (rounded to `dtype`), so the reference measures the engine alone
    q, k, v = (
        np.asarray(cast(_normal(20 + i, (1, length, H, d)) / math.sqrt(d)), np.float64)
        for i, d in enumerate((dk, dk, DV))
    )
    resets = np.zeros((1, length), bool)
    resets[0, [700, 1500]] = True
    ref, ref_s = naive_recurrent_gla(q * math.sqrt(dk), k, v, gk, resets=resets)  # undo the port's scale

    def loss(q, k, v, gk):
        ys, final = linear_attention_chunked(q, k, v, gk, resets=jnp.asarray(resets), chunk_size=64)
        return jnp.sum(ys.astype(jnp.float32) ** 2) + jnp.sum(final), (ys, final)

    grads, (ys, final) = jax.jit(jax.grad(loss, argnums=range(4), has_aux=True))(
        cast(q), cast(k), cast(v), jnp.asarray(gk, jnp.float32)
    )
    assert ys.dtype == jnp.float32 and final.dtype == jnp.float32  # float32 accumulation and state
    assert [g.dtype for g in grads] == [dtype] * 3 + [jnp.float32]
    for leaf in (ys, final, *grads):
        assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))
    assert max(float(jnp.max(jnp.abs(g.astype(jnp.float32)))) for g in grads) > 0.1
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    scale = float(np.max(np.abs(ref)))
    assert scale > 1.0  # the γ ≈ 1 channel accumulates: a real long memory
    assert float(np.max(np.abs(np.asarray(ys) - ref))) < tol * scale
    assert float(np.max(np.abs(np.asarray(final) - ref_s))) < tol * max(1.0, float(np.max(np.abs(ref_s))))


@pytest.mark.parametrize(
    ("chunk", "log_decays"),
    [(64, EXTREME_LOG_DECAYS), (4, (-16.0, -14.0, EXTREME_LOG_DECAYS[2]))],
    ids=["subchunked", "factored"],
)
def test_engine_gradients_at_extreme_decays(chunk, log_decays):
    """Per-channel decays saturated per head over 2040 tokens, float32, the last 5 tokens padded: 1e-6,
    e^-30 and 1 − 1e-6 per token in chunks of 64 (the sub-chunk path: the chunks decay far below
    e^-66), and e^-16, e^-14 and 1 − 1e-6 in chunks of 4 (the factored path, (q ⊙ e^b)·(k ⊙ e^−b): a
    chunk decays to e^-64). The chunked form's gradients wrt q, k, v, log γ and s0 equal the float64
    token scan's, each leaf to 1e-4 of its own largest entry and d/d log γ head by head to 1e-4 of that
    head's largest (measured ≤ 3e-6). Before both paths took the diagonal's decay and each key's decay
    to the (sub-)chunk's end from the tokens they span (`matrix_recurrence._channel_chunk_factored`,
    `_channel_chunk_subchunked`), d/d log γ of the strong heads was off by 6% and 2e4 times its scale on
    the sub-chunk path, by 92% and 12% on the factored one."""
    length, heads = 2040, len(log_decays)
    rng = np.random.default_rng(15)
    q, k = (rng.standard_normal((1, length, heads, DK)) / 2 for _ in range(2))
    v = rng.standard_normal((1, length, heads, DV))
    lg = np.broadcast_to(np.asarray(log_decays)[:, None], (1, length, heads, DK))
    s0 = rng.standard_normal((1, heads, DK, DV)) / 2
    mask = jnp.arange(length)[None] < length - 5
    chunked = functools.partial(linear_attention_chunked, mask=mask, chunk_size=chunk)
    recurrent = functools.partial(linear_attention_recurrent, mask=mask)
    first_chunk = lambda a: jnp.swapaxes(jnp.asarray(a[:, :chunk], jnp.float32), 1, 2)  # as the body sees it
    assert bool(mr._factorable(first_chunk(k), first_chunk(lg), jnp.float32)) == (chunk == 4)
    g32, g64 = float32_and_float64_gradients(chunked, recurrent, (q, k, v, lg, s0))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[3], g64[3], axis=-2)) < 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_engine_picks_the_factored_or_subchunked_path_per_chunk(dtype):
    """Four chunks of 16 tokens; the third decays by −100 per token in one channel (exp(−b) would overflow
    even float64). The factored form runs the others, the sub-chunk form that one, and the whole still
    equals the token scan: values and gradients, with resets and padding, in float64 to 1e-10 (float32:
    1e-4 of the scale)."""
    length, chunk = 64, 16
    with jax.enable_x64(dtype == jnp.float64):
        q, k, v, lg, s0 = (jnp.asarray(np.asarray(a), dtype) for a in _engine_inputs(40, length))
        lg = lg.at[:, 2 * chunk : 3 * chunk, :, 1].set(-100.0)
        resets, mask = random_flags(41, (B, length), 0.1), random_flags(42, (B, length), 0.8)
        # chunk i as the chunk body sees it: [B, H, C, d_k]
        body_chunk = lambda a, i: jnp.swapaxes(a.reshape(B, length // chunk, chunk, *a.shape[2:])[:, i], 1, 2)
        picks = [bool(mr._factorable(body_chunk(k, i), body_chunk(lg, i), dtype)) for i in range(4)]
        assert picks == [True, True, False, True]

        def loss(fn, q, k, v, lg, s0):
            ys, final = fn(q, k, v, lg, s0, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final)), (ys, final)

        chunked = lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=chunk)
        grad = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=range(5), has_aux=True))
        g_c, out_c = grad(chunked)(q, k, v, lg, s0)
        g_r, out_r = grad(linear_attention_recurrent)(q, k, v, lg, s0)
        tol = 1e-10 if dtype == jnp.float64 else 1e-4 * max(1.0, float(jnp.max(jnp.abs(out_r[0]))))
        assert max_abs_diff(out_c, out_r) < tol
        assert max_abs_diff(g_c, g_r) < tol * 10
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in g_c)


def test_engine_backward_keeps_no_per_token_states_or_decay_tensors():
    """The per-channel chunk body is recomputed in the backward pass: the VJP keeps the inputs and one
    state per chunk, no S_t per token and no [C, C, d_k] or sub-chunk decay tensor (the token scan keeps
    every S_t, and the check can tell)."""
    length, chunk = 128, 32
    args = [jnp.asarray(a, jnp.float32) for a in _engine_inputs(30, length)]
    resets, mask = random_flags(31, (B, length), 0.05), random_flags(32, (B, length), 0.9)

    def residual_sizes(fn):
        vjp = lambda *a: jax.vjp(lambda *a: fn(*a, resets=resets, mask=mask), *a)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, *args))]

    per_token_states = length * B * H * DK * DV
    chunk_states = (length // chunk) * B * H * DK * DV
    inputs = B * length * H * DV
    assert (length // chunk) * B * H * chunk * 8 * DK > max(inputs, chunk_states)  # the sub-chunk decays
    chunked = residual_sizes(lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=chunk))
    assert max(chunked) <= max(inputs, chunk_states), chunked
    assert sum(chunked) < 10 * inputs + 2 * chunk_states  # inputs, flags, masks: a few of each
    assert max(residual_sizes(linear_attention_recurrent)) >= per_token_states


# --------------------------------------------------------------------------------------------------
# The cell
# --------------------------------------------------------------------------------------------------
CELL_CASES = [
    ("default", cells.GatedLinearAttention(num_heads=H, head_dim=8, chunk_size=32)),
    (
        "no-gate-clamp-expand1-out3",
        cells.GatedLinearAttention(
            num_heads=H, head_dim=3, expand_k=1.0, output_gate=False, clamp_min=-0.05, out_features=3
        ),
    ),
    ("unfused-rank3", cells.GatedLinearAttention(num_heads=3, head_dim=4, gate_low_rank_dim=3, fused=False)),
]
CELL_IDS = [name for name, _ in CELL_CASES]
CELLS = [cell for _, cell in CELL_CASES]


def _init(cell, seed: int = 0):
    return jax.jit(cell.init, static_argnums=1)(jax.random.key(seed, impl="rbg"), INPUT_SIZE)


def _logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def fla_layer_reference(cell, params, x):
    """fla's `GatedLinearAttention.forward` (fla/layers/gla.py, its defaults: no short conv, no feature
    map, num_kv_heads = num_heads) for one sequence x [T, hidden], NumPy float64. The seqjax parameters are
    first copied into fla's modules: `nn.Linear` weights are [out, in] and heads are flattened as (h d)."""
    p = {name: np.asarray(a, np.float64) for name, a in params.items()}
    h, dk, dv = cell.num_heads, cell.key_dim, cell.head_dim
    hidden = x.shape[-1]
    # the torch state dict of fla's layer
    q_proj = p["w_q"].reshape(hidden, h * dk).T
    k_proj = p["w_k"].reshape(hidden, h * dk).T
    v_proj = p["w_v"].reshape(hidden, h * dv).T
    gk_proj_0 = p["w_gk1"].T  # Linear(hidden, gate_low_rank_dim, bias=False)
    gk_proj_1_weight = p["w_gk2"].reshape(-1, h * dk).T  # Linear(gate_low_rank_dim, key_dim, bias=True)
    gk_proj_1_bias = p["b_gk"].reshape(h * dk)
    g_norm_weight = p["norm_scale"]  # FusedRMSNormGated(head_v_dim): one weight shared by the heads
    o_proj = p["w_o"].reshape(h * dv, -1).T
    linear = lambda a, w, b=None: a @ w.T + (0.0 if b is None else b)
    x = np.asarray(x, np.float64)
    # forward
    q, k, v = linear(x, q_proj), linear(x, k_proj), linear(x, v_proj)
    gk = linear(linear(x, gk_proj_0), gk_proj_1_weight, gk_proj_1_bias)
    q, k, gk = (a.reshape(len(x), h, dk) for a in (q, k, gk))  # '... (h d) -> ... h d'
    v = v.reshape(len(x), h, dv)
    gk = _logsigmoid(gk) / cell.gate_logit_normalizer
    if cell.clamp_min is not None:
        gk = np.maximum(gk, cell.clamp_min)
    o, _ = naive_recurrent_gla(q[None], k[None], v[None], gk[None])
    o = o[0]
    eps = cell.norm_eps
    o = o / np.sqrt(np.mean(o * o, axis=-1, keepdims=True) + eps) * g_norm_weight  # RMSNorm
    if cell.output_gate:
        g = linear(x, p["w_g"].reshape(hidden, h * dv).T).reshape(len(x), h, dv)
        o = o * g / (1 + np.exp(-g))  # FusedRMSNormGated: swish(g) after the norm
    return linear(o.reshape(len(x), h * dv), o_proj)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_cell_matches_fla_layer_reference(cell):
    """The cell computes fla's layer, token for token: float32 to 1e-5 of the output's scale, float64 to
    1e-10; the chunked (fused or not) and the recurrent forms alike."""
    params = _init(cell)
    xs = _normal(40, (B, T, INPUT_SIZE))
    ref = np.stack([fla_layer_reference(cell, params, x) for x in xs])
    scale = float(np.max(np.abs(ref)))
    assert scale > 0.1
    recurrent = dataclasses.replace(cell, method="recurrent")
    for c in (cell, recurrent):
        ys32, _ = jax.jit(c.apply)(params, jnp.asarray(xs, jnp.float32))
        assert float(np.max(np.abs(np.asarray(ys32) - ref))) < 1e-5 * scale
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        for c in (cell, recurrent):
            c64 = dataclasses.replace(c, dtype=jnp.float64, param_dtype=jnp.float64)
            ys64, _ = jax.jit(c64.apply)(p64, jnp.asarray(xs))
            assert ys64.dtype == jnp.float64
            assert float(np.max(np.abs(np.asarray(ys64) - ref))) < 1e-10 * scale


def test_cell_chunked_equals_recurrent_gradients_float64():
    """apply("chunked", fused) against apply("recurrent") in float64: values and gradients wrt the
    parameters, the inputs and the state, with resets and padding, to rounding."""
    with jax.enable_x64(True):
        cell = dataclasses.replace(CELLS[0], dtype=jnp.float64, param_dtype=jnp.float64)
        params = _init(cell, 1)
        xs = jnp.asarray(_normal(50, (B, T, INPUT_SIZE)))
        state = cells.GLAState(s=jnp.asarray(_normal(51, (B, H, cell.key_dim, cell.head_dim), 0.5)))
        resets, mask = random_flags(52, (B, T), 0.1), random_flags(53, (B, T), 0.8)

        def grads(c):
            def loss(p, x, s):
                ys, final = c.apply(p, x, s, resets=resets, mask=mask)
                return jnp.sum(jnp.sin(3 * ys)) + jnp.sum(jnp.cos(final.s)), (ys, final)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, state)

        g_c, out_c = grads(cell)
        g_r, out_r = grads(dataclasses.replace(cell, method="recurrent"))
        assert max_abs_diff(out_c, out_r) < 1e-11
        assert max_abs_diff(g_c, g_r) < 1e-10
        assert float(jnp.max(jnp.abs(g_c[0]["b_gk"]))) > 1e-3  # the gate learns


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_cell_extreme_gates_2048_tokens(dtype):
    """Gate biases of ±1e3 (log α ≈ −62 on some key channels, exactly 0 on others) over 2048 tokens, with
    resets and padding: finite outputs and parameter gradients in float32 and in bfloat16 compute (float32
    states), and the chunked form equals the token scan."""
    cell = dataclasses.replace(CELLS[0], chunk_size=64, dtype=dtype)
    params = _init(cell, 2)
    sign = np.where(np.arange(cell.num_heads * cell.key_dim) % 2 == 0, -1.0, 1.0)
    params["b_gk"] = jnp.asarray(1e3 * sign.reshape(params["b_gk"].shape), jnp.float32)
    length = 2048
    xs = jnp.asarray(_normal(60, (1, length, INPUT_SIZE)), jnp.float32)
    resets, mask = random_flags(61, (1, length), 0.002), random_flags(62, (1, length), 0.95)
    log_alpha = jax.jit(cell.log_decay)(params, xs)
    assert float(jnp.min(log_alpha)) < -60 and float(jnp.max(log_alpha)) == 0.0

    def run(c):
        def loss(p):
            ys, final = c.apply(p, xs, resets=resets, mask=mask)
            return jnp.mean(ys.astype(jnp.float32) ** 2), (ys, final)

        return jax.jit(jax.grad(loss, has_aux=True))(params)

    grads, (ys, final) = run(cell)
    assert ys.dtype == dtype and final.s.dtype == jnp.float32
    for leaf in (ys, final.s, *jax.tree.leaves(grads)):
        assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))
    _, (ys_r, final_r) = run(dataclasses.replace(cell, method="recurrent"))
    tol = 1e-4 if dtype == jnp.float32 else 5e-2
    scale = float(jnp.max(jnp.abs(ys_r.astype(jnp.float32))))
    assert float(jnp.max(jnp.abs(ys.astype(jnp.float32) - ys_r.astype(jnp.float32)))) < tol * scale
    assert max_abs_diff(final, final_r) < tol * float(jnp.max(jnp.abs(final_r.s)))


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_state_carried_across_two_calls_equals_one_call(cell):
    """apply on [0, 20) then on [20, T) from the returned state equals one apply, with padding in both
    parts (also at the split) and resets in the second."""
    params = _init(cell, 3)
    xs = jnp.asarray(_normal(70, (B, T, INPUT_SIZE)), jnp.float32)
    resets = random_flags(71, (B, T), 0.1).at[:, :20].set(False)
    mask = random_flags(72, (B, T), 0.75).at[:, 19].set(False)

    @jax.jit
    def run(params, xs):
        whole = cell.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = cell.apply(params, xs[:, :20], mask=mask[:, :20])
        ys_b, final = cell.apply(params, xs[:, 20:], state, resets=resets[:, 20:], mask=mask[:, 20:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final)

    whole, split = run(params, xs)
    assert max_abs_diff(whole, split) < 1e-5


def test_initialisation_sizes_and_parameter_count():
    """Shapes (d_k = ⌊head_dim · expand_k⌋, at least 1), zero gate bias, unit norm scale shared over the
    heads, decays at init in (0, 1) near 2^{-1/16}, and the parameter count by hand."""
    cell = cells.GatedLinearAttention(num_heads=4, head_dim=16)
    assert cell.key_dim == 8 and cell.output_size == 64
    assert cells.GatedLinearAttention(num_heads=1, head_dim=3).key_dim == 1
    assert cells.GatedLinearAttention(num_heads=1, head_dim=1).key_dim == 1
    assert cells.GatedLinearAttention(num_heads=1, head_dim=6, expand_k=1.0).key_dim == 6
    d = 64
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(4, impl="rbg"), d)
    h, dk, dv, r = 4, 8, 16, 16
    shapes = {name: a.shape for name, a in params.items()}
    assert shapes == {
        "w_q": (d, h, dk),
        "w_k": (d, h, dk),
        "w_v": (d, h, dv),
        "w_gk1": (d, r),
        "w_gk2": (r, h, dk),
        "b_gk": (h, dk),
        "w_g": (d, h, dv),
        "norm_scale": (dv,),
        "w_o": (h, dv, d),
    }
    # fla's layer at hidden = 64: q, k, v, g, o projections, the two gate projections and their bias, and
    # the norm's weight
    fla_count = d * (h * dk) * 2 + d * (h * dv) * 2 + (h * dv) * d + d * r + r * h * dk + h * dk + dv
    assert sum(a.size for a in params.values()) == fla_count
    np.testing.assert_array_equal(params["b_gk"], 0.0)
    np.testing.assert_array_equal(params["norm_scale"], 1.0)
    alpha = np.exp(np.asarray(jax.jit(cell.log_decay)(params, jnp.asarray(_normal(80, (256, d))))))
    assert alpha.shape == (256, h, dk)
    assert alpha.min() > 0 and alpha.max() < 1
    assert abs(np.median(alpha) - 2 ** (-1 / 16)) < 0.01
    assert cell.param_groups() == {name: "default" for name in params}
    assert cells.get("gla", num_heads=4, head_dim=16) == cell
