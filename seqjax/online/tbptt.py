"""Online truncated backpropagation through time: the baseline for the forward-mode learners.

At every token the learner keeps the last k tokens (inputs and flags, a ring buffer) and the model's
state just before the oldest of them. It re-runs those k tokens from that state and takes the gradient
of the current token's loss through them (the state k tokens back is held fixed). This is the
sliding-window variant: an update at every token, each seeing k tokens of history, at O(k) work and
memory per token. (The other common variant, one update every k tokens through the whole segment, is
what seqjax.train's `tbptt` does on whole sequences.) With k at least the sequence length it is BPTT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.online.learner import LearnerState, OnlineLearner, _flags

__all__ = ["OnlineTBPTT"]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OnlineTBPTT(OnlineLearner):
    """Gradient of each token's loss through its last `window` tokens (module docstring).

    Works for every cell an `OnlineModel` accepts; exact (BPTT's gradient, summed over a sequence) when
    `window` is at least the sequence length. Memory: the window's inputs and one state per cell.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> from seqjax.online import OnlineModel
    >>> model = OnlineModel((cells.LSTM(hidden_size=3),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> learner = OnlineTBPTT(model, window=4)
    >>> st = learner.init(params, batch_shape=(5,))
    >>> st.traces["x"].shape                                # the last 4 tokens
    (4, 5, 2)
    >>> st, pred, loss, grads = jax.jit(learner.step)(params, st, jnp.ones((5, 2)), jnp.zeros((5, 1)))
    >>> pred.shape, loss.shape
    ((5, 1), (5,))
    """

    window: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"OnlineTBPTT: window must be a positive integer (tokens), got {self.window!r}.")

    def init(self, params: PyTree, batch_shape: Sequence[int] = ()) -> LearnerState:
        batch_shape = tuple(batch_shape)
        dtype = jax.tree.leaves(params["layers"])[0].dtype
        states = self.model.initial_state(batch_shape, dtype)
        k = self.window
        buffer = {
            "x": jnp.zeros((k, *batch_shape, self.model.input_size), dtype),
            "reset": jnp.zeros((k, *batch_shape), bool),
            "mask": jnp.zeros((k, *batch_shape), bool),  # empty slots are padding: they pass the state
            "base": states,
        }
        return LearnerState(states, buffer, jnp.zeros((), jnp.int32))

    def step(
        self,
        params: PyTree,
        state: LearnerState,
        x: jax.Array,
        y: jax.Array,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[LearnerState, jax.Array, jax.Array, PyTree]:
        x, y = self._check_token(x, y)
        batch_shape = x.shape[:-1]
        reset, mask = _flags(reset, batch_shape, False), _flags(mask, batch_shape, True)
        buf = state.traces
        push = lambda old, new: jnp.concatenate([old[1:], new[None].astype(old.dtype)], axis=0)
        xs, rs, ms = push(buf["x"], x), push(buf["reset"], reset), push(buf["mask"], mask)
        model = self.model

        def window_loss(p: PyTree) -> tuple[jax.Array, Any]:
            base = lax.stop_gradient(buf["base"])
            after_first, _ = model.step(p, base, xs[0], reset=rs[0], mask=ms[0])

            def body(s: Any, tok: tuple[jax.Array, ...]) -> tuple[Any, jax.Array]:
                s, pred = model.step(p, s, tok[0], reset=tok[1], mask=tok[2])
                return s, pred

            # the window again from the base (k tokens); the first one's state becomes the next base
            final, preds = lax.scan(body, base, (xs, rs, ms))
            pred = preds[-1]
            losses = jnp.where(mask, self.loss_fn(pred, y), 0)
            return jnp.sum(losses), (losses, pred, final, after_first)

        grads, (losses, pred, final, after_first) = jax.grad(window_loss, has_aux=True)(params)
        traces = {"x": xs, "reset": rs, "mask": ms, "base": lax.stop_gradient(after_first)}
        return LearnerState(final, traces, state.position + 1), pred, losses, grads
