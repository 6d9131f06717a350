"""RG-LRU and Griffin's recurrent block (De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with
Local Attention for Efficient Language Models"; the code of google-deepmind/recurrentgemma,
`recurrentgemma/jax/layers.py` and `modules.py`).

The cell is the whole recurrent block, i.e. what sits in the residual branch of a Griffin temporal-mixing
block (`RecurrentBlock`); per token, with W = `lru_width` split into H blocks for the gates:

    y_t = GeLU(W_y x_t + b_y)                                   the gate branch
    u_t = Conv1D(W_x x_t + b_x)                                 depthwise causal, `conv_size` taps, bias
    r_t = σ(BlockDiag_a(u_t)) ;  i_t = σ(BlockDiag_x(u_t))      recurrence and input gates, per head
    log a_t = −c · softplus(Λ) · r_t                            c = 8
    h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (i_t ⊙ u_t)              the RG-LRU
    out_t = W_out (h_t ⊙ y_t) + b_out

At the first token of a segment (after a reset, or from the initial state) h_{t−1} is ignored and the
√(1 − a_t²) factor is 1, as the reference does at `segment_pos == 0`. The state therefore carries a flag,
`started`, besides the conv window and h.

`step` is the recurrent form (conv window and h carried); `apply` runs the diagonal engine
`seqjax.scan.linear_recurrence` (`method`: "sequential", "associative", "chunked" or "auto"), whose custom
VJP keeps only a, h and h0 for the backward pass. With `sequence_axis` (a mesh axis name, inside
`jax.set_mesh`), the time axis is split over devices: the conv takes a halo of conv_size − 1 inputs from
the previous shard and the recurrence runs `seqjax.scan.sequence_parallel_linear_recurrence`.
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
from seqjax.scan.diagonal import DEFAULT_CHUNK, METHODS, linear_recurrence
from seqjax.scan.sequence_parallel import sequence_parallel_linear_recurrence

__all__ = ["RGLRU", "RGLRUState", "rglru_a_param_init", "sqrt_bound_derivative"]

#: RecurrentGemma's gate blocks are 256 wide (2B: 2560 / 10 heads; 9B: 4096 / 16).
GATE_BLOCK = 256


class RGLRUState(NamedTuple):
    conv: jax.Array  # [*batch, conv_size - 1, lru_width]: the last conv inputs of the segment
    h: jax.Array  # [*batch, lru_width]: the RG-LRU state
    started: jax.Array  # [*batch] int32: 0 before a segment's first token (the reference's segment_pos == 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x: jax.Array, max_gradient: float) -> jax.Array:
    """√x whose derivative is clipped at `max_gradient`: the backward pass uses 1 / (2√max(x, 1 /
    (4 max_gradient²))), as recurrentgemma's `sqrt_bound_derivative`, so √(1 − a²) has a finite
    gradient as a → 1.

    >>> import jax
    >>> float(sqrt_bound_derivative(4.0, 1000.0)), float(jax.grad(sqrt_bound_derivative)(0.0, 1000.0))
    (2.0, 1000.0)
    """
    del max_gradient
    return jnp.sqrt(x)


def _sqrt_fwd(x: jax.Array, max_gradient: float) -> tuple[jax.Array, jax.Array]:
    del max_gradient
    return jnp.sqrt(x), x


def _sqrt_bwd(max_gradient: float, x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    floor = 1.0 / (4.0 * float(max_gradient) ** 2)
    return (g * 0.5 * jax.lax.rsqrt(jnp.maximum(x, floor)),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


def rglru_a_param_init(
    key: jax.Array,
    shape: Sequence[int],
    min_rad: float = 0.9,
    max_rad: float = 0.999,
    dtype: DType = jnp.float32,
    eps: float = 1e-8,
) -> jax.Array:
    """Λ such that a = exp(−softplus(Λ)) lies on the ring min_rad ≤ a ≤ max_rad, uniform in area (a²
    uniform in [min_rad², max_rad²]): recurrentgemma's `rnn_real_param_init`.

    >>> import jax, jax.numpy as jnp
    >>> lam = rglru_a_param_init(jax.random.PRNGKey(0), (1000,))
    >>> a = jnp.exp(-jax.nn.softplus(lam))
    >>> bool(a.min() >= 0.9), bool(a.max() <= 0.999)
    (True, True)
    """
    unif = jax.random.uniform(key, tuple(shape), jnp.float32)
    log_a = 0.5 * jnp.log(unif * (max_rad**2 - min_rad**2) + min_rad**2 + eps)
    y = -log_a  # softplus(Λ) = −log a > 0; Λ = softplus⁻¹(y) = log(exp(y) − 1)
    return (y + jnp.log(-jnp.expm1(-y))).astype(dtype)


@register("rglru")
@dataclasses.dataclass(frozen=True)
class RGLRU(RecurrentCell):
    """Griffin's recurrent block around the RG-LRU (De et al. 2024), recurrentgemma's `RecurrentBlock`:

        y = GeLU(W_y x + b_y) ;  u = Conv1D(W_x x + b_x)                  conv: depthwise, causal, bias
        r_t = σ(BlockDiag_a u_t) ;  i_t = σ(BlockDiag_x u_t)              H blocks of W / H features
        log a_t = −c · softplus(Λ) ⊙ r_t
        h_t = a_t ⊙ h_{t−1} + √(1 − a_t²) ⊙ (i_t ⊙ u_t)   (a segment's first token: h_t = i_t ⊙ u_t)
        out = W_out (h ⊙ y) + b_out

    State `RGLRUState` (the last conv_size − 1 conv inputs, h [*, W], `started`): O(W · conv_size),
    constant in length.

    Hyperparameters:
      d_model: input and output width (the block maps d_model to d_model).
      lru_width: W, the width of the recurrence (default d_model).
      num_heads: H, the gates' diagonal blocks (default: blocks of 256 features, RecurrentGemma's; one
        block when W ≤ 256). H must divide W.
      conv_size: taps of the temporal conv (4).
      c: the recurrence gate's scale (8).
      min_rad, max_rad: the ring a = exp(−softplus(Λ)) is initialised on ([0.9, 0.999]).
      max_sqrt_gradient: the bound on d√x/dx in √(1 − a²) (1000).
      out_init_scale: variance scale of W_out (1; Griffin's models use 2 / num_layers).
      method: the diagonal engine's backend ("auto", "sequential", "associative", "chunked"); with
        "auto" on CPU, sequences above `auto_segment_above` = 8192 tokens run in rematerialised
        1024-token segments.
      chunk_size: tokens per chunk of the chunked backend (64).
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split); see
        `seqjax.cells.with_sequence_axis`.
      dtype: compute dtype of the projections (bfloat16 allowed); conv, gates and the recurrence are
        float32. param_dtype: dtype of the parameters.

    Parameters (recurrentgemma's initialisation: N(0, scale / fan_in), biases 0):
      w_x, w_y [d_model, W], b_x, b_y [W]        linear_x, linear_y (scale 1).
      conv_w [conv_size, W], conv_b [W]           Conv1D (scale 0.01, fan-in conv_size).
      gate_x_w, gate_a_w [H, W/H, W/H]            input and recurrence gates (scale 1, fan-in W, as
      gate_x_b, gate_a_b [H, W/H]                 flax's variance scaling computes it for these shapes).
      a_param [W]                                 Λ (`rglru_a_param_init`), group "ssm".
      w_out [W, d_model], b_out [d_model]         linear_out (scale out_init_scale).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.RGLRU(d_model=4, lru_width=6, num_heads=2)
    >>> params = cell.init(jax.random.PRNGKey(0), 4)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 4)))
    >>> ys.shape, state.h.shape, state.conv.shape, state.started.tolist()
    ((2, 7, 4), (2, 6), (2, 3, 6), [1, 1])
    """

    d_model: int
    lru_width: int | None = None
    num_heads: int | None = None
    conv_size: int = 4
    c: float = 8.0
    min_rad: float = 0.9
    max_rad: float = 0.999
    max_sqrt_gradient: float = 1000.0
    out_init_scale: float = 1.0
    method: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: On CPU, `method="auto"` runs sequences longer than this in rematerialised 1024-token segments
    #: (`seqjax.cells.segment_remat.cpu_auto_segments`). Measured at 16k tokens, batch 8, 8 heads of 64,
    #: 2 CPU cores (benchmarks/recent_cells_16k_cpu.md): 6.3 GiB whole, 0.65 GiB in segments;
    #: 1.08x the time: 8.2 s against 7.6 s.
    auto_segment_above: ClassVar[int] = 8192

    def __post_init__(self) -> None:
        for field in ("d_model", "conv_size", "chunk_size"):
            check_positive_int("RGLRU", field, getattr(self, field))
        check_sequence_axis("RGLRU", self.sequence_axis)
        if self.lru_width is not None:
            check_positive_int("RGLRU", "lru_width", self.lru_width)
        if self.num_heads is not None:
            check_positive_int("RGLRU", "num_heads", self.num_heads)
        if self.width % self.heads:
            raise ValueError(
                f"RGLRU: num_heads={self.heads} must divide lru_width={self.width} (the gates are "
                f"block-diagonal); give num_heads explicitly."
            )
        if not 0 < self.min_rad < self.max_rad < 1:
            raise ValueError(
                f"RGLRU: need 0 < min_rad < max_rad < 1 (the ring of initial a), got min_rad="
                f"{self.min_rad}, max_rad={self.max_rad}."
            )
        for field in ("c", "max_sqrt_gradient", "out_init_scale"):
            if not getattr(self, field) > 0:
                raise ValueError(f"RGLRU: {field} must be > 0, got {getattr(self, field)!r}.")
        if self.method not in METHODS:
            raise ValueError(f"RGLRU: method must be one of {METHODS}, got {self.method!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """W, the width of the recurrence (`lru_width`, default d_model)."""
        return self.d_model if self.lru_width is None else self.lru_width

    @property
    def heads(self) -> int:
        """H, the number of gate blocks (`num_heads`, default blocks of 256 features)."""
        if self.num_heads is not None:
            return self.num_heads
        return max(1, self.width // GATE_BLOCK) if self.width % GATE_BLOCK == 0 else 1

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
                f"RGLRU: input_size={input_size} but d_model={self.d_model}; the block maps d_model to "
                f"d_model, so build it with d_model={input_size} or project the inputs first."
            )
        d, w, h, k, pd = self.d_model, self.width, self.heads, self.conv_size, self.param_dtype
        keys = jax.random.split(key, 7)
        normal = lambda key, shape, variance: math.sqrt(variance) * jax.random.normal(key, shape, pd)
        return {
            "w_x": normal(keys[0], (d, w), 1.0 / d),
            "b_x": jnp.zeros((w,), pd),
            "w_y": normal(keys[1], (d, w), 1.0 / d),
            "b_y": jnp.zeros((w,), pd),
            "conv_w": normal(keys[2], (k, w), 0.01 / k),
            "conv_b": jnp.zeros((w,), pd),
            "gate_x_w": normal(keys[3], (h, w // h, w // h), 1.0 / w),
            "gate_x_b": jnp.zeros((h, w // h), pd),
            "gate_a_w": normal(keys[4], (h, w // h, w // h), 1.0 / w),
            "gate_a_b": jnp.zeros((h, w // h), pd),
            "a_param": rglru_a_param_init(keys[5], (w,), self.min_rad, self.max_rad, pd),
            "w_out": normal(keys[6], (w, d), self.out_init_scale / w),
            "b_out": jnp.zeros((d,), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "w_x": ("embed", "mlp"),
            "b_x": ("mlp",),
            "w_y": ("embed", "mlp"),
            "b_y": ("mlp",),
            "conv_w": ("conv_width", "mlp"),
            "conv_b": ("mlp",),
            "gate_x_w": ("heads", "head_dim", "gates"),
            "gate_x_b": ("heads", "gates"),
            "gate_a_w": ("heads", "head_dim", "gates"),
            "gate_a_b": ("heads", "gates"),
            "a_param": ("mlp",),
            "w_out": ("mlp", "embed"),
            "b_out": ("embed",),
        }

    def param_groups(self) -> dict[str, str]:
        """ "ssm" for Λ (`a_param`, the recurrence's decay, as for LRU's ν), "default" otherwise."""
        return {name: "ssm" if name == "a_param" else "default" for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> RGLRUState:
        return RGLRUState(
            conv=jnp.zeros((*batch_shape, self.conv_size - 1, self.width), dtype),
            h=jnp.zeros((*batch_shape, self.width), dtype),
            started=jnp.zeros(tuple(batch_shape), jnp.int32),
        )

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """x [..., d_model] -> the conv input W_x x + b_x and the gate branch GeLU(W_y x + b_y), [..., W]
        each, float32."""
        acc = self._acc
        return {
            "x": self._mm(x, params["w_x"], "...d,dw->...w") + params["b_x"].astype(acc),
            "y": jax.nn.gelu(self._mm(x, params["w_y"], "...d,dw->...w") + params["b_y"].astype(acc)),
        }

    def _gates(self, params: Params, u: jax.Array, fresh: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The conv output u [..., W] -> (log a_t, the normalised input √(1 − a_t²) ⊙ i_t ⊙ u_t), with the
        factor 1 where `fresh` [..., 1] (a segment's first token)."""
        acc = self._acc
        h = self.heads
        blocks = u.reshape(*u.shape[:-1], h, self.width // h)

        def gate(name: str) -> jax.Array:
            w, b = params[f"gate_{name}_w"], params[f"gate_{name}_b"].astype(acc)
            if h == 1:  # a plain matmul: the batched form's h axis costs XLA:CPU a transpose (2x slower)
                return jax.nn.sigmoid(self._mm(u, w[0], "...i,ij->...j") + b[0])
            return jax.nn.sigmoid(self._mm(blocks, w, "...hi,hij->...hj") + b).reshape(u.shape)

        log_a = -self.c * gate("a") * jax.nn.softplus(params["a_param"].astype(acc))
        # 1 − a² = −expm1(2 log a): exact as a → 1, where 1 − exp(2 log a) rounds to 0 in float32.
        multiplier = sqrt_bound_derivative(-jnp.expm1(2.0 * log_a), self.max_sqrt_gradient)
        multiplier = jnp.where(fresh, jnp.ones((), acc), multiplier)
        return log_a, u * gate("x") * multiplier

    def _output(self, params: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        out = self._mm(h * y, params["w_out"], "...w,wd->...d") + params["b_out"].astype(self._acc)
        return out.astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def recur(
        self, params: Params, state: RGLRUState, projected: dict[str, jax.Array]
    ) -> tuple[RGLRUState, jax.Array]:
        acc = self._acc
        window = jnp.concatenate([state.conv.astype(acc), projected["x"][..., None, :]], axis=-2)
        u = jnp.einsum("...kw,kw->...w", window, params["conv_w"].astype(acc)) + params["conv_b"].astype(acc)
        fresh = (state.started == 0)[..., None]
        log_a, b = self._gates(params, u, fresh)
        a = jnp.where(fresh, jnp.zeros((), acc), jnp.exp(log_a))
        h = a * state.h.astype(acc) + b
        new = RGLRUState(
            conv=window[..., 1:, :].astype(state.conv.dtype),
            h=h.astype(state.h.dtype),
            started=jnp.ones_like(state.started),
        )
        return new, self._output(params, h, projected["y"])

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: RGLRUState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, RGLRUState]:
        """xs [*batch, time, d_model] -> ys [*batch, time, d_model], state after the last valid token.
        The recurrence runs in `seqjax.scan.linear_recurrence` with this cell's `method`."""
        segmented = cpu_auto_segments(self, xs, self.auto_segment_above)
        if segmented is not None:
            return segmented.apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        started0 = state.started.reshape(bsz)
        # Valid tokens first: the conv and the recurrence see them in order; the engine passes the state
        # through the padding at the end.
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))
        any_token = jnp.full((bsz,), length > 0) if n_valid is None else n_valid > 0
        p = self.project_inputs(params, u)
        conv, window = short_conv(
            p["x"],
            flat(state.conv).astype(acc),
            params["conv_w"].astype(acc),
            resets,
            n_valid,
            sequence_axis=self.sequence_axis,
        )
        conv = conv + params["conv_b"].astype(acc)
        # A segment's first token: after a reset, or the first token from a state that has seen none.
        fresh = (jnp.arange(length)[None] == 0) & (started0 == 0)[:, None]
        if resets is not None:
            fresh = fresh | resets
        log_a, b = self._gates(params, conv, fresh[..., None])
        parallel = {} if self.sequence_axis is None else {"sequence_axis": self.sequence_axis}
        recurrence = linear_recurrence if not parallel else sequence_parallel_linear_recurrence
        hs, h_last = recurrence(
            jnp.exp(log_a),
            b,
            flat(state.h).astype(acc),
            axis=1,
            resets=fresh,
            mask=valid,
            method=self.method,
            chunk_size=self.chunk_size,
            **parallel,
        )
        ys = self._output(params, hs, p["y"])
        ys = restore_token_order(ys, order, valid)
        started = jnp.where(any_token, 1, started0).reshape(state.started.shape)
        final = RGLRUState(
            conv=window.reshape(state.conv.shape).astype(state.conv.dtype),
            h=h_last.reshape(state.h.shape).astype(state.h.dtype),
            started=started.astype(state.started.dtype),
        )
        return ys.reshape(*batch_shape, length, self.d_model), final
