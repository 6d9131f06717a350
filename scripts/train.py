"""Train a seqjax model from an ml_collections config.

    python scripts/train.py --config=configs/synthetic.py:lstm --workdir=/tmp/run [--config.x.y=...]

Restarting with the same --workdir resumes from its newest readable checkpoint. SIGTERM or SIGINT
(Ctrl-C) saves and exits 0; in a multi-process run, a signal to any one process stops them all at the
same step. An unknown `--config.*` key is a one-line error naming the closest valid keys; every key, its
value, default and meaning:

    python scripts/train.py --config=configs/genomic.py:lstm --print_config

Multi-process (one command per process; process 0's host:port is the coordinator):

    python scripts/train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0

A process that dies without a word (SIGKILL, a lost host) is noticed by the others within about
--heartbeat_timeout_seconds (default 100, JAX's), after which they abort instead of waiting forever.

One run at a time owns a workdir (a second one fails naming the first's pid); resuming with a changed
config fails listing the changed keys, unless they are named, e.g. to extend a run:

    python scripts/train.py --config=... --workdir=/tmp/run --config.total_steps=20000 \
        --allow_config_change=total_steps
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here; an existing one is resumed.")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file with an optional :arg.", lock_config=True
)
flags.mark_flag_as_required("config")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    100,
    "Multi-process: a process whose heartbeats stop this long is taken as dead and the others abort.",
    lower_bound=1,
)
flags.DEFINE_list(
    "allow_config_change",
    [],
    "Config keys (or sections, e.g. optimizer) that may differ from the config saved in --workdir when "
    "resuming; the model, head, data, task and batch_size never may.",
)
flags.DEFINE_string("result_json", None, "Write the run's summary (steps, tokens/s, peak memory, eval) here.")
flags.DEFINE_bool(
    "print_config",
    False,
    "Print every config key (with the --config.* overrides applied), its value, default and meaning, and "
    "exit without training.",
)
flags.register_multi_flags_validator(
    ["workdir", "print_config"],
    lambda values: values["workdir"] is not None or values["print_config"],
    message="--workdir is required (unless --print_config).",
)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if FLAGS.print_config:
        from seqjax.config.cli import print_config

        print_config(FLAGS.config)
        return
    from seqjax.common.cli import run_or_refuse

    try:
        # Refusals are raised before training starts, naming the key (or the other run) and the fix: one
        # line, as for a misspelled key, rather than the last line of a traceback.
        run_or_refuse("scripts/train.py", _main, argv, _refusals)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (imports, data preparation, set-up): inside it, the loop's own
        # handler saves the step and returns. Data sets and checkpoints publish atomically, so nothing
        # half-written is left; a short message replaces the traceback.
        print(
            f"interrupted outside the training loop; what {FLAGS.workdir} holds is what was saved before.",
            file=sys.stderr,
        )
        sys.exit(130)


def _refusals() -> tuple[type[Exception], ...]:
    """The trainer's refusals of a run as configured: a bad config value, a config that differs from the
    one saved in the workdir, a workdir another run holds. (Imported only when an error is raised, after
    `_main` set up JAX: `jax.distributed.initialize` must come before the trainer's imports.)"""
    from seqjax.train.run_config import ConfigError
    from seqjax.train.workdir import ConfigChangedError, WorkdirLockedError

    return ConfigError, ConfigChangedError, WorkdirLockedError


def _main(argv: list[str]) -> None:
    del argv
    import jax  # after flag parsing, so platform/collective settings from the environment apply

    if FLAGS.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            FLAGS.coordinator_address,
            FLAGS.num_processes,
            FLAGS.process_id,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        )
    from seqjax.train.trainer import train

    logging.getLogger("seqjax").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save step at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)  # backend probing (e.g. no libtpu) at INFO
    if FLAGS.config is None or FLAGS.config.data.kind != "synthetic":
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # one-off preparation bars would bury the training log
    # exit_after_stop: once a signal has stopped the run (saved), a late SIGTERM/SIGINT (e.g. to each
    # process in turn) must not kill the exit (JAX's distributed shutdown) into a nonzero status.
    result = train(
        FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change, exit_after_stop=True
    )
    if jax.process_index() == 0 and FLAGS.result_json:
        keys = ("step", "metrics", "eval", "preempted", "steps_per_s", "tokens_per_s", "peak_memory_bytes")
        keys += ("step_memory_bytes", "train_seconds", "train_cpu_seconds", "compile_seconds", "eval_seconds")
        with open(FLAGS.result_json, "w") as f:
            json.dump({k: result[k] for k in (*keys, "num_params")}, f, indent=1)
    if jax.process_index() == 0:
        loss = result["metrics"].get("loss")
        shown = "" if loss is None else f", loss {loss:.4f}"  # unknown (nothing logged): not "nan"
        if result["already_complete"]:
            print(f"already complete: step {result['step']}{shown}; nothing was trained.", flush=True)
        else:
            print(f"done: step {result['step']}{shown}", flush=True)


if __name__ == "__main__":
    from seqjax.config.cli import config_flags_parser

    app.run(main, flags_parser=config_flags_parser())
