"""The few-shot study (issue 19 §2): the budget rule, the size rules, the three verdicts on synthetic
predictions whose answer is known (each rule can come out supported, contradicted, depends or
inconclusive), the paired subsamples, and `experiments/few_shot.py --size=smoke` end to end."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from seqjax.experiment import few_shot, statistics
from seqjax.experiment.few_shot import Budget
from seqjax.experiment.predictions import RunPredictions, write_predictions
from seqjax.experiment.report import family_of
from tests.driver_helpers import assert_judged_by_rule, load_driver, run_driver

ROOT = Path(__file__).resolve().parents[1]
N_TEST = 200
CLUSTERS = np.repeat(np.arange(40), 5)  # 200 test windows in 40 genome blocks
TARGETS = np.tile([0, 1], N_TEST // 2)
RESAMPLES = 300


def _driver():
    return load_driver("few_shot.py")


# ----------------------------------------------------------------------------------------------------
# The budget and the sizes.
# ----------------------------------------------------------------------------------------------------
def test_budget_is_epochs_clamped_by_the_floor_and_the_cap() -> None:
    budget = Budget(epochs=10, min_steps=32, max_steps=250)
    # n = 50 at batch 16: 10 epochs would be 32 steps (31.25 rounded up); the floor agrees
    assert budget.steps(50, 16) == 32 and budget.epochs_seen(50, 16) == pytest.approx(32 * 16 / 50)
    assert budget.steps(100, 16) == 63  # ceil(62.5): 10 epochs exactly, neither bound bites
    assert budget.epochs_seen(100, 16) == pytest.approx(10.08)
    assert budget.steps(10_000, 16) == 250 and budget.epochs_seen(10_000, 16) == pytest.approx(0.4)  # capped
    assert budget.steps(10, 16) == 32  # the floor: 20 steps would be 10 epochs
    assert budget.steps(400, 4) == 250  # a longer window (batch 4 at 4k): the cap at smaller n
    steps = [budget.steps(n, 16) for n in (50, 100, 250, 500, 1000)]
    assert steps == sorted(steps)  # never fewer steps for more data
    with pytest.raises(ValueError, match="min_steps <= max_steps"):
        Budget(epochs=10, min_steps=300, max_steps=250)
    with pytest.raises(ValueError, match="epochs > 0"):
        Budget(epochs=0, min_steps=1, max_steps=2)


def test_sizes_above_the_train_split_are_dropped_and_the_tuning_size_falls_back() -> None:
    assert few_shot.feasible_sizes([10000, 50, 2500], 2862) == ([50, 2500], [10000])
    assert few_shot.feasible_sizes([50], 10) == ([], [50])
    assert few_shot.tuning_size([50, 100, 250, 500, 1000], 500) == 500
    assert few_shot.tuning_size([50, 100, 250], 500) == 250
    assert few_shot.tuning_size([1000, 2500], 500) == 1000
    with pytest.raises(ValueError, match="no training-set size"):
        few_shot.tuning_size([], 500)


def test_driver_anchors_and_keys() -> None:
    driver = _driver()
    keys = driver.parse_keys(["genic_vs_intergenic@1024", "genic_vs_intergenic@4096", "species@1024"])
    # every genic crop shares one anchor with room for the shift at its longest length
    assert driver.anchors(keys, 128) == {"genic_vs_intergenic": 4352, "species": 1280}
    assert driver.anchors(keys, 128, nested=16384) == {"genic_vs_intergenic": 16384, "species": 16384}
    assert driver.anchors(keys[2:], 128, nested=4352) == {"species": 4352}  # the default: one anchor
    with pytest.raises(ValueError, match=r"set --nested >= 4352"):
        driver.anchors(keys, 128, nested=4096)  # no room to shift the 4k crop
    with pytest.raises(ValueError, match="task@length"):
        driver.parse_keys(["species"])


# ----------------------------------------------------------------------------------------------------
# The statistics, on saved predictions whose accuracy is set.
# ----------------------------------------------------------------------------------------------------
def _predictions(folder: Path, name: str, accuracies: list[float]) -> list[str]:
    """One predictions file per subsample, whose argmax is right on a fraction `accuracies[s]` of the
    test windows: the first ones of an order drawn per subsample, the same for every model (so a model
    right more often is right wherever a worse one is: differences are tight, as between two models
    that find the same windows easy)."""
    paths = []
    for s, accuracy in enumerate(accuracies):
        right = np.zeros(N_TEST, bool)
        right[np.random.default_rng(s).permutation(N_TEST)[: round(accuracy * N_TEST)]] = True
        predicted = np.where(right, TARGETS, 1 - TARGETS)
        logits = np.eye(2, dtype=np.float32)[predicted] * 2.0
        run = RunPredictions(name, s, 1024, np.arange(N_TEST), CLUSTERS, TARGETS, logits, np.zeros(N_TEST))
        paths.append(str(write_predictions(folder / f"{name}-{s}.npz", run)))
    return paths


def _key(folder: Path, accuracy: dict, sizes=(50, 100), subsamples: int = 3, validation=None) -> dict:
    """A `run_key` result: accuracy[(model, arm)] is the test accuracy at every size and subsample
    (validation the same, unless `validation[(model, arm)]` says otherwise)."""
    runs = []
    for (model, arm), value in accuracy.items():
        for n in sizes:
            paths = _predictions(folder, f"{model}-{arm}-{n}", [value] * subsamples)
            seen = (validation or {}).get((model, arm), value)
            runs.append(
                {
                    "n": n,
                    "arm": arm,
                    "model": model,
                    "family": family_of(model),
                    "predictions": paths,
                    "validation": [seen] * subsamples,
                    "test": [value] * subsamples,
                }
            )
    return {"sizes": list(sizes), "runs": runs}


def _both_arms(values: dict[str, float], gains: dict[str, float] | None = None) -> dict:
    gains = gains or {}
    out = {}
    for model, value in values.items():
        out[(model, "none")] = value
        out[(model, "augmented")] = value + gains.get(model, 0.0)
    return out


def _verdicts(keys: dict, **kwargs) -> dict:
    return few_shot.verdicts(keys, claim_below=500, n_resamples=RESAMPLES, **kwargs)


def test_rule_a_supported_contradicted_depends_and_inconclusive(tmp_path: Path) -> None:
    better = _key(tmp_path / "r", _both_arms({"lstm": 0.9, "mamba": 0.7, "attention": 0.6}))
    worse = _key(tmp_path / "w", _both_arms({"lstm": 0.55, "attention": 0.85, "longformer": 0.6}))
    tie = _key(tmp_path / "t", _both_arms({"lstm": 0.7, "attention": 0.7}))
    a = _verdicts({"g@1024": better})["a"]
    assert a["verdict"] == "supported" and list(a["per_key"]) == ["g@1024 n=50", "g@1024 n=100"]
    difference = a["differences"]["g@1024 n=50"]
    assert (difference["better"], difference["worse"]) == ("lstm", "attention")  # chosen on validation
    assert difference["estimate"] == pytest.approx(0.3) and difference["low"] > 0
    assert a["confidence_level"] == pytest.approx(1 - 0.05 / 2)  # Bonferroni over the (key, n) pairs
    assert _verdicts({"g@1024": worse})["a"]["verdict"] == "contradicted"
    assert _verdicts({"g@1024": better, "s@1024": worse})["a"]["verdict"] == "depends"
    assert _verdicts({"g@1024": tie})["a"]["verdict"] == "inconclusive"


def test_the_best_model_is_chosen_on_validation_not_on_test(tmp_path: Path) -> None:
    # mamba is best on test, lstm on validation: the rule compares lstm
    key = _key(
        tmp_path,
        _both_arms({"lstm": 0.65, "mamba": 0.9, "attention": 0.7}),
        validation={("lstm", "none"): 0.99, ("mamba", "none"): 0.5},
    )
    difference = _verdicts({"g@1024": key})["a"]["differences"]["g@1024 n=50"]
    assert difference["better"] == "lstm" and difference["estimate"] == pytest.approx(-0.05)


def test_best_of_family_puts_a_diverged_model_last_and_breaks_ties_by_name() -> None:
    def run(model, validation):
        return {"n": 50, "arm": "none", "model": model, "family": "recurrent", "validation": validation}

    nan = float("nan")
    for runs in (
        [run("gla", [nan, 0.6]), run("lstm", [0.5, 0.5])],
        [run("lstm", [0.5, 0.5]), run("gla", [nan])],
    ):
        assert few_shot.best_of_family({"runs": runs}, "recurrent", [50]) == "lstm"
    tied = [run("elstm", [0.5]), run("mamba", [0.5]), run("lstm", [0.5])]
    assert few_shot.best_of_family({"runs": tied}, "recurrent", [50]) == "mamba"  # as before: the later name


def test_rule_b_the_interaction_of_model_and_augmentation(tmp_path: Path) -> None:
    rnn_gains = _key(tmp_path / "r", _both_arms({"lstm": 0.6, "attention": 0.6}, {"lstm": 0.25}))
    b = _verdicts({"g@1024": rnn_gains})["b"]
    interaction = b["differences"]["g@1024"]
    assert b["verdict"] == "supported" and interaction["sizes"] == [50, 100]
    assert interaction["estimate"] == pytest.approx(0.25) and interaction["low"] > 0
    assert interaction["gains"]["lstm"]["estimate"] == pytest.approx(0.25)
    assert interaction["gains"]["attention"]["estimate"] == pytest.approx(0.0)
    attention_gains = _key(tmp_path / "a", _both_arms({"lstm": 0.6, "attention": 0.6}, {"attention": 0.25}))
    assert _verdicts({"g@1024": attention_gains})["b"]["verdict"] == "contradicted"
    # both gain alike: no interaction, however large the gains
    alike = _key(
        tmp_path / "s", _both_arms({"lstm": 0.6, "attention": 0.6}, {"lstm": 0.25, "attention": 0.25})
    )
    b = _verdicts({"g@1024": alike})["b"]
    assert b["verdict"] == "inconclusive" and b["differences"]["g@1024"]["estimate"] == pytest.approx(0.0)
    # only sizes below claim_below are pooled
    wide = _key(tmp_path / "w", _both_arms({"lstm": 0.6, "attention": 0.6}, {"lstm": 0.25}), sizes=(50, 1000))
    assert _verdicts({"g@1024": wide})["b"]["differences"]["g@1024"]["sizes"] == [50]


def test_rule_c_non_inferiority_depends_on_the_margin(tmp_path: Path) -> None:
    # the recurrent model 10 points behind at every size, wrong on 20 windows the other gets right
    key = _key(tmp_path, _both_arms({"lstm": 0.70, "attention": 0.80}), subsamples=2)
    generous = _verdicts({"g@1024": key}, margin=0.2)["c"]
    assert generous["verdict"] == "supported"  # within 20 points everywhere: "matches"
    difference = generous["differences"]["g@1024 n=50"]
    assert difference["estimate"] == pytest.approx(-0.1)
    assert difference["shifted"]["low"] == pytest.approx(difference["low"] + 0.2)
    assert _verdicts({"g@1024": key}, margin=0.0)["c"]["verdict"] == "contradicted"  # behind, no margin
    assert _verdicts({"g@1024": key}, margin=0.1)["c"]["verdict"] == "inconclusive"  # the margin's edge
    # sizes from match_below on are not covered
    assert list(_verdicts({"g@1024": key}, match_below=100, margin=0.2)["c"]["per_key"]) == ["g@1024 n=50"]


def test_rule_c_is_not_judged_over_too_few_clusters(tmp_path: Path, monkeypatch) -> None:
    """Rule (c) judges the shifted intervals over the same clusters as rule (a): over 4 genome blocks
    neither is judged (before, (c) said "supported" where (a) was not judged)."""
    monkeypatch.setattr(sys.modules[__name__], "CLUSTERS", np.repeat(np.arange(4), 50))
    rules = _verdicts({"g@1024": _key(tmp_path, _both_arms({"lstm": 0.9, "attention": 0.6}))}, margin=0.2)
    assert {v["class"] for v in rules["a"]["per_key"].values()} == {"neither"}
    assert {v["class"] for v in rules["c"]["per_key"].values()} == {"neither"}
    assert rules["a"]["verdict"] == rules["c"]["verdict"] == "inconclusive"
    assert {d["shifted"]["n_clusters"] for d in rules["c"]["differences"].values()} == {4}


def test_a_missing_family_leaves_the_rules_inconclusive(tmp_path: Path) -> None:
    only_rnn = _key(tmp_path, _both_arms({"lstm": 0.9, "mamba": 0.8}))
    result = _verdicts({"g@1024": only_rnn})
    assert {rule: v["verdict"] for rule, v in result.items()} == dict.fromkeys("abc", "inconclusive")
    assert result["a"]["note"] == "no pair to compare"


def test_paired_subsamples_remove_what_the_subsamples_share() -> None:
    # subsample s shifts both models alike (a hard or an easy training set); the difference is 0.1 throughout
    rng = np.random.default_rng(0)
    shared = np.array([-0.3, 0.0, 0.3])[:, None]
    a = 1.0 + shared + rng.normal(0, 0.01, (3, N_TEST))
    b = a - 0.1
    kwargs = {"cluster_ids": CLUSTERS, "n_resamples": 500}
    paired = statistics.contrast_bootstrap([a, b], [1, -1], paired_seeds=True, **kwargs)
    apart = statistics.contrast_bootstrap([a, b], [1, -1], **kwargs)
    assert paired.estimate == pytest.approx(0.1) == apart.estimate
    assert paired.high - paired.low < 0.01 < apart.high - apart.low
    with pytest.raises(ValueError, match="paired_seeds=True pairs seed i"):
        statistics.contrast_bootstrap([a, b[:2]], [1, -1], paired_seeds=True, **kwargs)


def test_kmer_curve_fits_on_the_trainers_subsets() -> None:
    from seqjax.data.genomic import make_sources
    from seqjax.data.pipeline import subset_indices
    from seqjax.train.trainer import default_data_dir

    sources = make_sources({"task": "species", "length": 128, "nested": 160}, default_data_dir())
    rows = few_shot.kmer_curve(
        sources, [16, 64], 2, kmer_sizes=(2, 3), evaluation_examples=48, n_resamples=50
    )
    assert [r["n"] for r in rows] == [16, 64]
    for row in rows:
        assert set(row["k"]) <= {2, 3} and len(row["k"]) == 2
        assert row["low"] <= row["estimate"] <= row["high"] and 0 <= row["estimate"] <= 1
        assert math.isfinite(row["secondary"]["macro_f1"]["estimate"])
    # the subset of (n, s) is the trainer's: stratified by label, drawn with seed s
    labels = sources["train"].labels()
    counts = np.bincount(labels[subset_indices(sources["train"], 64, 1)], minlength=4)
    assert counts.sum() == 64 and np.all(counts >= 1)


def test_chance_lines_name_the_models_never_above_chance() -> None:
    few_shot = load_driver("few_shot.py")
    curve = [
        {"model": model, "arm": arm, "n": n, "low": low}
        for model, arm, n, low in [
            ("lstm", "none", 50, 0.30),
            ("lstm", "none", 500, 0.24),
            ("attention", "none", 50, 0.20),
            ("attention", "none", 500, 0.25),  # at chance: not above it
            ("attention", "augmented", 500, float("nan")),  # no interval: not counted above
        ]
    ]
    key = {"splits": {"test": {"class_counts": dict.fromkeys("abcd", 10)}}, "curve": curve}
    first, second = few_shot.chance_lines(key)
    assert first.endswith("= 0.250): lstm (none) at n = 50.")
    assert second == "Not above chance at any n: attention (none), attention (augmented)."
    assert few_shot.chance_lines({"splits": {}, "curve": curve}) == []


# ----------------------------------------------------------------------------------------------------
# The driver end to end.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_few_shot_smoke_run(tmp_path: Path) -> None:
    from seqjax.train.trainer import load_config

    results = run_driver("few_shot.py", tmp_path, "--size=smoke")
    key = results["keys"]["species@128"]
    assert key["sizes"] == [32, 64] and key["dropped_sizes"] == [] and key["anchor"] == 160
    assert key["tune_size"] == 64 and set(key["learning_rates"]) == {"lstm", "attention"}
    assert len(key["curve"]) == 2 * 2 * 2  # sizes x arms x models
    for row in key["curve"]:
        assert row["low"] <= row["estimate"] <= row["high"]
        assert row["secondary"]["macro_f1"]["low"] <= row["secondary"]["macro_f1"]["estimate"]
        assert len(row["subsample_values"]) == 2 and row["steps"] == 2
    assert [r["n"] for r in key["kmer"]] == [32, 64]
    # two training steps: the verdicts are chance, but each must be the rule's over its recorded intervals
    verdicts = results["verdicts"]
    for rule in ("a", "b"):
        assert_judged_by_rule(verdicts[rule], verdicts[rule]["differences"], direction="greater")
    # rule (c) judges each difference shifted up by the margin (recurrent at most `margin` behind), over
    # the same clusters (fewer than 10: not judged)
    for d in verdicts["c"]["differences"].values():
        for end in ("estimate", "low", "high"):
            assert d["shifted"][end] == pytest.approx(d[end] + results["margin"], abs=1e-12)
        assert d["shifted"]["n_clusters"] == d["n_clusters"]
    shifted = {k: d["shifted"] for k, d in verdicts["c"]["differences"].items()}
    assert_judged_by_rule(verdicts["c"], shifted, direction="greater")
    assert list(results["verdicts"]["a"]["per_key"]) == ["species@128 n=32"]  # n < claim_below = 64
    assert list(results["verdicts"]["c"]["per_key"]) == ["species@128 n=32", "species@128 n=64"]
    assert set(results["verdicts"]["b"]["differences"]["species@128"]["gains"]) == {"lstm", "attention"}
    # the tuning run is the grid's (n = 64, subsample 0) run, read back: 14 + 2 runs, not 18
    runs = tmp_path / "runs" / "species_L128"
    assert len(list(runs.glob("n*/*/*/lr*/seed*/run.json"))) == 16
    # the augmented arm trained with the augmentation, the other without; subsample s: seed and subset s
    augmented = load_config(str(next(runs.glob("n32/augmented/lstm/lr*/seed1"))))
    assert (augmented.data.augment, augmented.data.max_shift) == ("both", 16)
    assert (augmented.train_examples, augmented.train_subset_seed, augmented.seed) == (32, 1, 1)
    plain = load_config(str(next(runs.glob("n32/none/lstm/lr*/seed1"))))
    assert "augment" not in plain.data
    text = (tmp_path / "out.md").read_text()
    for phrase in ("Verdict (a)", "Verdict (b)", "Verdict (c)", "k-mer logistic regression", "Macro-F1"):
        assert phrase in text
    assert "Above chance (balanced-accuracy interval above 1 / classes = 0.250)" in text  # 4 species
    assert (tmp_path / "out_species_L128.png").stat().st_size > 1000
