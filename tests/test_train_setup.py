"""Mesh construction, logical sharding rules and the optimizer built from config data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from seqjax.config import LOGICAL_RULES
from seqjax.train import mesh as mesh_lib
from seqjax.train.optimizer import make_optimizer, make_schedule


def test_mesh_shape_takes_the_rest_and_names_bad_shapes():
    assert mesh_lib.resolve_mesh_shape((-1, 2), 8) == (4, 2)
    assert mesh_lib.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="more than one -1"):
        mesh_lib.resolve_mesh_shape((-1, -1), 8)
    with pytest.raises(ValueError, match="does not divide"):
        mesh_lib.resolve_mesh_shape((3, -1), 8)
    with pytest.raises(ValueError, match="needs 4 devices but 8"):
        mesh_lib.resolve_mesh_shape((2, 2), 8)


def test_make_mesh_uses_auto_axes():
    mesh = mesh_lib.make_mesh((-1, 2), ("data", "model"))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    sub = mesh_lib.make_mesh((2, 2), ("data", "model"), devices=jax.devices()[:4])
    assert sub.devices.size == 4
    with pytest.raises(ValueError, match="differ in length"):
        mesh_lib.make_mesh((8,), ("data", "model"))


def test_logical_rules_map_axes_and_skip_what_cannot_shard():
    mesh = mesh_lib.make_mesh((2, 2, 2), ("data", "fsdp", "model"))
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    assert mesh_lib.spec_for(("embed", "heads", "head_dim"), rules) == P("fsdp", "model", None)
    assert mesh_lib.spec_for(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    # 5 heads cannot split 2 ways: replicated on that dimension instead of failing at placement.
    assert mesh_lib.spec_for(("embed", "heads"), rules, shape=(8, 5), mesh=mesh) == P("fsdp", None)
    # A data-parallel mesh drops the fsdp/model targets altogether.
    dp = mesh_lib.make_mesh((8,), ("data",))
    dp_rules = mesh_lib.rules_from_config(dict(LOGICAL_RULES), dp)
    assert mesh_lib.spec_for(("embed", "mlp"), dp_rules) == P(None, None)
    assert mesh_lib.spec_for(("batch", "embed"), dp_rules) == P("data", None)


def _one_step(tx, params, grads):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return updates, state


def test_parameter_groups_get_their_learning_rate_and_decay():
    params = {"w": jnp.ones(3), "norm": jnp.ones(3), "A_log": jnp.ones(3), "features": jnp.ones(3)}
    grads = jax.tree.map(lambda p: 0.5 * p, params)
    groups = {"w": "default", "norm": "no_decay", "A_log": "ssm", "features": "frozen"}
    config = {
        "name": "sgd",
        "momentum": 0.0,
        "learning_rate": 0.1,
        "ssm_learning_rate": 0.01,
        "weight_decay": 0.2,
        "schedule": "constant",
    }
    updates, _ = _one_step(make_optimizer(config, groups), params, grads)
    np.testing.assert_allclose(updates["w"], -0.1 * (0.5 + 0.2), rtol=1e-6)
    np.testing.assert_allclose(updates["norm"], -0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(updates["A_log"], -0.01 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(updates["features"], 0.0)


def test_schedule_warms_up_then_decays_to_the_floor():
    options = {
        "warmup_steps": 10,
        "total_steps": 110,
        "schedule": "cosine",
        "end_learning_rate_fraction": 0.1,
    }
    schedule = make_schedule(1.0, options)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(schedule(60), 0.1 + 0.9 * 0.5, rtol=1e-5)
    np.testing.assert_allclose(schedule(110), 0.1, rtol=1e-5)
    linear = make_schedule(1.0, {**options, "schedule": "linear"})
    np.testing.assert_allclose(linear(60), 0.55, rtol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "lion", "sgd"])
def test_gradient_accumulation_equals_one_step_on_the_mean(name):
    params = {"w": jnp.arange(4.0)}
    g1, g2 = {"w": jnp.array([1.0, -2.0, 3.0, 0.5])}, {"w": jnp.array([0.0, 2.0, 1.0, -0.5])}
    config = {
        "name": name,
        "learning_rate": 0.1,
        "weight_decay": 0.01,
        "clip_norm": 1.0,
        "schedule": "constant",
    }
    accum = make_optimizer({**config, "grad_accum_steps": 2})
    state = accum.init(params)
    u1, state = accum.update(g1, state, params)
    np.testing.assert_array_equal(u1["w"], 0.0)  # nothing applied mid-accumulation
    u2, state = accum.update(g2, state, params)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    direct, _ = _one_step(make_optimizer(config), params, mean)
    np.testing.assert_allclose(u2["w"], direct["w"], rtol=1e-6)


def test_clipping_bounds_the_global_norm():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([30.0, 40.0]), "b": jnp.zeros(2)}
    config = {"name": "sgd", "momentum": 0.0, "learning_rate": 1.0, "clip_norm": 5.0, "schedule": "constant"}
    updates, _ = _one_step(make_optimizer(config), params, grads)
    assert float(optax.tree.norm(updates)) == pytest.approx(5.0, rel=1e-6)


def test_optimizer_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
        make_optimizer({"learning_rat": 0.1})
    with pytest.raises(ValueError, match="name must be one of"):
        make_optimizer({"name": "adagrad"})
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['decay'\]"):
        make_optimizer({}, {"w": "decay"})
    with pytest.raises(ValueError, match="warmup_steps"):
        make_optimizer({"warmup_steps": 10, "total_steps": 5})


def test_train_state_is_placed_whole_with_optimizer_leaves_like_their_params():
    from jax.sharding import NamedSharding

    from seqjax import models
    from seqjax.train.state import init_train_state

    model = models.LanguageModel(
        models.BackboneConfig(d_model=16, num_layers=2, vocab_size=11, pattern=("lstm", "mamba"))
    )
    mesh = mesh_lib.make_mesh((2, 2, 2), ("data", "fsdp", "model"))
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    tx = make_optimizer({"name": "adamw", "weight_decay": 0.1}, models.param_groups(model))
    state, _ = init_train_state(model, tx, (jnp.zeros((2, 8), jnp.int32),), mesh, rules, seed=0)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    assert all(isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh for _, leaf in leaves)
    w_ih = state.params["backbone"]["blocks_0"]["mixer"]["cell"]["w_ih"]
    assert w_ih.sharding.spec == P("fsdp", None)
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if ".count" in name:
            assert leaf.sharding.spec == P(), name  # optax's counter: replicated, not on one device
        if ".mu" in name and "w_ih" in name and "blocks_0" in name:
            assert leaf.sharding == w_ih.sharding, name
    # The parameters depend on the seed only, not on the mesh.
    single = mesh_lib.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    state1, _ = init_train_state(
        model, tx, (jnp.zeros((2, 8), jnp.int32),), single, mesh_lib.rules_from_config({}, single), seed=0
    )
    jax.tree.map(np.testing.assert_array_equal, state1.params, state.params)
