"""Softmax attention cells (`Attention`, `SlidingWindowAttention`): the cell contract checks of
tests/test_cell_contract.py that need a cache (a non-empty state from a prefix, exact lengths, stricter
tolerances, every positional encoding), plus an independent float64 NumPy transcription of the cells,
capacity errors, config errors and the ALiBi slopes."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.cells.positional import alibi_slopes
from seqjax.scan.attention import attention, decode_attention
from tests.cell_cases import random_flags, step_loop

B, T, INPUT_SIZE = 3, 13, 5
MAX_LENGTH = 64  # ≥ 2T, and room for the float64 test's sequences

CASES = [
    ("rotary", cells.Attention(num_heads=2, head_dim=4, max_length=MAX_LENGTH)),
    ("alibi", cells.Attention(num_heads=3, head_dim=3, positional="alibi", max_length=MAX_LENGTH)),
    ("sinusoidal", cells.Attention(num_heads=2, head_dim=4, positional="sinusoidal", max_length=MAX_LENGTH)),
    ("mqa", cells.Attention(num_heads=4, head_dim=2, num_kv_heads=1, max_length=MAX_LENGTH)),
    (
        "none",
        cells.Attention(num_heads=2, head_dim=3, positional="none", out_features=7, max_length=MAX_LENGTH),
    ),
    ("window3", cells.SlidingWindowAttention(num_heads=2, head_dim=4, window=3)),
    (
        "window3-global2-gqa",
        cells.SlidingWindowAttention(num_heads=4, head_dim=2, num_kv_heads=2, window=3, num_global=2),
    ),
]
IDS = [name for name, _ in CASES]
CELLS = [cell for _, cell in CASES]


@functools.cache
def jitted(cell):
    """`cell.apply` under jit, one per cell. The tests below share a few call signatures ([B, T] inputs;
    no state or a state; no flags or resets + mask), so each cell compiles a handful of programs: at
    these sizes compiling dominates, and eager dispatch compiles every small op on its own.
    `test_eager_equals_jit` covers the eager path."""
    return jax.jit(cell.apply)


def run(cell, params, xs, state=None, *, resets, mask):
    """`apply` with both flags given (the shared signature)."""
    return jitted(cell)(params, xs, state, resets=resets, mask=mask)


def _inputs(key, batch_shape=(B,), length=T):
    return jax.random.normal(key, (*batch_shape, length, INPUT_SIZE))


NO_RESETS = jnp.zeros((B, T), bool)
ALL_VALID = jnp.ones((B, T), bool)


def _prefix_state(cell, params, min_length=4):
    """A non-empty state: the cell applied to a random padded prefix (longer than window 3)."""
    mask = random_flags(11, (B, T), 0.5)
    _, state = run(cell, params, _inputs(jax.random.PRNGKey(10)), resets=NO_RESETS, mask=mask)
    assert int(jnp.min(state.length)) >= min_length
    return state


def max_abs_diff(a, b) -> float:
    """Largest leaf-wise |a − b| (zero-size leaves, e.g. no global tokens, count as 0)."""
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0)), a, b)
    return max(jax.tree.leaves(diffs))


def relative_diff(a, b) -> float:
    """Largest leaf-wise |a − b|, relative to that leaf's largest magnitude in `b`."""

    def rel(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        return float(np.max(np.abs(x - y), initial=0) / (np.max(np.abs(y), initial=0) + 1e-12))

    return max(jax.tree.leaves(jax.tree.map(rel, a, b)))


def _floats(state) -> dict:
    return {f: getattr(state, f) for f in state._fields if f != "length"}


def _float_loss(state) -> jax.Array:
    return sum(jnp.sum(jnp.cos(3 * leaf)) for leaf in _floats(state).values())


# --------------------------------------------------------------------------------------------------
# An independent float64 transcription
# --------------------------------------------------------------------------------------------------
def _positions_and_segments(valid, resets):
    """Per token: valid tokens before it in its segment; the segment index (padding never resets)."""
    pos, seg = np.zeros(valid.shape, int), np.zeros(valid.shape, int)
    for b in np.ndindex(valid.shape[:-1]):
        p = s = 0
        for t in range(valid.shape[-1]):
            if valid[b][t] and resets[b][t]:
                s, p = s + 1, 0
            pos[b][t], seg[b][t] = p, s
            p += int(valid[b][t])
    return pos, seg


def reference_qkv(cell, p: dict, x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...]:
    """q [B, T, H, d], k, v [B, T, H_kv, d] in float64 from the definition: the sinusoidal embedding added
    to x, the projections, and rotary positions (pairs (i, i + d/2) as complex numbers times
    e^{i·pos·θ_i}), each read at the integer positions `pos` [B, T]."""
    nb, nt, n_in = x.shape
    if cell.positional == "sinusoidal":
        pe = np.zeros((nb, nt, n_in))
        for i in range(n_in):
            angle = pos / 10000.0 ** (2 * (i // 2) / n_in)
            pe[..., i] = np.sin(angle) if i % 2 == 0 else np.cos(angle)
        x = x + pe
    q = np.einsum("bti,ihd->bthd", x, p["w_q"])
    k = np.einsum("bti,ihd->bthd", x, p["w_k"])
    v = np.einsum("bti,ihd->bthd", x, p["w_v"])
    d = cell.head_dim
    if cell.positional == "rotary":

        def rotate(a):
            theta = cell.rotary_base ** (-2.0 * np.arange(d // 2) / d)
            z = (a[..., : d // 2] + 1j * a[..., d // 2 :]) * np.exp(1j * pos[..., None, None] * theta)
            return np.concatenate([z.real, z.imag], -1)

        q, k = rotate(q), rotate(k)
    return q, k, v


def naive(cell, params, xs, *, resets=None, mask=None):
    """The cell from its definition, in float64 NumPy, for xs [B, T, input_size] and no given state."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(xs, np.float64)
    nb, nt = x.shape[:2]
    valid = np.ones((nb, nt), bool) if mask is None else np.asarray(mask)
    pos, seg = _positions_and_segments(valid, np.zeros_like(valid) if resets is None else np.asarray(resets))
    q, k, v = reference_qkv(cell, p, x, pos)
    d = cell.head_dim
    group = cell.num_heads // cell.kv_heads  # query head h reads key/value head h // group
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    dist = np.abs(pos[:, :, None] - pos[:, None, :])
    if cell.positional == "alibi":
        logits = logits - alibi_slopes(cell.num_heads)[:, None, None] * dist[:, None]
    visible = valid[:, None, :] & (seg[:, :, None] == seg[:, None, :])
    if cell.causal:
        visible &= pos[:, None, :] <= pos[:, :, None]
    if isinstance(cell, cells.SlidingWindowAttention):
        near = (pos[:, :, None] - pos[:, None, :] if cell.causal else dist) < cell.window
        near |= pos[:, None, :] < cell.num_global  # global keys
        if not cell.causal:
            near |= pos[:, :, None] < cell.num_global  # global queries see their whole segment
        visible &= near
    logits = np.where(visible[:, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", weights, v)
    out = np.einsum("bqhd,hdo->bqo", y, p["w_o"])
    return np.where(valid[..., None], out, 0.0)


# --------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
@pytest.mark.parametrize("given", [False, True], ids=["no-state", "state"])
def test_apply_equals_step_loop(cell, given, key):
    """Values and final states from an empty and from a non-empty state, with resets and padding;
    gradients (w.r.t. parameters, inputs and the cache) from the non-empty one."""
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    state = _prefix_state(cell, params) if given else None
    resets = random_flags(3, (B, T), 0.25)
    mask = random_flags(4, (B, T), 0.7)

    ys, final = run(cell, params, xs, state, resets=resets, mask=mask)
    ref_ys, ref_final = step_loop(cell, params, xs, state, resets=resets, mask=mask)
    assert ys.shape == (B, T, cell.output_size)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(final.length, ref_final.length)
    assert relative_diff(final, ref_final) < 1e-6

    if not given:
        # no flags at all is the same as no resets and no padding
        ys_plain, final_plain = jitted(cell)(params, xs)
        ys_flags, final_flags = run(cell, params, xs, resets=NO_RESETS, mask=ALL_VALID)
        np.testing.assert_allclose(ys_plain, ys_flags, rtol=1e-6, atol=1e-6)
        assert max_abs_diff(final_plain, final_flags) < 1e-6
        return

    def loss(fn, params, xs, floats):
        ys, final = fn(params, xs, state._replace(**floats))
        return jnp.sum(jnp.sin(3 * ys)) + _float_loss(final)

    by_apply = lambda p, x, s: cell.apply(p, x, s, resets=resets, mask=mask)
    by_steps = lambda p, x, s: step_loop(cell, p, x, s, resets=resets, mask=mask)
    args = (params, xs, _floats(state))
    g_apply = jax.jit(jax.grad(lambda *a: loss(by_apply, *a), argnums=(0, 1, 2)))(*args)
    g_steps = jax.grad(lambda *a: loss(by_steps, *a), argnums=(0, 1, 2))(*args)
    assert relative_diff(g_apply, g_steps) < 1e-5


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_padding_leaves_state_unchanged_and_outputs_zero(cell, key):
    """Right, left and inner padding (one batch row each) give the outputs and the whole state of the
    unpadded sequence; a padded step changes nothing."""
    params = cell.init(key, INPUT_SIZE)
    valid = 8
    short = _inputs(jax.random.PRNGKey(1), (B,), valid)
    t = np.arange(T)
    mask = np.stack([t < valid, t >= T - valid, (t < 3) | (t >= 3 + T - valid)])
    garbage = 100.0 * np.asarray(jax.random.normal(jax.random.PRNGKey(5), (B, T, INPUT_SIZE)))
    padded = np.where(
        mask[..., None], np.asarray(short)[np.arange(B)[:, None], np.cumsum(mask, 1) - 1], garbage
    )
    ys, state = run(cell, params, jnp.asarray(padded), resets=NO_RESETS, mask=jnp.asarray(mask))
    # the unpadded reference: the step loop (checked against apply above) shares the compiled step
    ref_ys, ref_state = step_loop(cell, params, short, resets=NO_RESETS[:, :valid], mask=ALL_VALID[:, :valid])
    np.testing.assert_array_equal(np.asarray(ys)[~mask], 0.0)
    np.testing.assert_allclose(np.asarray(ys)[mask].reshape(B, valid, -1), ref_ys, atol=1e-5)
    np.testing.assert_array_equal(state.length, valid)
    assert relative_diff(state, ref_state) < 1e-6  # the whole cache: unused slots are zero in both
    # step with mask=False returns the very same (non-empty) state and a zero output
    state0 = _prefix_state(cell, params)
    off = jnp.zeros((B,), bool)
    y, state1 = step_loop(cell, params, short[:, :1], state0, resets=off[:, None], mask=off[:, None])
    assert max_abs_diff(state0, state1) == 0.0
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_resets_split_packed_segments(cell, key):
    """Two packed segments (5 + 8 tokens, the first continuing a given state) equal each one alone."""
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    state = _prefix_state(cell, params)
    first = jnp.arange(T) < 5
    resets = NO_RESETS.at[:, 5].set(True)
    ys, final = run(cell, params, xs, state, resets=resets, mask=ALL_VALID)
    # each segment alone: the other one padded away
    ys_a, _ = run(cell, params, xs, state, resets=NO_RESETS, mask=jnp.broadcast_to(first, (B, T)))
    ys_b, final_b = run(cell, params, xs, resets=NO_RESETS, mask=jnp.broadcast_to(~first, (B, T)))
    np.testing.assert_allclose(ys[:, :5], ys_a[:, :5], atol=1e-6)
    np.testing.assert_allclose(ys[:, 5:], ys_b[:, 5:], atol=1e-6)
    np.testing.assert_array_equal(final.length, 8)
    assert max_abs_diff(final, final_b) < 1e-6


@pytest.mark.parametrize("cell", [CELLS[0], CELLS[-1]], ids=[IDS[0], IDS[-1]])
def test_batch_shapes_jit_vmap(cell, key):
    """No batch axis, several batch axes, vmap over batch (apply and step) and over parameters agree."""
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1), (2, 3), 7)
    ys, state = jitted(cell)(params, xs)
    assert ys.shape == (2, 3, 7, cell.output_size)
    jax.tree.map(lambda s, i: np.testing.assert_equal(s.shape, i.shape), state, cell.initial_state((2, 3)))

    ys_single, state_single = jitted(cell)(params, xs[1, 2])
    np.testing.assert_allclose(ys_single, ys[1, 2], rtol=1e-5, atol=1e-5)
    assert max_abs_diff(state_single, jax.tree.map(lambda s: s[1, 2], state)) < 1e-6
    ys_vmap, _ = jax.vmap(jax.vmap(lambda x: jitted(cell)(params, x)))(xs)
    np.testing.assert_allclose(ys_vmap, ys, rtol=1e-5, atol=1e-5)
    stacked = jax.tree.map(lambda *p: jnp.stack(p), params, cell.init(jax.random.PRNGKey(9), INPUT_SIZE))
    ys_ens, _ = jax.vmap(lambda p: jitted(cell)(p, xs))(stacked)
    np.testing.assert_allclose(ys_ens[0], ys, rtol=1e-5, atol=1e-5)
    step = jax.jit(cell.step)
    s0 = cell.initial_state((2,))
    s1, y1 = step(params, s0, xs[0, :2, 0])
    s1_single, y1_single = step(params, cell.initial_state(()), xs[0, 1, 0])
    np.testing.assert_allclose(y1_single, y1[1], rtol=1e-6, atol=1e-6)
    assert max_abs_diff(s1_single, jax.tree.map(lambda s: s[1], s1)) < 1e-6
    _, y1_vmap = jax.vmap(lambda s, x: step(params, s, x))(s0, xs[0, :2, 0])
    np.testing.assert_allclose(y1_vmap, y1, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_float32_matches_float64_reference(cell, key):
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    resets = random_flags(3, (B, T), 0.1)
    mask = random_flags(4, (B, T), 0.8)
    loss = lambda c, p, x: jnp.sum(c.apply(p, x, resets=resets, mask=mask)[0] ** 2)
    ys32, _ = run(cell, params, xs, resets=resets, mask=mask)
    g32 = jax.jit(jax.grad(lambda p: loss(cell, p, xs)))(params)
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        x64 = jnp.asarray(np.asarray(xs), jnp.float64)
        s64 = cell64.initial_state((B,), jnp.float64)
        ys64, final64 = jitted(cell64)(p64, x64, s64, resets=resets, mask=mask)
        assert ys64.dtype == jnp.float64 and final64.k.dtype == jnp.float64
        g64 = jax.jit(
            jax.grad(lambda p: jnp.sum(jitted(cell64)(p, x64, s64, resets=resets, mask=mask)[0] ** 2))
        )(p64)
        ys64, g64 = np.asarray(ys64), jax.tree.map(np.asarray, g64)
    np.testing.assert_allclose(ys32, ys64, atol=1e-5)
    for name in params:
        scale = np.max(np.abs(g64[name])) + 1e-12
        assert np.max(np.abs(np.asarray(g32[name]) - g64[name])) / scale < 1e-4, name
    # and the float64 cell is the NumPy transcription
    np.testing.assert_allclose(ys64, naive(cell, params, xs, resets=resets, mask=mask), atol=1e-10)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_bfloat16_compute_close_to_float32(cell, key):
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    ys32, _ = jitted(cell)(params, xs)
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16)
    ys16, s16 = jitted(cell16)(params, xs)
    assert ys16.dtype == jnp.bfloat16
    # the cache stays float32 (it holds the bfloat16 keys exactly); the length is an int32 count
    assert all(leaf.dtype == jnp.float32 for leaf in _floats(s16).values())
    assert s16.length.dtype == jnp.int32
    g16 = jax.jit(jax.grad(lambda p: jnp.sum(cell16.apply(p, xs)[0].astype(jnp.float32) ** 2)))(params)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g16))
    # Rounding the logits to bfloat16 moves the softmax weights by a few per cent (0.065 seen with the
    # sinusoidal embedding's larger inputs; rounding only the parameters already moves outputs by 0.03).
    np.testing.assert_allclose(np.asarray(ys16, np.float32), ys32, atol=0.1)
    assert float(jnp.mean(jnp.abs(ys16.astype(jnp.float32) - ys32))) < 0.01


# tests/test_cell_contract.py checks that param_axes name every axis of every parameter.
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_key_value_projections_have_kv_heads(cell, key):
    params = cell.init(key, INPUT_SIZE)
    axes = cell.param_axes()
    assert axes["w_k"] == ("embed", "kv_heads", "head_dim")
    assert params["w_k"].shape == (INPUT_SIZE, cell.kv_heads, cell.head_dim)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_state_is_constant_in_length(cell, key):
    if isinstance(cell, cells.Attention):
        cell = dataclasses.replace(cell, max_length=4096)
    params = cell.init(key, INPUT_SIZE)
    _, short = jax.eval_shape(cell.apply, params, _inputs(key, (2,), 4))
    _, long = jax.eval_shape(cell.apply, params, _inputs(key, (2,), 4000))
    assert [a.shape for a in jax.tree.leaves(short)] == [a.shape for a in jax.tree.leaves(long)]
    kv = (cell.kv_heads, cell.head_dim)
    if isinstance(cell, cells.SlidingWindowAttention):  # window and num_global only
        assert short.k.shape == (2, cell.window, *kv) and short.global_k.shape == (2, cell.num_global, *kv)
    else:
        assert short.k.shape == (2, 4096, *kv)


# --------------------------------------------------------------------------------------------------
# Against the definition
# --------------------------------------------------------------------------------------------------
BIDIRECTIONAL = [0, 1, 6]  # rotary, ALiBi (symmetric distances), window + global tokens + GQA


@pytest.mark.parametrize("cell", [CELLS[i] for i in BIDIRECTIONAL], ids=[IDS[i] for i in BIDIRECTIONAL])
def test_bidirectional_apply_equals_numpy_transcription(cell, key):
    """causal=False against the transcription, with padding and resets: two-sided windows and global
    queries that see their whole segment. (The causal cells are checked against it in float64 in
    `test_float32_matches_float64_reference`.)"""
    cell = dataclasses.replace(cell, causal=False)
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    resets = random_flags(3, (B, T), 0.2)
    mask = random_flags(4, (B, T), 0.8)
    ys, _ = jitted(cell)(params, xs, resets=resets, mask=mask)
    np.testing.assert_allclose(ys, naive(cell, params, xs, resets=resets, mask=mask), atol=2e-5)


def test_sliding_window_is_banded_attention(key):
    """A window covering every segment gives full attention, also from a given state; a short window
    does not (the NumPy transcription in the float64 test checks the band itself)."""
    full = CELLS[0]
    wide = cells.SlidingWindowAttention(num_heads=full.num_heads, head_dim=full.head_dim, window=2 * T)
    params = full.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    resets, mask = random_flags(3, (B, T), 0.2), random_flags(4, (B, T), 0.8)
    ys_full, _ = run(full, params, xs, _prefix_state(full, params), resets=resets, mask=mask)
    ys_wide, _ = run(wide, params, xs, _prefix_state(wide, params), resets=resets, mask=mask)
    np.testing.assert_allclose(ys_wide, ys_full, atol=1e-6)
    narrow = dataclasses.replace(wide, window=3)
    ys_narrow, _ = run(narrow, params, xs, _prefix_state(narrow, params), resets=resets, mask=mask)
    assert float(jnp.max(jnp.abs(ys_narrow - ys_full))) > 1e-3


# (case, causal): a cache with segment ids, and a window with global tokens both ways.
ENGINE_CASES = [(0, True), (6, True), (6, False)]


@pytest.mark.parametrize(
    ("cell", "causal"),
    [(CELLS[i], causal) for i, causal in ENGINE_CASES],
    ids=[f"{IDS[i]}-{'causal' if causal else 'bidirectional'}" for i, causal in ENGINE_CASES],
)
def test_blockwise_engine_equals_naive(cell, causal, key):
    """The cells' engine calls (a cache before the new tokens, segment ids, a key mask, a window and
    global tokens) through the blockwise form with blocks of 4, i.e. several blocks and skipped block
    pairs, against the materialised form: values, final states and gradients."""
    blockwise = dataclasses.replace(cell, causal=causal, method="blockwise", block_size=4)
    materialised = dataclasses.replace(cell, causal=causal, method="naive")
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    state = _prefix_state(cell, params)
    resets, mask = random_flags(3, (B, T), 0.2), random_flags(4, (B, T), 0.8)

    def value_and_grad(c):
        def loss(params, xs, floats):
            ys, final = c.apply(params, xs, state._replace(**floats), resets=resets, mask=mask)
            return jnp.sum(jnp.sin(3 * ys)) + _float_loss(final), (ys, final)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, _floats(state))

    (_, (ys, final)), grads = value_and_grad(blockwise)
    (_, (ref_ys, ref_final)), ref_grads = value_and_grad(materialised)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    assert max_abs_diff(final, ref_final) < 1e-6
    assert relative_diff(grads, ref_grads) < 1e-5
    if causal:  # one query against the cache
        x = xs[:, 0]
        _, y = jax.jit(blockwise.step)(params, state, x)
        _, ref_y = jax.jit(materialised.step)(params, state, x)
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)


def test_eager_equals_jit(key):
    """Without jit the capacity check runs on concrete values; everything else is the same program."""
    cell = CELLS[0]
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    state = _prefix_state(cell, params)
    flags = {"resets": random_flags(3, (B, T), 0.25), "mask": random_flags(4, (B, T), 0.7)}
    ys, final = cell.apply(params, xs, state, **flags)
    ys_jit, final_jit = run(cell, params, xs, state, **flags)
    np.testing.assert_allclose(ys, ys_jit, atol=1e-6)
    assert max_abs_diff(final, final_jit) < 1e-6


def test_sliding_window_streams_past_any_length(key):
    """The ring buffer wraps many times; step keeps matching apply with a constant-size state."""
    cell = cells.SlidingWindowAttention(num_heads=2, head_dim=4, window=4, num_global=2)
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1), (2,), 40)
    ys, final = jitted(cell)(params, xs)
    ref_ys, ref_final = step_loop(cell, params, xs)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    assert max_abs_diff(final, ref_final) < 1e-6 and int(final.length[0]) == 40


# --------------------------------------------------------------------------------------------------
# The decode path of Attention.step
# --------------------------------------------------------------------------------------------------
DECODE_CELLS = {
    "mha-rotary": cells.Attention(num_heads=2, head_dim=4, max_length=MAX_LENGTH),
    "gqa-rotary": cells.Attention(num_heads=4, head_dim=4, num_kv_heads=2, max_length=MAX_LENGTH),
    "gqa-alibi": cells.Attention(
        num_heads=6, head_dim=3, num_kv_heads=2, positional="alibi", max_length=MAX_LENGTH
    ),
    "mha-alibi": cells.Attention(num_heads=3, head_dim=3, positional="alibi", max_length=MAX_LENGTH),
    "mqa-sinusoidal": cells.Attention(
        num_heads=4, head_dim=2, num_kv_heads=1, positional="sinusoidal", max_length=MAX_LENGTH
    ),
}


def _materialised_step(cell, params, state, x, reset, mask):
    """`Attention.step` as first written: reset and padding as in `Cell.step`, the new key written at slot
    `length`, then a plain float64 softmax over slots 0..length of the cache. Returns (state, y) in
    NumPy."""
    k_cache, v_cache = np.array(state.k, np.float64), np.array(state.v, np.float64)
    length = np.where(reset, 0, np.asarray(state.length))
    q, k, v = (np.asarray(a, np.float64) for a in cell._project(params, x, jnp.asarray(length)))
    group = cell.num_heads // cell.kv_heads
    w_o = np.asarray(params["w_o"], np.float64)
    ys = np.zeros((x.shape[0], cell.output_size))
    for b in range(x.shape[0]):
        if not mask[b]:
            continue  # padding: state unchanged, output zero
        if reset[b]:
            k_cache[b], v_cache[b] = 0.0, 0.0
        p = length[b]
        k_cache[b, p], v_cache[b, p] = k[b], v[b]
        keys = np.repeat(k_cache[b, : p + 1], group, axis=1)  # [p + 1, H, d]
        values = np.repeat(v_cache[b, : p + 1], group, axis=1)
        logits = np.einsum("hd,khd->hk", q[b], keys) / math.sqrt(cell.head_dim)
        if cell.positional == "alibi":
            logits -= alibi_slopes(cell.num_heads)[:, None] * (p - np.arange(p + 1))
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        ys[b] = np.einsum("hd,hdo->o", np.einsum("hk,khd->hd", weights, values), w_o)
    new_length = np.where(mask, length + 1, np.asarray(state.length))
    return cells.AttentionState(k_cache, v_cache, new_length), ys


@pytest.mark.parametrize("cell", list(DECODE_CELLS.values()), ids=list(DECODE_CELLS))
def test_step_equals_materialised_softmax_over_the_cache(cell, key):
    """The decode path (old cache + the new key as one extra logit, a write the attention does not read,
    a donated state) against the formulation it replaced, token by token from a non-empty cache, with
    resets and padding (a reset on a padded token included)."""
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(jax.random.PRNGKey(1))
    state = _prefix_state(cell, params)
    resets = np.asarray(random_flags(3, (B, T), 0.2)).copy()
    mask = np.asarray(random_flags(4, (B, T), 0.7)).copy()
    resets[0, 2], mask[0, 2] = True, False  # padding wins over a reset
    step = jax.jit(cell.step, donate_argnums=(1,))
    for t in range(T):
        ref_state, ref_y = _materialised_step(cell, params, state, xs[:, t], resets[:, t], mask[:, t])
        state, y = step(
            params, state, xs[:, t], reset=jnp.asarray(resets[:, t]), mask=jnp.asarray(mask[:, t])
        )
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5, err_msg=f"t={t}")
        np.testing.assert_array_equal(state.length, ref_state.length)
        assert relative_diff(state, ref_state) < 1e-6, t
    # without flags: recur's form, from the same state
    x = xs[:, 0]
    ref_state, ref_y = _materialised_step(cell, params, state, x, np.zeros(B, bool), np.ones(B, bool))
    state, y = step(params, state, x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    assert relative_diff(state, ref_state) < 1e-6


@pytest.mark.parametrize("block", [None, 3, 4], ids=["one-block", "block3", "block4"])
@pytest.mark.parametrize(("hq", "hkv", "alibi"), [(4, 2, True), (3, 3, False), (4, 1, True)])
def test_decode_attention_equals_engine(block, hq, hkv, alibi):
    """`decode_attention` against the engine's materialised form: one query per row, a cache of 10 slots
    with lengths 0..10 (blocks of 3 clamp the last one, blocks past the longest row are skipped), with
    and without the new key; values and gradients."""
    lk, d = 10, 4
    keys = jax.random.split(jax.random.PRNGKey(7), 5)
    q = jax.random.normal(keys[0], (2, 3, hq, d))
    k = jax.random.normal(keys[1], (2, 3, lk, hkv, d))
    v = jax.random.normal(keys[2], (2, 3, lk, hkv, d))
    k_new, v_new = jax.random.normal(keys[3], (2, 3, hkv, d)), jax.random.normal(keys[4], (2, 3, hkv, d))
    length = jnp.array([[0, 3, 10], [1, 6, 9]])
    slopes = jnp.asarray(alibi_slopes(hq), jnp.float32) if alibi else None
    slots = jnp.broadcast_to(jnp.arange(lk), (2, 3, lk))

    def reference(q, k, v, k_new, v_new):
        return attention(
            q[..., None, :, :],
            jnp.concatenate([k, k_new[..., None, :, :]], axis=-3),
            jnp.concatenate([v, v_new[..., None, :, :]], axis=-3),
            q_positions=length[..., None],
            kv_positions=jnp.concatenate([slots, length[..., None]], axis=-1),
            kv_mask=jnp.concatenate([slots < length[..., None], jnp.ones((2, 3, 1), bool)], axis=-1),
            alibi_slopes=slopes,
            method="naive",
        )[..., 0, :, :]

    def decode(q, k, v, k_new, v_new):
        return decode_attention(q, k, v, length, k_new=k_new, v_new=v_new, alibi_slopes=slopes, block=block)

    args = (q, k, v, k_new, v_new)
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(3 * f(*a)))
    # values and gradients in one compiled program per form (eager autodiff compiles op by op)
    outputs_and_grads = lambda f: jax.jit(lambda *a: (f(*a), jax.grad(loss(f), argnums=range(5))(*a)))(*args)
    (ys, grads), (ref_ys, ref_grads) = outputs_and_grads(decode), outputs_and_grads(reference)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    assert relative_diff(grads, ref_grads) < 1e-5
    # no new key: a row with an empty cache sees nothing and returns zeros
    alone = jax.jit(lambda *a: decode_attention(*a, length, alibi_slopes=slopes, block=block))(q, k, v)
    no_new = attention(
        q[..., None, :, :],
        k,
        v,
        q_positions=length[..., None],
        kv_positions=slots,
        kv_mask=slots < length[..., None],
        alibi_slopes=slopes,
        method="naive",
    )[..., 0, :, :]
    np.testing.assert_allclose(alone, no_new, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(alone[0, 0], 0.0)


def test_decode_attention_bfloat16_and_float32_cache(key):
    """bfloat16 queries against a float32 cache holding bfloat16 keys (the cells' layout) compute what the
    engine computes on the keys cast to bfloat16, to bfloat16 rounding."""
    q = jax.random.normal(key, (2, 4, 8)).astype(jnp.bfloat16)
    k = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 2, 8)).astype(jnp.bfloat16)
    v = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 2, 8)).astype(jnp.bfloat16)
    length = jnp.array([5, 16])
    y = decode_attention(q, k.astype(jnp.float32), v.astype(jnp.float32), length)
    assert y.dtype == jnp.bfloat16
    slots = jnp.broadcast_to(jnp.arange(16), (2, 16))
    ref = attention(
        q[:, None], k, v, q_positions=length[:, None], kv_positions=slots, kv_mask=slots < length[:, None]
    )[:, 0]
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32), atol=2e-2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the in-place memory plan checked is XLA:CPU's")
@pytest.mark.parametrize("flags", [False, True], ids=["plain", "reset+mask"])
def test_donated_step_updates_the_cache_in_place(flags, key, compile_as_users_do):
    """The compiled, donated step updates the cache in place and holds no copy of it: the property that
    makes decoding cost one read of the cache (docs/performance.md). Reading the cache before writing
    it, a select over all slots, or a write XLA fuses into the attention's reads would each add a
    cache-sized temporary (checked through XLA's memory plan, not the HLO text, so it does not depend
    on how XLA names its ops). Compiled at XLA's default optimisation level, as users run it, not at the
    suite's -O0."""
    cell = cells.Attention(num_heads=4, head_dim=8, num_kv_heads=2, positional="alibi", max_length=4096)
    params = cell.init(key, INPUT_SIZE)
    state = cell.initial_state((2,))
    kw = {"reset": jnp.zeros(2, bool), "mask": jnp.ones(2, bool)} if flags else {}
    step = jax.jit(lambda p, s, x, kw: cell.step(p, s, x, **kw), donate_argnums=(1,))
    plan = compile_as_users_do(step.lower(params, state, jnp.zeros((2, INPUT_SIZE)), kw)).memory_analysis()
    cache_bytes = state.k.nbytes
    assert plan.alias_size_in_bytes >= 2 * cache_bytes  # k and v are updated in the donated buffers
    assert plan.temp_size_in_bytes < cache_bytes, (plan.temp_size_in_bytes, cache_bytes)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", [CELLS[0], CELLS[-1]], ids=[IDS[0], IDS[-1]])
def test_bidirectional_has_no_step(cell, key):
    cell = dataclasses.replace(cell, causal=False)
    params = cell.init(key, INPUT_SIZE)
    with pytest.raises(TypeError, match=r"causal=False has no step form.*apply"):
        cell.step(params, cell.initial_state((2,)), jnp.zeros((2, INPUT_SIZE)))


def test_capacity_overflow_raises(key):
    cell = cells.Attention(num_heads=2, head_dim=4, max_length=6)
    params = cell.init(key, INPUT_SIZE)
    apply, step = jax.jit(cell.apply), jax.jit(cell.step)
    xs = _inputs(jax.random.PRNGKey(1), (2,), 6)
    _, full = apply(params, xs)
    np.testing.assert_array_equal(full.length, 6)
    x = xs[:, 0]
    # step: eager, and jitted (the length is traced: the check runs on the host at run time)
    with pytest.raises(ValueError, match=r"max_length=6.*max_length >= 7"):
        cell.step(params, full, x)
    with pytest.raises(Exception, match=r"max_length=6"):
        jax.block_until_ready(step(params, full, x))
    # ... but padding and resets at a full cache are fine
    step(params, full, x, mask=jnp.array([False, True]), reset=jnp.array([True, True]))
    # apply: too long without resets or padding is a trace-time ValueError, also under jit
    long = _inputs(jax.random.PRNGKey(2), (2,), 7)
    with pytest.raises(ValueError, match=r"max_length=6.*max_length >= 7"):
        cell.apply(params, long)
    with pytest.raises(ValueError, match=r"max_length=6"):
        apply(params, long)
    with pytest.raises(ValueError, match=r"max_length=6.*max_length >= 8"):
        cell.apply(params, long[:, :2], full)
    # with a mask it depends on the data: eager raises at once, jit at run time
    mask = jnp.ones((2, 7), bool)
    with pytest.raises(ValueError, match=r"max_length=6"):
        cell.apply(params, long, mask=mask)
    with pytest.raises(Exception, match=r"max_length=6"):
        jax.block_until_ready(apply(params, long, mask=mask))
    # a given cache whose length is traced
    with pytest.raises(Exception, match=r"max_length=6"):
        jax.block_until_ready(apply(params, long[:, :1], full))
    # sequences longer than the cache are fine when every segment fits
    resets = jnp.zeros((2, 7), bool).at[:, 4].set(True)
    _, state = apply(params, long, resets=resets)
    np.testing.assert_array_equal(state.length, 3)
    _, state = apply(params, long, mask=mask.at[:, 3].set(False))
    np.testing.assert_array_equal(state.length, 6)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: cells.Attention(num_heads=6, head_dim=4, num_kv_heads=4), r"num_heads=6 .*num_kv_heads=4"),
        (
            lambda: cells.Attention(num_heads=2, head_dim=4, num_kv_heads=0),
            r"num_kv_heads must be a positive",
        ),
        (lambda: cells.Attention(num_heads=2, head_dim=4, positional="rope"), r"positional must be one of"),
        (lambda: cells.Attention(num_heads=2, head_dim=3), r"even head_dim.*positional='alibi'"),
        (lambda: cells.Attention(num_heads=2, head_dim=4, max_length=0), r"max_length must be a positive"),
        (lambda: cells.Attention(num_heads=2, head_dim=4, method="flash"), r"method must be one of"),
        (
            lambda: cells.SlidingWindowAttention(num_heads=2, head_dim=4, window=0),
            r"window must be a positive",
        ),
        (lambda: cells.SlidingWindowAttention(num_heads=2, head_dim=4, num_global=-1), r"num_global must be"),
    ],
)
def test_config_errors_name_the_field(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_alibi_slopes_follow_the_paper():
    np.testing.assert_array_equal(alibi_slopes(8), [2.0**-i for i in range(1, 9)])
    np.testing.assert_allclose(alibi_slopes(16)[:3], [2.0**-0.5, 2.0**-1, 2.0**-1.5], rtol=1e-15)
    # not a power of two: the 4-head slopes, then every other 8-head slope
    np.testing.assert_array_equal(alibi_slopes(6), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])
    assert len(alibi_slopes(12)) == 12 and np.allclose(alibi_slopes(12)[8:], alibi_slopes(16)[0:8:2])
    np.testing.assert_array_equal(cells.Attention(num_heads=8, head_dim=2).alibi_slopes(), alibi_slopes(8))


def test_registry():
    assert cells.get("attention", num_heads=2, head_dim=4) == cells.Attention(num_heads=2, head_dim=4)
    cell = cells.get("sliding_window_attention", num_heads=2, head_dim=4, window=8)
    assert isinstance(cell, cells.SlidingWindowAttention) and cell.window == 8
