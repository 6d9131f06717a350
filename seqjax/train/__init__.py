"""The trainer: `train` and `evaluate` a run config, the train state and its checkpoints.

    from seqjax.train import train
    result = train(config, workdir)  # config: a configs/*.py ConfigDict, or a typed `RunConfig`

The parts live in their modules: `run_config` (the typed config), `mesh` (meshes, logical-axis rules),
`optimizer`, `state`, `step` (the jitted train step and losses), `evaluation`, `checkpoint`, `trainer`.
"""

from seqjax.common.extras import TRAIN_MODULES, require

# Before the imports below: without its extra, importing seqjax.train is one ImportError naming the fix.
require(__name__, "train", *TRAIN_MODULES)

from seqjax.train.checkpoint import Checkpoints
from seqjax.train.run_config import RunConfig, resolve
from seqjax.train.state import TrainState
from seqjax.train.trainer import evaluate, train

__all__ = ["Checkpoints", "RunConfig", "TrainState", "evaluate", "resolve", "train"]
