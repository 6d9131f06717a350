"""What every task config shares: model presets, CPU/accelerator sizes, the `preset[,key=value]` arg, and
the trainer sections (optimizer, mesh, logical-axis rules, checkpoints).

A task config (`configs/genomic.py`, ...) calls `parse_arg` and `base_config`, then fills `data`, `task`
and `head`. Sharding rules are data here, as in big_vision and MaxText.
"""

from __future__ import annotations

from typing import Any

import ml_collections

#: Mixer presets (a `BackboneConfig.mixers` entry each); `pattern` repeats the preset over the layers.
PRESETS: dict[str, dict[str, Any]] = {
    "lstm": {"cell": "lstm"},
    "gru": {"cell": "gru"},
    "s5": {"cell": "s5", "state_size": 32},
    "lru": {"cell": "lru", "state_size": 32},
    "mamba": {"cell": "mamba", "state_size": 16},
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
LOGICAL_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
)


def parse_arg(
    arg: str | None, default: str, options: tuple[str, ...], where: str
) -> tuple[str, dict[str, str]]:
    """`"preset,key=value,..."` → (preset, {key: value}); unknown presets and keys name the fix."""
    parts = [p for p in (arg or default).split(",") if p]
    preset, values = parts[0], {}
    for part in parts[1:]:
        if "=" not in part:
            raise ValueError(f"{where}: option {part!r} is not key=value.")
        key, value = part.split("=", 1)
        values[key] = value
    unknown = sorted(set(values) - set(options) - {"size"})
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted({*options, 'size'})}.")
    if preset not in PRESETS:
        raise ValueError(f"{where}: unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
    if values.get("size", "cpu") not in SIZES:
        raise ValueError(f"{where}: size must be one of {sorted(SIZES)}, got {values['size']!r}.")
    return preset, values


def base_config(preset: str, size_name: str, *, max_length: int) -> ml_collections.ConfigDict:
    """The trainer sections for `preset` at `size_name`; `max_length` sizes attention KV caches."""
    size = SIZES[size_name]
    c = ml_collections.ConfigDict()
    # One reference: overriding --config.total_steps also stretches the learning-rate schedule.
    c.total_steps = ml_collections.FieldReference(size["total_steps"])
    c.seed = 0
    mixer = dict(PRESETS[preset])
    if mixer["cell"] == "attention":
        mixer["max_length"] = max_length
    c.model = ml_collections.ConfigDict(
        {
            "d_model": size["d_model"],
            "num_layers": size["num_layers"],
            "pattern": (preset,),
            "mixers": {preset: mixer},
            "dtype": "float32",  # "bfloat16" for mixed precision: parameters and optimizer state stay f32
            "remat": "none",  # a models.REMAT_POLICIES name, e.g. "full" or "dots_saveable"
        }
    )
    c.head = ml_collections.ConfigDict()
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": size["learning_rate"],
            "schedule": "cosine",  # or "linear", "constant" (after warmup)
            "warmup_steps": max(10, size["total_steps"] // 20),
            "total_steps": c.get_ref("total_steps"),
            "weight_decay": 0.05,
            "clip_norm": 1.0,
        }
    )
    add_run_sections(c, batch_size=size["batch_size"], eval_examples=None)
    return c


def add_run_sections(c: ml_collections.ConfigDict, *, batch_size: int, eval_examples: int | None) -> None:
    """Batching, eval, logging, mesh, sharding rules and checkpoint sections, the same for every task."""
    c.batch_size = batch_size
    c.eval_batch_size = batch_size
    c.eval_examples = ml_collections.FieldReference(eval_examples, field_type=int)  # None: the whole split
    c.tbptt_length = ml_collections.FieldReference(None, field_type=int)  # LM only; None: full BPTT
    # "batch": one update per batch (chunk gradients summed); "chunk": one per chunk (the optimizer's count
    # and LR schedule then advance per chunk, while `step` still counts batches)
    c.tbptt_updates = "batch"
    c.max_train_seconds = ml_collections.FieldReference(None, field_type=float)  # wall-clock budget
    c.log_every = 10
    c.eval_every = 100
    c.report_step_memory = False  # compile once more to log XLA's memory estimate of a train step
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $SEQJAX_DATA_DIR or ~/.cache
    c.mesh = ml_collections.ConfigDict(
        {
            "shape": (-1,),
            "axes": ("data",),
            "num_devices": ml_collections.FieldReference(None, field_type=int),
        }
    )
    c.logical_rules = LOGICAL_RULES
    c.checkpoint = ml_collections.ConfigDict(
        {"every": 100, "keep": 2, "best_metric": "loss", "best_mode": "min", "async_save": True}
    )
