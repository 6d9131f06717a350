"""Evaluate a trained checkpoint on a whole split with the task's metrics.

    python scripts/evaluate.py --workdir=/tmp/run                       # best (else latest) step, test split
    python scripts/evaluate.py --workdir=/tmp/run --split=validation --step=latest
    python scripts/evaluate.py --workdir=/tmp/run --config=configs/genomic.py:lstm --config.eval_examples=512
    python scripts/evaluate.py --workdir=/tmp/docs --carried_state    # LM: lanes with the state carried
    python scripts/evaluate.py --workdir=/tmp/docs --by_document --carried_state  # each document whole
    python scripts/evaluate.py --workdir=/tmp/docs --by_document --carried_state \
        --position_buckets=0,1024,2048,4096,8192,16384                  # bits per byte by position
    python scripts/evaluate.py --workdir=/tmp/ts_stream --carried_state  # forecaster: series lanes

Without --config it uses the config saved with the checkpoint. Metrics: accuracy, balanced accuracy,
MCC and AUROC (classification); MSE and MAE on the normalised scale (forecasting); bits per byte and
perplexity (language modeling). `--output` writes them as JSON too.

`--carried_state` (a language model on documents): the split is read as `eval_batch_size` contiguous
lanes, in segments of the config's length, with every layer's state carried from one segment to the next
(segment recurrence), instead of every sequence from the initial state; same metrics over the same
targets, the whole split (no --max_examples). A forecaster trained with segment recurrence (time series)
reads the split's rows so, forecasting at every position: MSE/MAE over the positions that count, and
`origin_mse`/`origin_mae` at exactly the windows' forecast origins (comparable with the windowed
number). See docs/training.md, "Segment recurrence".

`--by_document` (the same models): every document is its own lane, read from its first token in segments
of the config's length, with the state carried through the document (with `--carried_state`: the
long-context evaluation Transformer-XL reports) or reset at every segment (without). Both score the same
targets, so the two numbers differ only by the context the carried state gives. Without
--carried_state every segment runs from the initial state, as a model trained on sequences of the
config's length reads them, so any causal LM (softmax attention too) can be evaluated by document.

`--position_buckets=0,1024,...` (with --by_document): bucket edges in bytes from a document's start
(the last bucket open-ended); prints per bucket the documents that reach it, targets, bytes, bits per
byte and perplexity per token with 95% bootstrap intervals over documents
(`seqjax.experiment.positions.position_curve`), and bpb(last bucket reached by 2+ documents) -
bpb(first) with its paired interval. `--output` then also holds the curve.
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
flags.DEFINE_integer(
    "max_examples", None, "Evaluate that many examples spread evenly over the split (default: all of it)."
)
flags.DEFINE_string("output", None, "Also write the result as JSON here.")
flags.DEFINE_bool(
    "carried_state",
    False,
    "LM on a token stream, or a stream-trained forecaster on a time series: read the split as contiguous "
    "lanes with every layer's state carried across segments, instead of each sequence from the initial "
    "state.",
)
flags.DEFINE_bool(
    "by_document",
    False,
    "LM on a token stream: every document as its own lane, the state carried through it "
    "(--carried_state) or reset at each segment.",
)
flags.DEFINE_list(
    "position_buckets",
    None,
    "With --by_document: byte offsets from a document's start, e.g. 0,1024,2048,4096,8192,16384; prints "
    "bits per byte and perplexity per token by position (bucket).",
)
FLAGS = flags.FLAGS


def position_table(curve: dict) -> str:
    """The per-bucket lines of a `position_curve`: bucket, documents, targets, bytes, bpb [CI], ppl [CI]."""

    def cell(v: dict) -> str:
        return f"{v['estimate']:.4f} [{v['low']:.4f}, {v['high']:.4f}]"

    lines = [f"{'bucket (bytes)':>14} {'documents':>9} {'targets':>10} {'bytes':>11}  bits/byte [95% CI]"]
    lines[0] += "            perplexity/token [95% CI]"
    for b in curve["buckets"]:
        lines.append(
            f"{b['label']:>14} {b['documents']:>9} {b['tokens']:>10.0f} {b['bytes']:>11.0f}  "
            f"{cell(b['bits_per_byte']):<32} {cell(b['perplexity'])}"
        )
    c = curve["contrast"]
    if c is not None:
        lines.append(
            f"bpb({c['late']}) - bpb({c['early']}) over the {c['documents']} documents reaching both: "
            f"{c['estimate']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from seqjax.common.cli import run_or_refuse
    from seqjax.train.run_config import ConfigError

    # a config it refuses, or a workdir without checkpoints (or without the config saved with them)
    run_or_refuse("scripts/evaluate.py", _main, argv, lambda: (ConfigError, FileNotFoundError))


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend probing (e.g. no libtpu) at INFO
    if FLAGS.config is None or FLAGS.config.data.kind != "synthetic":
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # one-off preparation bars would bury the training log
    from seqjax.train.trainer import evaluate, load_config

    if FLAGS.max_examples is not None and FLAGS.max_examples < 1:
        raise app.UsageError(f"--max_examples={FLAGS.max_examples}: give a positive count, or leave it out.")
    if (FLAGS.carried_state or FLAGS.by_document) and FLAGS.max_examples is not None:
        raise app.UsageError(
            "--carried_state and --by_document read the whole split as lanes; leave out --max_examples."
        )
    buckets = None
    if FLAGS.position_buckets:
        if not FLAGS.by_document:
            raise app.UsageError("--position_buckets needs --by_document (positions in a document).")
        try:
            buckets = [int(v) for v in FLAGS.position_buckets]
        except ValueError as e:
            raise app.UsageError(f"--position_buckets must be integers (bytes): {e}") from None
    config = FLAGS.config if FLAGS.config is not None else load_config(FLAGS.workdir)
    with config.unlocked():
        config.eval_examples = FLAGS.max_examples  # the whole split, not the training run's eval cap
    result = evaluate(
        config,
        FLAGS.workdir,
        split=FLAGS.split,
        step=FLAGS.step,
        carried_state=FLAGS.carried_state,
        by_document=FLAGS.by_document,
        position_buckets=buckets,
    )
    mode = " (carried state)" if FLAGS.carried_state else ""
    if FLAGS.by_document:
        mode = " (by document, state carried)" if FLAGS.carried_state else " (by document, reset per segment)"
    print(
        f"step {result['step']} {result['split']}{mode}: "
        + " ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    )
    curve = None
    if buckets is not None:
        from seqjax.experiment.positions import position_curve

        documents = result["per_document"]
        reached = [k for k in range(len(buckets)) if (documents["bucket_bytes"][:, k] > 0).sum() >= 2]
        contrast = (buckets[reached[-1]], buckets[0]) if len(reached) >= 2 else None
        curve = position_curve([documents], buckets, contrast=contrast)
        print(position_table(curve))
    if FLAGS.output:
        written = {k: v for k, v in result.items() if k not in ("per_lane", "per_document")}  # arrays
        if curve is not None:
            written["positions"] = curve
        written["carried_state"] = FLAGS.carried_state
        written["by_document"] = FLAGS.by_document
        with open(FLAGS.output, "w") as f:
            json.dump(written, f, indent=1)


if __name__ == "__main__":
    from seqjax.config.cli import config_flags_parser

    app.run(main, flags_parser=config_flags_parser())
