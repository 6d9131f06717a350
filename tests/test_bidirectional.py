"""The bidirectional wrapper encodes each segment of a padded or packed batch on its own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells


@pytest.mark.parametrize(
    "base",
    [
        cells.LSTM(hidden_size=7),
        cells.GRU(hidden_size=7),
        cells.ELSTM(hidden_size=7, memory_slots=2, memory_width=3),
    ],
)
def test_bidirectional_equals_forward_and_flipped_backward(base, key):
    bi = cells.Bidirectional.of(base)
    params = bi.init(key, 4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 4))
    lengths = [10, 6]
    mask = jnp.arange(10)[None] < jnp.array(lengths)[:, None]
    ys, _ = bi.apply(params, xs, mask=mask)
    assert ys.shape == (2, 10, 14)
    forward = base
    for b, n in enumerate(lengths):
        x = xs[b, :n]
        ys_f, _ = forward.apply(params["forward"], x)
        # the backward direction is the forward recurrence on the flipped valid tokens
        ys_b, _ = forward.apply(params["backward"], x[::-1])
        np.testing.assert_allclose(ys[b, :n, :7], ys_f, atol=1e-6)
        np.testing.assert_allclose(ys[b, :n, 7:], ys_b[::-1], atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)


def test_bidirectional_with_packed_segments(key):
    bi = cells.Bidirectional.of(cells.GRU(hidden_size=5))
    params = bi.init(key, 3)
    a = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    b = jax.random.normal(jax.random.PRNGKey(2), (6, 3))
    resets = jnp.zeros((10,), bool).at[4].set(True)
    ys, _ = bi.apply(params, jnp.concatenate([a, b])[None], resets=resets[None])
    np.testing.assert_allclose(ys[0, :4], bi.apply(params, a[None])[0][0], atol=1e-6)
    np.testing.assert_allclose(ys[0, 4:], bi.apply(params, b[None])[0][0], atol=1e-6)


def test_bidirectional_has_no_step_and_checks_directions():
    bi = cells.Bidirectional.of(cells.LSTM(hidden_size=3))
    with pytest.raises(TypeError, match="no step form"):
        bi.step({}, None, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="reverse=True"):
        cells.Bidirectional(forward=cells.LSTM(hidden_size=3), backward=cells.LSTM(hidden_size=3))
