#!/usr/bin/env bash
# Resumes the background experiments whose finished runs are carried in this folder, after the machine
# that ran them has gone: unpacks each into a workdir under $RUNS (default /work/runs), restarts its
# command at low priority with its log beside it, and packs the finished runs back here every 15 minutes
# (commit them with `git add experiments/runs`). Finished runs are read back, unfinished ones start again.
# Priorities: the two whose end closes an issue (few_shot: issue 19; crossover_lm: issue 22) before lookback.
# An experiment may name the one that follows it on its core (`then`): when the document-LM crossover ends,
# the scoring of its runs by position (context_lm) and the DNA windows follow it, and the genomic
# crossover rerun follows few_shot, so no core idles between check-ins. Each driver reads its finished runs back, so rerunning a lane repeats no training.
#   bash experiments/runs/resume.sh                 # all of them
#   bash experiments/runs/resume.sh lookback        # one (and those that follow it)
#   bash experiments/runs/resume.sh --stop          # the end of a session: SIGTERM, then pack with the
#                                                   # unfinished runs' checkpoints (they resume there)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source scripts/setup_env.sh
runs="${RUNS:-/work/runs}"
mkdir -p "$runs"

declare -A command nice_level
command[lookback]="experiments/lookback.py --datasets=electricity,traffic"
nice_level[lookback]=19
command[few_shot]="experiments/few_shot.py --keys=species@1024,genic_vs_intergenic@1024"
nice_level[few_shot]=10
command[crossover_lm]="experiments/length_crossover.py --config=configs/documents.py \
--options=corpus=python_docs,route=offline \
--presets=lstm,elstm,gla,mamba,s5,mamba2,gated_deltanet,mlstm,rglru,attention,swa,xl_attention \
--lengths=1024,4096,8192 --tokens_per_batch=8192 --train_tokens=491520 --evaluation_examples=64 --claim_from=8192"
nice_level[crossover_lm]=10
command[crossover_genomic]="experiments/length_crossover.py --config=configs/genomic.py \
--options=task=species,route=offline \
--presets=lstm,elstm,gla,mamba,s5,mamba2,gated_deltanet,mlstm,rglru,encoder,longformer,linformer \
--lengths=1024,4096,8192 --tokens_per_batch=8192 --train_tokens=491520 --evaluation_examples=128 --claim_from=8192"
nice_level[crossover_genomic]=10
# species first (2026-12-05 18:40 UTC, genic vs intergenic half done): every model is near chance on genic
# vs intergenic at 1k and 4k (validation balanced accuracy 0.43-0.55; the k-mer regression fit on all
# 2,802 training windows reaches 0.55-0.63), species is where the models learn, so its table says most
# lengths up to 8k first, for all three tasks (rule (a) starts at 8k): a 16 kb exact-attention run costs
# ~12x its 4 kb run (train step 3.81 s against 0.319 s, memory_scaling_measured), 2-3 h of one core with its
# evaluation, so 16k alone is most of what is left; it follows, in the same workdir (species and genic since
# 2026-12-06 15:00 UTC in their own lanes, below), and
# rewrites the tables with 16k added
# promoter runs in a lane of its own (dna_promoter) on the core the genomic crossover leaves free when it
# ends (2026-12-06): each task's runs and table are its own, in the same workdir, so two lanes never
# share a run
# since 2026-12-06 15:00 UTC (species 1k-8k done, its table committed; genic vs intergenic 8k at 13 runs,
# every model near chance at 1k and 4k): species goes on to 16k next, where rule (b) of the issue is
# stated (16k minus 1k) and where the models learn; genic vs intergenic follows, 8k (its table at 1k-8k),
# then 16k. The species runs at 1k-8k are finished, so this lane starts at species 16k; the genic runs
# under way resume from their checkpoints when their lane comes.
command[dna_windows]="experiments/dna_windows.py --tasks=species --lengths=1024,4096,8192,16384"
nice_level[dna_windows]=10
command[dna_genic]="experiments/dna_windows.py --tasks=genic_vs_intergenic --lengths=1024,4096,8192 \
--nested=16384"
nice_level[dna_genic]=10
command[dna_genic_16k]="experiments/dna_windows.py --tasks=genic_vs_intergenic --lengths=1024,4096,8192,16384"
nice_level[dna_genic_16k]=10
command[dna_promoter]="experiments/dna_windows.py --tasks=promoter --lengths=1024,4096,8192 --nested=16384"
nice_level[dna_promoter]=10
command[dna_promoter_16k]="experiments/dna_windows.py --tasks=promoter --lengths=1024,4096,8192,16384"
nice_level[dna_promoter_16k]=10
# issue 18 §1 on the document-LM crossover's runs: scored by position (it re-reads their parameters, so it
# is not carried; runs whose checkpoints are gone are trained again and checked against their records)
context_variants=""
for n in 1024 4096 8192; do
  for p in lstm elstm mamba gla s5 attention swa; do context_variants+="$p@$n,"; done
done
context_variants+="lstm@512:segment_recurrence=True,gla@512:segment_recurrence=True"
context_variants+=",xl_attention@512:segment_recurrence=True"
command[context_lm]="experiments/context_use.py --options=corpus=python_docs,route=offline \
--reuse_runs=$runs/crossover_lm --tokens_per_batch=8192 --train_tokens=491520 --evaluation_examples=64 \
--max_document_tokens=32768 --out=$runs/context_lm_out --variants=$context_variants"
nice_level[context_lm]=10
declare -A not_carried workdir_of
not_carried[context_lm]=1
for name in dna_genic dna_genic_16k dna_promoter dna_promoter_16k; do
  workdir_of[$name]=dna_windows  # packed with dna_windows
  not_carried[$name]=1
done

# what follows each experiment on its core once it has finished (exit status 0)
declare -A then
# dna_windows (issue 18 §2: a table not yet begun) before the genomic crossover's rerun (a table that
# exists, short of models); the rerun takes few_shot's core when few_shot ends.
then[crossover_lm]=context_lm
then[context_lm]=dna_windows
then[few_shot]=crossover_genomic
then[dna_windows]=dna_genic
then[dna_genic]=dna_genic_16k
then[crossover_genomic]=dna_promoter
then[dna_promoter]=dna_promoter_16k

# On a 2-core machine the two experiments that close issues get a core each (taskset): two unpinned
# processes on 2 cores trained 9-12% fewer tokens/s in all (measured 2026-12-05, AMD EPYC: two Mamba-2
# runs side by side, 10.2-10.8k tok/s each unpinned against 11.2-11.9k pinned). lookback, the filler at
# nice 19, may run on either.
declare -A cpu
if [ "$(nproc)" -eq 2 ]; then
  cpu[few_shot]=0
  cpu[crossover_genomic]=0  # the lane that followed few_shot on its core
  cpu[dna_promoter]=0  # the lane that follows crossover_genomic on its core
  cpu[dna_promoter_16k]=0
  cpu[crossover_lm]=1
  cpu[dna_windows]=1  # the lane that follows crossover_lm on its core
  cpu[dna_genic]=1
  cpu[dna_genic_16k]=1
fi

# one experiment in the foreground: unpack its carried runs if its workdir is new, then run it
run_one() {
  local name=$1 pin=() dir=${workdir_of[$1]:-$1}
  if [ ! -d "$runs/$dir" ] && [ -d "experiments/runs/${dir}_cpu" ]; then
    python scripts/carry_runs.py unpack --from="experiments/runs/${dir}_cpu" --workdir="$runs/$dir"
  fi
  [ -n "${2:-}" ] && pin=(taskset -c "$2")
  # shellcheck disable=SC2086
  "${pin[@]}" nice -n "${nice_level[$name]}" python ${command[$name]} --workdir="$runs/$dir" \
    >>"$runs/$name.log" 2>&1  # a log per lane: two lanes may share a workdir
}

if [ "${1:-}" = "--lane" ]; then  # internal: an experiment and those that follow it, one after another
  name=$2 core=${3:-}
  while [ -n "$name" ]; do
    run_one "$name" "$core" || { echo "$name: exit status $? (log $runs/$name.log)" >&2; exit 1; }
    name=${then[$name]:-}
  done
  exit 0
fi

carried=()
for name in "${!command[@]}"; do [ -z "${not_carried[$name]:-}" ] && carried+=("$name"); done

if [ "${1:-}" = "--stop" ]; then  # the end of a session: stop everything, then pack unfinished runs too
  pkill -f "resume.sh packer" || true
  pkill -f "resume.sh --lane" || true  # the lanes first, so that none starts the experiment that follows
  # SIGTERM: a run in training saves its step, one in its final evaluation keeps the outputs so far
  pkill -TERM -f "python experiments/" || true
  for _ in $(seq 600); do pgrep -f "python experiments/" >/dev/null || break; sleep 1; done
  if pgrep -af "python experiments/"; then echo "still running after 10 minutes; not packed" >&2; exit 1; fi
  for name in "${carried[@]}"; do
    [ -d "$runs/$name" ] && python scripts/carry_runs.py pack --unfinished --workdir="$runs/$name" \
      --to="experiments/runs/${name}_cpu"
  done
  echo "packed; commit with: git add experiments/runs && git commit"
  exit 0
fi

names=("$@")
# crossover_lm, context_lm and few_shot have finished; the genomic crossover rerun had followed few_shot
[ ${#names[@]} -eq 0 ] && names=(lookback crossover_genomic dna_windows)
for name in "${names[@]}"; do
  [ -n "${command[$name]:-}" ] || { echo "unknown experiment '$name': one of ${!command[*]}" >&2; exit 2; }
  nohup bash "$root/experiments/runs/resume.sh" --lane "$name" "${cpu[$name]:-}" >>"$runs/lanes.log" 2>&1 &
  echo "$name: pid $! (log $runs/$name.log)"
done

# the packer: every 15 minutes, the finished runs of every experiment's workdir back into this folder
if ! pgrep -f "resume.sh packer" >/dev/null; then
  nohup bash -c "exec -a 'resume.sh packer' bash -c '
    while sleep 900; do
      for name in ${carried[*]}; do
        [ -d \"$runs/\$name\" ] && python scripts/carry_runs.py pack --workdir=\"$runs/\$name\" \
          --to=experiments/runs/\${name}_cpu >>\"$runs/packer.log\" 2>&1
      done
    done'" >/dev/null 2>&1 &
  echo "packer: pid $!"
fi
