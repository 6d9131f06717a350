"""seqjax.experiment.predictions: the saved per-example records round-trip, are written atomically and
are validated on reading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from seqjax.experiment import predictions as predictions_module
from seqjax.experiment.predictions import RunPredictions, read_predictions, stack_seeds, write_predictions
from seqjax.experiment.statistics import cluster_bootstrap


def _run(seed: int = 0, **changes) -> RunPredictions:
    rng = np.random.default_rng(seed if isinstance(seed, int) else 0)
    fields = dict(
        model="mamba",
        seed=seed,
        length=4096,
        example_ids=np.array([f"doc{i}" for i in range(6)]),
        cluster_ids=np.array(["a", "a", "b", "b", "c", "c"]),
        targets=rng.normal(size=(6, 3)),  # a forecast of 3 steps per example
        predictions=rng.normal(size=(6, 3)),
        losses=rng.exponential(size=6),
    )
    fields.update(changes)
    return RunPredictions(**fields)


def test_round_trip_keeps_every_field(tmp_path):
    run = _run()
    back = read_predictions(write_predictions(tmp_path / "runs" / "mamba-0-4096.npz", run))
    assert (back.model, back.seed, back.length) == ("mamba", 0, 4096)
    for field in ("example_ids", "cluster_ids", "targets", "predictions", "losses"):
        np.testing.assert_array_equal(getattr(back, field), getattr(run, field))
        assert getattr(back, field).dtype == getattr(run, field).dtype


def test_write_replaces_atomically_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    write_predictions(path, _run(seed=0))
    write_predictions(path, _run(seed=1))
    assert read_predictions(path).seed == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]

    def failing_savez(file, **fields):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(predictions_module.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        write_predictions(path, _run(seed=2))
    assert read_predictions(path).seed == 1  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_reader_rejects_other_versions_and_other_files(tmp_path):
    path = write_predictions(tmp_path / "run.npz", _run())
    with np.load(path) as archive:
        fields = dict(archive)
    np.savez(tmp_path / "future.npz", **{**fields, "format_version": np.int64(2)})
    with pytest.raises(ValueError, match="format version 2; this reader reads 1"):
        read_predictions(tmp_path / "future.npz")
    del fields["losses"]
    np.savez(tmp_path / "partial.npz", **fields)
    with pytest.raises(ValueError, match=r"lacks \['losses'\]"):
        read_predictions(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="no file"):
        read_predictions(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        write_predictions(tmp_path / "run.json", _run())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(model=""), "model must be a non-empty string"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(losses=np.array([1.0, np.nan, 1, 1, 1, 1])), "losses must be finite"),
        (dict(losses=np.zeros(0)), "losses must be a non-empty 1-D"),
        (dict(example_ids=np.arange(5)), r"example_ids has shape \(5,\)"),
        (dict(example_ids=np.zeros(6, dtype=int)), "example_ids must be unique"),
        (dict(cluster_ids=np.zeros(6)), "cluster_ids must hold integers or strings"),
        (dict(targets=np.zeros((5, 3))), "targets must be a numeric array with one row per example"),
        (dict(predictions=np.array(["x"] * 6)), "predictions must be a numeric array"),
    ],
)
def test_records_are_validated(changes, message):
    with pytest.raises(ValueError, match=message):
        _run(**changes)


def test_stack_seeds_feeds_the_bootstrap(tmp_path):
    runs = [
        read_predictions(write_predictions(tmp_path / f"{seed}.npz", _run(seed=seed))) for seed in range(3)
    ]
    # Seeds differ in losses and predictions, not in the examples they scored.
    runs = [dataclasses.replace(run, targets=runs[0].targets) for run in runs]
    losses, targets, cluster_ids = stack_seeds(runs)
    assert losses.shape == (3, 6) and targets.shape == (6, 3)
    result = cluster_bootstrap(losses, cluster_ids=cluster_ids, n_resamples=100)
    assert result.n_clusters == 3
    assert result.estimate == pytest.approx(np.mean([run.losses.mean() for run in runs]))
    assert stack_seeds(runs, field="predictions")[0].shape == (3, 6, 3)


def test_stack_seeds_refuses_runs_that_do_not_line_up():
    run = _run(seed=0)
    with pytest.raises(ValueError, match="runs is empty"):
        stack_seeds([])
    with pytest.raises(ValueError, match="other example_ids"):
        stack_seeds([run, dataclasses.replace(run, seed=1, example_ids=run.example_ids[::-1])])
    with pytest.raises(ValueError, match="mix model/length"):
        stack_seeds([run, dataclasses.replace(run, seed=1, length=128)])
    with pytest.raises(ValueError, match="repeat"):
        stack_seeds([run, run])
    with pytest.raises(ValueError, match="field must be"):
        stack_seeds([run], field="targets")
