"""The main job: compare models on one real task on the experiment protocol, and print the table.

Every model gets the same training tokens (warmup + cosine ending at the budget), a parameter count
matched within ±5%, a learning rate chosen on validation from a small grid, and several seeds; the test
split is read after the choice. The table gives each model's headline metric with a 95% interval that
resamples test clusters (genome blocks, documents, time blocks) and seeds, beside the task's strong
non-neural baselines, and the paired difference of the best recurrent and the best attention model with
its verdict (supported / contradicted / inconclusive).

    python scripts/compare.py                    # embedded genomic species sample, lstm / s5 / attention
    python scripts/compare.py --presets=lstm,elstm,mamba,longformer --train_tokens=2000000 --seeds=5
    python scripts/compare.py --config=configs/timeseries.py --presets=lstm,mamba,attention
    python scripts/compare.py --config=configs/documents.py --options=length=4096,corpus=python_docs
    python scripts/compare.py --size=accelerator --options=task=species,route=auto,length=16384

The workdir (default `runs/compare/<config>-<options>[-<size>]` in the repository, git-ignored; printed
at the start and the end) holds the runs, `<workdir>/<model>/lr<rate>/seed<k>/`, the per-example test
predictions, `<workdir>/predictions/`, the table, `<workdir>/comparison.md` (also printed), the numbers
behind it, `comparison.json`, and plots, `comparison_*.png`. A rerun with the same settings reuses the
finished runs and resumes an interrupted one; a rerun with other settings (`settings.json` in the
workdir: budget, evaluation examples, batch size, overrides, parameter target) is an error naming the
folder: give another `--workdir`, or `--fresh` to delete the old runs first.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys

from absl import app, flags

from seqjax.experiment.flags import check_settings, default_workdir, define_protocol_flags, protocol_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string(
    "config", "configs/genomic.py", "A task config file (its arg comes from the flags below)."
)
flags.DEFINE_list("presets", ["lstm", "s5", "attention"], "Model presets to compare (seqjax.config.PRESETS).")
flags.DEFINE_string(
    "options", None, "Config-arg options, e.g. 'task=promoter,length=4096'; default: DEFAULT_OPTIONS."
)
flags.DEFINE_string("size", "cpu", "cpu or accelerator.")
flags.DEFINE_integer("batch_size", None, "Batch size of every model (default: the size's).")
flags.DEFINE_float("confidence", 0.95, "Confidence level of every interval.")
flags.DEFINE_string(
    "workdir",
    None,
    "Runs, table and plots go here (default: runs/compare/<config>-<options>[-<size>] in the repository).",
)
flags.DEFINE_list("config_overrides", [], "Extra config overrides for every model, key=value.")
flags.DEFINE_bool("fresh", False, "Delete the workdir's previous runs first (else reuse finished ones).")
flags.DEFINE_bool("baselines", True, "Score the task's non-neural baselines too.")
flags.DEFINE_string(
    "match_target", None, "The preset whose parameter count the others match (default: the largest)."
)
flags.DEFINE_string("out", None, "Also copy comparison.md/.json/.png to this path (without extension).")
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=8192 * 60)

#: Options used when --options is not given: the species task learns visibly within minutes on CPU.
DEFAULT_OPTIONS = {"genomic.py": "task=species,length=1024"}
#: The claim the main job judges, fixed before any run (seqjax.experiment.verdict's rule).
CLAIMS_TEXT = "recurrent beats attention"


def _options() -> str:
    if FLAGS.options is not None:
        return FLAGS.options
    return DEFAULT_OPTIONS.get(os.path.basename(FLAGS.config), "")


def _config(preset: str):
    from seqjax.config import apply_overrides, load_config_file

    arg = ",".join([preset, f"size={FLAGS.size}"] + [o for o in _options().split(",") if o])
    config = load_config_file(os.path.join(ROOT, FLAGS.config), arg)
    overrides = list(FLAGS.config_overrides)
    if FLAGS.batch_size:
        overrides += [f"batch_size={FLAGS.batch_size}", f"eval_batch_size={FLAGS.batch_size}"]
    return apply_overrides(config, overrides)


#: The flags whose change makes a workdir's finished runs another experiment's: a rerun with other values
#: is refused (the runs' config digests do not cover what the protocol evaluates on).
SETTINGS_FLAGS = (
    "config",
    "options",
    "size",
    "batch_size",
    "config_overrides",
    "match_target",
    "train_tokens",
    "evaluation_examples",
)


def _composition_note(summary: dict) -> str:
    """Says when the strongest non-neural baseline is better than every model: on each model's paired
    interval against it (the same test examples) where the summary has them, else where its interval
    lies wholly past every model's."""
    larger = summary["larger_is_better"]
    finite = [b for b in summary["baselines"] if math.isfinite(b["low"])]
    if not finite or not summary["models"]:
        return ""
    # the baseline the models are paired with (chosen on validation: `summary.strongest_baseline`); a
    # summary from before that choice took the best on test
    named = [b for b in finite if b["model"] == summary.get("strongest_baseline")]
    if summary.get("strongest_chosen_on", "test") == "test" and not named:
        named = [(max if larger else min)(finite, key=lambda b: b["estimate"])]
    if not named:  # validation chose none with an interval: no baseline to name
        return ""
    best = named[0]
    paired = summary.get("against_strongest_baseline") or {}
    if paired and all(d is not None and "error" not in d for d in paired.values()):
        beaten = all((d["high"] < 0) if larger else (d["low"] > 0) for d in paired.values())
        how = "every paired interval excludes zero"
    else:
        edge = best["low"] if larger else best["high"]
        beaten = all((r["high"] < edge) if larger else (r["low"] > edge) for r in summary["models"])
        how = "with intervals apart"
    if not beaten:
        return ""
    return (
        f"**The strongest baseline ({best['model']}, {best['estimate']:.4f}) is better than every model: "
        f"{how}.** This task is solved without learning long-range structure (for DNA: "
        "from k-mer composition alone). At this budget the table measures how fast each model learns "
        "what the baseline already has, not which one uses long context."
    )


def markdown(summary: dict) -> str:
    from seqjax.experiment.outputs import short_code_version
    from seqjax.experiment.summary import baseline_table, comparison_lines, model_table

    p = summary["protocol"]
    metric, level = summary["metric"], summary["confidence_level"]
    lines = [
        f"## {FLAGS.config} ({_options() or 'defaults'}), L = {summary['length']:,}, test split",
        "",
        f"- date: {summary['date']}; platform {summary['platform']}; code "
        f"{short_code_version(summary.get('code_version'))}",
        f"- command: `{summary['command']}`",
        f"- protocol: {p['train_tokens']:,} training tokens per run (batch {p['batch_size']}), warmup "
        f"{p['warmup_fraction']:.0%} + cosine to the budget; learning rate from {p['learning_rates']} "
        f"(extended by up to {p.get('grid_extensions', 0)} rate past an edge it lands on) chosen "
        f"on validation with seed 0; {p['seeds']} seeds at the chosen rate (initialisation and data order); "
        f"parameters matched within ±{p['param_tolerance']:.0%}. Every run is scored at its last step (the "
        "final parameters; no best-checkpoint selection), so `steps` is both the steps trained and the "
        "step scored.",
        f"- {metric}: {'higher' if summary['larger_is_better'] else 'lower'} is better; [low, high] is a "
        f"{level:.0%} bootstrap interval over test clusters and seeds ({p['n_resamples']} resamples). "
        "tokens/s and train s exclude compiling and evaluation (median over seeds); FLOPs/token is the "
        "analytic 6 x parameters (+ attention) estimate; step memory is XLA's plan for one train step.",
        "",
        model_table(summary["models"], metric, level),
        "",
        "Strong non-neural baselines (fit on the train split, same test split and clusters):",
        "",
        baseline_table(summary["baselines"], metric, level) if summary["baselines"] else "(none)",
        "",
        *_against_baseline_lines(summary),
        "Paired difference of the best recurrent and the best attention model (each chosen on validation):",
        "",
        *comparison_lines(summary["comparisons"], metric),
        "",
        *(f"- verdict ({v['claim']}): **{v['verdict']}**" for v in summary.get("verdicts", [])),
    ]
    note = _composition_note(summary)
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _against_baseline_lines(summary: dict) -> list[str]:
    """Each model against the strongest baseline on the same test examples, with its heading; [] when
    the baseline has no per-example values for them."""
    from seqjax.experiment.summary import baseline_difference_table

    table = baseline_difference_table(summary)
    if not table:
        return []
    return [
        "Each model against the strongest baseline (paired: the same test examples and clusters):",
        "",
        table,
        "",
    ]


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS logs every dataset load at INFO
    import jax

    from seqjax.experiment import plots
    from seqjax.experiment.comparison import compare_at_length
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import use_compilation_cache
    from seqjax.experiment.report import Claim, judge

    try:
        configs = {preset: _config(preset) for preset in FLAGS.presets}
    except (KeyError, ValueError) as bad:  # a config file's own check, or an unknown override key
        print(f"scripts/compare.py: {bad.args[0] if bad.args else bad}", file=sys.stderr)
        raise SystemExit(2) from None
    workdir = FLAGS.workdir or default_workdir(ROOT, "compare", FLAGS.config, _options(), FLAGS.size)
    if FLAGS.fresh and os.path.isdir(workdir):
        print(f"--fresh: deleting the previous runs in {workdir}", flush=True)
        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    settings_now = {name: FLAGS[name].value for name in SETTINGS_FLAGS}
    settings_now["options"] = _options()
    try:
        check_settings(workdir, settings_now)
    except ValueError as changed:
        print(f"scripts/compare.py: {changed}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"workdir: {workdir} (finished runs there are reused; --fresh starts over)", flush=True)
    if FLAGS.compilation_cache:
        use_compilation_cache(os.path.join(workdir, ".jax_cache"))
    length = int(next(iter(configs.values())).data.get("length", 0) or 0)
    if not length:
        from seqjax.train.run_config import resolve
        from seqjax.train.trainer import build_sources

        run = resolve(next(iter(configs.values())))
        length = int(build_sources(run.data, run.data_dir)["train"][0]["inputs"].shape[0])
    settings = protocol_settings(FLAGS)
    claim = Claim(CLAIMS_TEXT, "recurrent", "attention")
    summary = compare_at_length(
        configs,
        settings,
        workdir,
        length=length,
        claims=[claim],
        baselines=FLAGS.baselines,
        confidence_level=FLAGS.confidence,
        n_resamples=FLAGS.resamples,
        match_target=FLAGS.match_target,
    )
    summary.update(run_header(sys.argv, jax.default_backend()))
    summary["verdicts"] = [
        judge(claim, {length: c}, larger_is_better=summary["larger_is_better"])
        for c in summary["comparisons"]
        if "missing" not in c
    ]
    text = markdown(summary)
    base = os.path.join(workdir, "comparison")
    write_results(base, summary, text, echo=False)
    title = f"{os.path.basename(FLAGS.config)} L={length}"
    plots.metric_by_model(summary, base + "_metric.png", title=title)
    plots.learning_curves(summary, base + "_learning_curves.png", title=title)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)) or ".", exist_ok=True)
        for suffix in (".md", ".json", "_metric.png", "_learning_curves.png"):
            shutil.copyfile(base + suffix, FLAGS.out + suffix)
    print("\n" + text)
    print(f"runs, predictions, comparison.md/.json and plots: {workdir}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    app.run(main)
