"""E-LSTM: an LSTM with a small slot memory written by gated compression."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.cells.base import DType, Params, RecurrentCell, accumulation_dtype, projection
from seqjax.cells.initializers import stacked_glorot_uniform, stacked_orthogonal
from seqjax.cells.registry import register
from seqjax.common.checks import check_positive_int

__all__ = ["ELSTM", "ELSTMState"]


class ELSTMState(NamedTuple):
    h: jax.Array  # [*batch, hidden_size]
    c: jax.Array  # [*batch, hidden_size]
    memory: jax.Array  # [*batch, memory_slots, memory_width]


@register("elstm")
@dataclasses.dataclass(frozen=True)
class ELSTM(RecurrentCell):
    """Enhanced LSTM with gated memory compression.

    The paper that names this cell gives no equations; this is seqjax's definition. Hidden size d,
    S memory slots of width m, state (h, c, M) with M ∈ R^{S×m}: O(d + S·m), constant in length.

      read      q = W_q h_{t-1} ;  α = softmax_S(M_{t-1} q / √m) ;  r = αᵀ M_{t-1}          (r ∈ R^m)
      gates     [i, f, g, o] = W x_t + U h_{t-1} + V r + b
                c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g) ;  h_t = σ(o) ⊙ tanh(c_t)
      write     z = σ(W_zx x_t + W_zh h_t + b_z) ∈ (0,1)^S ;  u = tanh(W_u c_t) ∈ R^m
                M_t = (1 − z) ⊙ M_{t−1} + z ⊗ u

    The output at each token is h_t. Each slot is a leaky average of compressed cell states: slot s
    keeps (1 − z_s) of its content, so a slot whose gate stays near 0 holds information for ~1/z_s
    tokens, far beyond what c alone keeps once f < 1. `W_z [x; h]` is split into W_zx and W_zh only
    so that the x part is projected for all tokens outside the time loop; the function is the same.

    Initialisation: W (Glorot per gate), U orthogonal per gate, V and W_q, W_zx, W_zh, W_u
    Glorot-uniform, gate bias zero except the forget slice = `forget_bias` (1.0), and
    b_z = `write_bias` (−3.0, σ ≈ 0.047), so the memory starts slow: a slot is rewritten on the
    order of every 20 tokens, and training speeds up the slots it needs. With M_0 = 0 the first read is
    r = 0, so the cell starts out as a plain LSTM.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.ELSTM(hidden_size=4, memory_slots=2, memory_width=3)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.memory.shape
    ((2, 5, 4), (2, 2, 3))
    """

    nonlinear_recurrence: ClassVar[bool] = True

    hidden_size: int
    memory_slots: int = 16
    memory_width: int = 32
    forget_bias: float = 1.0
    write_bias: float = -3.0
    reverse: bool = False
    unroll: int = 1
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    def __post_init__(self) -> None:
        for field in ("hidden_size", "memory_slots", "memory_width", "unroll"):
            check_positive_int("ELSTM", field, getattr(self, field))

    def init(self, key: jax.Array, input_size: int) -> Params:
        d, s, m = self.hidden_size, self.memory_slots, self.memory_width
        keys = jax.random.split(key, 7)
        glorot = jax.nn.initializers.glorot_uniform()
        pd = self.param_dtype
        return {
            "w_ih": stacked_glorot_uniform(keys[0], input_size, d, 4, pd),
            "w_hh": stacked_orthogonal(keys[1], d, 4, pd),
            "w_rh": stacked_glorot_uniform(keys[2], m, d, 4, pd),
            "b": jnp.zeros((4 * d,), pd).at[d : 2 * d].set(self.forget_bias),
            "w_q": glorot(keys[3], (d, m), pd),
            "w_zx": glorot(keys[4], (input_size, s), pd),
            "w_zh": glorot(keys[5], (d, s), pd),
            "b_z": jnp.full((s,), self.write_bias, pd),
            "w_u": glorot(keys[6], (d, m), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "w_ih": ("embed", "gates"),
            "w_hh": ("state", "gates"),
            "w_rh": ("memory_width", "gates"),
            "b": ("gates",),
            "w_q": ("state", "memory_width"),
            "w_zx": ("embed", "memory_slots"),
            "w_zh": ("state", "memory_slots"),
            "b_z": ("memory_slots",),
            "w_u": ("state", "memory_width"),
        }

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> ELSTMState:
        vec = jnp.zeros((*batch_shape, self.hidden_size), dtype)
        memory = jnp.zeros((*batch_shape, self.memory_slots, self.memory_width), dtype)
        return ELSTMState(h=vec, c=vec, memory=memory)

    def input_size_of(self, params: Params) -> int:
        return params["w_ih"].shape[0]

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def _mm(self, a: jax.Array, w: jax.Array) -> jax.Array:
        return projection(self, "...i,io->...o", a, w)

    def project_inputs(self, params: Params, x: jax.Array) -> dict[str, jax.Array]:
        acc = accumulation_dtype(self.dtype)
        return {
            "gates": self._mm(x, params["w_ih"]) + params["b"].astype(acc),
            "write": self._mm(x, params["w_zx"]) + params["b_z"].astype(acc),
        }

    def recur(
        self, params: Params, state: ELSTMState, projected: dict[str, jax.Array]
    ) -> tuple[ELSTMState, jax.Array]:
        acc = accumulation_dtype(self.dtype)
        memory = state.memory.astype(acc)
        # read
        q = self._mm(state.h, params["w_q"])
        scores = jnp.einsum("...sm,...m->...s", memory, q) / math.sqrt(self.memory_width)
        alpha = jax.nn.softmax(scores, axis=-1)
        read = jnp.einsum("...s,...sm->...m", alpha, memory)
        # gates
        pre = projected["gates"] + self._mm(state.h, params["w_hh"]) + self._mm(read, params["w_rh"])
        i, f, g, o = jnp.split(pre, 4, axis=-1)
        c = jax.nn.sigmoid(f) * state.c.astype(acc) + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        # compression write
        z = jax.nn.sigmoid(projected["write"] + self._mm(h, params["w_zh"]))[..., None]
        u = jnp.tanh(self._mm(c, params["w_u"]))[..., None, :]
        memory = (1 - z) * memory + z * u
        new = ELSTMState(
            h=h.astype(state.h.dtype), c=c.astype(state.c.dtype), memory=memory.astype(state.memory.dtype)
        )
        return new, h.astype(self.dtype)
