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
    "FIELD_DOCS",
    "TASKS",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "Field",
    "MeshConfig",
    "RunConfig",
    "SyntheticDataConfig",
    "field_doc",
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
    "segment_remat": _at_least(0),
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
    # e.g. ("data", "fsdp", "model"); "sequence" splits the time axis (sequence parallelism)
    axes: tuple[str, ...] = ("data",)
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
    # copy only: blanks between the symbols and GO (None: the whole length, so the delay grows with it)
    delay: int | None = None
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
    # With train_examples: a random subset drawn with this seed, stratified by label where the split has
    # labels (None: the fixed subset spread evenly over the split)
    train_subset_seed: int | None = None
    # Seed of the training batches' order (None: `seed`, which then sets both the initialisation and the
    # order); set apart from `seed` to separate the two sources of seed-to-seed variance
    data_seed: int | None = None
    # Truncated BPTT over chunks of this many positions (None: full BPTT): the LM, or the forecaster with
    # segment_recurrence (a forecast at every position); refused for a loss at the sequence's end
    tbptt_length: int | None = dataclasses.field(default=None, metadata=_at_least(1))
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


# ----------------------------------------------------------------------------------------------------
# What every key means: one line each, the one place `scripts/train.py --print_config` and the docs read.
# ----------------------------------------------------------------------------------------------------
#: Dotted config key -> its one-line meaning. Every key of `schema(task, kind)` for every task has one
#: (tests/test_train_config.py checks), and so do the real data kinds' own keys that the configs set.
FIELD_DOCS: dict[str, str] = {
    # run and loop
    "task": "what is learned: lm (next token), classification (a label per sequence) or forecast",
    "batch_size": "training examples per step, over all devices and processes",
    "total_steps": "training steps of the run (the step cap; also the LR schedule's length)",
    "seed": "seed of the initialisation (and of the training batches' order unless data_seed is set)",
    "eval_batch_size": "examples per evaluation batch (None: batch_size)",
    "eval_examples": "validation examples per evaluation in training, spread over the split (None: all)",
    "train_examples": "train on this many examples spread over the train split (None: all of it)",
    "train_subset_seed": "with train_examples: a random subset drawn with this seed, stratified by label "
    "(None: spread evenly)",
    "data_seed": "seed of the training batches' order (None: seed, which then sets both)",
    "tbptt_length": "truncated BPTT over chunks of this many positions: lm, or forecast with "
    "segment_recurrence (None: full BPTT)",
    "tbptt_updates": "with tbptt_length: 'batch' (one update per batch) or 'chunk' (one per chunk)",
    "segment_recurrence": "carry every layer's state from one batch to the next over contiguous lanes",
    "max_train_seconds": "budget of training-step seconds (no compile/eval): eval, save, stop when spent",
    "max_param_abs": "stop (unsaved) if an update leaves any |parameter| above this (None: finite only)",
    "log_every": "steps between progress lines and train-metric records",
    "eval_every": "steps between validation evaluations (0: none during training)",
    "report_step_memory": "compile once more to log XLA's memory estimate of a train step",
    "tensorboard": "write TensorBoard event files in <workdir>/tensorboard",
    "data_dir": "where prepared data sets live (None: $SEQJAX_DATA_DIR or ~/.cache/seqjax/datasets)",
    "logical_rules": "logical axis -> mesh axes for sharding (seqjax.config.LOGICAL_RULES)",
    # model (BackboneConfig)
    "model.d_model": "residual-stream width",
    "model.num_layers": "number of blocks",
    "model.pattern": "mixer names cycled over the layers",
    "model.mixers": "mixer name -> its spec (cell and hyperparameters)",
    "model.encoder": "input encoder: embedding (token ids), dna, linear (features) or none",
    "model.vocab_size": "token vocabulary of the embedding encoder and LM head (None: from the data)",
    "model.input_size": "features per step of the linear encoder (None: from the data)",
    "model.dna_input": "how the dna encoder reads its input: auto, ids or bytes",
    "model.mlp_expansion": "MLP width as a multiple of d_model",
    "model.mlp_activation": "the blocks' MLP activation",
    "model.norm": "the blocks' normalisation",
    "model.norm_eps": "epsilon of the normalisation",
    "model.prenorm": "normalise before each sublayer (else after)",
    "model.final_norm": "a norm after the last block",
    "model.dropout_rate": "dropout rate in the blocks",
    "model.use_bias": "biases in the blocks' dense layers",
    "model.remat": "rematerialisation policy (none, full, dots_saveable, ...)",
    "model.segment_remat": "0, or N: recurrent layers run in rematerialised segments of N tokens",
    "model.dtype": "compute dtype (bfloat16: mixed precision)",
    "model.param_dtype": "parameter dtype",
    # heads
    "head.tie_embeddings": "LM: reuse the embedding table as the output projection",
    "head.num_classes": "classification: number of classes",
    "head.pooling": "classification: how the sequence is pooled (mean, last, first)",
    "head.horizon": "forecast: steps forecast ahead (None: the data's horizon)",
    "head.revin": "forecast: reversible instance normalisation of each window",
    "head.revin_affine": "forecast: learned affine parameters in RevIN",
    "head.revin_eps": "forecast: epsilon of RevIN",
    "head.per_position": "forecast: a forecast at every position (set by segment_recurrence)",
    # optimizer (OptimizerConfig)
    "optimizer.name": "adamw, adam, sgd or lion",
    "optimizer.learning_rate": "peak learning rate",
    "optimizer.schedule": "decay after warmup: cosine, linear or constant",
    "optimizer.warmup_steps": "steps of linear warmup",
    "optimizer.total_steps": "the schedule's length (follows total_steps in the task configs)",
    "optimizer.end_learning_rate_fraction": "final learning rate as a fraction of the peak",
    "optimizer.weight_decay": "decoupled weight decay",
    "optimizer.b1": "Adam/Lion first-moment decay",
    "optimizer.b2": "Adam/Lion second-moment decay",
    "optimizer.eps": "Adam epsilon",
    "optimizer.momentum": "sgd only: momentum",
    "optimizer.nesterov": "sgd only: Nesterov momentum",
    "optimizer.clip_norm": "clip the gradient's global norm to this (None: no clipping)",
    "optimizer.grad_accum_steps": "micro-steps whose gradients are summed per update",
    "optimizer.ssm_learning_rate": "learning rate of SSM dynamics parameters (None: learning_rate)",
    # mesh, checkpoint
    "mesh.shape": "device mesh shape (one -1 takes the devices that remain)",
    "mesh.axes": "mesh axis names, e.g. data, fsdp, model, sequence (splits the time axis)",
    "mesh.num_devices": "use the first N devices (None: every device; one process)",
    "checkpoint.every": "steps between checkpoints",
    "checkpoint.keep": "newest checkpoints kept",
    "checkpoint.best_metric": "eval metric whose best step is kept too (None: none)",
    "checkpoint.best_mode": "min or max: which way best_metric is better",
    "checkpoint.async_save": "save checkpoints in the background",
    # data: the trainer's keys, then the data kinds' own
    "data.kind": "synthetic, genomic, timeseries or documents",
    "data.shuffle": "shuffle the training stream (None: real data yes, synthetic no)",
    "data.task": "the data set's task (synthetic: copy, associative_recall, ...; genomic: promoter, ...)",
    "data.length": "tokens per example (the sequence length)",
    "data.num_symbols": "synthetic: distinct symbols of the task",
    "data.num_queries": "synthetic: queries per example",
    "data.vocab_size": "synthetic: token vocabulary",
    "data.delay": "synthetic copy: blanks between the symbols and GO (None: the whole length)",
    "data.seed": "synthetic: seed of the generated examples",
    "data.eval_size": "synthetic: examples in the validation and test sets",
    "data.route": "sample (embedded in the repository), auto, offline or online (fetch the full data)",
    "data.max_examples_per_split": "cap on every split's examples (None: all)",
    "data.nested": "genomic: windows chosen at this anchor length and centre-cropped to length (None: off)",
    "data.augment": "genomic: training-time augmentation of the training batches only: none, "
    "reverse_complement (p = 1/2), shift (the crop moved inside its nested anchor) or both",
    "data.max_shift": "genomic, with augment shift or both: the crop's uniform random offset range, "
    "+-max_shift bp (needs nested >= length + 2 * max_shift)",
    "data.dataset": "timeseries: which series (e.g. household_power)",
    "data.horizon": "timeseries: steps forecast ahead",
    "data.lookback": "timeseries: steps of history in each window",
    "data.stride": "timeseries: steps between consecutive training windows",
    "data.split_fractions": "fractions of the data in train, validation and test",
    "data.corpus": "documents: which corpus (e.g. gutenberg)",
    "data.tokenizer": "documents: bytes or bpe",
    "data.bpe_vocab_size": "documents: vocabulary of the BPE tokenizer",
    "data.packing": "documents: packed (documents concatenated) or padded (one document per example)",
}


def field_doc(key: str) -> str | None:
    """The one-line meaning of a dotted config key (`FIELD_DOCS`); a mixer's own keys
    (`model.mixers.<name>.<key>`) share the one of `model.mixers`. None for a key with none."""
    if key in FIELD_DOCS:
        return FIELD_DOCS[key]
    if key.startswith("model.mixers."):
        return FIELD_DOCS["model.mixers"]
    return None
