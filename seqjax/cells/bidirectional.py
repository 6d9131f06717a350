"""A bidirectional wrapper: one cell left to right, one right to left, outputs concatenated."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, DType, Params

__all__ = ["Bidirectional"]


@dataclasses.dataclass(frozen=True)
class Bidirectional(Cell):
    """Runs `forward` left to right and `backward` right to left; `ys` = concat(forward, backward).

    `backward` must have `reverse=True` (use `Bidirectional.of(cell)` to build the pair from one
    cell). Padding (`mask`) is skipped by both directions and `resets` split segments for both, so a
    right-padded or packed batch gives each segment exactly its own bidirectional encoding.

    There is no `step`: the backward direction needs tokens that have not arrived yet.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Bidirectional.of(cells.GRU(hidden_size=3))
    >>> params = cell.init(jax.random.PRNGKey(0), 2)
    >>> ys, state = cell.apply(params, jnp.ones((4, 2)))     # 4 tokens of 2 features
    >>> ys.shape                                             # forward and backward features
    (4, 6)
    >>> cell.step_unsupported()
    'Bidirectional has no step form (its backward direction reads future tokens)'
    """

    forward: Cell
    backward: Cell

    def __post_init__(self) -> None:
        if self.forward.is_reversed or not self.backward.is_reversed:
            raise ValueError(
                "Bidirectional: `forward` must run left to right and `backward` must have reverse=True; "
                "build the pair with Bidirectional.of(cell)."
            )

    @classmethod
    def of(cls, cell: Cell) -> Bidirectional:
        """The same cell type and hyperparameters in both directions (independent parameters)."""
        return cls(
            forward=dataclasses.replace(cell, reverse=False), backward=dataclasses.replace(cell, reverse=True)
        )

    def init(self, key: jax.Array, input_size: int) -> Params:
        k_fwd, k_bwd = jax.random.split(key)
        return {
            "forward": self.forward.init(k_fwd, input_size),
            "backward": self.backward.init(k_bwd, input_size),
        }

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> dict[str, Any]:
        return {
            "forward": self.forward.initial_state(batch_shape, dtype),
            "backward": self.backward.initial_state(batch_shape, dtype),
        }

    def param_axes(self) -> dict[str, Any]:
        return {"forward": self.forward.param_axes(), "backward": self.backward.param_axes()}

    def param_groups(self) -> dict[str, Any]:
        return {"forward": self.forward.param_groups(), "backward": self.backward.param_groups()}

    @property
    def output_size(self) -> int:
        return self.forward.output_size + self.backward.output_size

    def input_size_of(self, params: Params) -> int:
        return self.forward.input_size_of(params["forward"])

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: dict[str, Any] | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        state = state or {"forward": None, "backward": None}
        ys_f, s_f = self.forward.apply(params["forward"], xs, state["forward"], resets=resets, mask=mask)
        ys_b, s_b = self.backward.apply(params["backward"], xs, state["backward"], resets=resets, mask=mask)
        return jnp.concatenate([ys_f, ys_b.astype(ys_f.dtype)], axis=-1), {"forward": s_f, "backward": s_b}

    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        return f"{self._label} has no step form (its backward direction reads future tokens)"

    def step(
        self,
        params: Params,
        state: dict[str, Any],
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[dict[str, Any], jax.Array]:
        raise TypeError(
            "Bidirectional has no step form: its backward direction reads future tokens. Use `apply` on "
            "the whole sequence, or the forward cell alone for streaming."
        )
