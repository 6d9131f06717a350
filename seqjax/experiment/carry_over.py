"""Carry an experiment's finished runs from one machine (or session) to the next, without checkpoints.

A long experiment (tens of CPU hours) outlives the machine it started on. Its workdir holds, per run,
`run.json` (the record the tables are made from), `metrics.jsonl`, the run's test outputs
(`predictions/**.npz`, or `protocol.FINAL_TEST_PREDICTIONS` for a grid run) and `checkpoints/` (hundreds
of MB). Everything the protocol needs from a finished run is in the small files: the chosen rate's test
outputs are kept when the run finishes (`RunRecord.final_test`), so the checkpoint is needed only to
resume an unfinished run. So:

- `pack(workdir, destination)` copies the small files of every finished run (a folder with `run.json`,
  or `diverged.json` for a run kept as diverged)
  and the experiment's own files (`settings.json`, `predictions/`), with a forecaster's test outputs
  reduced to their per-example errors (`predictions.reduce_forecasts`: the same MSE and MAE statistics
  from ~1% of the bytes; 256 windows of 720 steps x 7 variables are 10 MB), and leaves out checkpoints,
  the JAX compilation cache, lock files, TensorBoard events, context_use's per-byte loss caches and
  every unfinished run's folder (it restarts from step 0 next time). It writes `CARRIED.json` (what
  came from where, and each file's sha256) and replaces `destination` only once the whole pack is
  written, so an interrupted pack loses nothing.
- `pack(..., unfinished=True)` (the end of a session, after the experiment was stopped with SIGTERM:
  its run saved its step, or its evaluation so far) carries each unfinished run that has a checkpoint
  too: its last checkpoint (a few MB at CPU size) and its kept evaluation progress
  (`seqjax.train.evaluation.SplitProgress`), so it resumes where it stopped instead of at step 0. Not
  for every pack: each carried checkpoint is a new blob in git.
- `unpack(source, workdir)` copies a pack into a workdir; rerunning the experiment's command there reads
  the finished runs back (their digests are checked as always) and trains only what is missing. A file
  already in the workdir is kept when identical (a full forecast file: when it reduces to the pack's)
  and refused when it differs, so newer results are never overwritten.

Experiments that re-read trained parameters after training (`context_use`, `segment_recurrence`,
`attention_attribution`, `kernel_attention`) need checkpoints and are not carried this way.

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     run = pathlib.Path(tmp, "work", "lstm", "lr0.001", "seed0")
    ...     (run / "checkpoints").mkdir(parents=True)
    ...     _ = (run / "run.json").write_text("{}")
    ...     _ = (run / "checkpoints" / "big").write_bytes(b"0" * 100)
    ...     report = pack(pathlib.Path(tmp, "work"), pathlib.Path(tmp, "pack"))
    ...     report["files"], report["finished_runs"]
    (['lstm/lr0.001/seed0/run.json'], 1)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.experiment.predictions import (
    RunPredictions,
    read_predictions,
    reduce_forecasts,
    write_predictions,
)

__all__ = ["MANIFEST", "MAX_FILE_BYTES", "pack", "unpack"]

MANIFEST = "CARRIED.json"
#: A file larger than this is not carried (a pack is committed to git): `pack` refuses, naming it.
MAX_FILE_BYTES = 8 * 2**20
_SKIPPED_DIRS = {"checkpoints", ".jax_cache", "__pycache__", "tensorboard"}
#: A run folder holding one of these is finished: its record, or the record of a run that diverged
#: (kept and judged by the experiments' diverged-run rules, never retried).
_FINISHED = {"run.json", "diverged.json"}


#: Caches that another experiment writes into a run's folder and can write again: context_use's per-byte
#: losses (`byte_losses_<mode>.npz`, ~2.5 MB a run; its per-bucket sums, `positions_<mode>.npz`, are kept).
_SKIPPED_PREFIXES = ("events.out.tfevents", "byte_losses_")


def _skipped_file(name: str) -> bool:
    return name in (".lock", MANIFEST) or name.endswith(".partial") or name.startswith(_SKIPPED_PREFIXES)


def _is_run_folder(folder: Path, names: list[str]) -> bool:
    return "run.json" in names or "metrics.jsonl" in names or (folder / "checkpoints").is_dir()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _forecast_run(path: Path) -> RunPredictions | None:
    """The run in `path` when it is a predictions file of full forecasts ([n, horizon, ...] predictions
    of the targets' shape), else None (any other file, or forecasts already reduced)."""
    if path.suffix != ".npz":
        return None
    try:
        run = read_predictions(path)
    except ValueError:  # not a predictions file (another cache of a run)
        return None
    predictions, targets = np.asarray(run.predictions), np.asarray(run.targets)
    shaped = predictions.ndim >= 2 and predictions.shape == targets.shape and predictions.dtype.kind == "f"
    if run.reduced or not shaped:
        return None
    # and its losses are the forecasts' squared errors (protocol.run_predictions), so nothing else is cut
    squared = ((predictions.astype(np.float64) - targets) ** 2).mean(axis=tuple(range(1, predictions.ndim)))
    return run if np.allclose(run.losses, squared, rtol=1e-6, atol=0) else None


def _same_run(a: RunPredictions, b: RunPredictions) -> bool:
    fields = ("model", "seed", "length", "example_ids", "cluster_ids", "targets", "predictions", "losses")
    return a.reduced == b.reduced and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


def _latest_checkpoint(run: Path) -> Path | None:
    """The run's newest finished checkpoint folder (`checkpoints/<step>`; Orbax writes a step under a
    temporary name and renames it when complete), or None."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return None
    steps = [int(d.name) for d in folder.iterdir() if d.name.isdigit() and d.is_dir()]
    return folder / str(max(steps)) if steps else None


def _unfinished_run_files(run: Path, checkpoint: Path) -> list[Path]:
    """Every file of an unfinished run's folder but the skipped ones, with one checkpoint: `checkpoint`."""
    files = []
    for folder, dirs, names in os.walk(run):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS - {"checkpoints"})
        if here == run / "checkpoints":
            dirs[:] = [checkpoint.name]
        files += [here / n for n in sorted(names) if not _skipped_file(n)]
    return files


def _carried_files(
    workdir: Path, unfinished_too: bool = False, max_file_bytes: int = MAX_FILE_BYTES
) -> tuple[list[Path], list[str], list[str]]:
    """(files to carry, relative to workdir; unfinished run folders left out; those carried). An
    unfinished run with a file over `max_file_bytes` (e.g. a forecaster's evaluation so far: 256 windows
    of 720 steps x 862 variables are 635 MB) is left out, not refused: it only starts again."""
    files, left_out, carried = [], [], []
    for folder, dirs, names in os.walk(workdir):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        if _is_run_folder(here, names) and not _FINISHED.intersection(names):
            dirs[:] = []
            checkpoint = _latest_checkpoint(here) if unfinished_too else None
            if checkpoint is None:
                left_out.append(str(here.relative_to(workdir)))
                continue
            run_files = _unfinished_run_files(here, checkpoint)
            if any(f.stat().st_size > max_file_bytes for f in run_files):
                left_out.append(str(here.relative_to(workdir)))
                continue
            carried.append(str(here.relative_to(workdir)))
            files += [f.relative_to(workdir) for f in run_files]
            continue
        files += [(here / n).relative_to(workdir) for n in sorted(names) if not _skipped_file(n)]
    return files, left_out, carried


def pack(
    workdir: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    unfinished: bool = False,
) -> dict[str, Any]:
    """Copies the finished runs of `workdir` to `destination` (module docstring); returns the manifest.
    With `unfinished`, also each unfinished run that has a checkpoint: its last one and its evaluation
    kept so far, so it resumes there.

    Raises FileNotFoundError for a missing workdir, ValueError for a file over `max_file_bytes` (nothing
    is written) and for a destination that is neither empty nor an earlier pack.
    """
    workdir, destination = Path(workdir), Path(destination)
    if not workdir.is_dir():
        raise FileNotFoundError(f"carry_over.pack: no workdir {workdir}; pass the experiment's --workdir.")
    if destination.exists() and any(destination.iterdir()) and not (destination / MANIFEST).exists():
        raise ValueError(
            f"carry_over.pack: {destination} exists and is not an earlier pack (no {MANIFEST}); choose an "
            "empty or new folder, e.g. experiments/runs/<experiment>_<size>."
        )
    files, left_out, carried = _carried_files(workdir, unfinished, max_file_bytes)
    forecasts = {f: run for f in files if (run := _forecast_run(workdir / f)) is not None}
    sizes = {f: (workdir / f).stat().st_size for f in files if f not in forecasts}
    large = [f"{f} ({size:,} bytes)" for f, size in sizes.items() if size > max_file_bytes]
    if large:
        raise ValueError(
            f"carry_over.pack: {len(large)} file(s) over {max_file_bytes:,} bytes would be carried: "
            f"{', '.join(large[:5])}. Delete them from {workdir} if they can be rebuilt, or raise "
            "max_file_bytes (--max_file_mib) knowing the pack is committed to git."
        )
    staging = destination.with_name(destination.name + ".packing")
    shutil.rmtree(staging, ignore_errors=True)
    for f in files:
        (staging / f).parent.mkdir(parents=True, exist_ok=True)
        if f in forecasts:
            write_predictions(staging / f, reduce_forecasts(forecasts[f]))
        else:
            shutil.copy2(workdir / f, staging / f)
    manifest = {
        "source": str(workdir.resolve()),
        "packed": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "finished_runs": sum(1 for f in files if f.name in _FINISHED),
        "unfinished_runs_left_out": left_out,
        "unfinished_runs_carried": carried,
        "files": [str(f) for f in files],
        # every carried file of per-example errors in place of forecasts: reduced now, or already in a
        # pack that was unpacked to resume the experiment and is packed again
        "reduced_forecasts": sorted(str(f) for f in files if f in forecasts or _already_reduced(workdir / f)),
        "sha256": {str(f): _sha256(staging / f) for f in files},
    }
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    # Swap in the new pack only now: an interrupted pack leaves the previous one whole.
    previous = destination.with_name(destination.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if destination.exists():
        os.replace(destination, previous)
    os.replace(staging, destination)
    shutil.rmtree(previous, ignore_errors=True)
    return manifest


def _already_reduced(path: Path) -> bool:
    """Whether `path` is a predictions file that holds reduced forecasts (`reduce_forecasts`)."""
    if path.suffix != ".npz":
        return False
    try:
        return bool(read_predictions(path).reduced)
    except ValueError:  # not a predictions file
        return False


def _reduces_to(full: Path, reduced: Path) -> bool:
    """Whether the workdir's file `full` holds the forecasts the pack's `reduced` was made from."""
    run = _forecast_run(full)
    return run is not None and _same_run(reduce_forecasts(run), read_predictions(reduced))


def unpack(source: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> dict[str, int]:
    """Copies the pack `source` into `workdir` (created if needed); returns {"copied": n, "kept": m}.

    Raises ValueError (before copying anything) when `source` is not a pack, when a file of the pack
    does not match its recorded sha256, or when `workdir` holds a different file under the same name.
    """
    source, workdir = Path(source), Path(workdir)
    manifest_path = source / MANIFEST
    if not manifest_path.exists():
        raise ValueError(
            f"carry_over.unpack: {source} is not a pack (no {MANIFEST}); make one with "
            "`python scripts/carry_runs.py pack --workdir=... --to=...`."
        )
    manifest = json.loads(manifest_path.read_text())
    plan, kept = [], 0
    for name in manifest["files"]:
        src, dst = source / name, workdir / name
        digest = _sha256(src)
        if digest != manifest["sha256"][name]:
            raise ValueError(f"carry_over.unpack: {src} does not match its sha256 in {manifest_path}.")
        if dst.exists():
            if _sha256(dst) != digest and not _reduces_to(dst, src):
                raise ValueError(
                    f"carry_over.unpack: {dst} exists and differs from the pack's {src}; nothing was "
                    "copied. Unpack into a new --workdir, or remove that run's folder to take the pack's."
                )
            kept += 1
            continue
        plan.append((src, dst))
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        partial = dst.with_name(dst.name + ".partial")
        shutil.copy2(src, partial)
        os.replace(partial, dst)
    return {"copied": len(plan), "kept": kept}
