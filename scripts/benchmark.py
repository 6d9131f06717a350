"""Training-step speed and memory of seqjax's recurrent cells against their peers.

Every measurement is one forward + backward pass: the gradient of `sum(ys**2)` with respect to the
parameters AND the input, inside `jax.jit` (or torch autograd), at batch 8, input width = hidden = 128,
float32. All implementations run in one process, so the `vs seqjax` ratios compare like with like on a
noisy machine.

Usage, from the repository root:

    python scripts/benchmark.py                                   # lstm, gru, elstm at 1k, 4k, 16k tokens
    python scripts/benchmark.py --lengths=1024,4096               # shorter sweep
    python scripts/benchmark.py --cells=lstm --nopeers            # seqjax only
    python scripts/benchmark.py --unroll=4 --out=/tmp/unroll4.md  # override the seqjax cells' unroll

Implementations per cell family:
  lstm:  seqjax LSTM(engine="fused") (the baseline of the ratios), seqjax LSTM(engine="scan"),
         flax nn.RNN(nn.OptimizedLSTMCell), a naive lax.scan LSTM, torch.nn.LSTM.
  gru:   seqjax GRU (baseline), flax nn.RNN(nn.GRUCell), a naive lax.scan GRU, torch.nn.GRU.
  elstm: seqjax ELSTM only (it has no peer).
  attention: seqjax `attention(method="blockwise")` (baseline), the materialised reference,
         jax.nn.dot_product_attention (XLA), and blockwise with a sliding window (--window); causal,
         one head of width --hidden: `--cells=attention --out=benchmarks/attention_{platform}.md`.
  linformer: whole cells (projections included), --heads x --head_dim on inputs of width --hidden, no
         positional encoding: exact bidirectional `Attention(causal=False)` (baseline; the engine's
         "auto" method), the same with the materialised engine (method="naive"), and `Linformer` with
         k = --linformer_k, built for n = the row's length:
         `--cells=linformer --out=benchmarks/linformer_{platform}.md`.
  scan:  the diagonal engine `linear_recurrence` ("auto" the baseline; sequential, associative,
         chunked) and autodiff through a plain lax.scan.
  selective: Mamba's `selective_scan` (chunk 64, remat) against the materialised [B, L, C, N] scan.
  ssm:   whole cells: Mamba (expand 1) chunked against materialised, S4D, S5 and LRU per method.
  linear_attention: the linear-attention cells (GLA fused and unfused, its token scan, ...) and the
         matrix-state engine.
  deltanet, gated_deltanet, mamba2, rglru, mlstm, slstm, gla_channel, rwkv7 (issue 22's cells): each
         cell's training form (baseline) against the loop of its own `step` under lax.scan, and its
         token-scan method where it has one.
Peers are included with --peers (the default); torch rows only when `import torch` works.

Results are printed as they come and written as markdown to --out (default
`benchmarks/rnn_{platform}.md`, platform = `jax.default_backend()`). The file is rewritten after every
measurement, so an interrupted run still leaves the rows it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import gc
import math
import os
import platform as pyplatform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import psutil
from absl import app, flags
from jax import lax

from seqjax import cells
from seqjax.common.machine import cpu_model
from seqjax.common.xla import plan_bytes
from seqjax.scan import linear_recurrence
from seqjax.scan.attention import attention, attention_reference
from seqjax.scan.selective import selective_scan, selective_scan_reference

try:
    import torch
except Exception:  # torch is optional; its absence only drops the torch rows.
    torch = None

FLAGS = flags.FLAGS

#: Issue 22's cells, each its own family: its training form (the baseline) against its own `step`
#: under `lax.scan` (and its token-scan method where it has one), --heads x --head_dim where the cell has
#: heads. Only the cells this checkout registers are offered (`recent_cell`).
RECENT_FAMILIES = ("deltanet", "gated_deltanet", "mamba2", "rglru", "mlstm", "slstm", "gla_channel", "rwkv7")
FAMILIES = (
    "lstm",
    "gru",
    "elstm",
    "scan",
    "selective",
    "ssm",
    "linear_attention",
    "attention",
    "linformer",
    *RECENT_FAMILIES,
)
flags.DEFINE_list("cells", ["lstm", "gru", "elstm"], f"Cell families to benchmark: {', '.join(FAMILIES)}.")
flags.DEFINE_list("lengths", ["1024", "4096", "16384"], "Sequence lengths (tokens), comma-separated ints.")
flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("hidden", 128, "Hidden size; the input width is the same.")
flags.DEFINE_integer("repeats", 5, "Timed runs after one warm-up run (the median is reported).")
flags.DEFINE_boolean("peers", True, "Also time flax.linen, naive lax.scan and torch implementations.")
flags.DEFINE_string(
    "out",
    "benchmarks/rnn_{platform}.md",
    "Markdown output path; `{platform}` is replaced by jax.default_backend().",
)
flags.DEFINE_float(
    "max_seconds_per_run",
    20.0,
    "Once one run of an implementation takes longer than this, its longer lengths are skipped.",
)
flags.DEFINE_integer("unroll", None, "Overrides the seqjax cells' `unroll` field (peers keep theirs).")
flags.DEFINE_integer("state", 16, "SSM state size N (scan, selective and ssm families).")
flags.DEFINE_integer("heads", 8, "Heads of the linear-attention family.")
flags.DEFINE_integer("head_dim", 64, "Head width of the linear-attention family.")
flags.DEFINE_float(
    "max_gib",
    18.0,
    "Rows whose compiled memory plan (XLA analysis) exceeds this are skipped instead of run: on CPU an "
    "allocation failure kills the process rather than raising.",
)
flags.DEFINE_integer("window", 512, "Sliding-window width of the attention family's windowed row.")
flags.DEFINE_integer(
    "block_q", None, "Query block of the attention family's blockwise rows (None: the default)."
)
flags.DEFINE_integer(
    "block_k", None, "Key block of the attention family's blockwise rows (None: the default)."
)
flags.DEFINE_integer("linformer_k", 256, "Projected length k of the linformer family's Linformer row.")
flags.DEFINE_boolean(
    "plan_only",
    False,
    "Compile every row and report XLA's memory plan without running it (memory targets at lengths whose "
    "runs would take minutes).",
)
flags.DEFINE_integer(
    "segment_length",
    1024,
    "Issue 22's families also run as `SegmentRemat(cell, segment_length)` (apply in rematerialised time "
    "segments); 0 leaves that row out.",
)
flags.DEFINE_boolean("step_mode", True, "Also time `step` (one token, jitted) for the cells of each family.")

FAMILY_TITLES = {
    "lstm": "LSTM",
    "gru": "GRU",
    "elstm": "E-LSTM",
    "scan": "Linear recurrence engine: h = a ⊙ h + b on [B, L, C, N]",
    "selective": "Selective scan (Mamba's SSM core) on compact [B, L, C] / [B, L, N] inputs",
    "ssm": "SSM cells (width = hidden, state = --state)",
    "linear_attention": "Linear-attention cells and the matrix-state engine",
    "attention": "Exact causal softmax attention: q, k, v [batch, L, 1 head, --hidden]",
    "linformer": "Exact bidirectional attention vs Linformer: cells of --heads x --head_dim, n = L",
    "deltanet": "DeltaNet (chunked WY/UT) against its own step",
    "gated_deltanet": "Gated DeltaNet (chunked WY/UT) against its own step",
    "mamba2": "Mamba-2 (chunked SSD) against its own step",
    "rglru": "Griffin's RG-LRU block (diagonal engine) against its own step",
    "mlstm": "mLSTM (stabilised chunkwise form) against its own step",
    "slstm": "sLSTM (lax.scan; no parallel form) against its own step",
    "gla_channel": "GLA, per-channel decay (chunked) against its own step",
    "rwkv7": "RWKV-7 (chunked generalised delta rule) against its own step",
}
#: How to read a family's `vs seqjax` column when its baseline is not a seqjax-vs-peer comparison.
RATIO_MEANING = {
    "linformer": "(< 1: faster than exact attention).",
    **{
        f: "(> 1: slower than the chunked training form; issue 22's target is >= 5 for `step`)."
        for f in RECENT_FAMILIES
    },
}
MIB = 2**20
# Fine enough to see a buffer that lives for one matmul at 1k tokens, coarse enough that the sampler's
# own CPU use (a /proc read) stays well under 1% of one core.
RSS_INTERVAL_S = 0.005


# --------------------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Measurement:
    family: str
    impl: str
    length: int
    status: str = "ok"  # "ok", "failed", "skipped" or "planned" (--plan_only: compiled, not run)
    reason: str = ""
    times_s: list[float] = dataclasses.field(default_factory=list)
    first_run_s: float | None = None
    compile_s: float | None = None
    xla_peak_bytes: int | None = None
    rss_delta_bytes: int | None = None
    other_load_cores: float | None = None

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def slowest_run_s(self) -> float:
        return max([*self.times_s, self.first_run_s or 0.0])


@dataclasses.dataclass(frozen=True)
class Impl:
    """One row label of a family's table and how to build its workload at a given length."""

    family: str
    name: str
    kind: str  # "jax": build returns (loss, args); "torch": build returns a zero-argument step.
    build: Callable[[int], Any]
    is_baseline: bool = False


# --------------------------------------------------------------------------------------------------
# Memory probes.
# --------------------------------------------------------------------------------------------------
class PeakRss:
    """Samples the process RSS in a background thread; `delta` = peak during the block − RSS at entry.

    XLA and torch release the GIL while they compute, so the sampler keeps running during a step.
    """

    def __init__(self, interval_s: float = RSS_INTERVAL_S) -> None:
        self._proc = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.base = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


class OtherLoad:
    """CPU used by everything except this process during a block, in cores (busy CPU-seconds / wall s).

    The machine is shared: another job's threads on the same cores slow every row, and they stall
    spin-waiting OpenMP (torch) far more than XLA. Recording this per row shows which numbers were
    taken under contention. Includes hypervisor steal; resolution is one clock tick (~10 ms).
    """

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.cores = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def __enter__(self) -> OtherLoad:
        self._start = (time.perf_counter(), self._busy(), self._own())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        other = (self._busy() - busy0) - (self._own() - own0)
        self.cores = max(other, 0.0) / wall if wall > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Workloads.
# --------------------------------------------------------------------------------------------------
def _inputs(length: int) -> jax.Array:
    return jax.random.normal(jax.random.key(1), (FLAGS.batch, length, FLAGS.hidden), jnp.float32)


def seqjax_workload(cell: cells.Cell) -> Callable[[int], tuple[Callable[..., jax.Array], tuple[Any, ...]]]:
    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        params = cell.init(jax.random.key(0), FLAGS.hidden)

        def loss(params: Any, xs: jax.Array) -> jax.Array:
            ys, _ = cell.apply(params, xs)
            return jnp.sum(ys**2)

        return loss, (params, _inputs(length))

    return build


def step_scan_workload(cell: cells.Cell) -> Callable[[int], tuple[Callable[..., jax.Array], tuple[Any, ...]]]:
    """The cell's own `step` under `lax.scan` over time (compiled, from its initial state): the plain
    form its training form must beat."""

    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        params = cell.init(jax.random.key(0), FLAGS.hidden)

        def loss(params: Any, xs: jax.Array) -> jax.Array:
            def body(state: Any, x: jax.Array) -> tuple[Any, jax.Array]:
                return cell.step(params, state, x)

            _, ys = lax.scan(body, cell.initial_state((xs.shape[0],)), jnp.swapaxes(xs, 0, 1))
            return jnp.sum(ys**2)

        return loss, (params, _inputs(length))

    return build


def recent_cell(family: str) -> cells.Cell | None:
    """Issue 22's cell of a family at --hidden input width and --heads x --head_dim, or None when this
    checkout does not register it."""
    heads, d, h = FLAGS.heads, FLAGS.head_dim, FLAGS.hidden
    name = {"gla_channel": "gla"}.get(family, family)
    if name not in cells.registry.names():
        return None
    if family in ("deltanet", "gated_deltanet"):
        return cells.get(name, num_heads=heads, head_dim=d)
    if family == "mamba2":  # d_inner = heads * head_dim, one group of B and C
        return cells.get(name, d_model=h, expand=max(1, heads * d // h), head_dim=d)
    if family == "rglru":
        return cells.get(name, d_model=h, lru_width=heads * d, num_heads=heads)
    if family == "rwkv7":  # the token shift carries the --hidden-wide input
        return cells.get(name, num_heads=heads, head_dim=d, d_model=h)
    if family == "mlstm":  # the up-projection makes the heads x head_dim inner width from --hidden
        return cells.get(name, d_model=h, num_heads=heads, proj_factor=heads * d / h)
    if family == "slstm":  # maps --hidden to --hidden (its conv needs it): --heads heads of hidden/heads
        return cells.get(name, hidden_size=h, num_heads=heads)
    return cells.get(name, num_heads=heads, head_dim=d)


def recent_implementations(family: str) -> list[Impl]:
    cell = recent_cell(family)
    if cell is None:
        raise app.UsageError(f"--cells={family}: this checkout has no {family} cell (issue 22).")
    rows = [
        Impl(
            family,
            f"seqjax {type(cell).__name__} apply (method={getattr(cell, 'method', 'scan')})",
            "jax",
            seqjax_workload(cell),
            True,
        )
    ]
    if family not in ("slstm", "rglru"):  # the others have a token-scan method besides their chunks
        with contextlib.suppress(TypeError, ValueError):  # a cell that refuses method="recurrent"
            recurrent = dataclasses.replace(cell, method="recurrent")
            name = f"seqjax {type(cell).__name__} apply (method=recurrent)"
            rows.append(Impl(family, name, "jax", seqjax_workload(recurrent)))
    if FLAGS.segment_length:
        segmented = cells.SegmentRemat(cell, segment_length=FLAGS.segment_length)
        name = f"seqjax SegmentRemat({type(cell).__name__}, {FLAGS.segment_length}) apply"
        rows.append(Impl(family, name, "jax", seqjax_workload(segmented)))
    if family not in ("slstm", "rglru"):
        rows.append(Impl(family, DENSE_LAYERS_ROW, "jax", dense_layers_workload(cell)))
    rows.append(Impl(family, f"lax.scan over {type(cell).__name__}.step", "jax", step_scan_workload(cell)))
    return rows


#: The row of the projections a chunked form and its step loop both run: (step loop) / (this row) is the
#: largest lead over its step that any chunked form of the cell could reach (its recurrence free).
DENSE_LAYERS_ROW = "dense layers alone (the projections both forms run)"


def dense_layers_workload(
    cell: cells.Cell,
) -> Callable[[int], tuple[Callable[..., jax.Array], tuple[Any, ...]]]:
    """The cell's weights with a side as wide as the input or the heads (the smaller of --hidden and
    --heads x --head_dim): its input, gate and output projections, low-rank gate factors included, not its
    per-head vectors or convolution taps. Each is applied over the whole sequence as one matmul, from the
    --hidden input when its first axis is that wide, else from an input of its fan-in."""

    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        params = cell.init(jax.random.key(0), FLAGS.hidden)
        weights = [
            w.reshape(w.shape[0], -1) if w.shape[0] == FLAGS.hidden else w.reshape(-1, w.shape[-1])
            for w in jax.tree.leaves(params)
            if w.ndim >= 2 and max(w.shape) >= min(FLAGS.hidden, FLAGS.heads * FLAGS.head_dim)
        ]

        def loss(weights: list[jax.Array], xs: jax.Array) -> jax.Array:
            total = jnp.zeros((), xs.dtype)
            for w in weights:  # an input that depends on xs, so the backward pass reaches it
                wide = jnp.broadcast_to(xs[..., :1], (*xs.shape[:-1], w.shape[0]))
                total += jnp.sum(((xs if w.shape[0] == xs.shape[-1] else wide) @ w) ** 2)
            return total

        return loss, (weights, _inputs(length))

    return build


def cell_workload(make_cell: Callable[[int], cells.Cell]) -> Callable[[int], Any]:
    """`seqjax_workload` for a cell that depends on the length (Linformer is built for n = L)."""

    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        return seqjax_workload(make_cell(length))(length)

    return build


def flax_workload(make_cell: Callable[[], nn.RNNCellBase]) -> Callable[[int], Any]:
    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        model = nn.RNN(make_cell())
        xs = _inputs(length)
        # Parameter shapes do not depend on length; initialising on one token avoids running a full
        # (uncompiled-cache) forward pass at 16k tokens just to get shapes.
        params = model.init(jax.random.key(0), xs[:, :1])

        def loss(params: Any, xs: jax.Array) -> jax.Array:
            return jnp.sum(model.apply(params, xs) ** 2)

        return loss, (params, xs)

    return build


def _naive_params(key: jax.Array, input_size: int, hidden: int, gates: int) -> dict[str, jax.Array]:
    k_ih, k_hh = jax.random.split(key)
    return {
        "w_ih": jax.random.normal(k_ih, (input_size, gates * hidden)) / math.sqrt(input_size),
        "w_hh": jax.random.normal(k_hh, (hidden, gates * hidden)) / math.sqrt(hidden),
        "b_ih": jnp.zeros((gates * hidden,)),
        "b_hh": jnp.zeros((gates * hidden,)),
    }


def naive_lstm(params: dict[str, jax.Array], xs: jax.Array) -> jax.Array:
    """The textbook LSTM: everything per token inside the scan body, autodiff does the backward pass."""
    hidden = params["w_hh"].shape[0]

    def step(carry: tuple[jax.Array, jax.Array], x_t: jax.Array) -> tuple[Any, jax.Array]:
        h, c = carry
        z = x_t @ params["w_ih"] + params["b_ih"] + h @ params["w_hh"] + params["b_hh"]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((xs.shape[0], hidden), xs.dtype)
    _, ys = lax.scan(step, (zeros, zeros), jnp.swapaxes(xs, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


def naive_gru(params: dict[str, jax.Array], xs: jax.Array) -> jax.Array:
    """The textbook GRU (torch's equations), everything per token inside the scan body."""
    hidden = params["w_hh"].shape[0]

    def step(h: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        xr, xz, xn = jnp.split(x_t @ params["w_ih"] + params["b_ih"], 3, axis=-1)
        hr, hz, hn = jnp.split(h @ params["w_hh"] + params["b_hh"], 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h

    _, ys = lax.scan(step, jnp.zeros((xs.shape[0], hidden), xs.dtype), jnp.swapaxes(xs, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


def naive_workload(apply: Callable[..., jax.Array], gates: int) -> Callable[[int], Any]:
    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        params = _naive_params(jax.random.key(0), FLAGS.hidden, FLAGS.hidden, gates)

        def loss(params: Any, xs: jax.Array) -> jax.Array:
            return jnp.sum(apply(params, xs) ** 2)

        return loss, (params, _inputs(length))

    return build


def torch_device() -> str:
    """torch runs where JAX runs: CUDA (cuDNN's RNN kernels) when JAX is on a GPU and torch sees one."""
    if torch is not None and jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def torch_workload(module_cls_name: str) -> Callable[[int], Callable[[], None]]:
    def build(length: int) -> Callable[[], None]:
        torch.manual_seed(0)
        device = torch_device()
        module = getattr(torch.nn, module_cls_name)(FLAGS.hidden, FLAGS.hidden, batch_first=True).to(device)
        x = torch.randn(FLAGS.batch, length, FLAGS.hidden, device=device).requires_grad_(True)

        def step() -> None:
            # set_to_none so every run allocates its gradients afresh, as the JAX rows do.
            module.zero_grad(set_to_none=True)
            x.grad = None
            ys, _ = module(x)
            (ys**2).sum().backward()
            if device == "cuda":  # CUDA launches are asynchronous: time the finished step
                torch.cuda.synchronize()

        return step

    return build


def _engine_inputs(length: int, *state: int) -> tuple[jax.Array, jax.Array]:
    shape = (FLAGS.batch, length, *state)
    key_a, key_b = jax.random.split(jax.random.key(2))
    return jax.random.uniform(key_a, shape, jnp.float32, 0.5, 1.0), jax.random.normal(key_b, shape)


def engine_workload(method: str) -> Callable[[int], Any]:
    """linear_recurrence on a full [B, L, C, N] decay and input: the engine alone, any backend."""

    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        def loss(a: jax.Array, b: jax.Array) -> jax.Array:
            hs, _ = linear_recurrence(a, b, axis=1, method=method)
            return jnp.sum(hs**2)

        return loss, _engine_inputs(length, FLAGS.hidden, FLAGS.state)

    return build


def autodiff_scan_workload(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
    """The peer: `lax.scan` of h = a h + b differentiated by autodiff (what users write by hand)."""

    def loss(a: jax.Array, b: jax.Array) -> jax.Array:
        def body(h: jax.Array, ab: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            h = ab[0] * h + ab[1]
            return h, h

        _, hs = lax.scan(body, jnp.zeros_like(b[:, 0]), (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
        return jnp.sum(hs**2)

    return loss, _engine_inputs(length, FLAGS.hidden, FLAGS.state)


def selective_workload(materialised: bool) -> Callable[[int], Any]:
    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        keys = jax.random.split(jax.random.key(3), 4)
        c, n = FLAGS.hidden, FLAGS.state
        x = jax.random.normal(keys[0], (FLAGS.batch, length, c))
        dt = jax.nn.softplus(jax.random.normal(keys[1], (FLAGS.batch, length, c)) - 4)
        bc = jax.random.normal(keys[2], (FLAGS.batch, length, 2 * n))
        a_mat = -jnp.broadcast_to(jnp.arange(1.0, n + 1), (c, n))

        def loss(params: Any, x: jax.Array) -> jax.Array:
            dt, a_mat, bc = params
            b, cm = bc[..., :n], bc[..., n:]
            fn = selective_scan_reference if materialised else selective_scan
            y, _ = fn(x, dt, a_mat, b, cm)
            return jnp.sum(y**2)

        return loss, ((dt, a_mat, bc), x)

    return build


def _seqjax_cell(cls: type[cells.Cell], **kwargs: Any) -> cells.Cell:
    if FLAGS.unroll is not None:
        kwargs["unroll"] = FLAGS.unroll
    return cls(hidden_size=FLAGS.hidden, **kwargs)


def implementations(families: list[str], peers: bool) -> list[Impl]:
    """Rows in table order: the seqjax baseline first (the ratios' denominator), then the JAX peers,
    torch last."""
    impls: list[Impl] = []
    have_torch = torch is not None
    for family in families:
        if family == "lstm":
            fused = _seqjax_cell(cells.LSTM, engine="fused")
            scan = _seqjax_cell(cells.LSTM, engine="scan")
            impls.append(
                Impl(
                    family, f"seqjax LSTM fused (unroll={fused.unroll})", "jax", seqjax_workload(fused), True
                )
            )
            impls.append(
                Impl(family, f"seqjax LSTM scan (unroll={scan.unroll})", "jax", seqjax_workload(scan))
            )
            if peers:
                impls.append(
                    Impl(
                        family,
                        "flax nn.RNN(OptimizedLSTMCell)",
                        "jax",
                        flax_workload(lambda: nn.OptimizedLSTMCell(FLAGS.hidden)),
                    )
                )
                impls.append(Impl(family, "naive lax.scan LSTM", "jax", naive_workload(naive_lstm, 4)))
                if have_torch:
                    impls.append(Impl(family, "torch.nn.LSTM", "torch", torch_workload("LSTM")))
        elif family == "gru":
            gru = _seqjax_cell(cells.GRU)
            impls.append(Impl(family, f"seqjax GRU (unroll={gru.unroll})", "jax", seqjax_workload(gru), True))
            if peers:
                impls.append(
                    Impl(
                        family, "flax nn.RNN(GRUCell)", "jax", flax_workload(lambda: nn.GRUCell(FLAGS.hidden))
                    )
                )
                impls.append(Impl(family, "naive lax.scan GRU", "jax", naive_workload(naive_gru, 3)))
                if have_torch:
                    impls.append(Impl(family, "torch.nn.GRU", "torch", torch_workload("GRU")))
        elif family == "elstm":
            elstm = _seqjax_cell(cells.ELSTM)
            label = (
                f"seqjax ELSTM (slots={elstm.memory_slots}, width={elstm.memory_width}, "
                f"unroll={elstm.unroll})"
            )
            impls.append(Impl(family, label, "jax", seqjax_workload(elstm), True))
        elif family == "scan":
            impls.append(Impl(family, "seqjax linear_recurrence auto", "jax", engine_workload("auto"), True))
            for method in ("sequential", "associative", "chunked"):
                impls.append(
                    Impl(family, f"seqjax linear_recurrence {method}", "jax", engine_workload(method))
                )
            impls.append(Impl(family, "autodiff through lax.scan", "jax", autodiff_scan_workload))
        elif family == "selective":
            impls.append(
                Impl(
                    family, "seqjax selective_scan (chunk 64, remat)", "jax", selective_workload(False), True
                )
            )
            impls.append(
                Impl(family, "materialised [B,L,C,N] + autodiff lax.scan", "jax", selective_workload(True))
            )
        elif family == "ssm":
            h, n = FLAGS.hidden, FLAGS.state
            mamba = cells.Mamba(d_model=h, state_size=n, expand=1)
            impls.append(Impl(family, "seqjax Mamba (expand 1) chunked", "jax", seqjax_workload(mamba), True))
            impls.append(
                Impl(
                    family,
                    "seqjax Mamba (expand 1) sequential (materialised)",
                    "jax",
                    seqjax_workload(dataclasses.replace(mamba, method="materialized_sequential")),
                )
            )
            for cls in (cells.S4D, cells.S5, cells.LRU):
                for method in ("auto", "sequential", "associative", "chunked"):
                    cell = cls(hidden_size=h, state_size=n, method=method)
                    impls.append(
                        Impl(family, f"seqjax {cls.__name__} {method}", "jax", seqjax_workload(cell))
                    )
        elif family == "linear_attention":
            heads, d = FLAGS.heads, FLAGS.head_dim
            gla = cells.GatedLinearAttention(num_heads=heads, head_dim=d)
            impls.append(Impl(family, "seqjax GLA chunked", "jax", seqjax_workload(gla), True))
            impls.append(
                Impl(
                    family,
                    "seqjax GLA chunked, unfused projections",
                    "jax",
                    seqjax_workload(dataclasses.replace(gla, fused=False)),
                )
            )
            impls.append(
                Impl(
                    family,
                    "seqjax GLA recurrent",
                    "jax",
                    seqjax_workload(dataclasses.replace(gla, method="recurrent")),
                )
            )
            for cls in (cells.LinearAttention, cells.Performer, cells.ScalarGatedLinearAttention):
                cell = cls(num_heads=heads, head_dim=d)
                impls.append(Impl(family, f"seqjax {cls.__name__} chunked", "jax", seqjax_workload(cell)))
            impls.append(
                Impl(
                    family,
                    f"associative scan over {d}x{d} states",
                    "jax",
                    matrix_associative_workload,
                )
            )
        elif family == "attention":
            blocks = dict(block_q=FLAGS.block_q, block_k=FLAGS.block_k)
            impls.append(
                Impl(
                    family,
                    "seqjax attention blockwise",
                    "jax",
                    attention_workload(functools.partial(attention, method="blockwise", **blocks)),
                    True,
                )
            )
            if peers:
                impls.append(
                    Impl(
                        family,
                        "naive (materialised reference)",
                        "jax",
                        attention_workload(attention_reference),
                    )
                )
                impls.append(
                    Impl(
                        family,
                        "jax.nn.dot_product_attention (XLA)",
                        "jax",
                        attention_workload(
                            lambda q, k, v: jax.nn.dot_product_attention(
                                q, k, v, is_causal=True, implementation=None
                            )
                        ),
                    )
                )
            impls.append(
                Impl(
                    family,
                    f"seqjax attention blockwise, window {FLAGS.window}",
                    "jax",
                    attention_workload(
                        functools.partial(attention, method="blockwise", window=FLAGS.window, **blocks)
                    ),
                )
            )
        elif family == "linformer":
            impls += linformer_implementations(peers)
        elif family in RECENT_FAMILIES:
            impls += recent_implementations(family)
        else:
            raise app.UsageError(f"--cells: unknown family {family!r}; choose from {', '.join(FAMILIES)}.")
    return impls


def linformer_implementations(peers: bool) -> list[Impl]:
    """Exact bidirectional attention (the baseline) and Linformer, as whole cells built for each length."""
    shape = dict(num_heads=FLAGS.heads, head_dim=FLAGS.head_dim, positional="none")
    k = FLAGS.linformer_k

    def exact(method: str) -> Callable[[int], Any]:
        return cell_workload(lambda n: cells.Attention(causal=False, max_length=n, method=method, **shape))

    def linformer(sharing: str) -> Callable[[int], Any]:
        return cell_workload(lambda n: cells.Linformer(max_length=n, k=min(k, n), sharing=sharing, **shape))

    family = "linformer"
    impls = [Impl(family, "exact attention (Attention, causal=False)", "jax", exact("auto"), True)]
    if peers:
        impls.append(Impl(family, "exact attention, materialised (method=naive)", "jax", exact("naive")))
    for sharing in ("headwise", "key_value"):
        impls.append(Impl(family, f"Linformer k={k}, sharing={sharing}", "jax", linformer(sharing)))
    return impls


def attention_workload(attend: Callable[..., jax.Array]) -> Callable[[int], Any]:
    """Causal self-attention on q, k, v [batch, L, 1, hidden]; the gradient reaches q, k and v."""

    def build(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
        keys = jax.random.split(jax.random.key(5), 3)
        q, k, v = (jax.random.normal(key, (FLAGS.batch, length, 1, FLAGS.hidden)) for key in keys)

        def loss(kv: tuple[jax.Array, jax.Array], q: jax.Array) -> jax.Array:
            return jnp.sum(attend(q, *kv) ** 2)

        return loss, ((k, v), q)

    return build


def matrix_associative_workload(length: int) -> tuple[Callable[..., jax.Array], tuple[Any, ...]]:
    """The peer of chunked linear attention: every S_t = γ_t S_{t-1} + k_t v_tᵀ by an associative scan."""
    heads, d = FLAGS.heads, FLAGS.head_dim
    keys = jax.random.split(jax.random.key(4), 3)
    qkv = jax.random.normal(keys[0], (FLAGS.batch, length, 3, heads, d)) / math.sqrt(d)
    gamma = jax.nn.sigmoid(jax.random.normal(keys[1], (FLAGS.batch, length, heads)) + 4)

    def loss(gamma: jax.Array, qkv: jax.Array) -> jax.Array:
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        outer = k[..., :, None] * v[..., None, :]  # [B, L, H, d, d]
        states, _ = linear_recurrence(gamma[..., None, None], outer, axis=1, method="associative")
        y = jnp.einsum("blhkv,blhk->blhv", states, q)
        return jnp.sum(y**2)

    return loss, (gamma, qkv)


# --------------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------------
def _timed_runs(run: Callable[[], None], m: Measurement, repeats: int) -> None:
    t0 = time.perf_counter()
    run()
    m.first_run_s = time.perf_counter() - t0
    gc.collect()  # so garbage from the warm-up run is not counted in the RSS baseline.
    with PeakRss() as rss, OtherLoad() as load:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            m.times_s.append(time.perf_counter() - t0)
    m.rss_delta_bytes = rss.delta
    m.other_load_cores = load.cores


def measure_jax(impl: Impl, length: int, repeats: int) -> Measurement:
    m = Measurement(impl.family, impl.name, length)
    loss, args = impl.build(length)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    # Compile ahead of time: the same executable gives the memory analysis and runs, so nothing is
    # compiled twice, and compile time is not mixed into the warm-up run.
    t0 = time.perf_counter()
    compiled = grad.lower(*args).compile()
    m.compile_s = time.perf_counter() - t0
    m.xla_peak_bytes = plan_bytes(compiled)
    if FLAGS.plan_only:
        m.status, m.reason = "planned", "compiled, not run (--plan_only)"
        return m
    if m.xla_peak_bytes is not None and m.xla_peak_bytes > FLAGS.max_gib * 2**30:
        m.status = "skipped"
        m.reason = f"needs {m.xla_peak_bytes / 2**30:.1f} GiB (XLA plan) > --max_gib={FLAGS.max_gib:g}"
        return m

    def run() -> None:
        # The result is dropped at once so two runs' gradients never coexist.
        jax.block_until_ready(compiled(*args))

    _timed_runs(run, m, repeats)
    return m


def measure_torch(impl: Impl, length: int, repeats: int) -> Measurement:
    m = Measurement(impl.family, impl.name, length)
    if FLAGS.plan_only:
        m.status, m.reason = "skipped", "--plan_only: torch has no XLA plan"
        return m
    _timed_runs(impl.build(length), m, repeats)
    return m


def step_cells(family: str) -> list[tuple[str, cells.Cell, int]]:
    """(label, cell, input width) of the seqjax cells whose `step` is timed for a family."""
    h, n = FLAGS.hidden, FLAGS.state
    table: dict[str, list[tuple[str, cells.Cell, int]]] = {
        "lstm": [("LSTM", cells.LSTM(hidden_size=h), h)],
        "gru": [("GRU", cells.GRU(hidden_size=h), h)],
        "elstm": [("ELSTM", cells.ELSTM(hidden_size=h), h)],
        "ssm": [
            ("Mamba (expand 1)", cells.Mamba(d_model=h, state_size=n, expand=1), h),
            ("S4D", cells.S4D(hidden_size=h, state_size=n), h),
            ("S5", cells.S5(hidden_size=h, state_size=n), h),
            ("LRU", cells.LRU(hidden_size=h, state_size=n), h),
        ],
        "linear_attention": [
            (cls.__name__, cls(num_heads=FLAGS.heads, head_dim=FLAGS.head_dim), FLAGS.heads * FLAGS.head_dim)
            for cls in (
                cells.LinearAttention,
                cells.Performer,
                cells.GatedLinearAttention,
                cells.ScalarGatedLinearAttention,
            )
        ],
    }
    return table.get(family, [])


def measure_step(cell: cells.Cell, width: int, tokens: int = 200) -> tuple[float, int]:
    """Median seconds per token of a jitted `step` called from Python (streaming), and state bytes."""
    params = cell.init(jax.random.key(0), width)
    state = cell.initial_state((FLAGS.batch,))
    x = jax.random.normal(jax.random.key(1), (FLAGS.batch, width))
    step = jax.jit(cell.step)
    state, _ = jax.block_until_ready(step(params, state, x))
    times = []
    for _ in range(tokens):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(step(params, state, x))
        times.append(time.perf_counter() - t0)
    state_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
    return statistics.median(times), state_bytes


def _short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 120 else text[:117] + "..."


def _release_memory() -> None:
    # Executables and device buffers die with the measurement's locals; the jit caches would keep
    # the traced closures (and through them the inputs) alive, so clear those as well.
    gc.collect()
    jax.clear_caches()
    gc.collect()


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _versions() -> str:
    parts = [f"jax {jax.__version__}"]
    try:
        import jaxlib

        parts.append(f"jaxlib {jaxlib.__version__}")
    except Exception:
        pass
    parts.append(f"flax {flax.__version__}")
    parts.append(
        f"torch {torch.__version__} (on {torch_device()})" if torch is not None else "torch not installed"
    )
    parts.append(f"Python {pyplatform.python_version()}")
    return ", ".join(parts)


def render(
    results: list[Measurement],
    impls: list[Impl],
    lengths: list[int],
    command: str,
    total: int,
    steps: list[tuple[str, str, float, int]] | None = None,
) -> str:
    device = jax.devices()[0]
    backend = jax.default_backend()
    device_desc = f"{backend}, device kind `{device.device_kind}`"
    if backend == "cpu":
        device_desc += f" ({cpu_model()})"
    lines = [
        f"# seqjax: forward + backward benchmark ({backend})",
        "",
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- versions: {_versions()}",
        f"- platform: {device_desc}; `os.cpu_count()` = {os.cpu_count()}"
        + (f"; torch threads = {torch.get_num_threads()}" if torch is not None else ""),
        f"- batch {FLAGS.batch}, hidden {FLAGS.hidden}, input width {FLAGS.hidden}, float32",
        "- workload: gradient of `sum(ys**2)` w.r.t. parameters and input, in one `jax.jit` "
        "(torch: `loss.backward()` with `x.requires_grad_(True)`)",
        f"- command: `{command}`",
    ]
    done = len(results)
    if done < total:
        lines.append(f"- **partial**: {done} of {total} measurements finished")
    lines.append("")

    by_key = {(r.family, r.impl, r.length): r for r in results}
    for family in dict.fromkeys(i.family for i in impls):
        family_impls = [i for i in impls if i.family == family]
        baseline = next(i for i in family_impls if i.is_baseline)
        lines += [
            f"## {FAMILY_TITLES[family]}",
            "",
            f"`vs seqjax` = median time / median time of `{baseline.name}` at the same length "
            + RATIO_MEANING.get(family, "(> 1: seqjax is faster)."),
            "",
            "| length | implementation | median s | min–max s | vs seqjax | XLA peak MiB | Δ peak RSS MiB "
            "| compile s | other load |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for length in lengths:
            base = by_key.get((family, baseline.name, length))
            base_median = base.median_s if base is not None else None
            for impl in family_impls:
                r = by_key.get((family, impl.name, length))
                if r is None:
                    continue
                if r.status == "planned":  # --plan_only: the plan and the compile time, no run
                    lines.append(
                        f"| {length} | {impl.name} | not run | | | {_mib(r.xla_peak_bytes)} | | "
                        f"{_fmt(r.compile_s, '.2f')} | |"
                    )
                    continue
                if r.status != "ok":
                    reason = r.reason.replace("|", "/")
                    lines.append(f"| {length} | {impl.name} | {r.status}: {reason} | | | | | | |")
                    continue
                median = r.median_s
                ratio = median / base_median if (median and base_median) else None
                lines.append(
                    f"| {length} | {impl.name} | {_fmt(median, '.3f')} | "
                    f"{min(r.times_s):.3f}–{max(r.times_s):.3f} | {_fmt(ratio, '.2f')} | "
                    f"{_mib(r.xla_peak_bytes)} | {_mib(r.rss_delta_bytes)} | {_fmt(r.compile_s, '.2f')} | "
                    f"{_fmt(r.other_load_cores, '.2f')} |"
                )
        lines.append("")

    if steps:
        lines += [
            "## Step mode (streaming / generation)",
            "",
            f"One token for a batch of {FLAGS.batch}: a jitted `step` called from Python, median of 200 "
            "calls. "
            "The state size does not depend on how many tokens came before.",
            "",
            "| family | cell | µs per token | state KiB |",
            "|---|---|---:|---:|",
        ]
        for family, label, seconds, state_bytes in steps:
            lines.append(f"| {family} | {label} | {seconds * 1e6:.0f} | {state_bytes / 1024:.1f} |")
        lines.append("")
    lines += [
        "## Notes",
        "",
        f"- median of {FLAGS.repeats} runs after compile (plus one untimed warm-up run); "
        "ratios from the same process.",
        "- `XLA peak MiB`: `temp + argument + output` bytes from "
        "`jax.jit(f).lower(*args).compile().memory_analysis()`; n/a for torch.",
        f"- `Δ peak RSS MiB`: process RSS sampled every {RSS_INTERVAL_S * 1e3:.0f} ms during the timed runs, "
        "peak minus the RSS just before them (after the warm-up). Memory the allocator kept from "
        "earlier rows or the warm-up is reused without growing RSS, so this understates small "
        "working sets; compare it with the XLA column, not across machines.",
        "- `compile s`: `lower` + `compile` of the jitted gradient; n/a for torch (eager).",
        f"- `other load`: CPU cores used by other processes (and hypervisor steal) during the timed runs, "
        f"out of {os.cpu_count()}. Rows with a load well above 0 were timed on a shared machine and are "
        "slower than they would be alone; torch's spin-waiting OpenMP threads suffer most.",
        f"- an implementation is skipped at longer lengths once one of its runs takes more than "
        f"{FLAGS.max_seconds_per_run:g} s (`--max_seconds_per_run`) or once it fails.",
        "- naive lax.scan: the textbook step (input matmul and four separate gate activations inside the "
        "scan body), differentiated by autodiff.",
        f"- `{DENSE_LAYERS_ROW}`: the cell's weights as wide as the input or the heads, applied over "
        "the whole sequence as matmuls, forward and backward. Both the chunked form and the step loop "
        "run them, so the step loop's time over this row's is the largest lead any chunked form could "
        "reach.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------------
def _parse_lengths(raw: list[str]) -> list[int]:
    try:
        lengths = sorted({int(v) for v in raw})
    except ValueError as exc:
        raise app.UsageError(f"--lengths must be comma-separated integers, got {raw}.") from exc
    if not lengths or lengths[0] < 1:
        raise app.UsageError(f"--lengths must be positive, got {raw}.")
    return lengths


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Sorted ascending so that --max_seconds_per_run can skip the longer lengths of a slow row.
    lengths = _parse_lengths(FLAGS.lengths)
    families = [f.strip().lower() for f in FLAGS.cells if f.strip()]
    impls = implementations(families, FLAGS.peers)
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)

    out = Path(FLAGS.out.format(platform=jax.default_backend()))
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))

    total = len(lengths) * len(impls)
    results: list[Measurement] = []
    stop_reason: dict[str, str] = {}  # impl name -> why its longer lengths are skipped
    print(f"benchmarking {len(impls)} implementations x {len(lengths)} lengths -> {out}", flush=True)
    for length in lengths:
        for impl in impls:
            index = len(results) + 1
            if impl.name in stop_reason:
                m = Measurement(
                    impl.family, impl.name, length, status="skipped", reason=stop_reason[impl.name]
                )
            else:
                try:
                    measure = measure_jax if impl.kind == "jax" else measure_torch
                    m = measure(impl, length, FLAGS.repeats)
                except Exception as exc:  # OOM or a backend error must not lose the other rows.
                    m = Measurement(
                        impl.family, impl.name, length, status="failed", reason=_short_reason(exc)
                    )
                    stop_reason[impl.name] = f"failed at L={length}"
                _release_memory()
                if m.status == "skipped":
                    stop_reason[impl.name] = f"{m.reason} at L={length}"
                if m.status == "ok" and m.slowest_run_s > FLAGS.max_seconds_per_run:
                    stop_reason[impl.name] = (
                        f"a run at L={length} took {m.slowest_run_s:.2f} s > {FLAGS.max_seconds_per_run:g} s"
                    )
            results.append(m)
            if m.status == "ok":
                detail = (
                    f"median {m.median_s:.3f} s (min {min(m.times_s):.3f}, max {max(m.times_s):.3f}), "
                    f"compile {_fmt(m.compile_s, '.2f')} s, XLA peak {_mib(m.xla_peak_bytes)} MiB, "
                    f"Δ peak RSS {_mib(m.rss_delta_bytes)} MiB, "
                    f"other load {_fmt(m.other_load_cores, '.2f')} cores"
                )
            elif m.status == "planned":
                compiled_in = _fmt(m.compile_s, ".2f")
                detail = f"XLA peak {_mib(m.xla_peak_bytes)} MiB (compiled in {compiled_in} s, not run)"
            else:
                detail = f"{m.status}: {m.reason}"
            print(f"[{index}/{total}] {impl.family} L={length} {impl.name}: {detail}", flush=True)
            out.write_text(render(results, impls, lengths, command, total))

    steps: list[tuple[str, str, float, int]] = []
    if FLAGS.step_mode and not FLAGS.plan_only:
        for family in families:
            for label, cell, width in step_cells(family):
                seconds, state_bytes = measure_step(cell, width)
                steps.append((family, label, seconds, state_bytes))
                print(f"[step] {family} {label}: {seconds * 1e6:.0f} µs per token", flush=True)
                _release_memory()
        out.write_text(render(results, impls, lengths, command, total, steps))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    app.run(main)
