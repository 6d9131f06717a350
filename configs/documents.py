"""Document-level language modeling on long real texts (Gutenberg Shakespeare/Milton, Wikipedia articles,
the Python and Perl documentation), byte-level by default (bits per byte).

    python scripts/train.py --config=configs/documents.py:gla --workdir=/tmp/docs
    python scripts/train.py --config=configs/documents.py:attention,corpus=python_docs,size=accelerator

Arg: `preset[,corpus=..,length=..,packing=packed|padded,tokenizer=bytes|bpe,route=..,size=..]`.
"""

from __future__ import annotations

import ml_collections

from seqjax.config import base_config, data_section, parse_arg

OPTIONS = {"corpus": str, "length": int, "packing": str, "tokenizer": str, "route": str}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset, options = parse_arg(arg, "lstm", OPTIONS, "configs/documents.py")
    size = options.get("size", "cpu")
    length = options.get("length", 2048 if size == "cpu" else 8192)
    tokenizer = options.get("tokenizer", "bytes")
    c = base_config(preset, size, task="lm", max_length=length)
    c.data = data_section(
        "documents",
        shuffle=True,
        corpus=options.get("corpus", "gutenberg"),
        length=length,
        packing=options.get("packing", "packed"),
        tokenizer=tokenizer,
        bpe_vocab_size=4096,
        route=options.get("route", "sample"),
        split_fractions=(0.8, 0.1, 0.1),
        max_examples_per_split=ml_collections.FieldReference(None, field_type=int),
    )
    c.model.vocab_size = 256 if tokenizer == "bytes" else 4096
    c.checkpoint.best_metric = "bits_per_byte"
    c.checkpoint.best_mode = "min"
    return c
