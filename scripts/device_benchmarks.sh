#!/usr/bin/env bash
# The accelerator run: the scan tuner and every benchmark script, each within its own time limit, so one
# slow or failing step leaves the others' tables. Writes the tables where the scripts always do
# (seqjax/scan/tables/*_<platform>.json, benchmarks/*_<platform>.md), then packs them with the log into
# $1/device_results.tar.gz.
#
#   bash scripts/device_benchmarks.sh /tmp/out                 # every step (about 20 min on one H200)
#   bash scripts/device_benchmarks.sh /tmp/out rnn,models      # chosen steps only
#   SEQJAX_DEVICE_QUICK=1 bash scripts/device_benchmarks.sh /tmp/out   # tiny sizes: checks the script
# Steps: tune, rnn, scan, ssm, linear_attention, attention, models, recent (issue 22's cells against
# their own step loops), recent_models (whole models of those cells), recent_4k_rest, recent_models_rest.
# On 2026-11-30 an H200 needed more than the limits below for every step but the linear_recurrence
# tuning (see benchmarks/*_gpu.md): with a 15-minute device budget, run two or three steps per session. On 2026-12-04 `recent` finished 1k for
# every cell and 4k for five of eight in about 470 s, and `recent_models` GLA and RWKV-7 in 205 s
# (benchmarks/recent_cells*_gpu.md, models_recent_gpu.md): next time start with the missing rows.
# The device image has jax, flax, optax and orbax but not ml_collections, grain or array_record, which
# benchmark_models.py imports (through seqjax.config), nor tensorflow_datasets and tensorboardX, which
# seqjax.experiment only looks for: run `bash scripts/device_wheels.sh` here first and carry `.whl`;
# this script installs it when present. Steps recent_4k_rest and recent_models_rest measure the rows
# that 2026-12-04 left out.
set -uo pipefail
out="${1:?usage: device_benchmarks.sh OUTDIR [STEPS]}"
steps=",${2:-tune,rnn,scan,ssm,linear_attention,attention,models,recent,recent_models,recent_4k_rest,recent_models_rest},"
mkdir -p "$out"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
log="$out/device.log"
: >"$log"
quick="${SEQJAX_DEVICE_QUICK:-}"

step() {  # step NAME LIMIT_SECONDS SCRIPT [FLAGS...]: one script, killed at its limit
  local name=$1 limit=$2
  shift 2
  [[ "$steps" == *",$name,"* ]] || return 0
  echo "=== $(date -u +%T) python $* (limit ${limit}s)" | tee -a "$log"
  timeout -k 10 "$limit" "$py" "$@" >>"$log" 2>&1
  echo "=== exit $? after $((SECONDS - start))s total" | tee -a "$log"
}
start=$SECONDS
if compgen -G ".whl/*.whl" >/dev/null; then  # from scripts/device_wheels.sh
  site="${TMPDIR:-/tmp}/seqjax_device_site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    >>"$log" 2>&1 || echo "installing .whl/ failed (see $log)" | tee -a "$log"
  export PYTHONPATH="$PYTHONPATH:$site:$root/.whl/stubs"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$log" 2>&1 || true
"$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, jax.devices())' \
  >>"$log" 2>&1
if [ -n "$quick" ]; then
  L=64,128
  # (a smoke check: its tables go to $out, not over the shipped and committed ones)
  step tune 120 scripts/tune_scan.py --lengths=64 --state_elems=2048 --repeats=1 --min_seconds=0 \
    "--out=$out/{kind}_{platform}.json" "--markdown=$out/{kind}_tuning_{platform}.md"
  step rnn 120 scripts/benchmark.py --cells=lstm --lengths=$L --repeats=1 --nopeers "--out=$out/rnn_quick_{platform}.md"
  step models 120 scripts/benchmark_models.py --models=lstm,mamba --lengths=$L --gen_contexts=64 --repeats=1 \
    --tokens_per_batch=256 "--out=$out/models_quick_{platform}.md"
  step recent 120 scripts/benchmark.py --cells=deltanet,rwkv7 --lengths=$L --repeats=1 --segment_length=0 \
    --heads=2 --head_dim=16 "--out=$out/recent_cells_quick_{platform}.md"
else
  L=1024,4096,16384
  # --merge: a run cut off by its time limit adds what it measured to the shipped table instead of
  # replacing it (points measured again replace theirs)
  step tune 240 scripts/tune_scan.py --repeats=5 --min_seconds=0.2 --lengths=64,256,1024,4096,16384 --merge
  step rnn 150 scripts/benchmark.py --cells=lstm,gru,elstm --lengths=$L --repeats=3
  step scan 90 scripts/benchmark.py --cells=scan,selective --lengths=$L --repeats=3 --nostep_mode \
    '--out=benchmarks/scan_{platform}.md'
  step ssm 240 scripts/benchmark.py --cells=ssm --lengths=$L,65536 --repeats=3 '--out=benchmarks/ssm_{platform}.md'
  step linear_attention 150 scripts/benchmark.py --cells=linear_attention --lengths=$L --repeats=3 \
    '--out=benchmarks/linear_attention_{platform}.md'
  step attention 90 scripts/benchmark.py --cells=attention --lengths=$L --repeats=3 \
    '--out=benchmarks/attention_{platform}.md'
  step models 300 scripts/benchmark_models.py --lengths=$L --gen_contexts=1024,16384
  recent=deltanet,gated_deltanet,mamba2,rglru,mlstm,slstm,gla_channel,rwkv7
  step recent 300 scripts/benchmark.py --cells=$recent --lengths=1024,4096 --repeats=3 --max_gib=100 \
    '--out=benchmarks/recent_cells_{platform}.md'
  step recent_models 300 scripts/benchmark_models.py --lengths=1024,4096,16384 --gen_contexts=1024,16384 \
    --models=deltanet,gated_deltanet,mamba2,rwkv7,gla,mlstm,slstm,rglru,attention \
    '--out=benchmarks/models_recent_{platform}.md'
  step recent_4k_rest 240 scripts/benchmark.py --cells=deltanet,mlstm,slstm,rglru --lengths=4096 --repeats=3 \
    --max_gib=100 --nostep_mode '--out=benchmarks/recent_cells_4k_rest_{platform}.md'
  step recent_models_rest 300 scripts/benchmark_models.py --lengths=1024,4096,16384 --gen_contexts=1024,16384 \
    --models=gated_deltanet,mamba2,mlstm,deltanet,slstm,rglru,attention '--out=benchmarks/models_recent_rest_{platform}.md'
fi
platform="$("$py" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
# (benchmark_models.py's JSON records too, so a later device run can --merge into them)
tar -czf "$out/device_results.tar.gz" "$log" $(ls seqjax/scan/tables/*_"$platform".json \
  benchmarks/*_"$platform".md benchmarks/*_"$platform".json 2>/dev/null) 2>/dev/null
echo "packed: $(tar -tzf "$out/device_results.tar.gz" | tr '\n' ' ')"
