"""Genomic windows: which (genome, chrom, start, end, strand, label) go to which split. Pure functions of
the sequences, the annotation, the task and the length (the rules are in the package docstring).

    >>> [split for _, _, split in region_blocks(0, 2000)][:5]
    ['train', 'train', 'train', 'train', 'validation']
"""

from __future__ import annotations

import dataclasses

import numpy as np

from seqjax.data import fasta
from seqjax.data.genomic.catalog import (
    BALANCE_SEED,
    GENIC_MIN_FRACTION,
    GENOME_SPLITS,
    INTERGENIC_MARGIN,
    LABEL_NAMES,
    MAX_N_FRACTION,
    MAX_REGION_BLOCK_BP,
    MIN_REGION_BLOCKS,
    NEGATIVE_SEED,
    PROMOTER_NEGATIVE_MARGIN,
    SPECIES,
    SPLITS,
    TEST_BLOCK_IN_TEN,
    VALIDATION_BLOCK_IN_TEN,
)

__all__ = [
    "Sequence",
    "Window",
    "centre_crop",
    "genic_windows",
    "human_or_worm_windows",
    "num_region_blocks",
    "promoter_windows",
    "region_blocks",
    "species_windows",
]


@dataclasses.dataclass(frozen=True)
class Window:
    genome: str
    chrom: str
    start: int
    end: int
    strand: str
    label: int


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A FASTA record's sequence and where it starts on its chromosome (nonzero for a region cut)."""

    genome: str
    chrom: str
    offset: int
    bases: np.ndarray

    @property
    def end(self) -> int:
        return self.offset + len(self.bases)

    def window(self, window: Window) -> np.ndarray:
        bases = self.bases[window.start - self.offset : window.end - self.offset]
        return fasta.reverse_complement(bases) if window.strand == "-" else bases


def num_region_blocks(length: int) -> int:
    """How many split blocks a region of `length` bp is cut into: the fewest multiple of ten, at least
    MIN_REGION_BLOCKS, that keeps every block within MAX_REGION_BLOCK_BP.

    >>> num_region_blocks(63_025_520), num_region_blocks(17_718_849), num_region_blocks(4_500_000)
    (200, 60, 20)
    """
    return 10 * max(MIN_REGION_BLOCKS // 10, -(-length // (10 * MAX_REGION_BLOCK_BP)))


def region_blocks(start: int, end: int) -> list[tuple[int, int, str]]:
    """The split blocks of the region [start, end): `num_region_blocks(end - start)` equal (to 1 bp)
    contiguous blocks, as (block_start, block_end, split); in each run of ten, the fifth is validation
    and the tenth test."""
    count = num_region_blocks(end - start)
    edges = start + np.round(np.linspace(0, end - start, count + 1)).astype(np.int64)
    blocks = []
    for i in range(count):
        split = {VALIDATION_BLOCK_IN_TEN: "validation", TEST_BLOCK_IN_TEN: "test"}.get(i % 10, "train")
        blocks.append((int(edges[i]), int(edges[i + 1]), split))
    return blocks


def _merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint, non-adjacent intervals covering the same bases."""
    if len(starts) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order]
    running_end = np.maximum.accumulate(ends)
    new = np.concatenate([[True], starts[1:] > running_end[:-1]])
    group = np.cumsum(new) - 1
    merged_ends = np.zeros(group[-1] + 1, np.int64)
    np.maximum.at(merged_ends, group, ends)
    return starts[new], merged_ends


class _Coverage:
    """Bases covered by a set of intervals inside [s, e), for many windows at once (binary search)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        self.starts, self.ends = _merge_intervals(starts, ends)
        self.prefix = np.concatenate([[0], np.cumsum(self.ends - self.starts)])

    def _below(self, x: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.starts, x, side="left")  # intervals starting before x
        over = np.where(k > 0, np.maximum(0, self.ends[np.maximum(k - 1, 0)] - x), 0) if len(self.ends) else 0
        return self.prefix[k] - over

    def __call__(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        return self._below(ends) - self._below(starts)


def _n_runs(sequence: Sequence) -> _Coverage:
    is_n = np.concatenate([[0], (sequence.bases == ord("N")).view(np.int8), [0]])
    edges = np.diff(is_n)
    return _Coverage(
        np.flatnonzero(edges == 1) + sequence.offset, np.flatnonzero(edges == -1) + sequence.offset
    )


def _tile(block_start: int, block_end: int, length: int) -> np.ndarray:
    return np.arange(block_start, block_end - length + 1, length, dtype=np.int64)


def genic_windows(
    sequence: Sequence, genes: list[fasta.Gene], length: int, core: int | None = None
) -> dict[str, list[Window]]:
    """Windows tiling each split block, labelled genic / intergenic (package docstring). With `core`,
    the label is the centre `core` bp's (genic if more than half of it lies in gene spans, intergenic if
    it is at least INTERGENIC_MARGIN from every span), so every centre crop of at least `core` bp shares
    it; the N rule still covers the whole window."""
    spans = _Coverage(np.array([g.start for g in genes]), np.array([g.end for g in genes]))
    near = _Coverage(
        np.array([g.start - INTERGENIC_MARGIN for g in genes]),
        np.array([g.end + INTERGENIC_MARGIN for g in genes]),
    )
    n_runs = _n_runs(sequence)
    out: dict[str, list[Window]] = {split: [] for split in SPLITS}
    for block_start, block_end, split in region_blocks(sequence.offset, sequence.end):
        starts = _tile(block_start, block_end, length)
        ends = starts + length
        clean = n_runs(starts, ends) <= MAX_N_FRACTION * length
        size = length if core is None else core
        label_starts = starts + (length - size) // 2
        genic = spans(label_starts, label_starts + size) > GENIC_MIN_FRACTION * size
        intergenic = near(label_starts, label_starts + size) == 0
        for s, e, ok, g, ig in zip(starts, ends, clean, genic, intergenic, strict=True):
            if ok and (g or ig):
                out[split].append(Window("hg19", sequence.chrom, int(s), int(e), "+", int(g)))
    return out


def promoter_windows(sequence: Sequence, genes: list[fasta.Gene], length: int) -> dict[str, list[Window]]:
    n_runs = _n_runs(sequence)
    all_tss = np.sort(np.array([g.tss for g in genes], dtype=np.int64))
    blocks = region_blocks(sequence.offset, sequence.end)
    block_edges = np.array([b[0] for b in blocks])
    positives: dict[str, list[Window]] = {split: [] for split in SPLITS}
    for tss, strand in sorted({(g.tss, g.strand) for g in genes}):
        # The TSS lands at index length // 2 of the (reverse-complemented, if minus) window.
        start = tss - length // 2 if strand == "+" else tss + length // 2 + 1 - length
        end = start + length
        b = int(np.searchsorted(block_edges, start, side="right")) - 1
        if b < 0 or end > blocks[b][1] or n_runs([start], [end])[0] > MAX_N_FRACTION * length:
            continue
        positives[blocks[b][2]].append(Window("hg19", sequence.chrom, start, end, strand, 1))
    out = {}
    for split_index, split in enumerate(SPLITS):
        negatives = _promoter_negatives(
            [b for b in blocks if b[2] == split], len(positives[split]), all_tss, n_runs, length, split_index
        )
        out[split] = sorted(
            positives[split] + [Window("hg19", sequence.chrom, s, s + length, st, 0) for s, st in negatives],
            key=lambda w: (w.start, w.label),
        )
    return out


def _promoter_negatives(
    blocks: list[tuple[int, int, str]],
    count: int,
    all_tss: np.ndarray,
    n_runs: _Coverage,
    length: int,
    split_index: int,
) -> list[tuple[int, str]]:
    """`count` non-overlapping windows at seeded pseudo-random places in `blocks`, far from any TSS."""
    room = np.array([max(0, e - s - length + 1) for s, e, _ in blocks], dtype=np.float64)
    if count == 0 or room.sum() == 0:
        return []
    rng = np.random.default_rng([NEGATIVE_SEED, length, split_index])
    chosen: list[tuple[int, str]] = []
    taken = np.zeros(0, np.int64)
    for _ in range(200 * count + 1000):
        if len(chosen) == count:
            break
        b = int(rng.choice(len(blocks), p=room / room.sum()))
        start = blocks[b][0] + int(rng.integers(0, room[b]))
        strand = "+" if rng.random() < 0.5 else "-"
        end = start + length
        lo = np.searchsorted(all_tss, start - PROMOTER_NEGATIVE_MARGIN, side="left")
        hi = np.searchsorted(all_tss, end + PROMOTER_NEGATIVE_MARGIN, side="left")
        if hi > lo or n_runs([start], [end])[0] > MAX_N_FRACTION * length:
            continue
        if np.any(np.abs(taken - start) < length):
            continue
        chosen.append((start, strand))
        taken = np.append(taken, start)
    return sorted(chosen)


def centre_crop(windows: dict[str, list[Window]], length: int) -> dict[str, list[Window]]:
    """The centre `length` bp of every window (same split, order, strand and label): the nested-crop
    design's windows at `length`, from the anchor windows. The windows and `length` must differ by an
    even number of bp, so the crop sits at the exact centre (a promoter's TSS stays at `length // 2`).

    >>> anchor = {"train": [Window("g", "1", 100, 116, "-", 1)], "validation": [], "test": []}
    >>> centre_crop(anchor, 4)["train"]
    [Window(genome='g', chrom='1', start=106, end=110, strand='-', label=1)]
    """
    out: dict[str, list[Window]] = {}
    for split, kept in windows.items():
        out[split] = []
        for w in kept:
            margin = w.end - w.start - length
            if margin < 0 or margin % 2:
                raise ValueError(
                    f"centre_crop: a {w.end - w.start} bp window has no centred crop of {length} bp (the "
                    "crop must be no longer, and differ by an even number of bp)."
                )
            out[split].append(dataclasses.replace(w, start=w.start + margin // 2, end=w.end - margin // 2))
    return out


def species_windows(genomes: list[tuple[str, str, list[Sequence]]], length: int) -> dict[str, list[Window]]:
    out: dict[str, list[Window]] = {split: [] for split in SPLITS}
    for species, genome, records in genomes:
        assignment = GENOME_SPLITS[species][genome]
        label = SPECIES.index(species)
        for record in records:
            n_runs = _n_runs(record)
            if assignment == "validation+test":
                middle = len(record.bases) // 2
                parts = [(0, middle, "validation"), (middle, len(record.bases), "test")]
            else:
                parts = [(0, len(record.bases), assignment)]
            for part_start, part_end, split in parts:
                starts = _tile(part_start, part_end, length)
                clean = n_runs(starts, starts + length) <= MAX_N_FRACTION * length
                out[split] += [
                    Window(f"{species}/{genome}", record.chrom, int(s), int(s) + length, "+", label)
                    for s, ok in zip(starts, clean, strict=True)
                    if ok
                ]
    return out


def _tiled_windows(sequence: Sequence, length: int, label: int) -> dict[str, list[Window]]:
    """Non-overlapping forward windows tiling each split block of `sequence`, minus those with many N."""
    n_runs = _n_runs(sequence)
    out: dict[str, list[Window]] = {split: [] for split in SPLITS}
    for block_start, block_end, split in region_blocks(sequence.offset, sequence.end):
        starts = _tile(block_start, block_end, length)
        clean = n_runs(starts, starts + length) <= MAX_N_FRACTION * length
        out[split] += [
            Window(sequence.genome, sequence.chrom, int(s), int(s) + length, "+", label)
            for s, ok in zip(starts, clean, strict=True)
            if ok
        ]
    return out


def human_or_worm_windows(
    human: Sequence, worm: Sequence, length: int, route: str = "sample"
) -> dict[str, list[Window]]:
    """Tiled windows of both chromosomes, per split the larger class subsampled to the smaller's size.
    `route` only words the error raised when a split cannot hold a window of both classes."""
    classes = [_tiled_windows(sequence, length, label) for label, sequence in enumerate((human, worm))]
    out: dict[str, list[Window]] = {}
    for split_index, split in enumerate(SPLITS):
        count = min(len(windows[split]) for windows in classes)
        if count == 0:
            names = LABEL_NAMES["human_or_worm"]
            empty = next(names[k] for k, windows in enumerate(classes) if not windows[split])
            fits = min(min(e - s for s, e, _ in region_blocks(sq.offset, sq.end)) for sq in (human, worm))
            human_blocks, worm_blocks = (num_region_blocks(sq.end - sq.offset) for sq in (human, worm))
            full = " or the full chromosomes (route='auto' or 'offline')" if route == "sample" else ""
            raise ValueError(
                f"human_or_worm: no {empty} window of {length} bp fits in the {split} split: human "
                f"chr{human.chrom} [{human.offset:,}, {human.end:,}) and worm chr{worm.chrom} "
                f"[{worm.offset:,}, {worm.end:,}) are cut into {human_blocks} and {worm_blocks} blocks and "
                f"a window never crosses a block. Use a shorter length (at most {fits} bp with the {route} "
                f"data){full}."
            )
        out[split] = []
        for label, windows in enumerate(classes):
            kept = windows[split]
            if len(kept) > count:
                rng = np.random.default_rng([BALANCE_SEED, length, split_index, label])
                kept = [kept[i] for i in np.sort(rng.choice(len(kept), size=count, replace=False))]
            out[split] += kept
    return out
