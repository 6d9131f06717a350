"""NnxCellLayer (Flax NNX) against CellLayer (linen) on the same weights: outputs, step loop, gradients,
parameter metadata, nnx.jit and an optax step through nnx.Optimizer."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import meta

from seqjax import cells
from seqjax.models import CellLayer, NnxCellLayer  # NnxCellLayer: a lazy export

FEATURES, BATCH, TIME = 5, 2, 6

CASES = [
    ("lstm", cells.LSTM(hidden_size=6)),
    ("gla", cells.GatedLinearAttention(num_heads=2, head_dim=3, chunk_size=4)),
    ("s5", cells.S5(hidden_size=FEATURES, state_size=4, blocks=2)),
    ("attention", cells.Attention(num_heads=2, head_dim=4, max_length=16)),
]


def _inputs():
    xs = jax.random.normal(jax.random.PRNGKey(1), (BATCH, TIME, FEATURES))
    mask = jnp.ones((BATCH, TIME), bool).at[1, 4:].set(False)
    resets = jnp.zeros((BATCH, TIME), bool).at[0, 3].set(True)
    return xs, mask, resets


def _both(cell):
    """A linen CellLayer and its variables, and an NnxCellLayer holding the same weights."""
    xs, _, _ = _inputs()
    linen = CellLayer(cell)
    variables = linen.init(jax.random.PRNGKey(0), xs)
    return linen, variables, NnxCellLayer(cell, params=variables["params"]["cell"])


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)


@pytest.mark.parametrize("cell", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_matches_linen_apply_step_and_grad(cell):
    linen, variables, layer = _both(cell)
    xs, mask, resets = _inputs()
    assert layer.input_size == FEATURES and layer.output_size == cell.output_size

    # Each side runs under one jit, the step loop as a scan over time (eager dispatch would dominate).
    @jax.jit
    def run_linen(variables):
        out = linen.apply(variables, xs, resets=resets, mask=mask)

        def step(state, inputs):
            return linen.apply(variables, *inputs[:1], state, mask=inputs[1], method=CellLayer.step)

        steps = jax.lax.scan(step, linen.initial_state((BATCH,)), (xs.swapaxes(0, 1), mask.T))

        def loss(params):
            return jnp.sum(linen.apply({"params": params}, xs, mask=mask)[0] ** 2)

        return out, steps, meta.unbox(jax.grad(loss)(variables["params"]))["cell"]

    @nnx.jit
    def run_nnx(layer):
        out = layer(xs, resets=resets, mask=mask)

        def step(state, inputs):
            return layer.step(inputs[0], state, mask=inputs[1])

        steps = jax.lax.scan(step, layer.initial_state((BATCH,)), (xs.swapaxes(0, 1), mask.T))
        grads = nnx.grad(lambda m: jnp.sum(m(xs, mask=mask)[0] ** 2))(layer)
        return out, steps, nnx.to_pure_dict(grads)["params"]

    _close(run_nnx(layer), run_linen(variables))


def _flat(tree, leaf_type):
    return dict(jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, leaf_type))[0])


def test_param_metadata_carries_linen_axes_and_groups():
    cell = cells.S5(hidden_size=FEATURES, state_size=4, blocks=2)  # has "ssm" and "default" groups
    _, variables, layer = _both(cell)
    boxes = _flat(variables["params"]["cell"], meta.AxisMetadata)
    params = _flat(layer.params, nnx.Variable)
    assert boxes.keys() == params.keys()
    for path, box in boxes.items():
        assert isinstance(params[path], nnx.Param)
        assert params[path].out_sharding == box.names
        assert params[path].get_metadata("group") == box.group
    assert {p.get_metadata("group") for p in params.values()} == {"ssm", "default"}
    # nnx's own reader gives linen's partition specs
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(layer, nnx.Param)))["params"]
    want = nn.get_partition_spec(variables)["params"]["cell"]
    assert _flat(specs, jax.sharding.PartitionSpec) == _flat(want, jax.sharding.PartitionSpec)


def test_rngs_init_is_cell_init():
    cell = cells.LSTM(hidden_size=6)
    layer = NnxCellLayer(cell, FEATURES, rngs=nnx.Rngs(3))
    _close(layer.cell_params(), cell.init(nnx.Rngs(3).params(), FEATURES))


def test_nnx_jit_and_optimizer_step():
    cell = cells.GatedLinearAttention(num_heads=2, head_dim=3, chunk_size=4)
    layer = NnxCellLayer(cell, FEATURES, rngs=nnx.Rngs(0))
    xs, mask, _ = _inputs()
    eager = layer(xs, mask=mask)
    _close(nnx.jit(lambda m, xs: m(xs, mask=mask))(layer, xs), eager)

    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)
    target = jnp.ones((BATCH, TIME, layer.output_size))

    @nnx.jit
    def train_step(layer, optimizer, xs):
        def loss_fn(m):
            return jnp.mean((m(xs, mask=mask)[0] - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(layer)
        optimizer.update(layer, grads)
        return loss

    losses = [float(train_step(layer, optimizer, xs)) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert int(optimizer.step[...]) == 3


def test_errors():
    cell = cells.LSTM(hidden_size=6)
    with pytest.raises(ValueError, match="exactly one of"):
        NnxCellLayer(cell, FEATURES)
    with pytest.raises(ValueError, match="input_size"):
        NnxCellLayer(cell, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="initialised for 5"):
        NnxCellLayer(cell, 7, params=cell.init(jax.random.PRNGKey(0), FEATURES))
    encoder = cells.Longformer(num_heads=2, head_dim=2, window=2)
    layer = NnxCellLayer(encoder, 4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="whole sequences"):
        layer.step(jnp.ones((1, 4)), layer.initial_state((1,)))
