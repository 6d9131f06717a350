"""`seqjax.common.dense`: projections as one 2-D matmul are `jnp.einsum` exactly (values, reverse and
forward derivatives, vmap, bfloat16 with float32 accumulation), other specs fall back to the einsum, and
mismatched shapes are refused naming both."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.common.dense import _split_spec, dense

CASES = [
    ("...i,ihd->...hd", (2, 5, 3), (3, 4, 6)),
    ("...hd,hdo->...o", (2, 5, 4, 6), (4, 6, 7)),
    ("...i,io->...o", (5, 3), (3, 2)),
    ("...i,io->...o", (3,), (3, 2)),  # no batch dimensions: one token of `step`
    ("...i,ighd->...ghd", (2, 1, 3), (3, 2, 4, 5)),
    ("... i, i o -> ... o", (0, 3), (3, 2)),  # spaces, and an empty batch
]


def _arrays(x_shape, w_shape, dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal(x_shape), dtype), jnp.asarray(rng.standard_normal(w_shape), dtype)


@pytest.mark.parametrize(("spec", "x_shape", "w_shape"), CASES, ids=[c[0] + str(c[1]) for c in CASES])
def test_dense_equals_einsum_values_and_derivatives(spec, x_shape, w_shape):
    with jax.enable_x64(True):
        x, w = _arrays(x_shape, w_shape)
        assert _split_spec(spec) is not None  # the 2-D path, not the fallback
        got, want = dense(spec, x, w), jnp.einsum(spec, x, w)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(spec, x, w)))
        g_got, g_want = jax.grad(loss(dense), (0, 1))(x, w), jax.grad(loss(jnp.einsum), (0, 1))(x, w)
        for a, b in zip(g_got, g_want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        tangents = _arrays(x_shape, w_shape)
        _, t_got = jax.jvp(lambda x, w: dense(spec, x, w), (x, w), tangents)
        _, t_want = jax.jvp(lambda x, w: jnp.einsum(spec, x, w), (x, w), tangents)
        np.testing.assert_allclose(t_got, t_want, rtol=1e-12, atol=1e-12)


def test_dense_under_vmap_and_bfloat16_accumulation():
    x, w = _arrays((4, 2, 5, 3), (3, 4, 6), jnp.float32)
    got = jax.vmap(lambda x: dense("...i,ihd->...hd", x, w))(x)
    np.testing.assert_allclose(got, jnp.einsum("...i,ihd->...hd", x, w), rtol=1e-6, atol=1e-6)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = dense("...i,ihd->...hd", xb, wb, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    want = jnp.einsum("...i,ihd->...hd", xb, wb, preferred_element_type=jnp.float32)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spec", ["...i,oi->...o", "...hd,hd->...h", "bi,io->bo", "...i,ii->...i"])
def test_other_specs_fall_back_to_einsum(spec):
    assert _split_spec(spec) is None
    shapes = {"...i,oi->...o": ((2, 3), (4, 3)), "...hd,hd->...h": ((2, 3, 4), (3, 4))}
    shapes.update({"bi,io->bo": ((2, 3), (3, 4)), "...i,ii->...i": ((2, 3), (3, 3))})
    x, w = _arrays(*shapes[spec], jnp.float32)
    np.testing.assert_allclose(dense(spec, x, w), jnp.einsum(spec, x, w), rtol=1e-6)


def test_mismatched_shapes_are_refused():
    x, w = _arrays((2, 5, 3), (4, 4, 6), jnp.float32)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 3\) and w \(4, 4, 6\)"):
        dense("...i,ihd->...hd", x, w)


def test_flatten_false_is_the_einsum_as_written():
    x, w = _arrays((2, 5, 3), (3, 4, 6), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda x, w: dense("...i,ihd->...hd", x, w, flatten=False))(x, w))
    assert "reshape" not in jaxpr  # the einsum's dot_general alone: a sharded time axis stays sharded
    assert "reshape" in str(jax.make_jaxpr(lambda x, w: dense("...i,ihd->...hd", x, w))(x, w))
