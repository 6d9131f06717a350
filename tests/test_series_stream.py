"""Segment recurrence on long time series: a forecaster trained on consecutive segments of a split's
rows, every layer's state carried from one batch to the next, a forecast at every position.

- Data: the series lanes are contiguous across batches, every counted position is read once per epoch
  (but the lane tails), a position's targets are the next `horizon` rows, it counts only when its whole
  horizon lies inside the split and is observed; batches are pure functions of the index and split by
  process; the evaluation lanes count every counted position exactly once.
- Model: the per-position head over consecutive segments with the carried state equals one pass over
  the whole series (LSTM, GLA, S5), and the step mode's forecast after every observation.
- Loss and evaluation: the forecast loss weighs positions; the carried evaluation equals each lane
  scored in one pass, origins apart.
- Trainer: configs/timeseries.py with segment recurrence trains, checkpoints and resumes with the
  parameters and carried state of the uninterrupted run; its carried evaluation at the windows'
  origins scores the windowed evaluation's targets.
- Errors: RevIN in stream mode, encoder cells, other tasks and data, a per-position head without
  segment recurrence.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import documents, timeseries
from seqjax import cells, models
from seqjax.data import metrics as metrics_lib
from seqjax.data.stream import SeriesStream, StreamBatches, stream_eval_batches
from seqjax.train import segments
from seqjax.train.checkpoint import Checkpoints
from seqjax.train.run_config import ConfigError, resolve
from seqjax.train.state import CarriedTrainState
from seqjax.train.step import forecast_loss
from seqjax.train.trainer import evaluate, setup, train
from tests.models_helpers import D, assert_close, fast_variables
from tests.test_segment_recurrence import (
    HALF,
    TOTAL,
    _killed_at_half,
    _leaves,
    _mesh,
    carried_evaluation,
    small_run,
    uninterrupted_run,
)

# --------------------------------------------------------------------------------------------------
# Data: the series stream batcher.
# --------------------------------------------------------------------------------------------------
T, V, H = 203, 3, 3  # rows, variables, horizon: positions [0, T - H) = 200, 4 lanes of 50
CONTEXT = 10  # rows of the previous split: inputs, never targets
MISSING = (40, 41, 120)  # rows with an unobserved value


def _series(context: int = 0) -> SeriesStream:
    """values[t, v] = t + v / 10: a batch's values name their rows."""
    values = (np.arange(T)[:, None] + np.arange(V)[None, :] / 10).astype(np.float32)
    observed = np.ones((T, V), bool)
    for row in MISSING:
        observed[row, row % V] = False
    return SeriesStream(values, observed, H, context=context)


def _expected_weight(position: int, context: int = 0, horizon: int = H) -> bool:
    rows = range(position + 1, position + horizon + 1)
    return position + 1 >= context and not any(r in MISSING for r in rows)


def test_series_lanes_are_contiguous_and_read_every_counted_position_once():
    stream, rows, length = _series(), 4, 8
    batches = StreamBatches(stream, rows, length, shuffle=False)
    lane = (T - H) // rows
    assert (batches.lane_tokens, batches.segments_per_epoch) == (lane, 6)
    epoch = [batches.local_batch(s) for s in range(batches.segments_per_epoch)]
    assert epoch[0]["inputs"].shape == (rows, length, V)
    assert epoch[0]["targets"].shape == (rows, length, H, V)
    positions = np.concatenate([b["inputs"][..., 0] for b in epoch], axis=1).astype(int)
    for r in range(rows):  # each lane in order, across batches
        np.testing.assert_array_equal(positions[r], np.arange(r * lane, r * lane + 6 * length))
    targets = np.concatenate([b["targets"] for b in epoch], axis=1)
    ahead = positions[..., None] + 1 + np.arange(H)  # the next H rows of each position
    np.testing.assert_allclose(targets, stream.values[ahead])
    weights = np.concatenate([b["weights"] for b in epoch], axis=1)
    expected = np.vectorize(_expected_weight)(positions)
    np.testing.assert_array_equal(weights, expected)
    assert 0 < (weights == 0).sum() <= len(MISSING) * H  # the unobserved rows' positions
    read = np.bincount(positions.ravel(), minlength=T)
    assert read.max() == 1
    tails = {t for r in range(rows) for t in range(r * lane + 6 * length, (r + 1) * lane)}
    assert set(np.flatnonzero(read[: T - H] == 0)) == tails  # only the lane tails are left out
    for s, batch in enumerate(epoch):
        assert batch["mask"].all()
        np.testing.assert_array_equal(batch["resets"][:, 0], s == 0)  # lane starts only
        assert not batch["resets"][:, 1:].any()
    # Shuffled epochs shift every lane by the same seeded offset.
    shuffled = StreamBatches(stream, rows, length, seed=2)
    offset = shuffled.epoch_offset(1)
    second = shuffled.local_batch(shuffled.segments_per_epoch)
    np.testing.assert_array_equal(second["inputs"][:, 0, 0], np.arange(rows) * lane + offset)


def test_series_batches_resume_and_split_by_process():
    stream = _series(CONTEXT)
    whole = StreamBatches(stream, 4, 8, seed=1)
    seen = [next(whole) for _ in range(9)]
    resumed = StreamBatches(stream, 4, 8, seed=1, start=5)
    for i in range(5, 9):
        batch = next(resumed)
        for key in seen[i]:
            np.testing.assert_array_equal(batch[key], seen[i][key])
    for process in range(2):
        part = StreamBatches(stream, 4, 8, seed=1, process_index=process, process_count=2)
        np.testing.assert_array_equal(
            part.local_batch(7)["targets"], seen[7]["targets"][2 * process : 2 * process + 2]
        )
        part.close()
    whole.close()
    resumed.close()


def test_series_evaluation_lanes_count_every_counted_position_once():
    stream = _series(CONTEXT)._replace(origins=np.arange(T - H) % 7 == 0)
    batches = list(stream_eval_batches(stream, 4, 8))
    positions = np.concatenate([b["inputs"][..., 0] for b in batches], axis=1).astype(int)
    mask = np.concatenate([b["mask"] for b in batches], axis=1)
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    origins = np.concatenate([b["origins"] for b in batches], axis=1)
    np.testing.assert_array_equal(np.sort(positions[mask]), np.arange(T - H))  # each position once
    counted = np.zeros(T - H, bool)
    counted[positions[weights > 0]] = True
    expected = [_expected_weight(t, CONTEXT) for t in range(T - H)]
    np.testing.assert_array_equal(counted, expected)
    assert not counted[: CONTEXT - 1].any()  # their targets start in the previous split
    np.testing.assert_array_equal(np.sort(positions[origins > 0]), np.flatnonzero(stream.origins))
    assert not weights[~mask].any() and not origins[~mask].any()


# --------------------------------------------------------------------------------------------------
# Model: the per-position head over carried segments == one pass == step mode.
# --------------------------------------------------------------------------------------------------
SEGMENT, ROWS, HORIZON = 5, 2, 4

BACKBONES = [
    ("lstm", ("lstm",), {}),
    ("gla", ("gla",), {"gla": cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)}),
    ("s5", ("s5",), {"s5": cells.S5(hidden_size=D, state_size=4, chunk_size=4)}),
]


def _forecaster(pattern, mixers) -> models.Forecaster:
    config = models.BackboneConfig(
        d_model=D, num_layers=len(pattern), encoder="linear", input_size=V, pattern=pattern, mixers=mixers
    )
    return models.Forecaster(config, horizon=HORIZON, revin=False, per_position=True)


@pytest.mark.parametrize(("pattern", "mixers"), [b[1:] for b in BACKBONES], ids=[b[0] for b in BACKBONES])
def test_per_position_head_over_carried_segments_equals_one_pass(pattern, mixers):
    model = _forecaster(pattern, mixers)
    series = jnp.asarray(np.random.default_rng(0).standard_normal((ROWS, 4 * SEGMENT, V)), jnp.float32)

    @jax.jit
    def run(variables):
        whole, (final, _) = model.apply(variables, series, method="forward")
        layers, pieces = None, []
        for s in range(4):
            part = series[:, s * SEGMENT : (s + 1) * SEGMENT]
            forecast, (layers, _) = model.apply(variables, part, layers, method="forward")
            pieces.append(forecast)
        cache = models.init_cache(model, (ROWS,))
        _, stepped = models.stream_forecasts(model, variables, cache, series)
        return jnp.concatenate(pieces, axis=1), whole, layers, final, stepped

    segmented, whole, layers, final, stepped = run(fast_variables(model, series))
    assert whole.shape == (ROWS, 4 * SEGMENT, HORIZON, V)
    assert_close(segmented, whole, tol=2e-5)
    assert_close(layers, final, tol=2e-5)  # the state after the series, too
    assert_close(stepped, whole, tol=2e-5)  # the step mode's forecast after every observation


def test_last_token_head_stays_the_default_and_revin_is_refused_per_position():
    config = models.BackboneConfig(d_model=D, num_layers=1, encoder="linear", input_size=V, pattern=("lstm",))
    series = jnp.zeros((ROWS, SEGMENT, V))
    default = models.Forecaster(config, horizon=HORIZON)
    out = jax.eval_shape(lambda: default.apply(default.init(jax.random.key(0), series), series))
    assert out.shape == (ROWS, HORIZON, V)
    with pytest.raises(ValueError, match="set revin=False"):
        models.Forecaster(config, horizon=HORIZON, per_position=True).init(jax.random.key(0), series)


def test_forecast_loss_weighs_positions():
    rng = np.random.default_rng(1)
    forecast = jnp.asarray(rng.standard_normal((ROWS, SEGMENT, HORIZON, V)), jnp.float32)
    targets = jnp.asarray(rng.standard_normal((ROWS, SEGMENT, HORIZON, V)), jnp.float32)
    weights = np.zeros((ROWS, SEGMENT), np.float32)
    weights[0, 1], weights[1, 3] = 1, 1
    loss, metrics = forecast_loss(forecast, {"targets": targets, "weights": jnp.asarray(weights)})
    error = np.asarray(forecast - targets)[weights > 0]
    np.testing.assert_allclose(loss, np.mean(error**2), rtol=1e-6)
    np.testing.assert_allclose(metrics["mae"], np.mean(np.abs(error)), rtol=1e-6)
    assert metrics["forecasts"] == 2
    windowed, _ = forecast_loss(forecast[:, 0], {"targets": targets[:, 0]})  # windows: every value
    np.testing.assert_allclose(windowed, np.mean(np.asarray(forecast[:, 0] - targets[:, 0]) ** 2), rtol=1e-6)


def test_forecast_metrics_from_sums_equal_the_windowed_metrics():
    rng = np.random.default_rng(2)
    forecasts, targets = rng.normal(size=(2, 7, 200, V))
    squared = ((forecasts - targets) ** 2).mean(-1)  # [forecasts, horizon], averaged over the variables
    absolute = np.abs(forecasts - targets).mean(-1)
    from_sums = metrics_lib.forecast_metrics_from_sums(squared, absolute, 7, horizons=(96, 200))
    windowed = metrics_lib.forecast_metrics(forecasts, targets, horizons=(96, 200))
    assert from_sums.keys() == windowed.keys() and "mse@96" in windowed
    for key, value in windowed.items():
        assert from_sums[key] == pytest.approx(value, rel=1e-12)


def test_carried_forecast_evaluation_equals_each_lane_in_one_pass():
    model, rows, length = _forecaster(*BACKBONES[1][1:]), 4, 8
    stream = _series(CONTEXT)
    rng = np.random.default_rng(3)
    stream = stream._replace(
        values=rng.standard_normal((T, V)).astype(np.float32), horizon=HORIZON, origins=None
    )
    stream = stream._replace(origins=np.arange(stream.positions) % 5 == 1)
    variables = fast_variables(model, jnp.zeros((rows, length, V)))
    batches = stream_eval_batches(stream, rows, length)
    metrics, lanes = carried_evaluation(model, variables, rows, batches, task="forecast")
    # Each lane as one row of ceil(positions / rows) inputs (the last padded), forecast in one pass.
    lane = -(-stream.positions // rows)
    whole = [stream.segment(r * lane, min((r + 1) * lane, stream.positions), lane, True) for r in range(rows)]
    whole = {k: np.stack([w[k] for w in whole]) for k in whole[0]}
    forecast = jax.jit(model.apply)(variables, whole["inputs"], mask=whole["mask"])
    squared = ((np.asarray(forecast) - whole["targets"]) ** 2).mean(-1)  # [rows, lane, horizon]
    np.testing.assert_allclose(lanes["se"], (squared * whole["weights"][..., None]).sum(1), rtol=1e-5)
    np.testing.assert_allclose(lanes["origin_se"], (squared * whole["origins"][..., None]).sum(1), rtol=1e-5)
    counted = whole["weights"] > 0
    expected = sum(_expected_weight(t, CONTEXT, HORIZON) for t in range(T - HORIZON))
    assert metrics["examples"] == counted.sum() == expected
    np.testing.assert_allclose(metrics["mse"], squared[counted].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["origin_mse"], squared[whole["origins"] > 0].mean(), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# The trainer: configs/timeseries.py with segment recurrence, resumed; carried evaluation.
# --------------------------------------------------------------------------------------------------
def _config(data_dir: str):
    config = timeseries.get_config("gla,lookback=16,horizon=4,stream=1")
    config.data.max_examples_per_split = 64  # the windowed evaluation's windows (the stream reads all)
    return small_run(config, data_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run on a 4 x 2 mesh, checkpointed at HALF and TOTAL."""
    return uninterrupted_run(tmp_path_factory.mktemp("series"), _config)


def test_series_run_resumes_with_the_parameters_and_carried_state(runs, tmp_path):
    whole = runs["whole"]
    assert whole["step"] == TOTAL and np.isfinite(whole["metrics"]["loss"])
    assert whole["metrics"]["forecasts"] > 0
    workdir = _killed_at_half(runs, str(tmp_path / "resumed"))
    config = _mesh(_config(runs["data_dir"]), (4, 2), ("data", "model"), 8)
    parts = setup(config)
    assert parts["model"].per_position and not parts["model"].revin
    with Checkpoints(f"{workdir}/checkpoints", async_save=False) as ckpt:
        restored = ckpt.restore(parts["abstract_state"])
    assert restored.step == HALF and restored.data_state["next_batch"] == HALF
    assert isinstance(restored.state, CarriedTrainState)
    assert all(np.abs(x).max() > 0 for x in _leaves(restored.state.carry))  # not the initial state
    resumed = train(config, workdir)
    assert resumed["step"] == TOTAL
    for a, b in zip(_leaves(resumed["state"]), _leaves(whole["state"]), strict=True):
        np.testing.assert_array_equal(a, b)  # parameters, optimizer state and carried state


def test_carried_series_evaluation_scores_the_windows_at_their_origins(runs):
    config = _config(runs["data_dir"])
    workdir = str(runs["root"] / "whole")
    carried = evaluate(config, workdir, split="test", step="latest", carried_state=True)
    plain = evaluate(config, workdir, split="test", step="latest")
    metrics = carried["metrics"]
    assert metrics["origin_examples"] == plain["metrics"]["examples"] == 64  # the same windows
    assert metrics["examples"] > 1000  # every counted position of the split
    assert carried["per_lane"]["se"].shape == (8, 4)  # lanes x horizon steps
    # Same model, same targets; the carried state only adds context (a 6-step model barely uses it).
    assert metrics["origin_mse"] == pytest.approx(plain["metrics"]["mse"], rel=0.05)
    with pytest.raises(ValueError, match="no documents"):
        evaluate(config, workdir, split="test", carried_state=True, by_document=True)


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------
def _recurrent_series(preset: str = "lstm"):
    config = timeseries.get_config(f"{preset},lookback=16,horizon=4")
    config.segment_recurrence = True
    config.head.revin = False
    return config


def test_bad_series_configs_are_refused_naming_the_fix(tmp_path):
    segments.check_segment_recurrence(resolve(_recurrent_series("gla")))  # fine
    revin = _recurrent_series()
    revin.head.revin = True
    with pytest.raises(ConfigError, match=r"set config\.head\.revin=False"):
        train(revin, str(tmp_path / "run"))  # before any data or compile work
    encoder = _recurrent_series()
    encoder.model.mixers = {"lstm": {"cell": "lstm", "bidirectional": True}}
    with pytest.raises(ConfigError, match=r"layer 0 .* cannot carry a state from one segment to the next"):
        segments.check_segment_recurrence(resolve(encoder))
    with pytest.raises(ConfigError, match=r"use xl_attention"):
        segments.check_segment_recurrence(resolve(_recurrent_series("attention")))
    lm_on_series = dataclasses.replace(resolve(_recurrent_series()), task="lm")
    with pytest.raises(ConfigError, match=r"task 'lm' needs data whose splits are token streams"):
        segments.check_segment_recurrence(lm_on_series)
    forecast_on_documents = dataclasses.replace(resolve(documents.get_config("lstm")), task="forecast")
    forecast_on_documents = dataclasses.replace(forecast_on_documents, segment_recurrence=True)
    with pytest.raises(ConfigError, match=r"time series \(data\.kind in \['timeseries'\]\)"):
        segments.check_segment_recurrence(forecast_on_documents)
    windowed = timeseries.get_config("lstm,lookback=16,horizon=4")
    windowed.head.per_position = True
    with pytest.raises(ConfigError, match=r"config\.segment_recurrence=True"):
        segments.check_segment_recurrence(resolve(windowed))
