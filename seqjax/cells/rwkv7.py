"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution"): the time
mixer, a generalised delta rule with a vector-valued decay and a vector-valued in-context learning rate.

Per head (d_k = d_v = head_dim; the authors' state S ∈ R^{d_v × d_k} is the transpose of seqjax's
state H ∈ R^{d_k × d_v}, the layout of every seqjax matrix-state engine):

    x'_c = x_t + μ_c ⊙ (x_{t−1} − x_t)          c ∈ {r, w, k, v, a, g}          token shift (lerp)
    r, k, v = W_r x'_r, W_k x'_k, W_v x'_v
    w_t = exp(−e^{−1/2} σ(w_0 + tanh(x'_w W_w1) W_w2))   ∈ (e^{−e^{−1/2}}, 1)   decay, per channel
    α_t = σ(a_0 + x'_a W_a1 W_a2)                                        in-context learning rate
    g_t = σ(x'_g W_g1) W_g2                                              output gate
    κ̂_t = L2norm(k ⊙ k_k) ;  k̃_t = k ⊙ (1 + (α_t − 1) ⊙ k_a)
    S_t = S_{t−1} (diag(w_t) − κ̂_tᵀ (α_t ⊙ κ̂_t)) + v_tᵀ k̃_t ;  o_t = S_t r_t
    y_t = W_o [ (GroupNorm(o_t) + ((r_t ⊙ k̃_t ⊙ r_k)·1) v_t) ⊙ g_t ]_heads

`step` carries the previous token's input (token shift) and S; `apply` runs
`seqjax.scan.generalized_delta_rule` (chunkwise for `method="chunked"` or `"auto"`, the token scan for
`"recurrent"`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.base import Cell, DType, Params, accumulation_dtype, check_sequence_axis, projection
from seqjax.cells.padding import restore_token_order, valid_tokens_first
from seqjax.cells.registry import register
from seqjax.cells.segment_remat import cpu_auto_segments
from seqjax.common.checks import check_positive_int
from seqjax.scan.generalized_delta_rule import METHODS, generalized_delta_rule, generalized_delta_rule_step
from seqjax.scan.sequence_parallel import sequence_parallel_generalized_delta_rule

__all__ = ["RWKV7", "RWKV7State", "lora_rank"]

#: e^{−1/2}: the largest decay rate, −log w = e^{−1/2} σ(·) < 0.6065 (the authors' soft clamp of the
#: log-log decay to (−∞, −0.5)).
DECAY_SCALE = math.exp(-0.5)
#: torch's `F.normalize` floor: κ̂ = x / max(|x|, 1e-12).
NORMALIZE_EPS = 1e-12


class RWKV7State(NamedTuple):
    shift: jax.Array  # [*batch, input_size]: the previous token's input (token shift)
    s: jax.Array  # [*batch, H, d_k, d_v]: the authors' S transposed


def lora_rank(factor: float, width: int) -> int:
    """The authors' LoRA width: max(32, round(factor · √width / 32) · 32) (decay 2.5, a 2.5, gate 5).

    >>> lora_rank(2.5, 768), lora_rank(5, 768), lora_rank(2.5, 8)
    (64, 128, 32)
    """
    return max(32, int(round(factor * width**0.5 / 32) * 32))


@register("rwkv7")
@dataclasses.dataclass(frozen=True)
class RWKV7(Cell):
    """RWKV-7's time mixer (module docstring), the authors' `RWKV_Tmix_x070` (RWKV-LM, RWKV-v7/train_temp)
    for one layer, without the cross-layer value residual.

    State `RWKV7State` (the previous token's input [*, input_size] and S [*, H, d_k, d_v]): constant in
    length.

    Hyperparameters:
      num_heads, head_dim: H and the head size N (d_k = d_v = N; the authors' 64). The width C = H · N.
      d_model: the input width (the state carries the previous input for the token shift, so its size is
        fixed before `init`); None = C, as the authors' layer (n_embd = dim_att). A backbone fills it in.
      out_features: width of the output projection; default C.
      decay_rank, a_rank, gate_rank: the LoRA widths of w, α and g; None = the authors' suggestion
        `lora_rank(2.5 | 2.5 | 5, C)`.
      output_gate: the g LoRA gate (the authors note it can be removed; True).
      norm_eps: the GroupNorm's epsilon per unit of head size, eps = N · norm_eps (the authors' 64e-5 for
        N = 64, as fla).
      layer_index, num_layers: where the layer sits in its stack; only the initialisation reads them (the
        authors' layer-dependent token-shift and decay init). Default: the first of one layer.
      zero_init: the authors' zeros for the LoRA down-projections (w1, a1, g1) and the output
        projection; False draws them (uniform ±input_size^-½, Glorot for w_o), so every path carries a
        gradient from the start (the tests' setting).
      method: "auto" (= "chunked"; on CPU, sequences above `auto_segment_above` = 8192 tokens run in
        rematerialised 1024-token segments), "chunked" or "recurrent": the engine `apply` uses.
      chunk_size: tokens per chunk of the chunked engine (16: the chunk body forms [C, C, N] decay
        tensors).
      sequence_axis: a mesh axis name that splits the time axis over devices (None: not split): the
        recurrence runs `seqjax.scan.sequence_parallel_generalized_delta_rule` (the token shift is a
        shift of the sharded array, which XLA moves across shards); see `seqjax.cells.with_sequence_axis`.
      dtype: compute dtype of the projections (bfloat16 allowed); gates, norms and the recurrence are
        float32. param_dtype: dtype of the parameters.

    Parameters: the token-shift mixes `x_r` … `x_g` [input_size]; `w_r`, `w_k`, `w_v` [input_size, H,
    N]; the LoRAs `w0` [H, N] (bias), `w1` [input_size, decay_rank], `w2` [decay_rank, H, N]; `a0`, `a1`,
    `a2` likewise; `g1` [input_size, gate_rank], `g2` [gate_rank, H, N]; `k_k`, `k_a`, `r_k` [H, N];
    `ln_scale`, `ln_bias` [H, N] (GroupNorm); `w_o` [H, N, out]. Initialised as the authors'
    `RWKV_Tmix_x070` (docs/cells.md). Groups: `w0` "ssm" (the authors' 2x learning rate, no weight
    decay); `w_r`, `w_k`, `w_v`, `w_o` "default" (the authors decay only these); the rest "no_decay".

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.RWKV7(num_heads=2, head_dim=4, d_model=5)
    >>> params = cell.init(jax.random.PRNGKey(0), 5)
    >>> ys, state = cell.apply(params, jnp.ones((2, 7, 5)))
    >>> ys.shape, state.s.shape, state.shift.shape
    ((2, 7, 8), (2, 2, 4, 4), (2, 5))
    """

    num_heads: int
    head_dim: int
    d_model: int | None = None
    out_features: int | None = None
    decay_rank: int | None = None
    a_rank: int | None = None
    gate_rank: int | None = None
    output_gate: bool = True
    norm_eps: float = 1e-5
    layer_index: int = 0
    num_layers: int = 1
    zero_init: bool = True
    method: str = "auto"
    chunk_size: int = 16
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    #: On CPU, `method="auto"` runs sequences longer than this in rematerialised 1024-token segments
    #: (`seqjax.cells.segment_remat.cpu_auto_segments`). Measured at 16k tokens, batch 8, 8 heads of 64,
    #: 2 CPU cores (benchmarks/recent_cells_16k_cpu.md): 9.6 GiB whole, 1.0 GiB in segments;
    #: 0.87x the time: 17.7 s against 20.3 s.
    auto_segment_above: ClassVar[int] = 8192

    def __post_init__(self) -> None:
        label = type(self).__name__
        for field in ("num_heads", "head_dim", "chunk_size", "num_layers"):
            check_positive_int(label, field, getattr(self, field))
        check_sequence_axis(label, self.sequence_axis)
        for field in ("d_model", "out_features", "decay_rank", "a_rank", "gate_rank"):
            if getattr(self, field) is not None:
                check_positive_int(label, field, getattr(self, field))
        if not (isinstance(self.layer_index, int) and 0 <= self.layer_index < self.num_layers):
            raise ValueError(
                f"{label}: layer_index must be an integer in [0, num_layers = {self.num_layers}), got "
                f"{self.layer_index!r}."
            )
        for field in ("output_gate", "zero_init"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{label}: {field} must be True or False, got {getattr(self, field)!r}.")
        if not self.norm_eps > 0:
            raise ValueError(f"{label}: norm_eps must be > 0, got {self.norm_eps!r}.")
        if self.method not in METHODS:
            raise ValueError(f"{label}: method must be one of {METHODS}, got {self.method!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """C = H · N, the key and value width."""
        return self.num_heads * self.head_dim

    @property
    def input_width(self) -> int:
        """The input features `init` accepts: d_model, or C when that is None."""
        return self.width if self.d_model is None else self.d_model

    @property
    def ranks(self) -> tuple[int, int, int]:
        """(decay, a, gate) LoRA widths."""
        c = self.width
        return (
            self.decay_rank or lora_rank(2.5, c),
            self.a_rank or lora_rank(2.5, c),
            self.gate_rank or lora_rank(5, c),
        )

    @property
    def output_size(self) -> int:
        return self.width if self.out_features is None else self.out_features

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_r"].shape[0]

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        """The authors' `RWKV_Tmix_x070.__init__` (RWKV-LM, RWKV-v7/train_temp/src/model.py), with C_in =
        input_size for the token-shift mixes and projections and C = H · N for the per-channel vectors."""
        if input_size != self.input_width:
            raise ValueError(
                f"{type(self).__name__}.init: input_size={input_size}, but the cell reads d_model = "
                f"{self.input_width} features (its state holds the previous input for the token shift); "
                f"build it with d_model={input_size}."
            )
        h, n, pd, c_in, c = self.num_heads, self.head_dim, self.param_dtype, input_size, self.width
        dw, da, dg = self.ranks
        keys = jax.random.split(key, 10)
        r0 = self.layer_index / max(self.num_layers - 1, 1)  # ratio_0_to_1
        r1 = 1.0 - self.layer_index / self.num_layers  # ratio_1_to_almost0
        ddd = np.arange(c_in) / c_in
        idx = np.arange(c)
        linear = idx / max(c - 1, 1) - 0.5
        half = (n - 1) / 2
        zigzag = ((idx % n) - half) / half if n > 1 else np.zeros(c)
        zigzag = zigzag * np.abs(zigzag)
        www = -6 + 6 * (idx / max(c - 1, 1)) ** (1 + r0**0.3)
        per_head = lambda x: jnp.asarray(np.reshape(x, (h, n)), pd)

        def ortho(k, rank):  # the authors' ortho_init(zeros(rank, C), 0.1)
            gain = math.sqrt(rank / c) if rank > c else 1.0
            w = jax.nn.initializers.orthogonal(scale=0.1 * gain)(k, (rank, c), jnp.float32)
            return w.reshape(rank, h, n).astype(pd)

        def down(k, rank):  # zeros (the authors'), or drawn
            if self.zero_init:
                return jnp.zeros((c_in, rank), pd)
            return jax.random.uniform(k, (c_in, rank), pd, -1.0, 1.0) / math.sqrt(c_in)

        uniform = lambda k, scale: jax.random.uniform(k, (c_in, h, n), pd, -scale, scale) / math.sqrt(c_in)
        params = {
            **{
                f"x_{name}": jnp.asarray(1.0 - ddd ** (p * r1), pd)
                for name, p in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2))
            },
            "w_r": uniform(keys[0], 0.5),
            "w_k": uniform(keys[1], 0.05),
            "w_v": uniform(keys[2], 0.5),
            "w0": per_head(www + 0.5 + zigzag * 2.5),
            "w1": down(keys[3], dw),
            "w2": ortho(keys[4], dw),
            "a0": per_head(-0.19 + zigzag * 0.3 + linear * 0.4),
            "a1": down(keys[5], da),
            "a2": ortho(keys[6], da),
            "k_k": per_head(0.71 - linear * 0.1),
            "k_a": jnp.full((h, n), 1.02, pd),
            "r_k": jnp.full((h, n), -0.04, pd),
            "ln_scale": jnp.ones((h, n), pd),
            "ln_bias": jnp.zeros((h, n), pd),
        }
        if self.output_gate:
            params["g1"] = down(keys[7], dg)
            params["g2"] = ortho(keys[8], dg)
        if self.zero_init:
            params["w_o"] = jnp.zeros((h, n, self.output_size), pd)
        else:
            params["w_o"] = jax.nn.initializers.glorot_uniform(in_axis=(0, 1), out_axis=2)(
                keys[9], (h, n, self.output_size), pd
            )
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = {f"x_{name}": ("embed",) for name in "rwkvag"}
        axes.update({name: ("embed", "heads", "head_dim") for name in ("w_r", "w_k", "w_v")})
        axes.update(
            {name: ("heads", "head_dim") for name in ("w0", "a0", "k_k", "k_a", "r_k", "ln_scale", "ln_bias")}
        )
        axes.update(w1=("embed", "lora"), w2=("lora", "heads", "head_dim"))
        axes.update(a1=("embed", "lora"), a2=("lora", "heads", "head_dim"))
        if self.output_gate:
            axes.update(g1=("embed", "lora"), g2=("lora", "heads", "head_dim"))
        axes["w_o"] = ("heads", "head_dim", "embed")
        return axes

    def param_groups(self) -> dict[str, str]:
        """The authors' optimizer groups: `w0` at 2x learning rate without weight decay ("ssm"), weight
        decay on the four projection matrices only ("default"), none on the rest ("no_decay")."""

        def group(name: str) -> str:
            if name == "w0":
                return "ssm"
            return "default" if name in ("w_r", "w_k", "w_v", "w_o") else "no_decay"

        return {name: group(name) for name in self.param_axes()}

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> RWKV7State:
        return RWKV7State(
            shift=jnp.zeros((*batch_shape, self.input_width), dtype),
            s=jnp.zeros((*batch_shape, self.num_heads, self.head_dim, self.head_dim), dtype),
        )

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def project(self, params: Params, x: jax.Array, prev: jax.Array) -> dict[str, jax.Array]:
        """Tokens x [..., input_size] and the inputs before them, prev (zeros at a segment start) -> the
        engine's r, k̃, v, a = −κ̂, b = κ̂ ⊙ α, log w [..., H, N] and (output_gate) g [..., H, N]; all in
        the accumulation dtype."""
        acc = self._acc
        x, prev = x.astype(acc), prev.astype(acc)
        xx = prev - x
        mix = {name: x + xx * params[f"x_{name}"].astype(acc) for name in "rwkvag"}
        p = lambda name: params[name].astype(acc)
        r = self._mm(mix["r"], params["w_r"], "...i,ihd->...hd")
        k = self._mm(mix["k"], params["w_k"], "...i,ihd->...hd")
        v = self._mm(mix["v"], params["w_v"], "...i,ihd->...hd")
        z_w = p("w0") + self._mm(
            jnp.tanh(self._mm(mix["w"], params["w1"], "...i,ir->...r")), params["w2"], "...r,rhd->...hd"
        )
        log_w = -DECAY_SCALE * jax.nn.sigmoid(z_w)
        alpha = jax.nn.sigmoid(
            p("a0")
            + self._mm(self._mm(mix["a"], params["a1"], "...i,ir->...r"), params["a2"], "...r,rhd->...hd")
        )
        kk = k * p("k_k")
        # x / max(|x|, eps) as rsqrt(max(|x|², eps²)): the same value, and a zero gradient (not 0/0 = NaN,
        # as jnp.linalg.norm's) where k ⊙ k_k = 0, e.g. for an all-zero input
        kk = kk * jax.lax.rsqrt(jnp.maximum(jnp.sum(kk * kk, axis=-1, keepdims=True), NORMALIZE_EPS**2))
        k = k * (1.0 + (alpha - 1.0) * p("k_a"))
        out = {"r": r, "k": k, "v": v, "a": -kk, "b": kk * alpha, "log_w": log_w}
        if self.output_gate:
            gate = jax.nn.sigmoid(self._mm(mix["g"], params["g1"], "...i,ir->...r"))
            out["g"] = self._mm(gate, params["g2"], "...r,rhd->...hd")
        return out

    def _output(self, params: Params, o: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        """GroupNorm per head of o [..., H, N], the bonus (r ⊙ k̃ ⊙ r_k)·1 v, the gate, and W_o."""
        acc = self._acc
        mean = jnp.mean(o, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
        o = (o - mean) * jax.lax.rsqrt(var + self.head_dim * self.norm_eps)
        o = o * params["ln_scale"].astype(acc) + params["ln_bias"].astype(acc)
        bonus = jnp.sum(p["r"] * p["k"] * params["r_k"].astype(acc), axis=-1, keepdims=True)
        o = o + bonus * p["v"]
        if self.output_gate:
            o = o * p["g"]
        return self._mm(o, params["w_o"], "...hd,hdo->...o").astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def step(
        self,
        params: Params,
        state: RWKV7State,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[RWKV7State, jax.Array]:
        x, reset, mask = self._check_step_args(params, state, x, reset, mask)
        acc = self._acc

        def update(prev: RWKV7State) -> tuple[RWKV7State, jax.Array]:
            p = self.project(params, x, prev.shift)
            s, o = generalized_delta_rule_step(
                prev.s.astype(acc), p["r"], p["k"], p["v"], p["a"], p["b"], p["log_w"]
            )
            new = RWKV7State(shift=x.astype(prev.shift.dtype), s=s.astype(prev.s.dtype))
            return new, self._output(params, o, p)

        return self._step_with_flags(state, x.shape[:-1], reset, mask, update)

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: RWKV7State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, RWKV7State]:
        """xs [*batch, time, input_size] -> ys [*batch, time, output_size], state after the last valid
        token. The recurrence runs in `seqjax.scan.generalized_delta_rule` ("auto"/"chunked": the
        chunkwise form; "recurrent": the token scan)."""
        segmented = cpu_auto_segments(self, xs, self.auto_segment_above)
        if segmented is not None:
            return segmented.apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        acc = self._acc
        flat = lambda a: None if a is None else a.reshape(bsz, *a.shape[len(batch_shape) :])
        # Valid tokens first (fla's unpadded path): the token shift reads the previous valid token.
        u, resets, order, n_valid, valid = valid_tokens_first(flat(xs), flat(resets), flat(mask))
        shift0 = flat(state.shift).astype(acc)
        u_acc = u.astype(acc)
        prev = jnp.concatenate([shift0[:, None], u_acc[:, :-1]], axis=1)
        if resets is not None:  # a segment starts from a zero previous token, as fla's varlen token shift
            prev = jnp.where(resets[..., None], 0.0, prev)
        p = self.project(params, u, prev)
        method = "chunked" if self.method == "auto" else self.method
        engine = generalized_delta_rule
        if self.sequence_axis is not None:
            engine = functools.partial(
                sequence_parallel_generalized_delta_rule, sequence_axis=self.sequence_axis
            )
        o, s = engine(
            p["r"],
            p["k"],
            p["v"],
            p["a"],
            p["b"],
            p["log_w"],
            flat(state.s).astype(acc),
            resets=resets,
            mask=valid,
            method=method,
            chunk_size=self.chunk_size,
        )
        ys = restore_token_order(self._output(params, o, p), order, valid)
        if length == 0:
            last = shift0
        elif n_valid is None:
            last = u_acc[:, -1]
        else:
            at = jnp.take_along_axis(u_acc, jnp.maximum(n_valid - 1, 0)[:, None, None], axis=1)[:, 0]
            last = jnp.where((n_valid > 0)[:, None], at, shift0)
        unflat = lambda a, like: a.reshape(like.shape).astype(like.dtype)
        final = RWKV7State(shift=unflat(last, state.shift), s=unflat(s, state.s))
        return ys.reshape(*batch_shape, length, self.output_size), final
