"""The exponent of a power law in the sequence length, with an interval, and the O(n²) verdict rule.

`fit_exponent(lengths, values)` fits log(value) = a + p·log(length) by ordinary least squares over the
points with a positive value and gives p with a two-sided t-interval (n − 2 degrees of freedom, the
usual standard error of an OLS slope). For M(L) = b·L^p the slope is p exactly; a constant part c
(M = c + b·L^p) pulls the slope of the shortest lengths towards 0, so a fit over lengths where c still
counts understates p. With fewer than three points there is no interval (it is infinite) and the
verdict is "inconclusive".

`fit_increment_exponent(lengths, values)` removes the constant part first, as the plan mode's doubling
exponent does: for each L with 2L also measured, ΔM(L) = M(2L) − M(L) = b·(2^p − 1)·L^p, so the OLS
slope of log ΔM on log L is p whatever c is. Increments that are not positive (noise larger than the
growth, as for a flat memory) cannot be logged and are left out.

`memory_exponent(lengths, values)` is the fit the verdict reads: the increments' fit where its interval
excludes 1.5; else the fit of log M itself where its interval excludes 1.5; else the increments' fit (or
log M's, where the increments give no interval), which is inconclusive. The increments of a memory that
does not measurably grow (truncated BPTT) are noise, and their interval is wide; log M then shows the
flat growth. A constant part can only pull log M's slope down: its "supported" is conservative, and its
"contradicted" says that no growth like L² is visible up to the longest length measured.

`quadratic_memory_verdict(fit)` is the rule of issue 18, written before any run: the claim "this
model's training memory grows as O(n²)" is

    supported     where the slope's interval lies above 1.5 (closer to quadratic than to linear),
    contradicted  where it lies below 1.5 (linear or flatter),
    inconclusive  where it contains 1.5, or where there is no interval.

It is `seqjax.experiment.verdict.verdict("greater", {...: (low − 1.5, high − 1.5)})`, the protocol's rule
applied to the slope minus the threshold. The same fit of step time gives the time cost.

    >>> fit = fit_exponent([1024, 2048, 4096, 8192], [1.0, 4.1, 15.9, 64.2])
    >>> round(fit.slope, 2), quadratic_memory_verdict(fit)
    (2.0, 'supported')

Pure numpy/scipy: no jax, no device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from seqjax.experiment.verdict import Label, verdict

__all__ = [
    "QUADRATIC_THRESHOLD",
    "ExponentFit",
    "doubling_increments",
    "fit_exponent",
    "fit_increment_exponent",
    "memory_exponent",
    "quadratic_memory_verdict",
]

#: The slope between linear (1) and quadratic (2) growth that the verdict rule compares the interval to.
QUADRATIC_THRESHOLD = 1.5


@dataclass(frozen=True)
class ExponentFit:
    """OLS fit of log(value) on log(length): `slope` (the exponent p) with its interval (low, high) at
    `confidence`; low/high are ±inf where fewer than three points leave no degrees of freedom.
    `n_points` counts the points used (positive values only)."""

    slope: float
    low: float
    high: float
    intercept: float
    n_points: int
    confidence: float

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def describe(self) -> str:
        """'2.01 [1.93, 2.09]', or '2.01 (2 points, no interval)', or 'n/a'."""
        if not math.isfinite(self.slope):
            return "n/a"
        if not self.has_interval:
            return f"{self.slope:.2f} ({self.n_points} points, no interval)"
        return f"{self.slope:.2f} [{self.low:.2f}, {self.high:.2f}]"


def fit_exponent(lengths: Sequence[float], values: Sequence[float], confidence: float = 0.95) -> ExponentFit:
    """The exponent p of value ∝ length^p by OLS of log value on log length, with a t-interval.

    Points whose value is not positive (a memory difference lost in noise) cannot be logged and are
    left out; `n_points` says how many were used. Under two usable points the slope is NaN.

    >>> fit_exponent([1, 2, 4], [3.0, 6.0, 12.0]).slope
    1.0
    """
    if not 0 < confidence < 1:
        raise ValueError(f"fit_exponent: confidence must be in (0, 1), got {confidence}.")
    x = np.asarray(lengths, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"fit_exponent: lengths and values must be 1-D and of one length, got shapes {x.shape} "
            f"and {y.shape}."
        )
    if np.any(~np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"fit_exponent: lengths must be positive and finite, got {x.tolist()}.")
    keep = np.isfinite(y) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        return ExponentFit(math.nan, -math.inf, math.inf, math.nan, n, confidence)
    x_mean = x.mean()
    sxx = float(np.sum((x - x_mean) ** 2))
    slope = float(np.sum((x - x_mean) * (y - y.mean())) / sxx)
    intercept = float(y.mean() - slope * x_mean)
    if n < 3:
        return ExponentFit(slope, -math.inf, math.inf, intercept, n, confidence)
    residuals = y - (intercept + slope * x)
    standard_error = math.sqrt(float(np.sum(residuals**2)) / (n - 2) / sxx)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 2)) * standard_error
    return ExponentFit(slope, slope - half, slope + half, intercept, n, confidence)


def doubling_increments(lengths: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """([L], [M(2L) − M(L)]) for every L whose double 2L is also among `lengths`.

    >>> doubling_increments([1, 2, 4, 3], [1.0, 3.0, 9.0, 5.0])
    ([1, 2], [2.0, 6.0])
    """
    by_length = dict(zip(lengths, values, strict=True))
    pairs = [(n, by_length[2 * n] - by_length[n]) for n in sorted(by_length) if 2 * n in by_length]
    return [n for n, _ in pairs], [float(d) for _, d in pairs]


def fit_increment_exponent(
    lengths: Sequence[float], values: Sequence[float], confidence: float = 0.95
) -> ExponentFit:
    """The exponent p of M(L) = c + b·L^p from the doubling increments (module docstring).

    >>> lengths = [1024, 2048, 4096, 8192]
    >>> round(fit_increment_exponent(lengths, [5e8 + n * n for n in lengths]).slope, 6)
    2.0
    """
    return fit_exponent(*doubling_increments(lengths, values), confidence=confidence)


def memory_exponent(
    lengths: Sequence[float], values: Sequence[float], confidence: float = 0.95
) -> tuple[ExponentFit, str]:
    """(fit, which): the memory exponent the verdict reads (module docstring); `which` is "increments"
    or "log M".

    >>> fit, which = memory_exponent([1024, 2048, 4096, 8192], [100.0, 99.0, 101.0, 100.5])
    >>> which, fit.high < 1.5
    ('log M', True)
    """
    increments = fit_increment_exponent(lengths, values, confidence)
    if quadratic_memory_verdict(increments) != "inconclusive":
        return increments, "increments"
    direct = fit_exponent(lengths, values, confidence)
    if quadratic_memory_verdict(direct) != "inconclusive" or not increments.has_interval:
        return direct, "log M"
    return increments, "increments"


def quadratic_memory_verdict(fit: ExponentFit, threshold: float = QUADRATIC_THRESHOLD) -> Label:
    """The O(n²) claim's verdict from a memory fit (rule: module docstring).

    >>> quadratic_memory_verdict(ExponentFit(1.0, 0.9, 1.1, 0.0, 5, 0.95))
    'contradicted'
    """
    if not fit.has_interval or not math.isfinite(fit.slope):
        return "inconclusive"
    return verdict("greater", {"slope − threshold": (fit.low - threshold, fit.high - threshold)})
