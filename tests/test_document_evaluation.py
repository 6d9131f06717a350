"""Evaluation by document: every document of a token stream as its own lane, read in segments with the
state carried through the document (Transformer-XL's long-context evaluation) or reset at each segment.

- Data: `document_eval_batches` reads every input of every document exactly once, longest documents
  first, with the global rows' document ids in every process; without carrying, every segment starts
  from a reset.
- Values: the per-document sums of `evaluate_stream` equal each document scored whole in one pass
  (carried) and each segment scored on its own (reset).
- By position: each target's byte offset from its document's start (byte-level and BPE-sized tokens);
  per-bucket sums (NLL, targets, bytes) add up to the per-document totals in both modes, put every
  target in the bucket of its offset, and the reset mode runs any causal LM (softmax attention too)
  from the initial state at every segment; on a BPE corpus the bucket bytes add up to each document's
  bytes minus its first token ("padded").
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import cells, models
from seqjax.config import LOGICAL_RULES
from seqjax.data.stream import (
    TokenStream,
    check_position_buckets,
    document_eval_batches,
    document_spans,
    target_byte_offsets,
)
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


@pytest.mark.parametrize("carried", [True, False])
def test_max_document_tokens_reads_each_documents_first_tokens_only(carried):
    stream, bound = _stream(), 20
    batches = list(document_eval_batches(stream, 4, 8, carried=carried, max_document_tokens=bound))
    read: dict[int, list[np.ndarray]] = {}
    for batch in batches:
        for r, d in enumerate(batch["document"]):
            if d >= 0:
                read.setdefault(int(d), []).append(batch["inputs"][r][batch["mask"][r]])
    for d, (start, stop) in enumerate(document_spans(stream)):
        np.testing.assert_array_equal(
            np.concatenate(read[d]), stream.tokens[start : min(stop, start + bound)]
        )
    assert len(batches) == 3 + 1  # ceil(20 / 8) segments for the first group, one for the last document
    with pytest.raises(ValueError, match="max_document_tokens=0"):
        next(document_eval_batches(stream, 4, 8, max_document_tokens=0))


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


# --------------------------------------------------------------------------------------------------
# Sums by position in the document.
# --------------------------------------------------------------------------------------------------
TOKEN_BYTES = np.random.default_rng(7).integers(1, 5, N)  # BPE-like: 1 to 4 bytes per token
EDGES = (0, 8, 24, 64)


def _sized_stream(seed: int = 3) -> TokenStream:
    return _stream(seed)._replace(token_bytes=TOKEN_BYTES)


def test_target_byte_offsets_count_bytes_from_the_document_start():
    # Two documents, tokens of 2, 1, 3 | 1, 2, 2 bytes: targets sit after their document's earlier tokens.
    stream = TokenStream(
        np.arange(6), np.array([1, 0, 0, 1, 0, 0], bool), np.ones(5, bool), [2, 1, 3, 1, 2, 2]
    )
    offsets, sizes = target_byte_offsets(stream)
    # Input 2 (document 0's last) predicts document 1's first token, at document 0's byte length (6).
    assert offsets.tolist() == [2, 3, 6, 1, 3] and sizes.tolist() == [1, 3, 1, 2, 2]
    byte_level = stream._replace(token_bytes=None)
    assert [a.tolist() for a in target_byte_offsets(byte_level)] == [[1, 2, 3, 1, 2], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize(
    "edges", [(), (1, 8), (0, 8, 8), (0, 16, 8), (0.0, 8.0), [[0, 8]]], ids=lambda e: repr(e)
)
def test_bad_position_buckets_are_refused(edges):
    with pytest.raises(ValueError, match="position_buckets"):
        check_position_buckets(edges)


def _by_position(eval_fn, params, carry, stream, carried, edges=EDGES):
    return segments.evaluate_stream(
        eval_fn,
        params,
        carry,
        document_eval_batches(stream, 4, 8, carried=carried, byte_offsets=True),
        lambda batch: {k: jnp.asarray(v) for k, v in batch.items()},
        position_buckets=edges,
    )


def _eval_setup(model, carried: bool):
    rows, length = 4, 8
    mesh = mesh_lib.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    variables = fast_variables(model, jnp.zeros((rows, length), jnp.int32))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params_sh = jax.tree.map(lambda _: replicated, variables["params"])
    carry_sh = segments.model_carry_shardings(model, rows, mesh, rules) if carried else None
    batch_sh = dict.fromkeys(("inputs", "targets", "weights", "resets", "mask"), by_row)
    eval_fn = segments.make_stream_eval_fn(
        model, params_sh, carry_sh, batch_sh, per_position=True, carried=carried
    )
    carry = segments.initial_carry(model, rows, carry_sh) if carried else None
    return eval_fn, variables, carry


@pytest.mark.parametrize("carried", [True, False], ids=["carried", "reset"])
def test_bucket_sums_add_up_and_follow_the_byte_offsets(carried):
    stream = _sized_stream()
    # The reset mode runs every segment from the initial state without a carried state.
    eval_fn, variables, carry = _eval_setup(MODEL, carried)
    metrics, sums = _by_position(eval_fn, variables["params"], carry, stream, carried)
    _, plain, _, _ = _document_sums(carried=carried)  # the same model, no buckets
    documents = len(document_spans(stream))
    for key in ("bucket_nll", "bucket_tokens", "bucket_bytes"):
        assert sums[key].shape == (documents, len(EDGES))
    np.testing.assert_allclose(sums["bucket_nll"].sum(-1), sums["nll"], rtol=1e-12)
    np.testing.assert_array_equal(sums["bucket_tokens"].sum(-1), sums["tokens"])
    np.testing.assert_allclose(sums["nll"], plain["nll"], rtol=1e-5)  # the per-row sums, re-summed
    np.testing.assert_array_equal(sums["tokens"], plain["tokens"])
    assert metrics["tokens"] == stream.counted.sum()
    # Each document's counted targets, bucketed by their byte offsets, counted directly.
    offsets, sizes = target_byte_offsets(stream)
    bucket = np.searchsorted(EDGES, offsets, side="right") - 1
    for d, (a, b) in enumerate(document_spans(stream)):
        counted = stream.counted[a:b]
        expected_tokens = np.bincount(bucket[a:b], weights=counted, minlength=len(EDGES))
        expected_bytes = np.bincount(bucket[a:b], weights=counted * sizes[a:b], minlength=len(EDGES))
        np.testing.assert_array_equal(sums["bucket_tokens"][d], expected_tokens)
        np.testing.assert_array_equal(sums["bucket_bytes"][d], expected_bytes)
    # The longest document (89 inputs, up to ~4 bytes each) reaches the open-ended last bucket.
    assert sums["bucket_tokens"][3, -1] > 0 and sums["bucket_tokens"][2, 1:].sum() == 0


def test_target_losses_are_the_bucket_sums_target_by_target():
    stream = _sized_stream()
    eval_fn, variables, carry = _eval_setup(MODEL, carried=True)
    targets: list = []
    _, sums = segments.evaluate_stream(
        eval_fn,
        variables["params"],
        carry,
        document_eval_batches(stream, 4, 8, carried=True, byte_offsets=True),
        lambda batch: {k: jnp.asarray(v) for k, v in batch.items()},
        position_buckets=EDGES,
        target_losses=targets,
    )
    joined = {k: np.concatenate([t[k] for t in targets]) for k in targets[0]}
    assert joined["nll"].dtype == np.float32 and len(joined["nll"]) == stream.counted.sum()
    offsets, sizes = target_byte_offsets(stream)
    for d, (a, b) in enumerate(document_spans(stream)):
        mine = joined["document"] == d
        order = np.argsort(joined["offset"][mine])
        counted = stream.counted[a:b]
        np.testing.assert_array_equal(joined["offset"][mine][order], offsets[a:b][counted])
        np.testing.assert_array_equal(joined["bytes"][mine][order], sizes[a:b][counted])
        bucket = np.searchsorted(EDGES, joined["offset"][mine], side="right") - 1
        regrouped = np.bincount(bucket, weights=joined["nll"][mine], minlength=len(EDGES))
        np.testing.assert_allclose(regrouped, sums["bucket_nll"][d], rtol=1e-5)
    with pytest.raises(ValueError, match="position_buckets"):
        segments.evaluate_stream(
            eval_fn, variables["params"], carry, [], lambda batch: batch, target_losses=[]
        )


def test_bucket_boundaries_on_a_hand_made_document():
    # One document of 12 byte-level tokens: inputs 0..10 predict tokens 1..11 at offsets 1..11.
    stream = TokenStream(np.arange(12) % VOCAB, np.eye(12, dtype=bool)[0], np.ones(11, bool))

    def counting_fn(params, carry, batch):  # NLL 1 nat per target: the sums count targets
        weights = batch["weights"].astype(jnp.float32)
        per_row = {"nll": weights.sum(-1), "tokens": weights.sum(-1)}
        return per_row | {"position_nll": weights, "position_weights": weights}, carry

    _, sums = _by_position(counting_fn, None, None, stream, carried=True, edges=(0, 4, 8))
    # offsets 1-3 | 4-7 | 8-11: the boundary offset belongs to the bucket it starts
    np.testing.assert_array_equal(sums["bucket_tokens"], [[3, 4, 4]])
    np.testing.assert_array_equal(sums["bucket_nll"], [[3, 4, 4]])
    np.testing.assert_array_equal(sums["bucket_bytes"], [[3, 4, 4]])
    with pytest.raises(ValueError, match="byte_offsets=True"):
        segments.evaluate_stream(
            counting_fn,
            None,
            None,
            document_eval_batches(stream, 4, 8),
            lambda batch: batch,
            position_buckets=(0, 4),
        )


def test_reset_mode_scores_softmax_attention_from_the_initial_state():
    # A length-L model without segment recurrence (softmax attention: its state cannot be carried) reads
    # each document in segments of L, each from the initial state: its own view at its training length.
    model = models.LanguageModel(
        models.BackboneConfig(
            d_model=D,
            num_layers=1,
            vocab_size=VOCAB,
            pattern=("attention",),
            mixers={"attention": cells.Attention(num_heads=2, head_dim=D // 2, max_length=PAD)},
        )
    )
    stream, length = _sized_stream(), 8
    eval_fn, variables, carry = _eval_setup(model, carried=False)
    _, sums = _by_position(eval_fn, variables["params"], carry, stream, carried=False)
    expected = [
        sum(_score(model, variables, stream, s, min(s + length, b)) for s in range(a, b, length))
        for a, b in document_spans(stream)
    ]
    np.testing.assert_allclose(sums["nll"], expected, rtol=1e-5)
    np.testing.assert_allclose(sums["bucket_nll"].sum(-1), expected, rtol=1e-5)


def test_bpe_bucket_bytes_add_up_to_the_document_bytes(tmp_path):
    from seqjax.data import documents

    config = {"corpus": "gutenberg", "length": 64, "tokenizer": "bpe", "bpe_vocab_size": 512}
    data_dir = str(tmp_path / "data")
    texts = documents.make_sources(config | {"packing": "padded"}, data_dir)["test"]
    stream = texts.token_stream()
    tokenizer_bytes = stream.token_bytes
    spans = document_spans(stream)
    assert tokenizer_bytes.sum() == texts.num_bytes  # each token's decoded length: the text's bytes
    assert (tokenizer_bytes >= 1).all() and tokenizer_bytes.max() > 1

    def counting_fn(params, carry, batch):
        weights = batch["weights"].astype(jnp.float32)
        per_row = {"nll": weights.sum(-1), "tokens": weights.sum(-1)}
        return per_row | {"position_nll": weights, "position_weights": weights}, carry

    _, sums = segments.evaluate_stream(
        counting_fn,
        None,
        None,
        document_eval_batches(stream, 4, 64, carried=False, byte_offsets=True),
        lambda batch: batch,
        position_buckets=(0, 1024, 2048, 4096),
    )
    # "padded": a document's first token is no target, so its targets cover its bytes but the first token's.
    bounds = np.append(spans[:, 0], len(stream.tokens))
    document_bytes = np.array([tokenizer_bytes[a:b].sum() for a, b in itertools.pairwise(bounds)])
    np.testing.assert_array_equal(sums["bucket_bytes"].sum(-1), document_bytes - tokenizer_bytes[spans[:, 0]])
    np.testing.assert_array_equal(sums["bucket_tokens"].sum(-1), sums["tokens"])
    assert sums["bucket_bytes"].sum() < texts.num_bytes
    # "packed": every target counts; a document's last input predicts the next document's first token,
    # which sits at the document's byte length.
    packed = documents.make_sources(config | {"packing": "packed"}, data_dir)["test"].token_stream()
    offsets, _ = target_byte_offsets(packed)
    for a, b in document_spans(packed):
        assert offsets[b - 1] == packed.token_bytes[a:b].sum()
