"""The cell protocol: the bases every cell derives from, the step-support query, the registry, backward
compatibility of `Cell` subclasses and the LSTM's two engines. The contract every cell satisfies
(apply == loop of step, padding, resets, dtypes, ...) is in tests/test_cell_contract.py; what
`import seqjax.cells` loads, in tests/test_install.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.cells.base import Params
from tests.cell_cases import max_abs_diff, random_flags, random_state, step_loop


@pytest.mark.parametrize("name", cells.names())
def test_every_registered_cell_is_a_cell(name):
    cls = cells.registry.lookup(name)
    assert issubclass(cls, cells.Cell)
    # the project_inputs / recur split comes with RecurrentCell, and only with it
    assert hasattr(cls, "recur") == issubclass(cls, cells.RecurrentCell), cls


@pytest.mark.parametrize(
    ("cell", "streaming", "reason"),
    [
        (cells.GRU(hidden_size=4), True, None),
        (cells.GRU(hidden_size=4, reverse=True), False, None),
        (cells.GRU(hidden_size=4, reverse=True), True, "GRU with reverse=True runs right to left"),
        (cells.S5(hidden_size=4, state_size=4, bidirectional=True), False, "bidirectional=True has no step"),
        (cells.Attention(num_heads=1, head_dim=2), True, None),
        (cells.Attention(num_heads=1, head_dim=2, causal=False), False, "causal=False attends to future"),
        (
            cells.SlidingWindowAttention(num_heads=1, head_dim=2, causal=False),
            False,
            "SlidingWindowAttention with causal=False",
        ),
        (cells.Bidirectional.of(cells.GRU(hidden_size=4)), False, "Bidirectional has no step form"),
    ],
)
def test_step_unsupported_says_why(cell, streaming, reason):
    answer = cell.step_unsupported(streaming=streaming)
    if reason is None:
        assert answer is None
    else:
        assert reason in answer
    if cell.step_unsupported(streaming=False) is not None:  # and step itself refuses
        with pytest.raises(TypeError, match="no step form"):
            cell.step(cell.init(jax.random.PRNGKey(0), 4), cell.initial_state(()), jnp.zeros((4,)))


def test_cell_subclass_with_the_recurrent_split_still_works():
    """A cell written against the old `Cell` (project_inputs and recur only) gets RecurrentCell's step and
    apply, with a DeprecationWarning naming the fix."""
    with pytest.warns(DeprecationWarning, match="derive it from seqjax.cells.RecurrentCell"):

        @dataclasses.dataclass(frozen=True)
        class Leaky(cells.Cell):
            width: int = 3

            def init(self, key: jax.Array, input_size: int) -> Params:
                return {"w": jax.random.normal(key, (input_size, self.width))}

            def initial_state(self, batch_shape=(), dtype=jnp.float32):
                return jnp.zeros((*batch_shape, self.width), dtype)

            def param_axes(self):
                return {"w": ("embed", "state")}

            def input_size_of(self, params: Params) -> int:
                return params["w"].shape[0]

            @property
            def output_size(self) -> int:
                return self.width

            def project_inputs(self, params, x):
                return x @ params["w"]

            def recur(self, params, state, projected):
                new = 0.5 * state + projected
                return new, new

    cell = Leaky()
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2))
    mask = random_flags(2, (2, 5), 0.7)
    ys, final = cell.apply(params, xs, mask=mask)
    ref_ys, ref_final = step_loop(cell, params, xs, mask=mask)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-6)
    np.testing.assert_allclose(final, ref_final, rtol=1e-6)
    assert cell.step_unsupported() is None


@pytest.mark.parametrize("name", [*cells.names(), "bidirectional"])
def test_every_cell_docstring_has_an_example(name):
    cls = cells.Bidirectional if name == "bidirectional" else cells.registry.lookup(name)
    assert ">>> " in (cls.__doc__ or ""), f"{cls.__name__}'s docstring has no runnable example"


def test_registry_builds_every_cell():
    assert {"lstm", "gru", "elstm"} <= set(cells.names())
    assert cells.get("LSTM", hidden_size=7) == cells.LSTM(hidden_size=7)
    assert isinstance(cells.get("elstm", hidden_size=8, memory_slots=2), cells.ELSTM)


def test_lstm_engines_agree_on_long_sequences(key):
    """The fused backward pass against autodiff through lax.scan, with a given state, resets and mask."""
    fused, scan = cells.LSTM(hidden_size=16), cells.LSTM(hidden_size=16, engine="scan")
    params = fused.init(key, 8)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 300, 8))
    resets = random_flags(2, (4, 300), 0.01)
    mask = random_flags(3, (4, 300), 0.95)
    state = random_state(fused, 4, (4,))

    def loss(cell, p, x, s):
        ys, final = cell.apply(p, x, s, resets=resets, mask=mask)
        return jnp.mean(jnp.tanh(ys) ** 2) + jnp.mean(final.c**2) + jnp.mean(final.h)

    for c in (fused, scan):
        assert bool(jnp.all(jnp.isfinite(c.apply(params, xs)[0])))
    # one compiled program per engine (eager autodiff compiles op by op)
    v_f, g_f = jax.jit(jax.value_and_grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2)))(params, xs, state)
    v_s, g_s = jax.jit(jax.value_and_grad(lambda *a: loss(scan, *a), argnums=(0, 1, 2)))(params, xs, state)
    np.testing.assert_allclose(v_f, v_s, rtol=1e-6)
    assert max_abs_diff(g_f, g_s) < 1e-6
