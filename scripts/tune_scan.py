"""Time every `linear_recurrence` backend on this machine and write the table `method="auto"` reads.

Each point is one forward + backward pass (the gradient of `sum(hs**2)` with respect to `a` and `b`) of a
[batch, length, state] float32 recurrence inside `jax.jit`: the median of at least --repeats runs after
a warm-up, and of more runs for short points.
The backends alternate within each repeat, so a burst of load from elsewhere hits all of them alike.

    python scripts/tune_scan.py                                    # the shipped table for this platform
    python scripts/tune_scan.py --out=/tmp/t.json --lengths=256,4096
    SEQJAX_SCAN_TUNING=/tmp/t.json python scripts/train.py ...     # use a table without shipping it

The default --out is seqjax/scan/tables/linear_recurrence_{platform}.json; the markdown summary goes
to --markdown (default benchmarks/scan_tuning_{platform}.md). A point whose XLA memory plan exceeds
--max_gib, or which fails to compile, is recorded as null for that backend.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from seqjax.scan import linear_recurrence
from seqjax.scan.tuning import BACKENDS, table_from_dict

FLAGS = flags.FLAGS
flags.DEFINE_list("lengths", ["64", "256", "1024", "4096", "16384"], "Sequence lengths.")
flags.DEFINE_list(
    "state_elems", ["1024", "16384", "131072"], "Elements of one step's state, batch included (B·C·N)."
)
flags.DEFINE_integer("batch", 8, "Leading batch axis (state_elems is split as batch × rest).")
flags.DEFINE_list("methods", list(BACKENDS), "Backends to time.")
flags.DEFINE_integer("repeats", 3, "Timed runs per backend and point after one warm-up (at least).")
flags.DEFINE_float(
    "min_seconds", 0.5, "Short points are repeated (up to 200 runs) until each backend has run this long."
)
flags.DEFINE_float("max_gib", 12.0, "Points whose XLA memory plan exceeds this are not run.")
flags.DEFINE_integer("chunk_size", 64, "chunk_size of the chunked backend.")
flags.DEFINE_string(
    "out", "seqjax/scan/tables/linear_recurrence_{platform}.json", "JSON table; {platform} is filled in."
)
flags.DEFINE_string("markdown", "benchmarks/scan_tuning_{platform}.md", "Markdown summary ('' for none).")

GIB = 2**30


def _compile(
    method: str, length: int, state_elems: int
) -> tuple[Any, tuple[jax.Array, jax.Array], int | None]:
    rest = max(state_elems // FLAGS.batch, 1)
    shape = (FLAGS.batch, length, rest)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.uniform(key_a, shape, jnp.float32, 0.5, 1.0)
    b = jax.random.normal(key_b, shape, jnp.float32)

    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        hs, _ = linear_recurrence(a, b, axis=1, method=method, chunk_size=FLAGS.chunk_size)
        return jnp.sum(hs**2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(a, b).compile()
    try:
        stats = compiled.memory_analysis()
        peak = int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes)
    except Exception:  # some backends have no memory analysis
        peak = None
    return compiled, (a, b), peak


def _point(length: int, state_elems: int) -> dict[str, Any]:
    runners, seconds, peaks, warmups = {}, {}, {}, {}
    for method in FLAGS.methods:
        try:
            compiled, args, peak = _compile(method, length, state_elems)
        except Exception as err:  # a failed backend is a measurement, not a crash
            print(f"  {method}: compile failed ({type(err).__name__}: {str(err)[:120]})", flush=True)
            seconds[method] = None
            continue
        peaks[method] = peak
        if peak is not None and peak > FLAGS.max_gib * GIB:
            print(
                f"  {method}: XLA plans {peak / GIB:.1f} GiB > --max_gib={FLAGS.max_gib}; skipped", flush=True
            )
            seconds[method] = None
            continue
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))  # warm-up
        runners[method] = (compiled, args)
        warmups[method] = time.perf_counter() - start
    # Millisecond points need many runs for a stable median; the quickest backend sets the count.
    quickest = min(warmups.values(), default=1.0)
    repeats = max(FLAGS.repeats, min(200, math.ceil(FLAGS.min_seconds / max(quickest, 1e-6))))
    times: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(repeats):
        for method, (compiled, args) in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[method].append(time.perf_counter() - start)
    for method, ts in times.items():
        seconds[method] = statistics.median(ts)
    return {
        "length": length,
        "state_elems": state_elems,
        "seconds": seconds,
        "runs": repeats,
        "xla_peak_bytes": peaks,
    }


def _markdown(table: dict[str, Any]) -> str:
    methods = list(FLAGS.methods)
    lines = [
        f"# `linear_recurrence` backends on {table['platform']} ({table['device_kind']})",
        "",
        f"- date: {table['date']}; jax {table['jax']}; float32; chunk_size {FLAGS.chunk_size}",
        f"- command: `{table['command']}`",
        "- forward + backward (gradient of `sum(hs**2)` w.r.t. `a` and `b`); median of the `runs` column "
        f"(at least {FLAGS.repeats}, until each backend ran {FLAGS.min_seconds} s), backends interleaved",
        "- `auto` picks the fastest backend of the measured point nearest the call (log length, log state)",
        f"- n/a: not run, because its XLA memory plan exceeded --max_gib={FLAGS.max_gib:g} or it failed "
        "to compile",
        "",
        "| length | state elems | runs | "
        + " | ".join(f"{m} s" for m in methods)
        + " | fastest | slowest/fastest |",
        "|---:|---:|---:|" + "---:|" * len(methods) + "---|---:|",
    ]
    for row in table["measurements"]:
        timed = {m: s for m, s in row["seconds"].items() if s is not None}
        cells = [
            f"{row['seconds'].get(m):.4f}" if row["seconds"].get(m) is not None else "n/a" for m in methods
        ]
        fastest = min(timed, key=timed.get) if timed else "n/a"
        ratio = f"{max(timed.values()) / min(timed.values()):.2f}" if timed else "n/a"
        lines.append(
            f"| {row['length']} | {row['state_elems']} | {row['runs']} | "
            + " | ".join(cells)
            + f" | {fastest} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    unknown = sorted(set(FLAGS.methods) - set(BACKENDS))
    if unknown:
        raise app.UsageError(f"--methods: unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}.")
    platform = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    table: dict[str, Any] = {
        "kind": "linear_recurrence",
        "platform": platform,
        "device_kind": device_kind,
        "jax": jax.__version__,
        "dtype": "float32",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "measurements": [],
    }
    out = Path(FLAGS.out.format(platform=platform))
    for length in map(int, FLAGS.lengths):
        for state_elems in map(int, FLAGS.state_elems):
            print(f"length {length}, state {state_elems}", flush=True)
            row = _point(length, state_elems)
            print(
                "  " + ", ".join(f"{m} {s:.4f}s" if s else f"{m} n/a" for m, s in row["seconds"].items()),
                flush=True,
            )
            table["measurements"].append(row)
    table_from_dict(table, str(out))  # the table auto will read must validate before it replaces anything
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    if FLAGS.markdown:
        md = Path(FLAGS.markdown.format(platform=platform))
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(_markdown(table))
        print(f"wrote {md}")


if __name__ == "__main__":
    app.run(main)
