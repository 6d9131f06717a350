"""seqjax.online: memory per token does not grow with the stream. XLA's plan of a learner's step is
the same at stream position 1 and 10^6, and the learner state has the same shapes after many tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from seqjax import cells
from seqjax.common.xla import plan_bytes
from seqjax.online import DiagonalRTRL, OnlineModel, OnlineTBPTT, SnAp1

B = 2
LEARNERS = [
    ("lru-diagonal", lambda: DiagonalRTRL(OnlineModel((cells.LRU(4, 3),), input_size=3, output_size=2))),
    (
        "mamba-diagonal",
        lambda: DiagonalRTRL(
            OnlineModel((cells.Mamba(d_model=4, state_size=2),), input_size=3, output_size=2)
        ),
    ),
    ("lstm-snap1", lambda: SnAp1(OnlineModel((cells.LSTM(4),), input_size=3, output_size=2))),
    ("gru-tbptt", lambda: OnlineTBPTT(OnlineModel((cells.GRU(4),), input_size=3, output_size=2), window=4)),
]


@pytest.mark.parametrize("make", [m for _, m in LEARNERS], ids=[n for n, _ in LEARNERS])
def test_step_plan_does_not_depend_on_the_stream_position(make, compile_as_users_do) -> None:
    learner = make()
    params = learner.model.init(jax.random.PRNGKey(0))
    x, y = jnp.ones((B, 3)), jnp.zeros((B, 2))
    start = learner.init(params, (B,))

    def plan(position: int):
        st = start._replace(position=jnp.asarray(position, jnp.int32))
        compiled = compile_as_users_do(jax.jit(learner.step).lower(params, st, x, y, None, None))
        stats = compiled.memory_analysis()
        return plan_bytes(compiled), (
            stats.argument_size_in_bytes,
            stats.output_size_in_bytes,
            stats.temp_size_in_bytes,
        )

    assert plan(1) == plan(10**6)

    # the state after 300 tokens has exactly the shapes and dtypes of the state before the first
    def body(_, st):
        return learner.step(params, st, x, y)[0]

    after = jax.jit(lambda st: lax.fori_loop(0, 300, body, st))(start)
    shapes = lambda st: jax.tree.map(lambda a: (a.shape, a.dtype), st)
    assert shapes(after) == shapes(start)
    assert int(after.position) == 300
