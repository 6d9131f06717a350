"""The mLSTM engine (xLSTM, Beck et al. 2024): a matrix memory with exponential input gates, a sigmoid
forget gate and the max-stabilised normaliser.

Per head, with the input-gate pre-activation ĩ_t (the log of the exponential input gate), the forget-gate
pre-activation f̃_t and log f_t = log σ(f̃_t), the stabilised recurrence of the authors'
`recurrent_step_stabilized_simple` (xlstm, `xlstm/blocks/mlstm/backends.py`):

    m_t = max(log f_t + m_{t−1}, ĩ_t)                                     the stabiliser
    f'_t = exp(log f_t + m_{t−1} − m_t) ;  i'_t = exp(ĩ_t − m_t)          both ≤ 1
    C_t = f'_t C_{t−1} + i'_t k̂_t v_tᵀ ;  n_t = f'_t n_{t−1} + i'_t k̂_t    k̂_t = k_t / √d_k
    h_t = C_tᵀ q_t / (max(|n_tᵀ q_t|, exp(−m_t)) + eps)

(C ∈ R^{d_k × d_v}, n ∈ R^{d_k}, m a scalar per head.) (C, n, m) stands for the unstabilised
C̃ = e^m C, ñ = e^m n, so h_t = C̃ᵀq / (max(|ñᵀq|, 1) + eps e^{m_t}): the stabiliser changes nothing but
the eps term, which is why every form here computes exactly the recurrent m_t.

Two forms compute the same function:

- `mlstm_recurrent`: `lax.scan` over tokens carrying (C, n, m); the reference, and what `step` uses.
- `mlstm_chunked`: the stabilised chunkwise form. Inside a chunk of L tokens, with the log-gate
  sums F_ij = Σ_{j<l≤i} log f_l and b_i = Σ_{l≤i} log f_l:

      log D_ij = F_ij + ĩ_j  (j ≤ i)           the intra-chunk gate matrix
      m_i      = max(m_prev + b_i, max_j log D_ij)                         per row: the recurrent m_i
      D'_ij    = exp(log D_ij − m_i) ;  w_i = exp(m_prev + b_i − m_i)      all ≤ 1
      num_i    = Σ_j D'_ij (q_i·k̂_j) v_j + w_i C_prevᵀ q_i ;  den_i = Σ_j D'_ij (q_i·k̂_j) + w_i n_prevᵀ q_i
      h_i      = num_i / (max(|den_i|, exp(−m_i)) + eps)

  and the state passed to the next chunk is the last row's: m_next = m_L, C_next = w_L C_prev +
  Σ_j D'_Lj k̂_j v_jᵀ, n_next = w_L n_prev + Σ_j D'_Lj k̂_j (the inter-chunk state passing of the
  authors' `chunkwise_simple` and of mlstm_kernels' `mlstm_chunkwise__recurrent_fw_C`). n rides along
  as one more column of C (and den as one more column of the values), so one matmul gives both. F_ij is
  b_i − b_j corrected by the rounding error of the cumulative sums (`compensated_cumsum`): after a run
  of forget gates near 0, |b| reaches thousands within a chunk while the F_ij that carry weight are
  small, and the plain difference would lose float32 digits there. A `lax.scan` over chunks carries
  (C, n, m); its body is rematerialised (`jax.checkpoint`), so autodiff stores the inputs and one state
  per chunk, never a state per token or an [L, L] matrix per chunk.

Layout (as in `seqjax.scan.matrix_recurrence`): q, k [*batch, T, H, d_k], v [*batch, T, H, d_v], igate
and fgate [*batch, T, H] (pre-activations), resets and mask [*batch, T]; the memory is `MLSTMMemory(c
[*batch, H, d_k, d_v], n [*batch, H, d_k], m [*batch, H])`.

Resets and padding:
- `resets[..., t]` returns the memory to its initial value (C = 0, n = 0, m = 0) before token t, as a
  reset does for every seqjax cell. The chunked form gives each token a segment id within its chunk:
  token i reads token j only inside one segment, m_prev reaches only the rows before the chunk's first
  reset, and a row after a reset at r starts from m = 0 decayed by the forget gates since r
  (Σ_{r≤l≤i} log f_l), exactly as the recurrence does. Entries of log D that a row does not read are
  −∞ (exp gives 0, and its gradient 0 · finite), never a −∞ log-gate in a sum.
- `mask[..., t] == False` marks padding: the memory passes through unchanged (log f = 0, and the token
  is not written) and the output is 0. Padding wins over a reset at the same token.

Gradients are the exact derivatives of the computed function, the stabiliser included (autodiff through
the maxima); mlstm_kernels' hand-written backward drops the denominator's gradient instead, which the
per-head norm after the cell makes harmless. Dtypes: the whole recurrence runs in the accumulation dtype
(float32 for float32 or bfloat16 inputs, float64 for float64 ones); memories and outputs are in it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.matrix_recurrence import sum_after

__all__ = [
    "DEFAULT_CHUNK",
    "EPS",
    "METHODS",
    "MLSTMMemory",
    "compensated_cumsum",
    "mlstm",
    "mlstm_chunked",
    "mlstm_recurrent",
    "mlstm_step",
]

Method = Literal["auto", "chunked", "recurrent"]
METHODS: tuple[str, ...] = ("auto", "chunked", "recurrent")
DEFAULT_CHUNK = 64
#: The authors' eps in the denominator max(|nᵀq|, exp(−m)) + eps.
EPS = 1e-6


class MLSTMMemory(NamedTuple):
    """The mLSTM memory of every head: the stabilised matrix memory, normaliser and stabiliser."""

    c: jax.Array  # [*batch, H, d_k, d_v]
    n: jax.Array  # [*batch, H, d_k]
    m: jax.Array  # [*batch, H]


def mlstm_step(
    memory: MLSTMMemory,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    *,
    eps: float = EPS,
) -> tuple[MLSTMMemory, jax.Array]:
    """One token of the stabilised mLSTM recurrence (module docstring) for every head.

    Args:
      memory: `MLSTMMemory` (c [*batch, H, d_k, d_v], n [*batch, H, d_k], m [*batch, H]), in the
        accumulation dtype.
      q, k: [*batch, H, d_k]; v: [*batch, H, d_v]; igate, fgate: [*batch, H] pre-activations.
      eps: added to the denominator.

    Returns:
      (the new memory, h [*batch, H, d_v]), in the memory's dtype.

    >>> import jax.numpy as jnp
    >>> memory = MLSTMMemory(jnp.zeros((1, 4, 2)), jnp.zeros((1, 4)), jnp.zeros((1,)))
    >>> q = k = jnp.array([[2.0, 0.0, 0.0, 0.0]]); v = jnp.array([[1.0, -1.0]])
    >>> memory, h = mlstm_step(memory, q, k, v, jnp.array([3.0]), jnp.array([0.0]), eps=0.0)
    >>> h, memory.m                                     # one token: h = v; m = max(log σ(0) + 0, 3)
    (Array([[ 1., -1.]], dtype=float32), Array([3.], dtype=float32))
    """
    c, n, m = memory
    acc = c.dtype
    q, k, v, igate, fgate = (jnp.asarray(a).astype(acc) for a in (q, k, v, igate, fgate))
    log_f = jax.nn.log_sigmoid(fgate)
    m_new = jnp.maximum(log_f + m, igate)
    f_act = jnp.exp(log_f + m - m_new)
    i_act = jnp.exp(igate - m_new)
    k = k * k.shape[-1] ** -0.5
    c = f_act[..., None, None] * c + i_act[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = f_act[..., None] * n + i_act[..., None] * k
    num = jnp.einsum("...k,...kv->...v", q, c)
    den = jnp.einsum("...k,...k->...", q, n)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_new)) + eps)[..., None]
    return MLSTMMemory(c, n, m_new), h


# --------------------------------------------------------------------------------------------------
# Validation and flags
# --------------------------------------------------------------------------------------------------
def _prepare(fn, q, k, v, igate, fgate, memory, resets, mask):
    """Arrays in the accumulation dtype, checked; the memory (zeros if None); resets dropped on padding."""
    q, k, v, igate, fgate = (jnp.asarray(a) for a in (q, k, v, igate, fgate))
    if q.ndim < 3:
        raise ValueError(f"{fn}: `q` has shape {q.shape}; expected [*batch, time, heads, d_k] (rank >= 3).")
    for name, x in (("q", q), ("k", k), ("v", v), ("igate", igate), ("fgate", fgate)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
    if k.shape != q.shape:
        raise ValueError(
            f"{fn}: `k` has shape {k.shape} but `q` has shape {q.shape}; both are [*batch, time, heads, d_k]."
        )
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"{fn}: `v` has shape {v.shape}, expected {q.shape[:-1]} + (d_v,) to match `q`.")
    for name, x in (("igate", igate), ("fgate", fgate)):
        if x.shape != q.shape[:-1]:
            raise ValueError(
                f"{fn}: `{name}` has shape {x.shape}, expected {q.shape[:-1]} ([*batch, time, heads], one "
                f"pre-activation per head and token)."
            )
    acc = accumulation_dtype(jnp.result_type(q, k, v, igate, fgate))
    batch, (heads, dk), dv = q.shape[:-3], q.shape[-2:], v.shape[-1]
    expected = MLSTMMemory((*batch, heads, dk, dv), (*batch, heads, dk), (*batch, heads))
    if memory is None:
        memory = MLSTMMemory(*(jnp.zeros(shape, acc) for shape in expected))
    else:
        memory = MLSTMMemory(*(jnp.asarray(a) for a in memory))
        for name, got, want in zip(MLSTMMemory._fields, memory, expected, strict=True):
            if got.shape != want:
                raise ValueError(f"{fn}: `memory.{name}` has shape {got.shape}, expected {want}.")
        memory = MLSTMMemory(*(a.astype(acc) for a in memory))
    lead = q.shape[:-2]
    checked = []
    for name, flags in (("resets", resets), ("mask", mask)):
        if flags is not None:
            flags = jnp.asarray(flags)
            if flags.shape != lead:
                raise ValueError(f"{fn}: `{name}` has shape {flags.shape}, expected {lead} ([*batch, time]).")
            if flags.dtype != jnp.bool_:
                raise TypeError(f"{fn}: `{name}` must be boolean, got dtype {flags.dtype}.")
        checked.append(flags)
    resets, mask = checked
    if resets is not None and mask is not None:
        resets = resets & mask
    q, k, v, igate, fgate = (a.astype(acc) for a in (q, k, v, igate, fgate))
    return q, k, v, igate, fgate, memory, resets, mask


# --------------------------------------------------------------------------------------------------
# The recurrent form
# --------------------------------------------------------------------------------------------------
def mlstm_recurrent(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    memory: MLSTMMemory | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    eps: float = EPS,
) -> tuple[jax.Array, MLSTMMemory]:
    """The reference: `lax.scan` of `mlstm_step` over tokens, with autodiff through the scan.

    Args:
      q, k: [*batch, T, H, d_k]; v: [*batch, T, H, d_v]; igate, fgate: [*batch, T, H] pre-activations.
      memory: `MLSTMMemory` before the first token; zeros if None.
      resets: [*batch, T] bool, return to the zero memory before token t.
      mask: [*batch, T] bool, False = padding (memory unchanged, output 0).
      eps: added to the denominator.

    Returns:
      hs [*batch, T, H, d_v] and the final memory, in the accumulation dtype.

    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((2, 7, 3, 4)); v = jnp.ones((2, 7, 3, 5)); gates = jnp.zeros((2, 7, 3))
    >>> hs, memory = mlstm_recurrent(q, k, v, gates, gates)
    >>> hs.shape, memory.c.shape, memory.n.shape, memory.m.shape
    ((2, 7, 3, 5), (2, 3, 4, 5), (2, 3, 4), (2, 3))
    """
    q, k, v, igate, fgate, memory, resets, mask = _prepare(
        "mlstm_recurrent", q, k, v, igate, fgate, memory, resets, mask
    )
    nb = q.ndim - 3
    tm = lambda x: None if x is None else jnp.moveaxis(x, nb, 0)

    def body(mem, inp):
        q_t, k_t, v_t, i_t, f_t, reset_t, mask_t = inp
        prev = mem
        if reset_t is not None:
            prev = MLSTMMemory(*(jnp.where(_expand(reset_t, x), jnp.zeros((), x.dtype), x) for x in mem))
        new, h = mlstm_step(prev, q_t, k_t, v_t, i_t, f_t, eps=eps)
        if mask_t is not None:
            new = MLSTMMemory(*(jnp.where(_expand(mask_t, a), a, b) for a, b in zip(new, mem, strict=True)))
            h = jnp.where(mask_t[..., None, None], h, jnp.zeros((), h.dtype))
        return new, h

    final, hs = lax.scan(body, memory, tuple(map(tm, (q, k, v, igate, fgate, resets, mask))))
    return jnp.moveaxis(hs, 0, nb), final


def _expand(flags: jax.Array, like: jax.Array) -> jax.Array:
    return flags.reshape(flags.shape + (1,) * (like.ndim - flags.ndim))


# --------------------------------------------------------------------------------------------------
# The chunked form
# --------------------------------------------------------------------------------------------------
def compensated_cumsum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cumulative sum b of x over its last axis as b + comp, comp the rounding error of b.

    b is `jnp.cumsum`'s float result; comp, the error of every partial sum (each step's exact error by
    Knuth's TwoSum, summed), is small, so b_i − b_j + (comp_i − comp_j) gives Σ_{j<l≤i} x_l to a
    rounding error of the size of that sum, where b_i − b_j alone errs by the size of b. For the log
    forget gates of a chunk that matters: after a run of forget gates near 0, |b| reaches thousands
    while the sums that carry weight are small.

    >>> import jax.numpy as jnp
    >>> x = jnp.array([-1e4, -1e-3, -1e-3, -1e-3])
    >>> b, comp = compensated_cumsum(x)
    >>> float(b[3] - b[0]), round(float(b[3] - b[0] + comp[3] - comp[0]), 9)   # the true sum is -0.003
    (-0.0029296875, -0.003)
    """
    b = jnp.cumsum(x, axis=-1)
    prev = jnp.concatenate([jnp.zeros_like(b[..., :1]), b[..., :-1]], axis=-1)
    s = prev + x
    bb = s - prev
    err = (prev - (s - bb)) + (x - bb)  # s + err == prev + x exactly (TwoSum)
    # prev + x − b exactly: s and b are rounded partial sums of the same terms, so s − b is exact.
    return b, jnp.cumsum((s - b) + err, axis=-1)


def _chunk_body(eps: float, has_resets: bool, has_mask: bool, memory, chunk):
    """One chunk for all batch rows and heads at once, in the accumulation dtype.

    memory: (c0 [B, H, d_k, d_v + 1], the memory C with n as its last column; m0 [B, H]);
    q, k [B, L, H, d_k]; v [B, L, H, d_v + 1] (a column of ones last: it computes the denominator);
    ig, lf [B, L, H] (ĩ and log f, 0 at padding); seg [B, L] int32 (segment id within the chunk);
    rs, valid [B, L] bool (a reset opens a segment at the token; the token is not padding).
    Returns the memory after the chunk and h [B, L, H, d_v].
    """
    c0, m0 = memory
    # The chunk arrives time-major within the batch row ([B, L, H, ...], a slice of the inputs' own
    # layout); heads go first here, where the chunk is small.
    q, k, v, ig, lf = (jnp.swapaxes(a, 1, 2) for a in chunk[:5])
    seg, rs, valid = chunk[5:]
    size = q.shape[-2]
    k = k * k.shape[-1] ** -0.5
    b, comp = compensated_cumsum(lf)  # [B, H, L]
    f_sums = (b[..., :, None] - b[..., None, :]) + (comp[..., :, None] - comp[..., None, :])  # F_ij
    # F_ii = 0 is a constant, not b_i − b_i, and the last row (what reaches the next chunk's memory) is
    # summed from its own tokens, F_Lj = Σ_{l>j} log f_l, not b_L − b_j: through b_i − b_i (and b_L − b_j
    # where only padding, log f = 0, follows j) an O(1) gradient reaches b twice with opposite signs and
    # cancels only after being added to the small true gradient, which in float32 left an absolute error
    # of ~1e-7 · |dL/dF| in d/d log f (with f ≈ 1e-6, 0.2% of that head's largest d/df̃, with f ≈ e^-30
    # 40%; tests/test_xlstm.py::test_chunked_gradients_at_extreme_forget_gates, and
    # `seqjax.scan.delta_rule._chunk_body`).
    f_sums = jnp.where(jnp.eye(size, dtype=bool), 0.0, f_sums)
    f_sums = f_sums.at[..., -1, :].set(sum_after(lf))
    visible = jnp.tril(jnp.ones((size, size), bool))[None]  # [B | 1, L, L]: row i reads token j
    if has_resets:
        visible = visible & (seg[:, :, None] == seg[:, None, :])  # no reset in (j, i]
    if has_mask:
        visible = visible & valid[:, None, :]
    log_d = jnp.where(visible[:, None], f_sums + ig[..., None, :], -jnp.inf)
    start = m0[..., None] + (b + comp)  # the memory at the chunk start, decayed to row i
    if has_resets:
        sees_prev = (seg == 0)[:, None, :]  # [B, 1, L]: no reset yet in this chunk
        # After a reset at r the recurrence restarts from m = 0, decayed by log f_r, ..., log f_i.
        opens = jnp.tril(jnp.ones((size, size), bool)) & (seg[:, :, None] == seg[:, None, :]) & rs[:, None, :]
        since_reset = jnp.sum(jnp.where(opens[:, None], f_sums + lf[..., None, :], 0.0), axis=-1)
        start = jnp.where(sees_prev, start, since_reset)
    m = jnp.maximum(start, jnp.max(log_d, axis=-1))  # [B, H, L]: the recurrent m of every row
    d = jnp.exp(log_d - m[..., None])  # exp(−inf) = 0 where j is not visible: no NaN, value or gradient
    if has_resets:
        # The inner `where` keeps exp's argument ≤ 0 on rows that do not see the previous memory.
        w = jnp.where(sees_prev, jnp.exp(jnp.where(sees_prev, start - m, 0.0)), 0.0)
    else:
        w = jnp.exp(start - m)
    scores = jnp.einsum("bhik,bhjk->bhij", q, k) * d
    out = jnp.einsum("bhij,bhjv->bhiv", scores, v) + w[..., None] * jnp.einsum("bhik,bhkv->bhiv", q, c0)
    h = out[..., :-1] / (jnp.maximum(jnp.abs(out[..., -1]), jnp.exp(-m)) + eps)[..., None]
    c_next = w[..., -1, None, None] * c0 + jnp.einsum("bhjk,bhjv->bhkv", d[..., -1, :, None] * k, v)
    return (c_next, m[..., -1]), jnp.swapaxes(h, 1, 2)


def mlstm_chunked(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    memory: MLSTMMemory | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    eps: float = EPS,
) -> tuple[jax.Array, MLSTMMemory]:
    """The stabilised chunkwise-parallel form (module docstring); same arguments and results as
    `mlstm_recurrent`, plus `chunk_size`.

    Each chunk forms its [L, L] gate matrix from the log-gate sums, stabilises every row by the
    recurrent m of that token, and computes its outputs with two matmuls against the values and the
    memory at the chunk start; a `lax.scan` over chunks carries (C, n, m). The chunk body is
    rematerialised in the backward pass (`jax.checkpoint`), so autodiff stores the inputs and the memory
    at each chunk start: O(T · (d_k + d_v) + T / L · d_k · d_v) per head. Work is
    O(T · L · (d_k + d_v) + T · d_k · d_v) per head. Lengths that are not a multiple of `chunk_size` are
    padded internally with padding tokens.

    >>> import jax, jax.numpy as jnp
    >>> q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 10, 2, 4))
    >>> i, f = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 1, 10, 2))
    >>> h_c, mem_c = mlstm_chunked(q, k, v, i, f, chunk_size=4)
    >>> h_r, mem_r = mlstm_recurrent(q, k, v, i, f)
    >>> bool(jnp.allclose(h_c, h_r, atol=1e-5)), bool(jnp.allclose(mem_c.m, mem_r.m, atol=1e-5))
    (True, True)
    """
    if int(chunk_size) < 1:
        raise ValueError(f"mlstm_chunked: chunk_size must be >= 1, got {chunk_size}.")
    q, k, v, igate, fgate, memory, resets, mask = _prepare(
        "mlstm_chunked", q, k, v, igate, fgate, memory, resets, mask
    )
    acc = q.dtype
    batch, t, heads, dv = q.shape[:-3], q.shape[-3], q.shape[-2], v.shape[-1]
    nb, bsz = len(batch), math.prod(batch)
    if t == 0:
        return jnp.zeros((*batch, 0, heads, dv), acc), memory
    size = min(int(chunk_size), t)
    n = -(-t // size)
    pad = n * size - t
    log_f = jax.nn.log_sigmoid(fgate)
    if mask is not None:
        log_f = jnp.where(mask[..., None], log_f, jnp.zeros((), acc))
    # Padding up to a whole number of chunks makes padding tokens too.
    has_resets, has_mask = resets is not None, mask is not None or pad > 0
    valid = jnp.ones((*batch, t), bool) if mask is None else mask
    resets = jnp.zeros((*batch, t), bool) if resets is None else resets
    # The denominator nᵀq rides along as one more value column (v | 1) and memory column (C | n).
    v = jnp.concatenate([v, jnp.ones((*v.shape[:-1], 1), acc)], axis=-1)

    def chunked(x):
        # [*batch, T, ...] -> [n, B, L, ...]: chunks first for the scan (whole [L, ...] blocks move).
        x = x.reshape(bsz, t, *x.shape[nb + 1 :])
        if pad:  # padding tokens: not valid, log f = 0, no reset
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(bsz, n, size, *x.shape[2:]), 1, 0)

    rs = chunked(resets)
    seg = jnp.cumsum(rs.astype(jnp.int32), axis=-1)
    xs = (*(chunked(a) for a in (q, k, v, igate, log_f)), seg, rs, chunked(valid))
    c0 = jnp.concatenate([memory.c, memory.n[..., None]], axis=-1).reshape(bsz, heads, -1, dv + 1)
    body = jax.checkpoint(functools.partial(_chunk_body, eps, has_resets, has_mask))
    (c_aug, m), hs = lax.scan(body, (c0, memory.m.reshape(bsz, heads)), xs)  # hs [n, B, L, H, d_v]
    hs = jnp.moveaxis(hs, 0, 1).reshape(bsz, n * size, heads, dv)[:, :t]
    if mask is not None:
        hs = jnp.where(mask.reshape(bsz, t)[..., None, None], hs, jnp.zeros((), acc))
    final = MLSTMMemory(c_aug[..., :-1], c_aug[..., -1], m)
    final = MLSTMMemory(*(a.reshape(like.shape) for a, like in zip(final, memory, strict=True)))
    return hs.reshape(*batch, t, heads, dv), final


def mlstm(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    igate: jax.Array,
    fgate: jax.Array,
    memory: MLSTMMemory | None = None,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    method: Method = "auto",
    chunk_size: int = DEFAULT_CHUNK,
    eps: float = EPS,
) -> tuple[jax.Array, MLSTMMemory]:
    """`mlstm_chunked` ("chunked", and "auto") or `mlstm_recurrent` ("recurrent").

    "auto" is the chunked form on every platform: matmuls over L tokens instead of T rank-one updates,
    and O(T / L) stored memories instead of O(T).

    >>> import jax.numpy as jnp
    >>> q = k = jnp.ones((6, 1, 2)); gates = jnp.zeros((6, 1))
    >>> hs, memory = mlstm(q, k, jnp.ones((6, 1, 3)), gates, gates, method="recurrent")
    >>> hs.shape, memory.c.shape
    ((6, 1, 3), (1, 2, 3))
    """
    if method not in METHODS:
        raise ValueError(f"mlstm: unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "recurrent":
        return mlstm_recurrent(q, k, v, igate, fgate, memory, resets=resets, mask=mask, eps=eps)
    return mlstm_chunked(
        q, k, v, igate, fgate, memory, resets=resets, mask=mask, chunk_size=chunk_size, eps=eps
    )
