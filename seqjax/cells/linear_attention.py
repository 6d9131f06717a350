"""Linear-attention cells: causal attention whose state is a matrix per head, constant in length.

    S_t = γ_t S_{t-1} + φ(k_t) v_tᵀ          y_t = S_tᵀ φ(q_t)      [ / (φ(q_t)·z_t + eps) ]
                                             z_t = γ_t z_{t-1} + φ(k_t)

- `LinearAttention` (Katharopoulos et al. 2020): φ = elu + 1, γ ≡ 1, normalised.
- `Performer` (FAVOR+, Choromanski et al. 2021): φ = positive orthogonal random features of the softmax
  kernel, γ ≡ 1, normalised.
- `GatedLinearAttention` (GLA, Yang et al. 2024; fla's `GatedLinearAttention` layer): φ = identity, a
  data-dependent decay per key channel, diag(γ_t) S_{t-1}, from a low-rank projection; no normaliser;
  per-head RMSNorm gated by SiLU(W_g x). Keys are half as wide as values (`expand_k`).
- `ScalarGatedLinearAttention`: φ = identity, one scalar decay per head (data-dependent: RetNet's decay
  made a function of the input; or RetNet's fixed decays), no normaliser, optional SiLU output gate and
  per-head norm. Registered "gla_scalar"; it was registered "gla" before GLA got its per-channel gate.

`LinearAttention`, `Performer` and `ScalarGatedLinearAttention` project x [*, input_size] to q, k, v [*,
heads, head_dim] with one matmul (`w_qkv` [input_size, 3, heads, head_dim], no bias); `GatedLinearAttention`
has one projection each for q, k (d_k wide) and v (head_dim wide). Every cell runs the recurrence per head and
projects the concatenated heads back with `w_o` [heads, head_dim, output_size]; `output_size` is
`out_features`, by default `num_heads * head_dim`. `step` carries S (and z): the recurrent form. `apply` runs
the engine in `seqjax.scan.matrix_recurrence`: the chunkwise-parallel form for `method="chunked"` or `"auto"`,
the token-by-token scan for `"recurrent"`. With `fused=True` (the default) the chunked form runs the whole
layer inside its chunk loop (`linear_attention_fused`): the projections, gates, norm and output projection of
a chunk are computed from that chunk's input and recomputed in the backward pass, so training keeps no
full-length [*, T, heads, head_dim] activation (a 5x smaller plan and a faster step at 16k;
docs/performance.md). With `sequence_axis` set (a mesh axis name), `apply` splits the time axis over that
mesh axis (`seqjax.scan.sequence_parallel_linear_attention`, under the mesh of `jax.set_mesh`), unfused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.base import (
    DType,
    Params,
    RecurrentCell,
    accumulation_dtype,
    check_sequence_axis,
    projection,
)
from seqjax.cells.registry import register
from seqjax.common.checks import check_positive_int
from seqjax.scan.matrix_recurrence import (
    METHODS,
    linear_attention,
    linear_attention_fused,
    matrix_step,
    split_normalized,
)
from seqjax.scan.sequence_parallel import sequence_parallel_linear_attention
from seqjax.scan.tuning import matrix_chunk_size

__all__ = [
    "GLAState",
    "GatedLinearAttention",
    "LinearAttention",
    "LinearAttentionState",
    "Performer",
    "ScalarGatedLinearAttention",
    "orthogonal_random_features",
    "positive_random_features",
]

GATES = ("data", "fixed")


class LinearAttentionState(NamedTuple):
    s: jax.Array  # [*batch, heads, d_k, head_dim]
    z: jax.Array  # [*batch, heads, d_k]: the normaliser, Σ γ-decayed φ(k)


class GLAState(NamedTuple):
    s: jax.Array  # [*batch, heads, d_k, head_dim]


# --------------------------------------------------------------------------------------------------
# FAVOR+ features
# --------------------------------------------------------------------------------------------------
def orthogonal_random_features(
    key: jax.Array, num_features: int, dim: int, dtype: DType = jnp.float32
) -> jax.Array:
    """[num_features, dim] random projection W for FAVOR+ (Choromanski et al. 2021, "ORF").

    Rows come in blocks of `dim` mutually orthogonal directions (Q of the QR of a Gaussian matrix,
    sign-corrected so that Q is Haar-distributed), the last block truncated. Each row is then rescaled by
    the norm of an independent Gaussian vector in R^dim (chi-distributed), so that every row is marginally
    N(0, I) as the unbiased estimator needs, while orthogonality within a block lowers its variance.
    """
    blocks = -(-num_features // dim)
    k_blocks, k_norms = jax.random.split(key)
    gaussian = jax.random.normal(k_blocks, (blocks, dim, dim), jnp.float32)
    qmat, rmat = jnp.linalg.qr(gaussian)
    qmat = qmat * jnp.sign(jnp.diagonal(rmat, axis1=-2, axis2=-1))[..., None, :]
    rows = jnp.swapaxes(qmat, -1, -2).reshape(blocks * dim, dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(k_norms, (num_features, dim), jnp.float32), axis=-1)
    return (rows * norms[:, None]).astype(dtype)


def positive_random_features(x: jax.Array, w: jax.Array, *, stabilize: bool = False) -> jax.Array:
    """φ(x) = exp(W x − |x|²/2) / √m, with E[φ(q)·φ(k)] = exp(q·k) when the rows of W are N(0, I).

    Args:
      x: [..., d]; w: [..., m, d] (broadcast against x's leading axes, e.g. [heads, m, d]).
      stabilize: subtract max_i (W x − |x|²/2)_i (held constant under autodiff) before exp, so the
        largest feature is exactly 1/√m. This rescales φ(x) by a positive factor of x alone, which
        cancels in a normalised attention output when x is a query.

    Returns:
      [..., m] in x's dtype promoted to at least float32.
    """
    acc = accumulation_dtype(x.dtype)
    x = x.astype(acc)
    logits = jnp.einsum("...d,...md->...m", x, w.astype(acc)) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    if stabilize:
        logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return jnp.exp(logits) / math.sqrt(w.shape[-2])


# --------------------------------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _MatrixAttention(RecurrentCell):
    """Shared hyperparameters, projections, state handling and engine dispatch (not registered)."""

    num_heads: int
    head_dim: int
    out_features: int | None = None
    method: str = "auto"
    chunk_size: int | None = None
    fused: bool = True
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: whether the cell uses the normaliser z (state gets a `z`).
    normalized: ClassVar[bool] = False
    #: the engine's name in `seqjax.scan.tuning.matrix_chunk_size` (its default chunk per platform).
    chunk_engine: ClassVar[str] = "linear_attention"

    def __post_init__(self) -> None:
        label = type(self).__name__
        check_positive_int(label, "num_heads", self.num_heads)
        check_positive_int(label, "head_dim", self.head_dim)
        if self.chunk_size is not None:
            check_positive_int(label, "chunk_size", self.chunk_size)
        if not isinstance(self.fused, bool):
            raise ValueError(f"{label}: fused must be True or False, got {self.fused!r}.")
        if self.out_features is not None:
            check_positive_int(label, "out_features", self.out_features)
        if self.method not in METHODS:
            raise ValueError(f"{label}: method must be one of {METHODS}, got {self.method!r}.")
        check_sequence_axis(label, self.sequence_axis)

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def resolved_chunk_size(self) -> int:
        """`chunk_size`, or where it is None the platform's default for the cell's engine
        (`seqjax.scan.tuning.matrix_chunk_size`: 32 on CPU for the scalar-decay engine, 64 for the
        per-channel GLA engine and on GPU and TPU)."""
        return self.chunk_size if self.chunk_size is not None else matrix_chunk_size(self.chunk_engine)

    @property
    def key_dim(self) -> int:
        """d_k: the width of φ(k), the rows of S."""
        return self.head_dim

    @property
    def output_size(self) -> int:
        return self.num_heads * self.head_dim if self.out_features is None else self.out_features

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_qkv"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def _base_params(self, key: jax.Array, input_size: int) -> Params:
        h, d = self.num_heads, self.head_dim
        k_qkv, k_o = jax.random.split(key)
        # Glorot per projection: fan-in = input_size, fan-out = heads · head_dim; the "3" axis stacks q,
        # k and v and counts as a batch axis.
        qkv_init = jax.nn.initializers.glorot_uniform(in_axis=0, out_axis=(2, 3), batch_axis=(1,))
        o_init = jax.nn.initializers.glorot_uniform(in_axis=(0, 1), out_axis=2)
        return {
            "w_qkv": qkv_init(k_qkv, (input_size, 3, h, d), self.param_dtype),
            "w_o": o_init(k_o, (h, d, self.output_size), self.param_dtype),
        }

    def _base_axes(self) -> dict[str, tuple[str, ...]]:
        return {"w_qkv": ("embed", "qkv", "heads", "head_dim"), "w_o": ("heads", "head_dim", "embed")}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> Any:
        h, dk, dv = self.num_heads, self.key_dim, self.head_dim
        s = jnp.zeros((*batch_shape, h, dk, dv), dtype)
        if self.normalized:
            return LinearAttentionState(s=s, z=jnp.zeros((*batch_shape, h, dk), dtype))
        return GLAState(s=s)

    # -- per-cell pieces -----------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def _qkv(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        qkv = self._mm(x, params["w_qkv"], "...i,ishd->...shd")
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def _features(self, params: Params, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        """φ(q), φ(k) [..., heads, d_k] in the accumulation dtype."""
        return q, k

    def _extra_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """Decay and gate inputs of the cell (GLA); none for the ungated cells."""
        return {}

    def _head_output(self, params: Params, y: jax.Array, projected: dict[str, jax.Array]) -> jax.Array:
        """Post-processing of the per-head output [..., heads, head_dim] before `w_o` (GLA's norm, gate)."""
        return y

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """x [..., input_size] -> q, k [..., heads, d_k], v [..., heads, head_dim] (compute dtype), and
        the cell's extra inputs."""
        q, k, v = self._qkv(params, x)
        q, k = self._features(params, q, k)
        out = {"q": q.astype(self.dtype), "k": k.astype(self.dtype), "v": v.astype(self.dtype)}
        out.update(self._extra_inputs(params, x))
        return out

    def _output(self, params: Params, y: jax.Array, projected: dict[str, jax.Array]) -> jax.Array:
        y = self._head_output(params, y, projected)
        return self._mm(y, params["w_o"], "...hd,hdo->...o").astype(self.dtype)

    def _pack(self, state: Any) -> jax.Array:
        """The engine's state: S, with z appended as an extra value column when normalised."""
        s = state.s.astype(self._acc)
        if self.normalized:
            s = jnp.concatenate([s, state.z.astype(self._acc)[..., None]], axis=-1)
        return s

    def _unpack(self, s: jax.Array, like: Any) -> Any:
        if self.normalized:
            return LinearAttentionState(s=s[..., :-1].astype(like.s.dtype), z=s[..., -1].astype(like.z.dtype))
        return GLAState(s=s.astype(like.s.dtype))

    def _values(self, v: jax.Array) -> jax.Array:
        if self.normalized:
            return jnp.concatenate([v, jnp.ones((*v.shape[:-1], 1), v.dtype)], axis=-1)
        return v

    def _heads(self, y: jax.Array) -> jax.Array:
        return split_normalized(y, self.eps) if self.normalized else y

    # -- the fused chunked form: the engine calls these once per chunk --------------------------------
    def _project_chunk(self, params: Params, x: jax.Array) -> tuple[Any, ...]:
        p = self.project_inputs(params, x)
        extras = {name: value for name, value in p.items() if name not in ("q", "k", "v", "log_gamma")}
        return p["q"], p["k"], self._values(p["v"]), p.get("log_gamma"), extras

    def _finish_chunk(self, params: Params, y: jax.Array, extras: dict[str, jax.Array]) -> jax.Array:
        return self._output(params, self._heads(y), extras)

    # -- the recurrence ------------------------------------------------------------------------------
    def recur(self, params: Params, state: Any, projected: dict[str, jax.Array]) -> tuple[Any, jax.Array]:
        s, y = matrix_step(
            self._pack(state),
            projected["q"],
            projected["k"],
            self._values(projected["v"]),
            projected.get("log_gamma"),
        )
        return self._unpack(s, state), self._output(params, self._heads(y), projected)

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: Any = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """xs [*batch, time, input_size] -> ys [*batch, time, output_size], state after the last valid
        token. Runs the chunkwise-parallel engine ("auto", "chunked") or the token scan ("recurrent")."""
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        method = "chunked" if self.method == "auto" else self.method
        engine = linear_attention
        if self.sequence_axis is not None:
            # The fused loop applies `finish` inside each chunk, but the state entering a shard adds to
            # the per-head outputs before it: under sequence parallelism the layer runs unfused.
            engine = functools.partial(sequence_parallel_linear_attention, sequence_axis=self.sequence_axis)
        elif method == "chunked" and self.fused:
            ys, s = linear_attention_fused(
                self._project_chunk,
                self._finish_chunk,
                params,
                xs,
                self._pack(state),
                resets=resets,
                mask=mask,
                chunk_size=self.resolved_chunk_size,
            )
            return ys, self._unpack(s, state)
        p = self.project_inputs(params, xs)
        y, s = engine(
            p["q"],
            p["k"],
            self._values(p["v"]),
            p.get("log_gamma"),
            self._pack(state),
            resets=resets,
            mask=mask,
            method=method,
            chunk_size=self.resolved_chunk_size,
        )
        ys = self._output(params, self._heads(y), p)
        if mask is not None:
            # Padding outputs are 0 whatever `_output` does to a zero head output (norm, gate, bias).
            ys = jnp.where(mask[..., None], ys, jnp.zeros((), ys.dtype))
        return ys, self._unpack(s, state)


# --------------------------------------------------------------------------------------------------
# The cells
# --------------------------------------------------------------------------------------------------
@register("linear_attention")
@dataclasses.dataclass(frozen=True)
class LinearAttention(_MatrixAttention):
    """Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), multi-head:

        φ(x) = elu(x) + 1
        S_t = S_{t-1} + φ(k_t) v_tᵀ ;  z_t = z_{t-1} + φ(k_t)
        y_t = W_o [ S_tᵀ φ(q_t) / (φ(q_t)·z_t + eps) ]_heads

    State (S [*batch, H, head_dim, head_dim], z [*batch, H, head_dim]): O(H · head_dim²), constant in
    length. Since φ > 0, each head's output is (up to eps) a convex combination of the values seen so
    far, given a zero or non-negative initial z.

    Hyperparameters:
      num_heads, head_dim: H and d (d_k = d_v = d).
      out_features: width of the output projection; default H · d.
      method: "auto" (= "chunked"), "chunked" or "recurrent": the engine `apply` uses.
      chunk_size: tokens per chunk of the chunked engine; None (the default): the platform's measured
        default (`seqjax.scan.tuning.matrix_chunk_size`: 32 on CPU, 64 on GPU and TPU; GLA's per-channel
        engine 64 everywhere).
      fused: run the projections inside the chunk loop (recomputed in the backward pass) instead of
        over the whole sequence; same values and gradients, far less activation memory.
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split); see
        docs/scan.md, "Sequence parallelism".
      eps: added to the normaliser's denominator.
      dtype: compute dtype of the matmuls (bfloat16 allowed); state, normaliser and feature maps float32.
      param_dtype: dtype of the parameters.

    Parameters: `w_qkv` [input_size, 3, H, d], `w_o` [H, d, out]; Glorot-uniform, no biases.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.LinearAttention(num_heads=2, head_dim=3)
    >>> params = cell.init(jax.random.PRNGKey(0), 4)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 4)))
    >>> ys.shape, state.s.shape                                # output H·d = 6
    ((2, 5, 6), (2, 2, 3, 3))
    """

    eps: float = 1e-6

    normalized: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.eps > 0:
            raise ValueError(f"LinearAttention: eps must be > 0, got {self.eps!r}.")

    def init(self, key: jax.Array, input_size: int) -> Params:
        return self._base_params(key, input_size)

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return self._base_axes()

    def _features(self, params: Params, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.nn.elu(q) + 1, jax.nn.elu(k) + 1


@register("performer")
@dataclasses.dataclass(frozen=True)
class Performer(_MatrixAttention):
    """Causal Performer attention (FAVOR+, Choromanski et al. 2021), multi-head.

    Approximates causal softmax attention softmax(q·k / √d) with positive orthogonal random features:

        x' = x / d^{1/4} ;  φ(x') = exp(W x' − |x'|²/2) / √m ,  E[φ(q')·φ(k')] = exp(q·k / √d)
        S_t = S_{t-1} + φ(k'_t) v_tᵀ ;  z_t = z_{t-1} + φ(k'_t)
        y_t = W_o [ S_tᵀ φ(q'_t) / (φ(q'_t)·z_t + eps) ]_heads

    W [H, m, d] (`features`, m = `num_features`) is drawn at `init` by `orthogonal_random_features`,
    independently per head. It is not trained: `param_groups()` marks it "frozen", `apply`/`step` stop
    its gradient (so it is exactly zero), and `redraw_features(params, key)` draws a fresh W, e.g. every
    few thousand steps as the paper suggests. State (S [*, H, m, d], z [*, H, m]).

    Numerical stabilisation: for queries, max_i (W q' − |q'|²/2)_i is subtracted from the logits per
    token and head (constant under autodiff), so the largest query feature is exactly 1/√m and a long
    query cannot underflow every feature to 0. The shift multiplies φ(q') by a factor that cancels
    between numerator and denominator (up to `eps`, which is in effect scaled by the same factor). Keys
    are not shifted: the state must be the same whether `step` or `apply` builds it, the usual FAVOR+
    key shift (a max over all keys of the sequence) is neither causal nor available to `step`, and a
    per-token shift would reweight the tokens. Overflow cannot happen anyway: a key logit
    w_i·k' − |k'|²/2 ≤ |w_i|²/2 with |w_i|² ~ χ²(head_dim), far below float32's exp limit (88) for
    head_dim up to ~100.

    Hyperparameters: as `LinearAttention`, plus `num_features` (m, default 256, about
    d·ln d for d = 64 as the paper suggests; the state grows linearly with m).
    Parameters: `w_qkv` [input_size, 3, H, d], `w_o` [H, d, out] (Glorot, no biases), `features`
    [H, m, d] (frozen).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Performer(num_heads=2, head_dim=3, num_features=8)
    >>> params = cell.init(jax.random.PRNGKey(0), 4)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 4)))
    >>> ys.shape, state.s.shape, cell.param_groups()["features"]
    ((2, 5, 6), (2, 2, 8, 3), 'frozen')
    """

    num_features: int = 256
    eps: float = 1e-6

    normalized: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("Performer", "num_features", self.num_features)
        if not self.eps > 0:
            raise ValueError(f"Performer: eps must be > 0, got {self.eps!r}.")

    @property
    def key_dim(self) -> int:
        return self.num_features

    def _draw_features(self, key: jax.Array) -> jax.Array:
        # One independent draw per head, vmapped so that all heads share one QR and one RNG call.
        draw = lambda k: orthogonal_random_features(k, self.num_features, self.head_dim, self.param_dtype)
        return jax.vmap(draw)(jax.random.split(key, self.num_heads))

    def init(self, key: jax.Array, input_size: int) -> Params:
        k_base, k_feat = jax.random.split(key)
        return {**self._base_params(k_base, input_size), "features": self._draw_features(k_feat)}

    def redraw_features(self, params: Params, key: jax.Array) -> Params:
        """`params` with a fresh random projection drawn from `key` (deterministic per key)."""
        return {**params, "features": self._draw_features(key)}

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {**self._base_axes(), "features": ("heads", "random_features", "head_dim")}

    def param_groups(self) -> dict[str, str]:
        """ "frozen" for the random features (never trained, no weight decay), "default" otherwise."""
        return {name: "frozen" if name == "features" else "default" for name in self.param_axes()}

    def _features(self, params: Params, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        w = jax.lax.stop_gradient(params["features"])
        scale = self.head_dim**-0.25
        # In the accumulation dtype: exp turns absolute rounding error of the logits into relative error
        # of the features, and the projection onto m features is small next to the attention itself.
        return (
            positive_random_features(q * scale, w, stabilize=True),
            positive_random_features(k * scale, w, stabilize=False),
        )


@register("gla_scalar")
@dataclasses.dataclass(frozen=True)
class ScalarGatedLinearAttention(_MatrixAttention):
    """Gated linear attention with one scalar decay per head: the data-dependent form of RetNet's decay.

        q = W_q x / √d ,  k = W_k x ,  v = W_v x
        S_t = γ_t S_{t-1} + k_t v_tᵀ ;  o_t = S_tᵀ q_t                       (per head; no normaliser)
        y_t = W_o [ norm(o_t) ⊙ silu(W_r x_t) ]_heads

    Decay:
      gate="data": log γ_t = logsigmoid(W_g x_t + b_g) / τ, one scalar per head and token: RetNet's
        decay made a function of the input, or GLA (Yang et al. 2024) with a head-wise instead of its
        per-channel gate; τ = `gate_temperature` (16 as in GLA) keeps γ near 1 at init (γ = 2^{-1/16} ≈
        0.958 for a zero pre-activation).
      gate="fixed": γ_h = 1 − 2^{−5−h} for head h = 0..H−1 (RetNet's multi-scale decays).

    Registered "gla_scalar" (preset "gla_scalar"). Until December 2026 this cell was `GatedLinearAttention`,
    registered "gla"; that name is now the per-channel GLA of the paper and fla. One scalar per head lets
    the engine factor the decay out of q·k, so its chunks are plain matmuls.

    `output_gate` (default True) multiplies each head output by silu(W_r x) as GLA does; `group_norm`
    (default True) normalises each head's output over head_dim (mean and variance, eps 1e-5) with a
    learned scale, i.e. GroupNorm with one group per head. State S [*, H, d, d].

    Hyperparameters: as `LinearAttention`, plus gate, gate_temperature, output_gate, group_norm.
    Parameters: `w_qkv` [input_size, 3, H, d], `w_o` [H, d, out]; with gate="data" `w_g` [input_size,
    H] and `b_g` [H] (zero); with output_gate `w_r` [input_size, H, d]; with group_norm `norm_scale`
    [H, d] (ones). Weights Glorot-uniform.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.ScalarGatedLinearAttention(num_heads=2, head_dim=3)
    >>> params = cell.init(jax.random.PRNGKey(0), 4)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 4)))
    >>> ys.shape, state.s.shape, params["w_g"].shape           # one gate logit per head
    ((2, 5, 6), (2, 2, 3, 3), (4, 2))
    """

    gate: str = "data"
    gate_temperature: float = 16.0
    output_gate: bool = True
    group_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate not in GATES:
            raise ValueError(f"ScalarGatedLinearAttention: gate must be one of {GATES}, got {self.gate!r}.")
        if not self.gate_temperature > 0:
            raise ValueError(
                f"ScalarGatedLinearAttention: gate_temperature must be > 0, got {self.gate_temperature!r}."
            )

    def init(self, key: jax.Array, input_size: int) -> Params:
        k_base, k_g, k_r = jax.random.split(key, 3)
        params = self._base_params(k_base, input_size)
        h, d, pd = self.num_heads, self.head_dim, self.param_dtype
        if self.gate == "data":
            params["w_g"] = jax.nn.initializers.glorot_uniform()(k_g, (input_size, h), pd)
            params["b_g"] = jnp.zeros((h,), pd)
        if self.output_gate:
            r_init = jax.nn.initializers.glorot_uniform(in_axis=0, out_axis=(1, 2))
            params["w_r"] = r_init(k_r, (input_size, h, d), pd)
        if self.group_norm:
            params["norm_scale"] = jnp.ones((h, d), pd)
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = self._base_axes()
        if self.gate == "data":
            axes.update(w_g=("embed", "heads"), b_g=("heads",))
        if self.output_gate:
            axes["w_r"] = ("embed", "heads", "head_dim")
        if self.group_norm:
            axes["norm_scale"] = ("heads", "head_dim")
        return axes

    def fixed_log_decay(self) -> np.ndarray:
        """[H] log γ_h = log(1 − 2^{−5−h}) (gate="fixed"), computed in float64."""
        return np.log1p(-(2.0 ** (-5.0 - np.arange(self.num_heads))))

    def _features(self, params: Params, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return q * self.head_dim**-0.5, k

    def _extra_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        acc = self._acc
        out = {}
        if self.gate == "data":
            pre = self._mm(x, params["w_g"], "...i,ih->...h") + params["b_g"].astype(acc)
            out["log_gamma"] = jax.nn.log_sigmoid(pre) / self.gate_temperature
        else:
            decay = jnp.asarray(self.fixed_log_decay(), acc)
            out["log_gamma"] = jnp.broadcast_to(decay, (*x.shape[:-1], self.num_heads))
        if self.output_gate:
            out["r"] = self._mm(x, params["w_r"], "...i,ihd->...hd")
        return out

    def _head_output(self, params: Params, y: jax.Array, projected: dict[str, jax.Array]) -> jax.Array:
        if self.group_norm:
            mean = jnp.mean(y, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(y - mean), axis=-1, keepdims=True)
            y = (y - mean) * jax.lax.rsqrt(var + 1e-5) * params["norm_scale"].astype(y.dtype)
        if self.output_gate:
            y = y * jax.nn.silu(projected["r"])
        return y


@register("gla")
@dataclasses.dataclass(frozen=True)
class GatedLinearAttention(_MatrixAttention):
    """Gated linear attention (Yang et al. 2024), the layer of fla's `GatedLinearAttention` (defaults),
    multi-head, with a decay per key channel:

        q = W_q x ,  k = W_k x   [H, d_k] ;  v = W_v x   [H, d_v]          (no biases, no feature map)
        log α_t = logsigmoid(W_gk2 W_gk1 x_t + b_gk) / τ                     [H, d_k], rank-r gate
        S_t = diag(α_t) S_{t-1} + k_t v_tᵀ ;  o_t = S_tᵀ (q_t / √d_k)       (per head; no normaliser)
        y_t = W_o [ RMSNorm(o_t) ⊙ w_norm ⊙ SiLU(W_g x_t) ]_heads

    with d_v = `head_dim`, d_k = max(1, ⌊head_dim · expand_k⌋), r = `gate_low_rank_dim` (16) and τ =
    `gate_logit_normalizer` (16): fla's `gk_proj` (Linear(hidden, 16) then Linear(16, key_dim) with bias),
    its `logsigmoid(gk) / gate_logit_normalizer`, `naive_recurrent_gla`'s recurrence and scale K^-½, and
    its `FusedRMSNormGated` (the norm over each head's d_v outputs, one scale `w_norm` [d_v] shared by the
    heads, then the SiLU gate). Each channel decays by α ∈ (0, 1); τ = 16 keeps α ≥ 2^{-1/16} ≈ 0.958 for
    non-negative gate logits. With `clamp_min` set, log α is clamped from below (fla's `clamp_min`).

    State `GLAState` (S [*batch, H, d_k, d_v]): O(H · d_k · d_v), constant in length. `apply` runs the
    per-channel chunked engine (`seqjax.scan.matrix_recurrence`; sub-chunks of 16, only non-positive
    exponents), fused with the projections by default (`fused=True`), so training keeps the input and one
    state per chunk.

    Hyperparameters:
      num_heads, head_dim: H and d_v. fla's layer has head_v_dim = expand_v · hidden / H; the mixer
        defaults (`BackboneConfig`) keep H · head_dim = d_model, fla's expand_v = 1.
      expand_k: d_k / d_v (0.5: fla's expand_k = 0.5 with expand_v = 1).
      gate_low_rank_dim, gate_logit_normalizer, clamp_min: the decay gate (16, 16, None as in fla).
      output_gate: multiply the normalised outputs by SiLU(W_g x) (fla's use_output_gate, True); without
        it only the RMSNorm.
      norm_eps: the RMSNorm's epsilon (1e-5, the layer's default; fla's GLAConfig passes 1e-6).
      out_features, method, chunk_size, fused, dtype, param_dtype: as `LinearAttention`; the recurrence,
        gates and norm run in float32 whatever `dtype` is.

    Parameters: `w_q`, `w_k` [input_size, H, d_k], `w_v` [input_size, H, d_v], `w_gk1` [input_size, r],
    `w_gk2` [r, H, d_k], `b_gk` [H, d_k] (zeros), `w_g` [input_size, H, d_v] (with output_gate),
    `norm_scale` [d_v] (ones), `w_o` [H, d_v, out]; weights Glorot-uniform.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.GatedLinearAttention(num_heads=2, head_dim=4)   # d_k = 2
    >>> params = cell.init(jax.random.PRNGKey(0), 5)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 5)))
    >>> ys.shape, state.s.shape, params["b_gk"].shape                # a gate bias per key channel
    ((2, 7, 8), (2, 2, 2, 4), (2, 2))
    """

    chunk_engine: ClassVar[str] = "gla"

    expand_k: float = 0.5
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    clamp_min: float | None = None
    output_gate: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        label = "GatedLinearAttention"
        check_positive_int(label, "gate_low_rank_dim", self.gate_low_rank_dim)
        if not (isinstance(self.expand_k, int | float) and self.expand_k > 0):
            raise ValueError(f"{label}: expand_k must be > 0, got {self.expand_k!r}.")
        if not self.gate_logit_normalizer > 0:
            raise ValueError(
                f"{label}: gate_logit_normalizer must be > 0, got {self.gate_logit_normalizer!r}."
            )
        if self.clamp_min is not None and not self.clamp_min < 0:
            raise ValueError(f"{label}: clamp_min must be None or < 0 (a log-decay), got {self.clamp_min!r}.")
        if not isinstance(self.output_gate, bool):
            raise ValueError(f"{label}: output_gate must be True or False, got {self.output_gate!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"{label}: norm_eps must be > 0, got {self.norm_eps!r}.")

    @property
    def key_dim(self) -> int:
        """d_k = max(1, ⌊head_dim · expand_k⌋): the width of q and k per head, the rows of S.

        >>> GatedLinearAttention(num_heads=4, head_dim=64).key_dim
        32
        """
        return max(1, int(self.head_dim * self.expand_k))

    def input_size_of(self, params: Params) -> int:
        return params["w_q"].shape[0]

    def init(self, key: jax.Array, input_size: int) -> Params:
        h, dk, dv, pd = self.num_heads, self.key_dim, self.head_dim, self.param_dtype
        r = self.gate_low_rank_dim
        keys = jax.random.split(key, 7)
        proj = jax.nn.initializers.glorot_uniform(in_axis=0, out_axis=(1, 2))
        params = {
            "w_q": proj(keys[0], (input_size, h, dk), pd),
            "w_k": proj(keys[1], (input_size, h, dk), pd),
            "w_v": proj(keys[2], (input_size, h, dv), pd),
            "w_gk1": jax.nn.initializers.glorot_uniform()(keys[3], (input_size, r), pd),
            "w_gk2": proj(keys[4], (r, h, dk), pd),
            "b_gk": jnp.zeros((h, dk), pd),
            "norm_scale": jnp.ones((dv,), pd),
            "w_o": jax.nn.initializers.glorot_uniform(in_axis=(0, 1), out_axis=2)(
                keys[5], (h, dv, self.output_size), pd
            ),
        }
        if self.output_gate:
            params["w_g"] = proj(keys[6], (input_size, h, dv), pd)
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = {
            "w_q": ("embed", "heads", "head_dim"),
            "w_k": ("embed", "heads", "head_dim"),
            "w_v": ("embed", "heads", "head_dim"),
            "w_gk1": ("embed", "gate_rank"),
            "w_gk2": ("gate_rank", "heads", "head_dim"),
            "b_gk": ("heads", "head_dim"),
            "norm_scale": ("head_dim",),
            "w_o": ("heads", "head_dim", "embed"),
        }
        if self.output_gate:
            axes["w_g"] = ("embed", "heads", "head_dim")
        return axes

    def _qkv(self, params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        spec = "...i,ihd->...hd"
        return (
            self._mm(x, params["w_q"], spec),
            self._mm(x, params["w_k"], spec),
            self._mm(x, params["w_v"], spec),
        )

    def _features(self, params: Params, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return q * self.key_dim**-0.5, k

    def log_decay(self, params: Params, x: jax.Array) -> jax.Array:
        """log α [..., H, d_k] = logsigmoid(W_gk2 W_gk1 x + b_gk) / τ (clamped below at `clamp_min`), in
        the accumulation dtype: each key channel's log-decay per token, in (−∞, 0).

        >>> import jax, jax.numpy as jnp
        >>> cell = GatedLinearAttention(num_heads=2, head_dim=4)
        >>> params = cell.init(jax.random.PRNGKey(0), 3)
        >>> log_alpha = cell.log_decay(params, jnp.zeros((5, 3)))  # x = 0: logsigmoid(b_gk = 0) / 16
        >>> log_alpha.shape, bool(jnp.allclose(log_alpha, jnp.log(0.5) / 16))
        ((5, 2, 2), True)
        """
        low = self._mm(x, params["w_gk1"], "...i,ir->...r")
        pre = self._mm(low, params["w_gk2"], "...r,rhd->...hd") + params["b_gk"].astype(self._acc)
        log_alpha = jax.nn.log_sigmoid(pre) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            log_alpha = jnp.maximum(log_alpha, self.clamp_min)
        return log_alpha

    def _extra_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        out = {"log_gamma": self.log_decay(params, x)}
        if self.output_gate:
            out["r"] = self._mm(x, params["w_g"], "...i,ihd->...hd")
        return out

    def _head_output(self, params: Params, y: jax.Array, projected: dict[str, jax.Array]) -> jax.Array:
        y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.norm_eps)
        y = y * params["norm_scale"].astype(y.dtype)
        if self.output_gate:
            y = y * jax.nn.silu(projected["r"])
        return y
