"""The start-up checks of a resolved run config that need the devices or the task: run before any data is
prepared or anything compiled, so a config that cannot train fails in a second, not at the first
evaluation.

    run = resolve(config)
    check_before_work(run, jax.devices(), jax.process_count())  # else a ConfigError naming the key

`resolve` checks each key on its own (type, choices, minimum). Here: the mesh (`mesh.num_devices` at
most the devices there are, `mesh.shape` fitting them, every `mesh.axes` name one that
`logical_rules` shards over), the batch sizes (`batch_size` and the eval batch divide over the
data-parallel mesh axes and the processes), a real data kind's own options (its module's
`resolve_config`), `checkpoint.best_metric` (one of the task's eval metrics, `seqjax.data.metrics`),
`segment_recurrence` (an LM on a token stream or a forecaster on a time series, whose every layer's
state can be carried: `seqjax.train.segments.check_segment_recurrence`), `tbptt_length` (a task whose
loss sits at every position: `check_tbptt`) and, on a mesh whose `sequence` axis (the one the rules map
"length" onto) has size > 1, every layer's cell (one whose time axis can be split:
`check_sequence_parallel`).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from seqjax.data import metrics as metrics_lib
from seqjax.models import BackboneConfig, sequence_parallel_config
from seqjax.train.mesh import resolve_mesh_shape
from seqjax.train.run_config import ConfigError, RunConfig
from seqjax.train.segments import check_segment_recurrence

__all__ = [
    "check_before_work",
    "check_sequence_parallel",
    "check_tbptt",
    "data_parallel_size",
    "eval_metric_names",
    "sequence_parallel_size",
]

#: Counts the metrics report alongside the scores; not something to pick a best checkpoint by.
_COUNTS = ("examples", "tokens")


def eval_metric_names(task: str, horizon: int | None = None) -> tuple[str, ...]:
    """The names of the metrics an evaluation of `task` reports (`seqjax.data.metrics`), counts left
    out; a forecaster's `mse@h`/`mae@h` are those shorter than `horizon` (all of them when None).

        eval_metric_names("classification")  # ('accuracy', 'auroc', 'balanced_accuracy', 'macro_f1', 'mcc')
    """
    if task == "lm":
        names = metrics_lib.lm_metrics(1.0, 1.0)
    elif task == "classification":
        names = metrics_lib.classification_metrics(np.array([0, 1]), np.eye(2))
    elif task == "forecast":
        reported = inspect.signature(metrics_lib.forecast_metrics).parameters["horizons"].default
        steps = max(reported) + 1 if horizon is None else horizon
        names = metrics_lib.forecast_metrics(np.zeros((1, steps, 1)), np.zeros((1, steps, 1)))
    else:
        raise ConfigError(
            f"config.task: {task!r} has no eval metrics; choose one of lm, classification, forecast."
        )
    return tuple(sorted(k for k in names if k not in _COUNTS))


def data_parallel_size(run: RunConfig, mesh_shape: Sequence[int]) -> int:
    """How many ways the batch is split: the product of the sizes of the mesh axes that
    `run.logical_rules` maps the "batch" logical axis to (`mesh_shape` resolved, no -1)."""
    sizes = dict(zip(run.mesh.axes, mesh_shape, strict=True))
    target = dict(run.logical_rules).get("batch")
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    return math.prod(sizes.get(axis, 1) for axis in axes)


def sequence_parallel_size(run: RunConfig, mesh_shape: Sequence[int]) -> tuple[str | None, int]:
    """(the mesh axis `run.logical_rules` maps the time axis "length" onto, how many ways it splits
    time), with `mesh_shape` resolved; (None, 1) when time stays whole."""
    sizes = dict(zip(run.mesh.axes, mesh_shape, strict=True))
    target = dict(run.logical_rules).get("length")
    axes = [a for a in ((target,) if isinstance(target, str) else tuple(target or ())) if sizes.get(a, 1) > 1]
    if len(axes) > 1:
        raise ConfigError(
            f"config.logical_rules map 'length' onto the mesh axes {axes}; the time axis can be split over "
            f"one mesh axis only (e.g. 'sequence')."
        )
    return (axes[0], sizes[axes[0]]) if axes else (None, 1)


def check_sequence_parallel(run: RunConfig, mesh_shape: Sequence[int]) -> None:
    """Raises a ConfigError naming `config.mesh.shape`, the first layer whose cell cannot split its time
    axis, why, and the alternatives, when the mesh splits time (`sequence_parallel_size` > 1) and some
    layer's cell has no sequence-parallel form (a nonlinear recurrence: LSTM, GRU, E-LSTM, ...; softmax
    attention). Nothing is compiled: the cells are built from `config.model` and asked."""
    axis, size = sequence_parallel_size(run, mesh_shape)
    if axis is None:
        return
    values = dict(run.model)
    values.update(encoder="none", input_size=None)  # the cells alone: the data decides the encoder's size
    try:
        sequence_parallel_config(BackboneConfig.from_dict(values), axis, "the model")
    except ValueError as err:
        raise ConfigError(
            f"config.mesh.shape {tuple(run.mesh.shape)} with axes {tuple(run.mesh.axes)} splits the time "
            f"axis {size} ways (sequence parallelism), but {err} Or set the {axis!r} axis to 1."
        ) from None


def _data_options(run: RunConfig) -> dict[str, Any]:
    """A real data kind's options as its module resolves them (errors name the key); synthetic: as given."""
    if run.data.kind == "synthetic":
        return dict(run.data.options)
    module = importlib.import_module(f"seqjax.data.{run.data.kind}")
    try:
        return module.resolve_config(run.data.source_options())
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"config.data: {err}") from None


def _check_mesh(run: RunConfig, num_available: int) -> tuple[int, ...]:
    """The mesh shape resolved against the devices the run uses; errors name `config.mesh.*`."""
    mesh = run.mesh
    if mesh.num_devices is not None and mesh.num_devices > num_available:
        raise ConfigError(
            f"config.mesh.num_devices: {mesh.num_devices} but only {num_available} device(s) are available; "
            f"set it to at most {num_available}, or to None for every device."
        )
    used = num_available if mesh.num_devices is None else mesh.num_devices
    if len(mesh.shape) != len(mesh.axes):
        raise ConfigError(
            f"config.mesh.shape {mesh.shape} and config.mesh.axes {mesh.axes} differ in length; give one "
            f"size per axis name."
        )
    if len(set(mesh.axes)) != len(mesh.axes):
        raise ConfigError(f"config.mesh.axes: {mesh.axes} repeats a name; name each axis once.")
    known = sorted({a for _, t in run.logical_rules for a in ((t,) if isinstance(t, str) else t or ())})
    for axis in mesh.axes:
        if axis not in known:
            raise ConfigError(
                f"config.mesh.axes: {axis!r} is not a mesh axis that config.logical_rules shards over, so "
                f"nothing would be split over it; choose from {known} (or add a rule that names it)."
            )
    try:
        return resolve_mesh_shape(mesh.shape, used)
    except ValueError as err:
        raise ConfigError(f"config.mesh.shape: {err}") from None


def _check_batch(key: str, value: int, data_parallel: int, process_count: int) -> None:
    for ways, what in ((data_parallel, "data-parallel mesh size"), (process_count, "process count")):
        if value % ways:
            lower, upper = value // ways * ways, -(-value // ways) * ways
            fits = f"{lower} or {upper}" if lower else f"{upper}"
            raise ConfigError(
                f"{key}: {value} does not divide over the {what} {ways}; set a multiple of {ways} "
                f"(e.g. {fits}) or change config.mesh."
            )


def check_tbptt(run: RunConfig) -> None:
    """Raises a ConfigError naming `config.tbptt_length`, why and the fix, when truncated BPTT cannot
    train `run`'s task. It needs a loss at every position, so that every chunk has its own: the LM
    (every token) and the stream forecaster (`segment_recurrence`: a forecast at every position). A
    classifier's loss and a windowed forecaster's (RevIN over the window, one forecast after its last
    step) sit at the sequence's end: every chunk but the last would have no loss, and the only gradient
    the earlier chunks get, through the carried state, is exactly what truncation cuts."""
    if run.tbptt_length is None or run.task == "lm":
        return
    why = (
        "truncated BPTT needs a loss at every position, so that each chunk has its own; {what}, so "
        "every chunk but the last would have no loss and the earlier chunks' only gradient (through "
        "the carried state) is exactly what truncation cuts."
    )
    if run.task == "forecast":
        if run.segment_recurrence:
            return  # the stream forecaster: a forecast at every position (`check_segment_recurrence`)
        what = "the windowed forecaster's loss is one forecast after the window's last step"
        fix = (
            "Train the stream forecaster (config.segment_recurrence=True and config.head.revin=False, "
            "e.g. configs/timeseries.py:<preset>,stream=1: a forecast at every position), or set "
            "config.tbptt_length=None (full BPTT over the window)."
        )
    else:
        what = f"task {run.task!r} has one output per sequence (its loss at the sequence's end)"
        fix = "Set config.tbptt_length=None (full BPTT over the sequence)."
    raise ConfigError(f"config.tbptt_length={run.tbptt_length}: {why.format(what=what)} {fix}")


def check_model(run: RunConfig) -> None:
    """Raises a ConfigError naming `config.model` when its cells cannot be built (a `pattern` entry that
    names no mixer or registered cell, a mixer field its cell does not take): built here from the config
    alone, so the refusal comes before any data is prepared, not after."""
    values = dict(run.model)
    values.update(encoder="none", input_size=None)  # the cells alone: the data decides the encoder's size
    try:
        BackboneConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.model: {err}") from None


def check_length_divides(run: RunConfig, mesh_shape: Sequence[int], length: int) -> None:
    """Raises a ConfigError naming the key and the divisors of `length` (the model's input length) when
    the mesh's time split (`sequence_parallel_size`) or `config.tbptt_length` does not divide it. The
    trainer calls it with the data's length; `check_before_work` earlier, with the length the data
    options name (genomic windows and documents), so that a wrong value is refused before any data is
    prepared rather than after a download."""
    divisors = lambda: [d for d in range(1, length + 1) if length % d == 0]
    axis, shards = sequence_parallel_size(run, mesh_shape)
    if length % shards:
        raise ConfigError(
            f"config.mesh.shape {tuple(run.mesh.shape)} splits the time axis {shards} ways (mesh axis "
            f"{axis!r}), which does not divide the sequence length {length}; set that axis of "
            f"config.mesh.shape to a divisor of {length} ({divisors()}), or change the data's length."
        )
    if run.tbptt_length is not None and length % run.tbptt_length:
        raise ConfigError(
            f"config.tbptt_length={run.tbptt_length} must divide the sequence length {length} (the "
            f"chunks cut every batch row); choose a divisor of {length}: {divisors()}."
        )


def check_before_work(run: RunConfig, devices: Sequence[Any], process_count: int = 1) -> None:
    """Raises a ConfigError naming `config.<key>`, its value and the fix, for anything in `run` that
    cannot work on `devices` (all of the run's processes' devices) or for its task; see the module
    docstring for the list."""
    shape = _check_mesh(run, len(devices))
    data_parallel = data_parallel_size(run, shape)
    _check_batch("config.batch_size", run.batch_size, data_parallel, process_count)
    eval_key = (
        "config.eval_batch_size" if run.eval_batch_size is not None else "config.batch_size (the eval batch)"
    )
    _check_batch(eval_key, run.eval_batch, data_parallel, process_count)
    options = _data_options(run)
    check_model(run)
    check_segment_recurrence(run)
    check_tbptt(run)
    check_sequence_parallel(run, shape)
    if run.data.kind in ("genomic", "documents") and isinstance(options.get("length"), int):
        check_length_divides(run, shape, options["length"])  # the model's input length, before any data
    metric = run.checkpoint.best_metric
    if metric is not None:
        horizon = run.head.get("horizon") or options.get("horizon")
        names = eval_metric_names(run.task, horizon)
        if metric not in names:
            raise ConfigError(
                f"config.checkpoint.best_metric: {metric!r} is not an eval metric of task {run.task!r}; "
                f"choose one of {list(names)}, or None to keep no best checkpoint."
            )
