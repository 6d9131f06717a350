"""The delta-rule engine behind DeltaNet and Gated DeltaNet: a matrix state edited by a rank-one
correction per token.

Per head, with a scalar decay α_t = exp(log α_t) ∈ (0, 1] and a write strength β_t per (batch, head,
token), in the layout of fla's `naive_recurrent_gated_delta_rule` (state S ∈ R^{d_k × d_v}):

    S'  = α_t S_{t-1}
    S_t = S' + β_t k_t (v_t − S'ᵀ k_t)ᵀ  =  α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    y_t = S_tᵀ q_t

(α ≡ 1, plain DeltaNet, when `log_alpha` is None). Two forms compute the same thing:

- `delta_rule_recurrent`: `lax.scan` over tokens carrying S; the reference, and what `step` uses.
- `delta_rule_chunked`: the chunkwise-parallel form (Yang et al. 2024, "Parallelizing Linear
  Transformers with the Delta Rule over Sequence Length"; with the decay, Yang, Kautz & Hatamizadeh
  2024, "Gated Delta Networks", §3). Inside a chunk of C tokens with b_i = Σ_{j≤i} log α_j,
  γ_i = exp(b_i) and Γ_ij = exp(b_i − b_j), the pseudo-values Δ (what each token writes, S_i =
  γ_i S_0 + Σ_{j≤i} Γ_ij k_j Δ_jᵀ) solve the unit lower-triangular system

      (I + tril(diag(β) (Γ ⊙ K Kᵀ), −1)) Δ = diag(β) (V − diag(γ) K S_0),

  i.e. Δ = U − W S_0 with the WY/UT representation T = (I + tril(..., −1))^{-1} diag(β), U = T V,
  W = T (γ ⊙ K) (`unit_lower_inverse`: recursive block inversion by matmuls). Then

      Y   = diag(γ) Q S_0 + (Q Kᵀ ⊙ Γ ⊙ causal) Δ
      S_C = γ_C S_0 + (K ⊙ Γ_{C,·})ᵀ Δ.

  A loop over chunks carries S (`seqjax.scan.chunk_loop`, with its own VJP); the backward pass
  recomputes each chunk from its inputs and start state, so training stores the inputs and one state
  per chunk, never every S_t or a [C, C] matrix per chunk.

Layout (as in `seqjax.scan.matrix_recurrence`): q, k [*batch, T, H, d_k], v [*batch, T, H, d_v], beta
and log_alpha [*batch, T, H], resets and mask [*batch, T], states [*batch, H, d_k, d_v].

Resets and padding:
- `resets[..., t]` zeroes the state before token t (α_t = 0 for the carried state). The chunked form
  gives each token a segment id within its chunk (the running count of resets): token i reads token
  j < i, and the triangular system couples them, only inside one segment; S_0 reaches only the tokens
  before the chunk's first reset. That is log α_t = −∞ at a reset without ever forming −∞ − (−∞); log α
  is zeroed at reset tokens, so its gradient there is exactly zero, as in the recurrent form.
- `mask[..., t] == False` marks padding: the token gets α = 1, β = 0 and k = 0, so the state passes
  through unchanged, and its output is 0. Padding wins over a reset at the same token.

Dtypes: the whole recurrence runs in the accumulation dtype (float32 for float32 or bfloat16 inputs,
float64 for float64 ones): the triangular inverse and the subtractive correction v − Sᵀk lose too much in
bfloat16. States and outputs are in that dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.chunk_loop import chunk_loop
from seqjax.scan.matrix_recurrence import sum_after

__all__ = [
    "METHODS",
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "delta_rule_step",
    "unit_lower_inverse",
]

Method = Literal["auto", "chunked", "recurrent"]
METHODS: tuple[str, ...] = ("auto", "chunked", "recurrent")
DEFAULT_CHUNK = 64


def delta_rule_step(
    s: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    log_alpha: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One token of S' = α S, S ← S' + β k (v − S'ᵀ k)ᵀ, y = Sᵀ q, for every head.

    Args:
      s: [*batch, H, d_k, d_v] state, in the accumulation dtype.
      q, k: [*batch, H, d_k]; v: [*batch, H, d_v]; beta: [*batch, H].
      log_alpha: [*batch, H] or None (α = 1).

    Returns:
      (S [*batch, H, d_k, d_v], y [*batch, H, d_v]), both in `s`'s dtype.

    >>> import jax.numpy as jnp
    >>> s = jnp.zeros((1, 2, 3))                       # one head, d_k = 2, d_v = 3
    >>> k = jnp.array([[1.0, 0.0]]); v = jnp.array([[1.0, 2.0, 3.0]])
    >>> s, y = delta_rule_step(s, k, k, v, jnp.ones((1,)))
    >>> y                                              # β = 1 writes v under the unit key exactly
    Array([[1., 2., 3.]], dtype=float32)
    """
    acc = s.dtype
    q, k, v, beta = (a.astype(acc) for a in (q, k, v, beta))
    if log_alpha is not None:
        s = jnp.exp(log_alpha.astype(acc))[..., None, None] * s
    old = jnp.einsum("...k,...kv->...v", k, s)  # what the memory holds under k
    s = s + k[..., :, None] * (beta[..., None] * (v - old))[..., None, :]
    y = jnp.einsum("...k,...kv->...v", q, s)
    return s, y


# --------------------------------------------------------------------------------------------------
# Validation and flags
# --------------------------------------------------------------------------------------------------
def _check_inputs(fn, q, k, v, beta, log_alpha, s0, resets, mask):
    if q.ndim < 3:
        raise ValueError(f"{fn}: `q` has shape {q.shape}; expected [*batch, time, heads, d_k] (rank >= 3).")
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
    if k.shape != q.shape:
        raise ValueError(
            f"{fn}: `k` has shape {k.shape} but `q` has shape {q.shape}; both are [*batch, time, heads, d_k]."
        )
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{fn}: `v` has shape {v.shape}, expected {q.shape[:-1]} + (d_v,) to match `q`.")
    for name, x in (("beta", beta), ("log_alpha", log_alpha)):
        if x is not None and x.shape != q.shape[:-1]:
            raise ValueError(
                f"{fn}: `{name}` has shape {x.shape}, expected {q.shape[:-1]} ([*batch, time, heads], one "
                f"scalar per head and token)."
            )
    batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
    if s0 is not None and s0.shape != (*batch, heads, dk, dv):
        raise ValueError(f"{fn}: `s0` has shape {s0.shape}, expected {(*batch, heads, dk, dv)}.")
    lead = q.shape[:-2]
    for name, flags in (("resets", resets), ("mask", mask)):
        if flags is not None:
            if flags.shape != lead:
                raise ValueError(f"{fn}: `{name}` has shape {flags.shape}, expected {lead} ([*batch, time]).")
            if flags.dtype != jnp.bool_:
                raise TypeError(f"{fn}: `{name}` must be boolean, got dtype {flags.dtype}.")


def _prepare(fn, q, k, v, beta, log_alpha, s0, resets, mask):
    """Arrays in the accumulation dtype, padding folded in (k = 0, β = 0, log α = 0), log α zeroed at
    resets (the state it would scale is discarded), resets dropped on padding."""
    q, k, v, beta = (jnp.asarray(a) for a in (q, k, v, beta))
    log_alpha = None if log_alpha is None else jnp.asarray(log_alpha)
    s0 = None if s0 is None else jnp.asarray(s0)
    resets = None if resets is None else jnp.asarray(resets)
    mask = None if mask is None else jnp.asarray(mask)
    _check_inputs(fn, q, k, v, beta, log_alpha, s0, resets, mask)
    acc = accumulation_dtype(jnp.result_type(q, k, v, beta))
    q, k, v, beta = (a.astype(acc) for a in (q, k, v, beta))
    batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
    s0 = jnp.zeros((*batch, heads, dk, dv), acc) if s0 is None else s0.astype(acc)
    if log_alpha is not None:
        log_alpha = log_alpha.astype(acc)
    if mask is not None:
        k = jnp.where(mask[..., None, None], k, 0.0)
        beta = jnp.where(mask[..., None], beta, 0.0)
        if resets is not None:
            resets = resets & mask
    if log_alpha is not None:
        keep = mask
        if resets is not None:
            keep = ~resets if keep is None else keep & ~resets
        if keep is not None:
            log_alpha = jnp.where(keep[..., None], log_alpha, 0.0)
    return q, k, v, beta, log_alpha, s0, resets, mask


# --------------------------------------------------------------------------------------------------
# The recurrent form
# --------------------------------------------------------------------------------------------------
def delta_rule_recurrent(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    log_alpha: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The reference: `lax.scan` over tokens carrying S, with autodiff through the scan.

    Args:
      q, k: [*batch, T, H, d_k]; v: [*batch, T, H, d_v]; beta: [*batch, T, H] (β, not a logit).
      log_alpha: [*batch, T, H], log α_t ≤ 0 and finite; None means α ≡ 1 (DeltaNet).
      s0: [*batch, H, d_k, d_v] state before the first token; zeros if None.
      resets: [*batch, T] bool, zero the state before token t.
      mask: [*batch, T] bool, False = padding (state unchanged, output 0).

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.

    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((2, 7, 3, 4)) / 2.0; v = jnp.ones((2, 7, 3, 5))
    >>> ys, s = delta_rule_recurrent(q, k, v, jnp.full((2, 7, 3), 0.5))
    >>> ys.shape, s.shape
    ((2, 7, 3, 5), (2, 3, 4, 5))
    """
    q, k, v, beta, log_alpha, s0, resets, mask = _prepare(
        "delta_rule_recurrent", q, k, v, beta, log_alpha, s0, resets, mask
    )
    nb = q.ndim - 3
    tm = lambda x: None if x is None else jnp.moveaxis(x, nb, 0)

    def body(s, inp):
        q_t, k_t, v_t, b_t, la_t, reset_t, mask_t = inp
        prev = s
        if reset_t is not None:
            prev = jnp.where(reset_t[..., None, None, None], 0.0, s)
        new, y = delta_rule_step(prev, q_t, k_t, v_t, b_t, la_t)
        if mask_t is not None:
            new = jnp.where(mask_t[..., None, None, None], new, s)
            y = jnp.where(mask_t[..., None, None], y, 0.0)
        return new, y

    final, ys = lax.scan(body, s0, tuple(map(tm, (q, k, v, beta, log_alpha, resets, mask))))
    return jnp.moveaxis(ys, 0, nb), final


# --------------------------------------------------------------------------------------------------
# The chunked form
# --------------------------------------------------------------------------------------------------
#: Diagonal blocks up to this size are inverted by forward substitution (one row per step, vectorised
#: over every block), larger ones by doubling. Measured on one CPU core for 4,096 matrices of 64 × 64:
#: 183 ms with a base of 16 against 221 ms doubling from 1 × 1 blocks and 314 ms for the earlier
#: three-operand einsum form.
_SUBSTITUTION_BLOCK = 16


def _unit_lower_inverse_forward(a: jax.Array) -> jax.Array:
    """(I + a)⁻¹ for strictly lower-triangular a [..., C, C] (values only; `unit_lower_inverse` adds the
    derivative rule)."""
    c = a.shape[-1]
    size = 1 << max(c - 1, 0).bit_length()
    lead = a.shape[:-2]
    m = jnp.pad(a, [(0, 0)] * len(lead) + [(0, size - c)] * 2)  # strictly lower, padded to a power of 2
    base = min(size, _SUBSTITUTION_BLOCK)
    nb = size // base
    # The diagonal blocks of size `base`, inverted by forward substitution: row i of (I + N)⁻¹ is
    # e_i − N[i, :i] · rows[:i]. Substitution only adds products of already-inverted rows, so it keeps
    # the stability of the triangular solve (a Neumann series would sum powers of N that grow
    # combinatorially when keys are nearly parallel, and cancel in float32).
    n_blocks = jnp.moveaxis(jnp.diagonal(m.reshape(*lead, nb, base, nb, base), axis1=-4, axis2=-2), -1, -3)
    inv = jnp.broadcast_to(jnp.eye(base, dtype=a.dtype), n_blocks.shape)
    for i in range(1, base):
        row = inv[..., i, :] - jnp.einsum("...j,...jk->...k", n_blocks[..., i, :i], inv[..., :i, :])
        inv = inv.at[..., i, :].set(row)
    # Doubling: [[M₁₁, 0], [M₂₁, M₂₂]]⁻¹ = [[M₁₁⁻¹, 0], [−M₂₂⁻¹ M₂₁ M₁₁⁻¹, M₂₂⁻¹]].
    s = base
    while s < size:
        nb = size // (2 * s)
        blocks = jnp.diagonal(m.reshape(*lead, nb, 2 * s, nb, 2 * s), axis1=-4, axis2=-2)
        m21 = jnp.moveaxis(blocks, -1, -3)[..., s:, :s]
        i11, i22 = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        i21 = -(i22 @ (m21 @ i11))
        top = jnp.concatenate([i11, jnp.zeros_like(i11)], axis=-1)
        bottom = jnp.concatenate([i21, i22], axis=-1)
        inv = jnp.concatenate([top, bottom], axis=-2)  # [..., nb, 2s, 2s]
        s *= 2
    return inv[..., 0, :c, :c]


@jax.custom_jvp
def unit_lower_inverse(a: jax.Array) -> jax.Array:
    """(I + A)⁻¹ for strictly lower-triangular a [..., C, C], with matmuls only.

    Diagonal blocks of up to 16 × 16 are inverted by forward substitution, then doubled:
    [[M₁₁, 0], [M₂₁, M₂₂]]⁻¹ = [[M₁₁⁻¹, 0], [−M₂₂⁻¹ M₂₁ M₁₁⁻¹, M₂₂⁻¹]] gives the inverses of the diagonal
    blocks of twice the size — log₂(C / 16) levels of batched matmuls. C is padded to a power of two,
    which leaves the top-left inverse unchanged. (LAPACK's batched `trsm`, which
    `jax.scipy.linalg.solve_triangular` calls on CPU, deadlocked in XLA's thread pool on a 2-core host.)

    Derivative: with T = (I + A)⁻¹, dT = −T · tril(dA, −1) · T (entries of `a` on or above the diagonal
    are ignored, so their derivative is zero). Defined as a JVP, so forward mode works and reverse mode
    is its transpose: two [C, C] matmuls against the saved T, instead of differentiating every level of
    the construction (on one CPU core, 4,096 matrices of 64 × 64: 0.59 s against 1.06 s forward +
    backward).

    >>> import jax.numpy as jnp
    >>> a = jnp.tril(jnp.full((3, 3), 0.5), -1)
    >>> bool(jnp.allclose(unit_lower_inverse(a) @ (jnp.eye(3) + a), jnp.eye(3)))
    True
    """
    return _unit_lower_inverse_forward(a)


@unit_lower_inverse.defjvp
def _unit_lower_inverse_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    t = unit_lower_inverse(a)
    c = a.shape[-1]
    da = jnp.where(jnp.tri(c, k=-1, dtype=bool), da, jnp.zeros((), da.dtype))
    return t, -(t @ (da @ t))


def _chunk_body(s0, chunk, seg):
    """One chunk for all batch rows and heads at once, in the accumulation dtype (`chunk_loop`'s body).

    s0 [B, H, d_k, d_v]; q, k [B, H, C, d_k]; v [B, H, C, d_v]; beta, la [B, H, C] (la may be None);
    seg [B, C] int32, the segment id of each token within the chunk.
    """
    q, k, v, beta, la = chunk
    c = q.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), bool))
    same = seg[:, :, None] == seg[:, None, :]  # [B, C, C]
    visible = (causal & same)[:, None]  # [B, 1, C, C]: i reads j (j ≤ i, no reset in (j, i])
    strict = visible & ~jnp.eye(c, dtype=bool)
    sees_prev = (seg == 0)[:, None, :]  # [B, 1, C]: no reset yet in this chunk
    in_last = (seg == seg[:, -1:])[:, None, :]  # [B, 1, C]: tokens whose writes reach the chunk's end
    carries = (seg[:, -1] == 0)[:, None]  # [B, 1]: S_0 survives the chunk
    if la is None:
        decay = visible.astype(q.dtype)
        gamma = sees_prev.astype(q.dtype)  # γ_i = 1 where S_0 is seen, else 0
        k_scale = in_last.astype(q.dtype)
        carry_scale = carries.astype(q.dtype)
    else:
        b = jnp.cumsum(la, axis=-1)  # [B, H, C], non-increasing
        # The inner `where` keeps exp's argument ≤ 0 on pairs that are not visible too, so neither the
        # value nor the gradient can overflow into inf · 0 = NaN. The diagonal Γ_ii = 1 is a constant,
        # not exp(b_i − b_i), and a write's decay to the chunk's end is exp(Σ_{m>j} log α_m), summed from
        # its own tokens (0 for the last), not exp(b_C − b_j): through b_i − b_i (and b_C − b_j where only
        # padding, log α = 0, follows j: the end of a sequence the chunk size does not divide) O(1)
        # gradients reach b twice with opposite signs and cancel only after being added to the small true
        # gradient, which in float32 left an absolute error of ~1e-7 · |dL/dΓ| in d/d log α (at α = 1e-6
        # per token 6% of the largest d/d log α, at α = e^-30 more than the gradient itself;
        # tests/test_delta_net.py::test_extreme_gates_over_2048_tokens and
        # test_engine_gradients_at_extreme_decays_with_trailing_padding).
        diff = b[..., :, None] - b[..., None, :]
        decay = jnp.where(strict, jnp.exp(jnp.where(strict, diff, 0.0)), visible.astype(q.dtype))
        gamma = jnp.where(sees_prev, jnp.exp(b), 0.0)
        k_scale = jnp.where(in_last, jnp.exp(sum_after(la)), 0.0)
        carry_scale = jnp.where(carries, jnp.exp(b[..., -1]), 0.0)
    kk = jnp.einsum("bhik,bhjk->bhij", k, k)
    a = jnp.where(strict, beta[..., :, None] * decay * kk, 0.0)
    # WY/UT: T = (I + A)⁻¹ diag(β), U = T V, W = T (γ ⊙ K).
    t_mat = unit_lower_inverse(a) * beta[..., None, :]
    u = jnp.einsum("bhij,bhjv->bhiv", t_mat, v)
    w = jnp.einsum("bhij,bhjk->bhik", t_mat, gamma[..., None] * k)
    delta = u - jnp.einsum("bhik,bhkv->bhiv", w, s0)  # the pseudo-values Δ
    scores = jnp.einsum("bhik,bhjk->bhij", q, k) * decay
    y = gamma[..., None] * jnp.einsum("bhik,bhkv->bhiv", q, s0) + jnp.einsum("bhij,bhjv->bhiv", scores, delta)
    s_next = carry_scale[..., None, None] * s0 + jnp.einsum("bhjk,bhjv->bhkv", k * k_scale[..., None], delta)
    return s_next, y


def delta_rule_chunked(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    log_alpha: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """The chunkwise-parallel form with the WY/UT representation (module docstring).

    Each chunk inverts one unit lower-triangular [C, C] matrix per head for its pseudo-values, computes
    its outputs with two matmuls against them and S_prev, and passes S on; a loop over chunks carries
    S (`seqjax.scan.chunk_loop`: the inputs stay in their [B, T, H, d] layout). The backward pass
    recomputes each chunk from its inputs and start state, so training stores the inputs and the state
    at each chunk start; only reverse mode is defined (`jax.jvp` needs `method="recurrent"`). Work is
    O(T · C · (C + d_k + d_v) + T · d_k · d_v) per head. Lengths that are not a multiple of `chunk_size`
    are padded internally with padding tokens.

    Args:
      q, k, v, beta, log_alpha, s0, resets, mask: as in `delta_rule_recurrent`.
      chunk_size: tokens per chunk, C.

    Returns:
      ys [*batch, T, H, d_v] and the final state [*batch, H, d_k, d_v], in the accumulation dtype.

    >>> import jax, jax.numpy as jnp
    >>> q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 10, 2, 4)) / 2.0
    >>> v, beta = jnp.ones((1, 10, 2, 3)), jnp.full((1, 10, 2), 0.5)
    >>> y_c, s_c = delta_rule_chunked(q, k, v, beta, chunk_size=4)
    >>> y_r, s_r = delta_rule_recurrent(q, k, v, beta)
    >>> bool(jnp.allclose(y_c, y_r, atol=1e-5)), bool(jnp.allclose(s_c, s_r, atol=1e-5))
    (True, True)
    """
    if int(chunk_size) < 1:
        raise ValueError(f"delta_rule_chunked: chunk_size must be >= 1, got {chunk_size}.")
    q, k, v, beta, log_alpha, s0, resets, mask = _prepare(
        "delta_rule_chunked", q, k, v, beta, log_alpha, s0, resets, mask
    )
    acc = q.dtype
    batch, t, (heads, dk), dv = q.shape[:-3], q.shape[-3], q.shape[-2:], v.shape[-1]
    nb, bsz = len(batch), math.prod(batch)
    c = min(int(chunk_size), t) if t > 0 else 1
    n = -(-t // c)
    pad = n * c - t
    s_flat = s0.reshape(bsz, heads, dk, dv)
    if n == 0:
        return jnp.zeros((*batch, 0, heads, dv), acc), s0

    def chunked(x):
        # [*batch, T, ...] -> [B, n, C, ...]: a free reshape (plus a pad only when C does not divide T).
        x = x.reshape(bsz, t, *x.shape[nb + 1 :])
        if pad:  # zeros: k = β = 0, log α = 0 (padding tokens), and segment 0 for the flags below
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(bsz, n, c, *x.shape[2:])

    if resets is None:
        seg = jnp.zeros((bsz, n, c), jnp.int32)
    else:
        seg = jnp.cumsum(chunked(resets).astype(jnp.int32), axis=-1)
    la = None if log_alpha is None else chunked(log_alpha)
    xs = (chunked(q), chunked(k), chunked(v), chunked(beta), la)
    ys, final = chunk_loop(_chunk_body, s_flat, xs, seg)
    ys = ys.reshape(bsz, n * c, heads, dv)[:, :t]
    if mask is not None:
        ys = jnp.where(mask.reshape(bsz, t)[..., None, None], ys, 0.0)
    return ys.reshape(*batch, t, heads, dv), final.reshape(*batch, heads, dk, dv)


def delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    log_alpha: jax.Array | None = None,
    s0: jax.Array | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """`delta_rule_chunked` ("chunked", and "auto") or `delta_rule_recurrent` ("recurrent").

    "auto" is the chunked form on every platform: matmuls over C tokens instead of T rank-one updates,
    and O(T / C) stored states instead of O(T).

    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((6, 1, 2)) / 2.0
    >>> ys, s = delta_rule(q, k, jnp.ones((6, 1, 3)), jnp.ones((6, 1)), method="recurrent")
    >>> ys.shape, s.shape
    ((6, 1, 3), (1, 2, 3))
    """
    if method not in METHODS:
        raise ValueError(f"delta_rule: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "recurrent":
        return delta_rule_recurrent(q, k, v, beta, log_alpha, s0, resets=resets, mask=mask)
    return delta_rule_chunked(q, k, v, beta, log_alpha, s0, resets=resets, mask=mask, chunk_size=chunk_size)
