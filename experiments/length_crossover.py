"""Experiment: do recurrent models beat transformers on long sequences at an equal training budget?

The claim under test is "RNNs beat transformers past 8k tokens". The verdict rule, fixed here before any
run: at every length L >= --claim_from (default 8192; every length when the run has none that long), take
the best recurrent and the best attention model, each chosen on validation, and the paired bootstrap
interval of their difference in the headline metric on the test split, at confidence 1 - 0.05 / m over
the m lengths (Bonferroni). The claim is *supported* when every interval excludes zero in the recurrent
model's favour, *contradicted* when every one excludes it the other way, *depends* when both happen, and
*inconclusive* otherwise (`seqjax.experiment.verdict`). Holm-adjusted p-values are reported beside it.

Every length runs the protocol (`seqjax.experiment.protocol`): equal training tokens (warmup + cosine
ending at the budget), parameters matched within ±5%, a learning rate chosen on validation from a grid,
--seeds seeds at the chosen rate, per-example test predictions saved; the strong non-neural baselines of
the task are in every table. Tokens per batch are held fixed (batch = --tokens_per_batch // L, at least
1), so a longer sequence does not also mean a bigger batch.

    python experiments/length_crossover.py --size=smoke --config=configs/genomic.py --options=task=species \
        --presets=lstm,attention --lengths=256,512 --tokens_per_batch=1024   # ~1 minute: the wiring
    python experiments/length_crossover.py --config=configs/genomic.py --options=task=species \
        --presets=lstm,elstm,mamba,attention,longformer --lengths=1024,4096,16384
    python experiments/length_crossover.py --options=corpus=python_docs,route=offline   # document LM
    python experiments/length_crossover.py --noretrain          # re-tabulate finished runs (same workdir)

Results: `experiments/results/length_crossover_{task}_{size}_{platform}.md`, `.json` and `_*.png`.
Runs go to `<workdir>/L<length>/`; an interrupted run resumes from the finished runs there.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

from seqjax.experiment.flags import define_protocol_flags, driver_settings, sweep_configs
from seqjax.experiment.outputs import provenance_lines

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=8192 * 100)
flags.DEFINE_string("config", "configs/documents.py", "Task config file.")
flags.DEFINE_string("options", "", "Extra config-arg options for every run, e.g. corpus=python_docs.")
flags.DEFINE_list(
    "presets",
    ["lstm", "elstm", "mamba", "gla", "mamba2", "gated_deltanet", "mlstm", "rglru", "attention", "swa"],
    "Models (seqjax.config.PRESETS): the 2024 recurrent layers (Mamba-2, Gated DeltaNet, mLSTM, RG-LRU) "
    "stand beside the RNNs, Mamba and GLA by default.",
)
flags.DEFINE_list("lengths", ["1024", "4096", "16384"], "Sequence lengths.")
flags.DEFINE_integer("tokens_per_batch", 8192, "Tokens per training batch at every length.")
flags.DEFINE_integer("claim_from", 8192, "The claim covers lengths >= this (all lengths if none is).")
flags.DEFINE_string(
    "size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': cpu models, 2 steps, 2 seeds, 1 rate."
)
flags.DEFINE_string("workdir", "/tmp/seqjax_crossover", "Runs go to <workdir>/L<length>/.")
flags.DEFINE_list("config_overrides", [], "Extra key=value config overrides for every run.")
flags.DEFINE_bool("retrain", True, "Train missing runs (else only re-tabulate the finished ones).")
flags.DEFINE_string(
    "out", "experiments/results/length_crossover_{task}_{size}_{platform}", "Output path without extension."
)

CLAIM_TEXT = "recurrent beats attention"


def markdown(results: dict[str, Any]) -> str:
    from seqjax.experiment.report import key_class
    from seqjax.experiment.summary import (
        baseline_difference_table,
        baseline_table,
        comparison_lines,
        model_table,
    )

    summaries = results["summaries"]
    first = summaries[0]
    metric, larger = first["metric"], first["larger_is_better"]
    p = first["protocol"]
    v = results["verdict"]
    lines = [
        f"# {first['task']}: {metric} at equal training tokens, by sequence length",
        "",
        *provenance_lines(results),
        f"- {results['config']} ({results['options'] or 'defaults'}); {results['tokens_per_batch']:,} tokens "
        f"per batch at every length; {p['train_tokens']:,} training tokens per run, warmup + cosine to the "
        f"budget; learning rate from {p['learning_rates']} (extended by up to {p.get('grid_extensions', 0)} "
        f"rate past an edge it lands on) chosen on validation (seed 0); {p['seeds']} seeds "
        f"at the chosen rate; parameters matched within ±{p['param_tolerance']:.0%} at each length.",
        f"- {metric}: {'higher' if larger else 'lower'} is better. "
        f"Intervals: {first['confidence_level']:.2%} "
        f"(95% Bonferroni-corrected over {len(summaries)} lengths) bootstrap over test clusters and seeds.",
        "",
        f"## Verdict: {CLAIM_TEXT} (lengths >= {results['claim_from']:,}): **{v['verdict']}**",
        "",
        "Rule (fixed before the run): supported if at every covered length the interval of best recurrent "
        "minus best attention (each chosen on validation) excludes zero in the recurrent model's favour; "
        "contradicted if every one excludes zero the other way; depends if both occur; else inconclusive.",
        "",
        "| L | class | Holm-adjusted p |",
        "|---:|---|---:|",
        *(f"| {k} | {key_class(c)} | {c['holm_p']:.3g} |" for k, c in v["per_key"].items()),
        "",
    ]
    for s in summaries:
        lines += [
            f"## L = {s['length']:,} (batch {s['protocol']['batch_size']})",
            "",
            model_table(s["models"], metric, s["confidence_level"]),
            "",
            baseline_table(s["baselines"], metric, s["confidence_level"]) if s["baselines"] else "",
            "",
            baseline_difference_table(s),
            "",
            *comparison_lines(s["comparisons"], metric),
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

    from seqjax.experiment import plots
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import use_compilation_cache
    from seqjax.experiment.report import Claim
    from seqjax.experiment.sweep import claim_verdict, compare_lengths

    if FLAGS.compilation_cache:
        use_compilation_cache(Path(FLAGS.workdir) / ".jax_cache")
    lengths = sorted(int(n) for n in FLAGS.lengths)
    claim = Claim(CLAIM_TEXT, "recurrent", "attention")
    summaries = compare_lengths(
        sweep_configs(ROOT / FLAGS.config, FLAGS.options),
        driver_settings(FLAGS),
        FLAGS.workdir,
        lengths,
        claims=[claim],
        n_resamples=FLAGS.resamples,
        retrain=FLAGS.retrain,
    )
    verdict, claim_from = claim_verdict(summaries, claim, FLAGS.claim_from)
    platform = jax.default_backend()
    results = {
        **run_header(sys.argv, platform),
        "config": FLAGS.config,
        "options": FLAGS.options,
        "size": FLAGS.size,
        "tokens_per_batch": FLAGS.tokens_per_batch,
        "claim_from": claim_from,
        "presets": list(FLAGS.presets),
        "verdict": verdict,
        "summaries": summaries,
    }
    task = summaries[0]["task"]
    out = ROOT / FLAGS.out.format(task=task, size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))
    by_length = {s["length"]: s for s in summaries}
    # every length's strongest baseline (validation may choose another at each length), in order met
    baselines = list(dict.fromkeys(s["strongest_baseline"] for s in summaries if s["strongest_baseline"]))
    plots.metric_by_length(
        by_length, f"{out}_metric.png", title=f"{task}: {CLAIM_TEXT}?", baselines=baselines
    )
    plots.cost_by_length(by_length, f"{out}_cost.png", title=task)
    for s in summaries:
        plots.learning_curves(s, f"{out}_curves_L{s['length']}.png", title=f"{task} L={s['length']}")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
