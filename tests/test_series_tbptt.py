"""Truncated BPTT for the stream forecaster: `tbptt_length` chunks a batch of a series stream, every layer's
state carried across chunks, the gradient stopped at chunk boundaries, each chunk scored with the
per-position forecast loss.

- Loss: over chunks, the weighted squared-error sums divided by the batch's total weight equal the
  unchunked `forecast_loss` (positions whose horizon leaves the data or is unobserved count in no chunk),
  from the initial state and from a carried one; carried train steps with learning rate 0 score the
  whole stream with one update per batch and one per chunk.
- Gradients: with the chunk = the whole segment they are ordinary BPTT's; with shorter chunks they are
  an explicit reference's (per-chunk gradients from the hand-carried state, gradient stopped) and differ
  from full BPTT's; per-chunk updates equal updates by hand.
- Trainer: `configs/timeseries.py:lstm,stream=1` with `tbptt_length` trains, and resumed at step 3 ends
  bitwise where the uninterrupted run does.
- Errors: a windowed forecaster and a classifier are refused naming `config.tbptt_length`, why and the
  fix (and by `make_train_step`); a length `tbptt_length` does not divide is refused at setup.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from configs import genomic, timeseries
from seqjax import cells, models
from seqjax.config import LOGICAL_RULES
from seqjax.data.stream import StreamBatches
from seqjax.train import mesh as mesh_lib
from seqjax.train import segments
from seqjax.train.checkpoint import Checkpoints
from seqjax.train.preflight import check_tbptt
from seqjax.train.run_config import ConfigError, resolve
from seqjax.train.state import CarriedTrainState, TrainState, state_shardings
from seqjax.train.step import (
    LOSSES,
    forecast_loss,
    forecast_sums,
    make_train_step,
    truncated_bptt_chunk_updates,
    truncated_bptt_grads,
)
from seqjax.train.trainer import setup, train
from tests.models_helpers import D, fast_variables
from tests.test_segment_recurrence import (
    HALF,
    TOTAL,
    _killed_at_half,
    _leaves,
    _mesh,
    small_run,
    uninterrupted_run,
)
from tests.test_series_stream import H, T, V, _series

ROWS, LENGTH = 4, 8  # a batch of the stream: 4 lanes of 50 positions, segments of 8


def _model(per_position: bool = True) -> models.Forecaster:
    """LSTM then GLA: a nonlinear recurrence and a matrix state, both carried across chunks."""
    config = models.BackboneConfig(
        d_model=D,
        num_layers=2,
        encoder="linear",
        input_size=V,
        pattern=("lstm", "gla"),
        mixers={"gla": cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)},
    )
    return models.Forecaster(config, horizon=H, revin=not per_position, per_position=per_position)


def _stream():
    """`test_series_stream`'s stream (unobserved rows 40, 41, 120) with standardised-looking values."""
    values = np.random.default_rng(0).standard_normal((T, V)).astype(np.float32)
    return _series()._replace(values=values)


def _batches(first: int, count: int) -> list[dict[str, np.ndarray]]:
    """Segments first .. first + count - 1 of the stream's lanes; segment 4 holds lane 0's positions
    32-39, of which 37-39 have an unobserved target row (weight 0)."""
    batches = StreamBatches(_stream(), ROWS, LENGTH, shuffle=False)
    out = [batches.local_batch(s) for s in range(first, first + count)]
    batches.close()
    return out


@pytest.fixture(scope="module")
def problem():
    """(model, params, batch: segment 4, cache: every layer's state after segments 0-3)."""
    model = _model()
    earlier, batch = _batches(0, 4), _batches(4, 1)[0]
    assert 0 < (batch["weights"] == 0).sum() < batch["weights"].size  # some positions do not count
    params = fast_variables(model, jnp.asarray(batch["inputs"]))["params"]
    inputs = jnp.asarray(np.concatenate([b["inputs"] for b in earlier], axis=1))
    resets = jnp.asarray(np.concatenate([b["resets"] for b in earlier], axis=1))
    _, (cache, _) = jax.jit(lambda p: model.apply({"params": p}, inputs, method="forward", resets=resets))(
        params
    )
    return model, params, {k: jnp.asarray(v) for k, v in batch.items()}, cache


def _full(model, params, batch, cache):
    """Ordinary BPTT over the segment from `cache`: (loss, metrics, gradients)."""

    def loss_of(p):
        forecast, _ = model.apply(
            {"params": p}, batch["inputs"], cache, method="forward", resets=batch["resets"]
        )
        return forecast_loss(forecast, batch)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, metrics, grads


def _by_hand(model, params, batch, cache, chunk):
    """The truncated-BPTT gradient written out: each chunk's weighted squared-error sum (over its values,
    / horizon x variables) differentiated from the state the previous chunk left, gradient stopped
    there; the chunks' gradients summed and divided by the batch's total weight."""
    grads, total = jax.tree.map(jnp.zeros_like, params), 0.0
    for start in range(0, LENGTH, chunk):
        piece = {k: v[:, start : start + chunk] for k, v in batch.items()}
        cache = jax.lax.stop_gradient(cache)

        def chunk_sum(p, piece=piece, cache=cache):
            forecast, (new_cache, _) = model.apply(
                {"params": p}, piece["inputs"], cache, method="forward", resets=piece["resets"]
            )
            squared, _, weights = forecast_sums(forecast, piece)
            return (squared.sum(-1) * weights).sum() / (H * V), new_cache

        g, cache = jax.grad(chunk_sum, has_aux=True)(params)
        grads = jax.tree.map(jnp.add, grads, g)
        total += piece["weights"].sum()
    return jax.tree.map(lambda g: g / jnp.maximum(total, 1.0), grads)


@pytest.fixture(scope="module")
def gradients(problem):
    """Full BPTT, truncated BPTT at 8 (the segment), 4 and 2, and the by-hand reference at 4, each from
    the initial state and from the carried one."""
    model, params, batch, carried = problem

    @jax.jit
    def run(params, carried):
        out = {}
        for name, cache in (("initial", model.initial_cache((ROWS,))), ("carried", carried)):
            out[name] = {
                "full": _full(model, params, batch, cache),
                "tbptt": {c: truncated_bptt_grads(model, params, batch, c, None, cache) for c in (8, 4, 2)},
                "by_hand": _by_hand(model, params, batch, cache, 4),
            }
        return out

    return run(params, carried)


def _max_difference(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("start", ["initial", "carried"])
def test_chunked_forecast_loss_equals_the_unchunked_loss(gradients, start):
    loss, metrics, _ = gradients[start]["full"]
    for chunk, (_, chunked) in gradients[start]["tbptt"].items():
        np.testing.assert_allclose(chunked["loss"], loss, rtol=1e-5, err_msg=f"chunk {chunk}")
        for name in ("mse", "mae"):
            np.testing.assert_allclose(
                chunked[name], metrics[name], rtol=1e-5, err_msg=f"{name}, chunk {chunk}"
            )
        assert float(chunked["forecasts"]) == float(metrics["forecasts"])  # the same positions count


@pytest.mark.parametrize("start", ["initial", "carried"])
def test_chunk_of_the_whole_segment_is_bptt(gradients, start):
    _, _, grads = gradients[start]["full"]
    tb_grads, _ = gradients[start]["tbptt"][LENGTH]
    _assert_trees_close(tb_grads, grads)


@pytest.mark.parametrize("start", ["initial", "carried"])
def test_shorter_chunks_cut_only_the_paths_across_chunk_boundaries(gradients, start):
    _, _, grads = gradients[start]["full"]
    tb_grads, _ = gradients[start]["tbptt"][4]
    _assert_trees_close(tb_grads, gradients[start]["by_hand"])  # per-chunk gradients, state by hand
    # ... and the cut paths are real: the recurrences do carry gradient across the boundary.
    assert _max_difference(tb_grads, grads) > 1e-4


# --------------------------------------------------------------------------------------------------
# The train step: carried steps with learning rate 0 score the stream; per-chunk updates by hand.
# --------------------------------------------------------------------------------------------------
def _step_setup(tx):
    """(model, fresh carried state, step factory) on one device, placed as the trainer places them."""
    model = _model()
    mesh = mesh_lib.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    example = (jnp.zeros((ROWS, LENGTH, V), jnp.float32),)
    abstract, plain = state_shardings(model, tx, example, mesh, rules)
    _, shardings = segments.with_carry(abstract, plain, model, ROWS, mesh, rules)
    # Host copies: the step donates its state, and device_put onto the same device would not copy.
    params = jax.tree.map(np.asarray, fast_variables(model, *example)["params"])

    def fresh():  # the step donates its input state
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jnp.zeros(2, jnp.uint32),
        )
        return segments.add_initial_carry(jax.device_put(state, plain), model, ROWS, shardings)

    batch_sharding = {
        k: NamedSharding(mesh, mesh_lib.spec_for(("batch", "length", None, None)[: v.ndim], rules))
        for k, v in _batches(0, 1)[0].items()
    }

    def make(**kwargs):
        return make_train_step(
            model, tx, LOSSES["forecast"], shardings, batch_sharding, segment_recurrence=True, **kwargs
        )

    return model, params, fresh, make


@pytest.mark.parametrize("updates", ["batch", "chunk"])
def test_carried_steps_with_tbptt_score_the_whole_stream(updates):
    model, params, fresh, make = _step_setup(optax.sgd(0.0))
    step = make(tbptt_length=4, tbptt_updates=updates)
    batches, state, squared, counted = _batches(0, 6), fresh(), 0.0, 0.0
    for batch in batches:
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        squared += float(metrics["loss"]) * float(metrics["forecasts"])
        counted += float(metrics["forecasts"])
    assert isinstance(state, CarriedTrainState)
    # The whole stream (6 segments of every lane) in one pass from the initial state.
    whole = {
        k: np.concatenate([b[k] for b in batches], axis=1) for k in ("inputs", "targets", "weights", "resets")
    }
    forecast = jax.jit(model.apply)({"params": params}, whole["inputs"], resets=whole["resets"])
    error = ((np.asarray(forecast) - whole["targets"]) ** 2).sum((-1, -2)) / (H * V)
    assert counted == whole["weights"].sum() < whole["weights"].size
    np.testing.assert_allclose(squared, (error * whole["weights"]).sum(), rtol=1e-5)


def test_chunk_updates_equal_updates_by_hand():
    tx = optax.sgd(0.5)
    model, params, fresh, make = _step_setup(tx)
    batch = _batches(4, 1)[0]  # lane 0's second chunk has 3 uncounted positions
    state, metrics = make(tbptt_length=4, tbptt_updates="chunk")(fresh(), batch)
    assert bool(metrics["finite"]) and int(state.step) == 1

    @jax.jit
    def by_hand(params):
        cache = model.initial_cache((ROWS,))
        for start in (0, 4):
            piece = {k: jnp.asarray(v[:, start : start + 4]) for k, v in batch.items()}

            def chunk_loss(p, piece=piece, cache=cache):
                forecast, (new_cache, _) = model.apply(
                    {"params": p}, piece["inputs"], cache, method="forward", resets=piece["resets"]
                )
                return forecast_loss(forecast, piece)[0], new_cache  # the chunk's own mean

            grads, cache = jax.grad(chunk_loss, has_aux=True)(params, cache=jax.lax.stop_gradient(cache))
            params = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
        return params, cache

    params_by_hand, cache = by_hand(params)
    _assert_trees_close(state.params, params_by_hand, rtol=1e-5, atol=1e-6)
    _assert_trees_close(state.carry, cache, rtol=1e-5, atol=1e-6)
    # One update from the summed gradient is another point: the second chunk used the updated weights.
    batch_state, _ = make(tbptt_length=4)(fresh(), batch)
    assert _max_difference(batch_state.params, state.params) > 1e-5
    # The direct call is what the step runs.
    direct, _ = jax.jit(lambda s: truncated_bptt_chunk_updates(model, tx, s, batch, 4))(fresh())
    _assert_trees_close(direct.params, state.params, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# The trainer: configs/timeseries.py:lstm,stream=1 with tbptt_length, resumed.
# --------------------------------------------------------------------------------------------------
def _config(data_dir: str):
    config = timeseries.get_config("lstm,lookback=16,horizon=4,stream=1")
    config.data.max_examples_per_split = 64
    config.tbptt_length = 8  # two chunks per segment, the first from the carried state
    config.tbptt_updates = "chunk"  # an update after each: the schedule counts 2 per batch
    return small_run(config, data_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory.mktemp("series_tbptt"), _config)


def test_stream_forecaster_with_tbptt_trains_and_resumes(runs, tmp_path):
    whole = runs["whole"]
    assert whole["step"] == TOTAL and np.isfinite(whole["metrics"]["loss"])
    assert whole["metrics"]["forecasts"] > 0 and "mae" in whole["metrics"]
    counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(whole["state"].opt_state, "count")]
    assert counts and all(c == 2 * TOTAL for c in counts)  # the optimizer counts chunks
    workdir = _killed_at_half(runs, str(tmp_path / "resumed"))
    config = _mesh(_config(runs["data_dir"]), (4, 2), ("data", "model"), 8)
    with Checkpoints(f"{workdir}/checkpoints", async_save=False) as ckpt:
        restored = ckpt.restore(setup(config)["abstract_state"])
    assert restored.step == HALF and isinstance(restored.state, CarriedTrainState)
    resumed = train(config, workdir)
    assert resumed["step"] == TOTAL
    for a, b in zip(_leaves(resumed["state"]), _leaves(whole["state"]), strict=True):
        np.testing.assert_array_equal(a, b)  # parameters, optimizer state and carried state


def test_tbptt_length_must_divide_the_segment(runs):
    config = _config(runs["data_dir"])
    config.tbptt_length = 5
    with pytest.raises(ConfigError, match=r"config\.tbptt_length=5 must divide the sequence length 16"):
        setup(config)


# --------------------------------------------------------------------------------------------------
# Errors: a loss at the sequence's end.
# --------------------------------------------------------------------------------------------------
def test_tbptt_needs_a_loss_at_every_position(tmp_path):
    stream = timeseries.get_config("lstm,lookback=16,horizon=4,stream=1")
    stream.tbptt_length = 8
    check_tbptt(resolve(stream))  # fine: a forecast at every position
    windowed = timeseries.get_config("lstm,lookback=16,horizon=4")
    windowed.tbptt_length = 8
    with pytest.raises(
        ConfigError,
        match=r"config\.tbptt_length=8: truncated BPTT needs a loss at every position.*windowed forecaster.*"
        r"config\.segment_recurrence=True and config\.head\.revin=False",
    ):
        train(windowed, str(tmp_path / "windowed"))  # before any data or compile work
    classification = genomic.get_config()
    assert classification.task == "classification"
    classification.tbptt_length = 8
    with pytest.raises(
        ConfigError,
        match=r"one output per sequence .* exactly what truncation cuts\. Set config\.tbptt_length=None",
    ):
        check_tbptt(resolve(classification))
    check_tbptt(dataclasses.replace(resolve(classification), task="lm"))  # the LM: fine
    # The step refuses them too, saying why.
    with pytest.raises(ValueError, match=r"windowed forecaster's loss is one forecast at the window's end"):
        make_train_step(_model(per_position=False), None, LOSSES["forecast"], None, None, tbptt_length=8)
    with pytest.raises(ValueError, match=r"needs a loss at every position .* Drop tbptt_length"):
        make_train_step(_model(), None, LOSSES["classification"], None, None, tbptt_length=8)
