"""Truncated BPTT: the chunked forward carries every cell's state, so its loss is the full-sequence loss;
with the truncation length equal to the sequence length its gradients are full BPTT's; shorter chunks cut
gradient paths (the gradients differ) but not the forward values."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import models
from seqjax.data.synthetic import SyntheticTask
from seqjax.train.step import LOSSES, make_train_step, truncated_bptt_grads

TASK = SyntheticTask("copy", length=32, num_symbols=4, vocab_size=10)


def _model() -> models.LanguageModel:
    config = models.BackboneConfig(
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


def test_tbptt_is_lm_only():
    with pytest.raises(ValueError, match="LM task only"):
        make_train_step(_model(), None, LOSSES["classification"], None, None, tbptt_length=8)
