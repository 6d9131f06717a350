"""`BaselineResult`: what every baseline returns, its task metrics and its per-example values.

The per-example arrays (one entry per evaluated example, in the split's order) let the statistics of
an experiment (paired tests, bootstrap intervals) treat a baseline exactly like a model.

    >>> import numpy as np
    >>> r = BaselineResult("mean", {"mse": 1.0}, {"mse": np.ones(3)})
    >>> r.name, r.metrics["mse"], r.per_example["mse"].shape
    ('mean', 1.0, (3,))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["BaselineResult"]


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """One baseline evaluated on one split.

    - `name`: what the baseline is, e.g. "k-mer logistic regression (k=4)".
    - `metrics`: the task metrics, computed by `seqjax.data.metrics` as for the models.
    - `per_example`: arrays of equal length (one entry per example of the split), e.g. the predicted
      class probabilities and the log loss, or the squared error of each forecast window, or the bits
      and bytes of each document.
    - `settings`: the baseline's hyperparameters, for the table and the record.
    """

    name: str
    metrics: dict[str, float]
    per_example: dict[str, np.ndarray]
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
