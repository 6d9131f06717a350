"""A comparison at every length of a sweep, and the verdict of one claim over the longer lengths: what the
length drivers share (`experiments/length_crossover.py`, `experiments/dna_windows.py`).

- `compare_lengths`: `comparison.compare_at_length` at each length, under `<workdir>/L<length>/`, with
  intervals at 1 - 0.05 / m over the m lengths (Bonferroni), so they hold jointly.
- `claim_verdict`: the claim's paired differences at the lengths >= `claim_from` (all lengths when
  none is that long), judged by `report.judge` (Holm-adjusted p-values beside it).
- `LengthBudget`: how a sweep spends its training budget at each length: the same labelled examples
  (windows) at every length, or the same tokens (the length-crossover protocol), and fewer seeds at
  the costly lengths.
- `length_gain`: one model's metric at a longer length minus at a shorter one on the same test
  examples (nested DNA crops of the same loci; the same forecast windows read with two look-backs),
  paired over the longer run's clusters, with its class: "helps", "hurts" or "no clear difference"
  (`experiments/dna_windows.py` rule (b), `experiments/lookback.py` rule (b)).

    >>> summaries = [{"length": 1024, "larger_is_better": True, "comparisons": []}]
    >>> verdict, covered_from = claim_verdict(summaries, Claim("r beats a", "recurrent", "attention"), 8192)
    >>> verdict["verdict"], covered_from
    ('inconclusive', 1024)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seqjax.experiment.protocol import ProtocolSettings
from seqjax.experiment.report import Claim, judge

__all__ = [
    "BUDGETS",
    "GAIN_CLASSES",
    "LengthBudget",
    "claim_verdict",
    "compare_lengths",
    "finished_models_at",
    "joint_level",
    "length_folder",
    "length_gain",
]

#: The class of an interval of metric(longer) - metric(shorter) (`verdict.classify_interval`, the
#: better side of zero claimed).
GAIN_CLASSES = {"claimed": "helps", "opposite": "hurts", "neither": "no clear difference"}


#: The ways a sweep spends its training budget (`LengthBudget.kind`).
BUDGETS = ("windows", "tokens")


@dataclasses.dataclass(frozen=True)
class LengthBudget:
    """How a sweep over lengths spends its training budget, length by length.

    - kind "windows": every length trains on `train_windows` examples in batches of `windows_per_batch`:
      the same labelled examples and optimizer steps at every length, so a longer length reads more
      tokens. What a claim about length needs: with equal tokens a 16k-bp crop sees 16x fewer labelled
      windows than a 1k one (an 8192-step look-back 85x fewer forecast targets than a 96-step one), and
      "longer hurts" would measure only that.
    - kind "tokens": `tokens_per_batch` and the settings' `train_tokens` at every length (the
      length-crossover protocol: the cost per run is the same at every length).

    Lengths >= `few_seeds_from` train at most `few_seeds` seeds (cells that take over 20 minutes on the
    machine at hand; the tables give each row's seeds). `steps` (a driver's smoke size) replaces
    `train_windows` by `steps` batches and keeps every seed.

    >>> budget = LengthBudget("windows", windows_per_batch=4, train_windows=200, few_seeds_from=8192)
    >>> budget.batch(1024), budget.batch(16384)
    (4, 4)
    >>> s = budget.settings(ProtocolSettings(train_tokens=1, seeds=5), 16384)
    >>> s.train_tokens == 200 * 16384, s.seeds
    (True, 3)
    >>> LengthBudget("tokens", tokens_per_batch=16384).batch(1024)
    16
    """

    kind: str
    windows_per_batch: int | None = None
    train_windows: int | None = None
    tokens_per_batch: int | None = None
    few_seeds_from: int | None = None
    few_seeds: int = 3
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUDGETS:
            raise ValueError(f"LengthBudget: kind={self.kind!r}; choose one of {BUDGETS}.")
        needed = ("windows_per_batch", "train_windows") if self.kind == "windows" else ("tokens_per_batch",)
        for name in needed:
            value = getattr(self, name)
            if name == "train_windows" and self.steps is not None:
                continue
            if value is None or int(value) < 1:
                raise ValueError(
                    f"LengthBudget({self.kind!r}) needs a positive {name} (got {value!r}), e.g. "
                    f"--{name}=... on the driver's command line."
                )
        if self.few_seeds < 1:
            raise ValueError(f"LengthBudget: few_seeds={self.few_seeds} must be >= 1.")

    def batch(self, length: int) -> int:
        """Examples per training batch at `length`."""
        if self.kind == "windows":
            return int(self.windows_per_batch)
        return max(1, int(self.tokens_per_batch) // int(length))

    def settings(self, base: ProtocolSettings, length: int) -> ProtocolSettings:
        """`base` with the training tokens and seeds of `length` (the class docstring)."""
        if self.kind == "windows":
            windows = self.batch(length) * self.steps if self.steps else int(self.train_windows)
            tokens = windows * int(length)
        else:
            tokens = base.train_tokens
        seeds = base.seeds
        if self.steps is None and self.few_seeds_from is not None and length >= self.few_seeds_from:
            seeds = min(seeds, self.few_seeds)
        return dataclasses.replace(base, train_tokens=tokens, seeds=seeds)

    def describe(self, lengths: Sequence[int]) -> str:
        """One line for a report: what every length trained on."""
        if self.kind == "windows":
            steps = self.steps or math.ceil(int(self.train_windows) / int(self.windows_per_batch))
            text = (
                f"{steps} batches of {self.windows_per_batch} training windows per run at every length "
                "(the same labelled examples and steps; a longer length reads more tokens)"
            )
        else:
            text = f"{self.tokens_per_batch:,} tokens per batch at every length (equal training tokens)"
        if self.steps is None and self.few_seeds_from is not None and max(lengths) >= self.few_seeds_from:
            text += f"; {self.few_seeds} seeds at lengths >= {self.few_seeds_from:,}"
        return text


def joint_level(lengths: Sequence[int], alpha: float = 0.05) -> float:
    """The confidence of each interval so that those of all `lengths` hold jointly (Bonferroni).

    >>> joint_level([1024, 4096, 8192, 16384])
    0.9875
    """
    return 1.0 - alpha / max(1, len(lengths))


def length_folder(workdir: str | os.PathLike[str], length: int) -> Path:
    """Where a sweep keeps the runs of one length: `<workdir>/L<length>`.

    >>> length_folder("runs/crossover_lm", 8192).as_posix()
    'runs/crossover_lm/L8192'
    """
    return Path(workdir) / f"L{int(length)}"


def finished_models_at(workdir: str | os.PathLike[str], length: int, models: Sequence[str]) -> Path:
    """`length_folder(workdir, length)`, checked to hold a folder for every one of `models`: what a driver
    that reuses another sweep's runs (e.g. `experiments/context_use.py --reuse_runs`) reads them from. A
    model without runs there is a ValueError naming the folder and the models, so reusing never trains
    into another experiment's folder by mistake."""
    folder = length_folder(workdir, length)
    missing = [m for m in models if not (folder / m).is_dir()]
    if missing:
        raise ValueError(
            f"{folder} has no runs of {missing} (length {length}); give the models and lengths that sweep "
            "trained, or train them in this experiment's own workdir."
        )
    return folder


def compare_lengths(
    configs_at: Callable[[int], Mapping[str, Any]],
    settings: ProtocolSettings | Callable[[int], ProtocolSettings],
    workdir: str | os.PathLike[str],
    lengths: Sequence[int],
    *,
    claims: Sequence[Claim] = (),
    n_resamples: int = 2000,
    retrain: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The summary (`compare_at_length`) of every length in increasing order, each trained under
    `<workdir>/L<length>/` from `configs_at(length)` ({model: config}) and `settings` (one for every
    length, or `settings(length)`, e.g. `LengthBudget.settings`); with `retrain=False`, a missing
    length folder is an error (re-tabulate finished runs only).

        >>> summaries = compare_lengths(lambda n: preset_configs(..., length=n, ...), settings,
        ...                             "runs/x", [1024, 4096])  # doctest: +SKIP
    """
    from seqjax.experiment.comparison import compare_at_length

    lengths = sorted(int(n) for n in lengths)
    level = joint_level(lengths)
    summaries = []
    for length in lengths:
        folder = length_folder(workdir, length)
        if not retrain and not folder.exists():
            raise FileNotFoundError(f"{folder} is missing: run with --retrain first (or check --workdir).")
        summaries.append(
            compare_at_length(
                configs_at(length),
                settings(length) if callable(settings) else settings,
                folder,
                length=length,
                claims=claims,
                confidence_level=level,
                n_resamples=n_resamples,
                log=log,
            )
        )
    return summaries


def claim_verdict(
    summaries: Sequence[Mapping[str, Any]], claim: Claim, claim_from: int
) -> tuple[dict[str, Any], int]:
    """(the verdict of `claim` over the summaries' lengths >= `claim_from`, the first length it covers).
    With no length that long, every length is covered; with no pair to compare, "inconclusive"."""
    covered = [s for s in summaries if s["length"] >= claim_from] or list(summaries)
    differences = {
        s["length"]: c
        for s in covered
        for c in s["comparisons"]
        if c["claim"] == claim.name and "missing" not in c
    }
    if not differences:
        note = "no pair to compare"
        verdict = {"claim": claim.name, "verdict": "inconclusive", "per_key": {}, "note": note}
    else:
        verdict = judge(claim, differences, larger_is_better=summaries[0]["larger_is_better"])
    return verdict, min(s["length"] for s in covered)


def length_gain(
    long: Sequence[str],
    short: Sequence[str],
    task: str,
    *,
    larger_is_better: bool,
    metric: str | None = None,
    horizon: int | None = None,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """metric(long) - metric(short) of one model from its seeds' predictions files at two lengths, on the
    same test examples: `report.paired_difference` over the longer run's clusters (the coarser blocks,
    which also hold the shorter run's correlation) and each length's seeds resampled on their own, with
    its class (`GAIN_CLASSES`: "helps" when the interval lies on the better side of zero).

        >>> length_gain(lstm_16k_paths, lstm_1k_paths, "classification",
        ...             larger_is_better=True)["class"]  # doctest: +SKIP
        'helps'
    """
    from seqjax.experiment.predictions import read_predictions
    from seqjax.experiment.report import paired_difference
    from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters

    difference = paired_difference(
        long,
        short,
        task,
        metric=metric,
        clusters=read_predictions(long[0]).cluster_ids,
        horizon=horizon,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    if too_few_clusters(difference["n_clusters"]):
        return {**difference, "class": not_judged(difference["n_clusters"])}
    side = classify_interval("greater" if larger_is_better else "less", difference["low"], difference["high"])
    return {**difference, "class": GAIN_CLASSES[side]}
