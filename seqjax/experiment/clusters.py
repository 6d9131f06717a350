"""The unit of independence of every test example of the real tasks, for the cluster bootstrap.

Examples that share a cluster are correlated and are resampled together:

- genomic windows of a chromosome cut into split blocks (chr20, worm chrX; `GenomicSplit.split_blocks`):
  the split block, `genome:chrom:split-block-<i>` (315 kbp on the full chr20). Composition and gene
  density are regional: 100 kb pieces of one held-out block are not independent draws (a 3-mer model's
  test balanced accuracy at 4,096 bp: 95% interval 0.117 wide over the 19 blocks that hold test
  windows, 0.085 over their 76 pieces of 100 kb; docs/data.md).
- other genomic windows (bacterial genomes, split by genome): the chromosome block,
  `genome:chrom:start // block_bp` (`GENOME_BLOCK_BP` = 100 kb by default). Adjacent windows of one
  chromosome share composition and annotation, so they are not independent draws.
- documents: the document that holds the example's first target token (a packed sequence can straddle
  two documents; it is counted with the first).
- time series: the time block of the window's first target step, `block_rows` rows of the series long
  (default lookback + horizon: windows whose targets start in one block share most of their inputs).

Sources without cluster information (synthetic data) give every example its own cluster.

    >>> import numpy as np
    >>> class Windows:  # a stand-in with the genomic split's coordinates()
    ...     def __len__(self): return 3
    ...     def coordinates(self):
    ...         return {"genome": np.array(["g", "g", "g"]), "chrom": np.array(["1", "1", "1"]),
    ...                 "start": np.array([0, 50_000, 150_000])}
    >>> example_clusters(Windows()).tolist()
    ['g:1:0', 'g:1:0', 'g:1:1']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqjax.common.checks import check_positive_int

__all__ = ["GENOME_BLOCK_BP", "example_bytes", "example_clusters"]

#: Genomic windows whose starts fall in one block of this many bases form one cluster.
GENOME_BLOCK_BP = 100_000


def _genomic(
    coordinates: dict[str, np.ndarray], block_bp: int, split_blocks: np.ndarray | None
) -> np.ndarray:
    blocks = np.asarray(coordinates["start"], np.int64) // block_bp
    if split_blocks is None:
        split_blocks = np.full(len(blocks), -1)
    return np.array(
        [
            f"{g}:{c}:split-block-{s}" if s >= 0 else f"{g}:{c}:{b}"
            for g, c, b, s in zip(
                coordinates["genome"], coordinates["chrom"], blocks, split_blocks, strict=True
            )
        ]
    )


def _documents(source: Any) -> np.ndarray:
    # Example i starts at stream position positions[i] * length (packed) or at its chunk's document
    # (padded); the document is the last one starting at or before that position.
    positions = np.asarray(source._positions, np.int64)
    if source.packing == "packed":
        starts = positions * source.length
        document = np.searchsorted(source._starts, starts, side="right") - 1
    else:
        chunk_document_starts = source._chunks[positions, 0]
        document = np.searchsorted(source._starts, chunk_document_starts, side="right") - 1
    ids = np.asarray(source.document_ids, dtype=str)
    return ids[np.clip(document, 0, len(ids) - 1)]


def _timeseries(source: Any, block_rows: int | None) -> np.ndarray:
    block = block_rows if block_rows is not None else source.lookback + source.horizon
    check_positive_int("example_clusters", "block_rows", block)
    starts = np.asarray(source.target_starts, np.int64)
    return (starts - int(source.split_rows[0])) // block


def example_clusters(
    source: Any, *, block_bp: int = GENOME_BLOCK_BP, block_rows: int | None = None
) -> np.ndarray:
    """The cluster id of every example of a split source, in the source's order (module docstring)."""
    check_positive_int("example_clusters", "block_bp", block_bp)
    if hasattr(source, "coordinates"):
        split_blocks = source.split_blocks() if hasattr(source, "split_blocks") else None
        return _genomic(source.coordinates(), block_bp, split_blocks)
    if hasattr(source, "document_ids") and hasattr(source, "_positions"):
        return _documents(source)
    if hasattr(source, "target_starts") and hasattr(source, "split_rows"):
        return _timeseries(source, block_rows)
    return np.arange(len(source))


def example_bytes(source: Any, tokens: np.ndarray) -> np.ndarray:
    """Bytes each LM example's counted targets stand for, approximately: tokens x the split's bytes per
    token. Exact for a byte-level split; for BPE use the evaluation's per-example "bytes"
    (`seqjax.train.evaluation.collect_split` with the split's token byte lengths), which the protocol
    prefers where present."""
    return np.asarray(tokens, np.float64) * float(getattr(source, "bytes_per_token", 1.0))
