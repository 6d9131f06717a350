"""Transformer-XL attention (`TransformerXLAttention`): segments with the carried memory against causal
`Attention` over the concatenation (M covers the stream) and against an independent float64 NumPy
transcription of XL's mask (M shorter than the stream), with rotary / ALiBi / sinusoidal positions,
resets and padding; the step loop; the memory's fixed size and its reset; configuration errors."""

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
from tests.cell_cases import random_flags, split_floats, step_loop
from tests.test_attention_cells import reference_qkv

B, INPUT_SIZE = 2, 5
SEGMENTS = (5, 3, 6)  # segment lengths of the stream (unequal: the memory crosses every boundary)
N = sum(SEGMENTS)


def _inputs(seed: int, length: int = N) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (B, length, INPUT_SIZE))


def _flags(kind: str, length: int = N):
    """(resets, mask) for `kind`: none, or resets inside and at the start of a segment plus padding."""
    if kind == "plain":
        return None, None
    resets = np.zeros((B, length), bool)
    resets[0, 6], resets[1, SEGMENTS[0]] = True, True  # inside segment 2 / at its first token
    mask = np.array(random_flags(4, (B, length), 0.75))
    mask[:, 6], mask[1, SEGMENTS[0]] = True, True  # the resets take effect
    return jnp.asarray(resets), jnp.asarray(mask)


def _segmented(cell, params, xs, state=None, *, resets=None, mask=None, lengths=SEGMENTS):
    """`cell.apply` over consecutive segments of xs [B, T, in], each from the previous one's state."""
    ys, start = [], 0
    for n in lengths:
        part = slice(start, start + n)
        y, state = cell.apply(
            params,
            xs[:, part],
            state,
            resets=None if resets is None else resets[:, part],
            mask=None if mask is None else mask[:, part],
        )
        ys.append(y)
        start += n
    return jnp.concatenate(ys, axis=1), state


# --------------------------------------------------------------------------------------------------
# M covers the stream: segments with the memory == causal attention over the concatenation.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", ["plain", "resets+mask"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_segments_with_full_memory_equal_causal_attention(precision, flags, key):
    """Values and gradients w.r.t. parameters and inputs (through the carried memory)."""
    xl = cells.TransformerXLAttention(num_heads=4, head_dim=4, num_kv_heads=2, memory_length=N)
    full = cells.Attention(num_heads=4, head_dim=4, num_kv_heads=2, max_length=N)
    resets, mask = _flags(flags)
    with jax.enable_x64(precision == "float64"):
        dtype = jnp.float64 if precision == "float64" else jnp.float32
        xl, full = (dataclasses.replace(c, dtype=dtype, param_dtype=dtype) for c in (xl, full))
        params = jax.tree.map(lambda a: a.astype(dtype), xl.init(key, INPUT_SIZE))
        xs = _inputs(1).astype(dtype)

        def loss(fn, params, xs):
            ys = fn(params, xs)
            return jnp.sum(jnp.sin(3 * ys)), ys

        memory = xl.initial_state((B,), dtype)  # the memory in float64 too (the default is float32)
        by_segments = lambda p, x: _segmented(xl, p, x, memory, resets=resets, mask=mask)[0]
        whole = lambda p, x: full.apply(p, x, resets=resets, mask=mask)[0]
        grad = lambda fn: jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1), has_aux=True))
        g_seg, ys_seg = grad(by_segments)(params, xs)
        g_whole, ys_whole = grad(whole)(params, xs)
        assert ys_seg.dtype == dtype
    tol = 1e-12 if precision == "float64" else 2e-5
    np.testing.assert_allclose(ys_seg, ys_whole, rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(g_seg), jax.tree.leaves(g_whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10)


# --------------------------------------------------------------------------------------------------
# M shorter than the stream: an independent float64 transcription of XL's mask.
# --------------------------------------------------------------------------------------------------
def xl_reference(cell, params, xs, *, segment_lengths, resets=None, mask=None):
    """The XL cell from its definition, in float64 NumPy, over the stream xs [B, N, in] cut into
    segments of `segment_lengths`, from an empty memory.

    Positions count the valid tokens of a document (a reset starts one; a reset on padding does
    nothing). A query at position p in a segment whose first token has position s in the query's
    document (s = the valid document tokens before the segment) attends the valid keys of its document
    at positions in [max(0, s − M), p]."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(xs, np.float64)
    nb, nt = x.shape[:2]
    valid = np.ones((nb, nt), bool) if mask is None else np.asarray(mask)
    resets = np.zeros((nb, nt), bool) if resets is None else np.asarray(resets)
    starts = np.cumsum([0, *segment_lengths])[:-1]
    segment_of = np.searchsorted(starts, np.arange(nt), side="right") - 1
    pos, doc = np.zeros((nb, nt), int), np.zeros((nb, nt), int)
    seg_start_pos = np.zeros((nb, nt), int)  # s of each token's segment, in that token's document
    for b in range(nb):
        q = d = 0
        for t in range(nt):
            if valid[b, t] and resets[b, t]:
                d, q = d + 1, 0
            pos[b, t], doc[b, t] = q, d
            q += int(valid[b, t])
        for t in range(nt):
            before = np.arange(nt) < starts[segment_of[t]]
            seg_start_pos[b, t] = np.sum(before & valid[b] & (doc[b] == doc[b, t]))
    q, k, v = reference_qkv(cell, p, x, pos)
    d = cell.head_dim
    group = cell.num_heads // cell.kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    if cell.positional == "alibi":
        dist = pos[:, :, None] - pos[:, None, :]
        logits = logits - alibi_slopes(cell.num_heads)[:, None, None] * np.abs(dist)[:, None]
    lowest = np.maximum(0, seg_start_pos - cell.memory_length)
    visible = (
        valid[:, None, :]
        & (doc[:, :, None] == doc[:, None, :])
        & (pos[:, None, :] <= pos[:, :, None])
        & (pos[:, None, :] >= lowest[:, :, None])
    )
    logits = np.where(visible[:, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", weights, v)
    out = np.einsum("bqhd,hdo->bqo", y, p["w_o"])
    return np.where(valid[..., None], out, 0.0)


REFERENCE_CASES = [
    ("rotary-m1", cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=1)),
    ("rotary-m4-gqa", cells.TransformerXLAttention(num_heads=4, head_dim=2, num_kv_heads=2, memory_length=4)),
    ("alibi-m3", cells.TransformerXLAttention(num_heads=3, head_dim=3, positional="alibi", memory_length=3)),
    (
        "sinusoidal-m7",
        cells.TransformerXLAttention(num_heads=2, head_dim=4, positional="sinusoidal", memory_length=7),
    ),
]


@pytest.mark.parametrize("flags", ["plain", "resets+mask"])
@pytest.mark.parametrize("cell", [c for _, c in REFERENCE_CASES], ids=[i for i, _ in REFERENCE_CASES])
def test_segments_equal_the_xl_reference(cell, flags, key):
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(2)
    resets, mask = _flags(flags)
    ys, state = jax.jit(functools.partial(_segmented, cell, resets=resets, mask=mask))(params, xs)
    expected = xl_reference(cell, params, xs, segment_lengths=SEGMENTS, resets=resets, mask=mask)
    np.testing.assert_allclose(ys, expected, rtol=1e-5, atol=1e-5)
    if flags == "plain":  # every M here is shorter than the 8 tokens before segment 3: it truncates
        whole = xl_reference(cell, params, xs, segment_lengths=(N,))
        assert np.max(np.abs(whole - expected)) > 1e-3
    assert state.k.shape == (B, cell.memory_length, cell.kv_heads, cell.head_dim)


# --------------------------------------------------------------------------------------------------
# step, the memory's size, resets.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", ["plain", "resets+mask"])
def test_step_loop_equals_apply_when_the_memory_covers_the_sequence(flags, key):
    """From the empty memory and from one holding a prefix; values, final state and gradients."""
    cell = cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=N + 4)
    params = cell.init(key, INPUT_SIZE)
    _, state = cell.apply(params, _inputs(5, 4))  # a memory of 4 tokens
    xs = _inputs(1)
    resets, mask = _flags(flags)
    floats, rebuild = split_floats(state)

    def loss(fn, params, xs, floats):
        ys, final = fn(params, xs, rebuild(floats))
        return jnp.sum(jnp.sin(3 * ys)) + jnp.sum(jnp.cos(final.k)), (ys, final)

    by_apply = lambda p, x, s: cell.apply(p, x, s, resets=resets, mask=mask)
    by_steps = lambda p, x, s: step_loop(cell, p, x, s, resets=resets, mask=mask)
    grad = lambda fn: jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2), has_aux=True)
    g_apply, (ys, final) = jax.jit(grad(by_apply))(params, xs, floats)
    g_steps, (ref_ys, ref_final) = grad(by_steps)(params, xs, floats)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves((final, g_apply)), jax.tree.leaves((ref_final, g_steps)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_step_with_a_short_memory_is_xl_over_one_token_segments(key):
    """With M < the sequence, the step loop is XL with segments of one token: each token sees the last
    M tokens and itself (and so differs from `apply` over the whole sequence)."""
    cell = cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=3)
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(3)
    resets, mask = _flags("resets+mask")
    ys, _ = step_loop(cell, params, xs, resets=resets, mask=mask)
    expected = xl_reference(cell, params, xs, segment_lengths=(1,) * N, resets=resets, mask=mask)
    np.testing.assert_allclose(ys, expected, rtol=1e-5, atol=1e-5)
    by_apply, _ = cell.apply(params, xs, resets=resets, mask=mask)
    assert np.max(np.abs(by_apply - ys)) > 1e-3


def test_memory_stays_size_m_and_holds_the_last_m_keys(key):
    """Over a stream of 50 segments (300 tokens) with M = 4, the state keeps its shape and holds the
    last 4 keys and values (rotated at their stream positions); the position counter runs on."""
    cell = cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=4)
    params = cell.init(key, INPUT_SIZE)
    xs = _inputs(6, 300)
    run = jax.jit(cell.apply)
    state = cell.initial_state((B,))
    for s in range(0, 300, 6):
        _, state = run(params, xs[:, s : s + 6], state)
        assert state.k.shape == (B, 4, 2, 4) and state.v.shape == (B, 4, 2, 4)
    np.testing.assert_array_equal(state.length, [300, 300])
    _, k, v = cell._project(params, xs[:, -4:], jnp.arange(296, 300))
    slots = np.arange(296, 300) % 4
    np.testing.assert_allclose(state.k[:, slots], k, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.v[:, slots], v, rtol=1e-6, atol=1e-6)


def test_a_reset_empties_the_memory(key):
    cell = cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=6)
    params = cell.init(key, INPUT_SIZE)
    apply = jax.jit(cell.apply)  # a compiled program per shape, not op by op
    _, memory = apply(params, _inputs(1, 9))
    xs = _inputs(2, 5)
    fresh_ys, fresh = apply(params, xs)
    # A reset at a segment's first token: the memory is not read, and the state is the fresh one.
    resets = jnp.zeros((B, 5), bool).at[:, 0].set(True)
    ys, state = apply(params, xs, memory, resets=resets)
    np.testing.assert_allclose(ys, fresh_ys, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A reset inside the segment: the new document's tokens alone fill the memory.
    resets = jnp.zeros((B, 5), bool).at[:, 3].set(True)
    _, state = apply(params, xs, memory, resets=resets)
    _, alone = apply(params, xs[:, 3:])
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # step: a reset starts the memory again from the one token
    state, _ = cell.step(params, memory, xs[:, 0], reset=jnp.array([True, False]))
    np.testing.assert_array_equal(state.length, [1, 10])
    np.testing.assert_array_equal(state.k[0, 1:], 0.0)


# --------------------------------------------------------------------------------------------------
# Errors and the registry.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hparams, pattern",
    [
        ({"memory_length": 0}, r"memory_length must be a positive integer .*segment length.*got 0"),
        ({"memory_length": -3}, r"memory_length must be a positive integer"),
        ({"memory_length": 2.5}, r"memory_length must be a positive integer"),
        ({"memory_length": True}, r"memory_length must be a positive integer"),
        ({"causal": False}, r"causal must be True.*Attention\(causal=False\)"),
        ({"head_dim": 3}, r"even head_dim"),
        ({"num_kv_heads": 3}, r"not a multiple of num_kv_heads"),
    ],
)
def test_bad_hyperparameters_name_the_field_and_the_fix(hparams, pattern):
    with pytest.raises(ValueError, match=pattern):
        cells.TransformerXLAttention(**{"num_heads": 2, "head_dim": 4, **hparams})


def test_registry_and_streaming():
    cell = cells.get("xl_attention", num_heads=2, head_dim=4, memory_length=8)
    assert isinstance(cell, cells.TransformerXLAttention) and cell.memory_length == 8
    assert cell.step_unsupported() is None and cell.causal_unsupported() is None
    assert not cell.state_grows_with_sequence
