"""Sequence parallelism for the mLSTM (issue 21): `sequence_parallel_mlstm` on 2, 4 and 8 of the 8 fake
CPU devices equals the single-device engine, values and gradients, float64, with the flags of
tests/test_sequence_parallel.py (resets on a shard's first token, on its last and inside, a reset on a
padded token, padding across boundaries and at the end; T = 96, chunks of 5 that divide no shard
length), a length the shards do not divide, and extreme gates; the shard summary and its stabilised
combine against the recurrence; the cell and the model config. The cell under a mesh through `apply` is
in tests/test_sequence_parallel.py (`CONV_CELLS`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells
from seqjax.models import BackboneConfig, sequence_parallel_config
from seqjax.scan import sequence_parallel_mlstm
from seqjax.scan.mlstm import MLSTMMemory, mlstm, mlstm_recurrent
from tests.test_sequence_parallel import CHUNK, T, _close, _flags, _mesh, _value_and_grads, _weights

HEADS, DK, DV = 2, 3, 4


def _inputs(length: int, igate=None, fgate=None, seed: int = 0):
    """q, k, v, ĩ, f̃ and a random initial memory (m ≠ 0: the fold starts from it), float64. The gates
    default to ĩ ~ N(0, 3²) and f̃ ~ U(−3, 5) (forget gates 0.05–0.99); `igate`, `fgate` replace them
    (functions of a key and a shape)."""
    k = jax.random.split(jax.random.PRNGKey(seed), 8)
    normal = lambda key, *shape: jax.random.normal(key, (2, *shape), jnp.float64)
    igate = igate or (lambda key, shape: 3.0 * jax.random.normal(key, shape, jnp.float64))
    fgate = fgate or (lambda key, shape: jax.random.uniform(key, shape, jnp.float64, -3.0, 5.0))
    memory = MLSTMMemory(normal(k[5], HEADS, DK, DV), normal(k[6], HEADS, DK), normal(k[7], HEADS))
    return (
        normal(k[0], length, HEADS, DK),
        normal(k[1], length, HEADS, DK),
        normal(k[2], length, HEADS, DV),
        igate(k[3], (2, length, HEADS)),
        fgate(k[4], (2, length, HEADS)),
        memory,
    )


@functools.cache
def _program(engine, **kw):
    """One jitted program per engine and options (the extreme-gate cases share it): (hs, final memory)
    and the gradients of Σ w ⊙ (hs, memory) with respect to every input and the initial memory."""

    def program(inputs, weights, resets, mask):
        f = lambda *xs: engine(*xs, resets=resets, mask=mask, chunk_size=CHUNK, **kw)
        return _value_and_grads(f, inputs, weights)

    return jax.jit(program)


def _run(engine, inputs, resets, mask, **kw):
    f = lambda *xs: engine(*xs, resets=resets, mask=mask, chunk_size=CHUNK, **kw)
    weights = _weights(jax.random.PRNGKey(1), jax.eval_shape(f, *inputs))
    return _program(engine, **kw)(inputs, weights, resets, mask)


@functools.cache
def _reference():
    with jax.enable_x64(True):
        return _run(mlstm, _inputs(T), *_flags())


@pytest.mark.parametrize(
    ("n", "method"), [(2, "chunked"), (4, "recurrent"), (8, "chunked")], ids=["2", "4-recurrent", "8"]
)
def test_mlstm_equals_single_device(n, method):
    """Values (hs, and the final C, n, m) and gradients (q, k, v, ĩ, f̃ and the initial memory) of 2, 4
    and 8 shards equal the chunked single-device engine, float64, from a non-zero memory, with resets
    and padding on and across shard boundaries; each shard's engine chunked or recurrent."""
    want = _reference()
    with jax.enable_x64(True):
        got = _run(sequence_parallel_mlstm, _inputs(T), *_flags(), method=method, mesh=_mesh(n))
    _close(got, want, rtol=1e-10, atol=1e-11)


# Gates at the edges of the stabiliser's range: forget gates near 0 (log f ≈ −30: the memory holds one
# token, |Σ log f| reaches thousands within a shard) on head 0 and near 1 (log f ≈ −1e-13) on head 1;
# large input gates on the first row (ĩ up to ~130, far past float32's exp range: only the stabilised
# forms hold it) and ĩ ≈ −60 on the second, where m decays below 0 from its start and the initial m wins.
EXTREMES = {
    "forget-near-0-and-1": (
        None,
        lambda key, shape: jnp.where(
            jnp.arange(HEADS) == 0,
            jax.random.uniform(key, shape, jnp.float64, -40.0, -20.0),
            jax.random.uniform(key, shape, jnp.float64, 20.0, 40.0),
        ),
    ),
    "large-input-gates": (
        lambda key, shape: jnp.where(
            (jnp.arange(2) == 0)[:, None, None],
            40.0 + 30.0 * jax.random.normal(key, shape, jnp.float64),
            -60.0 + 10.0 * jax.random.normal(key, shape, jnp.float64),
        ),
        lambda key, shape: jax.random.uniform(key, shape, jnp.float64, -10.0, 30.0),
    ),
}


@pytest.mark.parametrize("case", list(EXTREMES))
def test_mlstm_extreme_gates_on_a_length_the_shards_do_not_divide(case):
    """Extreme gates (`EXTREMES`) at T = 90 on 8 shards (padded to 96 inside and cut back): values and
    gradients finite and equal to the single-device engine's, float64."""
    length = 90
    resets, mask = (f[:, :length] for f in _flags())
    with jax.enable_x64(True):
        inputs = _inputs(length, *EXTREMES[case], seed=2)
        want = _run(mlstm, inputs, resets, mask)
        got = _run(sequence_parallel_mlstm, inputs, resets, mask, mesh=_mesh(8))
    for leaf in jax.tree.leaves(got):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # Gradients of f̃ through forget gates near 0 or 1 are tiny (σ(f̃)(1 − σ(f̃)) ≈ e^−20 or less) and
    # carry the rounding of the larger terms they are made of: compared against the scale of their leaf,
    # where the single-device chunked and recurrent forms differ by up to 3e-10 of it.
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        scale = float(np.max(np.abs(np.asarray(w))))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-9 * scale)


def test_mlstm_shard_summary_and_combine_are_the_recurrence():
    """One shard's summary (F, M, C from the neutral memory) combined with a memory by the stabilised
    step equals the token recurrence from that memory: C, n and m exactly up to rounding, for rows with
    resets (the restart from m = 0 on the reset token), padding, and a row of padding only (M = −∞).
    Including a memory whose m is far below the shard's M and one far above it."""
    from seqjax.scan.sequence_parallel import _mlstm_combine, _mlstm_summary

    length = 24

    @jax.jit
    def both(inputs, start, resets, mask):
        q, k, v, igate, fgate = inputs
        _, want = mlstm_recurrent(q, k, v, igate, fgate, start, resets=resets, mask=mask)
        log_f = jax.nn.log_sigmoid(fgate)
        if mask is not None:
            log_f = jnp.where(mask[..., None], log_f, 0.0)
            resets = None if resets is None else resets & mask
        summary = _mlstm_summary(k, v, igate, log_f, resets, mask, 1)
        c0 = jnp.concatenate([start.c, start.n[..., None]], axis=-1)
        c, m = _mlstm_combine((c0, start.m), summary)
        return MLSTMMemory(c[..., :-1], c[..., -1], m), want

    with jax.enable_x64(True):
        *inputs, memory = _inputs(length, seed=3)
        resets = jnp.zeros((2, length), bool).at[0, [0, 9, 15]].set(True).at[1, 20].set(True)
        mask = jnp.ones((2, length), bool).at[0, [3, 15, 23]].set(False).at[1, 5:].set(False)
        for rs, mk in ((resets, mask), (None, None), (resets, jnp.zeros_like(mask))):
            for m in (memory.m, memory.m - 50.0, memory.m + 50.0):
                got, want = both(tuple(inputs), memory._replace(m=m), rs, mk)
                _close(got, want, rtol=1e-12, atol=1e-13)


def test_mlstm_splits_and_slstm_refuses_naming_the_alternatives():
    """The mLSTM cell and a model of it take a sequence axis; sLSTM (a nonlinear recurrence) refuses,
    naming mLSTM among the alternatives; the cell checks the axis name."""
    cell = cells.with_sequence_axis(cells.MLSTM(d_model=8, num_heads=2), "sequence")
    assert cell.sequence_axis == "sequence" and cell.sequence_parallel_unsupported() is None
    with pytest.raises(ValueError, match="sequence_axis must be a mesh axis name"):
        cells.MLSTM(d_model=8, num_heads=2, sequence_axis=4)
    config = BackboneConfig(d_model=8, num_layers=2, vocab_size=11, pattern=("mlstm",))
    split = sequence_parallel_config(config, "sequence")
    assert all(c.sequence_axis == "sequence" for c in split.layer_cells())
    config = BackboneConfig(d_model=8, num_layers=2, vocab_size=11, pattern=("mlstm", "slstm"))
    with pytest.raises(ValueError, match=r"layer 1 .*mixer 'slstm'.* SLSTM.*nonlinear recurrence") as err:
        sequence_parallel_config(config, "sequence")
    for alternative in ("data parallelism", "model parallelism", "truncated BPTT", "MLSTM"):
        assert alternative in str(err.value)
