"""Mamba-2: the grouped SSD engine against the authors' `ssd_minimal_discrete`, and the `Mamba2` cell against
a NumPy float64 port of `mamba_ssm`'s `Mamba2` layer, against a float64 token loop written from the
paper's equations (values and gradients), chunked (fused and not) == token scan == loop of `step` with
resets and padding, bfloat16 and extreme decays over 2048 tokens, the state carried across calls, the
reference initialisation, and training memory. The cell contract (tests/test_cell_contract.py) runs over
the cell too.

References (state-spaces/mamba, read at commit e9594ce):
- `mamba_ssm/modules/ssd_minimal.py`: `segsum`, `ssd_minimal_discrete` (Listing 1 of Dao & Gu 2024),
  ported to NumPy below line for line;
- `mamba_ssm/modules/mamba2.py` (`Mamba2.forward`, the `use_mem_eff_path=False` branch) and
  `mamba_ssm/ops/triton/layernorm_gated.py` (`rms_norm_ref`): the layer, ported to NumPy below.

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
from seqjax.scan.matrix_recurrence import linear_attention_chunked, linear_attention_recurrent
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
    split_floats,
    step_loop,
)

B, T = 2, 21  # T is not a multiple of the chunk sizes below; 21 = 3 blocks of 7 for ssd_minimal
D_MODEL = 4


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _silu(x):
    return x / (1 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _relative(got, want) -> float:
    """Largest leaf-wise |got − want| relative to that leaf's largest |want| (at least 1e-3)."""
    diffs = [
        float(np.max(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)), initial=0.0))
        / max(1e-3, float(np.max(np.abs(np.asarray(w, np.float64)), initial=0.0)))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]
    return max(diffs)


# --------------------------------------------------------------------------------------------------
# The authors' minimal SSD (mamba_ssm/modules/ssd_minimal.py), ported from torch + einops to NumPy
# --------------------------------------------------------------------------------------------------
def segsum(x: np.ndarray) -> np.ndarray:
    """More stable segment sum calculation (`ssd_minimal.segsum`)."""
    t = x.shape[-1]
    x = np.repeat(x[..., None], t, axis=-1)  # repeat(x, "... d -> ... d e", e=T)
    mask = np.tril(np.ones((t, t), dtype=bool), k=-1)
    x = np.where(mask, x, 0.0)
    x_segsum = np.cumsum(x, axis=-2)
    mask = np.tril(np.ones((t, t), dtype=bool), k=0)
    return np.where(mask, x_segsum, -np.inf)


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """`ssd_minimal.ssd_minimal_discrete`: X (batch, length, n_heads, d_head), A (batch, length, n_heads),
    B and C (batch, length, n_heads, d_state) -> Y (batch, length, n_heads, d_head), final state
    (batch, n_heads, d_head, d_state)."""
    assert X.dtype == A.dtype == B.dtype == C.dtype
    assert X.shape[1] % block_len == 0

    # Rearrange into blocks/chunks: "b (c l) ... -> b c l ..."
    X, A, B, C = (
        x.reshape(x.shape[0], x.shape[1] // block_len, block_len, *x.shape[2:]) for x in (X, A, B, C)
    )

    A = A.transpose(0, 3, 1, 2)  # "b c l h -> b h c l"
    A_cumsum = np.cumsum(A, axis=-1)

    # 1. Compute the output for each intra-chunk (diagonal blocks)
    L = np.exp(segsum(A))
    Y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X, optimize=True)

    # 2. Compute the state for each intra-chunk
    decay_states = np.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = np.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X, optimize=True)

    # 3. Compute the inter-chunk SSM recurrence; produces correct SSM states at chunk boundaries
    if initial_states is None:
        initial_states = np.zeros_like(states[:, :1])
    states = np.concatenate([initial_states, states], axis=1)
    decay_chunk = np.exp(segsum(np.pad(A_cumsum[:, :, :, -1], [(0, 0), (0, 0), (1, 0)])))
    new_states = np.einsum("bhzc,bchpn->bzhpn", decay_chunk, states, optimize=True)
    states, final_state = new_states[:, :-1], new_states[:, -1]

    # 4. Compute state -> output conversion per chunk
    state_decay_out = np.exp(A_cumsum)
    Y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", C, states, state_decay_out, optimize=True)

    # Add output of intra-chunk and inter-chunk terms (diagonal and off-diagonal blocks)
    Y = Y_diag + Y_off
    Y = Y.reshape(Y.shape[0], -1, *Y.shape[3:])
    return Y, final_state


def _ssd_inputs(seed: int, heads: int = 4, groups: int = 2, n: int = 3, p: int = 2):
    """float64 x, dt > 0, A < 0 (per head), grouped B and C, an initial state [B, H, N, P]."""
    x = _normal(seed, (B, T, heads, p))
    dt = _softplus(_normal(seed + 1, (B, T, heads)) - 1.0)
    a = -np.exp(np.random.default_rng(seed + 2).random(heads))
    b = _normal(seed + 3, (B, T, groups, n))
    c = _normal(seed + 4, (B, T, groups, n))
    s0 = _normal(seed + 5, (B, heads, n, p), 0.5)
    return x, dt, a, b, c, s0


def test_grouped_engine_matches_ssd_minimal_discrete():
    """SSD is the engine's scalar-decay recurrence with q = C, k = B (G groups, not repeated), v = Δ x,
    log γ = Δ A: both forms against `ssd_minimal_discrete` (with B, C repeated per head as the Triton
    kernels index them, and an initial state), in float64."""
    x, dt, a, b, c, s0 = _ssd_inputs(0)
    heads, groups = x.shape[2], b.shape[2]
    per_head = lambda m: np.repeat(m, heads // groups, axis=2)
    ref_y, ref_s = ssd_minimal_discrete(
        x * dt[..., None], a * dt, per_head(b), per_head(c), 7, np.swapaxes(s0, -1, -2)[:, None]
    )
    with jax.enable_x64(True):

        @jax.jit
        def forms(x, dt, a, b, c, s0):
            v, lg = x * dt[..., None], a * dt
            return [
                linear_attention_chunked(c, b, v, lg, s0, chunk_size=4),
                linear_attention_chunked(c, b, v, lg, s0, chunk_size=64),
                linear_attention_recurrent(c, b, v, lg, s0),
            ]

        for ys, s in forms(*(jnp.asarray(v) for v in (x, dt, a, b, c, s0))):
            assert ys.dtype == jnp.float64
            assert max_abs_diff((ys, np.swapaxes(s, -1, -2)), (ref_y, ref_s)) < 1e-12
    assert np.max(np.abs(ref_y)) > 0.5


# --------------------------------------------------------------------------------------------------
# The layer (mamba_ssm/modules/mamba2.py) in NumPy float64
# --------------------------------------------------------------------------------------------------
def torch_state_dict(params) -> dict[str, np.ndarray]:
    """seqjax's Mamba2 params in the reference module's layout (nn.Linear weights are [out, in],
    the depthwise Conv1d weight is [channels, 1, taps])."""
    p = {name: np.asarray(a, np.float64) for name, a in params.items()}
    return {
        "in_proj.weight": p["in_proj"].T,
        "conv1d.weight": p["conv_w"].T[:, None, :],
        "conv1d.bias": p["conv_b"],
        "dt_bias": p["dt_bias"],
        "A_log": p["A_log"],
        "D": p["D"],
        "norm.weight": p["norm_scale"],
        "out_proj.weight": p["out_proj"].T,
    }


def rms_norm_ref(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """`layernorm_gated.rms_norm_ref` without bias, in float64."""
    if z is not None and not norm_before_gate:
        x = x * _silu(z)
    if group_size is None:
        rstd = 1 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
        out = x * rstd * weight
    else:
        x_group = x.reshape(*x.shape[:-1], -1, group_size)  # "... (g d) -> ... g d"
        rstd = 1 / np.sqrt(np.mean(np.square(x_group), axis=-1, keepdims=True) + eps)
        out = (x_group * rstd).reshape(x.shape) * weight
    if z is not None and norm_before_gate:
        out = out * _silu(z)
    return out


def mamba2_reference(cell: cells.Mamba2, sd: dict[str, np.ndarray], u: np.ndarray, block_len: int = 7):
    """`Mamba2.forward(u)` with `use_mem_eff_path=False`, no inference cache, d_ssm = d_inner (so
    d_mlp = 0), `mamba_chunk_scan_combined` computed as `ssd_minimal_discrete(x·dt, A·dt, B, C)` + D x
    (as the reference's own `test_correctness` relates them). u [batch, seqlen, d_model]."""
    batch, seqlen, _ = u.shape
    d_ssm, ngroups, d_state, headdim = cell.d_inner, cell.num_groups, cell.state_size, cell.head_width
    nheads, d_conv = d_ssm // headdim, cell.d_conv
    zxbcdt = u @ sd["in_proj.weight"].T
    A = -np.exp(sd["A_log"])
    d_mlp = (zxbcdt.shape[-1] - 2 * d_ssm - 2 * ngroups * d_state - nheads) // 2
    assert d_mlp == 0
    sizes = np.cumsum([d_ssm, d_ssm + 2 * ngroups * d_state])
    z, xBC, dt = np.split(zxbcdt, sizes, axis=-1)
    # self.conv1d: Conv1d(groups=conv_dim, padding=d_conv - 1) over "b d l", then [:, :-(d_conv - 1)]
    xBC_t = np.pad(xBC.transpose(0, 2, 1), [(0, 0), (0, 0), (d_conv - 1, d_conv - 1)])
    w = sd["conv1d.weight"][:, 0, :]
    out_len = seqlen + d_conv - 1
    conv = sum(w[None, :, k, None] * xBC_t[:, :, k : k + out_len] for k in range(d_conv))
    conv = conv + sd["conv1d.bias"][None, :, None]
    xBC = _silu(conv.transpose(0, 2, 1)[:, : -(d_conv - 1)])
    x, Bm, Cm = np.split(xBC, np.cumsum([d_ssm, ngroups * d_state]), axis=-1)
    # mamba_chunk_scan_combined(x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    dt = _softplus(dt + sd["dt_bias"])
    x = x.reshape(batch, seqlen, nheads, headdim)
    per_head = lambda m: np.repeat(m.reshape(batch, seqlen, ngroups, d_state), nheads // ngroups, axis=2)
    y, _ = ssd_minimal_discrete(x * dt[..., None], A * dt, per_head(Bm), per_head(Cm), block_len)
    y = y + x * sd["D"][:, None]
    y = y.reshape(batch, seqlen, d_ssm)  # "b l h p -> b l (h p)"
    y = rms_norm_ref(
        y, sd["norm.weight"], z, eps=cell.norm_eps, group_size=d_ssm // ngroups, norm_before_gate=False
    )
    return y @ sd["out_proj.weight"].T


REFERENCE_CASES = [
    # d_inner 8 = 4 heads of 2 in 2 groups; chunks of 8 do not divide 21
    ("groups2-fused", cells.Mamba2(d_model=D_MODEL, state_size=3, head_dim=2, num_groups=2, chunk_size=8)),
    # 2 heads of 4, one group, the unfused chunked form with chunks of 5, conv of 3 taps
    (
        "groups1-unfused-conv3",
        cells.Mamba2(d_model=D_MODEL, state_size=5, head_dim=4, d_conv=3, chunk_size=5, fused=False),
    ),
]


@pytest.mark.parametrize("cell", [c for _, c in REFERENCE_CASES], ids=[i for i, _ in REFERENCE_CASES])
def test_cell_matches_reference_layer(cell):
    """The cell in float32 and float64 against the NumPy port of the reference layer, with the
    reference's own initialisation of every parameter (weights copied from the seqjax params)."""
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(0, impl="rbg"), D_MODEL)
    u = _normal(10, (B, T, D_MODEL))
    ref = mamba2_reference(cell, torch_state_dict(params), u)
    scale = float(np.max(np.abs(ref)))
    assert scale > 0.1
    ys32, _ = jax.jit(cell.apply)(params, jnp.asarray(u, jnp.float32))
    assert float(np.max(np.abs(np.asarray(ys32) - ref))) < 1e-5 * max(1.0, scale)
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        ys64, _ = jax.jit(cell64.apply)(p64, jnp.asarray(u))
        assert ys64.dtype == jnp.float64
        assert float(np.max(np.abs(np.asarray(ys64) - ref))) < 1e-10 * max(1.0, scale)


# --------------------------------------------------------------------------------------------------
# The paper's equations, token by token (jnp float64, differentiable), with seqjax's flags
# --------------------------------------------------------------------------------------------------
def paper_loop(cell: cells.Mamba2, params, u, state, resets, mask):
    """The Mamba-2 block written from the paper's equations (Dao & Gu 2024, §7 and the Mamba-2 block of
    Figure 6), one token at a time, in the reference's state layout h [B, H, P, N]:

        h_t = exp(Δ_t A) h_{t−1} + (Δ_t x_t) B_tᵀ ;  y_t = h_t C_t + D x_t
        out_t = W_out (RMSNorm_groups(y_t ⊙ SiLU(z_t)) ⊙ w)

    with x, B, C from the causal conv (window of the last d_conv inputs) + SiLU. A reset clears h and the
    conv window before its token; a padded token leaves both unchanged and outputs 0 (padding wins)."""
    h_, p_, g_, n_, di = cell.num_heads, cell.head_width, cell.num_groups, cell.state_size, cell.d_inner
    a = -jnp.exp(params["A_log"])

    def token(carry, inputs):
        window, h = carry  # [B, d_conv − 1, conv_dim], [B, H, P, N]
        u_t, reset, keep = inputs
        fresh = reset & keep
        w_prev = jnp.where(fresh[:, None, None], 0.0, window)
        h_prev = jnp.where(fresh[:, None, None, None], 0.0, h)
        zxbcdt = u_t @ params["in_proj"]
        z, xbc, dt = zxbcdt[:, :di], zxbcdt[:, di : di + cell.conv_dim], zxbcdt[:, di + cell.conv_dim :]
        w_new = jnp.concatenate([w_prev, xbc[:, None]], axis=1)  # [B, d_conv, conv_dim]
        xbc = jax.nn.silu(jnp.sum(w_new * params["conv_w"], axis=1) + params["conv_b"])
        x = xbc[:, :di].reshape(-1, h_, p_)
        per_head = lambda m: jnp.repeat(m.reshape(-1, g_, n_), h_ // g_, axis=1)  # head h: group h·G/H
        b_t, c_t = per_head(xbc[:, di : di + g_ * n_]), per_head(xbc[:, di + g_ * n_ :])
        delta = jax.nn.softplus(dt + params["dt_bias"])  # [B, H]
        decay = jnp.exp(delta * a)[..., None, None]
        h_new = decay * h_prev + (delta[..., None] * x)[..., None] * b_t[:, :, None]
        y = jnp.einsum("bhpn,bhn->bhp", h_new, c_t) + params["D"][:, None] * x
        y = (y.reshape(-1, di) * jax.nn.silu(z)).reshape(-1, g_, di // g_)
        y = y / jnp.sqrt(jnp.mean(y * y, axis=-1, keepdims=True) + cell.norm_eps)
        out = (y.reshape(-1, di) * params["norm_scale"]) @ params["out_proj"]
        window = jnp.where(keep[:, None, None], w_new[:, 1:], window)
        h = jnp.where(keep[:, None, None, None], h_new, h)
        return (window, h), jnp.where(keep[:, None], out, 0.0)

    carry = (state.conv, jnp.swapaxes(state.ssm, -1, -2))
    inputs = (jnp.swapaxes(u, 0, 1), resets.T, mask.T)
    (window, h), outs = jax.lax.scan(token, carry, inputs)
    return jnp.swapaxes(outs, 0, 1), cells.Mamba2State(conv=window, ssm=jnp.swapaxes(h, -1, -2))


def test_forms_equal_each_other_and_the_paper_loop_float64():
    """apply (chunked fused, chunked unfused, token scan), the loop of `step` and the paper's equations
    agree in float64, with a given state, resets and padding: outputs, final state and gradients wrt the
    parameters, the inputs and every state leaf, to rounding."""
    with jax.enable_x64(True):
        cell = cells.Mamba2(
            d_model=D_MODEL,
            state_size=3,
            head_dim=2,
            num_groups=2,
            chunk_size=8,
            dtype=jnp.float64,
            param_dtype=jnp.float64,
        )
        params = jax.jit(cell.init, static_argnums=1)(jax.random.key(1, impl="rbg"), D_MODEL)
        u = jnp.asarray(_normal(20, (B, T, D_MODEL)))
        state = cells.Mamba2State(
            *(jnp.asarray(_normal(21 + i, s.shape, 0.5)) for i, s in enumerate(cell.initial_state((B,))))
        )
        resets, mask = random_flags(23, (B, T), 0.2), random_flags(24, (B, T), 0.75)
        floats, rebuild = split_floats(state)

        def grads(fn):
            def loss(p, x, s):
                ys, final = fn(p, x, rebuild(s))
                return jnp.sum(jnp.sin(3 * ys)) + sum(jnp.sum(jnp.cos(f)) for f in final), (ys, final)

            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, u, floats)

        apply = lambda c: lambda p, x, s: c.apply(p, x, s, resets=resets, mask=mask)

        @jax.jit  # the reference and the three forms of apply in one compiled program
        def compiled():
            return grads(lambda p, x, s: paper_loop(cell, p, x, s, resets, mask)), {
                "fused": grads(apply(cell)),
                "unfused": grads(apply(dataclasses.replace(cell, fused=False))),
                "recurrent": grads(apply(dataclasses.replace(cell, method="recurrent"))),
            }

        ref, forms = compiled()
        forms["step loop"] = grads(lambda p, x, s: step_loop(cell, p, x, s, resets=resets, mask=mask))
        assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref[0])) > 0.1
        np.testing.assert_array_equal(np.asarray(ref[1][0])[~np.asarray(mask)], 0.0)
        for name, (g, out) in forms.items():
            assert _relative(out, ref[1]) < 1e-11, name
            assert _relative(g, ref[0]) < 1e-9, name


# --------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------
def test_bfloat16_and_extreme_decays_over_2048_tokens():
    """2048 tokens with resets and padding, one head with Δ A ≈ −2·10⁵ per token (decay exp(Δ A) = 0)
    and one with Δ ≈ 10⁻¹³ (decay 1 to float32): the chunked form equals the token scan in float32; with
    bfloat16 inputs and compute the state stays float32, and outputs, state and gradients are finite
    and close to float32's (bfloat16 rounding, amplified by Δ ≈ 20 and the norm, but no worse in the
    chunked form than in the token scan)."""
    length = 2048
    cell = cells.Mamba2(d_model=D_MODEL, state_size=4, head_dim=4, chunk_size=64, dtype=jnp.bfloat16)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(2, impl="rbg"), D_MODEL)
    params = {**params, "dt_bias": jnp.array([20.0, -30.0]), "A_log": jnp.log(jnp.array([1e4, 1.0]))}
    u = jnp.asarray(_normal(30, (B, length, D_MODEL)), jnp.bfloat16)
    resets, mask = random_flags(31, (B, length), 0.01), random_flags(32, (B, length), 0.95)
    f32 = dataclasses.replace(cell, dtype=jnp.float32)

    @jax.jit
    def run(params, u):
        def loss(p, x):
            ys, final = cell.apply(p, x, resets=resets, mask=mask)
            return jnp.sum(ys.astype(jnp.float32) ** 2) + jnp.sum(final.ssm**2), (ys, final)

        grads, (ys, final) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, u)
        x32 = u.astype(jnp.float32)
        chunked = f32.apply(params, x32, resets=resets, mask=mask)
        scan = dataclasses.replace(f32, method="recurrent").apply(params, x32, resets=resets, mask=mask)
        return grads, ys, final, chunked, scan

    grads, ys, final, chunked, scan = run(params, u)
    assert _relative(chunked, scan) < 1e-5
    assert ys.dtype == jnp.bfloat16 and final.ssm.dtype == jnp.float32 and final.conv.dtype == jnp.float32
    for leaf in [ys, *final, *jax.tree.leaves(grads)]:
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads[0]))
    assert float(jnp.max(jnp.abs(grads[1].astype(jnp.float32)))) > 0
    ys32, ref = np.asarray(ys, np.float32), np.asarray(scan[0])
    assert float(np.max(np.abs(ys32 - ref))) < 0.1 * float(np.max(np.abs(ref)))
    assert float(np.mean(np.abs(ys32 - ref))) < 0.01
    assert _relative(final.ssm, scan[1].ssm) < 0.02


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_chunked_gradients_at_extreme_decays(fused):
    """Δ A = log 1e-6, −30 and log(1 − 1e-6) per token in three heads (dt's projection zeroed, so Δ =
    softplus(dt_bias) = log 2, and A = −Δ A / log 2), over 2040 tokens, float32, chunks of 64, the last 5
    tokens padded: the chunked form's gradients (fused into the chunk loop or not) wrt every parameter
    and the inputs equal the float64 token scan's, each leaf to 1e-4 of its own largest entry and
    d/dA_log, d/d dt_bias head by head to 1e-4 (measured ≤ 3e-6). Before the SSD's chunk body took the
    diagonal decay and each key's decay to the chunk's end from the tokens they span
    (`matrix_recurrence._chunk_body`), d/dA_log was 71% off in the 1e-6 head and 100% in the e^-30 head."""
    length = 2040
    cell = cells.Mamba2(d_model=6, state_size=4, head_dim=4, chunk_size=64, fused=fused)
    heads = cell.num_heads
    assert heads == len(EXTREME_LOG_DECAYS)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(3, impl="rbg"), 6)
    params["in_proj"] = params["in_proj"].at[:, -heads:].set(0.0)  # dt = 0: Δ = softplus(dt_bias)
    params["dt_bias"] = jnp.zeros((heads,))
    params["A_log"] = jnp.log(-jnp.asarray(EXTREME_LOG_DECAYS) / math.log(2.0))
    names = sorted(params)
    xs = _normal(33, (1, length, 6))
    mask = jnp.arange(length)[None] < length - 5
    reference = dataclasses.replace(cell, method="recurrent", dtype=jnp.float64, param_dtype=jnp.float64)
    run = lambda c: lambda *a: c.apply(dict(zip(names, a[:-1], strict=True)), a[-1], mask=mask)
    g32, g64 = float32_and_float64_gradients(run(cell), run(reference), [*(params[n] for n in names), xs])
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    for name in ("A_log", "dt_bias"):
        i = names.index(name)
        assert max(headwise_relative_diffs(g32[i], g64[i], axis=0)) < 1e-4, name


def test_state_carried_across_two_calls_equals_one_call():
    """apply on [0, 9) then on [9, T) from the returned state (conv window and S) equals one apply, with
    padding in both parts (also at the split) and resets in the second."""
    cell = REFERENCE_CASES[0][1]
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(3, impl="rbg"), D_MODEL)
    xs = jnp.asarray(_normal(40, (B, T, D_MODEL)), jnp.float32)
    resets = random_flags(41, (B, T), 0.1).at[:, :9].set(False)
    mask = random_flags(42, (B, T), 0.75).at[:, 8].set(False)

    @jax.jit
    def run(params, xs):
        whole = cell.apply(params, xs, resets=resets, mask=mask)
        ys_a, state = cell.apply(params, xs[:, :9], mask=mask[:, :9])
        ys_b, final = cell.apply(params, xs[:, 9:], state, resets=resets[:, 9:], mask=mask[:, 9:])
        return whole, (jnp.concatenate([ys_a, ys_b], axis=1), final)

    whole, split = run(params, xs)
    assert max_abs_diff(whole, split) < 1e-5


def test_training_memory_keeps_no_per_token_state():
    """The VJP residuals of apply: no [T, H, N, P] tensor of per-token states (which the token scan does
    keep: the check can tell them apart). The fused chunked form keeps its input u, the conv's output
    (z, xBC, dt: as wide as the input projection), one state per chunk and the parameters; the conv is
    rematerialised, so none of its per-tap intermediates."""
    cell = cells.Mamba2(d_model=D_MODEL, state_size=16, head_dim=2, num_groups=2, chunk_size=16)
    params = cell.init(jax.random.PRNGKey(0), D_MODEL)
    length = 256
    xs = jnp.zeros((B, length, D_MODEL))

    def residual_sizes(c):
        vjp = lambda p, x: jax.vjp(lambda p, x: c.apply(p, x)[0], p, x)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, params, xs))]

    per_token_states = B * length * cell.num_heads * cell.state_size * cell.head_width
    projected = B * length * params["in_proj"].shape[1]  # z, x, B, C, dt
    chunk_states = (length // cell.chunk_size) * B * cell.num_heads * cell.state_size * cell.head_width
    fused = residual_sizes(cell)
    assert max(fused) <= projected < per_token_states
    assert sum(fused) < projected + chunk_states + 2 * xs.size + 2 * sum(p.size for p in params.values())
    assert max(residual_sizes(dataclasses.replace(cell, method="recurrent"))) >= per_token_states


# --------------------------------------------------------------------------------------------------
# Initialisation, hyperparameters, registry
# --------------------------------------------------------------------------------------------------
def test_initialisation_follows_the_reference():
    """A ~ U[1, 16], dt = softplus(dt_bias) log-uniform in [1e-3, 0.1], D = 1, norm scale 1, conv weight
    and bias U(±1/√d_conv), projections U(±1/√fan_in); A_log, dt_bias and D in the "ssm" group."""
    cell = cells.Mamba2(d_model=256, state_size=4, head_dim=1)  # 512 heads: enough draws for the moments
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(4, impl="rbg"), 256)
    a = np.exp(np.asarray(params["A_log"], np.float64))
    assert a.min() >= 1.0 and a.max() <= 16.0 and abs(a.mean() - 8.5) < 0.6
    dt = _softplus(np.asarray(params["dt_bias"], np.float64))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert abs(np.mean(np.log(dt)) - 0.5 * (math.log(1e-3) + math.log(0.1))) < 0.2
    np.testing.assert_array_equal(params["D"], 1.0)
    np.testing.assert_array_equal(params["norm_scale"], 1.0)
    for name, bound in [
        ("conv_w", 0.5),
        ("conv_b", 0.5),
        ("in_proj", 1 / math.sqrt(256)),
        ("out_proj", 1 / math.sqrt(512)),
    ]:
        value = np.abs(np.asarray(params[name]))
        assert value.max() <= bound and value.max() > 0.9 * bound, name
    assert params["in_proj"].shape == (256, 2 * 512 + 2 * 4 + 512)
    groups = cell.param_groups()
    assert {name for name, g in groups.items() if g == "ssm"} == {"A_log", "dt_bias", "D"}


def test_sizes_registry_and_defaults():
    cell = cells.get("mamba2", d_model=64)
    assert cell == cells.Mamba2(d_model=64)
    # the reference's defaults: N = 128, expand 2, P = 64, one group, 4 taps
    assert (cell.state_size, cell.d_inner, cell.head_width, cell.num_heads, cell.num_groups) == (
        128,
        128,
        64,
        2,
        1,
    )
    assert cell.conv_dim == 128 + 2 * 128 and cell.output_size == 64
    # head_dim not given: gcd(64, d_inner), so every d_model has heads that divide d_inner
    assert [cells.Mamba2(d_model=d).head_width for d in (8, 40, 96, 5)] == [16, 16, 64, 2]
    with pytest.raises(ValueError, match="input_size=5 but d_model=4"):
        cells.Mamba2(d_model=4, head_dim=2).init(jax.random.PRNGKey(0), 5)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cells.Mamba2(d_model=0), "d_model"),
        (lambda: cells.Mamba2(d_model=4, head_dim=3), "not a multiple of head_dim = 3"),
        (lambda: cells.Mamba2(d_model=4, head_dim=2, num_groups=3), "num_groups = 3 must divide the 4 heads"),
        (lambda: cells.Mamba2(d_model=4, dt_min=0.2), "dt_min <= dt_max"),
        (lambda: cells.Mamba2(d_model=4, a_min=0.0), "a_min <= a_max"),
        (lambda: cells.Mamba2(d_model=4, method="fast"), "method must be one of"),
        (lambda: cells.Mamba2(d_model=4, norm_eps=0.0), "norm_eps must be > 0"),
        (lambda: cells.Mamba2(d_model=4, fused=1), "fused must be True or False"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()
