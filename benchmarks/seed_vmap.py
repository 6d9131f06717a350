"""Seeds in one program: is one `jax.vmap`-ed train step over K stacked train states faster than K
ordinary train steps run one after another? (issue 15, item 4)

For each model preset of the main job (`configs/genomic.py:<preset>,task=species,length=1024`, the CPU
size: d_model 64, 2 layers, batch 8 windows of 1024 bp) and each K in --seeds, one process measures the
time of one optimizer step of all K seeds, in two forms:

- sequential: K train states (seeds 0..K-1), each stepped by the trainer's own jitted step
  (`seqjax.train.step.make_train_step`), one after another;
- vmapped: the same K states stacked along a new leading axis and stepped by ONE
  `jax.jit(jax.vmap(step))` of that same step function, each seed on its own batch (K batches stacked).

Both forms start from the same states and see the same batches (real species windows of the embedded
sample, each seed its own shuffled stream as the trainer draws it), so they compute the same thing: the
script checks that after 3 steps the vmapped states equal the sequential ones (float32 tolerance) and
prints the result. The two forms alternate step by step, so both see the same background load. The first
(compiling) step is not timed; the table gives the median over --steps timed steps of seconds per all-K
step, the ratio sequential / vmapped (> 1: vmap pays) and tokens/s.

    PYTHONPATH=. python benchmarks/seed_vmap.py                            # -> benchmarks/seed_vmap_cpu.md
    PYTHONPATH=. python benchmarks/seed_vmap.py --presets=lstm --seeds=1,2 --steps=3 --out=/tmp/x.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.config import load_config_file
from seqjax.data.pipeline import TrainBatches
from seqjax.train.state import TrainState, init_train_state
from seqjax.train.step import LOSSES, make_train_step
from seqjax.train.trainer import setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ARG = "{preset},task=species,length=1024"
#: The step after which the two forms' states are compared (the compiling step counts as step 1).
CHECK_STEP = 3
#: float32 tolerance: vmap batches the matmuls, which may sum in another order.
RTOL, ATOL = 1e-4, 1e-6

Step = Callable[[Any, Any], tuple[Any, Any]]


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="lstm,s5,attention", help="Comma-separated model presets.")
    parser.add_argument("--seeds", default="1,2,5", help="Comma-separated K (seeds per program).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per form (after compiling).")
    parser.add_argument("--out", default="benchmarks/seed_vmap_{platform}.md", help="Markdown output.")
    args = parser.parse_args()
    if args.steps < CHECK_STEP - 1:
        parser.error(f"--steps must be at least {CHECK_STEP - 1} (the check is after step {CHECK_STEP}).")
    return args


def _batches(source: Any, batch_size: int, seed: int, count: int) -> list[dict[str, np.ndarray]]:
    """The first `count` batches the trainer would draw for run seed `seed` (its shuffle, its order)."""
    stream = TrainBatches(source, batch_size, seed=seed)
    try:
        return [{k: np.asarray(v) for k, v in next(stream).items()} for _ in range(count)]
    finally:
        stream.close()


def _run(forms: list[tuple[Callable[[int], None], Callable[[], Any]]], total: int) -> list[tuple[list, Any]]:
    """Steps 1..total of each form, interleaved step by step so that both see the same background load;
    step 1 compiles and is not timed. Returns, per form, (seconds of steps 2..total, state after
    CHECK_STEP).

    A form is (`step_all(i)`: dispatch step i of every seed and block until all are done, `snapshot()`)."""
    results: list[tuple[list, Any]] = [([], None) for _ in forms]
    for i in range(total):
        for f, (step_all, snapshot) in enumerate(forms):
            start = time.perf_counter()
            step_all(i)
            if i:
                results[f][0].append(time.perf_counter() - start)
            if i + 1 == CHECK_STEP:  # a host copy: the sequential step donates its input state
                results[f] = (results[f][0], snapshot())
    return results


def _bench_preset(preset: str, seeds: list[int], steps: int) -> list[dict[str, Any]]:
    config = load_config_file(os.path.join(ROOT, "configs", "genomic.py"), CONFIG_ARG.format(preset=preset))
    parts = setup(config)
    config = parts["config"]
    model, tx, mesh, rules = parts["model"], parts["tx"], parts["mesh"], parts["rules"]
    # The trainer's step, exactly as `train` builds it; vmapping it keeps both forms the same math.
    step = make_train_step(
        model,
        tx,
        LOSSES[config.task],
        parts["state_shardings"],
        parts["batch_shardings"],
        tbptt_length=config.tbptt_length,
        tbptt_updates=config.tbptt_updates,
        max_param_abs=config.max_param_abs,
    )
    total = steps + 1
    k_max = max(seeds)
    # Seed k: the state and batch stream of a run with config.seed = k. Kept on the host, so every form
    # starts from a fresh copy (the sequential step donates its input).
    init_states: list[TrainState] = []
    for seed in range(k_max):
        state, shardings = init_train_state(model, tx, parts["example"], mesh, rules, seed=seed)
        init_states.append(jax.device_get(state))
    data = [_batches(parts["sources"]["train"], config.batch_size, seed, total) for seed in range(k_max)]
    tokens = config.batch_size * parts["tokens_per_example"]
    vmapped_step: Step = jax.jit(jax.vmap(step))
    rows = []
    for k in seeds:
        # Sequential: K states, the ordinary jitted step for each, one after another.
        states = [jax.device_put(s, shardings) for s in init_states[:k]]
        batch_sharding = parts["batch_shardings"]
        device_batches = [[jax.device_put(b, batch_sharding) for b in data[s]] for s in range(k)]

        def sequential(i: int, states: list[Any] = states, device_batches: list = device_batches) -> None:
            outputs = []
            for s in range(len(states)):
                states[s], metrics = step(states[s], device_batches[s][i])
                outputs.append(metrics)
            jax.block_until_ready((states, outputs))

        # Vmapped: the K states and the K batches of each step stacked on a new leading axis.
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *init_states[:k])
        stacked_batches = [
            jax.tree.map(lambda *xs: jnp.stack(xs), *[data[s][i] for s in range(k)]) for i in range(total)
        ]
        holder = [stacked]

        def vmapped(i: int, holder: list[Any] = holder, stacked_batches: list = stacked_batches) -> None:
            holder[0], metrics = vmapped_step(holder[0], stacked_batches[i])
            jax.block_until_ready((holder[0], metrics))

        (seq_times, seq_checked), (vmap_times, vmap_checked) = _run(
            [
                (sequential, lambda states=states: jax.device_get(states)),
                (vmapped, lambda holder=holder: jax.device_get(holder[0])),
            ],
            total,
        )

        # Same thing computed: seed s of the stacked state equals sequential state s after CHECK_STEP.
        worst = 0.0
        # Every seed must really have updated CHECK_STEP times (the step skips non-finite updates).
        same = all(int(st.step) == CHECK_STEP for st in seq_checked)
        same &= bool(np.all(np.asarray(vmap_checked.step) == CHECK_STEP))
        for s in range(k):
            for a, b in zip(
                jax.tree.leaves(seq_checked[s]),
                jax.tree.leaves(jax.tree.map(lambda x, s=s: x[s], vmap_checked)),
                strict=True,
            ):
                a, b = np.asarray(a), np.asarray(b)
                same &= bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))
                if a.size and np.issubdtype(a.dtype, np.floating):
                    worst = max(worst, float(np.max(np.abs(a - b))))
        seq_s, vmap_s = statistics.median(seq_times), statistics.median(vmap_times)
        row = {
            "preset": preset,
            "k": k,
            "seq_s": seq_s,
            "vmap_s": vmap_s,
            "ratio": seq_s / vmap_s,
            "seq_tps": k * tokens / seq_s,
            "vmap_tps": k * tokens / vmap_s,
            "same": same,
            "worst": worst,
        }
        print(
            f"{preset} K={k}: sequential {seq_s:.3f} s, vmapped {vmap_s:.3f} s, ratio {row['ratio']:.2f}; "
            f"states after step {CHECK_STEP} equal: {same} (max |diff| {worst:.2e})",
            flush=True,
        )
        rows.append(row)
    return rows


def _cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (Linux), else the platform's machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    backend = jax.default_backend()
    lines = [
        f"# Seeds in one program: sequential vs `jax.vmap` train steps ({backend})",
        "",
        f"`{command}`",
        "",
        f"Machine: {_cpu_name()}, `nproc` = {os.cpu_count()}; jax {jax.__version__}; "
        f"{datetime.date.today().isoformat()}.",
        "",
        f"Models: `configs/genomic.py:<preset>,task=species,length=1024` (CPU size: d_model 64, 2 layers, "
        f"batch 8 x 1024 bp, AdamW, the config's MLP width, not the main job's parameter-matched one). "
        f"Batches: real species windows of the embedded sample, each seed its own shuffled stream. "
        f"Sequential: K train states stepped one after another by the trainer's jitted step "
        f"(`make_train_step`); vmapped: the K states stacked and stepped by one `jax.jit(jax.vmap(step))` "
        f"of the same step, each seed on its own batch. Seconds per step of all K seeds: median of "
        f"{args.steps} steps after the compiling one. Ratio = sequential / vmapped (> 1: vmap pays). "
        f"Same: the vmapped states equal the sequential ones after {CHECK_STEP} steps "
        f"(allclose, rtol {RTOL:g}, atol {ATOL:g}; max |diff| over all leaves).",
        "",
        "| model | K | sequential s/step | vmapped s/step | ratio | sequential tokens/s | vmapped tokens/s "
        "| same (max abs diff) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['k']} | {r['seq_s']:.3f} | {r['vmap_s']:.3f} | {r['ratio']:.2f} "
            f"| {r['seq_tps']:,.0f} | {r['vmap_tps']:,.0f} | {'yes' if r['same'] else 'NO'} "
            f"({r['worst']:.1e}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    args = _parse()
    presets = [p for p in args.presets.split(",") if p]
    seeds = sorted({int(k) for k in args.seeds.split(",") if k})
    command = (
        f"PYTHONPATH=. python benchmarks/seed_vmap.py --presets={','.join(presets)} "
        f"--seeds={','.join(map(str, seeds))} --steps={args.steps}"
    )
    rows = []
    for preset in presets:
        rows += _bench_preset(preset, seeds, args.steps)
    text = _markdown(rows, args, command)
    print(text)
    out = os.path.join(ROOT, args.out.format(platform=jax.default_backend()))
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
