"""Sequence-parallel exact and sliding-window attention (issue 21): `sequence_parallel_attention` and the
cells `Attention` / `SlidingWindowAttention` with `sequence_axis`, on 2, 4 and 8 of the suite's 8 fake
CPU devices, equal the single-device engine in values and gradients (float64).

T = 90 tokens: 8 shards do not divide it (nor the 16 chunks of causal load balancing), so every sharded
run pads internally and cuts back. Heads: 4 query heads on 2 key/value heads (GQA). Flags: resets on a
shard's first token (12, 48), on the last token of one (47) and inside one (25); padding across the
boundary at 24 (tokens 22..26); a reset on a padded token (36) and padding on both sides of a boundary
(47, 48). The positions are the cells' (valid tokens before each token in its segment), so padding
stalls them and resets restart them, as in training.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from seqjax import cells
from seqjax.cells.kv_cache import segments_and_positions
from seqjax.scan.attention import Visibility, attention, sequence_parallel_attention
from seqjax.scan.attention import sequence_parallel as sp

T = 90
AUTO = jax.sharding.AxisType.Auto


def _mesh(n: int) -> jax.sharding.Mesh:
    return jax.make_mesh((n,), ("sequence",), axis_types=(AUTO,), devices=jax.devices()[:n])


def _flags(long_padding: bool = True) -> tuple[jax.Array, jax.Array]:
    """Resets and mask [2, T]. `long_padding`: padding next to shard boundaries inside a segment, which
    stalls the positions there: a run of 5 tokens (22..26) in row 0 and tokens 47, 48 in row 1 (a window
    of 5 then reaches past a halo of 4 tokens). Without it, padding at 30 and 77 only (at least a
    window from every boundary)."""
    resets = np.zeros((2, T), bool)
    resets[0, [12, 25, 47, 48]] = True
    resets[1, [24, 36]] = True
    mask = np.ones((2, T), bool)
    if long_padding:
        mask[0, 22:27] = False
        mask[1, [47, 48]] = False
    mask[1, [30, 77]] = False
    return jnp.asarray(resets), jnp.asarray(mask)


def _visibility(causal: bool, window: int | None, long_padding: bool = True) -> Visibility:
    resets, mask = _flags(long_padding)
    seg, pos = segments_and_positions(mask, resets, jnp.zeros((2,), jnp.int32))
    return Visibility(
        q_positions=pos,
        kv_positions=pos,
        q_segment_ids=seg,
        kv_segment_ids=seg,
        kv_mask=mask,
        causal=causal,
        window=window,
    )


def _close(got, want, rtol: float, atol: float) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def _value_and_grads(run, inputs, weights):
    def loss(inputs):
        out = run(*inputs)
        return jnp.sum(out * weights), out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return out, grads


def _inputs():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(k[0], (2, T, 4, 8), jnp.float64)
    kk = jax.random.normal(k[1], (2, T, 2, 8), jnp.float64)
    v = jax.random.normal(k[2], (2, T, 2, 8), jnp.float64)
    slopes = jnp.linspace(0.05, 0.4, 4, dtype=jnp.float64)
    weights = jax.random.normal(k[3], (2, T, 4, 8), jnp.float64)
    return (q, kk, v, slopes), weights


@functools.cache
def _reference(causal: bool, window: int | None, long_padding: bool):
    with jax.enable_x64(True):
        inputs, weights = _inputs()
        vis = _visibility(causal, window, long_padding)
        f = lambda q, k, v, s: attention(q, k, v, vis, alibi_slopes=s, method="naive")
        return jax.jit(_value_and_grads, static_argnums=0)(f, inputs, weights)


# (strategy, shards, causal, window, balance, long padding)
ENGINE_CASES = [
    ("ring", 8, True, None, True, True),
    ("ring", 8, False, None, True, True),
    ("ring", 4, True, None, True, True),
    ("ring", 2, True, None, False, True),
    ("all_gather", 8, True, None, True, True),
    ("all_gather", 8, False, 7, True, True),
    ("halo", 8, True, 5, True, False),  # the halo holds every visible key
    ("halo", 8, False, 5, True, False),
    ("halo", 4, True, 5, True, True),  # padding stalls the positions: the all-gather fallback
    ("halo", 8, True, 20, True, True),  # a window longer than a shard: the all-gather
]


@pytest.mark.parametrize(("strategy", "n", "causal", "window", "balance", "long_padding"), ENGINE_CASES)
def test_engine_equals_single_device(strategy, n, causal, window, balance, long_padding):
    """Values and gradients (q, k, v, ALiBi slopes), float64; GQA; resets and padding across shard
    boundaries; T = 90 padded to the shards."""
    want = _reference(causal, window, long_padding)
    with jax.enable_x64(True):
        inputs, weights = _inputs()
        vis = _visibility(causal, window, long_padding)

        def f(q, k, v, s):
            return sequence_parallel_attention(
                q,
                k,
                v,
                vis,
                alibi_slopes=s,
                strategy=strategy,
                balance=balance,
                block_q=4,
                block_k=4,
                mesh=_mesh(n),
            )

        got = jax.jit(_value_and_grads, static_argnums=0)(f, inputs, weights)
    _close(got, want, rtol=1e-11, atol=1e-12)


def _halo_exact(vis: Visibility, n: int, window: int) -> bool:
    length = -(-T // n) * n
    pad = length - T
    qm = {"pos": jnp.pad(vis.q_positions, ((0, 0), (0, pad)), mode="edge")}
    qm["seg"] = jnp.pad(vis.q_segment_ids, ((0, 0), (0, pad)), mode="edge")
    km = dict(qm)
    plan = sp._Plan("sequence", n, vis.causal, window, 1.0, 4, 4, False)
    run = jax.shard_map(
        lambda qm, km: sp._halo_exact(plan, qm, km, window - 1)[None],
        mesh=_mesh(n),
        in_specs=(P(None, "sequence"), P(None, "sequence")),
        out_specs=P("sequence"),
        check_vma=False,
    )
    flags = np.asarray(run(qm, km))
    assert (flags == flags[0]).all()  # every shard takes the same branch
    return bool(flags[0])


def test_halo_check():
    """The halo's exactness check: true without padding next to boundaries (so the halo cases above run
    the halo), false when padding stalls the positions next to a boundary under a window of 5, false for
    positions that decrease within a segment, true for arange positions at any window <= the shard."""
    assert _halo_exact(_visibility(True, 5, long_padding=False), 8, 5)
    assert _halo_exact(_visibility(False, 5, long_padding=False), 8, 5)
    assert not _halo_exact(_visibility(True, 5, long_padding=True), 8, 5)
    arange = jnp.broadcast_to(jnp.arange(T), (2, T))
    zeros = jnp.zeros((2, T), jnp.int32)
    plain = Visibility(q_positions=arange, kv_positions=arange, q_segment_ids=zeros, kv_segment_ids=zeros)
    assert _halo_exact(plain, 8, 12)
    backwards = Visibility(
        q_positions=arange[:, ::-1], kv_positions=arange[:, ::-1], q_segment_ids=zeros, kv_segment_ids=zeros
    )
    assert not _halo_exact(backwards, 8, 3)


def test_refusals():
    q = jnp.ones((1, 8, 2, 4))
    with pytest.raises(ValueError, match="unknown strategy"):
        sequence_parallel_attention(q, q, q, strategy="tree", mesh=_mesh(2))
    with pytest.raises(ValueError, match="needs a window"):
        sequence_parallel_attention(q, q, q, strategy="halo", mesh=_mesh(2))
    with pytest.raises(ValueError, match="self-attention"):
        sequence_parallel_attention(q, q[:, :6], q[:, :6], mesh=_mesh(2))
    cell = cells.Attention(num_heads=2, head_dim=4, max_length=16, sequence_axis="sequence")
    params = cell.init(jax.random.PRNGKey(0), 3)
    with jax.set_mesh(_mesh(2)), pytest.raises(ValueError, match="without a state"):
        cell.apply(params, jnp.ones((1, 8, 3)), cell.initial_state((1,)))
    with pytest.raises(ValueError, match="sequence_strategy"):
        cells.Attention(num_heads=2, head_dim=4, sequence_strategy="tree")


CELLS = {
    "attention": (
        lambda: cells.Attention(
            num_heads=4, head_dim=4, num_kv_heads=2, max_length=T, dtype=jnp.float64, param_dtype=jnp.float64
        ),
        8,
        True,
    ),
    "attention_bidirectional_alibi_all_gather": (
        lambda: cells.Attention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            causal=False,
            positional="alibi",
            max_length=T,
            sequence_strategy="all_gather",
            dtype=jnp.float64,
            param_dtype=jnp.float64,
        ),
        4,
        True,
    ),
    "sliding_window_halo": (
        lambda: cells.SlidingWindowAttention(
            num_heads=4, head_dim=4, num_kv_heads=2, window=5, dtype=jnp.float64, param_dtype=jnp.float64
        ),
        8,
        False,
    ),
    "sliding_window_stalled": (
        lambda: cells.SlidingWindowAttention(
            num_heads=4, head_dim=4, num_kv_heads=1, window=5, dtype=jnp.float64, param_dtype=jnp.float64
        ),
        2,
        True,
    ),
    "sliding_window_global": (
        lambda: cells.SlidingWindowAttention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            window=4,
            num_global=2,
            dtype=jnp.float64,
            param_dtype=jnp.float64,
        ),
        8,
        True,
    ),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_cells_with_sequence_axis_equal_single_device(name):
    """`apply` with `sequence_axis` under `jax.set_mesh` equals plain `apply`: outputs and gradients
    (parameters and inputs), float64, rotary (or ALiBi) on global positions, resets and padding across
    boundaries."""
    make, n, long_padding = CELLS[name]
    resets, mask = _flags(long_padding)
    with jax.enable_x64(True):
        cell = make()
        sharded = cells.with_sequence_axis(cell, "sequence")
        params = cell.init(jax.random.PRNGKey(9), 6)
        xs = jax.random.normal(jax.random.PRNGKey(10), (2, T, 6), jnp.float64)
        weights = jax.random.normal(jax.random.PRNGKey(11), (2, T, cell.output_size), jnp.float64)

        def run(c):
            f = lambda params, xs: c.apply(params, xs, resets=resets, mask=mask)[0]
            return jax.jit(_value_and_grads, static_argnums=0)(f, (params, xs), weights)

        want = run(cell)
        with jax.set_mesh(_mesh(n)):
            got = run(sharded)
    _close(got, want, rtol=1e-10, atol=1e-11)
