"""experiments/context_use.py (issue 18 §1, §5) end to end at smoke size on the embedded document sample:
trains two variants on the protocol, scores the test documents by position (carried and reset), writes
the table, JSON, plots and the truncation cost, and reads its cached evaluations back on a rerun."""

from __future__ import annotations

import math

import pytest

from tests.driver_helpers import run_driver


@pytest.mark.slow
def test_context_use_smoke_run(tmp_path):
    results = run_driver(
        "context_use.py",
        tmp_path,
        "--size=smoke",
        "--variants=lstm@64,lstm@32:segment_recurrence=True",
        "--options=corpus=python_docs",  # the embedded sample: 2 test documents
        "--tokens_per_batch=512",
        "--position_buckets=0,64,128,256",
        "--contrast=128,0",
        "--claim_bucket=128",
        "--min_document_bytes=256",
        "--max_document_tokens=512",
        "--resamples=200",
        "--nostep_memory",
    )
    assert results["documents"]["qualifying"] == results["documents"]["total"] == 2
    plain, recurrent = results["variants"]["lstm@64"], results["variants"]["lstm@32:segment_recurrence=True"]
    assert list(plain["modes"]) == ["reset"] and list(recurrent["modes"]) == ["carried", "reset"]
    assert plain["batch_size"] == 8 and recurrent["batch_size"] == 16  # equal tokens per batch
    assert plain["train_tokens"] == recurrent["train_tokens"] == 1024
    assert abs(plain["parameters"] / recurrent["parameters"] - 1) <= 0.05
    for row in (plain, recurrent):
        assert row["seeds"] == 2
        for curve in row["modes"].values():
            assert [b["label"] for b in curve["buckets"]] == ["0-64", "64-128", "128-256", "256+"]
            for b in curve["buckets"]:
                assert (
                    b["bits_per_byte"]["low"] <= b["bits_per_byte"]["estimate"] <= b["bits_per_byte"]["high"]
                )
            assert curve["contrast"]["late"] == "128-256" and curve["verdict"] in (
                "supported",
                "contradicted",
                "inconclusive",
            )
    # rule 2 needs an attention variant; rule 3 compares the segment-recurrent lstm with the full one
    assert results["rule2"]["verdict"] == "inconclusive" and "attention" in results["rule2"]["note"]
    cost = results["truncation"]["lstm@32:segment_recurrence=True"]
    assert cost["full"] == "lstm@64" and cost["mode"] == "carried" and len(cost["buckets"]) == 4
    assert all(math.isfinite(b["low"]) for b in cost["buckets"])
    assert {b["class"] for b in cost["buckets"]} <= {"costs", "helps", "no measurable cost"}
    # the n-gram control, scored by position on the same documents and spans as the models
    assert list(results["baselines"]) == ["3-gram Kneser–Ney", "5-gram Kneser–Ney"]
    for curve in results["baselines"].values():
        reached = [b["documents"] for b in curve["buckets"]]
        assert reached == [b["documents"] for b in plain["modes"]["reset"]["buckets"]]
        assert (
            curve["buckets"][0]["bits_per_byte"]["estimate"]
            < plain["modes"]["reset"]["buckets"][0]["bits_per_byte"]["estimate"]
        )  # 2 training steps: the n-gram model is far ahead
    text = (tmp_path / "out.md").read_text()
    assert "| 5-gram Kneser–Ney (baseline) |" in text
    assert "**2 of 2** have at least 256 scored bytes" in text and "## (3) What truncation costs" in text
    for suffix in ("_bpb.png", "_perplexity.png"):
        assert (tmp_path / f"out{suffix}").stat().st_size > 1000
    for seed in (0, 1):  # every seed's per-document sums are cached for a rerun
        assert list((tmp_path / "runs" / "L32").glob(f"*/lr*/seed{seed}/positions_carried.npz"))
