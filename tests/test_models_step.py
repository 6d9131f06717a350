"""Step mode of whole models: prefill + decode_step == the parallel forward pass, for every cell type,
with right-padded prompts, in hybrids; generation; clear errors for cells that cannot stream."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models
from tests.models_helpers import (
    CASE_CELLS,
    CASE_IDS,
    VOCAB,
    B,
    D,
    L,
    assert_close,
    check_step_matches_parallel,
    fast_variables,
    lm,
    tokens,
)


@pytest.mark.parametrize("cell", CASE_CELLS, ids=CASE_IDS)
def test_lm_prefill_and_decode_equal_forward(cell):
    model = lm(cell, num_layers=1)
    toks = tokens()
    check_step_matches_parallel(model, fast_variables(model, toks), toks, prompt_lengths=(6, 4))


def hybrid_config() -> dict:
    return {
        "task": "lm",
        "d_model": D,
        "num_layers": 3,
        "vocab_size": VOCAB,
        "pattern": ("gru", "mamba", "gla"),
        "mixers": {
            "mamba": {"cell": "mamba", "state_size": 4, "chunk_size": 4},
            "gla": ("gla", {"num_heads": 2, "chunk_size": 4}),  # head_dim = d_model // 2
        },
        "tie_embeddings": True,
    }


def test_hybrid_from_config_runs_and_steps():
    model = models.from_config(hybrid_config())
    assert isinstance(model, models.LanguageModel)
    c = model.config
    assert c.layer_mixers() == ("gru", "mamba", "gla")
    kinds = [type(cell).__name__ for cell in c.layer_cells()]
    assert kinds == ["GRU", "Mamba", "GatedLinearAttention"]
    # Defaults fill the widths: every cell reads and writes d_model features.
    assert all(cell.output_size == D for cell in c.layer_cells())
    toks = tokens(1)
    variables = fast_variables(model, toks)
    assert "lm_head" not in variables["params"]  # tied
    logits = check_step_matches_parallel(model, variables, toks, prompt_lengths=(5, 5), use_mask=False)

    # Prefilling in two pieces (a cache passed to `forward`) continues exactly.
    @jax.jit
    def pieces(variables, toks):
        _, cache = model.apply(variables, toks[:, :3], method="forward")
        rest, _ = model.apply(variables, toks[:, 3:], cache, method="forward")
        return rest

    assert_close(pieces(variables, toks), logits[:, 3:])


def test_hybrid_config_from_ml_collections_and_round_trip():
    ml_collections = pytest.importorskip("ml_collections")
    values = hybrid_config()
    values["pattern"] = "gru,mamba"  # a string pattern, as a command-line flag gives it
    cfg = ml_collections.ConfigDict(values)
    model = models.from_config(cfg)
    assert model.config.pattern == ("gru", "mamba")
    again = models.BackboneConfig.from_dict(model.config.to_dict())
    assert again == model.config
    assert hash(again) == hash(model.config)


def test_initial_cache_matches_cells():
    model = models.from_config(hybrid_config())
    cache = models.init_cache(model, (3,))
    assert len(cache) == 3
    ref = tuple(cell.initial_state((3,)) for cell in model.config.layer_cells())
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), cache, ref)


@pytest.mark.parametrize(
    "spec, why",
    [
        ({"cell": "gru", "bidirectional": True}, "Bidirectional"),
        ({"cell": "gru", "reverse": True}, "reverse=True"),
        ({"cell": "s5", "state_size": 4, "bidirectional": True}, "bidirectional=True"),
    ],
    ids=["bidirectional-wrapper", "reversed", "s5-bidirectional"],
)
def test_non_streamable_cells_raise_naming_layer_and_cell(spec, why):
    model = models.from_config(
        {
            "task": "lm",
            "d_model": D,
            "num_layers": 2,
            "vocab_size": VOCAB,
            "pattern": ("gru", "bi"),
            "mixers": {"bi": spec},
        }
    )
    toks = tokens(2)
    variables = fast_variables(model, toks)
    assert jax.jit(model.apply)(variables, toks).shape == (B, L, VOCAB)  # the whole-sequence pass works
    for call in (
        lambda: models.prefill(model, variables, toks),
        lambda: models.decode_step(model, variables, model.initial_cache((B,)), toks[:, 0]),
        lambda: models.generate(model, variables, toks, num_tokens=2, key=jax.random.PRNGKey(0)),
    ):
        with pytest.raises(TypeError, match=r"layer 1 \(blocks_1, mixer 'bi'\)") as err:
            call()
        assert why in str(err.value)


def test_generate_greedy_topk1_padding_and_jit():
    model = lm(cells.GRU(hidden_size=D))
    toks = tokens(3)
    variables = fast_variables(model, toks)
    prompt, n = toks[:, :5], 6

    @jax.jit  # fixed shapes: everything, generation included, in one compiled program
    def run(variables, prompt, key_a, key_b):
        gen = functools.partial(models.generate, model, variables, prompt, num_tokens=n)
        greedy = gen(key=key_a, greedy=True)
        top1 = gen(key=key_b, top_k=1)
        sample_a = gen(key=key_a, temperature=0.8, top_k=4)
        sample_b = gen(key=key_b, temperature=0.8, top_k=4)

        # Reference: argmax of repeated decode_step.
        def body(carry, _):
            cache, logits = carry
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            return models.decode_step(model, variables, cache, tok), tok

        _, ref = jax.lax.scan(body, models.prefill(model, variables, prompt), None, length=n)
        # Teacher forcing on the sampled sequence: each sampled token's step logits.
        forced = model.apply(variables, jnp.concatenate([prompt, sample_a], axis=1))[:, 4:-1]
        # A right-padded prompt: row 1 has 3 valid tokens and continues from its own end.
        padded = gen(key=key_a, greedy=True, mask=jnp.asarray([[True] * 5, [True] * 3 + [False] * 2]))
        alone = models.generate(model, variables, prompt[1:, :3], num_tokens=n, key=key_a, greedy=True)
        return greedy, top1, sample_a, sample_b, ref.T, forced, padded, alone

    greedy, top1, sample_a, sample_b, ref, forced, padded, alone = run(
        variables, prompt, jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    )
    np.testing.assert_array_equal(padded[1:], alone)
    np.testing.assert_array_equal(padded[:1], greedy[:1])
    np.testing.assert_array_equal(greedy, ref)
    np.testing.assert_array_equal(top1, greedy)
    assert sample_a.shape == sample_b.shape == (B, n) and sample_a.dtype == jnp.int32
    assert not np.array_equal(sample_a, sample_b)  # different keys, different samples (fixed seeds)
    top4 = jax.lax.top_k(forced, 4)[1]  # every sampled token is among its step's top 4
    assert bool(jnp.all(jnp.any(top4 == sample_a[..., None], axis=-1)))
