"""Helpers shared by the tests that run `scripts/train.py` as a subprocess and signal or kill it (a helper
module: it holds no tests).

One dict of config overrides gives both the command line (`train_command`) and the same config in-process
(`with_overrides`), so a test can read a subprocess's checkpoints with `seqjax.train.trainer.setup`'s
abstract state, or compare the subprocess with an in-process `train`. The subprocesses inherit this
process's environment: the XLA flags set in conftest.py (8 CPU devices, -O0) apply to both sides, which is
what makes their results comparable bitwise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(config: str, workdir: str, overrides: Mapping[str, Any]) -> list[str]:
    """The `scripts/train.py` command line for `configs/<config>` (a file name with its `:arg`), with
    `--config.<key>=<value>` for each override (dotted keys for nested sections)."""
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config=" + os.path.join(ROOT, "configs", config),
        f"--workdir={workdir}",
        *(f"--config.{key}={value}" for key, value in overrides.items()),
    ]


def with_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """`config` with the overrides `train_command` passes on the command line, set in-process."""
    for key, value in overrides.items():
        *sections, name = key.split(".")
        section = config
        for part in sections:
            section = getattr(section, part)
        setattr(section, name, value)
    return config


def checkpoint_steps(workdir: str) -> list[int]:
    """The finished checkpoint steps in `workdir` (Orbax renames a step's directory to its number once
    written, so a save in progress is not listed)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


#: A line of absl's own logging (e.g. "W1205 18:10:00.545 ..."), which a script may print before it refuses.
ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


def refusal_line(script: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Runs `script` (a path in the repository, e.g. "scripts/train.py") with `args` on the CPU, asserts
    that it refused them as the scripts do (`seqjax.common.cli.run_or_refuse`): exit status 2, no
    traceback, one line on stderr besides absl's log lines; returns that line. `env` adds to (and wins
    over) this process's environment.

        >>> refusal_line("scripts/train.py", "--config=configs/genomic.py:lstmm")  # doctest: +SKIP
        "scripts/train.py: configs/genomic.py: unknown preset 'lstmm'; choose one of [...]."
    """
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", **(env or {})}
    command = [sys.executable, script, *args]  # (from the repository, as the README runs scripts)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.strip().splitlines() if not ABSL_LOG_LINE.match(line)]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def start(command: list[str]) -> subprocess.Popen:
    """`command` running with this repository on its path, stdout and stderr together in `.stdout`.

    The child starts with SIGINT's default disposition, as from a shell: an ignored signal is inherited
    across exec, and a full-suite run once left the test worker's SIGINT ignored (some library, not
    seqjax: reproduced by none of the suspects alone), so a child signalled with SIGINT never stopped.
    A handler set here is reset to the default in the child by exec; the worker's own is restored."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def start_and_wait(command: list[str], workdir: str, at_least: int, timeout: float = 240) -> subprocess.Popen:
    """Starts the training `command` and returns once `workdir` holds a checkpoint at step >= `at_least`,
    the run still going (the test fails if it exits first or nothing appears within `timeout` s)."""
    proc = start(command)
    deadline = time.time() + timeout
    while not any(s >= at_least for s in checkpoint_steps(workdir)):
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint appeared within {timeout:.0f} s")
        time.sleep(0.02)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Waits for `proc` and returns its output; the test fails (with the output's tail) unless it exits 0."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"training did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"training exited with {proc.returncode}:\n{out[-3000:]}")
    return out
