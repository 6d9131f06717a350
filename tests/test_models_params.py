"""Model parameters: every leaf boxed with one logical axis name per dimension, partition specs and
mesh shardings, optimizer groups, and the CellLayer adapter against the raw cell."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from jax.sharding import Mesh

from seqjax import cells, models
from seqjax.models.partitioning import GroupedPartitioned
from tests.models_helpers import (
    CASE_CELLS,
    CASE_IDS,
    VOCAB,
    D,
    assert_close,
    cell_params,
    lm,
    tokens,
)


def abstract_variables(model, *args):
    """`model.init` traced, not compiled: boxed ShapeDtypeStructs."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)


def boxes(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def assert_all_boxed(variables):
    leaves = boxes(variables["params"])
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), f"unboxed parameter leaf {leaf}"
        assert isinstance(leaf, GroupedPartitioned)
        assert len(leaf.names) == len(leaf.value.shape), (leaf.names, leaf.value.shape)
        assert all(n is None or isinstance(n, str) for n in leaf.names)
        assert leaf.group in models.GROUPS
    specs = nn.get_partition_spec(variables)
    for spec, leaf in zip(jax.tree.leaves(specs["params"]), leaves, strict=True):
        assert tuple(spec) == tuple(leaf.names)


def all_models():
    """(id, model, example input) covering every cell, encoder, head and block option."""
    out = [(f"lm-{name}", lm(cell), tokens()) for name, cell in zip(CASE_IDS, CASE_CELLS, strict=True)]
    dna = {"d_model": D, "num_layers": 2, "encoder": "dna", "pattern": ("bi",)}
    dna["mixers"] = {"bi": {"cell": "gru", "bidirectional": True}}
    out.append(
        (
            "classifier-dna-layernorm-bias",
            models.from_config(
                {"task": "classification", "num_classes": 3, "norm": "layernorm", "use_bias": True, **dna}
            ),
            jnp.zeros((2, 12), jnp.uint8),
        )
    )
    out.append(
        (
            "forecaster",
            models.from_config(
                {
                    "task": "forecast",
                    "d_model": D,
                    "num_layers": 2,
                    "num_variables": 3,
                    "horizon": 4,
                    "pattern": ("s5",),
                }
            ),
            jnp.zeros((2, 12, 3)),
        )
    )
    out.append(
        (
            "tied-lm-postnorm",
            models.LanguageModel(
                models.BackboneConfig(
                    d_model=D, num_layers=1, vocab_size=VOCAB, pattern=("mamba",), prenorm=False
                ),
                tie_embeddings=True,
            ),
            tokens(),
        )
    )
    return out


ALL_MODELS = all_models()


@pytest.mark.parametrize(
    "model, example", [(m, x) for _, m, x in ALL_MODELS], ids=[i for i, _, _ in ALL_MODELS]
)
def test_every_parameter_has_logical_axes(model, example):
    assert_all_boxed(abstract_variables(model, example))


def test_partition_specs_shard_the_model_on_a_mesh():
    """Real init; shardings from logical rules on a 4×2 mesh; the sharded forward equals the unsharded one."""
    cfg = models.BackboneConfig(d_model=D, num_layers=2, vocab_size=VOCAB, pattern=("gru",))
    model = models.LanguageModel(cfg)
    toks = tokens(5, (4, 12))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), toks)
    assert_all_boxed(variables)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    rules = (("mlp", "model"), ("embed", None))  # unnamed logical axes stay replicated
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
    mlp_kernel = shardings["params"]["backbone"]["blocks_0"]["mlp"]["gate"]["kernel"]
    assert tuple(mlp_kernel.spec) == (None, "model")
    params = nn.unbox(variables)
    sharded = jax.device_put(params, shardings)
    out_kernel = sharded["params"]["backbone"]["blocks_1"]["mlp"]["out"]["kernel"]
    assert out_kernel.sharding.spec == jax.sharding.PartitionSpec("model", None)
    forward = jax.jit(model.apply)
    assert_close(forward(sharded, toks), forward(params, toks), tol=1e-5)


def test_param_groups_ssm_norms_biases():
    cfg = models.BackboneConfig(
        d_model=D,
        num_layers=4,
        vocab_size=VOCAB,
        pattern=("s5", "lru", "mamba", "performer"),
        mixers={"performer": {"cell": "performer", "num_heads": 2, "num_features": 8}},
        norm="layernorm",
        use_bias=True,
    )
    model = models.LanguageModel(cfg)
    variables = abstract_variables(model, tokens())
    groups = models.param_groups(model, variables)["params"]
    blocks = [groups["backbone"][f"blocks_{i}"] for i in range(4)]
    s5, lru, mamba, performer = (b["mixer"]["cell"] for b in blocks)
    assert {k for k, g in s5.items() if g == "ssm"} == {"lambda_re", "lambda_im", "log_dt", "b_re", "b_im"}
    assert {k for k, g in lru.items() if g == "ssm"} == {"nu_log", "theta_log", "gamma_log"}
    assert {k for k, g in mamba.items() if g == "ssm"} == {"A_log", "dt_bias", "D"}
    assert performer["features"] == "frozen"
    for block in blocks:
        assert block["mixer_norm"] == {"scale": "no_decay", "bias": "no_decay"}
        assert block["mlp"]["gate"] == {"kernel": "default", "bias": "no_decay"}
    assert groups["backbone"]["final_norm"] == {"scale": "no_decay", "bias": "no_decay"}
    assert groups["backbone"]["encoder"]["embedding"] == "default"
    # The same groups from unboxed params (rebuilt from the model), for the whole variables or params.
    unboxed = nn.unbox(variables)
    assert models.param_groups(model, unboxed["params"]) == groups
    assert models.param_groups(model, unboxed) == {"params": groups}
    assert models.param_groups(model) == groups
    # Weight-decay masks: True only for "default"; decay_vectors=False also spares cell biases.
    mask = models.weight_decay_mask(model, variables)["params"]
    assert mask["backbone"]["blocks_0"]["mixer"]["cell"]["c_re"] is True
    assert mask["backbone"]["blocks_0"]["mixer"]["cell"]["log_dt"] is False
    assert mask["backbone"]["blocks_0"]["mlp_norm"]["scale"] is False
    strict = models.weight_decay_mask(model, unboxed["params"], decay_vectors=False)
    assert strict["backbone"]["blocks_0"]["mixer"]["cell"]["d"] is False  # S5's D: a vector in "default"
    assert strict["backbone"]["blocks_0"]["mlp"]["up"]["kernel"] is True
    with pytest.raises(ValueError, match="structure"):
        models.param_groups(model, {"nope": jnp.zeros(3)})


def test_cell_layer_equals_raw_cell():
    """CellLayer.init creates `cell.init`'s tree (boxed with the cell's axes and groups); apply and step
    run the cell's apply and step."""
    cell = cells.GRU(hidden_size=D)
    layer = models.CellLayer(cell)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 7, D))
    abstract = abstract_variables(layer, xs)
    boxed = abstract["params"]["cell"]
    axes = cell.param_axes()
    assert set(boxed) == set(axes)
    for name, box in boxed.items():
        assert box.names == tuple(axes[name])
        assert box.group == cell.param_groups()[name]
    params = cell_params(cell)
    variables = {"params": {"cell": params}}
    mask = jnp.asarray(np.arange(7)[None, :] < np.asarray([[7], [4]]))
    ys, state = layer.apply(variables, xs, mask=mask)
    ref_ys, ref_state = cell.apply(params, xs, mask=mask)
    assert_close(ys, ref_ys)
    assert_close(state, ref_state)
    state0 = layer.initial_state((2,))
    jax.tree.map(np.testing.assert_array_equal, state0, cell.initial_state((2,)))
    new, y = layer.apply(variables, xs[:, 0], state0, method=models.CellLayer.step)
    ref_new, ref_y = cell.step(params, state0, xs[:, 0])
    assert_close(y, ref_y)
    assert_close(new, ref_new)


def test_cell_layer_errors():
    with pytest.raises(TypeError, match="no step form"):
        layer = models.CellLayer(cells.Bidirectional.of(cells.GRU(hidden_size=4)))
        variables = jax.eval_shape(layer.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 4)))
        layer.apply(variables, jnp.zeros((1, 4)), layer.initial_state((1,)), method=models.CellLayer.step)
    bad = models.CellLayer(cells.GRU(hidden_size=4), input_size=4)
    with pytest.raises(ValueError, match="features"):
        jax.eval_shape(bad.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 5)))
