"""Synthetic memory probes: deterministic by index, answers recoverable from the inputs, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqjax.data.synthetic import BLANK, GO, SyntheticTask


def _solve(task: SyntheticTask, ex: dict[str, np.ndarray]) -> np.ndarray:
    """An oracle that reads the answer from the inputs alone, as a perfect memory would."""
    inputs = ex["inputs"]
    predictions = np.full(task.length, BLANK)
    if task.task == "associative_recall":
        k = task.num_symbols
        table = dict(zip(inputs[0 : 2 * k : 2].tolist(), inputs[1 : 2 * k : 2].tolist(), strict=True))
        for t in range(task.length - 2 * task.num_queries, task.length, 2):
            predictions[t] = table[int(inputs[t])]
        return predictions
    go = int(np.flatnonzero(inputs == GO)[-1])
    remembered = inputs[:go][inputs[:go] != BLANK]
    predictions[go : go + len(remembered)] = remembered
    return predictions


@pytest.mark.parametrize("name", ["copy", "selective_copy", "associative_recall"])
@pytest.mark.parametrize("length", [24, 257])
def test_examples_are_answerable_and_deterministic(name, length):
    task = SyntheticTask(name, length=length, num_symbols=5, vocab_size=12, num_queries=3, seed=7)
    for index in (0, 1, 12345):
        ex = task[index]
        assert {k: v.shape for k, v in ex.items()} == {k: (length,) for k in ("inputs", "targets", "weights")}
        assert ex["inputs"].dtype == np.int32 and ex["weights"].dtype == np.float32
        weighted = ex["weights"] > 0
        assert weighted.sum() == (3 if name == "associative_recall" else 5)
        np.testing.assert_array_equal(_solve(task, ex)[weighted], ex["targets"][weighted])
        assert ex["targets"][weighted].min() >= 2 and ex["inputs"].max() < 12
        # the same (seed, index) gives the same example; another seed does not
        np.testing.assert_array_equal(task[index]["inputs"], ex["inputs"])
    other = SyntheticTask(name, length=length, num_symbols=5, vocab_size=12, num_queries=3, seed=8)
    assert not np.array_equal(other[0]["inputs"], task[0]["inputs"])


def test_copy_delay_grows_with_length():
    short, long = (
        SyntheticTask("copy", length=20, num_symbols=4),
        SyntheticTask("copy", length=200, num_symbols=4),
    )
    # The symbols are at the start and recalled at the end: the gap is the length minus the payload.
    assert int(np.flatnonzero(short[0]["inputs"] == GO)[0]) == 15
    assert int(np.flatnonzero(long[0]["inputs"] == GO)[0]) == 195


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="task must be one of"):
        SyntheticTask("reverse", length=10)
    with pytest.raises(ValueError, match=r"too short .* at least 17"):
        SyntheticTask("copy", length=10, num_symbols=8)
    with pytest.raises(ValueError, match="distinct keys need vocab_size >= 12"):
        SyntheticTask("associative_recall", length=64, num_symbols=10, vocab_size=8)
    with pytest.raises(IndexError):
        SyntheticTask("copy", length=40, size=5)[5]


@pytest.mark.parametrize("delay", [0, 7, 40])
def test_copy_delay_is_the_gap_between_symbols_and_go(delay):
    task = SyntheticTask("copy", length=64, num_symbols=4, vocab_size=10, delay=delay, seed=3)
    for index in (0, 5):
        ex = task[index]
        go = int(np.flatnonzero(ex["inputs"] == GO)[0])
        symbols = np.flatnonzero(ex["inputs"][:go] != BLANK)
        # 4 symbols in a row, then exactly `delay` blanks, then GO; the answer stays at the end
        assert go == 64 - 4 - 1
        np.testing.assert_array_equal(symbols, np.arange(go - delay - 4, go - delay))
        weighted = ex["weights"] > 0
        np.testing.assert_array_equal(_solve(task, ex)[weighted], ex["targets"][weighted])
    # without a delay the symbols start the sequence: the old examples, unchanged
    full = SyntheticTask("copy", length=64, num_symbols=4, vocab_size=10, seed=3)
    same = SyntheticTask("copy", length=64, num_symbols=4, vocab_size=10, seed=3, delay=64 - 2 * 4 - 1)
    np.testing.assert_array_equal(full[2]["inputs"], same[2]["inputs"])


def test_bad_delays_are_named():
    with pytest.raises(ValueError, match="delay is for task 'copy' only"):
        SyntheticTask("selective_copy", length=64, delay=5)
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        SyntheticTask("copy", length=64, delay=-1)
    with pytest.raises(ValueError, match=r"too short .* at least 27"):
        SyntheticTask("copy", length=20, num_symbols=8, delay=10)


def test_config_delay_reaches_the_data():
    from seqjax.config import load_config_file
    from seqjax.train.trainer import build_sources

    root = Path(__file__).resolve().parents[1]
    config = load_config_file(root / "configs" / "synthetic.py", "lstm,task=copy,length=40,delay=3")
    ex = build_sources(config.data)["test"][0]
    go = int(np.flatnonzero(ex["inputs"] == GO)[0])
    assert go == 40 - 8 - 1 and np.all(ex["inputs"][go - 3 : go] == BLANK) and ex["inputs"][go - 4] != BLANK
