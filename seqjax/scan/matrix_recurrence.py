"""The matrix-valued recurrence engine behind linear attention, Performer and gated linear attention.

Per head, with a decay γ_t ∈ (0, 1] per (batch, head, token), either one scalar or one per key channel:

    S_t = γ_t S_{t-1} + k_t v_tᵀ             (scalar: log_gamma [*batch, T, H])
    S_t = diag(γ_t) S_{t-1} + k_t v_tᵀ       (per key channel, GLA: log_gamma [*batch, T, H, d_k])
    y_t = S_tᵀ q_t                           S ∈ R^{d_k × d_v}

(γ ≡ 1 when `log_gamma` is None). Two forms compute the same thing:

- `linear_attention_recurrent`: `lax.scan` over tokens carrying S; the reference, and the form `step`
  uses. Autodiff keeps every S_t for the backward pass (O(T · d_k · d_v)).
- `linear_attention_chunked`: the chunkwise-parallel form. Inside a chunk of C tokens,

      Y = (Q Kᵀ ⊙ D) V + diag(exp(b)) Q S_prev,     D[i, j] = exp(b_i − b_j) for j ≤ i, else 0,

  with b the within-chunk cumulative sum of log γ; the state is carried across chunks by a `lax.scan`
  over chunks, S_next = exp(b_C) S_prev + Σ_j exp(b_C − b_j) k_j v_jᵀ. Only the chunk-boundary states
  exist, never every S_t.

  With a per-channel decay (b_i ∈ R^{d_k}) the decay no longer factors out of q_i·k_j:
  A[i, j] = Σ_c q_ic k_jc exp(b_ic − b_jc). Writing it as (q ⊙ exp(b))·(k ⊙ exp(−b)) is exact up to
  rounding (each term is the same product) and runs as matmuls, but overflows as soon as the decays over
  a chunk are small (exp(−b) > 1e38 once b < −88). So each chunk takes one of two paths, chosen per chunk
  by `lax.cond` in the forward and in the backward pass (`_channel_chunk`, a custom VJP, so the backward
  pass runs only the chosen path's VJP):
  - factored (`_channel_chunk_factored`) when every channel's decay over the chunk keeps exp(−b) below
    exp(¾ · log(dtype max)) (float32: a decay over the chunk down to 1e-29; at GLA's initialisation a
    64-token chunk decays to about e^-3) and |k| · exp(−b) finite: the scalar-decay chunk's matmuls;
  - sub-chunked (`_channel_chunk_subchunked`) otherwise, for any decays, forming no exp(−b): every
    exponent it takes is ≤ 0. A chunk is split into
  sub-chunks of `CHANNEL_SUB_CHUNK` (8) tokens, with b now cumulative from the sub-chunk's start. Within
  a sub-chunk A is formed channel by channel, Σ_c q_ic k_jc exp(b_ic − b_jc) for j ≤ i (an [8, 8, d_k]
  tensor). Earlier tokens reach it through the state at the sub-chunk's start, H_s, read as
  (q_i ⊙ exp(b_i))ᵀ H_s; the states at the sub-chunk starts follow one another inside the chunk,
  H_{u+1} = diag(exp(g_u)) H_u + Σ_{j in u} (k_j ⊙ exp(g_u − b_j)) v_jᵀ, g_u the log-decay over sub-chunk
  u, H_0 = S_prev and S_next the last. Every cumulative sum covers at most 8 tokens, and partial sums of
  non-positive numbers are ordered in floating point too, so no exponent can round above 0. (fla's
  `chunk_gla` forms the same sub-chunk tensors, in sub-chunks of 16, and joins sub-chunks by matmuls of
  decayed queries and keys; on the CPU, sub-chunks of 8 joined through their start states measured
  1.3–2x faster than sub-chunks of 16 or 4, forward and backward.) On the CPU the factored path is
  1.5x faster again, forward and backward (`benchmarks/recent_cells_cpu.md`).

Layout: batch-major, heads after time, as a cell's input projection produces them without a transpose:
q, k [*batch, T, G, d_k], v [*batch, T, H, d_v], log_gamma [*batch, T, H] or [*batch, T, H, d_k], resets
and mask [*batch, T], states [*batch, H, d_k, d_v].

Grouped queries and keys: G = H for linear attention (one q, k per head); G < H (G dividing H) shares
group g's q and k by the H / G consecutive heads g·H/G … (g+1)·H/G − 1, as Mamba-2's grouped C and B are
shared over its heads (what `jnp.repeat(q, H // G, axis=-2)` would give, without forming it). The chunked
form then computes each group's Q Kᵀ once for all its heads.

Resets and padding, exactly as for every seqjax cell:
- `resets[..., t]` zeroes the state before token t. The chunked form gives each token a segment id
  within its chunk (the running count of resets) and lets token i see token j < i only inside the same
  segment, and S_prev only while no reset has happened yet in the chunk. That is the effect of
  log γ_t = −∞ at a reset, without ever forming −∞ − (−∞) or exp of a large positive number, so values
  and gradients stay finite.
- `mask[..., t] == False` marks padding: the token gets γ = 1 (every channel) and k = 0, so the state
  passes through unchanged, and its output is 0. Padding wins over a reset at the same token.

Dtypes: the matmul operands are in q/k/v's dtype (bfloat16 allowed) and accumulate in float32
(`preferred_element_type`); decays, states and outputs are in the accumulation dtype (float32, or
float64 when the inputs are float64).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.chunk_loop import as_bits, chunk_loop, from_bits

__all__ = [
    "METHODS",
    "decay_factorable",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_fused",
    "linear_attention_recurrent",
    "matrix_step",
    "normalized_linear_attention",
    "split_normalized",
    "sum_after",
]

Method = Literal["auto", "chunked", "recurrent"]
METHODS: tuple[str, ...] = ("auto", "chunked", "recurrent")
DEFAULT_CHUNK = 64
#: Tokens per sub-chunk of the per-channel chunk body: a sub-chunk forms an [8, 8, d_k] tensor of
#: per-channel decays; sub-chunks meet through the state at their starts (fla's `chunk_gla` uses 16 on GPUs).
CHANNEL_SUB_CHUNK = 8


def matrix_step(
    s: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, log_gamma: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """One token of S' = γ S + k vᵀ (or diag(γ) S + k vᵀ), y = S'ᵀ q, for every head.

    Args:
      s: [*batch, H, d_k, d_v] state, in the accumulation dtype.
      q, k: [*batch, G, d_k], G dividing H (grouped: see the module doc); v: [*batch, H, d_v] (compute
        dtype).
      log_gamma: [*batch, H] (a scalar decay per head), [*batch, H, d_k] (one per key channel: row c of
        S decays by γ_c) or None (γ = 1).

    Returns:
      (S' [*batch, H, d_k, d_v], y [*batch, H, d_v]), both in `s`'s dtype.

    >>> import jax.numpy as jnp
    >>> s, y = matrix_step(jnp.ones((1, 2, 1)), jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 1)),
    ...                    jnp.log(jnp.array([[0.5, 0.25]])))      # one head, d_k = 2, per-channel γ
    >>> s[0, :, 0], y
    (Array([0.5 , 0.25], dtype=float32), Array([[0.75]], dtype=float32))
    """
    acc = s.dtype
    heads = s.shape[-3]
    if q.shape[-2] != heads:  # grouped: one token, so forming the per-head copies costs nothing
        q = jnp.repeat(q, heads // q.shape[-2], axis=-2)
        k = jnp.repeat(k, heads // k.shape[-2], axis=-2)
    if log_gamma is not None:
        decay = jnp.exp(log_gamma.astype(acc))
        per_channel = log_gamma.ndim == s.ndim - 1  # [*batch, H, d_k]: one decay per row of S
        s = (decay[..., None] if per_channel else decay[..., None, None]) * s
    # The product of two compute-dtype numbers is exact in float32, so the rank-1 update loses nothing.
    s = s + k.astype(acc)[..., :, None] * v.astype(acc)[..., None, :]
    y = jnp.einsum("...k,...kv->...v", q, s.astype(q.dtype), preferred_element_type=acc)
    return s, y


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _check_inputs(
    fn: str,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None,
    s0: jax.Array | None,
    resets: jax.Array | None,
    mask: jax.Array | None,
) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None, jax.Array | None]:
    if q.ndim < 3:
        raise ValueError(f"{fn}: `q` has shape {q.shape}; expected [*batch, time, heads, d_k] (rank >= 3).")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
    if k.shape != q.shape:
        raise ValueError(
            f"{fn}: `k` has shape {k.shape} but `q` has shape {q.shape}; both are [*batch, time, groups, "
            f"d_k]."
        )
    if v.ndim != q.ndim or v.shape[:-2] != q.shape[:-2] or v.shape[-2] % q.shape[-2]:
        raise ValueError(
            f"{fn}: `v` has shape {v.shape}, expected {q.shape[:-2]} + (heads, d_v) with heads a multiple "
            f"of `q`'s {q.shape[-2]} groups (`q` has shape {q.shape})."
        )
    lead = q.shape[:-2]  # [*batch, time]
    batch, heads, dk, dv = q.shape[:-3], v.shape[-2], q.shape[-1], v.shape[-1]
    if log_gamma is not None:
        log_gamma = jnp.asarray(log_gamma)
        per_head, per_channel = v.shape[:-1], (*v.shape[:-1], q.shape[-1])
        if log_gamma.shape not in (per_head, per_channel):
            raise ValueError(
                f"{fn}: `log_gamma` has shape {log_gamma.shape}, expected {per_head} ([*batch, time, "
                f"heads], one scalar decay per head and token) or {per_channel} ([*batch, time, heads, "
                f"d_k], one decay per key channel)."
            )
    if s0 is not None:
        s0 = jnp.asarray(s0)
        expected = (*batch, heads, dk, dv)
        if s0.shape != expected:
            raise ValueError(f"{fn}: `s0` has shape {s0.shape}, expected {expected} ([*batch, H, d_k, d_v]).")
    checked = []
    for name, flags in (("resets", resets), ("mask", mask)):
        if flags is not None:
            flags = jnp.asarray(flags)
            if flags.shape != lead:
                raise ValueError(f"{fn}: `{name}` has shape {flags.shape}, expected {lead} ([*batch, time]).")
            if flags.dtype != jnp.bool_:
                raise TypeError(f"{fn}: `{name}` must be boolean, got dtype {flags.dtype}.")
        checked.append(flags)
    return log_gamma, s0, checked[0], checked[1]


def _apply_flags(
    k: jax.Array, log_gamma: jax.Array | None, resets: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Folds padding into the inputs: k = 0 and log γ = 0 at padded tokens; drops resets on padding.

    log γ is also zeroed at reset tokens: the reset discards the state it would scale, so its gradient is
    exactly zero, as in the recurrent form.
    """
    if mask is not None:
        k = jnp.where(mask[..., None, None], k, jnp.zeros((), k.dtype))
        if resets is not None:
            resets = resets & mask
    if log_gamma is not None:
        keep = None
        if mask is not None:
            keep = mask
        if resets is not None:
            keep = ~resets if keep is None else keep & ~resets
        if keep is not None:
            keep = keep.reshape(keep.shape + (1,) * (log_gamma.ndim - keep.ndim))  # over heads (, d_k)
            log_gamma = jnp.where(keep, log_gamma, jnp.zeros((), log_gamma.dtype))
    return k, log_gamma, resets


# --------------------------------------------------------------------------------------------------
# The recurrent form
# --------------------------------------------------------------------------------------------------
def linear_attention_recurrent(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference: `lax.scan` over tokens carrying S, with autodiff through the scan.

    Args:
      q, k: [*batch, T, G, d_k] (G = H, or G groups shared by H / G heads each); v: [*batch, T, H, d_v]
        (compute dtype; bf16 allowed).
      log_gamma: [*batch, T, H] (a scalar decay per head) or [*batch, T, H, d_k] (one per key channel),
        log γ_t ≤ 0 and finite; None means γ ≡ 1.
      s0: [*batch, H, d_k, d_v] state before the first token; zeros if None.
      resets: [*batch, T] bool, zero the state before token t.
      mask: [*batch, T] bool, False = padding (state unchanged, output 0).

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    log_gamma, s0, resets, mask = _check_inputs(
        "linear_attention_recurrent", q, k, v, log_gamma, s0, resets, mask
    )
    acc = accumulation_dtype(jnp.result_type(q, k, v))
    batch, heads, dk, dv = q.shape[:-3], v.shape[-2], q.shape[-1], v.shape[-1]
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else s0.astype(acc)
    nb = len(batch)
    tm = lambda x: None if x is None else jnp.moveaxis(x, nb, 0)

    def body(s, inp):
        q_t, k_t, v_t, lg_t, reset_t, mask_t = inp
        prev = s
        if reset_t is not None:
            prev = jnp.where(reset_t[..., None, None, None], jnp.zeros((), acc), s)
        new, y = matrix_step(prev, q_t, k_t, v_t, lg_t)
        if mask_t is not None:
            new = jnp.where(mask_t[..., None, None, None], new, s)
            y = jnp.where(mask_t[..., None, None], y, jnp.zeros((), acc))
        return new, y

    final, ys = lax.scan(body, s0, (tm(q), tm(k), tm(v), tm(log_gamma), tm(resets), tm(mask)))
    return jnp.moveaxis(ys, 0, nb), final


# --------------------------------------------------------------------------------------------------
# The chunked form
# --------------------------------------------------------------------------------------------------
def _chunk_body(s_prev, chunk):
    """One chunk for all batch rows and heads at once.

    s_prev [B, H, d_k, d_v]; q, k [B, G, C, d_k] (G dividing H); v [B, H, C, d_v]; lg [B, H, C],
    [B, H, C, d_k] (per channel: `_channel_chunk_body`) or None; seg [B, C]. Heads are computed as [B, G,
    H / G, ...], so a group's Q Kᵀ is formed once.
    """
    q, k, v, lg, seg = chunk
    if lg is not None and lg.ndim == q.ndim:
        return _channel_chunk_body(s_prev, chunk)
    acc = s_prev.dtype
    cd = q.dtype
    bsz, groups, c = q.shape[0], q.shape[1], q.shape[-2]
    heads = v.shape[1]
    per_group = heads // groups

    def grouped(a):
        """[B, H or 1, ...] -> [B, G or 1, H / G or 1, ...]."""
        if a.shape[1] == 1:
            return a[:, :, None]
        return a.reshape(bsz, groups, per_group, *a.shape[2:])

    causal = jnp.tril(jnp.ones((c, c), bool))
    # Token i sees token j iff j ≤ i and no reset lies in (j, i]: same segment id.
    visible = causal & (seg[:, :, None] == seg[:, None, :])  # [B, C, C]
    visible = visible[:, None]  # [B, 1, C, C], shared by the heads
    sees_prev = (seg == 0)[:, None, :]  # [B, 1, C]: no reset yet in this chunk
    last_seg = seg[:, None, -1:]  # [B, 1, 1]
    in_last = seg[:, None, :] == last_seg  # [B, 1, C]: tokens whose keys reach the chunk's end state
    if lg is None:
        decay = visible.astype(acc)
        q_scale = sees_prev.astype(acc)
        k_scale = in_last.astype(acc)
        carry_scale = sees_prev[:, :, -1].astype(acc)
    else:
        lg = lg.astype(acc)
        b = jnp.cumsum(lg, axis=-1)  # [B, H, C], non-increasing
        # The inner `where` keeps exp's argument ≤ 0 where the pair is not visible too, so neither the
        # value nor the gradient can overflow into inf · 0 = NaN. The diagonal D_ii = 1 is a constant,
        # not exp(b_i − b_i), and a key's decay to the chunk's end is exp(Σ_{m>j} log γ_m), summed from
        # its own tokens (0 for the last), not exp(b_C − b_j): through b_i − b_i (and b_C − b_j where
        # only padding follows j, log γ = 0) O(1) gradients reach b twice with opposite signs and cancel
        # only after being added to the small true gradient, which in float32 left an absolute error of
        # ~1e-7 · |dL/dD| in d/d log γ (at γ = 1e-6 per token 3–8% of that head's largest d/d log γ, at
        # γ = e^-30 as much as the gradient itself; tests/test_linear_attention.py::
        # test_chunked_gradients_at_extreme_decays, and `seqjax.scan.delta_rule._chunk_body`).
        strict = visible & ~jnp.eye(c, dtype=bool)
        diff = b[..., :, None] - b[..., None, :]
        decay = jnp.where(strict, jnp.exp(jnp.where(strict, diff, 0.0)), visible.astype(acc))
        q_scale = jnp.where(sees_prev, jnp.exp(b), 0.0)
        k_scale = jnp.where(in_last, jnp.exp(sum_after(lg)), 0.0)
        carry_scale = jnp.where(sees_prev[:, :, -1], jnp.exp(b[..., -1]), 0.0)
    if groups == heads:  # one q, k per head (linear attention)
        scores = jnp.einsum("bhik,bhjk->bhij", q, k, preferred_element_type=acc) * decay
        intra = jnp.einsum("bhij,bhjv->bhiv", scores.astype(cd), v, preferred_element_type=acc)
        inter = jnp.einsum("bhik,bhkv->bhiv", q, s_prev.astype(cd), preferred_element_type=acc)
        y = intra + q_scale[..., None] * inter
        k_dec = (k.astype(acc) * k_scale[..., None]).astype(cd)
        s_next = carry_scale[..., None, None] * s_prev + jnp.einsum(
            "bhjk,bhjv->bhkv", k_dec, v, preferred_element_type=acc
        )
        return s_next, y
    v_g, s_g = grouped(v), grouped(s_prev)  # [B, G, H/G, C, d_v], [B, G, H/G, d_k, d_v]
    qk = jnp.einsum("bgik,bgjk->bgij", q, k, preferred_element_type=acc)  # once per group
    # (ungated, the decay mask is shared by the heads: broadcast it to the group's heads explicitly)
    scores = jnp.broadcast_to(qk[:, :, None] * grouped(decay), (*v_g.shape[:3], c, c))
    intra = jnp.einsum("bgrij,bgrjv->bgriv", scores.astype(cd), v_g, preferred_element_type=acc)
    inter = jnp.einsum("bgik,bgrkv->bgriv", q, s_g.astype(cd), preferred_element_type=acc)
    y = intra + grouped(q_scale)[..., None] * inter
    # The decay to the chunk's end scales the values (per head), so the group's keys stay shared: one
    # [d_k, C] x [C, H/G · d_v] matmul per group instead of one per head.
    v_dec = jnp.broadcast_to(v_g.astype(acc) * grouped(k_scale)[..., None], v_g.shape).astype(cd)
    s_next = grouped(carry_scale)[..., None, None] * s_g + jnp.einsum(
        "bgjk,bgrjv->bgrkv", k, v_dec, preferred_element_type=acc
    )
    return s_next.reshape(s_prev.shape), y.reshape(bsz, heads, c, v.shape[-1])


def sum_after(x: jax.Array, axis: int = -1) -> jax.Array:
    """Σ_{m>j} x_m along `axis`, 0 at the last position: a token's log-decay to the end of its chunk (or
    shard), summed from the tokens it covers.

    The chunked engines take it instead of the difference b_C − b_j of two cumulative sums. That
    difference loses the small terms to rounding once |b| is large, and where it is exactly zero (the
    last token, and tokens followed only by padding, log γ = 0) its exp still sends an O(1) gradient
    into b twice with opposite signs, which cancel only after being added to the small true gradient:
    in float32 an error of ~1e-7 of that O(1) in d/d log γ, more than the whole d/d log γ of a decay of
    e^-30 per token (see `_chunk_body`).

    >>> sum_after(jnp.array([-1.0, -2.0, -3.0]))
    Array([-5., -3.,  0.], dtype=float32)
    """
    axis = axis % x.ndim
    rev = jnp.flip(jnp.cumsum(jnp.flip(x, axis), axis=axis), axis)  # Σ_{m≥j}
    zero = jnp.zeros_like(lax.slice_in_dim(rev, 0, 1, axis=axis))
    return jnp.concatenate([lax.slice_in_dim(rev, 1, None, axis=axis), zero], axis=axis)


def _channel_chunk_body(s_prev: jax.Array, chunk: tuple[Any, ...]) -> tuple[jax.Array, jax.Array]:
    """`_chunk_body` with a decay per key channel, lg [B, H, C, d_k]: the factored form
    (`_channel_chunk_factored`) where the chunk's decays allow it, else the sub-chunk form
    (`_channel_chunk_subchunked`), chosen per chunk by `lax.cond` in both passes."""
    q, k, v, lg, seg = chunk
    heads = v.shape[1]
    if q.shape[1] != heads:  # per channel, each head's decays differ: a group's scores cannot be shared
        q, k = (jnp.repeat(a, heads // a.shape[1], axis=1) for a in (q, k))
    return _channel_chunk(s_prev, q, k, v, lg, seg)


def decay_factorable(total: jax.Array, factor_max: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Whether a chunk's pair decays exp(b_i − b_j) may be factored as exp(b_i) · exp(−b_j) in `dtype`:
    exp(−b) ≤ exp(λ) with λ = ¾ log(max of dtype) for every channel (`total`, the log-decay summed over
    the chunk, is ≤ every partial sum up to rounding, so it bounds the whole chunk), and every factor
    multiplied by exp(−b) (largest magnitude `factor_max`) stays finite. exp(b) ≥ exp(−λ) then stays a
    normal number (float32 and bfloat16: λ = 66.5, a decay over the chunk down to 1e-29 per channel;
    float16: λ = 8.3). Used by GLA's per-channel chunks here and RWKV-7's (`generalized_delta_rule`).

    >>> f32 = jnp.float32
    >>> [bool(decay_factorable(jnp.array([b]), jnp.array(3.0), f32)) for b in (-10.0, -80.0)]
    [True, False]
    """
    log_max = math.log(float(jnp.finfo(dtype).max))
    bound = 0.75 * log_max
    return jnp.all(total >= -bound) & (factor_max <= math.exp(log_max - bound - 1.0))


def _factorable(k: jax.Array, lg: jax.Array, acc: jnp.dtype) -> jax.Array:
    """Whether `_channel_chunk_factored` may run this chunk (`decay_factorable` over the chunk's keys)."""
    total = jnp.sum(lg.astype(acc), axis=2)  # [B, H, d_k]
    return decay_factorable(total, jnp.max(jnp.abs(k.astype(acc))), k.dtype)


def _channel_chunk_factored(s_prev, q, k, v, lg, seg):
    """The per-channel chunk as matmuls, like the scalar `_chunk_body`, by factoring the decay:
    A[i, j] = Σ_c (q_ic exp(b_ic)) (k_jc exp(−b_jc)) for visible j ≤ i, b cumulative from the chunk's
    start. Exact up to rounding (each term is the same product), but exp(−b) overflows unless the chunk's
    decays are bounded: callers check `_factorable` first."""
    acc = s_prev.dtype
    cd = q.dtype
    c = q.shape[2]
    b = jnp.cumsum(lg.astype(acc), axis=2)  # [B, H, C, d_k], non-increasing
    causal = jnp.tril(jnp.ones((c, c), bool))
    visible = (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]  # [B, 1, C, C]
    sees_prev = (seg == 0)[:, None, :, None]  # [B, 1, C, 1]: no reset yet in this chunk
    in_last = (seg == seg[:, -1:])[:, None, :, None]  # keys that reach the chunk's end state
    q_dec = (q.astype(acc) * jnp.exp(b)).astype(cd)
    k_inv = (k.astype(acc) * jnp.exp(-b)).astype(cd)
    scores = jnp.einsum("bhik,bhjk->bhij", q_dec, k_inv, preferred_element_type=acc)
    # The diagonal's decay is exp(b_i − b_i) = 1, but as (q_i ⊙ e^{b_i})·(k_i ⊙ e^{−b_i}) its O(1)
    # gradient reaches b_i twice with opposite signs (see `_chunk_body`): keep its value, take its
    # gradient from Σ_c q_ic k_ic (plus an exact zero), so that none of it reaches b.
    own = jnp.einsum("bhik,bhik->bhi", q, k, preferred_element_type=acc)
    own = own - lax.stop_gradient(own)  # 0, with the undecayed diagonal's gradient wrt q and k
    eye = jnp.eye(c, dtype=bool)
    scores = jnp.where(eye, lax.stop_gradient(scores) + own[..., None], scores)
    scores = jnp.where(visible, scores, jnp.zeros((), acc))
    y = jnp.einsum("bhij,bhjv->bhiv", scores.astype(cd), v, preferred_element_type=acc)
    q_prev = jnp.where(sees_prev, q_dec, jnp.zeros((), cd))
    y = y + jnp.einsum("bhik,bhkv->bhiv", q_prev, s_prev.astype(cd), preferred_element_type=acc)
    k_end = jnp.where(in_last, k.astype(acc) * jnp.exp(sum_after(lg.astype(acc), 2)), jnp.zeros((), acc))
    k_end = k_end.astype(cd)
    carry = jnp.where((seg[:, -1] == 0)[:, None, None], jnp.exp(b[:, :, -1]), jnp.zeros((), acc))
    s_next = carry[..., None] * s_prev + jnp.einsum("bhjk,bhjv->bhkv", k_end, v, preferred_element_type=acc)
    return s_next, y


@jax.custom_vjp
def _channel_chunk(s_prev, q, k, v, lg, seg):
    """The path chosen per chunk; a custom VJP so that the backward pass also runs only the chosen path's
    VJP (differentiating a `lax.cond` would carry both branches' residuals)."""
    ok = _factorable(k, lg, s_prev.dtype)
    return lax.cond(ok, _channel_chunk_factored, _channel_chunk_subchunked, s_prev, q, k, v, lg, seg)


def _chunk_body_vjp(s_prev, chunk, cts):
    """The cotangents of `_chunk_body`'s (s_prev, q, k, v, lg) for cotangents `cts` of (s_next, y),
    without its forward pass where the VJP recomputes what it needs anyway (the per-channel form)."""
    q, k, v, lg, seg = chunk
    if lg is None or lg.ndim != q.ndim:
        _, vjp = jax.vjp(lambda *a: _chunk_body(a[0], (*a[1:], seg)), s_prev, q, k, v, lg)
        return vjp(cts)
    heads, groups = v.shape[1], q.shape[1]
    if groups != heads:
        q, k = (jnp.repeat(a, heads // groups, axis=1) for a in (q, k))
    ds, dq, dk, dv, dlg = _channel_chunk_bwd((s_prev, q, k, v, lg, seg), cts)[:5]
    if groups != heads:  # the repeat's transpose: sum each group's heads
        dq, dk = (a.reshape(a.shape[0], groups, heads // groups, *a.shape[2:]).sum(2) for a in (dq, dk))
    return ds, dq, dk, dv, dlg


def _channel_chunk_fwd(s_prev, q, k, v, lg, seg):
    return _channel_chunk(s_prev, q, k, v, lg, seg), (s_prev, q, k, v, lg, seg)


def _channel_chunk_bwd(res, cts):
    s_prev, q, k, v, lg, seg = res

    def vjp_of(body):
        def run(s_prev, q, k, v, lg):
            _, vjp = jax.vjp(lambda *a: body(*a, seg), s_prev, q, k, v, lg)
            return vjp(cts)

        return run

    ok = _factorable(k, lg, s_prev.dtype)
    factored, subchunked = vjp_of(_channel_chunk_factored), vjp_of(_channel_chunk_subchunked)
    grads = lax.cond(ok, factored, subchunked, s_prev, q, k, v, lg)
    return (*grads, None)


_channel_chunk.defvjp(_channel_chunk_fwd, _channel_chunk_bwd)


def _channel_chunk_subchunked(s_prev, q, k, v, lg, seg):
    """The per-channel chunk for any decays, q, k [B, H, C, d_k]; every exponent taken is ≤ 0.

    The chunk is split into ns sub-chunks of `sub` tokens (padded at the end with tokens of k = 0, log γ = 0
    and the last token's segment, which change nothing). With lb_i the cumulative log-decay from the start
    of token i's sub-chunk through i (lb_i ≤ lb_j ≤ 0 for j ≤ i, elementwise) and g_u = lb at the end of
    sub-chunk u:
      y_i = Σ_{j ≤ i in i's sub-chunk} (Σ_c q_ic k_jc exp(lb_ic − lb_jc)) v_j    a [sub, sub, d_k] tensor
            + (q_i ⊙ exp(lb_i))ᵀ H_s                                  H_s: S at the start of i's sub-chunk
      H_0 = S_prev ;  H_{u+1} = diag(exp(g_u)) H_u + Σ_{j in u} (k_j ⊙ exp(g_u − lb_j)) v_jᵀ ;  S_next = H_ns
    (g_u − lb_j taken as Σ_{m>j in u} log γ_m) with visibility (segments) as in `_chunk_body`: a reset
    inside sub-chunk u drops H_u, and only the keys of u's last segment reach H_{u+1}.
    """
    acc = s_prev.dtype
    cd = q.dtype
    bsz, c = q.shape[0], q.shape[2]
    heads, dv = v.shape[1], v.shape[-1]
    sub = min(CHANNEL_SUB_CHUNK, c)
    ns = -(-c // sub)
    cp = ns * sub
    if cp != c:
        pad = lambda a: jnp.pad(a, [(0, 0), (0, 0), (0, cp - c), (0, 0)])
        q, k, v, lg = pad(q), pad(k), pad(v), pad(lg)
        seg = jnp.pad(seg, [(0, 0), (0, cp - c)], mode="edge")
    split = lambda a: a.reshape(bsz, heads, ns, sub, a.shape[-1])
    q32, k32, v_s = split(q.astype(acc)), split(k.astype(acc)), split(v)
    # Partial sums of non-positive terms are non-increasing in floating point too: lb_i − lb_j ≤ 0 for
    # j ≤ i and Σ_{m>j} log γ_m ≤ 0 exactly, and each is a sum of at most `sub` log-decays.
    lg_s = split(lg.astype(acc))
    lb = jnp.cumsum(lg_s, axis=3)  # [B, H, ns, sub, d_k]
    g = lb[:, :, :, -1]  # [B, H, ns, d_k]: the log-decay over each sub-chunk

    seg_s = seg.reshape(bsz, ns, sub)
    seg_end = seg_s[:, :, -1]  # [B, ns]: the segment at each sub-chunk's end
    seg_start = jnp.concatenate([jnp.zeros_like(seg_end[:, :1]), seg_end[:, :-1]], axis=1)  # before it

    def exp_where(m, x):  # exp(x) where m, else 0; the inner where keeps exp's argument finite and ≤ 0
        return jnp.where(m, jnp.exp(jnp.where(m, x, 0.0)), 0.0)

    # Within a sub-chunk: channel by channel, the diagonal's decay the constant 1 and each key's decay to
    # the sub-chunk's end summed from its own tokens: not exp(lb_i − lb_i) nor exp(g_u − lb_j), whose
    # O(1) gradients would reach lb twice with opposite signs (see `_chunk_body`).
    vis = jnp.tril(jnp.ones((sub, sub), bool)) & (seg_s[..., :, None] == seg_s[..., None, :])
    vis = vis[:, None, :, :, :, None]  # [B, 1, ns, sub, sub, 1]
    strict = vis & ~jnp.eye(sub, dtype=bool)[:, :, None]
    decay = jnp.where(strict, exp_where(strict, lb[..., :, None, :] - lb[..., None, :, :]), vis.astype(acc))
    a = jnp.einsum("bhsik,bhsjk,bhsijk->bhsij", q32, k32, decay)  # [B, H, ns, sub, sub]
    y = jnp.einsum("bhsij,bhsjv->bhsiv", a.astype(cd), v_s, preferred_element_type=acc)
    # Each sub-chunk's keys decayed to its end (its last segment only), then the states at the sub-chunk
    # starts, one sub-chunk after the other.
    in_last = (seg_s == seg_end[..., None])[:, None, :, :, None]
    k_end = (k32 * exp_where(in_last, sum_after(lg_s, 3))).astype(cd)  # exp(g_u − lb_j)
    writes = jnp.einsum("bhsjk,bhsjv->bhskv", k_end, v_s, preferred_element_type=acc)  # [B, H, ns, d_k, d_v]
    no_reset = (seg_end == seg_start)[:, None, :, None]  # [B, 1, ns, 1]
    carry = jnp.where(no_reset, jnp.exp(g), 0.0)  # [B, H, ns, d_k]
    states = [s_prev]
    for u in range(ns):
        states.append(carry[:, :, u, :, None] * states[-1] + writes[:, :, u])
    starts = jnp.stack(states[:-1], axis=2)  # [B, H, ns, d_k, d_v]
    # The state at the sub-chunk's start, for the tokens before the sub-chunk's first reset.
    sees = (seg_s == seg_start[..., None])[:, None, :, :, None]
    q_dec = (q32 * exp_where(sees, lb)).astype(cd)
    y = y + jnp.einsum("bhsik,bhskv->bhsiv", q_dec, starts.astype(cd), preferred_element_type=acc)
    return states[-1], y.reshape(bsz, heads, cp, dv)[:, :, :c]


def _loop_body(s_prev: jax.Array, chunk: tuple[Any, ...], seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`_chunk_body` as `chunk_loop` calls it: chunk = (q, k, v, lg), heads first, and seg [B, C]."""
    return _chunk_body(s_prev, (*chunk, seg))


def _loop_body_vjp(s_prev, chunk, seg, cts):
    """`_chunk_body_vjp` as `chunk_loop` calls it: (dS, (dq, dk, dv, d log γ))."""
    ds, *dchunk = _chunk_body_vjp(s_prev, (*chunk, seg), cts)
    return ds, tuple(dchunk)


def linear_attention_chunked(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """The chunkwise-parallel form; same arguments and results as `linear_attention_recurrent`.

    Each chunk computes its intra-chunk causal attention (Q Kᵀ ⊙ D) V and the inter-chunk term
    exp(b_i) q_iᵀ S_prev in parallel over its tokens; a loop over chunks carries S. The inputs are only
    reshaped to [B, n, C, H, d] (no transpose; padded first when C does not divide T); each step slices
    its chunk and writes its outputs into a [B, n, C, H, d_v] buffer in place.

    The backward pass is a custom VJP: the forward saves the inputs and the state at each chunk start
    (O(inputs) + O(chunks · d_k · d_v)); the backward loops over the chunks in reverse, recomputes each
    chunk's [C, C] matrices with `jax.vjp` of the chunk body from its inputs and start state, carries
    dS backwards, and writes the chunk's dq, dk, dv, d log γ into full-size gradient buffers in place.
    Only reverse mode is defined (no `jax.jvp`). Work is O(T · C · d + T · d_k · d_v) per head (with a
    per-channel decay on the sub-chunked path, O(T · (8 · (d_k + d_v) + d_k · d_v)): the sub-chunks'
    [8, 8, d_k] decays, and the states at the sub-chunk starts); lengths that are not a multiple of
    `chunk_size` are padded internally with padding tokens (γ = 1, k = 0), which leave the state
    unchanged.

    Args:
      q, k: [*batch, T, G, d_k] (G = H, or G groups shared by H / G heads each); v: [*batch, T, H, d_v]
        (compute dtype; bf16 allowed).
      log_gamma: [*batch, T, H] (a scalar decay per head) or [*batch, T, H, d_k] (one per key channel),
        log γ_t ≤ 0 and finite; None means γ ≡ 1.
      s0: [*batch, H, d_k, d_v] state before the first token; zeros if None.
      resets: [*batch, T] bool, zero the state before token t.
      mask: [*batch, T] bool, False = padding (state unchanged, output 0).
      chunk_size: tokens per chunk, C.

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.
    """
    if int(chunk_size) < 1:
        raise ValueError(f"linear_attention_chunked: chunk_size must be >= 1, got {chunk_size}.")
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    log_gamma, s0, resets, mask = _check_inputs(
        "linear_attention_chunked", q, k, v, log_gamma, s0, resets, mask
    )
    cd = jnp.result_type(q, k, v)
    acc = accumulation_dtype(cd)
    q, k, v = q.astype(cd), k.astype(cd), v.astype(cd)
    if log_gamma is not None:
        log_gamma = log_gamma.astype(acc)
    batch, t, heads, dk, dv = q.shape[:-3], q.shape[-3], v.shape[-2], q.shape[-1], v.shape[-1]
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else s0.astype(acc)
    k, log_gamma, resets = _apply_flags(k, log_gamma, resets, mask)

    nb = len(batch)
    b = math.prod(batch)
    c = min(int(chunk_size), t) if t > 0 else 1
    n = -(-t // c)
    pad = n * c - t

    def chunked(x, fill=0):
        # [*batch, T, ...] -> [B, n, C, ...]: a free reshape (plus a pad only when C does not divide T).
        x = x.reshape(b, t, *x.shape[nb + 1 :])
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return x.reshape(b, n, c, *x.shape[2:])

    if resets is None:
        seg = jnp.zeros((b, n, c), jnp.int32)
    else:
        seg = jnp.cumsum(chunked(resets, False).astype(jnp.int32), axis=-1)
    lgc = None if log_gamma is None else chunked(log_gamma)
    if n == 0:  # no tokens: nothing to slice
        ys, final = jnp.zeros((b, 0, heads, dv), acc), s0.reshape(b, heads, dk, dv)
    else:
        xs = (chunked(q), chunked(k), chunked(v), lgc)
        s0 = s0.reshape(b, heads, dk, dv)
        ys, final = chunk_loop(_loop_body, s0, xs, seg, body_vjp=_loop_body_vjp)
        ys = ys.reshape(b, n * c, heads, dv)[:, :t]
    if mask is not None:
        ys = jnp.where(mask.reshape(b, t)[..., None, None], ys, jnp.zeros((), acc))
    return ys.reshape(*batch, t, heads, dv), final.reshape(*batch, heads, dk, dv)


# --------------------------------------------------------------------------------------------------
# The chunked form with the cell's projections fused into the chunk loop
# --------------------------------------------------------------------------------------------------
#: x [B, C, input] -> (q, k [B, C, G, d_k], v [B, C, H, d_v], log γ [B, C, H] or [B, C, H, d_k] or None,
#: extras)
Project = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, Any]]
#: (y [B, C, H, d_v], extras) -> outputs [B, C, output]
Finish = Callable[[Any, jax.Array, Any], jax.Array]


def _fused_chunk(project, finish, params, s_prev, x, resets, mask):
    """One chunk from the compact input: project, apply the flags, run the chunk, finish, zero padding.

    x [B, C, input]; resets, mask [B, C] bool; s_prev [B, H, d_k, d_v].
    """
    q, k, v, lg, extras = project(params, x)
    k, lg, resets = _apply_flags(k, lg, resets, mask)
    seg = jnp.cumsum(resets.astype(jnp.int32), axis=-1)
    heads_first = lambda a: None if a is None else jnp.swapaxes(a, 1, 2)
    s_next, y = _chunk_body(s_prev, (heads_first(q), heads_first(k), heads_first(v), heads_first(lg), seg))
    out = finish(params, heads_first(y), extras)
    return s_next, jnp.where(mask[..., None], out, jnp.zeros((), out.dtype))


def _take(x: jax.Array, i: jax.Array) -> jax.Array:
    """Chunk i of a [B, n, C, ...] array as [B, C, ...]."""
    return from_bits(lax.dynamic_slice_in_dim(as_bits(x), i, 1, axis=1), x.dtype)[:, 0]


def _put(buf: jax.Array, chunk: jax.Array, i: jax.Array) -> jax.Array:
    """Writes a [B, C, ...] chunk into slot i of a (bit-cast) [B, n, C, ...] buffer, in place."""
    return lax.dynamic_update_slice_in_dim(buf, as_bits(chunk)[:, None], i, axis=1)


def _fused_forward(project, finish, params, x, resets, mask, s0, keep_states):
    b, n, c = x.shape[:3]
    chunk = functools.partial(_fused_chunk, project, finish, params)
    out = jax.eval_shape(chunk, s0, x[:, 0], resets[:, 0], mask[:, 0])[1]
    ys0 = as_bits(jnp.zeros((b, n, c, *out.shape[2:]), out.dtype))

    def body(carry, i):
        s, ys = carry
        s_next, y = chunk(s, _take(x, i), _take(resets, i), _take(mask, i))
        return (s_next, _put(ys, y, i)), (s if keep_states else None)

    (final, ys), states = lax.scan(body, (s0, ys0), jnp.arange(n))
    return from_bits(ys, out.dtype), final, states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(project, finish, params, x, resets, mask, s0):
    ys, final, _ = _fused_forward(project, finish, params, x, resets, mask, s0, keep_states=False)
    return ys, final


def _fused_fwd(project, finish, params, x, resets, mask, s0):
    ys, final, states = _fused_forward(project, finish, params, x, resets, mask, s0, keep_states=True)
    return (ys, final), (params, x, resets, mask, states)


def _fused_bwd(project, finish, res, cts):
    params, x, resets, mask, states = res
    dys, dfinal = cts
    n = x.shape[1]
    # Weight gradients are sums over chunks: accumulate them in at least float32.
    acc_like = lambda p: jnp.zeros(p.shape, accumulation_dtype(p.dtype))

    def body(carry, i):
        ds, dparams, dx = carry
        r_i, m_i = _take(resets, i), _take(mask, i)
        chunk = lambda p, s, x_i: _fused_chunk(project, finish, p, s, x_i, r_i, m_i)
        _, vjp = jax.vjp(chunk, params, states[i], _take(x, i))
        dp_i, ds, dx_i = vjp((ds, _take(dys, i)))
        dparams = jax.tree.map(lambda a, g: a + g.astype(a.dtype), dparams, dp_i)
        return (ds, dparams, _put(dx, dx_i.astype(x.dtype), i)), None

    init = (dfinal.astype(states.dtype), jax.tree.map(acc_like, params), as_bits(jnp.zeros_like(x)))
    (ds0, dparams, dx), _ = lax.scan(body, init, jnp.arange(n), reverse=True)
    dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
    return dparams, from_bits(dx, x.dtype), None, None, ds0


_fused.defvjp(_fused_fwd, _fused_bwd)


def linear_attention_fused(
    project: Project,
    finish: Finish,
    params: Any,
    xs: jax.Array,
    s0: jax.Array,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """A whole linear-attention layer, chunk by chunk: project, recur, finish, inside one chunk loop.

    `linear_attention_chunked` takes q, k, v and log γ for the whole sequence, so a cell around it keeps
    every full-length projection, gate and norm (and their cotangents) alive for the backward pass: about
    18 tensors of [B, T, H · d] for a gated cell, against one [B, T, input] input. Here the loop over
    chunks starts from the compact input instead: `project(params, x_chunk)` gives the chunk's q, k, v,
    log γ and any extras (an output gate), the chunk's recurrence runs as in `linear_attention_chunked`,
    and `finish(params, y_chunk, extras)` turns the per-head outputs into the layer's. The custom VJP
    saves only `xs` and the state at each chunk start; the backward loop recomputes each chunk from them
    with `jax.vjp`, carries dS backwards, writes the chunk's d xs in place and sums the parameter
    gradients over chunks in float32. Activation memory is O(T · input + T / C · H · d_k · d_v), whatever
    the width of the projections; the projections run twice (forward and recompute). Only reverse mode
    is defined (no `jax.jvp`), as for `linear_attention_chunked`; the recurrent form has both.

    Args:
      project: (params, x [B, C, input]) -> (q, k [B, C, G, d_k] (G = H or grouped, as in
        `linear_attention_chunked`), v [B, C, H, d_v] in the compute dtype, log γ [B, C, H] or [B, C, H,
        d_k] in the accumulation dtype or None, extras: any pytree).
      finish: (params, y [B, C, H, d_v] in the accumulation dtype, extras) -> outputs [B, C, output].
      params: the pytree of floating arrays `project` and `finish` read; gradients flow to all of it.
      xs: [*batch, T, input]; s0: [*batch, H, d_k, d_v] in the accumulation dtype.
      resets, mask, chunk_size: as in `linear_attention_chunked`; padding outputs are 0.

    Returns:
      outputs [*batch, T, output] in `finish`'s dtype and the final state [*batch, H, d_k, d_v].
    """
    if int(chunk_size) < 1:
        raise ValueError(f"linear_attention_fused: chunk_size must be >= 1, got {chunk_size}.")
    xs = jnp.asarray(xs)
    batch, t = xs.shape[:-2], xs.shape[-2]
    lead = (*batch, t)
    flags = []
    for name, value, default in (("resets", resets, False), ("mask", mask, True)):
        if value is None:
            value = jnp.full(lead, default)
        elif value.shape != lead or value.dtype != jnp.bool_:
            raise ValueError(
                f"linear_attention_fused: `{name}` has shape {value.shape} and dtype {value.dtype}, "
                f"expected bool {lead} ([*batch, time])."
            )
        flags.append(value)
    b = math.prod(batch)
    c = min(int(chunk_size), t) if t > 0 else 1
    n = -(-t // c)
    pad = n * c - t

    def chunked(a, fill=0):
        a = a.reshape(b, t, *a.shape[len(batch) + 1 :])
        if pad:  # padding tokens (mask False) leave the state unchanged and output 0
            a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        return a.reshape(b, n, c, *a.shape[2:])

    s0 = jnp.asarray(s0)
    s_flat = s0.reshape(b, *s0.shape[len(batch) :])
    x_c, resets_c, mask_c = chunked(xs), chunked(flags[0], False), chunked(flags[1], False)
    if n == 0:  # no tokens: only the output's width and dtype are needed
        probe = functools.partial(_fused_chunk, project, finish, params)
        flag = jax.ShapeDtypeStruct((b, 1), jnp.bool_)
        token = jax.ShapeDtypeStruct((b, 1, xs.shape[-1]), xs.dtype)
        _, out = jax.eval_shape(probe, s_flat, token, flag, flag)
        return jnp.zeros((*lead, *out.shape[2:]), out.dtype), s0
    ys, final = _fused(project, finish, params, x_c, resets_c, mask_c, s_flat)
    ys = ys.reshape(b, n * c, *ys.shape[3:])[:, :t]
    return ys.reshape(*lead, *ys.shape[2:]), final.reshape(s0.shape)


# --------------------------------------------------------------------------------------------------
# Dispatch and the normalised variant
# --------------------------------------------------------------------------------------------------
def linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """`linear_attention_chunked` ("chunked", and "auto") or `linear_attention_recurrent` ("recurrent").

    "auto" is the chunked form: it is the training form on every platform (matmuls of C tokens instead of
    T rank-1 updates, and O(T / C) stored states instead of O(T)).

    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((1, 5, 2, 3)); v = jnp.ones((1, 5, 2, 4))     # [batch, T, H, d_k / d_v]
    >>> per_channel = jnp.log(jnp.full((1, 5, 2, 3), 0.5))            # one decay per key channel
    >>> ys, s = linear_attention(q, k, v, per_channel, chunk_size=2)
    >>> ys.shape, s.shape, float(s[0, 0, 0, 0])                       # 1 + 1/2 + 1/4 + 1/8 + 1/16
    ((1, 5, 2, 4), (1, 2, 3, 4), 1.9375)
    """
    if method not in METHODS:
        raise ValueError(f"linear_attention: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "recurrent":
        return linear_attention_recurrent(q, k, v, log_gamma, s0, resets=resets, mask=mask)
    return linear_attention_chunked(q, k, v, log_gamma, s0, resets=resets, mask=mask, chunk_size=chunk_size)


def normalized_linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    log_gamma: jax.Array | None = None,
    s0: jax.Array | None = None,
    z0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    eps: float = 1e-6,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Linear attention with the normaliser z_t = γ_t z_{t-1} + k_t:  y_t = S_tᵀ q_t / (q_t·z_t + eps).

    z is the recurrence of S for a constant value column of ones, so it runs as that extra column of v
    (one engine call, d_v + 1 columns). Padding outputs are 0 (0 / eps).

    Args:
      q, k, v, log_gamma, resets, mask: as in `linear_attention_chunked`.
      s0: [*batch, H, d_k, d_v] and z0: [*batch, H, d_k]: the state before the first token; zeros if None.

    Returns:
      ys [*batch, T, H, d_v] and the final state (S [*batch, H, d_k, d_v], z [*batch, H, d_k]).
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    v_aug = jnp.concatenate([v, jnp.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
    s_aug = None
    if s0 is not None or z0 is not None:
        acc = accumulation_dtype(jnp.result_type(q, k, v))
        batch, heads, dk, dv = q.shape[:-3], v.shape[-2], q.shape[-1], v.shape[-1]
        s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else jnp.asarray(s0).astype(acc)
        z0 = jnp.zeros((*batch, heads, dk), acc) if z0 is None else jnp.asarray(z0).astype(acc)
        if z0.shape != s0.shape[:-1]:
            raise ValueError(
                f"normalized_linear_attention: `z0` has shape {z0.shape}, expected {s0.shape[:-1]} "
                f"([*batch, H, d_k])."
            )
        s_aug = jnp.concatenate([s0, z0[..., None]], axis=-1)
    ys, s = linear_attention(
        q, k, v_aug, log_gamma, s_aug, resets=resets, mask=mask, method=method, chunk_size=chunk_size
    )
    return split_normalized(ys, eps), (s[..., :-1], s[..., -1])


def split_normalized(ys_aug: jax.Array, eps: float) -> jax.Array:
    """[..., d_v + 1] numerator and denominator columns -> [..., d_v] normalised output."""
    return ys_aug[..., :-1] / (ys_aug[..., -1:] + eps)
