"""The cell contract, run over every registered cell (`cells.names()`): apply equals a loop of step with
resets and padding (values and gradients; the loop as one `lax.scan` of step, `cell_cases.step_scan`,
itself checked against the plain Python loop below), padding and resets, batch shapes under jit and
vmap, float64 and bfloat16, parameter axes and groups, a state constant in length.

The cases come from `tests.cell_cases.contract_cases()`: a registered cell gets these tests by
registering (built from small default hyperparameters when CELL_CASES has no entry for it)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.models.partitioning import GROUPS
from tests.cell_cases import (
    INPUT_SIZE,
    contract_cases,
    init_params,
    max_abs_diff,
    normal_inputs,
    random_flags,
    random_state,
    relative_diff,
    split_floats,
    state_loss,
    step_loop,
    step_scan,
)

B, T = 3, 13
CASES_BY_ID = contract_cases()
IDS = [name for name, _ in CASES_BY_ID]
CASES = [cell for _, cell in CASES_BY_ID]


def _require_case(cell) -> None:
    if isinstance(cell, str):  # a registered cell the contract could not build
        pytest.fail(cell)


def _require_step(cell) -> None:
    _require_case(cell)
    reason = cell.step_unsupported(streaming=False)
    if reason is not None:
        pytest.skip(f"no step: {reason}")


def _inputs(seed, batch_shape=(B,), length=T):
    return normal_inputs(seed, (*batch_shape, length, INPUT_SIZE))


@pytest.mark.parametrize("cell", CASES, ids=IDS)
@pytest.mark.parametrize("flags", ["plain", "resets+mask"])
def test_apply_equals_step_loop(cell, flags):
    _require_step(cell)
    memory = getattr(cell, "memory_length", None)
    if memory is not None and memory < 8 + T:  # Transformer-XL: a function of the segmentation
        pytest.skip(
            f"memory_length={memory} does not cover the cached tokens (< 8) and the {T} new ones: XL's apply "
            f"over a segment differs from the step loop (tests/test_xl_attention.py checks both forms)"
        )
    params = init_params(cell)
    xs = _inputs(1)
    state = random_state(cell, 2, (B,))
    resets = random_flags(3, (B, T), 0.25) if "resets" in flags else None
    mask = random_flags(4, (B, T), 0.7) if "mask" in flags else None
    # Gradients w.r.t. the state's floating-point leaves (an attention cache's length is an integer).
    floats, rebuild = split_floats(state)

    def loss(fn, params, xs, floats):
        ys, final = fn(params, xs, rebuild(floats))
        return jnp.sum(jnp.sin(3 * ys)) + state_loss(final), (ys, final)

    by_apply = lambda p, x, s: cell.apply(p, x, s, resets=resets, mask=mask)
    by_steps = lambda p, x, s: step_scan(cell, p, x, s, resets=resets, mask=mask)

    def grads_and_outputs(fn):  # one compiled program per form
        return jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1, 2), has_aux=True))(params, xs, floats)

    g_apply, (ys, final) = grads_and_outputs(by_apply)
    g_steps, (ref_ys, ref_final) = grads_and_outputs(by_steps)
    assert ys.shape == (B, T, cell.output_size)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    assert relative_diff(final, ref_final) < 1e-5
    # Relative to each gradient's scale: float32 reassociation between the parallel and the step form
    # is amplified by GLA's per-head norm over a few features (8e-5 seen); a real bug is O(1).
    assert relative_diff(g_apply, g_steps) < 1e-4


@pytest.mark.parametrize("name", ["lstm-fused-reverse", "gated-deltanet", "xl-attention-gqa"])
def test_step_scan_is_the_python_loop_of_step(name):
    """The contract's reference (`step_scan`: step under one `lax.scan`) against the plain Python loop of
    step (`step_loop`), with resets and padding: right to left (where a reset moves to the token after),
    a matrix state, and a cache with an integer length."""
    cell = dict(CASES_BY_ID)[name]
    params = init_params(cell)
    xs = _inputs(1)
    state = random_state(cell, 2, (B,))
    resets, mask = random_flags(3, (B, T), 0.25), random_flags(4, (B, T), 0.7)
    ys, final = jax.jit(lambda p, x, s: step_scan(cell, p, x, s, resets=resets, mask=mask))(params, xs, state)
    ref_ys, ref_final = step_loop(cell, params, xs, state, resets=resets, mask=mask)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-6, atol=1e-6)
    assert max_abs_diff(final, ref_final) < 1e-6


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_padding_leaves_state_unchanged_and_outputs_zero(cell):
    """A right-padded sequence ends in exactly the state of the unpadded one; a left-padded one too."""
    _require_step(cell)
    params = init_params(cell)
    xs = _inputs(1, (1,), 9)
    valid = 6
    garbage = 100.0 * np.asarray(_inputs(5, (1,), 9 - valid))
    xs = np.asarray(xs)
    cases = [
        (np.concatenate([xs[:, :valid], garbage], 1), np.arange(9)[None] < valid),  # right padding
        (np.concatenate([garbage, xs[:, :valid]], 1), np.arange(9)[None] >= 9 - valid),  # left padding
    ]

    @jax.jit  # the unpadded call and both padded ones in one compiled program
    def run(params, xs, cases):
        return cell.apply(params, xs[:, :valid]), [cell.apply(params, x, mask=m) for x, m in cases]

    (ys_short, state_short), padded_outs = run(params, xs, cases)
    for (_, mask), (ys, state) in zip(cases, padded_outs, strict=True):
        np.testing.assert_array_equal(ys[~mask], 0.0)
        np.testing.assert_allclose(ys[mask], ys_short[0], atol=1e-6)
        assert max_abs_diff(state, state_short) < 1e-6
    # step with mask=False returns the very same state
    state0 = random_state(cell, 3, (2,))
    state1, y = jax.jit(cell.step)(params, state0, xs[:, 0].repeat(2, 0), mask=np.array([False, False]))
    assert max_abs_diff(state0, state1) == 0.0
    np.testing.assert_array_equal(y, 0.0)


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_resets_split_packed_segments(cell):
    """Packing two sequences with a reset at the boundary equals running each one alone."""
    _require_case(cell)
    params = init_params(cell)
    a = _inputs(1, (1,), 5)
    b = _inputs(2, (1,), 7)
    resets = np.zeros((1, 12), bool)
    resets[0, 5] = True
    state = random_state(cell, 3, (1,))
    reverse = cell.is_reversed

    @jax.jit  # the packed call and both separate ones in one compiled program
    def run(params, a, b, state):
        ys, _ = cell.apply(params, jnp.concatenate([a, b], 1), state, resets=resets)
        # The segment the scan meets first continues from `state`; the other starts from zeros.
        ys_a, _ = cell.apply(params, a, None if reverse else state)
        ys_b, _ = cell.apply(params, b, state if reverse else None)
        return ys, ys_a, ys_b

    ys, ys_a, ys_b = run(params, a, b, state)
    # Packed, the second segment's tokens sit at other offsets inside the chunked engines' chunks, so
    # float32 rounds differently (DeltaNet's chunk solve: up to 1.4e-5 relative, measured); a reset that
    # leaks state differs by O(1).
    np.testing.assert_allclose(ys, jnp.concatenate([ys_a, ys_b], 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_batch_shapes_jit_vmap(cell):
    """No batch axis, vmap over batch axes and vmap over parameters agree with the call on two batch axes.
    All forms run in one compiled program: run eagerly, each small op compiles a program of its own (an
    eager call runs the same JAX function; tests/test_attention_cells.py::test_eager_equals_jit checks
    one cell's, and the cells' own test files call apply eagerly)."""
    _require_case(cell)
    params = init_params(cell)
    xs = _inputs(1, (2, 3), 7)
    # vmap over parameters (an ensemble) also works
    stacked = jax.tree.map(lambda *p: np.stack(p), params, init_params(cell, 9))

    @jax.jit
    def transformed(params, stacked, xs):
        ys, state = cell.apply(params, xs)
        ys_single, _ = cell.apply(params, xs[1, 2])
        ys_vmap, _ = jax.vmap(jax.vmap(lambda x: cell.apply(params, x)))(xs)
        ys_ens, _ = jax.vmap(lambda p: cell.apply(p, xs))(stacked)
        return ys, state, ys_single, ys_vmap, ys_ens

    ys, state, ys_single, ys_vmap, ys_ens = transformed(params, stacked, xs)
    assert ys.shape == (2, 3, 7, cell.output_size)
    template = jax.eval_shape(lambda: cell.initial_state((2, 3)))
    assert jax.tree.structure(state) == jax.tree.structure(template)
    jax.tree.map(lambda s, i: np.testing.assert_equal(s.shape, i.shape), state, template)
    np.testing.assert_allclose(ys_single, ys[1, 2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys_vmap, ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ys_ens[0], ys, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_float32_matches_float64_reference(cell):
    _require_case(cell)
    params = init_params(cell)
    xs = _inputs(1, (2,), 64)
    resets = random_flags(3, (2, 64), 0.05)
    mask = random_flags(4, (2, 64), 0.9)

    def loss(c, p, x, s):
        ys = c.apply(p, x, s, resets=resets, mask=mask)[0]
        return jnp.sum(ys**2), ys

    # Outputs and gradients from one compiled program per precision.
    g32, ys32 = jax.jit(jax.grad(lambda p: loss(cell, p, xs, None), has_aux=True))(params)
    with jax.enable_x64(True):
        cell64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        x64 = jnp.asarray(np.asarray(xs, np.float64))
        initial64 = lambda: cell64.initial_state((2,), jnp.float64)
        g64, ys64 = jax.jit(jax.grad(lambda p: loss(cell64, p, x64, initial64()), has_aux=True))(p64)
        assert ys64.dtype == jnp.float64
        ys64, g64 = np.asarray(ys64), jax.tree.map(np.asarray, g64)
    np.testing.assert_allclose(ys32, ys64, atol=1e-5)
    # A parameter whose gradient is a small sum of large cancelling terms (S5's Re λ) carries float32
    # error relative to the terms, not to the sum, so errors are measured against the gradient scale.
    overall = max(np.max(np.abs(g)) for g in g64.values())
    for name in params:
        scale = max(np.max(np.abs(g64[name])), 0.1 * overall) + 1e-12
        assert np.max(np.abs(np.asarray(g32[name]) - g64[name])) / scale < 1e-4, name


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_bfloat16_compute_close_to_float32(cell):
    _require_case(cell)
    params = init_params(cell)
    xs = _inputs(1, (2,), 32)
    cell16 = dataclasses.replace(cell, dtype=jnp.bfloat16)

    @jax.jit  # both precisions and the bfloat16 gradient in one compiled program
    def run(params, xs):
        ys32, _ = cell.apply(params, xs)
        ys16, s16 = cell16.apply(params, xs)
        g16 = jax.grad(lambda p: jnp.sum(cell16.apply(p, xs)[0].astype(jnp.float32) ** 2))(params)
        return ys32, ys16, s16, g16

    ys32, ys16, s16, g16 = run(params, xs)
    assert ys16.dtype == jnp.bfloat16
    # the state and parameters stay float32 (complex64 for complex SSMs); counts stay int32
    assert all(leaf.dtype in (jnp.float32, jnp.complex64, jnp.int32) for leaf in jax.tree.leaves(s16))
    floats16, _ = split_floats(s16)
    assert all(leaf.dtype in (jnp.float32, jnp.complex64) for leaf in floats16)
    assert all(g.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(g16))
    # bfloat16 keeps 8 significant bits: a few roundings per token, relative to the output's size. A norm
    # over a head's few features (GLA's, 4 here) amplifies them where the features nearly agree: 5 of 512
    # outputs off by up to 0.11 seen. Accumulating in bfloat16 over time would fail all three bounds.
    err = np.abs(np.asarray(ys16, np.float32) - np.asarray(ys32))
    assert np.mean(err > 0.05 + 0.02 * np.abs(np.asarray(ys32))) < 0.02
    assert err.max() < 0.25
    assert err.mean() < 0.01


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_param_axes_and_groups_cover_every_parameter(cell):
    _require_case(cell)
    params = init_params(cell)
    axes, groups = cell.param_axes(), cell.param_groups()
    assert jax.tree.structure(params) == jax.tree.structure(axes, is_leaf=lambda a: isinstance(a, tuple))
    assert jax.tree.structure(params) == jax.tree.structure(groups)
    for name, leaf in params.items():
        assert len(axes[name]) == leaf.ndim, name
        assert all(isinstance(a, str) for a in axes[name]), name
        assert leaf.dtype == jnp.float32
        assert groups[name] in GROUPS, name
    assert cell.input_size_of(params) == INPUT_SIZE
    # the registry builds the same cell from its name and hyperparameters
    hparams = {f.name: getattr(cell, f.name) for f in dataclasses.fields(cell) if f.init}
    assert cells.get(cell.name, **hparams) == cell


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_state_is_constant_in_length(cell):
    _require_case(cell)
    if isinstance(cell, cells.Attention | cells.Linformer):  # built for a longest input (a KV cache, or n)
        cell = dataclasses.replace(cell, max_length=4096)
    params = init_params(cell)
    # Shapes only: eval_shape traces apply without compiling it.
    _, short = jax.eval_shape(cell.apply, params, jax.ShapeDtypeStruct((2, 4, INPUT_SIZE), jnp.float32))
    _, long = jax.eval_shape(cell.apply, params, jax.ShapeDtypeStruct((2, 4000, INPUT_SIZE), jnp.float32))
    assert [a.shape for a in jax.tree.leaves(short)] == [a.shape for a in jax.tree.leaves(long)]


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_flags_broadcast_in_apply(cell):
    """`resets` and `mask` of shape [1, time] or [time] act as their explicit broadcast to [*batch, time]
    (the README's `jnp.arange(T)[None] < n`); a shape that does not broadcast names itself."""
    _require_case(cell)
    params = init_params(cell)
    xs = _inputs(1)
    resets = random_flags(3, (1, T), 0.25)
    mask = random_flags(4, (1, T), 0.7)
    full = lambda f: jnp.broadcast_to(f, (B, T))

    @jax.jit  # the three forms in one compiled program
    def run(params, xs):
        return [
            cell.apply(params, xs, resets=r, mask=m)
            for r, m in [(full(resets), full(mask)), (resets, mask), (resets[0], mask[0])]
        ]

    (ys, final), *broadcast = run(params, xs)
    for ys_b, final_b in broadcast:
        np.testing.assert_allclose(ys_b, ys, rtol=1e-6, atol=1e-6)
        assert max_abs_diff(final_b, final) < 1e-6
    with pytest.raises(ValueError, match=rf"`mask` has shape \({B}, {T + 1}\), expected \({B}, {T}\)"):
        cell.apply(params, xs, mask=jnp.ones((B, T + 1), bool))
    with pytest.raises(ValueError, match=rf"`resets` has shape \(2, {T}\), expected \({B}, {T}\)"):
        cell.apply(params, xs, resets=jnp.zeros((2, T), bool))


@pytest.mark.parametrize("cell", CASES, ids=IDS)
def test_flags_broadcast_in_step(cell):
    """`reset` and `mask` of shape [1] or [] act as their explicit broadcast to [*batch]."""
    _require_step(cell)
    params = init_params(cell)
    x = _inputs(1)[:, 0]
    state = random_state(cell, 2, (B,))

    @jax.jit
    def run(params, state, x):
        out = []
        for reset, mask in [(True, False), (True, True), (False, True)]:
            r, m = jnp.array([reset]), jnp.array([mask])
            full = (jnp.broadcast_to(r, (B,)), jnp.broadcast_to(m, (B,)))
            forms = [full, (r, m), (r[0], m[0])]
            out.append([cell.step(params, state, x, reset=a, mask=b) for a, b in forms])
        return out

    for (state_full, y), *broadcast in run(params, state, x):
        for state_b, y_b in broadcast:
            np.testing.assert_allclose(y_b, y, rtol=1e-6, atol=1e-6)
            assert max_abs_diff(state_b, state_full) < 1e-6
    with pytest.raises(ValueError, match=rf"`mask` has shape \({B + 1},\), expected \({B},\)"):
        cell.step(params, state, x, mask=jnp.ones((B + 1,), bool))
    with pytest.raises(ValueError, match=rf"`reset` has shape \({B}, 1\), expected \({B},\)"):
        cell.step(params, state, x, reset=jnp.ones((B, 1), bool))
