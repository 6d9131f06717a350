"""The memory sweep measures what it claims (the crossover driver: tests/test_protocol.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.driver_helpers import driver_env

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = driver_env()
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_memory_sweep_separates_linear_flat_and_quadratic(tmp_path):
    out = tmp_path / "mem"
    done = _run(
        "memory_scaling.py",
        "--variants=lstm,lstm:tbptt=128,attention:method=naive",
        "--lengths=512,1024,2048",
        f"--out={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["variant"], r["length"]): r for r in results["rows"]}

    def growth(variant: str, key: str = "train_bytes") -> float:
        first, mid, last = (rows[(variant, n)][key] for n in (512, 1024, 2048))
        return (last - mid) / (mid - first)

    # Doubling L doubles the length-dependent part for full BPTT (p = 1) and more than triples it for
    # materialised attention (p = 2 in the limit; the linear terms still count at 2k).
    assert 1.7 < growth("lstm") < 2.3
    assert growth("attention:method=naive") > 3.0
    # Truncated BPTT over 128-token chunks: train memory does not grow with L beyond the batch itself.
    tbptt = [rows[("lstm:tbptt=128", n)]["train_bytes"] for n in (512, 1024, 2048)]
    inputs_growth = (2048 - 512) * 17  # int32 inputs + targets, f32 weights, bool resets + mask per token
    assert tbptt[-1] - tbptt[0] < inputs_growth + 0.02 * tbptt[0]
    # Generation state: constant for the LSTM, a KV cache growing with L for attention.
    assert len({rows[("lstm", n)]["state_bytes"] for n in (512, 1024, 2048)}) == 1
    att_state = [rows[("attention:method=naive", n)]["state_bytes"] for n in (512, 1024, 2048)]
    assert att_state[2] - att_state[1] == 2 * (att_state[1] - att_state[0]) > 0  # plus position counters
    text = out.with_suffix(".md").read_text()
    assert "| lstm:tbptt=128 | flat |" in text
    assert (tmp_path / "mem_memory.png").stat().st_size > 1000  # the plan's figure, beside its table


def test_memory_sweep_refuses_a_bad_variant(tmp_path):
    done = _run("memory_scaling.py", "--variants=lstm:unroll=4", "--lengths=256", f"--out={tmp_path / 'x'}")
    assert done.returncode != 0
    assert "overrides are key=value with key in ('tbptt', 'method')" in done.stderr
