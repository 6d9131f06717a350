"""The task configs' argument: `preset[,key=value...]`, parsed into typed options.

preset, options = parse_arg("mamba,length=4096,size=accelerator", "lstm", {"length": int}, "configs/x.py")
# ("mamba", {"length": 4096, "size": "accelerator"})
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any

from seqjax.config.presets import HYBRID_PRESETS, PRESET_OPTIONS, PRESETS, SIZES
from seqjax.train.run_config import ConfigError

__all__ = ["apply_overrides", "parse_arg"]

_TYPE_NAMES = {int: "an int", float: "a number", str: "a string"}


def parse_arg(
    arg: str | None, default: str, options: Mapping[str, type], where: str
) -> tuple[str, dict[str, int | float | str]]:
    """`"preset,key=value,..."` → (preset, {key: value as `options[key]`}); `size` ("cpu" or
    "accelerator") is always an option, and so are the preset's own `PRESET_OPTIONS` (e.g. Linformer's
    `sharing`; `preset_options` picks them out). Unknown presets, options and sizes, values of the wrong
    type, and another preset's options are errors that name `where` and the fix.

    >>> parse_arg("linformer,sharing=layerwise", "lstm", {}, "configs/x.py")
    ('linformer', {'sharing': 'layerwise'})
    >>> parse_arg("lstm,sharing=layerwise", "lstm", {}, "x.py")
    Traceback (most recent call last):
    ...
    seqjax.train.run_config.ConfigError: x.py: option 'sharing' is for preset(s) ['linformer'], not 'lstm'.
    """
    parts = [p for p in (arg or default).split(",") if p]
    preset, raw = parts[0], {}
    if preset not in PRESETS and preset not in HYBRID_PRESETS:
        known = sorted([*PRESETS, *HYBRID_PRESETS])
        raise ConfigError(f"{where}: unknown preset {preset!r}; choose one of {known}.")
    choices = PRESET_OPTIONS.get(preset, {})
    options = {**options, "size": str, **dict.fromkeys(choices, str)}
    for part in parts[1:]:
        if "=" not in part:
            raise ConfigError(f"{where}: option {part!r} is not key=value.")
        key, value = part.split("=", 1)
        raw[key] = value
    for key in sorted(set(raw) - set(options)):
        owners = sorted(name for name, theirs in PRESET_OPTIONS.items() if key in theirs)
        if owners:
            raise ConfigError(f"{where}: option {key!r} is for preset(s) {owners}, not {preset!r}.")
    unknown = sorted(set(raw) - set(options))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known: {sorted(options)}.")
    for key, allowed in choices.items():
        if key in raw and raw[key] not in allowed:
            raise ConfigError(
                f"{where}: option {key}={raw[key]!r} of preset {preset!r} must be one of {list(allowed)}."
            )
    if raw.get("size", "cpu") not in SIZES:
        raise ConfigError(f"{where}: size must be one of {sorted(SIZES)}, got {raw['size']!r}.")
    values: dict[str, int | float | str] = {}
    for key, value in raw.items():
        kind = options[key]
        try:
            values[key] = kind(value)
        except ValueError:
            raise ConfigError(
                f"{where}: option {key}={value!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}."
            ) from None
    return preset, values


class UnknownOverrideError(ConfigError, KeyError):
    """An override of a key the config lacks: a `ConfigError` (drivers print it in one line) that is also
    the KeyError ml_collections raises for such a key. Printed as its message, not a KeyError's repr."""

    __str__ = BaseException.__str__


def apply_overrides(config: Any, overrides: Sequence[str]) -> Any:
    """A copy of `config` with each `dotted.key=value` of `overrides` set, as `--config.dotted.key=value`
    would set it: the value is read as a Python literal (`3e-4`, `True`, `None`, `(2, 4)`), else kept as
    a string; a key the config lacks is an error naming it.

    >>> import ml_collections
    >>> c = ml_collections.ConfigDict({"batch_size": 8, "optimizer": {"name": "adamw"}})
    >>> apply_overrides(c, ["batch_size=2", "optimizer.name=lion"]).optimizer.name
    'lion'
    """
    config = config.copy_and_resolve_references()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config override {item!r}: write it as dotted.key=value, e.g. batch_size=4.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        from seqjax.config.cli import unknown_override

        unknown = unknown_override(config, key)
        if unknown:
            raise UnknownOverrideError(f"config override {item!r}: {unknown}")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        with config.unlocked():
            node[leaf] = value
    return config
