#!/usr/bin/env bash
# The main job: compare small LSTM, S5 and attention models on the embedded real genomic task on the
# experiment protocol (equal training tokens, matched parameters, a tuned learning rate, 5 seeds, intervals,
# baselines, a verdict) and print the table. Flags pass through to scripts/compare.py
# (e.g. `bash scripts/main.sh --config=configs/timeseries.py --train_tokens=2000000`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
exec python scripts/compare.py "$@"
