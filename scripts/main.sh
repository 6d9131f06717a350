#!/usr/bin/env bash
# The main job: train small LSTM, S5 and attention models on the embedded real genomic task for a few
# minutes each, evaluate them, and print a comparison table. Flags pass through to scripts/compare.py
# (e.g. `bash scripts/main.sh --config=configs/timeseries.py --minutes=5`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
exec python scripts/compare.py "$@"
