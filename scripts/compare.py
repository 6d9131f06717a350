"""The main job: train several models on one real task for the same wall-clock budget, evaluate each
on the test split, and print a comparison table (metric, tokens/s, peak memory, parameters) beside the
task's trivial baseline.

    python scripts/compare.py                    # embedded genomic species sample, lstm / s5 / attention
    python scripts/compare.py --config=configs/timeseries.py --presets=lstm,mamba --minutes=5
    python scripts/compare.py --config=configs/documents.py --options=length=4096 --minutes=10
    python scripts/compare.py --options=task=species,route=auto,length=16384 --size=accelerator

Each model trains in its own `scripts/train.py` process (so peak memory is its own) under
`<workdir>/<preset>`, and is evaluated by `scripts/evaluate.py` on its best checkpoint. The table goes to
stdout and to `<workdir>/comparison.md`, and the numbers behind it to `<workdir>/comparison.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string(
    "config", "configs/genomic.py", "A task config file (its arg comes from the flags below)."
)
flags.DEFINE_list("presets", ["lstm", "s5", "attention"], "Model presets to compare (seqjax.config.PRESETS).")
flags.DEFINE_string(
    "options", None, "Config-arg options, e.g. 'task=promoter,length=4096'; default: DEFAULT_OPTIONS."
)
flags.DEFINE_string("size", "cpu", "cpu or accelerator.")
flags.DEFINE_float(
    "minutes", 3.0, "Training budget per model: minutes of training steps (compiling, evaluation excluded)."
)
flags.DEFINE_integer("max_steps", 100_000, "Step cap per model (the budget usually stops it first).")
flags.DEFINE_string("workdir", "/tmp/seqjax_compare", "Runs go to <workdir>/<preset>.")
flags.DEFINE_string("split", "test", "Split the final evaluation uses.")
flags.DEFINE_list(
    "config_overrides",
    [],
    "Extra config overrides for every model, key=value, e.g. batch_size=2,eval_batch_size=2.",
)
flags.DEFINE_bool("fresh", True, "Delete each model's previous run first (else resume it).")
flags.DEFINE_bool(
    "match_params",
    True,
    "Set each model's MLP width so its parameter count is within --match_tolerance of the target's.",
)
flags.DEFINE_string(
    "match_target", None, "The preset whose parameter count the others match (default: the largest)."
)
flags.DEFINE_float("match_tolerance", 0.05, "Allowed relative gap to the target's parameter count.")
FLAGS = flags.FLAGS

#: Options used when --options is not given: the species task learns visibly within minutes on CPU.
DEFAULT_OPTIONS = {"genomic.py": "task=species"}
#: The task's headline metric and whether larger is better.
HEADLINE = {
    "classification": ("balanced_accuracy", True),
    "forecast": ("mse", False),
    "lm": ("bits_per_byte", False),
}


def _options() -> str:
    if FLAGS.options is not None:
        return FLAGS.options
    return DEFAULT_OPTIONS.get(os.path.basename(FLAGS.config), "")


def _arg(preset: str) -> str:
    parts = [preset, f"size={FLAGS.size}"] + [o for o in _options().split(",") if o]
    return ",".join(parts)


def _load_config(path: str, arg: str):
    from seqjax.config import load_config_file

    return load_config_file(os.path.join(ROOT, path), arg)


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _baseline(config) -> dict[str, float]:
    """The trivial baseline on the evaluation split: majority class, last-value forecast, unigram."""
    import numpy as np

    from seqjax.data import metrics
    from seqjax.train.trainer import build_sources

    sources = build_sources(config.data, config.data_dir)
    train, test = sources["train"], sources[FLAGS.split]
    if config.task == "classification":
        train_labels = np.array([int(train[i]["label"]) for i in range(len(train))])
        test_labels = np.array([int(test[i]["label"]) for i in range(len(test))])
        out = metrics.majority_class_metrics(train_labels, test_labels, int(config.head.num_classes))
        return {"name": "majority class", **out}
    if config.task == "forecast":
        from seqjax.data.timeseries import baseline_forecasts

        examples = [test[i] for i in range(len(test))]
        inputs = np.stack([e["inputs"] for e in examples])
        targets = np.stack([e["targets"] for e in examples])
        out = metrics.forecast_metrics(baseline_forecasts(inputs, targets.shape[1], "last_value"), targets)
        return {"name": "last value", **out}
    from seqjax.data.documents import unigram_bits_per_byte

    return {"name": "unigram", "bits_per_byte": unigram_bits_per_byte(train, test)}


def _matched_overrides(configs: dict) -> tuple[dict[str, list[str]], int | None]:
    """Per preset, the `--config.` overrides that match its parameter count to the target's; the target."""
    if not FLAGS.match_params:
        return {preset: [] for preset in configs}, None
    from seqjax.experiment import match_parameters

    shapes = {}
    first = next(iter(configs.values()))
    if first.task == "forecast":
        # A forecaster's encoder and head are sized by the data (variables, horizon): read one example.
        from seqjax.train.run_config import resolve
        from seqjax.train.trainer import build_sources

        run = resolve(first)
        example = build_sources(run.data, run.data_dir)["train"][0]
        shapes = {"input_size": int(example["inputs"].shape[-1]), "horizon": int(example["targets"].shape[0])}
    _, report = match_parameters(
        configs, target=FLAGS.match_target, tolerance=FLAGS.match_tolerance, knob="mlp", **shapes
    )
    overrides = {}
    for m in report:
        if m.knob == "cell":
            # The preset's mixer section has no width key for --config. to override.
            raise app.UsageError(
                f"--match_params: {m.name} needs its cell width changed ({m.override}) to match the target; "
                "choose a larger --match_target."
            )
        overrides[m.name] = [] if m.knob == "reference" else [f"--config.{m.override}"]
        print(f"match {m.name:>18}: {m.parameters:,} parameters ({m.ratio:.3f} x target), {m.override}")
    return overrides, report[0].target


def _table(config, rows: list[dict], baseline: dict) -> str:
    name, _ = HEADLINE[config.task]
    extra = {
        "classification": ["accuracy", "mcc", "auroc"],
        "forecast": ["mae"],
        "lm": ["perplexity"],
    }[config.task]
    header = [
        "model",
        name,
        *extra,
        "train tokens/s",
        "train-step memory (XLA)",
        "peak memory",
        "parameters",
        "x target",
        "steps",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        m = r["metrics"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["preset"],
                    f"{m[name]:.4f}",
                    *[f"{m.get(k, float('nan')):.4f}" for k in extra],
                    f"{r['tokens_per_s']:,.0f}",
                    "n/a"
                    if r.get("step_memory_bytes") is None
                    else f"{r['step_memory_bytes'] / 2**20:.0f} MiB",
                    f"{r['peak_memory_bytes'] / 2**30:.2f} GiB",
                    f"{r['num_params']:,}",
                    "n/a" if not r.get("target_params") else f"{r['num_params'] / r['target_params']:.3f}",
                    str(r["step"]),
                ]
            )
            + " |"
        )
    cells = [f"{baseline.get(k, float('nan')):.4f}" for k in (name, *extra)]
    lines.append("| " + " | ".join([f"baseline: {baseline['name']}", *cells, "", "", "", "", "", ""]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)  # TFDS logs every dataset load at INFO
    python = sys.executable
    rows = []
    configs = {preset: _load_config(FLAGS.config, _arg(preset)) for preset in FLAGS.presets}
    overrides, target_params = _matched_overrides(configs)
    config = None
    for preset in FLAGS.presets:
        workdir = os.path.join(FLAGS.workdir, preset)
        if FLAGS.fresh and os.path.isdir(workdir):
            import shutil

            shutil.rmtree(workdir)
        os.makedirs(workdir, exist_ok=True)
        spec = f"{FLAGS.config}:{_arg(preset)}"
        config = configs[preset]
        started = time.perf_counter()
        _run(
            [
                python,
                "scripts/train.py",
                f"--config={spec}",
                f"--workdir={workdir}",
                f"--config.max_train_seconds={FLAGS.minutes * 60}",
                f"--config.total_steps={FLAGS.max_steps}",
                "--config.optimizer.schedule=constant",  # a time budget has no known end step
                "--config.report_step_memory=True",
                f"--result_json={workdir}/train.json",
                *overrides[preset],
                *(f"--config.{o}" for o in FLAGS.config_overrides),
            ]
        )
        _run(
            [
                python,
                "scripts/evaluate.py",
                f"--workdir={workdir}",
                f"--split={FLAGS.split}",
                f"--output={workdir}/eval.json",
            ]
        )
        with open(f"{workdir}/train.json") as f:
            trained = json.load(f)
        with open(f"{workdir}/eval.json") as f:
            evaluated = json.load(f)
        rows.append(
            {
                "preset": preset,
                **trained,
                "metrics": evaluated["metrics"],
                "target_params": target_params,
                "matched_overrides": overrides[preset],
                "seconds": time.perf_counter() - started,
            }
        )
    baseline = _baseline(config)
    name, larger = HEADLINE[config.task]
    table = _table(config, rows, baseline)
    options = _options() or "defaults"
    title = f"{FLAGS.config} ({options}), {FLAGS.split} split, {FLAGS.minutes:g} min per model"
    notes = (
        f"{name}: {'higher' if larger else 'lower'} is better. Train tokens/s and the minutes of "
        "training exclude the compiling step, evaluation and checkpoints. "
        "Train-step memory is XLA's estimate for one step (arguments, outputs and temporaries); peak memory "
        "is the device's peak where the backend reports it (GPU/TPU), else the training process's peak "
        "RSS (runtime, data and compilation included). "
        + (
            f"Each model's MLP width is set so its parameters are within ±{FLAGS.match_tolerance:.0%} of "
            f"{target_params:,} (x target: the ratio)."
            if target_params
            else "Parameter counts are not matched (--match_params=False)."
        )
    )
    text = f"## {title}\n\n{table}\n\n{notes}\n"
    print("\n" + text)
    with open(os.path.join(FLAGS.workdir, "comparison.md"), "w") as f:
        f.write(text)
    with open(os.path.join(FLAGS.workdir, "comparison.json"), "w") as f:
        json.dump(
            {
                "config": FLAGS.config,
                "options": options,
                "task": config.task,
                "metric": name,
                "larger_is_better": larger,
                "minutes": FLAGS.minutes,
                "split": FLAGS.split,
                "rows": rows,
                "baseline": baseline,
            },
            f,
            indent=1,
            default=float,
        )


if __name__ == "__main__":
    app.run(main)
