"""Exact softmax attention engines: a blockwise form with an online softmax (O(L·d) memory) and the
materialised reference.

Which key j a query i sees is decided by data, not by index, so the same engine serves causal and
bidirectional attention, packed sequences (segment ids), padding (kv_mask), a KV cache placed before
the new tokens, sliding windows and global tokens:

    visible(i, j) = kv_mask[j]
                    and q_segment_ids[i] == kv_segment_ids[j]
                    and (kv_positions[j] <= q_positions[i]                if causal)
                    and (q_positions[i] - kv_positions[j] < window        if causal and window
                         |q_positions[i] - kv_positions[j]| < window      if not causal and window
                         or kv_global[j] or q_global[i])

A query that sees no key returns zeros (and zero gradients), never NaN.

The blockwise form (`method="blockwise"`, FlashAttention-2's algorithm):

- Forward. Queries in blocks of `block_q`; for each query block a loop over key blocks of `block_k`
  keeps the running row maximum m, the running sum l = Σ exp(s − m) and the unnormalised output
  o = Σ exp(s − m) v, rescaling both by exp(m_old − m_new) when the maximum grows. Only [block_q,
  block_k] logits exist at a time. It saves q, k, v, the output and logsumexp = m + log l per query.
- Backward (a custom VJP). For each key block, a loop over query blocks recomputes the logits and
  P = exp(s − logsumexp), then dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D) with D = rowsum(dO ∘ O),
  dQ += dS K (into a full-size dq buffer, in place) and dK += dSᵀ Q. Memory is O(L·d). Only reverse
  mode is defined (no `jax.jvp`); gradients reach q, k, v and the ALiBi slopes.
- Block skipping. Each block is summarised per batch row (min/max position, min/max segment id, any
  valid key, any global key/query). A (query block, key block) pair is computed only when the summaries
  say it may hold a visible pair; this test is conservative (it never drops a visible pair), and tight
  when positions are non-decreasing along time. Each query block loops over exactly its listed key
  blocks (and each key block over its query blocks in the backward pass), so a skipped pair costs
  nothing: causal attention does about half the work of bidirectional attention and a sliding window
  of w costs O(L·w).
- GQA/MQA: the Hq query heads are grouped as [Hkv, Hq / Hkv] against the Hkv key/value heads inside
  the matmuls; k and v are never repeated.
- Dtypes: matmul operands stay in the input dtype (bf16/f16 allowed) and accumulate in float32
  (`preferred_element_type`); the softmax statistics are float32. float64 inputs compute in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "BLOCK_ELEMENTS",
    "DEFAULT_BLOCK",
    "METHODS",
    "MIN_BLOCK",
    "NAIVE_MAX_PAIRS",
    "NAIVE_MAX_QUERIES",
    "attention",
    "attention_reference",
    "choose_attention_method",
    "choose_blocks",
    "decode_attention",
    "visibility",
]

METHODS = ("auto", "blockwise", "naive", "cudnn")

# Chosen from measurements on the 2-core CPU this project benchmarks on (f32, forward + backward); the
# numbers are in the docstrings of `choose_blocks` and `choose_attention_method`.
DEFAULT_BLOCK = 256  # the largest default block
MIN_BLOCK = 64  # the smallest default block
BLOCK_ELEMENTS = 2**20  # default blocks keep batch · heads · block_q · block_k at most this
NAIVE_MAX_QUERIES = 32  # "auto" is "naive" for at most this many queries ...
NAIVE_MAX_PAIRS = 2**20  # ... and at most this many (query, key) pairs


def visibility(
    q_positions: jax.Array,
    kv_positions: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
) -> jax.Array:
    """[*batch, Lq, Lk] bool: the rule in the module docstring, for positions [*batch, Lq] / [*batch, Lk]."""
    qp = q_positions[..., :, None]
    kp = kv_positions[..., None, :]
    visible = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), bool)
    if causal:
        visible &= kp <= qp
    if window is not None:
        near = (qp - kp < window) if causal else (jnp.abs(qp - kp) < window)
        if kv_global is not None:
            near |= kv_global[..., None, :]
        if q_global is not None:
            near |= q_global[..., :, None]
        visible &= near
    if q_segment_ids is not None or kv_segment_ids is not None:
        if q_segment_ids is None or kv_segment_ids is None:
            raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither.")
        visible &= q_segment_ids[..., :, None] == kv_segment_ids[..., None, :]
    if kv_mask is not None:
        visible &= kv_mask[..., None, :]
    return visible


def attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """The materialised [*batch, heads, Lq, Lk] form: the plain reference the blockwise form is tested
    against. O(L²) memory.

    Args:
      q: [*batch, Lq, Hq, D]; k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], with Hq a multiple of
        Hkv (grouped-query / multi-query attention when Hkv < Hq).
      q_positions, kv_positions: [*batch, Lq] / [*batch, Lk] integer positions (default: arange).
      alibi_slopes: [Hq]; adds −slope·|q_pos − kv_pos| to the logits.
      scale: logit scale, default 1/√D.

    Returns:
      [*batch, Lq, Hq, Dv] in q's dtype; softmax and sums accumulate in float32 (float64 for float64).
    """
    *batch, lq, hq, d = q.shape
    lk, hkv = k.shape[-3], k.shape[-2]
    if hq % hkv:
        raise ValueError(f"attention: {hq} query heads is not a multiple of {hkv} key/value heads.")
    acc = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(lq), (*batch, lq))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(lk), (*batch, lk))
    visible = visibility(
        q_positions,
        kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        kv_global=kv_global,
        q_global=q_global,
        causal=causal,
        window=window,
    )
    group = hq // hkv
    qg = q.reshape(*batch, lq, hkv, group, d)
    logits = jnp.einsum("...qhgd,...khd->...hgqk", qg, k, preferred_element_type=acc) * scale
    if alibi_slopes is not None:
        dist = jnp.abs(q_positions[..., :, None] - kv_positions[..., None, :]).astype(acc)
        slopes = jnp.asarray(alibi_slopes, acc).reshape(hkv, group)
        logits = logits - slopes[..., None, None] * dist[..., None, None, :, :]
    visible = visible[..., None, None, :, :]
    logits = jnp.where(visible, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.where(visible, jnp.exp(logits - jax.lax.stop_gradient(row_max)), 0.0)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(denom > 0, denom, 1.0)
    out = jnp.einsum("...hgqk,...khd->...qhgd", weights.astype(v.dtype), v, preferred_element_type=acc)
    return out.reshape(*batch, lq, hq, v.shape[-1]).astype(q.dtype)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Args:
    """Validated inputs: per-token arrays broadcast to [*batch, L], or None where not given."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    q_positions: jax.Array | None
    kv_positions: jax.Array | None
    q_segment_ids: jax.Array | None
    kv_segment_ids: jax.Array | None
    kv_mask: jax.Array | None
    kv_global: jax.Array | None
    q_global: jax.Array | None
    window: int | None
    alibi_slopes: jax.Array | None
    scale: float

    @property
    def batch(self) -> tuple[int, ...]:
        return self.q.shape[:-3]

    @property
    def lq(self) -> int:
        return self.q.shape[-3]

    @property
    def lk(self) -> int:
        return self.k.shape[-3]


def _per_token(name: str, x, batch: tuple[int, ...], length: int, which: str, kind: str) -> jax.Array | None:
    """Checks a [*batch, L] per-token array (leading axes may broadcast) and broadcasts it."""
    if x is None:
        return None
    x = jnp.asarray(x)
    expected = (*batch, length)
    if x.ndim == 0 or x.shape[-1] != length or x.ndim > len(expected):
        raise ValueError(
            f"attention: `{name}` has shape {x.shape}, expected {expected} ([*batch, {which}], one entry per "
            f"{'query' if which == 'Lq' else 'key'}; leading axes may broadcast)."
        )
    try:
        x = jnp.broadcast_to(x, expected)
    except ValueError:
        raise ValueError(
            f"attention: `{name}` has shape {x.shape}, which does not broadcast to {expected} "
            f"([*batch, {which}])."
        ) from None
    if kind == "bool" and x.dtype != jnp.bool_:
        raise TypeError(
            f"attention: `{name}` must be boolean, got dtype {x.dtype}; pass `{name}.astype(bool)`."
        )
    if kind == "int" and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"attention: `{name}` must be an integer array, got dtype {x.dtype}; pass "
            f"`{name}.astype(jnp.int32)`."
        )
    return x


def _check(
    fn: str,
    q,
    k,
    v,
    *,
    q_positions,
    kv_positions,
    q_segment_ids,
    kv_segment_ids,
    kv_mask,
    kv_global,
    q_global,
    window,
    alibi_slopes,
    scale,
) -> _Args:
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
        if x.ndim < 3:
            raise ValueError(
                f"{fn}: `{name}` has shape {x.shape}; expected [*batch, time, heads, head_dim] (rank >= 3)."
            )
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(
            f"{fn}: `q`, `k`, `v` have ranks {q.ndim}, {k.ndim}, {v.ndim} (shapes {q.shape}, {k.shape}, "
            f"{v.shape}); all three are [*batch, time, heads, head_dim] with the same batch axes."
        )
    if q.shape[:-3] != k.shape[:-3] or q.shape[:-3] != v.shape[:-3]:
        raise ValueError(
            f"{fn}: batch axes differ: `q` {q.shape}, `k` {k.shape}, `v` {v.shape}; broadcast them to one "
            "batch shape first."
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{fn}: `k` has head_dim {k.shape[-1]} but `q` has {q.shape[-1]}; q·k needs the same width "
            f"(shapes {q.shape}, {k.shape})."
        )
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"{fn}: `v` has shape {v.shape}, expected {k.shape[:-1]} + (Dv,) to match `k` {k.shape} "
            "(one value per key, same heads)."
        )
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv:
        raise ValueError(
            f"{fn}: {hq} query heads is not a multiple of {hkv} key/value heads; use Hkv dividing Hq "
            "(Hkv = Hq for multi-head, 1 for multi-query attention)."
        )
    batch, lq, lk = q.shape[:-3], q.shape[-3], k.shape[-3]
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError(f"{fn}: pass both `q_segment_ids` and `kv_segment_ids`, or neither.")
    if window is not None:
        try:
            window = operator.index(window)
        except TypeError:
            raise TypeError(f"{fn}: `window` must be a Python int or None, got {window!r}.") from None
        if window <= 0:
            raise ValueError(f"{fn}: `window` must be >= 1 (or None for no window), got {window}.")
    if alibi_slopes is not None:
        alibi_slopes = jnp.asarray(alibi_slopes)
        if alibi_slopes.shape != (hq,):
            raise ValueError(
                f"{fn}: `alibi_slopes` has shape {alibi_slopes.shape}, expected ({hq},): one slope per "
                "query head."
            )
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(max(q.shape[-1], 1))
    return _Args(
        q=q,
        k=k,
        v=v,
        q_positions=_per_token("q_positions", q_positions, batch, lq, "Lq", "int"),
        kv_positions=_per_token("kv_positions", kv_positions, batch, lk, "Lk", "int"),
        q_segment_ids=_per_token("q_segment_ids", q_segment_ids, batch, lq, "Lq", "int"),
        kv_segment_ids=_per_token("kv_segment_ids", kv_segment_ids, batch, lk, "Lk", "int"),
        kv_mask=_per_token("kv_mask", kv_mask, batch, lk, "Lk", "bool"),
        kv_global=_per_token("kv_global", kv_global, batch, lk, "Lk", "bool"),
        q_global=_per_token("q_global", q_global, batch, lq, "Lq", "bool"),
        window=window,
        alibi_slopes=alibi_slopes,
        scale=scale,
    )


def _check_block(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"attention: `{name}` must be a Python int or None, got {value!r}.") from None
    if value < 1:
        raise ValueError(f"attention: `{name}` must be >= 1 (or None to choose it), got {value}.")
    return value


# --------------------------------------------------------------------------------------------------
# Choices from measurement
# --------------------------------------------------------------------------------------------------
def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def choose_blocks(
    lq: int, lk: int, block_q: int | None = None, block_k: int | None = None, *, rows: int = 1
) -> tuple[int, int]:
    """The blockwise form's (block_q, block_k): the given sizes, else the largest power of two b ≤
    DEFAULT_BLOCK (and ≥ MIN_BLOCK) whose [rows, b, b] logits block holds at most BLOCK_ELEMENTS entries,
    capped at the length rounded up to a multiple of 8 (a longer block would only compute padding).
    `rows` = batch size × query heads.

    From sweeps on the project's 2-core CPU (f32, causal forward + backward, best of 3 interleaved
    runs on a machine with other load: compare within a row), seconds for square blocks of
    128 / 256 / 512 / 1024:
      batch 8 × 1 head of 128, L = 4096:  2.65 / 1.90 / 2.77 / 5.15   (L = 1024: 0.23 / 0.20 / 0.27 / 0.36)
      batch 1 × 1 head of 128, L = 8192:  0.96 / 0.82 / 0.91 / 1.30
      batch 8 × 8 heads of 64, L = 2048:  3.22 / 4.57 / 6.88 (64: 3.92)
    The best block keeps rows·b² near 2^19 to 2^20 (a 2–4 MiB float32 logits block that stays in
    cache between the matmul that makes it and the one that uses it); smaller blocks pay more loop
    iterations and rescaling passes. Memory is O(L·d + rows·block_q·block_k) either way.
    """

    def default(length: int) -> int:
        b = DEFAULT_BLOCK
        while b > MIN_BLOCK and rows * b * b > BLOCK_ELEMENTS:
            b //= 2
        return min(b, length if length < 8 else _round_up(length, 8))

    bq = block_q if block_q is not None else default(max(lq, 1))
    bk = block_k if block_k is not None else default(max(lk, 1))
    return bq, bk


def _cudnn_unsupported(a: _Args, causal: bool) -> str | None:
    """Why `jax.nn.dot_product_attention(implementation="cudnn")` cannot compute this call, or None."""
    for name in (
        "q_positions",
        "kv_positions",
        "q_segment_ids",
        "kv_segment_ids",
        "kv_mask",
        "kv_global",
        "q_global",
        "alibi_slopes",
    ):
        if getattr(a, name) is not None:
            return f"`{name}` is not supported"
    if a.window is not None and not causal:
        return "cuDNN's sliding window is causal only (got causal=False with a window)"
    if (causal or a.window is not None) and a.lq != a.lk:
        return f"causal or windowed attention needs Lq == Lk (got Lq={a.lq}, Lk={a.lk})"
    if a.v.shape != a.k.shape:
        return f"`v` must have the shape of `k` (got {a.v.shape} and {a.k.shape})"
    return None


def choose_attention_method(
    lq: int,
    lk: int,
    *,
    dtype=jnp.float32,
    head_dim: int = 64,
    cudnn_supported: bool = False,
    platform: str | None = None,
) -> str:
    """The method `auto` uses.

    - GPU: "cudnn" when the call is one cuDNN's fused kernel computes (no positions, segment ids, masks,
      global tokens or ALiBi; Lq == Lk when causal or windowed; bf16/f16; head_dim a multiple of 8, at
      most 128).
    - Otherwise "naive" for few queries: Lq ≤ NAIVE_MAX_QUERIES and Lq·Lk ≤ NAIVE_MAX_PAIRS, so its
      [Lq, Lk] matrices are no larger than k and v themselves (decoding one token against a KV cache,
      short chunks); else "blockwise".

    Measured on the project's 2-core CPU (batch 8, f32, best of 7-30 interleaved runs), naive : blockwise
    time: square causal self-attention, forward + backward, one head of 128: 0.18 : 0.18 ms at L = 16,
    0.37 : 0.44 at 32, 1.2 : 1.4 at 64, 4.1 : 3.7 at 128, 17 : 12 at 256, 106 : 50 at 512 and
    640 : 165 at 1024; a few queries against 4096 keys: 57 : 104 ms at Lq = 16, 76 : 113 at 32,
    155 : 151 at 64, 231 : 188 at 128; one query against 1024 / 16384 keys: 2.6 : 11.6 and 184 : 383 ms.
    So the blockwise form wins from about 64 queries on, whatever Lk (it skips the causal half, and its
    memory traffic is O(L·d) instead of O(L²)); below that its loop and the padding of the query block
    cost more than the materialised matrices. The GPU rule beyond cuDNN has not been measured yet.
    """
    platform = platform or jax.default_backend()
    if (
        platform == "gpu"
        and cudnn_supported
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
    ):
        return "cudnn"
    if lq <= NAIVE_MAX_QUERIES and lq * lk <= NAIVE_MAX_PAIRS:
        return "naive"
    return "blockwise"


# --------------------------------------------------------------------------------------------------
# The blockwise engine
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Static:
    causal: bool
    window: int | None
    scale: float


def _block_mask(st: _Static, qi: dict, kj: dict) -> jax.Array | None:
    """The visibility rule for one block pair: qi [B, bq] / kj [B, bk] per-token arrays ->
    [B, 1, 1, bq, bk] bool (broadcasting over heads), or None when every pair is visible."""
    vis = None

    def both(a, b):
        return b if a is None else a & b

    qp = qi["pos"][:, :, None]
    kp = kj["pos"][:, None, :]
    if st.causal:
        vis = kp <= qp
    if st.window is not None:
        near = (qp - kp < st.window) if st.causal else (jnp.abs(qp - kp) < st.window)
        if "glob" in kj:
            near |= kj["glob"][:, None, :]
        if "glob" in qi:
            near |= qi["glob"][:, :, None]
        vis = both(vis, near)
    if "seg" in qi:
        vis = both(vis, qi["seg"][:, :, None] == kj["seg"][:, None, :])
    if "valid" in kj:
        vis = both(vis, kj["valid"][:, None, :])
    return None if vis is None else vis[:, None, None]


def _block_logits(st, q_i, k_j, qi, kj, slopes, acc):
    """q_i [B, H, G, bq, D], k_j [B, H, bk, D] -> masked logits [B, H, G, bq, bk] (−inf where not
    visible), and the ALiBi distances [B, 1, 1, bq, bk] (None without ALiBi)."""
    s = jnp.einsum("bhgqd,bhkd->bhgqk", q_i, k_j, preferred_element_type=acc) * jnp.asarray(st.scale, acc)
    dist = None
    if slopes is not None:
        dist = jnp.abs(qi["pos"][:, :, None] - kj["pos"][:, None, :]).astype(acc)[:, None, None]
        s = s - slopes[None, :, :, None, None] * dist
    mask = _block_mask(st, qi, kj)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    return s, dist


def _take(tree, i):
    return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, 0, keepdims=False), tree)


def _forward(st, q, k, v, slopes, qinfo, kinfo, kv_lists):
    """Block-major inputs: q [nq, B, H, G, bq, D], k [nk, B, H, bk, D], v [nk, B, H, bk, Dv],
    qinfo {name: [nq, B, bq]}, kinfo {name: [nk, B, bk]}, kv_lists = (order [nq, nk], count [nq]):
    the key blocks each query block visits. -> out [nq, B, H, G, bq, Dv] (q's dtype), logsumexp
    [nq, B, H, G, bq] (accumulation dtype; 0 for a query that sees no key)."""
    acc = _acc_dtype(q.dtype)
    dv = v.shape[-1]

    def per_q_block(_, xs):
        q_i, qi, order, count = xs
        stat_shape = q_i.shape[:-1]

        def body(t, carry):
            m, den, o = carry
            j = order[t]
            k_j, v_j, kj = _take((k, v, kinfo), j)
            s, _ = _block_logits(st, q_i, k_j, qi, kj, slopes, acc)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            # A row that has seen no visible key yet keeps m = −inf; subtracting 0 instead keeps
            # exp(−inf − m) = 0 and exp(m_old − m) = 0 free of −inf − (−inf) = NaN.
            m_safe = jnp.where(m_new == -jnp.inf, jnp.zeros((), acc), m_new)
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            den = den * corr + jnp.sum(p, axis=-1)
            pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_j, preferred_element_type=acc)
            return m_new, den, o * corr[..., None] + pv

        init = (
            jnp.full(stat_shape, -jnp.inf, acc),
            jnp.zeros(stat_shape, acc),
            jnp.zeros((*stat_shape, dv), acc),
        )
        m, den, o = lax.fori_loop(0, count, body, init)
        seen = den > 0
        den = jnp.where(seen, den, 1.0)
        out = o / den[..., None]
        lse = jnp.where(seen, m + jnp.log(den), 0.0)
        return None, (out.astype(q.dtype), lse)

    order, count = kv_lists
    _, (out, lse) = lax.scan(per_q_block, None, (q, qinfo, order, count))
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise(st, q, k, v, slopes, qinfo, kinfo, kv_lists, q_lists):
    return _forward(st, q, k, v, slopes, qinfo, kinfo, kv_lists)[0]


def _blockwise_fwd(st, q, k, v, slopes, qinfo, kinfo, kv_lists, q_lists):
    out, lse = _forward(st, q, k, v, slopes, qinfo, kinfo, kv_lists)
    return out, (q, k, v, slopes, qinfo, kinfo, kv_lists, q_lists, out, lse)


def _blockwise_bwd(st, res, dout):
    q, k, v, slopes, qinfo, kinfo, _, q_lists, out, lse = res
    acc = lse.dtype
    cd = q.dtype
    # D_i = rowsum(dO_i ∘ O_i) = Σ_j P_ij dP_ij, the softmax's correction term.
    d_corr = jnp.sum(dout.astype(acc) * out.astype(acc), axis=-1)
    dout = dout.astype(cd)
    scale = jnp.asarray(st.scale, acc)

    def per_k_block(carry, xs):
        dq, dslopes = carry
        k_j, v_j, kj, order, count = xs

        def body(t, carry):
            dq, dk, dv, dslopes = carry
            i = order[t]
            q_i, do_i, lse_i, dc_i, qi = _take((q, dout, lse, d_corr, qinfo), i)
            s, dist = _block_logits(st, q_i, k_j, qi, kj, slopes, acc)
            p = jnp.exp(s - lse_i[..., None])  # exactly 0 where not visible (s = −inf)
            dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(v.dtype), do_i, preferred_element_type=acc)
            dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_i, v_j, preferred_element_type=acc)
            ds = p * (dp - dc_i[..., None])  # ∂loss/∂logits
            if dslopes is not None:
                dslopes = dslopes - jnp.sum(ds * dist, axis=(0, 3, 4))
            ds = (ds * scale).astype(cd)
            dq_i = jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_j, preferred_element_type=acc)
            dq = lax.dynamic_update_index_in_dim(dq, lax.dynamic_index_in_dim(dq, i, 0, False) + dq_i, i, 0)
            dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_i, preferred_element_type=acc)
            return dq, dk, dv, dslopes

        init = (dq, jnp.zeros(k_j.shape, acc), jnp.zeros(v_j.shape, acc), dslopes)
        dq, dk, dv, dslopes = lax.fori_loop(0, count, body, init)
        return (dq, dslopes), (dk.astype(k.dtype), dv.astype(v.dtype))

    order, count = q_lists
    init = (jnp.zeros(q.shape, acc), None if slopes is None else jnp.zeros_like(slopes))
    (dq, dslopes), (dk, dv) = lax.scan(per_k_block, init, (k, v, kinfo, order, count))
    return dq.astype(q.dtype), dk, dv, dslopes, None, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def _acc_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _summaries(st: _Static, qinfo: dict, kinfo: dict) -> jax.Array:
    """[nq, nk] bool: whether a (query block, key block) pair may hold a visible pair, for any batch row.

    Conservative: computed from per-block, per-row intervals (min/max position and segment id over the
    block's tokens, valid keys only) and "any global" flags, so a False is a proof of no visible pair.
    """

    def span(x, valid):
        if valid is None:
            return jnp.min(x, axis=-1), jnp.max(x, axis=-1)
        info = jnp.iinfo(x.dtype)
        lo = jnp.min(jnp.where(valid, x, info.max), axis=-1)
        hi = jnp.max(jnp.where(valid, x, info.min), axis=-1)
        any_valid = jnp.any(valid, axis=-1)  # empty blocks are excluded below; keep their spans finite
        return jnp.where(any_valid, lo, 0), jnp.where(any_valid, hi, 0)

    valid = kinfo.get("valid")
    qlo, qhi = (x[:, None] for x in span(qinfo["pos"], None))  # [nq, 1, B]
    klo, khi = (x[None] for x in span(kinfo["pos"], valid))  # [1, nk, B]
    ok = jnp.ones(jnp.broadcast_shapes(qlo.shape, klo.shape), bool)
    if valid is not None:
        ok &= jnp.any(valid, axis=-1)[None]
    if st.causal:
        ok &= klo <= qhi
    if st.window is not None:
        if st.causal:
            near = qlo - khi < st.window
        else:
            near = jnp.maximum(jnp.maximum(klo - qhi, qlo - khi), 0) < st.window
        if "glob" in kinfo:
            kglob = kinfo["glob"] if valid is None else kinfo["glob"] & valid
            near |= jnp.any(kglob, axis=-1)[None]
        if "glob" in qinfo:
            near |= jnp.any(qinfo["glob"], axis=-1)[:, None]
        ok &= near
    if "seg" in qinfo:
        qslo, qshi = (x[:, None] for x in span(qinfo["seg"], None))
        kslo, kshi = (x[None] for x in span(kinfo["seg"], valid))
        ok &= (qslo <= kshi) & (kslo <= qshi)
    return jnp.any(ok, axis=-1)


def _lists(table: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[n, m] bool -> (order [n, m] int32: the True columns of each row first, ascending; count [n])."""
    order = jnp.argsort(~table, axis=-1, stable=True).astype(jnp.int32)
    return order, jnp.sum(table, axis=-1, dtype=jnp.int32)


def _block_major(x: jax.Array, n: int, b: int, fill=0, edge: bool = False) -> jax.Array:
    """[B, L, ...] -> [n, B, b, ...], padded along L to n·b (with `fill`, or the last entry if `edge`)."""
    pad = n * b - x.shape[1]
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, widths, mode="edge") if edge else jnp.pad(x, widths, constant_values=fill)
    x = x.reshape(x.shape[0], n, b, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _prepare(a: _Args, causal: bool, block_q: int, block_k: int):
    """Flattens the batch, pads to whole blocks and lays everything out block-major for `_blockwise`."""
    batch, lq, lk = a.batch, a.lq, a.lk
    bsz = math.prod(batch)
    hq, d = a.q.shape[-2:]
    hkv, dv = a.v.shape[-2:]
    group = hq // hkv
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    cd = jnp.result_type(a.q, a.k, a.v)
    acc = _acc_dtype(cd)
    st = _Static(causal=causal, window=a.window, scale=a.scale)

    # q: [*batch, Lq, Hq, D] -> [nq, B, Hkv, G, bq, D]; k, v: [*batch, Lk, Hkv, D] -> [nk, B, Hkv, bk, D].
    q = _block_major(a.q.astype(cd).reshape(bsz, lq, hkv, group, d), nq, block_q)
    q = jnp.moveaxis(q, 2, 4)
    k = jnp.moveaxis(_block_major(a.k.astype(cd).reshape(bsz, lk, hkv, d), nk, block_k), 2, 3)
    v = jnp.moveaxis(_block_major(a.v.astype(cd).reshape(bsz, lk, hkv, dv), nk, block_k), 2, 3)

    def flat(x, length):
        return x.reshape(bsz, length)

    qpos = a.q_positions if a.q_positions is not None else jnp.broadcast_to(jnp.arange(lq), (*batch, lq))
    kpos = a.kv_positions if a.kv_positions is not None else jnp.broadcast_to(jnp.arange(lk), (*batch, lk))
    # Padded queries copy the last real query's position and segment (their outputs are dropped), so
    # they never widen a block's summary; padded keys are invalid.
    qinfo = {"pos": _block_major(flat(qpos, lq), nq, block_q, edge=True)}
    kinfo = {"pos": _block_major(flat(kpos, lk), nk, block_k, edge=True)}
    if a.q_segment_ids is not None:
        qinfo["seg"] = _block_major(flat(a.q_segment_ids, lq), nq, block_q, edge=True)
        kinfo["seg"] = _block_major(flat(a.kv_segment_ids, lk), nk, block_k, edge=True)
    valid = a.kv_mask
    if valid is None and nk * block_k != lk:
        valid = jnp.ones((*batch, lk), bool)
    if valid is not None:
        kinfo["valid"] = _block_major(flat(valid, lk), nk, block_k, fill=False)
    if a.window is not None:  # without a window, global flags change nothing
        if a.kv_global is not None:
            kinfo["glob"] = _block_major(flat(a.kv_global, lk), nk, block_k, fill=False)
        if a.q_global is not None:
            qinfo["glob"] = _block_major(flat(a.q_global, lq), nq, block_q, fill=False)
    slopes = None
    if a.alibi_slopes is not None:
        slopes = a.alibi_slopes.astype(acc).reshape(hkv, group)
    return st, q, k, v, slopes, qinfo, kinfo


def _block_table(a: _Args, causal: bool, block_q: int, block_k: int) -> jax.Array:
    """[nq, nk] bool: the block pairs the blockwise form computes (for tests and diagnostics)."""
    st, *_, qinfo, kinfo = _prepare(a, causal, block_q, block_k)
    return _summaries(st, qinfo, kinfo)


def _attention_blockwise(a: _Args, causal: bool, block_q: int, block_k: int) -> jax.Array:
    batch, lq, lk = a.batch, a.lq, a.lk
    hq, dv = a.q.shape[-2], a.v.shape[-1]
    if lq == 0 or lk == 0:  # no queries, or no keys: every query sees nothing
        return jnp.zeros((*batch, lq, hq, dv), a.q.dtype)
    st, q, k, v, slopes, qinfo, kinfo = _prepare(a, causal, block_q, block_k)
    table = lax.stop_gradient(_summaries(st, qinfo, kinfo))
    out = _blockwise(st, q, k, v, slopes, qinfo, kinfo, _lists(table), _lists(table.T))
    # [nq, B, Hkv, G, bq, Dv] -> [*batch, Lq, Hq, Dv]
    nq, bsz, _, _, bq, _ = out.shape
    out = jnp.moveaxis(out, (0, 4), (1, 2)).reshape(bsz, nq * bq, hq, dv)[:, :lq]
    return out.reshape(*batch, lq, hq, dv).astype(a.q.dtype)


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------
def _attention_cudnn(a: _Args, causal: bool, implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` for a call `_cudnn_unsupported` accepts. (`implementation="xla"`
    runs the same argument mapping anywhere; the tests use it on CPU.)"""
    batch, lq, hq, d = a.q.shape[:-3], *a.q.shape[-3:]
    bsz = math.prod(batch)
    lk, hkv = a.k.shape[-3:-1]
    # visible iff 0 <= q - k < window, i.e. jax's (left, right) = (window - 1, 0); causal only.
    window = None if a.window is None else (a.window - 1, 0)
    out = jax.nn.dot_product_attention(
        a.q.reshape(bsz, lq, hq, d),
        a.k.reshape(bsz, lk, hkv, d),
        a.v.reshape(bsz, lk, hkv, d),
        scale=a.scale,
        is_causal=causal,
        local_window_size=window,
        implementation=implementation,
    )
    return out.reshape(*batch, lq, hq, d).astype(a.q.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    kv_global: jax.Array | None = None,
    q_global: jax.Array | None = None,
    causal: bool = True,
    window: int | None = None,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
    method: str = "auto",
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    """Exact softmax attention; same arguments and result as `attention_reference`.

    Args:
      q: [*batch, Lq, Hq, D]; k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], Hq a multiple of Hkv.
      q_positions, kv_positions: [*batch, Lq] / [*batch, Lk] integer positions (default: arange; a KV
        cache before the new tokens passes its own). Leading axes of the per-token arrays broadcast.
      q_segment_ids, kv_segment_ids: [*batch, Lq] / [*batch, Lk] integer ids (both or neither).
      kv_mask: [*batch, Lk] bool, False = a key no query sees (padding).
      kv_global, q_global: [*batch, Lk] / [*batch, Lq] bool, tokens exempt from `window`.
      causal: keys at later positions are invisible.
      window: int >= 1 or None, see the module docstring.
      alibi_slopes: [Hq]; adds −slope·|q_pos − kv_pos| to the logits. Differentiable in every method.
      scale: logit scale (a Python float), default 1/√D.
      method: "blockwise" (online softmax over key blocks, custom VJP, O(L·d) memory, skips block pairs
        with no visible pair), "naive" (`attention_reference`), "cudnn" (`jax.nn.dot_product_attention`
        with cuDNN's fused kernel, GPU only, no positions/segments/masks/global tokens/ALiBi), or "auto"
        (`choose_attention_method`).
      block_q, block_k: the blockwise form's block sizes; None chooses them (`choose_blocks`).

    Returns:
      [*batch, Lq, Hq, Dv] in q's dtype. Gradients flow to q, k, v and alibi_slopes.
    """
    if method not in METHODS:
        raise ValueError(f"attention: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    block_q, block_k = _check_block("block_q", block_q), _check_block("block_k", block_k)
    a = _check(
        "attention",
        q,
        k,
        v,
        q_positions=q_positions,
        kv_positions=kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask,
        kv_global=kv_global,
        q_global=q_global,
        window=window,
        alibi_slopes=alibi_slopes,
        scale=scale,
    )
    unsupported = _cudnn_unsupported(a, causal)
    if method == "auto":
        method = choose_attention_method(
            a.lq,
            a.lk,
            dtype=jnp.result_type(a.q, a.k, a.v),
            head_dim=a.q.shape[-1],
            cudnn_supported=unsupported is None,
        )
    if method == "cudnn":
        if unsupported is not None:
            raise ValueError(
                f"attention: method='cudnn' cannot compute this call: {unsupported}. Use method='blockwise' "
                "(any visibility rule) or 'auto'."
            )
        return _attention_cudnn(a, causal)
    if method == "naive":
        return attention_reference(
            a.q,
            a.k,
            a.v,
            q_positions=a.q_positions,
            kv_positions=a.kv_positions,
            q_segment_ids=a.q_segment_ids,
            kv_segment_ids=a.kv_segment_ids,
            kv_mask=a.kv_mask,
            kv_global=a.kv_global,
            q_global=a.q_global,
            causal=causal,
            window=a.window,
            alibi_slopes=a.alibi_slopes,
            scale=a.scale,
        )
    rows = math.prod(a.batch) * a.q.shape[-2]
    bq, bk = choose_blocks(a.lq, a.lk, block_q, block_k, rows=rows)
    return _attention_blockwise(a, causal, bq, bk)


# --------------------------------------------------------------------------------------------------
# One query per row against a KV cache (decoding)
# --------------------------------------------------------------------------------------------------
def decode_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_length: jax.Array,
    *,
    k_new: jax.Array | None = None,
    v_new: jax.Array | None = None,
    alibi_slopes: jax.Array | None = None,
    scale: float | None = None,
    block: int | None = None,
) -> jax.Array:
    """Causal attention of one query per row over a contiguous KV cache plus, optionally, the query's own
    key/value: what `attention` computes for Lq = 1, cache slot j at position j, the query at position
    `kv_length`, and keys `kv_mask = slot < kv_length` (followed by `k_new`).

    Args:
      q: [*batch, Hq, D], the query at position `kv_length`.
      k: [*batch, Lk, Hkv, D]; v: [*batch, Lk, Hkv, Dv], Hq a multiple of Hkv. Only the slots below
        `kv_length` are read into the result; the others may hold anything finite.
      kv_length: [*batch] integers, the visible cache slots.
      k_new, v_new: [*batch, Hkv, D] / [*batch, Hkv, Dv] or None: one more key at the query's position.
      alibi_slopes: [Hq]; adds −slope·(kv_length − j) to the logit of slot j (0 for `k_new`).
      scale: logit scale, default 1/√D.
      block: cache slots per step of the loop below; None (default): the whole cache in one step.

    Returns:
      [*batch, Hq, Dv] in q's dtype; zeros for a row that sees no key. The logits and the softmax are
      float32 (float64 for float64); the softmax weights are rounded to q's dtype before they multiply
      v, as in `attention`. Differentiable (reverse mode).

    How. A loop over blocks of `block` slots keeps an online softmax (running max, sum and output) and
    skips (`lax.cond`) the blocks past the longest row. Each block is one matmul over its slots viewed
    as [block, Hkv·D], against the queries laid out block-diagonally ([Hkv·D, Hq]: query head h only
    meets its key/value head h // group): Hkv times the minimal flops, but an einsum batched over heads,
    which are not the cache's leading axis, makes XLA transpose the whole cache first, and decoding is
    bound by reading the cache, not by flops. The new key is one extra logit in q's dtype, exactly as
    `attention` sees it whatever the cache's dtype; a caller that has already written it at slot
    `kv_length` may pass that cache (the slot is not read).

    Measured on XLA:CPU (docs/performance.md): a donated cache written with a dynamic-update-slice and
    then read inside the `cond` is updated in place; reading it before the write, or reading the
    written cache outside a control-flow boundary (XLA then fuses the write into the reader too),
    copies the whole cache every call. A block smaller than the cache is sliced out with a copy, which
    made a 64k cache about twice as slow to read in blocks of 512 to 8192 slots as in one block: hence
    the default. Smaller blocks pay off only when the cache is mostly empty.
    """
    *batch, hq, d = q.shape
    lk, hkv, dv = k.shape[-3], k.shape[-2], v.shape[-1]
    if hq % hkv:
        raise ValueError(f"decode_attention: {hq} query heads is not a multiple of {hkv} key/value heads.")
    if (k_new is None) != (v_new is None):
        raise ValueError("decode_attention: pass both k_new and v_new, or neither.")
    group = hq // hkv
    dtype = q.dtype
    acc = _acc_dtype(jnp.result_type(q, k, v))
    scale = jnp.asarray(1.0 / math.sqrt(d) if scale is None else float(scale), acc)
    rows = math.prod(batch)
    block = lk if block is None else min(_check_block("block", block), lk)
    # The cache keeps its dtype: a float32 cache holding bfloat16 keys computes exactly what the
    # engine computes on the keys cast to bfloat16, without a conversion pass over the whole cache.
    mm_k, mm_v = jnp.promote_types(dtype, k.dtype), jnp.promote_types(dtype, v.dtype)
    qg = q.reshape(rows, hkv, group, d)
    eye = jnp.eye(hkv, dtype=dtype)
    q_bd = jnp.einsum("gh,bhjd->bgdhj", eye, qg).reshape(rows, hkv * d, hq).astype(mm_k)
    k = k.reshape(rows, lk, hkv, d)
    v = v.reshape(rows, lk, hkv, dv)
    length = jnp.broadcast_to(kv_length, tuple(batch)).reshape(rows).astype(jnp.int32)
    slopes = None if alibi_slopes is None else jnp.asarray(alibi_slopes, acc)
    heads = jnp.arange(hkv)

    if k_new is None:
        m = jnp.full((rows, hq), -jnp.inf, acc)
        denom = jnp.zeros((rows, hq), acc)
        out = jnp.zeros((rows, hq, dv), acc)
    else:  # the new key first: its weight is exp(0) = 1 against its own logit as the running max
        kn = k_new.reshape(rows, hkv, 1, d).astype(acc)
        m = jnp.sum(qg.astype(acc) * kn, axis=-1).reshape(rows, hq) * scale
        denom = jnp.ones((rows, hq), acc)
        vn = v_new.reshape(rows, hkv, 1, dv).astype(acc)
        out = jnp.broadcast_to(vn, (rows, hkv, group, dv)).reshape(rows, hq, dv)

    def one_block(carry: tuple, j: jax.Array) -> tuple:
        m, denom, out = carry
        # dynamic_slice clamps the last block's start; the slots it repeats are masked out below.
        start = jnp.minimum(j * block, lk - block)
        slot = start + jnp.arange(block)
        k_b = lax.dynamic_slice_in_dim(k, start, block, axis=1).reshape(rows, block, hkv * d)
        v_b = lax.dynamic_slice_in_dim(v, start, block, axis=1).reshape(rows, block, hkv * dv)
        s = lax.dot_general(k_b.astype(mm_k), q_bd, (((2,), (1,)), ((0,), (0,))), preferred_element_type=acc)
        s = s * scale  # [rows, block, Hq]
        if slopes is not None:
            s = s - slopes * (length[:, None] - slot)[..., None].astype(acc)
        visible = ((slot >= j * block)[None, :] & (slot[None, :] < length[:, None]))[..., None]
        m_new = jnp.maximum(m, jnp.max(jnp.where(visible, s, -jnp.inf), axis=1))
        m_new = lax.stop_gradient(jnp.where(jnp.isfinite(m_new), m_new, 0.0))
        alpha = jnp.exp(m - m_new)  # 0 while m is −inf
        p = jnp.exp(jnp.where(visible, s - m_new[:, None, :], -jnp.inf))
        pv = lax.dot_general(
            p.astype(dtype).astype(mm_v),
            v_b.astype(mm_v),
            (((1,), (1,)), ((0,), (0,))),
            preferred_element_type=acc,
        )  # [rows, Hq, Hkv·Dv]: keep each head's own key/value head
        pv = pv.reshape(rows, hkv, group, hkv, dv)[:, heads, :, heads, :]
        pv = jnp.moveaxis(pv, 0, 1).reshape(rows, hq, dv)
        return m_new, alpha * denom + jnp.sum(p, axis=1), alpha[..., None] * out + pv

    def step(carry: tuple, j: jax.Array) -> tuple[tuple, None]:
        # A block past every row's length holds no visible slot: cond skips its reads. The cond also
        # keeps XLA from fusing the caller's cache write into these reads (see above).
        needed = j * block < jnp.max(length, initial=0)
        return lax.cond(needed, one_block, lambda c, _: c, carry, j), None

    (m, denom, out), _ = lax.scan(step, (m, denom, out), jnp.arange(-(-lk // block)))
    out = out / jnp.where(denom > 0, denom, 1.0)[..., None]
    return out.reshape(*batch, hq, dv).astype(dtype)
