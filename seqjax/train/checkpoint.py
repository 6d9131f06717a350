"""Orbax checkpoints that resume the same run: train state, data-iterator state and config together.

- Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when the
  save is complete), so a run killed mid-save leaves no step directory that looks finished.
- Retention: the latest `keep` steps, plus the `keep_best` best by an eval metric when one is named,
  among the steps scored on the same evaluation subset (`Checkpoints.best_step`).
- A state with a NaN or Inf is refused before anything is written.
- Every checkpoint carries checksums: a digest of each array's values (computed on device, so every
  process of a multi-process run checks the whole state, whatever the mesh), and sha256 digests of the
  data state and config. `restore` verifies them: flipped bytes are a corrupt step, not wrong values.
- `restore` tries the latest step first; if it cannot be read (a corrupt, truncated or deleted file, a
  checksum mismatch, or a `validate` hook that rejects it), it warns and falls back to the previous step,
  and so on. Once an older step is restored, the unreadable newer ones are moved aside to
  `<step>.unreadable-<time>` (kept for inspection; Orbax ignores the name), so the run can save those step
  numbers again instead of dying on `StepAlreadyExistsError` at every restart.
- Restoring onto abstract arrays (`jax.ShapeDtypeStruct` with shardings) places the state onto the
  current mesh, whatever mesh wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

__all__ = ["SCORED_ON", "UNREADABLE", "CheckpointError", "Checkpoints", "NonFiniteStateError", "Restored"]

log = logging.getLogger(__name__)

#: A step directory that could not be restored is renamed `<step>` + UNREADABLE + `<time>`.
UNREADABLE = ".unreadable-"
#: The array digest's name, saved with the checksums: a changed algorithm is never a mismatch.
_DIGEST = "fmix32x2-v1"
#: The key of a step's saved metrics that records which evaluation subset scored them (`Checkpoints.save`).
SCORED_ON = "scored_on_examples"


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


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: every input bit changes about half of the output bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """Every element's bits as uint32 words, flat (8- and 16-bit types widened, 64-bit ones split)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).ravel()


def _digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two 32-bit digests of an array's values and their positions. Wrapping uint32 sums are exact and
    order-free, so the digest does not depend on the sharding or on the reduction order."""
    words = _words(x)
    index = jnp.arange(words.size, dtype=jnp.uint32)
    first = _fmix32(words + _fmix32(index ^ jnp.uint32(0x9E3779B9)))
    second = _fmix32(words ^ _fmix32(index + jnp.uint32(0x7F4A7C15)))
    return jnp.sum(first, dtype=jnp.uint32), jnp.sum(second, dtype=jnp.uint32)


@jax.jit
def _inspect(tree: Any) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """(whether every floating leaf is finite, each leaf's digests), in one device pass."""
    leaves = jax.tree.leaves(tree)
    finite = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    all_finite = jnp.all(jnp.stack(finite)) if finite else jnp.asarray(True)
    return all_finite, [_digest(x) for x in leaves]


#: A state up to this size, all of it in this process, is checked on the host (numpy) instead of in a
#: jitted program: tracing and compiling that program for every leaf took 2 s at -O0 for a 65-leaf
#: state, more than the check itself costs in numpy for a few MB; a larger state is checked on its
#: devices, where it lives (a host copy of GBs would cost more).
HOST_CHECK_MAX_BYTES = 64 * 2**20


def _fmix32_host(h: np.ndarray) -> np.ndarray:
    """`_fmix32` in numpy (uint32 arithmetic wraps as XLA's does)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _words_host(x: Any) -> np.ndarray:
    """`_words` in numpy, on the host copy of a leaf (same words, same order: little-endian halves)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = np.ascontiguousarray(np.asarray(x))
    if x.dtype == np.bool_:
        return x.astype(np.uint32).ravel()
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize]
    return x.view(bits).astype(np.uint32).ravel()


def _digest_host(x: Any) -> tuple[int, int]:
    words = _words_host(x)
    index = np.arange(words.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        first = _fmix32_host(words + _fmix32_host(index ^ np.uint32(0x9E3779B9)))
        second = _fmix32_host(words ^ _fmix32_host(index + np.uint32(0x7F4A7C15)))
        return int(np.sum(first, dtype=np.uint32)), int(np.sum(second, dtype=np.uint32))


def _on_host(leaves: list[Any]) -> bool:
    """Whether to check these leaves on the host: one process holds all of them, and they are small."""
    if jax.process_count() > 1 or not all(getattr(x, "is_fully_addressable", True) for x in leaves):
        return False
    return sum(int(getattr(x, "nbytes", 0)) for x in leaves) <= HOST_CHECK_MAX_BYTES


def _host(x: jax.Array) -> np.ndarray:
    """A replicated result on the host (in a multi-process run it spans devices of other processes)."""
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _finite_and_digests(tree: Any) -> tuple[bool, dict[str, list[int]]]:
    """(whether every floating leaf is finite, each leaf's two digests by its path); the same numbers on
    the host (`_on_host`) as on the devices."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths, leaves = [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat]
    if _on_host(leaves):
        inexact = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
        finite = all(bool(np.all(np.isfinite(np.asarray(x)))) for x in inexact)
        return finite, {p: list(_digest_host(x)) for p, x in zip(paths, leaves, strict=True)}
    finite, digests = _inspect(tree)
    values = {p: [int(_host(a)), int(_host(b))] for p, (a, b) in zip(paths, digests, strict=True)}
    return bool(_host(finite)), values


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _scored_on(metrics: Mapping[str, Any]) -> int | None:
    """The evaluation subset a step's saved metrics were scored on (`Checkpoints.save(scored_on=...)`);
    None for a step saved without the record (an older seqjax): all such steps count as one subset."""
    value = metrics.get(SCORED_ON)
    return None if value is None else int(value)


class _BestOfEachSubset(checkpoint_managers.BestN):
    """`BestN` within each evaluation subset (`_scored_on`): the `n` best steps scored on each subset are
    kept. Why not the `n` best over all: a step scored on a few examples can look better than the whole
    split's best by noise alone and push it out, and `best_step` never picks across subsets."""

    def should_preserve(self, checkpoints: Any, *, context: Any) -> list[bool]:
        subsets: dict[int | None, list[int]] = {}
        for i, info in enumerate(checkpoints):
            if info.metrics is not None:
                subsets.setdefault(_scored_on(info.metrics), []).append(i)
        # a step saved without metrics is kept as `BestN` keeps it (`keep_checkpoints_without_metrics`)
        keep = [info.metrics is None and self.keep_checkpoints_without_metrics for info in checkpoints]
        for members in subsets.values():
            kept = super().should_preserve([checkpoints[i] for i in members], context=context)
            for i, k in zip(members, kept, strict=True):
                keep[i] = bool(k)
        return keep


def _all_agree(ok: bool) -> bool:
    """Whether `ok` holds on every process (every process must restore the same step)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class Checkpoints:
    """Save and restore a run's checkpoints in `directory`.

    Args:
      directory: where step directories go (created if missing).
      save_every: `should_save(step)` is true every this many steps.
      keep: the latest checkpoints to keep.
      best_metric: name of an eval metric (a key of the `metrics` passed to `save`); the `keep_best` best
        checkpoints by it are kept as well (of each evaluation subset: `save(scored_on=...)`).
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
                _BestOfEachSubset(
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
        scored_on: int | None = None,
    ) -> None:
        """Writes `state` (any pytree of arrays) with the data-iterator state and the config at `step`.

        `scored_on` (with `metrics`): which evaluation subset scored `metrics`, recorded with them
        (`SCORED_ON`) so that `best_step` compares only steps scored alike; the trainer passes the number
        of validation examples read (spread evenly over a fixed split, the count names the subset).
        Raises NonFiniteStateError, before writing anything, if a floating leaf of `state` is NaN/Inf.
        Checksums of the state's arrays, the data state and the config are saved with them.
        """
        finite, digests = _finite_and_digests(state)
        if not finite:
            raise NonFiniteStateError(
                f"step {step}: the train state has NaN or Inf values; refusing to checkpoint it. The last "
                f"good checkpoint in {self.directory} is step {self.latest_step()}."
            )
        if self.best_metric is not None and metrics is not None and self.best_metric not in metrics:
            raise KeyError(
                f"Checkpoints: metrics {sorted(metrics)} lack best_metric {self.best_metric!r}; log it at "
                f"eval or change best_metric."
            )
        if metrics is not None and scored_on is not None:
            metrics = {**metrics, SCORED_ON: int(scored_on)}
        data_json = _json_ready(dict(data_state or {}))
        checksums: dict[str, Any] = {"digest": _DIGEST, "state": digests, "data_state": _sha256(data_json)}
        items = {"state": ocp.args.StandardSave(state), "data_state": ocp.args.JsonSave(data_json)}
        if config is not None:
            config_json = _json_ready(config)
            items["config"] = ocp.args.JsonSave(config_json)
            checksums["config"] = _sha256(config_json)
        items["checksums"] = ocp.args.JsonSave(checksums)
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
        """The kept step with the best `best_metric` among those scored on the same evaluation subset as
        the newest scored step (None without a metric or without evals); the others are set aside, and
        logged.

        Why: `eval_examples` may change on resume (it is operational, `seqjax.train.workdir`), and a
        metric from a few examples is noisier than the whole split's, so the best over both would favour
        whichever subset happened to look best. Refusing the change instead would make a long run
        unresumable for want of a cheaper evaluation; grouping keeps it resumable and every comparison
        fair. The newest subset decides because it is the one the run evaluates with now. Steps saved
        without the record (an older seqjax) count as one subset of their own.
        """
        if self.best_metric is None:
            return None
        scored = []  # (step, metric, subset), oldest first
        for step in self.all_steps():
            metrics = self._manager.metrics(step)
            if metrics and self.best_metric in metrics:
                scored.append((step, float(metrics[self.best_metric]), _scored_on(metrics)))
        if not scored:
            return None
        latest = scored[-1][2]
        comparable = [(value, step) for step, value, subset in scored if subset == latest]
        aside = [step for step, _, subset in scored if subset != latest]
        if aside:
            log.info(
                "best_step: steps %s of %s were scored on another evaluation subset than the newest scored "
                "step %d (%s); set aside, the best is chosen among %d comparable steps.",
                aside,
                self.directory,
                scored[-1][0],
                "unrecorded" if latest is None else f"{latest} examples",
                len(comparable),
            )
        return (min(comparable) if self.best_mode == "min" else max(comparable))[1]

    def saved_config(self) -> tuple[int, dict[str, Any]] | None:
        """(step, config) of the newest step whose saved config reads, without restoring its arrays; None
        when no step has one. A resumed run compares it with its own before restoring."""
        for step in self.all_steps()[::-1]:
            try:
                with open(os.path.join(self.directory, str(step), "config", "metadata")) as f:
                    return step, json.load(f)
            except (OSError, ValueError):
                continue
        return None

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        *,
        validate: Callable[[Restored], None] | None = None,
    ) -> Restored | None:
        """Restores `step` (default: the newest readable one) onto `abstract_state`'s shapes and shardings.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with `.sharding` for the target mesh), e.g.
        `jax.eval_shape(init_fn)` with shardings attached. `validate(restored)` may raise to reject a step
        that restored but is inconsistent (e.g. a data position that disagrees with the step); it counts as
        unreadable. Returns None when the directory has no checkpoint; raises CheckpointError when none of
        them can be read (then nothing is moved). With `step=None`, newer steps skipped on the way to a
        readable one are moved aside to `<step>.unreadable-<time>`:

            restored = ckpt.restore(abstract)  # steps 4 (truncated) and 2 -> restored.step == 2
            restored.skipped_steps == (4,)  # and the directory now holds "2" and "4.unreadable-<time>"
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
            restored, message = None, "it could not be read on another process"
            try:
                restored = self._restore_step(candidate, abstract_state)
                if validate is not None:
                    validate(restored)
            except Exception as exc:  # any unreadable file: corrupt, truncated, missing, mismatched
                restored = None
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if not _all_agree(restored is not None):
                log.warning(
                    "checkpoint step %d in %s cannot be restored (%s); falling back to the previous one.",
                    candidate,
                    self.directory,
                    message,
                )
                skipped.append(candidate)
                errors.append(f"step {candidate}: {message}")
                continue
            if step is None and skipped:
                self._move_aside(skipped)
            return dataclasses.replace(restored, skipped_steps=tuple(skipped))
        raise CheckpointError(
            f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors)
        )

    def _move_aside(self, steps: list[int]) -> None:
        """Renames unreadable step directories out of Orbax's step naming (process 0 renames; every
        process waits for it), so that the run can save those steps again."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if jax.process_index() == 0:
            for step in steps:
                target = os.path.join(self.directory, f"{step}{UNREADABLE}{stamp}")
                suffix = 1
                while os.path.exists(target):
                    target = os.path.join(self.directory, f"{step}{UNREADABLE}{stamp}-{suffix}")
                    suffix += 1
                os.rename(os.path.join(self.directory, str(step)), target)
                log.warning(
                    "moved unreadable checkpoint step %d aside to %s (kept for inspection; delete it when "
                    "done).",
                    step,
                    target,
                )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"seqjax checkpoints: moved aside {steps}")
        self._manager.reload()

    def _restore_step(self, step: int, abstract_state: Any) -> Restored:
        step_dir = os.path.join(self.directory, str(step))
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "data_state": ocp.args.JsonRestore(),
        }
        optional = [k for k in ("config", "checksums") if os.path.isdir(os.path.join(step_dir, k))]
        for key in optional:
            items[key] = ocp.args.JsonRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = out["state"]
        data_state = out["data_state"]
        config = out["config"] if "config" in optional else None
        finite, digests = _finite_and_digests(state)
        if "checksums" in optional:
            _verify(step, out["checksums"], digests, data_state, config)
        else:
            log.warning(
                "checkpoint step %d in %s has no checksums (saved by an older seqjax); restored unverified.",
                step,
                self.directory,
            )
        # A truncated array file can restore as garbage rather than fail; a state that was finite when
        # saved and is not now is corrupt.
        if not finite:
            raise CheckpointError(
                f"step {step} restored with NaN or Inf values, but only finite states are saved."
            )
        return Restored(
            step=step,
            state=state,
            data_state=dict(data_state or {}),
            config=config,
            skipped_steps=(),
        )


def _verify(
    step: int, saved: Mapping[str, Any], digests: Mapping[str, Any], data_state: Any, config: Any
) -> None:
    """Raises CheckpointError naming what differs from the checksums saved with `step`."""
    if saved.get("digest") != _DIGEST:
        log.warning("checkpoint step %d: unknown digest %r; arrays not verified.", step, saved.get("digest"))
    else:
        expected = saved.get("state", {})
        if set(expected) != set(digests):
            raise CheckpointError(
                f"step {step}: the state's leaves {sorted(set(expected) ^ set(digests))[:5]} differ from the "
                f"saved checksums' (is this the same model?)."
            )
        bad = [path for path in digests if list(expected[path]) != list(digests[path])]
        if bad:
            raise CheckpointError(
                f"step {step}: checksum mismatch in {len(bad)} array(s), e.g. {bad[:3]}: the array files "
                f"are corrupt."
            )
    if _sha256(_json_ready(data_state or {})) != saved.get("data_state"):
        raise CheckpointError(f"step {step}: checksum mismatch in the data state {data_state!r}.")
    if "config" in saved and (config is None or _sha256(config) != saved["config"]):
        raise CheckpointError(f"step {step}: checksum mismatch in the saved config (or it is missing).")
