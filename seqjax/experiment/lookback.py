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
- `forecast_diebold_mariano` (`seqjax.experiment.report`'s, re-exported): the DM test of two
  forecasters' seed-mean losses, with the overlap of
  their windows' targets in its lag window (the test windows are spread over the split: windows closer
  than a horizon share target rows).

    >>> flat = [[1.0] * 24]                             # [seeds, windows]
    >>> better = [[0.5, 0.6, 0.4, 0.5] * 6]             # the recurrent model at the longer look-back
    >>> blocks = np.repeat(np.arange(12), 2)            # 12 time blocks of 2 windows
    >>> gain = family_gain_interval(flat, better, flat, flat, blocks, n_resamples=200)
    >>> round(gain["estimate"], 6), gain["class"]
    (-0.5, 'recurrent gains more')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from seqjax.experiment import statistics
from seqjax.experiment.report import difference_fields, forecast_diebold_mariano, forecast_errors
from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters

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

    An interval over fewer than `verdict.MIN_CLUSTERS` blocks is not judged.

    >>> flat = [[1.0] * 24]
    >>> better = [[0.5, 0.6, 0.4, 0.5] * 6]
    >>> family_gain_interval(flat, better, flat, flat, np.repeat(np.arange(12), 2), n_resamples=200)["class"]
    'recurrent gains more'
    >>> family_gain_interval(flat, better, flat, flat, np.repeat([0, 1], 12), n_resamples=200)["class"]
    'not judged (2 blocks, fewer than 10)'
    """
    interval = statistics.contrast_bootstrap(
        [recurrent_long, recurrent_short, attention_long, attention_short],
        [1.0, -1.0, -1.0, 1.0],
        cluster_ids=cluster_ids,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    if too_few_clusters(interval.n_clusters):
        return {**difference_fields(interval), "class": not_judged(interval.n_clusters)}
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
