"""The training loop end to end (in process, synthetic data): a run checkpointed on 8 devices resumes on 4
devices of another mesh shape and ends where the uninterrupted 8-device run ends; bf16 compute keeps f32
parameters; remat changes memory, not values; TensorBoard event files carry the logged scalars."""

from __future__ import annotations

import glob
import struct

import jax
import numpy as np
import pytest

from configs import synthetic
from seqjax.train.trainer import train

TOTAL = 12


def _config(**model):
    config = synthetic.get_config("lstm,length=24")
    config.total_steps = TOTAL
    config.batch_size = 8
    config.model.d_model = 16
    config.log_every = 4
    config.eval_every = 0
    config.checkpoint.every = 6
    config.checkpoint.async_save = False
    # A constant rate: a run cut short at step 6 follows the same schedule as the whole run.
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    for k, v in model.items():
        setattr(config.model, k, v)
    return config


def _mesh(config, shape, axes, devices):
    config.mesh.shape = shape
    config.mesh.axes = axes
    config.mesh.num_devices = devices
    return config


def _params(result):
    return [np.asarray(x) for x in jax.tree.leaves(result["state"].params)]


def test_resume_on_another_mesh_equals_uninterrupted(tmp_path):
    whole = train(_mesh(_config(), (4, 2), ("data", "model"), 8), str(tmp_path / "whole"))
    first = _mesh(_config(), (4, 2), ("data", "model"), 8)
    first.total_steps = 6
    train(first, str(tmp_path / "moved"))
    # Same workdir, 4 devices as 2 x 2 (data x fsdp): the checkpoint is resharded on restore.
    resumed = train(
        _mesh(_config(), (2, 2), ("data", "fsdp"), 4),
        str(tmp_path / "moved"),
        allow_config_change=["total_steps"],
    )
    assert resumed["step"] == whole["step"] == TOTAL
    for a, b in zip(_params(resumed), _params(whole), strict=True):
        # Other meshes sum in another order: float32 round-off only.
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    assert resumed["state"].params["backbone"]["blocks_0"]["mixer"]["cell"]["w_ih"].sharding.mesh.size == 4


def _scalars(workdir):
    """(tag, step, value) of every scalar in the run's TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*"):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.append((value.tag, event.step, value.simple_value))
    return out


def test_bf16_compute_keeps_f32_params_and_remat_keeps_values(tmp_path):
    plain = train(_config(), str(tmp_path / "plain"))
    remat = train(_config(remat="full"), str(tmp_path / "remat"))
    assert remat["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], rel=1e-5)
    bf16 = train(_config(dtype="bfloat16"), str(tmp_path / "bf16"))
    assert all(x.dtype == np.float32 for x in _params(bf16))
    assert np.isfinite(bf16["metrics"]["loss"])
    assert bf16["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], rel=0.05)
    scalars = _scalars(tmp_path / "plain")
    losses = {step: v for tag, step, v in scalars if tag == "train/loss"}
    assert sorted(losses) == [4, 8, 12]
    assert losses[12] == pytest.approx(plain["metrics"]["loss"], rel=1e-6)


def test_a_finished_run_rerun_says_it_is_complete_with_its_last_loss(tmp_path, capsys):
    """Before: re-running a finished run printed `done: step 12, loss nan` (no step was trained)."""
    config = _config()
    first = train(config, str(tmp_path))
    capsys.readouterr()
    again = train(_config(), str(tmp_path))
    out = capsys.readouterr().out
    assert again["already_complete"] and not first["already_complete"]
    assert f"the run is already complete at step {TOTAL} of total_steps={TOTAL}" in out, out
    assert "compiling the train step" not in out
    assert again["metrics"]["loss"] == pytest.approx(first["metrics"]["loss"])


def test_progress_shows_the_time_budgets_end_and_says_when_it_compiles(tmp_path, capsys):
    """With max_train_seconds ending the run long before total_steps, the progress line shows the
    budget's end (not `step 30/100000`); compiling is announced once for training and once for eval."""
    config = _config()
    config.total_steps = 100_000
    config.optimizer.total_steps = 100_000
    config.max_train_seconds = 0.5
    config.log_every = 5
    config.eval_every = 100_000  # one evaluation: when the budget runs out
    config.eval_examples = 16
    result = train(config, str(tmp_path))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert result["step"] < 100_000
    progress = [line for line in lines if line.startswith("step ")]
    timed = [line for line in progress if "steps/s" in line and " nan steps/s" not in line]
    assert timed and all("/100000 " not in line for line in timed), progress
    assert all("max_train_seconds 0.5: " in line and " s left" in line for line in timed), timed
    assert lines.count("compiling evaluation...") == 1
    compiling = [i for i, line in enumerate(lines) if line.startswith("compiling the train step")]
    assert len(compiling) == 1 and compiling[0] < lines.index(progress[0])
    first_eval = next(i for i, line in enumerate(lines) if line.startswith("eval step"))
    assert lines.index("compiling evaluation...") < first_eval
