"""Evaluation over a whole split: a jitted per-example step, then the task's metrics on the host.

The step returns small per-example arrays, replicated so every process can read them:
- lm: summed next-token NLL (nats), counted tokens and, of those, the ones whose argmax is the target
  ("correct") per example; with the split's per-token byte lengths, also the bytes the counted targets
  stand for ("bytes", summed on the host from the batch), which bits per byte divides by;
- classification: logits [B, num_classes];
- forecast: forecasts [B, horizon, V] (targets come from the batch on the host); a forecaster with a
  forecast at every position (segment recurrence) is scored at each window's last step, its origin.
Padded rows of the last batch (`valid` = False) are dropped before the metrics, so nothing is counted
twice and nothing is dropped (`seqjax.data.pipeline.eval_batches`).

A whole split can take as long to evaluate as the run took to train (a 16 kb window is ~12x a 4 kb one
under attention), so an evaluation can keep its progress (`SplitProgress`): the per-example outputs so
far, written atomically every `save_every_seconds` and when a stop is requested, and read back by the
next evaluation of the same step, split and examples, which then starts at the first batch not done.
A stop request (`collect_split(stop=...)`, e.g. SIGTERM) saves and raises `EvaluationStopped`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.data import metrics as metrics_lib
from seqjax.train.step import Batch, forward, token_losses

__all__ = [
    "EvaluationStopped",
    "SplitProgress",
    "collect_split",
    "evaluate_split",
    "make_eval_fn",
    "progress_key",
    "split_metrics",
]

log = logging.getLogger(__name__)


class EvaluationStopped(RuntimeError):
    """A stop request (SIGTERM/SIGINT) arrived during `collect_split`; its progress, if kept, is saved.
    `signal`: the signal number; `done` and `total` (None: unknown): batches evaluated and in all."""

    def __init__(self, signal: int, done: int, total: int | None, where: str) -> None:
        self.signal, self.done, self.total = signal, done, total
        of = "" if total is None else f" of {total}"
        super().__init__(f"evaluation stopped by signal {signal} after {done}{of} batches; {where}")


class SplitProgress:
    """The per-example outputs of a split's evaluation so far, kept in one `.npz` file (`path`) so a
    stopped evaluation resumes at its next batch. `key` (JSON-able) says what is evaluated (step, split,
    examples, batch size, ...): a file saved under another key is stale and is not read. Saved atomically
    (a partial file, then a rename) at most every `save_every_seconds`, and at most every 20 times the
    last save's own time (a forecaster's outputs can be hundreds of MB: saving stays under ~5% of the
    evaluation), and always on `save(force=True)`; only where `writer` (process 0 of a multi-process run),
    so that processes do not race on the file.

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp(), "validation.npz")
        >>> progress = SplitProgress(path, {"step": 10, "split": "validation"})
        >>> progress.save(2, {"logits": [np.zeros((4, 2))] * 2}, force=True)
        >>> done, collected = SplitProgress(path, {"step": 10, "split": "validation"}).load()
        >>> done, collected["logits"][0].shape
        (2, (8, 2))
        >>> SplitProgress(path, {"step": 20, "split": "validation"}).load()[0]  # another step: stale
        0
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: Mapping[str, Any],
        *,
        save_every_seconds: float = 60.0,
        writer: bool = True,
    ) -> None:
        self.path = Path(path)
        self.key = json.dumps(dict(key), sort_keys=True)
        self.save_every_seconds = float(save_every_seconds)
        self.writer = writer
        self._last_save = time.monotonic()
        self._interval = self.save_every_seconds

    def load(self) -> tuple[int, dict[str, list[np.ndarray]]]:
        """(batches done, per-example outputs so far as one array per name, in a list), or (0, {})
        when there is no file, or it was saved for another key, or it cannot be read."""
        if not self.path.is_file():
            return 0, {}
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                if str(saved["__key__"]) != self.key:
                    log.info("%s: saved for another evaluation; starting from the first batch", self.path)
                    return 0, {}
                done = int(saved["__done__"])
                return done, {k: [saved[k]] for k in saved.files if not k.startswith("__")}
        except (OSError, ValueError, KeyError) as unreadable:
            log.warning("%s: unreadable (%s); starting from the first batch", self.path, unreadable)
            return 0, {}

    def save(self, done: int, collected: Mapping[str, list[np.ndarray]], *, force: bool = False) -> None:
        """Writes `done` and the outputs so far, if `force` or `save_every_seconds` have passed."""
        if not self.writer or (not force and time.monotonic() - self._last_save < self._interval):
            return
        started = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        arrays = {k: np.concatenate(v) for k, v in collected.items()}
        with open(partial, "wb") as f:  # (a file object: np.savez would add .npz to the partial's name)
            np.savez(f, __key__=np.asarray(self.key), __done__=np.asarray(done), **arrays)
        os.replace(partial, self.path)
        self._last_save = time.monotonic()
        self._interval = max(self.save_every_seconds, 20 * (self._last_save - started))

    def clear(self) -> None:
        """Removes the file (the evaluation it kept has been used)."""
        if self.writer:
            self.path.unlink(missing_ok=True)


def progress_key(**what: Any) -> dict[str, Any]:
    """A `SplitProgress` key from what names an evaluation; arrays (e.g. the evaluated indices) enter by
    their digest."""
    return {
        k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() if isinstance(v, np.ndarray) else v
        for k, v in what.items()
    }


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
    progress: SplitProgress | None = None,
    stop: Callable[[], int] | None = None,
    total_batches: int | None = None,
    token_bytes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Runs `eval_fn` over `batches` (from `eval_batches`) and returns its per-example outputs over the
    whole split, in the split's order, padded rows dropped: "nll", "tokens" and "correct" (lm), "logits"
    and "label" (classification), "forecast" and "targets" (forecast).

    `token_bytes` (lm; `DocumentSplit.token_byte_lengths`: the bytes each token id stands for) adds
    "bytes", each example's counted targets' bytes (float32 like "tokens", so 1 byte per token gives
    the same array). Why: bits per byte divides by the bytes of the targets scored, and a split's
    average bytes per token is exact only for the whole split, not for a subset of its examples.

    `row_processes`: the processes whose host rows, in this order, make up each global batch (one per
    block of rows: `seqjax.train.mesh.DataLayout.processes`, where processes that split the time axis
    load the same rows); None: every process, in order.

    `progress`: resume from (and keep) the outputs of the batches already evaluated; the batches before
    them are read and passed over. `stop`: asked after every batch (every process of a run together; a
    nonzero signal number stops): the progress is saved and `EvaluationStopped` raised.
    `total_batches`: only for the messages."""
    collected: dict[str, list[np.ndarray]] = {}
    done = 0
    if progress is not None:
        done, collected = progress.load()
        if jax.process_count() > 1 and _agreed_min(done) != done:  # a process without the file: start over
            done, collected = 0, {}
        if done and token_bytes is not None and "bytes" not in collected:  # kept by an older seqjax
            log.info("%s: kept without the targets' bytes; starting from the first batch", progress.path)
            done, collected = 0, {}
        if done:
            log.info("%s: resuming after %d evaluated batches", progress.path, done)
    seen = 0  # batches read, the passed-over ones included
    for i, batch in enumerate(batches):
        seen = i + 1
        if i < done:
            continue
        host = {k: v for k, v in batch.items() if k != "valid"}
        out = {k: np.asarray(v) for k, v in eval_fn(params, to_device(host)).items()}
        valid = _global_rows(batch["valid"], row_processes).astype(bool)
        if task == "classification":
            out["label"] = _global_rows(batch["label"], row_processes)
        if task == "forecast":
            out["targets"] = _global_rows(batch["targets"], row_processes)
        if task == "lm" and token_bytes is not None:
            out["bytes"] = _global_rows(_target_bytes(batch, token_bytes), row_processes)
        for k, v in out.items():
            collected.setdefault(k, []).append(v[valid])
        signum = stop() if stop is not None else 0
        if progress is not None:
            progress.save(i + 1, collected, force=bool(signum))
        if signum:
            where = f"kept in {progress.path}" if progress is not None else "not kept"
            raise EvaluationStopped(signum, i + 1, total_batches, where)
    if not collected:
        raise ValueError("evaluate_split: the split is empty; nothing to evaluate.")
    if progress is not None and seen > done:
        # the whole split, kept: a stop during the next split (the final evaluation's test after its
        # validation) then resumes there rather than redoing this split's batches since the last save
        progress.save(seen, collected, force=True)
    return {k: np.concatenate(v) for k, v in collected.items()}


def split_metrics(
    data: Mapping[str, np.ndarray],
    task: str,
    *,
    bytes_per_token: float = 1.0,
    num_bytes: float | None = None,
) -> dict[str, float]:
    """The task's metrics from `collect_split`'s per-example outputs (lm: with "correct", also the
    "accuracy" of the argmax over the counted tokens).

    lm bits per byte divides by the bytes the counted targets stand for: `num_bytes` when given, else
    the summed "bytes" when `data` has them (`collect_split(token_bytes=...)`), else tokens x
    `bytes_per_token` (a source without byte lengths: 1 byte per token)."""
    if task == "lm":
        tokens = float(data["tokens"].sum())
        if num_bytes is None:
            num_bytes = float(data["bytes"].sum()) if "bytes" in data else tokens * bytes_per_token
        metrics = metrics_lib.lm_metrics(float(data["nll"].sum()), tokens, num_bytes)
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
    token_bytes: np.ndarray | None = None,
) -> dict[str, float]:
    """Runs `eval_fn` over `batches` (from `eval_batches`) and returns the task's metrics
    (`row_processes`, `token_bytes`: as `collect_split`'s)."""
    data = collect_split(
        eval_fn, params, batches, task, to_device, row_processes=row_processes, token_bytes=token_bytes
    )
    return split_metrics(data, task, bytes_per_token=bytes_per_token)


def _target_bytes(batch: Mapping[str, np.ndarray], token_bytes: np.ndarray) -> np.ndarray:
    """[rows] float32: the bytes of each host row's counted targets, weighted as `step.token_losses`
    weighs them (`weights`, else `mask`, else 1)."""
    targets = np.asarray(batch["targets"])
    weights = batch.get("weights", batch.get("mask", np.ones(targets.shape, np.float32)))
    return (np.asarray(token_bytes)[targets] * np.asarray(weights, np.float32)).sum(-1, dtype=np.float32)


def _agreed_min(local: int) -> int:
    """The smallest `local` over every process (a collective: every process calls it)."""
    from jax.experimental import multihost_utils

    return int(np.min(multihost_utils.process_allgather(np.asarray(local, np.int32))))


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
