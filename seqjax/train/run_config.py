"""The run config, typed: frozen dataclasses that the trainer reads instead of the ml_collections ConfigDict.

    run = resolve(config)  # a configs/*.py ConfigDict, a nested dict (a saved config) or a RunConfig
    run.optimizer.learning_rate, run.mesh.shape, run.checkpoint.best_mode, run.data.kind

The ConfigDict stays the command-line surface (`--config=configs/x.py:preset,k=v`, `--config.a.b=v`);
`train` and `evaluate` call `resolve` once, at the start, and nothing under `seqjax.train` reads the
ConfigDict after that. `resolve` checks every key and value: an unknown key, a wrong type, a value
outside its choices or below its minimum is a `ConfigError` naming the key (`config.checkpoint.best_mode`)
and what it accepts. The checks that need the devices or the task's data (the mesh, batch sizes that
divide over it, `checkpoint.best_metric`) are `seqjax.train.preflight`'s, run before any work.

Every default lives here, on the dataclass fields; the model's and the head's defaults are those of
`BackboneConfig` and of the task's model class, read from their fields. `seqjax.config` builds the
task configs' sections from these same defaults, so every key the trainer reads is a key of every
config (tests/test_train_config.py walks the schema).

The ConfigDict's layout, and so the typed one's: run and loop options at the top level (`task`, `seed`,
`total_steps`, `batch_size`, eval, TBPTT, logging), then the sections `model` (BackboneConfig values),
`head` (the task's head options), `data` (`kind`, `shuffle` and the data layer's own options),
`optimizer`, `mesh`, `checkpoint` and `logical_rules`.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqjax import models
from seqjax.data.synthetic import TASKS as SYNTHETIC_TASKS
from seqjax.models.block import MLP_ACTIVATIONS, NORMS, REMAT_POLICIES
from seqjax.models.encoders import ENCODERS
from seqjax.models.heads import POOLINGS
from seqjax.models.tasks import HEAD_KEYS
from seqjax.train.mesh import LogicalRules, rules_from_config
from seqjax.train.optimizer import OptimizerConfig
from seqjax.train.step import LOSSES, TBPTT_UPDATES

__all__ = [
    "DATA_KINDS",
    "TASKS",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "Field",
    "MeshConfig",
    "RunConfig",
    "SyntheticDataConfig",
    "resolve",
    "resolve_data",
    "schema",
    "section_fields",
]

#: `config.task`: the trainer's tasks, named as `seqjax.models.TASKS` names them.
TASKS = tuple(LOSSES)
#: `config.data.kind`: "synthetic" is built here; the others are `seqjax.data.<kind>.make_sources`.
DATA_KINDS = ("synthetic", "documents", "genomic", "timeseries")
BEST_MODES = ("min", "max")
#: The model keys that take a name, and the names they accept.
MODEL_CHOICES = {
    "encoder": (*ENCODERS, "none"),
    "norm": tuple(NORMS),
    "mlp_activation": tuple(MLP_ACTIVATIONS),
    "remat": tuple(REMAT_POLICIES),
}
HEAD_CHOICES = {"pooling": tuple(POOLINGS)}
#: `config.model.dtype` and `param_dtype`: the floating dtypes a backbone computes in or stores.
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")
MODEL_CHOICES.update(dtype=FLOAT_DTYPES, param_dtype=FLOAT_DTYPES)


class ConfigError(ValueError):
    """A run config key is unknown, missing, of the wrong type or outside its allowed values."""


def _choices(values: tuple[Any, ...]) -> dict[str, Any]:
    return {"choices": tuple(values)}


def _at_least(minimum: float) -> dict[str, Any]:
    """Field metadata: the value (when not None) must be >= `minimum`."""
    return {"minimum": minimum}


def _above(bound: float) -> dict[str, Any]:
    """Field metadata: the value (when not None) must be > `bound`."""
    return {"above": bound}


#: Value bounds of the keys whose classes live in other layers (`BackboneConfig`, `OptimizerConfig`).
MODEL_BOUNDS = {
    "d_model": _at_least(1),
    "num_layers": _at_least(1),
    "vocab_size": _at_least(1),
    "input_size": _at_least(1),
    "mlp_expansion": _above(0),
    "norm_eps": _at_least(0),
    "dropout_rate": _at_least(0),
}
OPTIMIZER_BOUNDS = {
    "learning_rate": _at_least(0),  # a negative rate climbs the loss
    "warmup_steps": _at_least(0),
    "total_steps": _at_least(1),
    "end_learning_rate_fraction": _at_least(0),
    "weight_decay": _at_least(0),
    "b1": _at_least(0),
    "b2": _at_least(0),
    "eps": _at_least(0),
    "clip_norm": _above(0),
    "grad_accum_steps": _at_least(1),
    "ssm_learning_rate": _at_least(0),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: the device mesh (see `seqjax.train.mesh.make_mesh`)."""

    shape: tuple[int, ...] = (-1,)  # one -1 takes the devices that remain
    axes: tuple[str, ...] = ("data",)  # e.g. ("data", "fsdp", "model")
    # None: every device; else the first N (one process)
    num_devices: int | None = dataclasses.field(default=None, metadata=_at_least(1))


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`config.checkpoint`: how often to save, what to keep (see `seqjax.train.checkpoint.Checkpoints`)."""

    every: int = dataclasses.field(default=100, metadata=_at_least(1))
    keep: int = dataclasses.field(default=2, metadata=_at_least(1))
    best_metric: str | None = "loss"  # an eval metric; the best step by it is kept too
    best_mode: str = dataclasses.field(default="min", metadata=_choices(BEST_MODES))
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class SyntheticDataConfig:
    """`config.data` for kind "synthetic" (`seqjax.data.synthetic.SyntheticTask`); other kinds' options
    are checked by their data module."""

    task: str = dataclasses.field(default="associative_recall", metadata=_choices(SYNTHETIC_TASKS))
    length: int = dataclasses.field(default=64, metadata=_at_least(1))
    num_symbols: int = dataclasses.field(default=8, metadata=_at_least(1))
    num_queries: int = dataclasses.field(default=4, metadata=_at_least(1))
    vocab_size: int = dataclasses.field(default=16, metadata=_at_least(1))
    seed: int = 0
    # examples in the fixed validation and test sets
    eval_size: int = dataclasses.field(default=1024, metadata=_at_least(1))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: the trainer's own keys typed; `options` go to the data layer as they are."""

    kind: str = dataclasses.field(default="synthetic", metadata=_choices(DATA_KINDS))
    shuffle: bool | None = None  # None: shuffle real data, keep synthetic streams in order
    options: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def shuffled(self) -> bool:
        """Whether the training stream is shuffled (`shuffle`, or by kind when None)."""
        return self.kind != "synthetic" if self.shuffle is None else self.shuffle

    def source_options(self) -> dict[str, Any]:
        """What the data layer's `make_sources` receives: the kind and its own options."""
        return {"kind": self.kind, **self.options}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run, typed. `model` holds `BackboneConfig` values and `head` the task's head options
    (plain values: the trainer builds the model once the data fixes a forecaster's input size)."""

    task: str = dataclasses.field(metadata=_choices(TASKS))
    batch_size: int = dataclasses.field(metadata=_at_least(1))
    total_steps: int = dataclasses.field(metadata=_at_least(1))
    model: Mapping[str, Any]
    data: DataConfig
    head: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logical_rules: LogicalRules = ()  # logical axis -> mesh axes; configs use seqjax.config.LOGICAL_RULES
    seed: int = 0
    eval_batch_size: int | None = dataclasses.field(default=None, metadata=_at_least(1))  # None: batch_size
    eval_examples: int | None = dataclasses.field(default=None, metadata=_at_least(1))  # None: whole split
    # Train on this many examples spread evenly over the train split (None: all), for learning curves;
    # validation and test stay whole (data.max_examples_per_split caps every split).
    train_examples: int | None = dataclasses.field(default=None, metadata=_at_least(1))
    tbptt_length: int | None = dataclasses.field(default=None, metadata=_at_least(1))  # LM only; None: BPTT
    # "batch": one update per batch (chunk gradients summed); "chunk": one per chunk (the optimizer's count
    # and LR schedule then advance per chunk, while `step` still counts batches)
    tbptt_updates: str = dataclasses.field(default="batch", metadata=_choices(TBPTT_UPDATES))
    # LM on a token stream (data.kind "documents"): batches are consecutive segments of contiguous lanes
    # and every layer's state is carried from one batch to the next, the gradient stopped between them
    # (stateful truncated BPTT; `seqjax.train.segments`, docs/training.md "Segment recurrence")
    segment_recurrence: bool = False
    # a budget of training-step time (compiling and evaluation excluded): eval, save and stop when spent
    max_train_seconds: float | None = dataclasses.field(default=None, metadata=_above(0))
    # The step guard's bound on every parameter's |value| (None: finite only). Healthy runs stay well
    # under 1e2; an update past the bound is not applied and stops the run, so it is never checkpointed.
    max_param_abs: float | None = dataclasses.field(default=1e4, metadata=_above(0))
    log_every: int = dataclasses.field(default=10, metadata=_at_least(1))
    # 0: no evaluation during training
    eval_every: int = dataclasses.field(default=100, metadata=_at_least(0))
    report_step_memory: bool = False  # compile once more to log XLA's memory estimate of a train step
    tensorboard: bool = True  # TensorBoard event files in workdir/tensorboard
    data_dir: str | None = None  # None: $SEQJAX_DATA_DIR or ~/.cache/seqjax/datasets

    @property
    def eval_batch(self) -> int:
        """The eval batch size: `eval_batch_size`, else `batch_size`."""
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values in the ConfigDict's layout; `resolve` reads them back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "data":
                value = {"kind": value.kind, "shuffle": value.shuffle, **value.options}
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


# ----------------------------------------------------------------------------------------------------
# Schemas of the sections whose defaults live on other classes.
# ----------------------------------------------------------------------------------------------------
class Field(typing.NamedTuple):
    """One key of a section: its type, default (`dataclasses.MISSING`: required), allowed values and
    bounds (`minimum`: value >= it; `above`: value > it; both skip None)."""

    hint: Any
    default: Any
    choices: tuple[Any, ...] | None
    minimum: float | None = None
    above: float | None = None


def _class_fields(cls: type, names: tuple[str, ...] | None = None) -> dict[str, Field]:
    """Field name -> (type, default, choices) of a dataclass (a flax module is one too)."""
    namespace = vars(sys.modules[cls.__module__])
    bounds = _BOUNDS_OF.get(cls, {})
    out = {}
    for f in dataclasses.fields(cls):
        if (names is not None and f.name not in names) or (names is None and not f.init):
            continue
        hint = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # the classes' own annotations
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        metadata = {**f.metadata, **bounds.get(f.name, {})}
        out[f.name] = Field(
            hint, default, metadata.get("choices"), metadata.get("minimum"), metadata.get("above")
        )
    return out


def _model_fields() -> dict[str, Field]:
    fields = _class_fields(models.BackboneConfig)
    return {k: f._replace(choices=MODEL_CHOICES.get(k)) for k, f in fields.items()}


def _head_fields(task: str) -> dict[str, Field]:
    fields = _class_fields(models.TASKS[task], HEAD_KEYS[task])
    fields = {k: f._replace(choices=HEAD_CHOICES.get(k)) for k, f in fields.items()}
    if task == "forecast":
        fields["horizon"] = Field(int | None, None, None, minimum=1)
    return fields


_BOUNDS_OF = {models.BackboneConfig: MODEL_BOUNDS, OptimizerConfig: OPTIMIZER_BOUNDS}
_NESTED = ("model", "head", "data", "optimizer", "mesh", "checkpoint", "logical_rules")
_SECTIONS = {
    "optimizer": OptimizerConfig,
    "mesh": MeshConfig,
    "checkpoint": CheckpointConfig,
    "synthetic_data": SyntheticDataConfig,
}


def section_fields(section: str, task: str | None = None) -> dict[str, Field]:
    """The keys of one section: "run" (the top-level keys that are not sections), "model", "head" (of
    `task`), "optimizer", "mesh", "checkpoint" or "synthetic_data" (`config.data` of kind "synthetic",
    besides `kind` and `shuffle`)."""
    if section == "run":
        return {k: f for k, f in _class_fields(RunConfig).items() if k not in _NESTED}
    if section == "model":
        return _model_fields()
    if section == "head":
        return _head_fields(task)
    if section == "data":
        return {k: f for k, f in _class_fields(DataConfig).items() if k != "options"}
    return _class_fields(_SECTIONS[section])


def schema(task: str, kind: str) -> dict[str, Any]:
    """The keys of a run config for `task` and data `kind`, as nested dicts of key -> default
    (`dataclasses.MISSING` where required). A real data kind's own keys belong to the data layer and are
    not listed: its `data` is `kind` and `shuffle` only.

        set(schema("lm", "synthetic")["optimizer"]) == {f.name for f in dataclasses.fields(OptimizerConfig)}
    """
    defaults = lambda fields: {k: f.default for k, f in fields.items()}
    out: dict[str, Any] = defaults(section_fields("run"))
    out["logical_rules"] = ()
    for name in ("model", "optimizer", "mesh", "checkpoint"):
        out[name] = defaults(section_fields(name))
    out["head"] = defaults(section_fields("head", task))
    out["data"] = {**defaults(section_fields("data")), "kind": kind}
    if kind == "synthetic":
        out["data"].update(defaults(section_fields("synthetic_data")))
    return out


# ----------------------------------------------------------------------------------------------------
# Checking values.
# ----------------------------------------------------------------------------------------------------
def _describe(hint: Any) -> str:
    if hint is Any:
        return "any value"
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join("None" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a tuple of {_describe(args[0])}"
    return {bool: "True or False", int: "an int", float: "a number", str: "a string"}.get(hint, str(hint))


def _typed(where: str, value: Any, hint: Any) -> Any:
    """`value` as `hint` says (int, float, str, bool, X | None, tuple[X, ...], Any); else a ConfigError."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if hint is Any:
        return value
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _typed(where, value, arg)
            except ConfigError:
                continue
    elif typing.get_origin(hint) is tuple and isinstance(value, list | tuple):
        item = typing.get_args(hint)[0]
        return tuple(_typed(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    elif hint is bool and isinstance(value, bool | np.bool_):
        return bool(value)
    elif hint is int and isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
        return int(value)
    elif (
        hint is float
        and isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
    ):
        return float(value)
    elif hint is str and isinstance(value, str):
        return value
    raise ConfigError(
        f"{where}: expected {_describe(hint)}, got {value!r} ({type(value).__name__}); set it as "
        f"--{where}=<{_describe(hint)}>."
    )


def _checked(where: str, value: Any, field: Field) -> Any:
    value = _typed(where, value, field.hint)
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(field.choices)}.")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if field.minimum is not None and not value >= field.minimum:
            raise ConfigError(f"{where}: {value!r} is not allowed; set it to a value >= {field.minimum}.")
        if field.above is not None and not value > field.above:
            raise ConfigError(f"{where}: {value!r} is not allowed; set it to a value > {field.above}.")
    return value


def _mapping(where: str, values: Any) -> dict[str, Any]:
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a section of keys, got {values!r}.")
    return dict(values)


def _unknown(where: str, given: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(hints)}; known keys: {', '.join(sorted(known))}."
        )


def _fields(where: str, values: Any, fields: Mapping[str, Field], *, fill: bool = True) -> dict[str, Any]:
    """`values` checked against `fields`; missing keys take their defaults (when `fill`)."""
    values = _mapping(where, values)
    _unknown(where, values, fields)
    out = {}
    for name, field in fields.items():
        if name in values:
            out[name] = _checked(f"{where}.{name}", values[name], field)
        elif field.default is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name} is missing; set it ({_describe(field.hint)}).")
        elif fill:
            out[name] = field.default
    return out


def _section(cls: type, where: str, values: Any) -> Any:
    return cls(**_fields(where, values, _class_fields(cls)))


def resolve_data(values: Any) -> DataConfig:
    """The typed `config.data` section (the synthetic kind's options checked and filled; the others are the
    data layer's)."""
    values = _mapping("config.data", values)
    own = section_fields("data")
    typed = _fields("config.data", {k: values.pop(k) for k in own if k in values}, own)
    if typed["kind"] == "synthetic":
        values = _fields("config.data", values, section_fields("synthetic_data"))
    return DataConfig(**typed, options=types.MappingProxyType(values))


def resolve(config: Any) -> RunConfig:
    """The typed run config of a ConfigDict or nested dict (a RunConfig is returned as it is).

    Raises ConfigError naming the key for an unknown key, a missing required one (`task`, `batch_size`,
    `total_steps`, `model`, `data`), a value of the wrong type, one outside its allowed values or
    below its minimum, and a warmup longer than the schedule.
    """
    if isinstance(config, RunConfig):
        return config
    values = _mapping("config", config)
    _unknown("config", values, _class_fields(RunConfig))
    run = _fields("config", {k: v for k, v in values.items() if k not in _NESTED}, section_fields("run"))
    task = run["task"]
    for key in ("model", "data"):
        if key not in values:
            raise ConfigError(f"config.{key} is missing; a task config sets it (see configs/*.py).")
    optimizer = _section(OptimizerConfig, "config.optimizer", values.get("optimizer", {}))
    if optimizer.warmup_steps > optimizer.total_steps:
        raise ConfigError(
            f"config.optimizer.warmup_steps: {optimizer.warmup_steps} exceeds config.optimizer.total_steps "
            f"({optimizer.total_steps}); set it to at most {optimizer.total_steps}."
        )
    try:
        rules = rules_from_config(values.get("logical_rules", ()))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.logical_rules: {err}") from None
    return RunConfig(
        **run,
        model=types.MappingProxyType(_fields("config.model", values["model"], _model_fields(), fill=False)),
        head=types.MappingProxyType(_fields("config.head", values.get("head", {}), _head_fields(task))),
        data=resolve_data(values["data"]),
        optimizer=optimizer,
        mesh=_section(MeshConfig, "config.mesh", values.get("mesh", {})),
        checkpoint=_section(CheckpointConfig, "config.checkpoint", values.get("checkpoint", {})),
        logical_rules=rules,
    )
