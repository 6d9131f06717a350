#!/usr/bin/env bash
# The test command: lint, format check, then the test suite on 2 worker processes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
ruff check .
ruff format --check .
# --durations: the slowest tests, printed at the end of every run (CI too), to keep the suite within budget.
# --reruns=1 --rerun-except=.: a test whose worker process died (a crash in native code) runs once more,
# an ordinary failure never does; tests/worker_crashes.py prints why the worker died in the summary.
# --dist=worksteal: a worker that runs out of tests takes half of the other's queue, so the run does not
# end with one worker busy on a file's last slow tests while the other idles.
exec python -m pytest -n "${SEQJAX_TEST_WORKERS:-2}" --dist=worksteal --durations=30 --reruns=1 --rerun-except=. "$@"
