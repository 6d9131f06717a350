"""Carrying finished runs between machines without checkpoints (`seqjax.experiment.carry_over`): what a
pack holds and leaves out, refusals that write nothing, and a real protocol run whose chosen-rate test
evaluation, after pack and unpack into a fresh workdir with no checkpoint, equals the evaluation from
its checkpoint."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqjax.config import apply_overrides, load_config_file
from seqjax.experiment import carry_over, protocol
from seqjax.experiment.predictions import RunPredictions, read_predictions, stack_seeds, write_predictions
from seqjax.experiment.report import forecast_errors, metric_interval
from tests.train_subprocess import refusal_line

ROOT = Path(__file__).resolve().parents[1]


def _workdir(root: Path) -> Path:
    """A workdir as the drivers leave it: settings, predictions, a finished run (record, metrics,
    kept test outputs, checkpoint, lock, context_use's scores by position and its per-byte loss cache), an
    unfinished run (metrics and checkpoint only), the JAX cache and TensorBoard events."""
    work = root / "work"
    done = work / "lstm" / "lr0.001" / "seed0"
    running = work / "lstm" / "lr0.003" / "seed0"
    for folder in (done / "checkpoints" / "2", running / "checkpoints" / "1", work / ".jax_cache"):
        folder.mkdir(parents=True)
    (work / "settings.json").write_text('{"train_tokens": 1}')
    (work / "predictions" / "lstm").mkdir(parents=True)
    (work / "predictions" / "lstm" / "seed1.npz").write_bytes(b"npz")
    (done / "run.json").write_text('{"model": "lstm"}')
    (done / "metrics.jsonl").write_text('{"step": 2}\n')
    (done / protocol.FINAL_TEST_PREDICTIONS).write_bytes(b"kept")
    (done / "checkpoints" / "2" / "params").write_bytes(b"0" * 1000)
    (done / ".lock").write_text("")
    (done / "events.out.tfevents.1.host").write_bytes(b"tb")
    (done / "positions_reset.npz").write_bytes(b"sums")
    (done / "byte_losses_reset.npz").write_bytes(b"0" * 1000)
    (running / "metrics.jsonl").write_text('{"step": 1}\n')
    diverged = work / "lstm" / "lr0.1" / "seed0"
    (diverged / "checkpoints").mkdir(parents=True)
    (diverged / "metrics.jsonl").write_text('{"step": 1}\n')
    (diverged / "diverged.json").write_text('{"error": "loss nan at step 1"}')
    (running / "checkpoints" / "1" / "params").write_bytes(b"0" * 1000)
    (work / ".jax_cache" / "jit_step-cache").write_bytes(b"x")
    return work


def test_pack_keeps_finished_runs_small_files_and_leaves_out_the_rest(tmp_path):
    work = _workdir(tmp_path)
    manifest = carry_over.pack(work, tmp_path / "pack")
    assert sorted(manifest["files"]) == [
        "lstm/lr0.001/seed0/final_test_predictions.npz",
        "lstm/lr0.001/seed0/metrics.jsonl",
        "lstm/lr0.001/seed0/positions_reset.npz",
        "lstm/lr0.001/seed0/run.json",
        "lstm/lr0.1/seed0/diverged.json",
        "lstm/lr0.1/seed0/metrics.jsonl",
        "predictions/lstm/seed1.npz",
        "settings.json",
    ]
    assert manifest["finished_runs"] == 2  # a diverged run is finished: it is never retried
    assert manifest["unfinished_runs_left_out"] == ["lstm/lr0.003/seed0"]
    on_disk = sorted(
        str(p.relative_to(tmp_path / "pack")) for p in (tmp_path / "pack").rglob("*") if p.is_file()
    )
    assert on_disk == sorted([*manifest["files"], carry_over.MANIFEST])
    # a second pack replaces the first whole (a run finished in between is added)
    (work / "lstm" / "lr0.003" / "seed0" / "run.json").write_text("{}")
    again = carry_over.pack(work, tmp_path / "pack")
    assert again["finished_runs"] == 3 and again["unfinished_runs_left_out"] == []
    assert not list(tmp_path.glob("pack.*"))  # no staging or previous copy left behind


def test_pack_with_unfinished_carries_their_last_checkpoint_and_kept_evaluation(tmp_path):
    """`unfinished=True` (the end of a session): an unfinished run with a checkpoint comes with its last
    one (not the older, not a temporary one) and its evaluation kept so far, less lock and partial files;
    one without a checkpoint is still left out; finished runs are carried as without it."""
    work = _workdir(tmp_path)
    running = work / "lstm" / "lr0.003" / "seed0"
    (running / "checkpoints" / "3" / "state").mkdir(parents=True)
    (running / "checkpoints" / "3" / "state" / "d").write_bytes(b"3" * 100)
    (running / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir()  # a save cut short
    (running / "checkpoints" / "4.orbax-checkpoint-tmp-1" / "d").write_bytes(b"4")
    (running / "final_evaluation").mkdir()
    (running / "final_evaluation" / "validation.npz").write_bytes(b"so far")
    (running / "final_evaluation" / "test.npz.partial").write_bytes(b"half")
    (running / ".lock").write_text("")
    fresh = work / "lstm" / "lr0.01" / "seed0"  # started, nothing saved yet
    fresh.mkdir(parents=True)
    (fresh / "metrics.jsonl").write_text('{"step": 1}\n')
    plain = carry_over.pack(work, tmp_path / "plain")
    manifest = carry_over.pack(work, tmp_path / "pack", unfinished=True)
    assert manifest["unfinished_runs_carried"] == ["lstm/lr0.003/seed0"]
    assert manifest["unfinished_runs_left_out"] == ["lstm/lr0.01/seed0"]
    added = sorted(set(manifest["files"]) - set(plain["files"]))
    assert added == [
        "lstm/lr0.003/seed0/checkpoints/3/state/d",
        "lstm/lr0.003/seed0/final_evaluation/validation.npz",
        "lstm/lr0.003/seed0/metrics.jsonl",
    ]
    assert manifest["finished_runs"] == plain["finished_runs"] == 2
    # one over the size limit (a forecaster's evaluation so far can be hundreds of MB) only starts again
    small = carry_over.pack(work, tmp_path / "small", unfinished=True, max_file_bytes=50)
    assert small["unfinished_runs_carried"] == [] and small["files"] == plain["files"]
    assert small["unfinished_runs_left_out"] == ["lstm/lr0.003/seed0", "lstm/lr0.01/seed0"]


def test_pack_refusals_write_nothing(tmp_path):
    work = _workdir(tmp_path)
    (work / "lstm" / "lr0.001" / "seed0" / "huge.npz").write_bytes(b"0" * 5000)
    with pytest.raises(ValueError, match=r"1 file\(s\) over 4,000 bytes .*seed0/huge\.npz \(5,000 bytes\)"):
        carry_over.pack(work, tmp_path / "pack", max_file_bytes=4000)
    assert not (tmp_path / "pack").exists() and not list(tmp_path.glob("pack.*"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not an earlier pack"):
        carry_over.pack(work, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(FileNotFoundError, match="no workdir"):
        carry_over.pack(tmp_path / "missing", tmp_path / "pack")


def test_unpack_copies_keeps_identical_and_refuses_different_files(tmp_path):
    work = _workdir(tmp_path)
    carry_over.pack(work, tmp_path / "pack")
    fresh = tmp_path / "fresh"
    assert carry_over.unpack(tmp_path / "pack", fresh) == {"copied": 8, "kept": 0}
    assert (fresh / "lstm" / "lr0.001" / "seed0" / "run.json").read_text() == '{"model": "lstm"}'
    assert not (fresh / "lstm" / "lr0.001" / "seed0" / "checkpoints").exists()
    assert carry_over.unpack(tmp_path / "pack", fresh) == {"copied": 0, "kept": 8}
    (fresh / "settings.json").write_text('{"train_tokens": 2}')  # newer results under the same name
    (fresh / "predictions" / "lstm" / "seed1.npz").unlink()
    with pytest.raises(ValueError, match=r"settings.json exists and differs"):
        carry_over.unpack(tmp_path / "pack", fresh)
    assert not (fresh / "predictions" / "lstm" / "seed1.npz").exists()  # nothing copied
    (tmp_path / "pack" / "settings.json").write_text("tampered")
    with pytest.raises(ValueError, match="does not match its sha256"):
        carry_over.unpack(tmp_path / "pack", tmp_path / "third")
    with pytest.raises(ValueError, match="is not a pack"):
        carry_over.unpack(work, tmp_path / "fourth")


def _forecast_run(seed: int, rng: np.random.Generator) -> RunPredictions:
    """A forecaster's test outputs as the protocol saves them: [windows, horizon, variables]."""
    targets = rng.normal(size=(40, 24, 3)).astype(np.float32)
    predictions = (targets + rng.normal(scale=0.5 + seed, size=targets.shape)).astype(np.float32)
    losses = ((predictions.astype(np.float64) - targets) ** 2).mean(axis=(1, 2))
    return RunPredictions("lstm", seed, 96, np.arange(40), np.arange(40) // 8, targets, predictions, losses)


def test_forecasts_are_carried_as_their_errors_with_the_same_statistics(tmp_path):
    rng = np.random.default_rng(0)
    work = tmp_path / "work"
    full = [
        write_predictions(work / "predictions" / "lstm" / f"seed{s}.npz", _forecast_run(s, rng))
        for s in (0, 1)
    ]
    labels = RunPredictions(
        "enc",
        0,
        96,
        np.arange(4),
        np.arange(4),
        np.array([0, 1, 1, 0]),
        np.zeros((4, 2), np.float32),
        np.ones(4),
    )  # classification: carried as it is
    write_predictions(work / "predictions" / "enc" / "seed0.npz", labels)
    manifest = carry_over.pack(work, tmp_path / "pack")
    assert manifest["reduced_forecasts"] == ["predictions/lstm/seed0.npz", "predictions/lstm/seed1.npz"]
    carried = [tmp_path / "pack" / "predictions" / "lstm" / f"seed{s}.npz" for s in (0, 1)]
    assert all(c.stat().st_size * 5 < f.stat().st_size for c, f in zip(carried, full, strict=True))
    assert (tmp_path / "pack" / "predictions" / "enc" / "seed0.npz").read_bytes() == (
        work / "predictions" / "enc" / "seed0.npz"
    ).read_bytes()
    for error in ("mse", "mae"):  # the same per-example errors, ids and clusters, so the same intervals
        before, after = forecast_errors(full, error), forecast_errors(carried, error)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-15)
        mixed = forecast_errors([full[0], carried[1]], error)  # a resumed experiment holds both kinds
        np.testing.assert_allclose(mixed[0], before[0], rtol=1e-15)
        intervals = [
            metric_interval(paths, "forecast", metric=error, n_resamples=200) for paths in (full, carried)
        ]
        assert intervals[0].estimate == pytest.approx(intervals[1].estimate, rel=1e-12)
        assert (intervals[0].low, intervals[0].high) == pytest.approx((intervals[1].low, intervals[1].high))
    with pytest.raises(ValueError, match="hold per-example errors, not predictions"):
        stack_seeds([read_predictions(c) for c in carried], "predictions")
    # unpacking into the workdir that still has the full forecasts keeps them; a fresh one gets the errors
    assert carry_over.unpack(tmp_path / "pack", work) == {"copied": 0, "kept": 3}
    assert read_predictions(full[0]).predictions.shape == (40, 24, 3)
    assert carry_over.unpack(tmp_path / "pack", tmp_path / "fresh")["copied"] == 3
    # packed again from there (a resumed experiment), the manifest still names the reduced files
    again = carry_over.pack(tmp_path / "fresh", tmp_path / "pack2")
    assert again["reduced_forecasts"] == manifest["reduced_forecasts"]
    # a full file that is not the one the pack's errors came from is still refused
    write_predictions(full[1], _forecast_run(1, rng))
    with pytest.raises(ValueError, match="differs from the pack"):
        carry_over.unpack(tmp_path / "pack", work)


def test_a_grid_run_carried_without_checkpoints_gives_its_checkpoints_test_evaluation(tmp_path, monkeypatch):
    """A real grid run (no test reported): it keeps its test outputs, unreported. Packed and unpacked
    into a fresh workdir (no checkpoint), it is read back, not retrained, and its test evaluation as the
    chosen run equals the one made from its checkpoint in the original workdir."""
    from seqjax.train import trainer

    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=256")
    config = apply_overrides(
        config, ["model.d_model=8", "model.num_layers=1", "batch_size=8", "tensorboard=False"]
    )
    settings = protocol.ProtocolSettings(train_tokens=8 * 256 * 2, evaluation_examples=24)
    kwargs = {"length": 256, "tokens_per_batch": 8 * 256}
    folder = Path("lstm") / "lr0.003" / "seed0"
    record = protocol.train_run("lstm", config, settings, 3e-3, 0, tmp_path / "work" / folder, **kwargs)
    assert record.test is None and record.final_test is not None and record.steps == 2
    assert (tmp_path / "work" / folder / protocol.FINAL_TEST_PREDICTIONS).exists()

    manifest = carry_over.pack(tmp_path / "work", tmp_path / "pack")
    assert manifest["finished_runs"] == 1 and not any("checkpoints" in f for f in manifest["files"])
    # The reference: the same run evaluated on test from its checkpoint (as records without kept
    # outputs are), in the original workdir after packing.
    old_style = dataclasses.replace(record, final_test=None)
    from_checkpoint = protocol.evaluate_on_test(
        "lstm", config, settings, old_style, tmp_path / "from_checkpoint.npz", **kwargs
    )
    carry_over.unpack(tmp_path / "pack", tmp_path / "fresh")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a carried run was trained again"))
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: pytest.fail("no checkpoint to evaluate"))
    carried = protocol.train_run("lstm", config, settings, 3e-3, 0, tmp_path / "fresh" / folder, **kwargs)
    assert carried.workdir == str(tmp_path / "fresh" / folder)  # the record follows its folder
    chosen = protocol.evaluate_on_test("lstm", config, settings, carried, tmp_path / "carried.npz", **kwargs)
    assert chosen.test == pytest.approx(from_checkpoint.test, rel=1e-6)
    want, got = read_predictions(tmp_path / "from_checkpoint.npz"), read_predictions(tmp_path / "carried.npz")
    np.testing.assert_array_equal(got.example_ids, want.example_ids)
    np.testing.assert_allclose(got.predictions, want.predictions, rtol=1e-5, atol=1e-6)
    saved = json.loads((tmp_path / "fresh" / folder / "run.json").read_text())
    assert saved["test"] == chosen.test  # reported now that it is the chosen run


def test_a_grid_run_already_beaten_reads_no_test_split_and_the_chosen_one_needs_no_checkpoint(
    tmp_path, monkeypatch
):
    """Real grid runs, their validation scores set per rate over the trainer's result: a run that an
    earlier run of the grid beats on validation reads no test split (the trainer evaluates validation
    alone) and keeps no test outputs; the others keep them, evaluated from their checkpoint, equal to a
    final evaluation of both splits inside training. Carried without checkpoints, the chosen run needs
    nothing more; the beaten run, asked for its test, is refused with the fix."""
    from seqjax.train import trainer

    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=256")
    config = apply_overrides(
        config, ["model.d_model=8", "model.num_layers=1", "batch_size=8", "tensorboard=False"]
    )
    settings = protocol.ProtocolSettings(
        train_tokens=8 * 256 * 2, evaluation_examples=24, learning_rates=(1e-3, 3e-3, 1e-2), grid_extensions=0
    )
    kwargs = {"length": 256, "tokens_per_batch": 8 * 256}
    # 3e-3 finishes behind 1e-3: beaten; 1e-2 finishes ahead of both and is chosen
    score = {1e-3: 0.6, 3e-3: 0.5, 1e-2: 0.7}
    real_train, splits = trainer.train, {}

    def train(run_config, workdir, **options):
        result = real_train(run_config, workdir, **options)
        rate = float(run_config.optimizer.learning_rate)
        splits[rate] = options["final_splits"]
        result["final"]["validation"]["metrics"]["balanced_accuracy"] = score[rate]
        return result

    monkeypatch.setattr(trainer, "train", train)
    grid, chosen = protocol.tune_learning_rate("lstm", config, settings, tmp_path / "work" / "lstm", **kwargs)
    assert chosen.learning_rate == 1e-2 and set(splits.values()) == {("validation",)}
    kept = {r.learning_rate: r.final_test is not None for r in grid}
    assert kept == {1e-3: True, 3e-3: False, 1e-2: True}
    for r in grid:
        assert (Path(r.workdir) / protocol.FINAL_TEST_PREDICTIONS).exists() == kept[r.learning_rate]
        assert r.test is None  # nothing reported before the choice
        assert r.final_eval_seconds > 0  # the evaluation's own time, apart from the training's

    # The reference: the chosen run trained again with both splits read at its end, inside training.
    inside = protocol.train_run(
        "lstm",
        config,
        settings,
        1e-2,
        0,
        tmp_path / "inside",
        predictions_path=tmp_path / "inside.npz",
        **kwargs,
    )
    assert splits[1e-2] == ("validation", "test")
    assert chosen.final_test == pytest.approx(inside.test, rel=1e-6)

    carry_over.pack(tmp_path / "work", tmp_path / "pack")
    carry_over.unpack(tmp_path / "pack", tmp_path / "fresh")
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a carried run was trained again"))
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: pytest.fail("no checkpoint to evaluate"))
    grid, chosen = protocol.tune_learning_rate(
        "lstm", config, settings, tmp_path / "fresh" / "lstm", **kwargs
    )
    reported = protocol.evaluate_on_test("lstm", config, settings, chosen, tmp_path / "chosen.npz", **kwargs)
    assert reported.test == chosen.final_test
    want, got = read_predictions(tmp_path / "inside.npz"), read_predictions(tmp_path / "chosen.npz")
    np.testing.assert_array_equal(got.example_ids, want.example_ids)
    np.testing.assert_allclose(got.predictions, want.predictions, rtol=1e-5, atol=1e-6)
    beaten = next(r for r in grid if r.learning_rate == 3e-3)
    with pytest.raises(
        FileNotFoundError, match="keeps neither its test outputs nor the checkpoint"
    ) as refused:
        protocol.evaluate_on_test("lstm", config, settings, beaten, tmp_path / "beaten.npz", **kwargs)
    assert "Remove its run.json" in str(refused.value) and not (tmp_path / "beaten.npz").exists()


def test_the_script_packs_and_unpacks(tmp_path):
    work = _workdir(tmp_path)
    script = str(ROOT / "scripts" / "carry_runs.py")
    done = subprocess.run(
        [sys.executable, script, "pack", f"--workdir={work}", f"--to={tmp_path / 'pack'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["finished_runs"] == 2
    done = subprocess.run(
        [sys.executable, script, "unpack", f"--from={tmp_path / 'pack'}", f"--workdir={tmp_path / 'fresh'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["copied"] == 8
    bad = subprocess.run(
        [sys.executable, script, "pack", f"--workdir={work}"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "pack needs --to" in bad.stderr
    # a refusal of carry_over's (here: no such workdir) is one line and exit status 2, nothing written
    line = refusal_line(
        "scripts/carry_runs.py", "pack", f"--workdir={tmp_path / 'nowhere'}", f"--to={tmp_path / 'pack2'}"
    )
    assert line == (
        f"scripts/carry_runs.py: carry_over.pack: no workdir {tmp_path / 'nowhere'}; pass the experiment's "
        "--workdir."
    )
    assert not (tmp_path / "pack2").exists()
