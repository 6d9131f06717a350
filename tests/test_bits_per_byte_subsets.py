"""Bits per byte divides by the bytes of the targets actually scored, not by tokens x the split's average
bytes per token, which is exact only for a whole split (a subset of examples, or a document's first
tokens, can be much shorter or longer than the average).

- BPE, end to end (`trainer.train` and `trainer.evaluate`): the training evaluation on `eval_examples`,
  the final evaluation on `final_examples`, `evaluate(examples=...)` and `evaluate(by_document=True,
  max_document_tokens=...)` give total NLL / ln 2 / the bytes of their counted targets, counted here
  independently (the tokenizer's decoded bytes of each target); the whole split, per sequence and in
  carried lanes, does too, within 1e-3 of the old average-based value.
- Byte-level: one byte per token, so the numbers are exactly the old ones (`collect_split`,
  `document_eval_batches`, `evaluate_stream`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from configs import documents as documents_config
from seqjax.data import documents
from seqjax.data import metrics as metrics_lib
from seqjax.data.documents.builder import prepare_builder, read_split_documents
from seqjax.data.documents.catalog import resolve_config
from seqjax.data.documents.tokenizers import bpe_tokenizer
from seqjax.data.pipeline import eval_batches, spread_indices
from seqjax.data.stream import TokenStream, counted_target_bytes, document_eval_batches, document_spans
from seqjax.train import segments
from seqjax.train.evaluation import collect_split, split_metrics
from seqjax.train.metrics_log import read_records
from seqjax.train.trainer import evaluate, train

LENGTH, SUBSET, BOUND = 64, 5, 24


def _config(data_dir: str):
    config = documents_config.get_config(f"gla,length={LENGTH},tokenizer=bpe,corpus=python_docs")
    config.data.bpe_vocab_size = 512
    config.model.vocab_size = 512
    config.model.d_model = 16
    config.model.num_layers = 1
    config.total_steps = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.eval_every = 2
    config.eval_examples = SUBSET
    config.log_every = 100
    config.checkpoint.every = 2
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.optimizer.warmup_steps = 1
    config.data_dir = data_dir
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step BPE run (evaluated on SUBSET validation examples, finally on SUBSET of each split), its
    sources and an independent byte count: the tokenizer's decoded bytes of token ids."""
    root = tmp_path_factory.mktemp("bpe_bits")
    data_dir, workdir = str(root / "data"), str(root / "run")
    config = _config(data_dir)
    result = train(config, workdir, final_splits=("validation",), final_examples=SUBSET)
    options = resolve_config({k: v for k, v in config.data.to_dict().items() if k != "shuffle"})
    splits = read_split_documents(prepare_builder(options, data_dir))
    tokenizer = bpe_tokenizer(options, data_dir, splits["train"])
    sources = documents.make_sources(options, data_dir)
    return {
        "config": config,
        "workdir": workdir,
        "result": result,
        "validation": sources["validation"],
        "decoded_bytes": lambda ids: len(tokenizer.decode([int(i) for i in ids])),
    }


def _example_bytes(run, indices) -> list[int]:
    """The decoded bytes of each example's counted targets."""
    source = run["validation"]
    return [run["decoded_bytes"](source[int(i)]["targets"][source[int(i)]["weights"] > 0]) for i in indices]


def _bits(nll_nats: float, num_bytes: float) -> float:
    return nll_nats / math.log(2.0) / num_bytes


def test_bpe_subsets_divide_by_their_targets_bytes(run):
    source = run["validation"]
    assert source.tokenizer_name == "bpe" and source.bytes_per_token > 1.5
    indices = spread_indices(len(source), SUBSET)
    exact = sum(_example_bytes(run, indices))
    # the training evaluation on `eval_examples`
    record = next(r for r in read_records(run["workdir"]) if r["split"] == "eval")
    assert record["bits_per_byte"] == pytest.approx(_bits(record["loss"] * record["tokens"], exact), rel=1e-5)
    # the old conversion was off on this subset: the test would have caught it
    assert record["tokens"] * source.bytes_per_token != pytest.approx(exact, rel=1e-2)
    # the final evaluation on `final_examples`, per example too
    final = run["result"]["final"]["validation"]
    np.testing.assert_array_equal(final["indices"], indices)
    np.testing.assert_array_equal(final["per_example"]["bytes"], _example_bytes(run, indices))
    nll = float(final["per_example"]["nll"].sum())
    assert final["metrics"]["bits_per_byte"] == pytest.approx(_bits(nll, exact), rel=1e-6)
    # `evaluate(examples=...)` from the checkpoint: the same examples, the same number
    evaluated = evaluate(
        run["config"], run["workdir"], "validation", "latest", per_example=True, examples=SUBSET
    )
    np.testing.assert_array_equal(evaluated["per_example"]["bytes"], final["per_example"]["bytes"])
    assert evaluated["metrics"]["bits_per_byte"] == pytest.approx(final["metrics"]["bits_per_byte"], rel=1e-6)


@pytest.mark.parametrize("carried", [False, True], ids=["reset", "carried"])
def test_bpe_max_document_tokens_divides_by_the_first_tokens_bytes(run, carried):
    config, workdir = run["config"], run["workdir"]
    stream = run["validation"].token_stream()
    result = evaluate(
        config,
        workdir,
        "validation",
        "latest",
        by_document=True,
        carried_state=carried,
        max_document_tokens=BOUND,
    )
    # the targets of each document's first BOUND inputs, where they count
    exact = []
    for start, stop in document_spans(stream):
        inputs = np.arange(start, min(stop, start + BOUND))
        exact.append(run["decoded_bytes"](stream.tokens[inputs[stream.counted[inputs]] + 1]))
    np.testing.assert_array_equal(result["per_document"]["bytes"], exact)
    nll = float(result["per_document"]["nll"].sum())
    assert result["metrics"]["bits_per_byte"] == pytest.approx(_bits(nll, sum(exact)), rel=1e-6)
    tokens = result["metrics"]["tokens"]
    # a document's first tokens are short (a licence line, a heading): the split's average was far off
    assert tokens * run["validation"].bytes_per_token != pytest.approx(sum(exact), rel=0.05)


def test_bpe_whole_split_is_exact_and_close_to_the_old_value(run):
    config, workdir, source = run["config"], run["workdir"], run["validation"]
    stream = source.token_stream()
    counted = np.flatnonzero(stream.counted) + 1  # every counted target of the split, once
    exact = run["decoded_bytes"](stream.tokens[counted])
    assert exact == counted_target_bytes(stream).sum()
    config.eval_examples = None  # the whole split
    plain = evaluate(config, workdir, "validation", "latest", per_example=True)
    lanes = evaluate(config, workdir, "validation", "latest", carried_state=True)
    assert plain["per_example"]["bytes"].sum() == exact
    for result in (plain, lanes):
        metrics = result["metrics"]
        nll = metrics["loss"] * metrics["tokens"]
        assert metrics["bits_per_byte"] == pytest.approx(_bits(nll, exact), rel=1e-5)
        # the average's value: off only by the excluded first token(s) against the average
        old = metrics_lib.lm_metrics(nll, metrics["tokens"], metrics["tokens"] * source.bytes_per_token)
        assert metrics["bits_per_byte"] == pytest.approx(old["bits_per_byte"], rel=1e-3)


# -- byte-level: exactly the old numbers ------------------------------------------------------------------


def _byte_level(tmp_path):
    return documents.make_sources(
        {"corpus": "python_docs", "length": LENGTH, "max_examples_per_split": 7}, str(tmp_path / "data")
    )["validation"]


def _fake_eval_fn(params, batch):
    """Per-example outputs as the LM's evaluation step gives them (summed NLL, counted tokens)."""
    weights = np.asarray(batch["weights"], np.float32)
    nll = weights * (0.3 + (np.asarray(batch["targets"]) % 7) * np.float32(0.11))
    return {"nll": nll.sum(-1), "tokens": weights.sum(-1)}


def test_byte_level_per_sequence_numbers_are_unchanged(tmp_path):
    source = _byte_level(tmp_path)
    assert source.tokenizer_name == "bytes" and (source.token_byte_lengths == 1).all()
    data = collect_split(
        _fake_eval_fn, None, eval_batches(source, 4), "lm", lambda h: h, token_bytes=source.token_byte_lengths
    )
    np.testing.assert_array_equal(data["bytes"], data["tokens"])
    old = split_metrics({k: v for k, v in data.items() if k != "bytes"}, "lm", bytes_per_token=1.0)
    assert split_metrics(data, "lm") == old  # bitwise


def test_byte_level_document_numbers_are_unchanged(tmp_path):
    stream = _byte_level(tmp_path).token_stream()
    assert stream.token_bytes is not None and (stream.token_bytes == 1).all()
    plain = stream._replace(token_bytes=None)  # None: one byte per token, as a bare TokenStream
    np.testing.assert_array_equal(counted_target_bytes(stream), stream.counted.astype(np.float64))
    np.testing.assert_array_equal(counted_target_bytes(plain), counted_target_bytes(stream))

    def counting_fn(params, carry, batch):
        weights = batch["weights"].astype(jnp.float32)
        return {"nll": (weights * 0.7).sum(-1), "tokens": weights.sum(-1)}, carry

    for bound in (None, 5):
        batches = list(document_eval_batches(plain, 4, 8, carried=False, max_document_tokens=bound))
        for b in batches:  # every global row: its counted targets, one byte each
            np.testing.assert_array_equal(b["counted_bytes"], b["weights"].sum(-1))
        metrics, sums = segments.evaluate_stream(counting_fn, None, None, batches, lambda b: b)
        np.testing.assert_array_equal(sums["bytes"], sums["tokens"])
        old = segments.stream_metrics({"nll": sums["nll"], "tokens": sums["tokens"]})
        assert metrics == old  # bitwise


def test_counted_bytes_follow_bpe_token_lengths_and_counting():
    # two documents, "padded": a document's first token is no target; tokens of 2, 1, 3 | 1, 2, 2 bytes
    stream = TokenStream(
        np.arange(6),
        np.array([1, 0, 0, 1, 0, 0], bool),
        np.array([1, 1, 0, 1, 1], bool),
        np.array([2, 1, 3, 1, 2, 2]),
    )
    np.testing.assert_array_equal(counted_target_bytes(stream), [1, 3, 0, 2, 2])
    (batch,) = document_eval_batches(stream, 2, 4)
    np.testing.assert_array_equal(batch["document"], [0, 1])
    np.testing.assert_array_equal(batch["counted_bytes"], [4, 4])  # 1 + 3 (and the uncounted 1); 2 + 2
    (bounded,) = document_eval_batches(stream, 2, 4, max_document_tokens=1)
    np.testing.assert_array_equal(bounded["counted_bytes"], [1, 2])
