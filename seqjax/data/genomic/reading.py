"""Genomic raw files by route: chromosomes (whole, or the embedded sample's cut), the RefSeq genes of
chr20 and the bacterial genomes, as `Sequence`s with their absolute coordinates.

    >>> sequence = load_chromosome(WORM_CHRX, "sample", "ce2", "X")  # doctest: +SKIP
    >>> sequence.offset, sequence.end  # doctest: +SKIP
    (8000000, 8900000)
"""

from __future__ import annotations

import pathlib
import re

from seqjax.data import fasta
from seqjax.data.genomic.catalog import BACTERIA, CHR20, CHROM, GENOME_SPLITS, REFSEQ_EXONS
from seqjax.data.genomic.windows import Sequence
from seqjax.data.sources import Source, fetch

__all__ = ["genome_files", "load_bacteria", "load_chr20", "load_chromosome", "route_for"]

_REGION_NAME = re.compile(r"^(?:chr)?([^:\s]+):(\d+)-(\d+)$", re.IGNORECASE)


def route_for(source: Source, route: str) -> str:
    # Sources with no single canonical file online (the annotation, the bacterial genomes), or whose online
    # file has no pinned sha256 yet (UCSC's), come from their Debian package when "online" is asked: the
    # package is the one place they exist as checked files.
    return "offline" if route == "online" and (source.url is None or source.url_sha256 is None) else route


def load_chromosome(source: Source, route: str, genome: str, chrom: str) -> Sequence:
    """Chromosome `chrom` of `source`'s FASTA, or the sample's cut of it (recognized by a
    `>CHROM:START-END` header, 1-based inclusive)."""
    path = fetch(source, route_for(source, route))
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


def load_chr20(route: str) -> tuple[Sequence, list[fasta.Gene]]:
    """chr20 (or the sample's cut of it) and the RefSeq genes of chr20."""
    sequence = load_chromosome(CHR20, route, "hg19", CHROM)
    genes = fasta.read_exon_annotation(fetch(REFSEQ_EXONS, route_for(REFSEQ_EXONS, route)), chrom=CHROM)
    return sequence, genes


def genome_files(root: pathlib.Path) -> list[tuple[str, str, pathlib.Path]]:
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


def load_bacteria(route: str) -> list[tuple[str, str, list[Sequence]]]:
    root = fetch(BACTERIA, route_for(BACTERIA, route))
    genomes = []
    for species, genome, path in genome_files(root):
        records = [Sequence(f"{species}/{genome}", r.name, 0, r.sequence) for r in fasta.read_fasta(path)]
        genomes.append((species, genome, records))
    return genomes
