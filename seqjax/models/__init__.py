"""Flax linen models over seqjax cells: CellLayer, Block, Backbone, task heads and step mode.

    from seqjax import models
    model = models.LanguageModel(models.BackboneConfig(d_model=64, num_layers=4, vocab_size=256,
                                                       pattern=("lstm", "lstm", "gla")))
    variables = model.init(key, tokens)             # params boxed with logical axes and optimizer groups
    logits = model.apply(variables, tokens)
    tokens = models.generate(model, variables, prompt, num_tokens=32, key=key)

See docs/models.md.
"""

from seqjax.models.backbone import Backbone, Cache, check_streamable
from seqjax.models.block import MLP_ACTIVATIONS, NORMS, REMAT_POLICIES, Block, GatedMLP, remat_block
from seqjax.models.config import BackboneConfig, build_mixer
from seqjax.models.encoders import (
    DNA_PAD_ID,
    DNA_VOCAB,
    IUPAC,
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
from seqjax.models.heads import (
    POOLINGS,
    ClassificationHead,
    ForecastHead,
    RevIN,
    first_valid_index,
    last_valid_index,
    masked_mean,
    pool,
)
from seqjax.models.layer import CellLayer, box_cell_params, step_error
from seqjax.models.partitioning import GROUPS, GroupedPartitioned, boxed, param_groups, weight_decay_mask
from seqjax.models.tasks import TASKS, Forecaster, LanguageModel, SequenceClassifier, from_config

__all__ = [
    "DNA_PAD_ID",
    "DNA_VOCAB",
    "GROUPS",
    "IUPAC",
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
    "GroupedPartitioned",
    "LanguageModel",
    "LinearEncoder",
    "RevIN",
    "SequenceClassifier",
    "TokenEmbedding",
    "box_cell_params",
    "boxed",
    "build_mixer",
    "check_streamable",
    "decode_step",
    "dna_to_ids",
    "first_valid_index",
    "forecast_step",
    "from_config",
    "generate",
    "ids_to_dna",
    "init_cache",
    "last_valid_index",
    "masked_mean",
    "param_groups",
    "pool",
    "prefill",
    "remat_block",
    "sample_token",
    "step_error",
    "stream_forecasts",
    "weight_decay_mask",
]
