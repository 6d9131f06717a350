"""Orbax checkpoints that resume the same run: train state, data-iterator state and config together.

- Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when the
  save is complete), so a run killed mid-save leaves no step directory that looks finished.
- Retention: the latest `keep` steps, plus the `keep_best` best by an eval metric when one is named.
- A state with a NaN or Inf is refused before anything is written.
- `restore` tries the latest step first; if it cannot be read (a corrupt or truncated file), it warns
  and falls back to the previous step, and so on.
- Restoring onto abstract arrays (`jax.ShapeDtypeStruct` with shardings) places the state onto the
  current mesh, whatever mesh wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

__all__ = ["CheckpointError", "Checkpoints", "NonFiniteStateError", "Restored"]

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored."""


class NonFiniteStateError(ValueError):
    """The train state holds NaN or Inf; it is never written."""


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    state: Any
    data_state: dict[str, Any]
    config: dict[str, Any] | None
    skipped_steps: tuple[int, ...]  # newer steps that could not be read


def _json_ready(value: Any) -> Any:
    """JSON-serialisable copy: tuples become lists, ConfigDicts dicts; anything else must be JSON already."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class Checkpoints:
    """Save and restore a run's checkpoints in `directory`.

    Args:
      directory: where step directories go (created if missing).
      save_every: `should_save(step)` is true every this many steps.
      keep: the latest checkpoints to keep.
      best_metric: name of an eval metric (a key of the `metrics` passed to `save`); the `keep_best` best
        checkpoints by it are kept as well.
      best_mode: "min" or "max".
      async_save: write in a background thread; `wait` blocks until written.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        save_every: int = 1000,
        keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        keep_best: int = 1,
        async_save: bool = True,
    ) -> None:
        if save_every <= 0 or keep <= 0:
            raise ValueError(f"Checkpoints: save_every ({save_every}) and keep ({keep}) must be positive.")
        if best_mode not in ("min", "max"):
            raise ValueError(f"Checkpoints: best_mode must be 'min' or 'max', got {best_mode!r}.")
        self.directory = os.fspath(os.path.abspath(directory))
        self.save_every = save_every
        self.best_metric = best_metric
        self.best_mode = best_mode
        policies: list[Any] = [checkpoint_managers.LatestN(n=keep)]
        if best_metric is not None:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: float(metrics[best_metric]),
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn only makes Orbax write the metrics with each step; retention is the policy's.
            best_fn=None if best_metric is None else (lambda metrics: float(metrics[best_metric])),
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving --------------------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: Mapping[str, Any] | None = None,
        config: Any = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Writes `state` (any pytree of arrays) with the data-iterator state and the config at `step`.

        Raises NonFiniteStateError, before writing anything, if a floating leaf of `state` is NaN/Inf.
        """
        if not bool(_all_finite(state)):
            raise NonFiniteStateError(
                f"step {step}: the train state has NaN or Inf values; refusing to checkpoint it. The last "
                f"good checkpoint in {self.directory} is step {self.latest_step()}."
            )
        if self.best_metric is not None and metrics is not None and self.best_metric not in metrics:
            raise KeyError(
                f"Checkpoints: metrics {sorted(metrics)} lack best_metric {self.best_metric!r}; log it at "
                f"eval or change best_metric."
            )
        items = {
            "state": ocp.args.StandardSave(state),
            "data_state": ocp.args.JsonSave(_json_ready(dict(data_state or {}))),
        }
        if config is not None:
            items["config"] = ocp.args.JsonSave(_json_ready(config))
        self._manager.save(
            step,
            args=ocp.args.Composite(**items),
            metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- restoring -----------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (None without a metric or without evals)."""
        if self.best_metric is None:
            return None
        scored = []
        for step in self.all_steps():
            metrics = self._manager.metrics(step)
            if metrics and self.best_metric in metrics:
                scored.append((float(metrics[self.best_metric]), step))
        if not scored:
            return None
        return (min(scored) if self.best_mode == "min" else max(scored))[1]

    def restore(self, abstract_state: Any, step: int | None = None) -> Restored | None:
        """Restores `step` (default: the newest readable one) onto `abstract_state`'s shapes and shardings.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with `.sharding` for the target mesh), e.g.
        `jax.eval_shape(init_fn)` with shardings attached. Returns None when the directory has no
        checkpoint; raises CheckpointError when none of them can be read.
        """
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; steps: {steps}.")
            candidates = [step]
        else:
            candidates = steps[::-1]
        if not candidates:
            return None
        skipped: list[int] = []
        errors: list[str] = []
        for candidate in candidates:
            try:
                restored = self._restore_step(candidate, abstract_state)
            except Exception as exc:  # any unreadable file: corrupt, truncated, missing
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); falling back to the previous one.",
                    candidate,
                    self.directory,
                    message,
                )
                skipped.append(candidate)
                errors.append(f"step {candidate}: {message}")
                continue
            return dataclasses.replace(restored, skipped_steps=tuple(skipped))
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors)
        )

    def _restore_step(self, step: int, abstract_state: Any) -> Restored:
        step_dir = os.path.join(self.directory, str(step))
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "data_state": ocp.args.JsonRestore(),
        }
        has_config = os.path.isdir(os.path.join(step_dir, "config"))
        if has_config:
            items["config"] = ocp.args.JsonRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = out["state"]
        # A truncated array file can restore as garbage rather than fail; a state that was finite when
        # saved and is not now is corrupt.
        if not bool(_all_finite(state)):
            raise CheckpointError(
                f"step {step} restored with NaN or Inf values, but only finite states are saved."
            )
        return Restored(
            step=step,
            state=state,
            data_state=dict(out["data_state"] or {}),
            config=out["config"] if has_config else None,
            skipped_steps=(),
        )
