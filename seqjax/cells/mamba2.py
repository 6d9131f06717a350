"""Mamba-2: the SSD layer of Dao & Gu (2024), "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality"; `mamba_ssm.modules.mamba2.Mamba2` with its defaults.

    z, xBC, dt = split(W_in u)                    z, x ∈ R^{H·P},  B, C ∈ R^{G·N},  dt ∈ R^H
    x, B, C = split(SiLU(causal depthwise conv(xBC) + b))
    Δ_t = softplus(dt_t + dt_bias) ;  A = −exp(A_log)                 one scalar A per head
    S_t = exp(Δ_t A) S_{t−1} + B_t (Δ_t x_t)ᵀ      S ∈ R^{N×P} per head; head h reads group h·G/H's B, C
    y_t = S_tᵀ C_t + D x_t
    out = W_out [ RMSNorm(y ⊙ SiLU(z)) ⊙ w ]        the RMS over groups of H·P/G channels

The SSM is the scalar-decay matrix recurrence of `seqjax.scan.matrix_recurrence` (state space duality:
q = C, k = B, v = Δ x, log γ = Δ A), with B and C grouped (one per group, shared by H / G heads). `step`
carries the conv window and S: the recurrent form. `apply` runs the chunkwise SSD form for
`method="auto"` / `"chunked"` (intra-chunk masked matmuls, inter-chunk state passing), with the SSD and
the gated norm and output projection fused into the chunk loop (`fused=True`), or the token scan for
`"recurrent"`. With `sequence_axis` (a mesh axis name, inside `jax.set_mesh`), the time axis is split over
devices: the conv takes a halo of d_conv − 1 inputs from the previous shard and the SSD runs
`seqjax.scan.sequence_parallel_linear_attention` (unfused).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

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
from seqjax.scan.matrix_recurrence import METHODS, linear_attention, linear_attention_fused, matrix_step
from seqjax.scan.sequence_parallel import sequence_parallel_linear_attention

__all__ = ["Mamba2", "Mamba2State", "gated_rms_norm"]

#: the parameters the fused chunk loop reads (its project and finish functions); the input projection
#: and the conv run before it, over the whole sequence.
_FUSED_PARAMS = ("dt_bias", "A_log", "D", "norm_scale", "out_proj")


class Mamba2State(NamedTuple):
    """The state of `Mamba2`: the conv window and the SSM state of every head.

    conv [*batch, d_conv − 1, conv_dim]: the last d_conv − 1 conv inputs (the x, B, C channels) of the
    segment; ssm [*batch, H, N, P]: S per head (the reference keeps its transpose, [H, P, N]).

    >>> from seqjax import cells
    >>> state = cells.Mamba2(d_model=8, state_size=4, head_dim=4).initial_state((2,))
    >>> state.conv.shape, state.ssm.shape                      # conv_dim = 16 + 2·4; H = 16 / 4
    ((2, 3, 24), (2, 4, 4, 4))
    """

    conv: jax.Array
    ssm: jax.Array


def gated_rms_norm(
    y: jax.Array,
    z: jax.Array,
    scale: jax.Array,
    *,
    groups: int = 1,
    eps: float = 1e-5,
    norm_before_gate: bool = False,
) -> jax.Array:
    """Mamba-2's gated RMSNorm (`mamba_ssm.ops.triton.layernorm_gated.rms_norm_ref`), over the last axis.

    norm_before_gate=False (Mamba-2's): RMSNorm(y ⊙ SiLU(z)) ⊙ scale; True: RMSNorm(y) ⊙ scale ⊙ SiLU(z).
    The mean square is taken over each of `groups` equal slices of the last axis (`group_size`).

    >>> import jax.numpy as jnp
    >>> out = gated_rms_norm(jnp.array([3.0, -4.0]), jnp.full(2, 30.0), jnp.ones(2), eps=0.0)
    >>> [round(v, 4) for v in out.tolist()]   # a gate of SiLU(30) ≈ 30 cancels: [3, −4] / √12.5
    [0.8485, -1.1314]
    """
    if not norm_before_gate:
        y = y * jax.nn.silu(z)
    grouped = y.reshape(*y.shape[:-1], groups, y.shape[-1] // groups)
    grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped * grouped, axis=-1, keepdims=True) + eps)
    out = grouped.reshape(y.shape) * scale.astype(y.dtype)
    if norm_before_gate:
        out = out * jax.nn.silu(z)
    return out


def _inverse_softplus(y: jax.Array) -> jax.Array:
    return y + jnp.log(-jnp.expm1(-y))


@register("mamba2")
@dataclasses.dataclass(frozen=True)
class Mamba2(RecurrentCell):
    """The Mamba-2 block (SSD), mapping [.., d_model] -> [.., d_model]; `mamba_ssm`'s `Mamba2` layer.

        z, xBC, dt = split(W_in u) ;  x, B, C = split(SiLU(conv(xBC) + b))      depthwise causal conv
        Δ = softplus(dt + dt_bias) ;  A = −exp(A_log)                            [H] each
        S_t = exp(Δ_t A) S_{t−1} + B_t (Δ_t x_t)ᵀ ;  y_t = S_tᵀ C_t + D x_t       per head, S ∈ R^{N×P}
        out = W_out [ RMSNorm(y ⊙ SiLU(z)) ⊙ w ]                                 RMS per group of channels

    d_inner = expand · d_model = H · P channels in H heads of P (`head_dim`); B and C come in G groups
    (`num_groups`) of N (`state_size`), group g serving heads g·H/G … (g+1)·H/G − 1.

    Initialisation (the reference's `Mamba2.__init__`): A ~ U[a_min, a_max] = U[1, 16] per head, stored as
    `A_log = log A`; `dt_bias` the inverse softplus of dt ~ logU[dt_min, dt_max] = [1e-3, 0.1] floored at
    dt_floor = 1e-4; D = 1 per head; the norm scale w = 1; the conv weight and bias U(±1/√d_conv) and the
    projections U(±1/√fan_in) (torch's `Conv1d` and `Linear` defaults). `A_log`, `dt_bias` and `D` are in
    the "ssm" parameter group (the reference marks them `_no_weight_decay`).

    Hyperparameters:
      d_model: input and output width.
      state_size: N (Mamba-2's d_state, 128).
      expand: d_inner = expand · d_model (2).
      head_dim: P; None gives gcd(64, d_inner): the reference's 64 where d_inner is a multiple of 64,
        else the largest power of two that divides d_inner (so any d_model has a default).
      num_groups: G, the groups of B and C (1); must divide H = d_inner / P.
      d_conv: conv taps (4).
      dt_min, dt_max, dt_floor, a_min, a_max: the initialisation ranges above.
      norm_before_gate: False (the reference's): the gate multiplies before the norm.
      norm_eps: the gated RMSNorm's epsilon (1e-5).
      method: "auto" (= "chunked"; on CPU, sequences above `auto_segment_above` = 8192 tokens run in
        rematerialised 1024-token segments), "chunked" or "recurrent": the SSD engine `apply` uses.
      chunk_size: tokens per chunk of the chunked form (64; the reference's GPU kernels use 256).
      fused: run the SSD, D skip, gated norm and output projection chunk by chunk inside the engine's
        loop, recomputed in the backward pass (`linear_attention_fused`); same values and gradients.
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split; the SSD
        then runs unfused); see `seqjax.cells.with_sequence_axis`.
      dtype: compute dtype of the matmuls (bfloat16 allowed); conv, gates, norm and S are float32.
      param_dtype: dtype of the parameters.

    Parameters: `in_proj` [d_model, 2·d_inner + 2·G·N + H] (columns z, x, B, C, dt, as the reference's
    in_proj rows), `conv_w` [d_conv, d_inner + 2·G·N] and `conv_b` (the conv over x, B, C), `dt_bias`,
    `A_log`, `D` [H], `norm_scale` [d_inner], `out_proj` [d_inner, d_model].

    Padding: Δ is zeroed at padded tokens (γ = 1, no input), so the state does not move, and the conv
    skips them (valid tokens are compacted to the front first). Resets clear S and the conv window.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Mamba2(d_model=8, state_size=4, head_dim=4, num_groups=2)
    >>> params = cell.init(jax.random.PRNGKey(0), 8)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 8)))
    >>> ys.shape, state.ssm.shape, cell.num_heads              # d_inner = 16 = 4 heads of 4
    ((2, 7, 8), (2, 4, 4, 4), 4)
    """

    d_model: int
    state_size: int = 128
    expand: int = 2
    head_dim: int | None = None
    num_groups: int = 1
    d_conv: int = 4
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    a_min: float = 1.0
    a_max: float = 16.0
    norm_before_gate: bool = False
    norm_eps: float = 1e-5
    method: str = "auto"
    chunk_size: int = 64
    fused: bool = True
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: On CPU, `method="auto"` runs sequences longer than this in rematerialised 1024-token segments
    #: (`seqjax.cells.segment_remat.cpu_auto_segments`). Measured at 16k tokens, batch 8, 8 heads of 64,
    #: 2 CPU cores (benchmarks/recent_cells_16k_cpu.md): 5.5 GiB whole, 0.66 GiB in segments;
    #: 1.21x the time: 12.7 s against 10.5 s.
    auto_segment_above: ClassVar[int] = 8192

    def __post_init__(self) -> None:
        for field in ("d_model", "state_size", "expand", "num_groups", "d_conv", "chunk_size"):
            check_positive_int("Mamba2", field, getattr(self, field))
        check_sequence_axis("Mamba2", self.sequence_axis)
        if self.head_dim is not None:
            check_positive_int("Mamba2", "head_dim", self.head_dim)
        if self.d_inner % self.head_width:
            raise ValueError(
                f"Mamba2: d_inner = expand · d_model = {self.d_inner} is not a multiple of head_dim = "
                f"{self.head_width}; choose a head_dim that divides it."
            )
        if self.num_heads % self.num_groups:
            raise ValueError(
                f"Mamba2: num_groups = {self.num_groups} must divide the {self.num_heads} heads "
                f"(d_inner / head_dim)."
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"Mamba2: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}.")
        if not 0 < self.a_min <= self.a_max:
            raise ValueError(f"Mamba2: need 0 < a_min <= a_max, got {self.a_min}, {self.a_max}.")
        for field in ("norm_before_gate", "fused"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"Mamba2: {field} must be True or False, got {getattr(self, field)!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"Mamba2: norm_eps must be > 0, got {self.norm_eps!r}.")
        if self.method not in METHODS:
            raise ValueError(f"Mamba2: method must be one of {METHODS}, got {self.method!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """expand · d_model = H · P."""
        return self.expand * self.d_model

    @property
    def head_width(self) -> int:
        """P: `head_dim`, or gcd(64, d_inner) when it is None (64 when d_inner is a multiple of 64)."""
        return math.gcd(64, self.d_inner) if self.head_dim is None else self.head_dim

    @property
    def num_heads(self) -> int:
        """H = d_inner / P."""
        return self.d_inner // self.head_width

    @property
    def conv_dim(self) -> int:
        """Channels of the conv: x, B and C (d_inner + 2·G·N)."""
        return self.d_inner + 2 * self.num_groups * self.state_size

    @property
    def output_size(self) -> int:
        return self.d_model

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["in_proj"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        if input_size != self.d_model:
            raise ValueError(
                f"Mamba2: input_size={input_size} but d_model={self.d_model}; the block maps d_model to "
                f"d_model, so build it with d_model={input_size} or project the inputs first."
            )
        d, di, h, pd = self.d_model, self.d_inner, self.num_heads, self.param_dtype
        width = 2 * di + 2 * self.num_groups * self.state_size + h
        keys = jax.random.split(key, 6)
        uniform = lambda k, shape, bound: jax.random.uniform(k, shape, jnp.float32, -bound, bound).astype(pd)
        conv_bound = 1 / math.sqrt(self.d_conv)  # torch's Conv1d default: fan-in = taps (depthwise)
        log_dt = jax.random.uniform(keys[3], (h,), jnp.float32, math.log(self.dt_min), math.log(self.dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), self.dt_floor)
        a = jax.random.uniform(keys[4], (h,), jnp.float32, self.a_min, self.a_max)
        return {
            "in_proj": uniform(keys[0], (d, width), 1 / math.sqrt(d)),
            "conv_w": uniform(keys[1], (self.d_conv, self.conv_dim), conv_bound),
            "conv_b": uniform(keys[2], (self.conv_dim,), conv_bound),
            "dt_bias": _inverse_softplus(dt).astype(pd),
            "A_log": jnp.log(a).astype(pd),
            "D": jnp.ones((h,), pd),
            "norm_scale": jnp.ones((di,), pd),
            "out_proj": uniform(keys[5], (di, d), 1 / math.sqrt(di)),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "in_proj": ("embed", "mamba2_in_proj"),
            "conv_w": ("conv_width", "mamba2_conv"),
            "conv_b": ("mamba2_conv",),
            "dt_bias": ("heads",),
            "A_log": ("heads",),
            "D": ("heads",),
            "norm_scale": ("mlp",),
            "out_proj": ("mlp", "embed"),
        }

    def param_groups(self) -> dict[str, str]:
        """ "ssm" for A_log, dt_bias and D (own learning rate, no weight decay), "default" otherwise."""
        return {name: "ssm" if name in ("A_log", "dt_bias", "D") else "default" for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> Mamba2State:
        return Mamba2State(
            conv=jnp.zeros((*batch_shape, self.d_conv - 1, self.conv_dim), dtype),
            ssm=jnp.zeros((*batch_shape, self.num_heads, self.state_size, self.head_width), dtype),
        )

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return projection(self, "...i,io->...o", x, w)

    def _split_projection(self, zxbcdt: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """in_proj's output [..., width] -> z [..., d_inner], xBC [..., conv_dim], dt [..., H]."""
        di, cd = self.d_inner, self.conv_dim
        return zxbcdt[..., :di], zxbcdt[..., di : di + cd], zxbcdt[..., di + cd :]

    def _ssm_inputs(self, params: Params, xbc: jax.Array, dt: jax.Array) -> dict[str, jax.Array]:
        """The conv output xBC (after SiLU) and dt's pre-activation -> x [..., H, P], the engine's q = C,
        k = B [..., G, N] and v = Δ x [..., H, P] (compute dtype), and log γ = Δ A [..., H]."""
        acc, h, p, g, n = self._acc, self.num_heads, self.head_width, self.num_groups, self.state_size
        x = xbc[..., : self.d_inner].reshape(*xbc.shape[:-1], h, p)
        b = xbc[..., self.d_inner : self.d_inner + g * n].reshape(*xbc.shape[:-1], g, n)
        c = xbc[..., self.d_inner + g * n :].reshape(*xbc.shape[:-1], g, n)
        delta = jax.nn.softplus(dt.astype(acc) + params["dt_bias"].astype(acc))
        log_gamma = delta * -jnp.exp(params["A_log"].astype(acc))
        v = delta[..., None] * x
        return {
            "x": x,
            "q": c.astype(self.dtype),
            "k": b.astype(self.dtype),
            "v": v.astype(self.dtype),
            "log_gamma": log_gamma,
        }

    def _output(self, params: Params, y: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
        """y [..., H, P] (the SSD's Sᵀ C) -> D skip, gated RMSNorm with z [..., d_inner], out_proj."""
        y = y + params["D"].astype(y.dtype)[:, None] * x.astype(y.dtype)
        y = y.reshape(*y.shape[:-2], self.d_inner)
        y = gated_rms_norm(
            y,
            z.astype(y.dtype),
            params["norm_scale"],
            groups=self.num_groups,
            eps=self.norm_eps,
            norm_before_gate=self.norm_before_gate,
        )
        return self._mm(y, params["out_proj"]).astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def project_inputs(self, params: Params, x: jax.Array) -> jax.Array:
        """x [..., d_model] -> in_proj's output [..., 2·d_inner + 2·G·N + H] (z, xBC, dt) in float32."""
        return self._mm(x, params["in_proj"])

    def recur(
        self, params: Params, state: Mamba2State, projected: jax.Array
    ) -> tuple[Mamba2State, jax.Array]:
        acc = self._acc
        z, xbc, dt = self._split_projection(projected)
        window = jnp.concatenate([state.conv.astype(acc), xbc[..., None, :]], axis=-2)  # [..., K, conv_dim]
        conv = jnp.einsum("...kc,kc->...c", window, params["conv_w"].astype(acc))
        xbc = jax.nn.silu(conv + params["conv_b"].astype(acc))
        inputs = self._ssm_inputs(params, xbc, dt)
        s, y = matrix_step(state.ssm.astype(acc), inputs["q"], inputs["k"], inputs["v"], inputs["log_gamma"])
        new = Mamba2State(conv=window[..., 1:, :].astype(state.conv.dtype), ssm=s.astype(state.ssm.dtype))
        return new, self._output(params, y, inputs["x"], z)

    # -- the fused chunked form: the engine calls these once per chunk --------------------------------
    def _project_chunk(self, params: Params, chunk: jax.Array) -> tuple[Any, ...]:
        """[B, C, d_inner + conv_dim + H] (z, SiLU(conv(xBC)), dt) -> the engine's q, k, v, log γ, extras."""
        z, xbc, dt = self._split_projection(chunk)
        inputs = self._ssm_inputs(params, xbc, dt)
        extras = {"x": inputs["x"], "z": z}
        return inputs["q"], inputs["k"], inputs["v"], inputs["log_gamma"], extras

    def _finish_chunk(self, params: Params, y: jax.Array, extras: dict[str, jax.Array]) -> jax.Array:
        return self._output(params, y, extras["x"], extras["z"])

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: Mamba2State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Mamba2State]:
        """xs [*batch, time, d_model] -> ys [*batch, time, d_model], state after the last valid token.
        The SSD runs in `seqjax.scan.matrix_recurrence` ("auto"/"chunked": the chunkwise form, fused with
        the output path when `fused`; "recurrent": the token scan)."""
        segmented = cpu_auto_segments(self, xs, self.auto_segment_above)
        if segmented is not None:
            return segmented.apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        # Valid tokens first: the conv and the SSM see them in order; the engine leaves the state alone
        # through the padding at the end.
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))

        def prepare(in_proj, conv_w, conv_b, u, window):
            """in_proj, then SiLU(conv(xBC) + b) written over its xBC columns (in place: one buffer of
            [z, x, B, C, dt]), and the new conv window."""
            projected = self._mm(u, in_proj)
            _, xbc, _ = self._split_projection(projected)
            conv, window = short_conv(
                xbc, window, conv_w.astype(acc), resets, n_valid, sequence_axis=self.sequence_axis
            )
            xbc = jax.nn.silu(conv + conv_b.astype(acc))
            return projected.at[..., self.d_inner : self.d_inner + self.conv_dim].set(xbc), window

        # Rematerialised: autodiff would keep every tap of the conv (a dozen [B, T, conv_dim] tensors);
        # recomputed in the backward pass from u, it costs one more input projection and conv.
        projected, window = jax.checkpoint(prepare)(
            params["in_proj"], params["conv_w"], params["conv_b"], u, flat(state.conv).astype(acc)
        )
        s0 = flat(state.ssm).astype(acc)
        method = "chunked" if self.method == "auto" else self.method
        if method == "chunked" and self.fused and self.sequence_axis is None:
            ys, s = linear_attention_fused(
                self._project_chunk,
                self._finish_chunk,
                {name: params[name] for name in _FUSED_PARAMS},
                projected,
                s0,
                resets=resets,
                mask=valid,
                chunk_size=self.chunk_size,
            )
        else:
            z, xbc, dt = self._split_projection(projected)
            inputs = self._ssm_inputs(params, xbc, dt)
            engine = linear_attention
            if self.sequence_axis is not None:
                engine = functools.partial(
                    sequence_parallel_linear_attention, sequence_axis=self.sequence_axis
                )
            y, s = engine(
                inputs["q"],
                inputs["k"],
                inputs["v"],
                inputs["log_gamma"],
                s0,
                resets=resets,
                mask=valid,
                method=method,
                chunk_size=self.chunk_size,
            )
            ys = self._output(params, y, inputs["x"], z)
            if valid is not None:
                ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
        ys = restore_token_order(ys, order, valid)
        final = Mamba2State(
            conv=window.reshape(state.conv.shape).astype(state.conv.dtype),
            ssm=s.reshape(state.ssm.shape).astype(state.ssm.dtype),
        )
        return ys.reshape(*batch_shape, length, self.d_model), final
