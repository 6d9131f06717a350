"""Experiment: does carrying each layer's state across segments (Transformer-XL's recurrence) lower the
bits per byte of a document language model, and at what memory per step?

Every model trains with segment recurrence (`--config.segment_recurrence=True`): consecutive segments of
`--length` tokens of the training stream, each layer's state carried from one batch to the next, the
gradient stopped at the batch boundary, so a train step's memory is that of one segment whatever the
document length. Training follows the protocol (`seqjax.experiment.protocol`): equal training tokens,
parameters matched within ±5%, a learning rate chosen on validation, --seeds seeds.

Each seed's final parameters are then scored on every test document twice, over the same targets
(`trainer.evaluate(by_document=True)`): read from the document's first token in segments of `--length`
with the state *carried* through the document (the long-context evaluation Transformer-XL reports), and
with the state *reset* at every segment (no context beyond the segment).

Verdict rule, fixed before any run: for each model, the claim "the carried state lowers bits per byte" is
*supported* when the 95% paired bootstrap interval (documents and seeds resampled) of bpb(reset) -
bpb(carried) lies above zero, *contradicted* when it lies below, *inconclusive* otherwise; over the
models, *depends* when both happen (`seqjax.experiment.verdict`).

    python experiments/segment_recurrence.py --size=smoke --presets=lstm,gla    # ~2 minutes: the wiring
    python experiments/segment_recurrence.py                                     # CPU size

Results: `experiments/results/segment_recurrence_{size}_{platform}.md` and `.json`. Runs go to
`<workdir>/`; an interrupted run resumes from the finished runs there.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from seqjax.experiment.flags import define_protocol_flags, driver_settings, preset_configs
from seqjax.experiment.outputs import provenance_lines, run_header, write_results

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=4096 * 120)
flags.DEFINE_string("config", "configs/documents.py", "Task config file (a document LM).")
flags.DEFINE_string("options", "corpus=python_docs,route=offline", "Config-arg options for every model.")
flags.DEFINE_list("presets", ["lstm", "gla", "xl_attention"], "Models (seqjax.config.PRESETS).")
flags.DEFINE_integer("length", 512, "Tokens per segment (the training and evaluation segment).")
flags.DEFINE_integer("tokens_per_batch", 4096, "Tokens per training batch (batch = this // length).")
flags.DEFINE_string("size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': 2 steps, 2 seeds, 1 rate.")
flags.DEFINE_string("workdir", "/tmp/seqjax_segments", "Runs go to <workdir>/<model>/lr<rate>/seed<k>/.")
flags.DEFINE_list("config_overrides", [], "Extra key=value config overrides for every run.")
flags.DEFINE_string(
    "out", "experiments/results/segment_recurrence_{size}_{platform}", "Output path without extension."
)

CLAIM_TEXT = "the carried state lowers bits per byte"
MODES = ("carried", "reset")
#: A model's own interval class (`seqjax.experiment.verdict.classify_interval`) in the rule's words.
MODEL_VERDICT = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}


def _configs() -> dict[str, Any]:
    return preset_configs(
        ROOT / FLAGS.config,
        FLAGS.presets,
        length=FLAGS.length,
        tokens_per_batch=FLAGS.tokens_per_batch,
        size=FLAGS.size,
        options=FLAGS.options,
        overrides=["segment_recurrence=True", *FLAGS.config_overrides],
    )


def document_sums(workdir: str, carried: bool) -> dict[str, np.ndarray]:
    """{"nll", "tokens"} per test document of the run in `workdir` (its last checkpoint), cached in
    `<workdir>/documents_<mode>.npz` so a rerun does not evaluate again."""
    from seqjax.train.trainer import evaluate, load_config

    cache = Path(workdir) / f"documents_{'carried' if carried else 'reset'}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return {k: saved[k] for k in ("nll", "tokens")}
    result = evaluate(
        load_config(workdir), workdir, split="test", step="latest", carried_state=carried, by_document=True
    )
    sums = {k: np.asarray(v, np.float64) for k, v in result["per_document"].items()}
    partial = cache.with_suffix(".tmp.npz")
    np.savez(partial, **sums)
    os.replace(partial, cache)  # a killed evaluation leaves no half-written cache
    return sums


def _interval(value: Any) -> dict[str, float]:
    return {"estimate": value.estimate, "low": value.low, "high": value.high}


def summarize(
    results: dict[str, Any], bytes_per_token: float, level: float, resamples: int
) -> dict[str, Any]:
    """Per model: bpb carried and reset with intervals over documents and seeds, their paired difference
    (reset - carried) and its class under the verdict rule."""
    from seqjax.experiment import statistics, weighted_metrics
    from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters

    rows = {}
    for model, result in results.items():
        sums = {mode: [document_sums(r.workdir, mode == "carried") for r in result.seeds] for mode in MODES}
        tokens = sums["carried"][0]["tokens"]
        for mode in MODES:
            for s in sums[mode]:
                np.testing.assert_array_equal(s["tokens"], tokens)  # same targets, every seed and mode
        nll = {mode: np.stack([s["nll"] for s in sums[mode]]) for mode in MODES}
        kwargs = {
            "targets": tokens * bytes_per_token,
            "metric": weighted_metrics.bits_per_byte,
            "confidence_level": level,
            "n_resamples": resamples,
        }
        intervals = {mode: statistics.cluster_bootstrap(nll[mode], **kwargs) for mode in MODES}
        difference = statistics.paired_bootstrap(nll["reset"], nll["carried"], **kwargs)
        record = result.seeds[0]
        # over fewer than MIN_CLUSTERS documents the interval is not judged ("neither"), as in every table
        side = classify_interval("greater", difference.low, difference.high, n_clusters=difference.n_clusters)
        rows[model] = {
            **{mode: _interval(intervals[mode]) for mode in MODES},
            "difference": {**_interval(difference), "n_clusters": difference.n_clusters},
            "class": side,
            # the rule's word for this model alone (the verdict over models is the table's headline)
            "model_verdict": not_judged(difference.n_clusters, "documents")
            if too_few_clusters(difference.n_clusters)
            else MODEL_VERDICT[side],
            "documents": len(tokens),
            "tokens": int(tokens.sum()),
            "longest_document_tokens": int(tokens.max()),
            "seeds": len(result.seeds),
            "learning_rate": result.learning_rate,
            "grid": {f"{r.learning_rate:g}": r.validation.get("bits_per_byte") for r in result.grid},
            # the chosen rate is the largest or smallest one tried (after any extension): a better rate
            # may lie beyond it
            "grid_edge": len(result.grid) > 1
            and result.learning_rate
            in (min(r.learning_rate for r in result.grid), max(r.learning_rate for r in result.grid)),
            "parameters": result.matched["parameters"],
            "step_memory_bytes": record.step_memory_bytes,
            "tokens_per_s": float(np.median([r.tokens_per_s for r in result.seeds])),
            "train_tokens": record.train_tokens,
        }
    return rows


def markdown(results: dict[str, Any]) -> str:
    from seqjax.experiment.summary import baseline_table

    p = results["protocol"]
    level = results["confidence_level"]
    lines = [
        "# Segment recurrence: bits per byte with and without the carried state",
        "",
        *provenance_lines(results),
        f"- {results['config']} ({results['options']}); segments of {results['length']} tokens, batch "
        f"{p['batch_size']}; every model trains with its state carried across batches (gradient stopped "
        f"at the batch boundary); {p['train_tokens']:,} training tokens per run, warmup + cosine to the "
        f"budget; learning rate from {p['learning_rates']} chosen on validation (seed 0); {p['seeds']} "
        f"seeds; parameters matched within ±{p['param_tolerance']:.0%}.",
        "- Test documents scored whole, in segments of the training length: *carried* runs the state "
        "through each document, *reset* restarts it at every segment; same targets. bits per byte: lower "
        f"is better; [low, high]: {level:.0%} bootstrap over test documents and seeds. Step memory: XLA's "
        "plan of one train step (one segment per row), whatever the document length.",
        "",
        f"## Verdict: {CLAIM_TEXT}: **{results['verdict']}**",
        "",
        "Rule (fixed before the run): per model, supported if the interval of bpb(reset) - bpb(carried) "
        "lies above zero, contradicted if below, else inconclusive; over the models, supported only if "
        "every model's is, depends if some are supported and some contradicted, else inconclusive "
        "(`seqjax.experiment.verdict`). The column *for this model* gives each model's own verdict.",
        "",
        f"| model | bpb carried [{level:.0%} CI] | bpb reset per segment | reset - carried | for this model "
        "| seeds | parameters | lr | step memory | tokens/s | longest test document |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(v: dict[str, float], signed: bool = False) -> str:
        f = "+.4f" if signed else ".4f"
        return f"{v['estimate']:{f}} [{v['low']:{f}}, {v['high']:{f}}]"

    for model, r in results["models"].items():
        memory = "n/a" if r["step_memory_bytes"] is None else f"{r['step_memory_bytes'] / 2**20:.1f} MiB"
        lines.append(
            f"| {model} | {cell(r['carried'])} | {cell(r['reset'])} | {cell(r['difference'], True)} | "
            f"{r.get('model_verdict', r['class'])} | {r['seeds']} | {r['parameters']:,} | "
            f"{r['learning_rate']:.0e}{' (edge)' if r.get('grid_edge') else ''} | {memory} | "
            f"{r['tokens_per_s']:,.0f} | {r['longest_document_tokens']:,} tokens |"
        )
    first = next(iter(results["models"].values()))
    lines += [
        "",
        f"{first['documents']} test documents, {first['tokens']:,} scored tokens. (edge): the chosen "
        "learning rate is the largest or smallest tried, after one extension past the grid; a better "
        "rate may lie beyond it. Validation bits per byte by learning rate (seed 0):",
        "",
    ]
    for model, r in results["models"].items():
        if r.get("grid"):
            rates = [(rate, value) for rate, value in r["grid"].items() if value is not None]
            shown = ", ".join(f"{rate}: {value:.4f}" for rate, value in rates)
            lines.append(f"- {model}: {shown}")
    lines.append("")
    if results["baselines"]:
        lines += [
            "Strong non-neural baselines (fit on the train split, the same test documents):",
            "",
            baseline_table(results["baselines"], "bits_per_byte", level),
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    from seqjax.experiment.comparison import task_baselines
    from seqjax.experiment.protocol import run_comparison, use_compilation_cache
    from seqjax.experiment.summary import baseline_rows
    from seqjax.experiment.verdict import verdict_of_classes
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import build_sources, default_data_dir

    if FLAGS.compilation_cache:
        use_compilation_cache(Path(FLAGS.workdir) / ".jax_cache")
    configs = _configs()
    settings = driver_settings(FLAGS)
    trained = run_comparison(configs, settings, FLAGS.workdir, length=FLAGS.length)
    first = next(iter(configs.values()))
    run = resolve(first)
    source = build_sources(run.data, run.data_dir or default_data_dir())["test"]
    level = 0.95
    models = summarize(trained, float(getattr(source, "bytes_per_token", 1.0)), level, FLAGS.resamples)
    baselines, _ = task_baselines(first)
    platform = jax.default_backend()
    results = {
        **run_header(sys.argv, platform),
        "config": FLAGS.config,
        "options": FLAGS.options,
        "size": FLAGS.size,
        "length": FLAGS.length,
        "confidence_level": level,
        "protocol": {
            "train_tokens": settings.train_tokens,
            "learning_rates": list(settings.learning_rates),
            "seeds": settings.seeds,
            "param_tolerance": settings.param_tolerance,
            "batch_size": int(first.batch_size),
        },
        "claim": CLAIM_TEXT,
        "verdict": verdict_of_classes(r["class"] for r in models.values()),
        "models": models,
        "baselines": baseline_rows(
            baselines, "lm", None, confidence_level=level, n_resamples=FLAGS.resamples
        ),
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
