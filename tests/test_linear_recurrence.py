"""The linear recurrence engine: every backend against a float64 reference, values and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.scan import linear_recurrence, reverse_resets
from seqjax.scan.diagonal import choose_method
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
)

B, N = 2, 3


def _reference(a, b, h0, resets, mask, reverse):
    """A plain loop in float64 / complex128 NumPy; `resets[:, t]` clears the state before processing t."""
    a, b = np.asarray(a), np.asarray(b)
    t_len = b.shape[1]
    h = np.array(h0)
    hs = np.zeros_like(b)
    order = range(t_len - 1, -1, -1) if reverse else range(t_len)
    for t in order:
        for i in range(b.shape[0]):
            if not mask[i, t]:
                hs[i, t] = h[i]
                continue
            prev = 0 if resets[i, t] else h[i]
            h[i] = a[i, t] * prev + b[i, t]
            hs[i, t] = h[i]
    return hs


def _inputs(length: int, complex_: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (B, length, N)
    a = rng.uniform(0.5, 1.0, shape)
    b = rng.standard_normal(shape)
    h0 = rng.standard_normal((B, N))
    if complex_:
        a = a * np.exp(1j * rng.uniform(-0.5, 0.5, shape))
        b = b + 1j * rng.standard_normal(shape)
        h0 = h0 + 1j * rng.standard_normal((B, N))
    resets = rng.random((B, length)) < 0.1
    mask = rng.random((B, length)) < 0.85
    return a, b, h0, resets, mask


# The engine in one compiled program per case (eager, its scans and chunks run op by op).
_compiled_recurrence = jax.jit(linear_recurrence, static_argnames=("axis", "reverse", "method", "chunk_size"))


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("length", [1, 50])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_backends_match_float64_reference(method, length, complex_, reverse):
    a, b, h0, resets, mask = _inputs(length, complex_)
    ctype = jnp.complex64 if complex_ else jnp.float32
    # `resets` in processing order: going right to left the state clears after each segment's start.
    engine_resets = reverse_resets(jnp.asarray(resets), 1) if reverse else jnp.asarray(resets)
    ref = _reference(a, b, h0, np.asarray(engine_resets), mask, reverse)
    hs, final = _compiled_recurrence(
        jnp.asarray(a, ctype),
        jnp.asarray(b, ctype),
        jnp.asarray(h0, ctype),
        axis=1,
        resets=engine_resets,
        mask=jnp.asarray(mask),
        reverse=reverse,
        method=method,
        chunk_size=16,
    )
    np.testing.assert_allclose(hs, ref, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(final, ref[:, 0] if reverse else ref[:, -1], atol=2e-5, rtol=2e-5)


def _loss(method, reverse):
    def loss(a, b, h0, resets, mask):
        hs, final = linear_recurrence(
            a, b, h0, axis=1, resets=resets, mask=mask, reverse=reverse, method=method, chunk_size=16
        )
        w = jnp.cos(jnp.arange(hs.size, dtype=jnp.float32).reshape(hs.shape))
        return jnp.sum(jnp.real(hs * w) + jnp.imag(hs) ** 2) + jnp.sum(jnp.abs(final) ** 2)

    return loss


@functools.cache
def _engine_grads(reverse):
    """Every backend's gradients in one compiled program (compiled once per direction and dtype)."""

    def grads(a, b, h0, resets, mask):
        return {
            method: jax.grad(_loss(method, reverse), argnums=(0, 1, 2))(a, b, h0, resets, mask)
            for method in ("sequential", "associative", "chunked")
        }

    return jax.jit(grads)


def _reference_loss(reverse):
    """Plain autodiff target: a lax.scan in whatever (wide) dtype it is given."""

    def reference_scan(a, b, h0, resets, mask):
        def body(h, inp):
            a_t, b_t, r_t, m_t = inp
            new = jnp.where(r_t[:, None], 0, a_t * h) + b_t
            new = jnp.where(m_t[:, None], new, h)
            return new, new

        xs = tuple(jnp.swapaxes(x, 0, 1) for x in (a, b, resets, mask))
        final, hs = jax.lax.scan(body, h0, xs, reverse=reverse)
        hs = jnp.swapaxes(hs, 0, 1)
        w = jnp.cos(jnp.arange(hs.size, dtype=jnp.float64).reshape(hs.shape))
        return jnp.sum(jnp.real(hs * w) + jnp.imag(hs) ** 2) + jnp.sum(jnp.abs(final) ** 2)

    return reference_scan


@functools.cache
def _reference_grads(reverse):
    return jax.jit(jax.grad(_reference_loss(reverse), argnums=(0, 1, 2)))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradients_match_float64_autodiff(complex_, reverse):
    """Each backend's custom VJP against plain autodiff of a float64 lax.scan (not the engine's own)."""
    a, b, h0, resets, mask = _inputs(37, complex_, seed=1)
    resets_j, mask_j = jnp.asarray(resets), jnp.asarray(mask)
    engine_resets = reverse_resets(resets_j, 1) if reverse else resets_j
    ctype = jnp.complex64 if complex_ else jnp.float32
    args32 = [jnp.asarray(x, ctype) for x in (a, b, h0)]
    grads = _engine_grads(reverse)(*args32, engine_resets, mask_j)

    with jax.enable_x64(True):
        wide = jnp.complex128 if complex_ else jnp.float64
        args64 = [jnp.asarray(x, wide) for x in (a, b, h0)]
        ref = _reference_grads(reverse)(*args64, engine_resets, mask_j)
        assert all(r.dtype == wide for r in ref)
        ref = [np.asarray(r) for r in ref]
    for method, by_method in grads.items():
        for got, want in zip(by_method, ref, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=method)


def test_chunked_gradients_at_extreme_decays():
    """a = 1e-6, e^-30 and 1 − 1e-6 per token in three channels over 2040 tokens, float32, chunks of 64
    and the last 5 tokens padded: the chunked backend's gradients wrt a, b and h0 equal the float64
    sequential scan's, each leaf to 1e-4 of its own largest entry and d/da channel by channel to 1e-4 of
    that channel's largest (measured ≤ 4e-5, from the γ ≈ 1 channel's long sums). A guard: the chunked
    backend multiplies the decays themselves (an associative scan of (a, b) pairs inside each chunk, its
    VJP the same recurrence backwards), never exp(b_i − b_j) of cumulative log-decays, so it has none of
    the chunked matrix engines' cancellation
    (tests/test_linear_attention.py::test_chunked_gradients_at_extreme_decays)."""
    length = 2040
    rng = np.random.default_rng(3)
    a = np.broadcast_to(np.exp(np.asarray(EXTREME_LOG_DECAYS)), (1, length, 3))
    b, h0 = rng.standard_normal((1, length, 3)), rng.standard_normal((1, 3))
    mask = jnp.arange(length)[None] < length - 5
    run = lambda method: functools.partial(linear_recurrence, axis=1, mask=mask, method=method, chunk_size=64)
    g32, g64 = float32_and_float64_gradients(run("chunked"), run("sequential"), (a, b, h0))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[0], g64[0], axis=-1)) < 1e-4


def test_backends_agree_at_length_not_multiple_of_chunk():
    a, b, h0, resets, mask = _inputs(203, complex_=False, seed=2)
    args = [jnp.asarray(x, jnp.float32) for x in (a, b, h0)]
    outs = {
        m: _compiled_recurrence(
            *args, axis=1, resets=jnp.asarray(resets), mask=jnp.asarray(mask), method=m, chunk_size=32
        )
        for m in ("sequential", "associative", "chunked")
    }
    for m in ("associative", "chunked"):
        np.testing.assert_allclose(outs[m][0], outs["sequential"][0], atol=1e-5)


def test_broadcast_decay_and_batch_layout():
    """A time-invariant decay [N] broadcasts; batch axes before time work for any `axis`."""
    rng = np.random.default_rng(3)
    lam = jnp.asarray(rng.uniform(0.8, 0.99, (N,)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2, 3, 20, N)), jnp.float32)
    hs, _ = linear_recurrence(lam, b, axis=2, method="chunked", chunk_size=8)
    ref = np.zeros((2, 3, N))
    for t in range(20):
        ref = np.asarray(lam) * ref + np.asarray(b[:, :, t])
        np.testing.assert_allclose(hs[:, :, t], ref, atol=1e-5)


def test_bad_arguments_are_named():
    b = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"unknown method 'parallel'.*sequential, associative, chunked"):
        linear_recurrence(b, b, axis=1, method="parallel")
    with pytest.raises(ValueError, match=r"`mask` has shape \(2, 4\), expected \(2, 5\)"):
        linear_recurrence(b, b, axis=1, mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"h0 has shape \(3,\), expected \(2, 3\)"):
        linear_recurrence(b, b, jnp.zeros((3,)), axis=1)
    with pytest.raises(TypeError, match="floating or complex"):
        linear_recurrence(jnp.ones((2, 5, 3), jnp.int32), jnp.ones((2, 5, 3), jnp.int32), axis=1)


def test_auto_is_sequential_on_cpu_and_log_depth_on_accelerators():
    assert choose_method(16384, 8 * 128 * 16, "cpu") == "sequential"
    assert choose_method(16384, 8 * 128 * 16, "gpu") == "associative"
    a, b, h0, resets, mask = _inputs(20, complex_=True)
    args = [jnp.asarray(x, jnp.complex64) for x in (a, b, h0)]
    flags = {"resets": jnp.asarray(resets), "mask": jnp.asarray(mask)}
    auto, _ = linear_recurrence(*args, axis=1, method="auto", **flags)
    seq, _ = linear_recurrence(*args, axis=1, method=choose_method(20, N), **flags)
    np.testing.assert_array_equal(auto, seq)
