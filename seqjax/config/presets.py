"""Model presets (one mixer each) and the CPU / accelerator sizes that the task configs share.

PRESETS["mamba"]  # {"cell": "mamba", "state_size": 16}: a `BackboneConfig.mixers` entry
HYBRID_PRESETS["griffin"]["pattern"]  # ("rglru", "rglru", "local_attention"): several mixers over the layers
SIZES["cpu"]["d_model"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seqjax.cells.linformer import SHARING_MODES

__all__ = [
    "ENCODER_PRESETS",
    "FORECASTING_ENCODER_PRESETS",
    "HYBRID_PRESETS",
    "PRESETS",
    "PRESET_OPTIONS",
    "SIZES",
    "check_preset_task",
    "preset_mixer",
    "preset_model",
    "preset_options",
]

#: Mixer presets (a `BackboneConfig.mixers` entry each); a config's `pattern` repeats one over the layers.
PRESETS: dict[str, dict[str, Any]] = {
    "lstm": {"cell": "lstm"},
    "gru": {"cell": "gru"},
    "elstm": {"cell": "elstm"},
    "s5": {"cell": "s5", "state_size": 32},
    "lru": {"cell": "lru", "state_size": 32},
    "mamba": {"cell": "mamba", "state_size": 16},
    # Mamba-2 (SSD): the reference's d_state = 128, head_dim 64 (gcd(64, d_inner)), one group of B and C.
    "mamba2": {"cell": "mamba2", "state_size": 128},
    "linear_attention": {"cell": "linear_attention"},
    # GLA (fla's layer: a decay per key channel); gla_scalar: one decay per head (the per-head form, which
    # ran as "gla" before December 2026).
    "gla": {"cell": "gla"},
    "gla_scalar": {"cell": "gla_scalar"},
    # The delta rule (fla's layers): DeltaNet, and Gated DeltaNet with Mamba-2's decay and an output gate.
    "deltanet": {"cell": "deltanet"},
    "gated_deltanet": {"cell": "gated_deltanet"},
    # RWKV-7 "Goose" (the authors' time mixer): the generalised delta rule with a per-channel decay and
    # in-context learning rate, token shift, LoRA gates; head size 64 as the authors'.
    "rwkv7": {"cell": "rwkv7"},
    # Griffin's recurrent block (RG-LRU), the mixer of RecurrentGemma's recurrent layers (and of Hawk).
    "rglru": {"cell": "rglru"},
    # xLSTM's layers (Beck et al. 2024): the mLSTM layer (matrix memory, up-projection inside) and the
    # sLSTM layer (scalar memory, headwise recurrence), 4 heads each as the authors' defaults.
    "mlstm": {"cell": "mlstm"},
    "slstm": {"cell": "slstm"},
    "attention": {"cell": "attention"},
    "swa": {"cell": "sliding_window_attention", "window": 256},
    # Transformer-XL: softmax attention with a memory of the previous segments' keys and values; the
    # memory is the task's length (the training segment) unless overridden (`preset_mixer`).
    "xl_attention": {"cell": "xl_attention"},
    "s4d": {"cell": "s4d", "state_size": 64},
    "performer": {"cell": "performer"},
    # Encoders: they read future tokens, so they serve classification and forecasting, not language
    # modelling (ENCODER_PRESETS and FORECASTING_ENCODER_PRESETS).
    "bilstm": {"cell": "lstm", "bidirectional": True},
    "encoder": {"cell": "attention", "causal": False},
    # Longformer's window 512 at its base size; one global token (the first: a classification token).
    "longformer": {"cell": "longformer", "window": 256, "num_global": 1},
    # Linformer at the paper's k = 256 with key-value sharing (one k x n matrix per layer, the cheapest
    # of the paper's sharing modes); n is the task's length (`preset_mixer`). E grows with n: at the CPU
    # size it holds most of the model's parameters (docs/cells.md).
    "linformer": {"cell": "linformer", "k": 256, "sharing": "key_value"},
}
#: Hybrid presets: a layer pattern over several mixers, and the block options it needs (`preset_model`).
#: Griffin (De et al. 2024): two RG-LRU blocks per local (sliding-window, multi-query) attention block,
#: with Griffin's MLP (GeLU-gated, expansion 3). num_layers is rounded up to whole patterns.
HYBRID_PRESETS: dict[str, dict[str, Any]] = {
    "griffin": {
        "pattern": ("rglru", "rglru", "local_attention"),
        "mixers": {
            "rglru": {"cell": "rglru"},
            "local_attention": {"cell": "sliding_window_attention", "window": 256, "num_kv_heads": 1},
        },
        "block": {"mlp_activation": "geglu", "mlp_expansion": 3.0},
    },
}
#: Mixer hyperparameters a task config's arg may set for one preset, with their allowed values:
#: `configs/genomic.py:linformer,sharing=layerwise` is the paper's layerwise sharing (one E for the whole
#: model). `parse_arg` refuses them for other presets; `preset_options` picks them out of its options.
PRESET_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {"linformer": {"sharing": SHARING_MODES}}
#: Presets whose every output reads later tokens: refused for language modelling, and for forecasting
#: unless listed in FORECASTING_ENCODER_PRESETS.
ENCODER_PRESETS: frozenset[str] = frozenset({"bilstm", "encoder", "longformer", "linformer"})
#: Encoder presets that also serve forecasting: all of them. The forecaster's head reads the look-back
#: window's last token once, and every target lies after the window, so an encoder reading the whole
#: window in both directions sees no target (encoder forecasters such as Informer and PatchTST do the
#: same). Streaming forecasters (`stream=1`, state carried across batches) still refuse them.
FORECASTING_ENCODER_PRESETS: frozenset[str] = ENCODER_PRESETS
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


def check_preset_task(preset: str, task: str) -> None:
    """Raises ValueError when `preset` cannot serve `task`: an encoder preset reads future tokens, so a
    language model would see its targets; "classification" may use it, and "forecast" (the presets in
    FORECASTING_ENCODER_PRESETS: its targets lie after the window the encoder reads).

    >>> check_preset_task("longformer", "classification")
    >>> check_preset_task("longformer", "forecast")
    >>> check_preset_task("lstm", "lm")
    >>> check_preset_task("encoder", "lm")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: preset 'encoder' is a bidirectional encoder: ... Use it for classification or forecasting, ...
    """
    if preset in FORECASTING_ENCODER_PRESETS and task == "forecast":
        return
    if preset in ENCODER_PRESETS and task != "classification":
        raise ValueError(
            f"preset {preset!r} is a bidirectional encoder: every output reads later tokens, so task "
            f"{task!r} would see its own targets. Use it for classification or forecasting, or a causal "
            f"preset for {task!r} (e.g. {', '.join(sorted(set(PRESETS) - ENCODER_PRESETS)[:4])})."
        )


def preset_options(preset: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The mixer overrides among `options` (as `parse_arg` returns them): the `PRESET_OPTIONS` of
    `preset` that were given.

    >>> preset_options("linformer", {"length": 512, "sharing": "layerwise"})
    {'sharing': 'layerwise'}
    >>> preset_options("lstm", {"length": 512})
    {}
    """
    return {key: options[key] for key in PRESET_OPTIONS.get(preset, {}) if key in options}


def preset_mixer(preset: str, *, max_length: int, **overrides: Any) -> dict[str, Any]:
    """The mixer spec of `preset`; exact attention gets `max_length` (its KV cache), Transformer-XL
    attention gets it as its `memory_length` (the training segment length, as in the paper) and
    Linformer as its n (E and F are k x n), unless overridden.

    preset_mixer("swa", max_length=1024, window=64)  # {"cell": "sliding_window_attention", "window": 64}

    >>> preset_mixer("linformer", max_length=128)
    {'cell': 'linformer', 'k': 128, 'sharing': 'key_value', 'max_length': 128}
    >>> preset_mixer("xl_attention", max_length=512)
    {'cell': 'xl_attention', 'memory_length': 512}
    """
    return _sized(dict(PRESETS[preset]), max_length, overrides)


def _sized(mixer: dict[str, Any], max_length: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    if mixer["cell"] in ("attention", "linformer"):
        mixer["max_length"] = max_length
    if mixer["cell"] == "xl_attention":
        mixer["memory_length"] = max_length
    if mixer["cell"] == "linformer":
        mixer["k"] = min(mixer["k"], max_length)  # k > n projects to more rows than there are tokens
    mixer.update(overrides)
    return mixer


def preset_model(preset: str, *, max_length: int, num_layers: int, **overrides: Any) -> dict[str, Any]:
    """The `config.model` entries a preset sets: `pattern`, `mixers` and `num_layers`, and for a hybrid
    preset (`HYBRID_PRESETS`) its block options, with num_layers rounded up to whole patterns. Each
    mixer is sized as `preset_mixer` sizes it; `overrides` apply to a one-mixer preset only.

    >>> preset_model("lstm", max_length=64, num_layers=2)
    {'pattern': ('lstm',), 'mixers': {'lstm': {'cell': 'lstm'}}, 'num_layers': 2}
    >>> model = preset_model("griffin", max_length=64, num_layers=2)
    >>> model["pattern"], model["num_layers"], model["mlp_activation"]
    (('rglru', 'rglru', 'local_attention'), 3, 'geglu')
    """
    if preset not in HYBRID_PRESETS:
        mixer = preset_mixer(preset, max_length=max_length, **overrides)
        return {"pattern": (preset,), "mixers": {preset: mixer}, "num_layers": num_layers}
    if overrides:
        raise ValueError(
            f"preset {preset!r} mixes several cells; set their hyperparameters in the config "
            f"(config.model.mixers.<name>.<key>), not as mixer overrides {sorted(overrides)}."
        )
    spec = HYBRID_PRESETS[preset]
    pattern = tuple(spec["pattern"])
    mixers = {name: _sized(dict(mixer), max_length, {}) for name, mixer in spec["mixers"].items()}
    layers = -(-int(num_layers) // len(pattern)) * len(pattern)
    return {"pattern": pattern, "mixers": mixers, "num_layers": layers, **spec["block"]}
