"""Sequence-parallel exact attention: q, k, v split along time over a named mesh axis (issue 21).

`sequence_parallel_attention` computes what `attention` computes on one device, for self-attention (q
and k/v of the same length, split the same way), with any `Visibility` (causal or not, sliding windows,
segment ids from resets, a key mask from padding, global tokens, positions given as data) and ALiBi.
Every per-token array of the visibility travels with its token, so resets and padding on or across
shard boundaries behave exactly as on one device. Three strategies, each inside one `jax.shard_map`
over the sequence axis alone (other mesh axes stay automatic):

- "ring": the keys and values (and their positions, segment ids, validity, global flags) rotate around
  the sequence axis with `lax.ppermute`, n − 1 times; at each step every shard runs the blockwise
  engine's online softmax (`blockwise._forward`, block skipping included) of its queries against the
  visiting shard and merges the partial result into its running (output, logsumexp). A visiting shard
  with no visible pair costs no block computation (its block lists are empty), but it still travels:
  causal attention skips the future shards' work, not their transfer. Gradients: a custom VJP, the
  ring run again: keys, values and their gradient accumulators rotate n times, each step the blockwise
  engine's backward block (`blockwise._blockwise_bwd`) from the global logsumexp. Per device memory:
  O(T / n) (two shards' keys and values in flight, the output, the logsumexp, the local q).
  Communication per step of training: forward (n − 1)·T/n tokens of k and v; backward n − 1 rotations
  of k, v and n of dk, dv.
- "all_gather": the keys and values (and their per-token arrays) are all-gathered along time, and each
  shard runs the single-device engine (`attention`, blockwise) of its T / n queries against all T keys.
  Gradients: autodiff (the engine's custom VJP; the all-gather's transpose is a reduce-scatter).
  Memory per device O(T) for the gathered k and v; communication one all-gather of k, v forward and one
  reduce-scatter of dk, dv backward.
- "halo" (sliding windows without global tokens): each shard receives the last w − 1 tokens of the
  previous shard (and, for two-sided windows, the first w − 1 of the next) by `ppermute`
  (`sequence_halo`) and attends locally. That is exact when every key a query sees lies within the
  halo. The function checks this on the data, exactly: the keys' (segment id, position) must be
  non-decreasing along time (positions within a segment; true for arange positions and for the cells'
  positions, which count the valid tokens of each segment), and for every query the last key before
  the halo must be in an earlier segment or at least w positions back (the first key after the halo at
  least w positions ahead). Padding inside a segment stalls the positions, so a run of padding longer
  than the shard can break it: then (decided by all shards together, `lax.cond`) the shard falls back
  to the all-gather. A window longer than a shard (w > T / n) always uses the all-gather.

Causal load balancing ("ring" and "all_gather", `balance=True`, causal visibility): the sequence is cut
into 2n chunks and shard i takes chunks i and 2n − 1 − i (the tokens are permuted before the split
and back after it; the positions travel with the tokens, so the result is unchanged). Every shard then
has the same causal work; without it the last shard has n times the work of the first, and in the ring
the step time is the slowest shard's.

A length the shards (or the 2n chunks) do not divide is padded at the end with keys no query sees and
cut back. With one shard on `sequence_axis` this is `attention` itself.

Measured (`benchmarks/sequence_parallel_cpu.md`, 8 fake CPU devices, causal, 8192 tokens, 4 heads of
32): the ring's per-device memory plan is 13.9 MiB (0.30 of one device), the all-gather's 33.3 MiB (0.72:
it holds every key and value and their gradients); the all-gather sends fewer bytes (one all-gather and
one reduce-scatter against n − 1 rotations forward and 2n − 1 backward). "auto" runs the ring for
attention without a window (memory per device is what sequence parallelism is for, and the ring's
shrinks as 1/n), the halo for windows without global tokens, and the ring with global tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from seqjax.scan.attention.blockwise import _blockwise_bwd, _forward, _lists, _prepare, _summaries
from seqjax.scan.attention.dispatch import attention
from seqjax.scan.attention.heuristics import choose_blocks
from seqjax.scan.attention.inputs import _Args, _check, _check_block
from seqjax.scan.attention.visibility import Visibility, _from_call
from seqjax.scan.sequence_parallel import _resolve_mesh, sequence_halo, sequence_shards

__all__ = ["SEQUENCE_PARALLEL_STRATEGIES", "KVPrefix", "sequence_parallel_attention"]

SEQUENCE_PARALLEL_STRATEGIES = ("auto", "ring", "all_gather", "halo")
#: What "auto" runs for attention without a window (or with global tokens); see docs/scan.md.
DEFAULT_STRATEGY = "ring"

Mesh = Any


class KVPrefix(NamedTuple):
    """Keys and values before the sequence (a cache: `Attention`'s KV cache, a sliding window's ring
    buffer, Transformer-XL's memory) that the queries of every shard may attend. Replicated over the
    sequence axis, not split: each shard attends it locally, and its gradient is the sum of the shards'.

    `sequence_parallel_attention(q, k, v, vis, kv_prefix=p)` computes `attention(q, [p.k; k], [p.v; v],
    vis')`, where vis' puts p's positions, segment ids, mask and global flags before the sequence's own
    kv arrays (q's unchanged).

    >>> import jax.numpy as jnp
    >>> p = KVPrefix(k=jnp.zeros((2, 3, 1, 4)), v=jnp.zeros((2, 3, 1, 4)), positions=jnp.zeros((2, 3), int))
    >>> p.mask is None and p.segment_ids is None
    True
    """

    k: jax.Array  # [*batch, C, Hkv, D]
    v: jax.Array  # [*batch, C, Hkv, Dv]
    positions: jax.Array  # [*batch, C] int: the keys' positions (as kv_positions)
    mask: jax.Array | None = None  # [*batch, C] bool, False = an empty slot (None: every slot is a key)
    segment_ids: jax.Array | None = None  # [*batch, C]: required when the call has segment ids
    is_global: jax.Array | None = None  # [*batch, C] bool: global keys (windows only; None: none)


@dataclasses.dataclass(frozen=True)
class _Plan:
    axis: str
    n: int
    causal: bool
    window: int | None
    scale: float
    block_q: int
    block_k: int
    zigzag: bool


# --------------------------------------------------------------------------------------------------
# Per-token arrays: q side {"pos", "seg", "glob"}, kv side {"pos", "seg", "valid", "glob"}, each [B, l]
# --------------------------------------------------------------------------------------------------
def _visibility(plan: _Plan, qm: dict, km: dict) -> Visibility:
    return Visibility(
        q_positions=qm["pos"],
        kv_positions=km["pos"],
        q_segment_ids=qm.get("seg"),
        kv_segment_ids=km.get("seg"),
        kv_mask=km.get("valid"),
        kv_global=km.get("glob"),
        q_global=qm.get("glob"),
        causal=plan.causal,
        window=plan.window,
    )


def _args(plan: _Plan, q, k, v, qm, km, slopes) -> _Args:
    return _Args(q=q, k=k, v=v, visibility=_visibility(plan, qm, km), alibi_slopes=slopes, scale=plan.scale)


# --------------------------------------------------------------------------------------------------
# Ring
# --------------------------------------------------------------------------------------------------
def _rotate(plan: _Plan, tree):
    perm = [(i, (i + 1) % plan.n) for i in range(plan.n)]
    return jax.tree.map(lambda x: lax.ppermute(x, plan.axis, perm), tree)


def _part(plan: _Plan, q, kv, qm, slopes):
    """The local queries against one shard's keys: (out [nq, B, Hkv, G, bq, Dv] in the accumulation
    dtype, logsumexp [nq, B, Hkv, G, bq], −inf for a query that sees none of these keys)."""
    k, v, km = kv
    a = _args(plan, q, k, v, qm, km, slopes)
    st, qb, kb, vb, sl, qinfo, kinfo = _prepare(a, plan.block_q, plan.block_k)
    table = lax.stop_gradient(_summaries(st, qinfo, kinfo))
    return _forward(st, qb, kb, vb, sl, qinfo, kinfo, _lists(table), partial=True)


def _merge(o1, l1, o2, l2):
    """Two partial softmaxes over disjoint key sets -> the softmax over their union."""
    lse = jnp.logaddexp(l1, l2)
    safe = jnp.where(jnp.isfinite(lse), lse, jnp.zeros((), lse.dtype))
    return o1 * jnp.exp(l1 - safe)[..., None] + o2 * jnp.exp(l2 - safe)[..., None], lse


def _q_tokens(x: jax.Array, length: int) -> jax.Array:
    """Block-major q layout [nq, B, Hkv, G, bq, F] -> [B, length, Hkv·G, F]."""
    nq, bsz, hkv, g, bq, f = x.shape
    return jnp.moveaxis(x, (0, 4), (1, 2)).reshape(bsz, nq * bq, hkv * g, f)[:, :length]


def _kv_tokens(x: jax.Array, length: int) -> jax.Array:
    """Block-major kv layout [nk, B, Hkv, bk, F] -> [B, length, Hkv, F]."""
    nk, bsz, hkv, bk, f = x.shape
    return jnp.moveaxis(x, (0, 3), (1, 2)).reshape(bsz, nk * bk, hkv, f)[:, :length]


def _q_blocks(x: jax.Array, hkv: int, nq: int, bq: int) -> jax.Array:
    """[B, l, Hq, F] -> the block-major q layout [nq, B, Hkv, G, bq, F] (as `blockwise._prepare`)."""
    bsz, length, hq, f = x.shape
    x = x.reshape(bsz, length, hkv, hq // hkv, f)
    pad = nq * bq - length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0), (0, 0)])
    x = jnp.moveaxis(x.reshape(bsz, nq, bq, hkv, hq // hkv, f), 1, 0)
    return jnp.moveaxis(x, 2, 4)


def _ring_forward(plan: _Plan, q, k, v, qm, km, slopes, prefix):
    out, lse = _part(plan, q, (k, v, km), qm, slopes)
    if prefix is not None:  # the replicated cache: one more (local) partial softmax
        out, lse = _merge(out, lse, *_part(plan, q, prefix, qm, slopes))

    def step(carry, _):
        kv, out, lse = carry
        kv = _rotate(plan, kv)
        o2, l2 = _part(plan, q, kv, qm, slopes)
        out, lse = _merge(out, lse, o2, l2)
        return (kv, out, lse), None

    (_, out, lse), _ = lax.scan(step, ((k, v, km), out, lse), None, length=plan.n - 1)
    # A query that sees no key at all: output 0, logsumexp 0 (the blockwise engine's convention, which
    # its backward block relies on: P = exp(−inf − 0) = 0).
    lse = jnp.where(jnp.isfinite(lse), lse, jnp.zeros((), lse.dtype))
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(plan: _Plan, q, k, v, qm, km, slopes, prefix=None):
    return _ring_fwd(plan, q, k, v, qm, km, slopes, prefix)[0]


def _ring_fwd(plan: _Plan, q, k, v, qm, km, slopes, prefix=None):
    out_b, lse = _ring_forward(plan, q, k, v, qm, km, slopes, prefix)
    return _q_tokens(out_b, q.shape[1]), (q, k, v, qm, km, slopes, prefix, out_b, lse)


def _ring_bwd(plan: _Plan, res, dout):
    q, k, v, qm, km, slopes, prefix, out_b, lse = res
    acc = lse.dtype
    hkv = k.shape[2]
    nq = out_b.shape[0]
    dout_b = _q_blocks(dout.astype(q.dtype), hkv, nq, plan.block_q)

    def grads(kv):
        k_, v_, km_ = kv
        st, qb, kb, vb, sl, qinfo, kinfo = _prepare(
            _args(plan, q, k_, v_, qm, km_, slopes), plan.block_q, plan.block_k
        )
        table = lax.stop_gradient(_summaries(st, qinfo, kinfo))
        dq, dk, dv, dsl, *_ = _blockwise_bwd(
            st, (qb, kb, vb, sl, qinfo, kinfo, None, _lists(table.T), out_b, lse), dout_b
        )
        up = lambda x: None if x is None else x.astype(acc)
        return up(dq), up(dk), up(dv), up(dsl)

    dq, dk, dv, dsl = grads((k, v, km))
    dprefix = None
    if prefix is not None:  # this shard's queries' share of the cache's gradient (summed outside)
        dq_p, dk_p, dv_p, dsl_p = grads(prefix)
        dq, dsl = dq + dq_p, None if dsl is None else dsl + dsl_p
        pk, pv, _ = prefix
        dprefix = (
            _kv_tokens(dk_p, pk.shape[1]).astype(pk.dtype),
            _kv_tokens(dv_p, pv.shape[1]).astype(pv.dtype),
            None,
        )

    def step(carry, _):
        kv, (dk, dv), dq, dsl = carry
        kv, (dk, dv) = _rotate(plan, (kv, (dk, dv)))
        dq_s, dk_s, dv_s, dsl_s = grads(kv)
        dsl = None if dsl is None else dsl + dsl_s
        return (kv, (dk + dk_s, dv + dv_s), dq + dq_s, dsl), None

    (_, (dk, dv), dq, dsl), _ = lax.scan(step, ((k, v, km), (dk, dv), dq, dsl), None, length=plan.n - 1)
    dk, dv = _rotate(plan, (dk, dv))  # the accumulators travel home
    length = q.shape[1]
    dslopes = None if dsl is None else dsl.reshape(slopes.shape).astype(slopes.dtype)
    return (
        _q_tokens(dq, length).astype(q.dtype),
        _kv_tokens(dk, k.shape[1]).astype(k.dtype),
        _kv_tokens(dv, v.shape[1]).astype(v.dtype),
        None,
        None,
        dslopes,
        dprefix,
    )


_ring.defvjp(_ring_fwd, _ring_bwd)


# --------------------------------------------------------------------------------------------------
# All-gather and halo
# --------------------------------------------------------------------------------------------------
def _zigzag_order(n: int) -> np.ndarray:
    """The 2n chunks in shard order: shard i holds chunks i and 2n − 1 − i."""
    return np.array([c for i in range(n) for c in (i, 2 * n - 1 - i)])


def _zigzag(x: jax.Array, axis: str, n: int, inverse: bool = False) -> jax.Array:
    """Inside `shard_map`: [B, l, ...] holding chunks 2r, 2r + 1 (time order) -> chunks r, 2n − 1 − r
    (`inverse`: back). Two `ppermute`s of half a shard each: chunk c goes to shard c if c < n, else to
    2n − 1 − c; of the two chunks a shard receives, one was the first half of its sender, one the
    second, and the even one (r or 2n − 1 − r) is its first half exactly when r is even."""
    owner = lambda c: c if c < n else 2 * n - 1 - c
    half = x.shape[1] // 2
    halves = (x[:, :half], x[:, half:])
    even = lax.axis_index(axis) % 2 == 0
    if not inverse:
        got = [lax.ppermute(h, axis, [(r, owner(2 * r + s)) for r in range(n)]) for s, h in enumerate(halves)]
        first = jnp.where(even, got[0], got[1])
        second = jnp.where(even, got[1], got[0])
        return jnp.concatenate([first, second], axis=1)
    # Back: the even chunk (first half on an even shard) returns to slot 0 of its source.
    ev = jnp.where(even, halves[0], halves[1])
    od = jnp.where(even, halves[1], halves[0])
    back = [lax.ppermute(h, axis, [(owner(2 * r + s), r) for r in range(n)]) for s, h in enumerate((ev, od))]
    return jnp.concatenate(back, axis=1)


def _chunks(x: jax.Array, order: np.ndarray) -> jax.Array:
    """[B, L, ...] cut into len(order) chunks along L and reordered."""
    bsz, length = x.shape[:2]
    m = len(order)
    x = x.reshape(bsz, m, length // m, *x.shape[2:])
    return x[:, order].reshape(bsz, length, *x.shape[3:])


def _engine(plan: _Plan, q, k, v, qm, km, slopes):
    return attention(
        q,
        k,
        v,
        _visibility(plan, qm, km),
        alibi_slopes=slopes,
        scale=plan.scale,
        method="blockwise",
        block_q=plan.block_q,
        block_k=plan.block_k,
    )


def _with_prefix(prefix, kv):
    """The cache's keys, values and per-token arrays before a shard's (or the gathered) ones."""
    if prefix is None:
        return kv
    return jax.tree.map(lambda p, x: jnp.concatenate([p, x], axis=1), prefix, kv)


def _all_gather(plan: _Plan, q, k, v, qm, km, slopes, prefix=None):
    gather = lambda x: lax.all_gather(x, plan.axis, axis=1, tiled=True)
    k, v, km = jax.tree.map(gather, (k, v, km))
    if plan.zigzag:  # gathered in shard order: back to time order, so key blocks stay contiguous
        inverse = np.argsort(_zigzag_order(plan.n))
        k, v, km = jax.tree.map(lambda x: _chunks(x, inverse), (k, v, km))
    k, v, km = _with_prefix(prefix, (k, v, km))
    return _engine(plan, q, k, v, qm, km, slopes)


def _halo_exact(plan: _Plan, qm, km, h: int) -> jax.Array:
    """Whether the halo of h tokens on each side holds every key every query of every shard sees (the
    same bool on every shard). Conservative, see the module docstring."""
    n, axis = plan.n, plan.axis
    r = lax.axis_index(axis)
    l = km["pos"].shape[1]  # noqa: E741
    kseg = km.get("seg", jnp.zeros_like(km["pos"]))
    qseg = qm.get("seg", jnp.zeros_like(qm["pos"]))
    kpos, qpos = km["pos"], qm["pos"]

    def ordered(s0, p0, s1, p1):  # (s0, p0) then (s1, p1) is non-decreasing
        return (s1 > s0) | ((s1 == s0) & (p1 >= p0))

    ok = jnp.all(ordered(kseg[:, :-1], kpos[:, :-1], kseg[:, 1:], kpos[:, 1:]))
    # From the previous shard: its last key (the order across the boundary) and its key just before the
    # halo (the last key this shard does not receive).
    sent = jnp.stack([kseg[:, l - 1], kpos[:, l - 1], kseg[:, l - h - 1], kpos[:, l - h - 1]])
    got = lax.ppermute(sent, axis, [(i, i + 1) for i in range(n - 1)])
    first = r == 0
    ok &= first | jnp.all(ordered(got[0], got[1], kseg[:, 0], kpos[:, 0]))
    far_seg, far_pos = got[2][:, None], got[3][:, None]
    before = (far_seg < qseg) | ((far_seg == qseg) & (qpos - far_pos >= plan.window))
    ok &= first | jnp.all(before)
    if not plan.causal:  # the first key after the next shard's halo
        sent = jnp.stack([kseg[:, h], kpos[:, h]])
        got = lax.ppermute(sent, axis, [(i + 1, i) for i in range(n - 1)])
        far_seg, far_pos = got[0][:, None], got[1][:, None]
        after = (far_seg > qseg) | ((far_seg == qseg) & (far_pos - qpos >= plan.window))
        ok &= (r == n - 1) | jnp.all(after)
    return lax.pmin(ok.astype(jnp.int32), axis) > 0


def _halo(plan: _Plan, q, k, v, qm, km, slopes, prefix=None):
    n, axis, h = plan.n, plan.axis, plan.window - 1
    if "valid" not in km:
        km = {**km, "valid": jnp.ones(km["pos"].shape, bool)}

    def previous(x):
        return sequence_halo(x, h, axis, time_axis=1)  # zeros (invalid keys) on the first shard

    def following(x):
        return lax.ppermute(x[:, :h], axis, [(i + 1, i) for i in range(n - 1)])  # zeros on the last

    parts = [jax.tree.map(previous, (k, v, km)), (k, v, km)]
    if not plan.causal:
        parts.append(jax.tree.map(following, (k, v, km)))
    hk, hv, hkm = _with_prefix(prefix, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts))
    # The halo check concerns the sequence's own keys only: every shard attends the whole cache.
    return lax.cond(
        _halo_exact(plan, qm, km, h),
        lambda: _engine(plan, q, hk, hv, qm, hkm, slopes),
        lambda: _all_gather(plan, q, k, v, qm, km, slopes, prefix),
    )


# --------------------------------------------------------------------------------------------------
# The cache before the sequence
# --------------------------------------------------------------------------------------------------
def _check_prefix(fn: str, p: KVPrefix, a: _Args) -> KVPrefix:
    """Refuses a prefix that does not fit the call (naming the field and the fix); k, v in a's dtypes."""
    if not isinstance(p, KVPrefix):
        raise TypeError(f"{fn}: kv_prefix must be a KVPrefix(k, v, positions, ...), got {type(p).__name__}.")
    batch, nb = a.batch, len(a.batch)
    k, v = jnp.asarray(p.k), jnp.asarray(p.v)
    if k.ndim != nb + 3 or k.shape[:nb] != batch or k.shape[nb + 1 :] != a.k.shape[nb + 1 :]:
        raise ValueError(
            f"{fn}: kv_prefix.k has shape {k.shape}; it must be [*batch, C, Hkv, D] = "
            f"[{', '.join(map(str, batch))}, C, {', '.join(map(str, a.k.shape[nb + 1 :]))}] like k."
        )
    cached = k.shape[nb]
    if v.shape != (*batch, cached, *a.v.shape[nb + 1 :]):
        raise ValueError(
            f"{fn}: kv_prefix.v has shape {v.shape}; it must be {(*batch, cached, *a.v.shape[nb + 1 :])} "
            "(the prefix's keys' length, v's heads and width)."
        )
    per_token = (*batch, cached)
    for name in ("positions", "mask", "segment_ids", "is_global"):
        x = getattr(p, name)
        if x is not None and jnp.shape(x) != per_token:
            raise ValueError(f"{fn}: kv_prefix.{name} has shape {jnp.shape(x)}; it must be {per_token}.")
    if p.positions is None:
        raise ValueError(f"{fn}: kv_prefix.positions is required ({per_token}): the cached keys' positions.")
    has_seg = a.visibility.q_segment_ids is not None
    if has_seg != (p.segment_ids is not None):
        raise ValueError(
            f"{fn}: kv_prefix.segment_ids must be given exactly when the call has segment ids (it has "
            f"{'them' if has_seg else 'none'}); e.g. zeros for a cache that belongs to the first segment."
        )
    return p._replace(k=k.astype(a.k.dtype), v=v.astype(a.v.dtype))


def _joined(p: KVPrefix, a: _Args) -> tuple[jax.Array, jax.Array, Visibility]:
    """k, v and the visibility of the single-device call that the prefix stands for: the prefix's keys
    before the sequence's."""
    vis, batch, nb = a.visibility, a.batch, len(a.batch)
    per_token = lambda length, x: jnp.broadcast_to(jnp.arange(length), (*batch, length)) if x is None else x
    join = lambda first, second: jnp.concatenate([first, second], axis=-1)
    fill = lambda x, length, value: jnp.full((*batch, length), value) if x is None else x
    cached = p.k.shape[nb]
    mask = None
    if p.mask is not None or vis.kv_mask is not None:
        mask = join(fill(p.mask, cached, True), fill(vis.kv_mask, a.lk, True))
    kv_global = vis.kv_global
    if p.is_global is not None or kv_global is not None:
        kv_global = join(fill(p.is_global, cached, False), fill(kv_global, a.lk, False))
    joined = dataclasses.replace(
        vis,
        q_positions=per_token(a.lq, vis.q_positions),
        kv_positions=join(p.positions, per_token(a.lk, vis.kv_positions)),
        kv_segment_ids=None if vis.kv_segment_ids is None else join(p.segment_ids, vis.kv_segment_ids),
        kv_mask=mask,
        kv_global=kv_global,
    )
    return jnp.concatenate([p.k, a.k], axis=nb), jnp.concatenate([p.v, a.v], axis=nb), joined


def _prefix_tokens(p: KVPrefix, bsz: int, km: dict) -> tuple:
    """The prefix in the shards' layout: (k [B, C, Hkv, D], v, per-token arrays with km's keys)."""
    cached = p.positions.shape[-1]
    flat = lambda x: x.reshape(bsz, cached, *x.shape[x.ndim - 2 :]) if x.ndim > 2 else x.reshape(bsz, cached)
    pkm = {"pos": flat(p.positions).astype(km["pos"].dtype)}
    if "seg" in km:
        pkm["seg"] = flat(p.segment_ids).astype(km["seg"].dtype)
    pkm["valid"] = jnp.ones((bsz, cached), bool) if p.mask is None else flat(p.mask)
    if "glob" in km:
        pkm["glob"] = jnp.zeros((bsz, cached), bool) if p.is_global is None else flat(p.is_global)
    return flat(p.k), flat(p.v), pkm


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------
def sequence_parallel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    visibility: Visibility | None = None,
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
    strategy: str = "auto",
    balance: bool = True,
    block_q: int | None = None,
    block_k: int | None = None,
    sequence_axis: str = "sequence",
    mesh: Mesh | None = None,
    kv_prefix: KVPrefix | None = None,
) -> jax.Array:
    """`attention` (self-attention) with the time axis of q, k, v split over the mesh axis
    `sequence_axis`: the same arguments and result, computed shard by shard (module docstring).

    Args:
      q: [*batch, T, Hq, D]; k: [*batch, T, Hkv, D]; v: [*batch, T, Hkv, Dv]: the same T (self-attention).
      visibility, q_positions, ..., window, alibi_slopes, scale: as in `attention`. Positions default to
        arange(T), the global positions (the split never renumbers tokens).
      strategy: "ring", "all_gather", "halo" (windows without global tokens), or "auto": "halo" for a
        window without global tokens, else `DEFAULT_STRATEGY` ("ring", measured: module docstring).
      balance: causal load balancing for "ring" and "all_gather" (shard i takes chunks i and 2n − 1 − i).
      block_q, block_k: the blockwise engine's block sizes inside a shard (None: `choose_blocks`).
      sequence_axis, mesh: the mesh axis that splits time, and the mesh (None: the one set by
        `jax.set_mesh`). Other mesh axes stay automatic.
      kv_prefix: cached keys and values before the sequence (`KVPrefix`), replicated, seen by every
        shard's queries as the visibility allows: the result is `attention` over the prefix followed by
        k, v. Every strategy takes it (the ring merges one more partial softmax per shard).

    Returns:
      [*batch, T, Hq, Dv] in q's dtype; gradients reach q, k, v, alibi_slopes and the prefix's k, v.

    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((2,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,),
    ...                      devices=jax.devices()[:2])
    >>> q = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 2, 4))
    >>> cache = KVPrefix(k=q[:, :3], v=q[:, :3], positions=jnp.arange(3)[None])
    >>> pos = jnp.arange(3, 11)[None]   # the sequence continues after the cache
    >>> out = sequence_parallel_attention(q, q, q, q_positions=pos, kv_positions=pos, kv_prefix=cache,
    ...                                   mesh=mesh)
    >>> want = attention(q, jnp.concatenate([q[:, :3], q], 1), jnp.concatenate([q[:, :3], q], 1),
    ...                  q_positions=pos, kv_positions=jnp.arange(11)[None])
    >>> bool(jnp.allclose(out, want, atol=1e-5))
    True
    """
    fn = "sequence_parallel_attention"
    if strategy not in SEQUENCE_PARALLEL_STRATEGIES:
        raise ValueError(
            f"{fn}: unknown strategy {strategy!r}; choose one of {', '.join(SEQUENCE_PARALLEL_STRATEGIES)}."
        )
    block_q, block_k = _check_block("block_q", block_q), _check_block("block_k", block_k)
    vis = _from_call(fn, locals())
    mesh = _resolve_mesh(fn, mesh, sequence_axis)
    n = sequence_shards(sequence_axis, mesh)
    if n == 1 and kv_prefix is None:
        return attention(
            q, k, v, vis, alibi_slopes=alibi_slopes, scale=scale, block_q=block_q, block_k=block_k
        )
    a = _check(fn, q, k, v, vis, alibi_slopes=alibi_slopes, scale=scale)
    if a.lq != a.lk:
        raise ValueError(
            f"{fn}: q has {a.lq} tokens and k {a.lk}; the sequence-parallel form is self-attention (q, k, v "
            "split the same way along one time axis; cached keys before the sequence go in `kv_prefix`)."
        )
    if kv_prefix is not None:
        kv_prefix = _check_prefix(fn, kv_prefix, a)
        if n == 1:
            k_all, v_all, vis_all = _joined(kv_prefix, a)
            return attention(
                a.q,
                k_all,
                v_all,
                vis_all,
                alibi_slopes=alibi_slopes,
                scale=scale,
                block_q=block_q,
                block_k=block_k,
            )
    vis = a.visibility
    batch, length = a.batch, a.lq
    bsz = math.prod(batch)
    hq, dv = a.q.shape[-2], a.v.shape[-1]
    prefix_global = kv_prefix is not None and kv_prefix.is_global is not None
    has_global = vis.kv_global is not None or vis.q_global is not None or prefix_global
    windowed = vis.window is not None
    if strategy == "auto":
        strategy = "halo" if windowed and not has_global else DEFAULT_STRATEGY
    if strategy == "halo" and (not windowed or has_global):
        raise ValueError(
            f"{fn}: strategy='halo' needs a window and no global tokens (kv_global/q_global); use 'ring' or "
            "'all_gather'."
        )
    zigzag = balance and vis.causal and strategy in ("ring", "all_gather")
    pieces = 2 * n if zigzag else n
    padded = -(-length // pieces) * pieces
    local = padded // n
    if strategy == "halo" and vis.window > local:  # the halo would span more than one shard
        strategy = "all_gather"
    pad = padded - length

    def tokens(x, fill=None):  # [*batch, T, ...] -> [B, T + pad, ...]; fill None: repeat the last entry
        x = x.reshape(bsz, length, *x.shape[len(batch) + 1 :])
        if pad:
            widths = [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)
            x = jnp.pad(x, widths, mode="edge") if fill is None else jnp.pad(x, widths, constant_values=fill)
        return x

    arange = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (*batch, length))
    qm = {"pos": tokens(arange if vis.q_positions is None else vis.q_positions)}
    km = {"pos": tokens(arange if vis.kv_positions is None else vis.kv_positions)}
    if vis.q_segment_ids is not None:
        qm["seg"], km["seg"] = tokens(vis.q_segment_ids), tokens(vis.kv_segment_ids)
    if vis.kv_mask is not None or pad or kv_prefix is not None:
        valid = jnp.ones((*batch, length), bool) if vis.kv_mask is None else vis.kv_mask
        km["valid"] = tokens(valid, False)
    if windowed and (vis.kv_global is not None or prefix_global):
        kv_global = jnp.zeros((*batch, length), bool) if vis.kv_global is None else vis.kv_global
        km["glob"] = tokens(kv_global, False)
    if windowed and vis.q_global is not None:
        qm["glob"] = tokens(vis.q_global, False)
    xs = (tokens(a.q, 0), tokens(a.k, 0), tokens(a.v, 0), qm, km)

    # Keys per engine call: one shard (ring), all of them (all-gather), or a shard and its halos.
    cached = 0 if kv_prefix is None else kv_prefix.k.shape[len(batch)]
    keys = {"ring": local, "all_gather": padded + cached, "halo": local + 2 * (vis.window or 1) + cached}[
        strategy
    ]
    bq, bk = choose_blocks(local, keys, block_q, block_k, rows=bsz * hq)
    plan = _Plan(
        axis=sequence_axis,
        n=n,
        causal=vis.causal,
        window=vis.window,
        scale=a.scale,
        block_q=bq,
        block_k=bk,
        zigzag=zigzag,
    )
    run_local = {"ring": _ring, "all_gather": _all_gather, "halo": _halo}[strategy]
    has_slopes = a.alibi_slopes is not None

    def body(q, k, v, qm, km, slopes, prefix):
        slopes, prefix = jax.tree.map(lambda x: x[0], (slopes, prefix))  # this shard's copy
        if zigzag:  # the balanced layout, by ppermute inside (a global reorder costs XLA far more)
            q, k, v, qm, km = jax.tree.map(lambda x: _zigzag(x, sequence_axis, n), (q, k, v, qm, km))
        out = run_local(plan, q, k, v, qm, km, slopes, prefix)
        return _zigzag(out, sequence_axis, n, inverse=True) if zigzag else out

    spec = P(None, sequence_axis)
    # Replicated inputs enter stacked per shard ([n, Hq] slopes, [n, B, C, ...] prefix, split over the
    # axis), so each shard's gradient comes back as its own row and the sum over shards happens outside,
    # by autodiff.
    stack = lambda x: jnp.broadcast_to(x, (n, *x.shape))
    slopes = stack(a.alibi_slopes) if has_slopes else None
    prefix = None
    if kv_prefix is not None:
        prefix = jax.tree.map(stack, _prefix_tokens(kv_prefix, bsz, km))
    # jit: called eagerly, a shard_map runs its body op by op on every shard (the docstring's example
    # took 7.8 s so, 0.7 s jitted); inside a caller's jit it is inlined.
    run = jax.jit(
        jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(spec, spec, spec, spec, spec, P(sequence_axis), P(sequence_axis)),
            out_specs=spec,
            axis_names={sequence_axis},
            check_vma=False,
        )
    )
    out = run(*xs, slopes, prefix)[:, :length]
    return out.reshape(*batch, length, hq, dv).astype(a.q.dtype)
