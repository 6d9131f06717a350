"""Forecasting baselines on the LTSF windows: look-back mean, last value, seasonal-naive, NLinear and
DLinear, all on the z-scored scale the trainer scores (MSE/MAE as `seqjax.data.metrics.forecast_metrics`).

- mean / last value: `seqjax.data.timeseries.baseline_forecasts`, the project's trivial baselines.
- seasonal-naive (period p): step t of the horizon repeats the look-back value one period earlier,
  `x[L - p + (t mod p)]`; needs p <= look-back L. The default period is one day in the data set's
  steps (24 hourly, 144 ten-minute, 1440 one-minute rows).
- NLinear (Zeng et al. 2023): subtract the look-back's last value, map the L values to the horizon
  with one linear layer, add the last value back.
- DLinear: split the look-back into a trend (moving average of `kernel` = 25 steps, edges padded by
  repeating the first / last value, as the paper's code) and a seasonal rest, map each with its own
  linear layer, add the two.
Both linear models share one map across variables (the paper's default, `individual=False`): every
(window, variable) pair of the train split is one regression row, which also keeps the fit identical
for one or 28 variables. They are fit in closed form, ridge least squares with an unpenalised bias,

    minimise  mean over rows ||x W + b - y||^2 + ridge * ||W||^2,

from float64 sufficient statistics accumulated over chunks of train windows (so memory does not grow
with the split). Both feature maps are linear in the raw look-back, so one pass accumulates x^T x and
x^T y of the raw rows and each kind's statistics follow from them (`fit_linear_forecasters`); the
system is solved by Cholesky (ridge > 0) or `scipy.linalg.lstsq` (ridge = 0, on collinear features:
DLinear's trend and seasonal parts sum to the input). At look-back L the fit costs rows x L^2 for the
sums and (2L)^3 / 3 for DLinear's solve: cap the windows (`evaluate_baselines(fit_windows=...)`).

    >>> import numpy as np
    >>> x = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
    >>> seasonal_naive_forecasts(x, horizon=4, period=3)[0, :, 0]
    array([3., 4., 5., 3.], dtype=float32)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.sparse

from seqjax.baselines.result import BaselineResult

__all__ = [
    "LINEAR_KINDS",
    "LinearForecaster",
    "daily_period",
    "errors_to_metrics",
    "evaluate_baselines",
    "fit_linear_forecaster",
    "fit_linear_forecasters",
    "moving_average_trend",
    "seasonal_naive_forecasts",
    "window_batches",
    "windows_from_series",
]

LINEAR_KINDS = ("nlinear", "dlinear")
#: DLinear's moving-average kernel in the paper's code.
DLINEAR_KERNEL = 25
#: Default ridge strength (per regression row; see the module docstring): small, only for conditioning.
DEFAULT_RIDGE = 1e-3
_BATCH_WINDOWS = 1024


def _check_inputs(inputs: np.ndarray, name: str) -> np.ndarray:
    inputs = np.asarray(inputs)
    if inputs.ndim != 3 or inputs.shape[0] == 0:
        raise ValueError(
            f"{name}: inputs must be a non-empty [windows, lookback, variables] array, got shape "
            f"{inputs.shape}; stack the split's 'inputs'."
        )
    return inputs


def windows_from_series(series: np.ndarray, lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (inputs [N, lookback, V], targets [N, horizon, V]) window of a [T, V] series, stride 1.

    >>> inputs, targets = windows_from_series(np.arange(5.0)[:, None], lookback=2, horizon=2)
    >>> inputs[:, :, 0].tolist(), targets[:, :, 0].tolist()
    ([[0.0, 1.0], [1.0, 2.0]], [[2.0, 3.0], [3.0, 4.0]])
    """
    series = np.asarray(series)
    if series.ndim != 2:
        raise ValueError(f"windows_from_series: series must be [time, variables], got shape {series.shape}.")
    if lookback < 1 or horizon < 1:
        raise ValueError(
            f"windows_from_series: lookback and horizon must be >= 1, got {lookback} and {horizon}."
        )
    if lookback + horizon > len(series):
        raise ValueError(
            f"windows_from_series: lookback {lookback} + horizon {horizon} is longer than the series "
            f"({len(series)} steps); shorten the lookback or the horizon."
        )
    count = len(series) - lookback - horizon + 1
    starts = np.arange(count)[:, None]
    return series[starts + np.arange(lookback)], series[starts + lookback + np.arange(horizon)]


def window_batches(
    source: Any, batch_windows: int = _BATCH_WINDOWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) of a `TimeSeriesSplit` in order, `batch_windows` windows at a time."""
    if len(source) == 0:
        raise ValueError(f"window_batches: the {getattr(source, 'split', '')} split has no window.")
    for first in range(0, len(source), batch_windows):
        examples = [source[i] for i in range(first, min(first + batch_windows, len(source)))]
        yield np.stack([e["inputs"] for e in examples]), np.stack([e["targets"] for e in examples])


def seasonal_naive_forecasts(inputs: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """[N, horizon, V]: each horizon step t repeats look-back step `lookback - period + (t mod period)`."""
    inputs = _check_inputs(inputs, "seasonal_naive_forecasts")
    lookback = inputs.shape[1]
    if not 1 <= period <= lookback:
        raise ValueError(
            f"seasonal_naive_forecasts: period must lie in [1, lookback = {lookback}], got {period}; "
            "use a longer lookback or a shorter period."
        )
    return inputs[:, lookback - period + np.arange(horizon) % period]


def moving_average_trend(inputs: np.ndarray, kernel: int = DLINEAR_KERNEL) -> np.ndarray:
    """The DLinear trend of [N, L, V] look-backs: a `kernel`-step moving average along L, the series
    padded by repeating its first and last values `(kernel - 1) // 2` times (as the paper's code).

    >>> moving_average_trend(np.array([[[0.0], [3.0], [6.0]]]), kernel=3)[0, :, 0].tolist()
    [1.0, 3.0, 5.0]
    """
    inputs = np.asarray(inputs, np.float64)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"moving_average_trend: kernel must be an odd positive int, got {kernel}.")
    pad = (kernel - 1) // 2
    padded = np.concatenate(
        [np.repeat(inputs[:, :1], pad, axis=1), inputs, np.repeat(inputs[:, -1:], pad, axis=1)], axis=1
    )
    cumulative = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
    return (cumulative[:, kernel:] - cumulative[:, :-kernel]) / kernel


def _rows(inputs: np.ndarray, kind: str, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """Regression rows [N * V, features] of look-backs [N, L, V], and the level added back [N * V, 1]."""
    x = np.asarray(inputs, np.float64).transpose(0, 2, 1).reshape(-1, inputs.shape[1])  # (window, var)
    if kind == "nlinear":
        level = x[:, -1:]
        return x - level, level
    trend = moving_average_trend(x[:, :, None], kernel)[:, :, 0]
    return np.concatenate([x - trend, trend], axis=1), np.zeros((len(x), 1))


@dataclasses.dataclass(frozen=True)
class LinearForecaster:
    """A fitted NLinear / DLinear map: forecast = features(look-back) @ weights + bias (+ level)."""

    kind: str
    weights: np.ndarray  # [features, horizon]
    bias: np.ndarray  # [horizon]
    kernel: int = DLINEAR_KERNEL

    def forecast(self, inputs: np.ndarray) -> np.ndarray:
        """[N, horizon, V] forecasts of [N, lookback, V] look-backs."""
        inputs = _check_inputs(inputs, "LinearForecaster.forecast")
        n, _, v = inputs.shape
        features, level = _rows(inputs, self.kind, self.kernel)
        rows = features @ self.weights + self.bias + level
        return rows.reshape(n, v, -1).transpose(0, 2, 1).astype(inputs.dtype)


def _trend_matrix(lookback: int, kernel: int) -> scipy.sparse.csr_matrix:
    """The sparse [L, L] map A with `moving_average_trend(x) == x @ A` for look-backs x [rows, L]."""
    pad = (kernel - 1) // 2
    columns = np.repeat(np.arange(lookback), kernel)
    rows = np.clip(columns + np.tile(np.arange(-pad, pad + 1), lookback), 0, lookback - 1)
    values = np.full(len(rows), 1.0 / kernel)
    return scipy.sparse.coo_matrix((values, (rows, columns)), shape=(lookback, lookback)).tocsr()


def _raw_statistics(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Float64 sums over the (window, variable) rows of the batches: count, x, y, x^T x, x^T y, with x
    the raw look-back [rows, L] and y the horizon [rows, H] (one pass; x^T x by a symmetric rank-k
    update, half a matrix product)."""
    stats: dict[str, Any] = {}
    for inputs, targets in batches:
        inputs = _check_inputs(inputs, "fit_linear_forecaster")
        targets = np.asarray(targets)
        if targets.ndim != 3 or targets.shape[0] != inputs.shape[0] or targets.shape[2] != inputs.shape[2]:
            raise ValueError(
                f"fit_linear_forecaster: targets {targets.shape} must be [windows, horizon, variables] "
                f"matching inputs {inputs.shape}."
            )
        x = np.asarray(inputs, np.float64).transpose(0, 2, 1).reshape(-1, inputs.shape[1])
        y = np.asarray(targets, np.float64).transpose(0, 2, 1).reshape(len(x), -1)
        if not stats:
            lookback, horizon = x.shape[1], y.shape[1]
            stats = {
                "count": 0,
                "x": np.zeros(lookback),
                "y": np.zeros(horizon),
                "xx": np.zeros((lookback, lookback), order="F"),
                "xy": np.zeros((lookback, horizon)),
            }
        stats["count"] += len(x)
        stats["x"] += x.sum(0)
        stats["y"] += y.sum(0)
        stats["xx"] = scipy.linalg.blas.dsyrk(1.0, x, beta=1.0, c=stats["xx"], trans=1, overwrite_c=1)
        stats["xy"] += x.T @ y
    if not stats:
        raise ValueError("fit_linear_forecaster: no train window; fit on a split with windows.")
    upper = stats["xx"]  # dsyrk fills the upper triangle
    stats["xx"] = np.triu(upper) + np.triu(upper, 1).T
    return stats


def _feature_statistics(
    stats: Mapping[str, Any], kind: str, kernel: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sum f, sum y', f^T f, f^T y') of the kind's regression rows f (features) and y' (the target less
    the level added back), from the raw sums: both feature maps are linear in x (NLinear: x - x_L;
    DLinear: [x - x A, x A] with the sparse moving-average map A), so one pass serves both."""
    s_x, s_y, xx, xy = stats["x"], stats["y"], stats["xx"], stats["xy"]
    if kind == "nlinear":  # f = x P, P = I - e_L 1^T; y' = y - x_L
        level_x = xx - xx[:, -1:]
        ff = level_x - level_x[-1:, :]
        level_y = xy - xx[:, -1:]
        return s_x - s_x[-1], s_y - s_x[-1], ff, level_y - level_y[-1:, :]
    a = _trend_matrix(len(s_x), kernel)
    at_xx = np.asarray(a.T @ xx)  # A^T S = (S A)^T, S symmetric
    at_xx_a = np.asarray(a.T @ at_xx.T)  # A^T S A
    cross = at_xx.T - at_xx_a  # (I - A)^T S A
    ff = np.block([[xx - at_xx - at_xx.T + at_xx_a, cross], [cross.T, at_xx_a]])
    at_xy = np.asarray(a.T @ xy)
    trend_x = np.asarray(a.T @ s_x)
    return np.concatenate([s_x - trend_x, trend_x]), s_y, ff, np.concatenate([xy - at_xy, at_xy])


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """BLAS limited to one thread (threadpoolctl, a scikit-learn dependency), if it is installed: the
    multithreaded Cholesky of scipy's bundled OpenBLAS segfaulted on 16,384 x 16,384 systems (DLinear at
    look-back 8192), single-threaded it takes ~30 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def fit_linear_forecasters(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    kinds: Iterable[str] = LINEAR_KINDS,
    *,
    ridge: float = DEFAULT_RIDGE,
    kernel: int = DLINEAR_KERNEL,
) -> dict[str, LinearForecaster]:
    """Closed-form ridge fits of NLinear and/or DLinear on (inputs [N, L, V], targets [N, H, V]) batches
    of train windows (one map shared by the variables), from one pass over the windows: the raw sums
    x^T x and x^T y (cost rows x L^2), mapped to each kind's features in O(L^2) (`_feature_statistics`),
    then a Cholesky solve (ridge > 0; least squares at ridge = 0, where DLinear's parts are collinear).

    >>> x, y = windows_from_series(np.arange(40.0)[:, None], lookback=4, horizon=2)
    >>> model = fit_linear_forecasters([(x, y)], ["nlinear"], ridge=0.0)["nlinear"]
    >>> np.round(model.forecast(np.array([[[10.0], [11.0], [12.0], [13.0]]]))[0, :, 0], 6).tolist()
    [14.0, 15.0]
    """
    kinds = list(kinds)
    for kind in kinds:
        if kind not in LINEAR_KINDS:
            raise ValueError(f"fit_linear_forecaster: kind must be one of {LINEAR_KINDS}, got {kind!r}.")
    if ridge < 0:
        raise ValueError(f"fit_linear_forecaster: ridge must be >= 0, got {ridge}.")
    stats = _raw_statistics(batches)
    count = stats["count"]
    models = {}
    for kind in kinds:
        sum_x, sum_y, xtx, xty = _feature_statistics(stats, kind, kernel)
        mean_x, mean_y = sum_x / count, sum_y / count
        # centring removes the bias from the penalised system, so the bias is not shrunk; in place (the
        # DLinear system at look-back 8192 is 2 GiB)
        system = xtx
        system /= count
        system -= np.outer(mean_x, mean_x)
        system[np.diag_indices_from(system)] += ridge
        centred_xty = xty / count - np.outer(mean_x, mean_y)
        try:
            if ridge == 0:
                raise np.linalg.LinAlgError("ridge 0: least squares")
            with _one_blas_thread():  # threaded OpenBLAS potrf crashes (SIGSEGV) at n ~ 16k
                factor = scipy.linalg.cho_factor(system, overwrite_a=True, check_finite=False)
                weights = scipy.linalg.cho_solve(factor, centred_xty, check_finite=False)
        except np.linalg.LinAlgError:
            weights = scipy.linalg.lstsq(system, centred_xty)[0]
        models[kind] = LinearForecaster(kind, weights, mean_y - mean_x @ weights, kernel)
    return models


def fit_linear_forecaster(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    kind: str,
    *,
    ridge: float = DEFAULT_RIDGE,
    kernel: int = DLINEAR_KERNEL,
) -> LinearForecaster:
    """Closed-form ridge fit of NLinear or DLinear (`fit_linear_forecasters` of one kind).

    >>> x, y = windows_from_series(np.arange(40.0)[:, None], lookback=4, horizon=2)
    >>> model = fit_linear_forecaster([(x, y)], "nlinear", ridge=0.0)
    >>> np.round(model.forecast(np.array([[[10.0], [11.0], [12.0], [13.0]]]))[0, :, 0], 6).tolist()
    [14.0, 15.0]
    """
    return fit_linear_forecasters(batches, [kind], ridge=ridge, kernel=kernel)[kind]


def errors_to_metrics(squared: np.ndarray, absolute: np.ndarray) -> dict[str, float]:
    """`forecast_metrics` from per-window, per-step errors averaged over the variables ([N, H] each),
    so a long split need not hold every forecast at once. Equal to
    `seqjax.data.metrics.forecast_metrics` on the forecasts (tested; same horizon prefixes).

    >>> errors_to_metrics(np.ones((2, 3)), np.ones((2, 3)))["mse"]
    1.0
    """
    squared, absolute = np.asarray(squared), np.asarray(absolute)
    out: dict[str, float] = {
        "mse": float(squared.mean()),
        "mae": float(absolute.mean()),
        "examples": len(squared),
    }
    for h in (96, 192, 336, 720):
        if h < squared.shape[1]:
            out[f"mse@{h}"] = float(squared[:, :h].mean())
            out[f"mae@{h}"] = float(absolute[:, :h].mean())
    return out


def daily_period(frequency: str) -> int:
    """Steps per day of a pandas-style frequency ("1h" -> 24, "10min" -> 144).

    >>> daily_period("1h"), daily_period("10min"), daily_period("1min")
    (24, 144, 1440)
    """
    import pandas as pd

    step = pd.Timedelta(frequency)
    if step <= pd.Timedelta(0) or pd.Timedelta(days=1) % step != pd.Timedelta(0):
        raise ValueError(f"daily_period: {frequency!r} does not divide a day; pass the period explicitly.")
    return int(pd.Timedelta(days=1) // step)


def evaluate_baselines(
    data: Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    period: int | None = None,
    ridge: float = DEFAULT_RIDGE,
    kernel: int = DLINEAR_KERNEL,
    fit_stride: int | None = 1,
    fit_windows: int | None = None,
    examples: int | None = None,
) -> list[BaselineResult]:
    """Mean, last value, seasonal-naive, NLinear and DLinear on the `split` windows of the time-series
    task `data`; the linear maps are fit on the train windows only, taken every `fit_stride` rows
    (default 1: every train window, since a closed-form fit is cheap; None keeps the config's training
    stride, which the trainer uses only to bound its epoch). Seasonal-naive with a period longer than
    the look-back is reported with NaN metrics and the reason in its settings.

    `fit_windows` caps the fit at that many of those train windows, spread evenly over the split (a
    fit costs windows x look-back^2: at look-backs of thousands of steps every window is hours), and
    `examples` scores only that many `split` windows, spread evenly (`pipeline.spread_indices`: the
    windows a model evaluated with the same `evaluation_examples` is scored on); None: all of them."""
    from seqjax.data import timeseries  # pulls in tensorflow_datasets
    from seqjax.data.pipeline import IndexedSource, spread_indices

    config = timeseries.resolve_config(data)
    sources = timeseries.make_sources(config, data_dir)
    if split not in sources:
        raise ValueError(f"evaluate_baselines: split must be one of {sorted(sources)}, got {split!r}.")
    if period is None:
        period = daily_period(timeseries.SPECS[config["dataset"]].frequency)
    lookback, horizon = config["lookback"], config["horizon"]
    if fit_stride is not None and fit_stride != config["stride"]:
        fit_source = timeseries.make_sources({**config, "stride": fit_stride}, data_dir)["train"]
    else:
        fit_source = sources["train"]
    if fit_windows is not None and fit_windows < len(fit_source):
        fit_source = IndexedSource(fit_source, spread_indices(len(fit_source), fit_windows))
    scored = sources[split]
    if examples is not None and examples < len(scored):
        scored = IndexedSource(scored, spread_indices(len(scored), examples))
    linear = fit_linear_forecasters(window_batches(fit_source), LINEAR_KINDS, ridge=ridge, kernel=kernel)
    forecasters = {
        "mean": lambda x: timeseries.baseline_forecasts(x, horizon, "mean"),
        "last value": lambda x: timeseries.baseline_forecasts(x, horizon, "last_value"),
        f"seasonal-naive (period {period})": lambda x: seasonal_naive_forecasts(x, horizon, period),
        "NLinear (ridge, closed form)": linear["nlinear"].forecast,
        "DLinear (ridge, closed form)": linear["dlinear"].forecast,
    }
    seasonal_ok = period <= lookback
    errors: dict[str, tuple[list, list]] = {name: ([], []) for name in forecasters}
    for inputs, targets in window_batches(scored):
        for name, forecast in forecasters.items():
            if name.startswith("seasonal") and not seasonal_ok:
                continue
            error = forecast(inputs).astype(np.float64) - targets
            errors[name][0].append((error**2).mean(axis=2))
            errors[name][1].append(np.abs(error).mean(axis=2))
    settings = {
        "NLinear (ridge, closed form)": {"ridge": ridge, "fit_windows": len(fit_source)},
        "DLinear (ridge, closed form)": {"ridge": ridge, "kernel": kernel, "fit_windows": len(fit_source)},
        f"seasonal-naive (period {period})": {"period": period},
    }
    results = []
    for name, (squared, absolute) in errors.items():
        if not squared:
            reason = f"period {period} > lookback {lookback}: needs a look-back of at least one period"
            results.append(BaselineResult(name, {"mse": np.nan, "mae": np.nan}, {}, {"skipped": reason}))
            continue
        squared, absolute = np.concatenate(squared), np.concatenate(absolute)
        results.append(
            BaselineResult(
                name,
                errors_to_metrics(squared, absolute),
                {"mse": squared.mean(axis=1), "mae": absolute.mean(axis=1)},
                settings.get(name, {}),
            )
        )
    return results
