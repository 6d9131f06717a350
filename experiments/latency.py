"""Experiment (issue 19 §4): inference latency and throughput of equal-parameter LMs by length and batch.

The claims (the research the project was made for): "For short sequences (< 100 tokens), RNN inference
can be competitive with or faster than transformers. At medium lengths (100-1,000 tokens), transformers
typically achieve lower latency ... Processing 32 sequences of 256 tokens each is nearly as fast as
processing one sequence ... RNNs benefit less from batching."

Models (`seqjax.experiment.equal_parameters`): one byte-level LM per family (--presets), `num_layers`
blocks of width `d_model`, each with its MLP width solved so that its parameter count is that of the
exact-attention transformer with a 4x MLP. Untrained (latency does not depend on the weights' values).

Measurements (`seqjax.experiment.latency`), every program compiled first (compile time never timed),
warmed up once, then timed in interleaved rounds (every peer once per round, order rotated):
- prefill latency at batch 1 for L in --lengths: `models.prefill`, the whole prompt through the model
  (the cache and the last token's logits); one sweep per length, all models interleaved. A model whose
  median exceeds --cap_s at one length is not run at the longer ones (the report says which).
- throughput at L = --throughput_length for batch in --batches: the same prefill, every (model, batch)
  in one interleaved sweep; tokens/s = B * L / median time, batching gain = throughput(B) / throughput(1).
- generation latency per token against the context C in --contexts: after a prefill of C tokens, one
  `models.decode_step` per model per round (batch 1, the cache donated), --decode_steps rounds.
Each program's median and interquartile range are reported. A round is the unit of independence:
ratios (of latencies, of batching gains) get percentile-bootstrap intervals (95%, --resamples) that
resample rounds, a round's times of all peers together.

Verdict rules, fixed here (in `seqjax.experiment.latency.RULES`) before the CPU-size run. The claim's
"RNN" is the LSTM and its "transformer" the exact-attention transformer; every other family's ratios
and crossovers are reported beside them, outside the rules.

(a) "RNN competitive with or faster than transformers at L < 100": at every L < 100 the prefill ratio
    LSTM / attention lies below 1.25 (at most 25% slower). supported: every interval below 1.25;
    contradicted: every interval above; depends: some below, some above; inconclusive otherwise. Whether
    the LSTM is outright faster (interval below 1) is reported beside it.
(b) "transformers lower latency at 100-1,000 tokens": at every L in [100, 1024] the ratio LSTM /
    attention lies above 1. supported / contradicted / depends / inconclusive as in (a).
(c) "32 sequences of 256 tokens nearly as fast as one": the exact-attention transformer's time ratio
    t(B=32) / t(B=1) at L = 256 lies below 1.5 ("nearly as fast": at most half again the time of one
    sequence, i.e. at least 21x the throughput, two thirds of the ideal 32x; 2x would be "twice as slow").
(d) "RNNs benefit less from batching": at L = 256 and every B in {8, 32, 128}, gain_LSTM(B) /
    gain_attention(B) lies below 1. supported / contradicted / depends / inconclusive as in (a).
Crossovers: for each model against each transformer, the lengths where the median latency ratio crosses
1, interpolated on log-log axes between measured lengths (descriptive; the per-length intervals beside).

Sizes: smoke (the wiring, ~30 s: d_model 16, 1 block, LSTM and attention, short lengths); cpu (d_model 64,
2 blocks as `SIZES["cpu"]`, 10 families, L = 32 ... 16k with a cap, 7-11 min on 2 shared cores);
accelerator (d_model 256, 6 blocks as `SIZES["accelerator"]`, every family; run it on a GPU unchanged):

    python experiments/latency.py --size=smoke
    python experiments/latency.py                        # CPU size -> experiments/results/latency_cpu.*
    python experiments/latency.py --size=accelerator     # a GPU -> experiments/results/latency_accelerator.*

Results: `<out>.md`, `.json` and `.png` (prefill latency against L, log-log; throughput against batch;
decode latency against context), `--out` default `experiments/results/latency_{size}`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from seqjax.common.machine import describe_machine
from seqjax.experiment.flags import apply_size_defaults
from seqjax.experiment.outputs import short_code_version

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "cpu", ["cpu", "accelerator", "smoke"], "Defaults per size (module docstring).")
flags.DEFINE_list("presets", None, "Models, keys of equal_parameters.MIXERS (default: the size's).")
flags.DEFINE_list("lengths", None, "Prefill lengths at batch 1.")
flags.DEFINE_integer("throughput_length", 256, "The length of the throughput sweep.")
flags.DEFINE_list("batches", ["1", "8", "32", "128"], "Batch sizes of the throughput sweep.")
flags.DEFINE_list("contexts", None, "Decode contexts (prompt tokens before the timed steps).")
flags.DEFINE_integer("decode_steps", 30, "Timed decode steps (rounds) per context.")
flags.DEFINE_integer("d_model", None, "Residual width (default: the size's).")
flags.DEFINE_integer("num_layers", None, "Blocks per model (default: the size's).")
flags.DEFINE_float("budget_s", 20.0, "Timed seconds aimed at per length or context sweep (sets the rounds).")
flags.DEFINE_float(
    "throughput_budget_s", 150.0, "Timed seconds aimed at for the throughput sweep (every model and batch)."
)
flags.DEFINE_integer("min_rounds", 7, "Fewest timed rounds per sweep.")
flags.DEFINE_integer("max_rounds", 25, "Most timed rounds per sweep.")
flags.DEFINE_float("cap_s", 0.5, "A model whose median prefill exceeds this is not run at longer lengths.")
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
flags.DEFINE_string("workdir", None, "With --compilation_cache: where compiled programs are kept.")
flags.DEFINE_bool("compilation_cache", False, "Keep compiled programs in <workdir>/.jax_cache.")
flags.DEFINE_string("out", "experiments/results/latency_{size}", "Output path without extension.")

#: The CPU size's families (one preset each, so the CPU size runs in 7-11 min on 2 loaded cores); the
#: accelerator size adds E-LSTM, S5 and LRU.
CPU_PRESETS = [
    "lstm",
    "gru",
    "mamba",
    "mamba2",
    "gla",
    "deltanet",
    "mlstm",
    "rglru",
    "attention",
    "sliding_window",
]
SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {
        "presets": ["lstm", "attention"],
        "lengths": ["32", "128"],
        "throughput_length": 32,
        "batches": ["1", "8"],
        "contexts": ["16"],
        "decode_steps": 5,
        "d_model": 16,
        "num_layers": 1,
        "budget_s": 0.5,
        "throughput_budget_s": 0.5,
        "min_rounds": 5,
        "max_rounds": 5,
        "resamples": 200,
    },
    "cpu": {
        "presets": CPU_PRESETS,
        "lengths": ["32", "64", "100", "256", "1024", "4096", "16384"],
        "contexts": ["64", "1024", "4096"],
        "d_model": 64,
        "num_layers": 2,
    },
    "accelerator": {
        "presets": [*CPU_PRESETS[:2], "elstm", "s5", "lru", *CPU_PRESETS[2:]],
        "lengths": ["32", "64", "100", "256", "1024", "4096", "16384"],
        "contexts": ["64", "1024", "4096", "16384"],
        "d_model": 256,
        "num_layers": 6,
        "budget_s": 10.0,
        "min_rounds": 15,
        "max_rounds": 51,
        "cap_s": 5.0,
    },
}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def _ms(s: Mapping[str, float]) -> str:
    return f"{1e3 * s['median']:.3g} [{1e3 * s['q1']:.3g}, {1e3 * s['q3']:.3g}]"


def _ci(r: Mapping[str, float]) -> str:
    return f"{r['estimate']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def markdown(results: Mapping[str, Any]) -> str:
    from seqjax.experiment.equal_parameters import LABELS
    from seqjax.experiment.latency import RULES

    names, label = results["presets"], lambda n: LABELS.get(n, n)
    lengths = [int(x) for x in results["prefill"]]
    lines = [
        f"# Latency and throughput by length and batch (issue 19 §4), size {results['size']}",
        "",
        f"Generated {results['date']} by `{results['command']}` in {results['wall_s']:.0f} s, code "
        f"{short_code_version(results.get('code_version'))}.",
        f"Platform: {results['platform']}; machine: {results['machine']}.",
        "",
        f"Byte-level LMs, {results['num_layers']} blocks of width {results['d_model']}, vocab 256, float32, "
        "untrained; each model's MLP width matched so its parameter count equals the exact-attention "
        "transformer's with a 4x MLP. Every program is compiled before it is timed (compile time excluded), "
        "warmed up once, then timed in interleaved rounds (each model once per round, order rotated). Cells: "
        "median [first quartile, third quartile]; ratios: median ratio [95% percentile bootstrap over "
        f"rounds, {results['resamples']} resamples; a round is the unit of independence].",
        "",
        "| model | family | parameters | MLP expansion |",
        "|---|---|---:|---:|",
    ]
    for n in names:
        expansion, params = results["sizes"][n]
        lines.append(f"| {label(n)} | {results['families'][n]} | {params:,} | {expansion:.2f} |")
    lines += ["", "## Verdicts (rules fixed in the driver before the run)", ""]
    for key, rule in RULES.items():
        v = results["verdicts"][key]
        evidence = ", ".join(f"{k}: {_ci(r)} ({v['classes'][k]})" for k, r in v["intervals"].items())
        extra = (
            f" Outright faster (interval below 1 at every L < 100): **{v['faster']}**."
            if "faster" in v
            else ""
        )
        lines += [
            f'- **({key}) {v["verdict"]}.** Claim: "{rule["claim"]}" Rule: {rule["rule"]} '
            f"Evidence: {evidence or 'not measured'}.{extra}",
        ]
    lines += [
        "",
        "## Prefill latency at batch 1, ms",
        "",
        "| model | " + " | ".join(f"L={n:,}" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for n in names:
        cells = [
            _ms(results["prefill"][str(length)][n]) if n in results["prefill"][str(length)] else "skipped"
            for length in lengths
        ]
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    if results["skipped"]:
        lines += [
            "",
            "Not run at longer lengths: "
            + "; ".join(f"{label(n)}: {w}" for n, w in results["skipped"].items()),
        ]
    for ref, by_model in results["prefill_ratios"].items():
        lines += [
            "",
            f"## Prefill latency ratio model / {label(ref)} (below 1: the model is faster)",
            "",
            "| model | " + " | ".join(f"L={n:,}" for n in lengths) + " | crossovers (L) |",
            "|---|" + "---:|" * len(lengths) + "---|",
        ]
        for n, by_length in by_model.items():
            cells = [_ci(by_length[str(length)]) if str(length) in by_length else "" for length in lengths]
            cross = ", ".join(f"{x:,.0f}" for x in results["crossovers"][ref][n]) or "none"
            lines.append(f"| {label(n)} | " + " | ".join(cells) + f" | {cross} |")
    batches = sorted({int(b) for rows in results["throughput"].values() for b in rows})
    lines += [
        "",
        f"## Throughput at L = {results['throughput_length']}: tokens/s (batching gain over batch 1, 95%)",
        "",
        "| model | " + " | ".join(f"B={b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for n in names:
        rows = results["throughput"].get(n, {})
        cells = []
        for b in batches:
            r = rows.get(str(b))
            if r is None:
                cells.append("")
            else:
                gain = f" ({_ci(r['gain'])}x)" if "gain" in r else ""
                cells.append(f"{r['tokens_per_s']:,.0f}{gain}")
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Time of a batch over the time of one sequence, t(B) / t(1), at L = {results['throughput_length']}:",
        "",
        "| model | " + " | ".join(f"B={b}" for b in batches if b != 1) + " |",
        "|---|" + "---:|" * (len(batches) - 1),
    ]
    for n in names:
        rows = results["throughput"].get(n, {})
        cells = [
            _ci(rows[str(b)]["time_ratio"]) if "time_ratio" in rows.get(str(b), {}) else ""
            for b in batches
            if b != 1
        ]
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    contexts = [int(c) for c in results["decode"]]
    lines += [
        "",
        "## Generation: ms per decode step (batch 1) after a prompt of C tokens; ratio to exact attention",
        "",
        "| model | " + " | ".join(f"C={c:,}" for c in contexts) + " | crossovers (C) |",
        "|---|" + "---:|" * len(contexts) + "---|",
    ]
    for n in names:
        cells = []
        for c in contexts:
            s = results["decode"][str(c)].get(n)
            ratio = f"; {_ci(s['ratio_to_attention'])}" if s and "ratio_to_attention" in s else ""
            cells.append(f"{_ms(s)}{ratio}" if s else "")
        cross = ", ".join(f"{x:,.0f}" for x in results["decode_crossovers"].get(n, [])) or "none"
        lines.append(f"| {label(n)} | " + " | ".join(cells) + f" | {cross if n != 'attention' else ''} |")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Prefill latency against L (log-log, IQR bars), tokens/s against batch, decode ms against C."""
    import numpy as np

    from seqjax.experiment.equal_parameters import LABELS
    from seqjax.experiment.plots import _finish, _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))

    def curve(ax: Any, points: dict[int, Mapping[str, float]], name: str, scale: float = 1e3) -> None:
        xs = sorted(points)
        med = np.array([scale * points[x]["median"] for x in xs])
        low = med - np.array([scale * points[x]["q1"] for x in xs])
        high = np.array([scale * points[x]["q3"] for x in xs]) - med
        style = "--" if results["families"][name] == "transformer" else "-"
        ax.errorbar(
            xs,
            med,
            yerr=[low, high],
            marker="o",
            markersize=3,
            capsize=2,
            linestyle=style,
            label=LABELS[name],
        )

    for n in results["presets"]:
        curve(axes[0], {int(L): rows[n] for L, rows in results["prefill"].items() if n in rows}, n)
        rows = results["throughput"].get(n, {})
        bs = sorted(int(b) for b in rows)
        axes[1].plot(
            bs,
            [rows[str(b)]["tokens_per_s"] for b in bs],
            marker="o",
            markersize=3,
            linestyle="--" if results["families"][n] == "transformer" else "-",
            label=LABELS[n],
        )
        curve(axes[2], {int(c): rows[n] for c, rows in results["decode"].items() if n in rows}, n)
    titles = (
        ("prompt length L", "prefill latency, ms (batch 1; bars: IQR)"),
        (f"batch (L = {results['throughput_length']})", "tokens/s"),
        ("context C", "ms per decode step (batch 1; bars: IQR)"),
    )
    for ax, (xlabel, ylabel) in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Equal-parameter LMs ({results['machine']}, size {results['size']})", fontsize=10)
    return _finish(fig, path)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    del argv
    import time

    logging.getLogger("absl").setLevel(logging.WARNING)
    apply_size_defaults(FLAGS, SIZE_DEFAULTS[FLAGS.size])
    start = time.perf_counter()
    load_start = os.getloadavg()
    import jax

    from seqjax.experiment import latency
    from seqjax.experiment.equal_parameters import MIXERS, ModelShape, equal_param_expansions
    from seqjax.experiment.outputs import run_header, write_results

    names = list(FLAGS.presets)
    unknown = [n for n in names if n not in MIXERS]
    if unknown:
        raise app.UsageError(f"--presets: unknown {unknown}; choose from {', '.join(MIXERS)}.")
    if FLAGS.compilation_cache and FLAGS.workdir:
        from seqjax.experiment.protocol import use_compilation_cache

        use_compilation_cache(Path(FLAGS.workdir) / ".jax_cache")
    shape = ModelShape(d_model=FLAGS.d_model, num_layers=FLAGS.num_layers, vocab=256)
    sizes = equal_param_expansions(names, shape)
    rounds = {"budget_s": FLAGS.budget_s, "least": FLAGS.min_rounds, "most": FLAGS.max_rounds}
    log = lambda text: print(text, flush=True)
    prefill, skipped = latency.prefill_times(
        sizes, [int(x) for x in FLAGS.lengths], shape, cap_s=FLAGS.cap_s, log=log, **rounds
    )
    throughput = latency.throughput_times(
        sizes,
        FLAGS.throughput_length,
        [int(b) for b in FLAGS.batches],
        shape,
        log=log,
        **(rounds | {"budget_s": FLAGS.throughput_budget_s}),
    )
    decode = latency.decode_times(
        sizes, [int(c) for c in FLAGS.contexts], shape, steps=FLAGS.decode_steps, log=log
    )
    analysis = latency.analyse(
        prefill, throughput, FLAGS.throughput_length, decode, n_resamples=FLAGS.resamples
    )
    platform = jax.default_backend()
    load = f"load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    machine = describe_machine(platform)
    if platform == "cpu":
        machine += f", shared with other jobs ({load})"
    results = {
        **run_header(sys.argv, platform),
        "machine": machine,
        "size": FLAGS.size,
        "d_model": FLAGS.d_model,
        "num_layers": FLAGS.num_layers,
        "presets": names,
        "families": {n: latency.FAMILIES[n] for n in names},
        "sizes": sizes,
        "throughput_length": FLAGS.throughput_length,
        "resamples": FLAGS.resamples,
        "skipped": skipped,
        "raw": {
            "prefill": {str(k): {n: t.tolist() for n, t in v.items()} for k, v in prefill.items()},
            "throughput": {n: {str(b): t.tolist() for b, t in v.items()} for n, v in throughput.items()},
            "decode": {str(k): {n: t.tolist() for n, t in v.items()} for k, v in decode.items()},
        },
        **analysis,
        "wall_s": time.perf_counter() - start,
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size)
    write_results(out, results, markdown(results))
    plot(results, f"{out}.png")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
