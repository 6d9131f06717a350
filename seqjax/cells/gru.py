"""GRU with the PyTorch/cuDNN equations."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp

from seqjax.cells.base import DType, Params, RecurrentCell, accumulation_dtype
from seqjax.cells.initializers import stacked_glorot_uniform, stacked_orthogonal
from seqjax.cells.registry import register
from seqjax.cells.torch_port import TorchRNNPort
from seqjax.common.checks import check_positive_int

__all__ = ["GRU"]


@register("gru")
@dataclasses.dataclass(frozen=True)
class GRU(TorchRNNPort, RecurrentCell):
    """Gated recurrent unit, exactly `torch.nn.GRU`'s equations (gate order r, z, n):

        r = σ(W_ir x + b_ir + W_hr h + b_hr)      z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    The reset gate multiplies `(W_hn h + b_hn)`, as in cuDNN (not `W_hn (r ⊙ h)` as in Cho et al.), so
    torch weights port exactly. Parameters: `w_ih` [input, 3H], `w_hh` [H, 3H], `b_ih`, `b_hh` [3H].

    Initialisation: `w_ih` Glorot-uniform per gate, `w_hh` orthogonal per gate, biases zero.
    The state is `h` [*batch, H]; the output is h'.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.GRU(hidden_size=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))    # [batch, time, features]
    >>> ys.shape, state.shape
    ((2, 5, 4), (2, 4))
    >>> state, y = cell.step(params, state, jnp.ones((2, 3)))
    >>> y.shape
    (2, 4)
    """

    torch_kind: ClassVar[str] = "GRU"
    nonlinear_recurrence: ClassVar[bool] = True
    torch_gates: ClassVar[int] = 3

    hidden_size: int
    reverse: bool = False
    unroll: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        check_positive_int("GRU", "hidden_size", self.hidden_size)
        if int(self.unroll) < 1:
            raise ValueError(f"GRU: unroll must be >= 1, got {self.unroll}.")

    def init(self, key: jax.Array, input_size: int) -> Params:
        h = self.hidden_size
        k_ih, k_hh = jax.random.split(key)
        return {
            "w_ih": stacked_glorot_uniform(k_ih, input_size, h, 3, self.param_dtype),
            "w_hh": stacked_orthogonal(k_hh, h, 3, self.param_dtype),
            "b_ih": jnp.zeros((3 * h,), self.param_dtype),
            "b_hh": jnp.zeros((3 * h,), self.param_dtype),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "w_ih": ("embed", "gates"),
            "w_hh": ("state", "gates"),
            "b_ih": ("gates",),
            "b_hh": ("gates",),
        }

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> jax.Array:
        return jnp.zeros((*batch_shape, self.hidden_size), dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_ih"].shape[0]

    @property
    def output_size(self) -> int:
        return self.hidden_size

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def project_inputs(self, params: Params, x: jax.Array) -> jax.Array:
        h = self.hidden_size
        proj = jnp.matmul(
            x.astype(self.dtype), params["w_ih"].astype(self.dtype), preferred_element_type=self._acc
        )
        # b_hr and b_hz sit outside the reset gate, so they fold into the input projection; b_hn does not.
        bias = params["b_ih"] + params["b_hh"].at[2 * h :].set(0)
        return proj + bias.astype(self._acc)

    def recur(self, params: Params, state: jax.Array, projected: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.hidden_size
        acc = self._acc
        hproj = jnp.matmul(
            state.astype(self.dtype), params["w_hh"].astype(self.dtype), preferred_element_type=acc
        )
        r = jax.nn.sigmoid(projected[..., :h] + hproj[..., :h])
        z = jax.nn.sigmoid(projected[..., h : 2 * h] + hproj[..., h : 2 * h])
        n = jnp.tanh(
            projected[..., 2 * h :] + r * (hproj[..., 2 * h :] + params["b_hh"][2 * h :].astype(acc))
        )
        new = (1 - z) * n + z * state.astype(acc)
        return new.astype(state.dtype), new.astype(self.dtype)
