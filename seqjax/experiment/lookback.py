"""The statistics of the look-back study (`experiments/lookback.py`, issue 18 §3): which model family
gains more from a longer look-back, and the paired tests of forecasters on the same windows.

Every forecast window of the validation and test splits has the same targets at every look-back that fits
before the split (`seqjax.data.timeseries.make_window_sources`: the first target row is the split's
first row), so one model's errors at two look-backs are paired, window by window. One model's gain,
err(long) - err(short), is the length sweeps' `seqjax.experiment.sweep.length_gain` ("helps",
"hurts", "no clear difference"), shared with `experiments/dna_windows.py`.

- `family_gain_interval`: (recurrent's gain) - (attention's gain) =
  [err(rec, long) - err(rec, short)] - [err(att, long) - err(att, short)], the four models on one
  resample of the blocks (`statistics.contrast_bootstrap`; each model's seeds resampled on their own).
  Below zero: the recurrent model's error falls more ("recurrent gains more"); above: "attention gains
  more"; else "no clear difference".
- `paired_errors`: several forecasters' per-window errors, checked to be on the same windows.
- `forecast_diebold_mariano`: the DM test of two forecasters' seed-mean losses, with the overlap of
  their windows' targets in its lag window (the test windows are spread over the split: windows closer
  than a horizon share target rows).

    >>> flat = [[1.0, 1.0, 1.0, 1.0]]                   # [seeds, windows]
    >>> better = [[0.5, 0.6, 0.4, 0.5]]                 # the recurrent model at the longer look-back
    >>> gain = family_gain_interval(flat, better, flat, flat, [0, 0, 1, 1], n_resamples=200)
    >>> round(gain["estimate"], 6), gain["class"]
    (-0.5, 'recurrent gains more')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from seqjax.experiment import statistics
from seqjax.experiment.report import difference_fields, forecast_errors
from seqjax.experiment.verdict import classify_interval

__all__ = ["FAMILY_GAIN_CLASSES", "family_gain_interval", "forecast_diebold_mariano", "paired_errors"]

#: The class of an interval of gain(recurrent) - gain(attention).
FAMILY_GAIN_CLASSES = {
    "claimed": "recurrent gains more",
    "opposite": "attention gains more",
    "neither": "no clear difference",
}


def family_gain_interval(
    recurrent_short: ArrayLike,
    recurrent_long: ArrayLike,
    attention_short: ArrayLike,
    attention_long: ArrayLike,
    cluster_ids: ArrayLike | None,
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """gain(recurrent) - gain(attention), each gain err(long) - err(short), from the four models'
    per-window errors [seeds, windows] on the same windows (module docstring).

    >>> flat = [[1.0, 1.0, 1.0, 1.0]]
    >>> better = [[0.5, 0.6, 0.4, 0.5]]
    >>> family_gain_interval(flat, better, flat, flat, [0, 0, 1, 1], n_resamples=200)["class"]
    'recurrent gains more'
    """
    interval = statistics.contrast_bootstrap(
        [recurrent_long, recurrent_short, attention_long, attention_short],
        [1.0, -1.0, -1.0, 1.0],
        cluster_ids=cluster_ids,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    side = classify_interval("less", interval.low, interval.high)
    return {**difference_fields(interval), "class": FAMILY_GAIN_CLASSES[side]}


def paired_errors(
    runs: Sequence[Sequence[str]], error: str = "mse"
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """([seeds, windows] errors of each model's seeds (predictions files), example ids, cluster ids of
    the last model) after checking that every model scored the same windows with the same targets.
    Order the runs so the last has the longest look-back: its time blocks (look-back + horizon rows)
    are the coarsest, so they hold every shorter look-back's blocks' correlation too.

        >>> errors, ids, clusters = paired_errors([lstm_96_paths, lstm_8192_paths])  # doctest: +SKIP
    """
    from seqjax.experiment.predictions import read_predictions

    values, ids, clusters = [], None, None
    reference = None  # the targets of the last full (not reduced) run
    for paths in runs:
        errors, example_ids, cluster_ids = forecast_errors(paths, error)
        run = read_predictions(paths[0])
        # A run carried between machines keeps its errors, not its targets (`reduce_forecasts`): its
        # windows are checked by their ids (their first target rows) alone.
        targets = None if run.reduced else run.targets
        other_targets = (
            targets is not None and reference is not None and not np.array_equal(targets, reference)
        )
        if ids is not None and (not np.array_equal(example_ids, ids) or other_targets):
            raise ValueError(
                f"paired_errors: {paths[0]} scored other windows or targets than {runs[0][0]}; a look-back "
                "comparison needs the same test windows (a look-back that fits before the test split, "
                "the same --evaluation_examples)."
            )
        values.append(errors)
        ids, clusters = example_ids, cluster_ids
        reference = targets if targets is not None else reference
    assert ids is not None and clusters is not None
    return values, ids, clusters


def forecast_diebold_mariano(
    losses_a: ArrayLike, losses_b: ArrayLike, example_ids: ArrayLike, horizon: int
) -> dict[str, Any]:
    """Diebold-Mariano (HLN) test of two forecasters' losses ([seeds, windows]: the seed means are
    compared) on windows in time order whose first target rows are `example_ids` (stride-1 windows of
    the split, as the evaluation numbers them). Windows closer than `horizon` rows share targets, so the
    lag window is ceil(horizon / the median gap between windows), with Bartlett weights (never a
    negative variance). A p-value of NaN when the test cannot be run (equal losses, too few windows).

    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(1.0, 0.1, (2, 50)); b = a + 0.2 + rng.normal(0, 0.05, (1, 50))
    >>> result = forecast_diebold_mariano(a, b, np.arange(0, 500, 10), horizon=96)
    >>> result["lags"], result["p_value"] < 0.01
    (10, True)
    """
    a = np.asarray(losses_a, np.float64)
    b = np.asarray(losses_b, np.float64)
    a = a.mean(0) if a.ndim == 2 else a
    b = b.mean(0) if b.ndim == 2 else b
    gaps = np.diff(np.asarray(example_ids, np.int64))
    gap = float(np.median(gaps)) if len(gaps) else 1.0
    lags = max(1, math.ceil(horizon / max(gap, 1.0)))
    name = f"Diebold-Mariano (HLN, Bartlett, {lags} lags, seed-mean losses)"
    try:
        result = statistics.diebold_mariano(a, b, horizon=lags, kernel="bartlett")
    except ValueError as error:
        return {"name": name, "p_value": math.nan, "lags": lags, "note": str(error)}
    return {"name": name, "p_value": result.p_value, "statistic": result.statistic, "lags": lags}
