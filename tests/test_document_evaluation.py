"""Evaluation by document: every document of a token stream as its own lane, read in segments with the
state carried through the document (Transformer-XL's long-context evaluation) or reset at each segment.

- Data: `document_eval_batches` reads every input of every document exactly once, longest documents
  first, with the global rows' document ids in every process; without carrying, every segment starts
  from a reset.
- Values: the per-document sums of `evaluate_stream` equal each document scored whole in one pass
  (carried) and each segment scored on its own (reset).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import cells, models
from seqjax.config import LOGICAL_RULES
from seqjax.data.stream import TokenStream, document_eval_batches, document_spans
from seqjax.train import mesh as mesh_lib
from seqjax.train import segments
from tests.models_helpers import VOCAB, D, fast_variables

N = 203
DOCUMENT_STARTS = (0, 17, 60, 61, 150)


def _stream(seed: int = 0) -> TokenStream:
    starts = np.zeros(N, bool)
    starts[list(DOCUMENT_STARTS)] = True
    tokens = np.random.default_rng(seed).integers(0, VOCAB, N)
    return TokenStream(tokens, starts, ~starts[1:])  # "padded": a document's first token is not counted


def test_document_spans_partition_the_inputs():
    spans = document_spans(_stream())
    np.testing.assert_array_equal(spans, [[0, 17], [17, 60], [60, 61], [61, 150], [150, 202]])
    no_start = TokenStream(np.arange(5), np.zeros(5, bool), np.ones(4, bool))
    np.testing.assert_array_equal(document_spans(no_start), [[0, 4]])  # a stream without marks: one document


@pytest.mark.parametrize("carried", [True, False])
@pytest.mark.parametrize("process_count", [1, 2])
def test_every_input_of_every_document_is_read_once(carried, process_count):
    stream, rows, length = _stream(), 4, 8
    spans = document_spans(stream)
    seen = np.zeros(N - 1, int)
    weights = 0.0
    for index in range(process_count):
        batches = list(
            document_eval_batches(
                stream, rows, length, carried=carried, process_index=index, process_count=process_count
            )
        )
        # Longest first: the first group holds documents 3, 4, 1, 0 (89, 52, 43, 17 inputs).
        assert batches[0]["document"].tolist() == [3, 4, 1, 0]
        assert batches[-1]["document"].tolist() == [2, -1, -1, -1]
        local = rows // process_count
        started = set()
        for batch in batches:
            assert batch["inputs"].shape == (local, length)
            for r in range(local):
                d = batch["document"][index * local + r]
                valid = batch["mask"][r]
                if d < 0:
                    assert not valid.any()
                    continue
                count = int(valid.sum())
                assert valid[:count].all()  # right padding only
                if count:
                    # Every segment of a reset evaluation starts from a reset; a carried one only at the
                    # document's first segment.
                    assert batch["resets"][r, 0] == (not carried or d not in started)
                    started.add(d)
            weights += float(batch["weights"].sum())
        # Each document's inputs, in order, are the concatenation of its rows over the segments.
        for d, (start, stop) in enumerate(spans):
            pieces = []
            for batch in batches:
                row = np.flatnonzero(batch["document"] == d) - index * local
                if len(row) and 0 <= row[0] < local:
                    pieces.append(batch["inputs"][row[0]][batch["mask"][row[0]]])
            if pieces:
                np.testing.assert_array_equal(np.concatenate(pieces), stream.tokens[start:stop])
                seen[start:stop] += 1
    np.testing.assert_array_equal(seen, 1)
    assert weights == stream.counted.sum()  # the same targets the stream evaluation counts


MODEL = models.LanguageModel(
    models.BackboneConfig(
        d_model=D,
        num_layers=2,
        vocab_size=VOCAB,
        pattern=("lstm", "gla"),
        mixers={"gla": cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)},
    )
)


@functools.cache
def _document_sums(carried: bool) -> tuple[dict[str, float], dict[str, np.ndarray], dict, TokenStream]:
    model, rows, length, stream = MODEL, 4, 8, _stream(3)
    mesh = mesh_lib.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    variables = fast_variables(model, jnp.zeros((rows, length), jnp.int32))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params_sh = jax.tree.map(lambda _: replicated, variables["params"])
    carry_sh = segments.model_carry_shardings(model, rows, mesh, rules)
    batch_sh = dict.fromkeys(("inputs", "targets", "weights", "resets", "mask"), by_row)
    eval_fn = segments.make_stream_eval_fn(model, params_sh, carry_sh, batch_sh)
    metrics, sums = segments.evaluate_stream(
        eval_fn,
        variables["params"],
        segments.initial_carry(model, rows, carry_sh),
        document_eval_batches(stream, rows, length, carried=carried),
        lambda batch: {k: jnp.asarray(v) for k, v in batch.items()},
    )
    return metrics, sums, variables, stream


PAD = 96  # every scored span is padded to one length: one compile


def _score(model, variables, stream, start, stop) -> float:
    """Σ counted target NLL of inputs [start, stop) scored as one sequence from the initial state."""
    n = stop - start
    inputs = np.zeros((1, PAD), np.int32)
    targets = np.zeros((1, PAD), np.int32)
    resets = np.zeros((1, PAD), bool)
    mask = np.zeros((1, PAD), bool)
    inputs[0, :n], targets[0, :n] = stream.tokens[start:stop], stream.tokens[start + 1 : stop + 1]
    resets[0, :n], resets[0, 0], mask[0, :n] = stream.starts[start:stop], True, True
    logits = _apply(model)(variables, inputs, resets=resets, mask=mask)
    nll = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, targets))[0, :n]
    return float((nll * stream.counted[start:stop]).sum())


@functools.cache
def _apply(model):
    return jax.jit(model.apply)


def test_carried_document_sums_equal_each_document_in_one_pass():
    metrics, sums, variables, stream = _document_sums(carried=True)
    model = MODEL
    spans = document_spans(stream)
    expected = [_score(model, variables, stream, a, b) for a, b in spans]
    np.testing.assert_allclose(sums["nll"], expected, rtol=1e-5)
    np.testing.assert_array_equal(sums["tokens"], [stream.counted[a:b].sum() for a, b in spans])
    assert metrics["tokens"] == stream.counted.sum()


def test_reset_document_sums_score_each_segment_alone():
    _, carried, variables, stream = _document_sums(carried=True)
    _, sums, _, _ = _document_sums(carried=False)
    model, length = MODEL, 8
    expected = [
        sum(_score(model, variables, stream, s, min(s + length, b)) for s in range(a, b, length))
        for a, b in document_spans(stream)
    ]
    np.testing.assert_allclose(sums["nll"], expected, rtol=1e-5)
    np.testing.assert_array_equal(sums["tokens"], carried["tokens"])  # the same targets, paired
    # Documents longer than one segment are scored differently with and without the carried state.
    assert not np.allclose(sums["nll"][[0, 1, 3, 4]], carried["nll"][[0, 1, 3, 4]])
