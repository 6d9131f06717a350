"""Carry an experiment's finished runs to the next machine or session (`seqjax.experiment.carry_over`).

A long experiment runs in the background with its runs in a workdir; before the machine goes, pack the
finished runs (small files only, no checkpoints) into the repository and commit them; on the next
machine, unpack them into a workdir and rerun the experiment's command there: finished runs are read
back, unfinished ones start again, and the tables come out once every run is in.

    python scripts/carry_runs.py pack --workdir=/work/runs/stability --to=experiments/runs/stability_cpu
    git add experiments/runs/stability_cpu && git commit -m "stability: runs so far"
    # next session
    python scripts/carry_runs.py unpack --from=experiments/runs/stability_cpu --workdir=/work/runs/stability
    python experiments/stability.py --workdir=/work/runs/stability

At the end of a session, stop the experiment with SIGTERM first (its run saves its step, or its
evaluation so far) and pack with --unfinished: that run then resumes where it stopped.
"""

from __future__ import annotations

import json

from absl import app, flags

from seqjax.common.cli import run_or_refuse
from seqjax.experiment import carry_over

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The experiment's --workdir (pack: read; unpack: written).")
flags.DEFINE_string("to", None, "pack: the folder to write, e.g. experiments/runs/<experiment>_<size>.")
flags.DEFINE_string("from", None, "unpack: a folder written by pack.")
flags.DEFINE_bool(
    "unfinished",
    False,
    "pack: also carry each unfinished run's last checkpoint and its evaluation kept so far, so it resumes "
    "there (a few MB a run at CPU size; for the last pack of a session, after stopping the experiment with "
    "SIGTERM).",
)
flags.DEFINE_float("max_file_mib", carry_over.MAX_FILE_BYTES / 2**20, "pack: refuse files larger than this.")


def main(argv: list[str]) -> None:
    # carry_over's refusals (no workdir, files over the limit, a manifest that does not match) name the
    # folder and the fix, and nothing is half-written
    run_or_refuse("scripts/carry_runs.py", _main, argv, lambda: (FileNotFoundError, ValueError))


def _main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("pack", "unpack"):
        raise app.UsageError("usage: carry_runs.py pack --workdir=W --to=D | unpack --from=D --workdir=W")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required: the experiment's workdir.")
    if argv[1] == "pack":
        if not FLAGS.to:
            raise app.UsageError(
                "pack needs --to: the folder to write (e.g. experiments/runs/stability_cpu)."
            )
        manifest = carry_over.pack(
            FLAGS.workdir,
            FLAGS.to,
            max_file_bytes=int(FLAGS.max_file_mib * 2**20),
            unfinished=FLAGS.unfinished,
        )
        shown = ("source", "packed", "finished_runs", "unfinished_runs_left_out", "unfinished_runs_carried")
        summary = {k: manifest[k] for k in shown}
        print(json.dumps({**summary, "files": len(manifest["files"]), "to": FLAGS.to}, indent=1))
    else:
        source = getattr(FLAGS, "from")
        if not source:
            raise app.UsageError("unpack needs --from: a folder written by pack.")
        print(json.dumps({**carry_over.unpack(source, FLAGS.workdir), "workdir": FLAGS.workdir}))


if __name__ == "__main__":
    app.run(main)
