"""Linear attention: the matrix recurrence engine (chunked == recurrent == explicit attention, with no,
a per-head or a per-channel decay) and the LinearAttention, Performer, GatedLinearAttention and
ScalarGatedLinearAttention cells (apply == loop of step, dtypes, features). GLA against fla's references:
tests/test_gla.py.

Everything runs under `jit`: on a small CPU, op-by-op dispatch of the eager path costs more than the
compiles it saves.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.cells.linear_attention import (
    GatedLinearAttention,
    LinearAttention,
    Performer,
    ScalarGatedLinearAttention,
    orthogonal_random_features,
    positive_random_features,
)
from seqjax.cells.registry import get
from seqjax.scan.matrix_recurrence import (
    linear_attention,
    linear_attention_chunked,
    linear_attention_recurrent,
    normalized_linear_attention,
)
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
    max_abs_diff,
    random_flags,
    step_loop,
)

B, T, H, D, C = 2, 21, 2, 4, 8  # T is not a multiple of the chunk size C
INPUT_SIZE = 5


def assert_close(got, want, rtol: float) -> None:
    """Leaf by leaf: max |got − want| ≤ rtol · max(1, max |want|) (gradient leaves differ in scale)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape
        scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        assert float(np.max(np.abs(g - w), initial=0.0)) <= rtol * scale, (
            float(np.max(np.abs(g - w))),
            scale,
        )


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------
def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    # NumPy draws: an eager jax.random call compiles once per shape, which dominates small tests.
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _engine_inputs(seed: int, batch=(B,), length=T, dk=D, dv=D, channel=False):
    """q, k, v, log γ, s0; log γ [*batch, T, H] or, with `channel`, [*batch, T, H, d_k]."""
    q = _normal(seed, (*batch, length, H, dk))
    k = _normal(seed + 1000, (*batch, length, H, dk))
    v = _normal(seed + 2000, (*batch, length, H, dv))
    # decays between ~0.5 and ~1, so the gated case mixes short and long memories
    decay_shape = (*batch, length, H, dk) if channel else (*batch, length, H)
    log_gamma = -jnp.logaddexp(0.0, -(1.5 + _normal(seed + 3000, decay_shape)))
    s0 = _normal(seed + 4000, (*batch, H, dk, dv), 0.5)
    return q, k, v, log_gamma, s0


ENGINE_CASES = [
    # (id, decay: None / "head" / "channel", flags, chunk_size). Per channel, chunks of up to 8 tokens are
    # one sub-chunk; chunk 20 over 21 tokens is two chunks of three sub-chunks of 8 (the last ones padded),
    # and chunk 64 one chunk of 21 tokens in three sub-chunks.
    ("ungated-resets-mask", None, True, C),
    ("gated-chunk>T", "head", False, 64),
    ("gated-resets-mask", "head", True, C),
    ("gated-resets-mask-chunk1", "head", True, 1),
    ("channel-chunk>T", "channel", False, 64),
    ("channel-resets-mask", "channel", True, C),
    ("channel-resets-mask-subchunks", "channel", True, 20),
    ("channel-resets-mask-chunk1", "channel", True, 1),
]


@pytest.mark.parametrize(
    ("decay", "flags", "chunk"), [c[1:] for c in ENGINE_CASES], ids=[c[0] for c in ENGINE_CASES]
)
def test_chunked_equals_recurrent_values_and_gradients(decay, flags, chunk):
    """In float64, so any difference beyond rounding would be a real discrepancy."""
    gated = decay is not None
    with jax.enable_x64(True):
        inputs = _engine_inputs(0, channel=decay == "channel")
        q, k, v, lg, s0 = (jnp.asarray(np.asarray(a), jnp.float64) for a in inputs)
        resets = random_flags(1, (B, T), 0.2) if flags else None
        mask = random_flags(2, (B, T), 0.7) if flags else None

        def loss(fn, q, k, v, lg, s0):
            ys, final = fn(q, k, v, lg if gated else None, s0, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final)), (ys, final)

        chunked = lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=chunk)
        grad = lambda fn: jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=range(5), has_aux=True))
        g_c, (ys_c, f_c) = grad(chunked)(q, k, v, lg, s0)
        g_r, (ys_r, f_r) = grad(linear_attention_recurrent)(q, k, v, lg, s0)
        assert ys_c.dtype == jnp.float64
        assert max_abs_diff((ys_c, f_c), (ys_r, f_r)) < 1e-10
        assert max_abs_diff(g_c, g_r) < 1e-10
        if not gated:
            np.testing.assert_array_equal(g_c[3], 0.0)
        if flags:
            np.testing.assert_array_equal(np.asarray(ys_c)[~np.asarray(mask)], 0.0)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in g_c)


def test_engine_batch_shapes_and_auto():
    """Two batch axes agree with the reference on one sequence (no batch axis); "auto" is the chunked
    form."""
    q, k, v, lg, s0 = _engine_inputs(3, batch=(2, 3))
    resets, mask = random_flags(4, (2, 3, T), 0.2), random_flags(5, (2, 3, T), 0.8)

    @functools.partial(jax.jit, static_argnums=0)
    def run(method, q, k, v, lg, s0, resets, mask):
        return linear_attention(q, k, v, lg, s0, resets=resets, mask=mask, method=method, chunk_size=C)

    ys, final = run("chunked", q, k, v, lg, s0, resets, mask)
    assert ys.shape == (2, 3, T, H, D) and final.shape == (2, 3, H, D, D)
    one = run("recurrent", *(a[1, 2] for a in (q, k, v, lg, s0, resets, mask)))
    assert_close(one, (ys[1, 2], final[1, 2]), 1e-5)
    jaxpr = lambda method: str(jax.make_jaxpr(lambda *a: run(method, *a))(q, k, v, lg, s0, resets, mask))
    assert jaxpr("auto") == jaxpr("chunked")


def _explicit_attention(phi_q, phi_k, v, log_gamma=None, normalize=False, eps=1e-6):
    """Σ_{j≤i} decay_ij (φq_i·φk_j) v_j [/ Σ_{j≤i} decay_ij (φq_i·φk_j) + eps] with a full [T, T] matrix."""
    scores = jnp.einsum("bihd,bjhd->bhij", phi_q, phi_k)
    causal = jnp.tril(jnp.ones((phi_q.shape[1],) * 2, bool))
    weights = jnp.where(causal, scores, 0.0)
    if log_gamma is not None and log_gamma.ndim == phi_q.ndim:  # per channel: inside the sum over d
        cum = jnp.cumsum(log_gamma, axis=1)  # [B, T, H, d]
        decay = jnp.exp(cum[:, :, None] - cum[:, None, :])  # [B, i, j, H, d]; overflows only above i
        decay = jnp.where(causal[None, :, :, None, None], decay, 0.0)
        weights = jnp.einsum("bihd,bjhd,bijhd->bhij", phi_q, phi_k, decay)
    elif log_gamma is not None:
        cum = jnp.cumsum(log_gamma, axis=1).transpose(0, 2, 1)  # [B, H, T]
        weights = weights * jnp.where(causal, jnp.exp(cum[..., :, None] - cum[..., None, :]), 0.0)
    ys = jnp.einsum("bhij,bjhd->bihd", weights, v)
    if normalize:
        ys = ys / (jnp.sum(weights, axis=-1).transpose(0, 2, 1)[..., None] + eps)
    return ys


@pytest.mark.parametrize("variant", ["plain", "normalised", "gated", "channel"])
def test_chunked_equals_explicit_causal_attention(variant):
    q, k, v, lg, _ = _engine_inputs(6, length=29, channel=variant == "channel")
    lg = lg if variant in ("gated", "channel") else None

    @jax.jit
    def both(q, k, v, lg):
        phi_q, phi_k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
        if variant == "normalised":
            ys, state = normalized_linear_attention(phi_q, phi_k, v, chunk_size=C)
        else:
            ys, state = linear_attention_chunked(phi_q, phi_k, v, lg, chunk_size=C)
        return ys, state, _explicit_attention(phi_q, phi_k, v, lg, normalize=variant == "normalised"), phi_k

    ys, state, ref, phi_k = both(q, k, v, lg)
    if variant == "normalised":
        s, z = state
        assert s.shape == (B, H, D, D) and z.shape == (B, H, D)
        assert_close(z, jnp.sum(phi_k, axis=1), 1e-6)
    assert_close(ys, ref, 1e-5)


@pytest.mark.parametrize("channel", [False, True], ids=["head", "channel"])
def test_chunked_backward_stores_no_per_token_states_or_chunk_matrices(channel):
    """The VJP's residuals are O(inputs) + one state per chunk: no [C, C] matrix or S_t per token (nor,
    per channel, a [C, C, d_k] decay)."""
    length = 64
    q, k, v, lg, s0 = _engine_inputs(7, length=length, channel=channel)
    resets, mask = random_flags(8, (B, length), 0.1), random_flags(9, (B, length), 0.9)
    chunks = length // C

    def residual_shapes(fn):
        vjp = lambda *a: jax.vjp(lambda *a: fn(*a, resets=resets, mask=mask), *a)[1]
        return [leaf.shape for leaf in jax.tree.leaves(jax.eval_shape(vjp, q, k, v, lg, s0))]

    budget = max(q.size, chunks * B * H * D * D)
    assert chunks * B * H * C * C > budget  # what autodiff without remat would store
    shapes = residual_shapes(lambda *a, **kw: linear_attention_chunked(*a, **kw, chunk_size=C))
    assert max(map(np.prod, shapes)) <= budget, shapes
    # the recurrent reference does keep every S_t: the check can tell the two apart
    assert max(map(np.prod, residual_shapes(linear_attention_recurrent))) >= length * B * H * D * D


@pytest.mark.parametrize("channel", [False, True], ids=["head", "channel"])
def test_chunked_bfloat16_gradients_and_empty_sequence(channel):
    """bf16 operands: values and all gradients (in the operands' dtypes) track the float32 result; T = 0
    returns no outputs and s0 unchanged."""
    q, k, v, lg, s0 = _engine_inputs(11, channel=channel)
    resets, mask = random_flags(12, (B, T), 0.2), random_flags(13, (B, T), 0.8)

    def loss(q, k, v, lg, s0):
        ys, final = linear_attention_chunked(q, k, v, lg, s0, resets=resets, mask=mask, chunk_size=C)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(jnp.cos(final))

    grad = jax.jit(jax.value_and_grad(loss, argnums=range(5)))
    val32, g32 = grad(q, k, v, lg, s0)
    bf = lambda x: x.astype(jnp.bfloat16)
    val16, g16 = grad(bf(q), bf(k), bf(v), lg, s0)
    assert [g.dtype for g in g16] == [jnp.bfloat16] * 3 + [jnp.float32] * 2
    assert_close(val16, val32, 0.05)
    assert_close(g16, g32, 0.05)

    empty = lambda x: x[:, :0]
    ys, final = jax.jit(linear_attention_chunked)(empty(q), empty(k), empty(v), empty(lg), s0)
    assert ys.shape == (B, 0, H, D)
    np.testing.assert_array_equal(final, s0)
    ys, final = jax.jit(linear_attention_recurrent)(empty(q), empty(k), empty(v), empty(lg), s0)
    assert ys.shape == (B, 0, H, D)
    np.testing.assert_array_equal(final, s0)


@pytest.mark.parametrize("groups", [3, 1], ids=["per-head", "grouped"])
def test_chunked_gradients_at_extreme_decays(groups):
    """A decay per head of 1e-6, e^-30 and 1 − 1e-6 per token (`EXTREME_LOG_DECAYS`) over 2040 tokens,
    float32, chunks of 64 (the last one ends in the engine's own padding) and the last 5 tokens padded;
    q, k per head or one group for the three heads (Mamba-2's layout): the chunked form's gradients wrt
    q, k, v, log γ and s0 equal the float64 token scan's, each leaf to 1e-4 of its own largest entry
    and d/d log γ head by head to 1e-4 of that head's largest (measured: ≤ 4e-5 in the 1e-6 head, where
    exp(b_i − b_j) rounds b of a chunk down to −880, ≤ 1e-6 elsewhere). Before the chunk body took the
    diagonal decay and each key's decay to the chunk's end from the tokens they span
    (`matrix_recurrence._chunk_body`), d/d log γ was 3% (grouped: 7%) off in the 1e-6 head and 100% in
    the e^-30 head. The float32 token scan is no reference: over 2040 tokens of γ ≈ 1 its own gradients are
    ~2e-5 off."""
    length, heads, dk = 2040, len(EXTREME_LOG_DECAYS), 4
    rng = np.random.default_rng(14)
    q, k = (rng.standard_normal((1, length, groups, dk)) / 2 for _ in range(2))
    v = rng.standard_normal((1, length, heads, dk))
    lg = np.broadcast_to(np.asarray(EXTREME_LOG_DECAYS), (1, length, heads))
    s0 = rng.standard_normal((1, heads, dk, dk)) / 2
    mask = jnp.arange(length)[None] < length - 5
    chunked = functools.partial(linear_attention_chunked, mask=mask, chunk_size=64)
    recurrent = functools.partial(linear_attention_recurrent, mask=mask)
    g32, g64 = float32_and_float64_gradients(chunked, recurrent, (q, k, v, lg, s0))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[3], g64[3], axis=-1)) < 1e-4


def test_engine_rejects_bad_inputs():
    q, k, v, lg, s0 = _engine_inputs(10)
    with pytest.raises(ValueError, match="`k` has shape"):
        linear_attention_chunked(q, k[..., :3], v)
    with pytest.raises(ValueError, match="`v` has shape"):
        linear_attention_recurrent(q, k, v[:, :5])
    with pytest.raises(ValueError, match="`log_gamma` has shape"):
        linear_attention_chunked(q, k, v, lg[..., :1])
    with pytest.raises(ValueError, match=r"`log_gamma` has shape .* one decay per key channel"):
        linear_attention_recurrent(q, k, v, jnp.zeros((B, T, H, D + 1)))
    with pytest.raises(ValueError, match="`s0` has shape"):
        linear_attention_chunked(q, k, v, lg, s0[..., :2])
    with pytest.raises(ValueError, match=r"`resets` has shape .*\[\*batch, time\]"):
        linear_attention_chunked(q, k, v, resets=jnp.zeros((B, T + 1), bool))
    with pytest.raises(TypeError, match="`mask` must be boolean"):
        linear_attention_recurrent(q, k, v, mask=jnp.ones((B, T), jnp.float32))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        linear_attention_chunked(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        linear_attention(q, k, v, method="fast")


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------
CELL_CASES = [
    ("linear_attention", LinearAttention(num_heads=H, head_dim=D, chunk_size=C)),
    # 10 features with head_dim 4: two full orthogonal blocks and a truncated one
    ("performer", Performer(num_heads=H, head_dim=D, num_features=10, chunk_size=C)),
    # per-channel GLA: d_k = 2; chunks of 8 are one sub-chunk each (tests/test_gla.py covers more)
    ("gla", GatedLinearAttention(num_heads=H, head_dim=D, chunk_size=C)),
    ("gla_scalar-data", ScalarGatedLinearAttention(num_heads=H, head_dim=D, chunk_size=C)),
    (
        "gla_scalar-fixed",
        ScalarGatedLinearAttention(
            num_heads=H,
            head_dim=D,
            chunk_size=C,
            gate="fixed",
            output_gate=False,
            group_norm=False,
            out_features=3,
        ),
    ),
]
CELL_IDS = [name for name, _ in CELL_CASES]
CELLS = [cell for _, cell in CELL_CASES]


def _key(seed: int) -> jax.Array:
    # RngBitGenerator keys: init code is the same for any key type, and XLA compiles threefry's
    # unrolled rounds far more slowly (seconds per init on a small CPU).
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _params(cell):
    return jax.jit(cell.init, static_argnums=1)(_key(0), INPUT_SIZE)


@functools.cache
def _apply(cell):
    return jax.jit(lambda p, x, s, r, m: cell.apply(p, x, s, resets=r, mask=m))


def _state(cell, seed, batch_shape):
    """A random non-zero state; the normaliser z is non-negative, as any reachable z is."""
    state = cell.initial_state(batch_shape)
    leaves = [_normal(seed + i, leaf.shape, 0.5) for i, leaf in enumerate(state)]
    state = type(state)(*leaves)
    return state._replace(z=jnp.abs(state.z)) if hasattr(state, "z") else state


def _xs(seed, batch_shape=(B,), length=T):
    return _normal(seed, (*batch_shape, length, INPUT_SIZE))


def _loss(ys, final):
    return jnp.sum(jnp.sin(3 * ys)) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final))


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_apply_equals_step_loop_and_recurrent(cell):
    """apply ("auto" = chunked) and a Python loop of `step` agree in values and gradients wrt params,
    inputs and the initial state, with resets and padding; so do the values of apply("recurrent")."""
    length = 11
    params = _params(cell)
    xs = _xs(1, length=length)
    state = _state(cell, 2, (B,))
    resets, mask = random_flags(3, (B, length), 0.25), random_flags(4, (B, length), 0.7)

    def value_and_grad(fn):
        return jax.value_and_grad(lambda *a: (_loss(*fn(*a)), fn(*a)), argnums=(0, 1, 2), has_aux=True)

    by_apply = jax.jit(value_and_grad(lambda p, x, s: cell.apply(p, x, s, resets=resets, mask=mask)))
    by_steps = value_and_grad(lambda p, x, s: step_loop(cell, p, x, s, resets=resets, mask=mask))
    (_, out), grads = by_apply(params, xs, state)
    (_, ref), ref_grads = by_steps(params, xs, state)
    assert out[0].shape == (B, length, cell.output_size)
    assert_close(out, ref, 1e-5)
    assert_close(grads, ref_grads, 2e-5)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(grads))
    np.testing.assert_array_equal(np.asarray(out[0])[~np.asarray(mask)], 0.0)
    if "features" in params:  # Performer's random features are frozen: exactly zero gradient
        np.testing.assert_array_equal(grads[0]["features"], 0.0)
        np.testing.assert_array_equal(ref_grads[0]["features"], 0.0)
    # values of the token scan; its gradients equal the chunked form's in the engine tests
    recurrent = dataclasses.replace(cell, method="recurrent")
    assert_close(_apply(recurrent)(params, xs, state, resets, mask), ref, 1e-5)


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_fused_projections_equal_unfused_values_and_gradients(cell):
    """The default `fused` form (projections inside the chunk loop, custom VJP over the whole layer)
    against the full-length projections around `linear_attention_chunked`: values and gradients wrt
    params, inputs and the initial state, with two batch axes, resets, padding and T not a multiple of C."""
    params = _params(cell)
    batch = (2, 3)
    xs = _xs(5, batch, T)
    state = _state(cell, 6, batch)
    resets, mask = random_flags(7, (*batch, T), 0.2), random_flags(8, (*batch, T), 0.75)

    def value_and_grad(c):
        def loss(p, x, s):
            out = c.apply(p, x, s, resets=resets, mask=mask)
            return _loss(*out), out

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    assert cell.fused
    (_, out), grads = value_and_grad(cell)(params, xs, state)
    (_, ref), ref_grads = value_and_grad(dataclasses.replace(cell, fused=False))(params, xs, state)
    assert out[0].shape == (*batch, T, cell.output_size)
    assert_close(out, ref, 1e-5)
    assert_close(grads, ref_grads, 2e-5)
    # no tokens: no outputs, the state unchanged
    ys, final = jax.jit(cell.apply)(params, xs[..., :0, :], state)
    assert ys.shape == (*batch, 0, cell.output_size)
    assert_close(final, state, 0.0)


@pytest.mark.parametrize("name", ["gla", "gla_scalar-data"])
def test_fused_backward_keeps_the_input_and_chunk_states_only(name):
    """The fused layer's VJP residuals: xs, the flags, one state per chunk and the parameters; none of
    the [B, T, H, d] projections, gates or norms the unfused form keeps (which the check can see)."""
    cell = CELLS[CELL_IDS.index(name)]  # C = 8: projections, gate, norm, output gate
    params, length = _params(cell), 64
    xs, state = _xs(9, length=length), cell.initial_state((B,))

    def residual_sizes(c):
        vjp = lambda p, x: jax.vjp(lambda p, x: c.apply(p, x, state)[0], p, x)[1]
        return [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(vjp, params, xs))]

    projection = B * length * H * D
    chunk_states = (length // cell.chunk_size) * B * H * D * D
    assert projection > max(xs.size, chunk_states)
    assert max(residual_sizes(cell)) <= max(xs.size, chunk_states)
    assert sum(size >= projection for size in residual_sizes(dataclasses.replace(cell, fused=False))) >= 3


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_padding_resets_and_constant_state(cell):
    params, apply = _params(cell), _apply(cell)
    valid, total = 6, 12
    xs = _xs(1, (1,), total)
    zeros = cell.initial_state((1,))
    no_resets, all_valid = jnp.zeros((1, valid), bool), jnp.ones((1, valid), bool)
    ys_short, state_short = apply(params, xs[:, :valid], zeros, no_resets, all_valid)
    # padding on both sides with garbage: same outputs on the valid tokens, zeros elsewhere, same state
    garbage = _normal(5, (1, total - valid, INPUT_SIZE), 100.0)
    padded = jnp.concatenate([garbage[:, :2], xs[:, :valid], garbage[:, 2:]], axis=1)
    mask = ((jnp.arange(total) >= 2) & (jnp.arange(total) < 2 + valid))[None]
    ys, state = apply(params, padded, zeros, jnp.zeros((1, total), bool), mask)
    np.testing.assert_array_equal(ys[~mask], 0.0)
    assert_close(ys[mask], ys_short[0], 1e-5)
    assert_close(state, state_short, 1e-5)
    # a reset splits packed segments, even when the first segment starts from a given state
    state0 = _state(cell, 3, (1,))
    resets = jnp.zeros((1, total), bool).at[0, valid].set(True)
    ys_packed, _ = apply(params, xs, state0, resets, jnp.ones((1, total), bool))
    ys_a, _ = apply(params, xs[:, :valid], state0, no_resets, all_valid)
    ys_b, _ = apply(params, xs[:, valid:], zeros, no_resets, all_valid)
    assert_close(ys_packed, jnp.concatenate([ys_a, ys_b], 1), 1e-5)
    # the state is O(heads · d_k · d_v), whatever the length
    assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, zeros)
    assert state.s.shape == (1, H, cell.key_dim, D)


# gla_scalar-fixed differs from gla_scalar-data only in where log γ comes from
@pytest.mark.parametrize("cell", CELLS[:4], ids=CELL_IDS[:4])
def test_dtypes_bfloat16_and_float64_reference(cell):
    """float32 against a float64 reference (values and parameter gradients), and bfloat16 compute close
    to float32 with a float32 state."""
    params = _params(cell)
    length = 32
    xs = _xs(1, length=length)
    resets, mask = random_flags(3, (B, length), 0.05), random_flags(4, (B, length), 0.9)

    def run(c, p, x, s):
        def loss(p):
            ys, final = c.apply(p, x, s, resets=resets, mask=mask)
            return jnp.sum(ys.astype(jnp.float32) ** 2), (ys, final)

        (_, (ys, final)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(p)
        return ys, final, g

    ys32, _, g32 = run(cell, params, xs, cell.initial_state((B,)))
    ys16, s16 = _apply(dataclasses.replace(cell, dtype=jnp.bfloat16))(params, xs, None, resets, mask)
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        x64 = jnp.asarray(np.asarray(xs), jnp.float64)
        ys64, s64, g64 = run(cell64, p64, x64, cell64.initial_state((B,), jnp.float64))
        assert ys64.dtype == jnp.float64
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(s64))
        ys64, g64 = np.asarray(ys64), jax.tree.map(np.asarray, g64)
    assert_close(ys32, ys64, 1e-5)
    for name in params:
        scale = np.max(np.abs(g64[name])) + 1e-12
        assert np.max(np.abs(np.asarray(g32[name]) - g64[name])) / scale < 1e-4, name

    assert ys16.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s16))
    scale = float(jnp.max(jnp.abs(ys32)))
    err = jnp.abs(ys16.astype(jnp.float32) - ys32)
    assert float(jnp.max(err)) < 0.05 * scale
    assert float(jnp.mean(err)) < 0.01 * scale


# The contract (tests/test_cell_contract.py) checks this for linear attention, Performer, GLA and the
# scalar GLA with the data gate; the fixed gate without output gate and norm has a different parameter set.
@pytest.mark.parametrize("cell", CELLS[4:], ids=CELL_IDS[4:])
def test_param_axes_groups_and_registry(cell):
    params = _params(cell)
    axes, groups = cell.param_axes(), cell.param_groups()
    assert set(axes) == set(params) == set(groups)
    for name, leaf in params.items():
        assert len(axes[name]) == leaf.ndim, name
        assert all(isinstance(a, str) for a in axes[name]), name
        assert leaf.dtype == jnp.float32
    assert cell.input_size_of(params) == INPUT_SIZE
    assert get(cell.name, **{f.name: getattr(cell, f.name) for f in dataclasses.fields(cell)}) == cell


def test_registry_names():
    assert isinstance(get("linear_attention", num_heads=2, head_dim=4), LinearAttention)
    assert isinstance(get("Performer", num_heads=2, head_dim=4), Performer)
    assert type(get("gla", num_heads=2, head_dim=4)) is GatedLinearAttention
    scalar = get("gla_scalar", num_heads=2, head_dim=4, gate="fixed")
    assert type(scalar) is ScalarGatedLinearAttention


def test_gla_scalar_fixed_decays_are_retnet():
    cell = ScalarGatedLinearAttention(num_heads=3, head_dim=D, gate="fixed", output_gate=False)
    log_gamma = cell._extra_inputs({}, _xs(1))["log_gamma"]
    assert log_gamma.shape == (B, T, 3)
    np.testing.assert_allclose(jnp.exp(log_gamma[0, 0]), [1 - 2**-5, 1 - 2**-6, 1 - 2**-7], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Performer features
# --------------------------------------------------------------------------------------------------
def test_performer_features_orthogonal_within_blocks():
    cell = CELLS[CELL_IDS.index("performer")]
    w = np.asarray(_params(cell)["features"], np.float64)
    assert w.shape == (H, 10, D)
    for head in w:
        for start in range(0, 10, D):
            block = head[start : start + D]
            gram = block @ block.T
            off_diagonal = gram - np.diag(np.diag(gram))
            assert np.max(np.abs(off_diagonal)) < 1e-5 * np.max(np.diag(gram))
    # rows are rescaled by chi-distributed norms, not unit length
    assert np.std(np.linalg.norm(w, axis=-1)) > 0.05


def test_performer_redraw_features():
    cell = CELLS[CELL_IDS.index("performer")]
    params = _params(cell)
    redraw = jax.jit(cell.redraw_features)
    new, again = redraw(params, _key(7)), redraw(params, _key(7))
    other = redraw(params, _key(8))
    assert new["features"].shape == params["features"].shape
    assert not np.allclose(new["features"], params["features"])
    np.testing.assert_array_equal(new["features"], again["features"])
    assert not np.allclose(new["features"], other["features"])
    for name in params:
        if name != "features":
            np.testing.assert_array_equal(new[name], params[name])
    # frozen: its own optimizer group (the zero gradient is checked with the step loop)
    assert cell.param_groups()["features"] == "frozen"
    assert cell.param_groups()["w_qkv"] == "default"


@functools.cache
def _favor_projection(m: int, d: int) -> jax.Array:
    return jax.jit(orthogonal_random_features, static_argnums=(1, 2))(_key(0), m, d)


@jax.jit
def _favor_checks(w, q, k):
    estimate = jnp.sum(positive_random_features(q, w) * positive_random_features(k, w), axis=-1)
    exact = jnp.exp(jnp.sum(q * k, axis=-1))
    phi_k = positive_random_features(k, w)
    weights = lambda phi_q: (phi_q @ phi_k.T) / jnp.sum(phi_q @ phi_k.T, axis=-1, keepdims=True)
    plain, stable = positive_random_features(q, w), positive_random_features(q, w, stabilize=True)
    return estimate, exact, weights(plain), weights(stable), jnp.max(stable)


def test_favor_kernel_estimate_is_unbiased():
    d, m, n = 4, 4096, 64
    w = _favor_projection(m, d)
    q, k = _normal(1, (n, d), 0.4), _normal(2, (n, d), 0.4)
    estimate, exact, w_plain, w_stable, max_stable = _favor_checks(w, q, k)
    assert float(jnp.mean(jnp.abs(estimate - exact) / exact)) < 0.1
    # the query stabiliser rescales each query's features by a positive factor: normalised weights agree,
    # and the largest feature is exactly 1/√m
    assert_close(w_stable, w_plain, 1e-5)
    np.testing.assert_allclose(max_stable, 1 / np.sqrt(m), rtol=1e-6)


def test_performer_approximates_causal_softmax_attention():
    """With many features a Performer head is causal softmax(q·k/√d) attention within ~1/√m."""
    d, m, length = 4, 4096, 13
    w = _favor_projection(m, d)[None]  # one head
    q, k, v = (_normal(seed, (1, length, 1, d), 0.5) for seed in (3, 4, 5))

    @jax.jit
    def both(w, q, k, v):
        scale = d**-0.25
        phi_q = positive_random_features(q * scale, w, stabilize=True)
        phi_k = positive_random_features(k * scale, w)
        ys, _ = normalized_linear_attention(phi_q, phi_k, v, chunk_size=C)
        logits = jnp.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(d)
        causal = jnp.tril(jnp.ones((length, length), bool))
        attn = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
        return ys, jnp.einsum("bhij,bjhd->bihd", attn, v)

    ys, ref = both(w, q, k, v)
    err = jnp.abs(ys - ref)
    assert float(jnp.max(err)) < 0.05 and float(jnp.mean(err)) < 0.01


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LinearAttention(num_heads=0, head_dim=4), "num_heads must be a positive integer, got 0"),
        (lambda: Performer(num_heads=-2, head_dim=4), "num_heads must be a positive integer, got -2"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=0), "head_dim must be a positive integer"),
        (lambda: LinearAttention(num_heads=2, head_dim=4, method="fast"), "method must be one of"),
        (lambda: LinearAttention(num_heads=2, head_dim=4, chunk_size=0), "chunk_size must be a positive"),
        (lambda: Performer(num_heads=2, head_dim=4, num_features=0), "num_features must be a positive"),
        (lambda: ScalarGatedLinearAttention(num_heads=2, head_dim=4, gate="lstm"), "gate must be one of"),
        (
            lambda: ScalarGatedLinearAttention(num_heads=2, head_dim=4, gate_temperature=0.0),
            "gate_temperature",
        ),
        (lambda: LinearAttention(num_heads=2, head_dim=4, eps=0.0), "eps must be > 0"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, fused="yes"), "fused must be True or False"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, expand_k=0.0), "expand_k must be > 0"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, gate_low_rank_dim=0), "gate_low_rank_dim"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, gate_logit_normalizer=-1), "normalizer"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, clamp_min=0.5), "clamp_min must be None"),
        (lambda: GatedLinearAttention(num_heads=2, head_dim=4, norm_eps=0.0), "norm_eps must be > 0"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_wrong_input_size_and_state(cell):
    params = _params(cell)
    with pytest.raises(ValueError, match=r"has 7 features .* input_size=5"):
        cell.apply(params, jnp.zeros((B, T, 7)))
    with pytest.raises(ValueError, match=r"has 7 features .* input_size=5"):
        cell.step(params, cell.initial_state((B,)), jnp.zeros((B, 7)))
    with pytest.raises(ValueError, match="state"):
        cell.apply(params, jnp.zeros((B, T, INPUT_SIZE)), cell.initial_state((B + 1,)))


def test_default_chunk_is_the_platforms_measured_choice():
    """chunk_size=None resolves per engine and platform (`matrix_chunk_size`); an explicit size wins and
    a bad one is refused at construction."""
    from seqjax import cells
    from seqjax.scan.tuning import matrix_chunk_size

    platform = jax.default_backend()
    assert cells.LinearAttention(num_heads=2, head_dim=4).resolved_chunk_size == matrix_chunk_size(
        "linear_attention", platform
    )
    assert cells.GatedLinearAttention(num_heads=2, head_dim=4).resolved_chunk_size == 64
    assert cells.DeltaNet(num_heads=2, head_dim=4).resolved_chunk_size == matrix_chunk_size(
        "delta_rule", platform
    )
    assert cells.LinearAttention(num_heads=2, head_dim=4, chunk_size=8).resolved_chunk_size == 8
    with pytest.raises(ValueError, match="chunk_size"):
        cells.GatedDeltaNet(num_heads=2, head_dim=4, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        cells.Performer(num_heads=2, head_dim=4, chunk_size=-1)
