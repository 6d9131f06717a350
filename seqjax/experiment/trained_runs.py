"""Scoring the trained runs of another experiment: the drivers that analyse trained models without
training them again (`experiments/attention_attribution.py`, `experiments/kernel_attention.py`).

Such a driver reads the runs named by `--runs`, or the seeds of the rate a length sweep chose
(`--reuse_runs=<its workdir>`, `<workdir>/L<--length>/<--preset>/`), or trains `--preset` here on the
protocol; restores each run's last checkpoint with its own saved config; scores every run on the same
`--examples` test windows, spread evenly over the test split; and caches each run's scores in
`<--workdir>/scores/`, so an interrupted driver resumes. What a run's scores are is the driver's own
`score(run, indices, **settings)`.

    >>> scored = score_trained_runs(FLAGS, score_run, {"window_batch": 8}, root=ROOT,
    ...                             driver="kernel_attention", chosen=chosen_runs)  # doctest: +SKIP
    >>> len(scored.scores) == len(scored.runs), scored.indices.shape  # doctest: +SKIP
    (True, (128,))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from seqjax.experiment.flags import (
    data_record,
    driver_settings,
    prepare_workdir,
    preset_configs,
    protocol_record,
)

__all__ = [
    "ScoredRuns",
    "cached_scores",
    "restore_run",
    "runs_to_read",
    "score_trained_runs",
    "train_preset_runs",
]

#: (`trainer.setup`'s parts of a run's own saved config, its last checkpoint's parameters, the step).
RestoredRun = tuple[dict[str, Any], Any, int]
#: A driver's scoring of one run: score(run, indices, **settings) -> {name: array}, with "seconds".
Score = Callable[..., dict[str, np.ndarray]]


def restore_run(run: Path, *, check: Callable[[Path, Any], None] | None = None) -> RestoredRun:
    """(`trainer.setup`'s parts of the run's own saved config, its last checkpoint's parameters, the
    step). `check(run, config)` sees the saved config before the checkpoint is read, and raises to refuse
    a run the driver cannot analyse.

        >>> run = Path("runs/crossover_lm/L1024/attention/lr0.01/seed0")
        >>> parts, params, step = restore_run(run)  # doctest: +SKIP
        >>> parts["config"].task, step  # doctest: +SKIP
        ('lm', 60)
    """
    import jax

    from seqjax.train.checkpoint import Checkpoints
    from seqjax.train.trainer import load_config, setup

    parts = setup(load_config(str(run)))
    config = parts["config"]
    if check is not None:
        check(run, config)
    checkpoints = Checkpoints(
        str(run / "checkpoints"),
        best_metric=config.checkpoint.best_metric,
        best_mode=config.checkpoint.best_mode,
        async_save=False,
    )
    try:
        step = checkpoints.latest_step()
        restored = checkpoints.restore(parts["abstract_state"], step=step)
    finally:
        checkpoints.close()
    return parts, jax.tree.map(jax.numpy.asarray, restored.state.params), int(step)


def train_preset_runs(registry: flags.FlagValues, workdir: Path, *, root: Path) -> list[Path]:
    """--preset trained in `workdir` on the protocol at --length (--size=smoke: tiny), from --config
    (relative to `root`) with --options and --config_overrides: its chosen rate's seed folders.

        >>> train_preset_runs(FLAGS, Path("/tmp/seqjax_kernel_attention"), root=ROOT)  # doctest: +SKIP
        [PosixPath('/tmp/seqjax_kernel_attention/L64/attention/lr0.003/seed0'), ...]
    """
    from seqjax.experiment.protocol import run_comparison

    config = preset_configs(
        root / registry.config,
        [registry.preset],
        length=registry.length,
        tokens_per_batch=registry.tokens_per_batch,
        size=registry.size,
        options=registry.options,
        overrides=registry.config_overrides,
    )[registry.preset]
    settings = driver_settings(registry)
    prepare_workdir(
        workdir,
        protocol_record(
            registry,
            settings,
            config=registry.config,
            options=registry.options,
            **data_record(registry.config),
        ),
        fresh=False,
    )
    result = run_comparison(
        {registry.preset: config}, settings, workdir / f"L{registry.length}", length=registry.length
    )
    return [Path(r.workdir) for r in result[registry.preset].seeds]


def runs_to_read(
    registry: flags.FlagValues,
    workdir: Path,
    *,
    root: Path,
    chosen: Callable[[Path], list[Path]],
) -> list[Path]:
    """The run folders to score: --runs when given; else, with --reuse_runs, `chosen(<folder>)` of that
    sweep's --preset folder at --length (the seeds of the rate it chose); else `train_preset_runs`.

        >>> runs_to_read(FLAGS, workdir, root=ROOT, chosen=kernel_attention.chosen_runs)  # doctest: +SKIP
        [PosixPath('runs/crossover_lm/L1024/attention/lr0.01/seed0'), ...]
    """
    if registry.runs:
        return [Path(r) for r in registry.runs]
    if registry.reuse_runs:
        from seqjax.experiment.sweep import finished_models_at

        folder = finished_models_at(registry.reuse_runs, registry.length, [registry.preset])
        return chosen(folder / registry.preset)
    return train_preset_runs(registry, workdir, root=root)


def cached_scores(
    score: Score, workdir: Path, run: Path, indices: np.ndarray, /, **settings: Any
) -> dict[str, np.ndarray]:
    """`score(run, indices, **settings)`, cached in `<workdir>/scores/<digest>.npz` (the digest of the run
    folder, its last checkpoint, the windows and the settings: anything else scores again). The cache is
    written atomically, so an interrupted run leaves no partial file behind.

        >>> scores = cached_scores(score_run, workdir, run, indices, window_batch=8)  # doctest: +SKIP
    """
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    key = json.dumps(
        {"run": str(run.resolve()), "step": steps[-1], "windows": indices.tolist(), **settings},
        sort_keys=True,
    )
    path = workdir / "scores" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as saved:
            return {name: saved[name] for name in saved.files}
    scores = score(run, indices, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npz")
    np.savez(partial, **scores)
    os.replace(partial, path)
    return scores


@dataclasses.dataclass(frozen=True)
class ScoredRuns:
    """What `score_trained_runs` gives: the runs, `trainer.setup`'s parts of the first one (its model,
    config and test split stand for all), the window length, the test windows' indices and clusters,
    each run's scores, and the seconds the scoring took when first done (a cached run costs none now)."""

    runs: list[Path]
    parts: dict[str, Any]
    length: int
    indices: np.ndarray
    clusters: np.ndarray
    scores: list[dict[str, np.ndarray]]
    seconds: float


def score_trained_runs(
    registry: flags.FlagValues,
    score: Score,
    settings: Mapping[str, Any],
    *,
    root: Path,
    driver: str,
    chosen: Callable[[Path], list[Path]],
    restore: Callable[[Path], RestoredRun] = restore_run,
) -> ScoredRuns:
    """A scoring driver's work up to its summary: --workdir made (deleted first with --fresh; its JAX
    compilation cache with --compilation_cache), the runs found (`runs_to_read`; none is a ValueError
    naming `driver`), --examples test windows spread over the first run's test split with their
    clusters (`clusters.example_clusters`), and every run scored on them (`cached_scores` with
    `settings`). `restore` reads the first run (the driver's own, when it refuses some runs).

        >>> scored = score_trained_runs(FLAGS, score_run, {"window_batch": 8}, root=ROOT,
        ...                             driver="kernel_attention", chosen=chosen_runs)  # doctest: +SKIP
    """
    from seqjax.data.pipeline import spread_indices
    from seqjax.experiment.clusters import example_clusters
    from seqjax.experiment.protocol import use_compilation_cache

    workdir = Path(registry.workdir)
    if registry.fresh and workdir.is_dir():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if registry.compilation_cache:
        use_compilation_cache(workdir / ".jax_cache")
    runs = runs_to_read(registry, workdir, root=root, chosen=chosen)
    if not runs:
        raise ValueError(f"{driver}: no runs to read; give --runs, --reuse_runs, or train here.")
    parts, _, _ = restore(runs[0])
    source = parts["sources"]["test"]
    length = int(parts["tokens_per_example"])
    indices = spread_indices(len(source), registry.examples)
    clusters = example_clusters(source)[indices]
    scores = []
    for run in runs:
        print(f"scoring {run}", flush=True)
        scores.append(cached_scores(score, workdir, run, indices, **settings))
    seconds = float(sum(s["seconds"] for s in scores))
    return ScoredRuns(runs, parts, length, indices, clusters, scores, seconds)
