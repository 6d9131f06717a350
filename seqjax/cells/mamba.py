"""Mamba: the selective state-space block of Gu & Dao (2023)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

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
from seqjax.cells.initializers import torch_linear_uniform
from seqjax.cells.registry import register
from seqjax.cells.short_conv import short_conv
from seqjax.common.checks import check_positive_int
from seqjax.scan.diagonal import linear_recurrence
from seqjax.scan.selective import SELECTIVE_METHODS, selective_scan
from seqjax.scan.sequence_parallel import (
    sequence_parallel_linear_recurrence,
    sequence_parallel_selective_scan,
)

__all__ = ["Mamba", "MambaState"]

#: the chunk-rematerialised selective scan ("auto" measures between its three forms), then the two
#: materialised references built on `linear_recurrence`.
METHODS = (*SELECTIVE_METHODS, "materialized_sequential", "materialized_associative")
#: names used before the selective scan had its own; "chunked" meant something else in `linear_recurrence`.
_RENAMED = {
    "chunked": "auto",
    "sequential": "materialized_sequential",
    "associative": "materialized_associative",
}


class MambaState(NamedTuple):
    conv: jax.Array  # [*batch, d_conv - 1, d_inner]: the last d_conv - 1 conv inputs of the segment
    ssm: jax.Array  # [*batch, d_inner, state_size]


def _inverse_softplus(y: jax.Array) -> jax.Array:
    return y + jnp.log(-jnp.expm1(-y))


@register("mamba")
@dataclasses.dataclass(frozen=True)
class Mamba(RecurrentCell):
    """The Mamba block (selective SSM), mapping [.., d_model] -> [.., d_model].

        x, z = split(W_in u)                        x, z ∈ R^{d_inner},  d_inner = expand · d_model
        x = SiLU(causal depthwise conv_k(x) + b)    over the last `d_conv` tokens of the segment
        Δ, B, C = softplus(W_Δ (W_x x)_Δ + b_Δ), (W_x x)_B, (W_x x)_C
        h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t x_t) B_tᵀ,  A = −exp(A_log) ∈ R^{d_inner × N}
        y = (h_t C_t + D ⊙ x) ⊙ SiLU(z);  out = W_out y

    Initialisation as in the reference implementation (state-spaces/mamba `mamba_simple.py`):
    `A_log[d, n] = log(n + 1)` (S4D-Real), the Δ bias is the inverse softplus of a draw log-uniform in
    [dt_min, dt_max] = [1e-3, 0.1] (floored at `dt_floor`), the Δ projection is uniform in ±dt_rank^-½,
    D = 1, the conv weight and bias uniform in ±(d_conv)^-½ (torch's `Conv1d` default), and the in, x
    and out projections uniform in ±(fan-in)^-½ (torch's `Linear` default). One difference, on
    purpose: the reference's language model (`MixerModel`, `rescale_prenorm_residual`) then divides
    every block's `out_proj` by √n_layer, a model-level choice this cell cannot see; scale `out_proj`
    yourself to match it. `A_log`, `dt_bias` and `D` are in the "ssm" parameter group (own learning
    rate, no weight decay in the trainer).

    `sequence_axis` (None by default) names a mesh axis that splits the time axis (sequence
    parallelism, `seqjax.cells.with_sequence_axis`; `apply` runs under `jax.set_mesh`): the causal conv
    runs per shard inside `shard_map`, each shard taking the last d_conv − 1 inputs (and their segment
    ids) of the previous shard by `sequence_halo` (the first shard: the state's window), and the
    selective scan is `seqjax.scan.sequence_parallel_selective_scan` (the materialised references:
    `sequence_parallel_linear_recurrence`). A length the shards do not divide, or shards shorter than
    d_conv − 1, runs the conv on the global array (XLA exchanges what it needs). With a mask, the
    valid-tokens-first reorder is a gather over the whole (sharded) time axis.

    Padding: Δ is zeroed at padded tokens, so exp(ΔA) = 1 and the drive is 0: the state does not decay.
    The conv skips padded tokens too: its window holds the last valid tokens. Resets clear both
    the SSM state and the conv window, so packed sequences never see each other.

    `method`: "auto" (the default), "remat_sequential" and "remat_associative" form the [.., d_inner, N]
    tensors one chunk at a time and recompute them in the backward pass; "remat_unrolled" runs each
    short chunk as straight-line code without forming them (`seqjax.scan.selective_scan`; "auto" picks
    among the three from measured tables, and `chunk_size=None` takes the chosen form's default chunk:
    64 tokens, or 8 unrolled). "materialized_sequential" and
    "materialized_associative" materialise them for every token and use `seqjax.scan.linear_recurrence`.
    They are the references; training the block with them took 7.4x the memory at L=16k
    (benchmarks/ssm_cpu.md).

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Mamba(d_model=3, state_size=2, expand=2)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.conv.shape, state.ssm.shape            # d_inner = 6
    ((2, 5, 3), (2, 3, 6), (2, 6, 2))
    """

    d_model: int
    state_size: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | None = None
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    method: str = "auto"
    chunk_size: int | None = None
    sequence_axis: str | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        for field in ("d_model", "state_size", "expand", "d_conv"):
            check_positive_int("Mamba", field, getattr(self, field))
        if self.chunk_size is not None:
            check_positive_int("Mamba", "chunk_size", self.chunk_size)
        check_sequence_axis("Mamba", self.sequence_axis)
        if self.method in _RENAMED:
            raise ValueError(
                f"Mamba: method {self.method!r} was renamed: use {_RENAMED[self.method]!r} (the selective "
                f"scan's methods are {', '.join(METHODS)})."
            )
        if self.method not in METHODS:
            raise ValueError(f"Mamba: unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        if not 0 < self.dt_min < self.dt_max:
            raise ValueError(
                f"Mamba: need 0 < dt_min < dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}."
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        if input_size != self.d_model:
            raise ValueError(
                f"Mamba: input_size={input_size} but d_model={self.d_model}; the block maps d_model to "
                f"d_model, so build it with d_model={input_size} or project the inputs first."
            )
        d, di, n, r, pd = self.d_model, self.d_inner, self.state_size, self.rank, self.param_dtype
        keys = jax.random.split(key, 7)
        log_dt = jax.random.uniform(keys[4], (di,), pd, math.log(self.dt_min), math.log(self.dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), self.dt_floor)
        conv_bound = 1 / math.sqrt(self.d_conv)
        dt_bound = r**-0.5
        return {
            "in_proj": torch_linear_uniform(keys[0], (d, 2 * di), pd),
            "conv_w": jax.random.uniform(keys[1], (self.d_conv, di), pd, -conv_bound, conv_bound),
            "conv_b": jax.random.uniform(keys[6], (di,), pd, -conv_bound, conv_bound),
            "x_proj": torch_linear_uniform(keys[2], (di, r + 2 * n), pd),
            "dt_proj": jax.random.uniform(keys[3], (r, di), pd, -dt_bound, dt_bound),
            "dt_bias": _inverse_softplus(dt).astype(pd),
            "A_log": jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=pd), (di, n))),
            "D": jnp.ones((di,), pd),
            "out_proj": torch_linear_uniform(keys[5], (di, d), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "in_proj": ("embed", "mlp"),
            "conv_w": ("conv_width", "mlp"),
            "conv_b": ("mlp",),
            "x_proj": ("mlp", "dt_rank_bc"),
            "dt_proj": ("dt_rank", "mlp"),
            "dt_bias": ("mlp",),
            "A_log": ("mlp", "ssm_state"),
            "D": ("mlp",),
            "out_proj": ("mlp", "embed"),
        }

    def param_groups(self) -> dict[str, str]:
        groups = {name: "default" for name in self.param_axes()}
        groups.update(A_log="ssm", dt_bias="ssm", D="ssm")
        return groups

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> MambaState:
        return MambaState(
            conv=jnp.zeros((*batch_shape, self.d_conv - 1, self.d_inner), dtype),
            ssm=jnp.zeros((*batch_shape, self.d_inner, self.state_size), dtype),
        )

    def input_size_of(self, params: Params) -> int:
        return params["in_proj"].shape[0]

    @property
    def output_size(self) -> int:
        return self.d_model

    # -- shared pieces -------------------------------------------------------------------------------
    def _mm(self, a: jax.Array, w: jax.Array) -> jax.Array:
        return projection(self, "...i,io->...o", a, w)

    def _ssm_inputs(self, params: Params, x: jax.Array):
        """From the conv output x [.., d_inner]: Δ [.., d_inner], B and C [.., N]."""
        r, n = self.rank, self.state_size
        dbc = self._mm(x, params["x_proj"])
        dt = jax.nn.softplus(self._mm(dbc[..., :r], params["dt_proj"]) + params["dt_bias"])
        return dt, dbc[..., r : r + n], dbc[..., r + n :]

    def _a_matrix(self, params: Params) -> jax.Array:
        return -jnp.exp(params["A_log"].astype(accumulation_dtype(self.dtype)))

    def _output(self, params: Params, y: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
        y = (y + params["D"] * x) * jax.nn.silu(z)
        return self._mm(y, params["out_proj"]).astype(self.dtype)

    # -- one token -----------------------------------------------------------------------------------
    def project_inputs(self, params: Params, x: jax.Array) -> jax.Array:
        return self._mm(x, params["in_proj"])

    def conv_step(self, params: Params, conv: jax.Array, x_in: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One token of the causal conv: (the last K − 1 inputs [.., K−1, Di], x_in [.., Di]) -> (the
        window [.., K, Di], the conv's pre-activation [.., Di]); x = SiLU(pre-activation)."""
        window = jnp.concatenate([conv.astype(x_in.dtype), x_in[..., None, :]], axis=-2)
        return window, jnp.einsum("...kd,kd->...d", window, params["conv_w"]) + params["conv_b"]

    def ssm_update(self, params: Params, h: jax.Array, x: jax.Array) -> jax.Array:
        """One token of the selective SSM: h [.., Di, N], x [.., Di] -> exp(Δ A) ⊙ h + (Δ x) ⊗ B."""
        dt, b, _ = self._ssm_inputs(params, x)
        return jnp.exp(dt[..., None] * self._a_matrix(params)) * h + (dt * x)[..., None] * b[..., None, :]

    def recur(self, params: Params, state: MambaState, projected: jax.Array) -> tuple[MambaState, jax.Array]:
        x_in, z = jnp.split(projected, 2, axis=-1)
        window, pre = self.conv_step(params, state.conv, x_in)  # [.., K, Di], [.., Di]
        x = jax.nn.silu(pre)
        _, _, c = self._ssm_inputs(params, x)
        h = self.ssm_update(params, state.ssm, x)
        y = jnp.einsum("...dn,...n->...d", h, c)
        new = MambaState(conv=window[..., 1:, :].astype(state.conv.dtype), ssm=h.astype(state.ssm.dtype))
        return new, self._output(params, y, x, z)

    # -- a whole sequence ----------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: MambaState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, MambaState]:
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, length = xs.shape[:-2], xs.shape[-2]
        bsz = math.prod(batch_shape)
        flat = lambda a: None if a is None else a.reshape(bsz, length, *a.shape[len(batch_shape) + 1 :])
        u, resets, mask = flat(xs), flat(resets), flat(mask)
        conv0 = state.conv.reshape(bsz, self.d_conv - 1, self.d_inner)
        h0 = state.ssm.reshape(bsz, self.d_inner, self.state_size)

        if mask is not None:
            # Move every sequence's valid tokens to the front (stable), so the conv and the scan see
            # exactly the valid tokens in order; padding then sits at the end, where it changes nothing.
            order = jnp.argsort(~mask, axis=1, stable=True)
            gather = lambda a: jnp.take_along_axis(
                a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1
            )
            u = gather(u)
            n_valid = mask.sum(axis=1)
            valid = jnp.arange(length)[None] < n_valid[:, None]
            resets = None if resets is None else gather(resets) & valid
        else:
            n_valid = jnp.full((bsz,), length)
            valid = None

        x_in, z = jnp.split(self._mm(u, params["in_proj"]), 2, axis=-1)
        x, conv_state = self._causal_conv(params, x_in, conv0, resets, n_valid)
        dt, b, c = self._ssm_inputs(params, x)
        if valid is not None:
            dt = jnp.where(valid[..., None], dt, 0)
        y, h = self._scan(params, x, dt, b, c, h0, resets)
        ys = self._output(params, y, x, z)
        if valid is not None:
            ys = jnp.where(valid[..., None], ys, 0)
            inverse = jnp.argsort(order, axis=1)
            ys = jnp.take_along_axis(ys, inverse[..., None], axis=1)
        final = MambaState(
            conv=conv_state.reshape(state.conv.shape).astype(state.conv.dtype),
            ssm=h.reshape(state.ssm.shape).astype(state.ssm.dtype),
        )
        return ys.reshape(*batch_shape, length, self.d_model), final

    def _causal_conv(self, params, x_in, conv0, resets, n_valid):
        """SiLU of the depthwise causal conv over [window0; x_in] (`short_conv`: taps across a reset zeroed;
        split over `sequence_axis` with a halo of d_conv − 1 inputs), and the new window."""
        dtype = jnp.promote_types(x_in.dtype, params["conv_w"].dtype)
        out, window = short_conv(
            x_in.astype(dtype), conv0, params["conv_w"], resets, n_valid, sequence_axis=self.sequence_axis
        )
        return jax.nn.silu(out + params["conv_b"]), window

    def _scan(self, params, x, dt, b, c, h0, resets):
        a_mat = self._a_matrix(params)
        parallel = {} if self.sequence_axis is None else {"sequence_axis": self.sequence_axis}
        if self.method in SELECTIVE_METHODS:
            scan = selective_scan if not parallel else sequence_parallel_selective_scan
            return scan(
                x, dt, a_mat, b, c, h0, resets, chunk_size=self.chunk_size, method=self.method, **parallel
            )
        decay = jnp.exp(dt[..., None] * a_mat)
        drive = (dt * x)[..., None] * b[:, :, None, :]
        inner = self.method.removeprefix("materialized_")
        recurrence = linear_recurrence if not parallel else sequence_parallel_linear_recurrence
        hs, h = recurrence(decay, drive, h0, axis=1, resets=resets, method=inner, **parallel)
        return jnp.einsum("bldn,bln->bld", hs, c), h
