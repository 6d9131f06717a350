"""The online learner interface and the trace-based learner that exact RTRL and SnAp-1 share.

A learner turns a model into a function of one token:

    learner_state = learner.init(params, batch_shape)
    learner_state, prediction, loss, grads = learner.step(params, learner_state, x_t, y_t, reset_t, mask_t)

`grads` is a pytree like `params`: this algorithm's estimate of the gradient of the token's loss
(summed over the batch) with respect to every parameter, to be fed to an optimizer (optax). The learner
state (the cells' states, the algorithm's traces, the stream position) has a size fixed by the model,
the algorithm and the batch shape, never by the number of tokens seen.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.cells.base import Cell
from seqjax.online.model import OnlineModel

__all__ = [
    "LayerTracer",
    "LearnerState",
    "OnlineLearner",
    "TraceLearner",
    "accumulate",
    "bptt_gradient",
    "squared_error",
]

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """½‖pred − target‖² over the last axis: [*batch, d] -> [*batch].

    >>> float(squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))
    2.5
    """
    return 0.5 * jnp.sum((pred - target) ** 2, axis=-1)


class LearnerState(NamedTuple):
    """What a learner carries from token to token.

    states: the tuple of the model's cell states [*batch, ...].
    traces: the algorithm's memory (sensitivity traces, or TBPTT's window), fixed size.
    position: int32 [] tokens seen on the stream (for a driving loop; no computation depends on it).
    """

    states: tuple[Any, ...]
    traces: Any
    position: jax.Array


def _flags(flag: Any, batch_shape: tuple[int, ...], default: bool) -> jax.Array:
    if flag is None:
        return jnp.full(batch_shape, default)
    return jnp.broadcast_to(jnp.asarray(flag, bool), batch_shape)


@dataclasses.dataclass(frozen=True)
class OnlineLearner(abc.ABC):
    """An online gradient algorithm for an `OnlineModel`.

    `loss_fn(prediction [*batch, out], target [*batch, out]) -> [*batch]`; the loss of a token is summed
    over the batch (padded tokens count zero), so the gradients of a whole sequence add up to the
    gradient of the summed sequence loss.
    """

    model: OnlineModel
    loss_fn: LossFn = squared_error

    @abc.abstractmethod
    def init(self, params: PyTree, batch_shape: Sequence[int] = ()) -> LearnerState:
        """The learner state before the first token of a stream."""

    @abc.abstractmethod
    def step(
        self,
        params: PyTree,
        state: LearnerState,
        x: jax.Array,
        y: jax.Array,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[LearnerState, jax.Array, jax.Array, PyTree]:
        """One token: x [*batch, input_size], target y [*batch, output_size], flags [*batch] (a reset
        clears the cells' states and the traces before the token; mask False marks padding: states and
        traces pass through, the loss and gradient are zero). Returns (state, prediction [*batch, out],
        loss [*batch], grads like params)."""

    def _check_token(self, x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
        label = type(self).__name__
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.ndim < 1 or x.shape[-1] != self.model.input_size:
            raise ValueError(
                f"{label}.step: x has shape {x.shape}; expected [*batch, {self.model.input_size}] (one "
                f"token)."
            )
        if y.shape != (*x.shape[:-1], self.model.output_size):
            raise ValueError(
                f"{label}.step: y has shape {y.shape}; expected {(*x.shape[:-1], self.model.output_size)} "
                f"(the target of the token x of shape {x.shape})."
            )
        return x, y


# ==================================================================================================
# Trace-based learners: exact diagonal RTRL, SnAp-1, dense exact RTRL.
# ==================================================================================================
class LayerTracer(abc.ABC):
    """The sensitivity traces of one cell's state with respect to that cell's own parameters.

    All methods work on ONE example (no batch axes); the learner vmaps them. `contract(δ)` returns
    δ · ∂s_{t-1}/∂θ, the part of the gradient that flows into the parameters through the previous state,
    where δ is the gradient of the token's loss with respect to s_{t-1} (JAX's convention for complex
    states: the cotangent c with dL = Re Σ c·ds). `update` advances the traces by one token:
    ∂s_t/∂θ = ∂f/∂s · ∂s_{t-1}/∂θ + ∂f/∂θ (exactly or approximately).
    """

    @abc.abstractmethod
    def init(self, params: PyTree, state: PyTree, input_size: int) -> PyTree:
        """Zero traces for one example whose cell state looks like `state`."""

    @abc.abstractmethod
    def update(self, params: PyTree, traces: PyTree, state: PyTree, u: jax.Array) -> PyTree:
        """Traces after the token u, given the traces and the state before it."""

    @abc.abstractmethod
    def contract(self, params: PyTree, traces: PyTree, delta: PyTree) -> PyTree:
        """The gradient through the previous state, a pytree like `params`."""


@dataclasses.dataclass(frozen=True)
class TraceLearner(OnlineLearner):
    """Forward-mode online learning with one `LayerTracer` per cell.

    For each token: a reset zeroes states and traces; the token runs through the model; the gradient of
    its loss is taken with every cell's previous state held fixed (this gives the readout's exact
    gradient, each cell's immediate gradient and, between layers, the "spatial" gradient through the
    current token only) plus, per cell, `tracer.contract(traces, ∂loss/∂s_{t-1})`; then the traces are
    advanced. Subclasses choose the tracer of each cell (`tracer_for`).
    """

    def __post_init__(self) -> None:
        self.tracers  # noqa: B018 -- refuses an unsupported cell when the learner is built

    @abc.abstractmethod
    def tracer_for(self, index: int, cell: Cell) -> LayerTracer:
        """The tracer of `model.cells[index]`; raises a clear error for a cell it cannot handle."""

    @property
    def tracers(self) -> tuple[LayerTracer, ...]:
        return tuple(self.tracer_for(i, cell) for i, cell in enumerate(self.model.cells))

    def _input_widths(self) -> list[int]:
        widths, w = [], self.model.first_width
        for cell in self.model.cells:
            widths.append(w)
            w = cell.output_size
        return widths

    def init(self, params: PyTree, batch_shape: Sequence[int] = ()) -> LearnerState:
        batch_shape = tuple(batch_shape)
        dtype = jax.tree.leaves(params["layers"])[0].dtype
        states = self.model.initial_state(batch_shape, dtype)
        one = self.model.initial_state((), dtype)
        traces = []
        for tracer, p, s, w in zip(self.tracers, params["layers"], one, self._input_widths(), strict=True):
            t = tracer.init(p, s, w)
            traces.append(jax.tree.map(lambda a: jnp.broadcast_to(a, (*batch_shape, *a.shape)), t))
        return LearnerState(states, tuple(traces), jnp.zeros((), jnp.int32))

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
        n = math.prod(batch_shape)
        flat = lambda a: a.reshape(n, *a.shape[len(batch_shape) :])
        unflat = lambda a: a.reshape(*batch_shape, *a.shape[1:])
        args = jax.tree.map(flat, (state.states, state.traces, x, y, reset, mask))
        outs = jax.vmap(self._example, in_axes=(None, 0, 0, 0, 0, 0, 0))(params, *args)
        states, traces, pred, loss, grads = outs
        states, traces, pred, loss = jax.tree.map(unflat, (states, traces, pred, loss))
        grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
        return LearnerState(states, traces, state.position + 1), pred, loss, grads

    def _example(
        self,
        params: PyTree,
        states: tuple[Any, ...],
        traces: tuple[Any, ...],
        x: jax.Array,
        y: jax.Array,
        reset: jax.Array,
        mask: jax.Array,
    ) -> tuple[Any, ...]:
        model, tracers = self.model, self.tracers
        initial = jax.tree.map(lambda i, s: i.astype(s.dtype), model.initial_state(()), states)
        s_prev = jax.tree.map(lambda i, s: jnp.where(reset, i, s), initial, states)
        t_prev = jax.tree.map(lambda t: jnp.where(reset, jnp.zeros_like(t), t), traces)

        def token_loss(p: PyTree, s: tuple[Any, ...]) -> tuple[jax.Array, Any]:
            new, pred, inputs = model.token(p, s, x)
            loss = jnp.where(mask, self.loss_fn(pred, y), 0)
            return loss, (new, pred, inputs)

        (loss, (new, pred, inputs)), (grads, deltas) = jax.value_and_grad(
            token_loss, argnums=(0, 1), has_aux=True
        )(params, s_prev)
        layer_grads, new_traces = [], []
        for i, tracer in enumerate(tracers):
            p_i = params["layers"][i]
            through_state = tracer.contract(p_i, t_prev[i], deltas[i])
            layer_grads.append(jax.tree.map(jnp.add, grads["layers"][i], through_state))
            new_traces.append(tracer.update(p_i, t_prev[i], s_prev[i], lax.stop_gradient(inputs[i])))
        grads = {**grads, "layers": tuple(layer_grads)}
        keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(mask, u, v), a, b)
        return keep(new, states), keep(tuple(new_traces), traces), jnp.where(mask, pred, 0), loss, grads


# ==================================================================================================
# Running a learner over a finite sequence, and the BPTT reference.
# ==================================================================================================
def _time_major(a: jax.Array | None, nb: int) -> jax.Array | None:
    return None if a is None else jnp.moveaxis(a, nb, 0)


def accumulate(
    learner: OnlineLearner,
    params: PyTree,
    xs: jax.Array,
    ys: jax.Array,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[PyTree, jax.Array, jax.Array]:
    """Runs `learner` over sequences xs [*batch, T, in] with targets ys [*batch, T, out] and the params
    frozen, from a fresh learner state. Returns (the sum of the per-token gradients, losses [*batch, T],
    predictions [*batch, T, out]). For an exact algorithm the gradient equals `bptt_gradient`'s.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> from seqjax.online import DiagonalRTRL, OnlineModel
    >>> model = OnlineModel((cells.LRU(hidden_size=3, state_size=2),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> xs, ys = jnp.ones((4, 6, 2)), jnp.ones((4, 6, 1))
    >>> grads, losses, preds = accumulate(DiagonalRTRL(model), params, xs, ys)
    >>> losses.shape, grads["readout"]["w"].shape
    ((4, 6), (3, 1))
    """
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    batch_shape, nb = xs.shape[:-2], xs.ndim - 2
    t = xs.shape[-2]
    full = lambda f, default: jnp.broadcast_to(
        jnp.asarray(default if f is None else f, bool), (*batch_shape, t)
    )
    resets, mask = full(resets, False), full(mask, True)
    state0 = learner.init(params, batch_shape)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def body(carry: tuple[LearnerState, PyTree], tok: tuple[jax.Array, ...]) -> tuple[Any, Any]:
        st, total = carry
        x, y, r, m = tok
        st, pred, loss, grads = learner.step(params, st, x, y, r, m)
        return (st, jax.tree.map(jnp.add, total, grads)), (loss, pred)

    toks = tuple(_time_major(a, nb) for a in (xs, ys, resets, mask))
    (_, total), (losses, preds) = lax.scan(body, (state0, zeros), toks)
    return total, jnp.moveaxis(losses, 0, nb), jnp.moveaxis(preds, 0, nb)


def bptt_gradient(
    model: OnlineModel,
    params: PyTree,
    xs: jax.Array,
    ys: jax.Array,
    *,
    resets: jax.Array | None = None,
    mask: jax.Array | None = None,
    loss_fn: LossFn = squared_error,
) -> tuple[jax.Array, PyTree]:
    """(summed loss, its gradient) of the model over whole sequences by backpropagation through time,
    the reference every online algorithm is measured against.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> model = OnlineModel((cells.GRU(hidden_size=3),), input_size=2, output_size=1)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> loss, grads = bptt_gradient(model, params, jnp.ones((4, 6, 2)), jnp.ones((4, 6, 1)))
    >>> grads["layers"][0]["w_hh"].shape
    (3, 9)
    """

    def total(p: PyTree) -> jax.Array:
        preds = model.apply(p, xs, resets=resets, mask=mask)
        losses = loss_fn(preds, ys)
        if mask is not None:
            losses = jnp.where(jnp.broadcast_to(jnp.asarray(mask, bool), losses.shape), losses, 0)
        return jnp.sum(losses)

    return jax.value_and_grad(total)(params)
