"""Issue 19 §4: latency and throughput by length and batch (`seqjax.experiment.latency`): the interleaved
timing, the paired bootstrap over rounds, the crossovers and the verdict rules on synthetic timings, and
`experiments/latency.py` end to end (smoke)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from seqjax.experiment import latency as lat
from tests.driver_helpers import rule_class, rule_verdict, run_driver


def _noisy(median_s: float, rounds: int = 15, seed: int = 0, spread: float = 0.03) -> np.ndarray:
    """Timings around `median_s` with a few slow outliers (a shared machine)."""
    rng = np.random.default_rng(seed)
    t = median_s * (1 + spread * rng.standard_normal(rounds))
    t[:2] *= 3.0  # load spikes
    return np.abs(t)


def test_interleaved_times_rotates_the_order_and_times_every_call():
    order: list[str] = []
    ticks = itertools.count()
    calls = {k: (lambda k=k: order.append(k)) for k in "abc"}
    times = lat.interleaved_times(calls, 3, clock=lambda: float(next(ticks)))
    assert order == list("abcbcacab")
    assert all(np.array_equal(t, [1.0, 1.0, 1.0]) for t in times.values())  # one tick per call


def test_paired_interval_pairs_rounds():
    # Round-to-round load moves both peers alike: the ratio is exactly 2 in every round, so the paired
    # interval is a point, although each peer's own times vary by a factor of 10.
    load = np.geomspace(1.0, 10.0, 12)
    r = lat.paired_interval({"a": 2 * load, "b": load}, lambda m: m["a"] / m["b"], n_resamples=300)
    assert r["estimate"] == pytest.approx(2.0) and r["low"] == pytest.approx(2.0) == r["high"]
    with pytest.raises(ValueError, match="same number of rounds"):
        lat.paired_interval({"a": [1.0, 2.0], "b": [1.0]}, lambda m: m["a"] / m["b"])


def test_summary_is_median_and_quartiles():
    s = lat.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["repeats"]) == (3.0, 2.0, 4.0, 5)


def test_crossovers_interpolate_on_log_axes():
    assert lat.crossovers({64: 0.5, 256: 2.0}) == [128.0]  # halfway in log L between 64 and 256
    assert lat.crossovers({32: 0.5, 64: 2.0, 128: 0.5}) == [45.3, 90.5]  # it crosses back
    assert lat.crossovers({32: 2.0, 64: 3.0}) == []
    assert lat.crossovers({32: 1.0, 64: 3.0}) == [32.0]


def test_claim_verdict_against_a_threshold():
    below = {"low": 0.8, "high": 1.2}
    above = {"low": 1.3, "high": 1.6}
    straddles = {"low": 1.1, "high": 1.4}
    assert lat.claim_verdict("less", {32: below, 64: below}, 1.25)[0] == "supported"
    assert lat.claim_verdict("less", {32: above, 64: above}, 1.25)[0] == "contradicted"
    assert lat.claim_verdict("less", {32: below, 64: above}, 1.25)[0] == "depends"
    label, classes = lat.claim_verdict("less", {32: below, 64: straddles}, 1.25)
    assert label == "inconclusive" and classes == {32: "claimed", 64: "neither"}
    assert lat.claim_verdict("greater", {}, 1.0) == ("not evaluated", {})


def _synthetic(rnn_ms: dict[int, float], attention_ms: dict[int, float]) -> dict[int, dict[str, np.ndarray]]:
    return {
        length: {
            "lstm": _noisy(1e-3 * rnn_ms[length], seed=length),
            "attention": _noisy(1e-3 * ms, seed=length + 1),
        }
        for length, ms in attention_ms.items()
    }


def test_rules_on_synthetic_timings_follow_the_claim():
    # The claim's world: the LSTM is faster below 100 tokens, attention from 100 to 1k; attention's batch
    # of 32 costs 1.2x one sequence, the LSTM's 8x (it gains less from batching).
    prefill = _synthetic(
        {32: 1.0, 64: 1.5, 100: 3.0, 256: 8.0, 1024: 30.0}, {32: 2.0, 64: 2.2, 100: 2.0, 256: 3.0, 1024: 9.0}
    )
    throughput = {
        "lstm": {b: _noisy(1e-3 * f, seed=b) for b, f in ((1, 8.0), (8, 20.0), (32, 64.0), (128, 250.0))},
        "attention": {
            b: _noisy(1e-3 * f, seed=b + 7) for b, f in ((1, 3.0), (8, 3.3), (32, 3.6), (128, 9.0))
        },
    }
    verdicts = lat.rule_verdicts(prefill, throughput, 256, n_resamples=500)
    assert {k: v["verdict"] for k, v in verdicts.items()} == {
        "a": "supported",
        "b": "supported",
        "c": "supported",
        "d": "supported",
    }
    assert verdicts["a"]["faster"] == "supported"
    assert sorted(verdicts["a"]["intervals"]) == ["32", "64"]
    assert sorted(verdicts["b"]["intervals"], key=int) == ["100", "256", "1024"]
    assert sorted(verdicts["d"]["intervals"], key=int) == ["8", "32", "128"]
    # The opposite world: every ratio on the other side.
    prefill = _synthetic(
        {32: 4.0, 64: 4.0, 100: 1.0, 256: 1.0, 1024: 1.0}, {32: 1.0, 64: 1.0, 100: 3.0, 256: 5.0, 1024: 9.0}
    )
    throughput = {
        "lstm": {b: _noisy(1e-3 * f, seed=b) for b, f in ((1, 8.0), (32, 9.0))},
        "attention": {b: _noisy(1e-3 * f, seed=b + 7) for b, f in ((1, 1.0), (32, 30.0))},
    }
    verdicts = lat.rule_verdicts(prefill, throughput, 256, n_resamples=500)
    assert {k: v["verdict"] for k, v in verdicts.items()} == {
        "a": "contradicted",
        "b": "contradicted",
        "c": "contradicted",
        "d": "contradicted",
    }
    # Rules (c) and (d) are about L = 256: at another throughput length they are not evaluated.
    other = lat.rule_verdicts(prefill, throughput, 128, n_resamples=100)
    assert other["c"]["verdict"] == other["d"]["verdict"] == "not evaluated"


def test_analyse_reports_ratios_gains_and_crossovers():
    prefill = _synthetic({32: 1.0, 256: 4.0, 1024: 16.0}, {32: 2.0, 256: 2.0, 1024: 2.0})
    throughput = {
        "lstm": {1: _noisy(1e-3), 8: _noisy(4e-3, seed=3)},
        "attention": {1: _noisy(1e-3), 8: _noisy(2e-3, seed=4)},
    }
    decode = {64: {"lstm": _noisy(1e-4), "attention": _noisy(2e-4, seed=2)}}
    out = lat.analyse(prefill, throughput, 256, decode, n_resamples=200)
    ratio = out["prefill_ratios"]["attention"]["lstm"]
    assert ratio["32"]["estimate"] == pytest.approx(0.5, rel=0.05)
    assert out["crossovers"]["attention"]["lstm"] == [pytest.approx(90.5, rel=0.05)]  # 0.5 -> 2 over 32..256
    gain = out["throughput"]["lstm"]["8"]["gain"]
    assert gain["estimate"] == pytest.approx(2.0, rel=0.05) and gain["low"] <= 2.0 * 1.05
    assert out["throughput"]["attention"]["8"]["tokens_per_s"] == pytest.approx(8 * 256 / 2e-3, rel=0.05)
    assert out["decode"]["64"]["lstm"]["ratio_to_attention"]["estimate"] == pytest.approx(0.5, rel=0.05)
    assert set(out["verdicts"]) == set(lat.RULES)


@pytest.mark.slow
def test_latency_smoke_run(tmp_path):
    results = run_driver("latency.py", tmp_path, "--size=smoke")
    assert results["presets"] == ["lstm", "attention"]
    assert set(results["prefill"]) == {"32", "128"}
    for length, rows in results["prefill"].items():
        for name, s in rows.items():
            assert s["q1"] <= s["median"] <= s["q3"] and s["repeats"] == 5, (length, name)
    assert set(results["throughput"]["lstm"]) == {"1", "8"} and "gain" in results["throughput"]["lstm"]["8"]
    assert set(results["decode"]["16"]) == {"lstm", "attention"}
    # timings on a shared machine: the verdicts are chance, but each must be the rule's over the ratio
    # intervals it records, LSTM / attention at batch 1: (a) below 1.25 at L < 100, (b) above 1 at L in
    # [100, 1024]; each ratio's estimate is the ratio of the two prefill medians
    verdicts = results["verdicts"]
    for rule, direction, threshold, lengths in (("a", "less", 1.25, ["32"]), ("b", "greater", 1.0, ["128"])):
        intervals = verdicts[rule]["intervals"]
        assert list(intervals) == lengths
        classes = {
            k: rule_class(direction, i["low"], i["high"], threshold=threshold) for k, i in intervals.items()
        }
        assert verdicts[rule]["classes"] == classes
        assert verdicts[rule]["verdict"] == rule_verdict(classes.values())
        for length, i in intervals.items():
            medians = results["prefill"][length]
            assert i["estimate"] == pytest.approx(medians["lstm"]["median"] / medians["attention"]["median"])
    faster = [
        rule_class("less", i["low"], i["high"], threshold=1.0) for i in verdicts["a"]["intervals"].values()
    ]
    assert verdicts["a"]["faster"] == rule_verdict(faster)
    assert verdicts["c"]["verdict"] == "not evaluated"  # smoke's throughput length is 32
    text = (tmp_path / "out.md").read_text()
    assert "## Verdicts" in text and "shared with other jobs" in text and "| LSTM |" in text
    assert (tmp_path / "out.png").stat().st_size > 1000
