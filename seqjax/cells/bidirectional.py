"""A bidirectional wrapper: one cell left to right, one right to left, outputs concatenated."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells.base import Cell, Params

__all__ = ["Bidirectional"]


@dataclasses.dataclass(frozen=True)
class Bidirectional:
    """Runs `forward` left to right and `backward` right to left; `ys` = concat(forward, backward).

    `backward` must have `reverse=True` (use `Bidirectional.of(cell)` to build the pair from one
    cell). Padding (`mask`) is skipped by both directions and `resets` split segments for both, so a
    right-padded or packed batch gives each segment exactly its own bidirectional encoding.

    There is no `step`: the backward direction needs tokens that have not arrived yet.
    """

    forward: Cell
    backward: Cell

    def __post_init__(self) -> None:
        if getattr(self.forward, "reverse", False) or not getattr(self.backward, "reverse", False):
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

    def initial_state(self, batch_shape=(), dtype=jnp.float32) -> dict[str, Any]:
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

    def step(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Bidirectional has no step form: its backward direction reads future tokens. Use `apply` on "
            "the whole sequence, or the forward cell alone for streaming."
        )
