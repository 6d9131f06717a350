"""Experiment (issue 19 §1): training stability across seeds, and across learning rates.

The claim under test: "Transformers trained on sequences exceeding 8,000 tokens showed high variance in
final performance across random seeds (standard deviation of 4.2 F1 points), while E-LSTM training was
highly consistent (0.8)"; and beside it, "transformers tolerate a wider range of hyperparameters".

Tasks (--tasks): genic vs intergenic DNA windows (`configs/genomic.py`, classification; macro-F1 x 100,
the claim's F1 points) and the document language model on the Python documentation
(`configs/documents.py`, bits per byte), both at --length 4,096 at the CPU size and 8,192 with
`--size=accelerator` (the claim's "exceeding 8,000 tokens" is tested as stated only there). Models
(--presets): LSTM, E-LSTM, Mamba, exact attention and the Longformer encoder. For classification, exact
attention is the bidirectional `encoder` preset (Longformer's full-attention counterpart: the two differ
only in the window). Both are bidirectional encoders, which a language model cannot use
(`seqjax.config.check_preset_task`), so for the LM the causal `attention` preset stands in for `encoder`
and causal sliding-window attention (`swa`, window 256) for Longformer, as in `length_crossover.py`
(`seqjax.experiment.stability.LM_STAND_INS`).

The design, the statistics and the verdict rules are those of `seqjax.experiment.stability`, fixed
there before any run: per task and model, the protocol's learning-rate grid with seed 0 (initialisation
and data order) chooses the rate on validation; at that rate a crossed grid of 5 initialisation x 2
data-order seeds (10 runs, the grid's run its (0, 0) cell), each scored on the test split; at every
other rate of the grid, 3 initialisation seeds with data seed 0. The SD of the 10 runs' test metric
with a bootstrap interval, its variance components (init, data order, residual) by two-way ANOVA,
Brown-Forsythe between models, and the per-rate means and spread over the shared grid. Rule (a)
"attention varies more across seeds than the E-LSTM" (Brown-Forsythe, best attention model vs E-LSTM,
p < 0.05 and the direction); rule (b) "attention tolerates a wider range of learning rates than the
E-LSTM" (the interval of the spread difference). With 10 against 10 runs, Brown-Forsythe detects an SD
ratio of about 3.9 at 80% power (the claim's is 5.25); smaller differences will read inconclusive.

    python experiments/stability.py --size=smoke                      # ~1 min on 2 cores: the wiring
    python experiments/stability.py --workdir=runs/stability          # CPU size, 4,096 tokens
    python experiments/stability.py --size=accelerator --workdir=runs/stability_accelerator  # 8,192
    python experiments/stability.py --noretrain --workdir=runs/stability  # re-tabulate finished runs

Results: `experiments/results/stability_{task}_{size}_{platform}.md`, `.json`, `_runs.png` (every crossed
run per model) and `_rates.png` (test metric against learning rate, each seed and the per-rate mean).
Runs go to `<workdir>/<task>/`; an interrupted run resumes from the finished runs there, and its
`settings.json` refuses a rerun with other settings (`--fresh` starts over).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import app, flags

from seqjax.experiment.flags import (
    apply_size,
    data_record,
    define_protocol_flags,
    define_run_flags,
    prepare_workdir,
    preset_configs,
    protocol_record,
    protocol_settings,
)
from seqjax.experiment.outputs import provenance_lines

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=8192 * 100)
flags.DEFINE_list("tasks", ["genic_vs_intergenic", "lm"], "Tasks (TASKS): classification and the LM.")
flags.DEFINE_list(
    "presets",
    ["lstm", "elstm", "mamba", "encoder", "longformer"],
    "Models (seqjax.config.PRESETS); for the LM, encoders are replaced by their causal stand-ins "
    "(seqjax.experiment.stability.LM_STAND_INS). Rules (a) and (b) need elstm and an attention model.",
)
flags.DEFINE_integer("length", 4096, "Sequence length (tokens; bp for DNA).")
flags.DEFINE_string("route", "offline", "Data route: offline/auto (full data) or sample (embedded).")
flags.DEFINE_string("corpus", "python_docs", "The LM's corpus (configs/documents.py).")
flags.DEFINE_string("options", "", "Extra config-arg options for every run.")
flags.DEFINE_integer("tokens_per_batch", 8192, "Tokens per training batch (batch = this // length).")
flags.DEFINE_integer("init_seeds", 5, "Initialisation seeds of the crossed grid at the chosen rate.")
flags.DEFINE_integer("data_seeds", 2, "Data-order seeds of the crossed grid at the chosen rate.")
flags.DEFINE_integer("lr_seeds", 3, "Initialisation seeds (data seed 0) at every rate of the grid.")
flags.DEFINE_list(
    "rejudge",
    [],
    "Results JSON files written by this driver: recompute the rate rules (b) and (b') from the run values "
    "they hold and rewrite the .md and .json beside them (no runs are read or trained).",
)
flags.DEFINE_string(
    "size",
    "cpu",
    "cpu, accelerator (8,192 tokens, larger models and budget), or smoke: 2 one-layer models, "
    "genic vs intergenic on the embedded sample, 2 steps, 1 rate, a 2 x 2 seed grid.",
)
define_run_flags(
    FLAGS,
    workdir="/tmp/seqjax_stability",
    runs="<workdir>/<task>/",
    out="experiments/results/stability_{task}_{size}_{platform}",
)
FLAGS.set_default("evaluation_examples", 128)

#: Defaults each --size brings for the flags the command line leaves out.
SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "accelerator": {
        "length": 8192,
        "tokens_per_batch": 65536,
        "train_tokens": 65536 * 300,
        "evaluation_examples": 512,
    },
    "smoke": {
        "presets": ["elstm", "encoder"],
        "tasks": ["genic_vs_intergenic"],
        "length": 256,
        "route": "sample",
        "tokens_per_batch": 512,
        "train_tokens": 1024,
        "learning_rates": ["3e-3"],  # the rate-sensitivity summary is tested without training
        "grid_extensions": 0,
        "init_seeds": 2,
        "data_seeds": 2,
        "lr_seeds": 2,
        "evaluation_examples": 32,
        "step_memory": False,
        "resamples": 200,
        # the baselines fit on 2,048 of the 13,653 sample windows (the k-mer fits took 26 s of the smoke
        # run on all of them); the smoke size's models have one layer (`preset_configs`)
        "config_overrides": ["data.max_examples_per_split=2048"],
    },
}
#: Per task: (config file, its config-arg options with {route} and {corpus}, the trainer's task).
TASKS: dict[str, tuple[str, str, str]] = {
    "genic_vs_intergenic": ("configs/genomic.py", "task=genic_vs_intergenic,route={route}", "classification"),
    "lm": ("configs/documents.py", "corpus={corpus},route={route}", "lm"),
}
CLAIM_A = "attention varies more across seeds than the E-LSTM"
CLAIM_B = "attention tolerates a wider range of learning rates than the E-LSTM"
PAPER_CAVEAT = (
    "The paper's task, data, model sizes and E-LSTM equations are not given: this compares the same "
    "architectures (seqjax's E-LSTM definition, docs/cells.md) on these data and budgets, so it neither "
    "reproduces nor refutes its 4.2 and 0.8 F1 points."
)


def _number(value: float, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(v: Mapping[str, float] | None, digits: int, low: str = "low", high: str = "high") -> str:
    """`estimate [low, high]` of a {estimate, low, high} mapping (n/a for None)."""
    if v is None:
        return "n/a"
    return f"{_number(v['estimate'], digits)} [{_number(v[low], digits)}, {_number(v[high], digits)}]"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def stability_table(summary: Mapping[str, Any], digits: int) -> str:
    """Per model: chosen rate, mean and SD [bootstrap interval] of the crossed runs, the SDs of the
    variance components and their total, Brown-Forsythe p against the E-LSTM, diverged runs."""
    lines = [
        "| model | lr | runs | mean | SD [95% bootstrap] | SD [95% chi²] | σ_init | σ_data | σ_resid | "
        "√(σ²_init + σ²_data + σ²_resid) | Brown–Forsythe p vs E-LSTM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    versus = summary["brown_forsythe"].get("vs_reference", {})
    for row in summary["models"]:
        sd, c = row["sd"], row["components"]
        finished = sum(1 for r in row["runs"] if math.isfinite(r["value"]))
        notes = [f"{row['diverged']} diverged"] if row["diverged"] else []
        if row.get("one_class_runs"):
            notes.append(f"{row['one_class_runs']} one class")
        runs = f"{finished}" + (f" ({', '.join(notes)})" if notes else "")
        if sd is None:
            sd_cell = chi_cell = "n/a"
        else:
            sd_cell = _interval(sd, digits)
            chi_cell = _interval(sd, digits, "chi2_low", "chi2_high")
        if c is None:
            parts = ["n/a"] * 4
        else:
            parts = [
                _number(math.sqrt(c[k]), digits) + ("*" if k in c["truncated"] else "")
                if math.isfinite(c[k])
                else "n/a"
                for k in ("init", "data", "residual")
            ] + [_number(math.sqrt(c["total"]), digits)]
        test = versus.get(row["model"])
        rate = f"{row['learning_rate']:.0e}" + (" (edge)" if row["grid_edge"] else "")
        lines.append(
            f"| {row['model']} | {rate} | {runs} | "
            f"{_number(row['mean'], digits)} | {sd_cell} | {chi_cell} | " + " | ".join(parts) + " | "
            f"{_p(None if test is None else test['p_value'])} |"
        )
    return "\n".join(lines)


def rate_table(summary: Mapping[str, Any], digits: int) -> str:
    """Per model and rate: mean ± SD over the rate's seeds (n), the chosen rate in bold; the spread over
    the shared grid with its interval."""
    rates = sorted({r["learning_rate"] for row in summary["models"] for r in row["rates"]})
    shared = set(summary["shared_rates"])
    header = [f"{r:.0e}" + ("" if r in shared else " (ext.)") for r in rates]
    lines = [
        "| model | "
        + " | ".join(header)
        + " | spread over the shared grid [95% bootstrap] | s²_rate [95% parametric bootstrap] |",
        "|---|" + "---:|" * (len(rates) + 2),
    ]
    for row in summary["models"]:
        by_rate = {r["learning_rate"]: r for r in row["rates"]}
        cells = []
        for rate in rates:
            r = by_rate.get(rate)
            if r is None:
                cells.append("")
                continue
            text = f"{_number(r['mean'], digits)} ± {_number(r['sd'], digits)} ({len(r['values'])})"
            text += f", {r['diverged']} diverged" if r["diverged"] else ""
            cells.append(f"**{text}**" if r["chosen"] else text)
        spread = _interval(row["spread"], digits)
        component = row.get("rate_component")
        component = "" if component is None else _interval(component, digits)
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {spread} | {component} |")
    return "\n".join(lines)


def pairs_table(summary: Mapping[str, Any], digits: int) -> str:
    """Every pair's Brown-Forsythe test with its Holm-adjusted p-value."""
    lines = ["| a | b | SD a | SD b | Brown–Forsythe p | Holm-adjusted p |", "|---|---|---:|---:|---:|---:|"]
    for t in summary["brown_forsythe"]["pairs"]:
        lines.append(
            f"| {t['a']} | {t['b']} | {_number(t['sd_a'], digits)} | {_number(t['sd_b'], digits)} | "
            f"{t['p_value']:.3g} | {t['holm_p']:.3g} |"
        )
    return "\n".join(lines)


def verdict_lines(summary: Mapping[str, Any], digits: int, lr_seeds: int) -> list[str]:
    """The two verdicts in the rules' words, with the numbers behind them."""
    a, b = summary["verdicts"]["a"], summary["verdicts"]["b"]
    attention, reference = a["pair"]
    lines = [
        f"## Verdict (a): {CLAIM_A}: **{a['verdict']}**",
        "",
        "Rule (fixed before the run): Brown–Forsythe between the best attention model (chosen on "
        "validation) and the E-LSTM over their crossed runs: supported if p < 0.05 with the attention "
        "model's SD the larger, contradicted if p < 0.05 with the E-LSTM's the larger, else inconclusive.",
        "",
    ]
    if "note" in a:
        lines.append(f"- {a['note']}.")
    else:
        t, ratio, power = a["test"], a["ratio"], a["power"]
        detects = power["brown_forsythe_80"]
        detects = f"an SD ratio of {detects:.1f}" if math.isfinite(detects) else "no SD ratio up to 100"
        lines += [
            f"- {attention}: SD {_number(t['sd_a'], digits)}; {reference}: SD {_number(t['sd_b'], digits)}; "
            f"Brown–Forsythe p = {t['p_value']:.3g}.",
            f"- SD ratio {attention} / {reference} = {_number(ratio['ratio'], 2)} "
            f"[{_number(ratio['low'], 2)}, {_number(ratio['high'], 2)}] (95% F interval, normal independent "
            f"runs; F-test p = {_p(ratio['p_value'])}).",
            f"- Power with {power['n'][0]} vs {power['n'][1]} runs at α = 0.05 (normal, independent runs): "
            f"Brown–Forsythe detects {detects} with 80% power "
            f"(the F test {_number(power['f_test_80'], 1)}); at the claim's ratio "
            f"{power['claim_ratio']:.2f} (4.2 / 0.8) its power is {power['brown_forsythe_at_claim']:.0%}.",
        ]
        rows = {row["model"]: row for row in summary["models"]}
        single = {name: rows[name].get("one_class_runs", 0) for name in (attention, reference)}
        if any(single.values()):
            counts = "; ".join(f"{name}: {n} of {len(rows[name]['runs'])}" for name, n in single.items())
            lines.append(
                f"- Runs that predict one class for every test example ({counts}) have not left the class "
                "prior: their spread against the other runs is whether training moved the model at all, "
                "not how a trained model varies with its seeds (descriptive; the rule above counts them "
                "as any run)."
            )
    lines += [
        "",
        f"## Verdict (b): {CLAIM_B}: **{b['verdict']}**",
        "",
        "Rule (fixed before the run): the spread (largest minus smallest per-rate mean test metric over the "
        f"shared grid, {lr_seeds} seeds per rate) of the same attention model minus the E-LSTM's, with a 95% "
        "bootstrap interval over each rate's seeds: supported if it lies below zero, contradicted if above, "
        "else inconclusive; a diverged run at a shared rate makes that model's spread infinite.",
        "",
    ]
    if "note" in b:
        lines.append(f"- {b['note']}.")
    else:
        d = b["difference"]
        lines.append(f"- spread({attention}) − spread({reference}) = {_interval(d, digits)}.")
        if "null_contradicted_rate" in b:
            sd_a, sd_b = b["null_seed_sds"]
            lines.append(
                f"- The spread grows with seed noise: with no rate effect at all and these models' "
                f"within-rate seed SDs ({_number(sd_a, digits)}, {_number(sd_b, digits)}), this rule says "
                f"contradicted in {b['null_contradicted_rate']:.0%} of simulated data sets (nominal 2.5%); "
                "(b′) below corrects for it."
            )
    corrected = summary["verdicts"].get("b_noise_corrected")
    if corrected is not None:
        lines += [
            "",
            f"## Verdict (b′), corrected for seed noise (added after the run): **{corrected['verdict']}**",
            "",
            "Rule (added 2026-12-06, after a review showed (b)'s spread confounds seed noise with the rate's "
            "effect; `seqjax.experiment.stability`): the rate's variance component s²_rate = (MS_between − "
            "MS_within) / n over the shared grid, the same attention model minus the E-LSTM, 95% parametric "
            "bootstrap interval (normal seeds, pooled within-rate SD): supported below zero, contradicted "
            "above, else inconclusive. Under no rate effect it says contradicted in about 5% of simulated "
            "data sets at the claim's SDs; seeds collapsed to one class are not normal draws, so read its "
            "interval as indicative where they occur.",
            "",
        ]
        if "note" in corrected:
            lines.append(f"- {corrected['note']}.")
        else:
            sd_a, sd_b = corrected["sd"]
            difference = _interval(corrected["difference"], digits)
            lines.append(
                f"- s²_rate({attention}) − s²_rate({reference}) = {difference} "
                f"(squared {summary['unit']}); rate SDs √max(s²_rate, 0): {_number(sd_a, digits)} and "
                f"{_number(sd_b, digits)}."
            )
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """The report of one task (module docstring)."""
    from seqjax.experiment.summary import baseline_difference_table, baseline_table, model_table

    s, p = results["stability"], results["protocol"]
    digits = 2 if s["task"] == "classification" else 4
    stand_ins = ", ".join(f"`{k}` → `{v}`" for k, v in results["stand_ins"].items())
    best = ", ".join(f"{k}: {v}" for k, v in s["best_by_family"].items())
    lines = [
        f"# Training stability across seeds: {results['task']} at {results['length']:,} tokens",
        "",
        *provenance_lines(results),
        *(
            [f"- rate rules re-judged {results['rejudged']['date']}: `{results['rejudged']['command']}`"]
            if "rejudged" in results
            else []
        ),
        f"- data: `{results['config']}` with `{results['options']}`; models {', '.join(results['presets'])}"
        + (f" (causal stand-ins for the LM: {stand_ins})" if stand_ins else ""),
        f"- protocol: {results['tokens_per_batch']:,} tokens per batch; {p['train_tokens']:,} training "
        "tokens per run, warmup + cosine to the budget; parameters matched within "
        f"±{p['param_tolerance']:.0%}; "
        f"learning rate from {p['learning_rates']} (grid extensions past an edge: {p['grid_extensions']}) "
        f"chosen on validation {s['headline']} with seed 0; {p['evaluation_examples'] or 'all'} test "
        "examples, the same for every run.",
        f"- seeds: at the chosen rate {results['seeds']['init_seeds']} initialisation × "
        f"{results['seeds']['data_seeds']} data-order seeds (crossed); at every other rate "
        f"{results['seeds']['lr_seeds']} initialisation seeds with data seed 0.",
        f"- metric: test {s['unit']} of each run ({'higher' if s['larger_is_better'] else 'lower'} is "
        f"better); best by family on validation: {best}.",
        f"- the paper: {PAPER_CAVEAT}",
    ]
    if results["length"] <= 8000:
        lines.append(
            f"- the claim is stated for sequences over 8,000 tokens; {results['length']:,} tests it below "
            "that length (`--size=accelerator` runs 8,192)."
        )
    if s.get("majority_reference") is not None:
        lines.append(
            f"- a constant prediction of the test split's majority class scores "
            f"{s['majority_reference']:.2f} macro-F1 points: a model at that value has not learned the "
            "task, and its SD says little."
        )
    a, b = results["seeds"]["init_seeds"], results["seeds"]["data_seeds"]
    n = a * b
    w_init, w_data = f"{b * (a - 1)}/{n - 1}", f"{a * (b - 1)}/{n - 1}"  # E[s²] of the cells (docstring)
    lines += [
        "",
        *verdict_lines(s, digits, results["seeds"]["lr_seeds"]),
        "",
        "## Seed variance at the chosen rate",
        "",
    ]
    lines += [
        stability_table(s, digits),
        "",
        "σ: square roots of the variance components of the crossed init × data grid (two-way ANOVA "
        "without replication, method of moments; * an estimate below zero set to 0; the residual holds "
        f"the init × data interaction). The bootstrap interval (BCa) resamples the runs (coarse at {n} "
        "runs); the χ² interval is that of normal, independent runs. The crossed runs are not independent "
        "draws: the "
        f"SD of the cells weights σ²_init by {w_init} and σ²_data by {w_data} in expectation, so the "
        "components' sum is shown beside it.",
        "",
        "### Every pair (Brown–Forsythe, Holm-adjusted over the pairs)",
        "",
        pairs_table(s, digits),
        "",
        "## Learning-rate sensitivity",
        "",
        rate_table(s, digits),
        "",
        "Mean ± SD (runs) of the test metric at each rate; bold: the chosen rate; (ext.): a rate past the "
        "shared grid's edge, shown but not counted in the spread.",
        "",
        "## The protocol's table (the runs with data seed 0 as its seeds)",
        "",
        model_table(results["summary"]["models"], results["summary"]["metric"], 0.95),
        "",
        "The headline metric of each model's runs with data-order seed 0 (one per initialisation seed) "
        "with the protocol's cluster × seed bootstrap interval, and what the runs cost (tokens/s and train "
        "s measured while other jobs shared the machine).",
        "",
    ]
    found = results["summary"].get("baselines")
    if found:
        whole_documents = s["task"] == "lm" and any(r["settings"].get("scored") != "windows" for r in found)
        where = (
            "scored over the test split's whole documents, not the runs' test windows"
            if whole_documents
            else "scored on the runs' test examples"
        )
        lines += [
            f"## Strong non-neural baselines (fit on the train split; {where})",
            "",
            baseline_table(found, results["summary"]["metric"], 0.95),
            "",
        ]
        against = baseline_difference_table(results["summary"])
        if against:
            lines += [
                "Each model (the runs with data seed 0) against the strongest baseline, paired on the same "
                "test examples:",
                "",
                against,
                "",
            ]
    return "\n".join(lines) + "\n"


def run_task(task: str, settings: Any, seeds: Any) -> dict[str, Any]:
    """Trains (or reads) every run of one task; returns the results behind its report."""
    from seqjax.experiment.comparison import baseline_validation_estimates, task_baselines
    from seqjax.experiment.stability import run_stability, summarize_stability, task_presets
    from seqjax.experiment.summary import summarize_length

    config_file, options, kind = TASKS[task]
    options = ",".join(
        [options.format(route=FLAGS.route, corpus=FLAGS.corpus), *(o for o in FLAGS.options.split(",") if o)]
    )
    presets, stand_ins = task_presets(FLAGS.presets, kind)
    configs = preset_configs(
        ROOT / config_file,
        presets,
        length=FLAGS.length,
        tokens_per_batch=FLAGS.tokens_per_batch,
        size=FLAGS.size,
        options=options,
        overrides=FLAGS.config_overrides,
    )
    workdir = Path(FLAGS.workdir) / task
    if not FLAGS.retrain and not workdir.exists():
        raise FileNotFoundError(f"{workdir} is missing: run with --retrain first (or check --workdir).")
    prepare_workdir(
        workdir,
        protocol_record(
            FLAGS,
            settings,
            options=options,
            **data_record(config_file),
            length=FLAGS.length,
            presets=presets,
            init_seeds=seeds.init_seeds,
            data_seeds=seeds.data_seeds,
            lr_seeds=seeds.lr_seeds,
        ),
        fresh=FLAGS.fresh,
    )
    models = run_stability(configs, settings, workdir, length=FLAGS.length, seeds=seeds)
    summary = summarize_stability(
        models, kind, shared_rates=settings.learning_rates, n_resamples=FLAGS.resamples
    )
    protocol = {name: runs.protocol_result() for name, runs in models.items()}
    # The strong non-neural baselines on the runs' own test examples (the k-mer models; the n-gram and
    # compressor baselines on the windows of a byte-tokenised documents task).
    first = next(iter(configs.values()))
    baselines, clusters = task_baselines(first, examples=settings.evaluation_examples)
    table = summarize_length(
        {k: v for k, v in protocol.items() if v.seeds},
        kind,
        baselines=baselines,
        baseline_clusters=clusters,
        n_resamples=FLAGS.resamples,
        # validation, not test, chooses the strongest baseline the models are paired with
        baseline_validation=baseline_validation_estimates(first, settings.evaluation_examples)
        if baselines
        else None,
    )
    return {
        "task": task,
        "config": config_file,
        "options": options,
        # (rescore_baselines.py rebuilds the runs' data from these: data.* overrides change the windows)
        "config_overrides": list(FLAGS.config_overrides),
        "length": FLAGS.length,
        "presets": presets,
        "stand_ins": stand_ins,
        "seeds": {"init_seeds": seeds.init_seeds, "data_seeds": seeds.data_seeds, "lr_seeds": seeds.lr_seeds},
        "protocol": {
            "train_tokens": settings.train_tokens,
            "learning_rates": list(settings.learning_rates),
            "grid_extensions": settings.grid_extensions,
            "warmup_fraction": settings.warmup_fraction,
            "param_tolerance": settings.param_tolerance,
            "evaluation_examples": settings.evaluation_examples,
            "batch_size": int(next(iter(configs.values())).batch_size),
            "n_resamples": FLAGS.resamples,
        },
        "stability": summary,
        "summary": table,
    }


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    if FLAGS["seeds"].present:
        raise app.UsageError("--seeds does not apply here: give --init_seeds, --data_seeds and --lr_seeds.")
    unknown = sorted(set(FLAGS.tasks) - set(TASKS))
    if unknown:
        raise app.UsageError(f"--tasks: unknown {unknown}; known: {sorted(TASKS)}.")
    if FLAGS.rejudge:
        return _rejudge(FLAGS.rejudge)
    apply_size(FLAGS, SIZE_DEFAULTS)
    import jax

    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import use_compilation_cache
    from seqjax.experiment.stability import SeedGrid, plot_rates, plot_runs

    if FLAGS.compilation_cache:
        use_compilation_cache(Path(FLAGS.workdir) / ".jax_cache")
    seeds = SeedGrid(FLAGS.init_seeds, FLAGS.data_seeds, FLAGS.lr_seeds)
    settings = protocol_settings(FLAGS, seeds=seeds.init_seeds * seeds.data_seeds)
    platform = jax.default_backend()
    for task in FLAGS.tasks:
        results = {
            **run_header(sys.argv, platform),
            "size": FLAGS.size,
            "tokens_per_batch": FLAGS.tokens_per_batch,
            "paper_caveat": PAPER_CAVEAT,
            **run_task(task, settings, seeds),
        }
        out = ROOT / FLAGS.out.format(task=task, size=FLAGS.size, platform=platform)
        write_results(out, results, markdown(results))
        s = results["stability"]
        where = f"{task}, {FLAGS.length:,} tokens"
        plot_runs(s, f"{out}_runs.png", title=f"{where}: crossed runs (colour: init seed, marker: data seed)")
        plot_rates(s, f"{out}_rates.png", title=f"{where}: test {s['unit']} against learning rate")


def _rejudge(paths: list[str]) -> None:
    """--rejudge: rules (b) and (b') from the per-rate run values of committed results."""
    import json

    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.stability import rate_verdicts

    for path in map(Path, paths):
        if path.suffix != ".json" or not path.exists():
            raise app.UsageError(f"--rejudge: {path} is not an existing results .json of this driver.")
        results = json.loads(path.read_text())
        if "stability" not in results:
            raise app.UsageError(f"--rejudge: {path} has no 'stability' section: not this driver's results.")
        s = results["stability"]
        resamples = results["protocol"]["n_resamples"]
        s["verdicts"].update(rate_verdicts(s["models"], s["verdicts"]["b"]["pair"], n_resamples=resamples))
        header = run_header(sys.argv, results["platform"])
        results["rejudged"] = {k: header[k] for k in ("date", "command", "code_version")}
        write_results(path.with_suffix(""), results, markdown(results))


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
