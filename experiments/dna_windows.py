"""Experiment (issue 18 §2): DNA at growing windows: nested centre crops of the same loci.

For each task of --tasks (genic_vs_intergenic, promoter, species; `seqjax.data.genomic`, full data
through --route=offline by default), the windows and their labels are chosen once, at the largest length
(the anchor, `nested=<max length>`), and a run at length L reads the centre L bp of each: the examples,
their order and their labels are the same at every length, so the only thing that changes with length
is the context around the same label. Every length runs the protocol (`seqjax.experiment.protocol`):
parameters matched within ±5% (one size at every length), a learning rate chosen on validation, --seeds
seeds, per-example test predictions saved. Budget (--budget, `seqjax.experiment.sweep.LengthBudget`):
"windows" (the default) trains every length on the same --train_windows labelled windows in batches of
--windows_per_batch, so the same steps see the same labels and only the context grows (a longer crop
reads more tokens); "tokens" holds --train_tokens and --tokens_per_batch at every length (the
length-crossover protocol), which gives a 16k crop 16x fewer labelled windows than a 1k one, so rule
(b) would measure the number of labels as much as the context. Lengths >= --few_seeds_from train
--few_seeds (3) seeds (cells over 20 minutes on 2 CPU cores); the tables give each row's seeds. The
majority, GC and k-mer (k = 3..6) logistic-regression baselines are scored on the
same test examples. Metrics: balanced accuracy (the headline), macro-F1 and MCC, each with a bootstrap
interval over the test clusters (chr20's split blocks of 315 kbp; for species, 100 kb blocks of each
genome) and the seeds, at 1 - 0.05 / m over the m lengths (Bonferroni).

Verdict rules, fixed here before any run:

(a) *Recurrent beats attention past 8k* (the paper's claim: E-LSTM 89.4% vs Longformer 76.2% past
    8k bp). At every length L >= --claim_from (8192), the best recurrent and the best attention model,
    each chosen on validation, and the paired bootstrap interval of their balanced-accuracy difference
    on the test split: *supported* when every interval excludes zero in the recurrent model's favour,
    *contradicted* when every one excludes it the other way, *depends* when both happen, else
    *inconclusive* (`seqjax.experiment.report.judge`, the rule of `length_crossover.py`), per task.
(b) *Longer context helps* (per model and task): balanced accuracy at the longest length minus at the
    shortest, on the same loci (the nested design pairs the examples), with a paired bootstrap over the
    test clusters (those of the longest crop) and each length's seeds, at 1 - 0.05 / k over the k
    models of the task (Bonferroni). *helps* when the interval lies above zero, *hurts* when below,
    *no clear difference* otherwise (`seqjax.experiment.sweep.length_gain`). The promoter task is the
    negative control: its signal sits at the centre (the TSS at index L // 2), so no gain from context
    is expected there; a "helps" on promoter would point at a confound in how the negatives are drawn
    rather than at a use of long context.

The Linformer's E matrices (k x n parameters, k = 256: 4.2M per layer at n = 16,384) grow with the
crop; the protocol leaves parameters on the sequence-length axis out of the match
(`seqjax.experiment.matching`), so every model has the same matched size at every length and the
Linformer carries its E on top (the tables give both counts).

The paper's comparison, stated honestly: its data set, its tokenizer and its E-LSTM equations are not
given, so these tables compare the same architectures (seqjax's E-LSTM definition, docs/cells.md) on
these data, not the same numbers; they neither reproduce nor refute the paper's figures.

Default design per --size (`DESIGN`; a flag given on the command line wins; smoke: 2 steps):

| | cpu (the default) | accelerator |
|---|---|---|
| training windows per run | 200, in 50 batches of 4 | 3,200, in 200 batches of 16 |
| seeds | 5 below 8,192 bp; 3 from it | 5 below 16,384 bp; 3 from it |

    python experiments/dna_windows.py --size=smoke --route=sample --tasks=species --presets=lstm,attention \
        --lengths=256,512                                    # ~40 s on 2 CPU cores: the wiring
    python experiments/dna_windows.py                          # CPU size, full data (route=offline)
    python experiments/dna_windows.py --size=accelerator       # on a GPU
    python experiments/dna_windows.py --noretrain              # re-tabulate finished runs (same workdir)

Results: `experiments/results/dna_windows_{task}_{size}_{platform}.md`, `.json`, `_metric.png` (balanced
accuracy against context length, the best k-mer baseline dashed) and `_cost.png`. Runs go to
`<workdir>/<task>/L<length>/`; an interrupted run resumes from the finished runs there, and
`<workdir>/<task>/settings.json` refuses a rerun with other settings (`--fresh` starts over).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

from seqjax.experiment.flags import (
    apply_size_defaults,
    data_record,
    define_length_budget_flags,
    define_protocol_flags,
    define_run_flags,
    driver_settings,
    length_budget,
    prepare_workdir,
    preset_configs,
    protocol_record,
)
from seqjax.experiment.outputs import provenance_lines

ROOT = Path(__file__).resolve().parents[1]
GENOMIC_CONFIG = ROOT / "configs" / "genomic.py"
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=16384 * 50)  # (--budget=tokens)
flags.DEFINE_list("tasks", ["genic_vs_intergenic", "promoter", "species"], "Genomic tasks.")
flags.DEFINE_list(
    "presets",
    ["lstm", "elstm", "mamba", "gla", "s5", "attention", "longformer", "linformer"],
    "Models (seqjax.config.PRESETS).",
)
flags.DEFINE_list("lengths", ["1024", "4096", "8192", "16384"], "Crop lengths (bp), all of one parity.")
flags.DEFINE_integer("nested", None, "The anchor length (bp) the windows are chosen at; default the largest.")
flags.DEFINE_string("route", "offline", "Data route: offline/auto (full data) or sample (embedded).")
flags.DEFINE_string("options", "", "Extra config-arg options for every run.")
define_length_budget_flags(FLAGS, examples="labelled windows", lengths="lengths", tokens_per_batch=16384)
flags.DEFINE_integer("claim_from", 8192, "Rule (a) covers lengths >= this (all lengths if none is).")
flags.DEFINE_string(
    "size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': cpu models, 2 steps, 2 seeds, 1 rate."
)
define_run_flags(
    FLAGS,
    workdir="/tmp/seqjax_dna_windows",
    runs="<workdir>/<task>/L<length>/",
    out="experiments/results/dna_windows_{task}_{size}_{platform}",
)

#: The default design of each --size (module docstring), set on the flags the command line leaves out;
#: "smoke" takes the cpu design with 2 steps of training.
DESIGN: dict[str, dict[str, Any]] = {
    "cpu": {"windows_per_batch": 4, "train_windows": 4 * 50, "few_seeds_from": 8192},
    "accelerator": {"windows_per_batch": 16, "train_windows": 16 * 200, "few_seeds_from": 16384},
}
CLAIM_TEXT = "recurrent beats attention"
CONTEXT_TEXT = "longer context helps"
NEGATIVE_CONTROL = "promoter"
PAPER_CAVEAT = (
    "The paper reports E-LSTM 89.4% against Longformer 76.2% past 8k bp, but its data set, its tokenizer "
    "and its E-LSTM equations are not given. This table compares the same architectures (seqjax's E-LSTM "
    "definition, docs/cells.md) on these data, not the same numbers: it neither reproduces nor refutes "
    "the paper's figures."
)


def anchor_length(lengths: Sequence[int], nested: int | None = None) -> int:
    """The anchor every length crops: `nested`, else the largest length.

    >>> anchor_length([1024, 16384, 4096]), anchor_length([256], nested=512)
    (16384, 512)
    """
    return int(nested) if nested else max(int(n) for n in lengths)


def task_options(task: str, route: str, anchor: int, extra: str = "") -> str:
    """The config-arg options of one task's runs.

    >>> task_options("promoter", "offline", 16384)
    'task=promoter,route=offline,nested=16384'
    """
    return ",".join(
        [f"task={task}", f"route={route}", f"nested={anchor}", *(o for o in extra.split(",") if o)]
    )


def context_gain(
    short: Mapping[str, Any], long: Mapping[str, Any], *, confidence_level: float, n_resamples: int
) -> dict[str, dict[str, Any]]:
    """Rule (b): per model in both summaries, headline metric at `long`'s length minus at `short`'s on
    the same test examples (`sweep.length_gain`: paired bootstrap over `long`'s test clusters and each
    length's seeds), with its class ("helps", "hurts", "no clear difference").

        >>> context_gain(summaries[0], summaries[-1], confidence_level=0.99,
        ...              n_resamples=2000)  # doctest: +SKIP
        {'lstm': {'estimate': 0.04, 'low': 0.01, 'high': 0.07, 'class': 'helps', ...}, ...}
    """
    from seqjax.experiment.sweep import length_gain

    shorter = {r["model"]: r for r in short["models"]}
    out = {}
    for row in long["models"]:
        if row["model"] not in shorter:
            continue
        d = length_gain(
            row["predictions"],
            shorter[row["model"]]["predictions"],
            long["task"],
            larger_is_better=long["larger_is_better"],
            confidence_level=confidence_level,
            n_resamples=n_resamples,
        )
        out[row["model"]] = {**d, "short": shorter[row["model"]]["estimate"], "long": row["estimate"]}
    return out


def above_chance(summaries: Sequence[Mapping[str, Any]], chance: float) -> dict[str, dict[str, bool]]:
    """Per model and baseline, per length: does its balanced-accuracy interval lie above `chance`
    (1 / classes: what any prediction made without the input scores, a constant one included)? A model
    not above chance at either length may not have learned the task on this budget, so its rule (b) "no
    clear difference" cannot tell whether context helps.

        >>> rows = [{"model": "lstm", "low": 0.52}, {"model": "attention", "low": 0.47}]
        >>> above_chance([{"length": 1024, "models": rows, "baselines": []}], 0.5)
        {'lstm': {'1024': True}, 'attention': {'1024': False}}
    """
    out: dict[str, dict[str, bool]] = {}
    for s in summaries:
        for row in [*s["models"], *s["baselines"]]:
            if math.isfinite(row["low"]):
                out.setdefault(row["model"], {})[str(s["length"])] = bool(row["low"] > chance)
    return out


def kmer_baseline(summaries: Sequence[Mapping[str, Any]]) -> str | None:
    """The k-mer baseline with the best mean headline metric over the lengths (None if there is none)."""
    scores: dict[str, list[float]] = {}
    for s in summaries:
        for b in s["baselines"]:
            if "-mer" in b["model"] and math.isfinite(b["estimate"]):
                scores.setdefault(b["model"], []).append(b["estimate"])
    if not scores:
        return None
    sign = 1.0 if summaries[0]["larger_is_better"] else -1.0
    return max(scores, key=lambda k: sign * sum(scores[k]) / len(scores[k]))


def _cell(v: Mapping[str, float], signed: bool = False) -> str:
    if not math.isfinite(v["estimate"]):
        return "n/a"
    f = "+.3f" if signed else ".3f"
    ends = f" [{v['low']:{f}}, {v['high']:{f}}]" if math.isfinite(v["low"]) else ""
    return f"{v['estimate']:{f}}{ends}"


def by_length_table(summaries: Sequence[Mapping[str, Any]], metric: str) -> str:
    """Models and baselines (rows) by length (columns), the headline metric with its interval."""
    lengths = [s["length"] for s in summaries]
    names = list(dict.fromkeys(r["model"] for s in summaries for r in [*s["models"], *s["baselines"]]))
    lines = [
        "| model | " + " | ".join(f"L = {n:,}" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name in names:
        cells = []
        for s in summaries:
            row = next((r for r in [*s["models"], *s["baselines"]] if r["model"] == name), None)
            cells.append("" if row is None else _cell(row))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n({metric}; intervals as in the per-length tables)"


def _learned(learned: Mapping[str, Mapping[str, bool]], model: str, length: int) -> str:
    value = learned.get(model, {}).get(str(length))
    return "n/a" if value is None else ("yes" if value else "no")


def _chance_lines(results: Mapping[str, Any], gain: Mapping[str, Any], short: int, long: int) -> list[str]:
    """What rule (b) can say, given which models learned the task (`above_chance`)."""
    learned = results.get("above_chance", {})
    if not learned:
        return []
    chance = results["chance"]
    never = [m for m in gain if not any(learned.get(m, {}).get(str(n), False) for n in (short, long))]
    lines = [
        f"Above chance: the model's balanced-accuracy interval (the per-length tables') lies above "
        f"{chance:.3f} (1 / classes, what a prediction made without the input scores)."
    ]
    if never:
        lines.append(
            f"Not above chance at either length: {', '.join(never)}. Their intervals include chance, so "
            'their "no clear difference" cannot tell whether context helps.'
        )
    lines.append("")
    by_length = [
        f"- L = {s['length']:,}: "
        + (", ".join(m for m, v in learned.items() if v.get(str(s["length"]))) or "none")
        for s in results["summaries"]
    ]
    return [*lines, "Models and baselines above chance, by length:", "", *by_length, ""]


def markdown(results: Mapping[str, Any]) -> str:
    """The report of one task (module docstring's rules, tables by length, per-length details)."""
    from seqjax.experiment.report import key_class
    from seqjax.experiment.summary import comparison_lines, composition_line, metrics_table, model_table

    summaries = results["summaries"]
    first = summaries[0]
    metric, level = first["metric"], first["confidence_level"]
    p, v, gain = first["protocol"], results["verdict"], results["context"]
    task = results["task"]
    counts = "; ".join(
        f"{split} {c['examples']:,} ({', '.join(f'{k} {n:,}' for k, n in c['class_counts'].items())})"
        for split, c in results["data"]["splits"].items()
    )
    short, long = min(results["lengths"]), max(results["lengths"])
    learned = results.get("above_chance", {})
    lines = [
        f"# DNA at growing windows: {task}, nested centre crops of the same loci",
        "",
        *provenance_lines(results),
        f"- data: `{task}`, route `{results['route']}`, windows chosen and labelled at the anchor "
        f"{results['nested']:,} bp; every length reads their centre, so the examples and labels are the "
        f"same at every length. Windows per split: {counts}.",
        f"- protocol: {results['budget_text']}; training tokens per run by length: "
        + ", ".join(f"{s['length']:,}: {s['protocol']['train_tokens']:,}" for s in summaries)
        + f"; warmup + cosine to the budget; learning rate from {p['learning_rates']} chosen on validation "
        f"(seed 0); seeds at the chosen rate: each row says; parameters matched within "
        f"±{p['param_tolerance']:.0%}, one size at every length; "
        f"{p['evaluation_examples'] or 'all'} test examples.",
        f"- intervals: {level:.2%} (95% Bonferroni over {len(summaries)} lengths) bootstrap over test "
        "clusters (chr20: its split blocks of 315 kbp; bacterial genomes: 100 kb blocks) and seeds.",
        f"- the paper: {PAPER_CAVEAT}",
    ]
    composition = composition_line(results["data"]["splits"])
    if composition:
        lines.append(composition)
    if task == NEGATIVE_CONTROL:
        lines.append(
            "- **negative control**: the promoter signal sits at the window's centre (the TSS), so rule (b) "
            "expects no gain from context here."
        )
    lines += [
        "",
        f"## Verdict (a): {CLAIM_TEXT} (lengths >= {results['claim_from']:,}): **{v['verdict']}**",
        "",
        "Rule (fixed before the run): supported if at every covered length the interval of best recurrent "
        "minus best attention (each chosen on validation) excludes zero in the recurrent model's favour; "
        "contradicted if every one excludes zero the other way; depends if both occur; else inconclusive.",
        "",
        "| L | class | Holm-adjusted p |",
        "|---:|---|---:|",
        *(f"| {k} | {key_class(c)} | {c['holm_p']:.3g} |" for k, c in v["per_key"].items()),
        "",
        f"## Verdict (b): {CONTEXT_TEXT}, {metric} at {long:,} minus at {short:,} bp, same loci",
        "",
        f"Paired bootstrap over test clusters and seeds at {results['context_level']:.2%} (95% Bonferroni "
        f"over {len(gain)} models): helps if the interval lies above zero, hurts if below.",
        "",
        f"| model | L = {short:,} | L = {long:,} | difference | class | above chance "
        f"at {short:,} / {long:,} |",
        "|---|---:|---:|---:|---|---|",
        *(
            f"| {m} | {g['short']:.3f} | {g['long']:.3f} | {_cell(g, signed=True)} | {g['class']} | "
            f"{_learned(learned, m, short)} / {_learned(learned, m, long)} |"
            for m, g in gain.items()
        ),
        "",
        *_chance_lines(results, gain, short, long),
        "## Balanced accuracy against context length",
        "",
        by_length_table(summaries, metric),
        "",
    ]
    for s in summaries:
        lines += [
            f"## L = {s['length']:,} (batch {s['protocol']['batch_size']})",
            "",
            metrics_table(s["models"], metric, s["confidence_level"]),
            "",
            metrics_table(s["baselines"], metric, s["confidence_level"], label="baseline")
            if s["baselines"]
            else "",
            "",
            *comparison_lines(s["comparisons"], metric),
            "",
            model_table(s["models"], metric, s["confidence_level"]),
            "",
        ]
    return "\n".join(lines) + "\n"


def _data_summary(config: Any) -> dict[str, Any]:
    """The task's prepared splits (example and class counts) for a run config."""
    from seqjax.data import genomic
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import default_data_dir

    run = resolve(config)
    return genomic.prepare(run.data.source_options(), run.data_dir or default_data_dir())


#: The flags of the budget, recorded in each task's settings.json (a rerun with others is refused).
BUDGET_FLAGS = ("budget", "windows_per_batch", "train_windows", "few_seeds", "few_seeds_from")


def run_task(task: str, lengths: Sequence[int], anchor: int) -> dict[str, Any]:
    """Trains (or reads) every model at every length of one task; returns the results behind its report."""
    from seqjax.experiment.report import Claim
    from seqjax.experiment.sweep import claim_verdict, compare_lengths, joint_level

    options = task_options(task, FLAGS.route, anchor, FLAGS.options)
    spend = length_budget(FLAGS)

    def configs_at(length: int) -> dict[str, Any]:
        return preset_configs(
            GENOMIC_CONFIG,
            FLAGS.presets,
            length=length,
            tokens_per_batch=spend.batch(length) * length,
            size=FLAGS.size,
            options=options,
            overrides=FLAGS.config_overrides,
        )

    workdir = Path(FLAGS.workdir) / task
    settings = driver_settings(FLAGS)
    recorded = {name: FLAGS[name].value for name in BUDGET_FLAGS}
    prepare_workdir(
        workdir,
        protocol_record(FLAGS, settings, options=options, **recorded, **data_record(GENOMIC_CONFIG)),
        fresh=FLAGS.fresh,
    )
    claim = Claim(CLAIM_TEXT, "recurrent", "attention")
    summaries = compare_lengths(
        configs_at,
        lambda length: spend.settings(settings, length),
        workdir,
        lengths,
        claims=[claim],
        n_resamples=FLAGS.resamples,
        retrain=FLAGS.retrain,
    )
    verdict, claim_from = claim_verdict(summaries, claim, FLAGS.claim_from)
    context_level = joint_level(FLAGS.presets)
    context = context_gain(
        summaries[0], summaries[-1], confidence_level=context_level, n_resamples=FLAGS.resamples
    )
    data = _data_summary(next(iter(configs_at(max(lengths)).values())))
    chance = 1.0 / len(data["splits"]["test"]["class_counts"])
    return {
        "task": task,
        "route": FLAGS.route,
        "nested": anchor,
        "lengths": list(lengths),
        "claim_from": claim_from,
        "verdict": verdict,
        "context_level": context_level,
        "context": context,
        "chance": chance,
        "above_chance": above_chance(summaries, chance)
        if summaries[0]["metric"] == "balanced_accuracy"
        else {},
        "data": {"splits": data["splits"], "data_dir": data["data_dir"]},
        "summaries": summaries,
    }


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

    apply_size_defaults(FLAGS, DESIGN.get(FLAGS.size, DESIGN["cpu"]))
    if FLAGS.compilation_cache:
        use_compilation_cache(Path(FLAGS.workdir) / ".jax_cache")
    lengths = sorted(int(n) for n in FLAGS.lengths)
    anchor = anchor_length(lengths, FLAGS.nested)
    platform = jax.default_backend()
    for task in FLAGS.tasks:
        results = {
            **run_header(sys.argv, platform),
            "size": FLAGS.size,
            "tokens_per_batch": FLAGS.tokens_per_batch,
            **{name: FLAGS[name].value for name in BUDGET_FLAGS},
            "budget_text": length_budget(FLAGS).describe(lengths),
            "presets": list(FLAGS.presets),
            "paper_caveat": PAPER_CAVEAT,
            **run_task(task, lengths, anchor),
        }
        out = ROOT / FLAGS.out.format(task=task, size=FLAGS.size, platform=platform)
        write_results(out, results, markdown(results))
        summaries = results["summaries"]
        by_length = {s["length"]: s for s in summaries}
        kmer = kmer_baseline(summaries)
        plots.metric_by_length(
            by_length,
            f"{out}_metric.png",
            title=f"{task}: nested crops of the same loci",
            baselines=[] if kmer is None else [kmer],
        )
        plots.cost_by_length(by_length, f"{out}_cost.png", title=task)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
