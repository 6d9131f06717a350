"""`Block`: norm → mixer (any cell) → residual → norm → gated MLP → residual.

Pre-norm (default):  x = x + drop(proj(mixer(norm₁(x))));  x = x + drop(mlp(norm₂(x)))
Post-norm:           x = norm₁(x + drop(proj(mixer(x))));  x = norm₂(x + drop(mlp(x)))

`proj` is a linear map back to `d_model`, present only when the cell's `output_size` differs from
`d_model`. The MLP is gated (SwiGLU: silu(x W_g) ⊙ (x W_u) W_o, or GeGLU with gelu) with
`round(mlp_expansion · d_model)` hidden units; `mlp_expansion=0` drops the MLP half of the block (as in
Mamba's own blocks).

Only the mixer mixes over time; norms, MLP and dropout act per token. A padded token (mask False) gets
a zero mixer output and does not touch the cell's state, so whatever the residual stream holds at padded
positions never reaches a valid token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, State
from seqjax.models.layer import CellLayer
from seqjax.models.partitioning import boxed

__all__ = [
    "MLP_ACTIVATIONS",
    "NORMS",
    "REMAT_POLICIES",
    "Block",
    "GatedMLP",
    "make_norm",
    "mlp_hidden_size",
    "remat_block",
]

NORMS = ("rmsnorm", "layernorm")
MLP_ACTIVATIONS = {"swiglu": nn.silu, "geglu": nn.gelu}

#: remat policy names → `jax.checkpoint` policies. "none" means no remat; "full" saves nothing but the
#: block's inputs (policy None); the rest are `jax.checkpoint_policies` entries.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": None,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def make_norm(kind: str, *, eps: float, dtype: Any, param_dtype: Any, use_bias: bool = True) -> nn.Module:
    """An RMSNorm or LayerNorm over the last axis, with logical axes ('embed',) and group "no_decay"."""
    scale_init = boxed(nn.initializers.ones, ("embed",), "no_decay")
    if kind == "rmsnorm":
        return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, scale_init=scale_init)
    if kind == "layernorm":
        return nn.LayerNorm(
            epsilon=eps,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            scale_init=scale_init,
            bias_init=boxed(nn.initializers.zeros, ("embed",), "no_decay"),
        )
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}.")


def mlp_hidden_size(d_model: int, expansion: float) -> int:
    return round(float(expansion) * int(d_model))


def dense(
    features: int,
    names: tuple[str | None, str | None],
    *,
    use_bias: bool,
    dtype: Any,
    param_dtype: Any,
    kernel_init: Any = None,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with a boxed kernel (`names`) and bias (names[1], group "no_decay")."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=boxed(kernel_init or nn.initializers.lecun_normal(), names),
        bias_init=boxed(nn.initializers.zeros, (names[1],), "no_decay"),
        name=name,
    )


class GatedMLP(nn.Module):
    """act(x W_gate) ⊙ (x W_up) → W_out, per token."""

    d_model: int
    hidden: int
    activation: str = "swiglu"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"unknown MLP activation {self.activation!r}; choose one of {tuple(MLP_ACTIVATIONS)}."
            )
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
        self.gate = dense(self.hidden, ("embed", "mlp"), **kw)
        self.up = dense(self.hidden, ("embed", "mlp"), **kw)
        self.out = dense(self.d_model, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(MLP_ACTIVATIONS[self.activation](self.gate(x)) * self.up(x))


class Block(nn.Module):
    """One residual block around a cell; see the module docstring.

    Attributes:
      cell: any seqjax cell; its input width is `d_model`.
      d_model: the residual stream's width.
      mlp_expansion: MLP hidden units / d_model (0: no MLP).
      mlp_activation: "swiglu" or "geglu".
      norm: "rmsnorm" or "layernorm"; norm_eps its epsilon.
      prenorm: pre-norm (True, default) or post-norm.
      dropout_rate: dropout on the mixer's and the MLP's outputs (before each residual add).
      use_bias: biases in the MLP and the output projection.
      dtype: compute dtype of norms, MLP and projection (None: from the inputs); the cell computes in its
        own `dtype`. param_dtype: parameter dtype of the block's own layers.
      external_params: the cell's parameters the block does not hold (`CellLayer.external_params`): the
        model shares them across layers and passes them to each call as `shared`.
    """

    cell: Cell
    d_model: int
    mlp_expansion: float = 4.0
    mlp_activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    prenorm: bool = True
    dropout_rate: float = 0.0
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    external_params: tuple[str, ...] = ()

    def setup(self) -> None:
        norm = dict(eps=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)
        self.mixer_norm = make_norm(self.norm, **norm)
        self.mixer = CellLayer(self.cell, input_size=self.d_model, external_params=self.external_params)
        if int(self.cell.output_size) != int(self.d_model):
            self.mixer_proj = dense(
                self.d_model,
                ("mixer_out", "embed"),
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        else:
            self.mixer_proj = None
        hidden = mlp_hidden_size(self.d_model, self.mlp_expansion)
        if hidden > 0:
            self.mlp_norm = make_norm(self.norm, **norm)
            self.mlp = GatedMLP(
                self.d_model,
                hidden,
                activation=self.mlp_activation,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
        else:
            self.mlp_norm = None
            self.mlp = None
        self.dropout = nn.Dropout(rate=self.dropout_rate)

    def _mix_out(self, y: jax.Array) -> jax.Array:
        return y if self.mixer_proj is None else self.mixer_proj(y)

    def __call__(
        self,
        xs: jax.Array,
        state: State | None = None,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
        shared: Any = None,
    ) -> tuple[jax.Array, State]:
        """xs [*batch, time, d_model] → (ys [*batch, time, d_model], the cell's final state). `shared`:
        the `external_params` the model holds.

        Arguments are positional-or-keyword (not keyword-only) so `nn.remat` can mark `deterministic`
        static.
        """
        drop = lambda h: self.dropout(h, deterministic=deterministic)
        if self.prenorm:
            h, state = self.mixer(self.mixer_norm(xs), state, resets=resets, mask=mask, shared=shared)
            x = xs + drop(self._mix_out(h))
            if self.mlp is not None:
                x = x + drop(self.mlp(self.mlp_norm(x)))
        else:
            h, state = self.mixer(xs, state, resets=resets, mask=mask, shared=shared)
            x = self.mixer_norm(xs + drop(self._mix_out(h)))
            if self.mlp is not None:
                x = self.mlp_norm(x + drop(self.mlp(x)))
        return x, state

    def step(
        self,
        x: jax.Array,
        state: State,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
        shared: Any = None,
    ) -> tuple[State, jax.Array]:
        """One token x [*batch, d_model] through norm → cell.step → MLP: returns (state, y)."""
        if self.prenorm:
            state, h = self.mixer.step(self.mixer_norm(x), state, reset=reset, mask=mask, shared=shared)
            y = x + self._mix_out(h)
            if self.mlp is not None:
                y = y + self.mlp(self.mlp_norm(y))
        else:
            state, h = self.mixer.step(x, state, reset=reset, mask=mask, shared=shared)
            y = self.mixer_norm(x + self._mix_out(h))
            if self.mlp is not None:
                y = self.mlp_norm(y + self.mlp(y))
        return state, y

    @nn.nowrap
    def initial_state(self, batch_shape: Sequence[int] = (), dtype: Any = jnp.float32) -> State:
        return self.cell.initial_state(tuple(batch_shape), dtype)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array]:
        return (jnp.zeros((1, 1, self.d_model), jnp.float32),)


def remat_block(policy: str) -> type[Block]:
    """`Block`, or `nn.remat(Block)` with the named policy from `REMAT_POLICIES`."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose one of {tuple(REMAT_POLICIES)}.")
    if policy == "none":
        return Block
    # static_argnums counts `self`: (self, xs, state, resets, mask, deterministic, shared).
    return nn.remat(Block, policy=REMAT_POLICIES[policy], static_argnums=(5,))
