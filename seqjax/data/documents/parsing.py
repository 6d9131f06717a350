r"""Reading a corpus into `Document`s: strict UTF-8, cleaned line ends, Gutenberg licence text removed,
Wikipedia articles from the XML dump; and the split by document (`assign_splits`). The rules are in
the package docstring.

    >>> clean_text("\ufeffa\r\nb", "python_docs")
    'a\nb'
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from typing import Any

from seqjax.data.documents.catalog import CORPORA, ID_BASE, SOURCES
from seqjax.data.preparation import open_compressed, read_compressed

__all__ = ["Document", "assign_splits", "clean_text", "decode_utf8", "read_documents", "read_wikipedia_xml"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: `id` is "<corpus>/<relative path>" (or "wikipedia/<page id>/<title>")."""

    id: str
    text: str


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
    licence header/footer; see the package docstring for the exact markers."""
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
    skipped = {"namespace": 0, "redirect": 0, "no_text": 0, "empty": 0}
    try:
        with open_compressed(path) as f:  # a truncated or corrupt archive is a ValueError naming it
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
                base = ID_BASE[corpus]
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
            text = clean_text(decode_utf8(read_compressed(file), str(file)), corpus)
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
