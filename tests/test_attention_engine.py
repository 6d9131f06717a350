"""The exact-attention engine (`seqjax.scan.attention`): the blockwise form against the materialised
reference (values and gradients, float32 against float64), every visibility feature, fully-masked
queries, O(L) training memory, block skipping, and bad input.

Everything runs under `jit`: op-by-op dispatch of the eager path costs more than the compiles it saves.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.scan.attention import (
    attention,
    attention_reference,
    choose_attention_method,
    choose_blocks,
)
from seqjax.scan.attention.blockwise import _block_table
from seqjax.scan.attention.cudnn import _attention_cudnn, _cudnn_unsupported
from seqjax.scan.attention.inputs import _check
from seqjax.scan.attention.visibility import Visibility


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def _inputs(seed: int, batch, lq, lk, hq, hkv, d, dv):
    rng = np.random.default_rng(seed)
    q = _normal(rng, (*batch, lq, hq, d))
    k = _normal(rng, (*batch, lk, hkv, d))
    v = _normal(rng, (*batch, lk, hkv, dv))
    ct = _normal(rng, (*batch, lq, hq, dv))  # the output cotangent
    return q, k, v, ct


def _packed_ids(rng: np.random.Generator, batch, length: int, segments: int) -> np.ndarray:
    """Non-decreasing segment ids (packed sequences), a different packing per batch row."""
    cuts = rng.random((*batch, length)) < (segments - 1) / max(length, 1)
    return np.cumsum(cuts, axis=-1).astype(np.int32)


def _case(name: str):
    """(kwargs of `attention`, shapes) for one named configuration; arrays are NumPy so they can be
    converted to either precision."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = dict(batch=(2,), lq=37, lk=37, hq=2, hkv=2, d=8, dv=8)
    kw: dict = {}
    if name == "causal":
        pass
    elif name == "bidirectional-segments-kvmask":
        ids = _packed_ids(rng, (2,), 37, 3)
        kw = dict(causal=False, q_segment_ids=ids, kv_segment_ids=ids, kv_mask=rng.random((2, 37)) < 0.8)
    elif name == "segments-kvmask":
        ids = _packed_ids(rng, (2,), 37, 3)
        kw = dict(q_segment_ids=ids, kv_segment_ids=ids, kv_mask=rng.random((2, 37)) < 0.7)
    elif name == "window-global":
        kw = dict(window=5, kv_global=rng.random((2, 37)) < 0.1, q_global=rng.random((2, 37)) < 0.1)
    elif name == "window-bidirectional-global":
        kw = dict(
            causal=False, window=4, kv_global=rng.random((2, 37)) < 0.1, q_global=rng.random((2, 37)) < 0.1
        )
    elif name == "alibi-gqa":
        shape.update(hq=4, hkv=2)
        kw = dict(alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625]))
    elif name == "mqa-bidirectional-dv":
        shape.update(hq=4, hkv=1, dv=5)
        kw = dict(causal=False)
    elif name == "kv-cache-window-alibi":
        shape.update(lq=11, lk=29, hq=2, hkv=1)
        kw = dict(
            q_positions=np.arange(18, 29),
            kv_positions=np.arange(29),
            window=7,
            alibi_slopes=np.array([0.3, 0.1]),
            kv_mask=np.arange(29) >= 2,
        )
    elif name == "positions-gaps-window":
        pos = np.cumsum(rng.integers(1, 4, size=(2, 37)), axis=-1)
        kw = dict(causal=False, window=6, q_positions=pos, kv_positions=pos)
    elif name == "batch-axes":
        shape.update(batch=(2, 3), lq=19, lk=19)
    elif name == "no-batch":
        shape.update(batch=(), lq=19, lk=19)
        kw = dict(scale=0.7)
    else:
        raise KeyError(name)
    return kw, shape


def _convert(kw: dict, dtype) -> dict:
    out = {}
    for name, value in kw.items():
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            value = jnp.asarray(value, dtype)
        elif isinstance(value, np.ndarray):
            value = jnp.asarray(value)
        out[name] = value
    return out


@functools.cache
def _reference64(name: str):
    """Values and gradients (q, k, v, and ALiBi slopes if any) of the float64 reference."""
    kw, s = _case(name)
    q, k, v, ct = _inputs(1, s["batch"], s["lq"], s["lk"], s["hq"], s["hkv"], s["d"], s["dv"])
    with jax.enable_x64(True):
        kw64 = _convert(kw, jnp.float64)
        slopes = kw64.pop("alibi_slopes", None)

        def loss(q, k, v, slopes):
            out = attention_reference(q, k, v, alibi_slopes=slopes, **kw64)
            return jnp.sum(out * ct), out

        args = [jnp.asarray(x, jnp.float64) for x in (q, k, v)]
        argnums = (0, 1, 2, 3) if slopes is not None else (0, 1, 2)
        grads, out = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(*args, slopes)
        return np.asarray(out), [np.asarray(g) for g in grads]


def _blockwise(name: str, block_q, block_k, dtype=jnp.float32, method="blockwise"):
    kw, s = _case(name)
    q, k, v, ct = _inputs(1, s["batch"], s["lq"], s["lk"], s["hq"], s["hkv"], s["d"], s["dv"])
    kw32 = _convert(kw, jnp.float32)
    slopes = kw32.pop("alibi_slopes", None)

    def loss(q, k, v, slopes):
        out = attention(q, k, v, alibi_slopes=slopes, method=method, block_q=block_q, block_k=block_k, **kw32)
        return jnp.sum(out.astype(jnp.float32) * ct), out

    args = [jnp.asarray(x, dtype) for x in (q, k, v)]
    argnums = (0, 1, 2, 3) if slopes is not None else (0, 1, 2)
    grads, out = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))(*args, slopes)
    assert out.dtype == dtype
    return np.asarray(out.astype(jnp.float32)), [np.asarray(g.astype(jnp.float32)) for g in grads]


def assert_close(got, want, rtol: float) -> None:
    """max |got − want| ≤ rtol · max(1, max |want|), leaf by leaf."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape
        assert np.all(np.isfinite(g))
        scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
        err = float(np.max(np.abs(g - w), initial=0.0))
        assert err <= rtol * scale, (err, scale)


# (case, block_q, block_k): block sizes that do not divide the lengths, block_q != block_k, blocks larger
# than the sequence, and blocks of one token.
CASES = [
    ("causal", 8, 16),
    ("causal", 64, 128),
    ("bidirectional-segments-kvmask", 16, 8),
    ("segments-kvmask", 8, 4),
    ("window-global", 8, 8),
    ("window-bidirectional-global", 4, 16),
    ("alibi-gqa", 8, 16),
    ("mqa-bidirectional-dv", 16, 16),
    ("kv-cache-window-alibi", 4, 8),
    ("positions-gaps-window", 8, 8),
    ("batch-axes", 8, 8),
    ("no-batch", 1, 3),
]


@pytest.mark.parametrize(("name", "block_q", "block_k"), CASES, ids=[f"{n}-{q}x{k}" for n, q, k in CASES])
def test_blockwise_float32_matches_float64_reference(name, block_q, block_k):
    out, grads = _blockwise(name, block_q, block_k)
    out64, grads64 = _reference64(name)
    assert_close(out, out64, 2e-6)
    assert_close(grads, grads64, 2e-5)


def test_naive_and_auto_match_reference():
    out64, grads64 = _reference64("window-global")
    for method in ("naive", "auto"):
        out, grads = _blockwise("window-global", None, None, method=method)
        assert_close(out, out64, 2e-6)
        assert_close(grads, grads64, 2e-5)


def test_visibility_value_equals_keyword_form():
    """`attention(q, k, v, Visibility(...))` computes exactly the keyword call; the value is a pytree
    (arrays as leaves, causal and window static), so it passes through `jit` as an argument."""
    kw, s = _case("window-global")
    inputs = _inputs(1, s["batch"], s["lq"], s["lk"], s["hq"], s["hkv"], s["d"], s["dv"])
    q, k, v = (jnp.asarray(x, jnp.float32) for x in inputs[:3])
    kw = _convert(kw, jnp.float32)
    vis = Visibility(**kw)
    for method in ("blockwise", "naive"):
        by_value = jax.jit(functools.partial(attention, method=method, block_q=8, block_k=8))(q, k, v, vis)
        by_keywords = jax.jit(
            lambda q, k, v, m=method: attention(q, k, v, method=m, block_q=8, block_k=8, **kw)
        )
        np.testing.assert_array_equal(by_value, by_keywords(q, k, v))
    np.testing.assert_array_equal(attention_reference(q, k, v, vis), attention_reference(q, k, v, **kw))


@pytest.mark.parametrize(("causal", "window"), [(True, None), (False, None), (True, 3)])
def test_cudnn_argument_mapping(causal, window):
    """The "cudnn" path's call of `jax.nn.dot_product_attention` (GQA heads, several batch axes, scale,
    window -> local_window_size), run with implementation="xla" since cuDNN needs a GPU."""
    q, k, v, _ = (jnp.asarray(x, jnp.float32) for x in _inputs(5, (2, 3), 11, 11, 4, 2, 8, 8))
    kw = dict(causal=causal, window=window, scale=0.3)
    a = _check("test", q, k, v, Visibility(causal=causal, window=window), alibi_slopes=None, scale=0.3)
    assert _cudnn_unsupported(a) is None
    got = jax.jit(lambda: _attention_cudnn(a, implementation="xla"))()
    np.testing.assert_allclose(got, attention_reference(q, k, v, **kw), atol=2e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_close_to_float32(dtype):
    out, grads = _blockwise("alibi-gqa", 8, 16, dtype=dtype)
    out64, grads64 = _reference64("alibi-gqa")
    # Inputs and the output are rounded to 8 (bf16) or 11 (f16) bits; the statistics stay float32.
    tol = 3e-2 if dtype == jnp.bfloat16 else 4e-3
    assert_close(out, out64, tol)
    assert_close(grads, grads64, 4 * tol)


def test_queries_that_see_no_key_give_zero_output_and_zero_gradient():
    """Row 0's keys are all masked (whole blocks); in row 1 the first keys are masked, so early causal
    queries see nothing, and a segment id that no key carries blinds its queries too."""
    b, length, h, d = 2, 20, 2, 4
    q, k, v, ct = (jnp.asarray(x, jnp.float32) for x in _inputs(3, (b,), length, length, h, h, d, d))
    kv_mask = np.ones((b, length), bool)
    kv_mask[0] = False
    kv_mask[1, :6] = False
    q_seg = np.zeros((b, length), np.int32)
    q_seg[1, 15:] = 7  # no key has segment 7
    kv_seg = np.zeros((b, length), np.int32)
    blind = np.zeros((b, length), bool)
    blind[0] = True
    blind[1, :6] = True
    blind[1, 15:] = True
    kw = dict(
        kv_mask=jnp.asarray(kv_mask), q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.asarray(kv_seg)
    )

    def loss(q, k, v, method):
        out = attention(q, k, v, method=method, block_q=4, block_k=4, **kw)
        return jnp.sum(out * ct), out

    for method in ("blockwise", "naive"):
        (dq, dk, dv), out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)(
            q, k, v, method
        )
        for x in (out, dq, dk, dv):
            assert np.all(np.isfinite(np.asarray(x))), method
        assert np.all(np.asarray(out)[blind] == 0), method
        assert np.all(np.asarray(dq)[blind] == 0), method
        assert np.all(np.asarray(dk)[~kv_mask] == 0), method
        assert np.all(np.asarray(dv)[~kv_mask] == 0), method
        assert np.any(np.asarray(out)[~blind] != 0), method


def test_no_keys_and_no_queries():
    q = jnp.ones((2, 5, 2, 4))
    empty = jnp.ones((2, 0, 2, 4))
    assert np.all(np.asarray(attention(q, empty, empty, method="blockwise")) == 0)
    assert attention(empty, q, q, method="blockwise").shape == (2, 0, 2, 4)


# --------------------------------------------------------------------------------------------------
# Memory and block skipping
# --------------------------------------------------------------------------------------------------
def _train_temp_bytes(fn, length: int, compile_, d: int = 32) -> int:
    x = jax.ShapeDtypeStruct((1, length, 1, d), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))
    return compile_(grad.lower(x, x, x)).memory_analysis().temp_size_in_bytes


def test_training_memory_is_linear_in_length(compile_as_users_do):
    """XLA's plan for forward + backward: the blockwise form's temporaries grow linearly with L, the
    materialised form's quadratically, and at L = 4096 the blockwise form needs a small fraction.
    Compiled at XLA's default optimisation level, as users run it, not at the suite's -O0."""
    blockwise = functools.partial(attention, method="blockwise", block_q=128, block_k=128)
    plan = functools.partial(_train_temp_bytes, compile_=compile_as_users_do)
    small, large = plan(blockwise, 2048), plan(blockwise, 4096)
    assert large <= 2.3 * small, (small, large)
    naive_small = plan(attention_reference, 2048)
    naive_large = plan(attention_reference, 4096)
    assert naive_large >= 3.5 * naive_small, (naive_small, naive_large)
    # One [4096, 4096] float32 matrix is 64 MiB; the blockwise plan is a few copies of q, k, v.
    assert large < 4096 * 4096 * 4 / 8, large
    assert large < naive_large / 20, (large, naive_large)


_PER_TOKEN = (
    "q_positions",
    "kv_positions",
    "q_segment_ids",
    "kv_segment_ids",
    "kv_mask",
    "kv_global",
    "q_global",
)


@functools.partial(jax.jit, static_argnames=("length", "block", "causal", "window"))
def _table_jit(arrays: dict, *, length: int, block: int, causal: bool, window: int | None) -> jax.Array:
    q = jnp.zeros((2, length, 1, 4))
    a = _check(
        "test", q, q, q, Visibility(**arrays, causal=causal, window=window), alibi_slopes=None, scale=None
    )
    return _block_table(a, block, block)


def _table(length: int, block: int, *, causal: bool = True, window: int | None = None, **kw) -> np.ndarray:
    """[nq, nk] bool: the block pairs the blockwise engine computes for these per-token arrays."""
    assert set(kw) <= set(_PER_TOKEN)
    arrays = {name: None if kw.get(name) is None else jnp.asarray(kw[name]) for name in _PER_TOKEN}
    return np.asarray(_table_jit(arrays, length=length, block=block, causal=causal, window=window))


def test_block_skipping_counts():
    """The block pairs the engine computes (each query block loops over exactly its listed key
    blocks, each key block over its query blocks): causal ≈ half of bidirectional, a sliding window's
    count grows with L·w, and fully masked key blocks are never visited."""
    n = 32  # blocks of 64 at L = 2048
    full = _table(2048, 64, causal=False).sum()
    causal = _table(2048, 64).sum()
    assert full == n * n
    assert causal == n * (n + 1) // 2
    # A window of w = 128 tokens touches at most ceil(w / 64) + 1 = 3 key blocks per query block.
    w128 = _table(2048, 64, window=128).sum()
    w128_long = _table(4096, 64, window=128).sum()
    w256 = _table(2048, 64, window=256).sum()
    assert w128 <= 3 * n and w128_long <= 3 * 2 * n and w256 <= 5 * n
    assert w128_long >= 2 * w128 - 3  # linear in L
    # Global keys in the first block make that block visible to every query block, nothing more.
    glob = np.zeros(2048, bool)
    glob[:4] = True
    assert _table(2048, 64, window=128, kv_global=glob).sum() <= w128 + n
    # Padding at the end of row 0 and of row 1: the last 8 key blocks are never visited.
    mask = np.ones((2, 2048), bool)
    mask[:, -512:] = False
    table = _table(2048, 64, causal=False, kv_mask=mask)
    assert table.sum() == n * (n - 8) and not table[:, -8:].any()
    # Packed sequences (positions non-decreasing, one segment per 256 tokens): block-diagonal.
    seg = np.repeat(np.arange(8), 256)
    assert _table(2048, 64, causal=False, q_segment_ids=seg, kv_segment_ids=seg).sum() == 8 * 4 * 4


@pytest.mark.parametrize("seed", range(4))
def test_block_skipping_is_conservative(seed):
    """Every block pair that holds a visible pair is in the table, for random data (positions and
    segment ids in any order or non-decreasing, masks, global tokens, windows)."""
    rng = np.random.default_rng(seed)
    length, block = 48, 8
    causal = bool(seed % 2)
    ordered = seed >= 2  # non-decreasing positions and ids, as the cells pass them

    def positions(lo, hi):
        x = rng.integers(lo, hi, (2, length))
        return np.sort(x, axis=-1) if ordered else x

    kw = dict(
        q_positions=positions(0, 60),
        kv_positions=positions(0, 60),
        q_segment_ids=positions(0, 3),
        kv_segment_ids=positions(0, 3),
        kv_mask=rng.random((2, length)) < 0.6,
        kv_global=rng.random((2, length)) < 0.05,
        q_global=rng.random((2, length)) < 0.05,
        window=int(rng.integers(1, 10)),
    )
    table = _table(length, block, causal=causal, **dict(kw))
    arrays = {name: jnp.asarray(value) for name, value in kw.items() if name != "window"}
    vis = np.asarray(Visibility(**arrays, causal=causal, window=kw["window"]).pairs(length, length))
    n = length // block
    needed = vis.reshape(2, n, block, n, block).any(axis=(0, 2, 4))
    assert not np.any(needed & ~table)
    if ordered:
        assert table.sum() < n * n  # and it does skip something


def test_default_blocks():
    assert choose_blocks(20, 37) == (24, 40)
    assert choose_blocks(100_000, 100_000) == (256, 256)
    assert choose_blocks(100_000, 100_000, rows=64) == (128, 128)
    assert choose_blocks(100_000, 100_000, rows=100_000) == (64, 64)
    assert choose_blocks(100, 100, 16, 32) == (16, 32)
    assert choose_blocks(1, 5) == (1, 5)
    assert choose_attention_method(16, 16, platform="cpu") == "naive"
    assert choose_attention_method(1, 16384, platform="cpu") == "naive"
    assert choose_attention_method(128, 128, platform="cpu") == "blockwise"
    assert choose_attention_method(16384, 16384, platform="cpu") == "blockwise"
    assert (
        choose_attention_method(
            4096, 4096, dtype=jnp.bfloat16, head_dim=64, cudnn_supported=True, platform="gpu"
        )
        == "cudnn"
    )
    assert choose_attention_method(16384, 16384, dtype=jnp.float32, cudnn_supported=True, platform="gpu") == (
        "blockwise"
    )


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
Q = jnp.zeros((2, 6, 4, 8))
K = jnp.zeros((2, 5, 2, 8))
V = jnp.zeros((2, 5, 2, 3))

BAD = [
    ("rank", dict(q=jnp.zeros((6, 8))), ValueError, "`q` has shape"),
    ("ranks differ", dict(k=jnp.zeros((5, 2, 8))), ValueError, "ranks"),
    ("batch differs", dict(k=jnp.zeros((3, 5, 2, 8)), v=jnp.zeros((3, 5, 2, 3))), ValueError, "batch axes"),
    ("head dim", dict(k=jnp.zeros((2, 5, 2, 7))), ValueError, "head_dim 7"),
    ("v length", dict(v=jnp.zeros((2, 4, 2, 3))), ValueError, "`v` has shape"),
    ("heads", dict(k=jnp.zeros((2, 5, 3, 8)), v=jnp.zeros((2, 5, 3, 3))), ValueError, "not a multiple"),
    ("int q", dict(q=jnp.zeros((2, 6, 4, 8), jnp.int32)), TypeError, "floating"),
    ("q positions", dict(q_positions=jnp.arange(5)), ValueError, "`q_positions` has shape"),
    ("kv positions", dict(kv_positions=jnp.zeros((3, 5), jnp.int32)), ValueError, "`kv_positions`"),
    ("float positions", dict(q_positions=jnp.arange(6.0)), TypeError, "integer"),
    ("one segment", dict(q_segment_ids=jnp.zeros((2, 6), jnp.int32)), ValueError, "both"),
    (
        "segment shape",
        dict(q_segment_ids=jnp.zeros((2, 5), jnp.int32), kv_segment_ids=jnp.zeros((2, 5), jnp.int32)),
        ValueError,
        "`q_segment_ids`",
    ),
    ("mask shape", dict(kv_mask=jnp.ones((2, 6), bool)), ValueError, "`kv_mask` has shape"),
    ("mask dtype", dict(kv_mask=jnp.ones((2, 5), jnp.int32)), TypeError, "boolean"),
    ("global shape", dict(q_global=jnp.ones((2, 5), bool)), ValueError, "`q_global`"),
    ("slopes", dict(alibi_slopes=jnp.ones(2)), ValueError, "one slope per query head"),
    ("method", dict(method="flash"), ValueError, "unknown method 'flash'"),
    ("window 0", dict(window=0), ValueError, "`window` must be >= 1"),
    ("window float", dict(window=2.5), TypeError, "`window`"),
    ("block_q", dict(block_q=0), ValueError, "`block_q` must be >= 1"),
    ("block_k", dict(block_k=-4), ValueError, "`block_k` must be >= 1"),
    ("cudnn", dict(method="cudnn", kv_mask=jnp.ones((2, 5), bool)), ValueError, "method='blockwise'"),
    ("cudnn lengths", dict(method="cudnn"), ValueError, "Lq == Lk"),
    ("cudnn window", dict(method="cudnn", causal=False, window=3), ValueError, "causal only"),
    ("value and keyword", dict(visibility=Visibility(), window=3), TypeError, "both `visibility` and"),
    ("value type", dict(visibility={"window": 3}), TypeError, "must be a seqjax.scan.attention.Visibility"),
    ("window in value", dict(visibility=Visibility(window=0)), ValueError, "`window` must be >= 1"),
    ("mask in value", dict(visibility=Visibility(kv_mask=jnp.ones((2, 6), bool))), ValueError, "`kv_mask`"),
]


@pytest.mark.parametrize(("what", "override", "exc", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_error(what, override, exc, match):
    args = dict(q=Q, k=K, v=V, method="blockwise")
    args.update(override)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc, match=match):
        attention(q, k, v, **args)
