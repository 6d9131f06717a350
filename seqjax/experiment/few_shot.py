"""The few-shot study (issue 19 §2, `experiments/few_shot.py`): learning curves of recurrent and attention
models on DNA windows, with and without training-time augmentation, and the k-mer baseline's curve.

For one (task, length) key, `run_key` trains, for every training-set size n and subsample s, every model
on `train_examples=n, train_subset_seed=s` (a subset of the train split stratified by label; validation
and test untouched), with `seed=s` (its initialisation and batch order), in two arms: without
augmentation and with `data.augment` (`seqjax.data.genomic.augment`). The rules:

- **Learning rate**: chosen once per model by the protocol (`protocol.tune_learning_rate`: the grid,
  one step past its edge when the best rate lies on it) at n = `tune_size` with subsample 0, without
  augmentation, on the validation split; the same rate then serves every n, subsample and arm (tuning at
  every point would multiply the cost by the grid's size). The chosen grid run is also the curve's (n =
  tune_size, s = 0) run, evaluated on test from its checkpoint (`protocol.evaluate_on_test`).
- **Budget** (`Budget.steps`): ceil(epochs * n / batch) optimizer steps, at least `min_steps` and at
  most `max_steps`. Equal tokens at every n (the protocol's rule) would give n = 50 hundreds of epochs
  at the budget the large sets need, so the curve would measure memorisation under a schedule tuned for
  nothing; a fixed number of epochs, the usual learning-curve design, shows each n its data equally
  often. The floor keeps the warmup + cosine schedule meaningful for the smallest sets; the cap bounds
  the cost of the largest, which then see fewer epochs (the tables give every n's steps and epochs).
  The final parameters are scored (no early stopping), as in the protocol.
- **Parameters** matched within the protocol's tolerance (`matching.match_parameters`), the same
  configs at every n and in both arms.

The statistics (`curve_rows`, `family_difference`, `augmentation_interaction`, `non_inferiority`) read
the runs' saved test predictions: the subsamples play the seeds' part in the cluster x seed bootstrap
(`statistics.contrast_bootstrap`), paired (`paired_seeds=True`): subsample s is one training set that
every model and both arms trained on. Clusters are the test windows' genome blocks
(`seqjax.experiment.clusters`).

    >>> Budget(epochs=10, min_steps=32, max_steps=250).steps(50, batch_size=16)
    32
    >>> Budget(epochs=10, min_steps=32, max_steps=250).steps(1000, batch_size=16)
    250
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.experiment.protocol import (
    HEADLINE,
    ProtocolSettings,
    RunRecord,
    comparison_setup,
    evaluate_on_test,
    train_run,
    tune_learning_rate,
    validation_rank,
)
from seqjax.experiment.report import Claim, contrast_interval, difference_fields, family_of, judge
from seqjax.experiment.statistics import bootstrap_p_value

__all__ = [
    "ARMS",
    "Budget",
    "augmentation_interaction",
    "best_of_family",
    "curve_rows",
    "family_difference",
    "feasible_sizes",
    "kmer_curve",
    "non_inferiority",
    "run_key",
    "tuning_size",
    "verdicts",
    "with_data",
]

#: The two arms of every (n, subsample, model): without augmentation, and with the driver's `data.augment`.
ARMS = ("none", "augmented")
TASK = "classification"
METRIC, _LARGER = HEADLINE[TASK]  # balanced accuracy, larger is better
SECONDARY_METRIC = "macro_f1"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Optimizer steps of a run on n examples (module docstring): ceil(epochs * n / batch), clamped to
    [min_steps, max_steps]."""

    epochs: float
    min_steps: int
    max_steps: int

    def __post_init__(self) -> None:
        if not self.epochs > 0 or not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"Budget: epochs={self.epochs}, min_steps={self.min_steps}, max_steps={self.max_steps}; give "
                "epochs > 0 and 1 <= min_steps <= max_steps."
            )

    def steps(self, n: int, batch_size: int) -> int:
        """The steps of a run on `n` examples in batches of `batch_size`.

        >>> Budget(epochs=2, min_steps=1, max_steps=100).steps(100, batch_size=8)  # 200 examples seen
        25
        """
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * n / batch_size))))

    def epochs_seen(self, n: int, batch_size: int) -> float:
        """Passes over the n examples that `steps` makes: below `epochs` where the cap bites, above where
        the floor does."""
        return self.steps(n, batch_size) * batch_size / n


def feasible_sizes(sizes: Sequence[int], available: int) -> tuple[list[int], list[int]]:
    """(the sizes a train split of `available` examples holds, in increasing order; those it does not).

    >>> feasible_sizes([50, 10000, 500], 2862)
    ([50, 500], [10000])
    """
    ordered = sorted(int(n) for n in sizes)
    return [n for n in ordered if n <= available], [n for n in ordered if n > available]


def tuning_size(sizes: Sequence[int], wanted: int) -> int:
    """The size the learning rate is chosen at: `wanted`, else the largest kept size below it, else the
    smallest kept size.

    >>> tuning_size([50, 100, 250, 500], 500), tuning_size([50, 100], 500), tuning_size([1000], 500)
    (500, 100, 1000)
    """
    if not sizes:
        raise ValueError("tuning_size: no training-set size fits the train split.")
    below = [n for n in sizes if n <= wanted]
    return max(below) if below else min(sizes)


def with_data(config: Any, **values: Any) -> Any:
    """A copy of a ConfigDict with top-level or `data.` keys set (a key it lacks is added: the genomic
    `data.augment` and `data.max_shift` exist only where a config asked for them)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in values.items():
            if key.startswith("data."):
                config.data[key[len("data.") :]] = value
            else:
                config[key] = value
    return config


def _folder(workdir: Path, n: int, arm: str) -> Path:
    return workdir / f"n{n}" / arm


def run_key(
    configs: Mapping[str, Any],
    augment: Mapping[str, Any],
    settings: ProtocolSettings,
    budget: Budget,
    workdir: str | Path,
    *,
    length: int,
    sizes: Sequence[int],
    subsamples: int,
    tune_size: int,
    retrain: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains (or reads back) one key's runs (module docstring) under `workdir`:
    `n<n>/<arm>/<model>/lr<rate>/seed<s>/` and `n<n>/<arm>/predictions/<model>/seed<s>.npz`.

    `configs`: {model: config} of the key at `length` without augmentation, of one batch size;
    `augment`: the genomic data options of the augmented arm (e.g. {"augment": "both", "max_shift": 128}),
    set on the matched configs. `settings`: the protocol's (its `learning_rates`, `grid_extensions`,
    `evaluation_examples`, `param_tolerance`; the budget is `budget`'s). Returns {"learning_rates",
    "tuning", "matched", "steps", "epochs", "runs"}; a run is {"n", "arm", "model", "family",
    "learning_rate", "predictions" (one file per subsample), "validation", "test", ...}."""
    root = Path(workdir)
    _, tokens_per_batch, matched, report = comparison_setup(configs, settings, length=length)
    batch = tokens_per_batch // int(length)
    arms = {
        "none": matched,
        "augmented": {
            m: with_data(c, **{f"data.{k}": v for k, v in augment.items()}) for m, c in matched.items()
        },
    }
    common = {"length": int(length), "tokens_per_batch": tokens_per_batch, "log": log}

    def subset(config: Any, n: int, s: int) -> Any:
        return with_data(config, train_examples=int(n), train_subset_seed=int(s))

    def budget_settings(n: int) -> ProtocolSettings:
        return dataclasses.replace(settings, train_tokens=budget.steps(n, batch) * tokens_per_batch, seeds=1)

    # 1. The learning rate: the protocol's grid at n = tune_size, subsample 0, no augmentation.
    tune_folder = _folder(root, tune_size, "none")
    if not retrain and not tune_folder.exists():
        raise FileNotFoundError(f"{tune_folder} is missing: run with --retrain first (or check --workdir).")
    tuned = {}
    for m in report:
        log(f"match {m.name}: {m.parameters:,} parameters ({m.ratio:.3f} x {m.target:,}), {m.override}")
        tuned[m.name] = tune_learning_rate(
            m.name,
            subset(matched[m.name], tune_size, 0),
            budget_settings(tune_size),
            tune_folder / m.name,
            **common,
        )
    rates = {model: chosen.learning_rate for model, (_, chosen) in tuned.items()}
    # 2. Every (n, arm, model, subsample) at that rate; subsample s trains with seed s.
    runs = []
    for n in sizes:
        run_settings = budget_settings(n)
        for arm, arm_configs in arms.items():
            folder = _folder(root, n, arm)
            for model, config in arm_configs.items():
                lr = rates[model]
                records: list[RunRecord] = []
                paths = []
                for s in range(subsamples):
                    run_dir = folder / model / f"lr{lr:g}" / f"seed{s}"
                    path = folder / "predictions" / model / f"seed{s}.npz"
                    run = subset(config, n, s)
                    if (n, arm, s) == (tune_size, "none", 0):  # the chosen grid run itself
                        chosen = tuned[model][1]
                        record = evaluate_on_test(
                            model,
                            run,
                            run_settings,
                            chosen,
                            path,
                            length=length,
                            tokens_per_batch=tokens_per_batch,
                        )
                    else:
                        if not retrain and not (run_dir / "run.json").exists():
                            raise FileNotFoundError(f"{run_dir} is missing: run with --retrain first.")
                        record = train_run(
                            model, run, run_settings, lr, s, run_dir, predictions_path=path, **common
                        )
                    records.append(record)
                    paths.append(str(path))
                runs.append(
                    {
                        "n": int(n),
                        "arm": arm,
                        "model": model,
                        "family": family_of(model),
                        "learning_rate": lr,
                        "steps": budget.steps(n, batch),
                        "epochs": budget.epochs_seen(n, batch),
                        "predictions": paths,
                        "validation": [r.validation[METRIC] for r in records],
                        "test": [r.test[METRIC] for r in records],
                        "train_seconds": float(sum(r.train_seconds for r in records)),
                        "tokens_per_s": float(np.median([r.tokens_per_s for r in records])),
                        "parameters": records[0].num_params,
                    }
                )
    return {
        "sizes": [int(n) for n in sizes],
        "batch_size": batch,
        "tune_size": int(tune_size),
        "learning_rates": rates,
        "tuning": {
            model: {f"{r.learning_rate:g}": r.validation[METRIC] for r in grid}
            for model, (grid, _) in tuned.items()
        },
        "matched": {
            m.name: {"parameters": m.parameters, "ratio": m.ratio, "override": m.override} for m in report
        },
        "steps": {int(n): budget.steps(n, batch) for n in sizes},
        "epochs": {int(n): budget.epochs_seen(n, batch) for n in sizes},
        "runs": runs,
    }


# ----------------------------------------------------------------------------------------------------
# Statistics: every interval from the runs' saved test predictions, subsamples as the seeds.
# ----------------------------------------------------------------------------------------------------
def _run(result: Mapping[str, Any], n: int, arm: str, model: str) -> Mapping[str, Any]:
    return next(r for r in result["runs"] if (r["n"], r["arm"], r["model"]) == (n, arm, model))


def curve_rows(
    result: Mapping[str, Any], *, confidence_level: float = 0.95, n_resamples: int = 2000
) -> list[dict[str, Any]]:
    """One row per (n, arm, model) of a key: balanced accuracy (and macro-F1 under "secondary") on the
    test split, mean over the subsamples, with the cluster x subsample bootstrap interval."""
    from seqjax.experiment.report import metric_interval

    rows = []
    for run in result["runs"]:
        kwargs = {"confidence_level": confidence_level, "n_resamples": n_resamples}
        headline = metric_interval(run["predictions"], TASK, **kwargs)
        secondary = metric_interval(run["predictions"], TASK, metric=SECONDARY_METRIC, **kwargs)
        rows.append(
            {
                **{k: run[k] for k in ("n", "arm", "model", "family", "steps", "epochs", "learning_rate")},
                "estimate": headline.estimate,
                "low": headline.low,
                "high": headline.high,
                "n_clusters": headline.n_clusters,
                "secondary": {
                    SECONDARY_METRIC: {
                        "estimate": secondary.estimate,
                        "low": secondary.low,
                        "high": secondary.high,
                    }
                },
                "validation": float(np.mean(run["validation"])),
                "subsample_values": list(run["test"]),
            }
        )
    return rows


def best_of_family(
    result: Mapping[str, Any], family: str, sizes: Sequence[int], arms: Sequence[str] = ("none",)
) -> str | None:
    """The model of `family` with the best mean validation balanced accuracy over its runs at `sizes`
    and `arms` (every subsample); None when the key has no model of that family. The test split is not
    read.

    >>> result = {"runs": [
    ...     {"n": 50, "arm": "none", "model": "lstm", "family": "recurrent", "validation": [0.7, 0.8]},
    ...     {"n": 50, "arm": "none", "model": "mamba", "family": "recurrent", "validation": [0.8, 0.9]},
    ...     {"n": 50, "arm": "none", "model": "attention", "family": "attention", "validation": [0.9, 0.9]}]}
    >>> best_of_family(result, "recurrent", [50]), best_of_family(result, "hybrid", [50])
    ('mamba', None)
    """
    scores: dict[str, list[float]] = {}
    for run in result["runs"]:
        if run["family"] == family and run["n"] in sizes and run["arm"] in arms:
            scores.setdefault(run["model"], []).extend(run["validation"])
    if not scores:
        return None
    # a tie goes to the later name (met first in reverse order); a non-finite mean comes last
    return min(
        sorted(scores, reverse=True), key=lambda m: validation_rank(float(np.mean(scores[m])), larger=True)
    )


def family_difference(
    result: Mapping[str, Any],
    n: int,
    *,
    arm: str = "none",
    margin: float | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any] | None:
    """Balanced accuracy of the best recurrent minus the best attention model at training-set size `n`
    (each chosen on validation at that n and `arm`), paired over the test clusters and the subsamples
    (`report.contrast_interval(paired_seeds=True)`). With `margin`, also "shifted": the same difference
    plus `margin` (its interval and bootstrap p-value), for the non-inferiority rule (`non_inferiority`).
    None when a family is missing."""
    better = best_of_family(result, "recurrent", [n], (arm,))
    worse = best_of_family(result, "attention", [n], (arm,))
    if better is None or worse is None:
        return None
    interval = contrast_interval(
        [_run(result, n, arm, better)["predictions"], _run(result, n, arm, worse)["predictions"]],
        [1.0, -1.0],
        TASK,
        paired_seeds=True,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    out = {"n": int(n), "arm": arm, "better": better, "worse": worse, **difference_fields(interval)}
    if margin is not None:
        out["margin"] = float(margin)
        out["shifted"] = {
            "estimate": interval.estimate + margin,
            "low": interval.low + margin,
            "high": interval.high + margin,
            "p_value": bootstrap_p_value(interval.distribution + margin),
            # judged as any interval: not over fewer than MIN_CLUSTERS clusters (`report.judge`)
            "n_clusters": interval.n_clusters,
        }
    return out


def augmentation_interaction(
    result: Mapping[str, Any],
    sizes: Sequence[int],
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any] | None:
    """Rule (b) of one key: [gain of the best recurrent model] - [gain of the best attention model], a
    gain being balanced accuracy with augmentation minus without, averaged over `sizes` (each size
    weighs 1 / len(sizes)); the two models chosen on validation over those sizes and both arms. One
    contrast bootstrap over the 4 x len(sizes) runs' test predictions, subsamples paired. Also every
    model's own pooled gain ("gains"), at the same level. None when a family or a size is missing."""
    sizes = [int(n) for n in sizes]
    if not sizes:
        return None
    rec = best_of_family(result, "recurrent", sizes, ARMS)
    att = best_of_family(result, "attention", sizes, ARMS)
    if rec is None or att is None:
        return None
    weight = 1.0 / len(sizes)
    kwargs = {"paired_seeds": True, "confidence_level": confidence_level, "n_resamples": n_resamples}

    def gain_terms(model: str, sign: float) -> tuple[list[list[str]], list[float]]:
        runs, coefficients = [], []
        for n in sizes:
            runs += [
                _run(result, n, "augmented", model)["predictions"],
                _run(result, n, "none", model)["predictions"],
            ]
            coefficients += [sign * weight, -sign * weight]
        return runs, coefficients

    rec_runs, rec_c = gain_terms(rec, 1.0)
    att_runs, att_c = gain_terms(att, -1.0)
    interval = contrast_interval(rec_runs + att_runs, rec_c + att_c, TASK, **kwargs)
    gains = {}
    for model in dict.fromkeys(r["model"] for r in result["runs"]):
        runs, coefficients = gain_terms(model, 1.0)
        gains[model] = {
            "family": family_of(model),
            **difference_fields(contrast_interval(runs, coefficients, TASK, **kwargs)),
        }
    return {"sizes": sizes, "recurrent": rec, "attention": att, **difference_fields(interval), "gains": gains}


def non_inferiority(differences: Mapping[str, Mapping[str, Any]], claim: Claim) -> dict[str, Any]:
    """Rule (c): "recurrent matches or exceeds attention", i.e. difference > -margin, judged on the
    shifted differences (`family_difference(margin=...)`) as `report.judge` judges any claim: supported
    when every shifted interval lies above zero (recurrent is at most `margin` behind, at every key),
    contradicted when every one lies below (recurrent is more than `margin` behind everywhere), depends
    when both happen, else inconclusive.

    >>> d = {"n=50": {"shifted": {"low": 0.01, "high": 0.2, "p_value": 0.01}},
    ...      "n=100": {"shifted": {"low": 0.02, "high": 0.1, "p_value": 0.02}}}
    >>> non_inferiority(d, Claim("match", "recurrent", "attention"))["verdict"]
    'supported'
    """
    if not differences:
        return {"claim": claim.name, "verdict": "inconclusive", "per_key": {}, "note": "no pair to compare"}
    return judge(claim, {k: d["shifted"] for k, d in differences.items()}, larger_is_better=True)


def verdicts(
    keys: Mapping[str, Mapping[str, Any]],
    *,
    claim_below: int = 500,
    match_below: int = 10_000,
    margin: float = 0.02,
    alpha: float = 0.05,
    n_resamples: int = 2000,
) -> dict[str, dict[str, Any]]:
    """The three rules of `experiments/few_shot.py` over every key ({"task@length": `run_key`'s result}):

    - "a": at every (key, n) with n < `claim_below`, `family_difference` without augmentation, at
      1 - alpha / m over those m pairs (Bonferroni), judged by `report.judge`;
    - "b": per key, `augmentation_interaction` over its sizes below `claim_below`, at 1 - alpha / keys;
    - "c": at every (key, n) with n < `match_below`, the same difference with `margin`, at 1 - alpha / m,
      judged by `non_inferiority`.

    Each is {"claim", "verdict", "per_key" (class and Holm-adjusted p), "confidence_level",
    "differences" ({label: the difference}), ...}."""
    below = {key: [n for n in r["sizes"] if n < claim_below] for key, r in keys.items()}
    under = {key: [n for n in r["sizes"] if n < match_below] for key, r in keys.items()}
    out = {}
    for rule, sizes, shift in (("a", below, None), ("c", under, margin)):
        pairs = [(key, n) for key, ns in sizes.items() for n in ns]
        level = 1.0 - alpha / max(1, len(pairs))
        differences = {}
        for key, n in pairs:
            d = family_difference(keys[key], n, margin=shift, confidence_level=level, n_resamples=n_resamples)
            if d is not None:
                differences[f"{key} n={n}"] = d
        if rule == "a":
            claim = Claim(
                f"recurrent beats attention below {claim_below:,} examples", "recurrent", "attention"
            )
            judged = (
                judge(claim, differences, larger_is_better=True)
                if differences
                else non_inferiority({}, claim)  # "inconclusive", no pair
            )
        else:
            claim = Claim(
                f"recurrent matches or exceeds attention below {match_below:,} examples (margin {margin:g})",
                "recurrent",
                "attention",
            )
            judged = non_inferiority(differences, claim)
        out[rule] = {**judged, "confidence_level": level, "differences": differences}
    level = 1.0 - alpha / max(1, len(keys))
    interactions = {}
    for key, r in keys.items():
        d = augmentation_interaction(r, below[key], confidence_level=level, n_resamples=n_resamples)
        if d is not None:
            interactions[key] = d
    claim = Claim("augmentation helps recurrent models more than attention", "recurrent", "attention")
    judged = judge(claim, interactions, larger_is_better=True) if interactions else non_inferiority({}, claim)
    out["b"] = {**judged, "confidence_level": level, "differences": interactions}
    return {rule: out[rule] for rule in ("a", "b", "c")}


# ----------------------------------------------------------------------------------------------------
# The k-mer baseline's learning curve, on the same subsets.
# ----------------------------------------------------------------------------------------------------
def kmer_curve(
    sources: Mapping[str, Any],
    sizes: Sequence[int],
    subsamples: int,
    *,
    kmer_sizes: Sequence[int] = (3, 4, 5, 6),
    evaluation_examples: int | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> list[dict[str, Any]]:
    """The k-mer logistic regression (`seqjax.baselines.genomic`: k-mer frequencies, standardised, L2
    logistic regression) fit on the same subsets as the models (`pipeline.subset_indices(train, n, s)`,
    the trainer's `train_examples` / `train_subset_seed`), k chosen per subset on validation balanced
    accuracy, scored on the test examples the models are scored on (`evaluation_examples` spread over
    each split). One row per n: balanced accuracy (macro-F1 under "secondary") with the cluster x
    subsample bootstrap interval, and the k chosen for each subsample. `sources`: the key's genomic
    splits {"train", "validation", "test"} at its length (no augmentation: the baseline sees the crops)."""
    from seqjax.baselines.genomic import fit_evaluate, kmer_frequencies, split_arrays
    from seqjax.data.pipeline import IndexedSource, spread_indices, subset_indices
    from seqjax.experiment import statistics, weighted_metrics
    from seqjax.experiment.clusters import example_clusters

    train = sources["train"]
    windows, labels = split_arrays(train)
    evaluated = {}
    for split in ("validation", "test"):
        indices = spread_indices(len(sources[split]), evaluation_examples)
        evaluated[split] = (*split_arrays(IndexedSource(sources[split], indices)), indices)
    clusters = example_clusters(sources["test"])[evaluated["test"][2]]
    num_classes = len(train.label_names)
    eval_windows = np.concatenate([evaluated["validation"][0], evaluated["test"][0]])
    eval_labels = np.concatenate([evaluated["validation"][1], evaluated["test"][1]])
    n_validation = len(evaluated["validation"][1])
    eval_features = {k: kmer_frequencies(eval_windows, k) for k in kmer_sizes}
    ones = np.ones((1, n_validation))
    balanced = weighted_metrics.CLASSIFICATION_METRICS["balanced_accuracy"]
    rows = []
    for n in sizes:
        predictions, chosen = [], []
        for s in range(subsamples):
            index = subset_indices(train, int(n), s)
            best = None
            for k in kmer_sizes:
                fit = fit_evaluate(
                    kmer_frequencies(windows[index], k),
                    labels[index],
                    eval_features[k],
                    eval_labels,
                    num_classes,
                )
                predicted = fit.per_example["prediction"]
                score = float(balanced(predicted[:n_validation], evaluated["validation"][1], ones)[0])
                if best is None or score > best[0]:
                    best = (score, k, predicted[n_validation:])
            chosen.append(best[1])
            predictions.append(best[2])
        kwargs = {"cluster_ids": clusters, "confidence_level": confidence_level, "n_resamples": n_resamples}
        targets = evaluated["test"][1]
        headline = statistics.cluster_bootstrap(
            np.stack(predictions), targets=targets, metric=balanced, **kwargs
        )
        f1 = statistics.cluster_bootstrap(
            np.stack(predictions),
            targets=targets,
            metric=weighted_metrics.CLASSIFICATION_METRICS[SECONDARY_METRIC],
            **kwargs,
        )
        rows.append(
            {
                "n": int(n),
                "model": "k-mer logistic regression",
                "estimate": headline.estimate,
                "low": headline.low,
                "high": headline.high,
                "secondary": {SECONDARY_METRIC: {"estimate": f1.estimate, "low": f1.low, "high": f1.high}},
                "k": chosen,
            }
        )
    return rows
