"""`seqjax.scan.chunk_loop`: the loop over chunks in [B, n, C, H, ...] layout, with its own VJP, computes
what a plain `lax.scan` over the chunks (laid out chunk-first, heads-first) computes, values and every
gradient, in float64; an input may be None; a given `body_vjp` replaces `jax.vjp` of the body; bf16
inputs are sliced without a float32 copy and get bf16 gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from seqjax.scan.chunk_loop import chunk_loop

B, N, C, H, DK, DV = 2, 3, 4, 2, 3, 5


def _body(s, chunk, seg):
    """A decayed linear-attention chunk that uses every input and the segment ids nonlinearly enough
    that a layout or slot mix-up changes the result: k, v [B, H, C, d], beta [B, H, C], gate None or
    [B, H, C, d_k]."""
    k, v, beta, gate = chunk
    if gate is not None:
        k = k * jax.nn.sigmoid(gate)
    same = (seg[:, :, None] == seg[:, None, :])[:, None]  # [B, 1, C, C]
    causal = jnp.tril(jnp.ones((C, C), bool)) & same
    scores = jnp.where(causal, jnp.einsum("bhik,bhjk->bhij", k, k), 0.0)
    y = jnp.einsum("bhij,bhjv->bhiv", scores, v * beta[..., None]) + jnp.einsum("bhik,bhkv->bhiv", k, s)
    s_next = jnp.tanh(s) + jnp.einsum("bhjk,bhjv->bhkv", k, v)
    return s_next, y


def _reference(s0, xs, seg):
    """The same chunks under a plain `lax.scan`, inputs transposed to [n, B, H, C, ...] first."""

    def first(x):
        if x is None:
            return None
        x = jnp.moveaxis(x, 1, 0)  # [n, B, C, ...]
        return jnp.swapaxes(x, 2, 3) if x.ndim > 3 else x

    def step(s, inp):
        *chunk, seg_i = inp
        return _body(s, tuple(chunk), seg_i)

    final, ys = lax.scan(step, s0, (*map(first, xs), jnp.moveaxis(seg, 1, 0)))
    return jnp.swapaxes(jnp.moveaxis(ys, 0, 1), 2, 3), final  # [B, n, C, H, d_v]


def _inputs(with_gate: bool, dtype=jnp.float64):
    keys = jax.random.split(jax.random.key(0), 5)
    normal = lambda key, shape: jax.random.normal(key, shape, dtype) / 2
    xs = (
        normal(keys[0], (B, N, C, H, DK)),
        normal(keys[1], (B, N, C, H, DV)),
        normal(keys[2], (B, N, C, H)),
        normal(keys[3], (B, N, C, H, DK)) if with_gate else None,
    )
    s0 = normal(keys[4], (B, H, DK, DV))
    resets = np.zeros((B, N, C), bool)
    resets[0, 1, 2] = True
    resets[1, 2, 0] = True
    return s0, xs, jnp.cumsum(jnp.asarray(resets, jnp.int32), axis=-1)


@pytest.mark.parametrize("with_gate", [True, False], ids=["all_inputs", "a_none_input"])
def test_chunk_loop_equals_a_scan_over_chunks_values_and_gradients(with_gate):
    with jax.enable_x64(True):
        s0, xs, seg = _inputs(with_gate)
        weights = jax.random.normal(jax.random.key(1), (B, N, C, H, DV), jnp.float64)

        def loss(fn, s0, xs):
            ys, final = fn(s0, xs, seg)
            return jnp.sum(ys * weights) + jnp.sum(jnp.sin(final))

        ys, final = chunk_loop(_body, s0, xs, seg)
        ys_ref, final_ref = _reference(s0, xs, seg)
        np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(final, final_ref, rtol=1e-12, atol=1e-12)
        fast = jax.grad(lambda s, x: loss(lambda *a: chunk_loop(_body, *a), s, x), argnums=(0, 1))(s0, xs)
        slow = jax.grad(lambda s, x: loss(_reference, s, x), argnums=(0, 1))(s0, xs)
        for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(slow), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        if not with_gate:
            assert fast[1][3] is None


def test_a_given_body_vjp_is_the_one_the_backward_pass_runs():
    calls = []

    def body_vjp(s, chunk, seg, cts):
        calls.append(True)
        _, pullback = jax.vjp(lambda s, chunk: _body(s, chunk, seg), s, chunk)
        ds, dchunk = pullback(cts)
        return ds, tuple(2.0 * g if g is not None else None for g in dchunk)  # marked: doubled

    s0, xs, seg = _inputs(with_gate=True, dtype=jnp.float32)
    loss = lambda vjp: lambda x: jnp.sum(chunk_loop(_body, s0, x, seg, body_vjp=vjp)[0])
    plain = jax.grad(loss(None))(xs)
    doubled = jax.grad(loss(body_vjp))(xs)
    assert calls, "the backward pass did not call body_vjp"
    for got, want in zip(jax.tree.leaves(doubled), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, 2.0 * want, rtol=1e-5, atol=1e-6)


def _body_f32(s, chunk, seg):
    """`_body` on 16-bit chunk inputs, computed in float32 (as the engines do)."""
    return _body(s, tuple(None if x is None else x.astype(jnp.float32) for x in chunk), seg)


def test_bf16_inputs_are_sliced_narrow_and_their_gradients_come_back_in_bf16():
    s0, xs, seg = _inputs(with_gate=True, dtype=jnp.float32)
    xs16 = tuple(x.astype(jnp.bfloat16) for x in xs)

    def loss(x):
        ys, final = chunk_loop(_body_f32, s0, x, seg)
        return jnp.sum(ys**2) + jnp.sum(final)

    grads = jax.grad(loss)(xs16)
    # the same function on the bf16 values widened up front: equal up to the bf16 rounding of the gradient
    want = jax.grad(lambda x: loss(tuple(a.astype(jnp.float32) for a in x)))(xs16)
    for got, ref, x in zip(grads, want, xs16, strict=True):
        assert got.dtype == jnp.bfloat16 and got.shape == x.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2e-2, atol=2e-2)
    # No float32 copy of a whole 16-bit input, or of a whole 16-bit gradient buffer, in the program: XLA's
    # CPU backend would widen a bf16 array it slices in a loop (the reason for `as_bits`).
    hlo = jax.jit(jax.grad(loss)).lower(xs16).compile().as_text()
    for shape in ((B, N, C, H, DK), (B, N, C, H)):
        widened = f"f32[{','.join(map(str, shape))}]"
        assert widened not in hlo, f"a whole input was widened to {widened}"
