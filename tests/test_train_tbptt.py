"""Truncated BPTT of the LM (the stream forecaster's: tests/test_series_tbptt.py): the chunked forward
carries every cell's state, so its loss is the full-sequence loss; with the truncation length equal to the
sequence length its gradients are full BPTT's; shorter chunks cut gradient paths (the gradients differ) but
not the forward values. With `tbptt_updates="chunk"` the optimizer updates after every chunk: the next chunk
runs from the carried state with the updated parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from configs.documents import get_config
from seqjax import models
from seqjax.config import LOGICAL_RULES
from seqjax.data.synthetic import SyntheticTask
from seqjax.train import mesh as mesh_lib
from seqjax.train.optimizer import make_optimizer
from seqjax.train.state import dropout_key, init_train_state
from seqjax.train.step import LOSSES, make_train_step, token_losses, truncated_bptt_grads

TASK = SyntheticTask("copy", length=32, num_symbols=4, vocab_size=10)


def _model(dropout_rate: float = 0.0) -> models.LanguageModel:
    config = models.BackboneConfig(
        dropout_rate=dropout_rate,
        d_model=16,
        num_layers=3,
        vocab_size=10,
        pattern=("lstm", "gla", "attn"),
        mixers={
            "gla": {"cell": "gla", "num_heads": 2, "head_dim": 8},
            "attn": {"cell": "attention", "num_heads": 2, "head_dim": 8, "max_length": 32},
        },
    )
    return models.LanguageModel(config)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    batch = {k: jnp.asarray(np.stack([TASK[i][k] for i in range(4)])) for k in TASK[0]}
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["inputs"])["params"])

    @jax.jit
    def full(params):
        def loss_of(p):
            logits = model.apply({"params": p}, batch["inputs"])
            return LOSSES["lm"](logits, batch)[0]

        return jax.value_and_grad(loss_of)(params)

    @jax.jit
    def chunked(params):
        return {c: truncated_bptt_grads(model, params, batch, c, None) for c in (32, 8)}

    return full(params), chunked(params)


def test_full_length_truncation_is_bptt(setup):
    (loss, grads), chunked = setup
    tb_grads, tb_metrics = chunked[32]
    np.testing.assert_allclose(tb_metrics["loss"], loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(tb_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_chunks_carry_state_forward_but_cut_gradients(setup):
    (loss, grads), chunked = setup
    tb_grads, tb_metrics = chunked[8]
    # Forward: the state (LSTM, GLA matrix state, attention KV cache) crosses every chunk boundary.
    np.testing.assert_allclose(tb_metrics["loss"], loss, rtol=1e-5)
    # Backward: truncated, so the gradients are not full BPTT's.
    differences = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(tb_grads), jax.tree.leaves(grads), strict=True)
    ]
    assert max(differences) > 1e-4


def test_tbptt_length_must_divide_the_length():
    model = _model()
    batch = {k: jnp.asarray(np.stack([TASK[i][k] for i in range(2)])) for k in TASK[0]}
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), batch["inputs"])["params"])
    with pytest.raises(ValueError, match="tbptt_length=5 must divide the sequence length 32"):
        truncated_bptt_grads(model, params, batch, 5, None)


def test_tbptt_needs_a_loss_at_every_position():
    # The LM and the stream forecaster (tests/test_series_tbptt.py); not a loss at the sequence's end.
    with pytest.raises(ValueError, match="tbptt_length: truncated BPTT needs a loss at every position"):
        make_train_step(_model(), None, LOSSES["classification"], None, None, tbptt_length=8)


# ------------------------------------------------------------------------------------------------------
# tbptt_updates="chunk": one optimizer update per chunk.
# ------------------------------------------------------------------------------------------------------


def _chunk_setup(dropout_rate: float = 0.0):
    """(model, tx, fresh_state(), shardings, batch sharding, batch): one device, every token weighted so
    each chunk has a loss of its own."""
    model = _model(dropout_rate)
    tx = make_optimizer(
        # A large eps: Adam's first step is ~lr·sign(g), which would blow a float32 round-off difference in
        # a near-zero gradient (the two code paths sum in another order) up to ~lr.
        {
            "name": "adamw",
            "learning_rate": 1e-2,
            "eps": 1e-3,
            "weight_decay": 0.01,
            "clip_norm": 1.0,
            "total_steps": 10,
        },
        models.param_groups(model),
    )
    mesh = mesh_lib.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    batch_sharding = NamedSharding(mesh, mesh_lib.spec_for(("batch", "length"), rules))
    batch = {k: np.stack([TASK[i][k] for i in range(4)]) for k in TASK[0]}
    batch["weights"] = np.ones_like(batch["weights"])
    example = (jnp.zeros((4, TASK.length), jnp.int32),)

    def fresh_state():  # the step donates its input state
        return init_train_state(model, tx, example, mesh, rules, seed=0)[0]

    _, shardings = init_train_state(model, tx, example, mesh, rules, seed=0)
    return model, tx, fresh_state, shardings, batch_sharding, batch


def _chunk_step(setup, batch, **kwargs):
    model, tx, fresh_state, shardings, batch_sharding, _ = setup
    step = make_train_step(model, tx, LOSSES["lm"], shardings, batch_sharding, **kwargs)
    return step(fresh_state(), jax.device_put(batch, batch_sharding))


def _by_hand(setup, batch, chunks: int, apply: tuple[bool, ...] | None = None):
    """Truncated BPTT with an update per chunk, written out: chunk k from chunk k-1's final cache
    (gradients stopped) with chunk k-1's updated parameters; `apply[k]` False skips chunk k's update."""
    model, tx, fresh_state, *_ = setup
    state = fresh_state()
    params, opt_state = state.params, state.opt_state
    keys = jax.random.split(dropout_key(state), chunks)
    deterministic = model.config.dropout_rate == 0

    @jax.jit
    def chunk_grads(params, piece, cache, key):
        def loss_of(p):
            logits, new_cache = model.apply(
                {"params": p},
                piece["inputs"],
                cache,
                method="forward",
                deterministic=deterministic,
                rngs={"dropout": key},
            )
            nll, weight, _ = token_losses(logits, piece)
            return (nll * weight).sum() / jnp.maximum(weight.sum(), 1.0), new_cache

        (_, new_cache), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return grads, new_cache

    @jax.jit
    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    cache = model.initial_cache((batch["inputs"].shape[0],))
    size = batch["inputs"].shape[1] // chunks
    for k in range(chunks):
        piece = {name: jnp.asarray(v[:, k * size : (k + 1) * size]) for name, v in batch.items()}
        grads, cache = chunk_grads(params, piece, jax.lax.stop_gradient(cache), keys[k])
        if apply is None or apply[k]:
            params, opt_state = update(grads, opt_state, params)
    return params, opt_state


def _assert_trees_close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)


@pytest.fixture(scope="module")
def chunk_setup():
    return _chunk_setup()


def test_one_chunk_per_sequence_is_the_normal_step(chunk_setup):
    batch = chunk_setup[-1]
    normal, normal_metrics = _chunk_step(chunk_setup, batch)
    chunked, metrics = _chunk_step(chunk_setup, batch, tbptt_length=TASK.length, tbptt_updates="chunk")
    assert bool(metrics["finite"]) and int(chunked.step) == int(normal.step) == 1
    _assert_trees_close(chunked.params, normal.params)
    _assert_trees_close(chunked.opt_state, normal.opt_state)
    for name in ("loss", "accuracy", "tokens", "grad_norm"):
        np.testing.assert_allclose(metrics[name], normal_metrics[name], rtol=1e-5)


def test_two_chunks_update_between_them_as_by_hand():
    # Dropout on: each chunk draws its own key from the step's dropout key.
    setup = _chunk_setup(dropout_rate=0.1)
    batch = setup[-1]
    state, metrics = _chunk_step(setup, batch, tbptt_length=TASK.length // 2, tbptt_updates="chunk")
    params, opt_state = _by_hand(setup, batch, chunks=2)
    assert bool(metrics["finite"])
    assert int(state.step) == 1  # steps count batches ...
    counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")]
    assert counts and all(c == 2 for c in counts)
    _assert_trees_close(state.params, params)  # ... the optimizer counts chunks
    _assert_trees_close(state.opt_state, opt_state)
    # The second chunk really ran with the updated parameters: one update from the sum is different.
    batch_state, _ = _chunk_step(setup, batch, tbptt_length=TASK.length // 2)
    assert (
        max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(batch_state.params), strict=True)
        )
        > 1e-4
    )
    assert float(metrics["tokens"]) == batch["weights"].sum()


def test_a_non_finite_chunk_applies_no_update(chunk_setup):
    batch = dict(chunk_setup[-1])
    half = TASK.length // 2
    nan_second = batch["weights"].copy()
    nan_second[0, half + 3] = np.nan
    state, metrics = _chunk_step(
        chunk_setup, {**batch, "weights": nan_second}, tbptt_length=half, tbptt_updates="chunk"
    )
    assert not bool(metrics["finite"])
    params, opt_state = _by_hand(chunk_setup, batch, chunks=2, apply=(True, False))
    _assert_trees_close(state.params, params)  # the first chunk's update only
    _assert_trees_close(state.opt_state, opt_state)
    # Every chunk non-finite: the whole state comes back unchanged, step included.
    state, metrics = _chunk_step(
        chunk_setup,
        {**batch, "weights": np.full_like(batch["weights"], np.nan)},
        tbptt_length=half,
        tbptt_updates="chunk",
    )
    fresh = chunk_setup[2]()
    assert not bool(metrics["finite"]) and int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tbptt_updates_config_errors():
    with pytest.raises(ValueError, match=r"tbptt_updates must be one of \['batch', 'chunk'\], got 'sample'"):
        make_train_step(_model(), None, LOSSES["lm"], None, None, tbptt_length=8, tbptt_updates="sample")
    with pytest.raises(ValueError, match=r'tbptt_updates="chunk" .* needs tbptt_length'):
        make_train_step(_model(), None, LOSSES["lm"], None, None, tbptt_updates="chunk")
    config = get_config("lstm")
    assert config.tbptt_updates == "batch" and config.tbptt_length is None


def test_schedule_lengths_count_the_updates_the_optimizer_sees():
    """The config counts batches; the schedule counts inner optimizer updates: L / tbptt_length per
    batch with chunk updates, one per grad_accum_steps batches with accumulation."""
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import _optimizer_options

    config = get_config("lstm")
    config.optimizer.total_steps, config.optimizer.warmup_steps = 100, 10
    assert (
        _optimizer_options(resolve(config), 512)["total_steps"],
        _optimizer_options(resolve(config), 512)["warmup_steps"],
    ) == (
        100,
        10,
    )
    config.tbptt_length = 128
    assert _optimizer_options(resolve(config), 512)["total_steps"] == 100  # batch mode: one update per batch
    config.tbptt_updates = "chunk"
    options = _optimizer_options(resolve(config), 512)
    assert (options["total_steps"], options["warmup_steps"]) == (400, 40)
    config.optimizer.grad_accum_steps = 8
    options = _optimizer_options(resolve(config), 512)
    assert (options["total_steps"], options["warmup_steps"]) == (50, 5)
    # the schedule built from them reaches its end value after the configured number of batches
    config.tbptt_updates, config.tbptt_length, config.optimizer.grad_accum_steps = "chunk", 128, 1
    config.optimizer.schedule = "linear"
    from seqjax.train.optimizer import make_schedule

    options = _optimizer_options(resolve(config), 512)
    schedule = make_schedule(1.0, {"end_learning_rate_fraction": 0.0, **options})
    assert float(schedule(4 * 100)) == pytest.approx(float(schedule(10**6)))
    assert float(schedule(4 * 99)) > float(schedule(4 * 100))
