"""Issue 19 §6: exact match on synthetic memory tasks (`seqjax.experiment.answers`), the LM evaluation's
correct-token counts it reads, and the driver `experiments/synthetic_memory.py` end to end (smoke)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqjax.experiment import answers, protocol, report
from seqjax.experiment.predictions import write_predictions
from seqjax.train.evaluation import split_metrics
from tests.driver_helpers import assert_judged_by_rule, run_driver


def _write(folder: Path, model: str, correct: np.ndarray, tokens: np.ndarray) -> list[str]:
    """One predictions file per seed (rows of `correct`), as `protocol.run_predictions` saves an LM run."""
    paths = []
    for seed, row in enumerate(np.atleast_2d(correct)):
        per_example = {"nll": np.log(2.0) * (tokens - row + 0.5), "tokens": tokens, "correct": row}
        run = protocol.run_predictions(model, seed, 64, "lm", per_example, list(range(len(tokens))))
        paths.append(str(write_predictions(folder / model / f"seed{seed}.npz", run)))
    return paths


def test_lm_predictions_keep_correct_counts_and_the_same_bits_per_byte(tmp_path):
    tokens = np.array([8.0, 8.0, 4.0])
    nll = np.array([1.0, 2.0, 3.0])
    with_counts = {"nll": nll, "tokens": tokens, "correct": np.array([8.0, 3.0, 4.0])}
    run = protocol.run_predictions("s4d", 0, 64, "lm", with_counts, [0, 1, 2])
    assert run.predictions.shape == (3, 3) and protocol.LM_COLUMNS == ("nll", "correct", "tokens")
    np.testing.assert_array_equal(run.predictions[:, 1:], [[8, 8], [3, 8], [4, 4]])
    old = protocol.run_predictions("s4d", 0, 64, "lm", {"nll": nll, "tokens": tokens}, [0, 1, 2])
    assert old.predictions.shape == (3,)  # a run without counts (document evaluation) keeps the NLL alone
    a = write_predictions(tmp_path / "a.npz", run)
    b = write_predictions(tmp_path / "b.npz", old)
    new_bpb = report.metric_interval([str(a)], "lm", n_resamples=50).estimate
    old_bpb = report.metric_interval([str(b)], "lm", n_resamples=50).estimate
    assert new_bpb == pytest.approx(old_bpb) == pytest.approx(6.0 / np.log(2.0) / 20.0)
    with pytest.raises(ValueError, match="saved before the evaluation counted"):
        answers.answer_counts([str(b)])


def test_split_metrics_add_the_answer_accuracy():
    data = {"nll": np.array([1.0, 1.0]), "tokens": np.array([4.0, 4.0]), "correct": np.array([4.0, 1.0])}
    assert split_metrics(data, "lm")["accuracy"] == pytest.approx(5.0 / 8.0)
    assert "accuracy" not in split_metrics({"nll": data["nll"], "tokens": data["tokens"]}, "lm")


def test_accuracy_row_is_exact_match_with_wilson_intervals(tmp_path):
    from scipy.stats import binomtest

    tokens = np.full(40, 4.0)
    # seed 0 solves 30 sequences, seed 1 solves 20; the rest miss one answer token of 4
    correct = np.stack([np.where(np.arange(40) < n, 4.0, 3.0) for n in (30, 20)])
    row = answers.accuracy_row(
        _write(tmp_path, "s4d", correct, tokens), confidence_level=0.9, n_resamples=200
    )
    assert row["estimate"] == pytest.approx((30 / 40 + 20 / 40) / 2) and row["sequences"] == 40
    pooled = binomtest(50, 80).proportion_ci(confidence_level=0.9, method="wilson")
    assert (row["low"], row["high"]) == pytest.approx((pooled.low, pooled.high))
    first = binomtest(30, 40).proportion_ci(confidence_level=0.9, method="wilson")
    assert (row["seeds"][0]["low"], row["seeds"][0]["high"]) == pytest.approx((first.low, first.high))
    token = row["token_accuracy"]  # partial credit: 3 of 4 on the missed sequences
    assert token["estimate"] == pytest.approx(np.mean([(30 * 4 + 10 * 3) / 160, (20 * 4 + 20 * 3) / 160]))
    assert token["low"] <= token["estimate"] <= token["high"]


def test_exact_match_and_solved_class():
    assert answers.exact_match([[2, 3, 0]], [[2, 4, 0]]).tolist() == [[True, False, False]]
    solved = [{"low": 0.92, "high": 1.0}, {"low": 0.9, "high": 0.99}]
    assert answers.solved_class(solved, 0.9) == "solved"
    assert answers.solved_class([{"low": 0.0, "high": 0.89}], 0.9) == "not solved"
    assert answers.solved_class([*solved, {"low": 0.2, "high": 0.5}], 0.9) == "unsettled"
    assert answers.solved_class([{"low": 0.85, "high": 0.95}], 0.9) == "unsettled"
    with pytest.raises(ValueError, match="no seeds"):
        answers.solved_class([], 0.9)


def test_paired_exact_match_finds_a_real_difference_and_not_a_tie(tmp_path):
    tokens = np.full(200, 2.0)
    rng = np.random.default_rng(0)
    good = np.stack([np.where(rng.random(200) < 0.9, 2.0, 1.0) for _ in range(3)])
    bad = np.stack([np.where(rng.random(200) < 0.2, 2.0, 0.0) for _ in range(3)])
    a, b = _write(tmp_path, "s4d", good, tokens), _write(tmp_path, "lstm", bad, tokens)
    d = answers.paired_exact_match(a, b, confidence_level=0.99, n_resamples=500)
    assert d["estimate"] == pytest.approx(0.7, abs=0.05)  # 0.9 - 0.2, up to sampling
    assert 0.4 < d["low"] <= d["estimate"] <= d["high"] < 1.0 and d["p_value"] < 0.01
    assert d["paired_test"]["only_a"] > 100 and d["paired_test"]["p_value"] < 1e-10
    # two models that never solve a sequence: a zero-width interval at 0, never a win
    zero = np.zeros((3, 200))
    fail_a, fail_b = _write(tmp_path / "x", "s4d", zero, tokens), _write(tmp_path / "y", "lstm", zero, tokens)
    both_fail = answers.paired_exact_match(fail_a, fail_b, n_resamples=100)
    assert (both_fail["low"], both_fail["high"], both_fail["p_value"]) == (0.0, 0.0, 1.0)
    same = answers.paired_exact_match(b, b, n_resamples=500)  # the same model: an interval around 0
    assert same["low"] < 0 < same["high"] and same["estimate"] == 0
    other = _write(tmp_path / "other", "lstm", bad[:, :100], tokens[:100])
    with pytest.raises(ValueError, match="different test sequences"):
        answers.paired_exact_match(a, other)


@pytest.mark.slow
def test_synthetic_memory_smoke_run(tmp_path):
    results = run_driver("synthetic_memory.py", tmp_path, "--size=smoke")
    assert results["presets"] == ["s4d", "lstm"] and results["lengths"] == [32, 64]
    verdict = results["verdict"]
    # no length reaches --claim_from (1024): every (task, length) is covered, Bonferroni over the 2 keys
    assert list(verdict["per_key"]) == ["copy@32", "copy@64"]
    assert verdict["confidence_level"] == pytest.approx(1 - 0.05 / 2)
    for d in verdict["differences"].values():
        assert d["low"] <= d["estimate"] <= d["high"] and 0 <= d["paired_test"]["p_value"] <= 1
    # two training steps: the verdict is chance, but it must be the rule's over the recorded differences
    assert_judged_by_rule(verdict, verdict["differences"], direction="greater")
    threshold = results["solve_threshold"]
    task = results["tasks"]["copy"]
    assert [s["length"] for s in task["summaries"]] == [32, 64]
    for by_model in task["accuracy"].values():
        assert by_model["confidence_level"] == pytest.approx(1 - 0.05 / 2)  # Bonferroni over 2 lengths
        assert [r["model"] for r in by_model["models"]] == ["s4d", "lstm"]
        for row in by_model["models"]:
            assert row["sequences"] == 16 and len(row["seeds"]) == 2
            assert 0 <= row["low"] <= row["estimate"] <= row["high"] <= 1
            # the seeds' mean exact match, and the class the seeds' own intervals give under the rule
            seeds = row["seeds"]
            assert row["estimate"] == pytest.approx(np.mean([s["accuracy"] for s in seeds]), abs=1e-12)
            if all(s["low"] >= threshold for s in seeds):
                assert row["class"] == "solved", row
            elif all(s["high"] < threshold for s in seeds):
                assert row["class"] == "not solved", row
            else:
                assert row["class"] == "unsettled", row
    for summary in task["summaries"]:
        for row in summary["models"]:
            assert abs(row["ratio"] - 1) <= 0.05 and row["steps"] == 2 and row["seeds"] == 2
    text = (tmp_path / "out.md").read_text()
    assert "## Verdict (a): S4D beats the LSTM on long synthetic sequences (lengths >= 32)" in text
    assert "### copy" in text and "| s4d |" in text
    assert (tmp_path / "out_copy.png").stat().st_size > 1000
