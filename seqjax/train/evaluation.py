"""Evaluation over a whole split: a jitted per-example step, then the task's metrics on the host.

The step returns small per-example arrays, replicated so every process can read them:
- lm: summed next-token NLL (nats), counted tokens and, of those, the ones whose argmax is the target
  ("correct") per example;
- classification: logits [B, num_classes];
- forecast: forecasts [B, horizon, V] (targets come from the batch on the host); a forecaster with a
  forecast at every position (segment recurrence) is scored at each window's last step, its origin.
Padded rows of the last batch (`valid` = False) are dropped before the metrics, so nothing is counted
twice and nothing is dropped (`seqjax.data.pipeline.eval_batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.data import metrics as metrics_lib
from seqjax.train.step import Batch, forward, token_losses

__all__ = ["collect_split", "evaluate_split", "make_eval_fn", "split_metrics"]


def _per_example(task: str, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    if task == "lm":
        nll, weights, correct = token_losses(outputs, batch)
        return {
            "nll": (nll * weights).sum(-1),
            "tokens": weights.sum(-1),
            "correct": (correct * weights).sum(-1),
        }
    if task == "classification":
        return {"logits": outputs.astype(jnp.float32)}
    if task == "forecast":
        if outputs.ndim == batch["targets"].ndim + 1:  # per position: the forecast after the look-back
            outputs = outputs[:, -1]
        return {"forecast": outputs.astype(jnp.float32)}
    raise ValueError(f"evaluation: unknown task {task!r}; known: lm, classification, forecast.")


def make_eval_fn(
    model: nn.Module, task: str, params_shardings: Any, batch_shardings: Any
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """`fn(params, batch) -> per-example outputs`, deterministic, replicated on every device."""
    mesh = jax.tree.leaves(params_shardings)[0].mesh

    def fn(params: Any, batch: Batch) -> dict[str, jax.Array]:
        outputs = forward(model, params, batch, deterministic=True, rng=None)
        return _per_example(task, outputs, batch)

    return jax.jit(
        fn, in_shardings=(params_shardings, batch_shardings), out_shardings=NamedSharding(mesh, P())
    )


def collect_split(
    eval_fn: Callable[[Any, Batch], dict[str, jax.Array]],
    params: Any,
    batches: Iterable[Mapping[str, Any]],
    task: str,
    to_device: Callable[[Mapping[str, np.ndarray]], Batch],
    *,
    row_processes: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Runs `eval_fn` over `batches` (from `eval_batches`) and returns its per-example outputs over the
    whole split, in the split's order, padded rows dropped: "nll", "tokens" and "correct" (lm), "logits"
    and "label" (classification), "forecast" and "targets" (forecast).

    `row_processes`: the processes whose host rows, in this order, make up each global batch (one per
    block of rows: `seqjax.train.mesh.DataLayout.processes`, where processes that split the time axis
    load the same rows); None: every process, in order."""
    collected: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        host = {k: v for k, v in batch.items() if k != "valid"}
        out = {k: np.asarray(v) for k, v in eval_fn(params, to_device(host)).items()}
        valid = _global_rows(batch["valid"], row_processes).astype(bool)
        if task == "classification":
            out["label"] = _global_rows(batch["label"], row_processes)
        if task == "forecast":
            out["targets"] = _global_rows(batch["targets"], row_processes)
        for k, v in out.items():
            collected.setdefault(k, []).append(v[valid])
    if not collected:
        raise ValueError("evaluate_split: the split is empty; nothing to evaluate.")
    return {k: np.concatenate(v) for k, v in collected.items()}


def split_metrics(
    data: Mapping[str, np.ndarray], task: str, *, bytes_per_token: float = 1.0
) -> dict[str, float]:
    """The task's metrics from `collect_split`'s per-example outputs (lm: with "correct", also the
    "accuracy" of the argmax over the counted tokens)."""
    if task == "lm":
        tokens = float(data["tokens"].sum())
        metrics = metrics_lib.lm_metrics(float(data["nll"].sum()), tokens, tokens * bytes_per_token)
        if "correct" in data:
            metrics["accuracy"] = float(data["correct"].sum()) / max(tokens, 1.0)
        return metrics
    if task == "classification":
        return metrics_lib.classification_metrics(data["label"], data["logits"])
    return metrics_lib.forecast_metrics(data["forecast"], data["targets"])


def evaluate_split(
    eval_fn: Callable[[Any, Batch], dict[str, jax.Array]],
    params: Any,
    batches: Iterable[Mapping[str, Any]],
    task: str,
    to_device: Callable[[Mapping[str, np.ndarray]], Batch],
    *,
    bytes_per_token: float = 1.0,
    row_processes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Runs `eval_fn` over `batches` (from `eval_batches`) and returns the task's metrics
    (`row_processes`: as `collect_split`'s)."""
    data = collect_split(eval_fn, params, batches, task, to_device, row_processes=row_processes)
    return split_metrics(data, task, bytes_per_token=bytes_per_token)


def _global_rows(local: np.ndarray, processes: Sequence[int] | None = None) -> np.ndarray:
    """The global batch's rows of a host array, in order: every process's rows (process-major), or
    those of `processes`, in that order (one per block of rows)."""
    if jax.process_count() == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(local)))
    if processes is not None:
        gathered = gathered[np.asarray(processes)]
    return gathered.reshape(-1, *np.shape(local)[1:])
