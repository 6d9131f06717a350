"""Sequence parallelism through the trainer: a `sequence` mesh axis splits the time axis of every batch
and every cell (`seqjax.scan.sequence_parallel`).

- An S5 model trained on a data x sequence mesh (2 x 4) gives the losses, eval metrics and parameters of
  the same run on a data-parallel mesh (8), in float32 within rtol 1e-5 (measured: 1.5e-7 on the
  losses).
- Mamba and exact-attention models train the same 2 steps split 4 ways as whole (rtol 1e-5).
- A checkpoint saved with the time axis split 4 ways restores onto a 2-way split and continues the
  unsplit run's trajectory (the parameters do not depend on the split).
- A model with an LSTM layer, or a length the split does not divide, is refused at preflight / set-up
  (before anything compiles), naming the layer, the reason, the alternatives and the config key.
- Two processes x 4 CPU devices (gloo) with the sequence axis (8) spanning both processes train the
  losses of one process with 8 devices on the same mesh (`slow`: subprocess runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import documents, synthetic
from seqjax.train.preflight import check_before_work
from seqjax.train.run_config import ConfigError, resolve
from seqjax.train.trainer import setup, train
from tests.test_train_multiprocess import _env, _finish, _launch

TOTAL = 4
RTOL = 1e-5  # float32; the split runs measure ~1e-7 (a few ulps of reassociated sums)


def _config(shape, axes, preset="s5", length=24, **overrides):
    config = synthetic.get_config(f"{preset},length={length}")
    config.total_steps = TOTAL
    config.batch_size = 8
    config.model.d_model = 16
    config.log_every = 1
    config.eval_every = TOTAL
    config.eval_examples = 16
    config.checkpoint.every = 2
    config.checkpoint.async_save = False
    config.optimizer.schedule = "constant"  # a run cut at step 2 follows the same schedule
    config.optimizer.warmup_steps = 0
    config.mesh.shape = shape
    config.mesh.axes = axes
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _records(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["split"] == split]


def _losses(workdir):
    return np.asarray([r["loss"] for r in _records(workdir, "train")])


def _params(result):
    return [np.asarray(x) for x in jax.tree.leaves(result["state"].params)]


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory):
    """The reference: 4 steps of S5 on 8 data-parallel devices, time whole."""
    workdir = str(tmp_path_factory.mktemp("unsplit"))
    return workdir, train(_config((8,), ("data",)), workdir)


def test_setup_splits_time_over_the_sequence_axis():
    parts = setup(_config((2, 4), ("data", "sequence")))
    assert parts["sequence_axis"] == "sequence"
    assert parts["batch_shardings"]["inputs"].spec == P("data", "sequence")
    assert {cell.sequence_axis for cell in parts["model"].config.layer_cells()} == {"sequence"}
    plain = setup(_config((8,), ("data",)))
    assert plain["sequence_axis"] is None and plain["batch_shardings"]["inputs"].spec == P("data", None)
    assert {cell.sequence_axis for cell in plain["model"].config.layer_cells()} == {None}


def test_sequence_split_matches_unsplit(unsplit, tmp_path):
    reference, whole = unsplit
    split = train(_config((2, 4), ("data", "sequence")), str(tmp_path))
    expected, got = _losses(reference), _losses(str(tmp_path))
    assert len(got) == TOTAL
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    (eval_expected,), (eval_got,) = _records(reference, "eval"), _records(str(tmp_path), "eval")
    assert eval_got["tokens"] == eval_expected["tokens"] > 0
    np.testing.assert_allclose(eval_got["loss"], eval_expected["loss"], rtol=RTOL)
    for a, b in zip(_params(split), _params(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("preset", ["mamba", "attention"])
def test_each_engine_trains_the_same_split_four_ways(preset, tmp_path):
    # Mamba: the selective scan and its convolution's halo; attention: exact causal attention over the
    # split keys and values (the engines' own tests cover every cell family split 2, 4 and 8 ways).
    whole = train(_config((8,), ("data",), preset=preset, total_steps=2), str(tmp_path / "whole"))
    split = train(
        _config((2, 4), ("data", "sequence"), preset=preset, total_steps=2), str(tmp_path / "split")
    )
    expected, got = _losses(str(tmp_path / "whole")), _losses(str(tmp_path / "split"))
    assert len(got) == 2
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    for a, b in zip(_params(split), _params(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)


def test_checkpoint_restores_onto_another_sequence_split(unsplit, tmp_path):
    reference, whole = unsplit
    workdir = str(tmp_path)
    first = _config((2, 4), ("data", "sequence"), total_steps=2)
    train(first, workdir)
    # The same workdir on a 4 x 2 mesh: the time axis split 2 ways instead of 4 (mesh keys are
    # operational: no allow_config_change for them).
    resumed = train(_config((4, 2), ("data", "sequence")), workdir, allow_config_change=["total_steps"])
    assert resumed["step"] == TOTAL
    np.testing.assert_allclose(_losses(workdir), _losses(reference), rtol=RTOL)
    for a, b in zip(_params(resumed), _params(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)


def test_lstm_is_refused_before_any_work():
    run = resolve(_config((4, 2), ("data", "sequence"), preset="lstm"))
    with pytest.raises(ConfigError) as err:
        check_before_work(run, jax.devices())
    message = str(err.value)
    for part in (
        "config.mesh.shape",
        "2 ways",
        "layer 0 (blocks_0, mixer 'lstm') uses LSTM",
        "nonlinear recurrence",
        "truncated BPTT",
        "data parallelism",
        "S5",
        "Or set the 'sequence' axis to 1",
    ):
        assert part in message, message
    with pytest.raises(ConfigError, match="nonlinear recurrence"):
        setup(_config((4, 2), ("data", "sequence"), preset="lstm"))
    # A sequence axis of size 1 splits nothing: the LSTM is fine.
    check_before_work(resolve(_config((8, 1), ("data", "sequence"), preset="lstm")), jax.devices())


def test_length_the_split_does_not_divide_is_refused():
    with pytest.raises(ConfigError, match=r"splits the time axis 8 ways .* sequence length 28") as err:
        setup(_config((8,), ("sequence",), length=28))
    assert "config.mesh.shape" in str(err.value) and "[1, 2, 4, 7, 14, 28]" in str(err.value)


@pytest.mark.slow
def test_two_processes_with_the_sequence_axis_across_them_match_one(tmp_path):
    """2 processes x 4 devices, mesh (sequence=8): each process holds half of every sequence's tokens
    (both load the same rows); one process with 8 devices on the same mesh trains the same losses."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def command(workdir):
        return [
            sys.executable,
            os.path.join(root, "scripts", "train.py"),
            "--config=" + os.path.join(root, "configs", "synthetic.py") + ":s5,length=24",
            f"--workdir={workdir}",
            f"--config.total_steps={TOTAL}",
            "--config.batch_size=8",
            "--config.model.d_model=16",
            "--config.log_every=1",
            f"--config.eval_every={TOTAL}",
            "--config.eval_examples=16",
            f"--config.checkpoint.every={TOTAL}",
            "--config.optimizer.warmup_steps=0",
            "--config.mesh.shape=(8,)",
            "--config.mesh.axes=('sequence',)",
        ]

    single = str(tmp_path / "single")
    out = subprocess.run(command(single), env=_env(8), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    multi = str(tmp_path / "multi")
    procs = _launch(command(multi), devices=4)
    outputs = _finish(procs, timeout=300)
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    assert f"done: step {TOTAL}" in outputs[0]
    expected, got = _losses(single), _losses(multi)
    assert len(got) == TOTAL
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    (eval_expected,), (eval_got,) = _records(single, "eval"), _records(multi, "eval")
    assert eval_got["tokens"] == eval_expected["tokens"] > 0  # each row counted once, not once per process
    np.testing.assert_allclose(eval_got["loss"], eval_expected["loss"], rtol=RTOL)


def test_transformer_xl_segment_recurrence_split_four_ways_matches_whole(tmp_path):
    """The xl_attention documents preset with segment recurrence: every batch attends the memory carried
    from the previous one. With time split 4 ways the memory is a replicated prefix of every shard's
    keys (`KVPrefix`); the losses, the carried memory and the parameters equal the unsplit run's."""
    runs = {}
    for name, shape, axes in (("whole", (8,), ("data",)), ("split", (2, 4), ("data", "sequence"))):
        config = documents.get_config("xl_attention,length=32")
        config.segment_recurrence = True
        config.total_steps, config.batch_size, config.eval_batch_size = 3, 8, 8
        config.model.d_model, config.model.num_layers = 8, 1
        config.log_every, config.eval_every, config.tensorboard = 1, 0, False
        config.checkpoint.every, config.checkpoint.async_save = 3, False
        config.optimizer.schedule, config.optimizer.warmup_steps = "constant", 0
        config.mesh.shape, config.mesh.axes = shape, axes
        config.data_dir = str(tmp_path / "data")
        runs[name] = (train(config, str(tmp_path / name)), _losses(str(tmp_path / name)))
    (whole, expected), (split, got) = runs["whole"], runs["split"]
    assert len(got) == 3
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    memory = split["state"].carry[0]
    assert np.abs(np.asarray(memory.k)).max() > 0  # a memory was carried (and attended at steps 2, 3)
    for a, b in zip(
        jax.tree.leaves(split["state"].carry), jax.tree.leaves(whole["state"].carry), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=1e-6)
    for a, b in zip(_params(split), _params(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)
