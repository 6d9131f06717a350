"""Running an experiment driver (`experiments/*.py`) end to end from a test, as a user would: a fresh
process on the CPU, its runs and outputs under the test's folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
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


# ----------------------------------------------------------------------------------------------------
# The verdict rule, restated: a driver's smoke run trains tiny models whose verdict is random, but the
# verdict it records must still follow from the intervals it records. These restate the rule of
# `seqjax.experiment.verdict`'s docstring instead of importing it, so that a driver that judges with the
# wrong direction, the wrong ends or the wrong keys fails here rather than agreeing with itself.

#: The fewest resampled clusters whose interval is judged (`seqjax.experiment.verdict`'s docstring).
MIN_CLUSTERS = 10


def rule_class(
    direction: str, low: float, high: float, *, threshold: float = 0.0, n_clusters: int | None = None
) -> str:
    """The class of the interval (low, high): "claimed" when it lies strictly on the claimed side of
    `threshold` ("greater": above it, "less": below it), "opposite" on the other side, "neither" when it
    touches or contains it, or whatever its ends when it resampled fewer than `MIN_CLUSTERS` clusters."""
    assert direction in ("greater", "less"), direction
    assert low <= high, (low, high)
    if n_clusters is not None and n_clusters < MIN_CLUSTERS:
        return "neither"
    if low > threshold:
        side = "greater"
    elif high < threshold:
        side = "less"
    else:
        return "neither"
    return "claimed" if side == direction else "opposite"


def rule_verdict(classes: Iterable[str]) -> str:
    """The verdict over the keys' classes: depends, supported, contradicted or inconclusive."""
    classes = set(classes)
    assert classes, "no keys to judge"
    if {"claimed", "opposite"} <= classes:
        return "depends"
    if classes == {"claimed"}:
        return "supported"
    if classes == {"opposite"}:
        return "contradicted"
    return "inconclusive"


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, by the textbook step-down loop."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def assert_judged_by_rule(
    judged: Mapping[str, Any], differences: Mapping[Any, Mapping[str, Any]], *, direction: str
) -> None:
    """`judged` (a `report.judge` record: verdict, per_key {key: class, holm_p}) is the rule applied to
    `differences` ({key: {low, high, p_value, n_clusters}}): the same keys, each key's class from its own
    interval, the verdict from the classes and the Holm-adjusted p-values of the keys' p-values."""
    assert judged.get("direction", direction) == direction, (judged.get("direction"), direction)
    keys = [str(k) for k in differences]
    assert list(judged["per_key"]) == keys, (list(judged["per_key"]), keys)
    expected = {
        str(k): rule_class(direction, d["low"], d["high"], n_clusters=d.get("n_clusters"))
        for k, d in differences.items()
    }
    assert {k: v["class"] for k, v in judged["per_key"].items()} == expected, (judged["per_key"], differences)
    assert judged["verdict"] == rule_verdict(expected.values()), (judged["verdict"], expected)
    adjusted = holm([d["p_value"] for d in differences.values()])
    for key, p in zip(keys, adjusted, strict=True):
        assert abs(judged["per_key"][key]["holm_p"] - p) <= 1e-9, (key, judged["per_key"][key], p)


def assert_claim_follows_summaries(
    judged: Mapping[str, Any],
    summaries: list[Mapping[str, Any]],
    claim_from: int,
    *,
    families: tuple[str, str] = ("recurrent", "attention"),
) -> None:
    """A length sweep's verdict (`sweep.claim_verdict`) is the rule applied to the claim's paired
    differences at the lengths >= `claim_from` (every length when none is that long), in the
    direction the summaries' metric sets (larger is better: "greater"); each difference pairs the best
    model of each of the claim's `families` (chosen on validation) and its estimate is their rows'
    difference."""
    for s in summaries:
        rows = {r["model"]: r for r in s["models"]}
        for c in s["comparisons"]:
            if c["claim"] != judged["claim"] or "missing" in c:
                continue
            best = s["best_by_family"]
            assert (c["better"], c["worse"]) == (best[families[0]], best[families[1]]), (c, best)
            expected = rows[c["better"]]["estimate"] - rows[c["worse"]]["estimate"]
            assert abs(c["estimate"] - expected) <= 1e-9 * max(1.0, abs(expected)), (c, expected)
    covered = [s for s in summaries if s["length"] >= claim_from] or list(summaries)
    differences = {
        s["length"]: c
        for s in covered
        for c in s["comparisons"]
        if c["claim"] == judged["claim"] and "missing" not in c
    }
    assert differences, "no paired difference to judge"
    direction = "greater" if summaries[0]["larger_is_better"] else "less"
    assert_judged_by_rule(judged, differences, direction=direction)
