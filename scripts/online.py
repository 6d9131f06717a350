"""Online learning on a stream, prequentially (predict, then learn, at every token), from an
ml_collections config (configs/online.py).

    python scripts/online.py --config=configs/online.py:narma10:lru_rtrl --workdir=/tmp/online
    python scripts/online.py --config=configs/online.py:power:lstm_tbptt16 --workdir=/tmp/p \
        --config.total_steps=20000 --config.optimizer.learning_rate=3e-3

Restarting with the same --workdir resumes from its newest readable checkpoint and continues exactly
(killed with SIGKILL or not); SIGTERM or SIGINT saves at the next chunk end and exits 0. Only
--config.total_steps may change on resume. Per-token scores go to <workdir>/prequential.f32, per-chunk
times and sums to <workdir>/chunks.jsonl.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Checkpoints and logs go here; an existing one is resumed.")
config_flags.DEFINE_config_file(
    "config", None, "configs/online.py with its :stream:method arg.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_string("result_json", None, "Write the run's summary (prequential score, time, memory) here.")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    from seqjax.common.cli import run_or_refuse
    from seqjax.online.loop import ConfigRefused
    from seqjax.train.workdir import WorkdirLockedError

    # raised before any training, naming the key (or the workdir) and the fix
    run_or_refuse("scripts/online.py", _main, argv, lambda: (ConfigRefused, WorkdirLockedError))


def _main(argv: list[str]) -> None:
    del argv
    from seqjax.online.loop import run

    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend probing (e.g. no libtpu) at INFO
    result = run(FLAGS.config, FLAGS.workdir)
    if FLAGS.result_json:
        keys = ("position", "prequential", "metric", "seconds_per_step", "step_memory_bytes", "resumed_from")
        with open(FLAGS.result_json, "w") as f:
            json.dump({k: result[k] for k in keys}, f, indent=1)


if __name__ == "__main__":
    from seqjax.config.cli import config_flags_parser

    app.run(main, flags_parser=config_flags_parser())
