"""`scripts/benchmark.py` builds every workload it offers: each issue-22 family's implementations (the
training form, the token-scan method, the `step` loop) construct their cells from the script's flags and
trace to a gradient. Tracing, not timing: the tables themselves are the script's output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.driver_helpers import ROOT, driver_env

PROGRAM = """
import sys
import jax
sys.path.insert(0, "scripts")
import benchmark
# heads x head_dim (32) differs from --hidden (16): a cell that needs one of them in the other's place fails
benchmark.FLAGS(["benchmark", "--batch=2", "--hidden=16", "--heads=4", "--head_dim=8"])
for family in benchmark.RECENT_FAMILIES:
    impls = benchmark.recent_implementations(family)
    assert impls[-1].name.startswith("lax.scan over"), (family, [i.name for i in impls])
    for impl in impls:
        loss, args = impl.build(16)
        grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1)), *args)
        assert jax.tree.structure(grads[0]) == jax.tree.structure(args[0]), impl.name
    print(family, len(impls))
"""


@pytest.mark.slow
def test_every_issue_22_family_builds_its_workloads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    built = dict(line.split() for line in done.stdout.splitlines())
    assert set(built) == {
        "deltanet",
        "gated_deltanet",
        "mamba2",
        "rglru",
        "mlstm",
        "slstm",
        "gla_channel",
        "rwkv7",
    }
    # the training form, the token-scan method (not sLSTM's: it has only its scan), SegmentRemat, step
    assert built["slstm"] == "3" and built["mlstm"] == "4"


@pytest.mark.slow
def test_projection_bound_writes_its_table(tmp_path) -> None:
    """`benchmarks/projection_bound.py` at a tiny size: one row per cell, the bound (step loop over the
    dense layers alone) beside the measured ratio."""
    out = tmp_path / "bound.md"
    command = [sys.executable, "benchmarks/projection_bound.py", "--cells=gla,deltanet", "--length=32"]
    command += ["--batch=2", "--hidden=64", "--heads=2", "--head_dim=32", "--repeats=1", f"--out={out}"]
    done = subprocess.run(command, cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == ["GatedLinearAttention", "DeltaNet"], rows
    for row in rows[1:]:
        chunked, step_loop, dense, gflop, ratio, bound = (float(x) for x in row[1:])
        assert min(chunked, step_loop, dense) > 0 and gflop >= 0  # (GFLOP to one decimal: 0.0 here)
        # the ratios come from the unrounded times: equal to the table's up to its rounding (0.00005 s)
        for value, numerator, denominator in ((ratio, step_loop, chunked), (bound, step_loop, dense)):
            low = (numerator - 5e-5) / (denominator + 5e-5) - 0.005
            high = (numerator + 5e-5) / (denominator - 5e-5) + 0.005
            assert low <= value <= high, (row, value, low, high)
