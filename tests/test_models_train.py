"""Training-side options: remat policies give the same loss and gradients, dropout, block variants
(post-norm, LayerNorm, GeGLU, biases, no MLP) keep step == forward, config errors name the bad key."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import models
from tests.models_helpers import (
    VOCAB,
    D,
    assert_close,
    check_step_matches_parallel,
    fast_variables,
    tokens,
)


def base_config(**kw):
    values = dict(
        d_model=D,
        num_layers=2,
        vocab_size=VOCAB,
        pattern=("gru", "mamba"),
        mixers={"mamba": {"cell": "mamba", "state_size": 4, "chunk_size": 4}},
    )
    values.update(kw)
    return models.BackboneConfig(**values)


def lm_loss(model, variables, toks, mask, **kw):
    logits = model.apply(variables, toks[:, :-1], mask=mask[:, :-1], **kw)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:])
    return jnp.sum(losses * mask[:, 1:]) / jnp.sum(mask[:, 1:])


def test_remat_policies_give_same_loss_and_grads():
    toks = tokens(8)
    mask = jnp.asarray(np.arange(12)[None, :] < np.asarray([[12], [8]]))
    reference = models.LanguageModel(base_config(pattern=("gru",), num_layers=1))
    variables = fast_variables(reference, toks)
    grad = lambda model: jax.jit(jax.value_and_grad(lambda v: lm_loss(model, v, toks, mask)))(variables)
    loss0, grads0 = grad(reference)
    for policy in ("full", "dots_saveable"):
        model = models.LanguageModel(dataclasses.replace(reference.config, remat=policy))
        # The parameter tree does not change with remat.
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), toks)
        assert jax.tree.structure(models.param_groups(model, abstract)) == jax.tree.structure(
            models.param_groups(reference, variables)
        )
        loss, grads = grad(model)
        assert_close(loss, loss0, tol=1e-6)
        assert_close(grads, grads0, tol=1e-5)


def test_dropout_is_off_when_deterministic_and_random_otherwise():
    toks = tokens(9)
    model = models.LanguageModel(base_config(pattern=("gru",), dropout_rate=0.3, remat="dots_saveable"))
    variables = fast_variables(model, toks)
    mask = jnp.ones(toks.shape, bool)

    @jax.jit
    def run(variables, key_a, key_b):
        apply = lambda key, det: model.apply(variables, toks, deterministic=det, rngs={"dropout": key})
        loss = lambda v: lm_loss(model, v, toks, mask, deterministic=False, rngs={"dropout": key_a})
        return (
            apply(key_a, True),
            apply(key_b, True),
            apply(key_a, False),
            apply(key_b, False),
            jax.grad(loss)(variables),
        )

    det_a, det_b, rand_a, rand_b, grads = run(variables, jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    np.testing.assert_array_equal(det_a, det_b)
    assert not np.allclose(rand_a, rand_b)
    assert not np.allclose(rand_a, det_a)
    # Gradients flow through dropout under remat.
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "options",
    [
        dict(prenorm=False, norm="layernorm", use_bias=True, mlp_activation="geglu", mlp_expansion=2.5),
        dict(mlp_expansion=0, final_norm=False),
    ],
    ids=["postnorm-layernorm-bias-geglu", "no-mlp"],
)
def test_block_options_keep_step_equal_to_forward(options):
    model = models.LanguageModel(base_config(**options))
    toks = tokens(10)
    variables = fast_variables(model, toks)
    block = variables["params"]["backbone"]["blocks_0"]
    if options.get("mlp_expansion") == 0:
        assert "mlp" not in block and "mlp_norm" not in block
    else:
        hidden = round(model.config.mlp_expansion * D)
        assert block["mlp"]["gate"]["kernel"].shape == (D, hidden)
    if options.get("use_bias"):
        assert "bias" in block["mlp"]["out"] and "bias" in block["mixer_norm"]
    check_step_matches_parallel(model, variables, toks, prompt_lengths=(7, 5))


def test_block_alone():
    """A Block is a module of its own: [*, time, d_model] → same shape, with step == apply per token."""
    cfg = base_config()
    block = models.Block(cfg.layer_cells()[0], d_model=D)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 6, D))
    variables = jax.jit(block.init)(jax.random.PRNGKey(1), xs)
    ys, state = jax.jit(block.apply)(variables, xs)
    assert ys.shape == xs.shape
    step = jax.jit(lambda v, x, s: block.apply(v, x, s, method="step"))
    s = block.initial_state((2,))
    for t in range(6):
        s, y = step(variables, xs[:, t], s)
        assert_close(y, ys[:, t])
    assert_close(s, state)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"'num_layer' \(did you mean 'num_layers'\?\)"):
        models.from_config({"task": "lm", "vocab_size": 5, "num_layer": 2})
    with pytest.raises(ValueError, match="unknown task 'lmm'"):
        models.from_config({"task": "lmm"})
    with pytest.raises(ValueError, match="pattern entry 'lsmt'"):
        models.BackboneConfig(vocab_size=5, pattern=("lsmt",))
    with pytest.raises(ValueError, match=r"unknown cell 'lsmt'.*Did you mean 'lstm'"):
        models.BackboneConfig(vocab_size=5, pattern=("x",), mixers={"x": {"cell": "lsmt"}})
    with pytest.raises(TypeError, match=r"mixer 'x'.*no hyperparameter"):
        models.BackboneConfig(vocab_size=5, pattern=("x",), mixers={"x": {"cell": "gru", "hiden_size": 3}})
    with pytest.raises(ValueError, match=r"mixer 'x'.*d_model=8"):
        models.BackboneConfig(
            d_model=8, vocab_size=5, pattern=("x",), mixers={"x": ("s4d", {"hidden_size": 6})}
        )
    with pytest.raises(ValueError, match="remat"):
        models.BackboneConfig(vocab_size=5, remat="some")
    with pytest.raises(ValueError, match="vocab_size"):
        models.BackboneConfig(encoder="embedding")
    with pytest.raises(ValueError, match="input_size"):
        models.BackboneConfig(encoder="linear")


def test_mixer_defaults_fill_widths():
    cfg = models.BackboneConfig(
        d_model=16,
        vocab_size=5,
        num_layers=4,
        pattern=("lstm", "s5", "mamba", "la"),
        mixers={"la": {"cell": "linear_attention", "num_heads": 4}},
    )
    lstm, s5, mamba, la = cfg.layer_cells()
    assert lstm.hidden_size == 16 and s5.hidden_size == 16 and mamba.d_model == 16
    assert (la.num_heads, la.head_dim) == (4, 4)
    bf16 = dataclasses.replace(cfg, dtype="bfloat16")
    assert all(jnp.dtype(c.dtype) == jnp.bfloat16 for c in bf16.layer_cells())
    assert all(jnp.dtype(c.param_dtype) == jnp.float32 for c in bf16.layer_cells())
