"""The suite's own harness (tests/worker_crashes.py and scripts/test.sh's rerun options): a worker that
dies by a real segfault is named with its stacks in the summary, its test runs once more (and passes
when the crash does not recur), and an ordinary failure is not rerun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.driver_helpers import ROOT

TESTS = """
import ctypes
import os
from pathlib import Path

def test_crashes_once():
    marker = Path(os.environ["CRASH_MARKER"])
    if not marker.exists():
        marker.write_text("crashed")
        ctypes.string_at(0)  # a real SIGSEGV in native code, as XLA's would be

def test_fails():
    assert 1 == 2, "an ordinary failure"

def test_passes():
    assert True
"""


@pytest.mark.slow
def test_a_crashed_worker_is_explained_and_rerun_once_and_failures_are_not(tmp_path: Path) -> None:
    (tmp_path / "test_cases.py").write_text(TESTS)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.worker_crashes"]\n')
    env = {
        **{k: v for k, v in os.environ.items() if k != "SEQJAX_WORKER_LOGS"},
        "PYTHONPATH": str(ROOT),
        "CRASH_MARKER": str(tmp_path / "crashed"),
    }
    command = [sys.executable, "-m", "pytest", "-n", "1", "-p", "no:cacheprovider", "-rA"]
    command += ["--reruns=1", "--rerun-except=.", str(tmp_path / "test_cases.py")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # the ordinary failure fails the run
    assert "1 failed, 2 passed, 1 rerun" in out, out
    assert "replacing crashed worker gw0" in out and "PASSED test_cases.py::test_crashes_once" in out, out
    assert "FAILED test_cases.py::test_fails" in out  # and the one rerun was the crash's
    # the summary names the dead worker, the test it had started and where it faulted
    assert "worker gw0: the end of its log" in out, out
    assert "start test_cases.py::test_crashes_once (rss " in out, out
    assert "Fatal Python error: Segmentation fault" in out and 'test_cases.py", line 10' in out, out
