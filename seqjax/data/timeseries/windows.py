"""The LTSF window protocol on a `Series`: chronological split rows, training statistics, the windows of
each split as a `TimeSeriesSplit`, and the trivial baseline forecasts.

    >>> split_row_counts(1000, (0.7, 0.1, 0.2))
    (700, 100, 200)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seqjax.data.stream import SeriesStream
from seqjax.data.timeseries.catalog import BASELINES
from seqjax.data.timeseries.parsing import Series

__all__ = [
    "TimeSeriesSplit",
    "baseline_forecasts",
    "make_window_sources",
    "split_row_counts",
    "training_statistics",
]


def split_row_counts(num_rows: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(num_train, num_val, num_test) rows, as in the LTSF code: train and test are floored, validation
    takes the rest."""
    num_train = int(num_rows * fractions[0])
    num_test = int(num_rows * fractions[2])
    return num_train, num_rows - num_train - num_test, num_test


def training_statistics(values: np.ndarray, observed: np.ndarray, num_train: int) -> tuple[np.ndarray, ...]:
    """Per-variable (mean, std) over the observed values of rows [0, num_train) only (float64 sums,
    population std; std 0 becomes 1). Rows after `num_train` never enter."""
    train_values = np.asarray(values[:num_train], np.float64)
    train_observed = np.asarray(observed[:num_train], bool)
    counts = train_observed.sum(axis=0)
    if (counts == 0).any():
        raise ValueError(
            f"variables {np.flatnonzero(counts == 0).tolist()} have no observed value in the "
            f"{num_train} training rows; use a larger training fraction."
        )
    masked = np.where(train_observed, train_values, 0.0)
    mean = masked.sum(axis=0) / counts
    centred = np.where(train_observed, train_values - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=0) / counts)
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


class TimeSeriesSplit:
    """Random-access windows of one split: `src[i]` -> {"inputs": float32[lookback, V], "targets":
    float32[horizon, V]}, normalized with the training statistics. Example i's target rows are
    `target_rows(i)`; a pure function of (series, config, i)."""

    def __init__(
        self,
        *,
        split: str,
        series: Series,
        normalized: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        target_starts: np.ndarray,
        split_rows: tuple[int, int],
        lookback: int,
        horizon: int,
        stride: int,
    ) -> None:
        self.split = split
        self.dataset = series.name
        self.variables = series.variables
        self.timestamps = series.timestamps  # of every series row
        self.observed = series.observed  # of every series row
        self.mean = mean
        self.std = std
        self.target_starts = target_starts  # series row of each window's first target step
        self.split_rows = split_rows  # [start, stop) series rows whose values are this split's targets
        self.lookback = lookback
        self.horizon = horizon
        self.stride = stride
        self._normalized = normalized

    def __len__(self) -> int:
        return len(self.target_starts)

    def _start(self, index: int | np.integer) -> int:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"{self.split} window index must be an integer, got {type(index).__name__}.")
        if not 0 <= index < len(self):
            raise IndexError(f"{self.split} window index {index} out of range [0, {len(self)}).")
        return int(self.target_starts[index])

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        start = self._start(index)
        return {
            "inputs": self._normalized[start - self.lookback : start].copy(),
            "targets": self._normalized[start : start + self.horizon].copy(),
        }

    def target_rows(self, index: int | np.integer) -> tuple[int, int]:
        """[first, stop) series rows of window `index`'s targets."""
        start = self._start(index)
        return start, start + self.horizon

    def target_time_range(self, index: int | np.integer) -> tuple[np.datetime64, np.datetime64]:
        """Timestamps of window `index`'s first and last target steps."""
        first, stop = self.target_rows(index)
        return self.timestamps[first], self.timestamps[stop - 1]

    def target_observed(self, index: int | np.integer) -> np.ndarray:
        """bool[horizon, V]: which target values were observed (False: filled `?`/blank)."""
        first, stop = self.target_rows(index)
        return self.observed[first:stop].copy()

    def series_stream(self, origins: bool = False) -> SeriesStream:
        """The split as one stream for segment recurrence (`seqjax.data.stream.SeriesStream`): the
        standardised rows [max(0, first - lookback), stop) with their observed mask and the horizon. The
        `lookback` rows before the split's first row (validation, test) are context, as the windows'
        look-backs read them: inputs only, never targets. With `origins`, the stream also marks the
        forecast origin (the last look-back row) of each of this split's windows, so an evaluation can
        score exactly the windows' targets. The whole split: `max_examples_per_split` thins `origins`
        only."""
        first, stop = self.split_rows
        begin = max(first - self.lookback, 0)
        marks = None
        if origins:
            marks = np.zeros(stop - begin - self.horizon, bool)
            marks[self.target_starts - 1 - begin] = True
        return SeriesStream(
            values=self._normalized[begin:stop],
            observed=self.observed[begin:stop],
            horizon=self.horizon,
            context=first - begin,
            origins=marks,
        )

    def describe(self) -> dict[str, Any]:
        """Counts and ranges for logs."""
        first, stop = self.split_rows
        info: dict[str, Any] = {
            "split": self.split,
            "dataset": self.dataset,
            "windows": len(self),
            "split_rows": [first, stop],
            "lookback": self.lookback,
            "horizon": self.horizon,
            "stride": self.stride,
            "missing_fraction": round(float(1.0 - self.observed[first:stop].mean()), 6),
        }
        if len(self):
            first_time = self.target_time_range(0)[0]
            last_time = self.target_time_range(len(self) - 1)[1]
            info["target_time_range"] = [str(first_time), str(last_time)]
        return info


def make_window_sources(
    series: Series,
    *,
    lookback: int,
    horizon: int,
    stride: int = 1,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    max_examples_per_split: int | None = None,
) -> dict[str, TimeSeriesSplit]:
    """The three split sources of `series` (see the package docstring for the protocol)."""
    num_rows = len(series)
    num_train, num_val, _ = split_row_counts(num_rows, split_fractions)
    mean, std = training_statistics(series.values, series.observed, num_train)
    normalized = (series.values - mean) / std  # float32 throughout
    normalized.flags.writeable = False
    bounds = {
        "train": (0, num_train),
        "validation": (num_train, num_train + num_val),
        "test": (num_train + num_val, num_rows),
    }
    sources = {}
    for split, (first, stop) in bounds.items():
        # first target row of a window: train windows start at row 0 (look-back inside the split);
        # validation/test look-backs may reach back into the previous split's rows.
        lowest = max(first, lookback)
        highest = stop - horizon  # inclusive: the last window ends exactly at the split's last row
        if split == "train":
            starts = np.arange(lowest, highest + 1, stride, dtype=np.int64)
        else:
            starts = np.arange(lowest, highest + 1, dtype=np.int64)
        if len(starts) == 0:
            raise ValueError(
                f"{series.name}: the {split} split ({stop - first} rows) has no window of lookback "
                f"{lookback} + horizon {horizon}; use shorter windows or the full data (route 'offline')."
            )
        if max_examples_per_split is not None and len(starts) > max_examples_per_split:
            pick = (np.arange(max_examples_per_split) * len(starts)) // max_examples_per_split
            starts = starts[pick]
        sources[split] = TimeSeriesSplit(
            split=split,
            series=series,
            normalized=normalized,
            mean=mean,
            std=std,
            target_starts=starts,
            split_rows=(first, stop),
            lookback=lookback,
            horizon=horizon,
            stride=stride if split == "train" else 1,
        )
    return sources


def baseline_forecasts(inputs: np.ndarray, horizon: int, kind: str) -> np.ndarray:
    """Trivial forecasts from look-backs `inputs[..., lookback, V]` -> [..., horizon, V] (normalized
    scale): "last_value" repeats the last look-back step, "mean" the look-back mean per variable."""
    inputs = np.asarray(inputs)
    if inputs.ndim < 2:
        raise ValueError(f"baseline_forecasts: inputs must be [..., lookback, V], got shape {inputs.shape}.")
    if kind == "last_value":
        level = inputs[..., -1:, :]
    elif kind == "mean":
        level = inputs.mean(axis=-2, keepdims=True, dtype=np.float64).astype(inputs.dtype)
    else:
        raise ValueError(f"baseline_forecasts: kind must be one of {BASELINES}, got {kind!r}.")
    return np.repeat(level, horizon, axis=-2)
