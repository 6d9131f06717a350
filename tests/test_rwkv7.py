"""RWKV-7: the generalised delta rule engine (chunked == token scan == the paper's equations as a float64
loop, values and gradients == the authors' pure-PyTorch `RWKV7_OP` and fla's `dplr_recurrence`, both
ported to NumPy) and the `RWKV7` cell (== a NumPy port of the authors' `time_mixing`, chunked ==
recurrent gradients, state carried across calls, extreme gates, bfloat16, initialisation). The cell
contract (tests/test_cell_contract.py) runs over the cell too.

Ported references (commits of the stored snapshots):
- BlinkDL/RWKV-LM @ 524481d5099b38d9bc8ef1e89209161b86c8011b, RWKV-v7/rwkv_v7_demo.py, `RWKV7_OP` (the
  `USE_CUDA_KERNEL = False` branch: the pure-PyTorch token loop), and RWKV-v7/rwkv_v7_numpy.py,
  `time_mixing` (johanwind's NumPy RWKV-7, one token at a time).
- fla-org/flash-linear-attention @ bc3b101dcb713ddc5bd8924b66754eb68b5ccf89,
  fla/ops/generalized_delta_rule/dplr/naive.py, `dplr_recurrence`.

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
from seqjax.scan import generalized_delta_rule as gdr
from seqjax.scan.generalized_delta_rule import (
    generalized_delta_rule,
    generalized_delta_rule_chunked,
    generalized_delta_rule_recurrent,
)
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
)

B, T, H, N = 2, 21, 2, 4  # T is not a multiple of the chunk sizes below
INPUT_SIZE = 5


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _paper_inputs(seed: int, length: int = T, batch: int = B) -> tuple[np.ndarray, ...]:
    """float64 r, w ∈ (e^{−e^{−½}}, 1), k̃, v, κ̂ (unit), α ∈ (0, 1) [B, T, H, N], and S_0 [B, H, N, N]
    (the paper's layout, d_v × d_k), drawn as the layer produces them."""
    shape = (batch, length, H, N)
    r, k, v = _normal(seed, shape), _normal(seed + 1, shape), _normal(seed + 2, shape)
    kappa = _normal(seed + 3, shape)
    kappa = kappa / np.linalg.norm(kappa, axis=-1, keepdims=True)
    alpha = _sigmoid(2 * _normal(seed + 4, shape))
    w = np.exp(-math.exp(-0.5) * _sigmoid(3 * _normal(seed + 5, shape)))
    s0 = _normal(seed + 6, (batch, H, N, N), 0.5)
    return r, w, k, v, kappa, alpha, s0


def paper_loop(r, w, k, v, kappa, alpha, s0, resets=None, mask=None):
    """The paper's recurrence (Peng et al. 2025, eq. for the wkv state), token by token, in the paper's
    layout S ∈ R^{d_v × d_k}: S_t = S_{t−1} (diag(w_t) − κ̂_tᵀ (α_t ⊙ κ̂_t)) + v_tᵀ k̃_t, y_t = S_t r_t; plus
    seqjax's flags (a reset zeroes S before its token, padding keeps it and outputs 0). jnp, so it
    differentiates (float64 under `jax.enable_x64`)."""
    s = s0
    ys = []
    for t in range(r.shape[1]):
        if resets is not None:
            s = jnp.where(resets[:, t, None, None, None], 0.0, s)
        transition = (
            jnp.eye(N) * w[:, t, ..., None, :]
            - kappa[:, t, ..., :, None] * (alpha * kappa)[:, t, ..., None, :]
        )
        new = s @ transition + v[:, t, ..., :, None] * k[:, t, ..., None, :]
        y = jnp.einsum("bhvk,bhk->bhv", new, r[:, t])
        if mask is not None:
            new = jnp.where(mask[:, t, None, None, None], new, s)
            y = jnp.where(mask[:, t, None, None], y, 0.0)
        s = new
        ys.append(y)
    return jnp.stack(ys, axis=1), s


def rwkv7_op_reference(r, w_loglog, k, v, a, b, s0):
    """BlinkDL/RWKV-LM RWKV-v7/rwkv_v7_demo.py `RWKV7_OP` (pure-PyTorch branch) in NumPy float64, with
    the initial state as an argument (the original starts from zeros) and the final state returned:

        w = torch.exp(-torch.exp(w.view(B, T, H, N).float()))
        for t in range(T):
            kk = k[:, t, :].view(B, H, 1, N); rr = r[:, t, :].view(B, H, N, 1)
            vv = v[:, t, :].view(B, H, N, 1); aa = a[:, t, :].view(B, H, N, 1)
            bb = b[:, t, :].view(B, H, 1, N)
            state = state * w[: , t, :, None, :] + state @ aa @ bb + vv @ kk
            out[:, t, :] = (state @ rr).view(B, H, N)
    """
    bsz, length = r.shape[:2]
    w = np.exp(-np.exp(w_loglog))
    out = np.zeros(v.shape)
    state = s0.copy()
    for t in range(length):
        kk = k[:, t].reshape(bsz, H, 1, N)
        rr = r[:, t].reshape(bsz, H, N, 1)
        vv = v[:, t].reshape(bsz, H, N, 1)
        aa = a[:, t].reshape(bsz, H, N, 1)
        bb = b[:, t].reshape(bsz, H, 1, N)
        state = state * w[:, t, :, None, :] + state @ aa @ bb + vv @ kk
        out[:, t] = (state @ rr).reshape(bsz, H, N)
    return out, state


def fla_dplr_recurrence(q, k, v, alpha, beta, gk, initial_state):
    """fla's `dplr_recurrence` (fla/ops/generalized_delta_rule/dplr/naive.py) in NumPy float64: state
    [B, H, d_k, d_v], q scaled by d_k^-½ inside; inputs [B, H, L, D] as there.

        _kv = _k[..., None] * _v[..., None, :] + (S.clone() * _alpha[..., None]).sum(-2, keepdim=True) \
            * _beta[..., None]
        S = S.clone() * gk[:, :, i].exp()[..., None] + _kv
        o[:, :, i] = torch.einsum('bhd,bhdm->bhm', _q, S)
    """
    d_k = q.shape[-1]
    q = q * d_k**-0.5
    s = initial_state.copy()
    o = np.zeros(v.shape)
    for i in range(q.shape[2]):
        kv = k[:, :, i][..., None] * v[:, :, i][..., None, :]
        kv = kv + (s * alpha[:, :, i][..., None]).sum(-2, keepdims=True) * beta[:, :, i][..., None]
        s = s * np.exp(gk[:, :, i])[..., None] + kv
        o[:, :, i] = np.einsum("bhd,bhdm->bhm", q[:, :, i], s)
    return o, s


def _engine_args(r, w, k, v, kappa, alpha, s0):
    """The paper's variables -> the engine's (r, k, v, a = −κ̂, b = κ̂ ⊙ α, log w, H_0 = S_0ᵀ)."""
    return r, k, v, -kappa, kappa * alpha, np.log(w), np.swapaxes(s0, -1, -2)


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [False, True], ids=["plain", "resets+mask"])
def test_engine_equals_paper_loop_values_and_gradients(flags):
    """Chunked (C = 5, and C = 1) and token-scan forms against the paper's equations as a float64 loop:
    values and gradients wrt every input, with a given state, resets and padding."""
    with jax.enable_x64(True):
        paper = tuple(jnp.asarray(a) for a in _paper_inputs(0))
        resets = random_flags(1, (B, T), 0.2) if flags else None
        mask = random_flags(2, (B, T), 0.7) if flags else None
        eff_resets = None if resets is None else resets & (True if mask is None else mask)

        def loss_paper(*p):
            ys, s = paper_loop(*p, resets=eff_resets, mask=mask)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(s)), (ys, s)

        def loss_engine(fn):
            def loss(r, w, k, v, kappa, alpha, s0):
                args = (r, k, v, -kappa, kappa * alpha, jnp.log(w), jnp.swapaxes(s0, -1, -2))
                ys, h = fn(*args, resets=resets, mask=mask)
                s = jnp.swapaxes(h, -1, -2)
                return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(s)), (ys, s)

            return loss

        grad = lambda f: jax.jit(jax.grad(f, argnums=range(7), has_aux=True))
        g_ref, out_ref = grad(loss_paper)(*paper)
        assert max(float(jnp.max(jnp.abs(g))) for g in g_ref) > 0.1
        forms = {
            "recurrent": generalized_delta_rule_recurrent,
            "chunk5": lambda *a, **kw: generalized_delta_rule_chunked(*a, **kw, chunk_size=5),
            "chunk1": lambda *a, **kw: generalized_delta_rule_chunked(*a, **kw, chunk_size=1),
        }
        for name, fn in forms.items():
            g, out = grad(loss_engine(fn))(*paper)
            assert out[0].dtype == jnp.float64
            assert max_abs_diff(out, out_ref) < 1e-12, name
            assert max_abs_diff(g, g_ref) < 1e-10, name
            if flags:
                np.testing.assert_array_equal(np.asarray(out[0])[~np.asarray(mask)], 0.0)


def test_engine_matches_the_authors_rwkv7_op_and_fla_dplr():
    """Both forms against the NumPy ports of the authors' `RWKV7_OP` (w given as log(−log w), as the
    layer passes it) and fla's `dplr_recurrence` (q pre-scaled by √d_k to undo its d_k^-½); float64 to
    1e-12, float32 to 1e-5 (relative)."""
    r, w, k, v, kappa, alpha, s0 = _paper_inputs(10)
    ref_ys, ref_s = rwkv7_op_reference(r, np.log(-np.log(w)), k, v, -kappa, kappa * alpha, s0)
    hd = lambda x: np.moveaxis(x, 1, 2)  # [B, T, H, D] -> fla's [B, H, T, D]
    fla_ys, fla_h = fla_dplr_recurrence(
        hd(r) * math.sqrt(N),
        hd(k),
        hd(v),
        hd(-kappa),
        hd(kappa * alpha),
        hd(np.log(w)),
        np.swapaxes(s0, -1, -2),
    )
    assert np.max(np.abs(hd(fla_ys) - ref_ys)) < 1e-12  # the two references agree
    assert np.max(np.abs(np.swapaxes(fla_h, -1, -2) - ref_s)) < 1e-12
    args = _engine_args(r, w, k, v, kappa, alpha, s0)
    scale = max(np.max(np.abs(ref_ys)), np.max(np.abs(ref_s)))
    for dtype, tol in ((jnp.float64, 1e-12), (jnp.float32, 1e-5)):
        with jax.enable_x64(dtype == jnp.float64):

            @jax.jit
            def both(*a):
                return generalized_delta_rule(*a, chunk_size=8), generalized_delta_rule(
                    *a, method="recurrent"
                )

            for ys, h in both(*(jnp.asarray(a, dtype) for a in args)):
                assert ys.dtype == dtype
                got = (np.asarray(ys), np.swapaxes(np.asarray(h), -1, -2))
                assert max_abs_diff(got, (ref_ys, ref_s)) < tol * scale


def test_engine_extreme_decays_long_sequence():
    """Decays at 0 (log w = −1e4: w underflows to 0), near 0 (log w = −30), at the cell's lower bound
    (e^{−e^{−½}}) and near 1 (log w = −1e-9), mixed per channel, over 512 tokens with α near 0 and 1:
    float32 chunked values and gradients are finite, and match the float64 token scan as closely as the
    float32 token scan does (1e-5 relative; the chunk body sums each pair's decays from its own tokens)."""
    length = 512
    r, w, k, v, kappa, alpha, s0 = _paper_inputs(20, length, 1)
    choices = np.array([-1e4, -30.0, -math.exp(-0.5), -1e-9])
    log_w = choices[np.random.default_rng(21).integers(0, 4, (1, length, H, N))]
    alpha = np.where(np.random.default_rng(22).random(alpha.shape) < 0.5, 1e-6, 1 - 1e-6)
    args = list(_engine_args(r, w, k, v, kappa, alpha, s0))
    args[5] = log_w
    with jax.enable_x64(True):
        ref_ys, ref_h = jax.jit(generalized_delta_rule_recurrent)(*(jnp.asarray(a) for a in args))
        ref_ys, ref_h = np.asarray(ref_ys), np.asarray(ref_h)

    def loss(*a):
        ys, h = generalized_delta_rule_chunked(*a, chunk_size=16)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(h)), (ys, h)

    f32 = [jnp.asarray(a, jnp.float32) for a in args]
    grads, (ys, h) = jax.jit(jax.grad(loss, argnums=range(7), has_aux=True))(*f32)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    scale = max(np.max(np.abs(ref_ys)), 1.0)
    assert np.max(np.abs(np.asarray(ys) - ref_ys)) < 1e-5 * scale
    assert np.max(np.abs(np.asarray(h) - ref_h)) < 1e-5 * scale


@pytest.mark.parametrize(
    ("chunk", "log_decays"),
    [(16, EXTREME_LOG_DECAYS), (4, (-16.0, -14.0, EXTREME_LOG_DECAYS[2]))],
    ids=["pairwise", "factored"],
)
def test_engine_gradients_at_extreme_decays(chunk, log_decays):
    """Decays saturated per head over 2040 tokens, float32, the last 5 tokens padded, α = ½: w = 1e-6,
    e^-30 and 1 − 1e-6 per token in chunks of 16 (the pairwise path), and e^-16, e^-14 and 1 − 1e-6 in
    chunks of 4 (the factored path: a chunk decays to e^-64). The chunked form's gradients wrt r, k, v,
    a, b, log w and H_0 equal the float64 token scan's, each leaf to 1e-4 of its own largest entry and
    d/d log w head by head to 1e-4 of that head's largest (measured ≤ 4e-7). The pairwise path always
    summed each pair's decay from its own tokens; the factored one took exp(G_i − G_i) = 1 through
    (x ⊙ e^G)·(y ⊙ e^−G) before `_chunk_factored` gave those entries the undecayed products' gradients:
    d/d log w was then 140% off in the e^-16 head and 8% in the e^-14 one."""
    length, heads = 2040, len(log_decays)
    rng = np.random.default_rng(23)
    shape = (1, length, heads, N)
    r, k, v = (rng.standard_normal(shape) / 2 for _ in range(3))
    kappa = rng.standard_normal(shape)
    kappa = kappa / np.linalg.norm(kappa, axis=-1, keepdims=True)
    log_w = np.broadcast_to(np.asarray(log_decays)[:, None], shape)
    s0 = rng.standard_normal((1, heads, N, N)) / 2
    mask = jnp.arange(length)[None] < length - 5
    first_chunk = lambda a: jnp.swapaxes(jnp.asarray(a[:, :chunk], jnp.float32), 1, 2)  # as the body sees it
    assert bool(gdr._factorable(first_chunk(k), first_chunk(kappa / 2), first_chunk(log_w))) == (chunk == 4)
    chunked = functools.partial(generalized_delta_rule_chunked, mask=mask, chunk_size=chunk)
    recurrent = functools.partial(generalized_delta_rule_recurrent, mask=mask)
    args = (r, k, v, -kappa, kappa / 2, log_w, s0)
    g32, g64 = float32_and_float64_gradients(chunked, recurrent, args)
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[5], g64[5], axis=-2)) < 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_engine_picks_the_factored_or_pairwise_path_per_chunk(dtype):
    """Four chunks of 8 tokens; the third decays by −100 per token in one channel (exp(−G) would overflow
    even float64). The factored chunk runs the others, the pairwise one that one, and the whole equals the
    token scan: values and gradients, with resets and padding (float64 to 1e-10, float32 to 1e-4 of the
    scale)."""
    length, chunk = 32, 8
    r, w, k, v, kappa, alpha, s0 = _paper_inputs(30, length)
    args = list(_engine_args(r, w, k, v, kappa, alpha, s0))
    args[5] = args[5].copy()
    args[5][:, 2 * chunk : 3 * chunk, :, 1] = -100.0
    resets, mask = random_flags(31, (B, length), 0.1), random_flags(32, (B, length), 0.8)
    with jax.enable_x64(dtype == jnp.float64):
        args = [jnp.asarray(a, dtype) for a in args]
        # chunk i as the chunk body sees it: [B, H, C, N]
        body_chunk = lambda a, i: jnp.swapaxes(a.reshape(B, length // chunk, chunk, H, N)[:, i], 1, 2)
        picks = [bool(gdr._factorable(*(body_chunk(args[j], i) for j in (1, 4, 5)))) for i in range(4)]
        assert picks == [True, True, False, True]

        def loss(fn):
            def run(*a):
                ys, h = fn(*a, resets=resets, mask=mask)
                return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(h)), (ys, h)

            return jax.jit(jax.grad(run, argnums=range(7), has_aux=True))

        chunked = lambda *a, **kw: generalized_delta_rule_chunked(*a, **kw, chunk_size=chunk)
        g_c, out_c = loss(chunked)(*args)
        g_r, out_r = loss(generalized_delta_rule_recurrent)(*args)
        tol = 1e-10 if dtype == jnp.float64 else 1e-4 * max(1.0, float(jnp.max(jnp.abs(out_r[0]))))
        assert max_abs_diff(out_c, out_r) < tol
        assert max_abs_diff(g_c, g_r) < tol * 10
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in g_c)


def test_chunked_backward_stores_no_per_token_states():
    """The chunk body is rematerialised: autodiff keeps the inputs and one state per chunk, not a state
    per token (which the token scan does keep: the check can tell them apart)."""
    length, chunk = 64, 8
    args = [jnp.asarray(a, jnp.float32) for a in _engine_args(*_paper_inputs(30, length))]
    resets, mask = random_flags(31, (B, length), 0.1), random_flags(32, (B, length), 0.9)

    def residual_sizes(fn):
        vjp = lambda *a: jax.vjp(lambda *a: fn(*a, resets=resets, mask=mask), *a)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, *args))]

    per_token_states = length * B * H * N * N
    chunked = residual_sizes(lambda *a, **kw: generalized_delta_rule_chunked(*a, **kw, chunk_size=chunk))
    assert max(chunked) < per_token_states, chunked
    # the six inputs (and their chunked copies), the flags and one state per chunk
    assert sum(chunked) < 18 * B * length * H * N + 2 * (length // chunk) * B * H * N * N
    assert max(residual_sizes(generalized_delta_rule_recurrent)) >= per_token_states


def test_engine_empty_sequence_and_bad_inputs():
    r, k, v, a, b, lw, s0 = (jnp.asarray(x, jnp.float32) for x in _engine_args(*_paper_inputs(40)))
    ys, final = generalized_delta_rule_chunked(
        r[:, :0], k[:, :0], v[:, :0], a[:, :0], b[:, :0], lw[:, :0], s0
    )
    assert ys.shape == (B, 0, H, N)
    np.testing.assert_array_equal(final, s0)
    with pytest.raises(ValueError, match=r"`log_w` has shape \(2, 21, 2\)"):
        generalized_delta_rule(r, k, v, a, b, lw[..., 0])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        generalized_delta_rule_chunked(r, k, v, a, b, lw, chunk_size=0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        generalized_delta_rule(r, k, v, a, b, lw, method="fast")


# --------------------------------------------------------------------------------------------------
# Cell
# --------------------------------------------------------------------------------------------------
def _cell(**kw) -> cells.RWKV7:
    base = dict(num_heads=H, head_dim=N, d_model=INPUT_SIZE, decay_rank=3, a_rank=2, gate_rank=4)
    return cells.RWKV7(**{**base, "zero_init": False, "chunk_size": 8, **kw})


def time_mixing_reference(cell, params, xs, eps):
    """BlinkDL/RWKV-LM RWKV-v7/rwkv_v7_numpy.py `time_mixing` for the first layer (v0 is None: no value
    residual), one token at a time from last_x = 0 and S = 0, in NumPy float64, with seqjax's parameter
    layout ([in, H, N] projections, LoRAs as x @ W1 @ W2) and the GroupNorm's eps as an argument (the
    port fixes 64e-5 = 64 · 1e-5 for N = 64). The original, per token:

        xr,xw,xk,xv,xa,xg = [x + m * (last_x - x) for m in [mr,mw,mk,mv,ma,mg]]
        r = Wr @ xr
        w = np.exp(-sigmoid(np.tanh(xw @ Ww1) @ Ww2 + w_bias)/np.e**0.5)
        k = Wk @ xk ; v = Wv @ xv
        a = sigmoid(xa @ Wa1 @ Wa2 + a_bias)
        g = sigmoid(xg @ Wg1) @ Wg2
        kk = k * k_k
        k += k * (a-1) * k_a
        kk /= np.maximum(np.linalg.norm(kk, axis=1,keepdims=1), 1e-12)
        S = S * w.mT - S @ kk * (kk*a).mT + v * k.mT
        y = S @ r
        y = group_norm(y, ln_w, ln_b)
        y += ((r * k * r_k).sum(axis=1,keepdims=1) * v).flatten()
        return Wo @ (y * g), v0, x, S
    """
    p = {name: np.asarray(a, np.float64) for name, a in params.items()}
    h, n = cell.num_heads, cell.head_dim
    col = lambda x: x.reshape(h, n, 1)
    last_x, s = np.zeros(xs.shape[-1]), np.zeros((h, n, n))
    out = []
    for x in np.asarray(xs, np.float64):
        xr, xw, xk, xv, xa, xg = [x + p[f"x_{m}"] * (last_x - x) for m in "rwkvag"]
        r = np.einsum("i,ihd->hd", xr, p["w_r"]).reshape(-1)
        w = np.exp(
            -_sigmoid(np.tanh(xw @ p["w1"]) @ p["w2"].reshape(-1, h * n) + p["w0"].reshape(-1)) / np.e**0.5
        )
        k = np.einsum("i,ihd->hd", xk, p["w_k"]).reshape(-1)
        v = np.einsum("i,ihd->hd", xv, p["w_v"]).reshape(-1)
        a = _sigmoid(xa @ p["a1"] @ p["a2"].reshape(-1, h * n) + p["a0"].reshape(-1))
        g = _sigmoid(xg @ p["g1"]) @ p["g2"].reshape(-1, h * n)
        kk = k * p["k_k"].reshape(-1)
        k = k + k * (a - 1) * p["k_a"].reshape(-1)
        r, w, k, v, kk, a, r_k = [col(i) for i in (r, w, k, v, kk, a, p["r_k"])]
        kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)
        s = s * w.transpose(0, 2, 1) - s @ kk * (kk * a).transpose(0, 2, 1) + v * k.transpose(0, 2, 1)
        y = s @ r
        y = ((y - y.mean(axis=1, keepdims=True)) / (y.var(axis=1, keepdims=True) + eps) ** 0.5).reshape(-1)
        y = y * p["ln_scale"].reshape(-1) + p["ln_bias"].reshape(-1)
        y = y + ((r * k * r_k).sum(axis=1, keepdims=True) * v).reshape(-1)
        out.append(np.einsum("hd,hdo->o", (y * g).reshape(h, n), p["w_o"]))
        last_x = x
    return np.stack(out)


def _perturbed(params, seed):
    """The initialisation with every vector moved off its structured values, so the reference test sees
    each parameter's role (k_a = 1.02 and r_k = −0.04 everywhere would hide a swapped index)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(params))
    return {
        name: a + 0.3 * jax.random.normal(kk, a.shape, a.dtype)
        for (name, a), kk in zip(sorted(params.items()), keys, strict=True)
    }


@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_cell_matches_the_authors_time_mixing(method):
    """The cell's apply (and, for "recurrent", step by step) computes the authors' layer function, token
    for token: float32 within 2e-5 relative, float64 to 1e-11."""
    cell = _cell(method=method)
    params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(0), INPUT_SIZE), 1)
    xs = _normal(40, (B, T, INPUT_SIZE))
    eps = cell.head_dim * cell.norm_eps
    ref = np.stack([time_mixing_reference(cell, params, x, eps) for x in xs])
    assert np.max(np.abs(ref)) > 0.1
    ys32, _ = jax.jit(cell.apply)(params, jnp.asarray(xs, jnp.float32))
    np.testing.assert_allclose(ys32, ref, atol=2e-5 * np.max(np.abs(ref)))
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        ys64, _ = jax.jit(cell64.apply)(p64, jnp.asarray(xs))
        assert ys64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(ys64), ref, atol=1e-11)


def test_cell_chunked_equals_recurrent_gradients_float64():
    """apply("chunked") against apply("recurrent") in float64: values and gradients wrt the parameters,
    the inputs and both state leaves, with resets and padding, to rounding."""
    with jax.enable_x64(True):
        cell = _cell(dtype=jnp.float64, param_dtype=jnp.float64, chunk_size=4)
        params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(1), INPUT_SIZE), 2)
        xs = jnp.asarray(_normal(50, (B, T, INPUT_SIZE)))
        template = cell.initial_state((B,), jnp.float64)
        state = type(template)(*(jnp.asarray(_normal(51 + i, s.shape, 0.5)) for i, s in enumerate(template)))
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
        assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_c[0])), (
            "a parameter gets no gradient"
        )


def test_state_carried_across_two_calls_equals_one_call():
    """apply on [0, 9) then on [9, T) from the returned state (the previous input for the token shift, and
    S) equals one apply, with padding in both parts (also at the split) and resets in the second."""
    cell = _cell()
    params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(2), INPUT_SIZE), 3)
    xs = jnp.asarray(_normal(60, (B, T, INPUT_SIZE)), jnp.float32)
    resets = random_flags(61, (B, T), 0.1).at[:, :9].set(False)
    mask = random_flags(62, (B, T), 0.75).at[:, 8].set(False)

    @jax.jit
    def run(params, xs):
        whole = cell.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = cell.apply(params, xs[:, :9], mask=mask[:, :9])
        ys_b, final = cell.apply(params, xs[:, 9:], state, resets=resets[:, 9:], mask=mask[:, 9:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final), state

    whole, split, state = run(params, xs)
    assert max_abs_diff(whole, split) < 1e-5
    # the carried previous input is each row's last valid token of the first part (token 8 is padding)
    last = [max(t for t in range(9) if mask[b, t]) for b in range(B)]
    np.testing.assert_array_equal(state.shift, xs[np.arange(B), np.asarray(last)])


@pytest.mark.parametrize("extreme", ["decay->1,alpha->0", "decay->lower-bound,alpha->1"])
def test_cell_extreme_gates_long_sequence_finite(extreme):
    """Decay and in-context learning rate driven to their limits (w0, a0 = ±30) over 1024 tokens: values
    and gradients stay finite and the state bounded; the chunked form matches the token scan."""
    sign = 1.0 if "lower" in extreme else -1.0
    cell = _cell(chunk_size=16)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(3), INPUT_SIZE)
    params = {**params, "w0": jnp.full((H, N), 30.0 * sign), "a0": jnp.full((H, N), 30.0 * sign)}
    xs = jnp.asarray(_normal(70, (1, 1024, INPUT_SIZE)), jnp.float32)

    def loss(c):
        def f(p, x):
            ys, final = c.apply(p, x)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final.s)), (ys, final)

        return jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))

    g_c, (ys_c, s_c) = loss(cell)(params, xs)
    _, (ys_r, _) = loss(dataclasses.replace(cell, method="recurrent"))(params, xs)
    for leaf in jax.tree.leaves((g_c, ys_c, s_c)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.max(jnp.abs(s_c.s))) < 1e3
    assert max_abs_diff(ys_c, ys_r) < 1e-4 * max(1.0, float(jnp.max(jnp.abs(ys_r))))


def test_zero_input_has_finite_gradients():
    """An all-zero input makes k ⊙ k_k = 0: κ̂'s normalisation must give a zero gradient there, not NaN."""
    cell = _cell()
    params = jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(6), INPUT_SIZE)
    loss = lambda p, x: jnp.sum(jnp.sin(cell.apply(p, x)[0])) + jnp.sum(cell.apply(p, x)[1].s)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.zeros((1, 6, INPUT_SIZE)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bfloat16_inputs_float32_state():
    """dtype=bfloat16: bfloat16 projections and outputs, the recurrence and the state in float32, within
    bfloat16 rounding of the float32 cell."""
    cell = _cell()
    params = _perturbed(jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(4), INPUT_SIZE), 5)
    xs = jnp.asarray(_normal(80, (B, 64, INPUT_SIZE)), jnp.float32)
    ys32, s32 = jax.jit(cell.apply)(params, xs)
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16)
    ys16, s16 = jax.jit(cell16.apply)(params, xs.astype(jnp.bfloat16))
    assert ys16.dtype == jnp.bfloat16 and s16.s.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(ys32)))
    assert float(jnp.max(jnp.abs(ys16.astype(jnp.float32) - ys32))) < 0.05 * scale
    assert float(jnp.max(jnp.abs(s16.s - s32.s))) < 0.05 * float(jnp.max(jnp.abs(s32.s)))


def test_initialisation_follows_the_authors():
    """`RWKV_Tmix_x070.__init__` (RWKV-LM, train_temp): the token-shift mixes 1 − (i/C)^(p·ratio), the
    decay bias −6 + 6 (n/(C−1))^(1+ratio^0.3) + 0.5 + 2.5 zigzag, w ∈ (e^{−e^{−½}}, 1), zero LoRA
    down-projections and W_o, orthogonal LoRA up-projections of scale 0.1, the authors' LoRA widths."""
    cell = cells.RWKV7(num_heads=2, head_dim=4, layer_index=1, num_layers=3)
    p = cell.init(jax.random.PRNGKey(0), 8)
    c = 8
    ddd = np.arange(c) / c
    r1, r0 = 1 - 1 / 3, 1 / 2
    np.testing.assert_allclose(p["x_r"], 1 - ddd ** (0.2 * r1), rtol=1e-6)
    np.testing.assert_allclose(p["x_w"], 1 - ddd ** (0.9 * r1), rtol=1e-6)
    n = np.arange(c)
    zig = ((n % 4) - 1.5) / 1.5
    zig = zig * np.abs(zig)
    www = -6 + 6 * (n / (c - 1)) ** (1 + r0**0.3)
    np.testing.assert_allclose(np.asarray(p["w0"]).reshape(-1), www + 0.5 + 2.5 * zig, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(p["k_k"]).reshape(-1), 0.71 - (n / 7 - 0.5) * 0.1, rtol=1e-6)
    for name in ("w1", "a1", "g1", "w_o"):
        np.testing.assert_array_equal(p[name], 0.0)
    assert cell.ranks == (32, 32, 32)
    w2 = np.asarray(p["w2"]).reshape(32, c)
    np.testing.assert_allclose(w2.T @ w2, (0.1 * 2) ** 2 * np.eye(c), atol=1e-5)  # gain √(32/8) · 0.1
    # the decay: log w = −e^{−½} σ(·) ∈ (−0.6065, 0) for any input
    proj = cell.project(p, jnp.asarray(_normal(90, (3, c)) * 100, jnp.float32), jnp.zeros((3, c)))
    assert bool(jnp.all((proj["log_w"] < 0) & (proj["log_w"] > -math.exp(-0.5))))
    assert cell.param_groups()["w0"] == "ssm" and cell.param_groups()["w_r"] == "default"
    assert cell.param_groups()["k_k"] == "no_decay"


def test_bad_hyperparameters_and_input_size():
    with pytest.raises(ValueError, match="layer_index must be an integer in"):
        cells.RWKV7(num_heads=2, head_dim=4, layer_index=2, num_layers=2)
    with pytest.raises(ValueError, match="method must be one of"):
        cells.RWKV7(num_heads=2, head_dim=4, method="fast")
    with pytest.raises(ValueError, match="build it with d_model=5"):
        cells.RWKV7(num_heads=2, head_dim=4).init(jax.random.PRNGKey(0), 5)
    assert cells.get("rwkv7", num_heads=2, head_dim=4).output_size == 8
