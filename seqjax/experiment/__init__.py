"""The experiment protocol of issue 15: statistics that resample the real units of independence, and a
verdict rule fixed before any run.

`statistics`: two-level (cluster x seed) bootstrap intervals, the paired bootstrap of a difference,
McNemar's exact test, the Diebold-Mariano test, Holm's correction. `weighted_metrics`: metrics evaluated
under many bootstrap weightings at once. `verdict`: supported / contradicted / depends / inconclusive.
`positions`: bits per byte by position in the document, with intervals and a late-minus-early contrast.
`predictions`: the saved per-example records of a run (versioned .npz, atomic write, validating reader).
`scaling`: exponents of memory or time in the sequence length with t-intervals, and the O(n²) rule.
The computations are numpy and scipy; none of them needs jax or a device, except `matching`: parameter
counts of task models (abstract, no allocation) and per-model MLP or cell widths that match them.
"""

from seqjax.common.extras import EXPERIMENT_MODULES, require

# Before the imports below: without its extra, importing seqjax.experiment is one ImportError naming the fix.
require(__name__, "experiments", *EXPERIMENT_MODULES)

from seqjax.experiment.matching import (
    CELL_WIDTH_FIELDS,
    KNOBS,
    MatchedModel,
    count_parameters,
    match_parameters,
)
from seqjax.experiment.positions import position_curve
from seqjax.experiment.predictions import (
    FORMAT_VERSION,
    RunPredictions,
    read_predictions,
    stack_seeds,
    write_predictions,
)
from seqjax.experiment.statistics import (
    BootstrapInterval,
    DieboldMarianoResult,
    McNemarResult,
    cluster_bootstrap,
    contiguous_block_ids,
    diebold_mariano,
    holm_adjusted_p_values,
    mcnemar_exact,
    paired_bootstrap,
)
from seqjax.experiment.verdict import classify_interval, classify_intervals, verdict
from seqjax.experiment.weighted_metrics import (
    accuracy,
    balanced_accuracy,
    bits_per_byte,
    from_sklearn,
    mean_value,
)

__all__ = [
    "CELL_WIDTH_FIELDS",
    "FORMAT_VERSION",
    "KNOBS",
    "BootstrapInterval",
    "DieboldMarianoResult",
    "MatchedModel",
    "McNemarResult",
    "RunPredictions",
    "accuracy",
    "balanced_accuracy",
    "bits_per_byte",
    "classify_interval",
    "classify_intervals",
    "cluster_bootstrap",
    "contiguous_block_ids",
    "count_parameters",
    "diebold_mariano",
    "from_sklearn",
    "holm_adjusted_p_values",
    "match_parameters",
    "mcnemar_exact",
    "mean_value",
    "paired_bootstrap",
    "position_curve",
    "read_predictions",
    "stack_seeds",
    "verdict",
    "write_predictions",
]
