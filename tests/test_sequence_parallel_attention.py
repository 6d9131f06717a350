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
from seqjax.scan.attention import KVPrefix, Visibility, attention, sequence_parallel_attention
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
    run = jax.shard_map(  # jitted below: an eager shard_map runs op by op on every shard
        lambda qm, km: sp._halo_exact(plan, qm, km, window - 1)[None],
        mesh=_mesh(n),
        in_specs=(P(None, "sequence"), P(None, "sequence")),
        out_specs=P("sequence"),
        check_vma=False,
    )
    flags = np.asarray(jax.jit(run)(qm, km))
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
    prefix = KVPrefix(k=q[:, :3], v=q[:, :3], positions=jnp.zeros((1, 3), int))
    with pytest.raises(ValueError, match=r"kv_prefix.k has shape"):
        sequence_parallel_attention(q, q, q, kv_prefix=prefix._replace(k=q[:, :3, :1]), mesh=_mesh(2))
    with pytest.raises(ValueError, match=r"kv_prefix.v has shape"):
        sequence_parallel_attention(q, q, q, kv_prefix=prefix._replace(v=q[:, :2]), mesh=_mesh(2))
    with pytest.raises(ValueError, match=r"kv_prefix.positions has shape"):
        sequence_parallel_attention(
            q, q, q, kv_prefix=prefix._replace(positions=jnp.zeros((1, 4))), mesh=_mesh(2)
        )
    with pytest.raises(ValueError, match=r"kv_prefix.segment_ids must be given exactly when"):
        sequence_parallel_attention(
            q,
            q,
            q,
            q_segment_ids=jnp.zeros((1, 8), int),
            kv_segment_ids=jnp.zeros((1, 8), int),
            kv_prefix=prefix,
            mesh=_mesh(2),
        )
    with pytest.raises(TypeError, match="KVPrefix"):
        sequence_parallel_attention(q, q, q, kv_prefix=(q, q, q), mesh=_mesh(2))
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


# (cell, shards, long padding): the cells whose state is a cache of keys and values, carried into a
# split sequence. The cache is filled by a first apply of 11 tokens (a reset at 4 in row 1, so its
# cache starts later).
F64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
STATEFUL_CELLS = {
    "attention_kv_cache_ring": (
        lambda: cells.Attention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            max_length=128,
            **F64,
        ),
        8,
        True,
    ),
    "attention_kv_cache_all_gather_alibi": (
        lambda: cells.Attention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            max_length=128,
            positional="alibi",
            sequence_strategy="all_gather",
            **F64,
        ),
        4,
        True,
    ),
    "sliding_window_ring_buffer_halo": (
        lambda: cells.SlidingWindowAttention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            window=5,
            **F64,
        ),
        8,
        False,
    ),
    "sliding_window_global_ring": (
        lambda: cells.SlidingWindowAttention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            window=4,
            num_global=2,
            **F64,
        ),
        2,
        True,
    ),
    "xl_memory_ring": (
        lambda: cells.TransformerXLAttention(
            num_heads=4,
            head_dim=4,
            num_kv_heads=2,
            memory_length=7,
            **F64,
        ),
        8,
        True,
    ),
    "xl_memory_all_gather_sinusoidal": (
        lambda: cells.TransformerXLAttention(
            num_heads=4,
            head_dim=4,
            memory_length=16,
            positional="sinusoidal",
            sequence_strategy="all_gather",
            **F64,
        ),
        4,
        True,
    ),
}


@pytest.mark.parametrize("name", list(STATEFUL_CELLS))
def test_cells_with_a_state_under_sequence_axis_equal_single_device(name):
    """`apply(params, xs, state)` with `sequence_axis`: the cache (KV cache, window ring buffer, XL
    memory) is attended by every shard as a replicated prefix. Outputs, the new state and gradients
    (parameters, inputs and the cached keys and values) equal plain `apply`, float64, with resets and
    padding across shard boundaries; the state it returns feeds a second split `apply` that also
    matches."""
    make, n, long_padding = STATEFUL_CELLS[name]
    resets, mask = _flags(long_padding)
    with jax.enable_x64(True):
        cell = make()
        sharded = cells.with_sequence_axis(cell, "sequence")
        params = cell.init(jax.random.PRNGKey(9), 6)
        first = jax.random.normal(jax.random.PRNGKey(12), (2, 11, 6), jnp.float64)
        first_resets = jnp.zeros((2, 11), bool).at[1, 4].set(True)
        _, state = jax.jit(
            lambda p, x: cell.apply(p, x, cell.initial_state((2,), jnp.float64), resets=first_resets)
        )(params, first)
        xs = jax.random.normal(jax.random.PRNGKey(10), (2, T, 6), jnp.float64)
        weights = jax.random.normal(jax.random.PRNGKey(11), (2, T, cell.output_size), jnp.float64)
        tail = xs[:, :20]

        def run(c):
            def f(params, xs, state):
                ys, after = c.apply(params, xs, state, resets=resets, mask=mask)
                more, _ = c.apply(params, tail, after)  # the state the split apply returns, used again
                return jnp.concatenate([ys, more], axis=1), after

            def loss(params, xs, cached):  # cached: the state's float leaves (keys and values)
                ys, after = f(params, xs, state._replace(**cached))
                return jnp.sum(ys[:, :T] * weights) + jnp.sum(ys[:, T:] ** 2), (ys, after)

            cached = {name: x for name, x in state._asdict().items() if name != "length"}
            return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, cached)

        want = run(cell)
        with jax.set_mesh(_mesh(n)):
            got = run(sharded)
    assert np.max(np.abs(np.asarray(want[1][2]["k"]))) > 0  # the cache's keys receive a gradient
    _close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize(
    ("strategy", "n", "window"), [("ring", 8, None), ("all_gather", 4, 7), ("halo", 8, 5)]
)
def test_engine_with_a_prefix_equals_attention_over_the_concatenation(strategy, n, window):
    """`kv_prefix`: 9 cached keys (2 empty slots) before the split sequence, in segment 0 at positions
    −9..−1, with the sequence's resets and padding: equals `attention` over [prefix; k] on one device,
    values and gradients (including the prefix's keys and values)."""
    _, mask = _flags(long_padding=strategy != "halo")
    cached = 9
    with jax.enable_x64(True):
        (q, k, v, _), weights = _inputs()
        pk = jax.random.normal(jax.random.PRNGKey(5), (2, cached, 2, 8), jnp.float64)
        pv = jax.random.normal(jax.random.PRNGKey(6), (2, cached, 2, 8), jnp.float64)
        vis = _visibility(True, window, long_padding=strategy != "halo")
        ppos = jnp.broadcast_to(jnp.arange(-cached, 0), (2, cached))
        pmask = jnp.ones((2, cached), bool).at[0, :2].set(False)
        pseg = jnp.zeros((2, cached), vis.q_segment_ids.dtype)
        joined = Visibility(
            q_positions=vis.q_positions,
            kv_positions=jnp.concatenate([ppos, vis.kv_positions], 1),
            q_segment_ids=vis.q_segment_ids,
            kv_segment_ids=jnp.concatenate([pseg, vis.kv_segment_ids], 1),
            kv_mask=jnp.concatenate([pmask, mask], 1),
            window=window,
        )

        def reference(q, k, v, pk, pv):
            return attention(
                q, jnp.concatenate([pk, k], 1), jnp.concatenate([pv, v], 1), joined, method="naive"
            )

        def split(q, k, v, pk, pv):
            prefix = KVPrefix(k=pk, v=pv, positions=ppos, mask=pmask, segment_ids=pseg)
            return sequence_parallel_attention(
                q, k, v, vis, kv_prefix=prefix, strategy=strategy, mesh=_mesh(n)
            )

        inputs = (q, k, v, pk, pv)
        want = jax.jit(_value_and_grads, static_argnums=0)(reference, inputs, weights)
        got = jax.jit(_value_and_grads, static_argnums=0)(split, inputs, weights)
        assert np.max(np.abs(np.asarray(want[1][3]))) > 0  # the prefix's keys get a gradient
    _close(got, want, rtol=1e-10, atol=1e-11)
