"""Experiment (issue 18 §3): do long look-backs help forecasting, and do recurrent models gain more?

Claim under test (the paper the project was made for): "for sequences of 10,000+ steps, RNNs often provide
better practical performance" (time series of 1k-20k steps). For each --datasets series, --horizons
horizon H and --lookbacks look-back L, every --presets model trains on the protocol
(`seqjax.experiment.protocol`: parameters matched within ±5%, a learning rate chosen on validation,
--seeds seeds, saved test forecasts), and the LTSF baselines (mean, last value, seasonal-naive, NLinear,
DLinear) are scored on the same test windows. MSE and MAE are on the normalised (training z-score) scale.

Design. The test windows are --evaluation_examples windows spread evenly over the test split; their
targets are the same at every look-back that fits before the validation split (the first target row
is the split's first row; `make_window_sources`), so two look-backs of one model are compared window by
window. Look-backs that do not fit (L + H beyond the training rows, or fewer training windows than one
batch) are dropped for that dataset and horizon, and the table says so. The encoder presets (longformer,
linformer) read the look-back window in both directions; every target lies after it. Budget (--budget):
"windows" (default) gives every look-back the same forecast windows, --train_windows in batches of
--windows_per_batch (so a longer look-back reads more rows, as in the LTSF papers' look-back studies;
with equal tokens a look-back of 8192 would train on 85x fewer targets than one of 96, and "a longer
look-back hurts" would only measure that); "tokens" holds --train_tokens and --tokens_per_batch fixed
instead (the length-crossover protocol). Look-backs >= --few_seeds_from train --few_seeds (3) seeds,
--seeds (5) below, so that 5 seeds are spent where a cell (every model at one horizon and look-back)
takes under 20 minutes and 3 where it takes more; the tables give every model's seeds. The 3-rate
learning-rate grid is kept at every size. NLinear/DLinear are fit in closed form on at most
--baseline_fit_windows (16,384) train windows spread evenly over the split
(`seqjax.baselines.timeseries.fit_linear_forecasters`).

Default design per --size (`DESIGN`; a flag given on the command line wins):

| | cpu (the default) | accelerator |
|---|---|---|
| look-backs | 96, 512, 2048 | 96, 512, 2048, 8192 |
| training windows per run | 768, in 48 batches of 16 | 3,200, in 100 batches of 32 |
| validation and test windows | 256 each | 2,048 each |
| seeds | 5 at 96; 3 from 512 (cells over 20 min) | 5 below 2048; 3 from it |

Cost at cpu size (household power, 8 presets, both horizons, 2 CPU cores shared with
another job): measured at look-back 2048 and 16 windows per batch, training runs at 12.8k rows/s
(lstm), 6.5k (mamba) and 7.4k (attention); with the other presets' relative step times
(`experiments/results/memory_scaling_measured_cpu_cpu.md`) a cell takes ~17 min at look-back 96 (5
seeds), ~40 min at 512 and ~2.5 h at 2048 (3 seeds), compiling and evaluation included: ~3.5 h per
horizon, **~7 h** in all. Look-back 8192 is left out of the cpu default because it alone would cost
~12 h per horizon at this budget (rows x 4, attention's quadratic cost); add it with
--lookbacks=96,512,2048,8192 or run --size=accelerator. Without it claim (a) covers the longest
look-back, 2048, and the report says so. The NLinear/DLinear fit (16,384 windows) took 20-40 s per
cell at look-back 2048 and 5 min at 8192 (measured, same machine).

Intervals: a block bootstrap over the test windows (non-overlapping time blocks of look-back + horizon
rows, `seqjax.experiment.clusters`; all windows of a block are drawn together) and over the seeds.

Verdict rules, fixed before any run:

(a) "Recurrent beats attention at long look-backs": at every (H, L) with L >= --claim_from (default 8192;
    the longest look-back when none is that long), the best recurrent and the best attention model, each
    chosen on validation MSE at that (H, L), and the paired block-bootstrap interval of
    MSE(recurrent) - MSE(attention) on the test windows at confidence 1 - 0.05 / m over the m covered
    keys (Bonferroni). *Supported* when every interval lies below zero, *contradicted* when every one
    lies above, *depends* when both occur, else *inconclusive* (`seqjax.experiment.report.judge`).
    Holm-adjusted bootstrap p-values and a Diebold-Mariano p-value (lag window = the windows' target
    overlap) are reported beside each key.
(b) "A longer look-back helps": per model and H, MSE(L_max) - MSE(L_min) on the identical test windows
    (the paired bootstrap resamples the blocks of L_max + H rows and each look-back's seeds on their
    own), at 1 - 0.05 / (models x horizons): *helps* when the interval lies below zero, *hurts* above,
    else *no clear difference* (`seqjax.experiment.lookback`). "Which family gains more": per H, the
    best recurrent and the best attention model at L_max (validation) and the interval of
    gain(recurrent) - gain(attention), at 1 - 0.05 / horizons: *recurrent gains more* below zero,
    *attention gains more* above, else *no clear difference*. MAE differences are shown beside.

    python experiments/lookback.py --size=smoke --presets=lstm,attention --lookbacks=96,192 \
        --horizons=96      # ~1 minute on the embedded sample: the wiring
    python experiments/lookback.py            # household power, CPU size, route=offline (done 2026-12-04)
    python experiments/lookback.py --datasets=electricity,traffic
    python experiments/lookback.py --size=accelerator --datasets=household_power,electricity,traffic

Results: `experiments/results/lookback_{dataset}_{size}_{platform}.md`, `.json` and `_mse_H<h>.png`.
Runs go to `<workdir>/<dataset>/H<h>/L<lookback>/`; an interrupted run resumes from the finished runs.
"""

from __future__ import annotations

import logging
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
CONFIG = ROOT / "configs" / "timeseries.py"
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=8192 * 100)
flags.DEFINE_list("datasets", ["household_power"], "Series (seqjax/data/timeseries/catalog.py).")
flags.DEFINE_list("horizons", ["96", "720"], "Forecast horizons.")
flags.DEFINE_list("lookbacks", None, "Look-backs (capped per dataset; default: DESIGN).")
flags.DEFINE_list(
    "presets",
    ["lstm", "elstm", "mamba", "gla", "s5", "attention", "longformer", "linformer"],
    "Models (seqjax.config.PRESETS). The encoders (longformer, linformer) read the look-back window both "
    "ways; every target lies after it.",
)
flags.DEFINE_string("route", None, "Data route (default: sample at --size=smoke, else offline).")
define_length_budget_flags(FLAGS, examples="forecast windows", lengths="look-backs", tokens_per_batch=8192)
flags.DEFINE_integer("claim_from", 8192, "Claim (a) covers look-backs >= this (else the longest).")
flags.DEFINE_integer("baseline_fit_windows", 16384, "NLinear/DLinear fit on at most this many windows.")
flags.DEFINE_string("size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': cpu models, 2 steps.")
define_run_flags(
    FLAGS,
    workdir="/tmp/seqjax_lookback",
    runs="<workdir>/<dataset>/H<h>/L<lookback>/",
    out="experiments/results/lookback_{dataset}_{size}_{platform}",
    fresh="Delete --workdir's runs first.",
)

CLAIM_TEXT = "recurrent beats attention"
#: The default design of each --size (module docstring), set by `flags.apply_size_defaults` on the flags
#: the command line leaves out. "smoke" (and a size not listed) takes the cpu design, with 2 steps of
#: training.
DESIGN: dict[str, dict[str, Any]] = {
    "cpu": {
        "lookbacks": [96, 512, 2048],
        "windows_per_batch": 16,
        "train_windows": 16 * 48,
        "evaluation_examples": 256,
        "few_seeds_from": 512,
    },
    "accelerator": {
        "lookbacks": [96, 512, 2048, 8192],
        "windows_per_batch": 32,
        "train_windows": 32 * 100,
        "evaluation_examples": 2048,
        "few_seeds_from": 2048,
    },
}


def _route() -> str:
    return FLAGS.route or ("sample" if FLAGS.size == "smoke" else "offline")


def _options(dataset: str, horizon: int) -> str:
    return f"dataset={dataset},horizon={horizon},route={_route()}"


def _batch(lookback: int) -> int:
    """Windows per training batch at `lookback`."""
    return length_budget(FLAGS).batch(lookback)


def feasible_lookbacks(
    dataset: str, horizon: int, lookbacks: Sequence[int], batch: int
) -> tuple[list[int], dict[int, str]]:
    """(look-backs whose windows fit the series' splits, {look-back: why not} for the others): the
    training split must hold `batch` windows of L + H rows at the config's stride, which also keeps
    the look-back inside the rows before the validation split (identical targets at every L)."""
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import build_sources

    config = preset_configs(
        CONFIG,
        ["lstm"],
        length=min(lookbacks),
        tokens_per_batch=min(lookbacks),
        size=FLAGS.size,
        options=_options(dataset, horizon),
    )["lstm"]
    run = resolve(config)
    train = build_sources(run.data, run.data_dir)["train"]
    rows, stride = int(train.split_rows[1]), int(train.stride)
    ok, dropped = [], {}
    for lookback in lookbacks:
        windows = (rows - horizon - lookback) // stride + 1 if rows >= lookback + horizon else 0
        if windows >= _batch(lookback):
            ok.append(lookback)
        else:
            dropped[lookback] = (
                f"{rows:,} training rows hold {max(windows, 0)} windows of look-back {lookback:,} + horizon "
                f"{horizon} at stride {stride} (fewer than one batch of {_batch(lookback)})"
            )
    return ok, dropped


def _family_paths(summary: Mapping[str, Any], family: str) -> tuple[str, list[str]] | None:
    best = summary["best_by_family"].get(family)
    if best is None:
        return None
    row = next(r for r in summary["models"] if r["model"] == best)
    return best, row["predictions"]


def claim_differences(cells: Sequence[Mapping[str, Any]], n_resamples: int) -> dict[str, Any]:
    """Claim (a): per covered (H, L) key, MSE(best recurrent) - MSE(best attention) at the Bonferroni
    level over the covered keys, with the DM test beside, and the verdict (module docstring)."""
    from seqjax.experiment.report import Claim, judge, paired_difference

    longest = max(c["lookback"] for c in cells)
    start = FLAGS.claim_from if any(c["lookback"] >= FLAGS.claim_from for c in cells) else longest
    covered = [c for c in cells if c["lookback"] >= start]
    level = 1.0 - 0.05 / max(1, len(covered))
    differences, rows = {}, []
    for cell in covered:
        key = f"H{cell['horizon']}/L{cell['lookback']}"
        pair = [_family_paths(cell, f) for f in ("recurrent", "attention")]
        if None in pair:
            rows.append(
                {
                    "key": key,
                    "missing": [f for f, p in zip(("recurrent", "attention"), pair, strict=True) if not p],
                }
            )
            continue
        (a, paths_a), (b, paths_b) = pair
        difference = paired_difference(
            paths_a,
            paths_b,
            "forecast",
            horizon=cell["horizon"],
            confidence_level=level,
            n_resamples=n_resamples,
        )
        differences[key] = difference
        rows.append({"key": key, "better": a, "worse": b, **difference})
    claim = Claim(CLAIM_TEXT, "recurrent", "attention")
    verdict = (
        judge(claim, differences, larger_is_better=False)
        if differences
        else {"claim": CLAIM_TEXT, "verdict": "inconclusive", "per_key": {}, "note": "no pair to compare"}
    )
    return {"claim_from": start, "confidence_level": level, "rows": rows, **verdict}


def lookback_gains(cells: Sequence[Mapping[str, Any]], n_resamples: int) -> dict[str, Any]:
    """Rule (b): per model and horizon, err(L_max) - err(L_min) (MSE, MAE) with its class, and per
    horizon which family gains more (module docstring)."""
    from seqjax.experiment.lookback import family_gain_interval, paired_errors
    from seqjax.experiment.sweep import length_gain

    horizons = sorted({c["horizon"] for c in cells})
    by_key = {(c["horizon"], c["lookback"]): c for c in cells}
    models = sorted({r["model"] for c in cells for r in c["models"]})
    level = 1.0 - 0.05 / max(1, len(models) * len(horizons))
    family_level = 1.0 - 0.05 / max(1, len(horizons))
    gains, families = [], []
    for horizon in horizons:
        lookbacks = sorted(lb for h, lb in by_key if h == horizon)
        if len(lookbacks) < 2:
            continue
        short, long = by_key[(horizon, lookbacks[0])], by_key[(horizon, lookbacks[-1])]
        paths = {}
        for model in models:
            rows = [next((r for r in c["models"] if r["model"] == model), None) for c in (short, long)]
            if None in rows:
                continue
            paths[model] = [rows[0]["predictions"], rows[1]["predictions"]]
            row = {"horizon": horizon, "model": model, "short": lookbacks[0], "long": lookbacks[-1]}
            for error in ("mse", "mae"):
                row[error] = length_gain(
                    paths[model][1],
                    paths[model][0],
                    "forecast",
                    larger_is_better=False,
                    metric=error,
                    horizon=horizon,
                    confidence_level=level,
                    n_resamples=n_resamples,
                )
            gains.append(row)
        pair = [_family_paths(long, f) for f in ("recurrent", "attention")]
        if None in pair or any(name not in paths for name, _ in pair):
            families.append({"horizon": horizon, "missing": True})
            continue
        (rec, _), (att, _) = pair
        (rs, rl, as_, al), _, clusters = paired_errors([*paths[rec], *paths[att]])
        families.append(
            {
                "horizon": horizon,
                "recurrent": rec,
                "attention": att,
                **family_gain_interval(
                    rs, rl, as_, al, clusters, confidence_level=family_level, n_resamples=n_resamples
                ),
            }
        )
    return {
        "confidence_level": level,
        "family_confidence_level": family_level,
        "gains": gains,
        "families": families,
    }


def _cell(v: Mapping[str, float] | None, signed: bool = False) -> str:
    if not v:
        return "—"
    f = "+.4f" if signed else ".4f"
    if v["low"] != v["low"]:  # NaN ends: no per-window values
        return f"{v['estimate']:{f}}"
    return f"{v['estimate']:{f}} [{v['low']:{f}}, {v['high']:{f}}]"


def _by_lookback_table(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rows: models then baselines; columns: look-backs; each cell MSE [CI] / MAE (seeds)."""
    lookbacks = sorted(c["lookback"] for c in cells)
    by_lookback = {c["lookback"]: c for c in cells}
    lines = [
        "| model | " + " | ".join(f"L = {lb:,}" for lb in lookbacks) + " |",
        "|---|" + "---:|" * len(lookbacks),
    ]
    for kind in ("models", "baselines"):
        names = list(dict.fromkeys(r["model"] for c in cells for r in c[kind]))
        for name in names:
            row = []
            for lb in lookbacks:
                r = next((r for r in by_lookback[lb][kind] if r["model"] == name), None)
                if r is None:
                    row.append("—")
                    continue
                seeds = f" ({r['seeds']} seeds)" if kind == "models" else ""
                row.append(f"{_cell(r)} / {_cell(r.get('secondary', {}).get('mae'))}{seeds}")
            lines.append(f"| {name if kind == 'models' else '*' + name + '*'} | " + " | ".join(row) + " |")
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    from seqjax.experiment.summary import model_table

    cells, claim, gains = results["cells"], results["claim"], results["gains"]
    p = cells[0]["protocol"]
    budget = (
        f"{p['train_tokens'] // cells[0]['lookback']:,} training windows per run in batches of "
        f"{results['windows_per_batch']} at every look-back (equal forecast targets)"
        if results["budget"] == "windows"
        else f"{p['train_tokens']:,} training rows per run, {results['tokens_per_batch']:,} per batch "
        "(equal tokens)"
    )
    lines = [
        f"# {results['dataset']}: forecasting MSE and MAE by look-back (issue 18 §3)",
        "",
        *provenance_lines(results, details=f"; route `{results['route']}`"),
        f"- {budget}; warmup + cosine to the budget; learning rate from {p['learning_rates']} chosen on "
        f"validation (seed 0); {p['seeds']} seeds (look-backs >= {results['few_seeds_from']:,}: "
        f"{results['few_seeds']}; each row says); parameters matched within ±{p['param_tolerance']:.0%}; "
        f"{p['evaluation_examples'] or 'all'} validation and test windows spread over each split, the same "
        "targets at every look-back.",
        "- MSE and MAE on the normalised (training z-score) scale, lower is better. Intervals: block "
        "bootstrap over the test windows (time blocks of look-back + horizon rows) and the seeds; "
        f"per-cell intervals at {cells[0]['confidence_level']:.2%} (Bonferroni over the "
        f"{len(cells)} cells).",
    ]
    for horizon, dropped in results["dropped_lookbacks"].items():
        for lookback, why in dropped.items():
            lines.append(f"- **look-back {lookback} dropped at H = {horizon}**: {why}")
    lines += [
        "",
        f"## (a) Verdict: {CLAIM_TEXT} (look-backs >= {claim['claim_from']:,}): **{claim['verdict']}**",
        "",
        "Rule (fixed before the run): per covered (horizon, look-back), MSE(best recurrent) − MSE(best "
        "attention), each chosen on validation, paired block bootstrap at "
        f"{claim['confidence_level']:.2%} (Bonferroni over the covered keys); supported if every interval "
        "is below zero, contradicted if every one is above, depends if both, else inconclusive; a key "
        "whose interval resampled fewer than 10 time blocks is not judged (it counts as neither side).",
        "",
        "| key | recurrent − attention | MSE difference [CI] | class | Holm p | Diebold–Mariano p |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in claim["rows"]:
        if "missing" in r:
            lines.append(f"| {r['key']} | no {', '.join(r['missing'])} model | | | | |")
            continue
        k = claim["per_key"][r["key"]]
        dm = r["paired_test"]
        key_class = f"not judged ({k['not_judged']})" if "not_judged" in k else k["class"]
        lines.append(
            f"| {r['key']} | {r['better']} − {r['worse']} | {_cell(r, True)} | {key_class} | "
            f"{k['holm_p']:.3g} | {dm['p_value']:.3g} ({dm['lags']} lags) |"
        )
    lines += [
        "",
        "## (b) Does a longer look-back help?",
        "",
        f"err(longest) − err(shortest) on the same test windows, {gains['confidence_level']:.2%} intervals "
        "(Bonferroni over models × horizons): *helps* when the MSE interval is below zero, *hurts* "
        "above, else *no clear difference*; an interval over fewer than 10 time blocks (a short test "
        "split at a long look-back) is *not judged*: a percentile bootstrap over so few blocks cannot "
        "reach its level (`seqjax.experiment.verdict.MIN_CLUSTERS`).",
        "",
        "| H | model | look-backs | MSE difference [CI] | class | MAE difference [CI] |",
        "|---:|---|---|---:|---|---:|",
        *(
            f"| {g['horizon']} | {g['model']} | {g['long']:,} vs {g['short']:,} | {_cell(g['mse'], True)} | "
            f"**{g['mse']['class']}** | {_cell(g['mae'], True)} |"
            for g in gains["gains"]
        ),
        "",
        f"Which family gains more: gain(best recurrent) − gain(best attention) (each chosen on validation "
        f"at the longest look-back), {gains['family_confidence_level']:.2%} intervals (Bonferroni over "
        "horizons); below zero: the recurrent model's MSE falls more.",
        "",
    ]
    for f in gains["families"]:
        if f.get("missing"):
            lines.append(f"- H = {f['horizon']}: no recurrent/attention pair at both look-backs.")
        else:
            lines.append(
                f"- H = {f['horizon']}: {f['recurrent']} vs {f['attention']}: {_cell(f, True)} "
                f"({f['n_clusters']} blocks; bootstrap p = {f['p_value']:.3g}): **{f['class']}**"
            )
    for horizon in sorted({c["horizon"] for c in cells}):
        group = [c for c in cells if c["horizon"] == horizon]
        lines += [
            "",
            f"## H = {horizon}: MSE [CI] / MAE [CI] by look-back (baselines in italics)",
            "",
            *_by_lookback_table(group),
        ]
    lines += ["", "## Cost and tuning per cell", ""]
    for c in cells:
        lines += [
            f"### H = {c['horizon']}, L = {c['lookback']:,} (batch {c['protocol']['batch_size']})",
            "",
            model_table(c["models"], c["metric"], c["confidence_level"]),
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _run_dataset(dataset: str, presets: list[str], base: Any, level: float, workdir: Path) -> dict[str, Any]:
    """Every (horizon, look-back) cell of one dataset: the protocol's summaries, and what was dropped."""
    from seqjax.experiment.comparison import compare_at_length
    from seqjax.experiment.report import Claim

    cells, dropped = [], {}
    for horizon in sorted(int(h) for h in FLAGS.horizons):
        wanted = sorted(int(n) for n in FLAGS.lookbacks)
        lookbacks, dropped[horizon] = feasible_lookbacks(dataset, horizon, wanted, _batch(min(wanted)))
        for lookback in lookbacks:
            folder = workdir / dataset / f"H{horizon}" / f"L{lookback}"
            if not FLAGS.retrain and not folder.exists():
                raise FileNotFoundError(
                    f"{folder} is missing: run with --retrain first (or check --workdir)."
                )
            batch = _batch(lookback)
            configs = preset_configs(
                CONFIG,
                presets,
                length=lookback,
                tokens_per_batch=batch * lookback,
                size=FLAGS.size,
                options=_options(dataset, horizon),
                overrides=FLAGS.config_overrides,
            )
            settings = length_budget(FLAGS).settings(base, lookback)
            summary = compare_at_length(
                configs,
                settings,
                folder,
                length=lookback,
                claims=[Claim(CLAIM_TEXT, "recurrent", "attention")],
                horizon=horizon,
                confidence_level=level,
                n_resamples=FLAGS.resamples,
                # the baselines score only the models' test windows (all 400k+ at stride 1 would take hours)
                baseline_options={
                    "fit_windows": FLAGS.baseline_fit_windows,
                    "examples": settings.evaluation_examples,
                },
            )
            cells.append({**summary, "dataset": dataset, "horizon": horizon, "lookback": lookback})
    return {"cells": cells, "dropped_lookbacks": {h: d for h, d in dropped.items() if d}}


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    from seqjax.experiment import plots
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import use_compilation_cache

    workdir = Path(FLAGS.workdir)
    apply_size_defaults(FLAGS, DESIGN.get(FLAGS.size, DESIGN["cpu"]))
    base = driver_settings(FLAGS)
    recorded = (
        "size",
        "budget",
        "windows_per_batch",
        "train_windows",
        "tokens_per_batch",
        "few_seeds",
        "few_seeds_from",
        "baseline_fit_windows",
        "config_overrides",
    )
    prepare_workdir(
        workdir,
        protocol_record(
            FLAGS,
            base,
            route=_route(),
            **data_record(CONFIG),
            **{k: FLAGS[k].value for k in recorded},
        ),
        fresh=FLAGS.fresh,
    )
    if FLAGS.compilation_cache:
        use_compilation_cache(workdir / ".jax_cache")
    presets = list(FLAGS.presets)
    cells_total = len(FLAGS.horizons) * len(FLAGS.lookbacks)
    level = 1.0 - 0.05 / cells_total
    platform = jax.default_backend()
    for dataset in FLAGS.datasets:
        found = _run_dataset(dataset, presets, base, level, workdir)
        cells = found["cells"]
        results = {
            **run_header(sys.argv, platform),
            "dataset": dataset,
            "size": FLAGS.size,
            "route": _route(),
            "presets": list(FLAGS.presets),
            **{k: FLAGS[k].value for k in recorded},
            "dropped_lookbacks": found["dropped_lookbacks"],
            "claim": claim_differences(cells, FLAGS.resamples),
            "gains": lookback_gains(cells, FLAGS.resamples),
            "cells": cells,
        }
        out = ROOT / FLAGS.out.format(dataset=dataset, size=FLAGS.size, platform=platform)
        write_results(out, results, markdown(results))
        for horizon in sorted({c["horizon"] for c in cells}):
            group = {c["lookback"]: c for c in cells if c["horizon"] == horizon}
            strongest = sorted({c["strongest_baseline"] for c in group.values() if c["strongest_baseline"]})
            plots.metric_by_length(
                group,
                f"{out}_mse_H{horizon}.png",
                baselines=strongest,
                title=f"{dataset}, horizon {horizon}: MSE by look-back",
                xlabel="look-back (steps)",
            )


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
