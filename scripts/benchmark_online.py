"""Per-token cost of the online learners against hidden size: time of one prequential step (the
learner's step + Adam's update, inside the loop's jitted `lax.scan` over a chunk) and XLA's memory plan
of one step, for exact diagonal RTRL (LRU), exact RTRL (Mamba), SnAp-1 (LSTM), exact dense RTRL (LSTM,
GRU; small sizes only: O(H^4) work) and online truncated BPTT (LSTM) with k = 1, 4, 16, 64.

    python scripts/benchmark_online.py                       # writes benchmarks/online_cpu.md
    python scripts/benchmark_online.py --hidden=8,16,32 --tokens=200 --out=/tmp/online.md

The model is configs/online.py's on NARMA-10 (1 input, 1 output, GELU readout of the hidden size), one
stream (batch ()), float32.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("hidden", ["8", "16", "32", "64"], "Hidden sizes.")
flags.DEFINE_list("dense_hidden", ["4", "8", "16"], "Hidden sizes for exact dense RTRL (O(H^4) per token).")
flags.DEFINE_integer("tokens", 500, "Tokens per timed chunk.")
flags.DEFINE_integer("repeats", 3, "Timed chunks (the median is reported).")
flags.DEFINE_string("out", "benchmarks/online_{platform}.md", "Markdown output.")

METHODS = [
    ("lru_rtrl", "exact diagonal RTRL, LRU (state = hidden complex modes)"),
    ("mamba_rtrl", "exact RTRL, Mamba (d_model = hidden, expand 2, N = 16)"),
    ("lstm_snap", "SnAp-1, LSTM"),
    ("lstm_dense", "exact dense RTRL, LSTM"),
    ("gru_dense", "exact dense RTRL, GRU"),
    ("lstm_tbptt1", "online TBPTT k=1, LSTM"),
    ("lstm_tbptt4", "online TBPTT k=4, LSTM"),
    ("lstm_tbptt16", "online TBPTT k=16, LSTM"),
    ("lstm_tbptt64", "online TBPTT k=64, LSTM"),
]


def measure(method: str, hidden: int, tokens: int, repeats: int) -> tuple[float, int | None]:
    """(seconds per token, XLA plan bytes of one token's step)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.online import get_config
    from seqjax.online.loop import OnlineLoop

    c = get_config(f"narma10:{method},hidden={hidden},readout={hidden}")
    loop = OnlineLoop(c)
    state = loop.init_state()
    chunk = tuple(map(jnp.asarray, loop.stream.chunk(0, tokens)))
    state, scores, _ = loop.run_chunk(state, *chunk)  # compile
    jax.block_until_ready(scores)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, scores, _ = loop.run_chunk(state, *chunk)
        jax.block_until_ready(scores)
        times.append((time.perf_counter() - start) / tokens)
    return float(np.median(times)), loop.step_memory_bytes(state)


def main(argv: list[str]) -> None:
    del argv
    import jax

    rows = []
    for method, label in METHODS:
        sizes = FLAGS.dense_hidden if "dense" in method else FLAGS.hidden
        cells = {}
        for h in map(int, sizes):
            seconds, memory = measure(method, h, FLAGS.tokens, FLAGS.repeats)
            cells[h] = (seconds, memory)
            print(f"{method} H={h}: {seconds * 1e6:.1f} µs/token, plan {memory} B", flush=True)
        rows.append((method, label, cells))
    sizes = sorted({h for _, _, cells in rows for h in cells})
    device = jax.devices()[0]
    header = "| method | " + " | ".join(f"H={h}" for h in sizes) + " |"
    lines = [
        f"# seqjax online learners: cost per token against hidden size ({jax.default_backend()})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- versions: jax {jax.__version__}, Python {platform.python_version()}",
        f"- platform: {jax.default_backend()}, device kind `{device.device_kind}`; `os.cpu_count()` = "
        f"{os.cpu_count()}, shared with other jobs while measured (times are indicative)",
        "- workload: one prequential token (learner.step + clipped Adam update) inside the loop's jitted "
        f"`lax.scan` over {FLAGS.tokens} tokens, NARMA-10 (1 input, 1 output), one stream, float32, one "
        "layer, GELU readout of the hidden size; median of "
        f"{FLAGS.repeats} chunks after compiling. Memory: XLA's plan (arguments + outputs + temporaries) "
        "of one jitted token step (`seqjax.online.loop.OnlineLoop.step_memory_bytes`).",
        f"- command: `python {' '.join(sys.argv)}`",
        "",
        "## µs per token",
        "",
        header,
        "|---|" + "---:|" * len(sizes),
    ]
    for method, label, cells in rows:
        shown = [f"{cells[h][0] * 1e6:,.1f}" if h in cells else "" for h in sizes]
        lines.append(f"| {method} ({label}) | " + " | ".join(shown) + " |")
    lines += ["", "## Step memory plan (KiB)", "", header]
    lines.append("|---|" + "---:|" * len(sizes))
    for method, label, cells in rows:
        shown = [
            f"{cells[h][1] / 2**10:,.1f}" if h in cells and cells[h][1] is not None else "" for h in sizes
        ]
        lines.append(f"| {method} ({label}) | " + " | ".join(shown) + " |")
    lines.append("")
    out = ROOT / FLAGS.out.format(platform=jax.default_backend())
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
