"""An interval as the experiment drivers write it: its JSON fields and its markdown cell.

>>> from seqjax.experiment.statistics import cluster_bootstrap
>>> fields = interval_fields(cluster_bootstrap([1.0, 0.0, 1.0, 1.0], n_resamples=200))
>>> sorted(fields)
['estimate', 'high', 'low']
>>> interval_cell({"estimate": 0.75, "low": 0.5, "high": 1.0})
'0.750 [0.500, 1.000]'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["interval_cell", "interval_fields"]


def interval_fields(value: Any) -> dict[str, float]:
    """{"estimate", "low", "high"} as floats, from anything with those attributes (a `BootstrapInterval`).

    >>> from types import SimpleNamespace
    >>> interval_fields(SimpleNamespace(estimate=1, low=0.5, high=2))
    {'estimate': 1.0, 'low': 0.5, 'high': 2.0}
    """
    return {"estimate": float(value.estimate), "low": float(value.low), "high": float(value.high)}


def interval_cell(v: Mapping[str, float], signed: bool = False, digits: int = 3) -> str:
    """ "estimate [low, high]" with `digits` decimals; `signed` writes the sign of each number.

    >>> interval_cell({"estimate": -0.25, "low": -0.5, "high": 0.0}, signed=True, digits=2)
    '-0.25 [-0.50, +0.00]'
    """
    f = f"+.{digits}f" if signed else f".{digits}f"
    return f"{v['estimate']:{f}} [{v['low']:{f}}, {v['high']:{f}}]"
