"""A long evaluation stopped part-way resumes at its next batch (`seqjax.train.evaluation.SplitProgress`):
inside training (the final evaluation) and from a checkpoint (`trainer.evaluate(progress=...)`, the
protocol's test split), with outputs equal to an uninterrupted evaluation; an unfinished run packed with
`carry_over.pack(unfinished=True)` resumes in another folder; the training time and the time budget count
every resumed part of a run."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from seqjax.config import apply_overrides, load_config_file
from seqjax.experiment import carry_over, protocol
from seqjax.experiment.predictions import read_predictions
from seqjax.train import evaluation, preemption, trainer

ROOT = Path(__file__).resolve().parents[1]
LENGTH, BATCH, STEPS = 256, 8, 3
# 40 validation and 40 test examples in batches of 8: 5 evaluation batches per split
SETTINGS = protocol.ProtocolSettings(train_tokens=BATCH * LENGTH * STEPS, evaluation_examples=40)
RUN = {"length": LENGTH, "tokens_per_batch": BATCH * LENGTH}
FOLDER = Path("lstm") / "lr0.003" / "seed0"


def _config():
    config = load_config_file(ROOT / "configs/genomic.py", f"lstm,task=species,length={LENGTH}")
    overrides = ["model.d_model=8", "model.num_layers=1", f"batch_size={BATCH}", "eval_batch_size=8"]
    return apply_overrides(config, [*overrides, "tensorboard=False"])


def _stop_at(monkeypatch, calls: int) -> None:
    """SIGTERM as seen by the run at its `calls`-th stop check (one per training step, then one per
    evaluation batch), none before."""
    counter = itertools.count(1)
    monkeypatch.setattr(
        preemption.StopSignals, "stop_signal", lambda self: signal.SIGTERM if next(counter) == calls else 0
    )


def _signal_at_save(monkeypatch, calls: int) -> None:
    """A real SIGTERM to this process during the `calls`-th `SplitProgress.save` (one per evaluated
    batch): the evaluation sees it at its next stop check, after the next batch."""
    counter, real = itertools.count(1), evaluation.SplitProgress.save

    def save(self, *args, **kwargs):
        if next(counter) == calls:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(evaluation.SplitProgress, "save", save)


def _loads(monkeypatch) -> list[int]:
    """The batches done that every `SplitProgress.load` finds, in order."""
    found, real = [], evaluation.SplitProgress.load

    def load(self):
        done, collected = real(self)
        found.append(done)
        return done, collected

    monkeypatch.setattr(evaluation.SplitProgress, "load", load)
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(record, predictions path) of the run trained and evaluated in one go."""
    root = tmp_path_factory.mktemp("uninterrupted")
    record = protocol.train_run(
        "lstm", _config(), SETTINGS, 3e-3, 0, root / FOLDER, predictions_path=root / "test.npz", **RUN
    )
    assert record.steps == STEPS
    return record, root / "test.npz"


def test_final_evaluation_stopped_part_way_is_carried_and_resumes_where_it_stopped(
    tmp_path, monkeypatch, capsys, uninterrupted
):
    want, want_path = uninterrupted
    work, run = tmp_path / "work", tmp_path / "work" / FOLDER
    _signal_at_save(monkeypatch, 2)  # SIGTERM during the second validation batch: stops after the third
    with pytest.raises(protocol.RunInterrupted, match="resumes"):
        protocol.train_run(
            "lstm", _config(), SETTINGS, 3e-3, 0, run, predictions_path=tmp_path / "t.npz", **RUN
        )
    assert not (run / "run.json").exists() and not (tmp_path / "t.npz").exists()
    assert sorted(p.name for p in (run / "final_evaluation").iterdir()) == ["validation.npz"]

    # carried to another folder: the checkpoint of its last step and the evaluation so far
    left = carry_over.pack(work, tmp_path / "pack")
    assert left["unfinished_runs_left_out"] == [str(FOLDER)] and not left["files"]
    manifest = carry_over.pack(work, tmp_path / "pack", unfinished=True)
    assert manifest["unfinished_runs_carried"] == [str(FOLDER)] and manifest["finished_runs"] == 0
    carried = {Path(f).relative_to(FOLDER).parts[0] for f in manifest["files"]}
    assert carried == {"checkpoints", "final_evaluation", "metrics.jsonl"}
    assert all(f"checkpoints/{STEPS}/" in f for f in manifest["files"] if "checkpoints" in f)
    assert not any(f.endswith(".lock") for f in manifest["files"])
    carry_over.unpack(tmp_path / "pack", tmp_path / "fresh")

    monkeypatch.undo()
    found = _loads(monkeypatch)
    capsys.readouterr()
    fresh = tmp_path / "fresh" / FOLDER
    got = protocol.train_run(
        "lstm", _config(), SETTINGS, 3e-3, 0, fresh, predictions_path=tmp_path / "t.npz", **RUN
    )
    assert found == [3, 0]  # validation resumed after its 3 batches; test from its first
    out = capsys.readouterr().out
    assert f"already complete at step {STEPS}" in out and "Evaluating validation, test." in out, out
    assert got.steps == STEPS and got.workdir == str(fresh)
    assert got.validation == pytest.approx(want.validation, rel=1e-6)
    assert got.test == pytest.approx(want.test, rel=1e-6)
    a, b = read_predictions(want_path), read_predictions(tmp_path / "t.npz")
    np.testing.assert_array_equal(b.example_ids, a.example_ids)
    np.testing.assert_allclose(b.predictions, a.predictions, rtol=1e-6, atol=1e-7)
    assert not (fresh / "final_evaluation").exists()  # used, then removed with the record written
    # stopped in the test split, the finished validation split is not evaluated again
    again, run2 = tmp_path / "again" / FOLDER, tmp_path / "t2.npz"
    _signal_at_save(monkeypatch, 7)  # in test's 1st batch (validation: 5 saves, then its whole split)
    with pytest.raises(protocol.RunInterrupted, match="resumes"):
        protocol.train_run("lstm", _config(), SETTINGS, 3e-3, 0, again, predictions_path=run2, **RUN)
    monkeypatch.undo()
    found = _loads(monkeypatch)
    protocol.train_run("lstm", _config(), SETTINGS, 3e-3, 0, again, predictions_path=run2, **RUN)
    assert found == [5, 2]
    # nothing was trained here: the time reported is the training time saved with the checkpoint
    assert got.train_seconds > 0


def test_a_test_evaluation_from_the_checkpoint_stopped_part_way_resumes(tmp_path, monkeypatch, uninterrupted):
    record, want_path = uninterrupted
    old_style = dataclasses.replace(record, test=None, final_test=None)  # evaluated from its checkpoint
    kept = Path(record.workdir) / "test_evaluation" / "test.npz"
    _signal_at_save(monkeypatch, 2)
    with pytest.raises(protocol.RunInterrupted, match="stopped by signal 15 after 3 of 5 batches"):
        protocol.evaluate_on_test("lstm", _config(), SETTINGS, old_style, tmp_path / "t.npz", **RUN)
    assert kept.exists() and not (tmp_path / "t.npz").exists()
    monkeypatch.undo()
    found = _loads(monkeypatch)
    got = protocol.evaluate_on_test("lstm", _config(), SETTINGS, old_style, tmp_path / "t.npz", **RUN)
    assert found == [3] and not kept.exists()
    assert got.test == pytest.approx(record.test, rel=1e-6)
    np.testing.assert_allclose(
        read_predictions(tmp_path / "t.npz").predictions, read_predictions(want_path).predictions, rtol=1e-6
    )


def test_a_grid_run_stopped_in_its_test_split_does_not_evaluate_validation_again(
    tmp_path, monkeypatch, uninterrupted
):
    # A grid run (`keep_test`): validation in training, then the test split from its checkpoint.
    want, _ = uninterrupted
    run = tmp_path / FOLDER

    def grid_run():
        return protocol._train_once(
            "lstm", _config(), SETTINGS, 3e-3, 0, BATCH * LENGTH, run, LENGTH, None, print,
            keep_test=lambda record: True,
        )  # fmt: skip

    _signal_at_save(monkeypatch, 8)  # validation: 5 saves and its whole split; test: stops after 3
    with pytest.raises(protocol.RunInterrupted, match="test split's evaluation stopped"):
        grid_run()
    assert sorted(p.name for p in (run / "final_evaluation").iterdir()) == ["validation.npz"]
    assert (run / "test_evaluation" / "test.npz").exists()
    monkeypatch.undo()
    found = _loads(monkeypatch)
    got = grid_run()
    assert found == [5, 3]  # validation whole from its file, test resumed after its 3 batches
    assert got.validation == pytest.approx(want.validation, rel=1e-6)
    assert got.final_test == pytest.approx(want.test, rel=1e-6)
    assert not (run / "final_evaluation").exists() and not (run / "test_evaluation").exists()


def test_a_progress_file_of_another_evaluation_or_unreadable_is_not_read(tmp_path):
    path = tmp_path / "validation.npz"
    evaluation.SplitProgress(path, {"step": 3}).save(2, {"logits": [np.ones((4, 2))]}, force=True)
    assert evaluation.SplitProgress(path, {"step": 3}).load()[0] == 2
    assert evaluation.SplitProgress(path, {"step": 4}).load() == (0, {})
    path.write_bytes(b"not an npz")
    assert evaluation.SplitProgress(path, {"step": 3}).load() == (0, {})
    # throttled: no write before save_every_seconds unless forced
    slow = evaluation.SplitProgress(tmp_path / "slow.npz", {"step": 3}, save_every_seconds=3600)
    slow.save(1, {"logits": [np.ones((4, 2))]})
    assert not (tmp_path / "slow.npz").exists()


def test_the_time_budget_counts_every_resumed_part_of_a_run(tmp_path, monkeypatch, capsys):
    overrides = ["total_steps=4", "checkpoint.every=100", "checkpoint.async_save=False"]
    config = apply_overrides(_config(), overrides)
    _stop_at(monkeypatch, 2)  # SIGTERM after step 2: saved at step 2 with the time of step 2 (1 is compiling)
    first = trainer.train(config, str(tmp_path))
    assert first["preempted"] and first["step"] == 2 and first["train_seconds"] > 0
    monkeypatch.undo()
    spent = apply_overrides(config.copy_and_resolve_references(), ["max_train_seconds=1e-9"])
    resumed = trainer.train(spent, str(tmp_path))
    assert resumed["step"] == 2 and not resumed["preempted"]  # nothing trained: the budget was spent
    assert "max_train_seconds=1e-09 was spent by step 2" in capsys.readouterr().out
    assert resumed["train_seconds"] == pytest.approx(first["train_seconds"])
    done = trainer.train(config, str(tmp_path))
    assert done["step"] == 4 and done["train_seconds"] > first["train_seconds"]
