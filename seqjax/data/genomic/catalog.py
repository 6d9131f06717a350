"""The genomic catalog: tasks, labels, split rules, the raw-file sources, the embedded sample's cuts and
what the TFDS builder says about each task (homepage, citation, description).

    >>> LABEL_NAMES["promoter"]
    ('non_promoter', 'promoter')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from seqjax.data.preparation import SPLITS, check_choice, check_int
from seqjax.data.preparation import resolve_config as resolve_over
from seqjax.data.sources import ROUTES, DebianPackage, Source

__all__ = [
    "AUGMENTS",
    "BACTERIA",
    "CHR20",
    "DEFAULTS",
    "FULL_REGION",
    "GENOME_SPLITS",
    "LABEL_NAMES",
    "NESTED_CORE",
    "REFSEQ_EXONS",
    "SAMPLE_REGION",
    "SPLITS",
    "TASKS",
    "WORM_CHRX",
    "WORM_FULL_REGION",
    "WORM_SAMPLE_REGION",
    "blocked_regions",
    "check_augment",
    "resolve_config",
]

TASKS = ("genic_vs_intergenic", "promoter", "species", "human_or_worm")
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
    "nested": None,
    # Training-time augmentation (the trainer applies it to training batches only: `augment`)
    "augment": "none",
    "max_shift": 0,
}
#: `augment` values: the transforms applied to each training example (`seqjax.data.genomic.augment`).
AUGMENTS = ("none", "reverse_complement", "shift", "both")

MAX_N_FRACTION = 0.10  # windows with more N than this are dropped (other IUPAC codes do not count)
GENIC_MIN_FRACTION = 0.5  # a "genic" window is more than this fraction inside gene spans
INTERGENIC_MARGIN = 1000  # bp between an "intergenic" window and the nearest gene span, at least
PROMOTER_NEGATIVE_MARGIN = 2000  # bp between a non-promoter window and the nearest TSS, at least
NESTED_CORE = 1024  # bp at the centre of a nested anchor window that labels genic_vs_intergenic
# A region (chr20, worm chrX, or a sample's cut of either) is cut into equal blocks, a multiple of ten of
# them: the fewest, at least MIN_REGION_BLOCKS, with no block over MAX_REGION_BLOCK_BP. In each run of
# ten, block VALIDATION_BLOCK_IN_TEN is validation and TEST_BLOCK_IN_TEN test (80/10/10). Full chr20 has
# 200 blocks (20 per held-out split), because composition and gene density are regional and two large
# held-out blocks sample them thinly (docs/data.md, "Why 200 blocks"); the samples keep 20.
MIN_REGION_BLOCKS = 20
MAX_REGION_BLOCK_BP = 320_000
VALIDATION_BLOCK_IN_TEN = 4
TEST_BLOCK_IN_TEN = 9
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
# The full chromosomes: hg19 chr20 (vt-examples) and ce2 chrX (BSgenome), 0-based half-open.
FULL_REGION = (CHROM, 0, 63_025_520)
WORM_FULL_REGION = (WORM_CHROM, 0, 17_718_849)


def blocked_regions(route: str) -> dict[tuple[str, str], tuple[int, int]]:
    """The regions cut into split blocks (`windows.region_blocks`) with the data of `route`, as
    {(genome, chrom): (start, end)}: chr20 and worm chrX, whole or the sample's cuts. Bacterial genomes
    are split by genome, not by blocks, and are not listed."""
    human, worm = (
        (SAMPLE_REGION, WORM_SAMPLE_REGION) if route == "sample" else (FULL_REGION, WORM_FULL_REGION)
    )
    return {("hg19", CHROM): human[1:], ("ce2", WORM_CHROM): worm[1:]}


# Each package is pinned by version and the sha256 of its .deb (the Debian mirror's signed Packages index,
# `apt-cache show NAME=VERSION`); the online files of UCSC have no pinned sha256 yet (not reachable from
# the machines this is developed on), so the online route refuses them and "auto" uses the packages.
_DEB_LICENCES = "see the package's /usr/share/doc/<package>/copyright"
CHR20 = Source(
    name="hg19_chr20.fa.gz",
    package=DebianPackage(
        "vt-examples", "0.57721+ds-3", "277c0ef50f4cda40f2dd837f90b6d837155ecd5b8889797683fe63375b017b56"
    ),
    path="usr/share/doc/vt/examples/ref/20.fa.gz",
    url="https://hgdownload.soe.ucsc.edu/goldenPath/hg19/chromosomes/chr20.fa.gz",
    sample="genomic/chr20_region.fa.gz",
    licence="GRCh37 reference sequence: public domain (Genome Reference Consortium / UCSC, free use)",
)
REFSEQ_EXONS = Source(
    name="hg19_RefSeq_exon.txt.gz",
    package=DebianPackage(
        "subread-data", "2.0.3+dfsg-1", "01c081953ec80f76c2d80db5c11b8b7c22e8eba4f9747786fc7b8233a60bba98"
    ),
    path="usr/share/doc/subread/examples/annotation/hg19_RefSeq_exon.txt.gz",
    url=None,  # shipped inside the Subread release tarball (sourceforge.net/projects/subread), no single URL
    sample="genomic/refseq_exons_chr20_region.txt.gz",
    licence="Subread annotation, GPL-3.0+ (Debian subread-data); RefSeq data is public domain (NCBI)",
)
WORM_CHRX = Source(
    name="ce2_chrX.fa.gz",
    package=DebianPackage(
        "r-bioc-bsgenome", "1.66.3-1", "9745731c6db19f4c0afc26d655ea0911ebbae92ca924c3ac8d468985de83de59"
    ),
    path="usr/lib/R/site-library/BSgenome/extdata/ce2chrX.fa.gz",
    url="https://hgdownload.soe.ucsc.edu/goldenPath/ce2/chromosomes/chrX.fa.gz",
    sample="genomic/ce2_chrX_region.fa.gz",
    licence="BSgenome, Artistic-2.0 (Debian r-bioc-bsgenome copyright); the C. elegans ce2 assembly "
    "(UCSC), free for use",
)
BACTERIA = Source(
    name="ragout_bacterial_references",
    package=DebianPackage(
        "ragout-examples", "2.3-4", "cbe6d0dd8b0e36ef2c93c9b9655955f42019dcd9e9b77388ee58ee54d50bd140"
    ),
    path="usr/share/doc/ragout/examples/*/references/*.fasta.gz",
    sample="genomic/bacteria",
    licence="Ragout examples, BSD-3-clause (Debian ragout-examples); NCBI genome sequences, public domain",
)

HOMEPAGES = {
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
CITATIONS = {
    "genic_vs_intergenic": _HUMAN_CITATION,
    "promoter": _HUMAN_CITATION,
    "species": _SPECIES_CITATION,
    "human_or_worm": _HG19_CITATION + "\n" + _WORM_CITATION,
}
DESCRIPTIONS = {
    "genic_vs_intergenic": "Human chr20 (hg19) windows: >50% inside RefSeq gene spans (genic) vs at least "
    f"{INTERGENIC_MARGIN} bp from any gene (intergenic); split by chromosome blocks.",
    "promoter": "Human chr20 (hg19) windows centred on RefSeq TSSs, strand-aware (promoter), vs windows "
    f"at least {PROMOTER_NEGATIVE_MARGIN} bp from any TSS; split by chromosome blocks.",
    "species": "Windows of 16 complete bacterial genomes (E. coli, H. pylori, S. aureus, V. cholerae); "
    "label = species; split by genome.",
    "human_or_worm": "Windows of human chr20 (hg19) vs C. elegans chrX (ce2), balanced per split; both "
    "chromosomes split by blocks.",
}


def resolve_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A genomic data config laid over DEFAULTS and checked; errors name the key and the fix."""
    config = resolve_over(data, DEFAULTS, "genomic")
    check_choice(config, "task", TASKS, "genomic")
    check_int(config, "length", "genomic")
    check_choice(config, "route", ROUTES, "genomic")
    check_int(config, "max_examples_per_split", "genomic", allow_none=True)
    check_nested(config)
    check_augment(config)
    return config


def nested_core(anchor: int) -> int:
    """The centre stretch whose annotation labels a nested genic_vs_intergenic window: `NESTED_CORE` bp,
    or the whole anchor when the anchor is shorter.

    >>> nested_core(16384), nested_core(512)
    (1024, 512)
    """
    return min(NESTED_CORE, anchor)


def check_nested(config: dict[str, Any]) -> None:
    """`config["nested"]` (the anchor length of nested centre crops, or None) must be an int >= length
    with (anchor - length) even, so the crop is centred to the base; a genic_vs_intergenic crop must
    also hold the labelling core (`nested_core`). Stored back as a plain int; errors name the fix.

    >>> config = {"task": "species", "length": 1024, "nested": 16384}
    >>> check_nested(config); config["nested"]
    16384
    """
    anchor, length = config["nested"], config["length"]
    if anchor is None:
        return
    if isinstance(anchor, bool) or not isinstance(anchor, int | np.integer):
        raise ValueError(
            f"genomic data config: nested must be None or an int (the anchor window length in bp, e.g. "
            f"nested=16384), got {anchor!r}."
        )
    anchor = int(anchor)
    if anchor < length:
        raise ValueError(
            f"genomic data config: nested={anchor} is shorter than length={length}; nested is the anchor "
            f"(the longest window, whose centre every shorter length crops): set nested >= {length}, e.g. "
            "the largest length of the sweep."
        )
    if (anchor - length) % 2:
        raise ValueError(
            f"genomic data config: nested={anchor} and length={length} differ by an odd number of bp, so "
            "the crop cannot sit at the anchor's exact centre; use lengths of the same parity (powers of "
            "two, say)."
        )
    core = nested_core(anchor)
    if config["task"] == "genic_vs_intergenic" and length < core:
        raise ValueError(
            f"genomic data config: length={length} is shorter than the {core} bp centre core that labels "
            f"nested genic_vs_intergenic windows (nested={anchor}), so a crop could disagree with its "
            f"label; use length >= {core}."
        )
    config["nested"] = anchor


def check_augment(config: dict[str, Any]) -> None:
    """`config["augment"]` must be one of `AUGMENTS` and `config["max_shift"]` an int >= 0 (bp), stored
    back as a plain int. A shift ("shift", "both") moves the crop inside its anchor window, so it needs
    `max_shift` >= 1 and nested crops with room for it: nested - length >= 2 * max_shift. `max_shift`
    without a shift is an error too (it would be silently ignored). Errors name the fix.

    >>> config = {"task": "species", "length": 1024, "nested": 1280, "augment": "both", "max_shift": 128}
    >>> check_augment(config); config["max_shift"]
    128
    """
    check_choice(config, "augment", AUGMENTS, "genomic")
    check_int(config, "max_shift", "genomic", minimum=0)
    augment, shift, length, anchor = (
        config["augment"],
        config["max_shift"],
        config["length"],
        config["nested"],
    )
    if augment in ("none", "reverse_complement"):
        if shift:
            raise ValueError(
                f"genomic data config: max_shift={shift} with augment={augment!r}; max_shift is the random "
                "shift's range, used only by augment='shift' or 'both': choose one of those or set "
                "max_shift=0."
            )
        return
    if shift < 1:
        raise ValueError(
            f"genomic data config: augment={augment!r} shifts each training crop by up to max_shift bp, but "
            "max_shift=0; set max_shift >= 1 (e.g. 128)."
        )
    if anchor is None or anchor - length < 2 * shift:
        need = length + 2 * shift
        have = "no anchor (nested=None)" if anchor is None else f"nested={anchor} leaves {anchor - length} bp"
        raise ValueError(
            f"genomic data config: augment={augment!r} with max_shift={shift} moves the {length} bp crop up "
            f"to {shift} bp either way inside the window it was cut from, so it needs nested crops with "
            f"{2 * shift} bp of flanking sequence; {have}. Set nested >= {need} (e.g. nested={need}), or "
            f"lower max_shift."
        )
