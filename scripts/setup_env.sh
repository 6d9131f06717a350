#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs seqjax with its test extras, once per change of setup.cfg.
# Sourced by scripts/main.sh and scripts/test.sh, so each of them works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SEQJAX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 11), f"seqjax needs Python >= 3.11, found {sys.version}"'
  "$python" -m venv "$venv"
fi
stamp="$venv/.seqjax-installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing seqjax[test] into $venv (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -m pip install --quiet -e "$root[test]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  # fail loudly if the install did not take: the core and the trainer import, and every extra's modules are there
  "$venv/bin/python" -c 'import seqjax, jax, flax, optax, orbax.checkpoint, pytest'
  "$venv/bin/python" -c '
from seqjax.common import extras
missing = extras.missing_modules(*extras.EXPERIMENT_MODULES, *extras.BASELINES_MODULES, "matplotlib", "tensorboard",
                                 "ipykernel", "nbclient", "nbformat", "torch", "pytest", "xdist")
assert not missing, f"seqjax[test] installed without {missing}"'
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
