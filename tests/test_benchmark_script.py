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
    dense = [i for i in impls if i.name == benchmark.DENSE_LAYERS_ROW]
    assert len(dense) == (family not in ("slstm", "rglru")), family
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
    # the training form, the token-scan method (not sLSTM's: it has only its scan), SegmentRemat, the dense
    # layers alone (not sLSTM's or RG-LRU's: no chunked form to bound), step
    assert built["slstm"] == "3" and built["mlstm"] == "5" and built["rglru"] == "3"
