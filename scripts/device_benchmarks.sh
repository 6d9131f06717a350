#!/usr/bin/env bash
# The accelerator run: the scan tuner and every benchmark script, each within its own time limit, so one
# slow or failing step leaves the others' tables. Writes the tables where the scripts always do
# (seqjax/scan/tables/*_<platform>.json, benchmarks/*_<platform>.md), then packs them with the log into
# $1/device_results.tar.gz.
#
#   bash scripts/device_benchmarks.sh /tmp/out            # on a GPU/TPU machine with jax, flax, optax
#   SEQJAX_DEVICE_QUICK=1 bash scripts/device_benchmarks.sh /tmp/out   # tiny sizes: checks the script
set -uo pipefail
out="${1:?usage: device_benchmarks.sh OUTDIR}"
mkdir -p "$out"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
log="$out/device.log"
: >"$log"
quick="${SEQJAX_DEVICE_QUICK:-}"

step() {  # step LIMIT_SECONDS SCRIPT [FLAGS...]: one script, killed at its limit
  local limit=$1
  shift
  echo "=== $(date -u +%T) python $* (limit ${limit}s)" | tee -a "$log"
  timeout -k 10 "$limit" "$py" "$@" >>"$log" 2>&1
  echo "=== exit $? after $((SECONDS - start))s total" | tee -a "$log"
}
start=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$log" 2>&1 || true
"$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' \
  >>"$log" 2>&1
if [ -n "$quick" ]; then
  L=64,128
  step 120 scripts/tune_scan.py --lengths=64 --state_elems=2048 --repeats=1 --min_seconds=0
  step 120 scripts/benchmark.py --cells=lstm --lengths=$L --repeats=1 --nopeers
  step 120 scripts/benchmark_models.py --models=lstm,mamba --lengths=$L --gen_contexts=64 --repeats=1 \
    --tokens_per_batch=256
else
  L=1024,4096,16384
  step 150 scripts/tune_scan.py --repeats=5 --min_seconds=0.2
  step 70 scripts/benchmark.py --cells=lstm,gru,elstm --lengths=$L --repeats=3
  step 40 scripts/benchmark.py --cells=scan,selective --lengths=$L --repeats=3 --nostep_mode \
    '--out=benchmarks/scan_{platform}.md'
  step 50 scripts/benchmark.py --cells=ssm --lengths=$L,65536 --repeats=3 '--out=benchmarks/ssm_{platform}.md'
  step 45 scripts/benchmark.py --cells=linear_attention --lengths=$L --repeats=3 \
    '--out=benchmarks/linear_attention_{platform}.md'
  step 35 scripts/benchmark.py --cells=attention --lengths=$L --repeats=3 \
    '--out=benchmarks/attention_{platform}.md'
  step 70 scripts/benchmark_models.py --lengths=$L --gen_contexts=1024,16384
fi
platform="$("$py" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
tar -czf "$out/device_results.tar.gz" "$log" $(ls seqjax/scan/tables/*_"$platform".json \
  benchmarks/*_"$platform".md 2>/dev/null) 2>/dev/null
echo "packed: $(tar -tzf "$out/device_results.tar.gz" | tr '\n' ' ')"
