"""What the task configs (`configs/*.py`) share: model presets and sizes, the typed `preset,key=value`
argument, the logical-axis sharding rules, and ConfigDict sections built from the typed run config's
defaults (`seqjax.train.run_config`).

    from seqjax.config import base_config, data_section, parse_arg

    def get_config(arg=None):
        preset, options = parse_arg(arg, "lstm", {"length": int}, "configs/mine.py")
        c = base_config(preset, options.get("size", "cpu"), task="lm", max_length=options.get("length", 512))
        c.data = data_section("synthetic", shuffle=False, task="copy", length=options.get("length", 512))
        return c

A layer above `seqjax.train` (it builds the trainer's config) and below `configs/` and `scripts/`.
"""

from seqjax.common.extras import TRAIN_MODULES, require

# Before the imports below: without its extra, importing seqjax.config is one ImportError naming the fix.
require(__name__, "train", *TRAIN_MODULES)

from seqjax.config.args import apply_overrides, parse_arg
from seqjax.config.files import load_config_file
from seqjax.config.presets import (
    ENCODER_PRESETS,
    FORECASTING_ENCODER_PRESETS,
    HYBRID_PRESETS,
    PRESET_OPTIONS,
    PRESETS,
    SIZES,
    check_preset_task,
    preset_mixer,
    preset_model,
    preset_options,
)
from seqjax.config.rules import LOGICAL_RULES
from seqjax.config.sections import (
    add_run_sections,
    base_config,
    data_section,
    head_section,
    model_section,
    optimizer_section,
    section,
)

__all__ = [
    "ENCODER_PRESETS",
    "FORECASTING_ENCODER_PRESETS",
    "HYBRID_PRESETS",
    "LOGICAL_RULES",
    "PRESETS",
    "PRESET_OPTIONS",
    "SIZES",
    "add_run_sections",
    "apply_overrides",
    "base_config",
    "check_preset_task",
    "data_section",
    "head_section",
    "load_config_file",
    "model_section",
    "optimizer_section",
    "parse_arg",
    "preset_mixer",
    "preset_model",
    "preset_options",
    "section",
]
