#!/usr/bin/env bash
# Prepares .whl/ for an accelerator image that has jax, flax, optax and orbax but not the rest of the
# `experiments` stack: cp312 x86-64 wheels of ml_collections, grain, array_record and portpicker (which
# scripts/benchmark_models.py imports through seqjax.config), and empty stand-in packages for
# tensorflow_datasets and tensorboardX, which seqjax.experiment only checks are installed (found, never
# imported, by the benchmark scripts). scripts/device_benchmarks.sh installs them when .whl/ exists.
#
#   bash scripts/device_wheels.sh            # here, with pip and network (or a PyPI mirror)
#   bash scripts/device_benchmarks.sh OUT    # there, with .whl/ carried along
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rm -rf .whl.partial
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl.partial ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 portpicker==1.6.0
for module in tensorflow_datasets tensorboardX; do
  mkdir -p ".whl.partial/stubs/$module"
  echo 'raise ImportError("a stand-in from scripts/device_wheels.sh: only found, never imported")' \
    >".whl.partial/stubs/$module/__init__.py"
done
rm -rf .whl && mv .whl.partial .whl  # whole or not at all
ls .whl
