"""Print every non-neural baseline of one task on one split as a markdown table (seqjax.baselines).

    python experiments/baselines.py --config=configs/genomic.py:lstm,task=species,length=1024
    python experiments/baselines.py --config=configs/documents.py:lstm,corpus=python_docs --split=test
    python experiments/baselines.py --config=configs/timeseries.py:lstm,dataset=electricity,lookback=336 \
        --out=experiments/results/baselines_timeseries_sample.md

The preset in the config arg is ignored (baselines have no model); the data section decides the task.
Baselines are fit on the train split and scored on --split with the models' metrics. With --out the
table is also written there, headed by the command that made it.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "A configs/*.py task file with an optional :arg.")
flags.mark_flag_as_required("config")
flags.DEFINE_string("split", "test", "The split the baselines are scored on.")
flags.DEFINE_string(
    "data_dir", None, "Prepared data sets (default: $SEQJAX_DATA_DIR or ~/.cache/seqjax/datasets)."
)
flags.DEFINE_string("out", None, "Also write the table (with the command) to this markdown file.")
FLAGS = flags.FLAGS

#: Per data kind: the metric columns of the table, headline first.
COLUMNS = {
    "genomic": ("balanced_accuracy", "accuracy", "mcc", "auroc", "examples"),
    "documents": ("bits_per_byte", "bytes", "documents"),
    "timeseries": ("mse", "mae", "examples"),
}


def _cell(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 10):
        return f"{int(value):,}"
    return f"{value:.4f}"


def table(kind: str, results: list) -> str:
    """The markdown table of `results` (`BaselineResult`s) with the columns of data kind `kind`."""
    columns = COLUMNS[kind]
    lines = [
        "| baseline | " + " | ".join(columns) + " | settings |",
        "|---|" + "---:|" * len(columns) + "---|",
    ]
    for result in results:
        cells = [_cell(result.metrics.get(c, math.nan)) for c in columns]
        settings = ", ".join(f"{k}={v}" for k, v in result.settings.items())
        lines.append(f"| {result.name} | " + " | ".join(cells) + f" | {settings} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    import importlib

    from seqjax.train.run_config import resolve_data
    from seqjax.train.trainer import default_data_dir

    data = resolve_data(FLAGS.config.data).source_options()
    kind = data["kind"]
    if kind not in COLUMNS:
        raise app.UsageError(f"--config: baselines exist for {sorted(COLUMNS)} data, not {kind!r}.")
    module = importlib.import_module(f"seqjax.baselines.{kind}")
    start = time.perf_counter()
    results = module.evaluate_baselines(data, FLAGS.data_dir or default_data_dir(), FLAGS.split)
    seconds = time.perf_counter() - start
    options = ", ".join(f"{k}={v}" for k, v in data.items() if k != "kind")
    text = table(kind, results)
    print(text)
    if FLAGS.out:
        command = "python experiments/baselines.py " + " ".join(sys.argv[1:])
        header = [
            f"# Baselines: {kind}, {FLAGS.split} split",
            "",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {seconds:.1f} s on CPU",
            f"- command: `{command}`",
            f"- data: {options}",
            "- fit on the train split only; metrics by seqjax.data.metrics as for the models",
            "",
        ]
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write("\n".join(header) + "\n" + text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from seqjax.config.cli import config_flags_parser

    app.run(main, flags_parser=config_flags_parser())
