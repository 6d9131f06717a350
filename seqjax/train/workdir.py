"""One run owns a workdir: an exclusive lock for the run's lifetime; a resume refuses a changed config.

    lock = lock_workdir(workdir)  # WorkdirLockedError naming the pid and host that hold it
    check_resume_config(saved, new, allow=("total_steps",))  # ConfigChangedError listing the keys
    lock.release()

- The lock is `fcntl.flock` on `<workdir>/.lock`, taken by process 0 of a run (its other processes share
  the run) and shared with them, so a second run fails on every one of its processes instead of hanging.
  The kernel releases it when the holder exits, however it exits (SIGKILL included): no stale locks. On a
  network filesystem without flock support, two hosts are not kept apart.
- A resumed run compares the config saved with the checkpoint to its own (both as `RunConfig.to_dict()`):
  `OPERATIONAL_KEYS` (logging, eval cadence, checkpoint cadence, mesh, time budget, the parameter bound)
  may change freely (a changed `eval_examples` scores later steps on another validation subset: the best
  checkpoint is then chosen among the steps scored like the newest, `Checkpoints.best_step`);
  `FIXED_KEYS` (the task, batch size, model, head, data and segment recurrence: what the parameters, the
  data position and the saved state mean) never; any other key (seed, total steps, optimizer, TBPTT) only
  when named in `allow` (`scripts/train.py --allow_config_change=total_steps,optimizer.learning_rate`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = [
    "FIXED_KEYS",
    "OPERATIONAL_KEYS",
    "ConfigChangedError",
    "WorkdirLock",
    "WorkdirLockedError",
    "changed_keys",
    "check_resume_config",
    "lock_workdir",
]

LOCK_FILE = ".lock"
#: Keys (or sections) that change how a run is run, not which run it is: free to change on resume.
OPERATIONAL_KEYS = (
    "log_every",
    "eval_every",
    "eval_examples",  # each saved metric records its subset; best_step compares only steps scored alike
    "eval_batch_size",
    "report_step_memory",
    "tensorboard",
    "data_dir",
    "max_train_seconds",
    "max_param_abs",
    "checkpoint",
    "mesh",
    "logical_rules",
)
#: Keys (or sections) that fix what the saved parameters and data position mean: never changed on resume.
FIXED_KEYS = ("task", "batch_size", "model", "head", "data", "segment_recurrence")
#: Allowing a key allows these too (the configs' optimizer.total_steps is a reference to total_steps).
_ALSO_ALLOWS = {"total_steps": ("optimizer.total_steps",)}


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock."""


class ConfigChangedError(ValueError):
    """A resumed run's config differs from the one saved in its workdir."""


class WorkdirLock:
    """An exclusive `flock` on `<workdir>/.lock`, held until `release` (or the process exits)."""

    def __init__(self, workdir: str) -> None:
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file: Any = None

    def acquire(self) -> None:
        """Takes the lock or raises WorkdirLockedError naming its holder (pid, host, start time)."""
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)} is in use by another run ({holder}; lock file "
                f"{self.path}). Wait for it to finish or stop it, or use another --workdir."
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Drops the lock (the file stays: removing it would let two runs lock two different files)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def lock_workdir(workdir: str) -> WorkdirLock:
    """Locks `workdir` for this run: process 0 takes the lock and every process learns the outcome, so
    that a run that cannot have the workdir fails on all its processes. Raises WorkdirLockedError."""
    os.makedirs(workdir, exist_ok=True)
    lock = WorkdirLock(workdir)
    error: WorkdirLockedError | None = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirLockedError as err:
            error = err
    if jax.process_count() > 1:
        locked = multihost_utils.broadcast_one_to_all(np.asarray(error is None, np.int32))
        if not int(locked) and error is None:
            error = WorkdirLockedError(
                f"process 0 could not lock workdir {workdir}: another run holds {lock.path} (see process "
                f"0's error for its pid and host)."
            )
    if error is not None:
        raise error
    return lock


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _plain(value: Any) -> Any:
    """JSON values, as checkpoints save a config (tuples become lists, arrays lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _covered(key: str, names: Iterable[str]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in names)


def changed_keys(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, new value) for every key whose value differs (a missing key is
    `"<missing>"`); both configs as plain nested values (tuples and lists compare equal)."""
    missing = "<missing>"
    old_flat, new_flat = _flatten(_plain(saved)), _flatten(_plain(new))
    return {
        key: (old_flat.get(key, missing), new_flat.get(key, missing))
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key, missing) != new_flat.get(key, missing)
    }


def check_resume_config(
    saved: Mapping[str, Any], new: Mapping[str, Any], *, allow: Iterable[str] = (), where: str = "the workdir"
) -> dict[str, tuple[Any, Any]]:
    """Raises ConfigChangedError listing the keys that differ between the `saved` config of a run and the
    `new` one, unless each is operational (`OPERATIONAL_KEYS`) or named in `allow` (a key or a section);
    `FIXED_KEYS` cannot be allowed. Returns the changes it accepted."""
    allow = tuple(allow)
    allowed = allow + tuple(extra for name in allow for extra in _ALSO_ALLOWS.get(name, ()))
    fixed_allowed = [name for name in allow if _covered(name, FIXED_KEYS) or name in FIXED_KEYS]
    if fixed_allowed:
        raise ConfigChangedError(
            f"allow_config_change names {fixed_allowed}, which can never change on resume "
            f"({', '.join(FIXED_KEYS)} fix what the saved parameters and data position mean); use another "
            f"workdir."
        )
    changes = changed_keys(saved, new)
    lines = lambda keys: "\n".join(
        f"  {k}: {changes[k][0]!r} (saved) -> {changes[k][1]!r} (now)" for k in keys
    )
    fixed = [k for k in changes if _covered(k, FIXED_KEYS)]
    if fixed:
        raise ConfigChangedError(
            f"{where} holds a run with another model or data (these keys differ):\n{lines(fixed)}\n"
            f"They cannot change on resume; use another --workdir for this run."
        )
    refused = [k for k in changes if not _covered(k, OPERATIONAL_KEYS) and not _covered(k, allowed)]
    if refused:
        implied = {extra for name in refused for extra in _ALSO_ALLOWS.get(name, ())}
        suggested = [k for k in refused if k not in implied]
        raise ConfigChangedError(
            f"{where} holds a run with another config (these keys differ):\n{lines(refused)}\n"
            f"Resuming would continue that run with them changed. Use another --workdir for a new run, or, "
            f"if the change is intended, pass --allow_config_change={','.join(suggested)} to "
            f"scripts/train.py "
            f"(train(..., allow_config_change=...))."
        )
    return changes
