"""Model presets (one mixer each) and the CPU / accelerator sizes that the task configs share.

PRESETS["mamba"]  # {"cell": "mamba", "state_size": 16}: a `BackboneConfig.mixers` entry
SIZES["cpu"]["d_model"]
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "SIZES", "preset_mixer"]

#: Mixer presets (a `BackboneConfig.mixers` entry each); a config's `pattern` repeats one over the layers.
PRESETS: dict[str, dict[str, Any]] = {
    "lstm": {"cell": "lstm"},
    "gru": {"cell": "gru"},
    "elstm": {"cell": "elstm"},
    "s5": {"cell": "s5", "state_size": 32},
    "lru": {"cell": "lru", "state_size": 32},
    "mamba": {"cell": "mamba", "state_size": 16},
    "linear_attention": {"cell": "linear_attention"},
    "gla": {"cell": "gla"},
    "attention": {"cell": "attention"},
    "swa": {"cell": "sliding_window_attention", "window": 256},
}
#: Model and run sizes: "cpu" trains for minutes on 2 cores; "accelerator" is a real run on a GPU/TPU.
SIZES: dict[str, dict[str, Any]] = {
    "cpu": {"d_model": 64, "num_layers": 2, "batch_size": 8, "total_steps": 200, "learning_rate": 2e-3},
    "accelerator": {
        "d_model": 256,
        "num_layers": 6,
        "batch_size": 64,
        "total_steps": 20000,
        "learning_rate": 1e-3,
    },
}


def preset_mixer(preset: str, *, max_length: int, **overrides: Any) -> dict[str, Any]:
    """The mixer spec of `preset`; exact attention gets `max_length` (its KV cache) unless overridden.

    preset_mixer("swa", max_length=1024, window=64)  # {"cell": "sliding_window_attention", "window": 64}
    """
    mixer = dict(PRESETS[preset])
    if mixer["cell"] == "attention":
        mixer["max_length"] = max_length
    mixer.update(overrides)
    return mixer
