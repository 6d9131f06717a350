"""Genomic tasks: DNA windows classified as genic/intergenic, promoter/non-promoter, by species, or as
human vs worm.

Four tasks, all built from real sequence and real annotation that CI machines can fetch from Debian
(see docs/data.md), in the style of the Genomic Benchmarks but with long windows:

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

Nested centre crops (`nested=ANCHOR`, an int >= length; None, the default, is off): the windows (their
centres), their split and their labels are chosen once, at the anchor length, by the rules above (a
promoter negative is TSS-free, with the margin, across the whole anchor window; a species or
human_or_worm window tiles at the anchor), and a data set at `length` holds the centre `length` bp of
each anchor window. So the examples, their order and their labels are the same at every length of a
sweep that shares the anchor, and a short crop's bases are the centre of a long one's: only the context
around the same label changes with length. The anchor passes the N rule and lies inside one split block.
genic_vs_intergenic is then labelled by the centre core (`NESTED_CORE` = 1,024 bp, or the anchor if
shorter): genic if more than half of the core lies in gene spans, intergenic if the core is at least
`INTERGENIC_MARGIN` from every span, else dropped; its crops must hold the core (length >= core). The
anchor minus the length must be even (the crop sits at the exact centre: a promoter's TSS stays at
index `length // 2`). The builder config is `<task>_<length>_nested<anchor>`, so nested and plain data
never share a prepared folder. Window counts with the full data (`route=offline`), anchor 16,384 bp,
checked identical (coordinates' centres, order, labels) at 1,024 and 16,384 bp; per split, the total
and the count of each class in `LABEL_NAMES` order:

| task | train | validation | test |
|---|---:|---:|---:|
| genic_vs_intergenic | 2,802 (1,452 + 1,350) | 332 (186 + 146) | 351 (184 + 167) |
| promoter | 1,072 (536 + 536) | 136 (68 + 68) | 106 (53 + 53) |
| species | 1,610 (282 + 305 + 520 + 503) | 652 (141 + 99 + 167 + 245) | 668 (141 + 101 + 175 + 251) |

Splits of the chr20 tasks are by chromosome region: the covered region (all of chr20, or the sample's
4.5 Mbp cut) is cut into equal contiguous blocks, a multiple of ten of them, the fewest (at least
`MIN_REGION_BLOCKS` = 20) that keeps every block within `MAX_REGION_BLOCK_BP` = 320 kbp
(`num_region_blocks`); in each run of ten blocks the fifth is validation, the tenth test and the others
train (80/10/10). A window lies inside one block, so no window of one split overlaps a window of another
(the tests check this by coordinates). Many interleaved blocks rather than one cut put gene-dense and
gene-poor, GC-rich and GC-poor stretches in every split: composition and gene density are regional,
and the GC cue they carry differs from block to block (docs/data.md, "Why 200 blocks"). With the full
chr20 (63,025,520 bp) there are 200 blocks of 315,127 or 315,128 bp (20 validation, 20 test); the
sample's 4.5 Mbp cut has 20 blocks of 225 kbp (blocks 4 and 14 validation, 9 and 19 test).
"human_or_worm" cuts worm chrX (17,718,849 bp: 60 blocks of 295 kbp; the sample's 900 kbp cut: 20 of
45 kbp) the same way, so its splits never overlap either. Builder version 2.0.0; 1.0.0 cut the full
chromosomes into 20 blocks too.

Training-time augmentation (data options `augment` = "none" | "reverse_complement" | "shift" | "both"
and `max_shift` in bp; `augment`): the trainer reverse-complements each training example with
probability 1/2 and/or moves its crop by a uniform offset in [-max_shift, +max_shift] inside its
anchor window (nested crops only, with nested - length >= 2 * max_shift); validation and test are never
augmented, and the draws are a pure function of (seed, position in the training stream).

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

The package, one file per role: `catalog` (tasks, labels, sources, DEFAULTS and `resolve_config`),
`augment` (`train_augmentation`: the training-time transforms),
`reading` (raw files by route), `windows` (which windows go to which split), `builder` (the TFDS
builder), `splits` (`make_sources`, `prepare`, `GenomicSplit`), `sample` (`make_sample`, maintainers
only). Preparation holds a cross-process lock (`seqjax.data.preparation`), so trainer processes that
start together build the data set once.

    >>> from seqjax.data import genomic
    >>> splits = genomic.make_sources({"task": "species", "length": 1024}, "datasets")  # doctest: +SKIP
    >>> splits["train"].describe()["class_counts"]  # doctest: +SKIP
    {'E.Coli': 78, 'H.Pylori': 78, 'S.Aureus': 78, 'V.Cholerae': 78}
    >>> config = {"task": "promoter", "length": 1024, "nested": 16384}  # the centre 1k of 16k windows
    >>> nested = genomic.make_sources(config, "datasets")  # doctest: +SKIP
"""

from seqjax.data.genomic.augment import DnaAugmentation, train_augmentation
from seqjax.data.genomic.builder import GenomicConfig, GenomicWindows, make_builder, make_config
from seqjax.data.genomic.catalog import (
    AUGMENTS,
    BACTERIA,
    CHR20,
    DEFAULTS,
    FULL_REGION,
    GENOME_SPLITS,
    INTERGENIC_MARGIN,
    LABEL_NAMES,
    MAX_N_FRACTION,
    MAX_REGION_BLOCK_BP,
    MIN_REGION_BLOCKS,
    NESTED_CORE,
    PROMOTER_NEGATIVE_MARGIN,
    REFSEQ_EXONS,
    SAMPLE_REGION,
    SPECIES,
    SPLITS,
    TASKS,
    WORM_CHRX,
    WORM_FULL_REGION,
    WORM_SAMPLE_REGION,
    blocked_regions,
    resolve_config,
)
from seqjax.data.genomic.sample import make_sample
from seqjax.data.genomic.splits import GenomicSplit, make_sources, prepare
from seqjax.data.genomic.windows import Sequence, Window, num_region_blocks, region_blocks

__all__ = [
    "AUGMENTS",
    "BACTERIA",
    "CHR20",
    "DEFAULTS",
    "FULL_REGION",
    "GENOME_SPLITS",
    "INTERGENIC_MARGIN",
    "LABEL_NAMES",
    "MAX_N_FRACTION",
    "MAX_REGION_BLOCK_BP",
    "MIN_REGION_BLOCKS",
    "NESTED_CORE",
    "PROMOTER_NEGATIVE_MARGIN",
    "REFSEQ_EXONS",
    "SAMPLE_REGION",
    "SPECIES",
    "SPLITS",
    "TASKS",
    "WORM_CHRX",
    "WORM_FULL_REGION",
    "WORM_SAMPLE_REGION",
    "DnaAugmentation",
    "GenomicConfig",
    "GenomicSplit",
    "GenomicWindows",
    "Sequence",
    "Window",
    "blocked_regions",
    "make_builder",
    "make_config",
    "make_sample",
    "make_sources",
    "num_region_blocks",
    "prepare",
    "region_blocks",
    "resolve_config",
    "train_augmentation",
]
