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
from seqjax.models import CellLayer, NnxCellLayer

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

    # Each side runs under one jit (eager dispatch of the step loops would dominate the test's time).
    @jax.jit
    def run_linen(variables):
        out = linen.apply(variables, xs, resets=resets, mask=mask)
        state, ys = linen.initial_state((BATCH,)), []
        for t in range(TIME):
            state, y = linen.apply(variables, xs[:, t], state, mask=mask[:, t], method=CellLayer.step)
            ys.append(y)

        def loss(params):
            return jnp.sum(linen.apply({"params": params}, xs, mask=mask)[0] ** 2)

        return out, (state, ys), meta.unbox(jax.grad(loss)(variables["params"]))["cell"]

    @nnx.jit
    def run_nnx(layer):
        out = layer(xs, resets=resets, mask=mask)
        state, ys = layer.initial_state((BATCH,)), []
        for t in range(TIME):
            state, y = layer.step(xs[:, t], state, mask=mask[:, t])
            ys.append(y)
        grads = nnx.grad(lambda m: jnp.sum(m(xs, mask=mask)[0] ** 2))(layer)
        return out, (state, ys), nnx.to_pure_dict(grads)["params"]

    _close(run_nnx(layer), run_linen(variables))


def test_param_metadata_carries_linen_axes_and_groups():
    cell = cells.S5(hidden_size=FEATURES, state_size=4, blocks=2)  # has "ssm" and "default" groups
    _, variables, layer = _both(cell)
    boxes = variables["params"]["cell"]
    is_box = lambda x: isinstance(x, meta.AxisMetadata)  # noqa: E731
    flat_boxes = dict(jax.tree_util.tree_flatten_with_path(boxes, is_leaf=is_box)[0])
    flat_params = dict(jax.tree_util.tree_flatten_with_path(layer.params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0])
    assert flat_boxes.keys() == flat_params.keys()
    for path, box in flat_boxes.items():
        param = flat_params[path]
        assert isinstance(param, nnx.Param)
        assert param.out_sharding == box.names
        assert param.get_metadata("group") == box.group
    assert {p.get_metadata("group") for p in flat_params.values()} == {"ssm", "default"}
    # nnx's own reader gives the linen partition specs
    specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
    want = nn.get_partition_spec(variables)["params"]["cell"]
    flat_specs = dict(jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(specs)["params"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0])
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0])
    assert flat_specs == flat_want


def test_rngs_init_is_cell_init():
    cell = cells.LSTM(hidden_size=6)
    layer = NnxCellLayer(cell, FEATURES, rngs=nnx.Rngs(3))
    _close(layer.cell_params(), cell.init(nnx.Rngs(3).params(), FEATURES))


def test_nnx_jit_and_optimizer_step():
    layer = NnxCellLayer(cells.GatedLinearAttention(num_heads=2, head_dim=3, chunk_size=4), FEATURES, rngs=nnx.Rngs(0))
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
