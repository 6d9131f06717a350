"""Sequence parallelism (issue 21): the time axis split over 2, 4 and 8 of the 8 fake CPU devices equals
the single-device engine, in values and gradients, forward and reverse, with resets and padding on and
across shard boundaries, and shard lengths that the chunk size does not divide.

Layout of the flags (T = 96): the 8-shard boundaries are at multiples of 12, the 4-shard ones at
multiples of 24, the 2-shard one at 48. Row 0 has resets on the first token of a shard (12, 48), on the
last token of one (47) and inside one (25), and padding across the boundary at 24 (tokens 22..26). Row
1 has a reset on a boundary (24), a reset on a padded token (36: padding wins), padding on both sides
of the 2-shard boundary (47, 48) and at the very end (95). Chunks of 5 tokens divide none of the shard
lengths (48, 24, 12).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import cells
from seqjax.scan import (
    linear_attention,
    linear_recurrence,
    reverse_resets,
    selective_scan,
    sequence_halo,
    sequence_parallel_delta_rule,
    sequence_parallel_generalized_delta_rule,
    sequence_parallel_linear_attention,
    sequence_parallel_linear_recurrence,
    sequence_parallel_mlstm,
    sequence_parallel_selective_scan,
    sequence_shards,
)
from seqjax.scan.delta_rule import delta_rule as linear_delta_rule
from seqjax.scan.generalized_delta_rule import generalized_delta_rule
from seqjax.scan.mlstm import mlstm_recurrent
from tests.cell_cases import (
    EXTREME_LOG_DECAYS,
    float32_and_float64_gradients,
    headwise_relative_diffs,
    leafwise_relative_diffs,
)

T = 96
CHUNK = 5
AUTO = jax.sharding.AxisType.Auto


def _mesh(n: int) -> jax.sharding.Mesh:
    return jax.make_mesh((n,), ("sequence",), axis_types=(AUTO,), devices=jax.devices()[:n])


def _flags() -> tuple[jax.Array, jax.Array]:
    resets = np.zeros((2, T), bool)
    resets[0, [12, 25, 47, 48]] = True
    resets[1, [24, 36]] = True
    mask = np.ones((2, T), bool)
    mask[0, 22:27] = False
    mask[1, [36, 47, 48, 95]] = False
    return jnp.asarray(resets), jnp.asarray(mask)


def _close(got, want, rtol: float, atol: float = 0.0) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


def _weights(key: jax.Array, tree):
    """Random cotangent weights shaped like `tree` (a loss Σ w ⊙ out reaches every output element)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [
            jax.random.normal(k, x.shape, x.dtype)
            if jnp.issubdtype(x.dtype, jnp.inexact)
            else jnp.zeros(x.shape)
            for k, x in zip(keys, leaves, strict=True)
        ]
    )


def _value_and_grads(run, inputs, weights):
    """(outputs, gradients of Σ weights ⊙ outputs with respect to every input)."""

    def loss(inputs):
        out = run(*inputs)
        total = sum(
            jnp.sum(jnp.real(o * w))
            for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(weights), strict=True)
        )
        return total, out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(inputs)
    return out, grads


# --------------------------------------------------------------------------------------------------
# Diagonal recurrence
# --------------------------------------------------------------------------------------------------
def _diag_inputs():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    a = jax.random.uniform(k[0], (2, T, 3), jnp.float64, 0.6, 1.0)  # time-varying decays
    b = jax.random.normal(k[1], (2, T, 3), jnp.float64)
    h0 = jax.random.normal(k[2], (2, 3), jnp.float64)
    return a, b, h0


def _diag_both_directions(engine, a, b, h0, resets, mask, **kw):
    fwd = engine(a, b, h0, axis=1, resets=resets, mask=mask, **kw)
    rev = engine(a, b, h0, axis=1, resets=reverse_resets(resets, 1), mask=mask, reverse=True, **kw)
    return fwd, rev


@functools.cache
def _diag_reference():
    with jax.enable_x64(True):
        a, b, h0 = _diag_inputs()
        resets, mask = _flags()
        run = functools.partial(_diag_both_directions, linear_recurrence, method="chunked", chunk_size=CHUNK)
        out = jax.eval_shape(lambda: run(a, b, h0, resets, mask))
        weights = _weights(jax.random.PRNGKey(1), out)
        f = lambda a, b, h0: run(a, b, h0, resets, mask)
        return jax.jit(_value_and_grads, static_argnums=0)(f, (a, b, h0), weights), weights


@pytest.mark.parametrize("n", [2, 4, 8])
def test_diagonal_equals_single_device(n):
    """Values and gradients (a, b, h0) of the forward and the reverse recurrence, float64."""
    (want, want_grads), weights = _diag_reference()
    with jax.enable_x64(True):
        a, b, h0 = _diag_inputs()
        resets, mask = _flags()
        run = functools.partial(
            _diag_both_directions,
            sequence_parallel_linear_recurrence,
            method="chunked",
            chunk_size=CHUNK,
            mesh=_mesh(n),
        )
        f = lambda a, b, h0: run(a, b, h0, resets, mask)
        got, grads = jax.jit(_value_and_grads, static_argnums=0)(f, (a, b, h0), weights)
    _close(got, want, rtol=1e-12, atol=1e-12)
    _close(grads, want_grads, rtol=1e-11, atol=1e-12)


def test_diagonal_complex_constant_decay_and_ragged_length():
    """S4D's case: one complex decay per mode broadcast over time; T = 90 is not a multiple of 4 shards
    (padded inside and cut back). Gradients reach the broadcast decay. The associative backend here, the
    sequential one (`auto` on CPU) in the S5 and LRU cells below."""
    length, method = 90, "associative"
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(2), 5)
        a = 0.97 * jnp.exp(1j * jax.random.uniform(k[0], (3,), jnp.float64, 0.0, 3.0))
        b = jax.random.normal(k[1], (2, length, 3)) + 1j * jax.random.normal(k[2], (2, length, 3))
        h0 = jax.random.normal(k[3], (2, 3)).astype(jnp.complex128)
        resets = jnp.zeros((2, length), bool).at[0, [23, 45]].set(True)
        mask = jnp.arange(length)[None] < jnp.array([[90], [70]])
        weights = _weights(k[4], (b, h0, b, h0))

        def run(engine, **kw):
            f = lambda a, b, h0: _diag_both_directions(engine, a, b, h0, resets, mask, method=method, **kw)
            return jax.jit(_value_and_grads, static_argnums=0)(f, (a, b, h0), weights)

        want = run(linear_recurrence)
        got = run(sequence_parallel_linear_recurrence, mesh=_mesh(4))
    _close(got, want, rtol=1e-11, atol=1e-12)


def test_diagonal_on_a_data_by_sequence_mesh_keeps_the_sharding():
    """A 2 x 4 (data, sequence) mesh: only `sequence` is manual, the batch stays sharded over `data`,
    the states come back sharded like the inputs. float32."""
    mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(AUTO, AUTO))
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    a = jax.random.uniform(k[0], (4, T, 8), minval=0.8, maxval=1.0)
    b = jax.random.normal(k[1], (4, T, 8))
    loss = lambda engine: lambda a, b: jnp.sum(engine(a, b, axis=1, reverse=True)[0] ** 2)
    want = jax.grad(loss(linear_recurrence), argnums=(0, 1))(a, b)
    with jax.set_mesh(mesh):
        placed = [jax.device_put(x, NamedSharding(mesh, P("data", "sequence"))) for x in (a, b)]
        hs = jax.jit(lambda a, b: sequence_parallel_linear_recurrence(a, b, axis=1)[0])(*placed)
        got = jax.jit(jax.grad(loss(sequence_parallel_linear_recurrence), argnums=(0, 1)))(*placed)
    assert hs.sharding.spec == P("data", "sequence")
    np.testing.assert_allclose(hs, linear_recurrence(a, b, axis=1)[0], rtol=1e-5, atol=1e-5)
    _close(got, want, rtol=2e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Matrix-state recurrence
# --------------------------------------------------------------------------------------------------
def _attention_inputs(groups: int, heads: int = 2, gated: bool = True):
    k = jax.random.split(jax.random.PRNGKey(4), 5)
    q = jax.random.normal(k[0], (2, T, groups, 3), jnp.float64)
    kk = jax.random.normal(k[1], (2, T, groups, 3), jnp.float64)
    v = jax.random.normal(k[2], (2, T, heads, 4), jnp.float64)
    log_gamma = -jax.random.uniform(k[3], (2, T, heads), jnp.float64, 0.0, 0.3) if gated else None
    s0 = jax.random.normal(k[4], (2, heads, 3, 4), jnp.float64)
    return q, kk, v, log_gamma, s0


@pytest.mark.parametrize(
    ("n", "groups", "method", "gated"),
    [(2, 1, "chunked", True), (4, 2, "recurrent", False), (8, 1, "chunked", True)],
    ids=["2-grouped", "4-ungated-recurrent", "8-grouped"],
)
def test_linear_attention_equals_single_device(n, groups, method, gated):
    """Values and gradients (q, k, v, log γ, s0) and the final state, float64; grouped q/k (G = 1 < H
    = 2, Mamba-2's layout) and one q/k per head; gated and γ ≡ 1."""
    with jax.enable_x64(True):
        q, k, v, log_gamma, s0 = _attention_inputs(groups, gated=gated)
        resets, mask = _flags()
        inputs = tuple(x for x in (q, k, v, log_gamma, s0) if x is not None)

        def run(engine, **kw):
            def f(*xs):
                xs = list(xs)
                lg = xs.pop(3) if gated else None
                return engine(
                    *xs[:3], lg, xs[3], resets=resets, mask=mask, method=method, chunk_size=CHUNK, **kw
                )

            out = jax.eval_shape(f, *inputs)
            weights = _weights(jax.random.PRNGKey(5), out)
            return jax.jit(_value_and_grads, static_argnums=0)(f, inputs, weights)

        want = run(linear_attention)
        got = run(sequence_parallel_linear_attention, mesh=_mesh(n))
    _close(got, want, rtol=1e-10, atol=1e-11)


def test_linear_attention_per_channel_decay_where_the_engine_takes_it():
    """A decay per key channel (log γ [*batch, T, H, d_k], GLA) once the engine accepts it."""
    with jax.enable_x64(True):
        q, k, v, _, s0 = _attention_inputs(2)
        log_gamma = -jax.random.uniform(jax.random.PRNGKey(6), (2, T, 2, 3), jnp.float64, 0.0, 0.3)
        resets, mask = _flags()
        kw = dict(resets=resets, mask=mask, method="chunked", chunk_size=CHUNK)
        try:
            want = linear_attention(q, k, v, log_gamma, s0, **kw)
        except (ValueError, TypeError) as err:
            pytest.skip(f"the engine has no per-channel decay here: {err}")
        got = jax.jit(lambda *xs: sequence_parallel_linear_attention(*xs, mesh=_mesh(4), **kw))(
            q, k, v, log_gamma, s0
        )
    _close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-head", "per-channel"])
def test_shard_summary_of_the_matrix_state_is_the_recurrence(per_channel):
    """A shard's summary (total decay, final state from zero) by one contraction equals the token loop
    S_t = diag(γ_t) S_{t-1} + k_t v_tᵀ with the reset and padding rules, for a decay per head and per
    key channel (which the sequence-parallel engine uses wherever the engine takes it)."""
    from seqjax.scan.sequence_parallel import _matrix_summary

    with jax.enable_x64(True):
        _, k, v, _, _ = _attention_inputs(1)
        shape = (2, T, 2, 3) if per_channel else (2, T, 2)
        log_gamma = -jax.random.uniform(jax.random.PRNGKey(12), shape, jnp.float64, 0.0, 0.3)
        resets, mask = _flags()
        resets = resets.at[1].set(False)  # row 1: padding only, so its total decay is not 0
        total, state = _matrix_summary(k, v, log_gamma, resets, mask, 1, jnp.float64)
        k_np, v_np, lg_np = (np.asarray(x) for x in (k, v, log_gamma))
        for row in range(2):
            s, decay = np.zeros((2, 3, 4)), np.ones(shape[2:])
            for t in range(T):
                if not mask[row, t]:
                    continue
                gamma = np.exp(lg_np[row, t])
                if resets[row, t]:
                    s, decay = np.zeros_like(s), np.zeros_like(decay)
                    gamma = np.ones_like(gamma)
                s = (gamma[..., None] if per_channel else gamma[:, None, None]) * s
                s = s + k_np[row, t, 0][None, :, None] * v_np[row, t][:, None, :]
                decay = decay * gamma
            np.testing.assert_allclose(state[row], s, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(total[row], decay, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ["per-head", "per-channel", "mlstm"])
def test_summaries_gradients_at_extreme_decays(engine):
    """Decays saturated per head over 2040 tokens on 2 shards, float32, chunks of 64, the last 5 tokens
    padded: linear attention with log γ = log 1e-6, −30 and log(1 − 1e-6) per token (`EXTREME_LOG_DECAYS`),
    per head or per key channel, and the mLSTM with f̃ = −14, −30 and +14 (ĩ ~ N(0, 1), positive q, k).
    The gradients through the shard summaries, the fold and the engine equal the float64 single-device
    token scan's, each leaf to 1e-4 of its own largest entry and d/d log γ (d/df̃) head by head to 1e-4
    of that head's largest (measured ≤ 3e-5). Before the summaries summed each token's decay to the
    shard's end from the tokens it spans (`matrix_recurrence.sum_after`), exp(end − cum_j) at the
    shard's last token sent its O(1) gradient into log γ twice with opposite signs: d/d log γ was 11% and
    100% (per channel 7% and 106%) off in the 1e-6 and e^-30 heads, the mLSTM's d/df̃ 0.7% of its whole
    leaf's scale."""
    length, heads, dk = 2040, 3, 4
    rng = np.random.default_rng(30)
    mask = jnp.arange(length)[None] < length - 5
    mesh = _mesh(2)
    if engine == "mlstm":
        q, k = (np.abs(rng.standard_normal((1, length, heads, dk))) + 0.2 for _ in range(2))
        v = rng.standard_normal((1, length, heads, dk))
        gates = (
            rng.standard_normal((1, length, heads)),
            np.broadcast_to([-14.0, -30.0, 14.0], (1, length, heads)),
        )
        kw = dict(mask=mask, chunk_size=64)
        parallel = lambda *a: sequence_parallel_mlstm(*a, method="chunked", mesh=mesh, **kw)
        reference = lambda *a: mlstm_recurrent(*a, mask=mask)
        decay_arg, head_axis = 4, -1
    else:
        q, k, v = (rng.standard_normal((1, length, heads, dk)) / 2 for _ in range(3))
        lg = np.broadcast_to(np.asarray(EXTREME_LOG_DECAYS), (1, length, heads))
        if engine == "per-channel":
            lg = np.broadcast_to(lg[..., None], (*lg.shape, dk))
        gates = (lg,)
        kw = dict(mask=mask, chunk_size=64)
        parallel = lambda *a: sequence_parallel_linear_attention(*a, method="chunked", mesh=mesh, **kw)
        reference = lambda *a: linear_attention(*a, mask=mask, method="recurrent")
        decay_arg, head_axis = 3, -1 if engine == "per-head" else -2
    g32, g64 = float32_and_float64_gradients(parallel, reference, (q, k, v, *gates))
    assert max(leafwise_relative_diffs(g32, g64)) < 1e-4
    assert max(headwise_relative_diffs(g32[decay_arg], g64[decay_arg], axis=head_axis)) < 1e-4


# --------------------------------------------------------------------------------------------------
# Selective scan
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 4, 8])
def test_selective_scan_equals_single_device(n):
    """Values and gradients (x, Δ, A, B, C, h0) and the final state, float64; padding is Δ = 0."""
    resets, mask = _flags()
    with jax.enable_x64(True):
        k = jax.random.split(jax.random.PRNGKey(7), 6)
        x = jax.random.normal(k[0], (2, T, 3), jnp.float64)
        dt = jnp.where(mask[..., None], jax.random.uniform(k[1], (2, T, 3), jnp.float64, 0.01, 0.5), 0.0)
        a_mat = -jax.random.uniform(k[2], (3, 2), jnp.float64, 0.5, 2.0)
        b = jax.random.normal(k[3], (2, T, 2), jnp.float64)
        c = jax.random.normal(k[4], (2, T, 2), jnp.float64)
        h0 = jax.random.normal(k[5], (2, 3, 2), jnp.float64)
        inputs = (x, dt, a_mat, b, c, h0)
        weights = _weights(jax.random.PRNGKey(8), (x, h0))

        def run(engine, **kw):
            f = lambda *xs: engine(*xs, resets, chunk_size=CHUNK, method="remat_sequential", **kw)
            return jax.jit(_value_and_grads, static_argnums=0)(f, inputs, weights)

        want = run(selective_scan)
        got = run(sequence_parallel_selective_scan, mesh=_mesh(n))
    _close(got, want, rtol=1e-11, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Halo, shard count, errors
# --------------------------------------------------------------------------------------------------
def test_sequence_halo_is_the_previous_shards_tail():
    """A causal convolution's halo: each shard gets the last K - 1 tokens of the one before; the first
    shard gets the initial window."""
    x = jnp.arange(2 * 16, dtype=jnp.float32).reshape(2, 16)
    initial = -jnp.ones((2, 3))
    halo = jax.shard_map(
        lambda x, init: sequence_halo(x, 3, "sequence", time_axis=1, initial=init),
        mesh=_mesh(4),
        in_specs=(P(None, "sequence"), P()),
        out_specs=P(None, "sequence"),
    )(x, initial)
    want = jnp.concatenate([initial, x[:, 1:4], x[:, 5:8], x[:, 9:12]], axis=1)
    np.testing.assert_array_equal(halo, want)


def test_shard_count_and_missing_mesh():
    assert sequence_shards("sequence", _mesh(4)) == 4
    assert sequence_shards(None) == sequence_shards("sequence") == 1
    with pytest.raises(ValueError, match="needs a device mesh"):
        sequence_parallel_linear_recurrence(jnp.ones((4, 2)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="no 'sequence'"):
        sequence_parallel_linear_recurrence(
            jnp.ones((4, 2)), jnp.ones((4, 2)), mesh=jax.make_mesh((8,), ("data",), axis_types=(AUTO,))
        )


@pytest.mark.parametrize(
    "cell",
    [
        cells.LSTM(hidden_size=4),
        cells.GRU(hidden_size=4),
        cells.ELSTM(hidden_size=4),
        cells.SLSTM(hidden_size=4, num_heads=2),
    ],
)
def test_nonlinear_rnns_refuse_to_split_time(cell):
    with pytest.raises(ValueError, match="nonlinear recurrence") as err:
        cells.check_sequence_parallel(cell)
    for alternative in ("data parallelism", "model parallelism", "truncated BPTT", "linear-recurrence cell"):
        assert alternative in str(err.value)
    with pytest.raises(ValueError, match="nonlinear recurrence"):
        cells.with_sequence_axis(cell, "sequence")


def test_cells_without_a_sequence_parallel_form_say_so():
    # Every registered cell has a form or is a nonlinear recurrence; a user's cell without the field
    # gets the generic message.
    abstract = ("init", "initial_state", "param_axes", "input_size_of", "output_size", "step", "apply")
    user_cell = dataclasses.dataclass(frozen=True)(
        type("UserCell", (cells.Cell,), {name: lambda *a, **k: None for name in abstract})
    )()
    with pytest.raises(ValueError, match="no sequence-parallel form yet"):
        cells.check_sequence_parallel(user_cell)
    for name in cells.registry.names():
        cls = cells.registry.lookup(name)
        has_form = "sequence_axis" in {f.name for f in dataclasses.fields(cls)}
        assert has_form != cls.nonlinear_recurrence, name
    assert cells.with_sequence_axis(cells.S4D(hidden_size=4), "sequence").sequence_axis == "sequence"
    assert cells.with_sequence_axis(cells.LSTM(hidden_size=4), None) == cells.LSTM(hidden_size=4)


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------
CELLS = {
    "s4d": (cells.S4D(hidden_size=4, state_size=4, method="chunked", chunk_size=CHUNK, dtype=jnp.float64), 4),
    "s5-bidirectional": (cells.S5(hidden_size=4, state_size=4, bidirectional=True, dtype=jnp.float64), 4),
    "lru-reverse": (cells.LRU(hidden_size=4, state_size=3, reverse=True, dtype=jnp.float64), 4),
    "linear-attention": (
        cells.LinearAttention(num_heads=2, head_dim=3, chunk_size=CHUNK, dtype=jnp.float64),
        5,
    ),
    # GLA's decay per key channel (d_k = 2), and the per-head decay of gla_scalar
    "gla": (cells.GatedLinearAttention(num_heads=2, head_dim=4, chunk_size=CHUNK, dtype=jnp.float64), 5),
    "gla-scalar": (
        cells.ScalarGatedLinearAttention(num_heads=2, head_dim=3, chunk_size=CHUNK, dtype=jnp.float64),
        5,
    ),
}
#: cells whose parameter gradients are compared too (the engines' gradients are tested above; these
#: check the wiring: a decay broadcast over time, the gate's log γ, the output projection).
WITH_GRADIENTS = {"s4d", "gla"}


@pytest.mark.parametrize("name", list(CELLS))
def test_cells_with_sequence_axis_equal_single_device(name):
    """`apply` with `sequence_axis` under `jax.set_mesh` (4 shards) equals plain `apply`: outputs and
    final state (and parameter gradients for `WITH_GRADIENTS`), float64, with resets and padding across
    boundaries."""
    cell, width = CELLS[name]
    resets, mask = _flags()
    sharded = cells.with_sequence_axis(cell, "sequence")
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), cell.init(jax.random.PRNGKey(9), width))
        xs = jax.random.normal(jax.random.PRNGKey(10), (2, T, width), jnp.float64)

        def run(c):
            f = lambda params, xs: c.apply(params, xs, resets=resets, mask=mask)
            if name not in WITH_GRADIENTS:
                return jax.jit(f)(params, xs)
            out = jax.eval_shape(f, params, xs)
            weights = _weights(jax.random.PRNGKey(11), out)
            return jax.jit(_value_and_grads, static_argnums=0)(f, (params, xs), weights)

        want = run(cell)
        with jax.set_mesh(_mesh(4)):
            got = run(sharded)
    _close(got, want, rtol=1e-10, atol=1e-11)


# --------------------------------------------------------------------------------------------------
# Mamba: the causal conv's halo and the sequence-parallel selective scan
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "method", "length"),
    [
        (2, "auto", T),
        (4, "auto", T),
        (8, "auto", T),
        (4, "materialized_sequential", T),
        (8, "auto", 90),  # 8 does not divide 90: the conv runs on the global array, the scan pads
    ],
)
def test_mamba_with_sequence_axis_equals_single_device(n, method, length):
    """Mamba with `sequence_axis` on n shards equals plain `apply`: outputs, final state (conv window
    and SSM state) and the gradients of parameters, inputs and initial state, float64, from a non-zero
    initial state (the first shard's halo is its conv window), with resets and padding across shard
    boundaries (a reset on token 12, 24, 36, 48: the first token of a shard for 2, 4 and 8 shards)."""
    cell = cells.Mamba(d_model=4, state_size=3, d_conv=4, chunk_size=CHUNK, method=method, dtype=jnp.float64)
    resets, mask = (f[:, :length] for f in _flags())
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), cell.init(jax.random.PRNGKey(3), 4))
        xs = jax.random.normal(jax.random.PRNGKey(4), (2, length, 4), jnp.float64)
        state = jax.tree.map(
            lambda s: jax.random.normal(jax.random.PRNGKey(5), s.shape, jnp.float64),
            cell.initial_state((2,), jnp.float64),
        )

        def run(c):
            f = lambda params, xs, state: c.apply(params, xs, state, resets=resets, mask=mask)
            out = jax.eval_shape(f, params, xs, state)
            weights = _weights(jax.random.PRNGKey(6), out)
            return jax.jit(_value_and_grads, static_argnums=0)(f, (params, xs, state), weights)

        want = run(cell)
        with jax.set_mesh(_mesh(n)):
            got = run(cells.with_sequence_axis(cell, "sequence"))
    _close(got, want, rtol=1e-9, atol=1e-10)


def test_mamba_sharded_conv_is_the_global_conv():
    """The halo conv alone (no mask, no resets, zero state) is the single-device conv, and a sharded
    input's output stays sharded along time."""
    cell = cells.Mamba(d_model=4, state_size=3, d_conv=4)
    params = cell.init(jax.random.PRNGKey(0), 4)
    mesh = _mesh(8)
    xs = jax.device_put(
        jax.random.normal(jax.random.PRNGKey(1), (2, 64, 4)), NamedSharding(mesh, P(None, "sequence"))
    )
    want, _ = jax.jit(cell.apply)(params, xs)
    with jax.set_mesh(mesh):
        got, _ = jax.jit(cells.with_sequence_axis(cell, "sequence").apply)(params, xs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert got.sharding.spec[1] == "sequence"


# --------------------------------------------------------------------------------------------------
# RG-LRU and Mamba-2: the shared short conv's halo, then the diagonal or the matrix-state engine
# --------------------------------------------------------------------------------------------------
CONV_CELLS = {
    # RG-LRU: a reset or a fresh state restarts h without the √(1 − a²) factor (`started`)
    "rglru": cells.RGLRU(
        d_model=4, lru_width=6, num_heads=2, method="chunked", chunk_size=CHUNK, dtype=jnp.float64
    ),
    # Mamba-2, grouped B and C; unsplit, the fused chunked SSD, split, the unfused engine
    "mamba2": cells.Mamba2(
        d_model=4, state_size=3, head_dim=2, num_groups=2, chunk_size=CHUNK, dtype=jnp.float64
    ),
    # the delta rules: affine shard summaries (the transition from the identity, the state from zero)
    "gated-deltanet": cells.GatedDeltaNet(num_heads=2, head_dim=2, chunk_size=CHUNK, dtype=jnp.float64),
    "rwkv7": cells.RWKV7(
        num_heads=2, head_dim=2, d_model=4, zero_init=False, chunk_size=CHUNK, dtype=jnp.float64
    ),
    # mLSTM: the stabilised summaries (F, M, C) folded by max; a random state, so m starts non-zero
    "mlstm": cells.MLSTM(d_model=4, num_heads=2, qkv_block_size=2, chunk_size=CHUNK, dtype=jnp.float64),
}


def _random_state(cell, key):
    """A non-zero initial state (so the first shard's halo is the state's conv window); RG-LRU's
    `started` flag is 1 for row 0 (h carries over) and 0 for row 1 (a fresh segment)."""
    state = cell.initial_state((2,), jnp.float64)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    new = [
        jax.random.normal(k, x.shape, x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating)
        else jnp.array([1, 0], x.dtype).reshape(x.shape)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return treedef.unflatten(new)


@pytest.mark.parametrize("n", [8])  # 8 shards of 12 tokens: every boundary of 2 and 4 shards, and more
@pytest.mark.parametrize("name", list(CONV_CELLS))
def test_conv_cells_with_sequence_axis_equal_single_device(name, n):
    """RG-LRU, Mamba-2, Gated DeltaNet, RWKV-7 and mLSTM with `sequence_axis` on n shards equal plain
    `apply`: outputs, final state and the gradients of parameters, inputs and initial state, float64,
    with resets and padding across shard boundaries."""
    cell = CONV_CELLS[name]
    resets, mask = _flags()
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: p.astype(jnp.float64), cell.init(jax.random.PRNGKey(3), 4))
        xs = jax.random.normal(jax.random.PRNGKey(4), (2, T, 4), jnp.float64)
        state = _random_state(cell, jax.random.PRNGKey(5))
        floats = lambda tree: [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]

        def run(c):
            def f(params, xs, state_floats):
                leaves = iter(state_floats)
                full = jax.tree.map(
                    lambda x: next(leaves) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
                )
                return c.apply(params, xs, full, resets=resets, mask=mask)

            inputs = (params, xs, floats(state))
            out = jax.eval_shape(f, *inputs)
            weights = _weights(jax.random.PRNGKey(6), out)
            return jax.jit(_value_and_grads, static_argnums=0)(f, inputs, weights)

        want = run(cell)
        with jax.set_mesh(_mesh(n)):
            got = run(cells.with_sequence_axis(cell, "sequence"))
    _close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("engine", ["delta_rule", "generalized_delta_rule"])
def test_delta_rules_on_a_length_the_shards_do_not_divide(engine):
    """The delta-rule engines on 8 shards at T = 90 (padded to 96 inside, cut back) equal the
    single-device engine, values and the gradients of every input and the initial state, float64."""
    length, heads, dk, dv = 90, 2, 3, 2
    resets, mask = (f[:, :length] for f in _flags())
    with jax.enable_x64(True):
        keys = iter(jax.random.split(jax.random.PRNGKey(7), 8))
        normal = lambda *shape: jax.random.normal(next(keys), (2, *shape), jnp.float64)
        unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        s0 = normal(heads, dk, dv)
        if engine == "delta_rule":
            single, split = linear_delta_rule, sequence_parallel_delta_rule
            inputs = (
                normal(length, heads, dk),
                unit(normal(length, heads, dk)),
                normal(length, heads, dv),
                jax.nn.sigmoid(normal(length, heads)),
                -jax.nn.softplus(normal(length, heads)),
                s0,
            )
        else:
            single, split = generalized_delta_rule, sequence_parallel_generalized_delta_rule
            kappa = unit(normal(length, heads, dk))
            rate = jax.nn.sigmoid(normal(length, heads, dk))
            inputs = (
                normal(length, heads, dk),
                normal(length, heads, dk),
                normal(length, heads, dv),
                -kappa,
                kappa * rate,
                -jax.nn.softplus(normal(length, heads, dk)),
                s0,
            )

        def run(f, **kw):
            g = lambda *xs: f(*xs, resets=resets, mask=mask, chunk_size=CHUNK, **kw)
            weights = _weights(jax.random.PRNGKey(8), jax.eval_shape(g, *inputs))
            return jax.jit(_value_and_grads, static_argnums=0)(g, inputs, weights)

        want = run(single)
        with jax.set_mesh(_mesh(8)):
            got = run(split, sequence_axis="sequence")
    _close(got, want, rtol=1e-9, atol=1e-10)
