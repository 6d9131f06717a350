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

__all__ = ["LOSSES", "Batch", "forward", "make_eval_step", "make_train_step", "token_losses"]

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


def forecast_loss(forecast: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    error = forecast.astype(jnp.float32) - batch["targets"].astype(jnp.float32)
    mse = jnp.mean(error**2)
    return mse, {"mse": mse, "mae": jnp.mean(jnp.abs(error))}


LOSSES: dict[str, LossFn] = {"lm": lm_loss, "classification": classification_loss, "forecast": forecast_loss}


def forward(
    model: nn.Module, params: Any, batch: Batch, *, deterministic: bool, rng: jax.Array | None
) -> Any:
    """The model's outputs for a batch (logits or forecasts), passing its mask and resets."""
    kwargs = {k: batch[k] for k in ("mask", "resets") if k in batch}
    rngs = None if rng is None else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs, **kwargs)


#: Batch keys laid out [B, L, ...] along the sequence, which truncated BPTT cuts into chunks.
_PER_TOKEN_KEYS = ("inputs", "targets", "weights", "mask", "resets")


def truncated_bptt_grads(
    model: nn.Module, params: Any, batch: Batch, chunk: int, rng: jax.Array | None
) -> tuple[Any, Metrics]:
    """Gradients of the LM loss by truncated BPTT over chunks of `chunk` tokens.

    The forward pass carries every cell's state across chunks, so the loss equals the full-sequence
    loss; the backward pass stops at each chunk boundary (`stop_gradient` on the carried state), so
    activation memory is one chunk's, whatever the sequence length. Gradients are summed over chunks
    (one optimizer update per batch); with `chunk` = the full length this is ordinary BPTT.
    """
    length = batch["inputs"].shape[1]
    if length % chunk:
        raise ValueError(
            f"truncated BPTT: tbptt_length={chunk} must divide the sequence length {length}; "
            f"pick a divisor of {length}."
        )
    count = length // chunk
    batch_size = batch["inputs"].shape[0]
    per_token = {k: v for k, v in batch.items() if k in _PER_TOKEN_KEYS}
    chunks = jax.tree.map(
        lambda x: jnp.moveaxis(x.reshape(x.shape[0], count, chunk, *x.shape[2:]), 1, 0), per_token
    )
    cache = model.initial_cache((batch_size,))
    rngs = None if rng is None else jax.random.split(rng, count)

    def body(carry: Any, xs: Any) -> Any:
        cache, grads, sums = carry
        piece, key = xs
        cache = jax.lax.stop_gradient(cache)

        def loss_of(p: Any) -> Any:
            kwargs = {k: piece[k] for k in ("mask", "resets") if k in piece}
            logits, new_cache = model.apply(
                {"params": p},
                piece["inputs"],
                cache,
                method="forward",
                deterministic=rng is None,
                rngs=None if key is None else {"dropout": key},
                **kwargs,
            )
            nll, weight, correct = token_losses(logits, piece)
            nll, correct = (nll * weight).sum(), (correct * weight).sum()
            weight = weight.sum()
            return nll, (new_cache, weight, correct)

        (nll, (cache, weight, correct)), g = jax.value_and_grad(loss_of, has_aux=True)(params)
        grads = jax.tree.map(jnp.add, grads, g)
        return (cache, grads, sums + jnp.stack([nll, weight, correct])), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (_, grads, sums), _ = jax.lax.scan(body, (cache, zeros, jnp.zeros(3)), (chunks, rngs))
    total = jnp.maximum(sums[1], 1.0)
    grads = jax.tree.map(lambda g: g / total, grads)
    loss = sums[0] / total
    return grads, {"loss": loss, "accuracy": sums[2] / total, "tokens": sums[1]}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    state_shardings: TrainState,
    batch_sharding: Any,
    *,
    tbptt_length: int | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; the old state is donated.

    `tbptt_length` (LM only) trains by truncated BPTT over chunks of that many tokens
    (`truncated_bptt_grads`).
    """
    if tbptt_length is not None and loss_fn is not lm_loss:
        raise ValueError("tbptt_length: truncated BPTT is implemented for the LM task only.")

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        def loss_of(params: Any) -> tuple[jax.Array, Metrics]:
            outputs = forward(model, params, batch, deterministic=False, rng=dropout_key(state))
            return loss_fn(outputs, batch)

        if tbptt_length is None:
            (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        else:
            grads, metrics = truncated_bptt_grads(
                model, state.params, batch, int(tbptt_length), dropout_key(state)
            )
            loss = metrics.pop("loss")
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
        outputs = forward(model, params, batch, deterministic=True, rng=None)
        loss, metrics = loss_fn(outputs, batch)
        return {**metrics, "loss": loss}, outputs

    return jax.jit(eval_step, in_shardings=(params_shardings, batch_sharding))
