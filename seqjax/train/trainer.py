"""The training loop: one function, in marked sections, driven by a run config.

    train(config, workdir)  # config: a configs/*.py ConfigDict (resolved once, at the start) or a RunConfig

- The config is resolved once into the typed `seqjax.train.run_config.RunConfig` (every key checked,
  every default filled); the loop reads only that.
- Tasks (`config.task`): "lm" (next-token), "classification" (one label per sequence) and "forecast"
  (multi-horizon regression); data (`config.data.kind`): "synthetic", "genomic", "timeseries",
  "documents" — each real kind is a `seqjax.data.<kind>.make_sources`.
- Resumes from the newest readable checkpoint in `workdir/checkpoints` (train state and the data
  position), so a killed run restarted with the same workdir continues the same trajectory. Unreadable
  newer steps (corrupt, checksum mismatch, a data position that disagrees with the step) are moved aside
  (`seqjax.train.checkpoint`). The run holds an exclusive lock on the workdir, and refuses to resume a run
  saved with another config unless the changed keys are allowed (`seqjax.train.workdir`).
- SIGTERM (preemption) or SIGINT (Ctrl-C) saves a checkpoint at the current step and returns cleanly;
  in a multi-process run a signal to any process stops every process at the same step
  (`seqjax.train.preemption`). So does running past `config.max_train_seconds` (a budget of training-step
  time: compiling, evaluation and checkpoints never count), after an eval.
- A resumed run drops the `metrics.jsonl` and TensorBoard records past the restored step
  (`seqjax.train.metrics_log`), so nothing is logged twice.
- A step whose loss or gradient is not finite, or whose update would leave a parameter non-finite or
  above `config.max_param_abs`, stops the run with an error naming the step; nothing from that step is
  checkpointed.
- Metrics go to the console (process 0) with steps/s, tokens/s and ETA, to `workdir/metrics.jsonl`,
  and (`config.tensorboard`) to TensorBoard event files in `workdir/tensorboard`.
- Eval walks the whole validation split (no drop_last) and computes the task's metrics
  (`seqjax.data.metrics`); `checkpoint.best_metric` keeps the best step by one of them.

Data: batch `i` is elements [i·B, (i+1)·B) of a grain-shuffled, repeated stream over the training split
(`seqjax.data.pipeline.TrainBatches`); each process builds its own rows, and the iterator state is `i`.
A genomic `data.augment` (reverse complement, random shifts: `seqjax.data.genomic.augment`) transforms
the examples of the training batches only, element `p` of the stream by a pure function of (data seed,
p), so a resumed run is still the same run; validation, test and `evaluate` read the splits untouched.
With `config.segment_recurrence` (LM on documents, or forecasting on time series), batch `i` is segment
`i` of B contiguous lanes of the split's stream (its tokens, or its rows: `seqjax.data.stream.
StreamBatches`), and every layer's state is carried from one step to the next in the train state
(`seqjax.train.segments`), checkpointed with it; the forecaster then forecasts at every position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from seqjax import models
from seqjax.common.xla import plan_bytes
from seqjax.data.pipeline import IndexedSource, TrainBatches, eval_batches, spread_indices, subset_indices
from seqjax.data.stream import (
    StreamBatches,
    TokenStream,
    check_position_buckets,
    counted_target_bytes,
    document_eval_batches,
    stream_eval_batches,
    stream_of,
)
from seqjax.data.synthetic import SyntheticTask
from seqjax.train import mesh as mesh_lib
from seqjax.train import run_config, segments
from seqjax.train import workdir as workdir_lib
from seqjax.train.checkpoint import CheckpointError, Checkpoints, Restored
from seqjax.train.evaluation import (
    EvaluationStopped,
    SplitProgress,
    collect_split,
    evaluate_split,
    make_eval_fn,
    progress_key,
    split_metrics,
)
from seqjax.train.metrics_log import MetricsLog, read_records
from seqjax.train.optimizer import make_optimizer
from seqjax.train.preemption import StopSignals, signal_name
from seqjax.train.preflight import check_before_work, check_length_divides
from seqjax.train.programs import ProgramKey, run_programs
from seqjax.train.run_config import ConfigError, DataConfig, RunConfig, resolve
from seqjax.train.state import TrainState, make_state_init, state_shardings
from seqjax.train.step import LOSSES, make_train_step

__all__ = [
    "DATA_KINDS",
    "NonFiniteLossError",
    "build_sources",
    "evaluate",
    "evaluate_carried",
    "load_config",
    "setup",
    "train",
]

log = logging.getLogger(__name__)

#: config.data.kind -> the module whose `make_sources(data, data_dir)` builds the splits.
DATA_KINDS = {kind: f"seqjax.data.{kind}" for kind in run_config.DATA_KINDS if kind != "synthetic"}


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/Inf; the run stops without checkpointing that state."""


def default_data_dir() -> str:
    """Prepared TFDS data sets: `$SEQJAX_DATA_DIR` or `~/.cache/seqjax/datasets`."""
    return os.environ.get("SEQJAX_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "seqjax", "datasets"
    )


def build_sources(data: DataConfig | Mapping[str, Any], data_dir: str | None = None) -> dict[str, Any]:
    """The random-access splits ("train", "validation", and "test" for real data) a data config names.

    `data` is the typed `DataConfig` or a `config.data` section (checked as `resolve` checks it)."""
    if not isinstance(data, DataConfig):
        data = run_config.resolve_data(data)
    if data.kind == "synthetic":
        options = run_config.SyntheticDataConfig(**data.options)

        def task(offset: int, size: int) -> SyntheticTask:
            return SyntheticTask(
                options.task,
                length=options.length,
                num_symbols=options.num_symbols,
                vocab_size=options.vocab_size,
                num_queries=options.num_queries,
                delay=options.delay,
                seed=options.seed + offset,
                size=size,
            )

        # Validation and test are finite, fixed sets drawn from other seeds.
        return {
            "train": task(0, 2**31 - 1),
            "validation": task(1_000_003, options.eval_size),
            "test": task(2_000_003, options.eval_size),
        }
    module = importlib.import_module(DATA_KINDS[data.kind])
    return module.make_sources(data.source_options(), data_dir or default_data_dir())


def _fit_to_data(config: RunConfig, example: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """The backbone and head values with what the data decides filled in: a forecaster's variables
    (`input_size`) and, unless the head sets it, its horizon; with segment recurrence, its forecast at
    every position (`per_position`)."""
    backbone, head = dict(config.model), dict(config.head)
    if config.task == "forecast":
        backbone["encoder"] = "linear"
        backbone["input_size"] = int(example["inputs"].shape[-1])
        if head.get("horizon") is None:
            head["horizon"] = int(example["targets"].shape[0])
        if config.segment_recurrence:
            head["per_position"] = True
    return backbone, head


def _batch_shardings(example: Mapping[str, np.ndarray], mesh: Any, rules: Any) -> dict[str, NamedSharding]:
    """Each key of a batch of rows like `example` (one row) placed along ("batch", "length", ...).

    With sequence parallelism (the rules map "length" onto a mesh axis of size n > 1), a key's second
    axis is split over it when n divides it (every per-token key: the inputs' length is checked to
    divide in `setup`); a forecaster's [horizon, V] targets whose horizon it does not divide stay whole.
    """
    shards = mesh_lib.sequence_size(mesh, rules)

    def sharding_for(value: np.ndarray) -> NamedSharding:
        names = ("batch", "length", None, None)[: np.ndim(value) + 1]
        if len(names) > 1 and np.shape(value)[0] % shards:
            names = ("batch", None, *names[2:])
        return NamedSharding(mesh, mesh_lib.spec_for(names, rules))

    return {k: sharding_for(v) for k, v in example.items()}


def _stream_batch_shardings(stream: Any, length: int, mesh: Any, rules: Any) -> dict[str, NamedSharding]:
    """`_batch_shardings` of the rows a stream's lane batches have (their keys and ranks)."""
    return _batch_shardings(stream.segment(0, 0, length, True), mesh, rules)


def _global_batch(
    local: Mapping[str, np.ndarray],
    shardings: Mapping[str, NamedSharding],
    layout: mesh_lib.DataLayout | None = None,
) -> dict:
    """This process's rows (all of their tokens) as global arrays. With `layout` (`setup`'s
    "data_layout"), the global batch is `layout.count` blocks of these rows, and every device takes its
    slice of them, its part of the time axis included: processes that split the same rows' time axis
    pass the same rows. Without, the global shape is inferred (each process holds only its own data)."""

    def place(key: str, value: np.ndarray) -> jax.Array:
        shape = None if layout is None else (value.shape[0] * layout.count, *value.shape[1:])
        return jax.make_array_from_process_local_data(shardings[key], value, shape)

    return {k: place(k, v) for k, v in local.items()}


def _mesh_scope(parts: Mapping[str, Any]) -> Any:
    """`jax.set_mesh(mesh)` when the cells run sequence-parallel (their `shard_map` reads the mesh when
    traced: model init, the train and eval steps); otherwise nothing is set, as before."""
    if parts.get("sequence_axis") is None:
        return contextlib.nullcontext()
    return jax.set_mesh(parts["mesh"])


def _peak_memory_bytes() -> int:
    """Peak device memory where the backend reports it, else this process's peak RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _step_memory_bytes(train_step: Any, state: Any, batch: Any) -> int | None:
    """XLA's estimate of one train step's memory (arguments + outputs + temporaries), per device."""
    return plan_bytes(train_step.lower(state, batch).compile())  # None where the backend has no analysis


@dataclasses.dataclass(frozen=True)
class RunPrograms:
    """A run's jitted programs (`_run_programs`), shared with the later runs in the process that build
    the same ones."""

    init: Callable[..., TrainState]  # (seed, *example) -> a fresh state in its shardings
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]
    eval_fn: Callable[[Any, Any], dict[str, jax.Array]]
    step_memory: dict[str, int | None] = dataclasses.field(default_factory=dict)  # XLA's plan, once


def _run_programs(parts: Mapping[str, Any]) -> RunPrograms:
    """`setup`'s parts' programs: an earlier run's in this process where it built the same ones
    (`seqjax.train.programs`: a driver's seeds of one model trace, lower and compile once)."""
    config, model, tx = parts["config"], parts["model"], parts["tx"]
    shardings, train_shardings = parts["state_shardings"], parts["train_batch_shardings"]
    options = (
        ("tbptt_length", config.tbptt_length),
        ("tbptt_updates", config.tbptt_updates),
        ("max_param_abs", config.max_param_abs),
        ("segment_recurrence", config.segment_recurrence),
    )
    key = ProgramKey(
        model=model,
        optimizer=_optimizer_options(config, parts["tokens_per_example"]),
        task=config.task,
        options=options,
        state_shardings=shardings,
        batch_shardings=(train_shardings, parts["batch_shardings"]),
        example=parts["example"],
    )

    fresh = TrainState(
        step=shardings.step, params=shardings.params, opt_state=shardings.opt_state, rng=shardings.rng
    )

    def build() -> RunPrograms:
        return RunPrograms(
            # a fresh state without the carry (segment recurrence adds its initial carry after)
            init=make_state_init(model, tx, fresh),
            train_step=make_train_step(
                model,
                tx,
                LOSSES[config.task],
                shardings,
                train_shardings,
                **dict(options),
            ),
            eval_fn=make_eval_fn(model, config.task, shardings.params, parts["batch_shardings"]),
        )

    return run_programs(key, build)


def _updates_per_batch(config: RunConfig, length: int) -> int:
    """Optimizer updates per batch: one, or one per chunk with `tbptt_updates="chunk"`."""
    if config.tbptt_updates != "chunk" or config.tbptt_length is None:
        return 1
    return max(length // config.tbptt_length, 1)


def _optimizer_options(config: RunConfig, length: int) -> dict[str, Any]:
    """`config.optimizer` with its schedule counted in the updates the schedule sees.

    The config counts batches, as `step`, `total_steps` and the eval and checkpoint intervals do. The
    schedule counts the inner optimizer's updates: one per TBPTT chunk with `tbptt_updates="chunk"`,
    and one per `grad_accum_steps` micro-steps (optax.MultiSteps). Its lengths are scaled by
    updates per batch / grad_accum_steps so that warmup and decay end where the config says."""
    options = dataclasses.asdict(config.optimizer)
    per_batch = _updates_per_batch(config, length)
    accum = max(options["grad_accum_steps"], 1)
    for key in ("total_steps", "warmup_steps"):
        if options[key]:
            options[key] = max(-(-int(options[key]) * per_batch // accum), 1)
    return options


def setup(config: RunConfig | ml_collections.ConfigDict) -> dict[str, Any]:
    """Mesh, rules, data, model, optimizer and shardings, shared by `train` and `evaluate`; `config` is
    resolved first (the resolved `RunConfig` is returned as "config")."""
    config = resolve(config)
    # Mesh, batch sizes, data options and best_metric: checked before any data or compile work.
    check_before_work(config, jax.devices(), jax.process_count())
    num_devices = config.mesh.num_devices  # None: every device; else the first N (one process)
    devices = None if num_devices is None else jax.devices()[:num_devices]
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes, devices=devices)
    rules = mesh_lib.rules_from_config(config.logical_rules, mesh)
    sequence_axis = mesh_lib.sequence_axis(mesh, rules)  # None: the time axis is not split
    layout = mesh_lib.data_layout(mesh, rules)
    batch_size = config.batch_size
    sources = build_sources(config.data, config.data_dir)
    # Training-time augmentation (genomic `data.augment`): what the training stream reads (the train
    # split, or a shift's anchor windows) and the transform of its examples; evaluation never sees it.
    augmentation = _train_augmentation(config, sources["train"])
    train_stream = sources["train"] if augmentation is None else augmentation.source
    if config.train_examples is not None:  # a learning-curve point: a subset of the train split
        indices = _train_subset(config, sources["train"])
        sources = {**sources, "train": IndexedSource(sources["train"], indices)}
        train_stream = IndexedSource(train_stream, indices)
    first = {k: np.asarray(v) for k, v in sources["train"][0].items()}
    backbone, head = _fit_to_data(config, first)
    model = models.build_task_model(config.task, backbone, head)
    if sequence_axis is not None:  # every cell sequence-parallel (preflight checked that each can be)
        model = model.clone(config=models.sequence_parallel_config(model.config, sequence_axis))
    inputs = first["inputs"]
    length = int(inputs.shape[0])
    # Here, not at the first step's trace: the data's length is known before anything compiles (for
    # genomic windows and documents, preflight checked the length their options name before any data).
    check_length_divides(config, tuple(mesh.devices.shape), length)
    # Abstract inits trace the model: a sequence-parallel cell's shard_map reads the mesh.
    with _mesh_scope({"mesh": mesh, "sequence_axis": sequence_axis}):
        tx = make_optimizer(_optimizer_options(config, length), models.param_groups(model))
        example = (np.zeros((batch_size, *inputs.shape), inputs.dtype),)
        abstract, shardings = state_shardings(model, tx, example, mesh, rules)
    batch_shardings = _batch_shardings(first, mesh, rules)
    train_batch_shardings = batch_shardings
    if config.segment_recurrence:  # the carried state is part of the train state, and of its checkpoints
        abstract, shardings = segments.with_carry(abstract, shardings, model, batch_size, mesh, rules)
        # Lane batches: a series stream's targets [rows, length, horizon, V] are not its windows'.
        stream = stream_of(sources["train"])
        train_batch_shardings = _stream_batch_shardings(stream, int(inputs.shape[0]), mesh, rules)
    return {
        "config": config,
        "mesh": mesh,
        "rules": rules,
        "sources": sources,
        # the training batches' source (the train split, or the same examples' anchor windows) and the
        # augmentation applied to its examples (None: none)
        "train_stream": train_stream,
        "train_augmentation": augmentation,
        "model": model,
        "tx": tx,
        "example": example,
        "batch_shardings": batch_shardings,  # of the examples (evaluation; training without recurrence)
        "train_batch_shardings": train_batch_shardings,  # of the training batches
        "abstract_state": abstract,
        "state_shardings": shardings,
        "tokens_per_example": int(inputs.shape[0]),
        # the mesh axis the time axis is split over (None: not split); the model's cells run split
        "sequence_axis": sequence_axis,
        # which rows of each global batch this process loads (`mesh_lib.DataLayout`)
        "data_layout": layout,
    }


def _train_subset(config: RunConfig, train: Any) -> np.ndarray:
    """The indices of `config.train_examples` of the train split: spread evenly, or
    (`train_subset_seed`) drawn at random, stratified by label when the split can list its labels
    (`pipeline.subset_indices`)."""
    if config.train_examples > len(train):
        raise ConfigError(
            f"config.train_examples={config.train_examples} exceeds the train split's {len(train)} "
            f"examples; set it to at most {len(train)} (or None for the whole split)."
        )
    return subset_indices(train, config.train_examples, config.train_subset_seed)


def _data_seed(config: RunConfig) -> int:
    """The seed of the training stream (its order and its augmentation): `data_seed`, else `seed`."""
    return config.seed if config.data_seed is None else config.data_seed


def _train_augmentation(config: RunConfig, train: Any) -> Any:
    """The data kind's training-time augmentation of `train` (`<module>.train_augmentation`, e.g.
    `seqjax.data.genomic.augment`), or None: none asked for, or a kind without one."""
    if config.data.kind == "synthetic":
        return None
    module = importlib.import_module(DATA_KINDS[config.data.kind])
    make = getattr(module, "train_augmentation", None)
    if make is None:
        return None
    data_dir = config.data_dir or default_data_dir()
    augmentation = make(config.data.source_options(), data_dir, train, seed=_data_seed(config))
    if augmentation is not None and config.segment_recurrence:
        raise ConfigError(
            "config.data.augment transforms shuffled training examples; config.segment_recurrence reads "
            "contiguous lanes instead. Set one of them off."
        )
    return augmentation


def _train_batches(
    config: RunConfig,
    source: Any,
    length: int,
    start: int,
    layout: mesh_lib.DataLayout,
    transform: Callable[..., Any] | None = None,
) -> TrainBatches | StreamBatches:
    """The training batches from `start` (this process's rows: `layout`): shuffled examples (each
    through `transform(example, position)` when given: augmentation), or with segment recurrence the
    contiguous lanes of the split's stream (`config.data.shuffled` then shifts the lanes by a seeded
    offset each epoch)."""
    common = {
        "seed": _data_seed(config),
        "shuffle": config.data.shuffled,
        "process_index": layout.index,
        "process_count": layout.count,
        "start": start,
    }
    if config.segment_recurrence:
        return StreamBatches(source, config.batch_size, length, **common)
    return TrainBatches(source, config.batch_size, transform=transform, **common)


def run_eval(
    config: RunConfig,
    eval_fn: Callable[..., Any],
    params: Any,
    source: Any,
    batch_shardings: Mapping[str, NamedSharding],
    layout: mesh_lib.DataLayout | None = None,
) -> dict[str, float]:
    """The task's metrics on a whole split (or `config.eval_examples` of it, spread evenly); `layout`: which
    rows this process loads (None: its own block, `jax.process_index()` of `jax.process_count()`). An LM
    on documents divides by its counted targets' own bytes (`DocumentSplit.token_byte_lengths`), exact
    for a subset as for the whole split."""
    if layout is None:
        layout = mesh_lib.DataLayout.per_process()
    batches = eval_batches(
        source,
        config.eval_batch,
        max_examples=config.eval_examples,
        process_index=layout.index,
        process_count=layout.count,
    )
    return evaluate_split(
        eval_fn,
        params,
        batches,
        config.task,
        lambda host: _global_batch(host, batch_shardings, layout),
        bytes_per_token=float(getattr(source, "bytes_per_token", 1.0)),
        row_processes=layout.processes,
        token_bytes=getattr(source, "token_byte_lengths", None),
    )


def _check_data_position(restored: Restored) -> None:
    """The trainer's rule: one batch per step, so a checkpoint's data position is its step."""
    next_batch = restored.data_state.get("next_batch")
    if not isinstance(next_batch, int) or isinstance(next_batch, bool):
        raise CheckpointError(
            f"step {restored.step}: the data state {restored.data_state!r} has no integer 'next_batch' (the "
            f"data position, saved with every trainer checkpoint)."
        )
    state_step = int(restored.state.step)
    if not next_batch == state_step == restored.step:
        raise CheckpointError(
            f"step {restored.step}: data position next_batch={next_batch} and train state step {state_step} "
            f"disagree with the checkpoint's step {restored.step} (one batch per step)."
        )


def _with_defaults(saved: Mapping[str, Any]) -> Mapping[str, Any]:
    """A saved config with the keys a newer seqjax added filled in with their defaults, so a run saved
    before a key existed resumes as long as the key keeps its default (else the raw saved config)."""
    try:
        return resolve(ml_collections.ConfigDict(dict(saved))).to_dict()
    except Exception:  # a key removed or renamed since: compare the raw configs, which names it
        return saved


#: The folder of a run's workdir where its final evaluation keeps its per-example outputs as it goes.
FINAL_EVALUATION = "final_evaluation"


def clear_final_evaluation(workdir: str | os.PathLike[str]) -> None:
    """Removes the final evaluation's kept outputs (`train(..., keep_final_evaluation=True)`), once the
    caller has recorded what it needed of them.

        >>> clear_final_evaluation("runs/lstm")  # doctest: +SKIP
    """
    if jax.process_index() == 0:
        shutil.rmtree(os.path.join(workdir, FINAL_EVALUATION), ignore_errors=True)


def train(
    config: RunConfig | ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: Iterable[str] = (),
    final_splits: Iterable[str] = (),
    final_examples: int | None = None,
    exit_after_stop: bool = False,
    keep_final_evaluation: bool = False,
) -> dict[str, Any]:
    """Trains as `config` says; returns the last step, state, train metrics and eval metrics, tokens/s
    (after the first, compiling step), peak memory and the parameter count.

    `final_splits` (e.g. ("validation", "test")): after the last step, the final parameters are evaluated
    on each whole split (no `eval_examples` cap), and the result has "final": {split: {"metrics",
    "per_example", "source", "indices"}} with `evaluation.collect_split`'s per-example outputs. With
    `final_examples`, each split is evaluated on that many examples spread evenly over it
    (`pipeline.spread_indices`; "indices" says which). This evaluation is not counted in the training
    times of the result; "final_eval_seconds" is its wall-clock time (compiling included). Not done for a
    preempted run. Its per-example outputs are kept in `<workdir>/final_evaluation/` as it goes (a stop
    part-way resumes at the next batch) and removed when it returns, unless `keep_final_evaluation`: for a
    caller with more to do before the run is finished (the protocol reads the test split from the
    checkpoint next), so a stop there does not evaluate these splits again on resume; that caller removes
    them (`clear_final_evaluation`) once it has recorded the run.

    `workdir` is locked for the run (`WorkdirLockedError` if another run holds it). Resuming a run saved
    with another config is a `ConfigChangedError` unless every changed key is operational or named in
    `allow_config_change` (`seqjax.train.workdir.check_resume_config`).

    SIGTERM or SIGINT saves the current step and returns with "preempted" True. `exit_after_stop` (a
    script that exits after a stop): from that stop on, further SIGTERM/SIGINT are ignored rather than
    given back to the previous handlers, so a late signal cannot kill the process while it shuts down
    (`preemption.StopSignals`)."""
    # ----------------------------------------------------------------------------------------------
    # Setup: the typed config, mesh, data, model, optimizer, shardings.
    # ----------------------------------------------------------------------------------------------
    parts = setup(config)  # (first: a config it refuses leaves no workdir behind)
    os.makedirs(workdir, exist_ok=True)
    with _mesh_scope(parts):  # sequence parallelism: the cells' shard_map reads the mesh when traced
        return _train(
            parts,
            workdir,
            allow_config_change=allow_config_change,
            final_splits=final_splits,
            final_examples=final_examples,
            exit_after_stop=exit_after_stop,
            keep_final_evaluation=keep_final_evaluation,
        )


def _train(
    parts: Mapping[str, Any],
    workdir: str,
    *,
    allow_config_change: Iterable[str],
    final_splits: Iterable[str],
    final_examples: int | None,
    exit_after_stop: bool,
    keep_final_evaluation: bool,
) -> dict[str, Any]:
    """`train`'s loop, on `setup`'s parts."""
    final_splits = tuple(final_splits)  # (read more than once)
    config = parts["config"]
    layout = parts["data_layout"]
    model, sources = parts["model"], parts["sources"]
    batch_size = config.batch_size
    batch_shardings = parts["batch_shardings"]
    train_shardings = parts["train_batch_shardings"]

    # ----------------------------------------------------------------------------------------------
    # State: a fresh one, or the newest readable checkpoint placed onto this mesh.
    # ----------------------------------------------------------------------------------------------
    # Locked before the checkpoint manager starts: it cleans up unfinished saves, another run's included.
    lock = workdir_lib.lock_workdir(workdir)
    try:
        ckpt = Checkpoints(
            os.path.join(workdir, "checkpoints"),
            save_every=config.checkpoint.every,
            keep=config.checkpoint.keep,
            best_metric=config.checkpoint.best_metric,
            best_mode=config.checkpoint.best_mode,
            async_save=config.checkpoint.async_save,
        )
    except BaseException:
        lock.release()
        raise
    # The async checkpointer, the batch prefetch thread and the TensorBoard writer are closed on every
    # way out of the loop, an exception included.
    batches: TrainBatches | StreamBatches | None = None
    summary = None
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        try:
            ckpt.close()
            if batches is not None:
                batches.close()
            if summary is not None:
                summary.close()
        finally:
            lock.release()

    try:
        shardings = parts["state_shardings"]
        saved = ckpt.saved_config()
        if saved is not None:  # compared before restoring: another model's arrays would not restore at all
            changes = workdir_lib.check_resume_config(
                _with_defaults(saved[1]),
                config.to_dict(),
                allow=allow_config_change,
                where=f"{workdir} (checkpoint step {saved[0]})",
            )
            if changes:
                log.info("resuming with changed config keys: %s", ", ".join(changes))
        programs = _run_programs(parts)
        restored = ckpt.restore(parts["abstract_state"], validate=_check_data_position)
        if restored is None:
            state = programs.init(config.seed, *parts["example"])
            if config.segment_recurrence:
                state = segments.add_initial_carry(state, model, batch_size, shardings)
            next_batch = 0
            train_seconds_before = train_cpu_seconds_before = 0.0
        else:
            state: TrainState = restored.state
            next_batch = int(restored.data_state["next_batch"])
            log.info("resumed from step %d (data position %d)", restored.step, next_batch)
            # (0 for a checkpoint saved before the timing was kept with it)
            train_seconds_before = float(restored.data_state.get("train_seconds", 0.0))
            train_cpu_seconds_before = float(restored.data_state.get("train_cpu_seconds", 0.0))
        batches = _train_batches(
            config,
            parts["train_stream"],
            parts["tokens_per_example"],
            next_batch,
            layout,
            parts["train_augmentation"],
        )
        if isinstance(batches, StreamBatches):
            log.info(
                "segment recurrence: %d lanes of %d tokens, %d segments of %d per epoch",
                batch_size,
                batches.lane_tokens,
                batches.segments_per_epoch,
                batches.length,
            )
        if config.tbptt_updates == "chunk" and config.tbptt_length is not None:
            log.info(
                "tbptt_updates=chunk: %d optimizer updates per batch; the LR schedule is scaled to match.",
                _updates_per_batch(config, parts["tokens_per_example"]),
            )
        train_step, eval_fn = programs.train_step, programs.eval_fn
        config_json = config.to_dict()
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(parts["abstract_state"].params))

        # ------------------------------------------------------------------------------------------
        # Logging: console and metrics.jsonl and TensorBoard, on process 0 only.
        # ------------------------------------------------------------------------------------------
        is_chief = jax.process_index() == 0
        # A resumed run drops the records a killed run wrote past the restored step (no duplicates).
        summary = MetricsLog(
            workdir, start_step=int(state.step), tensorboard=config.tensorboard, enabled=is_chief
        )
        write = summary.write

        # ------------------------------------------------------------------------------------------
        # Loop.
        # ------------------------------------------------------------------------------------------
        total = config.total_steps
        tokens_per_batch = batch_size * parts["tokens_per_example"]
        step = int(state.step)
        last: dict[str, Any] = {}
        eval_metrics: dict[str, float] | None = None
        # Budget and throughput count training alone: the time of each step from fetching its batch to its
        # finished update, except the first (compiling) step; evaluation, checkpoints and logging never
        # count, so a model with a slow validation pass trains as long as one with a fast one.
        step_first = step
        train_seconds = 0.0  # steps after the first
        # The process's CPU time (all its threads) over the same steps: on a CPU host it measures the
        # work a step took, which wall-clock time does not once other jobs share the cores or the
        # process is paused; on an accelerator it is host time only.
        train_cpu_seconds = 0.0
        compile_seconds = math.nan  # the first step: compiling plus one step
        eval_seconds = 0.0
        step_memory: int | None = None

        # which validation examples score the saved metrics (`eval_examples` spread over the split: the
        # count names them), so that `best_step` compares only steps scored alike after a resume changes it
        validation = sources.get("validation")
        scored_on = None if validation is None else len(spread_indices(len(validation), config.eval_examples))

        def save(step: int, metrics: Mapping[str, float] | None = None) -> None:
            # the training time so far rides with the data position, so a resumed run reports all of it
            timing = {
                "train_seconds": train_seconds_before + train_seconds,
                "train_cpu_seconds": train_cpu_seconds_before + train_cpu_seconds,
            }
            data_state = {**batches.state(), **timing}
            ckpt.save(
                step, state, data_state=data_state, config=config_json, metrics=metrics, scored_on=scored_on
            )

        progress_files: list[SplitProgress] = []

        def final_evaluation() -> dict[str, Any]:
            out = {}
            for name in final_splits:
                say_compiling_eval()
                if name not in sources:
                    raise ValueError(f"train: final_splits names {name!r}; the splits are {sorted(sources)}.")
                source = sources[name]
                indices = spread_indices(len(source), final_examples)
                # kept as it goes, so a stop (or a kill) part-way resumes at the next batch
                progress = SplitProgress(
                    os.path.join(workdir, FINAL_EVALUATION, f"{name}.npz"),
                    progress_key(
                        step=step,
                        split=name,
                        indices=np.asarray(indices),
                        eval_batch=config.eval_batch,
                        task=config.task,
                        processes=layout.count,
                    ),
                    writer=is_chief,
                )
                progress_files.append(progress)
                split_batches = eval_batches(
                    IndexedSource(source, indices),
                    config.eval_batch,
                    max_examples=None,
                    process_index=layout.index,
                    process_count=layout.count,
                )
                data = collect_split(
                    eval_fn,
                    state.params,
                    split_batches,
                    config.task,
                    lambda h: _global_batch(h, batch_shardings, layout),
                    row_processes=layout.processes,
                    progress=progress,
                    stop=stop_signals.stop_signal,
                    total_batches=-(-len(indices) // config.eval_batch),
                    token_bytes=getattr(source, "token_byte_lengths", None),
                )
                bytes_per_token = float(getattr(source, "bytes_per_token", 1.0))
                out[name] = {
                    "metrics": split_metrics(data, config.task, bytes_per_token=bytes_per_token),
                    "per_example": data,
                    "source": source,
                    "indices": indices,
                }
            if not keep_final_evaluation:  # every split evaluated: the outputs go back to the caller
                for progress in progress_files:
                    progress.clear()
            return out

        def finish(preempted: bool) -> dict[str, Any]:
            close()
            t_final = time.perf_counter()
            final = {}
            if not preempted:
                try:
                    final = final_evaluation()
                except EvaluationStopped as stopped:  # SIGTERM/SIGINT part-way: kept, resumes next time
                    if is_chief:
                        print(f"{signal_name(stopped.signal)}: {stopped}; exiting.", flush=True)
                    preempted = True
            final_eval_seconds = time.perf_counter() - t_final
            metrics = last
            if not metrics and is_chief:  # nothing trained here (already complete): the logged last step
                trained = [r for r in read_records(workdir) if r["split"] == "train" and r["step"] == step]
                if trained:
                    metrics = {k: v for k, v in trained[-1].items() if k not in ("step", "split")}
            timed = step - step_first - 1  # steps after the compiling one
            rate = timed / train_seconds if timed > 0 and train_seconds > 0 else math.nan
            return {
                "step": step,
                "state": state,
                "metrics": metrics,
                "eval": eval_metrics,
                "preempted": preempted,
                "already_complete": already_complete,
                "steps_per_s": rate,
                "tokens_per_s": rate * tokens_per_batch,
                # over every part of a resumed run; `steps_per_s` is this part's rate
                "train_seconds": train_seconds_before + train_seconds,
                "train_cpu_seconds": train_cpu_seconds_before + train_cpu_seconds,
                "compile_seconds": compile_seconds,
                "eval_seconds": eval_seconds,
                "final_eval_seconds": final_eval_seconds,  # `final_splits`, compiling included
                "peak_memory_bytes": _peak_memory_bytes(),
                "step_memory_bytes": step_memory,
                "num_params": num_params,
                "final": final,
            }

        budget = config.max_train_seconds

        def spent() -> float:  # the budget counts the run's training, every resumed part of it
            return train_seconds_before + train_seconds

        already_complete = step >= total
        spent_before_resume = budget is not None and spent() > budget and not already_complete
        if spent_before_resume and is_chief:
            print(
                f"{workdir}: max_train_seconds={budget:g} was spent by step {step} ({spent():.0f} s of "
                "training); nothing to train. To train further, raise max_train_seconds "
                "(--allow_config_change is not needed: it is an operational key).",
                flush=True,
            )
        if already_complete and is_chief:
            # (a run resumed for its final evaluation, stopped part-way, says so rather than look idle)
            then = f" Evaluating {', '.join(final_splits)}." if final_splits else ""
            print(
                f"{workdir}: the run is already complete at step {step} of total_steps={total}; nothing to "
                f"train. To train further: --config.total_steps=<more> --allow_config_change=total_steps."
                + then,
                flush=True,
            )
        eval_compiled = False  # "compiling evaluation..." once, before the first evaluation

        def say_compiling_eval() -> None:
            nonlocal eval_compiled
            if is_chief and not eval_compiled:
                print("compiling evaluation...", flush=True)
            eval_compiled = True

        with StopSignals(ignore_after_stop=exit_after_stop) as stop_signals:
            while step < total and not spent_before_resume:
                if step == step_first and is_chief:
                    print(f"compiling the train step (step {step + 1} of {total})...", flush=True)
                t_step, cpu_step = time.perf_counter(), time.process_time()
                batch = _global_batch(next(batches), train_shardings, layout)
                if step_memory is None and config.report_step_memory:
                    if "bytes" not in programs.step_memory:  # (measured once for the runs that share them)
                        programs.step_memory["bytes"] = _step_memory_bytes(train_step, state, batch)
                    step_memory = programs.step_memory["bytes"]
                    # the extra compile is not a training step
                    t_step, cpu_step = time.perf_counter(), time.process_time()
                state, metrics = train_step(state, batch)
                finite = bool(metrics["finite"])  # waits for the step: its time is then measured
                if step == step_first:
                    compile_seconds = time.perf_counter() - t_step
                else:
                    train_seconds += time.perf_counter() - t_step
                    train_cpu_seconds += time.process_time() - cpu_step
                if not finite:
                    close()  # waits for pending saves, so the message names the last one on disk
                    raise NonFiniteLossError(
                        f"step {step + 1}: loss {float(metrics['loss'])} / gradient norm "
                        f"{float(metrics['grad_norm'])} / largest |parameter| after the update "
                        f"{float(metrics['param_max_abs'])} is not finite or over max_param_abs="
                        f"{config.max_param_abs}; the update was not applied (with "
                        f"tbptt_updates=chunk: not for the non-finite chunks) and nothing "
                        f"was checkpointed. The last checkpoint is step {ckpt.latest_step()} in {workdir}."
                    )
                step += 1
                last = {k: float(v) for k, v in metrics.items()}
                if step % config.log_every == 0 or step == total:
                    timed = step - step_first - 1
                    rate = timed / train_seconds if timed > 0 and train_seconds > 0 else math.nan
                    eta = (total - step) / rate if rate > 0 else math.nan
                    end = f"{step}/{total}"
                    if budget is not None and budget - spent() < eta:
                        # the time budget, not the step cap, ends the run: show where it will end
                        left = max(budget - spent(), 0.0)
                        eta = left
                        end = f"{step}/~{min(total, step + math.ceil(left * rate))} (max_train_seconds "
                        end += f"{budget:g}: {left:.0f} s left; total_steps {total})"
                    record = {"step": step, "split": "train", **last, "steps_per_s": rate}
                    record["tokens_per_s"] = rate * tokens_per_batch
                    write(record)
                    if is_chief:
                        shown = " ".join(
                            f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "mae") if k in last
                        )
                        print(
                            f"step {end} {shown} {rate:.2f} steps/s "
                            f"{record['tokens_per_s']:,.0f} tok/s ETA {eta:.0f} s",
                            flush=True,
                        )
                out_of_time = budget is not None and spent() > budget
                eval_now = config.eval_every and (
                    step % config.eval_every == 0 or step == total or out_of_time
                )
                if eval_now:
                    say_compiling_eval()
                    t_eval = time.perf_counter()
                    eval_metrics = run_eval(
                        config, eval_fn, state.params, sources["validation"], batch_shardings, layout
                    )
                    eval_seconds += time.perf_counter() - t_eval
                    write({"step": step, "split": "eval", **eval_metrics})
                    if is_chief:
                        print(
                            f"eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items())
                        )
                # SIGTERM or SIGINT on any process: every process saves this step and returns.
                stop = stop_signals.stop_signal()
                if stop:
                    save(step, eval_metrics if eval_now else None)
                    if is_chief:
                        print(f"{signal_name(stop)}: saved step {step}; exiting.", flush=True)
                    return finish(preempted=True)
                if ckpt.should_save(step) or step == total or out_of_time:
                    save(step, eval_metrics if eval_now else None)
                if out_of_time:
                    if is_chief:
                        print(
                            f"max_train_seconds={budget} reached at step {step}; saved and stopping.",
                            flush=True,
                        )
                    break
            # (inside: a stop during the final evaluation saves its progress rather than killing it)
            return finish(preempted=False)
    finally:
        close()


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The config a run in `workdir` saved with its checkpoint (`step`, default the newest)."""
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"No checkpoints in {directory}; train first or pass --config.")
    chosen = steps[-1] if step is None else step
    path = os.path.join(directory, str(chosen), "config", "metadata")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Checkpoint step {chosen} in {directory} has no saved config; pass --config."
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def evaluate(
    config: RunConfig | ml_collections.ConfigDict,
    workdir: str,
    split: str = "test",
    step: int | str = "best",
    *,
    per_example: bool = False,
    examples: int | None = None,
    carried_state: bool = False,
    by_document: bool = False,
    position_buckets: Sequence[int] | None = None,
    max_document_tokens: int | None = None,
    per_target: bool = False,
    progress: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Restores a checkpoint of `workdir` (`step`: "best", "latest" or a number) and computes the task's
    metrics on the whole `split` (or, with `examples`, on that many spread evenly over it:
    `pipeline.spread_indices`; `config.eval_examples`, when set, caps those, spread evenly too).
    Returns {"step", "split", "metrics"}; with `per_example`, also
    "per_example" (`evaluation.collect_split`'s arrays), "source" (the split's source) and "indices".
    An LM's bits per byte divides by the bytes its counted targets stand for (BPE: each token's decoded
    length), in every mode, so a subset (`examples`, `eval_examples`, `max_document_tokens`) is exact,
    not scaled by the split's average bytes per token.

    `carried_state` (an LM on a token stream, e.g. documents): instead of scoring every sequence from the
    initial state, the split is cut into `config.eval_batch` contiguous lanes, read in segments of the
    config's length with every layer's state carried from one segment to the next
    (`seqjax.data.stream.stream_eval_batches`, `seqjax.train.segments`). The metrics are the same, over
    the same targets; the whole split is always read (`examples` and `config.eval_examples` do not
    apply), and the result has "per_lane" ({"nll", "tokens"} per lane) instead of per-example outputs.
    A forecaster (time series, no RevIN) reads the split's rows so (`TimeSeriesSplit.series_stream`,
    the look-back rows before it as context), forecasting at every position: MSE and MAE (normalised
    scale, per horizon prefix too) over the positions that count (whole horizon inside the split and
    observed), and `origin_mse`, `origin_mae`, ... at exactly the forecast origins of the split's windows
    (the windowed evaluation's targets, observed or not); "per_lane" has the sums ("se", "ae" per
    horizon step, averaged over the variables; "forecasts"; "origin_se", "origin_ae", "origins").

    `by_document` (an LM on a token stream): every document is its own lane, read from its first token
    in segments of the config's length (`seqjax.data.stream.document_eval_batches`), with the state
    carried through the document (`carried_state=True`: Transformer-XL's long-context evaluation) or
    reset at every segment (False); both score the same targets. The result has "per_document"
    ({"nll", "tokens", "bytes": the bytes its counted targets stand for} per document of the split, in
    order). Reset means every segment runs from the initial state, as the per-sequence evaluation runs
    each sequence: exactly what a model trained on sequences of the config's length (no segment
    recurrence) sees, so `by_document=True, carried_state=False` scores any causal LM on documents,
    softmax attention included (only the carried mode needs cells whose state can be carried,
    `segments.check_stream_task`). Evaluate a model trained at length L with its own config (length L)
    to read documents in segments of L.

    `position_buckets` (with `by_document`): byte offsets from a document's start, starting at 0 and
    increasing, e.g. (0, 1024, 2048, 4096, 8192, 16384): bucket i is [edges[i], edges[i + 1]) bytes, the
    last one [edges[-1], ∞). A target's bucket is its byte offset from its document's first byte
    (`seqjax.data.stream.target_byte_offsets`: for byte-level tokens its position, for BPE the bytes of
    the tokens before it). "per_document" then also has "bucket_nll" (summed NLL, nats),
    "bucket_tokens" (counted targets) and "bucket_bytes" (the bytes those targets stand for: 1 per
    byte-level token, each BPE token's decoded length) [documents, buckets], which add up to "nll" and
    "tokens" (and the bytes of the counted targets); the result has "position_buckets" (the edges).
    Both modes give them, so one model yields the curve with and without the carried state
    (`seqjax.experiment.positions.position_curve` turns them into bits per byte by position).
    `max_document_tokens` (with `by_document`) reads and scores only each document's first that many
    tokens, so the cost of a curve up to a bound does not grow with the longest document.
    `per_target` (with `position_buckets`): the result also has "per_target", every counted target's
    loss: {"document" (index in the split), "offset" (its byte offset from the document's start),
    "bytes" (that it stands for), "nll" (nats, float32)}, 1-D and sorted by (document, offset), and
    "document_ids" (the ids of the split's documents, when its source has them), so losses can be regrouped
    later (e.g. per BPE token of a byte-level model) without scoring again.

    `progress` (a folder; per-sequence evaluation): the evaluation keeps its per-example outputs there as
    it goes (`evaluation.SplitProgress`, `<split>.npz`, about once a minute) and stops at SIGTERM or
    SIGINT with `evaluation.EvaluationStopped` after saving them; the next call with the same step, split
    and examples resumes at the first batch not done. The file is removed once the split is done.

        >>> result = evaluate(config, workdir, by_document=True, carried_state=True,  # doctest: +SKIP
        ...                   position_buckets=(0, 1024, 2048, 4096, 8192, 16384))
        >>> result["per_document"]["bucket_bytes"].shape  # doctest: +SKIP
        (48, 6)
    """
    if (carried_state or by_document) and (per_example or examples is not None):
        raise ValueError(
            "evaluate(carried_state=True or by_document=True) reads the whole split as lanes: per_example "
            "and examples select sequences, which it does not have; leave them out."
        )
    if position_buckets is not None:
        if not by_document:
            raise ValueError(
                "evaluate(position_buckets=...) sums by position in a document, which only by_document=True "
                "reads (every document from its first token); pass by_document=True."
            )
        position_buckets = check_position_buckets(position_buckets).tolist()
    if max_document_tokens is not None and not by_document:
        raise ValueError(
            "evaluate(max_document_tokens=...) bounds each document's lane, which only by_document=True "
            "reads; pass by_document=True."
        )
    if progress is not None and (carried_state or by_document):
        raise ValueError(
            "evaluate(progress=...) keeps per-example outputs, which the lane evaluations (carried_state, "
            "by_document) do not have; leave progress out."
        )
    if per_target and position_buckets is None:
        raise ValueError(
            "evaluate(per_target=True) reads each target's byte offset, which position_buckets brings; "
            "pass by_document=True and position_buckets."
        )
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):  # (before set-up: a wrong workdir prepares no data and writes nothing)
        raise FileNotFoundError(
            f"No checkpoints in {folder}: train the run first, or pass the workdir of a trained run."
        )
    parts = setup(config)
    config = parts["config"]
    if split not in parts["sources"]:
        raise ValueError(f"evaluate: split must be one of {sorted(parts['sources'])}, got {split!r}.")
    if carried_state:
        segments.check_stream_task(config, "evaluate(carried_state=True)")
    elif by_document:  # every segment from the initial state: any causal LM on documents
        segments.check_stream_task(config, "evaluate(by_document=True)", carried=False)
    if by_document and config.task != "lm":
        raise ValueError(
            f"evaluate(by_document=True) makes every document its own lane; task {config.task!r} has no "
            f"documents. Use carried_state=True alone."
        )
    ckpt = Checkpoints(
        folder,
        best_metric=config.checkpoint.best_metric,
        best_mode=config.checkpoint.best_mode,
        async_save=False,
    )
    try:
        if step == "best":
            chosen = ckpt.best_step() or ckpt.latest_step()
        elif step == "latest":
            chosen = ckpt.latest_step()
        else:
            chosen = int(step)
        if chosen is None:
            raise FileNotFoundError(
                f"No checkpoint to evaluate in {folder}: train the run first, or pass the workdir of a "
                "trained run."
            )
        restored = ckpt.restore(parts["abstract_state"], step=chosen)
    finally:
        ckpt.close()
    source = parts["sources"][split]
    bytes_per_token = float(getattr(source, "bytes_per_token", 1.0))
    if by_document:
        targets: list[dict[str, np.ndarray]] | None = [] if per_target else None
        metrics, documents = evaluate_carried(
            parts,
            restored.state.params,
            source,
            by_document=True,
            carried=carried_state,
            position_buckets=position_buckets,
            max_document_tokens=max_document_tokens,
            target_losses=targets,
        )
        result = {"step": restored.step, "split": split, "metrics": metrics, "per_document": documents}
        if position_buckets is not None:
            result["position_buckets"] = position_buckets
        if targets is not None:
            joined = {k: np.concatenate([t[k] for t in targets]) for k in targets[0]}
            order = np.lexsort((joined["offset"], joined["document"]))
            result["per_target"] = {k: v[order] for k, v in joined.items()}
            if hasattr(source, "stream_document_ids"):  # a documents split: its documents' ids, in order
                result["document_ids"] = list(source.stream_document_ids)
        return result
    if carried_state:
        metrics, lanes = evaluate_carried(parts, restored.state.params, source)
        return {"step": restored.step, "split": split, "metrics": metrics, "per_lane": lanes}
    # the run's own evaluation program when it was trained (or evaluated) earlier in this process
    eval_fn = _run_programs(parts).eval_fn
    indices = spread_indices(len(source), examples)
    if config.eval_examples is not None:  # the cap, spread over those examples too (what was read)
        indices = indices[spread_indices(len(indices), config.eval_examples)]
    layout = parts["data_layout"]
    batches = eval_batches(
        IndexedSource(source, indices),
        config.eval_batch,
        process_index=layout.index,
        process_count=layout.count,
    )
    kept = None
    if progress is not None:
        kept = SplitProgress(
            os.path.join(progress, f"{split}.npz"),
            progress_key(
                step=restored.step,
                split=split,
                indices=np.asarray(indices),
                eval_batch=config.eval_batch,
                eval_examples=config.eval_examples,
                task=config.task,
                processes=layout.count,
            ),
            writer=jax.process_index() == 0,
        )
    # signals are taken over only where a stop can be saved; elsewhere they keep their handlers
    signals = StopSignals() if kept is not None else contextlib.nullcontext()
    with _mesh_scope(parts), signals as stop_signals:
        data = collect_split(
            eval_fn,
            restored.state.params,
            batches,
            config.task,
            lambda host: _global_batch(host, parts["batch_shardings"], layout),
            row_processes=layout.processes,
            progress=kept,
            stop=stop_signals.stop_signal if stop_signals is not None else None,
            total_batches=-(-len(indices) // config.eval_batch),
            token_bytes=getattr(source, "token_byte_lengths", None),
        )
    if kept is not None:
        kept.clear()
    metrics = split_metrics(data, config.task, bytes_per_token=bytes_per_token)
    result = {"step": restored.step, "split": split, "metrics": metrics}
    if per_example:
        result.update(per_example=data, source=source, indices=indices)
    return result


def evaluate_carried(
    parts: Mapping[str, Any],
    params: Any,
    source: Any,
    *,
    by_document: bool = False,
    carried: bool = True,
    position_buckets: Sequence[int] | None = None,
    max_document_tokens: int | None = None,
    target_losses: list[dict[str, np.ndarray]] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The metrics of `params` on the whole `source` read as `config.eval_batch` contiguous lanes with
    the state carried across segments (`parts`: `setup`'s), and the sums per lane: the LM's {"nll",
    "tokens"}, or a forecaster's (`segments.stream_metrics`; the forecast origins of the split's windows
    scored apart). With `by_document` (LM), each lane is one document, carried through (or, without
    `carried`, every segment from the initial state), and the sums are per document; `position_buckets`
    (by document) adds the sums by byte position, and `max_document_tokens` bounds each document
    (`evaluate`); `target_losses` (a list) receives each batch's counted targets
    (`segments.evaluate_stream`)."""
    config, model = parts["config"], parts["model"]
    rows, length = config.eval_batch, parts["tokens_per_example"]
    if isinstance(model, models.Forecaster):  # a forecast at every position, its windows' origins marked
        model = model.clone(per_position=True)
        source = source.series_stream(origins=True)
    if position_buckets is not None and not by_document:
        raise ValueError("evaluate_carried: position_buckets needs by_document=True.")
    stream = stream_of(source)
    batch_sh = _stream_batch_shardings(stream, length, parts["mesh"], parts["rules"])
    # Reset by document: no state crosses a segment, so none is kept (any causal model, its own view).
    stateless = by_document and not carried
    carry_sh = (
        None if stateless else segments.model_carry_shardings(model, rows, parts["mesh"], parts["rules"])
    )
    options = (
        ("program", "stream evaluation"),
        ("per_position", position_buckets is not None),
        ("carried", not stateless),
    )
    # kept like a run's programs: the seeds of a model, and its modes, scored one after another in a
    # driver trace and compile their evaluation once
    key = ProgramKey(
        model=model,
        optimizer={},
        task=config.task,
        options=options,
        state_shardings=parts["state_shardings"].params,
        batch_shardings=(carry_sh, batch_sh),
    )
    eval_fn = run_programs(
        key,
        lambda: segments.make_stream_eval_fn(
            model,
            parts["state_shardings"].params,
            carry_sh,
            batch_sh,
            task=config.task,
            per_position=position_buckets is not None,
            carried=not stateless,
        ),
    )
    layout = parts.get("data_layout") or mesh_lib.DataLayout.per_process()
    where = {"process_index": layout.index, "process_count": layout.count}
    if by_document:
        batches = document_eval_batches(
            source,
            rows,
            length,
            carried=carried,
            byte_offsets=position_buckets is not None,
            max_document_tokens=max_document_tokens,
            **where,
        )
    else:
        batches = stream_eval_batches(source, rows, length, **where)
    # bits per byte over the counted targets' own bytes: document batches carry them per row; the
    # whole-split lanes read every counted target once
    whole_split_bytes = None
    if not by_document and isinstance(stream, TokenStream):
        whole_split_bytes = float(counted_target_bytes(stream).sum())
    with _mesh_scope(parts):
        return segments.evaluate_stream(
            eval_fn,
            params,
            None if stateless else segments.initial_carry(model, rows, carry_sh),
            batches,
            lambda host: _global_batch(host, batch_sh, layout),
            bytes_per_token=float(getattr(source, "bytes_per_token", 1.0)),
            num_bytes=whole_split_bytes,
            position_buckets=position_buckets,
            target_losses=target_losses,
        )
