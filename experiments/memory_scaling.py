"""Experiment: do recurrent models keep memory linear in the sequence length, and do transformers not?

For each model variant of the document language-modeling task (`configs/documents.py`: byte-level, the
task's real model and optimizer), at batch 1 and each length L, the plan mode (`--measure=plan`, the
default) records three numbers per device:

- train: XLA's memory plan of the whole jitted train step (forward, backward, AdamW update; the state is
  donated), i.e. arguments + outputs + temporaries of the compiled executable;
- forward: the same for a jitted forward pass (evaluation, no gradient);
- state: the bytes a generating model carries after a context of L tokens (its recurrent state, or its
  KV cache sized for L tokens).

From the train numbers it fits the exponent p of the length-dependent part, M(L) = c + b·L^p, from each
doubling of L: p = log2((M(4L) − M(2L)) / (M(2L) − M(L))). Linear memory gives p = 1 and quadratic gives
p = 2. Nothing is trained and nothing is timed: the plans come from compiling, so the experiment runs on
a CPU in minutes and asks XLA for the memory the program needs. That plan is what decides whether a run
fits on an accelerator.

The measured mode (`--measure=run`, or `--measure=plan,run` for both) runs the train step. Each
(variant, length) point is a fresh Python process (this script with `--worker`), which builds the model
and train step as the plan mode does, compiles it (timed: `compile_s`), initialises the state, and runs
`--warmup_steps` then `--timed_steps` steps on real bytes (consecutive windows of the task corpus's
embedded sample, its train split), each blocked until ready; the step time is the median of the timed
steps. Peak memory: on GPU/TPU the device's `peak_bytes_in_use`; on CPU the peak RSS of the steps minus
the baseline RSS measured after the imports, the backend's start and the data, before the model is
built. The compiler's own transient peak is kept out of the CPU figure: freed heap is returned to the
kernel (`malloc_trim`) and the peak RSS reset (`/proc/self/clear_refs`) before the first step; the
whole-process peak, compile included, and every raw figure are in the JSON and the last table. On CPU a
point whose XLA plan, times `--run_plan_factor` (2: the peak RSS reached 1.75× the plan in small runs),
exceeds `--run_max_gib` (default 80% of the memory available at the start) does not run. A point
that does not fit (that, or an out-of-memory error on a device), exceeds `--point_timeout_s`, or whose
worker crashes is a recorded row with its reason, and the variant's longer lengths are skipped: its last
"ok" length is the largest that fits.

Exponents of the measured points (`seqjax.experiment.scaling`): ordinary least squares of log y on
log L with a two-sided 95% t-interval on the slope (n − 2 degrees of freedom). For memory, y is the
doubling increment M(2L) − M(L), which cancels the constant part (compiled code, parameters, runtime),
so the slope is p of M = c + b·L^p; the slope of log M itself is reported beside it, and is the one the
verdict reads where the interval of p contains 1.5 or is missing (the increments of a memory that does
not measurably grow are noise). For time, y is the median step time.

Verdict rule, fixed before any run (issue 18): "attention needs O(n²) memory" is *supported* for a
variant when the interval of its memory exponent p lies above 1.5, *contradicted* when it lies below
1.5, and *inconclusive* when it contains 1.5 (p: of the increments, else of log M;
`seqjax.experiment.scaling.memory_exponent`). It is stated
for each variant: materialised attention (`attention:method=naive`), blockwise attention (the default),
and the recurrent models with and without truncated BPTT. The time cost is the step-time slope with its
interval and the ratio of step times at the largest length every variant ran (to blockwise attention),
and of materialised to blockwise attention at their largest common length.

    python experiments/memory_scaling.py                                  # the plan sweep, ~15 min on CPU
    python experiments/memory_scaling.py --variants=lstm,attention --lengths=1024,2048,4096
    python experiments/memory_scaling.py --size=accelerator              # d_model 256, 6 layers
    python experiments/memory_scaling.py --measure=run                   # measured, 10 variants, 1k-32k

A variant is a preset of `seqjax.config.PRESETS` with optional `:key=value` overrides: `tbptt=N` trains by
truncated BPTT over N-token chunks (a chunk at least as long as the sequence is one chunk: full BPTT),
and `method=naive` makes exact attention materialise its [L, L] scores (the textbook form), for contrast
with the blockwise default. Results go to `experiments/results/memory_scaling_{size}_{platform}.md`
(plan only) or `memory_scaling_measured_{size}_{platform}.md`, and a JSON file beside it, with the
figures (log-log, one line per variant, faint O(L) and O(L²) slopes; `plot_paths`): `<out>_memory.png`,
the train step's plan, in the plan mode; `<out>_memory.png` (peak memory) and `<out>_time.png` (median
step time) in the measured mode, a point that did not run marked ✕ (with both modes the plan's figure
is `<out>_plan.png`). `--replot=<out>.json` redraws them from a result file and measures nothing:

    python experiments/memory_scaling.py --replot=experiments/results/memory_scaling_measured_cpu_cpu.json
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding

from seqjax import models
from seqjax.common.xla import plan_bytes
from seqjax.config import load_config_file
from seqjax.data.documents import DocumentSplit, assign_splits, read_documents
from seqjax.data.documents.catalog import SOURCES
from seqjax.data.documents.tokenizers import ByteTokenizer
from seqjax.data.sources import sample_path
from seqjax.experiment.outputs import provenance_lines, run_header, write_results
from seqjax.experiment.scaling import (
    QUADRATIC_THRESHOLD,
    ExponentFit,
    fit_exponent,
    fit_increment_exponent,
    memory_exponent,
    quadratic_memory_verdict,
)
from seqjax.train import mesh as mesh_lib
from seqjax.train.optimizer import make_optimizer
from seqjax.train.state import init_train_state, state_shardings
from seqjax.train.step import LOSSES, forward, make_train_step

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list(
    "variants",
    ["lstm", "lstm:tbptt=1024", "s5", "lru", "mamba", "gla", "swa", "attention", "attention:method=naive"],
    "Model variants: a seqjax.config.PRESETS name, optionally with :key=value overrides (tbptt, method).",
)
flags.DEFINE_list(
    "lengths", ["1024", "2048", "4096", "8192", "16384", "32768", "65536"], "Sequence lengths (tokens)."
)
flags.DEFINE_string("size", "cpu", "Model size of seqjax.config.SIZES: cpu or accelerator.")
flags.DEFINE_integer("batch", 1, "Sequences per step.")
flags.DEFINE_float(
    "max_gib", 64.0, "Longer lengths of a variant are not compiled once its train plan exceeds this."
)
flags.DEFINE_string(
    "out",
    None,
    "Output path without extension; default experiments/results/memory_scaling_{size}_{platform} "
    "(plan only), else memory_scaling_measured_{size}_{platform}.",
)
flags.DEFINE_list(
    "measure", ["plan"], "plan: XLA's memory plans (compile only); run: measured, a process per point."
)
flags.DEFINE_integer(
    "warmup_steps", 2, "run: train steps before the timed ones (the first also compiles nothing)."
)
flags.DEFINE_integer("timed_steps", 5, "run: timed train steps; the step time is their median.")
flags.DEFINE_float("point_timeout_s", 900.0, "run: a point's worker (start, compile, steps) gets this long.")
flags.DEFINE_float(
    "run_max_gib", 0.0, "run, CPU: a point whose plan exceeds this does not run (0: 80% of MemAvailable)."
)
flags.DEFINE_float(
    "run_plan_factor",
    2.0,
    "run, CPU: a point runs only if this × XLA's plan is under the limit (the measured peak RSS of "
    "materialised attention reached 1.75× its plan at 8k).",
)
flags.DEFINE_list(
    "inject_failure", [], "run, for tests: VARIANT@LENGTH points whose worker crashes on purpose."
)
flags.DEFINE_string(
    "replot",
    "",
    "A result JSON of this driver: redraw its PNG files (to --out if given, else beside the JSON) "
    "and measure nothing. Relative paths are from the repository root, as for --out.",
)
flags.DEFINE_string("worker", "", "Internal: run one measured point VARIANT@LENGTH in this process.")
flags.DEFINE_string("worker_out", "", "Internal: where the worker writes its JSON result.")
flags.DEFINE_integer("worker_limit_bytes", 0, "Internal: the worker's plan limit in bytes (CPU).")
flags.DEFINE_bool("worker_fail", False, "Internal: the worker raises before building the model.")

#: The measured mode's defaults (issue 18): every model family, both attention forms, TBPTT's chunks.
RUN_VARIANTS = [
    "lstm",
    "elstm",
    "gla",
    "mamba",
    "s5",
    "lru",
    "swa",
    "xl_attention",
    "attention",
    "attention:method=naive",
    "lstm:tbptt=256",
    "lstm:tbptt=1024",
    "lstm:tbptt=4096",
]
RUN_LENGTHS = ["1024", "2048", "4096", "8192", "16384", "32768"]

GIB = 2**30
OVERRIDES = ("tbptt", "method")
BATCH_DTYPES = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "resets": bool, "mask": bool}


# --------------------------------------------------------------------------------------------------
# Variants.
# --------------------------------------------------------------------------------------------------
def parse_variant(variant: str) -> tuple[str, dict[str, str]]:
    preset, *parts = variant.split(":")
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in OVERRIDES:
            raise app.UsageError(
                f"--variants: {variant!r}: overrides are key=value with key in {OVERRIDES}, "
                "e.g. lstm:tbptt=1024."
            )
        options[key] = value
    return preset, options


def variant_config(variant: str, length: int) -> ml_collections.ConfigDict:
    preset, options = parse_variant(variant)
    config = load_config_file(
        ROOT / "configs" / "documents.py", f"{preset},size={FLAGS.size},length={length}"
    )
    if "tbptt" in options:
        # A chunk at least as long as the sequence is one chunk of L tokens: full BPTT, by TBPTT's code.
        config.tbptt_length = min(int(options["tbptt"]), length)
    if "method" in options:
        mixer = config.model.mixers[preset]
        if mixer.cell != "attention":
            raise app.UsageError(f"--variants: {variant!r}: method= applies to the attention preset only.")
        mixer.method = options["method"]
    config.mesh.num_devices = 1
    return config


# --------------------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------------------
def build(variant: str, length: int) -> dict[str, Any]:
    """The task's model, optimizer and jitted train step for one point, as both modes use them.

    Returns config, model, tx, mesh, rules, abstract (the state's shapes and shardings), shardings,
    batch_sharding, abstract_batch and train_step (not compiled yet)."""
    config = variant_config(variant, length)
    batch = FLAGS.batch
    mesh = mesh_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes), devices=jax.devices()[:1])
    rules = mesh_lib.rules_from_config(config.logical_rules, mesh)
    model = models.build_task_model(config.task, config.model, config.head)
    tx = make_optimizer(config.optimizer.to_dict(), models.param_groups(model))
    inputs = np.zeros((batch, length), np.int32)
    abstract, shardings = state_shardings(model, tx, (inputs,), mesh, rules)
    spec = mesh_lib.spec_for(("batch", "length"), rules)
    batch_sharding = {k: NamedSharding(mesh, spec) for k in BATCH_DTYPES}
    abstract_batch = {
        k: jax.ShapeDtypeStruct((batch, length), dtype, sharding=batch_sharding[k])
        for k, dtype in BATCH_DTYPES.items()
    }
    train_step = make_train_step(
        model, tx, LOSSES[config.task], shardings, batch_sharding, tbptt_length=config.get("tbptt_length")
    )
    return {
        "config": config,
        "model": model,
        "tx": tx,
        "mesh": mesh,
        "rules": rules,
        "abstract": abstract,
        "shardings": shardings,
        "batch_sharding": batch_sharding,
        "abstract_batch": abstract_batch,
        "train_step": train_step,
        "inputs": inputs,
    }


def measure(variant: str, length: int) -> dict[str, Any]:
    """The plan mode's point: XLA's memory plans of the train step and a forward pass, compiled only."""
    built = build(variant, length)
    model, abstract, abstract_batch = built["model"], built["abstract"], built["abstract_batch"]
    row: dict[str, Any] = {"variant": variant, "length": length}
    start = time.perf_counter()
    row["train_bytes"] = plan_bytes(built["train_step"].lower(abstract, abstract_batch).compile())

    def infer(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        return forward(model, params, batch, deterministic=True, rng=None)

    row["forward_bytes"] = plan_bytes(jax.jit(infer).lower(abstract.params, abstract_batch).compile())
    row["compile_s"] = time.perf_counter() - start
    cache = jax.eval_shape(lambda: model.initial_cache((FLAGS.batch,)))
    row["state_bytes"] = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
    row["param_count"] = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    return row


# --------------------------------------------------------------------------------------------------
# Measured mode: one fresh worker process per (variant, length).
# --------------------------------------------------------------------------------------------------
RESULT_STATUSES = ("ok", "did not fit", "timed out", "failed", "skipped")


def _proc_status_bytes(field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets the process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0); False where refused.

    The compile's own peak (LLVM, buffer assignment) is transient host memory that a device run would
    not have; resetting after compiling keeps it out of the step's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _trim_heap() -> bool:
    """Returns the C heap's free pages to the kernel (glibc `malloc_trim`); False without glibc.

    The compiler frees hundreds of MB that glibc keeps mapped; left there, the steps' buffers would
    reuse them without raising the RSS, and the peak would show the compiler's high-water mark rather
    than the step's memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _max_rss_bytes() -> int:
    """The process's peak RSS since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def document_batches(
    config: ml_collections.ConfigDict, length: int, count: int
) -> list[dict[str, np.ndarray]]:
    """`count` batches of real bytes: consecutive packed windows of the task corpus's embedded sample
    (its train split, `DocumentSplit` as the task builds it), cycling if the split is short."""
    corpus = config.data.corpus
    documents = read_documents(corpus, sample_path(SOURCES[corpus].sample))
    train_ids = set(assign_splits([d.id for d in documents], tuple(config.data.split_fractions))["train"])
    texts = [d.text.encode() for d in documents if d.id in train_ids]
    tokenizer = ByteTokenizer()
    split = DocumentSplit(
        split="train",
        corpus=corpus,
        document_ids=sorted(train_ids),
        document_bytes=[len(t) for t in texts],
        tokens=tokenizer.encode_documents(texts),
        vocab_size=tokenizer.vocab_size,
        token_byte_histograms=tokenizer.token_byte_histograms(),
        length=length,
        packing="packed",
        tokenizer_name="bytes",
    )
    # Whole windows only: the split's last window is padded, which would make a step do less work.
    whole = max(1, len(split) - 1)
    out, index = [], 0
    for _ in range(count):
        examples = []
        for _ in range(FLAGS.batch):
            examples.append(split[index % whole])
            index += 1
        out.append({k: np.stack([e[k] for e in examples]) for k in BATCH_DTYPES})
    return out


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def run_point(variant: str, length: int, memory_limit_bytes: int, fail: bool = False) -> dict[str, Any]:
    """The measured mode's point, in this (fresh) process: peak memory, compile and step times.

    Called by the worker before anything else touched a device. Steps: the baseline RSS after imports,
    backend start and the data; build the model and train step as the plan mode does; compile (timed);
    refuse to run where `--run_plan_factor` × XLA's plan exceeds `memory_limit_bytes` (CPU, where running
    out of memory means the kernel kills the process and starves the machine); initialise the state;
    return the heap's free pages and reset the peak RSS; run `--warmup_steps` and `--timed_steps` steps on
    real bytes, each blocked until ready."""
    row: dict[str, Any] = {"variant": variant, "length": length, "pid": os.getpid()}
    platform = jax.default_backend()
    device = jax.devices()[0]
    row.update(platform=platform, device_kind=device.device_kind)
    config = variant_config(variant, length)
    steps = FLAGS.warmup_steps + FLAGS.timed_steps
    batches = document_batches(config, length, steps)
    row["baseline_rss_bytes"] = _proc_status_bytes("VmRSS")
    if fail:
        raise RuntimeError(f"--inject_failure: the worker of {variant} at L={length} fails on purpose.")
    built = build(variant, length)
    start = time.perf_counter()
    try:
        compiled = built["train_step"].lower(built["abstract"], built["abstract_batch"]).compile()
    except Exception as e:  # XLA raises its own runtime error type; only out-of-memory is a result
        if not _out_of_memory(e):
            raise
        return {**row, "status": "did not fit", "reason": f"compile: {str(e).splitlines()[0][:300]}"}
    row["compile_s"] = time.perf_counter() - start
    row["plan_bytes"] = plan_bytes(compiled)
    row["param_count"] = sum(math.prod(x.shape) for x in jax.tree.leaves(built["abstract"].params))
    expected = None if row["plan_bytes"] is None else FLAGS.run_plan_factor * row["plan_bytes"]
    if platform == "cpu" and expected is not None and expected > memory_limit_bytes:
        return {
            **row,
            "status": "did not fit",
            "reason": f"{FLAGS.run_plan_factor:g} × XLA's plan {_fmt_bytes(row['plan_bytes'])} > the "
            f"limit {_fmt_bytes(memory_limit_bytes)}",
        }
    try:
        state, _ = init_train_state(
            built["model"], built["tx"], (built["inputs"],), built["mesh"], built["rules"], seed=0
        )
        device_batches = [jax.device_put(b, built["batch_sharding"]) for b in batches]
        jax.block_until_ready((state, device_batches))
        row["heap_trimmed"] = _trim_heap()
        row["rss_before_steps_bytes"] = _proc_status_bytes("VmRSS")
        # The peak so far includes the compiler's; kept before the reset, which also resets ru_maxrss.
        row["peak_rss_before_steps_bytes"] = _proc_status_bytes("VmHWM")
        row["peak_reset"] = _reset_peak_rss()
        times, losses = [], []
        for batch in device_batches:
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
            losses.append(float(metrics["loss"]))
    except Exception as e:
        if not _out_of_memory(e):
            raise
        return {**row, "status": "did not fit", "reason": f"run: {str(e).splitlines()[0][:300]}"}
    timed = times[FLAGS.warmup_steps :]
    row.update(
        status="ok",
        warmup_step_s=times[: FLAGS.warmup_steps],
        step_times_s=timed,
        step_s=float(np.median(timed)),
        loss_first=losses[0],
        loss_last=losses[-1],
        process_peak_rss_bytes=max(_max_rss_bytes(), row["peak_rss_before_steps_bytes"] or 0),
        step_peak_rss_bytes=_proc_status_bytes("VmHWM") if row["peak_reset"] else None,
    )
    stats = device.memory_stats() if platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        row["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
        row["peak_bytes"], row["peak_source"] = row["device_peak_bytes"], "device peak_bytes_in_use"
    elif row["step_peak_rss_bytes"] is not None and row["baseline_rss_bytes"] is not None:
        row["peak_bytes"] = row["step_peak_rss_bytes"] - row["baseline_rss_bytes"]
        row["peak_source"] = "peak RSS of the steps − baseline RSS"
    else:
        row["peak_bytes"] = row["process_peak_rss_bytes"] - (row["baseline_rss_bytes"] or 0)
        row["peak_source"] = "process peak RSS (compile included) − baseline RSS"
    return row


def worker_main() -> None:
    """`--worker=VARIANT@LENGTH`: one measured point; its JSON goes to `--worker_out`."""
    variant, _, length = FLAGS.worker.rpartition("@")
    row = run_point(variant, int(length), int(FLAGS.worker_limit_bytes), fail=FLAGS.worker_fail)
    Path(FLAGS.worker_out).write_text(json.dumps(row) + "\n")


def memory_limit_bytes() -> int:
    """The CPU run's limit on XLA's plan: `--run_max_gib`, else 80% of MemAvailable now (what other
    processes leave), else 16 GiB where /proc/meminfo is missing."""
    if FLAGS.run_max_gib > 0:
        return int(FLAGS.run_max_gib * GIB)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(0.8 * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 16 * GIB


def spawn_point(variant: str, length: int, limit_bytes: int, fail: bool = False) -> dict[str, Any]:
    """Runs `run_point` in a fresh interpreter (this script, `--worker`) under `--point_timeout_s`.

    A worker that times out, crashes or writes no result is a recorded failure with its reason (and the
    tail of its stderr), never a missing row."""
    row: dict[str, Any] = {"variant": variant, "length": length}
    with tempfile.TemporaryDirectory(prefix="memory_scaling_") as tmp:
        result = Path(tmp) / "point.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            f"--worker={variant}@{length}",
            f"--worker_out={result}",
            f"--worker_limit_bytes={limit_bytes}",
            f"--run_plan_factor={FLAGS.run_plan_factor}",
            f"--size={FLAGS.size}",
            f"--batch={FLAGS.batch}",
            f"--warmup_steps={FLAGS.warmup_steps}",
            f"--timed_steps={FLAGS.timed_steps}",
            *(["--worker_fail"] if fail else []),
        ]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=FLAGS.point_timeout_s
            )
        except subprocess.TimeoutExpired:
            return {
                **row,
                "status": "timed out",
                "reason": f"no result within --point_timeout_s={FLAGS.point_timeout_s:g} s",
                "worker_wall_s": time.perf_counter() - start,
            }
        row["worker_wall_s"] = time.perf_counter() - start
        tail = done.stderr.strip().splitlines()[-1:] if done.stderr else []
        if done.returncode != 0:
            how = (
                f"killed by signal {-done.returncode} (SIGKILL: likely the kernel's out-of-memory killer)"
                if done.returncode == -signal.SIGKILL
                else f"killed by signal {-done.returncode}"
                if done.returncode < 0
                else f"exit status {done.returncode}"
            )
            return {**row, "status": "failed", "reason": f"worker {how}: {' '.join(tail)[:400]}"}
        if not result.exists():
            return {**row, "status": "failed", "reason": "worker exited 0 without writing its result"}
        return {**row, **json.loads(result.read_text())}


def memory_fit(rows: list[dict[str, Any]]) -> tuple[ExponentFit, str]:
    """`seqjax.experiment.scaling.memory_exponent` of a variant's measured peak memory: (fit, which)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("peak_bytes") is not None]
    return memory_exponent([r["length"] for r in ok], [r["peak_bytes"] for r in ok])


def fit_rows(rows: list[dict[str, Any]], key: str, increments: bool = False) -> ExponentFit:
    """The exponent of `key` against the length over a variant's measured ("ok") points: of the values
    themselves, or (`increments`) of their doubling increments, which cancel any constant part."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(key) is not None]
    fit = fit_increment_exponent if increments else fit_exponent
    return fit([r["length"] for r in ok], [r[key] for r in ok])


def exponents(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float | None]]:
    """(L, p) for each L/4, L/2, L of the rows; p = log2 of the ratio of successive increments.

    p is None ("flat") where an increment is under 1% of M(L/4): the ratio of two increments that small
    is buffer-assignment noise, not growth."""
    by_length = {r["length"]: r[key] for r in rows if r.get(key) is not None}
    out = []
    for length in sorted(by_length):
        if 2 * length in by_length and 4 * length in by_length:
            first = by_length[2 * length] - by_length[length]
            second = by_length[4 * length] - by_length[2 * length]
            floor = 0.01 * by_length[length]
            p = math.log2(second / first) if first > floor and second > floor else None
            out.append((4 * length, p))
    return out


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------
def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def plan_markdown(results: dict[str, Any]) -> list[str]:
    """The plan mode's sections."""
    rows = [r for r in results["rows"] if "train_bytes" in r or "skipped" in r]
    variants = results["variants"]
    lengths = sorted({r["length"] for r in rows})
    head = "| variant | params | " + " | ".join(f"L={n:,}" for n in lengths) + " |"
    rule = "|---|---:|" + "---:|" * len(lengths)

    def table(key: str) -> list[str]:
        lines = [head, rule]
        for v in variants:
            cells = {r["length"]: r for r in rows if r["variant"] == v}
            params = next((f"{r['param_count']:,}" for r in cells.values() if "param_count" in r), "n/a")
            values = [
                _fmt_bytes(cells[n].get(key))
                if n in cells and key in cells[n]
                else cells.get(n, {}).get("skipped", "")
                for n in lengths
            ]
            lines.append(f"| {v} | {params} | " + " | ".join(values) + " |")
        return lines

    lines = [
        "## Train step (forward + backward + AdamW), per device",
        "",
        *table("train_bytes"),
        "",
        "## Forward pass only (evaluation), per device",
        "",
        *table("forward_bytes"),
        "",
        "## Generation state after a context of L tokens (recurrent state or KV cache)",
        "",
        *table("state_bytes"),
        "",
        "## Exponent p of the length-dependent part of train memory, from L/4, L/2, L",
        "",
        "p = log2((M(L) − M(L/2)) / (M(L/2) − M(L/4))): 1 for linear growth, 2 for quadratic; flat where an "
        "increment is under 1% of M(L/4).",
        "",
    ]
    exps = {v: exponents([r for r in rows if r["variant"] == v], "train_bytes") for v in variants}
    ends = sorted({n for e in exps.values() for n, _ in e})
    lines += ["| variant | " + " | ".join(f"L={n:,}" for n in ends) + " |", "|---|" + "---:|" * len(ends)]
    for v in variants:
        got = dict(exps[v])
        vals = [("flat" if got[n] is None else f"{got[n]:.2f}") if n in got else "" for n in ends]
        lines.append(f"| {v} | " + " | ".join(vals) + " |")
    lines += [
        "",
        "## Bytes per token of train memory at the longest length (M(L) − M(L/2)) / (L/2)",
        "",
        "| variant | L | bytes/token |",
        "|---|---:|---:|",
    ]
    for v in variants:
        by_length = {r["length"]: r["train_bytes"] for r in rows if r["variant"] == v and "train_bytes" in r}
        longest = [n for n in sorted(by_length) if n // 2 in by_length]
        if longest:
            n = longest[-1]
            lines.append(f"| {v} | {n:,} | {(by_length[n] - by_length[n // 2]) / (n // 2):,.0f} |")
    return lines


def _cell(row: dict[str, Any] | None, render: Any) -> str:
    """A measured cell: `render(row)` for a point that ran, else its status ("" where not tried)."""
    if row is None:
        return ""
    return render(row) if row.get("status") == "ok" else row.get("status", "")


def measured_markdown(results: dict[str, Any]) -> list[str]:
    """The measured mode's sections: peak memory, step and compile times, fits, verdicts, failures."""
    variants = results["variants"]
    runs = {(r["variant"], r["length"]): r["run"] for r in results["rows"] if "run" in r}
    if not runs:
        return []
    lengths = sorted({n for _, n in runs})
    head = [
        "| variant | params | " + " | ".join(f"L={n:,}" for n in lengths) + " |",
        "|---|---:|" + "---:|" * len(lengths),
    ]

    def table(render: Any) -> list[str]:
        lines = list(head)
        for v in variants:
            cells = [runs.get((v, n)) for n in lengths]
            params = next((f"{c['param_count']:,}" for c in cells if c and "param_count" in c), "n/a")
            lines.append(f"| {v} | {params} | " + " | ".join(_cell(c, render) for c in cells) + " |")
        return lines

    sources = sorted({r.get("peak_source") for r in runs.values() if r.get("peak_source")})
    fits = {}
    for v in variants:
        rows = [runs[(v, n)] for n in lengths if (v, n) in runs]
        ok = [r for r in rows if r["status"] == "ok"]
        memory, which = memory_fit(rows)
        fits[v] = {
            "memory": memory,
            "which": which,
            "increments": fit_rows(rows, "peak_bytes", increments=True),
            "memory_direct": fit_rows(rows, "peak_bytes"),
            "time": fit_rows(rows, "step_s"),
            "largest": max((r["length"] for r in ok), default=None),
            "stopped": next((r for r in rows if r["status"] not in ("ok", "skipped")), None),
        }
    lines = [
        "## Measured: peak memory of the train step, per point (a fresh process each)",
        "",
        f"Peak = {'; '.join(sources) or 'n/a'}. Warm-up steps {results['warmup_steps']}, timed steps "
        f"{results['timed_steps']}, on real bytes of the task's corpus; a point that did not fit, timed "
        'out or failed ends its variant\'s sweep ("skipped" after it).',
        "",
        *table(lambda r: _fmt_bytes(r.get("peak_bytes"))),
        "",
        "## Measured: median train step time",
        "",
        *table(lambda r: f"{r['step_s']:.3g} s"),
        "",
        "## Measured: compile time of the train step",
        "",
        *table(lambda r: f"{r['compile_s']:.1f} s"),
        "",
        '## Exponents and the verdict on "attention needs O(n²) memory"',
        "",
        "Exponents: OLS slope of log y on log L with a 95% t-interval (`seqjax.experiment.scaling`). The "
        "memory exponent p is fitted to the doubling increments M(2L) − M(L), which cancel the constant "
        "part (compiled code, parameters, runtime); the slope of log M itself, which a constant part pulls "
        "below p, is beside it.",
        "",
        f"Rule, fixed before the run: the claim is *supported* for a variant when the interval of p lies "
        f"above {QUADRATIC_THRESHOLD}, *contradicted* when it lies below {QUADRATIC_THRESHOLD}, "
        "*inconclusive* otherwise. Where the interval of p contains 1.5 or is missing (the increments of "
        "a memory that does not measurably grow are noise), the rule reads the slope of log M instead "
        "(marked *), which a constant part can only pull down: a * verdict of *contradicted* says that "
        "the total memory grew slower than L^1.5 up to the largest length measured, not that a term in "
        "L² is absent (a large constant hides one: M = 4·10⁸ + L² over 1k–8k reads as contradicted *).",
        "",
        "| variant | points | largest L that fits | p (increments) | slope of log M | O(n²) memory "
        "| step-time slope | stopped by |",
        "|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for v in variants:
        f = fits[v]
        stop = f["stopped"]
        why = f"L={stop['length']:,}: {stop['status']} ({stop.get('reason', '')})" if stop else ""
        largest = f"{f['largest']:,}" if f["largest"] else "none"
        star = " *" if f["which"] == "log M" else ""
        lines.append(
            f"| {v} | {f['memory_direct'].n_points} | {largest} | {f['increments'].describe()} | "
            f"{f['memory_direct'].describe()} | {quadratic_memory_verdict(f['memory'])}{star} | "
            f"{f['time'].describe()} | {why} |"
        )
    common = [n for n in lengths if all(runs.get((v, n), {}).get("status") == "ok" for v in variants)]
    reference = "attention" if "attention" in variants else None
    lines += ["", "## Time cost at the largest length every variant ran", ""]
    if common and reference:
        n = common[-1]
        base = runs[(reference, n)]["step_s"]
        lines += [
            f"L = {n:,}; ratio to blockwise attention (`attention`).",
            "",
            "| variant | step s | ratio |",
            "|---|---:|---:|",
        ]
        for v in variants:
            step = runs[(v, n)]["step_s"]
            lines.append(f"| {v} | {step:.3g} | {step / base:.2f} |")
    else:
        lines.append("No length ran for every variant (or no `attention` variant to compare with).")
    naive = [v for v in variants if v.startswith("attention") and "method=naive" in v]
    if reference and naive:
        v = naive[0]
        both = [
            n
            for n in lengths
            if runs.get((v, n), {}).get("status") == "ok"
            and runs.get((reference, n), {}).get("status") == "ok"
        ]
        if both:
            n = both[-1]
            ratio = runs[(v, n)]["step_s"] / runs[(reference, n)]["step_s"]
            lines += [
                "",
                f"Materialised over blockwise attention at L = {n:,} (their largest common length): "
                f"step time × {ratio:.2f}, "
                f"peak memory × {runs[(v, n)]['peak_bytes'] / runs[(reference, n)]['peak_bytes']:.2f}.",
            ]
    lines += ["", "## Verdicts", ""]
    groups = [
        ("Materialised attention", naive),
        (
            "Blockwise attention",
            [v for v in variants if v.split(":")[0] in ("attention", "swa") and v not in naive],
        ),
        (
            "Recurrent models and truncated BPTT",
            [v for v in variants if v.split(":")[0] not in ("attention", "swa")],
        ),
    ]
    for title, members in groups:
        if members:
            said = "; ".join(
                f"`{v}` {quadratic_memory_verdict(fits[v]['memory'])} (memory exponent "
                f"{fits[v]['memory'].describe()} from {fits[v]['which']}"
                + (
                    f": total memory up to the largest length measured, while the increments "
                    f"({fits[v]['increments'].describe()}) cannot exclude L²"
                    if fits[v]["which"] == "log M"
                    else ""
                )
                + f", step-time slope {fits[v]['time'].describe()})"
                for v in members
            )
            lines.append(f"- **{title}**: {said}.")
    failures = [r for r in runs.values() if r["status"] in ("did not fit", "timed out", "failed")]
    lines += ["", "## Points that did not run to the end", ""]
    lines += [
        f"- {r['variant']} at L={r['length']:,}: {r['status']}: {r.get('reason', '')}" for r in failures
    ] or ["- none"]
    lines += [
        "",
        "## Raw memory figures (bytes)",
        "",
        "| variant | L | baseline RSS | RSS before steps | peak RSS of steps | process peak RSS "
        "| device peak | XLA plan | worker pid |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        for n in lengths:
            r = runs.get((v, n))
            if r and "pid" in r:
                cells = [
                    r.get(k)
                    for k in (
                        "baseline_rss_bytes",
                        "rss_before_steps_bytes",
                        "step_peak_rss_bytes",
                        "process_peak_rss_bytes",
                        "device_peak_bytes",
                        "plan_bytes",
                    )
                ]
                lines.append(
                    f"| {v} | {n:,} | "
                    + " | ".join("" if c is None else f"{c:,}" for c in cells)
                    + f" | {r['pid']} |"
                )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The report: a header, then the plan sections and/or the measured sections."""
    modes = results.get("measure", ["plan"])
    what = []
    if "plan" in modes:
        what.append("XLA memory plans (arguments + outputs + temporaries), compiled only")
    if "run" in modes:
        what.append("measured train steps, a fresh process per point")
    lines = [
        "# Does training memory grow linearly with the sequence length?",
        "",
        *provenance_lines(results, details=f"; jax {results['jax']}"),
        f"- task: document LM (`configs/documents.py`, bytes), size `{results['size']}`, batch "
        f"{results['batch']}, float32, one device; " + "; ".join(what),
        "",
    ]
    if "plan" in modes:
        lines += plan_markdown(results)
    if "run" in modes:
        lines += ["", *measured_markdown(results)] if "plan" in modes else measured_markdown(results)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Plots.
# --------------------------------------------------------------------------------------------------
#: Statuses of a measured point that ran no step to the end: marked at the top of the measured plots.
NOT_RUN = ("did not fit", "timed out", "failed")


def plot_paths(out: str | os.PathLike[str], modes: list[str]) -> dict[str, Path]:
    """The PNG files written beside `<out>.md`: `memory` and `time` for the measured mode, `plan` for
    the plan mode (`<out>_memory.png` when it is the only mode, else `<out>_plan.png`).

        >>> {k: p.name for k, p in plot_paths("r/x", ["plan"]).items()}
        {'plan': 'x_memory.png'}
        >>> sorted(p.name for p in plot_paths("r/x", ["plan", "run"]).values())
        ['x_memory.png', 'x_plan.png', 'x_time.png']
    """
    out = Path(out)
    paths = {}
    if "plan" in modes:
        paths["plan"] = out.with_name(out.name + ("_plan.png" if "run" in modes else "_memory.png"))
    if "run" in modes:
        paths["memory"] = out.with_name(out.name + "_memory.png")
        paths["time"] = out.with_name(out.name + "_time.png")
    return paths


def _bytes_label(value: float, _position: Any = None) -> str:
    """A binary-unit tick label: 2**25 → "32 MiB", 2**30 → "1 GiB", 3 * 2**29 → "1.5 GiB".

    >>> [_bytes_label(v) for v in (2**10, 2**25, 2**30, 3 * 2**29)]
    ['1 KiB', '32 MiB', '1 GiB', '1.5 GiB']
    """
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} B"


def _machine(results: dict[str, Any]) -> str:
    """The platform, and the device kinds of the measured points where they say more (e.g. a GPU's)."""
    kinds = sorted(
        {r["run"]["device_kind"] for r in results["rows"] if r.get("run", {}).get("device_kind")}
        - {results["platform"]}
    )
    return f"platform {results['platform']}" + (f" ({', '.join(kinds)})" if kinds else "")


def _reference_slopes(ax: Any, lengths: list[int], values: list[float]) -> None:
    """Faint O(L) and O(L²) lines from half the smallest value at the shortest length, each ending at
    the longest length or where it passes the largest value (so it does not stretch the axis)."""
    first, top = 0.5 * min(values), max(values)
    low, high = min(lengths), max(lengths)
    for power, label in ((1, "O(L)"), (2, "O(L²)")):
        end = min(high, low * (top / first) ** (1 / power))
        xs = np.geomspace(low, end, 32)
        ax.plot(xs, first * (xs / low) ** power, color="0.55", linestyle=":", linewidth=1.1, zorder=1)
        ax.annotate(
            label,
            (end, first * (end / low) ** power),
            xytext=(3, 0),
            textcoords="offset points",
            color="0.45",
            fontsize=8,
            va="center",
        )


def _length_axes(ax: Any, lengths: list[int]) -> None:
    from seqjax.experiment.plots import _length_formatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.xaxis.set_major_formatter(_length_formatter())
    ax.xaxis.set_minor_formatter(_length_formatter())
    ax.set_xlim(min(lengths) / 1.25, max(lengths) * 1.6)  # room for the reference slopes' labels
    ax.set_xlabel("sequence length L (tokens)")
    ax.grid(True, which="major", alpha=0.3)


def _bytes_axis(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(LogLocator(base=2, numticks=9))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_bytes_label))


def _legend(ax: Any, count: int, title: str | None = None) -> None:
    """Past 8 lines a legend inside the axes hides the data: it goes to the right of them."""
    where = {"loc": "center left", "bbox_to_anchor": (1.01, 0.5), "frameon": False} if count > 8 else {}
    ax.legend(fontsize=7, title=title, title_fontsize=7, alignment="left", **where)


def plan_figure(results: dict[str, Any], path: str | os.PathLike[str] | None = None) -> Any:
    """The plan mode's figure: XLA's plan of the train step against L, log-log, one line per variant,
    with faint O(L) and O(L²) slopes. A variant whose longer lengths were not compiled (`--max_gib`)
    says so in its label. Written to `path` (returned), or the open Figure where `path` is None."""
    from seqjax.experiment.plots import _finish, _pyplot, _series_style

    plt = _pyplot()
    variants = results["variants"]
    outside = len(variants) > 8
    fig, ax = plt.subplots(figsize=(9.2 if outside else 6.8, 4.8))
    lengths, values = [], []
    for i, variant in enumerate(variants):
        rows = [r for r in results["rows"] if r["variant"] == variant]
        points = sorted((r["length"], r["train_bytes"]) for r in rows if r.get("train_bytes"))
        if not points:
            continue
        skipped = sorted(r["length"] for r in rows if r.get("skipped"))
        label = variant + (f" (L ≥ {skipped[0] // 1024}k not compiled)" if skipped else "")
        last = exponents(rows, "train_bytes")[-1:]
        if last:
            label += ": flat" if last[0][1] is None else f": {last[0][1]:.2f}"
        ax.plot(*zip(*points, strict=True), **_series_style(i), markersize=4, label=label)
        lengths += [n for n, _ in points]
        values += [m for _, m in points]
    if values:
        _reference_slopes(ax, sorted(set(lengths)), values)
        _length_axes(ax, sorted(set(lengths)))
    _bytes_axis(ax)
    ax.set_ylabel("train step memory (XLA plan)")
    title = (
        f"Train step (forward + backward + AdamW) memory against length, XLA's plan, nothing run: "
        f"document LM, size {results['size']}, batch {results['batch']}, float32; "
        f"{_machine(results)}, jax {results['jax']}, {results['date']}"
    )
    ax.set_title(textwrap.fill(title, width=96 if outside else 75), fontsize=9)
    _legend(ax, len(variants), title="variant: exponent p of the last L/4, L/2, L")
    return _finish(fig, path)


def measured_figure(results: dict[str, Any], key: str, path: str | os.PathLike[str] | None = None) -> Any:
    """A measured-mode figure: `key` "peak_bytes" (peak memory) or "step_s" (median step time) against
    L, log-log, one line per variant, with faint O(L) and O(L²) slopes. A point that did not fit, timed
    out or failed is an ✕ in its variant's color at the top of the axes, and its label says where the
    variant stopped. Written to `path` (returned), or the open Figure where `path` is None."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    from seqjax.experiment.plots import _finish, _pyplot, _series_style

    if key not in ("peak_bytes", "step_s"):
        raise ValueError(f"measured_figure: key must be 'peak_bytes' or 'step_s', got {key!r}.")
    plt = _pyplot()
    variants = results["variants"]
    runs = [r["run"] for r in results["rows"] if "run" in r]
    outside = len(variants) > 8
    fig, ax = plt.subplots(figsize=(11.0 if outside else 7.2, 5.0))
    top = blended_transform_factory(ax.transData, ax.transAxes)
    lengths, values, stops = [], [], 0
    for i, variant in enumerate(variants):
        rows = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["length"])
        points = [(r["length"], r[key]) for r in rows if r.get("status") == "ok" and r.get(key)]
        stop = next((r for r in rows if r.get("status") in NOT_RUN), None)
        style = _series_style(i)
        fit, which = memory_fit(rows) if key == "peak_bytes" else (fit_rows(rows, key), "")
        label = variant + (f", {stop['status']} at {stop['length'] // 1024}k" if stop else "")
        if math.isfinite(fit.slope):
            label += f": {fit.describe()}" + (" (log M)" if which == "log M" else "")
        if points:
            ax.plot(*zip(*points, strict=True), **style, markersize=4, label=label)
        else:
            ax.plot([], [], **style, label=label)
        if stop:
            stops += 1
            ax.plot(
                stop["length"],
                0.96,
                "x",
                color=style["color"],
                markersize=9,
                mew=2.2,
                transform=top,
                clip_on=False,
            )
            ax.annotate(
                stop["status"],
                (stop["length"], 0.96),
                xycoords=top,
                xytext=(-6, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=7,
                color=style["color"],
            )
        lengths += [r["length"] for r in rows if r.get("status") != "skipped"]
        values += [v for _, v in points]
    if values:
        _reference_slopes(ax, sorted(set(lengths)), values)
        _length_axes(ax, sorted(set(lengths)))
    if stops:
        ax.plot([], [], "x", color="0.3", mew=2.2, label="did not run to the end (✕ at the top)")
    sources = sorted({r["peak_source"] for r in runs if r.get("peak_source")})
    if key == "peak_bytes":
        _bytes_axis(ax)
        ax.set_ylabel(f"peak memory ({'; '.join(sources) or 'n/a'})", fontsize=8)
        what, exponent = "peak memory", "memory exponent p [95% CI]; (log M): the slope of log M"
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} s"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(f"median train step time (of {results.get('timed_steps', '?')} timed steps)")
        what, exponent = "median step time", "step-time slope [95% CI]"
    if stops and values:
        # Headroom above the data for the ✕ row: the largest value at 85% of the axis height (log y).
        low = ax.get_ylim()[0]
        ax.set_ylim(low, low * (max(values) / low) ** (1 / 0.85))
    title = (
        f"Measured {what} of the train step (forward + backward + AdamW), a fresh process per point: "
        f"document LM, size {results['size']}, batch {results['batch']}, float32; "
        f"{_machine(results)}, jax {results['jax']}, {results['date']}"
    )
    ax.set_title(textwrap.fill(title, width=96 if outside else 75), fontsize=9)
    _legend(ax, len(variants) + (1 if stops else 0), title=f"variant: {exponent}")
    return _finish(fig, path)


def write_plots(results: dict[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Writes the figures of `results` (the driver's JSON) to `plot_paths(out, ...)`; returns them."""
    modes = results.get("measure", ["plan"])
    paths = plot_paths(out, modes)
    written = []
    if "plan" in paths and any(r.get("train_bytes") for r in results["rows"]):
        written.append(plan_figure(results, paths["plan"]))
    if "memory" in paths and any("run" in r for r in results["rows"]):
        written.append(measured_figure(results, "peak_bytes", paths["memory"]))
        written.append(measured_figure(results, "step_s", paths["time"]))
    return written


def plot_results(
    json_path: str | os.PathLike[str], out_prefix: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Redraws the figures of an existing result JSON without measuring anything, to
    `<out_prefix>_memory.png` etc. (default: beside the JSON, with its stem); returns their paths.

        >>> plot_results("experiments/results/memory_scaling_measured_cpu_cpu.json")  # doctest: +SKIP
    """
    json_path = Path(json_path)
    results = json.loads(json_path.read_text())
    return write_plots(results, json_path.with_suffix("") if out_prefix is None else out_prefix)


# --------------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        worker_main()
        return
    if FLAGS.replot:
        for path in plot_results(FLAGS.replot, FLAGS.out):
            print(f"wrote {path}")
        return
    modes = list(FLAGS.measure)
    if not modes or set(modes) - {"plan", "run"}:
        raise app.UsageError(f"--measure: a list of plan and/or run, got {modes}.")
    run_mode = "run" in modes
    variants = list(FLAGS.variants) if FLAGS["variants"].present or not run_mode else RUN_VARIANTS
    lengths = sorted(
        int(n) for n in (FLAGS.lengths if FLAGS["lengths"].present or not run_mode else RUN_LENGTHS)
    )
    for variant in variants:
        variant_config(variant, lengths[0])  # refuse a bad variant before compiling anything
    inject = set(FLAGS.inject_failure)
    platform = jax.default_backend()
    results: dict[str, Any] = {
        **run_header(sys.argv, platform),
        "jax": jax.__version__,
        "size": FLAGS.size,
        "batch": FLAGS.batch,
        "measure": modes,
        "variants": variants,
        "rows": [],
    }
    limit = 0
    if run_mode:
        limit = memory_limit_bytes()
        results.update(
            warmup_steps=FLAGS.warmup_steps,
            timed_steps=FLAGS.timed_steps,
            point_timeout_s=FLAGS.point_timeout_s,
            run_limit_bytes=limit,
        )
    default_out = "experiments/results/memory_scaling{}_{{size}}_{{platform}}".format(
        "_measured" if run_mode else ""
    )
    out = Path((FLAGS.out or default_out).format(size=FLAGS.size, platform=platform))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sweep(variants, lengths, modes, results, out, limit, inject)
    except BaseException:
        # The figures of what was measured before the sweep stopped (interrupted, crashed), where they
        # can be drawn; the error that stopped it is the one raised.
        if results["rows"]:
            try:
                write_plots(results, out)
            except Exception as e:
                print(f"figures not written: {e!r}", file=sys.stderr)
        raise
    plots = write_plots(results, out)
    print(markdown(results))
    print(f"wrote {out}.md and {out}.json; figures " + ", ".join(map(str, plots)))


def sweep(
    variants: list[str],
    lengths: list[int],
    modes: list[str],
    results: dict[str, Any],
    out: Path,
    limit: int,
    inject: set[str],
) -> None:
    """Measures every (variant, length) point into `results["rows"]`, rewriting `<out>.json` and
    `<out>.md` after each."""
    run_mode = "run" in modes
    for variant in variants:
        too_big, stopped = "plan" not in modes, not run_mode
        for length in lengths:
            row: dict[str, Any] = {"variant": variant, "length": length}
            if not too_big:
                row = measure(variant, length)
                too_big = row["train_bytes"] > FLAGS.max_gib * GIB
                print(
                    f"{variant:>24} L={length:>7}: train {_fmt_bytes(row['train_bytes'])}, forward "
                    f"{_fmt_bytes(row['forward_bytes'])}, state {_fmt_bytes(row['state_bytes'])} "
                    f"({row['compile_s']:.1f} s to compile)",
                    flush=True,
                )
            elif "plan" in modes:
                row["skipped"] = "skipped"
            if run_mode:
                if stopped:
                    run = {
                        "variant": variant,
                        "length": length,
                        "status": "skipped",
                        "reason": "a shorter length did not run",
                    }
                else:
                    run = spawn_point(variant, length, limit, fail=f"{variant}@{length}" in inject)
                    stopped = run["status"] != "ok"
                    detail = (
                        f"peak {_fmt_bytes(run['peak_bytes'])}, step {run['step_s']:.3g} s, "
                        f"compile {run['compile_s']:.1f} s"
                        if run["status"] == "ok"
                        else f"{run['status']}: {run.get('reason', '')}"
                    )
                    print(f"{variant:>24} L={length:>7}: run: {detail} (pid {run.get('pid')})", flush=True)
                row["run"] = run
            results["rows"].append(row)
            # Rewritten after every row, so an interrupted sweep keeps what it measured.
            write_results(out, results, markdown(results), echo=False)


if __name__ == "__main__":
    os.chdir(ROOT)
    app.run(main)
