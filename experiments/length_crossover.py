"""Experiment: do recurrent models beat transformers on long sequences at an equal training budget?

The claim under test is "RNNs beat transformers past 8k tokens". For each sequence length, every model
trains on the same real task for the same training-time budget (compiling and evaluation excluded)
through `scripts/compare.py` (each model in its own process, evaluated on its best checkpoint on the
test split). The tokens per batch are held constant across lengths (`--tokens_per_batch`; batch =
tokens_per_batch // L), so a longer sequence does not also mean a larger batch. The result is a table of
the task's headline metric and throughput per model and length, and the length from which the best
recurrent model beats the best attention model.

    python experiments/length_crossover.py                    # documents LM, 1k/4k/16k, ~1 h on CPU
    python experiments/length_crossover.py --lengths=1024,8192 --minutes=10 --size=accelerator
    python experiments/length_crossover.py --config=configs/genomic.py --options=task=species
    python experiments/length_crossover.py --noretrain                    # re-tabulate finished runs

Results: `experiments/results/length_crossover_{task}_{size}_{platform}.md` (and .json). Runs go to
`<workdir>/L<length>/<preset>`.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/documents.py", "Task config file.")
flags.DEFINE_string("options", "", "Extra config-arg options for every run, e.g. corpus=python_docs.")
flags.DEFINE_list("presets", ["lstm", "mamba", "gla", "attention", "swa"], "Models (seqjax.config.PRESETS).")
flags.DEFINE_list("lengths", ["1024", "4096", "16384"], "Sequence lengths.")
flags.DEFINE_integer("tokens_per_batch", 8192, "Tokens per training batch at every length.")
flags.DEFINE_float("minutes", 3.0, "Training budget per model and length: minutes of training steps.")
flags.DEFINE_string("size", "cpu", "cpu or accelerator (seqjax.config.SIZES).")
flags.DEFINE_string("workdir", "/tmp/seqjax_crossover", "Runs go to <workdir>/L<length>/<preset>.")
flags.DEFINE_integer(
    "eval_tokens",
    None,
    "Cap on the validation tokens of the evaluations during training (eval_examples = this // L); the "
    "final test evaluation always covers the whole split. Default: the whole validation split.",
)
flags.DEFINE_list(
    "config_overrides", [], "Extra key=value config overrides for every run, e.g. eval_examples=256."
)
flags.DEFINE_bool("retrain", True, "Train (else only re-tabulate the runs already in --workdir).")
flags.DEFINE_string(
    "out", "experiments/results/length_crossover_{task}_{size}_{platform}", "Output path without extension."
)

#: Families for the verdict: attention is the transformer side; the rest are recurrent or linear.
ATTENTION_PRESETS = ("attention", "swa")


def run_length(length: int) -> Path:
    batch = max(1, FLAGS.tokens_per_batch // length)
    workdir = Path(FLAGS.workdir) / f"L{length}"
    options = ",".join(o for o in [f"length={length}", FLAGS.options] if o)
    overrides = [f"batch_size={batch}", f"eval_batch_size={batch}", *FLAGS.config_overrides]
    if FLAGS.eval_tokens:
        overrides.append(f"eval_examples={max(1, FLAGS.eval_tokens // length)}")
    if FLAGS.retrain:
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "compare.py"),
            f"--config={FLAGS.config}",
            f"--options={options}",
            f"--presets={','.join(FLAGS.presets)}",
            f"--size={FLAGS.size}",
            f"--minutes={FLAGS.minutes}",
            f"--workdir={workdir}",
            "--config_overrides="
            + ",".join([f"batch_size={batch}", f"eval_batch_size={batch}", *FLAGS.config_overrides]),
        ]
        print("+ " + shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    path = workdir / "comparison.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run without --noretrain first (or check --workdir).")
    return path


def _better(a: float, b: float, larger: bool) -> bool:
    return a > b if larger else a < b


def markdown(results: dict[str, Any]) -> str:
    metric, larger = results["metric"], results["larger_is_better"]
    lengths = [r["length"] for r in results["runs"]]
    head = (
        "| model | "
        + " | ".join(f"L={n:,} (B={r['batch']})" for n, r in zip(lengths, results["runs"], strict=True))
        + " |"
    )
    rule = "|---|" + "---:|" * len(lengths)

    def cell(run: dict[str, Any], preset: str, fmt: str) -> str:
        row = next((r for r in run["rows"] if r["preset"] == preset), None)
        return "n/a" if row is None else fmt.format(**row, metric_value=row["metrics"][metric])

    lines = [
        f"# {results['task']}: {metric} at equal training-time budget, by sequence length",
        "",
        f"- date: {results['date']}; platform {results['platform']}; size `{results['size']}`",
        f"- command: `{results['command']}`",
        f"- {results['config']} ({results['options'] or 'defaults'}), {results['minutes']:g} min of training "
        f"per model and length, {results['tokens_per_batch']:,} tokens per batch, evaluated on the test "
        "split at the best checkpoint; the constant learning rate of compare.py",
        f"- {metric}: {'higher' if larger else 'lower'} is better",
        "",
        f"## {metric}",
        "",
        head,
        rule,
    ]
    for preset in results["presets"]:
        lines.append(
            f"| {preset} | "
            + " | ".join(cell(r, preset, "{metric_value:.4f}") for r in results["runs"])
            + " |"
        )
    baselines = [f"{r['baseline'].get(metric, float('nan')):.4f}" for r in results["runs"]]
    lines.append(f"| baseline: {results['runs'][0]['baseline']['name']} | " + " | ".join(baselines) + " |")
    lines += ["", "## Training tokens/s (compile excluded) / optimizer steps in the budget", "", head, rule]
    for preset in results["presets"]:
        lines.append(
            f"| {preset} | "
            + " | ".join(cell(r, preset, "{tokens_per_s:,.0f} / {step}") for r in results["runs"])
            + " |"
        )
    lines += ["", "## Best recurrent model against best attention model", ""]
    lines += ["| L | best recurrent | best attention | recurrent wins |", "|---:|---|---|---|"]
    for length, run in zip(lengths, results["runs"], strict=True):
        rec = [r for r in run["rows"] if r["preset"] not in ATTENTION_PRESETS]
        att = [r for r in run["rows"] if r["preset"] in ATTENTION_PRESETS]
        if not rec or not att:
            continue
        pick = max if larger else min
        best_rec = pick(rec, key=lambda r: r["metrics"][metric])
        best_att = pick(att, key=lambda r: r["metrics"][metric])
        rv, av = best_rec["metrics"][metric], best_att["metrics"][metric]
        wins = "yes" if _better(rv, av, larger) else "no"
        lines.append(
            f"| {length:,} | {best_rec['preset']} {rv:.4f} | {best_att['preset']} {av:.4f} | {wins} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    import jax  # only for the platform name; the runs themselves are subprocesses

    lengths = sorted(int(n) for n in FLAGS.lengths)
    runs = []
    for length in lengths:
        with open(run_length(length)) as f:
            comparison = json.load(f)
        runs.append({"length": length, "batch": max(1, FLAGS.tokens_per_batch // length), **comparison})
    platform = jax.default_backend()
    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "config": FLAGS.config,
        "options": FLAGS.options,
        "size": FLAGS.size,
        "minutes": FLAGS.minutes,
        "tokens_per_batch": FLAGS.tokens_per_batch,
        "presets": list(FLAGS.presets),
        "task": runs[0]["task"],
        "metric": runs[0]["metric"],
        "larger_is_better": runs[0]["larger_is_better"],
        "runs": runs,
    }
    out = ROOT / FLAGS.out.format(task=results["task"], size=FLAGS.size, platform=platform)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    text = markdown(results)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out}.md and {out}.json")


if __name__ == "__main__":
    os.chdir(ROOT)
    app.run(main)
