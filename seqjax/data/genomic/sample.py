"""The embedded genomic sample (seqjax/data/samples/genomic): `make_sample` cuts it from the real files.
Maintainers only; the tests check it reproduces the embedded bytes.

    >>> make_sample("genomic_sample")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
import pathlib

from seqjax.data import fasta
from seqjax.data.genomic.catalog import (
    BACTERIA,
    CHR20,
    GENOME_SPLITS,
    REFSEQ_EXONS,
    SAMPLE_GENOME_PREFIX,
    SAMPLE_GENOMES,
    SAMPLE_REGION,
    WORM_CHROM,
    WORM_CHRX,
    WORM_SAMPLE_REGION,
)
from seqjax.data.genomic.reading import genome_files, route_for
from seqjax.data.preparation import read_compressed
from seqjax.data.sources import SAMPLES_DIR, fetch

__all__ = ["make_sample", "region_cut"]


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


def region_cut(path: pathlib.Path, region: tuple[str, int, int], description: str) -> bytes:
    """The lines of [start, end) of the one-record FASTA `path`, verbatim (the region must start and end on
    line boundaries), under the header `>CHROM:START-END description` (1-based inclusive)."""
    chrom, start, end = region
    lines = read_compressed(path).split(b"\n")
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
        "chr20_region.fa.gz": region_cut(
            fetch(CHR20, route_for(CHR20, route)),
            SAMPLE_REGION,
            f"hg19 chr{chrom} cut from Debian vt-examples ref/20.fa.gz",
        )
    }

    exon_path = fetch(REFSEQ_EXONS, route_for(REFSEQ_EXONS, route))
    genes = fasta.read_exon_annotation(exon_path, chrom=chrom)
    keep = {g.gene_id for g in genes if g.start < region_end and g.end > region_start}
    exon_lines = read_compressed(exon_path).decode().splitlines()
    kept = [exon_lines[0]] + [
        line
        for line in exon_lines[1:]
        if (f := line.split()) and fasta.normalize_chrom(f[1]) == chrom and f[0] in keep
    ]
    files["refseq_exons_chr20_region.txt.gz"] = ("\n".join(kept) + "\n").encode()

    bacteria_root = fetch(BACTERIA, route_for(BACTERIA, route))
    for species, genome, path in genome_files(bacteria_root):
        if genome not in SAMPLE_GENOMES[species]:
            continue
        genome_lines = read_compressed(path).split(b"\n")
        body = _prefix_lines(genome_lines[1:], SAMPLE_GENOME_PREFIX[GENOME_SPLITS[species][genome]])
        files[f"bacteria/{species}/{genome}.fasta.gz"] = b"\n".join([genome_lines[0], *body]) + b"\n"

    files["ce2_chrX_region.fa.gz"] = region_cut(
        fetch(WORM_CHRX, route_for(WORM_CHRX, route)),
        WORM_SAMPLE_REGION,
        f"ce2 chr{WORM_CHROM} cut from Debian r-bioc-bsgenome BSgenome/extdata/ce2chrX.fa.gz",
    )

    sizes = {}
    for relative, content in files.items():
        _write_gzip(out / relative, content)
        sizes[relative] = (out / relative).stat().st_size
    return sizes
