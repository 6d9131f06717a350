"""Whole byte-level language models, one per mixer, at equal parameter count: the models that
`scripts/benchmark_models.py` and `experiments/latency.py` time.

Each model is `num_layers` blocks of width `d_model` around one mixer (pre-norm, SwiGLU MLP); its MLP
width is solved (`matching.match_parameters`, knob "mlp") so its parameter count is that of the
exact-attention transformer with a 4x MLP. Attention's cache capacity (`max_length`) is set per use; it
does not change the parameter count.

    >>> shape = ModelShape(d_model=16, num_layers=1, vocab=32)
    >>> sizes = equal_param_expansions(["lstm"], shape)
    >>> config = backbone_config("lstm", sizes["lstm"][0], 64, shape)
    >>> config.pattern, config.d_model
    (('lstm',), 16)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from seqjax import models
from seqjax.config import PRESETS
from seqjax.experiment.matching import match_parameters

__all__ = ["LABELS", "MIXERS", "REFERENCE", "ModelShape", "backbone_config", "equal_param_expansions"]

# The config presets (seqjax.config.PRESETS), with larger SSM states and window for the long lengths
# measured here; sizes not given follow d_model. Attention's cache capacity is set per length.
MIXERS: dict[str, dict[str, Any]] = {
    "lstm": PRESETS["lstm"],
    "gru": PRESETS["gru"],
    "elstm": PRESETS["elstm"],
    "s5": {**PRESETS["s5"], "state_size": 64},
    "lru": {**PRESETS["lru"], "state_size": 64},
    "mamba": PRESETS["mamba"],
    "linear_attention": PRESETS["linear_attention"],
    "gla": PRESETS["gla"],
    "deltanet": PRESETS["deltanet"],
    "gated_deltanet": PRESETS["gated_deltanet"],
    "mamba2": PRESETS["mamba2"],
    "rwkv7": PRESETS["rwkv7"],
    "mlstm": PRESETS["mlstm"],
    "slstm": PRESETS["slstm"],
    "rglru": PRESETS["rglru"],
    "attention": PRESETS["attention"],
    "sliding_window": {**PRESETS["swa"], "window": 512},
}
LABELS = {
    "lstm": "LSTM",
    "gru": "GRU",
    "elstm": "E-LSTM",
    "s5": "S5 (N=64)",
    "lru": "LRU (N=64)",
    "mamba": "Mamba (N=16)",
    "linear_attention": "Linear attention",
    "gla": "GLA (per channel)",
    "deltanet": "DeltaNet",
    "gated_deltanet": "Gated DeltaNet",
    "mamba2": "Mamba-2 (N=128)",
    "rwkv7": "RWKV-7",
    "mlstm": "mLSTM",
    "slstm": "sLSTM",
    "rglru": "RG-LRU",
    "attention": "Attention (exact)",
    "sliding_window": "Sliding window (w=512)",
}
#: The model every other is matched to: the exact-attention transformer with a 4x MLP.
REFERENCE = "attention"


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What every model of a comparison shares: residual width, blocks and vocabulary."""

    d_model: int = 128
    num_layers: int = 2
    vocab: int = 256


def backbone_config(name: str, expansion: float, max_length: int, shape: ModelShape) -> models.BackboneConfig:
    """The LM backbone of mixer `name` (a key of MIXERS) with MLP `expansion`; attention cells get a cache
    of `max_length` tokens."""
    spec = dict(MIXERS[name])
    if spec["cell"] == "attention":
        spec["max_length"] = max_length
    return models.BackboneConfig(
        d_model=shape.d_model,
        num_layers=shape.num_layers,
        vocab_size=shape.vocab,
        pattern=(name,),
        mixers={name: spec},
        mlp_expansion=expansion,
    )


def _run_config(backbone: models.BackboneConfig) -> dict[str, Any]:
    """A minimal LM run config around `backbone`, the form `match_parameters` reads."""
    return {"task": "lm", "batch_size": 1, "total_steps": 1, "model": backbone.to_dict(), "data": {}}


def equal_param_expansions(names: list[str], shape: ModelShape) -> dict[str, tuple[float, int]]:
    """MLP expansion per mixer so each model has the reference's parameter count; {name: (expansion,
    parameters)}."""
    configs = {
        name: _run_config(backbone_config(name, 4.0, 1024, shape))
        for name in dict.fromkeys([REFERENCE, *names])
    }
    # The MLP's width, exact since the count is affine in it.
    _, report = match_parameters(configs, target=REFERENCE, knob="mlp")
    by_name = {m.name: m for m in report}
    return {name: (float(by_name[name].value), by_name[name].parameters) for name in names}
