"""The generalised delta rule behind RWKV-7: a matrix state with a per-channel decay and a rank-one
state-dependent correction per token (a diagonal-plus-low-rank, "DPLR", transition).

Per head, in the layout of fla's `dplr_recurrence` (`fla/ops/generalized_delta_rule/dplr/naive.py`; state
H ∈ R^{d_k × d_v}, the transpose of RWKV-7's S ∈ R^{d_v × d_k}):

    H_t = diag(w_t) H_{t-1} + b_t (a_tᵀ H_{t-1}) + k_t v_tᵀ  =  (diag(w_t) + b_t a_tᵀ) H_{t-1} + k_t v_tᵀ
    y_t = H_tᵀ r_t

with w_t = exp(log_w_t) ∈ (0, 1]^{d_k} (log_w ≤ 0 and finite) and vectors a_t, b_t ∈ R^{d_k}. RWKV-7 takes
a = −κ̂, b = κ̂ ⊙ α (its in-context learning rate): S_t = S_{t-1} (diag(w_t) − κ̂_tᵀ (α_t ⊙ κ̂_t)) + v_tᵀ k_t.
The delta rule of DeltaNet is the special case w = 1, a = −β k, b = k (with v ← β v).

Two forms compute the same thing:

- `generalized_delta_rule_recurrent`: `lax.scan` over tokens carrying H; the reference, and what `step`
  uses.
- `generalized_delta_rule_chunked`: the chunkwise-parallel form. Inside a chunk of C tokens, with G_i =
  Σ_{m≤i} log w_m (per key channel, G_0 = 0 before the chunk) and the state H_0 at the chunk's start,
  the pseudo-values u_i = a_iᵀ H_{i-1} (what the correction reads; H_i = diag(w_i) H_{i-1} + b_i u_iᵀ +
  k_i v_iᵀ) solve the unit lower-triangular system

      u_i − Σ_{j<i} A_ab[i, j] u_j = Σ_{j<i} A_ak[i, j] v_j + (a_i ⊙ e^{G_{i-1}})ᵀ H_0,

  A_xy[i, j] = Σ_c x_ic y_jc exp(G_{i-1,c} − G_{j,c}) (j < i), so U = (I − A_ab)⁻¹ (A_ak V + Ã H_0)
  (`unit_lower_inverse`, matmuls only). Then, with A'_xy[i, j] = Σ_c x_ic y_jc exp(G_{i,c} − G_{j,c})
  (j ≤ i),

      Y   = (R ⊙ e^G) H_0 + A'_rb U + A'_rk V
      H_C = diag(e^{G_C}) H_0 + (B ⊙ e^{G_C − G})ᵀ U + (K ⊙ e^{G_C − G})ᵀ V.

  The decays are per key channel, so they do not factor out of the pair products. Writing them as
  (x ⊙ e^G)·(y ⊙ e^{−G}) is exact up to rounding and turns the pair products into matmuls, but overflows
  as soon as a chunk's decays are small (e^{−G} > 1e38 once G < −88; fla's kernels bound log w from
  below for this). So each chunk takes one of two paths, chosen per chunk by `lax.cond` in the forward
  and in the backward pass (`_chunk` and `_chunk_vjp`: the backward pass runs only the chosen path's
  VJP): the factored matmuls (`_chunk_factored`) when every channel's decay over the chunk keeps
  e^{−G} ≤ e^{¾·log(dtype max)} (float32: e^66.5; RWKV-7's decays, log w > −0.6065 per token, always
  pass in chunks of up to 109 tokens), and otherwise the pairwise form (`_chunk_pairwise`), which, as
  `matrix_recurrence`'s sub-chunk path, never forms e^{−G}: the pair tensors exp(G_i − G_j) [C, C, d_k]
  are formed with every
  exponent ≤ 0 (hence the small default chunk, `DEFAULT_CHUNK` = 16), and each exponent is summed from
  its own tokens, Σ_{j<m≤i} log w_m (a cumulative sum down each column of a masked [C, C, d_k] tensor),
  never as the difference of two prefix sums: after one very small decay in a channel (log w = −1e4,
  w = 0 in float32) the prefix sums are large, and their differences would lose the small decays that
  follow to rounding (measured in float32 over 512 tokens: a 5e-4 relative error, against 1.5e-7 now,
  as the token scan). A loop over chunks carries H (`seqjax.scan.chunk_loop`: the inputs stay in their
  [B, T, H, d] layout, with its own VJP); the backward pass recomputes each chunk, so training stores
  the inputs and one state per chunk, never every H_t or a [C, C, d_k] tensor per chunk. On one CPU
  core the factored path made RWKV-7's layer train 1.6x faster at 4,096 tokens (8 heads of 64, chunks
  of 16).

Layout (as `seqjax.scan.delta_rule`): r, k, a, b, log_w [*batch, T, H, d_k], v [*batch, T, H, d_v],
resets and mask [*batch, T], states [*batch, H, d_k, d_v].

Resets and padding:
- `resets[..., t]` zeroes the state before token t. The chunked form gives each token a segment id
  within its chunk (the running count of resets): token i reads token j < i only inside one segment,
  and H_0 reaches only the tokens before the chunk's first reset. log w is zeroed at reset tokens (the
  state it would scale is discarded), so its gradient there is exactly zero, as in the recurrent form.
- `mask[..., t] == False` marks padding: the token gets w = 1, a = b = 0 and k = 0, so the state passes
  through unchanged, and its output is 0. Padding wins over a reset at the same token.

Dtypes: the recurrence runs in the accumulation dtype (float32 for float32 or bfloat16 inputs, float64
for float64 ones); states and outputs are in that dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.chunk_loop import chunk_loop
from seqjax.scan.delta_rule import unit_lower_inverse
from seqjax.scan.matrix_recurrence import decay_factorable, sum_after

__all__ = [
    "DEFAULT_CHUNK",
    "METHODS",
    "generalized_delta_rule",
    "generalized_delta_rule_chunked",
    "generalized_delta_rule_recurrent",
    "generalized_delta_rule_step",
]

Method = Literal["auto", "chunked", "recurrent"]
METHODS: tuple[str, ...] = ("auto", "chunked", "recurrent")
DEFAULT_CHUNK = 16


def generalized_delta_rule_step(
    s: jax.Array,
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    a: jax.Array,
    b: jax.Array,
    log_w: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One token of H ← diag(w) H + b (aᵀ H) + k vᵀ, y = Hᵀ r, for every head.

    Args:
      s: [*batch, H, d_k, d_v] state, in the accumulation dtype.
      r, k, a, b, log_w: [*batch, H, d_k]; v: [*batch, H, d_v].

    Returns:
      (H [*batch, H, d_k, d_v], y [*batch, H, d_v]), both in `s`'s dtype.

    >>> import jax.numpy as jnp
    >>> s = jnp.ones((1, 2, 3))                        # one head, d_k = 2, d_v = 3
    >>> k = jnp.array([[1.0, 0.0]]); v = jnp.array([[1.0, 2.0, 3.0]])
    >>> s, y = generalized_delta_rule_step(s, k, k, v, -k, k, jnp.zeros((1, 2)))
    >>> y                                              # a = −k, b = k: row 0 replaced by v (the delta rule)
    Array([[1., 2., 3.]], dtype=float32)
    """
    acc = s.dtype
    r, k, v, a, b, log_w = (x.astype(acc) for x in (r, k, v, a, b, log_w))
    read = jnp.einsum("...k,...kv->...v", a, s)  # aᵀ H_{t-1}, before the decay
    s = (
        jnp.exp(log_w)[..., None] * s
        + b[..., :, None] * read[..., None, :]
        + k[..., :, None] * v[..., None, :]
    )
    y = jnp.einsum("...k,...kv->...v", r, s)
    return s, y


# --------------------------------------------------------------------------------------------------
# Validation and flags
# --------------------------------------------------------------------------------------------------
def _check_inputs(fn, r, k, v, a, b, log_w, s0, resets, mask):
    if r.ndim < 3:
        raise ValueError(f"{fn}: `r` has shape {r.shape}; expected [*batch, time, heads, d_k] (rank >= 3).")
    for name, x in (("r", r), ("k", k), ("v", v), ("a", a), ("b", b), ("log_w", log_w)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
    for name, x in (("k", k), ("a", a), ("b", b), ("log_w", log_w)):
        if x.shape != r.shape:
            raise ValueError(
                f"{fn}: `{name}` has shape {x.shape} but `r` has shape {r.shape}; both are [*batch, time, "
                f"heads, d_k]."
            )
    if v.shape[:-1] != r.shape[:-1]:
        raise ValueError(f"{fn}: `v` has shape {v.shape}, expected {r.shape[:-1]} + (d_v,) to match `r`.")
    batch, (heads, dk), dv = r.shape[:-3], r.shape[-2:], v.shape[-1]
    if s0 is not None and s0.shape != (*batch, heads, dk, dv):
        raise ValueError(f"{fn}: `s0` has shape {s0.shape}, expected {(*batch, heads, dk, dv)}.")
    lead = r.shape[:-2]
    for name, flags in (("resets", resets), ("mask", mask)):
        if flags is not None:
            if flags.shape != lead:
                raise ValueError(f"{fn}: `{name}` has shape {flags.shape}, expected {lead} ([*batch, time]).")
            if flags.dtype != jnp.bool_:
                raise TypeError(f"{fn}: `{name}` must be boolean, got dtype {flags.dtype}.")


def _prepare(fn, r, k, v, a, b, log_w, s0, resets, mask):
    """Arrays in the accumulation dtype, padding folded in (k = a = b = 0, log w = 0), log w zeroed at
    resets, resets dropped on padding."""
    r, k, v, a, b, log_w = (jnp.asarray(x) for x in (r, k, v, a, b, log_w))
    s0 = None if s0 is None else jnp.asarray(s0)
    resets = None if resets is None else jnp.asarray(resets)
    mask = None if mask is None else jnp.asarray(mask)
    _check_inputs(fn, r, k, v, a, b, log_w, s0, resets, mask)
    acc = accumulation_dtype(jnp.result_type(r, k, v, a, b, log_w))
    r, k, v, a, b, log_w = (x.astype(acc) for x in (r, k, v, a, b, log_w))
    batch, (heads, dk), dv = r.shape[:-3], r.shape[-2:], v.shape[-1]
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else s0.astype(acc)
    if mask is not None:
        m = mask[..., None, None]
        k, a, b = (jnp.where(m, x, 0.0) for x in (k, a, b))
        if resets is not None:
            resets = resets & mask
    keep = mask
    if resets is not None:
        keep = ~resets if keep is None else keep & ~resets
    if keep is not None:
        log_w = jnp.where(keep[..., None, None], log_w, 0.0)
    return r, k, v, a, b, log_w, s0, resets, mask


# --------------------------------------------------------------------------------------------------
# The recurrent form
# --------------------------------------------------------------------------------------------------
def generalized_delta_rule_recurrent(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    a: jax.Array,
    b: jax.Array,
    log_w: jax.Array,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference: `lax.scan` over tokens carrying H, with autodiff through the scan.

    Args:
      r, k, a, b: [*batch, T, H, d_k]; v: [*batch, T, H, d_v].
      log_w: [*batch, T, H, d_k], log w ≤ 0 and finite.
      s0: [*batch, H, d_k, d_v] state before the first token; zeros if None.
      resets: [*batch, T] bool, zero the state before token t.
      mask: [*batch, T] bool, False = padding (state unchanged, output 0).

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((2, 7, 3, 4)) / 2.0
    >>> ys, s = generalized_delta_rule_recurrent(x, x, jnp.ones((2, 7, 3, 5)), -x, x, -x)
    >>> ys.shape, s.shape
    ((2, 7, 3, 5), (2, 3, 4, 5))
    """
    r, k, v, a, b, log_w, s0, resets, mask = _prepare(
        "generalized_delta_rule_recurrent", r, k, v, a, b, log_w, s0, resets, mask
    )
    nb = r.ndim - 3
    tm = lambda x: None if x is None else jnp.moveaxis(x, nb, 0)

    def body(s, inp):
        r_t, k_t, v_t, a_t, b_t, lw_t, reset_t, mask_t = inp
        prev = s
        if reset_t is not None:
            prev = jnp.where(reset_t[..., None, None, None], 0.0, s)
        new, y = generalized_delta_rule_step(prev, r_t, k_t, v_t, a_t, b_t, lw_t)
        if mask_t is not None:
            new = jnp.where(mask_t[..., None, None, None], new, s)
            y = jnp.where(mask_t[..., None, None], y, 0.0)
        return new, y

    final, ys = lax.scan(body, s0, tuple(map(tm, (r, k, v, a, b, log_w, resets, mask))))
    return jnp.moveaxis(ys, 0, nb), final


# --------------------------------------------------------------------------------------------------
# The chunked form
# --------------------------------------------------------------------------------------------------
def _exp_where(m: jax.Array, x: jax.Array) -> jax.Array:
    """exp(x) where m, else 0; the inner `where` keeps exp's argument ≤ 0 and finite everywhere, so
    neither the value nor the gradient can overflow into inf · 0 = NaN."""
    return jnp.where(m, jnp.exp(jnp.where(m, x, 0.0)), 0.0)


def _chunk_pairwise(s0, chunk):
    """One chunk for all batch rows and heads at once, in the accumulation dtype, for any decays.

    s0 [B, H, d_k, d_v]; r, k, a, b, lw [B, H, C, d_k]; v [B, H, C, d_v]; seg [B, C] int32, the segment
    id of each token within the chunk.
    """
    r, k, v, a, b, lw, seg = chunk
    c = r.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), bool))
    same = seg[:, :, None] == seg[:, None, :]  # [B, C, C]
    incl = (causal & same)[:, None, :, :, None]  # [B, 1, C, C, 1]: i reads j (j ≤ i, same segment)
    strict = incl & ~jnp.eye(c, dtype=bool)[:, :, None]
    sees_prev = (seg == 0)[:, None, :, None]  # [B, 1, C, 1]: no reset yet in this chunk
    in_last = (seg == seg[:, -1:])[:, None, :, None]  # [B, 1, C, 1]: writes that reach the chunk's end
    carries = (seg[:, -1] == 0)[:, None, None]  # [B, 1, 1]: H_0 survives the chunk
    # Pair decays as partial sums of their own tokens, Σ_{j<m≤i} log w_m, accumulated from j: never the
    # difference G_i − G_j of two prefix sums, which loses the small decays to rounding once a large one
    # (a channel reset, log w ≪ 0) has entered the prefix.
    later = jnp.tril(jnp.ones((c, c), bool), -1)[:, :, None]  # m = i > j
    d_incl = jnp.cumsum(jnp.where(later, lw[..., :, None, :], 0.0), axis=-3)  # [B, H, C, C, d_k]
    d_strict = jnp.concatenate([jnp.zeros_like(d_incl[..., :1, :, :]), d_incl[..., :-1, :, :]], axis=-3)
    e_incl = _exp_where(incl, d_incl)  # exp(G_i − G_j), j ≤ i
    e_strict = _exp_where(strict, d_strict)  # exp(G_{i−1} − G_j), j < i
    g = jnp.cumsum(lw, axis=-2)  # G_i [B, H, C, d_k], non-increasing along the chunk
    g_prev = jnp.concatenate([jnp.zeros_like(g[..., :1, :]), g[..., :-1, :]], axis=-2)  # G_{i-1}, exactly
    tail_log = sum_after(lw, axis=-2)  # G_C − G_j = Σ_{m>j} log w_m
    pair = lambda x, y, e: jnp.einsum("bhijc,bhjc->bhij", x[..., :, None, :] * e, y)
    a_ab, a_ak = pair(a, b, e_strict), pair(a, k, e_strict)
    a_rb, a_rk = pair(r, b, e_incl), pair(r, k, e_incl)
    a_0 = a * _exp_where(sees_prev, g_prev)  # what the correction reads of H_0
    r_0 = r * _exp_where(sees_prev, g)  # what the output reads of H_0
    mm = lambda x, y: jnp.einsum("bhij,bhjv->bhiv", x, y)
    rhs = mm(a_ak, v) + jnp.einsum("bhik,bhkv->bhiv", a_0, s0)
    u = mm(unit_lower_inverse(-a_ab), rhs)  # the pseudo-values u_i = a_iᵀ H_{i−1}
    y = jnp.einsum("bhik,bhkv->bhiv", r_0, s0) + mm(a_rb, u) + mm(a_rk, v)
    tail = _exp_where(in_last, tail_log)  # exp(G_C − G_j) [B, H, C, d_k]
    s_next = (
        _exp_where(carries, g[..., -1, :])[..., None] * s0
        + jnp.einsum("bhjk,bhjv->bhkv", b * tail, u)
        + jnp.einsum("bhjk,bhjv->bhkv", k * tail, v)
    )
    return s_next, y


def _factorable(k: jax.Array, b: jax.Array, log_w: jax.Array) -> jax.Array:
    """Whether `_chunk_factored` may run this chunk (r, k, a, b, log_w [B, H, C, d_k]):
    `matrix_recurrence.decay_factorable` with k and b the factors multiplied by exp(−G). RWKV-7's decays
    (log w > −0.6065 per token) always pass in chunks of up to 109 tokens in float32."""
    factor_max = jnp.maximum(jnp.max(jnp.abs(k)), jnp.max(jnp.abs(b)))
    return decay_factorable(jnp.sum(log_w, axis=-2), factor_max, k.dtype)


def _chunk_factored(s0, r, k, v, a, b, lw, seg):
    """`_chunk_pairwise` with the pair decays factored, exp(G_i − G_j) = exp(G_i) · exp(−G_j): the four
    pair matrices become one matmul of stacked decayed [2C, d_k] operands, no [C, C, d_k] tensor. Exact up to
    rounding (measured in float32: 1e-6 of the output's scale at a chunk decay of e^-66, against 2e-7
    for the token scan); callers check `_factorable` first, since exp(−G) overflows for small decays."""
    c = r.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), bool))
    same = seg[:, :, None] == seg[:, None, :]
    incl = (causal & same)[:, None]  # [B, 1, C, C]
    strict = incl & ~jnp.eye(c, dtype=bool)
    sees_prev = (seg == 0)[:, None, :, None]
    in_last = (seg == seg[:, -1:])[:, None, :, None]
    carries = (seg[:, -1] == 0)[:, None, None]
    g = jnp.cumsum(lw, axis=-2)  # G_i [B, H, C, d_k]
    g_prev = jnp.concatenate([jnp.zeros_like(g[..., :1, :]), g[..., :-1, :]], axis=-2)
    e_inv = jnp.exp(-g)
    # The chunk's small matmuls stacked two by two along the chunk axis, so each pair of products that
    # shares an operand is one matmul: rows [a ⊙ e^{G_{i-1}}; r ⊙ e^{G_i}] against [b ⊙ e^{−G}; k ⊙ e^{−G}]
    # give the four pair matrices at once, and against H_0 both reads of it: six matmuls instead of twelve
    # of half the size, the same arithmetic. RWKV-7's 4k layer trained about 7% faster so on 2 CPU cores
    # (its chunks are 16 tokens, so the loop over chunks runs many small operations; docs/performance.md).
    left = jnp.concatenate([a * jnp.exp(g_prev), r * jnp.exp(g)], axis=-2)  # [B, H, 2C, d_k]
    right = jnp.concatenate([b * e_inv, k * e_inv], axis=-2)  # [B, H, 2C, d_k]
    visible = jnp.concatenate([strict, incl], axis=-2)  # [B, 1, 2C, C]: rows a (j < i), rows r (j ≤ i)
    pairs = jnp.einsum("bhic,bhjc->bhij", left, right)  # [[A_ab, A_ak], [A'_rb, A'_rk]]
    # Where the decay is exp(G_i − G_i) = 1 (A_ab and A_ak at j = i − 1, A'_rb and A'_rk at j = i), the
    # factored product sends an O(1) gradient into G_i twice with opposite signs, which cancel only
    # after being added to the small true gradient: in float32 an absolute error of ~1e-7 · |dL/dA| in
    # d/d log w (140% of a head's largest d/d log w at log w = −16 per token in chunks of 4;
    # tests/test_rwkv7.py::test_engine_gradients_at_extreme_decays, and
    # `seqjax.scan.delta_rule._chunk_body`). Those entries keep their value and take their gradient from
    # the undecayed products (x_i·y_j plus an exact zero), so none of it reaches log w.
    prev = lambda x: jnp.concatenate([jnp.zeros_like(x[..., :1, :]), x[..., :-1, :]], axis=-2)  # x_{i-1}
    dot = lambda x, y: jnp.broadcast_to(jnp.sum(x * y, axis=-1)[..., None], (*x.shape[:-1], c))
    own = jnp.concatenate(
        [
            jnp.concatenate([dot(a, prev(b)), dot(a, prev(k))], axis=-1),
            jnp.concatenate([dot(r, b), dot(r, k)], axis=-1),
        ],
        axis=-2,
    )
    own = own - lax.stop_gradient(own)  # 0, with the undecayed products' gradients wrt a, b, r, k
    sub, eye = jnp.eye(c, k=-1, dtype=bool), jnp.eye(c, dtype=bool)
    unit = jnp.block([[sub, sub], [eye, eye]])  # [2C, 2C]: the entries whose decay is exactly 1
    pairs = jnp.where(unit, lax.stop_gradient(pairs) + own, pairs)
    pairs = jnp.where(jnp.concatenate([visible, visible], axis=-1), pairs, 0.0)
    from_s0 = jnp.einsum(
        "bhik,bhkv->bhiv", jnp.where(jnp.concatenate([sees_prev, sees_prev], axis=-2), left, 0.0), s0
    )  # [a_0 H_0; r_0 H_0]
    mm = lambda x, y: jnp.einsum("bhij,bhjv->bhiv", x, y)
    rhs = mm(pairs[..., :c, c:], v) + from_s0[..., :c, :]
    u = mm(unit_lower_inverse(-pairs[..., :c, :c]), rhs)
    uv = jnp.concatenate([u, v], axis=-2)  # [B, H, 2C, d_v]
    y = from_s0[..., c:, :] + mm(pairs[..., c:, :], uv)  # r_0 H_0 + A'_rb U + A'_rk V
    tail = _exp_where(in_last, sum_after(lw, axis=-2))  # exp(G_C − G_j), summed as in `_chunk_pairwise`
    written = jnp.concatenate([b * tail, k * tail], axis=-2)  # [B, H, 2C, d_k]
    s_next = _exp_where(carries, g[..., -1, :])[..., None] * s0 + jnp.einsum("bhjk,bhjv->bhkv", written, uv)
    return s_next, y


def _pairwise(s0, r, k, v, a, b, lw, seg):
    return _chunk_pairwise(s0, (r, k, v, a, b, lw, seg))


def _chunk(s0, chunk, seg):
    """One chunk (`chunk_loop`'s body: r, k, v, a, b, lw [B, H, C, d]) on the path `_factorable` picks."""
    _, k, _, _, b, lw = chunk
    return lax.cond(_factorable(k, b, lw), _chunk_factored, _pairwise, s0, *chunk, seg)


def _chunk_vjp(s0, chunk, seg, cts):
    """The VJP of `_chunk` on the path `_factorable` picks, in the backward pass too: only the chosen
    path's VJP runs (differentiating a `lax.cond` would carry both branches' residuals)."""

    def vjp_of(body):
        def run(*args):
            _, vjp = jax.vjp(lambda *a: body(*a, seg), *args)
            return vjp(cts)

        return run

    _, k, _, _, b, lw = chunk
    ds, *dchunk = lax.cond(_factorable(k, b, lw), vjp_of(_chunk_factored), vjp_of(_pairwise), s0, *chunk)
    return ds, tuple(dchunk)


def generalized_delta_rule_chunked(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    a: jax.Array,
    b: jax.Array,
    log_w: jax.Array,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """The chunkwise-parallel form (module docstring): per chunk and head, four [C, C] pair matrices
    from [C, C, d_k] decay tensors, one unit lower-triangular inverse for the pseudo-values, and
    matmuls against them and the chunk's start state (or, where the chunk's decays allow, the pair
    matrices as matmuls of decayed operands: module docstring); a loop over chunks carries H
    (`seqjax.scan.chunk_loop`), each chunk recomputed in the backward pass, so training stores the
    inputs and the state at each chunk start; only reverse mode is defined (`jax.jvp` needs
    `method="recurrent"`). Lengths that are not a multiple of `chunk_size` are padded
    internally with padding tokens.

    Args:
      r, k, v, a, b, log_w, s0, resets, mask: as in `generalized_delta_rule_recurrent`.
      chunk_size: tokens per chunk, C.

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.

    >>> import jax, jax.numpy as jnp
    >>> r, k, kk = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 10, 2, 4)) / 2.0
    >>> kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    >>> v, lw = jnp.ones((1, 10, 2, 3)), jnp.full((1, 10, 2, 4), -0.3)
    >>> y_c, s_c = generalized_delta_rule_chunked(r, k, v, -kk, 0.5 * kk, lw, chunk_size=4)
    >>> y_r, s_r = generalized_delta_rule_recurrent(r, k, v, -kk, 0.5 * kk, lw)
    >>> bool(jnp.allclose(y_c, y_r, atol=1e-5)), bool(jnp.allclose(s_c, s_r, atol=1e-5))
    (True, True)
    """
    if int(chunk_size) < 1:
        raise ValueError(f"generalized_delta_rule_chunked: chunk_size must be >= 1, got {chunk_size}.")
    r, k, v, a, b, log_w, s0, resets, mask = _prepare(
        "generalized_delta_rule_chunked", r, k, v, a, b, log_w, s0, resets, mask
    )
    acc = r.dtype
    batch, t, (heads, dk), dv = r.shape[:-3], r.shape[-3], r.shape[-2:], v.shape[-1]
    nb, bsz = len(batch), math.prod(batch)
    if t == 0:
        return jnp.zeros((*batch, 0, heads, dv), acc), s0
    c = min(int(chunk_size), t)
    n = -(-t // c)
    pad = n * c - t

    def chunked(x):
        # [*batch, T, ...] -> [B, n, C, ...]: a free reshape (plus a pad only when C does not divide T).
        x = x.reshape(bsz, t, *x.shape[nb + 1 :])
        if pad:  # zeros: k = a = b = 0, log w = 0 (padding tokens), and no reset
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(bsz, n, c, *x.shape[2:])

    if resets is None:
        seg = jnp.zeros((bsz, n, c), jnp.int32)
    else:
        seg = jnp.cumsum(chunked(resets).astype(jnp.int32), axis=-1)
    xs = tuple(chunked(x) for x in (r, k, v, a, b, log_w))
    ys, final = chunk_loop(_chunk, s0.reshape(bsz, heads, dk, dv), xs, seg, body_vjp=_chunk_vjp)
    ys = ys.reshape(bsz, n * c, heads, dv)[:, :t]
    if mask is not None:
        ys = jnp.where(mask.reshape(bsz, t)[..., None, None], ys, 0.0)
    return ys.reshape(*batch, t, heads, dv), final.reshape(*batch, heads, dk, dv)


def generalized_delta_rule(
    r: jax.Array,
    k: jax.Array,
    v: jax.Array,
    a: jax.Array,
    b: jax.Array,
    log_w: jax.Array,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """`generalized_delta_rule_chunked` ("chunked", and "auto") or `generalized_delta_rule_recurrent`
    ("recurrent").

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((6, 1, 2)) / 2.0
    >>> ys, s = generalized_delta_rule(x, x, jnp.ones((6, 1, 3)), -x, x, -x, method="recurrent")
    >>> ys.shape, s.shape
    ((6, 1, 3), (1, 2, 3))
    """
    if method not in METHODS:
        raise ValueError(
            f"generalized_delta_rule: unknown method {method!r}; choose one of {', '.join(METHODS)}."
        )
    args = (r, k, v, a, b, log_w, s0)
    if method == "recurrent":
        return generalized_delta_rule_recurrent(*args, resets=resets, mask=mask)
    return generalized_delta_rule_chunked(*args, resets=resets, mask=mask, chunk_size=chunk_size)
