"""Experiment (issue 19 §2): few-shot learning curves on DNA, with and without augmentation.

Claims under test: "With fewer than 500 training examples, RNN architectures consistently outperform
transformers ... data augmentation techniques are more effective when applied to RNN training"; "for
tasks with fewer than 10,000 training sequences, well-regularized RNNs sometimes match or exceed
transformer performance".

Design. Keys (--keys, `task@length`): genic_vs_intergenic at 1,024 and 4,096 bp and species at 1,024 bp
(`seqjax.data.genomic`, full data through --route=offline). The windows are nested centre crops of one
anchor (--nested = 4,352 bp = 4,096 + 2 x --max_shift), so both genic lengths see the same loci and
every crop has the flanking sequence a random shift needs; with the full data that gives 10,845 /
1,419 / 1,064 genic_vs_intergenic windows (train / validation / test) and 6,081 / 2,462 / 2,522 species
windows. Training-set sizes (--sizes) 50, 100, 250, 500, 1k, 2.5k, 10k, each a subset of the train
split stratified by label (`train_examples`, `train_subset_seed`), drawn --subsamples times; validation
and test are never subsampled for training (--evaluation_examples spreads the same examples over each
for every run). A size larger than a key's train split is dropped (species: 10k), and the report says
so. Models (--presets): LSTM, E-LSTM, Mamba (recurrent), exact attention and the Longformer encoder
(attention), parameters matched within ±5%. Arms: without augmentation, and with --augment (default
"both": reverse complement with probability 1/2 and a uniform shift of up to --max_shift = 128 bp inside
the anchor window; `data.augment`, training batches only). Subsample s trains with seed s, the same
training set in every model and arm. The k-mer logistic regression (k = 3..6 chosen on validation per
subset) is fit on the same subsets.

Rules of the runs (`seqjax.experiment.few_shot`): the learning rate is chosen once per model and key by
the protocol's grid (--learning_rates, one step past an edge) at n = --tune_size (500) with subsample 0,
without augmentation, on validation, and used at every n, subsample and arm (tuning every point would
multiply the cost by the grid's size). Budget: ceil(--epochs x n / batch) steps, at least --min_steps
and at most --train_tokens / --tokens_per_batch: equal tokens at every n would give n = 50 hundreds of
epochs at the budget the large sets need; the floor keeps the warmup + cosine schedule meaningful on
the smallest sets, the cap bounds the cost of the largest (which then see fewer epochs; the report
gives each n's steps and epochs). Final parameters are scored.

Default design per --size (`DESIGN`; a flag given on the command line wins):

| | cpu (the default) | accelerator |
|---|---|---|
| keys | genic_vs_intergenic@1024, species@1024 | + genic_vs_intergenic@4096 |
| sizes | 50, 100, 250, 500, 1000 | 50 ... 10,000 (7 sizes) |
| subsamples | 3 | 5 |
| budget | 5 epochs, 32-400 steps of 8,192 tokens | 20 epochs, 64-4,000 steps of 16,384 tokens |
| validation and test windows | 512 each | all |

The cpu design leaves out the 4k key, the two largest sizes and two subsamples: with them it would cost
several times as much (experiments/README.md: cost, ~20 h as it is). Rule (c) then covers n <= 1,000
at CPU size, and the report says which sizes ran.

Metrics: balanced accuracy (headline) and macro-F1 on the test split, the mean over subsamples, with a
bootstrap over the test windows' clusters (chr20's split blocks of 315 kbp; 100 kb blocks of the bacterial
genomes) and the subsamples (paired across models and
arms: subsample s is one training set).

Verdict rules, fixed here before any run:

(a) "RNNs beat transformers below 500 examples": at every key and n < --claim_below (500), the best
    recurrent and the best attention model without augmentation, each chosen on validation at that n,
    and the paired interval of their balanced-accuracy difference at 1 - 0.05 / m over the m (key, n)
    pairs (Bonferroni): *supported* when every interval lies above zero, *contradicted* when every one
    lies below, *depends* when both happen, else *inconclusive* (`seqjax.experiment.report.judge`).
(b) "Augmentation helps RNNs more": per key, the interaction [balanced accuracy with minus without
    augmentation of the best recurrent model] - [the same for the best attention model], averaged over
    the sizes below --claim_below (pooled: one interval per key), the two models chosen on validation
    over those sizes and both arms; one contrast bootstrap, subsamples paired, at 1 - 0.05 / keys;
    judged as (a) over the keys. Every model's own pooled gain is reported beside it.
(c) "Below 10k examples RNNs match or exceed transformers": at every key and n < --match_below
    (10,000), the difference of (a) at 1 - 0.05 / m; "match or exceed" is difference > -margin with
    --margin = 0.02 balanced accuracy: *supported* when every interval's lower end lies above -0.02,
    *contradicted* when every upper end lies below -0.02 (recurrent behind by more than the margin
    everywhere), *depends* when both happen, else *inconclusive*.

    python experiments/few_shot.py --size=smoke         # the wiring on the embedded sample: 16 runs, 1-2 min
    python experiments/few_shot.py --workdir=runs/few_shot                          # CPU size (~20 h)
    python experiments/few_shot.py --size=accelerator --workdir=runs/few_shot_gpu   # on a GPU
    python experiments/few_shot.py --noretrain          # re-tabulate finished runs (same --workdir)

Results: `experiments/results/few_shot_{size}_{platform}.md` and `.json` (the three verdicts, per key
the learning-curve tables of balanced accuracy and macro-F1 with intervals, the k-mer curve, each n's
steps and epochs, the tuned rates) and `_{task}_L{length}.png` (balanced accuracy against training
examples, log x; solid without and dotted with augmentation; the k-mer baseline dashed). Runs go to
`<workdir>/<task>_L<length>/n<n>/<arm>/`; an interrupted run resumes from the finished runs there, and
`<workdir>/settings.json` refuses a rerun with other settings (`--fresh` starts over).
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
CONFIG = ROOT / "configs" / "genomic.py"
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=16384 * 4000)
flags.DEFINE_list(
    "keys",
    ["genic_vs_intergenic@1024", "genic_vs_intergenic@4096", "species@1024"],
    "The (task, length) keys, task@length (default: DESIGN).",
)
flags.DEFINE_list("presets", ["lstm", "elstm", "mamba", "attention", "longformer"], "Models.")
flags.DEFINE_list("sizes", ["50", "100", "250", "500", "1000", "2500", "10000"], "Training-set sizes.")
flags.DEFINE_integer("subsamples", 5, "Subsamples per size (train_subset_seed and seed 0..k-1).")
flags.DEFINE_enum("augment", "both", ["reverse_complement", "shift", "both"], "The augmented arm.")
flags.DEFINE_integer("max_shift", 128, "The shift's range in bp (augment shift or both).")
flags.DEFINE_integer("nested", 4352, "The anchor (bp) of every task: >= every length + 2 x max_shift.")
flags.DEFINE_string("route", None, "Data route (default: sample at --size=smoke, else offline).")
flags.DEFINE_string("options", "", "Extra config-arg options for every run.")
flags.DEFINE_integer("tokens_per_batch", 16384, "Tokens per training batch at every length.")
flags.DEFINE_float("epochs", 20.0, "Budget: epochs over the n examples (clamped by --min_steps and the cap).")
flags.DEFINE_integer("min_steps", 64, "Budget: at least this many steps at every n.")
flags.DEFINE_integer(
    "tune_size", 500, "The learning rate is chosen at this n (subsample 0, no augmentation)."
)
flags.DEFINE_integer("claim_below", 500, "Rules (a) and (b) cover n below this.")
flags.DEFINE_integer("match_below", 10000, "Rule (c) covers n below this.")
flags.DEFINE_float("margin", 0.02, "Rule (c): the equivalence margin in balanced accuracy.")
flags.DEFINE_list("kmer_sizes", ["3", "4", "5", "6"], "k of the k-mer baseline, chosen on validation.")
flags.DEFINE_string("size", "cpu", "Model size (seqjax.config.SIZES), or 'smoke': cpu models, 2 steps.")
define_run_flags(
    FLAGS,
    workdir="/tmp/seqjax_few_shot",
    runs="<workdir>/<task>_L<length>/n<n>/<arm>/",
    out="experiments/results/few_shot_{size}_{platform}",
    fresh="Delete --workdir's runs first.",
)

#: The default design of each --size (module docstring; a flag given on the command line wins). "smoke":
#: the embedded sample, species at 128 bp (anchor 160), 2 models, 2 sizes, 2 subsamples, 2 steps a run.
DESIGN: dict[str, dict[str, Any]] = {
    "cpu": {
        "keys": ["genic_vs_intergenic@1024", "species@1024"],
        "sizes": ["50", "100", "250", "500", "1000"],
        "subsamples": 3,
        "tokens_per_batch": 8192,
        "epochs": 5.0,
        "min_steps": 32,
        "train_tokens": 8192 * 400,
        "evaluation_examples": 512,
    },
    "accelerator": {},  # the flags' defaults: the issue's design
    "smoke": {
        "route": "sample",
        "keys": ["species@128"],
        "nested": 160,
        "presets": ["lstm", "attention"],
        "sizes": ["32", "64"],
        "subsamples": 2,
        "max_shift": 16,
        "tokens_per_batch": 1024,
        "train_tokens": 2 * 1024,
        "min_steps": 2,
        "tune_size": 64,
        "claim_below": 64,
        "evaluation_examples": 32,
        "learning_rates": ["3e-3"],
        "kmer_sizes": ["3", "4"],
        "resamples": 100,
        "step_memory": False,
    },
}


def parse_keys(keys: Sequence[str]) -> list[tuple[str, int]]:
    """[(task, length)] of `task@length` keys.

    >>> parse_keys(["species@1024", "genic_vs_intergenic@4096"])
    [('species', 1024), ('genic_vs_intergenic', 4096)]
    """
    out = []
    for key in keys:
        task, sep, length = key.partition("@")
        if not sep or not length.isdigit():
            raise ValueError(f"--keys: {key!r} is not task@length (e.g. species@1024).")
        out.append((task, int(length)))
    return out


def anchors(keys: Sequence[tuple[str, int]], max_shift: int, nested: int | None = None) -> dict[str, int]:
    """Each task's anchor: `nested` (checked to leave every key's length room for the shift), else the
    task's longest length + 2 x max_shift.

    >>> anchors([("genic_vs_intergenic", 1024), ("genic_vs_intergenic", 4096), ("species", 1024)], 128)
    {'genic_vs_intergenic': 4352, 'species': 1280}
    >>> anchors([("species", 1024)], 128, nested=4352)
    {'species': 4352}
    """
    out: dict[str, int] = {}
    for task, length in keys:
        need = length + 2 * max_shift
        if nested and nested < need:
            raise ValueError(
                f"--nested={nested} leaves {task}@{length} no room for a shift of {max_shift} bp either way; "
                f"set --nested >= {need} (or lower --max_shift)."
            )
        out[task] = int(nested) if nested else max(out.get(task, 0), need)
    return out


def _route() -> str:
    return FLAGS.route or ("sample" if FLAGS.size == "smoke" else "offline")


def _options(task: str, anchor: int) -> str:
    extra = [o for o in FLAGS.options.split(",") if o]
    return ",".join([f"task={task}", f"route={_route()}", f"nested={anchor}", *extra])


def _cell(v: Mapping[str, float] | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v["estimate"]):
        return ""
    f = "+.3f" if signed else ".3f"
    return f"{v['estimate']:{f}} [{v['low']:{f}}, {v['high']:{f}}]"


def curve_table(key: Mapping[str, Any], metric: str | None = None) -> str:
    """Models x arms (rows, the k-mer baseline last) by training-set size (columns): the headline metric
    (or `metric` from "secondary") with its interval; then each n's steps and epochs."""
    sizes = key["sizes"]

    def value(row: Mapping[str, Any]) -> Mapping[str, float] | None:
        return row if metric is None else row["secondary"].get(metric)

    lines = [
        "| model | arm | " + " | ".join(f"n = {n:,}" for n in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for model in dict.fromkeys(r["model"] for r in key["curve"]):
        for arm in ("none", "augmented"):
            cells = {r["n"]: value(r) for r in key["curve"] if (r["model"], r["arm"]) == (model, arm)}
            lines.append(f"| {model} | {arm} | " + " | ".join(_cell(cells.get(n)) for n in sizes) + " |")
    kmer = {r["n"]: r for r in key["kmer"]}
    if kmer:
        k = {n: "k=" + "/".join(str(x) for x in r["k"]) for n, r in kmer.items()}
        lines.append(
            "| k-mer logistic regression | none | "
            + " | ".join(f"{_cell(value(kmer[n]))} ({k[n]})" if n in kmer else "" for n in sizes)
            + " |"
        )
    lines.append(
        "| steps (epochs) | | "
        + " | ".join(f"{key['steps'][n]} ({key['epochs'][n]:.1f})" for n in sizes)
        + " |"
    )
    return "\n".join(lines)


def chance_lines(key: Mapping[str, Any]) -> list[str]:
    """Which models and arms are above chance at each n: their balanced-accuracy interval above
    1 / classes (what any prediction made without the input scores). A family's comparison between
    models that are all at chance cannot support or contradict a claim about learning from few examples.

        >>> curve = [{"model": "lstm", "arm": "none", "n": n, "low": lo} for n, lo in [(50, 0.4), (500, 0.6)]]
        >>> key = {"splits": {"test": {"class_counts": {"a": 5, "b": 5}}}, "curve": curve}
        >>> chance_lines(key)[0]
        'Above chance (balanced-accuracy interval above 1 / classes = 0.500): lstm (none) at n = 500.'
    """
    counts = key["splits"].get("test", {}).get("class_counts")
    if not counts:
        return []
    chance = 1.0 / len(counts)
    above: dict[tuple[str, str], list[int]] = {}
    for r in key["curve"]:
        above.setdefault((r["model"], r["arm"]), [])
        if math.isfinite(r["low"]) and r["low"] > chance:
            above[(r["model"], r["arm"])].append(r["n"])
    learned = [
        f"{m} ({arm}) at n = {', '.join(f'{n:,}' for n in sorted(ns))}"
        for (m, arm), ns in above.items()
        if ns
    ]
    never = [f"{m} ({arm})" for (m, arm), ns in above.items() if not ns]
    lines = [
        f"Above chance (balanced-accuracy interval above 1 / classes = {chance:.3f}): "
        + ("; ".join(learned) if learned else "no model at any n")
        + "."
    ]
    if never:
        lines.append(f"Not above chance at any n: {', '.join(never)}.")
    return lines


def markdown(results: Mapping[str, Any]) -> str:
    """The report: design, the three verdicts, the learning curves per key."""
    from seqjax.experiment.report import key_class
    from seqjax.experiment.summary import composition_line

    v = results["verdicts"]
    p = results["protocol"]
    lines = [
        "# Few-shot learning curves on DNA, with and without augmentation (issue 19 §2)",
        "",
        *provenance_lines(results),
        f"- models: {', '.join(results['presets'])}; arms: none, and augment `{results['augment']}` "
        f"(max_shift {results['max_shift']} bp); {results['subsamples']} subsamples per size (subsample s: "
        "train_subset_seed s and seed s, the same training set for every model and arm).",
        f"- budget: ceil({results['epochs']:g} epochs x n / batch) steps, at least {results['min_steps']}, "
        f"at most {results['max_steps']} ({p['train_tokens']:,} tokens at {results['tokens_per_batch']:,} "
        "per batch); warmup + cosine to the run's end; final parameters scored.",
        "- learning rate: chosen per model and key on validation balanced accuracy from "
        f"{p['learning_rates']} (one step past an edge) at n = {results['tune_size']} (subsample 0, no "
        "augmentation), used at every point.",
        f"- evaluation: {p['evaluation_examples'] or 'all'} validation and test examples per split "
        "(spread evenly, the same for every run); intervals: bootstrap over the test clusters (chr20: "
        "split blocks of 315 kbp; bacteria: 100 kb blocks) and the subsamples; learning-curve tables at "
        "95%, verdicts Bonferroni as stated.",
        "",
        "## Data",
        "",
        "| key | anchor | train / validation / test | sizes run | dropped (above the train split) |",
        "|---|---:|---|---|---|",
    ]
    for name, key in results["keys"].items():
        splits = " / ".join(f"{key['splits'][s]['examples']:,}" for s in ("train", "validation", "test"))
        dropped = ", ".join(f"{n:,}" for n in key["dropped_sizes"]) or "none"
        sizes = ", ".join(f"{n:,}" for n in key["sizes"])
        lines.append(f"| {name} | {key['anchor']:,} | {splits} | {sizes} | {dropped} |")
    compositions = {name: composition_line(key["splits"]) for name, key in results["keys"].items()}
    compositions = {name: text for name, text in compositions.items() if text}
    if compositions:
        lines.append("")
        for name, text in compositions.items():
            lines.append(text.replace("- composition:", f"- {name}: composition:", 1))
    a, b, c = v["a"], v["b"], v["c"]
    lines += [
        "",
        f"## Verdict (a): {a['claim']}: **{a['verdict']}**",
        "",
        f"Best recurrent minus best attention (each chosen on validation at that n, no augmentation), "
        f"paired bootstrap at {a['confidence_level']:.2%} (Bonferroni over {len(a['differences'])} pairs).",
        "",
        "| key, n | recurrent | attention | difference | class | Holm p |",
        "|---|---|---|---:|---|---:|",
        *(
            f"| {k} | {d['better']} | {d['worse']} | {_cell(d, signed=True)} | "
            f"{key_class(a['per_key'][k])} | {a['per_key'][k]['holm_p']:.3g} |"
            for k, d in a["differences"].items()
        ),
        "",
        f"## Verdict (b): {b['claim']}: **{b['verdict']}**",
        "",
        "Interaction (gain of the best recurrent) - (gain of the best attention), a gain being balanced "
        f"accuracy with minus without augmentation averaged over n < {results['claim_below']:,}; at "
        f"{b['confidence_level']:.2%} (Bonferroni over {len(b['differences'])} keys).",
        "",
        "| key | sizes | recurrent | attention | interaction | class |",
        "|---|---|---|---|---:|---|",
        *(
            f"| {k} | {', '.join(map(str, d['sizes']))} | {d['recurrent']} | {d['attention']} | "
            f"{_cell(d, signed=True)} | {key_class(b['per_key'][k])} |"
            for k, d in b["differences"].items()
        ),
        "",
        "Every model's pooled gain from augmentation (same level):",
        "",
        "| key | model | family | gain |",
        "|---|---|---|---:|",
        *(
            f"| {k} | {m} | {g['family']} | {_cell(g, signed=True)} |"
            for k, d in b["differences"].items()
            for m, g in d["gains"].items()
        ),
        "",
        f"## Verdict (c): {c['claim']}: **{c['verdict']}**",
        "",
        f"Best recurrent minus best attention (no augmentation) at {c['confidence_level']:.2%} (Bonferroni "
        f"over {len(c['differences'])} pairs); claimed where the interval's lower end lies above "
        f"-{results['margin']:g}.",
        "",
        "| key, n | recurrent | attention | difference | class |",
        "|---|---|---|---:|---|",
        *(
            f"| {k} | {d['better']} | {d['worse']} | {_cell(d, signed=True)} | {key_class(c['per_key'][k])} |"
            for k, d in c["differences"].items()
        ),
        "",
    ]
    for name, key in results["keys"].items():
        rates = ", ".join(f"{m} {lr:g}" for m, lr in key["learning_rates"].items())
        lines += [
            f"## {name}: learning curves (batch {key['batch_size']}; learning rates {rates})",
            "",
            "Balanced accuracy (95% CI):",
            "",
            curve_table(key),
            "",
            *chance_lines(key),
            "",
            "Macro-F1 (95% CI):",
            "",
            curve_table(key, "macro_f1"),
            "",
        ]
    return "\n".join(lines) + "\n"


def run_one(task: str, length: int, anchor: int, settings: Any, budget: Any) -> dict[str, Any]:
    """Trains (or reads) one key, then its statistics and the k-mer curve."""
    from seqjax.experiment import few_shot
    from seqjax.train.run_config import resolve
    from seqjax.train.trainer import build_sources

    configs = preset_configs(
        CONFIG,
        FLAGS.presets,
        length=length,
        tokens_per_batch=FLAGS.tokens_per_batch,
        size=FLAGS.size,
        options=_options(task, anchor),
        overrides=FLAGS.config_overrides,
    )
    first = resolve(next(iter(configs.values())))
    sources = build_sources(first.data, first.data_dir)
    splits = {name: {**source.describe(), **source.composition()} for name, source in sources.items()}
    sizes, dropped = few_shot.feasible_sizes([int(n) for n in FLAGS.sizes], len(sources["train"]))
    if dropped:
        print(
            f"{task}@{length}: sizes {dropped} exceed the {len(sources['train'])} training windows; dropped."
        )
    tune = few_shot.tuning_size(sizes, FLAGS.tune_size)
    result = few_shot.run_key(
        configs,
        {
            "augment": FLAGS.augment,
            "max_shift": FLAGS.max_shift if FLAGS.augment != "reverse_complement" else 0,
        },
        settings,
        budget,
        Path(FLAGS.workdir) / f"{task}_L{length}",
        length=length,
        sizes=sizes,
        subsamples=FLAGS.subsamples,
        tune_size=tune,
        retrain=FLAGS.retrain,
    )
    curve = few_shot.curve_rows(result, n_resamples=FLAGS.resamples)
    kmer = few_shot.kmer_curve(
        sources,
        sizes,
        FLAGS.subsamples,
        kmer_sizes=[int(k) for k in FLAGS.kmer_sizes],
        evaluation_examples=settings.evaluation_examples,
        n_resamples=FLAGS.resamples,
    )
    return {
        **result,
        "task": task,
        "length": length,
        "anchor": anchor,
        "splits": splits,
        "dropped_sizes": dropped,
        "curve": curve,
        "kmer": kmer,
    }


def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)  # SIGTERM/SIGINT: finished runs are kept, the next call resumes


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax

    from seqjax.experiment import few_shot, plots
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.experiment.protocol import use_compilation_cache

    apply_size(FLAGS, DESIGN)
    keys = parse_keys(FLAGS.keys)
    anchor_of = anchors(keys, FLAGS.max_shift, FLAGS.nested)
    settings = protocol_settings(FLAGS)
    max_steps = max(1, math.ceil(FLAGS.train_tokens / FLAGS.tokens_per_batch))
    budget = few_shot.Budget(FLAGS.epochs, min(FLAGS.min_steps, max_steps), max_steps)
    workdir = Path(FLAGS.workdir)
    recorded = ("route", "augment", "max_shift", "epochs", "min_steps", "presets", "options")
    prepare_workdir(
        workdir,
        protocol_record(
            FLAGS,
            settings,
            **{k: FLAGS[k].value for k in recorded if k != "route"},
            route=_route(),
            anchors=anchor_of,
            **data_record(CONFIG),
        ),
        fresh=FLAGS.fresh,
    )
    if FLAGS.compilation_cache:
        use_compilation_cache(workdir / ".jax_cache")
    platform = jax.default_backend()
    key_results = {
        f"{task}@{length}": run_one(task, length, anchor_of[task], settings, budget) for task, length in keys
    }
    results = {
        **run_header(sys.argv, platform),
        "size": FLAGS.size,
        "presets": list(FLAGS.presets),
        "augment": FLAGS.augment,
        "max_shift": FLAGS.max_shift,
        "subsamples": FLAGS.subsamples,
        "tokens_per_batch": FLAGS.tokens_per_batch,
        "epochs": FLAGS.epochs,
        "min_steps": budget.min_steps,
        "max_steps": budget.max_steps,
        "tune_size": FLAGS.tune_size,
        "claim_below": FLAGS.claim_below,
        "match_below": FLAGS.match_below,
        "margin": FLAGS.margin,
        "protocol": {
            "train_tokens": settings.train_tokens,
            "learning_rates": list(settings.learning_rates),
            "grid_extensions": settings.grid_extensions,
            "evaluation_examples": settings.evaluation_examples,
            "param_tolerance": settings.param_tolerance,
            "n_resamples": FLAGS.resamples,
        },
        "verdicts": few_shot.verdicts(
            key_results,
            claim_below=FLAGS.claim_below,
            match_below=FLAGS.match_below,
            margin=FLAGS.margin,
            n_resamples=FLAGS.resamples,
        ),
        "keys": key_results,
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))
    for name, key in key_results.items():
        plots.metric_by_training_examples(
            key["curve"],
            f"{out}_{key['task']}_L{key['length']}.png",
            title=f"{name}\nbalanced accuracy by training examples ({FLAGS.subsamples} subsamples)",
            baseline=key["kmer"],
        )


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
