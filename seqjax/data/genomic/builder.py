"""The genomic TFDS builder `GenomicWindows` (one config per task, window length and, for nested centre
crops, anchor length) and `make_builder`.

>>> make_config("promoter", 1024).name
'promoter_1024'
>>> make_config("promoter", 1024, nested=16384).name
'promoter_1024_nested16384'
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.genomic.catalog import (
    CHR20,
    CHROM,
    CITATIONS,
    DESCRIPTIONS,
    DOCUMENTED_LENGTHS,
    HOMEPAGES,
    LABEL_NAMES,
    SPLITS,
    TASKS,
    WORM_CHROM,
    WORM_CHRX,
    blocked_regions,
    nested_core,
    resolve_config,
)
from seqjax.data.genomic.reading import load_bacteria, load_chr20, load_chromosome
from seqjax.data.genomic.windows import (
    Sequence,
    Window,
    centre_crop,
    genic_windows,
    human_or_worm_windows,
    promoter_windows,
    species_windows,
)
from seqjax.data.preparation import route_dir
from seqjax.data.sources import ROUTES

__all__ = ["GenomicConfig", "GenomicWindows", "builder_name", "config_name", "make_builder", "make_config"]


@dataclasses.dataclass(eq=False)
class GenomicConfig(tfds.core.BuilderConfig):
    """One task at one window length; name it `<task>_<length>`, or `<task>_<length>_nested<anchor>` for
    the centre crops of anchor windows (see `make_config`)."""

    task: str = "genic_vs_intergenic"
    length: int = 16384
    nested: int | None = None


def config_name(task: str, length: int, nested: int | None = None) -> str:
    """The builder config's (and prepared folder's) name: the anchor is part of it, so nested and
    non-nested windows of one length never share a prepared data set.

    >>> config_name("species", 1024), config_name("species", 1024, 16384)
    ('species_1024', 'species_1024_nested16384')
    """
    return f"{task}_{length}" if nested is None else f"{task}_{length}_nested{nested}"


def make_config(task: str, length: int, nested: int | None = None) -> GenomicConfig:
    """The config of `task` with windows of `length` bp (any positive length, not only the listed ones);
    with `nested`, the centre `length` bp of the windows chosen at `nested` bp (package docstring)."""
    config = resolve_config({"task": task, "length": length, "nested": nested})
    description = DESCRIPTIONS[task]
    if nested is not None:
        description += (
            f" Nested: the centre {length} bp of windows chosen and labelled at {config['nested']} bp."
        )
    return GenomicConfig(
        name=config_name(task, length, config["nested"]),
        description=description,
        task=task,
        length=length,
        nested=config["nested"],
    )


class GenomicWindows(tfds.core.GeneratorBasedBuilder):
    """DNA windows for the genomic tasks (see the package docstring for tasks, splits and features).

    Features: "inputs" uint8[length] (uppercase ASCII, IUPAC codes kept), "label" ClassLabel,
    "genome" Text, "chrom" Text, "start"/"end" int64 (0-based half-open), "strand" Text ("+"/"-").

    `route` picks the raw files: "sample" (embedded) or "auto"/"offline"/"online" (full data); keep
    each kind under its own data_dir (`make_builder` does: `<data_dir>/sample`, `<data_dir>/full`).
    """

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release.",
        "2.0.0": "chr20 and worm chrX cut into blocks of at most 320 kbp (200 and 60; the samples keep 20).",
    }
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
            homepage=HOMEPAGES[config.task],
            citation=CITATIONS[config.task],
            disable_shuffling=True,  # examples keep coordinate order; the trainer shuffles
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # raw files come through seqjax.data.sources
        task, length = self.builder_config.task, self.builder_config.length
        # Nested: every window is chosen and labelled at the anchor length, then cropped to its centre.
        anchor = self.builder_config.nested or length
        if task == "species":
            genomes = load_bacteria(self.route)
            windows = species_windows(genomes, anchor)
            sequences = {(r.genome, r.chrom): r for _, _, records in genomes for r in records}
        elif task == "human_or_worm":
            human = load_chromosome(CHR20, self.route, "hg19", CHROM)
            worm = load_chromosome(WORM_CHRX, self.route, "ce2", WORM_CHROM)
            _check_blocked_region(human, self.route)
            _check_blocked_region(worm, self.route)
            windows = human_or_worm_windows(human, worm, anchor, self.route)
            sequences = {(r.genome, r.chrom): r for r in (human, worm)}
        else:
            sequence, genes = load_chr20(self.route)
            _check_blocked_region(sequence, self.route)
            if task == "promoter":
                windows = promoter_windows(sequence, genes, anchor)
            else:
                core = None if self.builder_config.nested is None else nested_core(anchor)
                windows = genic_windows(sequence, genes, anchor, core)
            sequences = {(sequence.genome, sequence.chrom): sequence}
        if anchor != length:
            windows = centre_crop(windows, length)
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


def _check_blocked_region(sequence: Sequence, route: str) -> None:
    # The split blocks are cut from the sequence's extent, and the clusters of the bootstrap
    # (`GenomicSplit.split_blocks`) from `blocked_regions`: the two must be one region.
    expected = tuple(blocked_regions(route)[(sequence.genome, sequence.chrom)])
    if (sequence.offset, sequence.end) != expected:
        raise ValueError(
            f"{sequence.genome} chr{sequence.chrom}: the {route} data cover [{sequence.offset:,}, "
            f"{sequence.end:,}) but seqjax.data.genomic.catalog.blocked_regions says [{expected[0]:,}, "
            f"{expected[1]:,}); a changed source file changes the split blocks: update FULL_REGION / "
            "WORM_FULL_REGION (and the builder version) to the new extent."
        )


def _builder_config(task: str, length: int, nested: int | None) -> str | GenomicConfig:
    # TFDS refuses a custom config named like a listed one: the documented lengths go by name.
    name = config_name(task, length, nested)
    return name if name in GenomicWindows.builder_configs else make_config(task, length, nested)


def make_builder(data: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> GenomicWindows:
    """The builder for a data config (not yet prepared), under `<data_dir>/sample` or `<data_dir>/full`."""
    config = resolve_config(data)
    return GenomicWindows(
        route=config["route"],
        config=_builder_config(config["task"], config["length"], config["nested"]),
        data_dir=os.fspath(route_dir(data_dir, config["route"])),
        file_format="array_record",
    )


def builder_name(data: Mapping[str, Any]) -> str:
    """The data set's name (builder and config), e.g. "genomic_windows-species_1024": its lock's name."""
    config = resolve_config(data)
    return f"{GenomicWindows.name}-{config_name(config['task'], config['length'], config['nested'])}"
