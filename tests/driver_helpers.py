"""Running an experiment driver (`experiments/*.py`) end to end from a test, as a user would: a fresh
process on the CPU, its runs and outputs under the test's folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from absl import flags

ROOT = Path(__file__).resolve().parents[1]

#: XLA at -O0 without LLVM's expensive passes, and with the CPU backend's classic elemental emitters
#: instead of its MLIR fusion emitters: the suite checks algorithms and wiring, not XLA's codegen. -O0
#: compiles ~30% faster; the classic emitters compile the cells' gradient programs 3-4x faster again
#: (13.0 s -> 3.8 s for the contract's 8 largest, same values to float32 rounding). Tests of a compiled
#: program's own memory plan compile it with XLA's defaults (conftest.py's `compile_as_users_do`).
FAST_COMPILE_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)


def driver_env(*, optimised: bool = False, **extra: str) -> dict[str, str]:
    """The environment of a driver run from a test: the CPU platform, one device (not the suite's 8 fake
    devices), `FAST_COMPILE_FLAGS` unless `optimised` (XLA's defaults: for a driver whose time goes to
    running few programs many times rather than to compiling many), and `extra`."""
    xla_flags = "" if optimised else FAST_COMPILE_FLAGS
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags, **extra}


def run_driver(script: str, folder: Path, *args: str, timeout: int = 900) -> dict[str, Any]:
    """Runs `experiments/<script>` with `args`, `--workdir=<folder>/runs` and `--out=<folder>/out` on
    the CPU (`driver_env`); asserts it exits 0 and returns `<folder>/out.json`.

        >>> results = run_driver("lookback.py", tmp_path, "--size=smoke")  # doctest: +SKIP
    """
    env = driver_env()
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


def load_driver(script: str) -> ModuleType:
    """Imports `experiments/<script>` as a module for its helpers, then takes its flags out of
    `absl.flags.FLAGS` again: drivers define their flags at import (absl's way), and two drivers loaded
    into one test process (or one driver loaded twice) would otherwise define `--train_tokens` twice.
    The module's own code that reads `FLAGS` is not for these tests.

        >>> dna = load_driver("dna_windows.py")  # doctest: +SKIP
    """
    name = f"driver_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (a dataclass with string annotations looks its module up there)
    before = set(flags.FLAGS)
    try:
        spec.loader.exec_module(module)
    finally:
        for added in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, added)
    return module
