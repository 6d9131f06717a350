"""Synthetic memory probes (copy, selective copy, associative recall) as language modeling.

    python scripts/train.py --config=configs/synthetic.py:lstm --workdir=/tmp/run
    python scripts/train.py --config=configs/synthetic.py:gla,length=1024 --workdir=/tmp/run \
        --config.total_steps=2000 --config.mesh.shape='(-1,1)'

The arg is `preset[,key=value...]`: the preset names the mixer (any of `seqjax.config.PRESETS`); `length`,
`task`, `delay` (copy only: blanks between the symbols and GO; default the whole length) and `size` ("cpu"
default, or "accelerator") adjust the data and model size.
"""

from __future__ import annotations

import ml_collections

from seqjax.config import (
    add_run_sections,
    data_section,
    head_section,
    model_section,
    optimizer_section,
    parse_arg,
)

SIZES = {
    "cpu": {"d_model": 32, "num_layers": 2, "batch_size": 16, "total_steps": 300},
    "accelerator": {"d_model": 256, "num_layers": 4, "batch_size": 128, "total_steps": 20000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(
        arg, "lstm", {"length": int, "task": str, "delay": int}, "configs/synthetic.py"
    )
    size = SIZES[options.get("size", "cpu")]
    length = options.get("length", 64)
    c = ml_collections.ConfigDict()
    # One reference: overriding --config.total_steps also stretches the learning-rate schedule.
    c.total_steps = ml_collections.FieldReference(size["total_steps"])
    c.seed = 0
    c.task = "lm"
    data = {"task": options.get("task", "associative_recall"), "length": length}
    if "delay" in options:
        data["delay"] = options["delay"]
    c.data = data_section("synthetic", shuffle=False, **data)
    c.model = model_section(
        preset,
        d_model=size["d_model"],
        num_layers=size["num_layers"],
        max_length=length,
        mixer={"window": 64} if preset == "swa" else None,
        vocab_size=16,
    )
    c.head = head_section("lm")
    c.optimizer = optimizer_section(
        c, name="adamw", learning_rate=3e-3, warmup_steps=20, weight_decay=0.01, clip_norm=1.0
    )
    # Validation: 64 examples of the fixed validation set (data.eval_size examples).
    add_run_sections(c, batch_size=size["batch_size"], eval_examples=64)
    return c
