"""Sequence parallelism (issue 21): per-device memory, step time and communication against length, with
the time axis split over 1, 2, 4 and 8 devices.

Every measurement is one training step of an engine alone: the gradient of `sum(y**2)` with respect to all
its inputs, in one `jax.jit`, float32, batch 1, the inputs placed split along time on a
`jax.make_mesh((n,), ("sequence",))`. One shard is the single-device engine itself.

- `mamba`: `selective_scan` (d_inner = --mamba_inner, N = --mamba_state, chunks of 64, remat_sequential)
  against `sequence_parallel_selective_scan`.
- `gla`: the matrix-state recurrence with one decay per head (`linear_attention`, chunked, --heads heads
  of d_k = d_v = --head_dim) against `sequence_parallel_linear_attention`; `gla_channel`: the same with
  one decay per key channel (GLA's own form).
- `diagonal`: `linear_recurrence` (real decays, a state of --state per token) against
  `sequence_parallel_linear_recurrence`.
- `mlstm`: xLSTM's mLSTM (`mlstm`, chunked, --heads heads of d_k = d_v = --head_dim, input and forget
  gates per head) against `sequence_parallel_mlstm`.
- `attention_ring`, `attention_all_gather`: causal exact attention (`attention`, blockwise, --heads
  heads of --head_dim) against `sequence_parallel_attention` with strategy "ring" or "all_gather"
  (causal load balancing on); `attention_ring_unbalanced` without the balancing.
- `swa_halo`, `swa_all_gather`: causal sliding-window attention (window --window) against
  `sequence_parallel_attention` with strategy "halo" or "all_gather".
- `xl_ring`: Transformer-XL attention, its memory of --memory cached keys and values before the sequence
  as a prefix of every shard's keys, with strategy "ring".

The markdown file keeps the sections of engines this run does not measure (each section states when
and how it was measured), so engines can be (re)measured separately.

Columns: XLA's memory plan of the per-device program (arguments + outputs + temporaries,
`seqjax.common.xla.plan_bytes`); the bytes every device's collectives produce per step, read from the
compiled HLO (the result shapes of all-gather, all-reduce, reduce-scatter, collective-permute and
all-to-all; an all-gather's result includes the device's own part); the median step time over
--repeats runs after one warm-up. Lengths above --time_max are compiled only (memory and bytes, no
time).

On the CPU the devices are fake (`--xla_force_host_platform_device_count`): all of them share the
machine's cores, so step times measure the total work, not a parallel speed-up. Memory per device is the
meaningful column there.

    python scripts/benchmark_sequence_parallel.py                      # defaults below
    python scripts/benchmark_sequence_parallel.py --engines=mamba --lengths=4096,16384 --time_max=4096
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import datetime
import platform as pyplatform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.common.xla import plan_bytes
from seqjax.scan import (
    attention,
    linear_attention,
    linear_recurrence,
    selective_scan,
    sequence_parallel_attention,
    sequence_parallel_linear_attention,
    sequence_parallel_linear_recurrence,
    sequence_parallel_mlstm,
    sequence_parallel_selective_scan,
)
from seqjax.scan.attention import KVPrefix
from seqjax.scan.mlstm import mlstm

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "engines",
    ["mamba", "gla"],
    "mamba, gla, gla_channel, diagonal, mlstm, attention_ring, attention_all_gather, "
    "attention_ring_unbalanced, swa_halo, swa_all_gather, xl_ring",
)
flags.DEFINE_list("lengths", ["4096", "16384", "65536", "262144", "524288"], "sequence lengths")
flags.DEFINE_list("shards", ["1", "2", "4", "8"], "devices on the sequence axis")
flags.DEFINE_integer("time_max", 16384, "time steps only up to this length (longer: compile only)")
flags.DEFINE_integer("repeats", 3, "timed steps per point")
flags.DEFINE_integer("mamba_inner", 64, "Mamba's d_inner")
flags.DEFINE_integer("mamba_state", 16, "Mamba's state size N")
flags.DEFINE_integer("heads", 4, "GLA, mLSTM and attention heads")
flags.DEFINE_integer("head_dim", 32, "GLA and mLSTM d_k = d_v, attention head_dim")
flags.DEFINE_integer("window", 256, "sliding-window attention: the window")
flags.DEFINE_integer("memory", 512, "xl_ring: the cached keys and values before the sequence (XL's memory)")
flags.DEFINE_integer("state", 64, "diagonal recurrence: state elements per token")
flags.DEFINE_integer("chunk", 64, "chunk size of the chunked engines")
flags.DEFINE_string("out", "benchmarks/sequence_parallel_{platform}.md", "markdown output")

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
                "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|[fsuc]\d+|bf16)\[([\d,]*)\]")
_INSTR = re.compile(r"=\s*(?P<shape>\([^=]*?\)|\S+)\s+(?P<op>[\w-]+)\(")


def collective_bytes(hlo: str) -> dict[str, int]:
    """Bytes of the results of every collective in one device's compiled HLO, by kind (an async pair
    counted once, at its start)."""
    out: dict[str, int] = {}
    for line in hlo.splitlines():
        m = _INSTR.search(line)
        if not m:
            continue
        op = m.group("op").removesuffix("-start")
        if op not in COLLECTIVES or m.group("op").endswith("-done"):
            continue
        total = 0
        for dtype, dims in _SHAPE.findall(m.group("shape")):
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            total += count * _DTYPE_BYTES[dtype]
        out[op] = out.get(op, 0) + total
    return out


def _problem(engine: str, length: int, n: int):
    """(step function, input shapes, whether each input is split along time)."""
    key = jax.random.PRNGKey(0)
    kw = {"mesh": jax.make_mesh((n,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,),
                                devices=jax.devices()[:n])}  # fmt: skip
    if engine == "mamba":
        d, s = FLAGS.mamba_inner, FLAGS.mamba_state
        fn = sequence_parallel_selective_scan if n > 1 else selective_scan
        extra = kw if n > 1 else {}
        shapes = [(1, length, d), (1, length, d), (d, s), (1, length, s), (1, length, s)]
        split = [True, True, False, True, True]

        def loss(x, dt, a, b, c):
            y, _ = fn(
                x, jax.nn.softplus(dt), a, b, c, chunk_size=FLAGS.chunk, method="remat_sequential", **extra
            )
            return jnp.sum(y**2)

    elif engine in ("gla", "gla_channel"):
        h, e = FLAGS.heads, FLAGS.head_dim
        fn = sequence_parallel_linear_attention if n > 1 else linear_attention
        extra = kw if n > 1 else {}
        # gla: one decay per head (the per-head form); gla_channel: one per key channel (GLA's own).
        shapes = [(1, length, h, e)] * 3 + [(1, length, h, e) if engine == "gla_channel" else (1, length, h)]
        split = [True] * 4

        def loss(q, k, v, lg):
            y, _ = fn(q, k, v, -jax.nn.softplus(lg), chunk_size=FLAGS.chunk, method="chunked", **extra)
            return jnp.sum(y**2)

    elif engine == "mlstm":
        h, e = FLAGS.heads, FLAGS.head_dim
        fn = sequence_parallel_mlstm if n > 1 else mlstm
        extra = kw if n > 1 else {}
        shapes = [(1, length, h, e)] * 3 + [(1, length, h)] * 2
        split = [True] * 5

        def loss(q, k, v, igate, fgate):
            y, _ = fn(q, k, v, igate, fgate, chunk_size=FLAGS.chunk, method="chunked", **extra)
            return jnp.sum(y**2)

    elif engine == "diagonal":
        fn = sequence_parallel_linear_recurrence if n > 1 else linear_recurrence
        extra = kw if n > 1 else {}
        shapes = [(1, length, FLAGS.state)] * 2
        split = [True, True]

        def loss(a, b):
            hs, _ = fn(jax.nn.sigmoid(a), b, axis=1, method="sequential", **extra)
            return jnp.sum(hs**2)

    elif engine == "xl_ring":  # Transformer-XL's memory as a replicated prefix of every shard's keys
        h, e, m = FLAGS.heads, FLAGS.head_dim, FLAGS.memory
        shapes = [(1, length, h, e)] * 3 + [(1, m, h, e)] * 2
        split = [True] * 3 + [False] * 2
        memory_pos = jnp.arange(m)[None]
        pos = jnp.arange(m, m + length)[None]

        def loss(q, k, v, mk, mv):
            if n == 1:
                y = attention(
                    q,
                    jnp.concatenate([mk, k], 1),
                    jnp.concatenate([mv, v], 1),
                    q_positions=pos,
                    kv_positions=jnp.concatenate([memory_pos, pos], 1),
                    method="blockwise",
                )
            else:
                prefix = KVPrefix(k=mk, v=mv, positions=memory_pos)
                y = sequence_parallel_attention(
                    q, k, v, q_positions=pos, kv_positions=pos, kv_prefix=prefix, strategy="ring", **kw
                )
            return jnp.sum(y**2)

    elif engine.startswith(("attention_", "swa_")):
        h, e = FLAGS.heads, FLAGS.head_dim
        window = FLAGS.window if engine.startswith("swa_") else None
        strategy = engine.split("_", 1)[1].removesuffix("_unbalanced")
        shapes = [(1, length, h, e)] * 3
        split = [True] * 3

        def loss(q, k, v):
            if n == 1:
                y = attention(q, k, v, window=window, method="blockwise")
            else:
                y = sequence_parallel_attention(
                    q,
                    k,
                    v,
                    window=window,
                    strategy=strategy,
                    balance=not engine.endswith("_unbalanced"),
                    **kw,
                )
            return jnp.sum(y**2)

    else:
        raise app.UsageError(f"unknown engine {engine!r}")
    del key
    return jax.grad(loss, argnums=tuple(range(len(shapes)))), shapes, split, kw["mesh"]


def measure(engine: str, length: int, n: int, timed: bool) -> dict[str, object]:
    step, shapes, split, mesh = _problem(engine, length, n)
    shardings = [NamedSharding(mesh, P(None, "sequence") if s else P()) for s in split]
    args = [
        jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sh)
        for shape, sh in zip(shapes, shardings, strict=True)
    ]
    jitted = jax.jit(step, in_shardings=shardings)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        compiled = jitted.lower(*args).compile()
        compile_s = time.perf_counter() - start
    row: dict[str, object] = {
        "engine": engine,
        "length": length,
        "shards": n,
        "plan": plan_bytes(compiled),
        "comm": collective_bytes(compiled.as_text()),
        "compile_s": compile_s,
        "time": None,
    }
    if timed:
        keys = jax.random.split(jax.random.PRNGKey(1), len(shapes))
        values = [
            jax.device_put(0.1 * jax.random.normal(k, shape), sh)
            for k, shape, sh in zip(keys, shapes, shardings, strict=True)
        ]
        jax.block_until_ready(compiled(*values))
        times = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*values))
            times.append(time.perf_counter() - start)
        row["time"] = statistics.median(times)
    return row


def _mib(b: int | None) -> str:
    return "—" if b is None else f"{b / 2**20:.1f}"


def _comm(c: dict[str, int]) -> str:
    if not c:
        return "0"
    total = sum(c.values())
    kinds = ", ".join(f"{k} {v / 1024:.1f}" for k, v in sorted(c.items()))
    return f"{total / 1024:.1f} ({kinds})"


def write(rows: list[dict[str, object]], path: Path, command: str) -> None:
    engines = {
        "mamba": (
            f"Mamba selective scan: d_inner {FLAGS.mamba_inner}, N {FLAGS.mamba_state}, "
            f"chunks of {FLAGS.chunk}"
        ),
        "gla": (
            f"GLA (one decay per head): {FLAGS.heads} heads, d_k = d_v = {FLAGS.head_dim}, "
            f"chunks of {FLAGS.chunk}"
        ),
        "gla_channel": (
            f"GLA (one decay per key channel): {FLAGS.heads} heads, d_k = d_v = {FLAGS.head_dim}, "
            f"chunks of {FLAGS.chunk}"
        ),
        "xl_ring": (
            f"Transformer-XL attention, ring, memory of {FLAGS.memory} cached tokens (replicated): "
            f"{FLAGS.heads} heads, head_dim {FLAGS.head_dim}"
        ),
        "diagonal": f"diagonal recurrence: real decays, state {FLAGS.state}, sequential",
        "mlstm": (
            f"mLSTM (xLSTM): {FLAGS.heads} heads, d_k = d_v = {FLAGS.head_dim}, chunks of {FLAGS.chunk}"
        ),
        "attention_ring": f"causal attention, ring: {FLAGS.heads} heads, head_dim {FLAGS.head_dim}",
        "attention_ring_unbalanced": (
            f"causal attention, ring without load balancing: {FLAGS.heads} heads, head_dim {FLAGS.head_dim}"
        ),
        "attention_all_gather": (
            f"causal attention, all-gather: {FLAGS.heads} heads, head_dim {FLAGS.head_dim}"
        ),
        "swa_halo": (
            f"sliding-window attention, halo: window {FLAGS.window}, {FLAGS.heads} heads, "
            f"head_dim {FLAGS.head_dim}"
        ),
        "swa_all_gather": (
            f"sliding-window attention, all-gather: window {FLAGS.window}, {FLAGS.heads} heads, "
            f"head_dim {FLAGS.head_dim}"
        ),
    }
    fake = (
        " (fake CPU devices: `--xla_force_host_platform_device_count=8`)"
        if jax.default_backend() == "cpu"
        else ""
    )
    lines = [
        f"# Sequence parallelism: memory, communication and step time ({jax.default_backend()})",
        "",
        f"- date (of this file; each section states when it was measured): "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- versions: jax {jax.__version__}, Python {pyplatform.python_version()}; "
        f"`os.cpu_count()` = {os.cpu_count()}",
        f"- devices: {len(jax.devices())} × `{jax.devices()[0].device_kind}`{fake}",
        "- workload: gradient of `sum(y**2)` with respect to every input of the engine alone, one `jax.jit`, "
        "float32, batch 1, the inputs split along time over `shards` devices of a `sequence` mesh axis "
        "(1 shard: the single-device engine)",
        f"- command: `{command}`",
        "",
        "Columns: **plan MiB / device** is XLA's memory plan of the per-device program (arguments + "
        "outputs + temporaries); **comm KiB / device** sums the result sizes of the collectives in one "
        "device's compiled program per step (by kind); **step s** is the median of the timed steps "
        "(— : compiled only).",
        "",
    ]
    if jax.default_backend() == "cpu":
        lines += [
            "**The fake CPU devices share the machine's cores** (2 here, shared with other jobs), so step "
            "times measure the total work of all shards, not a parallel speed-up; they are not a scaling "
            "measurement. The memory per device is the meaningful column.",
            "",
        ]
    stamp = (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
        f"`os.cpu_count()` = {os.cpu_count()}, `{command}`"
    )
    measured = dict.fromkeys(r["engine"] for r in rows)
    titles = {engines[e] for e in measured}
    kept = [body for title, body in _sections(path) if title not in titles]
    for engine in measured:
        lines += [f"## {engines[engine]}", "", f"Measured {stamp}.", ""]
        lines += [
            "| length | shards | plan MiB / device | vs 1 shard | comm KiB / device | step s | compile s |"
        ]
        lines += ["|---:|---:|---:|---:|---|---:|---:|"]
        base = {r["length"]: r["plan"] for r in rows if r["engine"] == engine and r["shards"] == 1}
        for r in rows:
            if r["engine"] != engine:
                continue
            ref = base.get(r["length"])
            ratio = f"{r['plan'] / ref:.3f}" if ref and r["plan"] else "—"
            step = "—" if r["time"] is None else f"{r['time']:.3f}"
            lines.append(
                f"| {r['length']} | {r['shards']} | {_mib(r['plan'])} | {ratio} | {_comm(r['comm'])} | "
                f"{step} | {r['compile_s']:.1f} |"
            )
        lines.append("")
    path.write_text("\n".join(lines + kept), encoding="utf-8")


def _sections(path: Path) -> list[tuple[str, str]]:
    """The `## ` sections of an existing table file: (title, text), to keep those not re-measured."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    header, *parts = re.split(r"^## ", text, flags=re.M)
    # Sections written before per-section stamps: the file header's date and command are theirs.
    date = re.search(r"^- date: (.*)$", header, flags=re.M)
    versions = re.search(r"^- versions: (.*)$", header, flags=re.M)
    cmd = re.search(r"^- command: (.*)$", header, flags=re.M)
    old = ", ".join(m.group(1) for m in (date, versions, cmd) if m)
    out = []
    for part in parts:
        title, body = part.split("\n", 1)
        if not body.lstrip().startswith("Measured ") and old:
            body = f"\nMeasured {old}.\n" + body
        out.append((title.strip(), f"## {title}\n{body.rstrip()}\n"))
    return out


def main(argv: list[str]) -> None:
    del argv
    out = Path(FLAGS.out.format(platform=jax.default_backend()))
    command = shlex.join(["python", "scripts/benchmark_sequence_parallel.py", *sys.argv[1:]])
    rows: list[dict[str, object]] = []
    for engine in FLAGS.engines:
        for length in map(int, FLAGS.lengths):
            for n in map(int, FLAGS.shards):
                row = measure(engine, length, n, timed=length <= FLAGS.time_max)
                rows.append(row)
                print(
                    f"{engine} L={length} shards={n}: plan {_mib(row['plan'])} MiB, "
                    f"comm {_comm(row['comm'])} KiB, step {row['time']}, compile {row['compile_s']:.1f} s",
                    flush=True,
                )
                write(rows, out, command)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
