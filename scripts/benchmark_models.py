"""Whole language models, one per cell type, at equal parameter count: the table for picking a cell.

For every mixer of `seqjax.experiment.equal_parameters.MIXERS` (LSTM, GRU, E-LSTM, S5, LRU, Mamba,
linear attention, GLA, DeltaNet, Gated DeltaNet, Mamba-2, RWKV-7, mLSTM, sLSTM, RG-LRU, exact attention,
sliding window; `--models` picks some), a byte-level LM of `--num_layers` blocks of width `--d_model`
is built with `seqjax.models`. Each model's MLP width is solved so that all models have the same
parameter count as the exact-attention transformer with a 4× MLP (within a few percent; the table
prints the actual counts).

Training: one forward + backward of the next-token loss, jitted, at a fixed token budget per batch
(`--tokens_per_batch`; batch = budget / L), so tokens/s at different L compare like with like. Peak
memory is XLA's compiled plan (arguments + outputs + temporaries). A row whose plan exceeds --max_gib is
not run; once one run of a model takes longer than --max_seconds_per_run, its longer lengths are only
compiled (memory) and not timed.

Generation: a prompt of C tokens is prefilled, then `decode_step` is timed per token (jitted, the cache
donated) at batch --gen_batch; the cache size is the bytes of every layer's state after the prompt.

Usage, from the repository root:

    python scripts/benchmark_models.py            # full sweep -> benchmarks/models_cpu.md
    python scripts/benchmark_models.py --models=lstm,mamba --lengths=1024,4096 --gen_contexts=1024
    python scripts/benchmark_models.py --models=attention --lengths=65536 --gen_contexts=1024 \
        --max_seconds_per_run=300 --merge --note="experiments paused"   # add a cell to the table

The measurements are kept in `<out>.json` beside the markdown (rows, the machine and every run's date,
command and --note). `--merge` adds this run's rows to that record instead of starting a new one, for the
same platform and model shape (width, layers, vocab, tokens per batch, generation batch): a cell measured
again replaces the old one (a row this run did not time leaves a timed old one in place), the other cells
stay, and the markdown names the run behind every cell that a later run added.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from seqjax import models
from seqjax.common.cli import command_without
from seqjax.common.machine import describe_machine
from seqjax.common.xla import plan_bytes
from seqjax.experiment.equal_parameters import (
    LABELS,
    MIXERS,
    ModelShape,
    backbone_config,
    equal_param_expansions,
)

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Mixers to compare (default: all of MIXERS).")
flags.DEFINE_list("lengths", ["1024", "4096", "16384", "65536"], "Training sequence lengths.")
flags.DEFINE_list(
    "gen_contexts", ["1024", "4096", "16384", "65536"], "Generation context lengths (prompt tokens)."
)
flags.DEFINE_integer(
    "tokens_per_batch", 65536, "Tokens per training batch; batch = tokens_per_batch // L (>= 1)."
)
flags.DEFINE_integer("d_model", 128, "Residual width.")
flags.DEFINE_integer("num_layers", 2, "Blocks per model.")
flags.DEFINE_integer("vocab", 256, "Vocabulary (bytes).")
flags.DEFINE_integer("gen_batch", 1, "Batch of the generation measurement.")
flags.DEFINE_integer("gen_tokens", 32, "Decode steps timed per context (median reported).")
flags.DEFINE_integer("repeats", 3, "Timed training runs after one warm-up run (median reported).")
flags.DEFINE_float(
    "max_seconds_per_run", 30.0, "A model's longer lengths are compiled but not timed past this."
)
flags.DEFINE_float(
    "max_seconds_prefill", 60.0, "A model's longer contexts are skipped once a prefill takes this."
)
flags.DEFINE_float("max_gib", 20.0, "Rows whose XLA memory plan exceeds this are not run.")
flags.DEFINE_string(
    "out", "benchmarks/models_{platform}.md", "Markdown output; {platform} = jax.default_backend()."
)
flags.DEFINE_bool(
    "merge",
    False,
    "Add this run's rows to the record beside --out (<out>.json) instead of starting a new table; the "
    "platform and model shape must match.",
)
flags.DEFINE_string(
    "note", "", "Conditions of this run (load, what was paused), kept in the record and table."
)

GIB = 2**30


@dataclasses.dataclass
class TrainRow:
    model: str
    length: int
    batch: int
    status: str = "ok"
    reason: str = ""
    peak_bytes: int | None = None
    times_s: list[float] = dataclasses.field(default_factory=list)
    compile_s: float | None = None
    run: int = 0  # which of the record's runs measured it (`Record.runs`)

    @property
    def tokens_per_s(self) -> float | None:
        return self.length * self.batch / statistics.median(self.times_s) if self.times_s else None


@dataclasses.dataclass
class GenRow:
    model: str
    context: int
    status: str = "ok"
    reason: str = ""
    cache_bytes: int | None = None
    step_peak_bytes: int | None = None
    prefill_s: float | None = None
    per_token_s: float | None = None
    run: int = 0


# --------------------------------------------------------------------------------------------------
# Models at equal parameter count.
# --------------------------------------------------------------------------------------------------
def _shape() -> ModelShape:
    return ModelShape(d_model=FLAGS.d_model, num_layers=FLAGS.num_layers, vocab=FLAGS.vocab)


def config_for(name: str, expansion: float, max_length: int) -> models.BackboneConfig:
    return backbone_config(name, expansion, max_length, _shape())


# --------------------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------------------
def _tokens(batch: int, length: int) -> jax.Array:
    return jax.random.randint(jax.random.key(1), (batch, length), 0, FLAGS.vocab, jnp.int32)


def measure_training(name: str, expansion: float, length: int, time_it: bool) -> TrainRow:
    batch = max(1, FLAGS.tokens_per_batch // length)
    row = TrainRow(name, length, batch)
    model = models.LanguageModel(config_for(name, expansion, length))
    tokens = _tokens(batch, length + 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    variables = jax.jit(model.init)(jax.random.key(0), inputs[:1, :8])

    def loss(variables: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
        logits = model.apply(variables, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()

    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(loss)).lower(variables, inputs, targets).compile()
    row.compile_s = time.perf_counter() - t0
    row.peak_bytes = plan_bytes(compiled)
    if row.peak_bytes is not None and row.peak_bytes > FLAGS.max_gib * GIB:
        row.status, row.reason = "skipped", f"plan {row.peak_bytes / GIB:.1f} GiB > {FLAGS.max_gib:g}"
        return row
    if not time_it:
        row.status, row.reason = "not timed", f"a shorter run took > {FLAGS.max_seconds_per_run:g} s"
        return row
    jax.block_until_ready(compiled(variables, inputs, targets))  # warm-up
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(variables, inputs, targets))
        row.times_s.append(time.perf_counter() - t0)
    return row


def measure_generation(name: str, expansion: float, context: int) -> GenRow:
    row = GenRow(name, context)
    model = models.LanguageModel(config_for(name, expansion, context + FLAGS.gen_tokens + 2))
    prompt = _tokens(FLAGS.gen_batch, context)
    variables = jax.jit(model.init)(jax.random.key(0), prompt[:, :8])
    prefill = jax.jit(lambda v, p: models.prefill(model, v, p))
    t0 = time.perf_counter()
    cache, logits = jax.block_until_ready(prefill(variables, prompt))
    row.prefill_s = time.perf_counter() - t0  # includes compilation; reported only as a budget guard
    row.cache_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache))
    step = jax.jit(lambda v, c, t: models.decode_step(model, v, c, t), donate_argnums=(1,))
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    compiled = step.lower(variables, cache, token).compile()
    row.step_peak_bytes = plan_bytes(compiled)
    cache, logits = jax.block_until_ready(compiled(variables, cache, token))
    times = []
    for _ in range(FLAGS.gen_tokens):
        token = jnp.argmax(logits, -1).astype(jnp.int32)
        t0 = time.perf_counter()
        cache, logits = jax.block_until_ready(compiled(variables, cache, token))
        times.append(time.perf_counter() - t0)
    row.per_token_s = statistics.median(times)
    return row


def _release() -> None:
    gc.collect()
    jax.clear_caches()
    gc.collect()


def _guarded(fn: Callable[[], Any], fallback: Callable[[str], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # one failing row must not lose the others
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return fallback(text[:140])
    finally:
        _release()


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------
def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GIB:.2f}"


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


#: What must be equal for two runs' rows to share one table.
SHAPE_FLAGS = ("d_model", "num_layers", "vocab", "tokens_per_batch", "gen_batch")


@dataclasses.dataclass
class Record:
    """A table's measurements and where they come from: what `<out>.json` holds."""

    platform: str
    machine: str
    shape: dict[str, int]
    runs: list[dict[str, Any]]  # date, command, repeats, jax, flax, note
    models: list[str]
    sizes: dict[str, tuple[float, int]]
    lengths: list[int]
    contexts: list[int]
    train: list[TrainRow]
    gen: list[GenRow]

    def to_json(self) -> dict[str, Any]:
        return {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in ("train", "gen")
            },
            "sizes": {name: list(size) for name, size in self.sizes.items()},
            "train": [dataclasses.asdict(r) for r in self.train],
            "gen": [dataclasses.asdict(r) for r in self.gen],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            **{k: data[k] for k in ("platform", "machine", "shape", "runs", "models", "lengths", "contexts")},
            sizes={name: (float(e), int(n)) for name, (e, n) in data["sizes"].items()},
            train=[TrainRow(**r) for r in data["train"]],
            gen=[GenRow(**r) for r in data["gen"]],
        )


def record_path(out: str | os.PathLike[str]) -> Path:
    """The JSON record beside a markdown table: `models_cpu.md` -> `models_cpu.json`."""
    return Path(out).with_suffix(".json")


def _measured(row: TrainRow | GenRow) -> bool:
    return bool(row.times_s) if isinstance(row, TrainRow) else row.per_token_s is not None


def merged(old: Record, new: Record, source: Path) -> Record:
    """`old` with `new`'s run added: a cell `new` measured replaces `old`'s, unless `new` did not time it
    and `old` did (a row left untimed by this run's time guard keeps the timed one)."""
    if old.platform != new.platform or old.shape != new.shape:
        differ = {k: (old.shape.get(k), new.shape[k]) for k in new.shape if old.shape.get(k) != new.shape[k]}
        if old.platform != new.platform:
            differ["platform"] = (old.platform, new.platform)
        raise app.UsageError(
            f"--merge: {source} was measured with "
            + ", ".join(f"{k}={a!r}" for k, (a, _) in differ.items())
            + ", this run with "
            + ", ".join(f"{k}={b!r}" for k, (_, b) in differ.items())
            + "; give those flags as the record has them, another --out, or drop --merge to start anew."
        )
    changed = {
        name: (old.sizes[name][1], size[1])
        for name, size in new.sizes.items()
        if name in old.sizes and old.sizes[name][1] != size[1]
    }
    if changed:
        raise app.UsageError(
            f"--merge: in {source} "
            + ", ".join(f"{name} has {a:,} parameters, built now {b:,}" for name, (a, b) in changed.items())
            + " (the model or the matching changed since); measure it again into another --out, or drop "
            "--merge to start anew."
        )
    offset = len(old.runs)

    def combine(old_rows: list, new_rows: list, key: Callable[[Any], tuple]) -> list:
        rows = {key(r): r for r in old_rows}
        for r in new_rows:
            before = rows.get(key(r))
            if before is None or _measured(r) or not _measured(before):
                rows[key(r)] = dataclasses.replace(r, run=r.run + offset)
        return list(rows.values())

    return Record(
        platform=old.platform,
        machine=old.machine if old.machine == new.machine else f"{old.machine}; {new.machine}",
        shape=old.shape,
        runs=old.runs + new.runs,
        models=old.models + [m for m in new.models if m not in old.models],
        sizes={**old.sizes, **new.sizes},
        lengths=sorted(set(old.lengths) | set(new.lengths)),
        contexts=sorted(set(old.contexts) | set(new.contexts)),
        train=combine(old.train, new.train, lambda r: (r.model, r.length)),
        gen=combine(old.gen, new.gen, lambda r: (r.model, r.context)),
    )


def _note(run: dict[str, Any]) -> str:
    return f" ({run['note']})" if run.get("note") else ""


def render(record: Record) -> str:
    names, lengths, contexts, shape = record.models, record.lengths, record.contexts, record.shape
    by_train = {(r.model, r.length): r for r in record.train}
    by_gen = {(r.model, r.context): r for r in record.gen}
    first, *later = record.runs
    repeats = sorted({run["repeats"] for run in record.runs})
    lines = [
        "# Whole models at equal parameter count: which cell for which length",
        "",
        f"Generated {first['date']} by `{first['command']}`{_note(first)}.",
    ]
    for i, run in enumerate(later, 2):
        cells = [f"{LABELS[r.model]} at L={r.length:,} (training)" for r in record.train if r.run == i - 1]
        cells += [f"{LABELS[r.model]} at C={r.context:,} (generation)" for r in record.gen if r.run == i - 1]
        lines.append(
            f"Run {i}, {run['date']}: `{run['command']}`{_note(run)}."
            + (f" Its cells: {'; '.join(cells)}." if cells else " None of its cells is in the table.")
        )
    lines += [
        f"Platform: {record.platform} ({record.machine}), jax {first['jax']}, flax {first['flax']}.",
        "",
        f"Byte-level LMs: {shape['num_layers']} blocks of width {shape['d_model']} (pre-norm, SwiGLU MLP), "
        f"vocab {shape['vocab']}, float32. Each model's MLP width is set so its parameter count matches the "
        "exact-attention transformer with a 4x MLP.",
        "",
        "| model | parameters | MLP expansion |",
        "|---|---:|---:|",
    ]
    for name in names:
        expansion, params = record.sizes[name]
        lines.append(f"| {LABELS[name]} | {params:,} | {expansion:.2f} |")
    lines += [
        "",
        f"## Training: tokens/s (forward + backward, {shape['tokens_per_batch']:,} tokens per batch, "
        f"median of {' or '.join(map(str, repeats))})",
        "",
        "| model | "
        + " | ".join(f"L={n:,} (B={max(1, shape['tokens_per_batch'] // n)})" for n in lengths)
        + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name in names:
        cells = []
        for n in lengths:
            r = by_train.get((name, n))
            if r is None:
                cells.append("")
            elif r.tokens_per_s is not None:
                cells.append(f"{r.tokens_per_s:,.0f}")
            else:
                cells.append(f"— ({r.status})")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Training: peak memory, GiB (XLA plan of the jitted step)",
        "",
        "| model | " + " | ".join(f"L={n:,}" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name in names:
        cells = []
        for n in lengths:
            r = by_train.get((name, n))
            cells.append("" if r is None else _gib(r.peak_bytes) if r.peak_bytes else f"— ({r.status})")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Generation at batch {shape['gen_batch']}: ms per token after a prompt of C tokens / cache size",
        "",
        "| model | " + " | ".join(f"C={c:,}" for c in contexts) + " |",
        "|---|" + "---:|" * len(contexts),
    ]
    for name in names:
        cells = []
        for c in contexts:
            r = by_gen.get((name, c))
            if r is None:
                cells.append("")
            elif r.per_token_s is None:
                cells.append(f"— ({r.status})")
            else:
                cells.append(f"{1e3 * r.per_token_s:.2f} / {_size(r.cache_bytes)}")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    notes = [r for r in [*record.train, *record.gen] if r.reason]
    if notes:
        lines += ["", "Rows not run or not timed:", ""]
        for r in notes:
            where = f"L={r.length:,}" if isinstance(r, TrainRow) else f"C={r.context:,}"
            lines.append(f"- {LABELS[r.model]}, {where}: {r.status}: {r.reason}")
    return "\n".join(lines) + "\n"


def _replace(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: a stop mid-write keeps the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_record(path: Path) -> Record:
    if not path.exists():
        raise app.UsageError(
            f"--merge: {path} does not exist, so there is no record to add to (tables written before "
            "records were kept have none); drop --merge to start a table."
        )
    try:
        record = Record.from_json(json.loads(path.read_text()))
        unknown = [name for name in record.models if name not in MIXERS]
        if unknown:
            raise ValueError(f"unknown models {unknown}")
        render(record)  # every model, row and run it names is there: refused now, not after measuring
        return record
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise app.UsageError(
            f"--merge: {path} is not a benchmark_models record ({type(err).__name__}: {err}); "
            "give another --out, or drop --merge to start anew."
        ) from err


def main(argv: list[str]) -> None:
    del argv
    names = FLAGS.models or list(MIXERS)
    unknown = [n for n in names if n not in MIXERS]
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; choose from {', '.join(MIXERS)}.")
    lengths = sorted(int(n) for n in FLAGS.lengths)
    contexts = sorted(int(c) for c in FLAGS.gen_contexts)
    out = Path(FLAGS.out.format(platform=jax.default_backend()))
    if out.suffix == ".json":
        raise app.UsageError(
            f"--out={out}: the markdown table; its JSON record goes beside it ({out.stem}.json)."
        )
    # the note is kept on its own, not twice
    argv_kept = command_without(sys.argv, "note")
    run = {
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "command": "python " + " ".join(shlex.quote(a) for a in argv_kept),
        "repeats": FLAGS.repeats,
        "jax": jax.__version__,
        "flax": flax.__version__,
    }
    if FLAGS.note:
        run["note"] = FLAGS.note
    this_run = Record(
        platform=jax.default_backend(),
        machine=describe_machine(),
        shape={name: getattr(FLAGS, name) for name in SHAPE_FLAGS},
        runs=[run],
        models=names,
        sizes={},
        lengths=lengths,
        contexts=contexts,
        train=[],
        gen=[],
    )
    old = _read_record(record_path(out)) if FLAGS.merge else None
    this_run.sizes = equal_param_expansions(names, _shape())
    if old is not None:
        merged(old, this_run, record_path(out))  # a mismatched record is refused before any measuring
    train, gen = this_run.train, this_run.gen

    def write() -> None:
        record = this_run if old is None else merged(old, this_run, record_path(out))
        _replace(record_path(out), json.dumps(record.to_json(), indent=1) + "\n")
        _replace(out, render(record))

    for name in names:
        expansion = this_run.sizes[name][0]
        time_it = True
        for n in lengths:
            row = _guarded(
                lambda name=name, e=expansion, n=n, t=time_it: measure_training(name, e, n, t),
                lambda why, name=name, n=n: TrainRow(
                    name, n, max(1, FLAGS.tokens_per_batch // n), "failed", why
                ),
            )
            if row.times_s and max(row.times_s) > FLAGS.max_seconds_per_run:
                time_it = False
            train.append(row)
            tps = f"{row.tokens_per_s:,.0f} tok/s" if row.tokens_per_s else row.status
            print(f"train {name:>18} L={n:>6}: {tps}, {_gib(row.peak_bytes)} GiB {row.reason}", flush=True)
            write()
        go_on = True
        for c in contexts:
            if not go_on:
                gen.append(
                    GenRow(name, c, "skipped", f"a shorter prefill took > {FLAGS.max_seconds_prefill:g} s")
                )
                continue
            row = _guarded(
                lambda name=name, e=expansion, c=c: measure_generation(name, e, c),
                lambda why, name=name, c=c: GenRow(name, c, "failed", why),
            )
            if row.prefill_s is not None and row.prefill_s > FLAGS.max_seconds_prefill:
                go_on = False
            gen.append(row)
            per = f"{1e3 * row.per_token_s:.2f} ms/token" if row.per_token_s else row.status
            print(
                f"gen   {name:>18} C={c:>6}: {per}, cache {_size(row.cache_bytes)} {row.reason}",
                flush=True,
            )
            write()
    print(f"wrote {out} and {record_path(out)}")


if __name__ == "__main__":
    app.run(main)
