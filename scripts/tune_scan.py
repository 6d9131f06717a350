"""Time every backend of a scan engine on this machine and write the table `method="auto"` reads.

Two engines (--kinds):
- `linear_recurrence`: each point is one forward + backward pass (the gradient of `sum(hs**2)` with
  respect to `a` and `b`) of a [batch, length, state] float32 diagonal recurrence;
- `selective_scan`: each point is one forward + backward pass (the gradient of `sum(y**2)` with respect
  to x, Δ, A, B and C) of Mamba's chunked selective scan with x, Δ [batch, length, D], B, C
  [batch, length, N] and N = --state_size, D = state_elems / (batch · N).

Each is timed inside `jax.jit`: the median of at least --repeats runs after a warm-up, and of more runs
for short points. The backends alternate within each repeat, so a burst of load from elsewhere hits all
of them alike.

    python scripts/tune_scan.py                                    # the shipped tables for this platform
    python scripts/tune_scan.py --kinds=selective_scan --out=/tmp/t.json --lengths=256,4096
    SEQJAX_SCAN_TUNING=/tmp/t.json python scripts/train.py ...     # use a table without shipping it

The default --out is seqjax/scan/tables/{kind}_{platform}.json; the markdown summary goes to --markdown
(default benchmarks/{kind}_tuning_{platform}.md). A point whose XLA memory plan exceeds --max_gib, or which
fails to compile, is recorded as null for that backend.
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

from seqjax.common.xla import plan_bytes
from seqjax.scan import linear_recurrence
from seqjax.scan.selective import selective_scan
from seqjax.scan.tuning import BACKENDS_BY_KIND, table_from_dict

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", list(BACKENDS_BY_KIND), "Engines to tune: linear_recurrence, selective_scan.")
flags.DEFINE_list("lengths", ["64", "256", "1024", "4096", "16384"], "Sequence lengths.")
flags.DEFINE_list(
    "state_elems",
    None,
    "Elements of one step's state, batch included (B·C·N). Default: 1024,16384,131072 for "
    "linear_recurrence; 16384,131072 for selective_scan.",
)
flags.DEFINE_integer("batch", 8, "Leading batch axis (state_elems is split as batch × rest).")
flags.DEFINE_integer("state_size", 16, "selective_scan: the SSM state size N (D = state_elems / (batch·N)).")
flags.DEFINE_list("methods", None, "Backends to time (default: all of the kind's).")
flags.DEFINE_integer("repeats", 3, "Timed runs per backend and point after one warm-up (at least).")
flags.DEFINE_float(
    "min_seconds", 0.5, "Short points are repeated (up to 200 runs) until each backend has run this long."
)
flags.DEFINE_float("max_gib", 12.0, "Points whose XLA memory plan exceeds this are not run.")
flags.DEFINE_integer(
    "chunk_size",
    None,
    "chunk_size of the chunked backends (default: each backend's own, e.g. 64 tokens, or 8 for the "
    "selective scan's remat_unrolled).",
)
flags.DEFINE_string(
    "out", "seqjax/scan/tables/{kind}_{platform}.json", "JSON table; {kind} and {platform} are filled in."
)
flags.DEFINE_string("markdown", "benchmarks/{kind}_tuning_{platform}.md", "Markdown summary ('' for none).")

GIB = 2**30
DEFAULT_STATE_ELEMS = {
    "linear_recurrence": ["1024", "16384", "131072"],
    # 1M elements compiled for over 100 s at length 1024 on an H200 (2026-11-30): left out by default.
    "selective_scan": ["16384", "131072"],
}


def _chunk_kwargs() -> dict[str, int]:
    return {} if FLAGS.chunk_size is None else {"chunk_size": FLAGS.chunk_size}


def _linear_recurrence_program(method: str, length: int, state_elems: int) -> tuple[Any, tuple]:
    rest = max(state_elems // FLAGS.batch, 1)
    shape = (FLAGS.batch, length, rest)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.uniform(key_a, shape, jnp.float32, 0.5, 1.0)
    b = jax.random.normal(key_b, shape, jnp.float32)

    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        hs, _ = linear_recurrence(a, b, axis=1, method=method, **_chunk_kwargs())
        return jnp.sum(hs**2)

    return jax.grad(loss, argnums=(0, 1)), (a, b)


def _selective_scan_program(method: str, length: int, state_elems: int) -> tuple[Any, tuple]:
    n = FLAGS.state_size
    d = max(state_elems // (FLAGS.batch * n), 1)
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (FLAGS.batch, length, d), jnp.float32)
    dt = jax.nn.softplus(jax.random.normal(keys[1], (FLAGS.batch, length, d), jnp.float32) - 4)
    a_mat = -jnp.exp(jax.random.normal(keys[2], (d, n), jnp.float32))
    b = jax.random.normal(keys[3], (FLAGS.batch, length, n), jnp.float32)
    c = jax.random.normal(keys[4], (FLAGS.batch, length, n), jnp.float32)

    def loss(*args: jax.Array) -> jax.Array:
        y, _ = selective_scan(*args, method=method, **_chunk_kwargs())
        return jnp.sum(y**2)

    return jax.grad(loss, argnums=range(5)), (x, dt, a_mat, b, c)


PROGRAMS = {"linear_recurrence": _linear_recurrence_program, "selective_scan": _selective_scan_program}


def _compile(kind: str, method: str, length: int, state_elems: int) -> tuple[Any, tuple, int | None]:
    fn, args = PROGRAMS[kind](method, length, state_elems)
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, args, plan_bytes(compiled)


def _point(kind: str, methods: list[str], length: int, state_elems: int) -> dict[str, Any]:
    runners, seconds, peaks, warmups = {}, {}, {}, {}
    for method in methods:
        try:
            compiled, args, peak = _compile(kind, method, length, state_elems)
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


WORKLOAD = {
    "linear_recurrence": "gradient of `sum(hs**2)` w.r.t. `a` and `b`",
    "selective_scan": "gradient of `sum(y**2)` w.r.t. x, Δ, A, B, C; N = {n}, D = state elems / (batch·N)",
}


def _markdown(table: dict[str, Any], methods: list[str]) -> str:
    kind = table["kind"]
    lines = [
        f"# `{kind}` backends on {table['platform']} ({table['device_kind']})",
        "",
        f"- date: {table['date']}; jax {table['jax']}; float32; "
        f"chunk_size {FLAGS.chunk_size or 'each backend default'}; "
        f"batch {FLAGS.batch}",
        f"- command: `{table['command']}`",
        f"- forward + backward ({WORKLOAD[kind].format(n=FLAGS.state_size)}); median of the `runs` column "
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
    unknown = sorted(set(FLAGS.kinds) - set(BACKENDS_BY_KIND))
    if unknown:
        raise app.UsageError(f"--kinds: unknown {unknown}; choose from {', '.join(BACKENDS_BY_KIND)}.")
    if FLAGS.methods and len(FLAGS.kinds) > 1:
        raise app.UsageError("--methods names one engine's backends: give one --kinds with it.")
    for kind in FLAGS.kinds:
        methods = list(FLAGS.methods or BACKENDS_BY_KIND[kind])
        unknown = sorted(set(methods) - set(BACKENDS_BY_KIND[kind]))
        if unknown:
            raise app.UsageError(
                f"--methods: unknown {kind} backend(s) {unknown}; choose from "
                f"{', '.join(BACKENDS_BY_KIND[kind])}."
            )
        _tune(kind, methods)


def _write(table: dict[str, Any], out: Path) -> None:
    """Validates the table (as `auto` will read it), then replaces `out` atomically."""
    table_from_dict(table, str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, out)


def _tune(kind: str, methods: list[str]) -> None:
    platform = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    table: dict[str, Any] = {
        "kind": kind,
        "platform": platform,
        "device_kind": device_kind,
        "jax": jax.__version__,
        "dtype": "float32",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "measurements": [],
    }
    out = Path(FLAGS.out.format(kind=kind, platform=platform))
    md = Path(FLAGS.markdown.format(kind=kind, platform=platform)) if FLAGS.markdown else None
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
    for length in map(int, FLAGS.lengths):
        for state_elems in map(int, FLAGS.state_elems or DEFAULT_STATE_ELEMS[kind]):
            print(f"{kind}: length {length}, state {state_elems}", flush=True)
            row = _point(kind, methods, length, state_elems)
            print(
                "  " + ", ".join(f"{m} {s:.4f}s" if s else f"{m} n/a" for m, s in row["seconds"].items()),
                flush=True,
            )
            table["measurements"].append(row)
            # After every point, so a run stopped at a time limit keeps what it measured.
            _write(table, out)
            if md is not None:
                md.write_text(_markdown(table, methods))
    print(f"wrote {out}" + (f" and {md}" if md is not None else ""))


if __name__ == "__main__":
    app.run(main)
