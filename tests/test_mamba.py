"""Mamba and the chunked selective scan: equivalence, initialisation, padding, memory, bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.scan.selective import selective_scan, selective_scan_reference
from tests.cell_cases import max_abs_diff, random_flags


def _scan_inputs(bsz=2, length=37, d=5, n=3, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    x = jax.random.normal(k[0], (bsz, length, d))
    dt = jax.nn.softplus(jax.random.normal(k[1], (bsz, length, d)))
    a = -jnp.exp(jax.random.normal(k[2], (d, n)))
    b = jax.random.normal(k[3], (bsz, length, n))
    c = jax.random.normal(k[4], (bsz, length, n))
    h0 = jax.random.normal(k[5], (bsz, d, n))
    resets = random_flags(seed, (bsz, length), 0.1)
    return x, dt, a, b, c, h0, resets


@pytest.mark.parametrize(
    ("method", "chunk_size", "length"),
    [
        *[(m, c, 37) for m in ("remat_sequential", "remat_associative") for c in (1, 8, 64)],
        # unrolled: its own default chunk (8), one token, and a chunk longer than the sequence (16 over 13
        # tokens: an unrolled chunk of 40 over 37 compiled for ~20 s, for the same padding path)
        ("remat_unrolled", None, 37),
        ("remat_unrolled", 1, 37),
        ("remat_unrolled", 16, 13),
    ],
)
def test_selective_scan_matches_materialised_scan(method, chunk_size, length):
    args = _scan_inputs(length=length)
    y, h = selective_scan(*args, chunk_size=chunk_size, method=method)
    y_ref, h_ref = selective_scan_reference(*args)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    np.testing.assert_allclose(h, h_ref, atol=1e-5)

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)[0])) + jnp.sum(fn(*a)[1] ** 2)

    chunked = loss(lambda *a: selective_scan(*a, chunk_size=chunk_size, method=method))
    # one compiled program per form (eager autodiff compiles op by op)
    grads = jax.jit(jax.grad(chunked, argnums=range(6)))(*args)
    ref = jax.jit(jax.grad(loss(selective_scan_reference), argnums=range(6)))(*args)
    for got, want in zip(grads, ref, strict=True):
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)


def test_selective_scan_training_memory_does_not_scale_with_l_d_n():
    """XLA's own memory plan for the gradient: the chunked form keeps no [B, L, D, N] tensor."""
    bsz, length, d, n = 2, 4096, 64, 16
    args = [
        jnp.zeros((bsz, length, d)),
        jnp.full((bsz, length, d), 0.01),
        -jnp.ones((d, n)),
        jnp.zeros((bsz, length, n)),
        jnp.zeros((bsz, length, n)),
    ]

    def peak(fn):
        grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0] ** 2), argnums=range(5)))
        m = grad.lower(*args).compile().memory_analysis()
        return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes

    expanded = bsz * length * d * n * 4  # one float32 [B, L, D, N] tensor: 32 MiB here
    chunked = peak(lambda *a: selective_scan(*a, chunk_size=64, method="remat_sequential"))
    # 8-token chunks keep L/8 states of B·D·N: a quarter of one expanded tensor for N = 16
    unrolled = peak(lambda *a: selective_scan(*a, method="remat_unrolled"))
    materialised = peak(selective_scan_reference)
    assert chunked < expanded and unrolled < expanded, (chunked, unrolled, expanded)
    assert materialised > 4 * max(chunked, unrolled), (materialised, chunked, unrolled)


def test_mamba_initialisation(key):
    cell = cells.Mamba(d_model=8, state_size=6)
    p = cell.init(key, 8)
    np.testing.assert_allclose(np.exp(p["A_log"]), np.broadcast_to(np.arange(1, 7), (16, 6)), rtol=1e-6)
    dt = jax.nn.softplus(p["dt_bias"])
    assert float(dt.min()) >= 1e-3 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    np.testing.assert_allclose(p["D"], 1.0)
    assert cell.param_groups()["A_log"] == "ssm" and cell.param_groups()["in_proj"] == "default"
    assert p["x_proj"].shape == (16, cell.rank + 12)
    # torch's defaults, as the reference: Linear uniform in ±fan_in^-1/2, Conv1d weight and bias in
    # ±d_conv^-1/2 (the conv bias is not zero)
    for name, fan_in in (("in_proj", 8), ("x_proj", 16), ("out_proj", 16)):
        w = np.asarray(p[name])
        assert np.abs(w).max() <= fan_in**-0.5 and np.abs(w).max() > 0.8 * fan_in**-0.5, name
        assert np.std(w) == pytest.approx(fan_in**-0.5 / np.sqrt(3), rel=0.2), name
    bound = cell.d_conv**-0.5
    for name in ("conv_w", "conv_b"):
        assert 0.5 * bound < np.abs(np.asarray(p[name])).max() <= bound, name


def test_padding_does_not_decay_the_state(key):
    """A run of padding between two tokens changes nothing: same outputs, same state as without it."""
    cell = cells.Mamba(d_model=4, state_size=3, chunk_size=4)
    p = cell.init(key, 4)
    xs = jax.random.normal(key, (1, 6, 4))
    holes = jnp.concatenate([xs[:, :3], 50 * jnp.ones((1, 5, 4)), xs[:, 3:]], axis=1)
    mask = jnp.array([[True] * 3 + [False] * 5 + [True] * 3])

    @jax.jit  # both calls in one compiled program
    def run(p, holes, xs, mask):
        return cell.apply(p, holes, mask=mask), cell.apply(p, xs)

    (ys, state), (ys_ref, state_ref) = run(p, holes, xs, mask)
    np.testing.assert_allclose(ys[mask], ys_ref[0], atol=1e-6)
    np.testing.assert_array_equal(ys[~mask], 0.0)
    assert max_abs_diff(state, state_ref) < 1e-6


def test_streaming_in_pieces_equals_one_pass(key):
    """apply over consecutive pieces, carrying the state (conv window included), equals one apply."""
    cell = cells.Mamba(d_model=4, state_size=3, chunk_size=4)
    p = cell.init(key, 4)
    xs = jax.random.normal(key, (2, 23, 4))

    @jax.jit  # the one pass and the three pieces in one compiled program
    def run(p, xs):
        ys, final = cell.apply(p, xs)
        state = cell.initial_state((2,))
        pieces = []
        for lo, hi in [(0, 2), (2, 9), (9, 23)]:
            y, state = cell.apply(p, xs[:, lo:hi], state)
            pieces.append(y)
        return ys, final, jnp.concatenate(pieces, 1), state

    ys, final, pieces, state = run(p, xs)
    np.testing.assert_allclose(pieces, ys, atol=1e-5)
    assert max_abs_diff(state, final) < 1e-5


def test_bad_input():
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        cells.Mamba(d_model=4, method="fast")
    with pytest.raises(ValueError, match="'chunked' was renamed: use 'auto'"):
        cells.Mamba(d_model=4, method="chunked")
    with pytest.raises(ValueError, match="state_size must be a positive integer"):
        cells.Mamba(d_model=4, state_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        cells.Mamba(d_model=4, chunk_size=0)
    with pytest.raises(ValueError, match=r"input_size=3 but d_model=4"):
        cells.Mamba(d_model=4).init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match="dt_min < dt_max"):
        cells.Mamba(d_model=4, dt_min=0.1, dt_max=0.01)


def test_mamba_backends_agree(key):
    """The chunked training form against the other chunked forms and both materialised forms: values
    and gradients, with flags."""
    base = cells.Mamba(d_model=4, state_size=3, chunk_size=4, method="remat_sequential")
    alternatives = (
        "remat_associative",
        "remat_unrolled",
        "materialized_sequential",
        "materialized_associative",
    )
    params = base.init(key, 4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 11, 4))
    resets = random_flags(5, (2, 11), 0.2)
    mask = random_flags(6, (2, 11), 0.8)

    def loss(cell):
        def f(p, x):
            ys, state = cell.apply(p, x, resets=resets, mask=mask)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(state.ssm**2) + jnp.sum(state.conv)

        return jax.value_and_grad(f, argnums=(0, 1))

    @jax.jit  # all three backends in one compiled program
    def all_methods(params, xs):
        others = {m: loss(dataclasses.replace(base, method=m))(params, xs) for m in alternatives}
        return loss(base)(params, xs), others

    (value, grads), results = all_methods(params, xs)
    for method in alternatives:
        other_value, other_grads = results[method]
        np.testing.assert_allclose(other_value, value, rtol=1e-5)
        assert max_abs_diff(other_grads, grads) < 1e-4, method
