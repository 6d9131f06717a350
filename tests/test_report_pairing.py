"""`report.paired_difference` on forecasts: the Diebold-Mariano lag window covers the overlap of the
windows' targets (`report.forecast_diebold_mariano`), and two models are paired only when they scored
the same windows (example ids), not merely the same time blocks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from seqjax.experiment import statistics
from seqjax.experiment.predictions import (
    RunPredictions,
    read_predictions,
    reduce_forecasts,
    write_predictions,
)
from seqjax.experiment.report import forecast_diebold_mariano, forecast_errors, paired_difference

HORIZON, GAP, WINDOWS = 96, 10, 256


def _overlapping_differences(rng: np.random.Generator, ids: np.ndarray, horizon: int) -> np.ndarray:
    """Each window's mean of i.i.d. row noise over its `horizon` target rows: windows closer than a
    horizon share rows, so the series is MA(ceil(horizon / gap) - 1) with mean zero."""
    rows = np.concatenate([[0.0], np.cumsum(rng.normal(size=int(ids[-1]) + horizon))])
    return (rows[ids + horizon] - rows[ids]) / horizon


def test_forecast_diebold_mariano_has_about_nominal_size_on_overlapping_windows():
    rng = np.random.default_rng(0)
    ids = np.arange(WINDOWS) * GAP
    runs, rejected, rejected_plain = 600, 0, 0
    for _ in range(runs):
        difference = _overlapping_differences(rng, ids, HORIZON)  # MA(9); no true difference
        a, b = difference[None] + 5.0, np.full((1, WINDOWS), 5.0)
        result = forecast_diebold_mariano(a, b, ids, HORIZON)
        rejected += result["p_value"] < 0.05
        rejected_plain += statistics.diebold_mariano(a[0], b[0]).p_value < 0.05
    assert result["lags"] == math.ceil(HORIZON / GAP) == 10
    assert 0.02 < rejected / runs < 0.10  # 0.08 here (Bartlett weights alone: about 0.11)
    assert rejected_plain / runs > 0.3  # the lag window of 1 the paired test used before (0.57)


def test_forecast_diebold_mariano_far_apart_windows_and_untestable_cases():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.1, (3, 40))
    far = forecast_diebold_mariano(a, a + 0.05 + rng.normal(0, 0.02, (1, 40)), np.arange(40) * 500, 96)
    assert far["lags"] == 1 and far["p_value"] < 0.01  # no shared targets: the plain test
    equal = forecast_diebold_mariano(a, a, np.arange(40) * 10, 96)
    assert math.isnan(equal["p_value"]) and equal["note"]
    # MA(1) differences with a negative lag-1 term: the rectangular variance mostly cancels
    # (a huge statistic), so the larger, Bartlett, one is used
    noise = np.random.default_rng(0).normal(size=201)
    differences = 0.05 + noise[1:] - 0.5 * noise[:-1]
    rectangular = statistics.diebold_mariano(differences, np.zeros(200), horizon=2)
    bartlett = statistics.diebold_mariano(differences, np.zeros(200), horizon=2, kernel="bartlett")
    assert rectangular.long_run_variance < 0.5 * bartlett.long_run_variance
    damped = forecast_diebold_mariano(differences, np.zeros(200), np.arange(200) * 48, 96)
    assert damped["lags"] == 2 and damped["kernel"] == "bartlett"
    assert damped["p_value"] == pytest.approx(bartlett.p_value)
    few = forecast_diebold_mariano(a[:, :8], a[:, :8] + 0.1, np.arange(8), 96)  # 96 lags over 8 windows
    assert math.isnan(few["p_value"]) and "too few" in few["note"]


def _write(folder: Path, model: str, ids: np.ndarray, clusters: np.ndarray, errors: np.ndarray) -> list[str]:
    """Predictions files of a forecaster's seeds whose per-window MSE is `errors` [seeds, windows]
    (targets zero, a flat forecast of sqrt(error) over the horizon, one variable)."""
    paths = []
    for seed, row in enumerate(errors):
        targets = np.zeros((len(ids), HORIZON, 1), np.float32)
        forecasts = np.broadcast_to(np.sqrt(row)[:, None, None], targets.shape).astype(np.float32)
        losses = np.mean(forecasts.astype(np.float64) ** 2, axis=(1, 2))
        run = RunPredictions(model, seed, 192, ids, clusters, targets, forecasts, losses)
        paths.append(str(write_predictions(folder / model / f"seed{seed}.npz", run)))
    return paths


def _reduced(paths: list[str], folder: Path) -> list[str]:
    out = []
    for path in paths:
        run = read_predictions(path)
        out.append(str(write_predictions(folder / run.model / f"seed{run.seed}.npz", reduce_forecasts(run))))
    return out


def test_paired_difference_tests_forecasts_with_the_overlap_lag_window(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.arange(WINDOWS) * GAP
    clusters = ids // (192 + HORIZON)
    base = 1.0 + 0.2 * _overlapping_differences(rng, ids, HORIZON)
    a = _write(tmp_path / "full", "lstm", ids, clusters, base[None] + rng.normal(0, 0.01, (2, WINDOWS)) ** 2)
    b = _write(tmp_path / "full", "attention", ids, clusters, base[None] + 0.3 + np.zeros((3, WINDOWS)))
    out = paired_difference(a, b, "forecast", n_resamples=50)
    test = out["paired_test"]
    assert test["lags"] == 10 and test["name"].startswith("Diebold-Mariano") and test["p_value"] < 1e-6
    # the same test as on the seeds' losses directly
    (errors_a, _, _), (errors_b, _, _) = forecast_errors(a), forecast_errors(b)
    direct = forecast_diebold_mariano(errors_a, errors_b, ids, HORIZON)
    assert test["p_value"] == pytest.approx(direct["p_value"])
    # runs carried between machines keep no targets, hence no horizon: NaN unless it is passed
    a_carried, b_carried = _reduced(a, tmp_path / "carried"), _reduced(b, tmp_path / "carried")
    unknown = paired_difference(a_carried, b_carried, "forecast", n_resamples=50)["paired_test"]
    assert math.isnan(unknown["p_value"]) and "horizon" in unknown["note"]
    given = paired_difference(a_carried, b_carried, "forecast", horizon=HORIZON, n_resamples=50)
    assert given["paired_test"]["p_value"] == pytest.approx(test["p_value"])
    mixed = paired_difference(a, b_carried, "forecast", n_resamples=50)  # the full run's horizon
    assert mixed["paired_test"]["p_value"] == pytest.approx(test["p_value"])


def test_paired_difference_refuses_runs_on_other_windows_in_the_same_blocks(tmp_path):
    rng = np.random.default_rng(3)
    ids = np.arange(WINDOWS) * GAP
    clusters = ids // 288  # blocks of look-back + horizon rows: about 29 windows each
    errors = 1.0 + rng.gamma(2.0, 0.2, (2, WINDOWS))
    a = _write(tmp_path / "one", "lstm", ids, clusters, errors)
    # windows shifted by one row: the same time blocks (cluster ids), other windows
    b = _write(tmp_path / "two", "attention", ids + 1, clusters, errors)
    assert np.array_equal((ids + 1) // 288, clusters)
    for paths_b in (b, _reduced(b, tmp_path / "carried")):  # full, and carried (no targets to compare)
        with pytest.raises(
            ValueError, match=r"lstm at length 192 .* and attention at length 192 .*different"
        ):
            paired_difference(a, paths_b, "forecast", n_resamples=50)
        with pytest.raises(ValueError, match="different test examples"):
            paired_difference(a, paths_b, "forecast", clusters=clusters, n_resamples=50)
    # the same windows with other saved blocks: named as such, and fine with clusters= given
    c = _write(tmp_path / "three", "gla", ids, clusters + 1000 * (ids > 1000), errors)
    with pytest.raises(ValueError, match="different cluster ids"):
        paired_difference(a, c, "forecast", n_resamples=50)
    assert paired_difference(a, c, "forecast", clusters=clusters, n_resamples=50)["estimate"] == 0.0


def test_paired_difference_refuses_classifiers_on_other_examples_with_the_same_labels(tmp_path):
    labels = np.array([0, 1, 0, 1, 1, 0])
    paths = {}
    for model, ids in (("lstm", np.arange(6)), ("attention", np.arange(6) + 100)):
        logits = np.eye(2)[labels].astype(np.float32)
        run = RunPredictions(model, 0, 64, ids, np.zeros(6, int), labels, logits, np.ones(6))
        paths[model] = [str(write_predictions(tmp_path / model / "seed0.npz", run))]
    with pytest.raises(
        ValueError, match=r"lstm at length 64.*attention at length 64.*different test examples"
    ):
        paired_difference(paths["lstm"], paths["attention"], "classification", n_resamples=50)
