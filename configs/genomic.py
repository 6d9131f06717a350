"""Genomic sequence classification: DNA windows of human chr20 (genic vs intergenic, promoter vs not), of
bacterial genomes (species of origin), and of human chr20 vs C. elegans chrX (human or worm), read as
bytes by the DNA encoder.

    python scripts/train.py --config=configs/genomic.py:mamba --workdir=/tmp/genomic
    python scripts/train.py --config=configs/genomic.py:lstm,task=promoter,route=auto,size=accelerator
    python scripts/train.py --config=configs/genomic.py:lstm,task=human_or_worm --workdir=/tmp/hw
    python scripts/train.py --config=configs/genomic.py:lstm,task=promoter,length=1024,nested=16384

Arg: `preset[,task=..,length=..,route=..,size=..]`, and for `linformer` `sharing=..` (e.g.
`linformer,sharing=layerwise`: one E for the whole model; `seqjax.config.PRESET_OPTIONS`). `route=sample`
(default) trains on the real sample embedded in the repository; `auto`/`offline`/`online` fetch and prepare
the full data (see `scripts/prepare_data.py`). Lengths: 8192/16384/32768 are the documented full-data windows;
the CPU default is 2048. `nested=ANCHOR` (an int >= length, e.g. 16384; default off): the windows and
their labels are chosen once at ANCHOR bp and a run at `length` reads the centre `length` bp of each, so
runs at 1k, 4k, 8k and 16k with `nested=16384` see the same loci and labels with more or less context
around them (`seqjax.data.genomic`; `experiments/dna_windows.py` sweeps it).
`augment=none|reverse_complement|shift|both` and `max_shift=BP` (default off; they enter `config.data`
only when given, so configs without them are unchanged): training-time augmentation of the training
batches only, e.g. `lstm,length=1024,nested=1280,augment=both,max_shift=128` (a shift needs nested >=
length + 2 * max_shift; `seqjax.data.genomic.augment`, docs/training.md).
"""

from __future__ import annotations

import ml_collections

from seqjax.config import base_config, data_section, parse_arg, preset_options

NUM_CLASSES = {"genic_vs_intergenic": 2, "promoter": 2, "species": 4, "human_or_worm": 2}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(
        arg,
        "lstm",
        {"task": str, "length": int, "route": str, "nested": int, "augment": str, "max_shift": int},
        "configs/genomic.py",
    )
    size = options.get("size", "cpu")
    task = options.get("task", "genic_vs_intergenic")
    if task not in NUM_CLASSES:
        raise ValueError(f"configs/genomic.py: task must be one of {sorted(NUM_CLASSES)}, got {task!r}.")
    length = options.get("length", 2048 if size == "cpu" else 16384)
    if "nested" in options:  # refused here, not only once the data is read
        from seqjax.data.genomic.catalog import check_nested

        try:
            check_nested({"task": task, "length": length, "nested": options["nested"]})
        except ValueError as e:
            raise ValueError(f"configs/genomic.py: {e}") from None
    c = base_config(
        preset, size, task="classification", max_length=length, mixer=preset_options(preset, options)
    )
    c.data = data_section(
        "genomic",
        shuffle=True,
        task=task,
        length=length,
        route=options.get("route", "sample"),
        max_examples_per_split=ml_collections.FieldReference(None, field_type=int),
        nested=ml_collections.FieldReference(options.get("nested"), field_type=int),
    )
    if "augment" in options or "max_shift" in options:  # only when asked: other configs keep their keys
        c.data.augment = options.get("augment", "none")
        c.data.max_shift = options.get("max_shift", 0)
    c.model.encoder = "dna"
    c.head.num_classes = NUM_CLASSES[task]
    # Longformer classifies from its first global token (it attends to every position); the others pool.
    c.head.pooling = "first" if preset == "longformer" else "mean"
    c.checkpoint.best_metric = "balanced_accuracy"
    c.checkpoint.best_mode = "max"
    return c
