"""DeltaNet and Gated DeltaNet: linear attention whose matrix state is edited by the delta rule.

Per head (state S ∈ R^{d_k × d_v}, as in fla's `naive_recurrent_gated_delta_rule`):

    q, k, v = SiLU(short causal conv(W_q x, W_k x, W_v x))        depthwise, `conv_size` taps, no bias
    q ← L2norm(q) / √d_k ;  k ← L2norm(k) ;  β = σ(W_β x)
    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ ;  o_t = S_tᵀ q_t
    y_t = W_o [ RMSNorm(o_t) (⊙ SiLU(W_g x_t)) ]_heads

- `DeltaNet` (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence
  Length"): α ≡ 1; fla's `DeltaNet` layer with its defaults (SiLU + L2 q/k, β from a projection, short
  convs, RMSNorm output, no output gate).
- `GatedDeltaNet` (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
  Rule"; the linear layers of Qwen3-Next): α_t = exp(g_t), g_t = −exp(A_log) · softplus(W_a x_t +
  dt_bias), one scalar per head and token (Mamba-2's decay), and the SiLU output gate; fla's
  `GatedDeltaNet` layer.

`step` carries the conv windows and S: the recurrent form. `apply` runs `seqjax.scan.delta_rule`: the
chunkwise WY/UT form for `method="chunked"` or `"auto"`, the token scan for `"recurrent"`.
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
from seqjax.scan.delta_rule import METHODS, delta_rule, delta_rule_step
from seqjax.scan.sequence_parallel import sequence_parallel_delta_rule
from seqjax.scan.tuning import matrix_chunk_size

__all__ = ["DeltaNet", "DeltaNetState", "GatedDeltaNet", "l2_normalize"]

#: fla's `l2norm` epsilon: x / sqrt(|x|² + eps).
L2_EPS = 1e-6


class DeltaNetState(NamedTuple):
    conv_q: jax.Array  # [*batch, conv_size - 1, H, d_k]: the last conv inputs of the segment
    conv_k: jax.Array  # [*batch, conv_size - 1, H, d_k]
    conv_v: jax.Array  # [*batch, conv_size - 1, H, d_v]
    s: jax.Array  # [*batch, H, d_k, d_v]


def l2_normalize(x: jax.Array, eps: float = L2_EPS) -> jax.Array:
    """x / sqrt(Σ x² + eps) over the last axis, as fla's `l2norm`.

    >>> import jax.numpy as jnp
    >>> l2_normalize(jnp.array([3.0, 4.0]), eps=0.0)
    Array([0.6, 0.8], dtype=float32)
    """
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _inverse_softplus(y: jax.Array) -> jax.Array:
    return y + jnp.log(-jnp.expm1(-y))


@dataclasses.dataclass(frozen=True)
class _DeltaRuleCell(RecurrentCell):
    """Shared hyperparameters, parameters, conv, features, output and engine dispatch (not registered)."""

    num_heads: int
    head_dim: int
    expand_v: float = 1.0
    out_features: int | None = None
    conv_size: int = 4
    output_gate: bool = False
    norm_eps: float = 1e-5
    method: str = "auto"
    chunk_size: int | None = None
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: whether α_t comes from the Mamba-2-style decay (Gated DeltaNet) or is 1 (DeltaNet).
    gated: ClassVar[bool] = False
    #: On CPU, `method="auto"` runs sequences longer than this in rematerialised segments
    #: (`seqjax.cells.segment_remat.cpu_auto_segments`). The whole-sequence plan at 4k tokens (2.2 GiB
    #: for DeltaNet at 8 heads of 64, batch 8) ran at 0.55 of the speed of 1024-token segments
    #: (benchmarks/recent_cells_cpu.md of 2026-11-30: 6.27 s against 3.48 s; Gated DeltaNet 13.2 s
    #: against 10.9 s).
    auto_segment_above: ClassVar[int] = 2048

    @property
    def resolved_chunk_size(self) -> int:
        """`chunk_size`, or where it is None the platform's default (`seqjax.scan.tuning.matrix_chunk_size`:
        32 on CPU, 64 on GPU and TPU)."""
        return self.chunk_size if self.chunk_size is not None else matrix_chunk_size("delta_rule")

    def __post_init__(self) -> None:
        label = type(self).__name__
        for field in ("num_heads", "head_dim", "conv_size"):
            check_positive_int(label, field, getattr(self, field))
        if self.chunk_size is not None:
            check_positive_int(label, "chunk_size", self.chunk_size)
        check_sequence_axis(label, self.sequence_axis)
        if self.out_features is not None:
            check_positive_int(label, "out_features", self.out_features)
        if not (self.expand_v > 0 and math.isclose(self.head_dim * self.expand_v, self.value_dim)):
            raise ValueError(
                f"{label}: head_dim * expand_v must be a positive integer (the value head width), got "
                f"{self.head_dim} * {self.expand_v!r}."
            )
        if not isinstance(self.output_gate, bool):
            raise ValueError(f"{label}: output_gate must be True or False, got {self.output_gate!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"{label}: norm_eps must be > 0, got {self.norm_eps!r}.")
        if self.method not in METHODS:
            raise ValueError(f"{label}: method must be one of {METHODS}, got {self.method!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def value_dim(self) -> int:
        """d_v = head_dim · expand_v: the width of each head's values and outputs."""
        return max(1, round(self.head_dim * self.expand_v))

    @property
    def output_size(self) -> int:
        return self.num_heads * self.value_dim if self.out_features is None else self.out_features

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_q"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        h, dk, dv, kc, pd = self.num_heads, self.head_dim, self.value_dim, self.conv_size, self.param_dtype
        keys = jax.random.split(key, 12)
        proj = jax.nn.initializers.glorot_uniform(in_axis=0, out_axis=(1, 2))
        glorot = jax.nn.initializers.glorot_uniform()
        bound = 1 / math.sqrt(kc)  # torch's Conv1d default for a depthwise conv: fan-in = kernel size
        conv = lambda k, d: jax.random.uniform(k, (kc, h, d), pd, -bound, bound)
        params = {
            "w_q": proj(keys[0], (input_size, h, dk), pd),
            "w_k": proj(keys[1], (input_size, h, dk), pd),
            "w_v": proj(keys[2], (input_size, h, dv), pd),
            "w_beta": glorot(keys[3], (input_size, h), pd),
            "conv_q": conv(keys[4], dk),
            "conv_k": conv(keys[5], dk),
            "conv_v": conv(keys[6], dv),
            "norm_scale": jnp.ones((h, dv), pd),
            "w_o": jax.nn.initializers.glorot_uniform(in_axis=(0, 1), out_axis=2)(
                keys[7], (h, dv, self.output_size), pd
            ),
        }
        if self.gated:
            params["w_a"] = glorot(keys[8], (input_size, h), pd)
            # A ~ U(0, 16] as in fla's GatedDeltaNet (1 − U keeps log A finite); Δ's bias is the inverse
            # softplus of dt ~ logU[1e-3, 0.1], floored at 1e-4 (Mamba's).
            a = 16.0 * (1.0 - jax.random.uniform(keys[9], (h,), jnp.float32))
            params["A_log"] = jnp.log(a).astype(pd)
            log_dt = jax.random.uniform(keys[10], (h,), jnp.float32, math.log(1e-3), math.log(0.1))
            params["dt_bias"] = _inverse_softplus(jnp.maximum(jnp.exp(log_dt), 1e-4)).astype(pd)
        if self.output_gate:
            params["w_g"] = proj(keys[11], (input_size, h, dv), pd)
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = {
            "w_q": ("embed", "heads", "head_dim"),
            "w_k": ("embed", "heads", "head_dim"),
            "w_v": ("embed", "heads", "head_dim"),
            "w_beta": ("embed", "heads"),
            "conv_q": ("conv_width", "heads", "head_dim"),
            "conv_k": ("conv_width", "heads", "head_dim"),
            "conv_v": ("conv_width", "heads", "head_dim"),
            "norm_scale": ("heads", "head_dim"),
            "w_o": ("heads", "head_dim", "embed"),
        }
        if self.gated:
            axes.update(w_a=("embed", "heads"), A_log=("heads",), dt_bias=("heads",))
        if self.output_gate:
            axes["w_g"] = ("embed", "heads", "head_dim")
        return axes

    def param_groups(self) -> dict[str, str]:
        """ "ssm" for the decay's A_log and dt_bias (own learning rate, no weight decay, as fla marks
        them `_no_weight_decay`), "default" otherwise."""
        return {name: "ssm" if name in ("A_log", "dt_bias") else "default" for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> DeltaNetState:
        h, dk, dv, w = self.num_heads, self.head_dim, self.value_dim, self.conv_size - 1
        return DeltaNetState(
            conv_q=jnp.zeros((*batch_shape, w, h, dk), dtype),
            conv_k=jnp.zeros((*batch_shape, w, h, dk), dtype),
            conv_v=jnp.zeros((*batch_shape, w, h, dv), dtype),
            s=jnp.zeros((*batch_shape, h, dk, dv), dtype),
        )

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        """x [..., input_size] -> the conv inputs q, k [..., H, d_k], v [..., H, d_v], β's and (gated)
        the decay's pre-activations [..., H], and (output_gate) the gate [..., H, d_v]; all float32."""
        out = {
            "q": self._mm(x, params["w_q"], "...i,ihd->...hd"),
            "k": self._mm(x, params["w_k"], "...i,ihd->...hd"),
            "v": self._mm(x, params["w_v"], "...i,ihd->...hd"),
            "beta": self._mm(x, params["w_beta"], "...i,ih->...h"),
        }
        if self.gated:
            out["a"] = self._mm(x, params["w_a"], "...i,ih->...h")
        if self.output_gate:
            out["g"] = self._mm(x, params["w_g"], "...i,ihd->...hd")
        return out

    def _features(self, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The conv outputs after SiLU -> L2-normalised q (scaled by d_k^-½) and k."""
        return l2_normalize(q) * self.head_dim**-0.5, l2_normalize(k)

    def _gates(self, params: Params, projected: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array | None]:
        """β = σ(W_β x) and (gated) log α = −exp(A_log) · softplus(W_a x + dt_bias), [..., H] each."""
        beta = jax.nn.sigmoid(projected["beta"])
        if not self.gated:
            return beta, None
        acc = self._acc
        a = projected["a"] + params["dt_bias"].astype(acc)
        return beta, -jnp.exp(params["A_log"].astype(acc)) * jax.nn.softplus(a)

    def _output(self, params: Params, o: jax.Array, projected: dict[str, jax.Array]) -> jax.Array:
        """Per-head RMSNorm of o [..., H, d_v] (learned scale), the SiLU gate, and W_o."""
        o = o * jax.lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + self.norm_eps)
        o = o * params["norm_scale"].astype(o.dtype)
        if self.output_gate:
            o = o * jax.nn.silu(projected["g"])
        return self._mm(o, params["w_o"], "...hd,hdo->...o").astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def recur(
        self, params: Params, state: DeltaNetState, projected: dict[str, jax.Array]
    ) -> tuple[DeltaNetState, jax.Array]:
        acc = self._acc
        windows = {}
        convolved = {}
        for name in ("q", "k", "v"):
            previous = getattr(state, f"conv_{name}").astype(acc)
            window = jnp.concatenate([previous, projected[name][..., None, :, :]], axis=-3)
            conv = jnp.einsum("...khd,khd->...hd", window, params[f"conv_{name}"].astype(acc))
            convolved[name] = jax.nn.silu(conv)
            windows[name] = window[..., 1:, :, :]
        q, k = self._features(convolved["q"], convolved["k"])
        beta, log_alpha = self._gates(params, projected)
        s, o = delta_rule_step(state.s.astype(acc), q, k, convolved["v"], beta, log_alpha)
        new = DeltaNetState(
            conv_q=windows["q"].astype(state.conv_q.dtype),
            conv_k=windows["k"].astype(state.conv_k.dtype),
            conv_v=windows["v"].astype(state.conv_v.dtype),
            s=s.astype(state.s.dtype),
        )
        return new, self._output(params, o, projected)

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: DeltaNetState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, DeltaNetState]:
        """xs [*batch, time, input_size] -> ys [*batch, time, output_size], state after the last valid
        token. The recurrence runs in `seqjax.scan.delta_rule` ("auto"/"chunked": the chunkwise WY form;
        "recurrent": the token scan; "auto" on CPU runs long sequences in rematerialised segments,
        `auto_segment_above`)."""
        segmented = cpu_auto_segments(self, xs, self.auto_segment_above)
        if segmented is not None:
            return segmented.apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        # Valid tokens first, as fla's unpadded (varlen) path: the convs and the recurrence see them in order.
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))
        p = self.project_inputs(params, u)
        convolved, windows = {}, {}
        for name in ("q", "k", "v"):
            window0 = flat(getattr(state, f"conv_{name}"))
            out, windows[name] = short_conv(
                p[name],
                window0.astype(acc),
                params[f"conv_{name}"].astype(acc),
                resets,
                n_valid,
                sequence_axis=self.sequence_axis,
            )
            convolved[name] = jax.nn.silu(out)
        q, k = self._features(convolved["q"], convolved["k"])
        beta, log_alpha = self._gates(params, p)
        method = "chunked" if self.method == "auto" else self.method
        engine = delta_rule
        if self.sequence_axis is not None:
            engine = functools.partial(sequence_parallel_delta_rule, sequence_axis=self.sequence_axis)
        o, s = engine(
            q,
            k,
            convolved["v"],
            beta,
            log_alpha,
            flat(state.s).astype(acc),
            resets=resets,
            mask=valid,
            method=method,
            chunk_size=self.resolved_chunk_size,
        )
        ys = self._output(params, o, p)
        ys = restore_token_order(ys, order, valid)
        unflat = lambda a, like: a.reshape(like.shape).astype(like.dtype)
        final = DeltaNetState(
            conv_q=unflat(windows["q"], state.conv_q),
            conv_k=unflat(windows["k"], state.conv_k),
            conv_v=unflat(windows["v"], state.conv_v),
            s=unflat(s, state.s),
        )
        return ys.reshape(*batch_shape, length, self.output_size), final


@register("deltanet")
@dataclasses.dataclass(frozen=True)
class DeltaNet(_DeltaRuleCell):
    """DeltaNet (Yang et al. 2024), the layer of fla's `DeltaNet` with its defaults, multi-head:

        q, k, v = SiLU(conv(W_q x)), SiLU(conv(W_k x)), SiLU(conv(W_v x))   depthwise causal, no bias
        q ← L2norm(q) / √d_k ;  k ← L2norm(k) ;  β_t = σ(W_β x_t)           (per head)
        S_t = S_{t−1} + β_t k_t (v_t − S_{t−1}ᵀ k_t)ᵀ = (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ
        y_t = W_o [ RMSNorm(S_tᵀ q_t) ]_heads

    State `DeltaNetState` (the last conv_size − 1 conv inputs of q, k, v, and S [*, H, d_k, d_v]): O(H
    · d_k · d_v), constant in length.

    Hyperparameters:
      num_heads, head_dim: H and d_k; d_v = head_dim · expand_v (`value_dim`).
      expand_v: value width per key width (1 as in fla's DeltaNet).
      out_features: width of the output projection; default H · d_v.
      conv_size: taps of the short convolutions (4).
      output_gate: multiply the normalised head outputs by SiLU(W_g x) (fla's `use_gate`, off).
      norm_eps: the RMSNorm's epsilon (1e-5).
      method: "auto" (= "chunked"; on CPU, sequences above `auto_segment_above` = 2048 tokens run in
        rematerialised 1024-token segments), "chunked" or "recurrent": the engine `apply` uses.
      chunk_size: tokens per chunk of the chunked engine; None (the default): 32 on CPU, 64 on GPU and
        TPU (`seqjax.scan.tuning.matrix_chunk_size`).
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split): the
        convs take a halo from the previous shard and the recurrence runs
        `seqjax.scan.sequence_parallel_delta_rule`; see `seqjax.cells.with_sequence_axis`.
      dtype: compute dtype of the projections (bfloat16 allowed); conv, norms, gates and the recurrence
        are float32. param_dtype: dtype of the parameters.

    Parameters: `w_q`, `w_k` [input_size, H, d_k], `w_v` [input_size, H, d_v], `w_beta` [input_size, H]
    (Glorot-uniform, no biases); `conv_q`, `conv_k` [conv_size, H, d_k], `conv_v` [conv_size, H, d_v]
    (uniform ±conv_size^-½, torch's Conv1d default); `norm_scale` [H, d_v] (ones); `w_o` [H, d_v, out]
    (Glorot); with output_gate `w_g` [input_size, H, d_v].

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.DeltaNet(num_heads=2, head_dim=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 5)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 5)))
    >>> ys.shape, state.s.shape, state.conv_q.shape            # output H·d_v = 8
    ((2, 7, 8), (2, 2, 4, 4), (2, 3, 2, 4))
    """


@register("gated_deltanet")
@dataclasses.dataclass(frozen=True)
class GatedDeltaNet(_DeltaRuleCell):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), the layer of fla's `GatedDeltaNet`, multi-head:

        q, k, v, β as in `DeltaNet`
        g_t = −exp(A_log) · softplus(W_a x_t + dt_bias) ;  α_t = exp(g_t)      (per head)
        S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ ;  o_t = S_tᵀ q_t
        y_t = W_o [ RMSNorm(o_t) ⊙ SiLU(W_g x_t) ]_heads

    (fla's naive form: S' = α_t S_{t−1}; S_t = S' + β_t k_t (v_t − S'ᵀ k_t)ᵀ, the same function.)

    Hyperparameters: as `DeltaNet`, with fla's defaults expand_v = 2 and output_gate = True.
    Parameters: as `DeltaNet`, plus `w_a` [input_size, H] (Glorot), `A_log` [H] (log A, A ~ U(0, 16] as
    in fla) and `dt_bias` [H] (the inverse softplus of dt ~ logU[1e-3, 0.1], as in Mamba); both in the
    "ssm" parameter group.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.GatedDeltaNet(num_heads=2, head_dim=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 5)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 5)))
    >>> ys.shape, state.s.shape, cell.param_groups()["A_log"]  # d_v = 2·d_k; output H·d_v = 16
    ((2, 7, 16), (2, 2, 4, 8), 'ssm')
    """

    expand_v: float = 2.0
    output_gate: bool = True

    gated: ClassVar[bool] = True
