"""Readers for the raw genomic files: FASTA sequences and RefSeq exon annotations (Subread's SAF).

Both readers work on whole files in bulk (gzip-decompress once, split lines, join, `np.frombuffer`), so
human chr20 (63 Mbp) reads in about a second; nothing walks the sequence character by character.

What the FASTA reader accepts, and why:
- gzip (or xz, bz2) or plain text, detected by the magic bytes, not the file name; bgzip (multi-member
  gzip, as in vt-examples' `20.fa.gz`) too. A truncated or corrupt archive is a ValueError that names
  the file and says to delete it and fetch it again (a half-downloaded cache entry is the usual cause);
  `seqjax.data.preparation.read_compressed` reads every family's raw files this way.
- lowercase soft-masking (UCSC marks repeats in lowercase) is uppercased: the masking is not part of
  the sequence, and a model must not learn the repeat annotation from letter case.
- IUPAC ambiguity codes (R, Y, S, W, K, M, B, D, H, V, N; also U) are kept as they are; runs of N are
  kept too (the window builders drop windows with too many N).
- Windows line endings (`\\r\\n`) and blank lines are accepted.
- Anything else is an error naming the file and 1-based line number: a character outside the IUPAC
  nucleotide codes (spaces, digits, `-` gaps, `*`), a sequence line before the first `>` header, a
  repeated record name, a file with no record.

The annotation reader takes Subread's SAF exon table (`GeneID Chr Start End Strand`, 1-based,
inclusive, one exon a line, optional header line) and returns one `Gene` per (GeneID, chromosome): its
span is the min..max of its exons and its TSS the first base on its strand.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from seqjax.data.preparation import read_compressed

__all__ = [
    "IUPAC_NUCLEOTIDES",
    "FastaRecord",
    "Gene",
    "normalize_chrom",
    "parse_fasta",
    "read_exon_annotation",
    "read_fasta",
    "reverse_complement",
]

IUPAC_NUCLEOTIDES = b"ACGTURYSWKMBDHVN"

_VALID = np.zeros(256, dtype=bool)
_VALID[np.frombuffer(IUPAC_NUCLEOTIDES, dtype=np.uint8)] = True

# Complement of every IUPAC code (U pairs with A; N, S, W are their own complements), in either case
# (a lowercase base keeps its case); every other byte (a gap "-" or ".") is left as it is.
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTURYSWKMBDHVN", b"TGCAAYRSWMKVHDBN", strict=True):
    _COMPLEMENT[_a] = _b
    _COMPLEMENT[_a | 0x20] = _b | 0x20


@dataclasses.dataclass(frozen=True)
class FastaRecord:
    """One FASTA record: `name` is the header's first word, `description` the rest; `sequence` is the
    uppercase ASCII bytes as uint8 (the models' DNA encoder reads ASCII)."""

    name: str
    description: str
    sequence: np.ndarray


@dataclasses.dataclass(frozen=True)
class Gene:
    """A gene's span on one chromosome, 0-based half-open [start, end), from its exons."""

    gene_id: str
    chrom: str
    start: int
    end: int
    strand: str

    @property
    def tss(self) -> int:
        """0-based position of the transcription start site: the first base on the gene's strand."""
        return self.start if self.strand == "+" else self.end - 1


def normalize_chrom(name: str) -> str:
    """`chr20` and `20` name the same chromosome (UCSC vs Ensembl style); we use the bare form."""
    return name[3:] if name.lower().startswith("chr") else name


def reverse_complement(sequence: np.ndarray) -> np.ndarray:
    """The other strand read 5' to 3' (IUPAC codes complemented, either case; other bytes kept), as
    uint8 ASCII.

    >>> reverse_complement(np.frombuffer(b"AACGTNRy", np.uint8)).tobytes()
    b'rYNACGTT'
    """
    return _COMPLEMENT[np.asarray(sequence, dtype=np.uint8)[::-1]]


def read_fasta(path: str | os.PathLike) -> list[FastaRecord]:
    """All records of a FASTA file (plain or gzip), validated; see the module docstring."""
    return parse_fasta(read_compressed(path), str(path))


def parse_fasta(data: bytes, source: str = "<bytes>") -> list[FastaRecord]:
    """Parses FASTA text; `source` names the file in error messages."""
    lines = data.split(b"\n")
    if b"\r" in data:
        lines = [line.rstrip(b"\r") for line in lines]
    headers = [i for i, line in enumerate(lines) if line[:1] == b">"]
    first_header = headers[0] if headers else len(lines)
    for i in range(first_header):
        if lines[i].strip():
            raise ValueError(
                f"{source}, line {i + 1}: sequence line before any '>' header; a FASTA file must start "
                "with a '>name' line (is this file FASTA, and is it complete?)."
            )
    if not headers:
        raise ValueError(f"{source}: no FASTA record (no line starting with '>').")
    records: list[FastaRecord] = []
    seen: set[str] = set()
    for k, h in enumerate(headers):
        header = lines[h][1:].decode("utf-8", errors="replace").strip()
        name, _, description = header.partition(" ")
        if not name:
            raise ValueError(f"{source}, line {h + 1}: empty record name after '>'; give each record a name.")
        if name in seen:
            raise ValueError(f"{source}, line {h + 1}: record name {name!r} repeats; names must be unique.")
        seen.add(name)
        body = lines[h + 1 : headers[k + 1] if k + 1 < len(headers) else len(lines)]
        sequence = np.frombuffer(b"".join(body).upper(), dtype=np.uint8)
        bad = ~_VALID[sequence]
        if bad.any():
            _raise_bad_character(source, body, h + 1, int(np.argmax(bad)), sequence)
        records.append(FastaRecord(name=name, description=description.strip(), sequence=sequence))
    return records


def _raise_bad_character(
    source: str, body: list[bytes], body_offset: int, position: int, sequence: np.ndarray
) -> None:
    """Maps a position in a record's joined sequence back to its file line, and raises."""
    ends = np.cumsum([len(line) for line in body])
    line_in_body = int(np.searchsorted(ends, position, side="right"))
    column = position - (int(ends[line_in_body - 1]) if line_in_body else 0) + 1
    char = chr(int(sequence[position]))
    raise ValueError(
        f"{source}, line {body_offset + line_in_body + 1}, column {column}: character {char!r} is not an "
        f"IUPAC nucleotide code ({IUPAC_NUCLEOTIDES.decode()}, any case); fix or remove that character."
    )


_SAF_HEADER = re.compile(r"^\s*GeneID\s", re.IGNORECASE)


def read_exon_annotation(path: str | os.PathLike, chrom: str | None = None) -> list[Gene]:
    """Genes of a Subread SAF exon table (`GeneID Chr Start End Strand`, 1-based inclusive).

    Every line is validated (so a broken file fails the same way whatever `chrom` is); genes on
    `chrom` only (compared after `normalize_chrom`) are returned, sorted by (start, gene_id). A gene
    is keyed by (GeneID, chromosome): RefSeq puts some genes on several chromosomes. Its exons must
    all share one strand.
    """
    text = read_compressed(path)
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e}); is this the exon annotation?") from e
    want = normalize_chrom(chrom) if chrom is not None else None
    spans: dict[tuple[str, str], list] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and _SAF_HEADER.match(line)):
            continue
        fields = line.split()
        problem = None
        if len(fields) != 5:
            problem = f"expected 5 fields (GeneID Chr Start End Strand), got {len(fields)}"
        elif not (fields[2].isdigit() and fields[3].isdigit()):
            problem = f"Start and End must be positive integers, got {fields[2]!r} and {fields[3]!r}"
        elif not 1 <= int(fields[2]) <= int(fields[3]):
            problem = f"need 1 <= Start <= End (1-based, inclusive), got {fields[2]} and {fields[3]}"
        elif fields[4] not in ("+", "-"):
            problem = f"Strand must be '+' or '-', got {fields[4]!r}"
        if problem:
            raise ValueError(f"{path}, line {number}: {problem}; fix or remove the line.")
        gene_id, name, start, end, strand = fields
        key = (gene_id, normalize_chrom(name))
        start0, end0 = int(start) - 1, int(end)
        span = spans.get(key)
        if span is None:
            spans[key] = [start0, end0, strand]
        elif span[2] != strand:
            raise ValueError(
                f"{path}, line {number}: gene {gene_id} on {name} has exons on both strands; "
                "fix the strand of this exon."
            )
        else:
            span[0], span[1] = min(span[0], start0), max(span[1], end0)
    genes = [
        Gene(gene_id=g, chrom=c, start=s, end=e, strand=st)
        for (g, c), (s, e, st) in spans.items()
        if want is None or c == want
    ]
    return sorted(genes, key=lambda gene: (gene.start, gene.gene_id))
