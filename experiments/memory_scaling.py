"""Experiment: do recurrent models keep memory linear in the sequence length, and do transformers not?

For each model variant of the document language-modeling task (`configs/documents.py`: byte-level, the
task's real model and optimizer), at batch 1 and each length L, this records three numbers per device:

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

    python experiments/memory_scaling.py                                  # the default sweep, ~15 min on CPU
    python experiments/memory_scaling.py --variants=lstm,attention --lengths=1024,2048,4096
    python experiments/memory_scaling.py --size=accelerator              # d_model 256, 6 layers

A variant is a preset of `seqjax.config.PRESETS` with optional `:key=value` overrides: `tbptt=N` trains by
truncated BPTT over N-token chunks, and `method=naive` makes exact attention materialise its [L, L]
scores (the textbook form), for contrast with the blockwise default. Results go to
`experiments/results/memory_scaling_{size}_{platform}.md` and a JSON file beside it.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import sys
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
from seqjax.train import mesh as mesh_lib
from seqjax.train.optimizer import make_optimizer
from seqjax.train.state import state_shardings
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
    "out", "experiments/results/memory_scaling_{size}_{platform}", "Output path without extension."
)

GIB = 2**30
OVERRIDES = ("tbptt", "method")


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
        config.tbptt_length = int(options["tbptt"])
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
def measure(variant: str, length: int) -> dict[str, Any]:
    config = variant_config(variant, length)
    batch = FLAGS.batch
    mesh = mesh_lib.make_mesh(tuple(config.mesh.shape), tuple(config.mesh.axes), devices=jax.devices()[:1])
    rules = mesh_lib.rules_from_config(config.logical_rules, mesh)
    example = {
        "inputs": np.zeros(length, np.int32),
        "targets": np.zeros(length, np.int32),
        "weights": np.ones(length, np.float32),
        "resets": np.zeros(length, bool),
        "mask": np.ones(length, bool),
    }
    model = models.build_task_model(config.task, config.model, config.head)
    tx = make_optimizer(config.optimizer.to_dict(), models.param_groups(model))
    inputs = np.zeros((batch, length), np.int32)
    abstract, shardings = state_shardings(model, tx, (inputs,), mesh, rules)
    spec = mesh_lib.spec_for(("batch", "length"), rules)
    batch_sharding = {k: NamedSharding(mesh, spec) for k in example}
    abstract_batch = {
        k: jax.ShapeDtypeStruct((batch, length), v.dtype, sharding=batch_sharding[k])
        for k, v in example.items()
    }
    row: dict[str, Any] = {"variant": variant, "length": length}
    start = time.perf_counter()
    train_step = make_train_step(
        model, tx, LOSSES[config.task], shardings, batch_sharding, tbptt_length=config.get("tbptt_length")
    )
    row["train_bytes"] = plan_bytes(train_step.lower(abstract, abstract_batch).compile())

    def infer(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        return forward(model, params, batch, deterministic=True, rng=None)

    row["forward_bytes"] = plan_bytes(jax.jit(infer).lower(abstract.params, abstract_batch).compile())
    row["compile_s"] = time.perf_counter() - start
    cache = jax.eval_shape(lambda: model.initial_cache((batch,)))
    row["state_bytes"] = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(cache))
    row["param_count"] = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    return row


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


def markdown(results: dict[str, Any]) -> str:
    rows, variants = results["rows"], results["variants"]
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
        "# Does training memory grow linearly with the sequence length?",
        "",
        f"- date: {results['date']}; jax {results['jax']}; platform {results['platform']}",
        f"- command: `{results['command']}`",
        f"- task: document LM (`configs/documents.py`, bytes), size `{results['size']}`, batch "
        f"{results['batch']}, float32, one device; XLA memory plans (arguments + outputs + temporaries), "
        "nothing run",
        "",
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
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    del argv
    lengths = sorted(int(n) for n in FLAGS.lengths)
    for variant in FLAGS.variants:
        variant_config(variant, lengths[0])  # refuse a bad variant before compiling anything
    platform = jax.default_backend()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jax": jax.__version__,
        "platform": platform,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "size": FLAGS.size,
        "batch": FLAGS.batch,
        "variants": list(FLAGS.variants),
        "rows": [],
    }
    out = Path(FLAGS.out.format(size=FLAGS.size, platform=platform))
    out.parent.mkdir(parents=True, exist_ok=True)
    for variant in FLAGS.variants:
        too_big = False
        for length in lengths:
            if too_big:
                results["rows"].append({"variant": variant, "length": length, "skipped": "skipped"})
                continue
            row = measure(variant, length)
            results["rows"].append(row)
            too_big = row["train_bytes"] > FLAGS.max_gib * GIB
            print(
                f"{variant:>24} L={length:>7}: train {_fmt_bytes(row['train_bytes'])}, forward "
                f"{_fmt_bytes(row['forward_bytes'])}, state {_fmt_bytes(row['state_bytes'])} "
                f"({row['compile_s']:.1f} s to compile)",
                flush=True,
            )
            # Rewritten after every row, so an interrupted sweep keeps what it measured.
            out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
            out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    os.chdir(ROOT)
    app.run(main)
