"""The xLSTM cells (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): mLSTM and sLSTM, each
as the authors' layer (`xlstm/blocks/mlstm/layer.py`, `xlstm/blocks/slstm/layer.py` of NX-AI/xlstm).

- `MLSTM` (`mlstm`): the mLSTM layer of an xLSTM pre-up-projection block. Up-projection to two branches,
  a short causal conv + SiLU feeding q and k, block-diagonal q/k/v projections, the mLSTM matrix memory
  with exponential input gates and the max-stabilised normaliser (`seqjax.scan.mlstm`: chunkwise
  training form, recurrent `step`), a per-head LayerNorm, a learnable skip from the conv branch, the
  SiLU output gate of the second branch, and the down-projection. Maps d_model to d_model. With
  `sequence_axis` its time axis splits over devices (`seqjax.scan.sequence_parallel_mlstm`, the conv's
  halo from `short_conv`).
- `SLSTM` (`slstm`): the sLSTM layer of an xLSTM post-up-projection block. A short causal conv + SiLU
  feeding the input and forget gates, the sLSTM scalar memory with exponential gating, stabiliser and
  normaliser, block-diagonal (headwise) recurrent matrices, under `lax.scan`, and the per-head
  LayerNorm. Maps its input to `hidden_size` features. A nonlinear recurrence: its time axis cannot be
  split over devices.

The rest of the xLSTM blocks is `seqjax.models.Block`'s: the pre-norm and the residual connection
around the layer, and for the sLSTM block the gated feed-forward after it (`mlp_expansion`; the authors
use a GeLU-gated MLP of factor 1.3, and none after mLSTM layers, whose up-projection lives in the layer).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import (
    DType,
    Params,
    RecurrentCell,
    accumulation_dtype,
    check_sequence_axis,
    projection,
)
from seqjax.cells.padding import restore_token_order, valid_tokens_first
from seqjax.cells.registry import register
from seqjax.cells.segment_remat import cpu_auto_segments
from seqjax.cells.short_conv import short_conv
from seqjax.common.checks import check_positive_int
from seqjax.scan.mlstm import EPS, METHODS, MLSTMMemory, mlstm, mlstm_step
from seqjax.scan.sequence_parallel import sequence_parallel_mlstm
from seqjax.scan.sequential import scan_recurrence

__all__ = [
    "MLSTM",
    "SLSTM",
    "MLSTMState",
    "SLSTMState",
    "headwise_layer_norm",
    "powerlaw_forget_bias",
    "slstm_pointwise",
]


#: `SLSTM.recurrent_init`: the authors' recurrent_weight_init options.
RECURRENT_INITS = ("zeros", "standard")


class MLSTMState(NamedTuple):
    conv: jax.Array  # [*batch, conv_size - 1, inner]: the last conv inputs of the segment
    c: jax.Array  # [*batch, H, d, d]: the stabilised matrix memory
    n: jax.Array  # [*batch, H, d]: the stabilised normaliser
    m: jax.Array  # [*batch, H]: the stabiliser


class SLSTMState(NamedTuple):
    conv: jax.Array  # [*batch, max(conv_size - 1, 0), hidden]: the last conv inputs of the segment
    h: jax.Array  # [*batch, hidden]: the output fed back through R
    c: jax.Array  # [*batch, hidden]: the stabilised cell state
    n: jax.Array  # [*batch, hidden]: the stabilised normaliser
    m: jax.Array  # [*batch, hidden]: the stabiliser


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------
def headwise_layer_norm(x: jax.Array, weight: jax.Array, eps: float = 1e-5) -> jax.Array:
    """xLSTM's `MultiHeadLayerNorm`: LayerNorm over each head's features, scale 1 + weight, no bias.

    x [..., H, d]; weight [H, d] (stored as the offset from 1, zeros at init, as the authors' residual
    weight). Mean and biased variance over d, as torch's `group_norm` with H groups.

    >>> import jax.numpy as jnp
    >>> headwise_layer_norm(jnp.array([[1.0, 3.0], [2.0, 8.0]]), jnp.zeros((2, 2)), eps=0.0)
    Array([[-1.,  1.],
           [-1.,  1.]], dtype=float32)
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * (1.0 + weight.astype(x.dtype))


def powerlaw_forget_bias(head_dim: int, block_ratio: float = 0.0) -> jax.Array:
    """The authors' "powerlaw_blockdependent" sLSTM forget-gate bias of one head [head_dim]:
    5 − 12 · (j / (d − 1))^(0.3 + 1.3 · block_ratio), j = 0 .. d − 1 (from 5 down to −7).

    block_ratio is the block's index over (number of blocks − 1) in the authors' stack; a seqjax cell
    does not know its depth and uses 0. A head of one unit gets 5.

    >>> powerlaw_forget_bias(3)
    Array([ 5.      , -4.747...,  -7.      ], dtype=float32)
    """
    x = jnp.arange(head_dim, dtype=jnp.float32) / max(head_dim - 1, 1)
    return 5.0 - 12.0 * x ** (0.3 + 1.3 * block_ratio)


def _normal(key: jax.Array, shape: tuple[int, ...], std: float, dtype: DType) -> jax.Array:
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def _conv_params(key: jax.Array, taps: int, width: int, dtype: DType) -> dict[str, jax.Array]:
    """torch's `Conv1d` default for a depthwise conv (fan-in = taps): weight and bias U(±taps^-½)."""
    bound = 1 / math.sqrt(taps)
    k_w, k_b = jax.random.split(key)
    return {
        "conv_w": jax.random.uniform(k_w, (taps, width), dtype, -bound, bound),
        "conv_b": jax.random.uniform(k_b, (width,), dtype, -bound, bound),
    }


def _conv_step(window: jax.Array, x: jax.Array, params: Params) -> tuple[jax.Array, jax.Array]:
    """One token of the depthwise conv (+ bias): (conv output [..., F], the window after it)."""
    full = jnp.concatenate([window.astype(x.dtype), x[..., None, :]], axis=-2)  # [..., K, F]
    out = jnp.einsum("...kf,kf->...f", full, params["conv_w"].astype(x.dtype))
    return out + params["conv_b"].astype(x.dtype), full[..., 1:, :]


# --------------------------------------------------------------------------------------------------
# mLSTM
# --------------------------------------------------------------------------------------------------
@register("mlstm")
@dataclasses.dataclass(frozen=True)
class MLSTM(RecurrentCell):
    """The mLSTM layer of xLSTM (Beck et al. 2024; the authors' `mLSTMLayer`), [.., d_model] -> [.., d_model]:

        x_m, z = W_x u, W_z u                          inner width D_i = proj_factor · d_model
        x_c = SiLU(causal depthwise conv(x_m) + b_conv)
        q, k = BD_q x_c, BD_k x_c ;  v = BD_v x_m      block-diagonal, blocks of qkv_block_size
        ĩ, f̃ = W_i [q; k; v] + b_i, W_f [q; k; v] + b_f                   one per head
        m_t = max(log σ(f̃_t) + m_{t−1}, ĩ_t)
        C_t = e^{log σ(f̃_t) + m_{t−1} − m_t} C_{t−1} + e^{ĩ_t − m_t} k̂_t v_tᵀ      k̂ = k / √d
        n_t = e^{log σ(f̃_t) + m_{t−1} − m_t} n_{t−1} + e^{ĩ_t − m_t} k̂_t
        h_t = C_tᵀ q_t / (max(|n_tᵀ q_t|, e^{−m_t}) + eps)                       per head (d = D_i / H)
        y_t = W_down [ (LN_heads(h_t) + skip ⊙ x_c) ⊙ SiLU(z_t) ]

    LN_heads is a LayerNorm over each head's d features (scale 1 + `norm_w`, no bias). The recurrence
    runs in `seqjax.scan.mlstm`: the stabilised chunkwise form for `method="auto"`/`"chunked"`, the token
    scan for `"recurrent"`; `step` is the recurrent form, carrying the conv window and (C, n, m).

    Hyperparameters:
      d_model: input and output width (the model's width; `BackboneConfig` fills it in).
      num_heads: H (4, the authors' default); proj_factor: D_i / d_model (2.0).
      conv_size: taps of the causal conv (4); qkv_block_size: block size of the q/k/v projections (4).
      method: "auto" (= "chunked"; on CPU, sequences above `auto_segment_above` = 8192 tokens run in
        rematerialised 1024-token segments), "chunked" or "recurrent"; chunk_size: tokens per chunk (64).
      eps: the denominator's eps (1e-6); norm_eps: the per-head LayerNorm's (1e-5).
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split): the conv
        takes its K − 1 inputs from the previous shard and the recurrence runs
        `seqjax.scan.sequence_parallel_mlstm`; see `seqjax.cells.with_sequence_axis`.
      dtype: compute dtype of the up- and down-projections (bfloat16 allowed); the conv, the
        block-diagonal q/k/v, the gates, the norm and the whole recurrence run in float32 (float64 when
        dtype is float64). param_dtype: the parameters' dtype.

    Initialisation (the authors', but for `w_down`): `w_x`, `w_z`, `w_q`, `w_k`, `w_v` ~ N(0, 2 / (5
    d_model)) ("small init"); the conv U(±conv_size^-½) (torch's default); gate weights `w_i`, `w_f`
    zero, `b_f` = linspace(3, 6) over the heads (forget gates σ ≈ 0.95–0.998), `b_i` ~ N(0, 0.1²);
    `norm_w` 0 (scale 1); `skip` 1; `w_down` Glorot-uniform (the authors' Wang init, N(0, (2 / (blocks
    · √d_model))²), needs the depth of the stack, which a cell does not know). Biases, `norm_w` and
    `skip` are in the "no_decay" group, as the authors' optimiser groups put every parameter but the
    weights.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.MLSTM(d_model=8, num_heads=2)
    >>> params = cell.init(jax.random.PRNGKey(0), 8)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 8)))
    >>> ys.shape, state.c.shape, state.n.shape, state.m.shape, state.conv.shape   # D_i = 16, d = 8
    ((2, 7, 8), (2, 2, 8, 8), (2, 2, 8), (2, 2), (2, 3, 16))
    >>> state, y = cell.step(params, state, jnp.ones((2, 8)))
    >>> y.shape
    (2, 8)
    """

    d_model: int
    num_heads: int = 4
    proj_factor: float = 2.0
    conv_size: int = 4
    qkv_block_size: int = 4
    method: str = "auto"
    chunk_size: int = 64
    eps: float = EPS
    norm_eps: float = 1e-5
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: On CPU, `method="auto"` runs sequences longer than this in rematerialised 1024-token segments
    #: (`seqjax.cells.segment_remat.cpu_auto_segments`). Measured at 16k tokens, batch 8, 8 heads of 64,
    #: 2 CPU cores (benchmarks/recent_cells_16k_cpu.md): 6.8 GiB whole, 0.69 GiB in segments;
    #: 1.03x the time: 11.4 s against 11.0 s.
    auto_segment_above: ClassVar[int] = 8192

    def __post_init__(self) -> None:
        for field in ("d_model", "num_heads", "conv_size", "qkv_block_size", "chunk_size"):
            check_positive_int("MLSTM", field, getattr(self, field))
        check_sequence_axis("MLSTM", self.sequence_axis)
        if not (isinstance(self.proj_factor, int | float) and self.proj_factor > 0 and self.inner_size >= 1):
            raise ValueError(f"MLSTM: proj_factor must be > 0, got {self.proj_factor!r}.")
        for field, divisor in (("num_heads", self.num_heads), ("qkv_block_size", self.qkv_block_size)):
            if self.inner_size % divisor:
                raise ValueError(
                    f"MLSTM: the inner width round(proj_factor * d_model) = {self.inner_size} must be a "
                    f"multiple of {field}={divisor}."
                )
        if not self.eps >= 0:
            raise ValueError(f"MLSTM: eps must be >= 0, got {self.eps!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"MLSTM: norm_eps must be > 0, got {self.norm_eps!r}.")
        if self.method not in METHODS:
            raise ValueError(f"MLSTM: method must be one of {METHODS}, got {self.method!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def inner_size(self) -> int:
        """D_i = round(proj_factor · d_model): the width of both up-projected branches."""
        return round(self.proj_factor * self.d_model)

    @property
    def head_dim(self) -> int:
        """d = D_i / H: the width of each head's q, k, v (the memory is d × d per head)."""
        return self.inner_size // self.num_heads

    @property
    def output_size(self) -> int:
        return self.d_model

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_x"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        if input_size != self.d_model:
            raise ValueError(
                f"MLSTM: input_size={input_size} but d_model={self.d_model}; the layer maps d_model to "
                f"d_model, so build it with d_model={input_size} or project the inputs first."
            )
        d, di, h, pd = self.d_model, self.inner_size, self.num_heads, self.param_dtype
        bs = self.qkv_block_size
        keys = jax.random.split(key, 8)
        small = math.sqrt(2 / (5 * d))
        return {
            "w_x": _normal(keys[0], (d, di), small, pd),
            "w_z": _normal(keys[1], (d, di), small, pd),
            **_conv_params(keys[2], self.conv_size, di, pd),
            "w_q": _normal(keys[3], (di // bs, bs, bs), small, pd),
            "w_k": _normal(keys[4], (di // bs, bs, bs), small, pd),
            "w_v": _normal(keys[5], (di // bs, bs, bs), small, pd),
            "w_i": jnp.zeros((3, di, h), pd),
            "b_i": _normal(keys[6], (h,), 0.1, pd),
            "w_f": jnp.zeros((3, di, h), pd),
            "b_f": jnp.linspace(3.0, 6.0, h, dtype=jnp.float32).astype(pd),
            "norm_w": jnp.zeros((h, self.head_dim), pd),
            "skip": jnp.ones((di,), pd),
            "w_down": jax.nn.initializers.glorot_uniform()(keys[7], (di, d), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        block = ("qkv_blocks", "block_in", "block_out")
        return {
            "w_x": ("embed", "mlp"),
            "w_z": ("embed", "mlp"),
            "conv_w": ("conv_width", "mlp"),
            "conv_b": ("mlp",),
            "w_q": block,
            "w_k": block,
            "w_v": block,
            "w_i": ("qkv", "mlp", "heads"),
            "b_i": ("heads",),
            "w_f": ("qkv", "mlp", "heads"),
            "b_f": ("heads",),
            "norm_w": ("heads", "head_dim"),
            "skip": ("mlp",),
            "w_down": ("mlp", "embed"),
        }

    def param_groups(self) -> dict[str, str]:
        """ "no_decay" for the biases, the norm's weight and the skip (the authors' optimiser groups give
        weight decay to the weight matrices only), "default" for the rest."""
        no_decay = {"conv_b", "b_i", "b_f", "norm_w", "skip"}
        return {name: "no_decay" if name in no_decay else "default" for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> MLSTMState:
        h, d, di = self.num_heads, self.head_dim, self.inner_size
        return MLSTMState(
            conv=jnp.zeros((*batch_shape, self.conv_size - 1, di), dtype),
            c=jnp.zeros((*batch_shape, h, d, d), dtype),
            n=jnp.zeros((*batch_shape, h, d), dtype),
            m=jnp.zeros((*batch_shape, h), dtype),
        )

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """x [..., d_model] -> the two up-projected branches x_m and z [..., D_i], in float32."""
        return {
            "x": self._mm(x, params["w_x"], "...i,io->...o"),
            "z": self._mm(x, params["w_z"], "...i,io->...o"),
        }

    def _blocks(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """The block-diagonal projection of x [..., D_i] -> [..., H, d] (w [blocks, in, out]), in float32
        whatever `dtype` is: it is D_i · qkv_block_size multiply-adds per token, and XLA's CPU runtime has
        no batched bfloat16 matmul with a float32 result. (A batched matmul: on CPU its forward and
        backward together beat broadcast multiply-adds and a dense block-diagonal matmul.)"""
        bs, acc = self.qkv_block_size, self._acc
        lead = x.shape[:-1]
        blocks = x.astype(acc).reshape(*lead, -1, bs)
        out = jnp.einsum("...bi,bio->...bo", blocks, w.astype(acc))
        return out.reshape(*lead, self.num_heads, self.head_dim)

    def _gate_weights(self, params: Params) -> tuple[jax.Array, jax.Array]:
        """W_i [q; k; v] and W_f [q; k; v] as maps of the conv branch and of x_m: q and k are
        block-diagonal maps of x_c and v of x_m, so the gates are x_c (BD_q W_q + BD_k W_k) + x_m BD_v W_v
        (each [D_i, 2H], ĩ then f̃). Composing the small weights once replaces three skinny matmuls over
        the sequence (and a [.., 3, D_i] copy) by two."""
        acc, bs = self._acc, self.qkv_block_size
        w = jnp.concatenate([params["w_i"], params["w_f"]], axis=-1).astype(acc)  # [3, D_i, 2H]
        compose = lambda bd, w_s: jnp.einsum(
            "bio,boh->bih", bd.astype(acc), w_s.reshape(-1, bs, w_s.shape[-1])
        )
        conv = compose(params["w_q"], w[0]) + compose(params["w_k"], w[1])
        return conv.reshape(self.inner_size, -1), compose(params["w_v"], w[2]).reshape(self.inner_size, -1)

    def _features(self, params: Params, x_m: jax.Array, x_c: jax.Array) -> tuple[jax.Array, ...]:
        """q, k [..., H, d] from the conv branch, v from x_m, and the gate pre-activations ĩ, f̃ [..., H]
        (float32: the input gate is exponentiated)."""
        q, k, v = (
            self._blocks(x_c, params["w_q"]),
            self._blocks(x_c, params["w_k"]),
            self._blocks(x_m, params["w_v"]),
        )
        acc, h = self._acc, self.num_heads
        w_c, w_m = self._gate_weights(params)
        gates = jnp.matmul(x_c.astype(acc), w_c) + jnp.matmul(x_m.astype(acc), w_m)
        ig = gates[..., :h] + params["b_i"].astype(acc)
        fg = gates[..., h:] + params["b_f"].astype(acc)
        return q, k, v, ig, fg

    def _output(self, params: Params, h: jax.Array, x_c: jax.Array, z: jax.Array) -> jax.Array:
        """Per-head LayerNorm of h [..., H, d], the skip from the conv branch, SiLU(z), W_down."""
        h = headwise_layer_norm(h, params["norm_w"], self.norm_eps).reshape(*h.shape[:-2], -1)
        h = (h + params["skip"].astype(h.dtype) * x_c) * jax.nn.silu(z)
        return self._mm(h, params["w_down"], "...i,io->...o").astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def recur(
        self, params: Params, state: MLSTMState, projected: dict[str, jax.Array]
    ) -> tuple[MLSTMState, jax.Array]:
        acc = self._acc
        x_m = projected["x"]
        conv, window = _conv_step(state.conv.astype(acc), x_m, params)
        x_c = jax.nn.silu(conv)
        q, k, v, ig, fg = self._features(params, x_m, x_c)
        memory = MLSTMMemory(state.c.astype(acc), state.n.astype(acc), state.m.astype(acc))
        memory, h = mlstm_step(memory, q, k, v, ig, fg, eps=self.eps)
        new = MLSTMState(
            conv=window.astype(state.conv.dtype),
            c=memory.c.astype(state.c.dtype),
            n=memory.n.astype(state.n.dtype),
            m=memory.m.astype(state.m.dtype),
        )
        return new, self._output(params, h, x_c, projected["z"])

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: MLSTMState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, MLSTMState]:
        """xs [*batch, time, d_model] -> ys [*batch, time, d_model], state after the last valid token. The
        recurrence runs in `seqjax.scan.mlstm` ("auto"/"chunked": the stabilised chunkwise form;
        "recurrent": the token scan)."""
        segmented = cpu_auto_segments(self, xs, self.auto_segment_above)
        if segmented is not None:
            return segmented.apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))
        p = self.project_inputs(params, u)
        conv, window = short_conv(
            p["x"],
            flat(state.conv).astype(acc),
            params["conv_w"].astype(acc),
            resets,
            n_valid,
            sequence_axis=self.sequence_axis,
        )
        x_c = jax.nn.silu(conv + params["conv_b"].astype(acc))
        q, k, v, ig, fg = self._features(params, p["x"], x_c)
        memory = MLSTMMemory(*(flat(a).astype(acc) for a in (state.c, state.n, state.m)))
        method = "chunked" if self.method == "auto" else self.method
        engine = mlstm
        if self.sequence_axis is not None:
            engine = functools.partial(sequence_parallel_mlstm, sequence_axis=self.sequence_axis)
        h, memory = engine(
            q,
            k,
            v,
            ig,
            fg,
            memory,
            resets=resets,
            mask=valid,
            method=method,
            chunk_size=self.chunk_size,
            eps=self.eps,
        )
        ys = restore_token_order(self._output(params, h, x_c, p["z"]), order, valid)
        unflat = lambda a, like: a.reshape(like.shape).astype(like.dtype)
        final = MLSTMState(
            conv=unflat(window, state.conv),
            c=unflat(memory.c, state.c),
            n=unflat(memory.n, state.n),
            m=unflat(memory.m, state.m),
        )
        return ys.reshape(*batch_shape, length, self.d_model), final


# --------------------------------------------------------------------------------------------------
# sLSTM
# --------------------------------------------------------------------------------------------------
def slstm_pointwise(
    i_raw: jax.Array,
    f_raw: jax.Array,
    z_raw: jax.Array,
    o_raw: jax.Array,
    c: jax.Array,
    n: jax.Array,
    m: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One token of the sLSTM's stabilised pointwise update, as the authors' `slstm_forward_pointwise`
    (vanilla and CUDA backends):

        m' = ĩ if n = 0 else max(ĩ, log σ(f̃) + m)
        i = min(exp(ĩ − m'), 1) ;  f = min(exp(log σ(f̃) + m − m'), 1)
        c' = f c + i tanh(z̃) ;  n' = f n + i ;  h' = σ(õ) c' / n'

    Args:
      i_raw, f_raw, z_raw, o_raw: the gate pre-activations ĩ, f̃, z̃, õ (recurrent part included).
      c, n, m: the state; every argument has the same shape.

    Returns:
      (h', c', n', m').

    >>> import jax.numpy as jnp
    >>> zero, ten = jnp.zeros(1), jnp.full(1, 10.0)
    >>> h, c, n, m = slstm_pointwise(jnp.full(1, 2.0), zero, ten, ten, zero, zero, zero)
    >>> float(m[0]), float(n[0]), round(float(h[0]), 4)   # first token: m = ĩ, n = 1, h = σ(õ) tanh(z̃)
    (2.0, 1.0, 1.0)
    """
    log_f_plus_m = m + jax.nn.log_sigmoid(f_raw)
    m_new = jnp.where(n == 0, i_raw, jnp.maximum(i_raw, log_f_plus_m))
    i_act = jnp.minimum(jnp.exp(i_raw - m_new), 1.0)
    f_act = jnp.minimum(jnp.exp(log_f_plus_m - m_new), 1.0)
    c_new = f_act * c + i_act * jnp.tanh(z_raw)
    n_new = f_act * n + i_act
    return jax.nn.sigmoid(o_raw) * c_new / n_new, c_new, n_new, m_new


@register("slstm")
@dataclasses.dataclass(frozen=True)
class SLSTM(RecurrentCell):
    """The sLSTM layer of xLSTM (Beck et al. 2024; the authors' `sLSTMLayer`), [.., input] -> [.., hidden]:

        x_c = SiLU(causal depthwise conv(x) + b_conv)                 (conv_size = 0: x_c = x)
        ĩ, f̃ = W_i x_c, W_f x_c ;  z̃, õ = W_z x, W_o x               + R_g h_{t−1} + b_g for each gate g
        m_t = max(ĩ_t, log σ(f̃_t) + m_{t−1})          (m_t = ĩ_t while n_{t−1} = 0, at the start)
        i_t = exp(ĩ_t − m_t) ;  f_t = exp(log σ(f̃_t) + m_{t−1} − m_t)      both ≤ 1
        c_t = f_t c_{t−1} + i_t tanh(z̃_t) ;  n_t = f_t n_{t−1} + i_t ;  h_t = σ(õ_t) c_t / n_t
        y_t = LN_heads(h_t)

    The recurrent matrices R_g are block-diagonal: each of the H heads mixes only its own
    d = hidden / H units (`r` [H, d, 4, d], the authors' external layout). The gates are per unit; the
    forget gate is a sigmoid (its log is log σ), the input gate exponential. LN_heads is a LayerNorm over
    each head's units (scale 1 + `norm_w`, no bias). A nonlinear recurrence, so `apply` is a `lax.scan`
    (after the conv and all input projections, which run over the whole sequence at once); `step` carries
    the conv window and (h, c, n, m).

    Hyperparameters:
      hidden_size: the memory width and output width (`BackboneConfig` fills in d_model).
      num_heads: H (4), must divide hidden_size. conv_size: taps of the conv (4; 0 = no conv, as the
        authors' conv1d_kernel_size=0). With a conv the layer reads hidden_size features (the authors'
        layer maps the model width to itself); without one any input width.
      recurrent_init: "zeros" (the authors' default: R = 0) or "standard" (U(±hidden_size^-½)).
      norm_eps: the LayerNorm's eps (1e-5). unroll: `lax.scan` unroll.
      dtype: compute dtype of the input and recurrent matmuls (bfloat16 allowed); gates and states are
        float32 (float64 when dtype is float64). param_dtype: the parameters' dtype.

    Initialisation (the authors' defaults): W_g ~ N(0, 2 / (5 · input)) ("small init"); R = 0
    (`recurrent_init`); b_f = `powerlaw_forget_bias` per head (5 down to −7: a spread of time scales),
    b_i = b_z = b_o = 0; the conv U(±conv_size^-½); `norm_w` 0. R, the biases and `norm_w` are in the
    "no_decay" group, as the authors' optimiser groups put them.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.SLSTM(hidden_size=8, num_heads=2)
    >>> params = cell.init(jax.random.PRNGKey(0), 8)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 8)))
    >>> ys.shape, state.c.shape, state.conv.shape, params["r"].shape
    ((2, 7, 8), (2, 8), (2, 3, 8), (2, 4, 4, 4))
    """

    nonlinear_recurrence: ClassVar[bool] = True

    hidden_size: int
    num_heads: int = 4
    conv_size: int = 4
    recurrent_init: str = "zeros"
    norm_eps: float = 1e-5
    unroll: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        for field in ("hidden_size", "num_heads", "unroll"):
            check_positive_int("SLSTM", field, getattr(self, field))
        if isinstance(self.conv_size, bool) or not isinstance(self.conv_size, int) or self.conv_size < 0:
            raise ValueError(
                f"SLSTM: conv_size must be an integer >= 0 (0: no conv), got {self.conv_size!r}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"SLSTM: hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}."
            )
        if self.recurrent_init not in RECURRENT_INITS:
            raise ValueError(
                f"SLSTM: recurrent_init must be one of {RECURRENT_INITS}, got {self.recurrent_init!r}."
            )
        if not self.norm_eps > 0:
            raise ValueError(f"SLSTM: norm_eps must be > 0, got {self.norm_eps!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """d = hidden_size / H: the units of each head's block of R."""
        return self.hidden_size // self.num_heads

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_i"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        if self.conv_size > 0 and input_size != self.hidden_size:
            raise ValueError(
                f"SLSTM: input_size={input_size} but hidden_size={self.hidden_size}; with a conv "
                f"(conv_size={self.conv_size}) the layer maps hidden_size to hidden_size as the authors' "
                f"does. Build it with hidden_size={input_size}, or conv_size=0 for any input width."
            )
        h, d, pd = self.num_heads, self.head_dim, self.param_dtype
        keys = jax.random.split(key, 6)
        small = math.sqrt(2 / (5 * input_size))
        params = {f"w_{g}": _normal(keys[i], (input_size, h, d), small, pd) for i, g in enumerate("ifzo")}
        bias = jnp.zeros((4, h, d), jnp.float32).at[1].set(powerlaw_forget_bias(d))
        if self.recurrent_init == "zeros":
            r = jnp.zeros((h, d, 4, d), pd)
        else:  # the authors' "standard": U(±hidden^-½)
            bound = 1 / math.sqrt(self.hidden_size)
            r = jax.random.uniform(keys[5], (h, d, 4, d), pd, -bound, bound)
        params.update(r=r, b=bias.astype(pd), norm_w=jnp.zeros((h, d), pd))
        if self.conv_size > 0:
            params.update(_conv_params(keys[4], self.conv_size, input_size, pd))
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = {f"w_{g}": ("embed", "heads", "head_dim") for g in "ifzo"}
        axes.update(r=("heads", "state", "gates", "head_dim"), b=("gates", "heads", "head_dim"))
        axes["norm_w"] = ("heads", "head_dim")
        if self.conv_size > 0:
            axes.update(conv_w=("conv_width", "embed"), conv_b=("embed",))
        return axes

    def param_groups(self) -> dict[str, str]:
        """ "no_decay" for R, the biases and the norm's weight (the authors' optimiser groups decay only
        parameters named "weight": the input projections and the conv), "default" for the rest."""
        no_decay = {"r", "b", "norm_w", "conv_b"}
        return {name: "no_decay" if name in no_decay else "default" for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> SLSTMState:
        zeros = jnp.zeros((*batch_shape, self.hidden_size), dtype)
        conv = jnp.zeros((*batch_shape, max(self.conv_size - 1, 0), self.hidden_size), dtype)
        return SLSTMState(conv=conv, h=zeros, c=zeros, n=zeros, m=zeros)

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """x [..., input] -> the conv input x and the pre-activations z̃, õ [..., 2, H, d] of x (with
        their biases), in float32."""
        w = jnp.stack([params["w_z"], params["w_o"]], axis=1)  # [input, 2, H, d]
        zo = self._mm(x, w, "...i,ighd->...ghd") + params["b"][2:].astype(self._acc)
        return {"x": x.astype(self._acc), "zo": zo}

    def _if_gates(self, params: Params, x_c: jax.Array) -> jax.Array:
        """ĩ, f̃ of the conv output [..., 2, H, d] (with their biases)."""
        w = jnp.stack([params["w_i"], params["w_f"]], axis=1)
        return self._mm(x_c, w, "...i,ighd->...ghd") + params["b"][:2].astype(self._acc)

    def _conv_branch(self, params: Params, conv: jax.Array) -> jax.Array:
        return jax.nn.silu(conv) if self.conv_size > 0 else conv

    def _cell(
        self, params: Params, core: tuple[jax.Array, ...], pre_x: jax.Array
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """One token of the recurrence: (h, c, n, m) [..., hidden] and the input pre-activations
        [..., 4, H, d] -> the new (h, c, n, m) and h [..., H, d]."""
        h, c, n, m = (a.reshape(*a.shape[:-1], self.num_heads, self.head_dim) for a in core)
        # Float32 whatever `dtype` is: hidden · 4 · d multiply-adds per token, and XLA's CPU runtime has no
        # batched (headwise) bfloat16 matmul with a float32 result.
        pre = pre_x + jnp.einsum("...hi,higj->...ghj", h, params["r"].astype(h.dtype))
        h, c, n, m = slstm_pointwise(*(pre[..., g, :, :] for g in range(4)), c, n, m)
        return tuple(a.reshape(*a.shape[:-2], -1) for a in (h, c, n, m)), h

    def _output(self, params: Params, h: jax.Array) -> jax.Array:
        y = headwise_layer_norm(h, params["norm_w"], self.norm_eps)
        return y.reshape(*y.shape[:-2], -1).astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def recur(
        self, params: Params, state: SLSTMState, projected: dict[str, jax.Array]
    ) -> tuple[SLSTMState, jax.Array]:
        acc = self._acc
        x = projected["x"]
        if self.conv_size > 0:
            conv, window = _conv_step(state.conv.astype(acc), x, params)
        else:
            conv, window = x, state.conv
        pre = jnp.concatenate(
            [self._if_gates(params, self._conv_branch(params, conv)), projected["zo"]], axis=-3
        )
        core = tuple(a.astype(acc) for a in (state.h, state.c, state.n, state.m))
        (h, c, n, m), heads = self._cell(params, core, pre)
        new = SLSTMState(
            conv=window.astype(state.conv.dtype),
            h=h.astype(state.h.dtype),
            c=c.astype(state.c.dtype),
            n=n.astype(state.n.dtype),
            m=m.astype(state.m.dtype),
        )
        return new, self._output(params, heads)

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: SLSTMState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, SLSTMState]:
        """xs [*batch, time, input] -> ys [*batch, time, hidden], state after the last valid token. The
        conv and every input projection run over the whole sequence; `lax.scan` runs the recurrence."""
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))
        p = self.project_inputs(params, u)
        window = flat(state.conv)
        if self.conv_size > 0:
            conv, window = short_conv(
                p["x"], window.astype(acc), params["conv_w"].astype(acc), resets, n_valid
            )
            conv = conv + params["conv_b"].astype(acc)
        else:
            conv = p["x"]
        pre = jnp.concatenate([self._if_gates(params, self._conv_branch(params, conv)), p["zo"]], axis=-3)
        time_major = lambda a: None if a is None else jnp.swapaxes(a, 0, 1)
        core = tuple(flat(a).astype(acc) for a in (state.h, state.c, state.n, state.m))
        heads, core = scan_recurrence(
            lambda s, x: self._cell(params, s, x),
            core,
            time_major(pre),
            initial=tuple(jnp.zeros_like(a) for a in core),
            resets=time_major(resets),
            mask=time_major(valid),
            unroll=self.unroll,
        )
        ys = restore_token_order(self._output(params, time_major(heads)), order, valid)
        unflat = lambda a, like: a.reshape(like.shape).astype(like.dtype)
        final = SLSTMState(
            unflat(window, state.conv), *(unflat(a, like) for a, like in zip(core, state[1:], strict=True))
        )
        return ys.reshape(*batch_shape, length, self.hidden_size), final
