"""SIGTERM (preemption) and SIGINT (Ctrl-C) as a stop request that every process of a run agrees on.

The loop asks `stop_signal()` once per step, at the same point on every process. In one process it is
the signal this process received (0: none), read from a flag: no collective, no cost. In a multi-process
run it is the largest signal number any process received, agreed by a small all-gather, so every process
saves the same step together and exits; a process acting on its own flag would enter the (collective)
save while its peers wait in the next step's collectives, and the run would hang.

A second SIGINT while the first is pending raises KeyboardInterrupt: the operator insists, the run stops
without saving.

    >>> import os, signal
    >>> with StopSignals() as stop:
    ...     before = stop.stop_signal()
    ...     os.kill(os.getpid(), signal.SIGTERM)
    ...     after = stop.stop_signal()
    >>> before, signal_name(after)
    (0, 'SIGTERM')
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["STOP_SIGNALS", "StopSignals", "agree_across_processes", "signal_name"]

#: The signals that stop a run with a checkpoint: preemption notices and Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """ "SIGTERM" for signal.SIGTERM; the number for a signal Python does not name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def agree_across_processes(local: int) -> int:
    """The largest `local` over every process of the run (a collective: every process must call it)."""
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(local, np.int32))))


class StopSignals:
    """Installs handlers for `signals` (in the main thread; elsewhere none) and restores the previous
    ones on exit. `requested` is the last signal this process received (0: none); `stop_signal()` the one
    the run acts on. `agree` combines the processes' values (default: `agree_across_processes` when
    `jax.process_count() > 1`).

    `ignore_after_stop` (for a process that exits once the run has stopped, e.g. `scripts/train.py`): if a
    stop was requested here or agreed with a peer (`stop_signal()` nonzero: a process told to stop by its
    peer gets the same late signals), the exit sets the signals to be ignored instead of restoring the
    previous handlers, so a late signal (a scheduler signalling each process in turn) cannot kill the shutdown
    and turn a clean, saved stop into a nonzero exit status. Without a stop, the previous handlers come
    back as usual."""

    def __init__(
        self,
        signals: tuple[int, ...] = STOP_SIGNALS,
        agree: Callable[[int], int] | None = None,
        *,
        ignore_after_stop: bool = False,
    ) -> None:
        self.signals = signals
        self.ignore_after_stop = ignore_after_stop
        self.requested = 0
        self.stopped = 0  # the last nonzero stop_signal(): this process's signal or a peer's
        if agree is None and jax.process_count() > 1:
            agree = agree_across_processes
        self._agree = agree
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        self.requested = signum

    def __enter__(self) -> StopSignals:
        for signum in self.signals:
            with contextlib.suppress(ValueError):  # not the main thread: no handler, no saves on signals
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            if self.ignore_after_stop and (self.requested or self.stopped):
                signal.signal(signum, signal.SIG_IGN)  # stopping: the process exits next
            else:
                # None: the previous handler was not set from Python; the default is the closest.
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def stop_signal(self) -> int:
        """The signal to stop on (0: go on); a collective in a multi-process run, so every process
        calls it at the same point of every step."""
        agreed = self.requested if self._agree is None else self._agree(self.requested)
        if agreed:
            self.stopped = agreed
        return agreed
