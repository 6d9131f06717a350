"""Running an experiment driver (`experiments/*.py`) end to end from a test, as a user would: a fresh
process on the CPU, its runs and outputs under the test's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_driver(script: str, folder: Path, *args: str, timeout: int = 900) -> dict[str, Any]:
    """Runs `experiments/<script>` with `args`, `--workdir=<folder>/runs` and `--out=<folder>/out` on
    the CPU (without the suite's XLA flags); asserts it exits 0 and returns `<folder>/out.json`.

        >>> results = run_driver("lookback.py", tmp_path, "--size=smoke")  # doctest: +SKIP
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [
        sys.executable,
        str(ROOT / "experiments" / script),
        *args,
        f"--workdir={folder / 'runs'}",
        f"--out={folder / 'out'}",
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())
