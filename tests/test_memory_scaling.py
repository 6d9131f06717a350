"""The measured mode of experiments/memory_scaling.py (issue 18, section 4): the exponent fit with its
interval, the O(n²) verdict rule, and a smoke run of the fresh-process sweep (the plan mode:
tests/test_experiments.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqjax.experiment.scaling import (
    ExponentFit,
    doubling_increments,
    fit_exponent,
    fit_increment_exponent,
    memory_exponent,
    quadratic_memory_verdict,
)
from tests.driver_helpers import driver_env, load_driver

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768]


def _noisy(values: list[float], seed: int, scale: float = 0.03) -> list[float]:
    """Multiplicative noise of a few percent, as repeated memory or time measurements have."""
    rng = np.random.default_rng(seed)
    return [v * math.exp(rng.normal(0.0, scale)) for v in values]


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_fit_recovers_the_exponent_and_its_interval_covers_it(power):
    covered = 0
    for seed in range(400):
        fit = fit_exponent(LENGTHS, _noisy([3e4 * n**power for n in LENGTHS], seed))
        assert abs(fit.slope - power) < 0.1
        assert fit.high - fit.low < 0.3
        assert fit.n_points == len(LENGTHS)
        covered += fit.low < power < fit.high
    # A 95% interval: about 380 of 400 (binomial sd 4.4) cover the exponent the data were made with.
    assert 0.92 < covered / 400 < 0.98


def test_fit_matches_scipy_linregress():
    from scipy import stats

    values = _noisy([n**1.3 for n in LENGTHS], seed=3, scale=0.1)
    fit = fit_exponent(LENGTHS, values)
    reference = stats.linregress(np.log(LENGTHS), np.log(values))
    half = stats.t.ppf(0.975, len(LENGTHS) - 2) * reference.stderr
    assert fit.slope == pytest.approx(reference.slope)
    assert (fit.low, fit.high) == pytest.approx((reference.slope - half, reference.slope + half))


def test_increments_cancel_a_constant_part():
    quadratic = [2e9 + 40.0 * n**2 for n in LENGTHS]  # a large constant: the direct slope understates p
    assert fit_exponent(LENGTHS, quadratic).slope < 1.5
    fit = fit_increment_exponent(LENGTHS, _noisy(quadratic, seed=1, scale=0.002))
    assert fit.low < 2.0 < fit.high and fit.low > 1.5
    linear = fit_increment_exponent(LENGTHS, [2e8 + 2e4 * n for n in LENGTHS])
    assert linear.slope == pytest.approx(1.0)
    assert doubling_increments([4, 1, 2], [7.0, 1.0, 2.0]) == ([1, 2], [1.0, 5.0])


def test_too_few_points_and_non_positive_values_have_no_interval():
    two = fit_exponent([1024, 2048], [1.0, 4.0])
    assert two.slope == pytest.approx(2.0) and not two.has_interval
    assert quadratic_memory_verdict(two) == "inconclusive"
    dropped = fit_exponent([1024, 2048, 4096, 8192], [-1.0, 0.0, 4.0, 16.0])
    assert dropped.n_points == 2
    assert math.isnan(fit_exponent([1024], [1.0]).slope)
    assert fit_exponent([1024], [1.0]).describe() == "n/a"
    with pytest.raises(ValueError, match="lengths must be positive"):
        fit_exponent([0, 1024], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        fit_exponent([1, 2, 4], [1.0, 2.0, 4.0], confidence=1.5)


def test_quadratic_memory_verdict_rule():
    def fit(low: float, high: float) -> ExponentFit:
        return ExponentFit((low + high) / 2, low, high, 0.0, 5, 0.95)

    assert quadratic_memory_verdict(fit(1.8, 2.1)) == "supported"
    assert quadratic_memory_verdict(fit(0.9, 1.1)) == "contradicted"
    assert quadratic_memory_verdict(fit(1.2, 1.8)) == "inconclusive"
    assert quadratic_memory_verdict(fit(1.5, 2.0)) == "inconclusive"  # an end point on 1.5 touches it
    quadratic = fit_exponent(LENGTHS, _noisy([n**2 for n in LENGTHS], seed=0))
    linear = fit_exponent(LENGTHS, _noisy([n for n in LENGTHS], seed=0))
    assert quadratic_memory_verdict(quadratic) == "supported"
    assert quadratic_memory_verdict(linear) == "contradicted"


def test_memory_exponent_falls_back_to_log_m_only_for_a_flat_memory():
    quadratic = _noisy([2e9 + 40.0 * n**2 for n in LENGTHS], seed=2, scale=0.002)
    fit, which = memory_exponent(LENGTHS, quadratic)
    assert which == "increments" and quadratic_memory_verdict(fit) == "supported"
    linear = _noisy([3e8 + 2e4 * n for n in LENGTHS], seed=2, scale=0.002)
    fit, which = memory_exponent(LENGTHS, linear)
    assert which == "increments" and quadratic_memory_verdict(fit) == "contradicted"
    flat = [1.6e8, 1.58e8, 1.61e8, 1.59e8, 1.6e8, 1.62e8]  # TBPTT: the increments are noise
    fit, which = memory_exponent(LENGTHS, flat)
    assert which == "log M" and abs(fit.slope) < 0.05
    assert quadratic_memory_verdict(fit) == "contradicted"


def _measured_sweep(out, *flags: str, timeout: int) -> dict:
    """Runs the driver's measured mode with `flags` into `out`; returns its JSON (exit 0 asserted)."""
    env = driver_env(PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "experiments" / "memory_scaling.py"), "--measure=run", *flags]
    done = subprocess.run(
        [*command, f"--out={out}"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
def test_measured_sweep_runs_each_point_in_a_fresh_process_and_stops_at_a_failure(tmp_path):
    """Two variants at two short lengths; the second variant's first point crashes on purpose, so its
    second point is skipped, and the crash is a recorded row with its reason."""
    out = tmp_path / "measured"
    results = _measured_sweep(
        out,
        "--variants=gla,lstm:tbptt=64",
        "--lengths=64,128",
        "--warmup_steps=1",
        "--timed_steps=2",
        "--inject_failure=lstm:tbptt=64@64",
        timeout=300,
    )
    assert results["measure"] == ["run"]
    runs = {(r["variant"], r["length"]): r["run"] for r in results["rows"]}
    assert set(runs) == {("gla", 64), ("gla", 128), ("lstm:tbptt=64", 64), ("lstm:tbptt=64", 128)}
    ok = [runs[("gla", 64)], runs[("gla", 128)]]
    for row in ok:
        assert row["status"] == "ok", row
        for key in (
            "pid",
            "baseline_rss_bytes",
            "rss_before_steps_bytes",
            "process_peak_rss_bytes",
            "peak_bytes",
            "peak_source",
            "compile_s",
            "step_s",
            "step_times_s",
            "plan_bytes",
            "worker_wall_s",
        ):
            assert row.get(key) is not None, (key, row)
        assert len(row["step_times_s"]) == 2 and row["step_s"] > 0
        assert row["peak_bytes"] > 0 and row["process_peak_rss_bytes"] >= row["baseline_rss_bytes"]
        assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
    # A fresh interpreter per point, none of them the driver itself.
    pids = {row["pid"] for row in ok}
    assert len(pids) == 2 and os.getpid() not in pids
    crashed, skipped = runs[("lstm:tbptt=64", 64)], runs[("lstm:tbptt=64", 128)]
    assert crashed["status"] == "failed"
    assert "exit status" in crashed["reason"] and "--inject_failure" in crashed["reason"]
    assert skipped["status"] == "skipped"
    text = out.with_suffix(".md").read_text()
    assert "## Measured: peak memory of the train step" in text
    assert "| lstm:tbptt=64 | n/a | failed | skipped |" in text
    assert "lstm:tbptt=64 at L=64: failed" in text
    figures = [tmp_path / "measured_memory.png", tmp_path / "measured_time.png"]
    assert [f.stat().st_size > 1000 for f in figures] == [True, True]
    # --replot draws them again from the JSON alone, measuring nothing.
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "memory_scaling.py"),
            f"--replot={out}.json",
            f"--out={tmp_path / 'again'}",
        ],
        env=driver_env(PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "again_time.png").stat().st_size > 1000


@pytest.mark.slow
def test_measured_sweep_records_a_point_past_its_time_limit(tmp_path):
    out = tmp_path / "timeout"
    results = _measured_sweep(out, "--variants=gla", "--lengths=64,128", "--point_timeout_s=0.5", timeout=120)
    runs = [r["run"] for r in results["rows"]]
    assert [r["status"] for r in runs] == ["timed out", "skipped"]
    assert "--point_timeout_s=0.5" in runs[0]["reason"]
    assert "| gla | n/a | timed out | skipped |" in out.with_suffix(".md").read_text()
    assert (tmp_path / "timeout_memory.png").stat().st_size > 1000  # drawn with no point that ran


def _small_results() -> dict:
    """A result JSON of both modes, as the driver writes it: a variant linear in L, and one quadratic
    whose plan stops compiling past 2k (`--max_gib`) and whose 4k point did not fit (8k skipped)."""
    rows = []
    for variant, power in (("lstm", 1), ("attention:method=naive", 2)):
        stopped = False
        for n in (1024, 2048, 4096, 8192):
            row = {"variant": variant, "length": n}
            if power == 2 and n > 2048:
                row["skipped"] = "skipped"
            else:
                row.update(
                    train_bytes=2**24 + 2**12 * n**power // 1024 ** (power - 1),
                    state_bytes=1024,
                    param_count=10,
                )
            if stopped:
                run = {"status": "skipped", "reason": "a shorter length did not run"}
            elif power == 2 and n == 4096:
                run, stopped = {"status": "did not fit", "reason": "2 × XLA's plan > the limit"}, True
            else:
                run = {
                    "status": "ok",
                    "peak_bytes": 2**27 + 2**14 * n**power // 1024 ** (power - 1),
                    "step_s": 1e-5 * n**power,
                    "compile_s": 2.0,
                    "device_kind": "cpu",
                    "peak_source": "peak RSS of the steps − baseline RSS",
                }
            row["run"] = {"variant": variant, "length": n, **run}
            rows.append(row)
    return {
        "date": "2026-12-06 00:00 UTC",
        "jax": "0.0",
        "platform": "cpu",
        "command": "python experiments/memory_scaling.py --measure=plan,run",
        "size": "cpu",
        "batch": 1,
        "measure": ["plan", "run"],
        "variants": ["lstm", "attention:method=naive"],
        "rows": rows,
        "warmup_steps": 1,
        "timed_steps": 2,
    }


def test_figures_are_redrawn_from_a_result_json(tmp_path):
    import matplotlib.pyplot as plt

    driver = load_driver("memory_scaling.py")
    results = _small_results()
    path = tmp_path / "small.json"
    path.write_text(json.dumps(results))
    written = driver.plot_results(path)
    assert sorted(p.name for p in written) == ["small_memory.png", "small_plan.png", "small_time.png"]
    assert all(p.parent == tmp_path and p.stat().st_size > 1000 for p in written)
    # A plan-only JSON (the committed one has no "measure": plan by default): one figure, _memory.png.
    del results["measure"]
    path.write_text(json.dumps(results))
    assert [p.name for p in driver.plot_results(path, tmp_path / "plan")] == ["plan_memory.png"]

    fig = driver.plan_figure(results)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("lstm: 1.00") and "(L ≥ 4k not compiled)" in labels[1]
    plt.close(fig)
    fig = driver.measured_figure(results, "peak_bytes")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1].startswith("attention:method=naive, did not fit at 4k")
    assert labels[-1] == "did not run to the end (✕ at the top)"
    assert "did not fit" in [t.get_text() for t in ax.texts]
    title = " ".join(ax.get_title().split())  # unwrapped
    assert "platform cpu" in title and "Measured peak memory" in title
    plt.close(fig)
    with pytest.raises(ValueError, match="key must be"):
        driver.measured_figure(results, "compile_s")
