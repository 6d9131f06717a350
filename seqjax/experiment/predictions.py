"""Saved per-example predictions of one run (issue 15, item 5): every statistic can be recomputed from
them without retraining.

One file per run (model, seed, sequence length): a numpy .npz (no pickle) holding

    format_version  int, `FORMAT_VERSION`; the reader refuses other versions
    model           str
    seed, length    int
    example_ids     [n] int or str, unique: the test example, the same ids in the same order in every run
    cluster_ids     [n] int or str: the unit of independence (genome block, document, time block)
    targets         [n, ...] numeric
    predictions     [n, ...] numeric (a label, a forecast vector, ...)
    losses          [n] float, finite: the per-example loss
    reduced         str, optional: "" (the default, and files without the field) or "mae": a forecast
                    run whose forecasts were reduced to their per-example mean absolute error for
                    carrying (`reduce_forecasts`): then targets is zeros [n] and predictions that error

`write_predictions` writes a temporary file next to the target and renames it over the target, so a
reader sees the old file or the new one, never half a file. `read_predictions` checks every field.
`stack_seeds` lines up the runs of one model and length as the [seeds, examples] arrays the bootstrap
takes, after checking that they scored the same examples.

A forecaster's file holds [n, horizon, variables] forecasts and targets: 10 MB at 256 windows of 720
steps and 7 variables. The statistics of a forecast run use two per-example numbers only, the squared
error (`losses`) and the absolute error (`per_example_mae`), so `reduce_forecasts` keeps those and drops
the vectors: what an experiment carries in git between machines (`carry_over.pack`). A reduced run
gives the same MSE and MAE statistics; anything that needs the forecasts themselves refuses it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "RunPredictions",
    "per_example_mae",
    "read_predictions",
    "reduce_forecasts",
    "stack_seeds",
    "write_predictions",
]

FORMAT_VERSION = 1

#: `RunPredictions.reduced`: a full run, or forecasts reduced to their per-example absolute error.
_REDUCED = ("", "mae")

_FIELDS = frozenset(
    {
        "format_version",
        "model",
        "seed",
        "length",
        "example_ids",
        "cluster_ids",
        "targets",
        "predictions",
        "losses",
    }
)


def _check_ids(name: str, ids: np.ndarray, n: int) -> None:
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"RunPredictions: {name} has shape {ids.shape}; pass one id per example ({n}).")
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"RunPredictions: {name} must hold integers or strings, got dtype {ids.dtype}.")


@dataclass(frozen=True, eq=False)
class RunPredictions:
    """The per-example records of one run; the constructor validates them.

    >>> run = RunPredictions("lstm", 0, 1024, np.arange(3), np.array([0, 0, 1]), np.array([1, 0, 1]),
    ...                      np.array([1, 1, 1]), np.array([0.1, 2.3, 0.2]))
    >>> run.n_examples
    3
    """

    model: str
    seed: int
    length: int
    example_ids: np.ndarray
    cluster_ids: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    losses: np.ndarray
    reduced: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"RunPredictions: model must be a non-empty string, got {self.model!r}.")
        for name in ("seed", "length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"RunPredictions: {name} must be an integer, got {value!r}.")
        losses = np.asarray(self.losses)
        if losses.ndim != 1 or losses.shape[0] == 0:
            raise ValueError(
                f"RunPredictions: losses must be a non-empty 1-D array, got shape {losses.shape}."
            )
        if losses.dtype.kind != "f" or not np.all(np.isfinite(losses)):
            raise ValueError("RunPredictions: losses must be finite floats; drop or fix the bad examples.")
        n = losses.shape[0]
        _check_ids("example_ids", np.asarray(self.example_ids), n)
        _check_ids("cluster_ids", np.asarray(self.cluster_ids), n)
        if np.unique(self.example_ids).shape[0] != n:
            raise ValueError("RunPredictions: example_ids must be unique; each test example appears once.")
        for name in ("targets", "predictions"):
            array = np.asarray(getattr(self, name))
            if array.ndim == 0 or array.shape[0] != n or array.dtype.kind not in "biuf":
                raise ValueError(
                    f"RunPredictions: {name} must be a numeric array with one row per example ({n}), "
                    f"got shape {array.shape} and dtype {array.dtype}."
                )
        if self.reduced not in _REDUCED:
            raise ValueError(f"RunPredictions: reduced must be one of {_REDUCED}, got {self.reduced!r}.")
        if self.reduced and (np.asarray(self.predictions).shape != (n,) or np.any(np.asarray(self.targets))):
            raise ValueError(
                "RunPredictions: a reduced run holds one error per example in predictions and zero targets."
            )

    @property
    def n_examples(self) -> int:
        return int(np.asarray(self.losses).shape[0])


def write_predictions(path: str | os.PathLike, run: RunPredictions) -> Path:
    """Writes `run` to `path` (.npz) atomically: a temporary file in the same folder, then a rename.

    >>> import pathlib, tempfile
    >>> run = RunPredictions("lstm", 0, 64, np.arange(2), np.arange(2), np.zeros(2), np.zeros(2), np.ones(2))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     read_predictions(write_predictions(pathlib.Path(folder) / "lstm-0-64.npz", run)).model
    'lstm'
    """
    target = Path(path)
    if target.suffix != ".npz":
        raise ValueError(f"write_predictions: path must end in .npz, got {str(target)!r}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "format_version": np.int64(FORMAT_VERSION),
        "model": np.str_(run.model),
        "seed": np.int64(run.seed),
        "length": np.int64(run.length),
        "example_ids": np.asarray(run.example_ids),
        "cluster_ids": np.asarray(run.cluster_ids),
        "targets": np.asarray(run.targets),
        "predictions": np.asarray(run.predictions),
        "losses": np.asarray(run.losses),
    }
    if run.reduced:  # a full run's file keeps exactly the fields of format version 1
        fields["reduced"] = np.str_(run.reduced)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **fields)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_predictions(path: str | os.PathLike) -> RunPredictions:
    """Reads and validates a file written by `write_predictions` (see the module docstring for the format)."""
    source = Path(path)
    try:
        archive = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(
            f"read_predictions: no file {str(source)!r}; pass a path write_predictions wrote."
        ) from None
    with archive:
        missing = _FIELDS - set(archive.files)
        if missing:
            raise ValueError(
                f"read_predictions: {str(source)!r} lacks {sorted(missing)}; it is not a predictions file "
                f"of format version {FORMAT_VERSION}."
            )
        version = int(archive["format_version"])
        if version != FORMAT_VERSION:
            raise ValueError(
                f"read_predictions: {str(source)!r} has format version {version}; this reader reads "
                f"{FORMAT_VERSION} (rewrite the file with this version of seqjax)."
            )
        return RunPredictions(
            model=str(archive["model"]),
            seed=int(archive["seed"]),
            length=int(archive["length"]),
            example_ids=archive["example_ids"],
            cluster_ids=archive["cluster_ids"],
            targets=archive["targets"],
            predictions=archive["predictions"],
            losses=archive["losses"],
            reduced=str(archive["reduced"]) if "reduced" in archive.files else "",
        )


def stack_seeds(
    runs: Sequence[RunPredictions], field: Literal["losses", "predictions"] = "losses"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([seeds, examples, ...] `field`, targets, cluster_ids) of the runs of one model and length, for
    `statistics.cluster_bootstrap`; errors unless they scored the same examples in the same order.

    >>> runs = [RunPredictions("lstm", seed, 64, np.arange(2), np.arange(2), np.zeros(2), np.zeros(2),
    ...                        np.array([0.5, 1.5]) + seed) for seed in (0, 1)]
    >>> stack_seeds(runs)[0]
    array([[0.5, 1.5],
           [1.5, 2.5]])
    """
    if len(runs) == 0:
        raise ValueError("stack_seeds: runs is empty; pass the runs of one model and length, one per seed.")
    if field not in ("losses", "predictions"):
        raise ValueError(f"stack_seeds: field must be 'losses' or 'predictions', got {field!r}.")
    first = runs[0]
    for run in runs[1:]:
        if (run.model, run.length) != (first.model, first.length):
            raise ValueError(
                f"stack_seeds: runs mix model/length {(first.model, first.length)} and "
                f"{(run.model, run.length)}; pass the seeds of one model at one length."
            )
        for name in ("example_ids", "cluster_ids", "targets"):
            if not np.array_equal(getattr(run, name), getattr(first, name)):
                raise ValueError(
                    f"stack_seeds: seed {run.seed} has other {name} than seed {first.seed}; every seed "
                    "must score the same test examples in the same order."
                )
    reduced = [run.seed for run in runs if run.reduced]
    if field == "predictions" and reduced:
        raise ValueError(
            f"stack_seeds: seeds {reduced} of {first.model} hold per-example errors, not predictions "
            "(reduced for carrying, `reduce_forecasts`); their MSE and MAE are in "
            "`report.forecast_errors`. For the forecasts themselves, read the files of the run's own workdir."
        )
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"stack_seeds: seeds {seeds} repeat; pass each run once.")
    stacked = np.stack([np.asarray(getattr(run, field)) for run in runs])
    return stacked, np.asarray(first.targets), np.asarray(first.cluster_ids)


def per_example_mae(run: RunPredictions) -> np.ndarray:
    """float64[n]: each example's mean |forecast - target| over its horizon and variables (the reduced
    run's saved value for a reduced one).

    >>> run = RunPredictions("lstm", 0, 8, np.arange(2), np.arange(2), np.zeros((2, 3)),
    ...                      np.array([[1.0, -1.0, 1.0], [0.0, 0.0, 3.0]]), np.array([1.0, 3.0]))
    >>> per_example_mae(run).tolist(), per_example_mae(reduce_forecasts(run)).tolist()
    ([1.0, 1.0], [1.0, 1.0])
    """
    if run.reduced == "mae":
        return np.asarray(run.predictions, np.float64)
    predictions = np.asarray(run.predictions)
    if predictions.ndim < 2:
        raise ValueError(
            f"per_example_mae: {run.model} seed {run.seed} has predictions of shape {predictions.shape}; "
            "a forecast run has [n, horizon, ...] forecasts."
        )
    error = np.abs(predictions.astype(np.float64) - np.asarray(run.targets))
    return error.mean(axis=tuple(range(1, error.ndim)))


def reduce_forecasts(run: RunPredictions) -> RunPredictions:
    """`run` with its forecasts replaced by their per-example absolute error (`per_example_mae`) and its
    targets by zeros: the MSE (`losses`) and MAE statistics are unchanged, the file ~100x smaller."""
    if run.reduced:
        return run
    n = run.n_examples
    return RunPredictions(
        run.model,
        run.seed,
        run.length,
        run.example_ids,
        run.cluster_ids,
        np.zeros(n),
        per_example_mae(run),
        run.losses,
        reduced="mae",
    )
