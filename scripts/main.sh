#!/usr/bin/env bash
# The main job. Until the trainer lands, it is the cell benchmark; flags pass through to
# scripts/benchmark.py (e.g. `bash scripts/main.sh --lengths=1024,4096`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup_env.sh"
cd "$root"
exec python scripts/benchmark.py "$@"
