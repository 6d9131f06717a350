"""Cells by name, so configs can say `cell="lstm"`."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from seqjax.cells.base import Cell

__all__ = ["get", "lookup", "names", "register"]

_REGISTRY: dict[str, type[Cell]] = {}

CellType = TypeVar("CellType", bound=type[Cell])


def register(name: str) -> Callable[[CellType], CellType]:
    """Class decorator: makes the cell constructible as `seqjax.cells.get(name, **hparams)`."""

    def wrap(cls: CellType) -> CellType:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"cell name {key!r} is already registered to {_REGISTRY[key].__name__}")
        _REGISTRY[key] = cls
        cls.name = key
        return cls

    return wrap


def names() -> list[str]:
    """The registered cell names, sorted."""
    return sorted(_REGISTRY)


def lookup(name: str) -> type[Cell]:
    """The cell class registered as `name` (case-insensitive)."""
    key = str(name).lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown cell {name!r}; known cells: {', '.join(names())}.{hint}")
    return _REGISTRY[key]


def get(name: str, **hparams: Any) -> Cell:
    """Builds the cell registered as `name` (case-insensitive) with the given hyperparameters."""
    key = str(name).lower()
    cls = lookup(key)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise TypeError(
            f"cell {key!r} ({cls.__name__}) has no hyperparameter(s) {', '.join(map(repr, unknown))}; "
            f"its hyperparameters are: {', '.join(sorted(fields))}."
        )
    return cls(**hparams)
