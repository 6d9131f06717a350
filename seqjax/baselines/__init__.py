"""Strong non-neural baselines for the real tasks (issue 15), fit on the train split only and scored with
the models' own metrics (`seqjax.data.metrics`), with per-example values for the statistics.

- `genomic`: majority class, GC content, and k-mer frequencies (k = 3..6), each + logistic regression.
- `documents`: add-one unigram, interpolated Kneser–Ney byte n-grams (`kneser_ney`), xz -9e and bz2
  bits per byte per document.
- `timeseries`: look-back mean, last value, seasonal-naive, NLinear and DLinear (closed-form ridge).
- `result`: `BaselineResult`, what every baseline returns.

Each family module has `evaluate_baselines(data, data_dir, split)` over the project's split sources;
`experiments/baselines.py` prints them as a table. The family modules are imported on demand.

    >>> from seqjax.baselines import BaselineResult
    >>> BaselineResult.__name__
    'BaselineResult'
"""

from seqjax.common.extras import BASELINES_MODULES, require

# Before the imports below: without its extra, importing seqjax.baselines is one ImportError naming the fix.
require(__name__, "experiments", *BASELINES_MODULES)

from seqjax.baselines.result import BaselineResult

__all__ = ["BaselineResult"]
