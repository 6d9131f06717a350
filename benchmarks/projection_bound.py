"""What bounds issue 22's CPU target ("each chunked form at least 5x faster than the loop of its own
`step` at 4k tokens"): both forms run the same dense projections (inputs to keys, values, gates; heads
to output), and no chunked form can beat the step loop by more than (step loop time) / (projection
time). This script times, in one process, the chunked `apply`, `lax.scan` over `step`, and the cell's
dense layers alone (every weight of 64 or more units applied over the whole sequence as a matmul,
forward and backward), and writes the bound beside the measured ratio.

    python benchmarks/projection_bound.py --out=benchmarks/projection_bound_cpu.md
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import lax

from seqjax import cells

flags.DEFINE_list("cells", ["gla", "deltanet", "rwkv7"], "Cells (registry names).")
flags.DEFINE_integer("length", 4096, "Tokens per sequence.")
flags.DEFINE_integer("batch", 8, "Sequences per batch.")
flags.DEFINE_integer("hidden", 128, "Input width.")
flags.DEFINE_integer("heads", 8, "Heads.")
flags.DEFINE_integer("head_dim", 64, "Head width.")
flags.DEFINE_integer("repeats", 3, "Timed runs after one warm-up (the median is reported).")
flags.DEFINE_string("out", "benchmarks/projection_bound_{platform}.md", "Markdown output path.")
FLAGS = flags.FLAGS


def build_cell(name: str) -> cells.Cell:
    """The cell at the benchmark's sizes (as `scripts/benchmark.py --cells=<family>` builds it)."""
    if name == "rwkv7":  # the token shift carries the --hidden-wide input
        return cells.get(name, num_heads=FLAGS.heads, head_dim=FLAGS.head_dim, d_model=FLAGS.hidden)
    return cells.get(name, num_heads=FLAGS.heads, head_dim=FLAGS.head_dim)


def dense_weights(params: Any) -> list[jax.Array]:
    """Every weight with a side of 64 or more, as a (fan-in, fan-out) matrix: a projection from the
    input (first axis the input width) or into the output (last axis the output width)."""
    out = []
    for w in jax.tree.leaves(params):
        if w.ndim < 2 or max(w.shape) < 64:
            continue
        out.append(w.reshape(w.shape[0], -1) if w.shape[0] == FLAGS.hidden else w.reshape(-1, w.shape[-1]))
    return out


def median_seconds(f: Callable[..., Any], *args: Any) -> float:
    jax.block_until_ready(f(*args))  # compile and warm up
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, xs: jax.Array) -> dict[str, Any]:
    cell = build_cell(name)
    params = cell.init(jax.random.key(0), FLAGS.hidden)

    def chunked(p: Any, x: jax.Array) -> jax.Array:
        return jnp.sum(cell.apply(p, x)[0] ** 2)

    def step_loop(p: Any, x: jax.Array) -> jax.Array:
        def body(state: Any, x_t: jax.Array) -> tuple[Any, jax.Array]:
            return cell.step(p, state, x_t)

        _, ys = lax.scan(body, cell.initial_state((x.shape[0],)), jnp.swapaxes(x, 0, 1))
        return jnp.sum(ys**2)

    weights = dense_weights(params)

    def projections(ws: list[jax.Array], x: jax.Array) -> jax.Array:
        total = jnp.zeros((), x.dtype)
        for w in ws:  # an input of the weight's fan-in that depends on x, so backward reaches it
            widened = jnp.broadcast_to(x[..., :1], (*x.shape[:-1], w.shape[0]))
            inputs = x if w.shape[0] == x.shape[-1] else widened
            total += jnp.sum((inputs @ w) ** 2)
        return total

    grad = lambda f: jax.jit(jax.grad(f, argnums=(0, 1)))
    flops = 3 * sum(2 * xs.shape[0] * xs.shape[1] * w.shape[0] * w.shape[1] for w in weights)
    row = {
        "cell": type(cell).__name__,
        "chunked": median_seconds(grad(chunked), params, xs),
        "step_loop": median_seconds(grad(step_loop), params, xs),
        "projections": median_seconds(grad(projections), weights, xs),
        "gflop": flops / 1e9,
    }
    print(row, flush=True)
    return row


def cpu_model() -> str:
    """The processor's name (/proc/cpuinfo's `model name`), else the machine type."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str]) -> None:
    del argv
    xs = jax.random.normal(jax.random.key(1), (FLAGS.batch, FLAGS.length, FLAGS.hidden), jnp.float32)
    rows = [measure(name, xs) for name in FLAGS.cells]
    device = jax.devices()[0]
    lines = [
        f"# What bounds the chunked form's lead over its own step ({jax.default_backend()})",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; jax {jax.__version__}; "
        f"device kind `{device.device_kind}` ({cpu_model()}, {os.cpu_count()} cores)",
        f"- batch {FLAGS.batch}, length {FLAGS.length}, input width {FLAGS.hidden}, {FLAGS.heads} heads of "
        f"{FLAGS.head_dim}, float32; forward + backward (gradient w.r.t. parameters and input), median of "
        f"{FLAGS.repeats} runs after a warm-up, all in one process",
        f"- command: `python benchmarks/projection_bound.py --cells={','.join(FLAGS.cells)} "
        f"--out={FLAGS.out}`",
        "- `dense layers`: the cell's weights of 64 or more units applied over the whole sequence as "
        "matmuls (the projections both forms run); `bound` = step loop / dense layers, the largest "
        "ratio a chunked form could reach if its recurrence cost nothing",
        "",
        "| cell | chunked apply s | step loop s | dense layers s | dense GFLOP | ratio (step / chunked) "
        "| bound (step / dense) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['chunked']:.4f} | {r['step_loop']:.4f} | {r['projections']:.4f} | "
            f"{r['gflop']:.1f} | {r['step_loop'] / r['chunked']:.2f} | "
            f"{r['step_loop'] / r['projections']:.2f} |"
        )
    path = FLAGS.out.format(platform=jax.default_backend())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
