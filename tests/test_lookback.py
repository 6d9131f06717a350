"""The look-back study (issue 18 §3): the gain statistics (`seqjax.experiment.sweep.length_gain`,
`seqjax.experiment.lookback`, `statistics.contrast_bootstrap`), the config's `length` option, and
`experiments/lookback.py` end to end at smoke size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from seqjax.config import load_config_file
from seqjax.experiment import statistics
from seqjax.experiment.lookback import family_gain_interval, forecast_diebold_mariano, paired_errors
from seqjax.experiment.predictions import (
    RunPredictions,
    read_predictions,
    reduce_forecasts,
    write_predictions,
)
from seqjax.experiment.sweep import length_gain
from tests.driver_helpers import assert_judged_by_rule, rule_class, run_driver

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = np.repeat(np.arange(40), 5)  # 200 windows in 40 time blocks


def _errors(rng: np.random.Generator, level: float, seeds: int = 3) -> np.ndarray:
    """[seeds, 200] per-window errors: a shared block effect (the windows' difficulty), plus noise."""
    difficulty = np.repeat(np.random.default_rng(7).gamma(2.0, 0.5, 40), 5)
    return level + difficulty[None] + rng.normal(0.0, 0.05, (seeds, 200))


def test_contrast_bootstrap_is_paired_bootstrap_for_two_models():
    rng = np.random.default_rng(0)
    a, b = _errors(rng, 1.0), _errors(rng, 0.8, seeds=2)
    paired = statistics.paired_bootstrap(a, b, cluster_ids=CLUSTERS, n_resamples=300)
    contrast = statistics.contrast_bootstrap([a, b], [1, -1], cluster_ids=CLUSTERS, n_resamples=300)
    assert contrast.estimate == pytest.approx(paired.estimate)
    assert contrast.interval == pytest.approx(paired.interval)


def test_contrast_bootstrap_checks_its_inputs():
    with pytest.raises(ValueError, match="one coefficient per model"):
        statistics.contrast_bootstrap([[1.0, 2.0]], [1, -1])
    with pytest.raises(ValueError, match="same examples"):
        statistics.contrast_bootstrap([[1.0, 2.0], [1.0, 2.0, 3.0]], [1, -1])


def _saved(folder: Path, lookback: int, errors: np.ndarray) -> list[str]:
    """Predictions files of one model's seeds whose per-window MSE is `errors` [seeds, 200] and MAE its
    square root (one forecast value per window, the target 0)."""
    ids = np.arange(200) * 10
    paths = []
    for seed, row in enumerate(errors):
        targets = np.zeros((200, 1, 1), np.float32)
        forecasts = np.sqrt(row).astype(np.float32)[:, None, None]
        losses = forecasts[:, 0, 0].astype(np.float64) ** 2
        run = RunPredictions("lstm", seed, lookback, ids, CLUSTERS, targets, forecasts, losses)
        paths.append(str(write_predictions(folder / f"L{lookback}-{seed}.npz", run)))
    return paths


def test_length_gain_classes_a_clear_gain_a_clear_loss_and_no_change(tmp_path):
    rng = np.random.default_rng(1)
    short_errors = _errors(rng, 1.0)
    short = _saved(tmp_path / "short", 96, short_errors)

    def gain(level: float, metric: str = "mse") -> dict:
        long = _saved(tmp_path / f"long{level}", 512, _errors(rng, level))
        return length_gain(long, short, "forecast", larger_is_better=False, metric=metric, n_resamples=500)

    helps = gain(0.7)
    assert helps["class"] == "helps" and helps["high"] < 0
    assert helps["estimate"] == pytest.approx(-0.3, abs=0.03)
    hurts = gain(1.3)
    assert hurts["class"] == "hurts" and hurts["low"] > 0
    same = gain(1.0)
    assert same["class"] == "no clear difference" and same["low"] < 0 < same["high"]
    # pairing matters: the block effect is shared, so the interval is far narrower than the spread of
    # either look-back's errors
    assert helps["high"] - helps["low"] < 0.1 < short_errors.std()
    mae = gain(0.7, "mae")  # MAE = sqrt(MSE) here, lower too
    assert mae["class"] == "helps" and mae["estimate"] < 0
    assert "Diebold-Mariano" in helps["paired_test"]["name"]


def test_family_gain_interval_says_which_family_gains_more():
    rng = np.random.default_rng(2)
    flat_short, flat_long = _errors(rng, 1.0), _errors(rng, 1.0)
    gain_short, gain_long = _errors(rng, 1.0), _errors(rng, 0.6)
    recurrent = family_gain_interval(gain_short, gain_long, flat_short, flat_long, CLUSTERS, n_resamples=500)
    assert recurrent["class"] == "recurrent gains more" and recurrent["high"] < 0
    assert recurrent["estimate"] == pytest.approx(-0.4, abs=0.03)
    attention = family_gain_interval(flat_short, flat_long, gain_short, gain_long, CLUSTERS, n_resamples=500)
    assert attention["class"] == "attention gains more" and attention["low"] > 0
    both = family_gain_interval(
        gain_short, gain_long, gain_short, _errors(rng, 0.6), CLUSTERS, n_resamples=500
    )
    assert both["class"] == "no clear difference"


def _run(folder: Path, lookback: int, seed: int, ids: np.ndarray, shift: float) -> str:
    targets = np.ones((len(ids), 4, 2), np.float32)
    forecasts = targets + np.float32(shift)
    losses = np.mean((forecasts.astype(np.float64) - targets) ** 2, axis=(1, 2))
    run = RunPredictions("lstm", seed, lookback, ids, ids // 3, targets, forecasts, losses)
    return str(write_predictions(folder / f"L{lookback}-seed{seed}.npz", run))


def test_paired_errors_reads_mse_and_mae_and_refuses_other_windows(tmp_path):
    ids = np.arange(0, 60, 5)
    short = [_run(tmp_path, 96, k, ids, 0.5) for k in range(2)]
    long = [_run(tmp_path, 512, k, ids, 0.25) for k in range(2)]
    (mse_short, mse_long), got_ids, clusters = paired_errors([short, long])
    assert mse_short.shape == (2, len(ids)) and np.allclose(mse_short, 0.25) and np.allclose(mse_long, 0.0625)
    (mae_short, mae_long), _, _ = paired_errors([short, long], "mae")
    assert np.allclose(mae_short, 0.5) and np.allclose(mae_long, 0.25)
    assert np.array_equal(got_ids, ids) and np.array_equal(clusters, read_predictions(long[0]).cluster_ids)
    other = [_run(tmp_path / "other", 512, 0, ids + 1, 0.25)]
    with pytest.raises(ValueError, match="same test windows"):
        paired_errors([short, other])
    # a run carried between machines keeps its errors, not its targets (reduce_forecasts): it pairs with
    # a full run of the same windows, with the same errors (found when a carried table was made)
    carried = [
        str(write_predictions(tmp_path / f"carried{k}.npz", reduce_forecasts(read_predictions(p))))
        for k, p in enumerate(short)
    ]
    (mse_carried, mse_long2), _, _ = paired_errors([carried, long])
    assert np.allclose(mse_carried, mse_short) and np.allclose(mse_long2, mse_long)
    (mae_carried, _), _, _ = paired_errors([carried, long], "mae")
    assert np.allclose(mae_carried, mae_short)
    with pytest.raises(ValueError, match="same test windows"):
        paired_errors([carried, other])
    shifted = [_run(tmp_path / "shifted", 512, 0, ids, 0.25)]
    shifted_run = read_predictions(shifted[0])
    write_predictions(shifted[0], dataclasses.replace(shifted_run, targets=shifted_run.targets + 1))
    with pytest.raises(ValueError, match="same test windows"):  # full runs still compare their targets
        paired_errors([short, carried, shifted])


def test_forecast_diebold_mariano_counts_the_overlap_of_targets():
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.2, (2, 300))
    ids = np.arange(300) * 20  # windows 20 rows apart: a horizon of 96 rows overlaps 5 of them
    assert forecast_diebold_mariano(a, a + 0.1, ids, horizon=96)["lags"] == 5
    assert forecast_diebold_mariano(a, a + 0.1 + rng.normal(0, 0.05, 300), ids, 96)["p_value"] < 0.01
    assert np.isnan(forecast_diebold_mariano(a, a, ids, 96)["p_value"])  # equal losses: no test


def test_timeseries_config_takes_length_as_the_lookback():
    config = load_config_file(str(ROOT / "configs" / "timeseries.py"), "gla,length=2048,horizon=720")
    assert config.data.lookback == 2048 and config.data.horizon == 720
    same = load_config_file(str(ROOT / "configs" / "timeseries.py"), "gla,length=256,lookback=256")
    assert same.data.lookback == 256
    with pytest.raises(ValueError, match="length=256 and lookback=512 differ"):
        load_config_file(str(ROOT / "configs" / "timeseries.py"), "gla,length=256,lookback=512")


@pytest.mark.slow
def test_lookback_smoke_run(tmp_path):
    results = run_driver(
        "lookback.py",
        tmp_path,
        "--size=smoke",  # route=sample: the embedded household power sample
        "--presets=lstm,longformer",  # the Longformer encoder: the attention family here
        "--lookbacks=48,96",
        "--horizons=24",
        "--claim_from=96",
        "--windows_per_batch=8",
        "--resamples=50",
        "--evaluation_examples=16",
        "--baseline_fit_windows=256",
        "--nostep_memory",
    )
    claim = results["claim"]
    assert list(claim["per_key"]) == ["H24/L96"]
    assert claim["rows"][0]["paired_test"]["name"].startswith("Diebold-Mariano")
    # two training steps: the verdict is chance, but it must be the rule's over the recorded MSE
    # difference (lower is better: "less"), blocks too few to judge included
    assert_judged_by_rule(claim, {r["key"]: r for r in claim["rows"]}, direction="less")

    def expected_class(interval, words):  # the rule's class for a difference of errors, in the table's words
        if interval["n_clusters"] < 10:
            return f"not judged ({interval['n_clusters']} blocks, fewer than 10)"
        return words[rule_class("less", interval["low"], interval["high"])]

    gains = {g["model"]: g for g in results["gains"]["gains"]}
    assert sorted(gains) == ["longformer", "lstm"]
    for g in gains.values():
        assert (g["short"], g["long"]) == (48, 96)
        gain_words = {"claimed": "helps", "opposite": "hurts", "neither": "no clear difference"}
        assert g["mse"]["class"] == expected_class(g["mse"], gain_words), g["mse"]
        assert g["mse"]["low"] <= g["mse"]["estimate"] <= g["mse"]["high"]
    # the family contrast is gain(lstm) - gain(longformer), on the same windows and seeds
    family = results["gains"]["families"][0]
    assert (family["recurrent"], family["attention"]) == ("lstm", "longformer")
    assert family["estimate"] == pytest.approx(
        gains["lstm"]["mse"]["estimate"] - gains["longformer"]["mse"]["estimate"], abs=1e-12
    )
    family_words = {
        "claimed": "recurrent gains more",
        "opposite": "attention gains more",
        "neither": "no clear difference",
    }
    assert family["class"] == expected_class(family, family_words), family
    cells = results["cells"]
    assert [(c["horizon"], c["lookback"]) for c in cells] == [(24, 48), (24, 96)]
    ids = [read_predictions(c["models"][0]["predictions"][0]).example_ids for c in cells]
    assert np.array_equal(ids[0], ids[1])  # the same test windows at both look-backs
    for c in cells:
        assert c["protocol"]["batch_size"] == 8 and c["protocol"]["train_tokens"] == 2 * 8 * c["lookback"]
        for row in c["models"]:
            mae = row["secondary"]["mae"]
            assert row["seeds"] == 2 and mae["low"] <= mae["estimate"] <= mae["high"]
        names = [b["model"] for b in c["baselines"]]
        assert any(n.startswith("DLinear") for n in names) and any(n.startswith("NLinear") for n in names)
        assert all("mae" in b["secondary"] for b in c["baselines"])
    text = (tmp_path / "out.md").read_text()
    assert "## (a) Verdict: recurrent beats attention (look-backs >= 96)" in text
    assert "| longformer |" in text and "## (b) Does a longer look-back help?" in text
    assert (tmp_path / "out_mse_H24.png").stat().st_size > 1000


def test_a_carried_run_pairs_with_a_full_one_across_look_backs(tmp_path):
    """`report.paired_difference(..., clusters=...)` (rule (b) of the look-back table): a run carried
    between machines (errors kept, targets not) pairs with a full run of the same windows, with the
    interval of the full pair; other windows are still refused."""
    from seqjax.experiment.report import paired_difference

    ids = np.arange(0, 60, 5)
    short = [_run(tmp_path, 96, k, ids, 0.5 + 0.01 * k) for k in range(2)]
    long = [_run(tmp_path, 512, k, ids, 0.25) for k in range(2)]
    carried = [
        str(write_predictions(tmp_path / f"carried{k}.npz", reduce_forecasts(read_predictions(p))))
        for k, p in enumerate(short)
    ]
    full = paired_difference(long, short, "forecast", clusters=ids // 3, n_resamples=200)
    mixed = paired_difference(long, carried, "forecast", clusters=ids // 3, n_resamples=200)
    assert [mixed[k] for k in ("estimate", "low", "high")] == pytest.approx(
        [full[k] for k in ("estimate", "low", "high")]
    )
    other = [_run(tmp_path / "other", 512, k, ids + 1, 0.25) for k in range(2)]
    with pytest.raises(ValueError, match="different test examples"):
        paired_difference(other, carried, "forecast", clusters=ids // 3, n_resamples=200)
