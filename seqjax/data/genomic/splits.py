"""The genomic entry points: `make_sources` (the splits as `GenomicSplit`s) and `prepare` (a summary).

>>> splits = make_sources({"task": "species", "length": 1024}, "datasets")  # doctest: +SKIP
>>> splits["train"][0]["inputs"].shape  # doctest: +SKIP
(1024,)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqjax.data.genomic.builder import builder_name, make_builder
from seqjax.data.genomic.catalog import LABEL_NAMES, SPLITS, blocked_regions, resolve_config
from seqjax.data.metrics import auroc
from seqjax.data.preparation import prepared_builder, route_dir

#: The base letters as the windows store them (ASCII), for `GenomicSplit.composition`.
_A, _C, _G, _T = (ord(b) for b in "ACGT")

__all__ = ["GenomicSplit", "make_sources", "prepare"]


#: Labels and coordinates already read in this process, by (prepared data set folder, dataset_info.json
#: modification time, split, cap). Reading them decodes every record, sequence included (about 1.3 s for
#: a 5,000-example split of 4 kb windows); a driver builds the sources afresh for every run and asks for
#: labels (class balance, stratified subsets, the augmentation's check) and clusters (coordinates, split
#: blocks) several times a run, so one read serves them all: without this a few-shot smoke run spent a
#: third of its time re-reading records. A prepared data set is read-only; one prepared again in the same
#: folder rewrites its `dataset_info.json`, whose modification time is part of the key.
_METADATA: dict[tuple[Any, ...], dict[str, np.ndarray]] = {}

#: The per-example fields kept in `_METADATA` (besides "label"), where the records have them.
_COORDINATES = ("genome", "chrom", "strand", "start", "end")


class GenomicSplit:
    """One split as a random-access source (a `SplitSource`): `split[i]` -> {"inputs": uint8[length],
    "label": int32[]}.

    With a cap, the split is a seeded random subset of the prepared examples kept in their coordinate
    order, so it is the same on every run and still spans the whole split.

    `labels_key`: where this split's labels and coordinates are kept once read (`_METADATA`; None: on
    this object only).
    `regions`: the chromosome regions cut into split blocks, {(genome, chrom): (start, end)}
    (`catalog.blocked_regions`), for `split_blocks`.
    """

    def __init__(
        self,
        source: Any,
        name: str,
        label_names: tuple[str, ...],
        cap: int | None,
        labels_key: tuple[Any, ...] | None = None,
        regions: Mapping[tuple[str, str], tuple[int, int]] | None = None,
    ) -> None:
        self._source = source
        self._regions = dict(regions or {})
        self.name = name
        self.label_names = label_names
        total = len(source)
        if cap is not None and cap < total:
            self._indices = np.sort(np.random.default_rng(0).choice(total, size=cap, replace=False))
        else:
            self._indices = np.arange(total)
        self._labels_key = labels_key
        self._metadata: dict[str, np.ndarray] | None = (
            None if labels_key is None else _METADATA.get(labels_key)
        )

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

    def _read_metadata(self) -> dict[str, np.ndarray]:
        """Every example's label and coordinates (the fields the records have), read in one pass over the
        split, once per prepared data set and process (`_METADATA`); the arrays are read-only."""
        if self._metadata is None:
            rows = [self._record(i) for i in range(len(self))]
            present = [k for k in _COORDINATES if rows and k in rows[0]]
            metadata = {"label": np.array([int(r["label"]) for r in rows], np.int32)}
            for k in present:
                if k in ("start", "end"):
                    metadata[k] = np.array([int(r[k]) for r in rows], dtype=np.int64)
                else:
                    metadata[k] = np.array([_text(r[k]) for r in rows], dtype=object)
            for values in metadata.values():
                values.flags.writeable = False  # shared by every GenomicSplit of this data set
            self._metadata = metadata
            if self._labels_key is not None:
                _METADATA[self._labels_key] = metadata
        return self._metadata

    def coordinates(self) -> dict[str, np.ndarray]:
        """Where every example comes from: "genome", "chrom", "strand" (str), "start", "end" (int64)."""
        metadata = self._read_metadata()
        missing = [k for k in _COORDINATES if k not in metadata]
        if missing:
            raise KeyError(
                f"{self.name}: the records have no {missing} fields; coordinates need all of {_COORDINATES}."
            )
        return {k: metadata[k].copy() for k in _COORDINATES}

    def split_blocks(self) -> np.ndarray:
        """The index of the split block (`windows.region_blocks` of its region) that holds each example,
        int64, or -1 where its chromosome is not cut into blocks (bacterial genomes, split by genome).
        A window never crosses a block, so its start decides.

        >>> rows = [{"genome": b"hg19", "chrom": b"20", "start": s, "inputs": b"", "label": 0}
        ...         for s in (0, 250_000, 4_000_000)] + [{"genome": b"Ecoli", "chrom": b"1", "start": 9,
        ...                                             "inputs": b"", "label": 0}]
        >>> split = GenomicSplit(rows, "test", ("a", "b"), None, regions={("hg19", "20"): (0, 4_500_000)})
        >>> split.split_blocks().tolist()  # 20 blocks of 225 kbp
        [0, 1, 17, -1]
        """
        from seqjax.data.genomic.windows import region_blocks

        out = np.full(len(self), -1, np.int64)
        if len(self) == 0 or not self._regions:
            return out
        metadata = self._read_metadata()
        for (genome, chrom), region in self._regions.items():
            starts = np.array([b[0] for b in region_blocks(*region)])
            inside = (metadata["genome"] == genome) & (metadata["chrom"] == chrom)
            out[inside] = np.searchsorted(starts, metadata["start"][inside], side="right") - 1
        return out

    def labels(self) -> np.ndarray:
        """All labels of the split (int32, read-only), read once per prepared data set and process."""
        return self._read_metadata()["label"]

    def composition(self) -> dict[str, Any]:
        """GC content by class: per class, the mean fraction of G and C among the A, C, G, T of each window
        (other bases, such as N, not counted), and for two classes the AUROC of a window's GC fraction
        as a score for label 1. A split whose AUROC sits on the other side of 0.5 from the train split's
        rewards what a model learns from composition alone with a score below chance there.

        >>> windows = [b"GGCA", b"GCCC", b"ATTA", b"ATNN"]
        >>> source = [{"inputs": np.frombuffer(w, np.uint8), "label": i // 2} for i, w in enumerate(windows)]
        >>> split = GenomicSplit(source, "train", ("intergenic", "genic"), cap=None)
        >>> c = split.composition()
        >>> c["gc_by_class"], c["gc_auroc"]
        ({'intergenic': 0.875, 'genic': 0.0}, 0.0)
        """
        gc = np.empty(len(self), np.float64)
        for i in range(len(self)):
            counts = np.bincount(np.asarray(self._record(i)["inputs"], np.uint8), minlength=256)
            acgt = counts[_A] + counts[_C] + counts[_G] + counts[_T]
            gc[i] = (counts[_C] + counts[_G]) / acgt if acgt else np.nan
        labels = self.labels()
        by_class = {
            name: round(float(np.nanmean(gc[labels == k])), 4) if np.any(labels == k) else None
            for k, name in enumerate(self.label_names)
        }
        out: dict[str, Any] = {"gc_by_class": by_class}
        if len(self.label_names) == 2:
            known = ~np.isnan(gc)
            scores = np.stack([np.zeros(int(known.sum())), gc[known]], axis=1)
            out["gc_auroc"] = round(auroc(labels[known], scores), 4)
        return out

    def describe(self) -> dict[str, Any]:
        """Example count and class balance, for logs."""
        counts = np.bincount(self.labels(), minlength=len(self.label_names))
        return {
            "examples": len(self),
            "class_counts": dict(zip(self.label_names, counts.tolist(), strict=True)),
        }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def make_sources(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, GenomicSplit]:
    """Prepares the task if needed (idempotent; fast once prepared; one process at a time) and returns
    its splits {"train", "validation", "test"} as random-access sources."""
    config = resolve_config(data)
    builder = prepared_builder(
        lambda: make_builder(config, data_dir),
        route_dir(data_dir, config["route"]),
        builder_name(config),
        quiet=config["route"] == "sample",
    )
    sources = builder.as_data_source()
    names = LABEL_NAMES[config["task"]]
    cap = config["max_examples_per_split"]
    folder = os.fspath(builder.data_dir)
    info = os.path.join(folder, "dataset_info.json")
    version = os.stat(info).st_mtime_ns if os.path.exists(info) else None
    return {
        split: GenomicSplit(
            sources[split], split, names, cap, (folder, version, split, cap), blocked_regions(config["route"])
        )
        for split in SPLITS
    }


def prepare(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Prepares the task and returns a summary: the config, where it lives, per split the example count,
    class balance and GC content by class (`GenomicSplit.composition`; after `max_examples_per_split`)."""
    config = resolve_config(data)
    splits = make_sources(config, data_dir)
    return {
        **config,
        "data_dir": os.fspath(make_builder(config, data_dir).data_dir),
        "splits": {name: {**split.describe(), **split.composition()} for name, split in splits.items()},
    }
