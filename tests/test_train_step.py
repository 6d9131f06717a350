"""The jitted train step: the same run on one device and on meshes of 8 fake devices, with and without
FSDP and tensor parallelism; non-finite steps are refused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from seqjax import models
from seqjax.config import LOGICAL_RULES
from seqjax.data.synthetic import SyntheticTask
from seqjax.train import mesh as mesh_lib
from seqjax.train.optimizer import make_optimizer
from seqjax.train.state import init_train_state
from seqjax.train.step import LOSSES, make_train_step

STEPS = 20
TASK = SyntheticTask("associative_recall", length=24, num_symbols=4, vocab_size=12, num_queries=2)


def _model():
    config = models.BackboneConfig(
        d_model=16,
        num_layers=2,
        vocab_size=12,
        pattern=("lstm", "gla"),
        mixers={"gla": {"cell": "gla", "num_heads": 2, "head_dim": 8}},
    )
    return models.LanguageModel(config)


def _batch(step: int) -> dict[str, np.ndarray]:
    examples = [TASK[8 * step + i] for i in range(8)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


@functools.cache
def _run(mesh_shape: tuple[int, ...], mesh_axes: tuple[str, ...]) -> np.ndarray:
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    mesh = mesh_lib.make_mesh(mesh_shape, mesh_axes, devices=devices)
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    model = _model()
    tx = make_optimizer(
        {
            "name": "adamw",
            "learning_rate": 3e-3,
            "weight_decay": 0.01,
            "clip_norm": 1.0,
            "total_steps": STEPS,
        },
        models.param_groups(model),
    )
    example = (jnp.zeros((8, TASK.length), jnp.int32),)
    state, shardings = init_train_state(model, tx, example, mesh, rules, seed=0)
    batch_sharding = NamedSharding(mesh, mesh_lib.spec_for(("batch", "length"), rules))
    step = make_train_step(model, tx, LOSSES["lm"], shardings, batch_sharding)
    losses = []
    for i in range(STEPS):
        batch = jax.device_put(_batch(i), batch_sharding)
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        losses.append(float(metrics["loss"]))
    assert int(state.step) == STEPS
    return np.asarray(losses)


@pytest.mark.parametrize(
    "mesh_shape,mesh_axes",
    [((8, 1), ("data", "model")), ((4, 2), ("data", "model")), ((2, 2, 2), ("data", "fsdp", "model"))],
    ids=["8x1", "4x2-tp", "2x2x2-fsdp-tp"],
)
def test_sharded_run_matches_single_device(mesh_shape, mesh_axes):
    single = _run((1,), ("data",))
    sharded = _run(mesh_shape, mesh_axes)
    assert single[-1] < single[0]  # it trains
    # Sharded reductions sum in another order; float32 round-off over 20 Adam steps stays far below 1e-4.
    np.testing.assert_allclose(sharded, single, rtol=1e-4)


def test_non_finite_step_is_refused_and_reported():
    mesh = mesh_lib.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    rules = mesh_lib.rules_from_config({}, mesh)
    config = models.BackboneConfig(d_model=8, num_layers=1, encoder="linear", input_size=2, pattern=("gru",))
    model = models.Forecaster(config, horizon=3)
    tx = make_optimizer({"learning_rate": 1e-2})
    example = (jnp.zeros((2, 10, 2)),)
    state, shardings = init_train_state(model, tx, example, mesh, rules, seed=0)
    batch_sharding = NamedSharding(mesh, mesh_lib.spec_for(("batch",), rules))
    step = make_train_step(model, tx, LOSSES["forecast"], shardings, batch_sharding)
    good = {"inputs": np.ones((2, 10, 2), np.float32), "targets": np.zeros((2, 3, 2), np.float32)}
    state, metrics = step(state, good)
    assert bool(metrics["finite"]) and int(state.step) == 1
    before = jax.tree.map(np.asarray, state)
    bad = {**good, "targets": np.full((2, 3, 2), np.nan, np.float32)}
    state, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)
