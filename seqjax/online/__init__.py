"""Online gradient algorithms: train a model one token at a time on a stream, in memory that does not
grow with the stream's length. See docs/online.md.

    from seqjax import cells
    from seqjax.online import DiagonalRTRL, OnlineModel
    model = OnlineModel((cells.LRU(hidden_size=32, state_size=64),), input_size=8, output_size=1)
    params = model.init(key)
    learner = DiagonalRTRL(model)            # or SnAp1, DenseRTRL, OnlineTBPTT
    st = learner.init(params, batch_shape=(16,))
    st, prediction, loss, grads = learner.step(params, st, x_t, y_t, reset_t, mask_t)
    # grads is a pytree like params: updates, opt_state = optimizer.update(grads, opt_state, params)

Nothing outside this package imports it.
"""

from seqjax.online.dense_rtrl import DenseRTRL, DenseTracer
from seqjax.online.diagonal_rtrl import DIAGONAL_CELLS, DiagonalRTRL, DiagonalTracer
from seqjax.online.learner import (
    LayerTracer,
    LearnerState,
    OnlineLearner,
    TraceLearner,
    accumulate,
    bptt_gradient,
    squared_error,
)
from seqjax.online.model import OnlineModel
from seqjax.online.snap import SNAP_CELLS, SnAp1, SnApTracer, snap_owners
from seqjax.online.tbptt import OnlineTBPTT

__all__ = [
    "DIAGONAL_CELLS",
    "SNAP_CELLS",
    "DenseRTRL",
    "DenseTracer",
    "DiagonalRTRL",
    "DiagonalTracer",
    "LayerTracer",
    "LearnerState",
    "OnlineLearner",
    "OnlineModel",
    "OnlineTBPTT",
    "SnAp1",
    "SnApTracer",
    "TraceLearner",
    "accumulate",
    "bptt_gradient",
    "snap_owners",
    "squared_error",
]
