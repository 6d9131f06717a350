"""Genomic tasks: DNA windows classified as genic/intergenic, promoter/non-promoter, by species, or as
human vs worm.

Four tasks, all built from real sequence and real annotation that CI machines can fetch from Debian
(see /work/shared/DATA.md), in the style of the Genomic Benchmarks but with long windows:

- "genic_vs_intergenic": windows tiling human chr20 (hg19). Label 1 ("genic") if more than half of the
  window lies in gene spans (a RefSeq gene's span = min..max of its exons, either strand); label 0
  ("intergenic") if the window is at least `INTERGENIC_MARGIN` bp away from every gene span. Windows in
  between are dropped, so the two classes are clearly apart.
- "promoter": label 1 = a window centred on a RefSeq TSS (the first base of the gene on its strand; the
  TSS sits at index `length // 2`). A minus-strand TSS window is reverse-complemented so the gene reads
  left to right. Label 0 = as many windows of the same length, placed at deterministic pseudo-random
  positions in the same split's blocks, with no TSS of either strand inside the window or within
  `PROMOTER_NEGATIVE_MARGIN` bp of it; they fall in genic or intergenic DNA alike, never overlap each
  other, and get a pseudo-random strand (half are reverse-complemented) so orientation is no cue.
- "species": windows tiling 16 complete bacterial genomes (Ragout's examples; E. coli, H. pylori,
  S. aureus, V. cholerae); label = species. Split BY GENOME (`GENOME_SPLITS`): no validation or test
  window comes from a genome with a training window.
- "human_or_worm": windows tiling human chr20 (hg19; label 0 "human") and C. elegans chrX (ce2, from
  Bioconductor's BSgenome test data; label 1 "worm"), both forward strand. Each chromosome (or its
  sample cut) is split into the same blocks as below, each block tiled with non-overlapping windows;
  then, per split, the larger class is subsampled (seeded by `BALANCE_SEED`, the length and the split;
  the kept windows stay in coordinate order) to the size of the smaller, so every split is balanced.
  A length too long for some split to hold a window of both classes is an error naming the longest
  that fits.

Splits of the chr20 tasks are by chromosome region: the covered region (all of chr20, or the sample's
4.5 Mbp cut) is cut into `NUM_REGION_BLOCKS` = 20 equal contiguous blocks; blocks 4 and 14 are
validation, 9 and 19 test, the others train (80/10/10). A window lies inside one block, so no window of
one split overlaps a window of another (the tests check this by coordinates). Interleaved blocks rather
than one cut keep gene-dense and gene-poor stretches in every split. With the full chr20 (63,025,520
bp) the blocks are 3,151,276 bp: validation = [12,605,104, 15,756,380) and [44,117,864, 47,269,140),
test = [28,361,484, 31,512,760) and [59,874,244, 63,025,520) (0-based, half-open). "human_or_worm"
cuts worm chrX (17,718,849 bp, or the sample's 900 kbp cut) into blocks the same way (885,942 bp in
full), so its splits never overlap either.

Cleaning, the same for every task: lowercase soft-masking is uppercased (by `seqjax.data.fasta`);
IUPAC ambiguity codes are kept; a window with more than `MAX_N_FRACTION` (10%) N is dropped.

Features of the TFDS builder `GenomicWindows` (one config per task and window length):
- "inputs": uint8[length], ASCII bytes of the uppercase sequence (A, C, G, T, N, IUPAC codes);
- "label": ClassLabel (see `LABEL_NAMES`);
- "genome": Text, "hg19", "ce2" or "<Species>/<genome>" (e.g. "E.Coli/DH1");
- "chrom": Text, the chromosome / FASTA record name ("20", "X", "gi|386593590|ref|NC_017625.1|");
- "start", "end": int64, 0-based half-open coordinates on that record (absolute chr20 / chrX
  coordinates also for the sample); "strand": Text, "+" or "-" (the window was reverse-complemented if "-").

`make_sources(data, data_dir)` returns the splits as random-access sources whose examples are
{"inputs": uint8[length], "label": int32 scalar}; coordinates stay at builder level and are exposed by
`GenomicSplit.coordinates()`. Prepared data lives under `<data_dir>/sample` (embedded sample) or
`<data_dir>/full` (routes auto/offline/online: the same files by any route), so the two never mix.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data import fasta
from seqjax.data.sources import ROUTES, SAMPLES_DIR, DebianPackage, Source, fetch

__all__ = [
    "BACTERIA",
    "CHR20",
    "DEFAULTS",
    "GENOME_SPLITS",
    "LABEL_NAMES",
    "REFSEQ_EXONS",
    "SAMPLE_REGION",
    "SPLITS",
    "TASKS",
    "WORM_CHRX",
    "WORM_SAMPLE_REGION",
    "GenomicConfig",
    "GenomicSplit",
    "GenomicWindows",
    "make_builder",
    "make_config",
    "make_sample",
    "make_sources",
    "prepare",
    "region_blocks",
]

TASKS = ("genic_vs_intergenic", "promoter", "species", "human_or_worm")
SPLITS = ("train", "validation", "test")
DOCUMENTED_LENGTHS = (8192, 16384, 32768)
SPECIES = ("E.Coli", "H.Pylori", "S.Aureus", "V.Cholerae")
LABEL_NAMES = {
    "genic_vs_intergenic": ("intergenic", "genic"),
    "promoter": ("non_promoter", "promoter"),
    "species": SPECIES,
    "human_or_worm": ("human", "worm"),
}

DEFAULTS: dict[str, Any] = {
    "kind": "genomic",
    "task": "genic_vs_intergenic",
    "length": 16384,
    "route": "sample",
    "max_examples_per_split": None,
}

MAX_N_FRACTION = 0.10  # windows with more N than this are dropped (other IUPAC codes do not count)
GENIC_MIN_FRACTION = 0.5  # a "genic" window is more than this fraction inside gene spans
INTERGENIC_MARGIN = 1000  # bp between an "intergenic" window and the nearest gene span, at least
PROMOTER_NEGATIVE_MARGIN = 2000  # bp between a non-promoter window and the nearest TSS, at least
NUM_REGION_BLOCKS = 20
VALIDATION_BLOCKS = (4, 14)
TEST_BLOCKS = (9, 19)
NEGATIVE_SEED = 20  # seeds the placement of promoter negatives (with the length and the split)
CHROM = "20"
WORM_CHROM = "X"
BALANCE_SEED = 30  # seeds the subsampling of the larger class of human_or_worm (with the length and split)

# Which genome of each species goes to which split. "validation+test": the genome is held out and each
# of its records is cut at its midpoint, windows of the first half are validation, of the second test
# (E. coli has only two genomes). The embedded sample keeps, per species, the first train genome and the
# held-out ones, so the by-genome split holds there too.
GENOME_SPLITS: dict[str, dict[str, str]] = {
    "E.Coli": {"DH1": "train", "MG1655-K12": "validation+test"},
    "H.Pylori": {
        "ELS37": "train",
        "G27": "train",
        "Gambia94_24": "train",
        "Puno120": "validation",
        "SJM180": "test",
    },
    "S.Aureus": {
        "COL": "train",
        "JKD6008": "train",
        "N315": "train",
        "RF122": "validation",
        "USA300_FPR3757": "test",
    },
    "V.Cholerae": {"H1": "train", "O1_Inaba": "train", "O1_biovar": "validation", "O395": "test"},
}

# The embedded sample: chr20 [40,740,000, 45,240,000) 0-based (20q13.1: 83 RefSeq genes; of the
# 4.5 Mbp cuts of chr20 the one whose validation and test blocks hold the most of both classes), and
# a prefix of the first record of each genome in SAMPLE_GENOMES: longer for the training genomes, so
# the sample's train split is the larger one, and equal per species in validation and test.
SAMPLE_REGION = (CHROM, 40_740_000, 45_240_000)
SAMPLE_GENOME_PREFIX = {"train": 240_000, "validation": 75_000, "test": 75_000, "validation+test": 150_000}
SAMPLE_GENOMES = {
    "E.Coli": ("DH1", "MG1655-K12"),
    "H.Pylori": ("ELS37", "Puno120", "SJM180"),
    "S.Aureus": ("COL", "RF122", "USA300_FPR3757"),
    "V.Cholerae": ("H1", "O1_biovar", "O395"),
}
# The worm part of the sample: ce2 chrX [8,000,000, 8,900,000) 0-based, 900 kbp from the middle of the
# chromosome (away from the telomeric repeats at its ends; no N), about 270 kB gzipped. Its blocks are
# 45 kbp, so windows up to 45,000 bp fit the sample's human_or_worm task.
WORM_SAMPLE_REGION = (WORM_CHROM, 8_000_000, 8_900_000)

_DEB_LICENCES = "see the package's /usr/share/doc/<package>/copyright"
CHR20 = Source(
    name="hg19_chr20.fa.gz",
    package=DebianPackage("vt-examples"),
    path="usr/share/doc/vt/examples/ref/20.fa.gz",
    url="https://hgdownload.soe.ucsc.edu/goldenPath/hg19/chromosomes/chr20.fa.gz",
    sample="genomic/chr20_region.fa.gz",
    licence="GRCh37 reference sequence: public domain (Genome Reference Consortium / UCSC, free use)",
)
REFSEQ_EXONS = Source(
    name="hg19_RefSeq_exon.txt.gz",
    package=DebianPackage("subread-data"),
    path="usr/share/doc/subread/examples/annotation/hg19_RefSeq_exon.txt.gz",
    url=None,  # shipped inside the Subread release tarball (sourceforge.net/projects/subread), no single URL
    sample="genomic/refseq_exons_chr20_region.txt.gz",
    licence="Subread annotation, GPL-3.0+ (Debian subread-data); RefSeq data is public domain (NCBI)",
)
WORM_CHRX = Source(
    name="ce2_chrX.fa.gz",
    package=DebianPackage("r-bioc-bsgenome"),
    path="usr/lib/R/site-library/BSgenome/extdata/ce2chrX.fa.gz",
    url="https://hgdownload.soe.ucsc.edu/goldenPath/ce2/chromosomes/chrX.fa.gz",
    sample="genomic/ce2_chrX_region.fa.gz",
    licence="BSgenome, Artistic-2.0 (Debian r-bioc-bsgenome copyright); the C. elegans ce2 assembly "
    "(UCSC), free for use",
)
BACTERIA = Source(
    name="ragout_bacterial_references",
    package=DebianPackage("ragout-examples"),
    path="usr/share/doc/ragout/examples/*/references/*.fasta.gz",
    sample="genomic/bacteria",
    licence="Ragout examples, BSD-3-clause (Debian ragout-examples); NCBI genome sequences, public domain",
)

_HOMEPAGES = {
    "genic_vs_intergenic": "https://hgdownload.soe.ucsc.edu/goldenPath/hg19/chromosomes/",
    "promoter": "https://hgdownload.soe.ucsc.edu/goldenPath/hg19/chromosomes/",
    "species": "https://github.com/fenderglass/Ragout",
    "human_or_worm": "https://github.com/ML-Bioinfo-CEITEC/genomic_benchmarks",
}
_HG19_CITATION = """\
@article{lander2001initial,
  title={Initial sequencing and analysis of the human genome},
  author={{International Human Genome Sequencing Consortium}},
  journal={Nature}, volume={409}, pages={860--921}, year={2001}
}"""
_HUMAN_CITATION = (
    _HG19_CITATION
    + """
@article{oleary2016refseq,
  title={Reference sequence (RefSeq) database at NCBI: current status, taxonomic expansion, and
         functional annotation},
  author={O'Leary, Nuala A and others},
  journal={Nucleic Acids Research}, volume={44}, number={D1}, pages={D733--D745}, year={2016}
}
@article{liao2019rsubread,
  title={The R package Rsubread is easier, faster, cheaper and better for alignment and
         quantification of RNA sequencing reads},
  author={Liao, Yang and Smyth, Gordon K and Shi, Wei},
  journal={Nucleic Acids Research}, volume={47}, number={8}, pages={e47}, year={2019}
}"""
)
_SPECIES_CITATION = """\
@article{kolmogorov2014ragout,
  title={Ragout---a reference-assisted assembly tool for bacterial genomes},
  author={Kolmogorov, Mikhail and Raney, Brian and Paten, Benedict and Pham, Son},
  journal={Bioinformatics}, volume={30}, number={12}, pages={i302--i309}, year={2014}
}"""
_WORM_CITATION = """\
@article{celegans1998genome,
  title={Genome sequence of the nematode {C. elegans}: a platform for investigating biology},
  author={{The C. elegans Sequencing Consortium}},
  journal={Science}, volume={282}, number={5396}, pages={2012--2018}, year={1998}
}
@article{gresova2023genomic,
  title={Genomic benchmarks: a collection of datasets for genomic sequence classification},
  author={Grešová, Katarína and Martinek, Vlastimil and Čechák, David and Šimeček, Petr and
          Alexiou, Panagiotis},
  journal={BMC Genomic Data}, volume={24}, number={1}, pages={25}, year={2023}
}"""
_CITATIONS = {
    "genic_vs_intergenic": _HUMAN_CITATION,
    "promoter": _HUMAN_CITATION,
    "species": _SPECIES_CITATION,
    "human_or_worm": _HG19_CITATION + "\n" + _WORM_CITATION,
}
_DESCRIPTIONS = {
    "genic_vs_intergenic": "Human chr20 (hg19) windows: >50% inside RefSeq gene spans (genic) vs at least "
    f"{INTERGENIC_MARGIN} bp from any gene (intergenic); split by chromosome blocks.",
    "promoter": "Human chr20 (hg19) windows centred on RefSeq TSSs, strand-aware (promoter), vs windows "
    f"at least {PROMOTER_NEGATIVE_MARGIN} bp from any TSS; split by chromosome blocks.",
    "species": "Windows of 16 complete bacterial genomes (E. coli, H. pylori, S. aureus, V. cholerae); "
    "label = species; split by genome.",
    "human_or_worm": "Windows of human chr20 (hg19) vs C. elegans chrX (ce2), balanced per split; both "
    "chromosomes split by blocks.",
}


# ----------------------------------------------------------------------------------------------------
# Windows: which (genome, chrom, start, end, strand, label) go to which split. Pure functions of the
# raw files, the task and the length.


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


def region_blocks(start: int, end: int) -> list[tuple[int, int, str]]:
    """The split blocks of the region [start, end): NUM_REGION_BLOCKS equal (to 1 bp) contiguous blocks,
    as (block_start, block_end, split)."""
    edges = start + np.round(np.linspace(0, end - start, NUM_REGION_BLOCKS + 1)).astype(np.int64)
    blocks = []
    for i in range(NUM_REGION_BLOCKS):
        split = "validation" if i in VALIDATION_BLOCKS else "test" if i in TEST_BLOCKS else "train"
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


def _genic_windows(sequence: Sequence, genes: list[fasta.Gene], length: int) -> dict[str, list[Window]]:
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
        genic = spans(starts, ends) > GENIC_MIN_FRACTION * length
        intergenic = near(starts, ends) == 0
        for s, e, ok, g, ig in zip(starts, ends, clean, genic, intergenic, strict=True):
            if ok and (g or ig):
                out[split].append(Window("hg19", sequence.chrom, int(s), int(e), "+", int(g)))
    return out


def _promoter_windows(sequence: Sequence, genes: list[fasta.Gene], length: int) -> dict[str, list[Window]]:
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


def _species_windows(genomes: list[tuple[str, str, list[Sequence]]], length: int) -> dict[str, list[Window]]:
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


def _human_or_worm_windows(
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
            full = " or the full chromosomes (route='auto' or 'offline')" if route == "sample" else ""
            raise ValueError(
                f"human_or_worm: no {empty} window of {length} bp fits in the {split} split: human "
                f"chr{human.chrom} [{human.offset:,}, {human.end:,}) and worm chr{worm.chrom} "
                f"[{worm.offset:,}, {worm.end:,}) are each cut into {NUM_REGION_BLOCKS} blocks and a window "
                f"never crosses a block. Use a shorter length (at most {fits} bp with the {route} data)"
                f"{full}."
            )
        out[split] = []
        for label, windows in enumerate(classes):
            kept = windows[split]
            if len(kept) > count:
                rng = np.random.default_rng([BALANCE_SEED, length, split_index, label])
                kept = [kept[i] for i in np.sort(rng.choice(len(kept), size=count, replace=False))]
            out[split] += kept
    return out


# ----------------------------------------------------------------------------------------------------
# Raw files.

_REGION_NAME = re.compile(r"^(?:chr)?([^:\s]+):(\d+)-(\d+)$", re.IGNORECASE)


def _route_for(source: Source, route: str) -> str:
    # Sources with no single canonical file online (the annotation, the bacterial genomes) come from their
    # Debian package when "online" is asked: the package is the one place they exist as files.
    return "offline" if route == "online" and source.url is None else route


def _load_chromosome(source: Source, route: str, genome: str, chrom: str) -> Sequence:
    """Chromosome `chrom` of `source`'s FASTA, or the sample's cut of it (recognized by a
    `>CHROM:START-END` header, 1-based inclusive)."""
    path = fetch(source, _route_for(source, route))
    sequence = None
    for record in fasta.read_fasta(path):
        match = _REGION_NAME.match(record.name)
        if match and fasta.normalize_chrom(match.group(1)) == chrom:
            first, last = int(match.group(2)), int(match.group(3))
            if last - first + 1 != len(record.sequence):
                raise ValueError(
                    f"{path}: record {record.name} should hold {last - first + 1} bp but holds "
                    f"{len(record.sequence)}; regenerate the sample with seqjax.data.genomic.make_sample."
                )
            sequence = Sequence(genome, chrom, first - 1, record.sequence)
        elif fasta.normalize_chrom(record.name) == chrom:
            sequence = Sequence(genome, chrom, 0, record.sequence)
    if sequence is None:
        raise ValueError(
            f"{path}: no record for chromosome {chrom} ('>{chrom}', '>chr{chrom}' or '>{chrom}:start-end')."
        )
    return sequence


def _load_chr20(route: str) -> tuple[Sequence, list[fasta.Gene]]:
    """chr20 (or the sample's cut of it) and the RefSeq genes of chr20."""
    sequence = _load_chromosome(CHR20, route, "hg19", CHROM)
    genes = fasta.read_exon_annotation(fetch(REFSEQ_EXONS, _route_for(REFSEQ_EXONS, route)), chrom=CHROM)
    return sequence, genes


def _genome_files(root: pathlib.Path) -> list[tuple[str, str, pathlib.Path]]:
    """(species, genome, path) of every `<Species>/[references/]<genome>.fasta.gz` under `root`."""
    found = []
    for path in sorted(root.rglob("*.fasta.gz")):
        species_dir = path.parent.parent if path.parent.name == "references" else path.parent
        species, genome = species_dir.name, path.name.removesuffix(".fasta.gz")
        if species not in GENOME_SPLITS or genome not in GENOME_SPLITS[species]:
            raise ValueError(
                f"{path}: genome {species}/{genome} has no split in GENOME_SPLITS; add it there "
                "(choose train, validation or test, never mixing a genome across splits)."
            )
        found.append((species, genome, path))
    if not found:
        raise ValueError(f"{root}: no <Species>/<genome>.fasta.gz files.")
    return found


def _load_bacteria(route: str) -> list[tuple[str, str, list[Sequence]]]:
    root = fetch(BACTERIA, _route_for(BACTERIA, route))
    genomes = []
    for species, genome, path in _genome_files(root):
        records = [Sequence(f"{species}/{genome}", r.name, 0, r.sequence) for r in fasta.read_fasta(path)]
        genomes.append((species, genome, records))
    return genomes


# ----------------------------------------------------------------------------------------------------
# The TFDS builder.


@dataclasses.dataclass(eq=False)
class GenomicConfig(tfds.core.BuilderConfig):
    """One task at one window length; name it `<task>_<length>` (see `make_config`)."""

    task: str = "genic_vs_intergenic"
    length: int = 16384


def make_config(task: str, length: int) -> GenomicConfig:
    """The config of `task` with windows of `length` bp (any positive length, not only the listed ones)."""
    if task not in TASKS:
        raise ValueError(f"genomic: task must be one of {TASKS}, got {task!r}{_did_you_mean(task)}.")
    return GenomicConfig(name=f"{task}_{length}", description=_DESCRIPTIONS[task], task=task, length=length)


class GenomicWindows(tfds.core.GeneratorBasedBuilder):
    """DNA windows for the genomic tasks (see the module docstring for tasks, splits and features).

    Features: "inputs" uint8[length] (uppercase ASCII, IUPAC codes kept), "label" ClassLabel,
    "genome" Text, "chrom" Text, "start"/"end" int64 (0-based half-open), "strand" Text ("+"/"-").

    `route` picks the raw files: "sample" (embedded) or "auto"/"offline"/"online" (full data); keep
    each kind under its own data_dir (`make_builder` does: `<data_dir>/sample`, `<data_dir>/full`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[GenomicConfig]] = [
        make_config(task, length) for task in TASKS for length in DOCUMENTED_LENGTHS
    ]
    # TFDS 4.9.10 finds a packaged builder's file through `importlib_resources`, which is not installed
    # (and not needed): name the file directly.
    code_path = epath.Path(__file__)

    def __init__(self, *, route: str = "sample", **kwargs: Any) -> None:
        if route not in ROUTES:
            raise ValueError(f"GenomicWindows: route must be one of {ROUTES}, got {route!r}.")
        self.route = route
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=config.description,
            features=tfds.features.FeaturesDict(
                {
                    "inputs": tfds.features.Tensor(shape=(config.length,), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=LABEL_NAMES[config.task]),
                    "genome": tfds.features.Text(),
                    "chrom": tfds.features.Text(),
                    "start": tfds.features.Scalar(dtype=np.int64),
                    "end": tfds.features.Scalar(dtype=np.int64),
                    "strand": tfds.features.Text(),
                }
            ),
            homepage=_HOMEPAGES[config.task],
            citation=_CITATIONS[config.task],
            disable_shuffling=True,  # examples keep coordinate order; the trainer shuffles
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # raw files come through seqjax.data.sources
        task, length = self.builder_config.task, self.builder_config.length
        if task == "species":
            genomes = _load_bacteria(self.route)
            windows = _species_windows(genomes, length)
            sequences = {(r.genome, r.chrom): r for _, _, records in genomes for r in records}
        elif task == "human_or_worm":
            human = _load_chromosome(CHR20, self.route, "hg19", CHROM)
            worm = _load_chromosome(WORM_CHRX, self.route, "ce2", WORM_CHROM)
            windows = _human_or_worm_windows(human, worm, length, self.route)
            sequences = {(r.genome, r.chrom): r for r in (human, worm)}
        else:
            sequence, genes = _load_chr20(self.route)
            windows = (_genic_windows if task == "genic_vs_intergenic" else _promoter_windows)(
                sequence, genes, length
            )
            sequences = {(sequence.genome, sequence.chrom): sequence}
        return {split: self._generate_examples(windows[split], sequences) for split in SPLITS}

    def _generate_examples(self, windows: list[Window], sequences: dict[tuple[str, str], Sequence]) -> Any:
        for index, window in enumerate(windows):
            yield (
                index,
                {
                    "inputs": sequences[(window.genome, window.chrom)].window(window),
                    "label": window.label,
                    "genome": window.genome,
                    "chrom": window.chrom,
                    "start": window.start,
                    "end": window.end,
                    "strand": window.strand,
                },
            )


# ----------------------------------------------------------------------------------------------------
# The contract used by the trainer and scripts/prepare_data.py.


def _did_you_mean(task: Any) -> str:
    close = difflib.get_close_matches(str(task), TASKS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _checked(data: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"genomic data config: unknown keys {unknown}; known keys are {sorted(DEFAULTS)}.")
    config = {**DEFAULTS, **data}
    if config["kind"] != "genomic":
        raise ValueError(f"genomic data config: kind must be 'genomic', got {config['kind']!r}.")
    if config["task"] not in TASKS:
        raise ValueError(
            f"genomic data config: task must be one of {TASKS}, got {config['task']!r}"
            f"{_did_you_mean(config['task'])}."
        )
    length = config["length"]
    if isinstance(length, bool) or not isinstance(length, int | np.integer) or length <= 0:
        raise ValueError(f"genomic data config: length must be a positive int (bp), got {length!r}.")
    if config["route"] not in ROUTES:
        raise ValueError(f"genomic data config: route must be one of {ROUTES}, got {config['route']!r}.")
    cap = config["max_examples_per_split"]
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap <= 0):
        raise ValueError(
            f"genomic data config: max_examples_per_split must be None or a positive int, got {cap!r}."
        )
    config["length"] = int(length)
    return config


def _builder_config(task: str, length: int) -> str | GenomicConfig:
    # TFDS refuses a custom config named like a listed one: the documented lengths go by name.
    name = f"{task}_{length}"
    return name if name in GenomicWindows.builder_configs else make_config(task, length)


def make_builder(data: Mapping[str, Any], data_dir: str | os.PathLike) -> GenomicWindows:
    """The builder for a data config (not yet prepared), under `<data_dir>/sample` or `<data_dir>/full`."""
    config = _checked(data)
    subdir = "sample" if config["route"] == "sample" else "full"
    return GenomicWindows(
        route=config["route"],
        config=_builder_config(config["task"], config["length"]),
        data_dir=os.path.join(os.fspath(data_dir), subdir),
        file_format="array_record",
    )


class GenomicSplit:
    """One split as a random-access source: `split[i]` -> {"inputs": uint8[length], "label": int32[]}.

    With a cap, the split is a seeded random subset of the prepared examples kept in their coordinate
    order, so it is the same on every run and still spans the whole split.
    """

    def __init__(self, source: Any, name: str, label_names: tuple[str, ...], cap: int | None) -> None:
        self._source = source
        self.name = name
        self.label_names = label_names
        total = len(source)
        if cap is not None and cap < total:
            self._indices = np.sort(np.random.default_rng(0).choice(total, size=cap, replace=False))
        else:
            self._indices = np.arange(total)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._indices)

    def _record(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._indices):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self._indices)}).")
        return self._source[int(self._indices[index])]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._record(int(index))
        return {
            "inputs": np.asarray(record["inputs"], dtype=np.uint8),
            "label": np.asarray(record["label"], dtype=np.int32),
        }

    def coordinates(self) -> dict[str, np.ndarray]:
        """Where every example comes from: "genome", "chrom", "strand" (str), "start", "end" (int64)."""
        rows = [self._record(i) for i in range(len(self))]
        text = {k: np.array([_text(r[k]) for r in rows], dtype=object) for k in ("genome", "chrom", "strand")}
        ints = {k: np.array([int(r[k]) for r in rows], dtype=np.int64) for k in ("start", "end")}
        return {**text, **ints}

    def labels(self) -> np.ndarray:
        """All labels of the split (int32), read once."""
        if self._labels is None:
            self._labels = np.array([int(self._record(i)["label"]) for i in range(len(self))], np.int32)
        return self._labels

    def describe(self) -> dict[str, Any]:
        """Example count and class balance, for logs."""
        counts = np.bincount(self.labels(), minlength=len(self.label_names))
        return {
            "examples": len(self),
            "class_counts": dict(zip(self.label_names, counts.tolist(), strict=True)),
        }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def make_sources(data: Mapping[str, Any], data_dir: str) -> dict[str, GenomicSplit]:
    """Prepares the task if needed (idempotent; fast once prepared) and returns its splits
    {"train", "validation", "test"} as random-access sources."""
    config = _checked(data)
    builder = make_builder(config, data_dir)
    builder.download_and_prepare()
    sources = builder.as_data_source()
    names = LABEL_NAMES[config["task"]]
    return {
        split: GenomicSplit(sources[split], split, names, config["max_examples_per_split"])
        for split in SPLITS
    }


def prepare(data: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """Prepares the task and returns a summary: the config, where it lives, per split the example count
    and class balance (after `max_examples_per_split`)."""
    config = _checked(data)
    splits = make_sources(config, data_dir)
    return {
        **config,
        "data_dir": os.fspath(make_builder(config, data_dir).data_dir),
        "splits": {name: split.describe() for name, split in splits.items()},
    }


# ----------------------------------------------------------------------------------------------------
# The embedded sample.


def _write_gzip(path: pathlib.Path, content: bytes) -> None:
    """Deterministic gzip (no file name, mtime 0): the same input gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f,
    ):
        f.write(content)


def _prefix_lines(lines: list[bytes], bases: int) -> list[bytes]:
    """The leading sequence lines (after the first header) holding exactly `bases` bases."""
    out, have = [], 0
    for line in lines:
        if line.startswith(b">"):
            break
        take = line[: bases - have]
        out.append(take)
        have += len(take)
        if have == bases:
            return out
    raise ValueError(f"the first record is shorter than {bases} bp.")


def _region_cut(path: pathlib.Path, region: tuple[str, int, int], description: str) -> bytes:
    """The lines of [start, end) of the one-record FASTA `path`, verbatim (the region must start and end on
    line boundaries), under the header `>CHROM:START-END description` (1-based inclusive)."""
    chrom, start, end = region
    lines = fasta.read_maybe_gzip(path).split(b"\n")
    width = len(lines[1])
    if start % width or end % width:
        raise ValueError(f"{region}: a sample region must start and end on line boundaries ({width} bp).")
    body = lines[1 + start // width : 1 + end // width]
    if len(body) != (end - start) // width or any(len(line) != width for line in body):
        raise ValueError(f"{path}: {region} runs past the end of the record; choose a region inside it.")
    header = f">{chrom}:{start + 1}-{end} {description}"
    return b"\n".join([header.encode(), *body]) + b"\n"


def make_sample(
    out_dir: str | os.PathLike = SAMPLES_DIR / "genomic", route: str = "offline"
) -> dict[str, int]:
    """Cuts the embedded sample from the real files (fetched by `route`) into `out_dir`; deterministic.

    - `chr20_region.fa.gz`: chr20 [SAMPLE_REGION) of vt-examples' `20.fa.gz`, its lines verbatim (the
      region starts and ends on line boundaries), under the header `>20:START-END` (1-based inclusive).
    - `refseq_exons_chr20_region.txt.gz`: the header and, verbatim, every chr20 exon line of the genes
      whose span overlaps the region (absolute hg19 coordinates).
    - `bacteria/<Species>/<genome>.fasta.gz`: the original header and the first SAMPLE_GENOME_PREFIX[split]
      bp of the first record of each genome in SAMPLE_GENOMES, lines verbatim (the last one cut).
    - `ce2_chrX_region.fa.gz`: chrX [WORM_SAMPLE_REGION) of r-bioc-bsgenome's `ce2chrX.fa.gz`, its lines
      verbatim, under the header `>X:START-END` (1-based inclusive).
    Returns the size in bytes of each file written (relative path -> bytes). README.md is kept by hand.
    """
    out = pathlib.Path(out_dir)
    chrom, region_start, region_end = SAMPLE_REGION
    files = {
        "chr20_region.fa.gz": _region_cut(
            fetch(CHR20, _route_for(CHR20, route)),
            SAMPLE_REGION,
            f"hg19 chr{chrom} cut from Debian vt-examples ref/20.fa.gz",
        )
    }

    exon_path = fetch(REFSEQ_EXONS, _route_for(REFSEQ_EXONS, route))
    genes = fasta.read_exon_annotation(exon_path, chrom=chrom)
    keep = {g.gene_id for g in genes if g.start < region_end and g.end > region_start}
    exon_lines = fasta.read_maybe_gzip(exon_path).decode().splitlines()
    kept = [exon_lines[0]] + [
        line
        for line in exon_lines[1:]
        if (f := line.split()) and fasta.normalize_chrom(f[1]) == chrom and f[0] in keep
    ]
    files["refseq_exons_chr20_region.txt.gz"] = ("\n".join(kept) + "\n").encode()

    bacteria_root = fetch(BACTERIA, _route_for(BACTERIA, route))
    for species, genome, path in _genome_files(bacteria_root):
        if genome not in SAMPLE_GENOMES[species]:
            continue
        genome_lines = fasta.read_maybe_gzip(path).split(b"\n")
        body = _prefix_lines(genome_lines[1:], SAMPLE_GENOME_PREFIX[GENOME_SPLITS[species][genome]])
        files[f"bacteria/{species}/{genome}.fasta.gz"] = b"\n".join([genome_lines[0], *body]) + b"\n"

    files["ce2_chrX_region.fa.gz"] = _region_cut(
        fetch(WORM_CHRX, _route_for(WORM_CHRX, route)),
        WORM_SAMPLE_REGION,
        f"ce2 chr{WORM_CHROM} cut from Debian r-bioc-bsgenome BSgenome/extdata/ce2chrX.fa.gz",
    )

    sizes = {}
    for relative, content in files.items():
        _write_gzip(out / relative, content)
        sizes[relative] = (out / relative).stat().st_size
    return sizes
