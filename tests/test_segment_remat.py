"""`SegmentRemat`: the wrapped cell's function exactly (values, final states and gradients, with resets
on and across segment boundaries, padding, a carried initial state, a right-to-left cell and a length
no segment divides), in less training memory (XLA's plan), and clear refusals."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.common.xla import plan_bytes

LENGTH, SEGMENT, INPUT = 37, 8, 6  # 5 segments, the last padded with 3 masked tokens

# A chunked engine with short convolutions (its state: windows and a matrix), a diagonal SSM, and a
# right-to-left nonlinear cell: the wrapper only uses the contract, so these stand for the rest.
CELLS = {
    "gated_deltanet": lambda: cells.GatedDeltaNet(num_heads=2, head_dim=4, chunk_size=4),
    "s5": lambda: cells.S5(hidden_size=INPUT, state_size=4),
    "lstm_reversed": lambda: cells.LSTM(hidden_size=5, reverse=True),
}


def _flags():
    resets = np.zeros((2, LENGTH), bool)
    resets[0, [8, 19]] = True  # on a segment boundary (8) and inside a segment
    resets[1, 16] = True  # on a boundary: a right-to-left cell must clear the state it hands back
    mask = np.ones((2, LENGTH), bool)
    mask[1, 30:] = False  # right padding reaching into the last, already padded segment
    return jnp.asarray(resets), jnp.asarray(mask)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_segments_compute_the_cells_function_values_and_gradients(name):
    inner = CELLS[name]()
    wrapped = cells.SegmentRemat(inner, segment_length=SEGMENT)
    params = inner.init(jax.random.PRNGKey(0), INPUT)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, LENGTH, INPUT))
    resets, mask = _flags()
    # a carried state: the inner cell's state after a prefix
    _, state = inner.apply(params, jax.random.normal(jax.random.PRNGKey(2), (2, 5, INPUT)))

    def run(cell, params, xs):
        return cell.apply(params, xs, state, resets=resets, mask=mask)

    def loss(cell, params, xs):
        ys, final = run(cell, params, xs)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree.leaves(final))

    def outputs_and_grads(cell):  # one compiled program per form (eager autodiff compiles op by op)
        return jax.jit(lambda p, x: (run(cell, p, x), jax.grad(loss, argnums=(1, 2))(cell, p, x)))(params, xs)

    (ys_ref, final_ref), grads_ref = outputs_and_grads(inner)
    (ys, final), grads = outputs_and_grads(wrapped)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_inputs_keep_the_cells_own_state_dtype():
    # the cell's apply starts from its default (float32) state for bf16 inputs; so must the segments
    inner = CELLS["gated_deltanet"]()
    params = inner.init(jax.random.PRNGKey(0), INPUT)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, LENGTH, INPUT)).astype(jnp.bfloat16)
    ys_ref, final_ref = inner.apply(params, xs)
    ys, final = cells.SegmentRemat(inner, segment_length=SEGMENT).apply(params, xs)
    assert [a.dtype for a in jax.tree.leaves(final)] == [a.dtype for a in jax.tree.leaves(final_ref)]
    np.testing.assert_allclose(np.asarray(ys, np.float32), np.asarray(ys_ref, np.float32), atol=1e-5)


def test_step_and_parameters_are_the_wrapped_cells():
    inner = cells.GatedDeltaNet(num_heads=2, head_dim=4)
    wrapped = cells.SegmentRemat(inner, segment_length=4)
    params = wrapped.init(jax.random.PRNGKey(0), INPUT)
    assert jax.tree.structure(params) == jax.tree.structure(inner.init(jax.random.PRNGKey(0), INPUT))
    assert wrapped.param_axes() == inner.param_axes() and wrapped.output_size == inner.output_size
    x = jnp.ones((2, INPUT))
    state = wrapped.initial_state((2,))
    for a, b in zip(
        jax.tree.leaves(wrapped.step(params, state, x)),
        jax.tree.leaves(inner.step(params, state, x)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_training_memory_no_longer_grows_with_the_cells_activations():
    # Gated DeltaNet's layer stores ~35 floats per input float for the backward pass; in segments it
    # stores the inputs, one state per segment and one segment's activations. method="chunked": "auto"
    # itself runs sequences this long in segments on CPU.
    inner = cells.GatedDeltaNet(num_heads=4, head_dim=16, method="chunked")
    params = inner.init(jax.random.PRNGKey(0), 16)
    xs = jnp.ones((2, 4096, 16))

    def plan(cell):
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(cell.apply(p, x)[0] ** 2), argnums=(0, 1)))
        return plan_bytes(grad.lower(params, xs).compile())

    whole, segmented = plan(inner), plan(cells.SegmentRemat(inner, segment_length=256))
    assert segmented < whole / 4, (whole, segmented)


def test_refusals_name_the_reason_and_the_fix():
    with pytest.raises(ValueError, match="segment_length must be a positive int"):
        cells.SegmentRemat(cells.LSTM(hidden_size=4), segment_length=0)
    with pytest.raises(ValueError, match="state grows with the sequence"):
        cells.SegmentRemat(cells.Attention(num_heads=2, head_dim=4))
    split = cells.with_sequence_axis(cells.S5(hidden_size=4, state_size=4), "sequence")
    with pytest.raises(ValueError, match="Use one of the two"):
        cells.SegmentRemat(split)


def test_a_model_with_segment_remat_computes_the_same_function():
    from seqjax.models import Backbone, BackboneConfig

    base = {"d_model": 8, "num_layers": 2, "vocab_size": 11, "pattern": ("lru", "attention")}
    plain, segmented = BackboneConfig(**base), BackboneConfig(**base, segment_remat=8)
    # the recurrent layer is wrapped, attention (a KV cache that grows) stays whole
    assert [type(c).__name__ for c in segmented.layer_cells()] == ["SegmentRemat", "Attention"]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, LENGTH), 0, 11)
    variables = Backbone(plain).init(jax.random.PRNGKey(0), tokens)
    again = Backbone(segmented).init(jax.random.PRNGKey(0), tokens)
    assert jax.tree.structure(again) == jax.tree.structure(variables)  # the same parameters
    # a fixed projection of the features: their sum of squares after the final RMSNorm is a constant
    projection = jax.random.normal(jax.random.PRNGKey(2), (8,))

    def loss_and_grad(config):  # one compiled program per form
        return jax.jit(
            jax.value_and_grad(lambda v: jnp.sum(Backbone(config).apply(v, tokens)[0] @ projection))
        )

    (value, grads), (expected_value, expected) = (
        loss_and_grad(segmented)(variables),
        loss_and_grad(plain)(variables),
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    with pytest.raises(ValueError, match="segment_remat must be 0"):
        BackboneConfig(**base, segment_remat=-1)


AUTO_SEGMENTED = {
    "deltanet": dict(num_heads=2, head_dim=4, chunk_size=4),
    "gated_deltanet": dict(num_heads=2, head_dim=4, chunk_size=4),
    "mamba2": dict(d_model=8, head_dim=4, state_size=4, chunk_size=4),
    "mlstm": dict(d_model=8, num_heads=2, chunk_size=4),
    "rglru": dict(d_model=8, lru_width=8, num_heads=2),
    "rwkv7": dict(num_heads=2, head_dim=4, d_model=8, chunk_size=4),
}


@pytest.mark.parametrize("name", sorted(AUTO_SEGMENTED))
def test_auto_segments_long_sequences_on_cpu_as_the_whole_sequence(name, monkeypatch):
    """On CPU, `method="auto"` runs sequences above the cell's `auto_segment_above` in rematerialised
    segments (`cpu_auto_segments`): the same outputs, final state and gradients as the whole sequence
    under an explicit method, with resets and padding (a segment boundary inside a padded stretch,
    another at a reset) and a nonzero initial state. Elsewhere (GPU, TPU) "auto" never segments."""
    from seqjax.cells import segment_remat

    calls = []
    segment_apply = segment_remat.SegmentRemat.apply
    monkeypatch.setattr(
        segment_remat.SegmentRemat,
        "apply",
        lambda self, *a, **k: calls.append(1) or segment_apply(self, *a, **k),
    )
    monkeypatch.setattr(type(cells.get(name, **AUTO_SEGMENTED[name])), "auto_segment_above", 8)
    monkeypatch.setattr(segment_remat, "AUTO_SEGMENT_LENGTH", 6)
    with jax.enable_x64(True):  # float64: the two forms round differently in float32
        _check_auto_segments(name, calls)


def _check_auto_segments(name: str, calls: list) -> None:
    auto = cells.get(name, **AUTO_SEGMENTED[name], dtype=jnp.float64, param_dtype=jnp.float64)
    whole = dataclasses.replace(auto, method="associative" if name == "rglru" else "chunked")
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(2, 23, 8)), jnp.float64)
    resets = np.zeros((2, 23), bool)
    resets[0, 10] = resets[1, 12] = True  # row 1: at a segment boundary
    mask = np.ones((2, 23), bool)
    mask[0, 4:8] = False
    mask[1, 20:] = False
    resets, mask = jnp.asarray(resets), jnp.asarray(mask)
    params = auto.init(jax.random.PRNGKey(0), 8)
    state = jax.tree.map(
        lambda a: (
            jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype)
            if jnp.issubdtype(a.dtype, jnp.floating)
            else a
        ),
        auto.initial_state((2,), jnp.float64),
    )

    def loss(cell, params, xs):
        ys, final = cell.apply(params, xs, state, resets=resets, mask=mask)
        floats = [a for a in jax.tree.leaves(final) if jnp.issubdtype(a.dtype, jnp.floating)]
        return jnp.sum(ys**2) + sum(jnp.sum(a**2) for a in floats), (ys, final)

    grad = lambda cell: jax.jit(
        jax.value_and_grad(lambda p, x: loss(cell, p, x), argnums=(0, 1), has_aux=True)
    )(params, xs)
    (_, (ys_a, fin_a)), g_a = grad(auto)
    (_, (ys_w, fin_w)), g_w = grad(whole)
    assert calls == ([1] if jax.default_backend() == "cpu" else [])
    np.testing.assert_allclose(ys_a, ys_w, rtol=1e-9, atol=1e-9)
    for a, w in zip(jax.tree.leaves((fin_a, g_a)), jax.tree.leaves((fin_w, g_w)), strict=True):
        np.testing.assert_allclose(a, w, rtol=1e-8, atol=1e-9)


def test_auto_segments_refuse_a_threshold_below_the_segment_length():
    from seqjax.cells.segment_remat import AUTO_SEGMENT_LENGTH, cpu_auto_segments

    with pytest.raises(ValueError, match="auto_segment_above"):
        cpu_auto_segments(cells.Mamba2(d_model=8, head_dim=4), jnp.ones((1, 16, 8)), AUTO_SEGMENT_LENGTH - 1)
