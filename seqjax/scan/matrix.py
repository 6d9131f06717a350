"""The matrix-valued recurrence engine behind linear attention, Performer and gated linear attention.

Per head, with a scalar decay γ_t ∈ (0, 1] per (batch, head, token):

    S_t = γ_t S_{t-1} + k_t v_tᵀ        S ∈ R^{d_k × d_v}
    y_t = S_tᵀ q_t

(γ ≡ 1 when `log_gamma` is None). Two forms compute the same thing:

- `linear_attention_recurrent`: `lax.scan` over tokens carrying S; the reference, and the form `step`
  uses. Autodiff keeps every S_t for the backward pass (O(T · d_k · d_v)).
- `linear_attention_chunked`: the chunkwise-parallel form. Inside a chunk of C tokens,

      Y = (Q Kᵀ ⊙ D) V + diag(exp(b)) Q S_prev,     D[i, j] = exp(b_i − b_j) for j ≤ i, else 0,

  with b the within-chunk cumulative sum of log γ; the state is carried across chunks by a `lax.scan`
  over chunks, S_next = exp(b_C) S_prev + Σ_j exp(b_C − b_j) k_j v_jᵀ. Only the chunk-boundary states
  exist, never every S_t.

Layout: batch-major, heads after time, as a cell's input projection produces them without a transpose:
q, k [*batch, T, H, d_k], v [*batch, T, H, d_v], log_gamma [*batch, T, H], resets and mask [*batch, T],
states [*batch, H, d_k, d_v].

Resets and padding, exactly as for every seqjax cell:
- `resets[..., t]` zeroes the state before token t. The chunked form gives each token a segment id
  within its chunk (the running count of resets) and lets token i see token j < i only inside the same
  segment, and S_prev only while no reset has happened yet in the chunk. That is the effect of
  log γ_t = −∞ at a reset, without ever forming −∞ − (−∞) or exp of a large positive number, so values
  and gradients stay finite.
- `mask[..., t] == False` marks padding: the token gets γ = 1 and k = 0, so the state passes through
  unchanged, and its output is 0. Padding wins over a reset at the same token.

Dtypes: the matmul operands are in q/k/v's dtype (bfloat16 allowed) and accumulate in float32
(`preferred_element_type`); decays, states and outputs are in the accumulation dtype (float32, or
float64 when the inputs are float64).
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "METHODS",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_recurrent",
    "matrix_step",
    "normalized_linear_attention",
    "split_normalized",
]

Method = Literal["auto", "chunked", "recurrent"]
METHODS: tuple[str, ...] = ("auto", "chunked", "recurrent")
DEFAULT_CHUNK = 64


def _acc_dtype(dtype: jnp.dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def matrix_step(
    s: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array, log_gamma: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """One token of S' = γ S + k vᵀ, y = S'ᵀ q, for every head.

    Args:
      s: [*batch, H, d_k, d_v] state, in the accumulation dtype.
      q, k: [*batch, H, d_k]; v: [*batch, H, d_v] (compute dtype).
      log_gamma: [*batch, H] or None (γ = 1).

    Returns:
      (S' [*batch, H, d_k, d_v], y [*batch, H, d_v]), both in `s`'s dtype.
    """
    acc = s.dtype
    if log_gamma is not None:
        s = jnp.exp(log_gamma.astype(acc))[..., None, None] * s
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
            f"{fn}: `k` has shape {k.shape} but `q` has shape {q.shape}; both are [*batch, time, heads, d_k]."
        )
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"{fn}: `v` has shape {v.shape}, expected {q.shape[:-1]} + (d_v,) to match `q` {q.shape}."
        )
    lead = q.shape[:-2]  # [*batch, time]
    batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
    if log_gamma is not None:
        log_gamma = jnp.asarray(log_gamma)
        if log_gamma.shape != q.shape[:-1]:
            raise ValueError(
                f"{fn}: `log_gamma` has shape {log_gamma.shape}, expected {q.shape[:-1]} "
                f"([*batch, time, heads], one scalar decay per head and token)."
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
            log_gamma = jnp.where(keep[..., None], log_gamma, jnp.zeros((), log_gamma.dtype))
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
      q, k: [*batch, T, H, d_k]; v: [*batch, T, H, d_v] (compute dtype; bf16 allowed).
      log_gamma: [*batch, T, H], log γ_t ≤ 0 and finite; None means γ ≡ 1.
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
    acc = _acc_dtype(jnp.result_type(q, k, v))
    batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
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

    s_prev [B, H, d_k, d_v]; q, k [B, H, C, d_k]; v [B, H, C, d_v]; lg [B, H, C] or None; seg [B, C].
    """
    q, k, v, lg, seg = chunk
    acc = s_prev.dtype
    cd = q.dtype
    c = q.shape[-2]
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
        b = jnp.cumsum(lg.astype(acc), axis=-1)  # [B, H, C], non-increasing
        # The inner `where` keeps exp's argument ≤ 0 where the pair is not visible too, so neither the
        # value nor the gradient can overflow into inf · 0 = NaN.
        diff = b[..., :, None] - b[..., None, :]
        decay = jnp.where(visible, jnp.exp(jnp.where(visible, diff, 0.0)), 0.0)
        q_scale = jnp.where(sees_prev, jnp.exp(b), 0.0)
        k_scale = jnp.where(in_last, jnp.exp(b[..., -1:] - b), 0.0)
        carry_scale = jnp.where(sees_prev[:, :, -1], jnp.exp(b[..., -1]), 0.0)
    scores = jnp.einsum("bhik,bhjk->bhij", q, k, preferred_element_type=acc) * decay
    intra = jnp.einsum("bhij,bhjv->bhiv", scores.astype(cd), v, preferred_element_type=acc)
    inter = jnp.einsum("bhik,bhkv->bhiv", q, s_prev.astype(cd), preferred_element_type=acc)
    y = intra + q_scale[..., None] * inter
    k_dec = (k.astype(acc) * k_scale[..., None]).astype(cd)
    s_next = carry_scale[..., None, None] * s_prev + jnp.einsum(
        "bhjk,bhjv->bhkv", k_dec, v, preferred_element_type=acc
    )
    return s_next, y


# Remat: the backward pass recomputes each chunk's [C, C] scores and decays from the chunk's inputs and
# its start state, so autodiff stores only those (O(inputs) + O(chunks · d_k · d_v)), not the per-chunk
# intermediates of all chunks.
_chunk_body_remat = jax.checkpoint(_chunk_body, prevent_cse=False)


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
    exp(b_i) q_iᵀ S_prev in parallel over its tokens; a `lax.scan` over chunks carries S. The per-chunk
    body is wrapped in `jax.checkpoint` (remat, not a custom VJP): the backward pass stores only the
    inputs and one state per chunk boundary and recomputes the [C, C] matrices chunk by chunk. Work is
    O(T · C · d + T · d_k · d_v) per head; lengths that are not a multiple of `chunk_size` are padded
    internally with padding tokens (γ = 1, k = 0), which leave the state unchanged.

    Args:
      q, k: [*batch, T, H, d_k]; v: [*batch, T, H, d_v] (compute dtype; bf16 allowed).
      log_gamma: [*batch, T, H], log γ_t ≤ 0 and finite; None means γ ≡ 1.
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
    acc = _acc_dtype(cd)
    q, k, v = q.astype(cd), k.astype(cd), v.astype(cd)
    if log_gamma is not None:
        log_gamma = log_gamma.astype(acc)
    batch, t, (heads, dk), dv = q.shape[:-3], q.shape[-3], q.shape[-2:], v.shape[-1]
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else s0.astype(acc)
    k, log_gamma, resets = _apply_flags(k, log_gamma, resets, mask)

    nb = len(batch)
    b = math.prod(batch)
    c = min(int(chunk_size), t) if t > 0 else 1
    n = -(-t // c)
    pad = n * c - t

    def chunked(x, fill=0):
        # [*batch, T, ...] -> [n, B, ..., C]-style layout: chunks first (scanned), then batch, heads.
        x = x.reshape(b, t, *x.shape[nb + 1 :])
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return x.reshape(b, n, c, *x.shape[2:])

    # [B, n, C, H, d] -> [n, B, H, C, d]
    qc, kc, vc = (jnp.transpose(chunked(x), (1, 0, 3, 2, 4)) for x in (q, k, v))
    lgc = None if log_gamma is None else jnp.transpose(chunked(log_gamma), (1, 0, 3, 2))
    if resets is None:
        seg = jnp.zeros((n, b, c), jnp.int32)
    else:
        seg = jnp.cumsum(jnp.transpose(chunked(resets, False), (1, 0, 2)).astype(jnp.int32), axis=-1)
    final, ys = lax.scan(_chunk_body_remat, s0.reshape(b, heads, dk, dv), (qc, kc, vc, lgc, seg))
    # [n, B, H, C, dv] -> [B, n·C, H, dv]
    ys = jnp.transpose(ys, (1, 0, 3, 2, 4)).reshape(b, n * c, heads, dv)[:, :t]
    if mask is not None:
        ys = jnp.where(mask.reshape(b, t)[..., None, None], ys, jnp.zeros((), acc))
    return ys.reshape(*batch, t, heads, dv), final.reshape(*batch, heads, dk, dv)


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
        acc = _acc_dtype(jnp.result_type(q, k, v))
        batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
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
