"""The blockwise form (`method="blockwise"`): FlashAttention-2's online softmax with a custom VJP, and
block skipping.

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

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.attention.inputs import _Args


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


def _forward(st, q, k, v, slopes, qinfo, kinfo, kv_lists, partial: bool = False):
    """Block-major inputs: q [nq, B, H, G, bq, D], k [nk, B, H, bk, D], v [nk, B, H, bk, Dv],
    qinfo {name: [nq, B, bq]}, kinfo {name: [nk, B, bk]}, kv_lists = (order [nq, nk], count [nq]):
    the key blocks each query block visits. -> out [nq, B, H, G, bq, Dv] (q's dtype), logsumexp
    [nq, B, H, G, bq] (accumulation dtype; 0 for a query that sees no key).

    `partial=True` (a part of the keys, merged with other parts by the sequence-parallel engine): out
    stays in the accumulation dtype and the logsumexp of a query that sees no key is −inf."""
    acc = accumulation_dtype(q.dtype)
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
        lse = jnp.where(seen, m + jnp.log(den), -jnp.inf if partial else 0.0)
        return None, (out if partial else out.astype(q.dtype), lse)

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


def _prepare(a: _Args, block_q: int, block_k: int):
    """Flattens the batch, pads to whole blocks and lays everything out block-major for `_blockwise`."""
    batch, lq, lk = a.batch, a.lq, a.lk
    bsz = math.prod(batch)
    hq, d = a.q.shape[-2:]
    hkv, dv = a.v.shape[-2:]
    group = hq // hkv
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    cd = jnp.result_type(a.q, a.k, a.v)
    acc = accumulation_dtype(cd)
    vis = a.visibility
    st = _Static(causal=vis.causal, window=vis.window, scale=a.scale)

    # q: [*batch, Lq, Hq, D] -> [nq, B, Hkv, G, bq, D]; k, v: [*batch, Lk, Hkv, D] -> [nk, B, Hkv, bk, D].
    q = _block_major(a.q.astype(cd).reshape(bsz, lq, hkv, group, d), nq, block_q)
    q = jnp.moveaxis(q, 2, 4)
    k = jnp.moveaxis(_block_major(a.k.astype(cd).reshape(bsz, lk, hkv, d), nk, block_k), 2, 3)
    v = jnp.moveaxis(_block_major(a.v.astype(cd).reshape(bsz, lk, hkv, dv), nk, block_k), 2, 3)

    def flat(x, length):
        return x.reshape(bsz, length)

    qpos, kpos = vis.q_positions, vis.kv_positions
    if qpos is None:
        qpos = jnp.broadcast_to(jnp.arange(lq), (*batch, lq))
    if kpos is None:
        kpos = jnp.broadcast_to(jnp.arange(lk), (*batch, lk))
    # Padded queries copy the last real query's position and segment (their outputs are dropped), so
    # they never widen a block's summary; padded keys are invalid.
    qinfo = {"pos": _block_major(flat(qpos, lq), nq, block_q, edge=True)}
    kinfo = {"pos": _block_major(flat(kpos, lk), nk, block_k, edge=True)}
    if vis.q_segment_ids is not None:
        qinfo["seg"] = _block_major(flat(vis.q_segment_ids, lq), nq, block_q, edge=True)
        kinfo["seg"] = _block_major(flat(vis.kv_segment_ids, lk), nk, block_k, edge=True)
    valid = vis.kv_mask
    if valid is None and nk * block_k != lk:
        valid = jnp.ones((*batch, lk), bool)
    if valid is not None:
        kinfo["valid"] = _block_major(flat(valid, lk), nk, block_k, fill=False)
    if vis.window is not None:  # without a window, global flags change nothing
        if vis.kv_global is not None:
            kinfo["glob"] = _block_major(flat(vis.kv_global, lk), nk, block_k, fill=False)
        if vis.q_global is not None:
            qinfo["glob"] = _block_major(flat(vis.q_global, lq), nq, block_q, fill=False)
    slopes = None
    if a.alibi_slopes is not None:
        slopes = a.alibi_slopes.astype(acc).reshape(hkv, group)
    return st, q, k, v, slopes, qinfo, kinfo


def _block_table(a: _Args, block_q: int, block_k: int) -> jax.Array:
    """[nq, nk] bool: the block pairs the blockwise form computes (for tests and diagnostics)."""
    st, *_, qinfo, kinfo = _prepare(a, block_q, block_k)
    return _summaries(st, qinfo, kinfo)


def _attention_blockwise(a: _Args, block_q: int, block_k: int) -> jax.Array:
    batch, lq, lk = a.batch, a.lq, a.lk
    hq, dv = a.q.shape[-2], a.v.shape[-1]
    if lq == 0 or lk == 0:  # no queries, or no keys: every query sees nothing
        return jnp.zeros((*batch, lq, hq, dv), a.q.dtype)
    st, q, k, v, slopes, qinfo, kinfo = _prepare(a, block_q, block_k)
    table = lax.stop_gradient(_summaries(st, qinfo, kinfo))
    out = _blockwise(st, q, k, v, slopes, qinfo, kinfo, _lists(table), _lists(table.T))
    # [nq, B, Hkv, G, bq, Dv] -> [*batch, Lq, Hq, Dv]
    nq, bsz, _, _, bq, _ = out.shape
    out = jnp.moveaxis(out, (0, 4), (1, 2)).reshape(bsz, nq * bq, hq, dv)[:, :lq]
    return out.reshape(*batch, lq, hq, dv).astype(a.q.dtype)
