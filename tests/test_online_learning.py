"""Issue 20's experiment: the baselines and statistics of `seqjax.experiment.online_learning`, and the
driver `experiments/online_learning.py` end to end (smoke)."""

from __future__ import annotations

import numpy as np
import pytest

from seqjax.experiment import online_learning as ol
from tests.driver_helpers import rule_class, rule_verdict, run_driver


def test_rls_baseline_predicts_before_it_learns_and_fits_a_linear_system():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = x @ [[1.0], [-2.0]] + 0.5  # y_t = linear in x_t: RLS on 1 lag + constant fits it exactly
    errors = ol.online_baselines(x, y, lags=1, persistence=False)
    rls = errors["RLS on 1 lags"]
    assert rls[0] == pytest.approx(np.mean(y[0] ** 2))  # token 0: predicted with zero weights
    assert rls[-100:].max() < 1e-6
    # prequential: the running mean predicts token t from tokens before it
    assert errors["running mean"][1] == pytest.approx(float((y[1, 0] - y[0, 0]) ** 2))


def test_block_means_and_paired_claims():
    scores = np.arange(12.0)
    scores[3] = np.nan  # padding is skipped
    assert ol.block_means(scores, 3).tolist() == [1.0, 5.5, 9.5]
    rng = np.random.default_rng(1)
    base = rng.uniform(1, 2, size=(2, 40))
    runs = {
        "narma10": {
            "lru_rtrl": [{"scores": b, "seconds_per_step": 1e-5, "step_memory_bytes": 1} for b in base],
            "lru_tbptt1": [
                {"scores": b + 0.5, "seconds_per_step": 1e-5, "step_memory_bytes": 1} for b in base
            ],
        }
    }
    summary = ol.summarize(runs, {}, n_blocks=10, confidence_level=0.95, n_resamples=200)
    claims = ol.claim_verdicts(summary, [1], alpha=0.05, n_resamples=200)
    assert claims["rtrl"]["verdict"] == "supported"
    assert claims["rtrl"]["differences"]["narma10/k=1"]["estimate"] == pytest.approx(0.5)
    assert claims["rtrl"]["differences"]["narma10/k=1"]["n_clusters"] == 10
    assert claims["snap"]["verdict"] == "inconclusive"  # no LSTM runs
    # the same runs cut into 8 time blocks: fewer than the rule's 10 clusters, so not judged, however
    # far from zero the interval lies
    coarse = ol.summarize(runs, {}, n_blocks=8, confidence_level=0.95, n_resamples=200)
    difference = ol.claim_verdicts(coarse, [1], alpha=0.05, n_resamples=200)["rtrl"]["differences"][
        "narma10/k=1"
    ]
    assert difference["low"] > 0 and difference["n_clusters"] == 8 and difference["class"] == "neither"


def test_learning_rate_choice_takes_the_interior_minimum_without_extending():
    tried = []

    def score(rate):
        tried.append(rate)
        return abs(np.log10(rate) - np.log10(3e-3))

    chosen = ol.choose_learning_rate([3e-4, 1e-3, 3e-3, 1e-2], score)
    assert chosen["learning_rate"] == 3e-3 and not chosen["at_edge"]
    assert tried == [3e-4, 1e-3, 3e-3, 1e-2]


def test_learning_rate_choice_extends_past_an_edge_at_most_twice():
    chosen = ol.choose_learning_rate([1e-3, 3e-3], lambda rate: -rate)  # larger is always better
    assert sorted(chosen["scores"]) == [1e-3, 3e-3, 1e-2, 3e-2]
    assert chosen["learning_rate"] == 3e-2 and chosen["at_edge"]
    # the best rate at the lower edge extends downwards, and stops once the minimum is inside
    chosen = ol.choose_learning_rate([1e-3, 3e-3], lambda rate: abs(rate - 3e-4))
    assert sorted(chosen["scores"]) == [1e-4, 3e-4, 1e-3, 3e-3]
    assert chosen["learning_rate"] == 3e-4 and not chosen["at_edge"]


def test_learning_rate_choice_counts_divergence_as_worst_and_breaks_ties_downwards():
    chosen = ol.choose_learning_rate(
        [1e-3, 3e-3, 1e-2], {1e-3: 1.0, 3e-3: 1.0, 1e-2: float("nan")}.__getitem__, max_extensions=0
    )
    assert chosen["learning_rate"] == 1e-3 and chosen["scores"][1e-2] == float("inf")
    with pytest.raises(ValueError, match="every rate tried diverged"):
        ol.choose_learning_rate([1e-3, 1e-2], lambda rate: float("inf"), max_extensions=0)
    with pytest.raises(ValueError, match="grid of learning rates is empty"):
        ol.choose_learning_rate([], lambda rate: 0.0)


def test_the_tuning_prefix_is_not_scored():
    scores = np.concatenate([np.full(10, 100.0), np.ones(20)])  # the prefix is bad, the rest 1
    runs = {"narma10": {"lru_rtrl": [{"scores": scores, "seconds_per_step": 1e-5, "step_memory_bytes": 1}]}}
    base = {"narma10": {"running mean": [scores]}}
    summary = ol.summarize(runs, base, n_blocks=4, confidence_level=0.95, n_resamples=50, scored_from=10)
    assert summary["narma10"]["methods"]["lru_rtrl"]["estimate"] == pytest.approx(1.0)
    assert summary["narma10"]["baselines"]["running mean"]["estimate"] == pytest.approx(1.0)


def _run(scores):
    return {"scores": scores, "seconds_per_step": 1e-5, "step_memory_bytes": 1}


@pytest.mark.parametrize(
    ("diverged", "expected"),
    [
        (["lru_rtrl"], "contradicted"),
        (["lru_tbptt1"], "supported"),
        (["lru_rtrl", "lru_tbptt1"], "inconclusive"),
    ],
)
def test_a_diverged_method_has_no_mse_and_loses_its_key(diverged, expected):
    base = np.random.default_rng(2).uniform(1, 2, size=(2, 40))
    runs = {"narma10": {"lru_rtrl": [_run(b) for b in base], "lru_tbptt1": [_run(b + 0.5) for b in base]}}
    for method in diverged:  # seed 1 of the method became NaN at token 17
        runs["narma10"][method][1] = {"diverged_at": 17, "error": "token 17: NaN", "learning_rate": 1e-2}
    summary = ol.summarize(runs, {}, n_blocks=8, confidence_level=0.95, n_resamples=200)
    for method in diverged:
        assert summary["narma10"]["methods"][method] == {"diverged": [{"seed": 1, "token": 17}], "seeds": 2}
    claims = ol.claim_verdicts(summary, [1], alpha=0.05, n_resamples=200)
    # without the divergence the claim is supported (TBPTT is 0.5 worse everywhere): the rule decides
    assert claims["rtrl"]["verdict"] == expected
    assert claims["rtrl"]["differences"]["narma10/k=1"]["diverged"] == diverged
    results = {
        "settings": {"size": "smoke", "steps": 40, "seeds": 2, "hidden": 4, "readout": 4, "chunk": 10,
                     "blocks": 8, "tune_steps": 0, "learning_rate": 1e-2},
        "date": "today", "platform": "cpu", "machine": "here", "command": "pytest", "power_steps": 40,
        "narma_seeds": [0, 1], "confidence_level": 0.95, "resamples": 200, "claims": claims,
        "summary": summary,
    }  # fmt: skip
    text = ol.markdown(results)
    assert f"| {diverged[0]} | diverged (seed 1 at token 17) |" in text
    assert f"narma10/k=1: {' and '.join(diverged)} diverged" in text
    ol.figure(results)  # the diverged method is left out of the plot, not an error


def test_a_diverged_evaluation_run_is_kept_and_not_run_again(tmp_path):
    # a real run: the LRU under exact RTRL at Adam rate 1e3 becomes NaN at once
    settings = {"hidden": 4, "readout": 4, "chunk": 50, "measure_memory": False, "learning_rate": 1e3}
    config = ol.method_config("narma10", "lru_rtrl", seed=0, stream_seed=0, steps=200, settings=settings)
    first = ol.run_method(config, tmp_path)
    assert first["diverged_at"] == 1 and first["learning_rate"] == 1e3
    assert "NaN/Inf" in first["error"] and not (tmp_path / "result.json").exists()
    (tmp_path / "prequential.f32").unlink()  # a second call reads the record; it does not run again
    assert ol.run_method(config, tmp_path) == first
    assert not (tmp_path / "prequential.f32").exists()


@pytest.mark.slow
def test_driver_smoke(tmp_path):
    results = run_driver("online_learning.py", tmp_path, "--size=smoke", "--windows=1", timeout=600)
    assert set(results["summary"]) == {"narma10", "power"}
    for stream in results["summary"].values():
        assert set(stream["methods"]) == {"lru_rtrl", "lru_tbptt1", "lstm_snap", "lstm_tbptt1"}
        assert all(np.isfinite(r["estimate"]) and r["low"] <= r["high"] for r in stream["methods"].values())
    assert "RLS on 8 lags" in results["summary"]["power"]["baselines"]
    # tiny learners: the verdicts are chance, but each must be the rule's over the recorded intervals of
    # TBPTT-k minus the claim's method (lower MSE is better: above zero supports it), whose estimate is
    # the difference of the two methods' MSEs. The smoke size has 6 blocks, fewer than the verdict
    # rule's 10 clusters: none is judged, and the verdicts are inconclusive.
    for name, method, prefix in (("rtrl", "lru_rtrl", "lru_tbptt"), ("snap", "lstm_snap", "lstm_tbptt")):
        claim = results["claims"][name]
        assert sorted(claim["differences"]) == ["narma10/k=1", "power/k=1"]
        for key, d in claim["differences"].items():
            stream, k = key.split("/k=")
            rows = results["summary"][stream]["methods"]
            expected = rows[f"{prefix}{k}"]["estimate"] - rows[method]["estimate"]
            assert d["estimate"] == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, key)
            assert d["class"] == rule_class("greater", d["low"], d["high"], n_clusters=d["n_clusters"]), d
        assert claim["verdict"] == rule_verdict(d["class"] for d in claim["differences"].values())
        assert claim["verdict"] == "inconclusive" and {
            d["n_clusters"] for d in claim["differences"].values()
        } == {6}
    for stream in ("narma10", "power"):  # the smoke size tunes over one rate: the wiring
        assert results["tuning"][stream]["lru_rtrl"]["learning_rate"] == pytest.approx(1e-3)
    assert results["settings"]["tune_steps"] == 200
    assert (tmp_path / "out.png").exists() and "## Verdict" in (tmp_path / "out.md").read_text()
