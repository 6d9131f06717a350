"""The training loop: one function, in marked sections, driven by an ml_collections config.

    train(config, workdir)

- Resumes from the newest readable checkpoint in `workdir/checkpoints` (train state and the data
  position), so a killed run restarted with the same workdir continues the same trajectory.
- SIGTERM (preemption) saves a checkpoint at the current step and returns cleanly.
- A step whose loss or gradient is not finite stops the run with an error naming the step; nothing
  from that step is checkpointed.
- Metrics go to the console (process 0) with steps/s, tokens/s and ETA, and to `workdir/metrics.jsonl`.

Data comes from a random-access source (`source[i]` → example dict); batch `i` is examples
[i·B, (i+1)·B) and each process builds its own rows of it, so the iterator state is one integer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from seqjax import models
from seqjax.data.synthetic import SyntheticTask
from seqjax.train import mesh as mesh_lib
from seqjax.train.checkpoint import Checkpoints
from seqjax.train.optimizer import make_optimizer
from seqjax.train.state import TrainState, init_train_state, state_shardings
from seqjax.train.step import LOSSES, make_eval_step, make_train_step

__all__ = ["NonFiniteLossError", "build_source", "train"]

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/Inf; the run stops without checkpointing that state."""


def build_source(data: Mapping[str, Any], split: str) -> Any:
    """The random-access example source a data config names."""
    kind = data["kind"]
    if kind == "synthetic":
        seed = int(data.get("seed", 0)) + (0 if split == "train" else 1_000_003)
        return SyntheticTask(
            data["task"],
            length=int(data["length"]),
            num_symbols=int(data.get("num_symbols", 8)),
            vocab_size=int(data.get("vocab_size", 16)),
            num_queries=int(data.get("num_queries", 4)),
            seed=seed,
        )
    raise ValueError(f"config.data.kind: unknown {kind!r}; known: 'synthetic'.")


def _local_batch(source: Any, index: int, batch_size: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch `index`."""
    per_process = batch_size // jax.process_count()
    start = index * batch_size + jax.process_index() * per_process
    examples = [source[start + i] for i in range(per_process)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _global_batch(local: Mapping[str, np.ndarray], sharding_for: Callable[[int], NamedSharding]) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding_for(v.ndim), v) for k, v in local.items()}


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        def handler(signum: int, frame: Any) -> None:
            del signum, frame
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: no handler, no preemption saves
            self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains as `config` says; returns {"step", "state", "metrics"} of the last step."""
    # ----------------------------------------------------------------------------------------------
    # Setup: mesh, model, optimizer, data.
    # ----------------------------------------------------------------------------------------------
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes))
    rules = mesh_lib.rules_from_config(config.logical_rules, mesh)
    backbone = models.BackboneConfig.from_dict(config.model.to_dict())
    if config.task != "lm":
        raise ValueError(f"config.task: only 'lm' is wired into the loop so far, got {config.task!r}.")
    model = models.LanguageModel(backbone)
    batch_size = int(config.batch_size)
    if batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={batch_size} does not divide over {jax.process_count()} processes."
        )
    train_source = build_source(config.data, "train")
    eval_source = build_source(config.data, "eval")
    length = int(config.data.length)
    tx = make_optimizer(config.optimizer.to_dict(), models.param_groups(model))
    example = (jnp.zeros((batch_size, length), jnp.int32),)

    def sharding_for(ndim: int) -> NamedSharding:
        names = ("batch", "length", None)[:ndim]
        return NamedSharding(mesh, mesh_lib.spec_for(names, rules))

    # ----------------------------------------------------------------------------------------------
    # State: a fresh one, or the newest readable checkpoint placed onto this mesh.
    # ----------------------------------------------------------------------------------------------
    ckpt = Checkpoints(
        os.path.join(workdir, "checkpoints"),
        save_every=int(config.checkpoint.every),
        keep=int(config.checkpoint.keep),
        best_metric=config.checkpoint.get("best_metric"),
        best_mode=config.checkpoint.get("best_mode", "min"),
        async_save=bool(config.checkpoint.get("async_save", True)),
    )
    abstract, shardings = state_shardings(model, tx, example, mesh, rules)
    restored = ckpt.restore(abstract)
    if restored is None:
        state, _ = init_train_state(model, tx, example, mesh, rules, seed=int(config.seed))
        next_batch = 0
    else:
        state: TrainState = restored.state
        next_batch = int(restored.data_state["next_batch"])
        log.info("resumed from step %d (data position %d)", restored.step, next_batch)
    train_step = make_train_step(model, tx, LOSSES["lm"], shardings, sharding_for(2))
    eval_step = make_eval_step(model, LOSSES["lm"], shardings.params, sharding_for(2))
    config_json = json.loads(config.to_json_best_effort())

    # ----------------------------------------------------------------------------------------------
    # Loop.
    # ----------------------------------------------------------------------------------------------
    total = int(config.total_steps)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    is_chief = jax.process_index() == 0
    step = int(state.step)
    last: dict[str, Any] = {}
    t_start, step_start = time.perf_counter(), step

    def save(step: int, metrics: Mapping[str, float] | None = None) -> None:
        ckpt.save(step, state, data_state={"next_batch": next_batch}, config=config_json, metrics=metrics)

    def write(record: Mapping[str, Any]) -> None:
        if is_chief:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    with _Preemption() as preemption:
        while step < total:
            batch = _global_batch(_local_batch(train_source, next_batch, batch_size), sharding_for)
            state, metrics = train_step(state, batch)
            next_batch += 1
            if not bool(metrics["finite"]):
                ckpt.close()
                raise NonFiniteLossError(
                    f"step {step + 1}: loss {float(metrics['loss'])} / gradient norm "
                    f"{float(metrics['grad_norm'])} is not finite; the update was not applied and nothing "
                    f"was checkpointed. The last checkpoint is step {ckpt.latest_step()} in {workdir}."
                )
            step += 1
            last = {k: float(v) for k, v in metrics.items()}
            if step % int(config.log_every) == 0 or step == total:
                elapsed = time.perf_counter() - t_start
                rate = (step - step_start) / elapsed if elapsed > 0 else math.nan
                eta = (total - step) / rate if rate > 0 else math.nan
                record = {"step": step, "split": "train", **last, "steps_per_s": rate}
                record["tokens_per_s"] = rate * batch_size * length
                write(record)
                if is_chief:
                    print(
                        f"step {step}/{total} loss {last['loss']:.4f} acc {last['accuracy']:.3f} "
                        f"{rate:.2f} steps/s {record['tokens_per_s']:,.0f} tok/s ETA {eta:.0f} s",
                        flush=True,
                    )
            eval_metrics = None
            if int(config.eval_every) and (step % int(config.eval_every) == 0 or step == total):
                sums: dict[str, float] = {}
                for i in range(int(config.eval_batches)):
                    batch = _global_batch(_local_batch(eval_source, i, batch_size), sharding_for)
                    m, _ = eval_step(state.params, batch)
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                eval_metrics = {k: v / int(config.eval_batches) for k, v in sums.items()}
                write({"step": step, "split": "eval", **eval_metrics})
                if is_chief:
                    print(f"eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
            if preemption.requested:
                save(step, eval_metrics)
                ckpt.close()
                if is_chief:
                    print(f"SIGTERM: saved step {step}; exiting.", flush=True)
                return {"step": step, "state": state, "metrics": last, "preempted": True}
            if ckpt.should_save(step) or step == total:
                save(step, eval_metrics)
    ckpt.close()
    return {"step": step, "state": state, "metrics": last, "preempted": False}
