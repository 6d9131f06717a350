"""The jitted train and eval steps, and the per-task losses.

A batch is a dict of arrays, batch-major:
- "inputs": token ids [B, L] (LM, DNA) or features [B, L, V] (forecasting);
- "mask" (optional) [B, L] bool, False = padding; "resets" (optional) [B, L] bool, packed segments;
- LM: "targets" [B, L] int (the next token of each position), optional "weights" [B, L] float;
- classification: "label" [B] int;
- forecasting: "targets" [B, horizon, V] float.

A step whose loss or gradient is not finite applies no update (parameters, optimizer state and step
are returned unchanged) and reports `finite = False`; the loop stops on it and names the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.train.state import TrainState, dropout_key

__all__ = ["LOSSES", "Batch", "make_eval_step", "make_train_step"]

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[jax.Array, Batch], tuple[jax.Array, Metrics]]


def lm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Mean next-token cross-entropy over weighted (default: unpadded) positions, in nats per token."""
    targets = batch["targets"]
    weights = batch.get("weights")
    if weights is None:
        weights = batch["mask"] if "mask" in batch else jnp.ones(targets.shape, bool)
    weights = weights.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return loss, {"accuracy": (correct * weights).sum() / total, "tokens": weights.sum()}


def classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
    accuracy = (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean()
    return loss, {"accuracy": accuracy}


def forecast_loss(forecast: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    error = forecast.astype(jnp.float32) - batch["targets"].astype(jnp.float32)
    mse = jnp.mean(error**2)
    return mse, {"mse": mse, "mae": jnp.mean(jnp.abs(error))}


LOSSES: dict[str, LossFn] = {"lm": lm_loss, "classification": classification_loss, "forecast": forecast_loss}


def _forward(
    model: nn.Module, params: Any, batch: Batch, *, deterministic: bool, rng: jax.Array | None
) -> Any:
    kwargs = {k: batch[k] for k in ("mask", "resets") if k in batch}
    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs, **kwargs)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    state_shardings: TrainState,
    batch_sharding: Any,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; the old state is donated."""

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        def loss_of(params: Any) -> tuple[jax.Array, Metrics]:
            outputs = _forward(model, params, batch, deterministic=False, rng=dropout_key(state))
            return loss_fn(outputs, batch)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        updated = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}

    replicated = NamedSharding(jax.tree.leaves(state_shardings)[0].mesh, P())
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def make_eval_step(
    model: nn.Module,
    loss_fn: LossFn,
    params_shardings: Any,
    batch_sharding: Any,
) -> Callable[[Any, Batch], tuple[Metrics, jax.Array]]:
    """`eval_step(params, batch) -> (metrics, outputs)`: deterministic forward, loss and raw outputs."""

    def eval_step(params: Any, batch: Batch) -> tuple[Metrics, jax.Array]:
        outputs = _forward(model, params, batch, deterministic=True, rng=None)
        loss, metrics = loss_fn(outputs, batch)
        return {**metrics, "loss": loss}, outputs

    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding))
