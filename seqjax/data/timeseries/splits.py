"""The time-series entry points: `make_sources` (the splits as `TimeSeriesSplit`s) and `prepare`.

>>> splits = make_sources({"dataset": "electricity", "lookback": 96}, "datasets")  # doctest: +SKIP
>>> splits["test"][0]["targets"].shape  # doctest: +SKIP
(96, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seqjax.data.timeseries.builder import load_series
from seqjax.data.timeseries.catalog import resolve_config
from seqjax.data.timeseries.windows import TimeSeriesSplit, make_window_sources

__all__ = ["make_sources", "prepare"]


def make_sources(data: Mapping[str, Any], data_dir: str) -> dict[str, TimeSeriesSplit]:
    """{"train", "validation", "test"} window sources for the data config `data` (keys: DEFAULTS),
    preparing the TFDS data under `data_dir` first if needed."""
    config = resolve_config(data)
    series = load_series(config["dataset"], config["route"], data_dir)
    return make_window_sources(
        series,
        lookback=config["lookback"],
        horizon=config["horizon"],
        stride=config["stride"],
        split_fractions=config["split_fractions"],
        max_examples_per_split=config["max_examples_per_split"],
    )


def prepare(data: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """Prepares the data of config `data` under `data_dir`; returns a small summary for printing."""
    config = resolve_config(data)
    sources = make_sources(config, data_dir)
    series = load_series(config["dataset"], config["route"], data_dir)
    return {
        "dataset": config["dataset"],
        "route": config["route"],
        "rows": len(series),
        "time_range": [str(series.timestamps[0]), str(series.timestamps[-1])],
        "variables": list(series.variables),
        "missing_fraction": round(float(1.0 - series.observed.mean()), 6),
        "train_mean": [round(float(m), 6) for m in sources["train"].mean],
        "train_std": [round(float(s), 6) for s in sources["train"].std],
        "splits": {split: source.describe() for split, source in sources.items()},
    }
