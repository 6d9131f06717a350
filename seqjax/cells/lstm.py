"""LSTM with the PyTorch/cuDNN equations."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import DType, Params, RecurrentCell, accumulation_dtype
from seqjax.cells.initializers import stacked_glorot_uniform, stacked_orthogonal
from seqjax.cells.registry import register
from seqjax.cells.torch_port import TorchRNNPort
from seqjax.common.checks import check_positive_int
from seqjax.scan.lstm import gate_activations, lstm_scan

__all__ = ["LSTM", "LSTMState"]

ENGINES = ("fused", "scan")


class LSTMState(NamedTuple):
    h: jax.Array  # [*batch, hidden_size]
    c: jax.Array  # [*batch, hidden_size]


@register("lstm")
@dataclasses.dataclass(frozen=True)
class LSTM(TorchRNNPort, RecurrentCell):
    """Long short-term memory, exactly `torch.nn.LSTM`'s equations (gate order i, f, g, o):

        i = σ(W_ii x + b_ii + W_hi h + b_hi)      f = σ(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g                        h' = o ⊙ tanh(c')

    The output at each token is h'. Parameters: `w_ih` [input, 4H], `w_hh` [H, 4H], `b_ih`, `b_hh`
    [4H] (torch stores the transposed weights; `from_torch` converts).

    Initialisation: `w_ih` Glorot-uniform per gate, `w_hh` orthogonal per gate, biases zero except the
    forget-gate slice of `b_ih`, which is `forget_bias` (1.0, Jozefowicz et al. 2015) so the cell
    remembers by default. torch's own init (uniform ±1/√H everywhere) is kept by `from_torch`.

    Hyperparameters:
      hidden_size: H.
      reverse: `apply` runs right to left.
      engine: "fused" (custom backward pass, the fast training form) or "scan" (autodiff through
        `lax.scan` of `step`'s update; the reference).
      unroll: time steps per loop iteration in the scan.
      dtype: compute dtype of the matmuls (bfloat16 allowed); state and gate math stay float32.
      param_dtype: dtype of the parameters.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.LSTM(hidden_size=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)           # 3 input features
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))    # [batch, time, features]
    >>> ys.shape, state.h.shape
    ((2, 5, 4), (2, 4))
    >>> state, y = cell.step(params, state, jnp.ones((2, 3)))  # one more token
    >>> y.shape
    (2, 4)
    """

    torch_kind: ClassVar[str] = "LSTM"
    nonlinear_recurrence: ClassVar[bool] = True
    torch_gates: ClassVar[int] = 4

    hidden_size: int
    forget_bias: float = 1.0
    reverse: bool = False
    engine: str = "fused"
    unroll: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        check_positive_int("LSTM", "hidden_size", self.hidden_size)
        if self.engine not in ENGINES:
            raise ValueError(f"LSTM: engine must be one of {ENGINES}, got {self.engine!r}.")
        if int(self.unroll) < 1:
            raise ValueError(f"LSTM: unroll must be >= 1, got {self.unroll}.")

    # -- parameters and state ------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        h = self.hidden_size
        k_ih, k_hh = jax.random.split(key)
        b_ih = jnp.zeros((4 * h,), self.param_dtype).at[h : 2 * h].set(self.forget_bias)
        return {
            "w_ih": stacked_glorot_uniform(k_ih, input_size, h, 4, self.param_dtype),
            "w_hh": stacked_orthogonal(k_hh, h, 4, self.param_dtype),
            "b_ih": b_ih,
            "b_hh": jnp.zeros((4 * h,), self.param_dtype),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "w_ih": ("embed", "gates"),
            "w_hh": ("state", "gates"),
            "b_ih": ("gates",),
            "b_hh": ("gates",),
        }

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> LSTMState:
        zeros = jnp.zeros((*batch_shape, self.hidden_size), dtype)
        return LSTMState(h=zeros, c=zeros)

    def input_size_of(self, params: Params) -> int:
        return params["w_ih"].shape[0]

    @property
    def output_size(self) -> int:
        return self.hidden_size

    # -- the update ----------------------------------------------------------------------------------
    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def _project_without_bias(self, params: Params, x: jax.Array) -> jax.Array:
        return jnp.matmul(
            x.astype(self.dtype), params["w_ih"].astype(self.dtype), preferred_element_type=self._acc
        )

    def project_inputs(self, params: Params, x: jax.Array) -> jax.Array:
        return self._project_without_bias(params, x) + (params["b_ih"] + params["b_hh"]).astype(self._acc)

    def recur(self, params: Params, state: LSTMState, projected: jax.Array) -> tuple[LSTMState, jax.Array]:
        acc = self._acc
        pre = projected + jnp.matmul(
            state.h.astype(self.dtype), params["w_hh"].astype(self.dtype), preferred_element_type=acc
        )
        i, f, g, o = jnp.split(gate_activations(pre), 4, axis=-1)
        c = f * state.c.astype(acc) + i * g
        h = o * jnp.tanh(c)
        return LSTMState(h=h.astype(state.h.dtype), c=c.astype(state.c.dtype)), h.astype(self.dtype)

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: LSTMState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, LSTMState]:
        if self.engine == "scan":
            return super().apply(params, xs, state, resets=resets, mask=mask)
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape, (t, f) = xs.shape[:-2], xs.shape[-2:]
        b = math.prod(batch_shape)
        # Time-major before projecting (see Cell.apply); the projection of all tokens is one matmul.
        xproj = self._project_without_bias(params, jnp.swapaxes(xs.reshape(b, t, f), 0, 1))
        flat = lambda a: None if a is None else jnp.swapaxes(a.reshape(b, t), 0, 1)
        ys, h, c = lstm_scan(
            xproj,
            params["w_hh"],
            params["b_ih"] + params["b_hh"],
            state.h.reshape(b, -1),
            state.c.reshape(b, -1),
            resets=flat(resets),
            mask=flat(mask),
            reverse=self.reverse,
            unroll=self.unroll,
            compute_dtype=self.dtype,
        )
        ys = jnp.swapaxes(ys, 0, 1).reshape(*batch_shape, t, self.hidden_size)
        final = LSTMState(h=h.reshape(state.h.shape), c=c.reshape(state.c.shape))
        return ys, final
