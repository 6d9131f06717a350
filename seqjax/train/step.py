"""The jitted train step and the per-task losses (evaluation: `seqjax.train.evaluation`).

A batch is a dict of arrays, batch-major:
- "inputs": token ids [B, L] (LM, DNA) or features [B, L, V] (forecasting);
- "mask" (optional) [B, L] bool, False = padding; "resets" (optional) [B, L] bool, packed segments;
- LM: "targets" [B, L] int (the next token of each position), optional "weights" [B, L] float;
- classification: "label" [B] int;
- forecasting: "targets" [B, horizon, V] float; a series stream (segment recurrence): "targets"
  [B, L, horizon, V], the next `horizon` steps of each position, and "weights" [B, L] (which count).

A step whose loss or gradient is not finite, or whose updated parameters are not finite or exceed
`max_param_abs` in absolute value, applies no update (parameters, optimizer state and step are returned
unchanged) and reports `finite = False` (and `param_max_abs`, the largest |parameter| the update would
have produced); the loop stops on it and names the step. With `tbptt_updates="chunk"` the guard is per
chunk: a failing chunk applies no update, the others do.

Segment recurrence (`make_train_step(segment_recurrence=True)`, LM or forecast): the state is a
`CarriedTrainState`, whose `carry` (every layer's state after the previous batch) the step runs the model
from; it returns the state after this batch as the new `carry`. The gradient stops at the batch boundary
(`stop_gradient` on the carry), so a step's memory is that of one batch whatever the stream's length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.models.tasks import Forecaster, LanguageModel
from seqjax.train.state import CarriedTrainState, TrainState, dropout_key

__all__ = [
    "LOSSES",
    "TBPTT_UPDATES",
    "Batch",
    "forecast_sums",
    "forward",
    "forward_from",
    "make_train_step",
    "tbptt_problem",
    "token_losses",
    "truncated_bptt_chunk_updates",
    "truncated_bptt_grads",
]

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[jax.Array, Batch], tuple[jax.Array, Metrics]]


def token_losses(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-position (NLL in nats, weight, correct), float32 [B, L]. The weight is `weights`, else `mask`,
    else 1: the one rule for which tokens count, shared by training, truncated BPTT and eval."""
    targets = batch["targets"]
    weights = batch.get("weights")
    if weights is None:
        weights = batch["mask"] if "mask" in batch else jnp.ones(targets.shape, bool)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return nll, weights.astype(jnp.float32), correct


def lm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Mean next-token cross-entropy over weighted (default: unpadded) positions, in nats per token."""
    nll, weights, correct = token_losses(logits, batch)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    return loss, {"accuracy": (correct * weights).sum() / total, "tokens": weights.sum()}


def classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    accuracy = (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()
    return loss, {"accuracy": accuracy}


def forecast_sums(forecast: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(squared error, absolute error) summed over the variables, [*forecasts, horizon] float32, and the
    weight of each forecast [*forecasts]: `weights`, else 1. A forecast is [horizon, V] at the end of
    each window ([B, horizon, V]) or at every position of a stream ([B, L, horizon, V])."""
    error = forecast.astype(jnp.float32) - batch["targets"].astype(jnp.float32)
    weights = batch.get("weights")
    if weights is None:
        weights = jnp.ones(error.shape[:-2], jnp.float32)
    return (error**2).sum(-1), jnp.abs(error).sum(-1), weights.astype(jnp.float32)


def forecast_loss(forecast: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """MSE over the weighted forecasts' values (every value of every window's forecast by default)."""
    squared, absolute, weights = forecast_sums(forecast, batch)
    values = jnp.maximum(weights.sum(), 1.0) * squared.shape[-1] * forecast.shape[-1]
    mse = (squared.sum(-1) * weights).sum() / values
    return mse, {"mse": mse, "mae": (absolute.sum(-1) * weights).sum() / values, "forecasts": weights.sum()}


LOSSES: dict[str, LossFn] = {"lm": lm_loss, "classification": classification_loss, "forecast": forecast_loss}


def forward(
    model: nn.Module, params: Any, batch: Batch, *, deterministic: bool, rng: jax.Array | None
) -> Any:
    """The model's outputs for a batch (logits or forecasts), passing its mask and resets."""
    kwargs = {k: batch[k] for k in ("mask", "resets") if k in batch}
    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs, **kwargs)


def forward_from(
    model: nn.Module, params: Any, batch: Batch, cache: Any, *, deterministic: bool, rng: jax.Array | None
) -> tuple[jax.Array, Any]:
    """A model's (outputs, every layer's state after the batch), run from every layer's state `cache`
    (None: initial): an LM's logits, or a per-position forecaster's forecasts (its cache also holds
    RevIN's statistics, which a carried stream does not use: only the layer states are returned)."""
    kwargs = {k: batch[k] for k in ("mask", "resets") if k in batch}
    rngs = None if rng is None else {"dropout": rng}
    outputs, cache = model.apply(
        {"params": params},
        batch["inputs"],
        cache,
        method="forward",
        deterministic=deterministic,
        rngs=rngs,
        **kwargs,
    )
    if isinstance(model, Forecaster):
        cache, _ = cache  # (layer states, RevIN statistics)
    return outputs, cache


def _carry_in(state: TrainState) -> Any:
    """The carried state the batch starts from (None: each row from the initial state). No gradient
    crosses the batch boundary."""
    return jax.lax.stop_gradient(state.carry) if isinstance(state, CarriedTrainState) else None


def _carry_out(cache: Any, previous: Any) -> Any:
    """The state after the batch, as the next batch's carry: no gradient, the carry's own dtypes (a
    bfloat16 model may return lower-precision states; the checkpointed carry keeps one layout)."""
    return jax.tree.map(lambda new, old: jax.lax.stop_gradient(new).astype(old.dtype), cache, previous)


#: Batch keys laid out [B, L, ...] along the sequence, which truncated BPTT cuts into chunks.
_PER_TOKEN_KEYS = ("inputs", "targets", "weights", "mask", "resets")
#: `tbptt_updates`: one optimizer update per batch (gradients summed over chunks) or one per chunk.
TBPTT_UPDATES = ("batch", "chunk")


def _split_chunks(batch: Batch, chunk: int) -> tuple[int, dict[str, jax.Array]]:
    """(number of chunks, the per-token keys laid out [count, B, chunk, ...])."""
    length = batch["inputs"].shape[1]
    if length % chunk:
        raise ValueError(
            f"truncated BPTT: tbptt_length={chunk} must divide the sequence length {length}; "
            f"pick a divisor of {length}."
        )
    count = length // chunk
    per_token = {k: v for k, v in batch.items() if k in _PER_TOKEN_KEYS}
    chunks = jax.tree.map(
        lambda x: jnp.moveaxis(x.reshape(x.shape[0], count, chunk, *x.shape[2:]), 1, 0), per_token
    )
    return count, chunks


class _ChunkScore(NamedTuple):
    """How truncated BPTT scores one chunk of a task whose loss sits at every position.

    `sums(outputs, piece)` is float32 [2 + len(metrics)]: the chunk's weighted loss sum, its weight sum
    (the loss's denominator), then one weighted sum per name of `metrics`. Summed over the chunks and
    divided by the total weight, they are the unchunked loss and metrics of `LOSSES[task]`; `count`
    names the weight sum in the metrics.
    """

    sums: Callable[[jax.Array, Batch], jax.Array]
    count: str
    metrics: tuple[str, ...]


def _lm_chunk_sums(logits: jax.Array, piece: Batch) -> jax.Array:
    """[weighted NLL sum, weight sum, weighted correct sum]: `lm_loss`'s numerators and denominator."""
    nll, weight, correct = token_losses(logits, piece)
    return jnp.stack([(nll * weight).sum(), weight.sum(), (correct * weight).sum()])


def _forecast_chunk_sums(forecast: jax.Array, piece: Batch) -> jax.Array:
    """[weighted squared-error sum, weight sum, the same squared sum (mse), weighted absolute sum (mae)],
    the error sums divided by the values per forecast (horizon x variables), so that over the chunks
    sum / total weight is `forecast_loss`'s mean over the counted forecasts' values. A position whose
    horizon leaves the data or is unobserved has weight 0 and counts in no chunk."""
    squared, absolute, weights = forecast_sums(forecast, piece)
    values = squared.shape[-1] * forecast.shape[-1]
    se = (squared.sum(-1) * weights).sum() / values
    return jnp.stack([se, weights.sum(), se, (absolute.sum(-1) * weights).sum() / values])


_LM_CHUNKS = _ChunkScore(_lm_chunk_sums, "tokens", ("accuracy",))
_FORECAST_CHUNKS = _ChunkScore(_forecast_chunk_sums, "forecasts", ("mse", "mae"))


def tbptt_problem(model: nn.Module) -> str | None:
    """Why truncated BPTT cannot train `model`, or None when it can: a language model (a loss at every
    token) or a per-position forecaster (`Forecaster(per_position=True)`, the stream form: a loss at
    every position). A model whose loss sits at the sequence's end (a classifier, a windowed
    forecaster) has no loss in any chunk but the last, and its gradient to the earlier chunks is
    exactly what truncation removes."""
    if isinstance(model, Forecaster):
        if model.per_position:
            return None
        return (
            "the windowed forecaster's loss is one forecast at the window's end, so every chunk but the "
            "last has no loss and the gradient to the earlier chunks is exactly what truncation cuts; "
            "train the stream forecaster (segment_recurrence=True, per_position forecasts) or drop "
            "tbptt_length"
        )
    if isinstance(model, LanguageModel):
        return None
    return (
        f"{type(model).__name__}'s loss sits at the sequence's end (one output per sequence), so every "
        f"chunk but the last has no loss and the gradient to the earlier chunks is exactly what "
        f"truncation cuts; drop tbptt_length (truncated BPTT needs a loss at every position: the LM or "
        f"the stream forecaster)"
    )


def _chunk_score(model: nn.Module) -> _ChunkScore:
    """The chunk scoring of `model`'s task; a ValueError saying why for a model truncated BPTT cannot
    train (`tbptt_problem`)."""
    problem = tbptt_problem(model)
    if problem is not None:
        raise ValueError(f"tbptt_length: {problem}.")
    return _FORECAST_CHUNKS if isinstance(model, Forecaster) else _LM_CHUNKS


def _chunk_metrics(score: _ChunkScore, sums: jax.Array, total: jax.Array) -> Metrics:
    """The batch's metrics from the chunks' summed `sums` (`_ChunkScore`): loss, the task's metrics and
    the weight sum under its name."""
    metrics = {"loss": sums[0] / total}
    metrics |= {name: sums[2 + i] / total for i, name in enumerate(score.metrics)}
    return {**metrics, score.count: sums[1]}


def _chunk_sums(
    model: nn.Module, params: Any, piece: Batch, cache: Any, key: jax.Array | None, score: _ChunkScore
) -> tuple[jax.Array, tuple[Any, jax.Array]]:
    """One chunk from `cache`: (weighted loss sum, (cache after it, every sum of `score.sums`))."""
    outputs, new_cache = forward_from(model, params, piece, cache, deterministic=key is None, rng=key)
    sums = score.sums(outputs, piece)
    return sums[0], (new_cache, sums)


def truncated_bptt_grads(
    model: nn.Module,
    params: Any,
    batch: Batch,
    chunk: int,
    rng: jax.Array | None,
    cache: Any = None,
) -> tuple[Any, Metrics]:
    """Gradients of the task's loss by truncated BPTT over chunks of `chunk` positions.

    The task follows the model (`tbptt_problem`): a language model's token NLL (`lm_loss`), or a
    per-position (stream) forecaster's forecast MSE (`forecast_loss`); each chunk contributes its
    weighted loss sum, and the total is divided by the batch's total weight, so positions that do not
    count (padding; a forecast whose horizon leaves the data or is unobserved) count in no chunk.

    The forward pass carries every cell's state across chunks, so the loss equals the full-sequence
    loss; the backward pass stops at each chunk boundary (`stop_gradient` on the carried state), so
    activation memory is one chunk's, whatever the sequence length. Gradients are summed over chunks
    (one optimizer update per batch); with `chunk` = the full length this is ordinary BPTT. The first
    chunk starts from `cache` (every layer's state; None: the initial states).

    Metrics: "loss" and the task's own (LM: "accuracy", "tokens"; forecast: "mse", "mae",
    "forecasts"), as the unchunked loss function reports them.
    """
    grads, metrics, _ = _truncated_bptt(model, params, batch, chunk, rng, cache)
    return grads, metrics


def _truncated_bptt(
    model: nn.Module, params: Any, batch: Batch, chunk: int, rng: jax.Array | None, cache: Any
) -> tuple[Any, Metrics, Any]:
    """`truncated_bptt_grads`, also returning every layer's state after the last chunk."""
    score = _chunk_score(model)
    count, chunks = _split_chunks(batch, chunk)
    if cache is None:
        cache = model.initial_cache((batch["inputs"].shape[0],))
    rngs = None if rng is None else jax.random.split(rng, count)

    def body(carry: Any, xs: Any) -> Any:
        cache, grads, sums = carry
        piece, key = xs
        cache = jax.lax.stop_gradient(cache)
        grad_fn = jax.value_and_grad(lambda p: _chunk_sums(model, p, piece, cache, key, score), has_aux=True)
        (_, (cache, chunk_sums)), g = grad_fn(params)
        grads = jax.tree.map(jnp.add, grads, g)
        return (cache, grads, sums + chunk_sums), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    width = 2 + len(score.metrics)
    (cache, grads, sums), _ = jax.lax.scan(body, (cache, zeros, jnp.zeros(width)), (chunks, rngs))
    total = jnp.maximum(sums[1], 1.0)
    grads = jax.tree.map(lambda g: g / total, grads)
    return grads, _chunk_metrics(score, sums, total), cache


def _param_max_abs(params: Any) -> jax.Array:
    """The largest |value| over every parameter (NaN if any is NaN): one reduction, no host sync."""
    leaves = [jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(params) if x.size]
    return jnp.max(jnp.stack(leaves)) if leaves else jnp.zeros((), jnp.float32)


def _params_ok(largest: jax.Array, max_param_abs: float | None) -> jax.Array:
    bound = jnp.inf if max_param_abs is None else max_param_abs
    return jnp.isfinite(largest) & (largest <= bound)


def truncated_bptt_chunk_updates(
    model: nn.Module,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Batch,
    chunk: int,
    max_param_abs: float | None = None,
) -> tuple[TrainState, Metrics]:
    """One batch of truncated BPTT with an optimizer update after every chunk (`tbptt_updates="chunk"`).

    A `lax.scan` over the chunks carries (params, optimizer state, every cell's state): chunk k runs
    from chunk k-1's final state (gradients stopped there) with the parameters chunk k-1's update
    produced, and its gradient is that of its own loss: the task's (`tbptt_problem`) mean over its own
    weighted positions, the mean NLL over its weighted tokens (`token_losses`) for the LM, the MSE over
    its counted forecasts' values (`forecast_sums`) for the per-position forecaster. A chunk with no
    weighted position has loss 0 and a zero gradient (the optimizer still steps, as for any zero
    gradient). A chunk whose loss or gradient is not finite applies no update (the carried state still
    moves on). `state.step` advances by one per batch (unless no chunk updated); the optimizer's own
    count, and with it any LR schedule, advances once per applied chunk.

    Metrics: the loss and the task's metrics over the whole batch (LM: accuracy, tokens; forecast: mse,
    mae, forecasts; weighted by position, each chunk scored with the parameters it was trained from);
    `grad_norm` is the mean over chunks of each chunk's gradient norm; `finite` is False if any chunk
    was not finite.

    A `CarriedTrainState` (segment recurrence) starts the first chunk from its `carry` and returns the
    state after the last chunk as the new `carry`.
    """
    score = _chunk_score(model)
    count, chunks = _split_chunks(batch, chunk)
    carried = _carry_in(state)
    cache = model.initial_cache((batch["inputs"].shape[0],)) if carried is None else carried
    keys = jax.random.split(dropout_key(state), count)

    def body(carry: Any, xs: Any) -> Any:
        params, opt_state, cache = carry
        piece, key = xs
        cache = jax.lax.stop_gradient(cache)

        def loss_of(p: Any) -> Any:
            total, (new_cache, sums) = _chunk_sums(model, p, piece, cache, key, score)
            return total / jnp.maximum(sums[1], 1.0), (new_cache, sums)

        (loss, (cache, sums)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        largest = _param_max_abs(new_params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _params_ok(largest, max_param_abs)
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), (new_params, new_opt_state), (params, opt_state)
        )
        return (params, opt_state, cache), (sums, grad_norm, finite, largest)

    (params, opt_state, cache), (sums, grad_norms, finite, largest) = jax.lax.scan(
        body, (state.params, state.opt_state, cache), (chunks, keys)
    )
    sums = sums.sum(0)
    total = jnp.maximum(sums[1], 1.0)
    # `replace` keeps the state's class: a CarriedTrainState stays one.
    new_state = state.replace(
        step=state.step + jnp.any(finite).astype(state.step.dtype), params=params, opt_state=opt_state
    )
    if carried is not None:
        new_state = new_state.replace(carry=_carry_out(cache, state.carry))
    metrics = {
        **_chunk_metrics(score, sums, total),
        "grad_norm": grad_norms.mean(),
        "finite": jnp.all(finite),
        "param_max_abs": jnp.max(largest),
    }
    return new_state, metrics


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    state_shardings: TrainState,
    batch_sharding: Any,
    *,
    tbptt_length: int | None = None,
    tbptt_updates: str = "batch",
    max_param_abs: float | None = None,
    segment_recurrence: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; the old state is donated.

    `tbptt_length` trains by truncated BPTT over chunks of that many positions: for the LM (`lm_loss`)
    and for the per-position (stream) forecaster (`forecast_loss` with `Forecaster(per_position=True)`),
    whose losses sit at every position; a classifier or a windowed forecaster (one loss at the
    sequence's end) is refused (`tbptt_problem`). `tbptt_updates`:
    "batch" sums the chunks' gradients into one update per batch (`truncated_bptt_grads`); "chunk"
    applies an optimizer update after every chunk (`truncated_bptt_chunk_updates`). An update that would
    leave a parameter non-finite or above `max_param_abs` in absolute value is not applied (`finite`
    is False).

    `segment_recurrence` (LM or forecast; `state_shardings` a `CarriedTrainState`): the batch runs from the
    state's `carry` (truncated BPTT's first chunk too), and the state after the batch, gradient stopped,
    is the new `carry`.
    """
    if tbptt_updates not in TBPTT_UPDATES:
        raise ValueError(f"tbptt_updates must be one of {list(TBPTT_UPDATES)}, got {tbptt_updates!r}.")
    if tbptt_updates == "chunk" and tbptt_length is None:
        raise ValueError(
            'tbptt_updates="chunk" updates the parameters after every truncated-BPTT chunk and needs '
            "tbptt_length (the chunk length in tokens); set it, or use tbptt_updates='batch'."
        )
    if tbptt_length is not None:
        if loss_fn not in (lm_loss, forecast_loss):
            raise ValueError(
                "tbptt_length: truncated BPTT needs a loss at every position (the LM task, or the forecast "
                "task with per-position stream forecasts); this task's loss sits at the sequence's end, so "
                "every chunk but the last would have no loss and the gradient to the earlier chunks is "
                "exactly what truncation cuts. Drop tbptt_length."
            )
        _chunk_score(model)  # the model matches the loss: a windowed forecaster is refused, saying why
    if segment_recurrence and loss_fn not in (lm_loss, forecast_loss):
        raise ValueError(
            "segment_recurrence: a state carried across batches is implemented for the LM and forecast "
            "tasks only."
        )
    if segment_recurrence != isinstance(state_shardings, CarriedTrainState):
        raise ValueError(
            f"segment_recurrence={segment_recurrence} needs the state to be a "
            f"{'CarriedTrainState' if segment_recurrence else 'TrainState without a carry'}, got "
            f"{type(state_shardings).__name__} shardings."
        )

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        if tbptt_updates == "chunk":
            return truncated_bptt_chunk_updates(model, tx, state, batch, int(tbptt_length), max_param_abs)
        carried = _carry_in(state)

        def loss_of(params: Any) -> tuple[jax.Array, tuple[Metrics, Any]]:
            """(loss, (metrics, every layer's state after the batch: None without a carry))."""
            key = dropout_key(state)
            if carried is None:
                outputs, cache = forward(model, params, batch, deterministic=False, rng=key), None
            else:
                outputs, cache = forward_from(model, params, batch, carried, deterministic=False, rng=key)
            loss, metrics = loss_fn(outputs, batch)
            return loss, (metrics, cache)

        if tbptt_length is None:
            (loss, (metrics, cache)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        else:
            grads, metrics, cache = _truncated_bptt(
                model, state.params, batch, int(tbptt_length), dropout_key(state), carried
            )
            loss = metrics.pop("loss")
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        largest = _param_max_abs(params)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _params_ok(largest, max_param_abs)
        updated = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if carried is not None:
            updated = updated.replace(carry=_carry_out(cache, state.carry))
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}
        return new_state, {**metrics, "param_max_abs": largest}

    replicated = NamedSharding(jax.tree.leaves(state_shardings)[0].mesh, P())
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
