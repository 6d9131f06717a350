"""Flax linen models over seqjax cells: CellLayer, Block, Backbone, task heads and step mode.

    from seqjax import models
    model = models.LanguageModel(models.BackboneConfig(d_model=64, num_layers=4, vocab_size=256,
                                                       pattern=("lstm", "lstm", "gla")))
    variables = model.init(key, tokens)             # params boxed with logical axes and optimizer groups
    logits = model.apply(variables, tokens)
    tokens = models.generate(model, variables, prompt, num_tokens=32, key=key)

See docs/models.md.
"""

from seqjax.common.extras import MODELS_MODULES, require

# Before the imports below: without its extra, importing seqjax.models is one ImportError naming the fix.
require(__name__, "models", *MODELS_MODULES)

from seqjax.models.backbone import Backbone, Cache, sequence_parallel_config
from seqjax.models.block import MLP_ACTIVATIONS, NORMS, REMAT_POLICIES, Block, GatedMLP
from seqjax.models.config import BackboneConfig
from seqjax.models.encoders import (
    DNA_PAD_ID,
    DNA_VOCAB,
    DNAEncoder,
    LinearEncoder,
    TokenEmbedding,
    dna_to_ids,
    ids_to_dna,
)
from seqjax.models.generation import (
    decode_step,
    forecast_step,
    generate,
    init_cache,
    prefill,
    sample_token,
    stream_forecasts,
)
from seqjax.models.heads import POOLINGS, ClassificationHead, ForecastHead, RevIN
from seqjax.models.layer import CellLayer
from seqjax.models.partitioning import GROUPS, param_groups, weight_decay_mask
from seqjax.models.tasks import (
    TASKS,
    Forecaster,
    LanguageModel,
    SequenceClassifier,
    build_task_model,
    from_config,
)


def __getattr__(name: str):
    # NnxCellLayer imports flax.nnx (~0.2 s on top of linen), so it loads on first use only.
    if name == "NnxCellLayer":
        from seqjax.models.nnx_layer import NnxCellLayer

        return NnxCellLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What users build with. Internals (`box_cell_params`, `step_error`, `GroupedPartitioned`, `boxed`,
# `build_mixer`, `remat_block`, `pool`, the valid-index helpers, `IUPAC`, ...) stay importable from
# their modules.
__all__ = [
    "DNA_PAD_ID",
    "DNA_VOCAB",
    "GROUPS",
    "MLP_ACTIVATIONS",
    "NORMS",
    "POOLINGS",
    "REMAT_POLICIES",
    "TASKS",
    "Backbone",
    "BackboneConfig",
    "Block",
    "Cache",
    "CellLayer",
    "ClassificationHead",
    "DNAEncoder",
    "ForecastHead",
    "Forecaster",
    "GatedMLP",
    "LanguageModel",
    "LinearEncoder",
    "NnxCellLayer",
    "RevIN",
    "SequenceClassifier",
    "TokenEmbedding",
    "build_task_model",
    "decode_step",
    "dna_to_ids",
    "forecast_step",
    "from_config",
    "generate",
    "ids_to_dna",
    "init_cache",
    "param_groups",
    "prefill",
    "sample_token",
    "sequence_parallel_config",
    "stream_forecasts",
    "weight_decay_mask",
]
