"""A comparison at every length of a sweep, and the verdict of one claim over the longer lengths: what the
length drivers share (`experiments/length_crossover.py`, `experiments/dna_windows.py`).

- `compare_lengths`: `comparison.compare_at_length` at each length, under `<workdir>/L<length>/`, with
  intervals at 1 - 0.05 / m over the m lengths (Bonferroni), so they hold jointly.
- `claim_verdict`: the claim's paired differences at the lengths >= `claim_from` (all lengths when
  none is that long), judged by `report.judge` (Holm-adjusted p-values beside it).
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

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from seqjax.experiment.protocol import ProtocolSettings
from seqjax.experiment.report import Claim, judge

__all__ = [
    "GAIN_CLASSES",
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
    settings: ProtocolSettings,
    workdir: str | os.PathLike[str],
    lengths: Sequence[int],
    *,
    claims: Sequence[Claim] = (),
    n_resamples: int = 2000,
    retrain: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """The summary (`compare_at_length`) of every length in increasing order, each trained under
    `<workdir>/L<length>/` from `configs_at(length)` ({model: config}); with `retrain=False`, a missing
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
                settings,
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
    from seqjax.experiment.verdict import classify_interval

    difference = paired_difference(
        long,
        short,
        task,
        metric=metric,
        clusters=read_predictions(long[0]).cluster_ids,
        confidence_level=confidence_level,
        n_resamples=n_resamples,
    )
    side = classify_interval("greater" if larger_is_better else "less", difference["low"], difference["high"])
    return {**difference, "class": GAIN_CLASSES[side]}
