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
    python scripts/tune_scan.py --kinds=selective_scan --merge --batch=1 --lengths=65536 \
        --state_elems=4096 --note="experiments paused"            # add points to the shipped table

With --merge the new points join the table already at --out (same engine, platform and device kind):
a point measured again at the same length, state size and batch replaces the old one, the others stay,
and each row keeps the batch, date and command that measured it, so a table can be built up across
runs (a device's time limit, a size the first run did not cover).

The default --out is seqjax/scan/tables/{kind}_{platform}.json; the markdown summary goes to --markdown
(default benchmarks/{kind}_tuning_{platform}.md). A point whose XLA memory plan exceeds --max_gib, or which
fails to compile, is recorded as null for that backend.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

from seqjax.common.cli import command_without
from seqjax.common.machine import describe_machine
from seqjax.common.xla import plan_bytes
from seqjax.scan import linear_recurrence
from seqjax.scan.selective import selective_scan
from seqjax.scan.tuning import BACKENDS_BY_KIND, DEFAULT_KIND, table_from_dict

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
flags.DEFINE_bool(
    "merge",
    False,
    "Add the points to the table at --out (same kind, platform and device kind) instead of replacing it; "
    "a point measured again (same length, state_elems and batch) replaces its old row.",
)
flags.DEFINE_string(
    "note", "", "Conditions of this run (load, what was paused), kept in the table and its markdown."
)

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
        "batch": FLAGS.batch,
        "seconds": seconds,
        "runs": repeats,
        "xla_peak_bytes": peaks,
    }


WORKLOAD = {
    "linear_recurrence": "gradient of `sum(hs**2)` w.r.t. `a` and `b`",
    "selective_scan": (
        "gradient of `sum(y**2)` w.r.t. x, Δ, A, B, C; N of the run, D = state elems / (batch·N)"
    ),
}


def _markdown(table: dict[str, Any]) -> str:
    kind = table["kind"]
    timed_methods = {m for row in table["measurements"] for m in row["seconds"]}
    methods = [m for m in BACKENDS_BY_KIND[kind] if m in timed_methods]
    runs = table["commands"]
    several = len(runs) > 1
    lines = [
        f"# `{kind}` backends on {table['platform']} ({table['device_kind']})",
        "",
        f"- forward + backward ({WORKLOAD[kind]}), float32; median of the `runs` column (at least --repeats, "
        "until each backend ran --min_seconds), backends interleaved",
        "- `auto` picks the fastest backend of the measured point nearest the call (log length, log state)",
        "- n/a: not run, because its XLA memory plan exceeded --max_gib or it failed to compile",
    ]
    for i, run in enumerate(runs, 1):
        label = f"run {i}" if several else "run"
        details = [run["date"], run.get("machine"), f"jax {run['jax']}" if run.get("jax") else None]
        if run.get("state_size") is not None and kind == "selective_scan":
            details.append(f"N = {run['state_size']}")
        if "chunk_size" in run:
            details.append(f"chunk_size {run['chunk_size'] or 'each backend default'}")
        lines.append(f"- {label} ({'; '.join(d for d in details if d)}): `{run['command']}`")
        if run.get("note"):
            lines.append(f"  - {run['note']}")
    lines += [
        "",
        "| length | state elems | batch | runs | "
        + " | ".join(f"{m} s" for m in methods)
        + " | fastest | slowest/fastest |"
        + (" run |" if several else ""),
        "|---:|---:|---:|---:|" + "---:|" * len(methods) + "---|---:|" + ("---:|" if several else ""),
    ]
    for row in table["measurements"]:
        timed = {m: s for m, s in row["seconds"].items() if s is not None}
        cells = [
            f"{row['seconds'].get(m):.4f}" if row["seconds"].get(m) is not None else "n/a" for m in methods
        ]
        fastest = min(timed, key=timed.get) if timed else "n/a"
        ratio = f"{max(timed.values()) / min(timed.values()):.2f}" if timed else "n/a"
        lines.append(
            f"| {row['length']} | {row['state_elems']} | {row['batch']} | {row.get('runs') or ''} | "
            + " | ".join(cells)
            + f" | {fastest} | {ratio} |"
            + (f" {row['command'] + 1} |" if several else "")
        )
    return "\n".join(lines) + "\n"


def _with_provenance(table: dict[str, Any]) -> dict[str, Any]:
    """A table written before rows named their batch and run: each command becomes an entry of
    `commands` (the table's own, or each command a hand-assembled table's rows name), each row its index
    and the batch its command gave (--batch, default 8 then as now)."""
    if "commands" in table:
        return table
    commands: list[str] = []
    rows = []
    for row in table["measurements"]:
        command = row.get("command")
        command = command if isinstance(command, str) else table.get("command", "unknown")
        if command not in commands:
            commands.append(command)
        match = re.search(r"--batch[= ](\d+)", command)
        rows.append({**row, "batch": int(match.group(1)) if match else 8, "command": commands.index(command)})
    runs = [{"date": table.get("date", "unknown"), "command": command} for command in commands]
    for run in runs:
        if table.get("jax"):
            run["jax"] = table["jax"]
    return {**table, "commands": runs, "measurements": rows}


def _timed(row: dict[str, Any]) -> set[str]:
    return {m for m, seconds in row["seconds"].items() if seconds is not None}


def _merged(old: dict[str, Any], new: dict[str, Any], source: Path) -> dict[str, Any]:
    """`old` with `new`'s run added: its points replace old ones at the same (length, state, batch),
    unless the new point timed fewer backends (--methods, a lower --max_gib, a failed compile): a row
    compares backends timed together, so then the old row stays whole."""
    old = {**old, "kind": old.get("kind", DEFAULT_KIND)}  # a table without `kind` is a linear_recurrence one
    for field in ("kind", "platform", "device_kind"):
        if old.get(field) != new[field]:
            raise app.UsageError(
                f"--merge: {source} is a table for {field} {old.get(field)!r}, this run measures "
                f"{new[field]!r}; give another --out, or drop --merge to replace it."
            )
    old = _with_provenance(old)
    (run,) = new["commands"]
    for field in ("chunk_size", "state_size"):  # what makes a point the same program
        recorded = {r[field] for r in old["commands"] if field in r}
        if recorded and recorded != {run[field]}:
            raise app.UsageError(
                f"--merge: {source} was measured with {field} {sorted(recorded, key=str)}, this run with "
                f"{run[field]!r}; give --{field}={next(iter(recorded))} (None: leave it out), another "
                "--out, or drop --merge to start a table."
            )
    offset = len(old["commands"])
    rows = {(r["length"], r["state_elems"], r["batch"]): r for r in old["measurements"]}
    for row in new["measurements"]:
        key = (row["length"], row["state_elems"], row["batch"])
        if key not in rows or _timed(rows[key]) <= _timed(row):
            rows[key] = {**row, "command": row["command"] + offset}
    measurements = [rows[key] for key in sorted(rows)]
    latest = {"date": run["date"], "command": run["command"], "jax": run["jax"]}
    return {**old, **latest, "commands": old["commands"] + new["commands"], "measurements": measurements}


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
    out = Path(FLAGS.out.format(kind=kind, platform=platform))
    md = Path(FLAGS.markdown.format(kind=kind, platform=platform)) if FLAGS.markdown else None
    old = None
    if FLAGS.merge and out.exists():
        table_from_dict(json.loads(out.read_text()), str(out))  # a broken table is refused before any timing
        old = json.loads(out.read_text())
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    # The note is kept on its own (below), not twice.
    argv = command_without(sys.argv, "note")
    command = " ".join(["python", *map(shlex.quote, argv)])
    run: dict[str, Any] = {
        "date": date,
        "command": command,
        "machine": describe_machine(platform),
        "jax": jax.__version__,
        "chunk_size": FLAGS.chunk_size,
        "state_size": FLAGS.state_size if kind == "selective_scan" else None,
    }
    if FLAGS.note:
        run["note"] = FLAGS.note
    this_run: dict[str, Any] = {
        "kind": kind,
        "platform": platform,
        "device_kind": device_kind,
        "jax": jax.__version__,
        "dtype": "float32",
        "date": date,
        "command": command,
        "commands": [run],
        "measurements": [],
    }
    if old is not None:
        _merged(old, this_run, out)  # a mismatched table is refused before any timing
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
    for length in map(int, FLAGS.lengths):
        for state_elems in map(int, FLAGS.state_elems or DEFAULT_STATE_ELEMS[kind]):
            print(f"{kind}: length {length}, state {state_elems}, batch {FLAGS.batch}", flush=True)
            row = _point(kind, methods, length, state_elems)
            print(
                "  " + ", ".join(f"{m} {s:.4f}s" if s else f"{m} n/a" for m, s in row["seconds"].items()),
                flush=True,
            )
            this_run["measurements"].append({**row, "command": 0})
            table = this_run if old is None else _merged(old, this_run, out)
            # After every point, so a run stopped at a time limit keeps what it measured.
            _write(table, out)
            if md is not None:
                md.write_text(_markdown(table))
    print(f"wrote {out}" + (f" and {md}" if md is not None else ""))


if __name__ == "__main__":
    app.run(main)
