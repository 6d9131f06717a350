"""experiments/dna_windows.py (issue 18 §2): its pure helpers, and the driver end to end at
`--size=smoke` on the embedded sample (two presets, two short nested lengths, one task)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqjax.experiment.predictions import read_predictions
from seqjax.experiment.sweep import claim_verdict, finished_models_at, joint_level
from tests.driver_helpers import assert_claim_follows_summaries, driver_env, load_driver, rule_class

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    return load_driver("dna_windows.py")


def test_reused_runs_must_exist_for_every_model(tmp_path) -> None:
    # context_use.py --reuse_runs reads another sweep's runs; a model it lacks is an error, not a new run
    (tmp_path / "L1024" / "lstm").mkdir(parents=True)
    assert finished_models_at(tmp_path, 1024, ["lstm"]) == tmp_path / "L1024"
    with pytest.raises(ValueError, match=r"has no runs of \['attention'\] \(length 1024\)"):
        finished_models_at(tmp_path, 1024, ["lstm", "attention"])
    with pytest.raises(ValueError, match="length 4096"):
        finished_models_at(tmp_path, 4096, ["lstm"])


def test_helpers_pick_the_anchor_options_and_kmer_baseline() -> None:
    dna = _driver()
    assert dna.anchor_length([1024, 16384, 4096]) == 16384 and dna.anchor_length([256], 512) == 512
    assert dna.task_options("species", "sample", 512, "x=1") == "task=species,route=sample,nested=512,x=1"
    summaries = [
        {
            "larger_is_better": True,
            "baselines": [
                {"model": "3-mer frequencies + logistic regression", "estimate": 0.7},
                {"model": "6-mer frequencies + logistic regression", "estimate": 0.9},
                {"model": "GC content + logistic regression", "estimate": 0.95},
                {"model": "majority class", "estimate": math.nan},
            ],
        }
    ]
    assert dna.kmer_baseline(summaries) == "6-mer frequencies + logistic regression"
    assert dna.kmer_baseline([{"larger_is_better": True, "baselines": []}]) is None
    assert joint_level([1, 2, 3, 4]) == pytest.approx(0.9875)
    assert "not the same numbers" in dna.PAPER_CAVEAT and "tokenizer" in dna.PAPER_CAVEAT


def test_rule_b_says_which_models_learned_the_task() -> None:
    dna = _driver()
    row = lambda model, low: {"model": model, "estimate": low + 0.02, "low": low, "high": low + 0.04}
    summaries = [
        {"length": 1024, "models": [row("lstm", 0.49), row("mamba", 0.55)], "baselines": [row("6-mer", 0.6)]},
        {"length": 16384, "models": [row("lstm", 0.48), row("mamba", 0.47)], "baselines": []},
    ]
    learned = dna.above_chance(summaries, 0.5)
    assert learned == {
        "lstm": {"1024": False, "16384": False},
        "mamba": {"1024": True, "16384": False},
        "6-mer": {"1024": True},
    }
    results = {"chance": 0.5, "above_chance": learned, "summaries": summaries}
    gain = {"lstm": {}, "mamba": {}}
    text = "\n".join(dna._chance_lines(results, gain, 1024, 16384))
    # the lstm is at chance at both lengths: its "no clear difference" cannot tell; mamba learned at 1k
    assert "Not above chance at either length: lstm." in text
    assert "- L = 1,024: mamba, 6-mer" in text and "- L = 16,384: none" in text
    assert dna._learned(learned, "mamba", 16384) == "no" and dna._learned(learned, "s5", 1024) == "n/a"
    assert dna._chance_lines({"above_chance": {}}, gain, 1024, 16384) == []


def test_claim_verdict_covers_lengths_from_claim_from() -> None:
    from seqjax.experiment.report import Claim

    claim = Claim("r", "recurrent", "attention")
    summaries = [
        {
            "length": n,
            "larger_is_better": True,
            "comparisons": [{"claim": "r", "low": lo, "high": hi, "p_value": p}],
        }
        for n, lo, hi, p in [(1024, -0.3, -0.1, 0.01), (8192, 0.1, 0.2, 0.01), (16384, 0.05, 0.3, 0.02)]
    ]
    verdict, covered_from = claim_verdict(summaries, claim, 8192)
    assert covered_from == 8192 and verdict["verdict"] == "supported"
    assert list(verdict["per_key"]) == ["8192", "16384"]
    verdict, covered_from = claim_verdict(summaries, claim, 1024)
    assert covered_from == 1024 and verdict["verdict"] == "depends"


@pytest.mark.slow
def test_dna_windows_smoke_run(tmp_path: Path) -> None:
    env = driver_env()
    args = [
        sys.executable,
        str(ROOT / "experiments" / "dna_windows.py"),
        "--size=smoke",
        "--route=sample",
        "--tasks=species",
        "--presets=lstm,attention",
        "--lengths=128,256",
        "--claim_from=256",
        "--resamples=100",
        "--evaluation_examples=32",
        "--nostep_memory",
        "--config_overrides=data.max_examples_per_split=128",  # the baselines fit on 128 windows
        f"--workdir={tmp_path / 'runs'}",
        f"--out={tmp_path / 'out_{task}'}",
    ]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out_species.json").read_text())
    assert results["nested"] == 256 and results["lengths"] == [128, 256] and results["route"] == "sample"
    assert list(results["verdict"]["per_key"]) == ["256"]
    # the verdict of two tiny models is chance, but it must follow from the recorded difference at 256
    assert_claim_follows_summaries(results["verdict"], results["summaries"], claim_from=256)
    assert set(results["context"]) == {"lstm", "attention"}
    for gain in results["context"].values():
        # the embedded sample's test windows fall in a few genome blocks: under 10, a class is not judged;
        # else the class is the rule's for long - short (balanced accuracy: larger is better)
        words = {"claimed": "helps", "opposite": "hurts", "neither": "no clear difference"}
        expected = words[rule_class("greater", gain["low"], gain["high"])]
        if gain["n_clusters"] < 10:
            expected = f"not judged ({gain['n_clusters']} blocks, fewer than 10)"
        assert gain["class"] == expected, gain
        assert gain["low"] <= gain["estimate"] <= gain["high"]
        assert gain["estimate"] == pytest.approx(gain["long"] - gain["short"])
    short, long = results["summaries"]
    # the windows budget: the same labelled windows (2 batches of 4) at both lengths, not the same tokens
    assert results["budget"] == "windows" and results["windows_per_batch"] == 4
    assert [s["protocol"]["batch_size"] for s in (short, long)] == [4, 4]
    assert [s["protocol"]["train_tokens"] for s in (short, long)] == [8 * 128, 8 * 256]
    for summary in (short, long):
        for row in summary["models"]:
            assert set(row["secondary"]) == {"macro_f1", "mcc"}
            for v in row["secondary"].values():
                assert v["low"] <= v["estimate"] <= v["high"]
        assert any("6-mer" in b["model"] and "macro_f1" in b["secondary"] for b in summary["baselines"])
    for a, b in zip(short["models"], long["models"], strict=True):  # the same test loci at both lengths
        first, second = read_predictions(a["predictions"][0]), read_predictions(b["predictions"][0])
        assert (first.length, second.length) == (128, 256) and first.n_examples == 32
        np.testing.assert_array_equal(first.example_ids, second.example_ids)
        np.testing.assert_array_equal(first.targets, second.targets)
    text = (tmp_path / "out_species.md").read_text()
    for phrase in (
        "Verdict (a): recurrent beats attention",
        "Verdict (b): longer context helps",
        "macro_f1",
        "2 batches of 4 training windows per run at every length",
    ):
        assert phrase in text
    assert "not the same numbers" in text
    # which models and baselines learned the task: their interval above 1 / classes, per length
    classes = len(results["data"]["splits"]["test"]["class_counts"])
    assert classes > 1 and results["chance"] == pytest.approx(1 / classes)
    for summary in (short, long):
        for row in [*summary["models"], *summary["baselines"]]:
            if math.isfinite(row["low"]):
                learned = results["above_chance"][row["model"]][str(summary["length"])]
                assert learned == (row["low"] > results["chance"])
    assert "Models and baselines above chance, by length:" in text
    for suffix in ("_metric.png", "_cost.png"):
        assert (tmp_path / f"out_species{suffix}").stat().st_size > 1000


def test_length_budget_holds_windows_or_tokens_equal_and_names_a_missing_flag() -> None:
    from seqjax.experiment.protocol import ProtocolSettings
    from seqjax.experiment.sweep import LengthBudget

    base = ProtocolSettings(train_tokens=16384 * 50, seeds=5)
    windows = LengthBudget("windows", windows_per_batch=4, train_windows=200, few_seeds_from=8192)
    tokens = LengthBudget("tokens", tokens_per_batch=16384, few_seeds_from=8192)
    for length in (1024, 4096, 8192, 16384):
        by_windows, by_tokens = windows.settings(base, length), tokens.settings(base, length)
        # windows: the same labelled examples at every length; tokens: the same tokens, fewer examples
        assert by_windows.train_tokens // length == 200 and windows.batch(length) == 4
        assert by_tokens.train_tokens == base.train_tokens and tokens.batch(length) == 16384 // length
        assert by_windows.seeds == by_tokens.seeds == (3 if length >= 8192 else 5)
    smoke = LengthBudget("windows", windows_per_batch=4, few_seeds_from=8192, steps=2)
    assert smoke.settings(base, 16384).train_tokens == 8 * 16384 and smoke.settings(base, 16384).seeds == 5
    assert windows.describe([1024, 16384]).startswith("50 batches of 4 training windows per run")
    with pytest.raises(ValueError, match="needs a positive train_windows"):
        LengthBudget("windows", windows_per_batch=4)
    with pytest.raises(ValueError, match="choose one of"):
        LengthBudget("examples", windows_per_batch=4, train_windows=8)
