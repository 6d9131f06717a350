"""The training side of the experiment protocol: every model of a comparison gets the same training
tokens, a learning rate tuned on validation, several seeds, and saved test predictions.

For one task at one sequence length, `run_comparison` does, for every model config:

1. **Budget.** `train_tokens` training tokens for every model: `total_steps = ceil(train_tokens /
   (batch_size * length))`, with warmup (`warmup_fraction` of the steps) and a cosine decay that ends
   exactly at the budget. No wall-clock limit: a slower model takes longer, not fewer tokens. Compiling
   and evaluation never count in a run's `train_seconds` or tokens/s (the trainer measures them apart).
2. **Matched parameters.** Before training, every model's MLP (else cell) width is set so its parameter
   count is within `param_tolerance` of the largest (`seqjax.experiment.matching`), parameters on the
   sequence-length axis (the Linformer's E) left out of the count, so one target holds at every length.
3. **Learning rate.** Each model trains with seed 0 at every rate of `learning_rates`; the rate with the
   best final validation metric is chosen. When that rate is the grid's largest or smallest, the grid
   is extended one step beyond it (the ratio of the two outer rates, rounded to one significant digit),
   up to `grid_extensions` times, so the chosen rate is not an artefact of where the grid stopped. The
   test split has not been read yet.
4. **Seeds.** The chosen rate's seed-0 run is evaluated on the test split (a grid run that validation
   could still choose when it finishes, none of the grid's earlier runs being better, computes its test
   outputs then and keeps them unreported in its folder, `RunRecord.final_test`, so that the chosen run
   needs no checkpoint; a run already beaten skips the test split, which can cost as much as its
   training; older runs are evaluated from their final checkpoint), and
   seeds 1 .. `seeds - 1` train with that rate; the seed sets both the initialisation and the order of
   the training batches (`train_run` takes a `data_seed` to set the order apart, as
   `seqjax.experiment.stability` does). Every seed's per-example test outputs are written as
   `predictions/<model>/seed<k>.npz` (`seqjax.experiment.predictions`), with the examples' cluster ids
   (`seqjax.experiment.clusters`), so every statistic can be recomputed without retraining.

Every finished run writes `run.json` in its folder (with a digest of its config, the evaluation subset
it was scored on, and the git commit, JAX version and time that produced it: `RunRecord.code_version`);
a rerun over the same `workdir` reads it instead of training again, after checking the digest and the
subset, and a run stopped by SIGTERM/SIGINT (`RunInterrupted`) resumes from its checkpoint, so an
interrupted experiment continues where it stopped. A record trained with another config, or scored on
another `evaluation_examples`, under the same folder name is an error.

    >>> settings = ProtocolSettings(train_tokens=8192 * 100, learning_rates=(1e-3, 3e-3), seeds=5)
    >>> settings.total_steps(tokens_per_batch=8192), settings.warmup_steps(100)
    (100, 5)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.common.checks import check_positive_int
from seqjax.experiment.clusters import example_bytes, example_clusters
from seqjax.experiment.matching import match_parameters
from seqjax.experiment.outputs import code_version
from seqjax.experiment.predictions import RunPredictions, write_predictions

__all__ = [
    "HEADLINE",
    "LM_COLUMNS",
    "MissingRunError",
    "ModelResult",
    "ProtocolSettings",
    "RunInterrupted",
    "RunRecord",
    "analytic_train_flops_per_token",
    "comparison_setup",
    "evaluate_on_test",
    "exit_when_interrupted",
    "has_final_checkpoint",
    "model_result",
    "next_rate_beyond_edge",
    "retrain_missing_checkpoints",
    "run_comparison",
    "run_predictions",
    "train_run",
    "tune_learning_rate",
    "use_compilation_cache",
    "validation_rank",
]

#: The task's headline metric and whether larger is better.
HEADLINE: dict[str, tuple[str, bool]] = {
    "classification": ("balanced_accuracy", True),
    "forecast": ("mse", False),
    "lm": ("bits_per_byte", False),
}

#: The columns of an LM run's [n, 3] predictions (`run_predictions`); older runs saved the NLL alone [n].
LM_COLUMNS = ("nll", "correct", "tokens")

#: Cells whose every query attends a window of positions (softmax attention): the attended positions
#: add 6 * layers * positions * d_model FLOPs per token to a train step (Kaplan et al. 2020, eq. 2.2).
_ATTENTION_CELLS = ("attention", "sliding_window_attention", "xl_attention", "longformer", "linformer")


class MissingRunError(FileNotFoundError):
    """A run that has not finished, asked for with `ProtocolSettings.train_missing` False (--noretrain)."""


class RunInterrupted(RuntimeError):
    """A run stopped by SIGTERM/SIGINT before its budget: the experiment stops; finished runs are kept."""


def use_compilation_cache(directory: str | os.PathLike[str]) -> None:
    """Keeps compiled programs in `directory` (JAX's persistent cache), so the seeds of one model, which
    compile to the same program, and a rerun of a driver compile once. Call before the first compile."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def exit_when_interrupted(main: Callable[[list[str]], None], argv: list[str]) -> None:
    """Runs a driver's `main(argv)`; a `RunInterrupted` becomes a one-line message and exit status 130,
    a `MissingRunError` (--noretrain over a run that has not finished) or a `ConfigError` (an unknown
    preset or option, a bad config value: the message names it and the fix) one line and exit status 2."""
    from seqjax.train.run_config import ConfigError

    try:
        main(argv)
    except RunInterrupted as stopped:
        print(f"stopped: {stopped}", file=sys.stderr)
        raise SystemExit(130) from None
    except (MissingRunError, ConfigError) as refused:
        print(f"error: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclasses.dataclass(frozen=True)
class ProtocolSettings:
    """The protocol's knobs, fixed before any run (module docstring)."""

    train_tokens: int
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    seeds: int = 5
    warmup_fraction: float = 0.05
    param_tolerance: float = 0.05
    log_points: int = 50  # train-loss records per run, for the learning curves
    # Validation and test examples evaluated (spread evenly over each split, the same for every model
    # and seed); None: the whole split.
    evaluation_examples: int | None = None
    measure_step_memory: bool = True  # XLA's plan of one train step (one more compile per run)
    # Rates added beyond the grid's edge when the best rate lies on it (module docstring, step 3)
    grid_extensions: int = 1
    # False (a driver's --noretrain): only finished runs are read back; a run that has not finished is a
    # `MissingRunError`, never trained (a re-tabulation must not start hours of training). Not a protocol
    # setting of the results: runs and their records are the same either way.
    train_missing: bool = True

    def __post_init__(self) -> None:
        check_positive_int("ProtocolSettings", "train_tokens", self.train_tokens)
        check_positive_int("ProtocolSettings", "seeds", self.seeds)
        check_positive_int("ProtocolSettings", "log_points", self.log_points)
        if self.evaluation_examples is not None:
            check_positive_int("ProtocolSettings", "evaluation_examples", self.evaluation_examples)
        if not self.learning_rates or any(not (lr > 0 and math.isfinite(lr)) for lr in self.learning_rates):
            raise ValueError(
                f"ProtocolSettings: learning_rates={self.learning_rates!r}; give one or more positive rates, "
                "e.g. (3e-4, 1e-3, 3e-3)."
            )
        if self.grid_extensions < 0:
            raise ValueError(f"ProtocolSettings: grid_extensions={self.grid_extensions} must be >= 0.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"ProtocolSettings: warmup_fraction={self.warmup_fraction} must be in [0, 1).")

    def total_steps(self, tokens_per_batch: int) -> int:
        """Optimizer steps that spend the token budget (the last batch may overshoot by < 1 batch)."""
        check_positive_int("ProtocolSettings.total_steps", "tokens_per_batch", tokens_per_batch)
        return max(1, math.ceil(self.train_tokens / tokens_per_batch))

    def warmup_steps(self, total_steps: int) -> int:
        return min(total_steps, max(1, round(self.warmup_fraction * total_steps)))


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One training run: its rate and seed, what it cost and its final validation (and test) metrics."""

    model: str
    learning_rate: float
    seed: int
    steps: int
    train_tokens: int
    train_seconds: float
    compile_seconds: float
    eval_seconds: float
    tokens_per_s: float
    step_memory_bytes: int | None
    peak_memory_bytes: int
    num_params: int
    validation: dict[str, float]
    test: dict[str, float] | None
    workdir: str
    # sha256 of the model/data/optimizer config the run trained with: a record is reused only for the
    # same config ("" in records written before it was kept: not checked)
    config_sha256: str = ""
    # The seed of the training batches' order when set apart from `seed` (None: `seed` set both)
    data_seed: int | None = None
    # The test metrics of the final parameters, computed when a run trained without test evaluation (a
    # grid run) finished, with its per-example outputs in `FINAL_TEST_PREDICTIONS` in its folder. Never
    # reported as they are: they become `test` only when validation has chosen the run
    # (`evaluate_on_test`). They let the run's folder stand without its checkpoint
    # (`seqjax.experiment.carry_over`). None in records written before they were kept.
    final_test: dict[str, float] | None = None
    # The process's CPU seconds over the timed training steps (the trainer's `train_cpu_seconds`): what
    # a run cost on a CPU host that other jobs shared or that was paused, where `train_seconds` (wall
    # clock) grows with the sharing. None in records written before it was kept.
    train_cpu_seconds: float | None = None
    # Wall-clock seconds of the run's final evaluation (validation, and test when it was read: the
    # trainer's `final_eval_seconds` plus a test evaluation from the checkpoint), which no training time
    # counts: on the DNA tasks it is as long as the training. None in records written before it was kept.
    final_eval_seconds: float | None = None
    # With what and when the run finished: seqjax's git commit (`outputs.code_version`: "+dirty" when the
    # package's tracked files differed from it; None outside a checkout), JAX's version and the UTC time
    # its record was written, so that a table built over days of runs can say which code trained each.
    # None in records written before they were kept (2026-12-06).
    code_version: str | None = None
    jax_version: str | None = None
    finished_utc: str | None = None
    # Which examples its final evaluations read (`evaluated_on`: "all" or "<n> spread", from
    # `ProtocolSettings.evaluation_examples`): a record is reused only for the same subset. None in
    # records written before it was kept (2026-12-06): their test outputs' count is checked instead.
    evaluated_on: str | None = None


def _config_sha256(config: Any) -> str:
    """The digest of what makes two runs the same run: model, head, data, task, optimizer, seed, steps."""
    values = config.to_dict()
    kept = {k: values.get(k) for k in ("task", "model", "head", "data", "optimizer", "seed", "total_steps")}
    kept["batch_size"] = values.get("batch_size")
    if values.get("data_seed") is not None:  # kept only when set, so earlier records keep their digest
        kept["data_seed"] = values["data_seed"]
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: A grid run's test outputs, written in its folder when it finishes (see `RunRecord.final_test`).
FINAL_TEST_PREDICTIONS = "final_test_predictions.npz"
#: The folder of a run where the test split evaluated from its checkpoint keeps its outputs as it goes.
TEST_EVALUATION = "test_evaluation"


def evaluated_on(examples: int | None) -> str:
    """What a run's record says its final evaluations read: "all" (the whole split) or "<n> spread"
    (`ProtocolSettings.evaluation_examples`, spread over the split).

        >>> evaluated_on(None), evaluated_on(256)
        ('all', '256 spread')
    """
    return "all" if examples is None else f"{int(examples)} spread"


def _read_record(
    path: Path, config_sha256: str, examples: int | None = None, kept: Sequence[Path] = ()
) -> RunRecord:
    # The run is where its record is: a folder carried to another workdir (`carry_over`) or machine
    # keeps working.
    record = dataclasses.replace(RunRecord(**json.loads(path.read_text())), workdir=str(path.parent))
    workdir = path.parents[3] if len(path.parents) > 3 else path.parent  # <workdir>/<model>/lr<r>/seed<k>
    if record.config_sha256 and record.config_sha256 != config_sha256:
        raise ValueError(
            f"{path} records a run trained with another config than this experiment asks for (a different "
            "model size, parameter match, data, budget or optimizer under the same folder name). Its "
            f"experiment's folder is {workdir}: rerun with --fresh (scripts/compare.py: deletes its runs) "
            f"or another --workdir, or delete {path.parent} to train that run again."
        )
    asked = evaluated_on(examples)
    if record.evaluated_on is not None:
        found = record.evaluated_on
    else:  # an older record: only its test outputs' count can tell (more than asked for: another subset)
        found = _counted_subset([path.parent / FINAL_TEST_PREDICTIONS, *kept], examples)
    if found is not None and found != asked:
        raise ValueError(
            f"{path} records a run evaluated on {found} examples of each split, and this experiment asks "
            f"for {asked} (--evaluation_examples): its scores are not comparable. Use the value its runs "
            f"were evaluated with, or rerun with --fresh or another --workdir (its experiment's folder is "
            f"{workdir})."
        )
    return record


def _counted_subset(kept: Sequence[Path], examples: int | None) -> str | None:
    """An older record's evaluated subset where its kept test outputs (`kept`: the run's prediction
    files) show it is not `examples`'s (more test examples than asked for), else None (not known to
    differ: a split may hold fewer examples than asked for)."""
    if examples is None:
        return None
    counts = []
    for path in kept:
        if path.exists():
            with np.load(path) as arrays:
                counts.append(len(arrays["example_ids"]))
    return f"{max(counts)} (its test outputs')" if counts and max(counts) > examples else None


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """A model's runs at one length: the rate grid, the chosen rate and the seeds' runs (seed order)."""

    model: str
    grid: list[RunRecord]
    learning_rate: float
    seeds: list[RunRecord]
    predictions: list[str]
    flops_per_token: float
    matched: dict[str, Any]


def analytic_train_flops_per_token(config: Any, num_params: int, length: int) -> float:
    """Approximate train-step FLOPs per token: 6 x parameters (forward and backward matmuls) plus, for
    softmax-attention layers, 6 x d_model x the positions each query attends (L for exact attention, the
    window for sliding-window and Longformer layers, k for Linformer, the memory M + L for Transformer-XL
    trained with segment recurrence, whose segment's queries also attend M keys of the previous segments;
    without it each batch starts from an empty memory, so XL attends L, as exact attention does).
    Elementwise recurrences are not counted.

    >>> from seqjax.config import load_config_file
    >>> config = load_config_file("configs/documents.py", "attention")
    >>> analytic_train_flops_per_token(config, 1000, 1024)
    792432.0
    >>> config = load_config_file("configs/documents.py", "xl_attention,length=1024")  # M = 1024
    >>> analytic_train_flops_per_token(config, 1000, 1024)  # no carried memory: as attention
    792432.0
    >>> config.segment_recurrence = True  # the memory of the previous segment is attended too
    >>> analytic_train_flops_per_token(config, 1000, 1024)
    1578864.0
    """
    model = config.model
    mixers = dict(model.mixers)
    pattern = list(model.pattern)
    layers = int(model.num_layers)
    attention = 0.0
    for layer in range(layers):
        mixer = mixers[pattern[layer % len(pattern)]]
        cell = mixer["cell"]
        if cell not in _ATTENTION_CELLS:
            continue
        window = mixer.get("k") if cell == "linformer" else mixer.get("window")  # Linformer: k projected rows
        attended = length if window is None else min(int(window), length)
        if cell == "xl_attention" and config.get("segment_recurrence"):
            from seqjax.cells import TransformerXLAttention  # its default memory_length

            attended += int(mixer.get("memory_length", TransformerXLAttention.memory_length))
        attended += int(mixer.get("num_global", 0) or 0)
        attention += 6.0 * int(model.d_model) * attended
    return 6.0 * num_params + attention


def _atomic_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1, default=float) + "\n")
    os.replace(temporary, path)


def _run_config(
    base: Any,
    settings: ProtocolSettings,
    learning_rate: float,
    seed: int,
    tokens_per_batch: int,
    data_seed: int | None = None,
) -> Any:
    config = base.copy_and_resolve_references()
    steps = settings.total_steps(tokens_per_batch)
    with config.unlocked():
        config.seed = int(seed)
        if data_seed is not None:
            config.data_seed = int(data_seed)
        config.total_steps = steps
        config.optimizer.total_steps = steps
        config.optimizer.learning_rate = float(learning_rate)
        config.optimizer.schedule = "cosine"
        config.optimizer.warmup_steps = settings.warmup_steps(steps)
        config.max_train_seconds = None
        config.eval_every = 0  # only the final evaluation: it picks the rate, and none counts in the budget
        config.log_every = max(1, steps // settings.log_points)
        config.checkpoint.every = steps
        config.checkpoint.keep = 1
        config.report_step_memory = settings.measure_step_memory
        config.tensorboard = False
    return config


def run_predictions(
    model: str,
    seed: int,
    length: int,
    task: str,
    per_example: Mapping[str, np.ndarray],
    source: Any,
    indices: np.ndarray | None = None,
) -> RunPredictions:
    """A run's per-example test outputs (`seqjax.train.evaluation.collect_split`) as `RunPredictions`:

    - classification: predictions = logits [n, classes], targets = labels, losses = cross-entropy;
    - forecast: predictions = forecasts [n, horizon, variables], targets = the truth, losses = MSE;
    - lm: predictions = the example's summed NLL in nats, targets = the bytes its targets stand for,
      losses = NLL per byte in bits (the headline metric is the ratio of sums, `bits_per_byte`); with the
      evaluation's "correct" counts, predictions = [n, 3] columns (`LM_COLUMNS`: summed NLL in nats,
      counted tokens whose argmax is the target, counted tokens), so accuracies can be recomputed too
      (`seqjax.experiment.answers`).

    `indices`: the examples of `source` that were evaluated, in order (default: all of them).
    """
    clusters = example_clusters(source)
    indices = np.arange(len(clusters)) if indices is None else np.asarray(indices, np.int64)
    clusters = clusters[indices]
    if task == "classification":
        logits = np.asarray(per_example["logits"], np.float64)
        labels = np.asarray(per_example["label"], np.int64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        losses = -log_probs[np.arange(len(labels)), labels]
        predictions, targets = logits.astype(np.float32), labels
    elif task == "forecast":
        predictions = np.asarray(per_example["forecast"], np.float32)
        targets = np.asarray(per_example["targets"], np.float32)
        losses = np.mean((predictions.astype(np.float64) - targets) ** 2, axis=(1, 2))
    elif task == "lm":
        nll = np.asarray(per_example["nll"], np.float64)
        # the bytes of each example's own scored targets where the evaluation kept them (BPE: exact);
        # else tokens x the split's bytes per token (byte-level: the same)
        targets = (
            np.asarray(per_example["bytes"], np.float64)
            if "bytes" in per_example
            else example_bytes(source, per_example["tokens"])
        )
        losses = nll / np.log(2.0) / np.maximum(targets, 1e-9)
        predictions = nll
        if "correct" in per_example:
            counts = (per_example["correct"], per_example["tokens"])
            predictions = np.stack([nll, *(np.asarray(c, np.float64) for c in counts)], axis=-1)
    else:
        raise ValueError(f"run_predictions: unknown task {task!r}; known: {sorted(HEADLINE)}.")
    n = len(losses)
    if len(clusters) != n:
        raise ValueError(
            f"run_predictions: the split source has {len(clusters)} examples and the evaluation {n}; "
            "evaluate the whole split (no eval_examples cap)."
        )
    return RunPredictions(
        model, int(seed), int(length), indices, clusters, targets, predictions, losses.astype(np.float64)
    )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _provenance() -> dict[str, str | None]:
    """`RunRecord`'s code_version, jax_version and finished_utc, now."""
    import jax

    return {
        "code_version": code_version(),
        "jax_version": jax.__version__,
        "finished_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def _record(
    model: str,
    lr: float,
    seed: int,
    result: Mapping[str, Any],
    tokens: int,
    workdir: Path,
    validation: Mapping[str, float],
    test: Mapping[str, float] | None,
    data_seed: int | None = None,
) -> RunRecord:
    return RunRecord(
        model=model,
        learning_rate=float(lr),
        seed=int(seed),
        steps=int(result["step"]),
        train_tokens=int(tokens),
        train_seconds=float(result["train_seconds"]),
        compile_seconds=float(result["compile_seconds"]),
        train_cpu_seconds=_float_or_none(result.get("train_cpu_seconds")),
        eval_seconds=float(result["eval_seconds"]),
        tokens_per_s=float(result["tokens_per_s"]),
        step_memory_bytes=result.get("step_memory_bytes"),
        peak_memory_bytes=int(result["peak_memory_bytes"]),
        num_params=int(result["num_params"]),
        validation={k: float(v) for k, v in validation.items()},
        test=None if test is None else {k: float(v) for k, v in test.items()},
        workdir=str(workdir),
        data_seed=None if data_seed is None else int(data_seed),
    )


def _train_once(
    model: str,
    config: Any,
    settings: ProtocolSettings,
    lr: float,
    seed: int,
    tokens_per_batch: int,
    workdir: Path,
    length: int,
    predictions_path: Path | None,
    log: Callable[[str], None],
    data_seed: int | None = None,
    keep_test: Callable[[RunRecord], bool] | None = None,
) -> RunRecord:
    """One run (or its saved record): train, then the final validation and (with a predictions path) test
    evaluation of the final parameters. A grid run (no predictions path) keeps its test outputs unreported
    (`RunRecord.final_test`); with `keep_test`, only when `keep_test(record)` says validation could still
    choose it (`tune_learning_rate`), the others skip the test split (the evaluation of a long split can
    cost as much as the training)."""
    from seqjax.train import trainer

    run_config = _run_config(config, settings, lr, seed, tokens_per_batch, data_seed)
    digest = _config_sha256(run_config)
    done = workdir / "run.json"
    if done.exists() and (predictions_path is None or predictions_path.exists()):
        kept = [] if predictions_path is None else [Path(predictions_path)]
        return _read_record(done, digest, settings.evaluation_examples, kept)
    if not settings.train_missing:
        raise MissingRunError(
            f"{model} lr={lr:g} {_seeds_text(seed, data_seed)}: {workdir} holds no finished run, and "
            "--noretrain only re-tabulates finished runs. Run the same command without --noretrain to "
            "train it (finished runs are read back), or check --workdir."
        )
    # An unfinished run (stopped by a signal) resumes from its checkpoint, as the trainer resumes any run
    # (its training time so far is kept with the checkpoint), and an evaluation stopped part-way resumes
    # at its next batch (`evaluation.SplitProgress`).
    workdir.mkdir(parents=True, exist_ok=True)
    # Test too for a grid run: kept in its folder, unreported unless validation chooses the run. With
    # `keep_test`, the test split is read after validation, from the final checkpoint, and only for a run
    # validation could still choose.
    splits = ("validation",) if predictions_path is None and keep_test is not None else ("validation", "test")
    started = time.perf_counter()
    # Its final evaluation's outputs are kept until the record is written: a stop while the test split is
    # read from the checkpoint (below) then resumes there, without evaluating validation again.
    result = trainer.train(
        run_config,
        str(workdir),
        final_splits=splits,
        final_examples=settings.evaluation_examples,
        keep_final_evaluation=True,
    )
    if result["preempted"]:  # SIGTERM/SIGINT: the trainer saved its step; this run is not finished
        raise RunInterrupted(
            f"{model} lr={lr:g} {_seeds_text(seed, data_seed)} stopped by a signal at step "
            f"{result['step']}, saved in {workdir}. Run the same command again: finished runs are read "
            "back and this one resumes."
        )
    final = result["final"]
    tokens = int(result["step"]) * tokens_per_batch
    record = _record(
        model, lr, seed, result, tokens, workdir, final["validation"]["metrics"], None, data_seed
    )
    record = dataclasses.replace(
        record, config_sha256=digest, evaluated_on=evaluated_on(settings.evaluation_examples)
    )
    evaluating = float(result.get("final_eval_seconds", math.nan))
    if "test" in final:
        test_metrics, run = _test_outputs(model, seed, length, run_config.task, final["test"])
    elif keep_test(record):
        t_test = time.perf_counter()
        evaluated = _evaluate_test(run_config, settings, workdir)
        evaluating += time.perf_counter() - t_test
        test_metrics, run = _test_outputs(model, seed, length, run_config.task, evaluated)
    else:
        test_metrics, run = None, None
    record = dataclasses.replace(record, final_eval_seconds=evaluating)
    if run is not None:
        write_predictions(predictions_path or workdir / FINAL_TEST_PREDICTIONS, run)
    if predictions_path is not None:
        record = dataclasses.replace(record, test=test_metrics)
    else:
        record = dataclasses.replace(record, final_test=test_metrics)
    record = dataclasses.replace(record, **_provenance())
    # the record last: a run stopped before it is unfinished, and resumes
    _atomic_json(done, dataclasses.asdict(record))
    _clear_kept_evaluations(workdir)
    metric, _ = HEADLINE[run_config.task]
    log(
        f"{model} lr={lr:g} {_seeds_text(seed, data_seed)}: {record.steps} steps, validation {metric} "
        f"{record.validation[metric]:.4f}"
        + ("" if record.test is None else f", test {record.test[metric]:.4f}")
        + ("" if run is not None else " (test not read: another rate of the grid is better on validation)")
        + f" ({time.perf_counter() - started:.0f} s)"
    )
    return record


def _test_outputs(
    model: str, seed: int, length: int, task: str, evaluated: Mapping[str, Any]
) -> tuple[dict[str, float], RunPredictions]:
    """A run's test metrics and per-example outputs from the trainer's evaluation of the test split (its
    `final["test"]`, or `trainer.evaluate(..., per_example=True)`)."""
    run = run_predictions(
        model, seed, length, task, evaluated["per_example"], evaluated["source"], evaluated["indices"]
    )
    return {k: float(v) for k, v in evaluated["metrics"].items()}, run


def _evaluate_test(run_config: Any, settings: ProtocolSettings, workdir: Path | str) -> dict[str, Any]:
    """The test split evaluated from the run's last checkpoint, on the examples the final evaluation of a
    training run reads (`settings.evaluation_examples`, spread over the split); kept as it goes in
    `<workdir>/test_evaluation/`, so a stop part-way (`EvaluationStopped`) resumes there."""
    from seqjax.train import trainer
    from seqjax.train.evaluation import EvaluationStopped

    with run_config.unlocked():
        run_config.eval_examples = None
    try:
        return trainer.evaluate(
            run_config,
            str(workdir),
            split="test",
            step="latest",
            per_example=True,
            examples=settings.evaluation_examples,
            progress=os.path.join(workdir, TEST_EVALUATION),
        )
    except EvaluationStopped as stopped:  # kept part-way: the next call resumes it
        raise RunInterrupted(
            f"{workdir}: the test split's {stopped}. Run the same command again: finished runs are read "
            "back and this evaluation resumes."
        ) from None


def _test_from_checkpoint(
    model: str,
    config: Any,
    settings: ProtocolSettings,
    record: RunRecord,
    tokens_per_batch: int,
    length: int,
    predictions_path: Path,
) -> RunRecord:
    """The chosen rate's seed-0 run on the test split: its outputs kept when it finished (a run folder
    without its checkpoint, e.g. carried over), else evaluated from its final checkpoint (once)."""
    if record.test is not None and predictions_path.exists():
        return record
    kept = Path(record.workdir) / FINAL_TEST_PREDICTIONS
    if record.final_test is not None and kept.exists():
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        partial = predictions_path.with_name(predictions_path.name + ".partial")
        shutil.copyfile(kept, partial)
        os.replace(partial, predictions_path)
        updated = dataclasses.replace(record, test=dict(record.final_test))
        _atomic_json(Path(record.workdir) / "run.json", dataclasses.asdict(updated))
        return updated
    if not has_final_checkpoint(record):
        raise FileNotFoundError(
            f"{model} lr={record.learning_rate:g} {_seeds_text(record.seed, record.data_seed)}: "
            f"{record.workdir} keeps neither its test outputs nor the checkpoint of its last step "
            f"(checkpoints/{record.steps}), so it cannot be evaluated on test. Remove its run.json and run "
            "the same command again to train it again."
        )
    run_config = _run_config(
        config, settings, record.learning_rate, record.seed, tokens_per_batch, record.data_seed
    )
    test, run = _test_outputs(
        model, record.seed, length, run_config.task, _evaluate_test(run_config, settings, record.workdir)
    )
    write_predictions(predictions_path, run)
    updated = dataclasses.replace(record, test=test)
    _atomic_json(Path(record.workdir) / "run.json", dataclasses.asdict(updated))
    _clear_kept_evaluations(record.workdir)
    return updated


def _clear_kept_evaluations(workdir: Path | str) -> None:
    """Removes a recorded run's evaluation outputs kept for a resume (the trainer's final evaluation's and
    `_evaluate_test`'s): the record holds what was needed of them."""
    import jax

    from seqjax.train import trainer

    trainer.clear_final_evaluation(workdir)
    if jax.process_index() == 0:
        shutil.rmtree(Path(workdir) / TEST_EVALUATION, ignore_errors=True)


def _seeds_text(seed: int, data_seed: int | None) -> str:
    """`seed=3`, or `seed=3 data_seed=1` for a run whose batches' order has a seed of its own."""
    return f"seed={seed}" if data_seed is None else f"seed={seed} data_seed={data_seed}"


def train_run(
    model: str,
    config: Any,
    settings: ProtocolSettings,
    learning_rate: float,
    seed: int,
    folder: str | os.PathLike[str],
    *,
    length: int,
    tokens_per_batch: int,
    predictions_path: str | os.PathLike[str] | None = None,
    data_seed: int | None = None,
    log: Callable[[str], None] = print,
) -> RunRecord:
    """One run of the protocol in `folder` (or its saved `run.json`, checked against the config's
    digest): `config` trained for the budget at `learning_rate`, initialised with `seed` and with the
    training batches in the order of `data_seed` (None: `seed` sets both), then its final validation and,
    with `predictions_path`, test evaluation (the per-example outputs written there). A run stopped by a
    signal raises `RunInterrupted` and resumes on the next call.

        >>> record = train_run("lstm", config, settings, 3e-3, 2, "runs/lstm/lr0.003/seed2_data1",
        ...                    length=4096, tokens_per_batch=16384, data_seed=1)  # doctest: +SKIP
    """
    path = None if predictions_path is None else Path(predictions_path)
    return _train_once(
        model,
        config,
        settings,
        learning_rate,
        seed,
        tokens_per_batch,
        Path(folder),
        length,
        path,
        log,
        data_seed=data_seed,
    )


def evaluate_on_test(
    model: str,
    config: Any,
    settings: ProtocolSettings,
    record: RunRecord,
    predictions_path: str | os.PathLike[str],
    *,
    length: int,
    tokens_per_batch: int,
) -> RunRecord:
    """`record` (a finished run trained without its test evaluation, e.g. a grid run) evaluated on the
    test split from its final checkpoint, its outputs written to `predictions_path` and its `run.json`
    updated; a record that already has both is returned as it is."""
    return _test_from_checkpoint(
        model, config, settings, record, tokens_per_batch, length, Path(predictions_path)
    )


def validation_rank(value: float, larger: bool) -> tuple[bool, float]:
    """The sort key of a validation metric in a choice, smaller is better: every finite value before any
    non-finite one (a diverged run), then the value (`larger`: larger is better). A plain `min` or
    `sorted` over NaN keys is not a choice: NaN compares false both ways, so the result depends on where
    the NaN stands in the list.

        >>> sorted([0.7, float("nan"), 0.9], key=lambda v: validation_rank(v, larger=True))
        [0.9, 0.7, nan]
    """
    value = float(value)
    if not math.isfinite(value):
        return (True, 0.0)
    return (False, -value if larger else value)


def seed_folders_with_checkpoints(rate_folder: str | os.PathLike[str]) -> list[Path]:
    """The seed folders of one rate (`<model>/lr<rate>/seed<i>`) whose checkpoints are here, in seed
    order, for the drivers that re-read trained parameters; a finished seed without them (a run carried
    between machines keeps its record, not its parameters) is named on stderr, not dropped silently.

        >>> seed_folders_with_checkpoints("runs/crossover_lm/L1024/attention/lr0.01")  # doctest: +SKIP
        [PosixPath('runs/crossover_lm/L1024/attention/lr0.01/seed0'), ...]
    """
    seeds = sorted(Path(rate_folder).glob("seed*"), key=lambda p: int(p.name[4:]))
    kept = [p for p in seeds if (p / "checkpoints").is_dir()]
    left_out = [p.name for p in seeds if p not in kept and (p / "run.json").exists()]
    if left_out:
        print(
            f"{rate_folder}: finished {left_out} have no checkpoints here (carried without parameters) and "
            f"are left out; {len(kept)} of {len(kept) + len(left_out)} seeds are scored.",
            file=sys.stderr,
            flush=True,
        )
    return kept


def _rank(record: RunRecord, metric: str, larger: bool) -> tuple[bool, float, float]:
    """A grid run's place in the choice (smaller is better): `validation_rank`, then the smaller rate."""
    return (*validation_rank(record.validation.get(metric, math.nan), larger), record.learning_rate)


def _choose(grid: Sequence[RunRecord], metric: str, larger: bool) -> RunRecord:
    """The grid run with the best validation metric (a tie goes to the smaller rate; a non-finite metric
    is never chosen over a finite one)."""
    return min(grid, key=lambda r: _rank(r, metric, larger))


def next_rate_beyond_edge(rates: Sequence[float], chosen: float) -> float | None:
    """The rate one step beyond the grid's edge when `chosen` lies on it, else None. The step is the
    ratio of the two outer rates on that side, and the new rate is rounded to one significant digit.

    >>> next_rate_beyond_edge([1e-3, 3e-3, 1e-2], 1e-2), next_rate_beyond_edge([1e-3, 3e-3, 1e-2], 1e-3)
    (0.03, 0.0003)
    >>> next_rate_beyond_edge([1e-3, 3e-3, 1e-2], 3e-3) is None
    True
    """
    ordered = sorted(set(float(r) for r in rates))
    if len(ordered) < 2 or chosen not in (ordered[0], ordered[-1]):
        return None
    step = ordered[-1] / ordered[-2] if chosen == ordered[-1] else ordered[0] / ordered[1]
    rate = chosen * step
    return float(f"{rate:.0e}")


def _forecast_shapes(config: Any) -> dict[str, int]:
    """A forecaster's encoder and head are sized by the data (variables, horizon): read one example."""
    if config.task != "forecast":
        return {}
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import build_sources

    run = resolve(config)
    example = build_sources(run.data, run.data_dir)["train"][0]
    return {"input_size": int(example["inputs"].shape[-1]), "horizon": int(example["targets"].shape[0])}


def comparison_setup(
    configs: Mapping[str, Any],
    settings: ProtocolSettings,
    *,
    length: int,
    match_target: str | None = None,
) -> tuple[str, int, dict[str, Any], list[Any]]:
    """What every model of a comparison shares, checked (one task, one batch size), and its matched
    models (step 2): (task, tokens per batch, {model: matched config}, the `MatchedModel` report)."""
    if not configs:
        raise ValueError("run_comparison: configs is empty; pass {model name: config}.")
    tasks = {c.task for c in configs.values()}
    batches = {int(c.batch_size) for c in configs.values()}
    if len(tasks) != 1 or len(batches) != 1:
        raise ValueError(
            f"run_comparison: the configs mix tasks {sorted(tasks)} or batch sizes {sorted(batches)}; a "
            "comparison needs one task and one batch size (the same tokens per batch)."
        )
    matched, report = match_parameters(
        configs,
        target=match_target,
        tolerance=settings.param_tolerance,
        **_forecast_shapes(next(iter(configs.values()))),
    )
    return tasks.pop(), batches.pop() * int(length), matched, report


def tune_learning_rate(
    model: str,
    config: Any,
    settings: ProtocolSettings,
    folder: str | os.PathLike[str],
    *,
    length: int,
    tokens_per_batch: int,
    log: Callable[[str], None] = print,
    test_every_rate: bool = False,
) -> tuple[list[RunRecord], RunRecord]:
    """Step 3 for one model: seed 0 at every rate of the grid, `<folder>/lr<rate>/seed0/`, the grid
    extended past an edge the choice lands on; returns (the grid's runs, the one chosen on validation).
    No test metric is reported. A grid run that validation could still choose (none of the runs before it
    is better) keeps its test outputs unreported, so the chosen run needs no checkpoint
    (`RunRecord.final_test`); the others skip the test split. `test_every_rate`: every grid run keeps them
    (for a caller that evaluates every rate on test, as `seqjax.experiment.stability` does)."""
    metric, larger = HEADLINE[config.task]
    root = Path(folder)
    grid: list[RunRecord] = []

    def could_be_chosen(record: RunRecord) -> bool:
        # Beaten by a run already in the grid (`_choose`'s order), it can never be chosen: more runs
        # only add rivals.
        rank = _rank(record, metric, larger)
        return test_every_rate or not any(_rank(r, metric, larger) < rank for r in grid)

    def seed0(lr: float) -> RunRecord:
        path = root / f"lr{lr:g}" / "seed0"
        return _train_once(
            model,
            config,
            settings,
            lr,
            0,
            tokens_per_batch,
            path,
            length,
            None,
            log,
            keep_test=could_be_chosen,
        )

    for lr in settings.learning_rates:
        grid.append(seed0(lr))
    chosen = _choose(grid, metric, larger)
    for _ in range(settings.grid_extensions):
        rate = next_rate_beyond_edge([r.learning_rate for r in grid], chosen.learning_rate)
        if rate is None:
            break
        log(f"{model}: lr={chosen.learning_rate:g} is at the grid's edge; trying lr={rate:g}")
        grid.append(seed0(rate))
        chosen = _choose(grid, metric, larger)
    log(f"{model}: chose lr={chosen.learning_rate:g} on validation {metric}")
    return grid, chosen


def model_result(
    match: Any,
    config: Any,
    grid: Sequence[RunRecord],
    learning_rate: float,
    seeds: Sequence[RunRecord],
    predictions: Sequence[str | os.PathLike[str]],
    *,
    length: int,
) -> ModelResult:
    """A model's `ModelResult` from its `MatchedModel` (`comparison_setup`), matched config, grid runs,
    chosen rate, the runs at that rate and their predictions files (in the same order)."""
    return ModelResult(
        model=match.name,
        grid=list(grid),
        learning_rate=float(learning_rate),
        seeds=list(seeds),
        predictions=[str(p) for p in predictions],
        flops_per_token=analytic_train_flops_per_token(config, seeds[0].num_params, length),
        matched={
            "parameters": match.parameters,
            "target": match.target,
            "ratio": match.ratio,
            "unmatched": match.unmatched,
            "override": match.override,
        },
    )


def run_comparison(
    configs: Mapping[str, Any],
    settings: ProtocolSettings,
    workdir: str | os.PathLike[str],
    *,
    length: int,
    match_target: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, ModelResult]:
    """Runs the protocol (module docstring) for every model config at one length, under `workdir`:
    `<workdir>/<model>/lr<rate>/seed<k>/` per run and `<workdir>/predictions/<model>/seed<k>.npz`.
    The configs must share the task, the data and the batch size (equal tokens per batch)."""
    _, tokens_per_batch, matched, report = comparison_setup(
        configs, settings, length=length, match_target=match_target
    )
    root = Path(workdir)
    results = {}
    for m in report:
        name, config = m.name, matched[m.name]
        unmatched = f" + {m.unmatched:,} on the length axis (unmatched)" if m.unmatched else ""
        log(
            f"match {name}: {m.parameters:,} parameters{unmatched} ({m.ratio:.3f} x {m.target:,}), "
            f"{m.override}"
        )
        grid, chosen = tune_learning_rate(
            name, config, settings, root / name, length=length, tokens_per_batch=tokens_per_batch, log=log
        )
        paths = [root / "predictions" / name / f"seed{k}.npz" for k in range(settings.seeds)]
        seeds = [_test_from_checkpoint(name, config, settings, chosen, tokens_per_batch, length, paths[0])]
        for k in range(1, settings.seeds):
            folder = root / name / f"lr{chosen.learning_rate:g}" / f"seed{k}"
            seeds.append(
                _train_once(
                    name,
                    config,
                    settings,
                    chosen.learning_rate,
                    k,
                    tokens_per_batch,
                    folder,
                    length,
                    paths[k],
                    log,
                )
            )
        results[name] = model_result(m, config, grid, chosen.learning_rate, seeds, paths, length=length)
    return results


def has_final_checkpoint(record: RunRecord) -> bool:
    """Whether the run's folder still holds the checkpoint of its last step (a carried run has none:
    `scripts/carry_runs.py` leaves checkpoints out)."""
    return (Path(record.workdir) / "checkpoints" / str(record.steps)).is_dir()


def retrain_missing_checkpoints(
    results: Mapping[str, ModelResult],
    configs: Mapping[str, Any],
    settings: ProtocolSettings,
    folder: str | os.PathLike[str],
    *,
    length: int,
    tolerance: float = 1e-3,
    log: Callable[[str], None] = print,
) -> dict[str, ModelResult]:
    """`results` (`run_comparison`'s, e.g. of another experiment's runs), with every seed run whose final
    checkpoint is gone trained again under `<folder>/<model>/lr<rate>/seed<k>/` from the same matched
    config (`configs`: the ones `run_comparison` was given), so a driver that re-reads parameters (scoring
    by position, attention maps) can use carried runs. The retrained run must reproduce its record: its
    validation headline metric within `tolerance` (absolute) of the record's, else a ValueError (the
    training is not deterministic here, and scoring the new parameters would not score the reported
    run). The returned records keep the original metrics and point `workdir` at the retrained folder.

        >>> results = run_comparison(configs, settings, "runs/crossover/L1024", length=1024)  # doctest: +SKIP
        >>> results = retrain_missing_checkpoints(results, configs, settings, "runs/regenerated/L1024",
        ...                                       length=1024)  # doctest: +SKIP
    """
    _, tokens_per_batch, matched, _ = comparison_setup(configs, settings, length=length)
    out = {}
    for name, result in results.items():
        metric, _ = HEADLINE[matched[name].task]
        seeds = []
        for record in result.seeds:
            if has_final_checkpoint(record):
                seeds.append(record)
                continue
            where = Path(folder) / name / f"lr{record.learning_rate:g}" / Path(record.workdir).name
            log(
                f"{name} lr={record.learning_rate:g} {_seeds_text(record.seed, record.data_seed)}: "
                f"{record.workdir} has no checkpoint of step {record.steps}; training it again in {where}"
            )
            again = train_run(
                name,
                matched[name],
                settings,
                record.learning_rate,
                record.seed,
                where,
                length=length,
                tokens_per_batch=tokens_per_batch,
                data_seed=record.data_seed,
                log=log,
            )
            before, after = record.validation[metric], again.validation[metric]
            if again.steps != record.steps or not abs(after - before) <= tolerance:
                raise ValueError(
                    f"{name} lr={record.learning_rate:g} {_seeds_text(record.seed, record.data_seed)}: "
                    f"trained again in {where}, it ends at step {again.steps} with validation {metric} "
                    f"{after:.6f}, where {record.workdir} recorded step {record.steps}, {before:.6f} "
                    f"(tolerance {tolerance:g}): not the same run, so its parameters would not score the "
                    "reported one. Check that the flags repeat the original experiment's settings, or "
                    "score runs whose checkpoints were kept."
                )
            seeds.append(dataclasses.replace(record, workdir=str(where)))
        out[name] = dataclasses.replace(result, seeds=seeds)
    return out
