"""The verdict rule of an experiment, fixed in code before any run (issue 15, item 6).

A claim names a difference (say, accuracy of model A minus model B) and its direction: "greater" (the
difference is positive) or "less" (negative). The evidence is one confidence interval (low, high) of the
difference per task/length the claim covers. Each interval is classified:

    claimed   the interval excludes zero on the claimed side  (low > 0 for "greater", high < 0 for "less")
    opposite  the interval excludes zero on the other side
    neither   the interval contains zero (an end point equal to 0 counts as containing it)

and the verdict over all the claim's tasks/lengths is, in this order:

    depends       at least one interval is "claimed" and at least one is "opposite": the sign of the
                  difference changes across tasks or lengths.
    supported     every interval is "claimed".
    contradicted  every interval is "opposite".
    inconclusive  everything else: every interval is "neither", or some exclude zero on one side while
                  others contain zero.

The mixed case (some "claimed", the rest "neither") is inconclusive, not supported: a claim over a set of
tasks/lengths is supported only where the evidence covers all of it. A narrower claim (only the longest
lengths, say) is a different claim, with its own, smaller set of intervals, written down before the run.
Sign changes of point estimates inside intervals that contain zero are noise, not "depends".

For intervals that hold jointly across m tasks/lengths, compute each at confidence 1 - alpha/m
(Bonferroni), or test with p-values and `statistics.holm_adjusted_p_values`.

An interval from a bootstrap over fewer than `MIN_CLUSTERS` clusters (a few time blocks of a short test
split) is not judged: it counts as "neither" whatever its ends. A percentile interval over G resampled
clusters cannot reach its level when G is small: with a true difference of zero, a 97.5% paired interval
excluded zero in 39% of simulated data sets at G = 2, 30% at 3, 14% at 4, 10% at 6 and 4% at 19 (3
seeds a model, 40 examples a cluster, cluster effects of SD 1; found in a review, 2026-12-06).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Literal, Protocol

import numpy as np

__all__ = [
    "MIN_CLUSTERS",
    "Direction",
    "Label",
    "classify_interval",
    "classify_intervals",
    "not_judged",
    "too_few_clusters",
    "verdict",
    "verdict_of_classes",
]

#: The fewest resampled clusters whose interval is judged (module docstring).
MIN_CLUSTERS = 10

Direction = Literal["greater", "less"]
Label = Literal["supported", "contradicted", "depends", "inconclusive"]
IntervalClass = Literal["claimed", "opposite", "neither"]


class _HasInterval(Protocol):
    low: float
    high: float


def _end_points(key: Hashable, interval: tuple[float, float] | _HasInterval) -> tuple[float, float]:
    """(low, high) of a pair or of an object with `low`/`high` (a `statistics.BootstrapInterval`)."""
    if hasattr(interval, "low") and hasattr(interval, "high"):
        low, high = interval.low, interval.high
    else:
        try:
            low, high = interval  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(
                f"verdict: the interval for {key!r} is {interval!r}; pass a (low, high) pair or a "
                "BootstrapInterval."
            ) from None
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"verdict: the interval for {key!r} is ({low}, {high}); end points must be finite.")
    if low > high:
        raise ValueError(f"verdict: the interval for {key!r} has low {low} > high {high}; pass (low, high).")
    return low, high


def _check_direction(claimed_direction: str) -> None:
    if claimed_direction not in ("greater", "less"):
        raise ValueError(
            f"verdict: claimed_direction must be 'greater' (difference > 0) or 'less' (difference < 0), "
            f"got {claimed_direction!r}."
        )


def too_few_clusters(n_clusters: int | None) -> bool:
    """Whether a bootstrap over `n_clusters` clusters is too coarse to judge (`MIN_CLUSTERS`); None (an
    interval that is not a cluster bootstrap's) never is.

    >>> too_few_clusters(3), too_few_clusters(27), too_few_clusters(None)
    (True, False, False)
    """
    return n_clusters is not None and n_clusters < MIN_CLUSTERS


def not_judged(n_clusters: int, unit: str = "blocks") -> str:
    """The class a report prints for an interval over too few clusters (`too_few_clusters`), which are
    `unit` (time or genome blocks, documents).

    >>> not_judged(3), not_judged(2, "documents")
    ('not judged (3 blocks, fewer than 10)', 'not judged (2 documents, fewer than 10)')
    """
    return f"not judged ({n_clusters} {unit}, fewer than {MIN_CLUSTERS})"


def classify_interval(
    claimed_direction: Direction, low: float, high: float, *, n_clusters: int | None = None
) -> IntervalClass:
    """Whether the interval (low, high) excludes zero on the claimed side, the opposite side, or neither;
    "neither" whatever its ends when it resampled fewer than `MIN_CLUSTERS` clusters (`n_clusters`).

    >>> classify_interval("greater", 0.1, 0.4), classify_interval("greater", -0.4, -0.1)
    ('claimed', 'opposite')
    >>> classify_interval("less", -0.2, 0.0), classify_interval("greater", 0.1, 0.4, n_clusters=3)
    ('neither', 'neither')
    """
    _check_direction(claimed_direction)
    low, high = _end_points("interval", (low, high))
    if too_few_clusters(n_clusters):
        return "neither"
    if low > 0:
        side = "greater"
    elif high < 0:
        side = "less"
    else:
        return "neither"
    return "claimed" if side == claimed_direction else "opposite"


def classify_intervals(
    claimed_direction: Direction, intervals: Mapping[Hashable, tuple[float, float] | _HasInterval]
) -> dict[Hashable, IntervalClass]:
    """`classify_interval` for every task/length key, for the report next to the verdict.

    >>> classify_intervals("greater", {("dna", 1024): (0.1, 0.3), ("dna", 4096): (-0.1, 0.2)})
    {('dna', 1024): 'claimed', ('dna', 4096): 'neither'}
    """
    _check_direction(claimed_direction)
    if not isinstance(intervals, Mapping) or len(intervals) == 0:
        raise ValueError(
            "verdict: intervals must be a non-empty mapping {task/length key: (low, high)}, "
            f"got {intervals!r}."
        )
    return {
        key: classify_interval(
            claimed_direction, *_end_points(key, interval), n_clusters=getattr(interval, "n_clusters", None)
        )
        for key, interval in intervals.items()
    }


def verdict(
    claimed_direction: Direction, intervals: Mapping[Hashable, tuple[float, float] | _HasInterval]
) -> Label:
    """The verdict of a claim from the difference's interval per task/length (rule: module docstring).

    >>> verdict("greater", {128: (0.01, 0.05), 1024: (0.02, 0.09)})
    'supported'
    >>> verdict("greater", {128: (0.01, 0.05), 1024: (-0.09, -0.02)})
    'depends'
    """
    return verdict_of_classes(classify_intervals(claimed_direction, intervals).values())


def verdict_of_classes(classes: Iterable[IntervalClass]) -> Label:
    """The verdict from the keys' classes (`classify_interval`'s, or a class a rule sets for a key that
    has no interval, such as a diverged run's): the rule of the module docstring.

    >>> verdict_of_classes(["claimed", "neither"]), verdict_of_classes(["opposite", "opposite"])
    ('inconclusive', 'contradicted')
    """
    classes = set(classes)
    if not classes:
        raise ValueError("verdict: no keys to judge.")
    if {"claimed", "opposite"} <= classes:
        return "depends"
    if classes == {"claimed"}:
        return "supported"
    if classes == {"opposite"}:
        return "contradicted"
    return "inconclusive"
