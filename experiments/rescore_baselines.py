"""Re-scores a finished stability report's test examples with the task's strong non-neural baselines,
and pairs each model with the strongest of them, from the report's JSON and the runs' predictions files,
without training.

Why: a report written before the drivers scored document baselines on the models' own windows (the
stability LM report of 2026-12-03 scored them over whole test documents) cannot be re-tabulated with
`--noretrain` when some of its run folders were lost, but its predictions files are enough for this: the
baselines are fit on the train split again and scored on the same test examples
(`seqjax.experiment.comparison.task_baselines` with the report's evaluation_examples; for a
byte-tokenised documents task, the same windows), and each model's seeds (the report's protocol table:
the runs with data-order seed 0) are paired with the strongest baseline on those examples
(`seqjax.experiment.report.baseline_difference`: cluster x seed bootstrap, clusters = documents or
genome blocks).

    python experiments/rescore_baselines.py --results=experiments/results/stability_lm_cpu_cpu.json \\
        --predictions=experiments/runs/stability_cpu/lm/predictions

`--predictions` replaces the folder the report recorded for the predictions (each recorded path keeps
its part after its last `predictions/`); a model whose files are all missing is listed as such. The
table goes to `<results without .json>_baselines.md` and `.json` (or `--out`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import shlex
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("results", None, "A stability report's JSON (experiments/results/stability_*.json).")
flags.DEFINE_string(
    "predictions", None, "The folder now holding the runs' predictions (default: as recorded)."
)
flags.DEFINE_string("out", None, "Output path without suffix (default: <results>_baselines).")
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
flags.DEFINE_float("confidence", 0.95, "Confidence level of every interval.")
flags.mark_flag_as_required("results")


def relocated(path: str, root: str | None) -> Path:
    """`path` under `root` instead of its recorded predictions folder (the part after its last
    "predictions" component), or as recorded when `root` is None.

    >>> str(relocated("/old/runs/lm/predictions/lstm/lr0.01/seed0.npz", "carried/predictions"))
    'carried/predictions/lstm/lr0.01/seed0.npz'
    """
    if root is None:
        return Path(path)
    parts = Path(path).parts
    if "predictions" not in parts:
        raise app.UsageError(
            f"--predictions: the recorded path {path} has no predictions/ folder to replace."
        )
    last = len(parts) - 1 - parts[::-1].index("predictions")
    return Path(root, *parts[last + 1 :])


def rescore(results: dict, predictions_root: str | None, *, confidence: float, resamples: int) -> dict:
    """{task, metric, baselines (rows), strongest_baseline, against_strongest_baseline, files} for a
    stability report's JSON (module docstring)."""
    from seqjax.experiment.comparison import baseline_validation_estimates, task_baselines
    from seqjax.experiment.flags import preset_configs
    from seqjax.experiment.report import baseline_difference
    from seqjax.experiment.summary import baseline_rows, strongest_baseline

    summary = results["summary"]
    task, larger = summary["task"], summary["larger_is_better"]
    models = summary["models"]
    config = preset_configs(
        ROOT / results["config"],
        [models[0]["model"]],
        length=results["length"],
        tokens_per_batch=results["tokens_per_batch"],
        size=results["size"],
        options=results["options"],
        # the report's --config_overrides (reports before 2026-12-04 do not record them: none then);
        # a data override (e.g. data.max_examples_per_split) changes the windows the baselines fit on
        overrides=results.get("config_overrides", []),
    )[models[0]["model"]]
    examples = results["protocol"]["evaluation_examples"]
    found, clusters = task_baselines(config, examples=examples)
    rows = baseline_rows(found, task, clusters, confidence_level=confidence, n_resamples=resamples)
    validation = baseline_validation_estimates(config, examples)
    for row in rows:
        row["validation"] = validation.get(row["model"], math.nan)
    strongest, chosen_on = strongest_baseline(rows, larger, validation)
    if strongest is None:
        raise ValueError(
            f"rescore: no baseline of {task!r} has finite test and validation scores to pair with."
        )
    best = next(b for b in found if b.name == strongest["model"])
    against, every, files = {}, {}, {}
    for row in models:
        paths = [relocated(p, predictions_root) for p in row["predictions"]]
        present = [str(p) for p in paths if p.exists()]
        files[row["model"]] = {"found": len(present), "recorded": len(paths)}
        every[row["model"]] = {
            b.name: baseline_difference(present, b, task, confidence_level=confidence, n_resamples=resamples)
            if present
            else None
            for b in found
        }
        against[row["model"]] = every[row["model"]][best.name]
    return {
        "task": task,
        "metric": summary["metric"],
        "larger_is_better": larger,
        "confidence_level": confidence,
        "evaluation_examples": examples,
        "baselines": rows,
        "strongest_baseline": strongest["model"],
        "strongest_chosen_on": chosen_on,
        "against_strongest_baseline": against,
        # {model: {baseline: model minus baseline}}, every baseline with values for these examples
        "against_every_baseline": every,
        "files": files,
    }


def markdown(rescored: dict, source: str, command: str) -> str:
    from seqjax.experiment.summary import baseline_difference_table, baseline_table

    missing = [m for m, f in rescored["files"].items() if f["found"] == 0]
    partial = [
        f"{m} ({f['found']} of {f['recorded']})"
        for m, f in rescored["files"].items()
        if 0 < f["found"] < f["recorded"]
    ]
    lines = [
        f"# Strong baselines on the test examples of `{source}`",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; command: `{command}`",
        f"- the {rescored['evaluation_examples']} test examples every run is scored on; baselines fit on the "
        "train split; intervals resample the examples' clusters (documents or genome blocks)"
        + (
            ""
            if rescored["task"] != "lm"
            else "; n-gram and compressor baselines score each window alone, "
            "from its start (a compressor pays its header in every window)"
        ),
        "",
        baseline_table(rescored["baselines"], rescored["metric"], rescored["confidence_level"]),
        "",
        "Each model (its seeds with data-order seed 0, the report's protocol table) against the strongest "
        "baseline, paired on the same test examples:",
        "",
        baseline_difference_table(rescored) or "(no model's predictions were found)",
        "",
        *_every_baseline_lines(rescored),
    ]
    if missing:
        lines.append(f"No predictions files carried for: {', '.join(missing)}.")
    if partial:
        lines.append(f"Only some predictions files carried for: {', '.join(partial)}.")
    return "\n".join(lines) + "\n"


def _every_baseline_lines(rescored: dict) -> list[str]:
    """The matrix of each model minus each baseline (paired, same examples), with its heading."""
    every = {m: d for m, d in rescored["against_every_baseline"].items() if any(d.values())}
    if not every:
        return []
    names = [r["model"] for r in rescored["baselines"]]
    lines = [
        f"Each model minus every baseline ({rescored['metric']}, paired, {rescored['confidence_level']:.1%} "
        "intervals; an interval that excludes 0 separates the two):",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for model, by_baseline in every.items():
        cells = [
            "n/a"
            if (d := by_baseline.get(n)) is None
            else f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            for n in names
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    source = Path(FLAGS.results)
    results = json.loads(source.read_text())
    if "stability" not in results or "summary" not in results:
        raise app.UsageError(
            f"--results={source}: not a stability report's JSON (no 'stability' and 'summary')."
        )
    rescored = rescore(results, FLAGS.predictions, confidence=FLAGS.confidence, resamples=FLAGS.resamples)
    out = Path(FLAGS.out) if FLAGS.out else source.with_name(source.stem + "_baselines")
    command = shlex.join(["python", *sys.argv])
    out.with_suffix(".json").write_text(json.dumps(rescored, indent=1, default=float) + "\n")
    text = markdown(rescored, str(source), command)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    app.run(main)
