"""Training stability across seeds (issue 19 §1): the statistics of `seqjax.experiment.stability` on
constructed cases whose answers are known, its run orchestration with a fake trainer, and
`experiments/stability.py --size=smoke` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from seqjax.config import load_config_file
from seqjax.experiment import protocol, stability, statistics
from seqjax.experiment.matching import MatchedModel
from tests.driver_helpers import driver_env, load_driver, rule_class, run_driver

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# Variance components of the crossed init x data grid.


def test_variance_components_recover_an_additive_grid_exactly():
    init = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # sample variance 2.5
    data = np.array([-0.5, 0.5])  # sample variance 0.5
    matrix = 10.0 + init[:, None] + data[None, :]
    c = stability.variance_components(matrix)
    assert c["init"] == pytest.approx(2.5) and c["data"] == pytest.approx(0.5)
    assert c["residual"] == pytest.approx(0.0, abs=1e-12) and c["total"] == pytest.approx(3.0)
    assert c["df"] == {"init": 4, "data": 1, "residual": 4} and c["truncated"] == []

    # an init x data interaction with zero row and column sums moves only the residual: its mean square
    # is sum(e^2) / 4, and each effect's component loses MS_resid / (levels of the other factor)
    interaction = np.array([1.0, -2.0, 0.5, 0.0, 0.5])[:, None] * np.array([1.0, -1.0])[None, :]
    c = stability.variance_components(matrix + interaction)
    ms_resid = float(np.sum(interaction**2)) / 4
    assert c["residual"] == pytest.approx(ms_resid)
    assert c["init"] == pytest.approx(2.5 - ms_resid / 2)
    assert c["data"] == pytest.approx(max(0.5 - ms_resid / 5, 0.0))
    # the ANOVA identity: the cells' sum of squares is the sum of the three parts
    ms = c["mean_squares"]
    total_ss = float(np.var(matrix + interaction, ddof=1)) * 9
    assert 4 * ms["init"] + 1 * ms["data"] + 4 * ms["residual"] == pytest.approx(total_ss)


def test_variance_components_truncate_negative_estimates_at_zero():
    # identical row means (no init effect) but a large residual: the raw init estimate is negative
    matrix = np.array([[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [1.0, 1.0]])
    c = stability.variance_components(matrix)
    assert c["raw"]["init"] < 0 and c["init"] == 0.0 and "init" in c["truncated"]
    assert c["total"] == pytest.approx(c["data"] + c["residual"])
    with pytest.raises(ValueError, match="diverged"):
        stability.variance_components([[1.0, math.nan], [2.0, 3.0]])
    single = stability.variance_components([[1.0], [3.0]])  # one data seed: no residual, no components
    assert math.isnan(single["init"]) and math.isnan(single["data"])


# ----------------------------------------------------------------------------------------------------
# The SD with its intervals, Brown-Forsythe, the variance ratio and power.


def test_sd_interval_contains_the_sd_and_the_chi2_interval_is_normal_theory():
    values = np.array([61.2, 58.9, 64.0, 60.3, 59.5, 66.1, 57.7, 62.4, 60.9, 63.0])
    out = stability.sd_interval(values, n_resamples=1000)
    sd = float(np.std(values, ddof=1))
    assert out["estimate"] == pytest.approx(sd) and out["n"] == 10
    assert out["low"] < sd < out["high"]
    assert out["chi2_low"] == pytest.approx(math.sqrt(9 * sd**2 / scipy_stats.chi2.ppf(0.975, 9)))
    assert out["chi2_high"] == pytest.approx(math.sqrt(9 * sd**2 / scipy_stats.chi2.ppf(0.025, 9)))
    # the weighted SD under all-ones weights is the plain SD, and the bootstrap runs through statistics
    assert stability.weighted_sd(values, None, np.ones((1, 10)))[0] == pytest.approx(sd)
    constant = stability.sd_interval([3.0, 3.0, 3.0])
    assert (constant["estimate"], constant["low"], constant["high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        stability.sd_interval([1.0, math.nan, 2.0])


def test_brown_forsythe_is_levenes_test_with_the_median():
    rng = np.random.default_rng(3)
    narrow = np.array([-1.0, -0.7, -0.4, -0.2, 0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
    wide = np.array([-8.0, -5.0, -3.5, -1.0, 0.5, 1.0, 2.5, 4.0, 6.0, 9.0])  # SD ~5x: a clear case
    out = stability.brown_forsythe(wide, narrow)
    reference = scipy_stats.levene(wide, narrow, center="median")
    assert out["statistic"] == pytest.approx(reference.statistic) and out["p_value"] == pytest.approx(
        reference.pvalue
    )
    # by hand: one-way ANOVA of the absolute deviations from each group's median
    by_hand = scipy_stats.f_oneway(np.abs(wide - np.median(wide)), np.abs(narrow - np.median(narrow)))
    assert out["statistic"] == pytest.approx(by_hand.statistic)
    assert out["p_value"] < 0.05 and out["larger"] == "a" and out["sd_a"] > out["sd_b"]
    assert stability.judge_variance(out) == "supported"
    assert stability.judge_variance(stability.brown_forsythe(narrow, wide)) == "contradicted"
    assert stability.judge_variance(stability.brown_forsythe(narrow, narrow + 1.0)) == "inconclusive"
    # the vectorised form the power simulation uses gives scipy's p-values row by row
    x, y = rng.normal(0, 2, (5, 10)), rng.normal(0, 1, (5, 10))
    expected = [scipy_stats.levene(a, b, center="median").pvalue for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(stability._brown_forsythe_p(x, y), expected)


def test_pairwise_tests_are_holm_adjusted_and_the_ratio_has_an_f_interval():
    rng = np.random.default_rng(0)
    groups = {"a": rng.normal(0, 1, 10), "b": rng.normal(0, 3, 10), "c": rng.normal(0, 1.5, 10)}
    pairs = stability.pairwise_brown_forsythe(groups)
    assert [(t["a"], t["b"]) for t in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    holm = statistics.holm_adjusted_p_values([t["p_value"] for t in pairs])
    np.testing.assert_allclose([t["holm_p"] for t in pairs], holm)
    ratio = stability.variance_ratio(groups["b"], groups["a"])
    f = np.var(groups["b"], ddof=1) / np.var(groups["a"], ddof=1)
    assert ratio["ratio"] == pytest.approx(math.sqrt(f)) and ratio["low"] < ratio["ratio"] < ratio["high"]
    assert ratio["p_value"] == pytest.approx(2 * scipy_stats.f.sf(f, 9, 9))


def test_power_of_ten_against_ten_runs():
    assert stability.f_test_power(1.0, 10, 10) == pytest.approx(0.05)
    assert stability.detectable_sd_ratio(10, 10, test="f") == pytest.approx(2.68, abs=0.01)
    assert abs(stability.brown_forsythe_power(1.0, 10, 10) - 0.05) < 0.02  # its size, simulated
    assert 3.5 < stability.detectable_sd_ratio(10, 10) < 4.5  # the docstring's "about 3.9"
    assert stability.brown_forsythe_power(4.2 / 0.8, 10, 10) > 0.8


# ----------------------------------------------------------------------------------------------------
# Learning-rate sensitivity.


def test_rate_spread_and_rule_b():
    flat = stability.rate_spread(
        {1e-3: [50.0, 51.0, 49.0], 3e-3: [50.5, 50.0, 51.0], 1e-2: [50.0, 49.5, 50.5]}
    )
    steep = stability.rate_spread(
        {1e-3: [40.0, 41.0, 39.0], 3e-3: [50.5, 50.0, 51.0], 1e-2: [60.0, 61.0, 59.0]}
    )
    assert steep["estimate"] == pytest.approx(20.0) and steep["low"] <= 20.0 <= steep["high"]
    assert flat["estimate"] == pytest.approx(0.5)
    difference = stability.spread_difference(flat, steep)
    assert difference["estimate"] == pytest.approx(-19.5) and difference["high"] < 0
    assert stability.judge_spread(difference) == "supported"  # the first (attention) spread is smaller
    assert stability.judge_spread(stability.spread_difference(steep, flat)) == "contradicted"
    assert stability.judge_spread(stability.spread_difference(flat, flat)) == "inconclusive"
    diverged = stability.rate_spread({1e-3: [1.0, 2.0], 1e-2: [math.nan, 2.0]})
    assert diverged["estimate"] == math.inf and diverged["diverged_at"] == [1e-2]
    assert stability.judge_spread(stability.spread_difference(diverged, flat)) == "contradicted"
    assert stability.judge_spread(stability.spread_difference(diverged, diverged)) == "inconclusive"
    with pytest.raises(ValueError, match="2 or more rates"):
        stability.rate_spread({1e-3: [1.0]})


def test_rate_component_is_the_one_way_anova_component_and_unbiased_under_no_rate_effect():
    by_rate = {1e-3: [40.0, 43.0, 38.0], 3e-3: [50.5, 47.0, 52.0], 1e-2: [60.0, 66.0, 59.0, 61.0]}
    out = stability.rate_component(by_rate, n_resamples=400)
    groups = [np.asarray(v) for v in by_rate.values()]
    total = sum(g.size for g in groups)
    grand = np.concatenate(groups).mean()
    ms_between = sum(g.size * (g.mean() - grand) ** 2 for g in groups) / 2
    ms_within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (total - 3)
    n0 = (total - sum(g.size**2 for g in groups) / total) / 2
    assert out["estimate"] == pytest.approx((ms_between - ms_within) / n0)
    f = scipy_stats.f_oneway(*groups).statistic  # the same mean squares
    assert ms_between / ms_within == pytest.approx(f)
    assert out["low"] > 0 and out["sd"] == pytest.approx(math.sqrt(out["estimate"]))
    # no rate effect, a noisy model and a quiet one: the spread's difference is biased upward by the
    # noise, the component's is not (its mean over many data sets is ~0)
    rng = np.random.default_rng(0)
    spreads, components = [], []
    for _ in range(400):
        noisy = {r: rng.normal(50, 4.2, 3) for r in (1e-3, 3e-3, 1e-2, 3e-2)}
        quiet = {r: rng.normal(50, 0.8, 3) for r in (1e-3, 3e-3, 1e-2, 3e-2)}
        spreads.append(
            np.ptp([np.mean(v) for v in noisy.values()]) - np.ptp([np.mean(v) for v in quiet.values()])
        )
        components.append(
            stability.rate_component(noisy, n_resamples=2)["estimate"]
            - stability.rate_component(quiet, n_resamples=2)["estimate"]
        )
    assert np.mean(spreads) > 3.0  # E[range of 4 means] ~ 2.06 x 4.2 / sqrt(3) = 5.0, minus ~1.0
    assert abs(np.mean(components)) < 3 * np.std(components) / math.sqrt(len(components))
    assert stability.spread_null_rate(4.2, 0.8, rates=4, seeds=3, simulations=200, n_resamples=300) > 0.5
    assert stability.spread_null_rate(1.0, 1.0, rates=4, seeds=3, simulations=200, n_resamples=300) < 0.1
    diverged = stability.rate_component({1e-3: [1.0, 2.0], 1e-2: [math.nan, 2.0]})
    assert diverged["estimate"] == math.inf and diverged["diverged_at"] == [1e-2]
    with pytest.raises(ValueError, match="2 or more runs each"):
        stability.rate_component({1e-3: [1.0, 2.0], 1e-2: [3.0]})


def test_two_models_draw_independent_resamples():
    models = _fake_models(spread_attention=1.0, spread_elstm=1.0)
    s = stability.summarize_stability(
        models, "classification", shared_rates=(1e-3, 3e-3, 1e-2), n_resamples=200
    )
    rows = {r["model"]: r for r in s["models"]}
    same = stability.rate_spread(
        {r["learning_rate"]: r["values"] for r in rows["encoder"]["rates"] if r["shared"]},
        n_resamples=200,
    )  # the default seed, which every model used before
    own = rows["encoder"]["spread"]
    assert (own["low"], own["high"]) != (same["low"], same["high"])


# ----------------------------------------------------------------------------------------------------
# Runs, folders and the summary, with a fake trainer.


def _record(model, lr, seed, data_seed, value, validation=0.6):
    return protocol.RunRecord(
        model, lr, seed, 2, 1024, 1.0, 1.0, 0.0, 1.0, None, 1, 100,
        {"balanced_accuracy": validation}, {"macro_f1": value, "balanced_accuracy": value}, "w",
        data_seed=data_seed,
    )  # fmt: skip


def test_run_stability_trains_the_design_and_records_divergence(tmp_path, monkeypatch):
    from seqjax.train.trainer import NonFiniteLossError

    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    match = MatchedModel("lstm", 100, 100, "reference", "model.mlp_expansion", 4.0)
    monkeypatch.setattr(
        stability, "comparison_setup", lambda *a, **k: ("classification", 8192, {"lstm": config}, [match])
    )
    grid = [
        _record("lstm", lr, 0, None, 0.5, validation=v) for lr, v in ((1e-3, 0.5), (3e-3, 0.7), (1e-2, 0.6))
    ]
    monkeypatch.setattr(stability, "tune_learning_rate", lambda *a, **k: (grid, grid[1]))
    evaluated, trained = [], []
    monkeypatch.setattr(
        stability,
        "evaluate_on_test",
        lambda model, c, s, record, path, **k: (
            evaluated.append((record.learning_rate, Path(path).name)) or record
        ),
    )

    def fake_train(model, c, s, lr, seed, folder, *, predictions_path, data_seed, **k):
        trained.append((lr, seed, data_seed, Path(folder).relative_to(tmp_path).as_posix()))
        if (lr, seed) == (1e-2, 2):
            raise NonFiniteLossError("loss nan at step 1")
        return _record(model, lr, seed, data_seed, 0.5 + 0.01 * seed + 0.001 * data_seed)

    monkeypatch.setattr(stability, "train_run", fake_train)
    settings = protocol.ProtocolSettings(train_tokens=8192, learning_rates=(1e-3, 3e-3, 1e-2))
    runs = stability.run_stability(
        {"lstm": config}, settings, tmp_path, length=1024, seeds=stability.SeedGrid()
    )
    lstm = runs["lstm"]
    assert [(r.init_seed, r.data_seed) for r in lstm.crossed] == stability.SeedGrid().cells()
    assert lstm.crossed[0].record is grid[1]  # the grid's run is the (0, 0) cell, evaluated on test
    assert len(lstm.result.seeds) == 10 and lstm.result.learning_rate == 3e-3
    assert ("lstm/lr0.003/seed2_data1") in [t[3] for t in trained]
    assert (3e-3, 4, 1, "lstm/lr0.003/seed4_data1") in trained and (
        3e-3,
        0,
        0,
        "lstm/lr0.003/seed0",
    ) not in trained
    # every other rate: its grid run evaluated on test, seeds 1 and 2 with data seed 0
    assert sorted(lstm.by_rate) == [1e-3, 3e-3, 1e-2]
    assert (1e-3, "seed0_data0.npz") in evaluated and (1e-2, "seed0_data0.npz") in evaluated
    assert [(r.init_seed, r.data_seed) for r in lstm.by_rate[1e-3]] == [(0, 0), (1, 0), (2, 0)]
    assert [r.init_seed for r in lstm.by_rate[3e-3]] == [0, 1, 2]  # the crossed grid's (i, 0) cells
    diverged = lstm.by_rate[1e-2][2]
    assert diverged.record is None and "diverged" in diverged.note
    assert (tmp_path / "lstm/lr0.01/seed2_data0/diverged.json").exists()
    assert len(lstm.protocol_result().seeds) == 5  # one run per initialisation seed

    trained.clear()
    again = stability.run_stability({"lstm": config}, settings, tmp_path, length=1024)
    assert (1e-2, 2, 0, "lstm/lr0.01/seed2_data0") not in trained  # a diverged run is not retried
    assert "diverged" in again["lstm"].by_rate[1e-2][2].note


def test_a_data_seed_changes_the_run_digest_and_none_keeps_the_old_one():
    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8192)
    plain = protocol._run_config(base, settings, 1e-3, 1, 8192)

    class Older:  # a config from before data_seed existed
        def to_dict(self):
            return {k: v for k, v in plain.to_dict().items() if k != "data_seed"}

    before = protocol._config_sha256(Older())
    assert protocol._config_sha256(plain) == before  # records written before data_seed keep their digest
    ordered = protocol._run_config(base, settings, 1e-3, 1, 8192, data_seed=0)
    assert ordered.seed == 1 and ordered.data_seed == 0
    assert protocol._config_sha256(ordered) != before
    assert stability.run_folder("w", "m", 1e-3, 0, 0) == Path("w/m/lr0.001/seed0")  # tune_learning_rate's


def _fake_models(spread_attention: float, spread_elstm: float) -> dict[str, stability.ModelRuns]:
    rng = np.random.default_rng(1)
    out = {}
    for name, sd, validation, spread in (
        ("elstm", 0.5, 0.60, spread_elstm),
        ("encoder", 6.0, 0.65, spread_attention),
        ("lstm", 1.0, 0.55, 1.0),
    ):
        values = 60.0 + sd * rng.standard_normal((5, 2))
        crossed = [
            stability.StabilityRun(
                i, j, 3e-3, _record(name, 3e-3, i, j, values[i, j] / 100, validation), f"p{i}{j}"
            )
            for i in range(5)
            for j in range(2)
        ]
        by_rate = {3e-3: [r for r in crossed if r.data_seed == 0 and r.init_seed < 3]}
        for lr, shift in ((1e-3, -spread), (1e-2, 0.0)):
            by_rate[lr] = [
                stability.StabilityRun(i, 0, lr, _record(name, lr, i, 0, (60.0 + shift + 0.1 * i) / 100), "p")
                for i in range(3)
            ]
        match = MatchedModel(name, 100, 100, "reference", "model.mlp_expansion", 4.0)
        config = load_config_file(ROOT / "configs/genomic.py", "lstm")
        result = protocol.model_result(
            match, config, [crossed[0].record], 3e-3, [r.record for r in crossed], ["p"] * 10, length=1024
        )
        out[name] = stability.ModelRuns(result, crossed, dict(sorted(by_rate.items())))
    return out


def test_summary_applies_both_rules_to_the_best_attention_model_and_the_elstm():
    models = _fake_models(spread_attention=1.0, spread_elstm=15.0)
    s = stability.summarize_stability(
        models, "classification", shared_rates=(1e-3, 3e-3, 1e-2), n_resamples=500
    )
    rows = {r["model"]: r for r in s["models"]}
    assert s["best_by_family"] == {"recurrent": "elstm", "attention": "encoder"}  # on validation
    encoder = rows["encoder"]
    values = np.array(encoder["matrix"])
    assert encoder["sd"]["estimate"] == pytest.approx(np.std(values, ddof=1))
    assert encoder["components"]["residual"] == pytest.approx(
        stability.variance_components(values)["residual"]
    )
    assert encoder["mean"] == pytest.approx(values.mean())
    assert s["verdicts"]["a"]["verdict"] == "supported" and s["verdicts"]["a"]["pair"] == ["encoder", "elstm"]
    assert s["verdicts"]["a"]["test"] == s["brown_forsythe"]["vs_reference"]["encoder"]
    assert set(s["brown_forsythe"]["vs_reference"]) == {"encoder", "lstm"}
    assert len(s["brown_forsythe"]["pairs"]) == 3 and s["brown_forsythe"]["best_pair"]["recurrent"] == "elstm"
    assert [r["learning_rate"] for r in encoder["rates"]] == [1e-3, 3e-3, 1e-2]
    assert sum(r["chosen"] for r in encoder["rates"]) == 1
    assert rows["elstm"]["spread"]["estimate"] > 10 > encoder["spread"]["estimate"]
    assert s["verdicts"]["b"]["verdict"] == "supported"  # attention's spread is the smaller
    assert s["verdicts"]["b_noise_corrected"]["verdict"] == "supported"

    # the null rate is simulated from each model's pooled within-rate seed SD (by hand here) at the
    # design's 3 shared rates x 3 seeds; the encoder's seeds are ~10x noisier, so under no rate effect
    # rule (b) would say "contradicted" most of the time
    def pooled_sd(row):
        groups = [np.asarray(r["values"]) for r in row["rates"] if r["shared"]]
        squares = sum(((g - g.mean()) ** 2).sum() for g in groups)
        return math.sqrt(squares / (sum(g.size for g in groups) - len(groups)))

    b = s["verdicts"]["b"]
    assert b["null_seed_sds"] == pytest.approx([pooled_sd(encoder), pooled_sd(rows["elstm"])])
    assert b["null_contradicted_rate"] == pytest.approx(
        stability.spread_null_rate(*b["null_seed_sds"], rates=3, seeds=3)
    )
    assert b["null_contradicted_rate"] > 0.5
    json.dumps(s)  # plain data
    flipped = stability.summarize_stability(
        _fake_models(spread_attention=15.0, spread_elstm=1.0), "classification",
        shared_rates=(1e-3, 3e-3, 1e-2), n_resamples=500,
    )  # fmt: skip
    assert flipped["verdicts"]["b"]["verdict"] == "contradicted"
    assert flipped["verdicts"]["b_noise_corrected"]["verdict"] == "contradicted"
    without = stability.summarize_stability(
        {k: v for k, v in models.items() if k != "elstm"},
        "classification",
        shared_rates=(1e-3,),
        n_resamples=50,
    )
    assert (
        without["verdicts"]["a"]["verdict"] == "inconclusive" and "elstm" in without["verdicts"]["a"]["note"]
    )


def test_runs_that_predict_one_class_are_counted_and_named_in_the_report(tmp_path):
    """A run that predicts one class for every test example is flagged per run, counted per model and
    named under verdict (a) for the claim's pair; the verdict itself is unchanged (descriptive only)."""
    import dataclasses

    from seqjax.experiment.predictions import RunPredictions, write_predictions

    targets = np.array([0, 1, 0, 1, 1, 0])

    def predictions(name, values):
        path = tmp_path / f"{name}.npz"
        run = RunPredictions("m", 0, 1024, np.arange(6), np.arange(6), targets, np.asarray(values),
                             np.ones(6))  # fmt: skip
        write_predictions(path, run)
        return str(path)

    # Per-class scores, as the trainer writes them: different numbers, one predicted class.
    constant = predictions("constant", [[0.9 - 0.1 * i, -0.5 + 0.1 * i] for i in range(6)])
    varied = predictions("varied", [0, 1, 0, 1, 0, 0])
    models = _fake_models(spread_attention=1.0, spread_elstm=15.0)
    crossed = [
        dataclasses.replace(r, predictions=constant if r.data_seed == 1 else varied)
        for r in models["encoder"].crossed
    ]
    models["encoder"] = dataclasses.replace(models["encoder"], crossed=crossed)
    assert (
        stability.predicts_one_class(crossed[1]) is True and stability.predicts_one_class(crossed[0]) is False
    )
    assert stability.predicts_one_class(models["elstm"].crossed[0]) is None  # no predictions file
    s = stability.summarize_stability(
        models, "classification", shared_rates=(1e-3, 3e-3, 1e-2), n_resamples=200
    )
    rows = {r["model"]: r for r in s["models"]}
    assert rows["encoder"]["one_class_runs"] == 5 and rows["elstm"]["one_class_runs"] == 0
    assert [r["one_class"] for r in rows["encoder"]["runs"][:2]] == [False, True]
    reference = stability.summarize_stability(
        _fake_models(spread_attention=1.0, spread_elstm=15.0), "classification",
        shared_rates=(1e-3, 3e-3, 1e-2), n_resamples=200,
    )  # fmt: skip
    assert s["verdicts"]["a"]["verdict"] == reference["verdicts"]["a"]["verdict"]
    text = "\n".join(load_driver("stability.py").verdict_lines(s, 2, 3))
    assert "predict one class for every test example (encoder: 5 of 10; elstm: 0 of 10)" in text


def test_lm_runs_causal_stand_ins_for_the_encoders():
    assert stability.task_presets(["lstm", "elstm", "mamba", "encoder", "longformer"], "lm") == (
        ["lstm", "elstm", "mamba", "attention", "swa"],
        {"encoder": "attention", "longformer": "swa"},
    )
    assert stability.task_presets(["encoder", "longformer"], "classification") == (
        ["encoder", "longformer"],
        {},
    )
    with pytest.raises(ValueError, match="bidirectional encoder"):
        stability.task_presets(["linformer"], "lm")  # no stand-in: refused, not silently run


@pytest.mark.slow
def test_stability_smoke_run(tmp_path: Path) -> None:
    results = run_driver("stability.py", tmp_path, "--size=smoke")
    s = results["stability"]
    assert results["task"] == "genic_vs_intergenic" and results["length"] == 256
    assert s["unit"] == "macro-F1 (F1 points)" and [r["model"] for r in s["models"]] == ["elstm", "encoder"]
    for row in s["models"]:
        assert [(r["init_seed"], r["data_seed"]) for r in row["runs"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        values = [r["value"] for r in row["runs"]]
        assert all(0 <= v <= 100 for v in values) and np.array(row["matrix"]).shape == (2, 2)
        assert row["sd"]["estimate"] == pytest.approx(np.std(values, ddof=1))
        assert row["sd"]["low"] <= row["sd"]["estimate"] <= row["sd"]["high"]
        assert row["components"]["df"] == {"init": 1, "data": 1, "residual": 1}
        assert len({r["predictions"] for r in row["runs"]}) == 4
        for r in row["runs"]:
            assert Path(r["predictions"]).exists()
            record = json.loads((Path(r["workdir"]) / "run.json").read_text())
            assert record["seed"] == r["init_seed"]
            # the grid's run (seed 0 set both) keeps data_seed None; every other cell records its own
            assert record["data_seed"] == (
                None if (r["init_seed"], r["data_seed"]) == (0, 0) else r["data_seed"]
            )
    # two training steps: verdict (a) is chance, but it must be rule (a) applied to Brown-Forsythe's test
    # (Levene's with the median) of the encoder's runs against the E-LSTM's: p < 0.05 with the larger SD
    values = {row["model"]: [r["value"] for r in row["runs"]] for row in s["models"]}
    a = s["verdicts"]["a"]
    assert a["pair"] == ["encoder", "elstm"]
    levene = scipy_stats.levene(values["encoder"], values["elstm"], center="median")
    p_value = float(levene.pvalue) if np.isfinite(levene.pvalue) else 1.0  # both constant: no evidence
    assert a["test"]["p_value"] == pytest.approx(p_value)
    sd_encoder, sd_elstm = np.std(values["encoder"], ddof=1), np.std(values["elstm"], ddof=1)
    if p_value >= 0.05 or sd_encoder == sd_elstm:
        assert a["verdict"] == "inconclusive", a
    else:
        assert a["verdict"] == ("supported" if sd_encoder > sd_elstm else "contradicted"), a
    assert s["verdicts"]["b"]["verdict"] == "inconclusive"  # one rate in the smoke grid
    assert [r["seeds"] for r in results["summary"]["models"]] == [2, 2]  # data seed 0 only
    # the k-mer baselines, scored on the runs' own test examples, beside the models
    baselines = {b["model"]: b for b in results["summary"]["baselines"]}
    assert any("mer" in name for name in baselines), sorted(baselines)
    for b in baselines.values():
        assert b["low"] <= b["estimate"] <= b["high"]
    text = (tmp_path / "out.md").read_text()
    for phrase in (
        "Verdict (a): attention varies more",
        "Verdict (b): attention tolerates",
        "σ_init",
        "## Strong non-neural baselines (fit on the train split; scored on the runs' test examples)",
        "against the strongest baseline, paired on the same test examples",
    ):
        assert phrase in text
    against = results["summary"]["against_strongest_baseline"]
    assert sorted(against) == sorted(r["model"] for r in results["summary"]["models"])
    for d in against.values():
        assert d["low"] <= d["estimate"] <= d["high"]
    # experiments/rescore_baselines.py, from the report's JSON and predictions alone (no training),
    # refits the baselines and pairs the same runs with the same strongest one: the report's numbers
    command = [sys.executable, str(ROOT / "experiments" / "rescore_baselines.py")]
    command += [f"--results={tmp_path / 'out.json'}", "--resamples=200", f"--out={tmp_path / 'rescored'}"]
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert rescored["strongest_baseline"] == results["summary"]["strongest_baseline"]
    assert rescored["strongest_chosen_on"] == results["summary"]["strongest_chosen_on"] == "validation"
    for model, d in rescored["against_strongest_baseline"].items():
        assert d["estimate"] == pytest.approx(against[model]["estimate"])
        assert (d["low"], d["high"]) == pytest.approx((against[model]["low"], against[model]["high"]))
    text = (tmp_path / "rescored.md").read_text()
    assert "against the strongest baseline" in text and "Each model minus every baseline" in text
    for suffix in ("_runs.png", "_rates.png"):
        assert (tmp_path / f"out{suffix}").stat().st_size > 1000
    # --rejudge: the rate rules from the JSON's run values alone; here a second shared rate is added at
    # which the encoder collapses and the E-LSTM does not, so (b) and (b') have something to judge
    for row in results["stability"]["models"]:
        low = row["model"] == "encoder"
        row["rates"].append(
            {**row["rates"][0], "learning_rate": 1.0, "chosen": False,
             "values": [v - 30.0 if low else v for v in row["rates"][0]["values"]]}
        )  # fmt: skip
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(results))
    command = [sys.executable, str(ROOT / "experiments" / "stability.py"), f"--rejudge={edited}"]
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rejudged = json.loads(edited.read_text())
    verdicts = rejudged["stability"]["verdicts"]
    # the spreads over the two shared rates: the encoder's rate means differ by exactly 30 points, the
    # E-LSTM's not at all; each rule's verdict is its interval's side of zero (below: supported)
    assert verdicts["b"]["difference"]["estimate"] == pytest.approx(30.0)
    words = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}
    for rule in ("b", "b_noise_corrected"):
        difference = verdicts[rule]["difference"]
        assert verdicts[rule]["verdict"] == words[rule_class("less", difference["low"], difference["high"])]
    assert rejudged["rejudged"]["command"].endswith(f"--rejudge={edited}")
    assert rejudged["summary"] == json.loads(json.dumps(results["summary"]))  # nothing else recomputed
    text = (tmp_path / "edited.md").read_text()
    assert "Verdict (b′), corrected for seed noise" in text and "rate rules re-judged" in text
    command[-1] = f"--rejudge={tmp_path / 'missing.json'}"
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "--rejudge" in done.stderr
