"""The ConfigDict sections every task config shares, built from the typed run config's defaults.

    c = base_config("mamba", "cpu", task="classification", max_length=2048)
    c.data = data_section("genomic", shuffle=True, task="promoter", length=2048, route="sample")
    c.head.num_classes = 2

Every key of `seqjax.train.run_config` (and of `BackboneConfig` and the task's head) appears in the
sections built here, with the default the trainer would use, so that every option can be set with
`--config.a.b=value`. A key whose default is None becomes a typed `FieldReference`, so that the command
line can still set it.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import ml_collections

from seqjax.config.presets import SIZES, check_preset_task, preset_model
from seqjax.config.rules import LOGICAL_RULES
from seqjax.train.run_config import Field, section_fields

__all__ = [
    "add_run_sections",
    "base_config",
    "data_section",
    "head_section",
    "model_section",
    "optimizer_section",
    "section",
]


def _value(field: Field, value: Any) -> Any:
    """`value`, or a FieldReference typed by `field` when it is None (ml_collections cannot infer one)."""
    if value is not None:
        return value
    hint = field.hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return ml_collections.FieldReference(None, field_type=hint)


def section(fields: dict[str, Field], **values: Any) -> ml_collections.ConfigDict:
    """A ConfigDict with every key of `fields`: its default, or the value given here."""
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise KeyError(f"section: unknown key(s) {unknown}; known: {sorted(fields)}.")
    return ml_collections.ConfigDict({k: _value(f, values.get(k, f.default)) for k, f in fields.items()})


def model_section(
    preset: str, *, d_model: int, num_layers: int, max_length: int, mixer: dict | None = None, **values: Any
) -> ml_collections.ConfigDict:
    """`config.model`: every `BackboneConfig` key; the pattern repeats `preset`'s mixer (`mixer` overrides
    some of its hyperparameters), or is a hybrid preset's pattern (`preset_model`)."""
    model = preset_model(preset, max_length=max_length, num_layers=num_layers, **(mixer or {}))
    return section(section_fields("model"), d_model=d_model, **{**model, **values})


def head_section(task: str, **values: Any) -> ml_collections.ConfigDict:
    """`config.head`: every head option of `task` (`seqjax.models.tasks.HEAD_KEYS`)."""
    return section(section_fields("head", task), **values)


def optimizer_section(c: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    """`config.optimizer`: every `OptimizerConfig` key; its `total_steps` is a reference to
    `c.total_steps`, so overriding `--config.total_steps` also stretches the learning-rate schedule."""
    return section(section_fields("optimizer"), total_steps=c.get_ref("total_steps"), **values)


def data_section(kind: str, *, shuffle: bool, **options: Any) -> ml_collections.ConfigDict:
    """`config.data`: the trainer's `kind` and `shuffle`, then the data layer's options (for "synthetic",
    every `SyntheticDataConfig` key)."""
    if kind == "synthetic":
        fields = section_fields("synthetic_data")
        options = dict(section(fields, **options).items())
    return ml_collections.ConfigDict({"kind": kind, "shuffle": shuffle, **options})


def base_config(
    preset: str, size_name: str, *, task: str, max_length: int, mixer: dict | None = None
) -> ml_collections.ConfigDict:
    """Every section but `data` for `preset` at `size_name` (`SIZES`); `max_length` sizes attention KV
    caches; `mixer` overrides some of the preset's hyperparameters (`preset_options`)."""
    check_preset_task(preset, task)
    size = SIZES[size_name]
    c = ml_collections.ConfigDict()
    c.task = task
    # One reference: overriding --config.total_steps also stretches the learning-rate schedule.
    c.total_steps = ml_collections.FieldReference(size["total_steps"])
    c.seed = 0
    # dtype "bfloat16" is mixed precision (parameters and optimizer state stay f32); remat takes a
    # models.REMAT_POLICIES name, e.g. "full" or "dots_saveable".
    c.model = model_section(
        preset, d_model=size["d_model"], num_layers=size["num_layers"], max_length=max_length, mixer=mixer
    )
    c.head = head_section(task)
    c.optimizer = optimizer_section(
        c,
        name="adamw",
        learning_rate=size["learning_rate"],
        schedule="cosine",  # or "linear", "constant" (after warmup)
        warmup_steps=max(10, size["total_steps"] // 20),
        weight_decay=0.05,
        clip_norm=1.0,
    )
    add_run_sections(c, batch_size=size["batch_size"], eval_examples=None)
    return c


def add_run_sections(c: ml_collections.ConfigDict, *, batch_size: int, eval_examples: int | None) -> None:
    """Batching, eval, TBPTT, logging, mesh, sharding rules and checkpoint keys, the same for every task:
    the run config's defaults (`seqjax.train.run_config.RunConfig`), with these batch sizes."""
    run = section_fields("run")
    given = {"batch_size": batch_size, "eval_batch_size": batch_size, "eval_examples": eval_examples}
    for name, field in run.items():
        if name in ("task", "total_steps", "seed"):
            continue  # the task config's own
        c[name] = _value(field, given.get(name, field.default))
    c.mesh = section(section_fields("mesh"))
    c.logical_rules = LOGICAL_RULES
    c.checkpoint = section(section_fields("checkpoint"))
