"""The cell configurations the cell contract (tests/test_cell_contract.py) runs over, and small helpers
shared by tests."""

from __future__ import annotations

import dataclasses
import functools
import math

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
    # GLA's per-channel decay (d_k = 2), and the per-head decay of `gla_scalar`
    ("gla", cells.GatedLinearAttention(num_heads=2, head_dim=4, chunk_size=4)),
    ("gla-scalar", cells.ScalarGatedLinearAttention(num_heads=2, head_dim=3, chunk_size=4)),
    # 5 features with head_dim 3: a full orthogonal block and a truncated one
    ("performer", cells.Performer(num_heads=2, head_dim=3, num_features=5, chunk_size=4)),
    # delta rule: 13 tokens over chunks of 4 put resets and padding inside and across chunks
    ("deltanet", cells.DeltaNet(num_heads=2, head_dim=3, chunk_size=4)),
    ("gated-deltanet", cells.GatedDeltaNet(num_heads=2, head_dim=3, chunk_size=4)),
    # Griffin's recurrent block: 2 gate blocks of 3; chunks of 4 put resets and padding across chunks
    ("rglru-chunked", cells.RGLRU(d_model=5, lru_width=6, num_heads=2, method="chunked", chunk_size=4)),
    # Mamba-2: d_inner 20 = 4 heads of 5 sharing 2 groups of B, C; chunks of 4 as for the delta rule
    (
        "mamba2-groups",
        cells.Mamba2(d_model=5, state_size=3, expand=4, head_dim=5, num_groups=2, chunk_size=4),
    ),
    # RWKV-7: 13 tokens over chunks of 4 put resets and padding inside and across chunks; the LoRA
    # down-projections and W_o drawn (the authors' zeros would leave the output and the LoRAs untested)
    (
        "rwkv7",
        cells.RWKV7(
            num_heads=2,
            head_dim=3,
            d_model=5,
            decay_rank=3,
            a_rank=2,
            gate_rank=4,
            zero_init=False,
            chunk_size=4,
        ),
    ),
    # xLSTM: 13 tokens over mLSTM chunks of 4 put resets and padding inside and across chunks; sLSTM with
    # R drawn (the authors' "standard" init; their default R = 0 would leave the recurrence untested)
    ("mlstm", cells.MLSTM(d_model=5, num_heads=2, qkv_block_size=5, chunk_size=4)),
    ("slstm", cells.SLSTM(hidden_size=5, num_heads=1, conv_size=3, recurrent_init="standard")),
    ("slstm-heads-noconv", cells.SLSTM(hidden_size=6, num_heads=2, conv_size=0, recurrent_init="standard")),
    # MAX_LENGTH holds the float64 test's 64 tokens; the states of `random_state` hold < 8
    ("attention", cells.Attention(num_heads=2, head_dim=4, max_length=64)),
    (
        "sliding-window-global-gqa",
        cells.SlidingWindowAttention(num_heads=4, head_dim=2, num_kv_heads=2, window=3, num_global=2),
    ),
    # Transformer-XL's apply equals the step loop only when the memory covers the sequence: 24 holds the
    # < 8 tokens of `random_state` plus the contract's 13 (test_cell_contract.py::
    # test_apply_equals_step_loop skips shorter memories; tests/test_xl_attention.py checks those).
    (
        "xl-attention-gqa",
        cells.TransformerXLAttention(num_heads=4, head_dim=2, num_kv_heads=2, memory_length=24),
    ),
    (
        "xl-attention-short-memory-alibi",
        cells.TransformerXLAttention(num_heads=2, head_dim=4, memory_length=3, positional="alibi"),
    ),
    # no step (an encoder): the contract runs its apply-only checks
    ("longformer-gqa", cells.Longformer(num_heads=4, head_dim=2, num_kv_heads=2, window=4, num_global=2)),
    # no step (an encoder); n = 64 holds the float64 test's 64 tokens, k < n so the projection compresses
    ("linformer-gqa", cells.Linformer(num_heads=4, head_dim=2, num_kv_heads=2, max_length=64, k=8)),
    (
        "linformer-none-rotary",
        cells.Linformer(num_heads=2, head_dim=4, max_length=64, k=8, sharing="none", positional="rotary"),
    ),
]
CELL_IDS = [name for name, _ in CELL_CASES]
CELLS = [cell for _, cell in CELL_CASES]

INPUT_SIZE = 5

#: Small values for the hyperparameters a registered cell may require, for a cell with no entry in
#: CELL_CASES (SSMs and Mamba map their width to itself, so it is INPUT_SIZE).
SMALL_HPARAMS = {"hidden_size": INPUT_SIZE, "d_model": INPUT_SIZE, "num_heads": 2, "head_dim": 4}


def contract_cases() -> list[tuple[str, cells.Cell | str]]:
    """(id, cell) for every registered cell: its CELL_CASES entries, or, for a cell registered without
    one, the cell built from SMALL_HPARAMS (or, when that fails, the reason, which the test reports)."""
    out: list[tuple[str, cells.Cell | str]] = []
    for name in cells.names():
        listed = [(i, c) for i, c in CELL_CASES if c.name == name]
        if listed:
            out += listed
            continue
        cls = cells.registry.lookup(name)
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING]
        try:
            out.append((f"{name}-small", cls(**{f: SMALL_HPARAMS[f] for f in required})))
        except (KeyError, TypeError, ValueError) as err:
            out.append(
                (
                    f"{name}-no-case",
                    f"cannot build {cls.__name__} for the contract ({err!r}); add a small "
                    f"configuration of {name!r} to CELL_CASES in tests/cell_cases.py",
                )
            )
    return out


def random_flags(seed: int, shape: tuple[int, ...], p: float) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def init_params(cell: cells.Cell, seed: int = 0, input_size: int = INPUT_SIZE) -> dict:
    """`cell.init(PRNGKey(seed), input_size)` as one compiled program: run eagerly, every random draw of
    a new shape compiles a program of its own, and those small compiles were most of the contract's time."""
    return _jitted_init(cell, input_size)(jax.random.PRNGKey(seed))


@functools.cache
def _jitted_init(cell: cells.Cell, input_size: int):
    return jax.jit(lambda key: cell.init(key, input_size))


def normal_inputs(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal float32 inputs drawn by NumPy (no compiled program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def random_state(cell: cells.Cell, seed: int, batch_shape: tuple[int, ...]):
    """A non-zero state of the cell's own dtypes (complex for complex SSMs), so tests also cover a given
    initial state and resets back to zero. Drawn by NumPy into the shapes of `cell.initial_state`
    (traced, not run): no compiled program.

    Integer leaves are counts (the tokens in an attention cache): they get small non-negative values,
    so the state is one the cell can reach and continue (a cache of 64 slots holds < 8 + the test's
    tokens)."""
    template = jax.eval_shape(lambda: cell.initial_state(tuple(batch_shape)))
    leaves, treedef = jax.tree.flatten(template)
    rng = np.random.default_rng(seed)
    out = []
    for leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jnp.integer):
            out.append(rng.integers(0, 8, leaf.shape))
            continue
        value = 0.5 * rng.standard_normal(leaf.shape)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            value = value + 0.5j * rng.standard_normal(leaf.shape)
        out.append(value)
    state = treedef.unflatten(out)
    if isinstance(state, cells.LinearAttentionState):
        # The normaliser z sums positive features, so any reachable z is non-negative; a negative one
        # can put the output's denominator near zero, where float32 rounding is amplified.
        state = state._replace(z=np.abs(state.z))
    if isinstance(state, cells.SLSTMState):
        # Every state the sLSTM reaches from its initial one has n >= 1 (one of its gates is 1 each step).
        state = state._replace(n=1.0 + np.abs(state.n))
    return jax.tree.map(lambda v, t: jnp.asarray(np.asarray(v).astype(t.dtype)), state, template)


def split_floats(state):
    """(the floating-point leaves of `state`, a function rebuilding the state from new ones). Gradients
    are taken w.r.t. these: integer leaves (a cache's length) have none."""
    leaves, treedef = jax.tree.flatten(state)
    is_float = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]
    floats = [leaf for leaf, f in zip(leaves, is_float, strict=True) if f]

    def rebuild(new_floats):
        it = iter(new_floats)
        return treedef.unflatten([next(it) if f else leaf for leaf, f in zip(leaves, is_float, strict=True)])

    return floats, rebuild


def state_loss(state) -> jax.Array:
    """A real scalar that depends on every part of a (possibly complex) state."""
    return sum(jnp.sum(jnp.cos(jnp.real(s)) + jnp.sin(2 * jnp.imag(s))) for s in jax.tree.leaves(state))


def step_loop(cell, params, xs, state=None, *, resets=None, mask=None):
    """The plain reference: a Python loop of `step`, in the cell's scan direction."""
    batch_shape = xs.shape[:-2]
    t_axis = len(batch_shape)
    length = xs.shape[t_axis]
    state = cell.initial_state(batch_shape) if state is None else state
    reverse = cell.is_reversed
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


def step_scan(cell, params, xs, state=None, *, resets=None, mask=None):
    """The plain reference as one compiled loop: `step` under `lax.scan` over time, in the cell's scan
    direction; the same function as `step_loop`, for checks that take gradients through it (the Python
    loop's backward pass runs as many small eager programs, each compiled on first use)."""
    batch_shape = xs.shape[:-2]
    t_axis = len(batch_shape)
    state = cell.initial_state(batch_shape) if state is None else state
    if resets is not None and cell.is_reversed:
        # Right to left, a new segment begins at t when t + 1 starts a segment going forward.
        resets = jnp.concatenate([resets[..., 1:], jnp.zeros((*batch_shape, 1), bool)], -1)
    time_first = lambda a: None if a is None else jnp.moveaxis(a, t_axis, 0)

    def one_step(state, inputs):
        x, reset, m = inputs
        return cell.step(params, state, x, reset=reset, mask=m)

    inputs = (jnp.moveaxis(xs, t_axis, 0), time_first(resets), time_first(mask))
    state, ys = jax.lax.scan(one_step, state, inputs, reverse=cell.is_reversed)
    return jnp.moveaxis(ys, 0, t_axis), state


def unreversed(cell):
    return dataclasses.replace(cell, reverse=False)


def max_abs_diff(a, b) -> float:
    """Largest leaf-wise |a − b| (zero-size leaves, e.g. no global tokens, count as 0)."""
    diffs = jax.tree.map(
        lambda x, y: float(
            np.max(np.abs(np.asarray(x, np.complex128) - np.asarray(y, np.complex128)), initial=0)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))


def relative_diff(a, b) -> float:
    """Largest leaf-wise difference, relative to that leaf's largest magnitude in `b`."""
    diffs = jax.tree.map(
        lambda x, y: float(
            np.max(np.abs(np.asarray(x, np.complex128) - np.asarray(y, np.complex128)), initial=0)
            / (np.max(np.abs(np.asarray(y)), initial=0) + 1e-12)
        ),
        a,
        b,
    )
    return max(jax.tree.leaves(diffs))


# Per-token log-decays of three heads for the chunked engines' numerics tests: strong (α = 1e-6), extreme
# (e^-30: its d/d log α is ~1e-13 of the others) and near 1 (1 − 1e-6, a long memory).
EXTREME_LOG_DECAYS = (math.log(1e-6), -30.0, math.log1p(-1e-6))


def float32_and_float64_gradients(fn, reference, args, seed: int = 0):
    """The gradients of Σ_leaves Σ w ⊙ out (fixed random weights w, one per output leaf) wrt every
    argument: of `fn` on `args` cast to float32, and of `reference` on `args` in float64. A loss linear
    in the outputs passes no rounding of its own into the gradients. Returns two lists of float64 NumPy
    arrays."""
    with jax.enable_x64(True):
        args64 = [jnp.asarray(a, jnp.float64) for a in args]
        shapes = jax.tree.leaves(jax.eval_shape(reference, *args64))
        rng = np.random.default_rng(seed)
        weights = [rng.standard_normal(s.shape) for s in shapes]

        def grads(f, xs):
            def loss(*a):
                outs = jax.tree.leaves(f(*a))
                return sum(jnp.sum(o * jnp.asarray(w, o.dtype)) for o, w in zip(outs, weights, strict=True))

            return [np.asarray(g, np.float64) for g in jax.jit(jax.grad(loss, argnums=range(len(xs))))(*xs)]

        g32 = grads(fn, [a.astype(jnp.float32) for a in args64])
        g64 = grads(reference, args64)
    return g32, g64


def leafwise_relative_diffs(got, want) -> list[float]:
    """max |got − want| / max |want|, leaf by leaf: each gradient leaf is held to its own scale."""
    return [
        float(np.max(np.abs(np.subtract(g, w, dtype=np.float64))) / np.max(np.abs(w)))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]


def headwise_relative_diffs(got, want, axis: int) -> list[float]:
    """`leafwise_relative_diffs` of one array head by head (the slices along `axis`): a head whose
    gradients are 1e-13 of another's (a decay of e^-30 per token) is held to its own scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return [
        float(
            np.max(np.abs(np.take(got, h, axis) - np.take(want, h, axis)))
            / np.max(np.abs(np.take(want, h, axis)))
        )
        for h in range(want.shape[axis])
    ]
