"""The cell configurations every generic cell test runs over, and small helpers shared by tests."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import cells

# (id, cell). Small sizes keep the suite fast; reversed variants exercise the right-to-left path.
CELL_CASES = [
    ("lstm-fused", cells.LSTM(hidden_size=12)),
    ("lstm-scan", cells.LSTM(hidden_size=12, engine="scan")),
    ("lstm-fused-reverse", cells.LSTM(hidden_size=12, reverse=True)),
    ("gru", cells.GRU(hidden_size=12)),
    ("gru-reverse", cells.GRU(hidden_size=12, reverse=True)),
    ("elstm", cells.ELSTM(hidden_size=12, memory_slots=4, memory_width=6)),
    ("mamba-chunked", cells.Mamba(d_model=5, state_size=4, chunk_size=4)),
    ("s4d", cells.S4D(hidden_size=5, state_size=8, chunk_size=4)),
    ("s5-reverse", cells.S5(hidden_size=5, state_size=8, blocks=2, reverse=True)),
    ("lru-associative", cells.LRU(hidden_size=5, state_size=6, method="associative")),
    ("linear-attention", cells.LinearAttention(num_heads=2, head_dim=3, chunk_size=4)),
    ("gla", cells.GatedLinearAttention(num_heads=2, head_dim=3, chunk_size=4)),
]
CELL_IDS = [name for name, _ in CELL_CASES]
CELLS = [cell for _, cell in CELL_CASES]

INPUT_SIZE = 5


def random_flags(seed: int, shape: tuple[int, ...], p: float) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def random_state(cell: cells.Cell, key: jax.Array, batch_shape: tuple[int, ...]):
    """A non-zero state of the cell's own dtypes (complex for complex SSMs), so tests also cover a given
    initial state and resets back to zero."""
    template = cell.initial_state(batch_shape)
    leaves, treedef = jax.tree.flatten(template)
    keys = jax.random.split(key, 2 * len(leaves))
    out = []
    for k_re, k_im, leaf in zip(keys[::2], keys[1::2], leaves, strict=True):
        value = 0.5 * jax.random.normal(k_re, leaf.shape)
        if jnp.iscomplexobj(leaf):
            value = value + 0.5j * jax.random.normal(k_im, leaf.shape)
        out.append(value.astype(leaf.dtype))
    return treedef.unflatten(out)


def state_loss(state) -> jax.Array:
    """A real scalar that depends on every part of a (possibly complex) state."""
    return sum(jnp.sum(jnp.cos(jnp.real(s)) + jnp.sin(2 * jnp.imag(s))) for s in jax.tree.leaves(state))


def step_loop(cell, params, xs, state=None, *, resets=None, mask=None):
    """The plain reference: a Python loop of `step`, in the cell's scan direction."""
    batch_shape = xs.shape[:-2]
    t_axis = len(batch_shape)
    length = xs.shape[t_axis]
    state = cell.initial_state(batch_shape) if state is None else state
    reverse = getattr(cell, "reverse", False)
    # One compiled step, called from a plain Python loop: the loop stays the reference, and grad through
    # it reuses the compiled step instead of dispatching every small op eagerly.
    step = _jitted_step(cell)
    order = range(length - 1, -1, -1) if reverse else range(length)
    ys = [None] * length
    for t in order:
        reset = None
        if resets is not None:
            if reverse:
                # Right to left, a new segment begins at t when t + 1 starts a segment going forward.
                reset = resets[..., t + 1] if t + 1 < length else jnp.zeros(batch_shape, bool)
            else:
                reset = resets[..., t]
        m = None if mask is None else mask[..., t]
        state, ys[t] = step(params, state, xs[..., t, :], reset=reset, mask=m)
    return jnp.stack(ys, axis=t_axis), state


@functools.cache
def _jitted_step(cell):
    return jax.jit(cell.step)


def unreversed(cell):
    return dataclasses.replace(cell, reverse=False)


def max_abs_diff(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(np.max(np.abs(np.asarray(x, np.complex128) - np.asarray(y, np.complex128)))), a, b
    )
    return max(jax.tree.leaves(diffs))


def relative_diff(a, b) -> float:
    """Largest leaf-wise difference, relative to that leaf's largest magnitude in `b`."""
    diffs = jax.tree.map(
        lambda x, y: float(
            np.max(np.abs(np.asarray(x, np.complex128) - np.asarray(y, np.complex128)))
            / (np.max(np.abs(np.asarray(y))) + 1e-12)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))
