"""Reading a time-series CSV (plain, xz, gzip or bz2) into a cleaned `Series`: missing values filled
causally, the observed mask kept, timestamps checked (the rules are in the package docstring).

    >>> series = read_series("household_power.csv.xz", "household_power")  # doctest: +SKIP
    >>> series.values.shape  # doctest: +SKIP
    (100000, 7)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib

import numpy as np
import pandas as pd

from seqjax.data.preparation import read_compressed
from seqjax.data.timeseries.catalog import DATASETS, SPECS, SeriesSpec

__all__ = ["Series", "check_rows", "read_series"]

_MISSING_MARKERS = ("?", "")


@dataclasses.dataclass(frozen=True)
class Series:
    """A cleaned series: `values[t, v]` forward/back-filled (not normalized), `observed[t, v]` True where
    the file had a number, `timestamps[t]` (datetime64[s], naive wall clock)."""

    name: str
    variables: tuple[str, ...]
    timestamps: np.ndarray  # datetime64[s] [T]
    values: np.ndarray  # float32 [T, V]
    observed: np.ndarray  # bool [T, V]

    def __len__(self) -> int:
        return len(self.timestamps)


def _line(row: int) -> int:
    """File line (1-based) of data row `row` (0-based): line 1 is the header; blank lines are kept as
    rows (skip_blank_lines=False), so the mapping is exact for these files (no quoted newlines)."""
    return row + 2


def read_series(path: str | os.PathLike[str], dataset: str) -> Series:
    """Reads `dataset`'s CSV (plain or compressed) into a cleaned `Series` (see the package docstring for the
    missing-value and timestamp rules). Bad input raises ValueError naming the file and line."""
    if dataset not in SPECS:
        raise ValueError(f"read_series: dataset must be one of {DATASETS}, got {dataset!r}.")
    spec = SPECS[dataset]
    path = pathlib.Path(path)
    raw = read_compressed(path)  # a truncated or corrupt archive is a ValueError naming the file
    check_rows(raw, path)
    try:
        frame = pd.read_csv(
            io.BytesIO(raw),
            dtype={c: str for c in spec.time_columns},
            na_values=list(_MISSING_MARKERS),
            keep_default_na=False,
            skip_blank_lines=False,
            low_memory=False,
        )
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: malformed CSV ({e}); each line needs the header's columns.") from e
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{path}: the file is empty; fetch it again.") from e
    needed = (*spec.time_columns, *spec.variables)
    missing_columns = [c for c in needed if c not in frame.columns]
    if missing_columns:
        raise ValueError(
            f"{path}, line 1: header lacks columns {missing_columns} expected for dataset {dataset!r} "
            f"(header: {list(frame.columns)}); is this the right file?"
        )
    if len(frame) == 0:
        raise ValueError(f"{path}: no data rows after the header.")
    timestamps = _parse_timestamps(frame, spec, path)
    raw = np.empty((len(frame), len(spec.variables)), np.float64)
    for j, column in enumerate(spec.variables):
        raw[:, j] = _numeric_column(frame[column], column, path)
    observed = ~np.isnan(raw)
    values = _fill_missing(raw)
    if np.isnan(values).any():
        empty = [spec.variables[j] for j in np.flatnonzero(~observed.any(axis=0))]
        raise ValueError(f"{path}: variables {empty} have no observed value at all; the file is unusable.")
    return Series(dataset, spec.variables, timestamps, values.astype(np.float32), observed)


def check_rows(raw: bytes, path: str | os.PathLike[str]) -> None:
    r"""Raises ValueError naming the file and line if `raw` (a CSV's bytes) is not UTF-8, or if a line
    that is not blank has another number of fields than the header. pandas would fill a short row (a
    damaged row, or a last line cut by a truncated download) with missing values, which the reader then
    forward-fills: a genuine missing value is a `?` or an empty field, never a short row.

        >>> check_rows(b"ts,y\n2020-01-01 00:00:00,1\n", "ok.csv")
        >>> check_rows(b"ts,y\n2020-01-01 00:00:00\n", "cut.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cut.csv, line 2: 1 field where the header has 2 (a damaged row or a truncated file); ...
    """
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}, line {line}: invalid UTF-8 (byte {raw[e.start]:#04x} at byte offset {e.start}); the "
            "file must be UTF-8 text. Fetch it again, or re-save it as UTF-8."
        ) from None
    if b'"' in raw:  # quoted fields may hold commas or newlines: count them with the csv module
        counts = [len(row) if row else 0 for row in csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))]
        lines = np.arange(1, len(counts) + 1)
        blank = np.array([c == 0 for c in counts], bool)
        counts_array = np.array(counts, np.int64)
    else:
        data = np.frombuffer(raw, np.uint8)
        ends = np.flatnonzero(data == ord("\n"))
        if len(data) and data[-1] != ord("\n"):
            ends = np.append(ends, len(data))  # an unterminated last line
        starts = np.concatenate([[0], ends[:-1] + 1])
        commas = np.flatnonzero(data == ord(","))
        counts_array = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
        lengths = ends - starts
        # A blank line ("" or "\r"): kept as a row, for the timestamp check to name.
        blank = (lengths == 0) | ((lengths == 1) & (data[np.minimum(starts, len(data) - 1)] == ord("\r")))
        lines = np.arange(1, len(ends) + 1)
    if len(counts_array) == 0:
        return
    header = int(counts_array[0])
    bad = np.flatnonzero((counts_array != header) & ~blank)
    if bad.size:
        row = int(bad[0])
        got = int(counts_array[row])
        fields = "field" if got == 1 else "fields"
        if got < header:
            why = (
                "(a damaged row or a truncated file); a missing value is written as '?' or an empty "
                "field, never by dropping fields. Fetch the file again or fix the line."
            )
        else:
            why = "; each line needs exactly the header's fields. Fix or remove the line."
        raise ValueError(
            f"{path}, line {int(lines[row])}: {got} {fields} where the header has {header} {why}"
        )


def _parse_timestamps(frame: pd.DataFrame, spec: SeriesSpec, path: pathlib.Path) -> np.ndarray:
    text = frame[spec.time_columns[0]].astype(str)
    for column in spec.time_columns[1:]:
        text = text + " " + frame[column].astype(str)
    parsed = pd.to_datetime(text, format=spec.time_format, errors="coerce")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        cells = [frame[c].iloc[row] for c in spec.time_columns]
        shown = "(empty: a blank line?)" if any(pd.isna(c) for c in cells) else repr(text.iloc[row])
        raise ValueError(
            f"{path}, line {_line(row)}: timestamp {shown} does not parse as "
            f"{spec.time_format!r} (columns {list(spec.time_columns)}); fix or remove the line."
        )
    timestamps = parsed.to_numpy().astype("datetime64[s]")
    steps = np.diff(timestamps).astype(np.int64)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        row = int(bad[0]) + 1
        raise ValueError(
            f"{path}, line {_line(row)}: timestamp {timestamps[row]} is not after the previous line's "
            f"{timestamps[row - 1]}; timestamps must be strictly increasing (sort the file and drop "
            "duplicate rows)."
        )
    return timestamps


def _numeric_column(column: pd.Series, name: str, path: pathlib.Path) -> np.ndarray:
    """The column as float64 with NaN for missing; a cell that is neither a number nor a missing marker
    (`?` / blank) raises, naming its line."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        numbers = column.to_numpy(np.float64, na_value=np.nan)
    else:
        stripped = column.astype("string").str.strip()
        marker = stripped.isna() | stripped.isin(_MISSING_MARKERS)
        converted = pd.to_numeric(stripped.mask(marker), errors="coerce")
        bad = np.flatnonzero((converted.isna() & ~marker).to_numpy())
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"{path}, line {_line(row)}, column {name!r}: {column.iloc[row]!r} is not a number; only "
                f"numbers and the missing markers '?' or a blank cell are allowed."
            )
        numbers = converted.to_numpy(np.float64, na_value=np.nan)
    infinite = np.flatnonzero(np.isinf(numbers))
    if infinite.size:
        row = int(infinite[0])
        raise ValueError(
            f"{path}, line {_line(row)}, column {name!r}: {numbers[row]} is infinite; write a finite "
            "number or '?' for a missing value."
        )
    return numbers


def _fill_missing(raw: np.ndarray) -> np.ndarray:
    """Forward-fill each column from its last observed value; back-fill a leading gap."""
    frame = pd.DataFrame(raw)
    return frame.ffill().bfill().to_numpy(np.float64)
