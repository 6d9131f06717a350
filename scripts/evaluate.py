"""Evaluate a trained checkpoint on a whole split with the task's metrics.

    python scripts/evaluate.py --workdir=/tmp/run                       # best (else latest) step, test split
    python scripts/evaluate.py --workdir=/tmp/run --split=validation --step=latest
    python scripts/evaluate.py --workdir=/tmp/run --config=configs/genomic.py:lstm --config.eval_examples=512

Without --config it uses the config saved with the checkpoint. Metrics: accuracy, balanced accuracy,
MCC and AUROC (classification); MSE and MAE on the normalised scale (forecasting); bits per byte and
perplexity (language modeling). `--output` writes them as JSON too.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "The training run's workdir (holds checkpoints/).")
flags.mark_flag_as_required("workdir")
config_flags.DEFINE_config_file("config", None, "Optional: a configs/*.py file; default: the saved config.")
flags.DEFINE_string("split", "test", "validation or test (synthetic data: validation).")
flags.DEFINE_string("step", "best", "'best' (by checkpoint.best_metric), 'latest', or a step number.")
flags.DEFINE_integer("max_examples", None, "Cap on the split's examples; default: the whole split.")
flags.DEFINE_string("output", None, "Also write the result as JSON here.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend probing (e.g. no libtpu) at INFO
    if FLAGS.config is None or FLAGS.config.data.kind != "synthetic":
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # one-off preparation bars would bury the training log
    from seqjax.train.trainer import evaluate, load_config

    config = FLAGS.config if FLAGS.config is not None else load_config(FLAGS.workdir)
    with config.unlocked():
        config.eval_examples = FLAGS.max_examples  # the whole split, not the training run's eval cap
    result = evaluate(config, FLAGS.workdir, split=FLAGS.split, step=FLAGS.step)
    print(
        f"step {result['step']} {result['split']}: "
        + " ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    )
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
