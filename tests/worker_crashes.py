"""A pytest plugin that says why a pytest-xdist worker died.

When native code kills a worker (a segfault or abort inside XLA, or the kernel's out-of-memory killer),
xdist reports only "worker 'gw1' crashed while running <test>": the fatal-signal stacks that pytest's
faulthandler writes go to the dead worker's stderr, which the run's output does not keep. Here each
worker writes a log of its own instead: one line per test it starts (with its resident memory and the
machine's available memory, to tell an out-of-memory kill from a fault, and its count of memory
mappings against `vm.max_map_count`, to tell a failed mmap), and faulthandler's stacks of
every thread on a fatal signal. The controller prints, in the terminal summary, the tail of the log of
every worker that crashed, and any fatal-signal stacks.

`scripts/test.sh` runs a test that crashed its worker once more (pytest-rerunfailures' `--reruns=1`,
with `--rerun-except=.` so that an ordinary failure is never rerun): the crash is still printed here,
and the summary counts it as a rerun.

The crashes seen until December 2026 (segfaults inside XLA, in compiling or running a program, on a
different test each time, late in a run) most likely came from the mappings: every compiled XLA CPU
program maps its code, a worker kept every program of the run, and its count climbed toward the limit
(~14,500 after 200 cell tests, 65,530 allowed). conftest.py drops JAX's compiled programs at a test file's
end once a worker holds more than 20,000 mappings or 3 GiB (`memory_mappings`, `resident_mib`); no crash
in the fresh-clone runs since.
"""

from __future__ import annotations

import faulthandler
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import pytest

#: The folder of the workers' logs, made by the controller and inherited by the workers it starts.
LOG_FOLDER_VARIABLE = "SEQJAX_WORKER_LOGS"
#: At most this many lines of a crashed worker's log are printed (its last tests, then the stacks).
TAIL_LINES = 120
_FATAL = re.compile(r"Fatal Python error|Segmentation fault|Aborted")
_START = re.compile(r"\d\d:\d\d:\d\d start ")
_CRASHED = re.compile(r"worker '(gw\d+)' crashed while running")

_log: IO[str] | None = None
_made_folder: str | None = None  # the controller's, removed when the run ends


def memory_mappings() -> int | None:
    """How many memory mappings this process holds (None where there is no /proc): each compiled XLA CPU
    program maps its code, and mmap fails past the kernel's limit (e.g. as a segfault in LLVM)."""
    try:
        with open("/proc/self/maps", "rb") as maps:  # (bytes: 4x faster than lines of text)
            return maps.read().count(b"\n")
    except OSError:  # not Linux
        return None


def _memory_maps() -> str:
    """ ", maps <count>/<vm.max_map_count>" for a worker's log line ("" where there is no /proc)."""
    count = memory_mappings()
    try:
        limit = Path("/proc/sys/vm/max_map_count").read_text().strip()
    except OSError:
        return ""
    return "" if count is None else f", maps {count:,}/{int(limit):,}"


def resident_mib() -> float:
    """This process's resident memory in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _memory_mib() -> tuple[float, float]:
    """(this process's resident memory, the machine's available memory) in MiB."""
    import psutil

    return resident_mib(), psutil.virtual_memory().available / 2**20


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler plugin, which points it at stderr
def pytest_configure(config: pytest.Config) -> None:
    global _log, _made_folder
    worker = getattr(config, "workerinput", None)
    if worker is None:  # the controller (or a run without xdist): the folder its workers will share
        if LOG_FOLDER_VARIABLE not in os.environ:
            _made_folder = tempfile.mkdtemp(prefix="seqjax-pytest-workers-")
            os.environ[LOG_FOLDER_VARIABLE] = _made_folder
        return
    folder = os.environ.get(LOG_FOLDER_VARIABLE)
    if folder:
        _log = open(Path(folder) / f"{worker['workerid']}.log", "a", buffering=1)  # noqa: SIM115
        faulthandler.enable(file=_log, all_threads=True)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    if _log is not None:
        rss, available = _memory_mib()
        memory = f"rss {rss:,.0f} MiB, available {available:,.0f} MiB{_memory_maps()}"
        _log.write(f"{time.strftime('%H:%M:%S')} start {nodeid} ({memory})\n")


def _crashed_workers(terminalreporter: Any) -> set[str]:
    workers = set()
    for status in ("failed", "rerun", "error"):
        for report in terminalreporter.stats.get(status, []):
            match = _CRASHED.search(str(getattr(report, "longrepr", "") or ""))
            if match:
                workers.add(match.group(1))
    return workers


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return
    folder = os.environ.get(LOG_FOLDER_VARIABLE)
    if not folder or not os.path.isdir(folder):
        return
    crashed = _crashed_workers(terminalreporter)
    for path in sorted(Path(folder).glob("gw*.log")):
        text = path.read_text(errors="replace")
        if path.stem not in crashed and not _FATAL.search(text):
            continue
        terminalreporter.write_sep("=", f"worker {path.stem}: the end of its log ({path})")
        lines = [line for line in text.splitlines() if not line.startswith("Extension modules:")]
        starts = [i for i, line in enumerate(lines) if _START.match(line)]
        # from a few tests before the last one it started (their memory) through the stacks, if any
        first = max(starts[-3] if len(starts) >= 3 else 0, len(lines) - TAIL_LINES)
        tail = lines[first:]
        if not _FATAL.search(text):
            tail.append("(no fatal-signal stacks: the worker was killed, e.g. by the out-of-memory killer)")
        terminalreporter.write_line("\n".join(tail))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _made_folder is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_made_folder, ignore_errors=True)  # printed already where a worker crashed
        os.environ.pop(LOG_FOLDER_VARIABLE, None)
