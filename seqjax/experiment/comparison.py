"""One comparison on the protocol, end to end: train every model (`protocol.run_comparison`), score the
task's strong non-neural baselines on the same test split (`seqjax.baselines`), and summarise both with
intervals and the claims' paired differences (`summary.summarize_length`). The drivers
(`scripts/compare.py`, `experiments/length_crossover.py`) are thin layers over `compare_at_length`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.data.pipeline import spread_indices
from seqjax.experiment.clusters import example_clusters
from seqjax.experiment.protocol import ProtocolSettings, run_comparison
from seqjax.experiment.report import Claim
from seqjax.experiment.summary import summarize_length

__all__ = ["BASELINE_FAMILIES", "baseline_validation_estimates", "compare_at_length", "task_baselines"]

#: The baseline module of each data kind (`seqjax.baselines.<kind>`).
BASELINE_FAMILIES = ("genomic", "documents", "timeseries")


def task_baselines(
    config: Any,
    split: str = "test",
    examples: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[list[Any], Any]:
    """(the data kind's baselines fit on train and scored on `split`, the cluster id of each `split`
    example) for a task config; ([], None) for data without baselines (synthetic). With `examples`, the
    per-example values and clusters are those of the examples the models are evaluated on
    (`pipeline.spread_indices`); document baselines then score those windows
    (`documents.evaluate_window_baselines`, byte tokenizer), and otherwise whole documents (a BPE
    tokenizer's windows are not bytes; settings["scored"] says which). `options` are keyword arguments
    of the kind's `evaluate_baselines` (e.g. time series' `fit_windows`).

        >>> results, clusters = task_baselines(config, examples=256)  # doctest: +SKIP
        >>> [r.name for r in results][:2]  # doctest: +SKIP
        ['mean', 'last value']
    """
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import build_sources, default_data_dir

    run = resolve(config)
    data = run.data.source_options()
    kind = data["kind"]
    if kind not in BASELINE_FAMILIES:
        return [], None
    data_dir = run.data_dir or default_data_dir()
    module = importlib.import_module(f"seqjax.baselines.{kind}")
    source = build_sources(run.data, data_dir)[split]
    clusters = example_clusters(source)
    if examples is not None and kind == "documents" and data.get("tokenizer") == "bytes":
        indices = spread_indices(len(clusters), examples)
        train = module.read_split_documents(data, data_dir)["train"]
        windows = [source[int(i)] for i in indices]
        return module.evaluate_window_baselines(train, windows, **(options or {})), clusters[indices]
    results = module.evaluate_baselines(data, data_dir, split, **(options or {}))
    if examples is not None and kind != "documents":
        indices = spread_indices(len(clusters), examples)
        results = [_subset(result, indices, len(clusters)) for result in results]
        clusters = clusters[indices]
    return results, clusters


def baseline_validation_estimates(
    config: Any, examples: int | None = None, options: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Each baseline's headline metric on the validation split, by name: fit on train as for test and
    scored as `task_baselines` scores test (with `examples`: the validation examples the models are
    scored on, spread over the split; without, the whole split: whole documents for a documents task),
    so that validation, not test, chooses the strongest baseline (`summary.strongest_baseline`), as it
    chooses the models' rates. {} for data without baselines.

        >>> baseline_validation_estimates(config, examples=256)  # doctest: +SKIP
        {'majority class': 0.5, 'GC content + logistic regression': 0.61, ...}
    """
    from seqjax.experiment.report import baseline_estimate

    # point estimates only: no interval is drawn on validation, so its clusters are not needed (a
    # forecast's validation split at a long look-back may hold one time block)
    found, _ = task_baselines(config, split="validation", examples=examples, options=options)
    return {result.name: baseline_estimate(result, config.task) for result in found}


def _subset(result: Any, indices: np.ndarray, total: int) -> Any:
    """A `BaselineResult` with its per-example arrays cut to `indices` (its split metrics are kept; the
    summary's estimate comes from the per-example values); arrays already of len(indices) (a baseline
    that scored only those examples) are kept. An array of any other length is an error: it scored
    other examples, and pairing or scoring it would compare different windows.

        >>> from seqjax.baselines.result import BaselineResult
        >>> kmer = BaselineResult("k-mer", {}, {"label": np.arange(10)})
        >>> _subset(kmer, np.array([0, 5]), 10).per_example["label"].tolist()
        [0, 5]
    """
    for name, values in result.per_example.items():
        if len(values) not in (total, len(indices)):
            raise ValueError(
                f"task_baselines: the baseline {result.name!r} has {len(values)} values of {name!r}, but the "
                f"split has {total} examples and the models are scored on {len(indices)} of them; it scored "
                "other examples (check the baseline's data config against the models')."
            )
    per_example = {
        k: np.asarray(v)[indices] if len(v) == total != len(indices) else v
        for k, v in result.per_example.items()
    }
    return dataclasses.replace(
        result, per_example=per_example, settings={**result.settings, "examples": len(indices)}
    )


def compare_at_length(
    configs: Mapping[str, Any],
    settings: ProtocolSettings,
    workdir: str | os.PathLike[str],
    *,
    length: int,
    claims: Sequence[Claim] = (),
    baselines: bool = True,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    match_target: str | None = None,
    baseline_options: Mapping[str, Any] | None = None,
    horizon: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains, scores and summarises one comparison; returns the summary (`summarize_length`) with the
    protocol's settings under "protocol". `baseline_options` go to `task_baselines`; `horizon` (a
    forecaster's, in rows) to the claims' Diebold-Mariano tests (`report.paired_difference`)."""
    results = run_comparison(configs, settings, workdir, length=length, match_target=match_target, log=log)
    first = next(iter(configs.values()))
    found, clusters = (
        task_baselines(first, examples=settings.evaluation_examples, options=baseline_options)
        if baselines
        else ([], None)
    )
    validation = (
        baseline_validation_estimates(first, settings.evaluation_examples, baseline_options)
        if found
        else None
    )
    summary = summarize_length(
        results,
        first.task,
        baselines=found,
        baseline_clusters=clusters,
        claims=claims,
        horizon=horizon,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        baseline_validation=validation,
    )
    summary["length"] = int(length)
    summary["protocol"] = {
        "train_tokens": settings.train_tokens,
        "learning_rates": list(settings.learning_rates),
        "grid_extensions": settings.grid_extensions,
        "seeds": settings.seeds,
        "warmup_fraction": settings.warmup_fraction,
        "param_tolerance": settings.param_tolerance,
        "evaluation_examples": settings.evaluation_examples,
        "batch_size": int(first.batch_size),
        "n_resamples": n_resamples,
    }
    return summary
