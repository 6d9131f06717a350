"""Heads and encoders: pooling ignores padding and picks the right token, RevIN's equivariance and
valid-only statistics, streaming forecasts, the DNA encoder's IUPAC table, tied LM logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cells, models
from seqjax.models.encoders import IUPAC
from seqjax.models.heads import first_valid_index, last_valid_index, pool
from tests.models_helpers import VOCAB, B, D, assert_close, fast_variables, tokens

T = 10
LENGTHS = np.asarray([10, 6])
MASK = jnp.asarray(np.arange(T)[None, :] < LENGTHS[:, None])


# -- pooling ------------------------------------------------------------------------------------------------
def test_pool_functions():
    feats = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.asarray([[False, True, True, False, False], [False, False, False, False, False]])
    np.testing.assert_array_equal(last_valid_index(mask), [2, -1])
    np.testing.assert_array_equal(first_valid_index(mask), [1, -1])
    np.testing.assert_allclose(pool(feats, mask, "mean")[0], feats[0, 1:3].mean(0))
    np.testing.assert_array_equal(pool(feats, mask, "last")[0], feats[0, 2])
    np.testing.assert_array_equal(pool(feats, mask, "first")[0], feats[0, 1])
    for kind in models.POOLINGS:  # a row with no valid token pools to zeros
        np.testing.assert_array_equal(pool(feats, mask, kind)[1], 0)
    np.testing.assert_array_equal(pool(feats, None, "last"), feats[:, -1])
    with pytest.raises(ValueError, match="pooling"):
        pool(feats, mask, "max")


def classifier(pooling, pattern=("gru",), **mixers):
    return models.from_config(
        {
            "task": "classification",
            "num_classes": 3,
            "pooling": pooling,
            "d_model": D,
            "num_layers": 2,
            "vocab_size": VOCAB,
            "pattern": pattern,
            "mixers": mixers,
        }
    )


@pytest.mark.parametrize(
    "pooling, pattern, mixers",
    [
        ("mean", ("gru",), {}),
        ("last", ("gru",), {}),
        ("first", ("rgru",), {"rgru": {"cell": "gru", "reverse": True}}),
    ],
    ids=["mean", "last", "first-reversed"],
)
def test_classifier_pooling_ignores_padding(pooling, pattern, mixers):
    """Changing padded tokens changes nothing, and a padded row equals that row alone, unpadded."""
    model = classifier(pooling, pattern, **mixers)
    toks = tokens(5, (B, T))
    variables = fast_variables(model, toks)
    forward = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
    logits = forward(variables, toks, MASK)
    assert logits.shape == (B, 3)
    junk = jnp.where(MASK, toks, tokens(6, (B, T)))
    assert not np.array_equal(junk, toks)
    np.testing.assert_array_equal(forward(variables, junk, MASK), logits)
    short = LENGTHS[1]
    alone = forward(variables, toks[1:, :short], jnp.ones((1, short), bool))
    assert_close(logits[1:], alone)


def test_models_broadcast_a_shared_mask_as_the_cells_do():
    """A mask [1, time] or [time] shared by the batch equals the same mask repeated for every row, in the
    classifier's pooling, an LM's prefill and a forecaster's RevIN; a mask that does not broadcast is a
    ValueError naming the mask and the expected shape."""
    toks = tokens(7, (B, T))
    shared = np.arange(T) < 7
    full = jnp.asarray(np.broadcast_to(shared, (B, T)))
    model = classifier("last")
    variables = fast_variables(model, toks)
    forward = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
    expected = forward(variables, toks, full)
    for mask in (shared[None], shared):
        np.testing.assert_array_equal(forward(variables, toks, jnp.asarray(mask)), expected)
    with pytest.raises(ValueError, match=r"`mask` has shape \(2, 9\), expected \(2, 10\)"):
        model.apply(variables, toks, mask=jnp.ones((B, T - 1), bool))

    lm = models.LanguageModel(
        models.BackboneConfig(d_model=D, num_layers=1, vocab_size=VOCAB, pattern=("gru",))
    )
    lm_variables = fast_variables(lm, toks)
    prefill = jax.jit(lambda v, x, m: models.prefill(lm, v, x, mask=m)[1])
    np.testing.assert_array_equal(
        prefill(lm_variables, toks, shared[None]), prefill(lm_variables, toks, full)
    )

    fc, fc_variables = forecaster_and_variables()
    x = series(3)
    fc_forward = jax.jit(lambda v, x, m: fc.apply(v, x, mask=m))
    np.testing.assert_array_equal(
        fc_forward(fc_variables, x, shared[None]), fc_forward(fc_variables, x, full)
    )


# -- forecasting --------------------------------------------------------------------------------------------
V, H = 3, 4


def forecaster(revin=True):
    return models.from_config(
        {
            "task": "forecast",
            "horizon": H,
            "num_variables": V,
            "revin": revin,
            "d_model": D,
            "num_layers": 2,
            "pattern": ("gru", "lru"),
            "mixers": {"lru": {"cell": "lru", "state_size": 4, "chunk_size": 4}},
        }
    )


def series(seed=0, batch=B, length=T):
    rng = np.random.default_rng(seed)
    trend = np.linspace(0, 1, length)[None, :, None] * rng.normal(size=(batch, 1, V))
    return jnp.asarray(5.0 + trend + rng.normal(size=(batch, length, V)), jnp.float32)


@functools.cache
def forecaster_and_variables(revin=True):
    model = forecaster(revin)
    return model, fast_variables(model, series())


def test_revin_forecast_is_shift_and_scale_equivariant():
    model, variables = forecaster_and_variables()
    x = series(1)
    forward = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
    y = forward(variables, x, MASK)
    assert y.shape == (B, H, V)
    scale, shift = 3.0, jnp.asarray([-2.0, 10.0, 0.5])
    assert_close(forward(variables, scale * x + shift, MASK), scale * y + shift, tol=1e-4)


def test_revin_statistics_use_valid_steps_only():
    model, variables = forecaster_and_variables()
    x = series(2)
    mean, std = model.apply(variables, x, MASK, method="statistics")
    for r, n in enumerate(LENGTHS):
        np.testing.assert_allclose(mean[r], np.asarray(x[r, :n]).mean(0), rtol=1e-5)
        np.testing.assert_allclose(std[r], np.sqrt(np.asarray(x[r, :n]).var(0) + 1e-5), rtol=1e-5)
    forward = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))
    junk = jnp.where(MASK[..., None], x, 1e3)  # huge values at padded steps change nothing
    np.testing.assert_array_equal(forward(variables, junk, MASK), forward(variables, x, MASK))


@pytest.mark.parametrize("revin", [False, True], ids=["plain", "revin"])
def test_streaming_forecasts_equal_the_forward_pass(revin):
    """Feeding observations one at a time gives, after each one, the forecast of the whole prefix. Without
    RevIN streaming starts from the empty cache; with RevIN it starts from a prefill of the first k steps,
    whose statistics then stay fixed."""
    model, variables = forecaster_and_variables(revin)
    x = series(3)
    k = 4 if revin else 0

    @jax.jit
    def run(variables, x):
        if revin:
            cache, first = models.prefill(model, variables, x[:, :k])
        else:
            cache, first = models.init_cache(model, (B,)), None
        cache, stream = models.stream_forecasts(model, variables, cache, x[:, k:])
        stats = cache[1]
        prefixes = [model.apply(variables, x[:, :t], stats=stats) for t in CHECK]
        return first, stream, jnp.stack(prefixes, 1)

    CHECK = (max(k, 1), k + 2, T)  # prefix lengths compared (each is its own forward pass)
    first, stream, prefixes = run(variables, x)
    assert stream.shape == (B, T - k, H, V)
    # stream[:, j] is the forecast after observation k + j, i.e. of the prefix of length k + j + 1.
    idx = np.asarray(CHECK) - k - 1
    if revin:  # the prefill's forecast is that of the prefix of length k
        assert_close(first, prefixes[:, 0], tol=1e-4)
        idx, prefixes = idx[1:], prefixes[:, 1:]
    assert_close(stream[:, idx], prefixes, tol=1e-4)


def test_forecast_step_needs_stats_with_revin():
    model, variables = forecaster_and_variables(True)
    cache = models.init_cache(model, (B,))
    with pytest.raises(ValueError, match="statistics"):
        models.forecast_step(model, variables, cache, series()[:, 0])


# -- DNA ----------------------------------------------------------------------------------------------------
def test_dna_vocabulary_and_iupac_table():
    ids = models.dna_to_ids("ACGTNRYSWKMBDHV-")
    np.testing.assert_array_equal(ids, np.arange(16))
    np.testing.assert_array_equal(models.dna_to_ids("acgtnryswkmbdhv-"), ids)
    np.testing.assert_array_equal(models.dna_to_ids(b"AcGu."), models.dna_to_ids("ACGT-"))
    assert models.ids_to_dna(models.dna_to_ids("gattaca")) == "GATTACA"
    with pytest.raises(ValueError, match=r"'X' at position 3"):
        models.dna_to_ids("ACGXT")
    iupac = IUPAC
    assert iupac["A"] == (1, 0, 0, 0) and iupac["T"] == (0, 0, 0, 1)
    assert iupac["R"] == (0.5, 0, 0.5, 0) and iupac["Y"] == (0, 0.5, 0, 0.5)
    assert iupac["N"] == (0.25,) * 4 and iupac["-"] == (0,) * 4
    np.testing.assert_allclose(iupac["B"], (0, 1 / 3, 1 / 3, 1 / 3))


def test_dna_encoder_ids_bytes_and_case():
    enc = models.DNAEncoder(D)
    text = "ACGTNRYSWKMBDHV-acgtnryswkmbdhv-"
    ids = jnp.asarray(models.dna_to_ids(text))
    raw = jnp.asarray(np.frombuffer(text.encode(), np.uint8))
    variables = enc.init(jax.random.PRNGKey(0), ids)
    probs_ids = enc.apply(variables, ids, method="probabilities")
    probs_bytes = enc.apply(variables, raw, method="probabilities")
    np.testing.assert_array_equal(probs_ids, probs_bytes)
    np.testing.assert_array_equal(probs_ids[:16], probs_ids[16:])  # lowercase == uppercase
    np.testing.assert_allclose(probs_ids[:16], [IUPAC[c] for c in text[:16]])
    feats = enc.apply(variables, raw)
    np.testing.assert_array_equal(feats[:16], feats[16:])
    # Unknown bytes and out-of-range ids: a clear error when concrete, N under jit.
    unknown_bytes = jnp.asarray(np.frombuffer(b"ACXN", np.uint8))
    with pytest.raises(ValueError, match=r"byte 88 \('X'\) at index \(2,\)"):
        enc.apply(variables, unknown_bytes)
    with pytest.raises(ValueError, match=r"id 16 at index \(1,\)"):
        enc.apply(variables, jnp.asarray([0, 16]))
    probs = jax.jit(lambda v, x: enc.apply(v, x, method="probabilities"))
    np.testing.assert_array_equal(probs(variables, unknown_bytes)[2], np.full(4, 0.25))
    np.testing.assert_array_equal(probs(variables, jnp.asarray([-1, 16, 99])), np.full((3, 4), 0.25))
    np.testing.assert_array_equal(probs(variables, jnp.zeros(2, jnp.uint8)), 0.0)  # NUL = padding
    with pytest.raises(TypeError, match="integer"):
        enc.apply(variables, jnp.zeros(3))


# -- language model head ------------------------------------------------------------------------------------
def test_tied_embeddings_reuse_the_table():
    model = models.LanguageModel(
        models.BackboneConfig(d_model=D, num_layers=1, vocab_size=VOCAB, pattern=("gru",)),
        tie_embeddings=True,
    )
    toks = tokens(7)
    variables = fast_variables(model, toks)
    assert set(variables["params"]) == {"backbone"}
    logits, (feats, _) = jax.jit(
        lambda v, x: (model.apply(v, x), model.apply(v, x, method=lambda m, x: m.backbone(x)))
    )(variables, toks)
    table = variables["params"]["backbone"]["encoder"]["embedding"]
    assert_close(logits, jnp.einsum("bld,vd->blv", feats, table))
    with pytest.raises(ValueError, match=r"token id 11 at index \(1, 2\)"):
        model.apply(variables, toks.at[1, 2].set(VOCAB))
    with pytest.raises(ValueError, match="tie_embeddings"):
        models.LanguageModel(
            models.BackboneConfig(d_model=D, num_layers=1, encoder="dna", pattern=("gru",)),
            tie_embeddings=True,
        ).init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))


def test_classifier_on_dna_bytes_runs_bidirectional():
    model = models.from_config(
        {
            "task": "classification",
            "num_classes": 2,
            "d_model": D,
            "num_layers": 1,
            "encoder": "dna",
            "pattern": ("bi",),
            "mixers": {"bi": {"cell": "gru", "bidirectional": True}},
        }
    )
    seqs = jnp.asarray(np.frombuffer(b"ACGTNacgtnRYKMSWACGTGGCCAATT", np.uint8).reshape(2, 14))
    variables = fast_variables(model, seqs)
    assert isinstance(model.config.layer_cells()[0], cells.Bidirectional)
    logits = jax.jit(model.apply)(variables, seqs)
    assert logits.shape == (2, 2) and bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(TypeError, match="step mode"):
        models.prefill(model, variables, seqs)
