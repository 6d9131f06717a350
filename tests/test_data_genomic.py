"""Genomic data: the TFDS builder on the embedded real sample, split leakage, labels against the
annotation, determinism, and the readers' handling of bad input. Only `test_offline_route_*` may touch
the network (it skips when no package can be downloaded)."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest

from seqjax.data import fasta, genomic
from seqjax.data.genomic import reading as genomic_reading
from seqjax.data.genomic import sample as genomic_sample
from seqjax.data.genomic import windows as genomic_windows
from seqjax.data.sources import SAMPLES_DIR, DebianPackage, SourceError, cache_dir, fetch

LENGTH = 1024
IUPAC = np.frombuffer(fasta.IUPAC_NUCLEOTIDES, dtype=np.uint8)


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[str, dict[str, genomic.GenomicSplit]]]:
    data_dir = str(tmp_path_factory.mktemp("genomic"))
    splits = {
        task: genomic.make_sources({"task": task, "length": LENGTH}, data_dir) for task in genomic.TASKS
    }
    return data_dir, splits


@pytest.fixture(scope="module")
def sample_chr20() -> tuple[genomic.Sequence, list[fasta.Gene]]:
    return genomic_reading.load_chr20("sample")


def _intervals(split: genomic.GenomicSplit) -> np.ndarray:
    c = split.coordinates()
    return np.stack([c["start"], c["end"]], axis=1)


@pytest.mark.parametrize("task", genomic.TASKS)
def test_examples_have_fixed_shapes_and_valid_bases(prepared, task: str) -> None:
    _, splits = prepared
    for name, split in splits[task].items():
        assert len(split) > 0, (task, name)
        for i in [0, len(split) // 2, len(split) - 1]:
            example = split[np.int64(i)]
            assert set(example) == {"inputs", "label"}
            assert example["inputs"].dtype == np.uint8 and example["inputs"].shape == (LENGTH,)
            assert example["label"].dtype == np.int32 and example["label"].shape == ()
            assert 0 <= int(example["label"]) < len(genomic.LABEL_NAMES[task])
            assert np.isin(example["inputs"], IUPAC).all()  # uppercase IUPAC only
            n_fraction = np.mean(example["inputs"] == ord("N"))
            assert n_fraction <= genomic.MAX_N_FRACTION
        with pytest.raises(IndexError):
            split[len(split)]


def test_builder_declares_documented_features(prepared) -> None:
    data_dir, _ = prepared
    builder = genomic.make_builder({"task": "promoter", "length": LENGTH}, data_dir)
    features = builder.info.features
    assert set(features.keys()) == {"inputs", "label", "genome", "chrom", "start", "end", "strand"}
    assert features["inputs"].shape == (LENGTH,) and features["inputs"].np_dtype == np.uint8
    assert features["label"].names == ["non_promoter", "promoter"]
    assert builder.info.homepage.startswith("https://") and "@article" in builder.info.citation
    assert pathlib.Path(builder.data_dir).is_relative_to(pathlib.Path(data_dir) / "sample")
    assert {c.name for c in genomic.GenomicWindows.BUILDER_CONFIGS} >= {
        "species_16384",
        "promoter_8192",
        *(f"human_or_worm_{n}" for n in (8192, 16384, 32768)),
    }
    worm = genomic.make_builder({"task": "human_or_worm", "length": LENGTH}, data_dir).info
    assert worm.features["label"].names == ["human", "worm"] and "elegans" in worm.citation


@pytest.mark.parametrize("task", ["genic_vs_intergenic", "promoter"])
def test_chr20_splits_never_overlap(prepared, task: str) -> None:
    _, splits = prepared
    blocks = genomic.region_blocks(genomic.SAMPLE_REGION[1], genomic.SAMPLE_REGION[2])
    by_split = {name: _intervals(split) for name, split in splits[task].items()}
    for name, windows in by_split.items():
        assert np.all(windows[:, 1] - windows[:, 0] == LENGTH)
        # every window lies inside one block of its own split
        inside = [any(s >= b0 and e <= b1 and sp == name for b0, b1, sp in blocks) for s, e in windows]
        assert all(inside), name
    for a in genomic.SPLITS:
        for b in genomic.SPLITS:
            if a < b:
                wa, wb = by_split[a], by_split[b]
                overlap = (wa[:, None, 0] < wb[None, :, 1]) & (wb[None, :, 0] < wa[:, None, 1])
                assert not overlap.any(), (task, a, b)


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [
        (0, 63_025_520, 200),  # full chr20: 20 validation and 20 test blocks spread along it
        (0, 17_718_849, 60),  # full worm chrX
        (*genomic.SAMPLE_REGION[1:], 20),  # the samples keep the layout of builder version 1.0.0
        (*genomic.WORM_SAMPLE_REGION[1:], 20),
    ],
)
def test_region_blocks_tile_the_region_in_runs_of_ten(start: int, end: int, count: int) -> None:
    blocks = genomic.region_blocks(start, end)
    assert len(blocks) == count == genomic.num_region_blocks(end - start)
    edges = np.array([b[0] for b in blocks] + [blocks[-1][1]])
    assert edges[0] == start and edges[-1] == end and np.all(edges[1:-1] == [b[1] for b in blocks[:-1]])
    sizes = np.diff(edges)
    assert sizes.max() - sizes.min() <= 1
    assert sizes.max() <= max(genomic.MAX_REGION_BLOCK_BP, -(-(end - start) // 20))
    splits = [b[2] for b in blocks]
    assert [i for i, s in enumerate(splits) if s == "validation"] == list(range(4, count, 10))
    assert [i for i, s in enumerate(splits) if s == "test"] == list(range(9, count, 10))
    if count == 20:
        assert splits.index("validation") == 4 and splits[14] == "validation" and splits[19] == "test"


def test_species_split_by_genome(prepared) -> None:
    _, splits = prepared
    genomes = {name: set(split.coordinates()["genome"]) for name, split in splits["species"].items()}
    assert not genomes["train"] & (genomes["validation"] | genomes["test"])
    for name, split in splits["species"].items():
        counts = split.describe()["class_counts"]
        assert set(counts) == set(genomic.SPECIES) and min(counts.values()) > 0, name
    # The one genome shared by validation and test (E. coli MG1655) is cut at its midpoint.
    shared = genomes["validation"] & genomes["test"]
    assert shared == {"E.Coli/MG1655-K12"}
    val, test = (splits["species"][s].coordinates() for s in ("validation", "test"))
    assert (
        val["end"][val["genome"] == "E.Coli/MG1655-K12"].max()
        <= test["start"][test["genome"] == "E.Coli/MG1655-K12"].min()
    )


@pytest.fixture(scope="module")
def sample_worm() -> genomic.Sequence:
    return genomic_reading.load_chromosome(genomic.WORM_CHRX, "sample", "ce2", "X")


def test_human_or_worm_is_balanced_and_labelled_by_genome(prepared, sample_chr20, sample_worm) -> None:
    _, splits = prepared
    sequences = {"hg19": sample_chr20[0], "ce2": sample_worm}
    assert (sample_worm.offset, sample_worm.end) == genomic.WORM_SAMPLE_REGION[1:]
    # The sample's worm cut is 900 kbp in 20 blocks of 45 kbp, each holding 43 windows of 1024 bp (no N);
    # human chr20's 4.5 Mbp cut has more, so the human side is subsampled to match.
    per_class = {"train": 16 * 43, "validation": 2 * 43, "test": 2 * 43}
    for name, split in splits["human_or_worm"].items():
        assert split.describe()["class_counts"] == {"human": per_class[name], "worm": per_class[name]}, name
        c, labels = split.coordinates(), split.labels()
        assert set(zip(c["genome"][labels == 0], c["chrom"][labels == 0], strict=True)) == {("hg19", "20")}
        assert set(zip(c["genome"][labels == 1], c["chrom"][labels == 1], strict=True)) == {("ce2", "X")}
        assert set(c["strand"]) == {"+"}
        for i in range(0, len(split), 37):  # the bytes are the chromosomes' bases at those coordinates
            sequence = sequences[c["genome"][i]]
            expected = sequence.bases[c["start"][i] - sequence.offset : c["end"][i] - sequence.offset]
            np.testing.assert_array_equal(split[i]["inputs"], expected)
    # The human subsample spans every block of its split, not one end of it.
    human_train = splits["human_or_worm"]["train"].coordinates()
    blocks = genomic.region_blocks(*genomic.SAMPLE_REGION[1:])
    used = {
        b
        for s in human_train["start"][human_train["genome"] == "hg19"]
        for b in range(20)
        if blocks[b][0] <= s < blocks[b][1]
    }
    assert used == {b for b in range(20) if blocks[b][2] == "train"}


def test_human_or_worm_splits_never_overlap(prepared) -> None:
    _, splits = prepared
    regions = {"hg19": genomic.SAMPLE_REGION, "ce2": genomic.WORM_SAMPLE_REGION}
    coordinates = {name: split.coordinates() for name, split in splits["human_or_worm"].items()}
    for genome, (_, start, end) in regions.items():
        blocks = genomic.region_blocks(start, end)
        by_split = {}
        for name, c in coordinates.items():
            mine = c["genome"] == genome
            windows = np.stack([c["start"][mine], c["end"][mine]], axis=1)
            assert len(windows) and np.all(windows[:, 1] - windows[:, 0] == LENGTH)
            inside = [any(s >= b0 and e <= b1 and sp == name for b0, b1, sp in blocks) for s, e in windows]
            assert all(inside), (genome, name)
            by_split[name] = windows
        every = np.concatenate(list(by_split.values()))
        every = every[np.argsort(every[:, 0])]
        assert np.all(every[1:, 0] >= every[:-1, 1]), genome  # no two windows of any splits overlap


def test_human_or_worm_subsamples_the_larger_class_deterministically() -> None:
    rng = np.random.default_rng(1)
    human_bases = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=200 * 64)
    human_bases[:640] = ord("N")  # the first 10 windows are all N: dropped
    human = genomic.Sequence("hg19", "20", 1000, human_bases)
    worm = genomic.Sequence("ce2", "X", 0, rng.choice(np.frombuffer(b"ACGT", np.uint8), size=100 * 64))
    windows = genomic_windows.human_or_worm_windows(human, worm, 64)
    again = genomic_windows.human_or_worm_windows(human, worm, 64)
    assert windows == again
    for split, kept in windows.items():
        labels = np.array([w.label for w in kept])
        assert np.sum(labels == 0) == np.sum(labels == 1) > 0, split
        human_starts = [w.start for w in kept if w.label == 0]
        assert human_starts == sorted(human_starts) and min(human_starts) >= 1000 + 640
    assert sum(len(kept) for kept in windows.values()) == 2 * 100  # every worm window, as many human ones


def test_human_or_worm_window_too_long_for_the_sample_names_the_fix(prepared) -> None:
    data_dir, _ = prepared
    with pytest.raises(
        ValueError,
        match=r"no worm window of 50000 bp fits in the train split.*at most 45000 bp with the sample data\) "
        r"or the full chromosomes \(route='auto' or 'offline'\)",
    ):
        genomic.make_sources({"task": "human_or_worm", "length": 50_000}, data_dir)
    with pytest.raises(
        ValueError, match=r"task must be one of .*'human_or_worm'.*did you mean 'human_or_worm'"
    ):
        genomic.make_sources({"task": "human_vs_worm"}, data_dir)


def test_config_selects_human_or_worm() -> None:
    from configs import genomic as genomic_config

    config = genomic_config.get_config("lstm,task=human_or_worm,length=512")
    assert config.data.task == "human_or_worm" and config.data.length == 512
    assert config.head.num_classes == len(genomic.LABEL_NAMES["human_or_worm"]) == 2
    assert set(genomic_config.NUM_CLASSES) == set(genomic.TASKS)
    with pytest.raises(ValueError, match="task must be one of"):
        genomic_config.get_config("lstm,task=human_vs_worm")


def test_genic_labels_agree_with_the_annotation(prepared, sample_chr20) -> None:
    _, splits = prepared
    sequence, genes = sample_chr20
    genic = np.zeros(genomic.SAMPLE_REGION[2] + 100_000, dtype=bool)  # a plain mask, not the interval code
    near = np.zeros_like(genic)
    for g in genes:
        genic[g.start : g.end] = True
        near[max(0, g.start - genomic.INTERGENIC_MARGIN) : g.end + genomic.INTERGENIC_MARGIN] = True
    for split in splits["genic_vs_intergenic"].values():
        coordinates = split.coordinates()
        labels = split.labels()
        assert set(np.unique(labels)) == {0, 1}
        for s, e, label, i in zip(
            coordinates["start"], coordinates["end"], labels, range(len(split)), strict=True
        ):
            if label == 1:
                assert genic[s:e].mean() > 0.5
            else:
                assert not near[s:e].any()
            if i % 50 == 0:  # the bytes are the region's bases
                np.testing.assert_array_equal(
                    split[i]["inputs"], sequence.bases[s - sequence.offset : e - sequence.offset]
                )


def test_promoter_windows_centre_the_tss_strand_aware(prepared, sample_chr20) -> None:
    _, splits = prepared
    sequence, genes = sample_chr20
    tss = {(g.tss, g.strand) for g in genes}
    all_tss = np.array(sorted(t for t, _ in tss))
    for split in splits["promoter"].values():
        c = split.coordinates()
        labels = split.labels()
        assert np.sum(labels == 1) == np.sum(labels == 0) > 0  # balanced
        for i, (s, e, strand, label) in enumerate(
            zip(c["start"], c["end"], c["strand"], labels, strict=True)
        ):
            forward = sequence.bases[s - sequence.offset : e - sequence.offset]
            expected = forward if strand == "+" else fasta.reverse_complement(forward)
            np.testing.assert_array_equal(split[i]["inputs"], expected)
            if label == 1:
                centre = s + LENGTH // 2 if strand == "+" else e - 1 - LENGTH // 2
                assert (centre, strand) in tss
            else:
                margin = genomic.PROMOTER_NEGATIVE_MARGIN
                assert not np.any((all_tss >= s - margin) & (all_tss < e + margin))
        assert set(c["strand"][labels == 0]) == {"+", "-"}  # negatives come in both orientations


def test_deterministic_across_preparations_and_capped(prepared, tmp_path: pathlib.Path) -> None:
    _, splits = prepared
    config = {"task": "promoter", "length": LENGTH}
    again = genomic.make_sources(config, str(tmp_path))
    for name in genomic.SPLITS:
        assert len(again[name]) == len(splits["promoter"][name])
        for i in range(len(again[name])):
            a, b = again[name][i], splits["promoter"][name][i]
            np.testing.assert_array_equal(a["inputs"], b["inputs"])
            assert a["label"] == b["label"]
    capped = genomic.make_sources({**config, "max_examples_per_split": 10}, str(tmp_path))
    capped_again = genomic.make_sources({**config, "max_examples_per_split": 10}, str(tmp_path))
    assert len(capped["train"]) == 10 and len(capped["test"]) == min(10, len(again["test"]))
    starts = capped["train"].coordinates()["start"]
    np.testing.assert_array_equal(starts, capped_again["train"].coordinates()["start"])
    assert set(starts) <= set(again["train"].coordinates()["start"])


def test_labels_are_read_once_per_prepared_data_set(prepared, tmp_path: pathlib.Path, monkeypatch) -> None:
    """Sources built again for the same prepared data set (a driver does so every run) reuse the labels
    already read; another cap, or the same task prepared into another folder, reads its own."""
    data_dir, splits = prepared
    config = {"task": "species", "length": LENGTH}
    first = splits["species"]["train"].labels()
    capped = genomic.make_sources({**config, "max_examples_per_split": 10}, data_dir)["train"].labels()
    reads = []
    original = genomic.GenomicSplit._record
    monkeypatch.setattr(genomic.GenomicSplit, "_record", lambda self, i: reads.append(i) or original(self, i))
    again = genomic.make_sources(config, data_dir)["train"].labels()
    assert reads == [] and again is first and not again.flags.writeable
    capped_again = genomic.make_sources({**config, "max_examples_per_split": 10}, data_dir)["train"].labels()
    assert reads == [] and len(capped_again) == 10
    np.testing.assert_array_equal(capped_again, capped)
    elsewhere = genomic.make_sources(config, str(tmp_path))["train"].labels()  # prepared afresh there
    assert len(reads) == len(first)
    np.testing.assert_array_equal(elsewhere, first)


def test_prepare_summary_and_config_errors(prepared) -> None:
    data_dir, _ = prepared
    summary = genomic.prepare({"task": "species", "length": LENGTH}, data_dir)
    assert summary["kind"] == "genomic" and summary["route"] == "sample"
    assert set(summary["splits"]) == set(genomic.SPLITS)
    assert sum(summary["splits"]["train"]["class_counts"].values()) == summary["splits"]["train"]["examples"]
    for split in summary["splits"].values():  # GC by class for every species present; no AUROC for 4 classes
        gc = [v for v in split["gc_by_class"].values() if v is not None]
        assert gc and all(0.2 < v < 0.8 for v in gc) and "gc_auroc" not in split
    assert genomic.DEFAULTS["kind"] == "genomic" and genomic.DEFAULTS["length"] == 16384
    with pytest.raises(ValueError, match=r"unknown keys \['lenght'\]"):
        genomic.make_sources({"lenght": 10}, data_dir)
    with pytest.raises(ValueError, match="task must be one of"):
        genomic.make_sources({"task": "enhancer"}, data_dir)
    with pytest.raises(ValueError, match="length must be a positive int"):
        genomic.make_sources({"length": 0}, data_dir)
    with pytest.raises(ValueError, match="route must be one of"):
        genomic.make_sources({"route": "s3"}, data_dir)


def test_composition_is_gc_by_class_and_its_auroc() -> None:
    from sklearn.metrics import roc_auc_score

    from seqjax.data.genomic.splits import GenomicSplit

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    # label 1 a little GC-richer; some N (never counted) in every window
    p_gc = np.where(labels == 1, 0.46, 0.42)
    windows = []
    for p in p_gc:
        probabilities = [(1 - p) / 2, p / 2, p / 2, (1 - p) / 2]
        bases = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=300, p=probabilities)
        bases[rng.integers(0, 300, 20)] = ord("N")
        windows.append(bases)
    source = [{"inputs": w, "label": y} for w, y in zip(windows, labels, strict=True)]
    got = GenomicSplit(source, "validation", ("intergenic", "genic"), cap=None).composition()
    acgt = [w[w != ord("N")] for w in windows]
    gc = np.array([np.isin(a, np.frombuffer(b"GC", np.uint8)).mean() for a in acgt])
    assert got["gc_by_class"] == {
        "intergenic": pytest.approx(gc[labels == 0].mean(), abs=1e-4),
        "genic": pytest.approx(gc[labels == 1].mean(), abs=1e-4),
    }
    assert got["gc_auroc"] == pytest.approx(roc_auc_score(labels, gc), abs=1e-4)
    assert got["gc_auroc"] > 0.6  # the GC-richer class scores above chance


# ----------------------------------------------------------------------------------------------------
# Bad input.


def _write(path: pathlib.Path, text: str, compress: bool = False) -> pathlib.Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_fasta_soft_masking_iupac_and_line_endings_are_handled(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path / "x.fa.gz", ">r1 first\r\nacgtNNRYkm\r\n\r\nACGT\r\n>r2\nswbdhvu\n", compress=True
    )
    records = fasta.read_fasta(path)
    assert [r.name for r in records] == ["r1", "r2"] and records[0].description == "first"
    assert records[0].sequence.tobytes() == b"ACGTNNRYKMACGT"  # uppercased, IUPAC kept
    assert records[1].sequence.tobytes() == b"SWBDHVU"
    assert fasta.reverse_complement(records[0].sequence).tobytes() == b"ACGTKMRYNNACGT"


def test_windows_with_many_n_are_dropped() -> None:
    rng = np.random.default_rng(0)
    bases = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=40 * LENGTH)
    bases[10 * LENGTH + 100 : 10 * LENGTH + 100 + LENGTH // 5] = ord("N")  # 20% of one window
    bases[20 * LENGTH : 20 * LENGTH + LENGTH // 20] = ord("N")  # 5% of another: kept
    sequence = genomic.Sequence("test", "chrT", 0, bases)
    windows = genomic_windows.species_windows([("E.Coli", "DH1", [sequence])], LENGTH)["train"]
    starts = {w.start for w in windows}
    assert 10 * LENGTH not in starts and 20 * LENGTH in starts and len(starts) == 39


def test_truncated_gzip_names_the_file(tmp_path: pathlib.Path) -> None:
    whole = gzip.compress(b">r\n" + b"ACGT" * 5000 + b"\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        ValueError, match=r"cut\.fa\.gz: truncated or corrupt \.gz file .*; delete it and fetch it again"
    ):
        fasta.read_fasta(path)


def test_fasta_bad_character_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "bad.fa", ">r1\nACGT\nACGT\n>r2\nACGT\nAC-T\n")
    with pytest.raises(ValueError, match=r"bad\.fa, line 6, column 3: character '-' is not an IUPAC"):
        fasta.read_fasta(path)
    path = _write(tmp_path / "space.fa", ">r1\nACGT\nAC GT\n")
    with pytest.raises(ValueError, match=r"space\.fa, line 3, column 3"):
        fasta.read_fasta(path)


def test_fasta_sequence_before_header_names_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "headless.fa", "\nACGT\n>r1\nACGT\n")
    with pytest.raises(ValueError, match=r"headless\.fa, line 2: sequence line before any '>' header"):
        fasta.read_fasta(path)
    path = _write(tmp_path / "twice.fa", ">r1\nACGT\n>r1\nACGT\n")
    with pytest.raises(ValueError, match=r"twice\.fa, line 3: record name 'r1' repeats"):
        fasta.read_fasta(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1\tchr20\t100\t200", "expected 5 fields"),
        ("1\tchr20\t1O0\t200\t+", "must be positive integers"),
        ("1\tchr20\t300\t200\t+", "1 <= Start <= End"),
        ("1\tchr20\t100\t200\t.", "Strand must be"),
        ("7\tchr20\t500\t600\t-", "exons on both strands"),
    ],
)
def test_malformed_annotation_line_names_file_and_line(
    tmp_path: pathlib.Path, line: str, problem: str
) -> None:
    text = "GeneID\tChr\tStart\tEnd\tStrand\n7\tchr20\t100\t200\t+\n" + line + "\n"
    path = _write(tmp_path / "exons.txt", text)
    with pytest.raises(ValueError, match=rf"exons\.txt, line 3: .*{problem}"):
        fasta.read_exon_annotation(path, chrom="20")


def test_sample_region_cut_checks_line_boundaries(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "c.fa", ">chrX\n" + "ACGTA\n" * 10)
    assert genomic_sample.region_cut(path, ("X", 10, 20), "d") == b">X:11-20 d\nACGTA\nACGTA\n"
    with pytest.raises(ValueError, match="line boundaries"):
        genomic_sample.region_cut(path, ("X", 12, 20), "d")
    with pytest.raises(ValueError, match="runs past the end"):
        genomic_sample.region_cut(path, ("X", 40, 60), "d")


def test_annotation_gene_span_and_tss(tmp_path: pathlib.Path) -> None:
    text = "GeneID\tChr\tStart\tEnd\tStrand\n1\tchr20\t100\t200\t+\n1\tchr20\t300\t400\t+\n"
    text += "2\tchr20\t1000\t1100\t-\n2\tchr20\t500\t600\t-\n3\tchr21\t1\t5\t+\n"
    genes = fasta.read_exon_annotation(_write(tmp_path / "e.txt", text), chrom="chr20")
    assert [(g.gene_id, g.start, g.end, g.strand, g.tss) for g in genes] == [
        ("1", 99, 400, "+", 99),
        ("2", 499, 1100, "-", 1099),
    ]


# ----------------------------------------------------------------------------------------------------
# Real packages.


def test_offline_route_fetches_and_parses_the_refseq_annotation() -> None:
    """Downloads Debian subread-data (16.5 MB) once into the default cache, unless it is there."""
    try:
        path = fetch(genomic.REFSEQ_EXONS, route="offline")
    except SourceError as e:
        if "apt-get" in str(e):
            pytest.skip(f"Debian package not downloadable here (no network or no apt-get): {e}")
        raise
    genes = fasta.read_exon_annotation(path, chrom="20")
    assert len(genes) == 693  # chr20 genes of hg19 RefSeq (docs/data.md)
    assert genes[0].gene_id == "245938" and genes[0].start == 68350


def test_offline_route_fetches_the_worm_chromosome() -> None:
    """Downloads Debian r-bioc-bsgenome (7 MB) once into the default cache, unless it is there."""
    try:
        path = fetch(genomic.WORM_CHRX, route="offline")
    except SourceError as e:
        if "apt-get" in str(e):
            pytest.skip(f"Debian package not downloadable here (no network or no apt-get): {e}")
        raise
    (record,) = fasta.read_fasta(path)
    assert record.name == "chrX" and len(record.sequence) == 17_718_849  # ce2 chrX as BSgenome ships it
    assert genomic.WORM_FULL_REGION[1:] == (0, len(record.sequence))
    _, start, end = genomic.WORM_SAMPLE_REGION
    sample = genomic_reading.load_chromosome(genomic.WORM_CHRX, "sample", "ce2", "X")
    np.testing.assert_array_equal(record.sequence[start:end], sample.bases)


def test_make_sample_reproduces_the_embedded_sample(tmp_path: pathlib.Path) -> None:
    """Provenance: the embedded files are exactly what make_sample cuts from the packages (runs only when
    the four packages are already unpacked in the cache; never downloads)."""
    packages = [
        source.package
        for source in (genomic.CHR20, genomic.REFSEQ_EXONS, genomic.BACTERIA, genomic.WORM_CHRX)
    ]
    if not all(
        (cache_dir() / "packages" / f"deb-{p.name}").is_dir()
        for p in packages
        if isinstance(p, DebianPackage)
    ):
        pytest.skip(
            "the Debian packages are not in the cache; run the offline route once to enable this check"
        )
    sizes = genomic.make_sample(tmp_path)
    for relative in sizes:
        assert (tmp_path / relative).read_bytes() == (SAMPLES_DIR / "genomic" / relative).read_bytes(), (
            relative
        )


def test_documented_length_by_name(tmp_path: pathlib.Path) -> None:
    """A documented length is a listed BuilderConfig (TFDS takes it by name), any other a custom one."""
    splits = genomic.make_sources({"task": "species", "length": 8192}, str(tmp_path))
    assert splits["train"][0]["inputs"].shape == (8192,)
    assert len(splits["test"]) == 4 * (75_000 // 8192)  # one 75 kbp test genome (or half) per species


def test_preparing_the_embedded_sample_is_quiet(tmp_path, capfd, caplog):
    """Before: every train and eval process logged absl's `Using custom data configuration:
    GenomicConfig(...)` and TFDS printed `Downloading and preparing dataset Unknown size` for data that
    is embedded in the repository. Now: neither, and one log line says where the sample was prepared."""
    import logging

    from seqjax.data.genomic.splits import make_sources

    data = {"kind": "genomic", "task": "species", "length": 512, "route": "sample"}
    with caplog.at_level(logging.INFO):
        for _ in range(2):  # preparing, then reading the prepared data set
            splits = make_sources(data, str(tmp_path))
    out, _ = capfd.readouterr()
    assert len(splits["test"]) > 0
    assert "Downloading and preparing" not in out and "downloaded and prepared" not in out, out
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Using custom data configuration" in m], messages
    assert sum("from the sample embedded in the repository" in m for m in messages) == 1, messages


# ----------------------------------------------------------------------------------------------------
# Nested centre crops: the same loci and labels at every length.

NESTED_LENGTHS = (1024, 4096, 8192, 16384)
ANCHOR = 16384


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, dict[str, genomic.GenomicSplit]]]:
    data_dir = str(tmp_path_factory.mktemp("nested"))
    return {
        task: {
            length: genomic.make_sources({"task": task, "length": length, "nested": ANCHOR}, data_dir)
            for length in NESTED_LENGTHS
        }
        for task in ("genic_vs_intergenic", "promoter", "species")
    }


@pytest.mark.parametrize("task", ["genic_vs_intergenic", "promoter", "species"])
def test_nested_crops_share_loci_order_and_labels(nested, task: str) -> None:
    by_length = nested[task]
    anchor = by_length[ANCHOR]
    for name in genomic.SPLITS:
        a = anchor[name].coordinates()
        assert len(anchor[name]) > 0 and np.all(a["end"] - a["start"] == ANCHOR)
        for length in NESTED_LENGTHS:
            split = by_length[length][name]
            c = split.coordinates()
            assert len(split) == len(anchor[name]), (task, name, length)
            np.testing.assert_array_equal(c["start"] + c["end"], a["start"] + a["end"])  # same centres
            np.testing.assert_array_equal(c["end"] - c["start"], length)
            for key in ("genome", "chrom", "strand"):
                np.testing.assert_array_equal(c[key], a[key])
            np.testing.assert_array_equal(split.labels(), anchor[name].labels())
            margin = (ANCHOR - length) // 2
            for i in range(0, len(split), max(1, len(split) // 7)):  # the crop is the anchor's centre
                long = anchor[name][i]["inputs"]
                np.testing.assert_array_equal(split[i]["inputs"], long[margin : ANCHOR - margin])
        assert len(set(anchor[name].labels().tolist())) > 1, (task, name)  # both (all) classes present


@pytest.mark.parametrize("task", ["genic_vs_intergenic", "promoter"])
def test_nested_anchor_windows_stay_in_their_block_and_pass_the_n_rule(nested, task: str) -> None:
    blocks = genomic.region_blocks(genomic.SAMPLE_REGION[1], genomic.SAMPLE_REGION[2])
    for name, split in nested[task][ANCHOR].items():
        c = split.coordinates()
        inside = [
            any(s >= b0 and e <= b1 and sp == name for b0, b1, sp in blocks)
            for s, e in zip(c["start"], c["end"], strict=True)
        ]
        assert all(inside), (task, name)
        for i in range(len(split)):
            assert np.mean(split[i]["inputs"] == ord("N")) <= genomic.MAX_N_FRACTION


def test_nested_genic_labels_come_from_the_centre_core(nested, sample_chr20) -> None:
    _, genes = sample_chr20
    genic = np.zeros(genomic.SAMPLE_REGION[2] + 100_000, dtype=bool)
    near = np.zeros_like(genic)
    for g in genes:
        genic[g.start : g.end] = True
        near[max(0, g.start - genomic.INTERGENIC_MARGIN) : g.end + genomic.INTERGENIC_MARGIN] = True
    core = genomic.NESTED_CORE
    whole_window_disagrees = 0
    for split in nested["genic_vs_intergenic"][ANCHOR].values():
        c = split.coordinates()
        for s, e, label in zip(c["start"], c["end"], split.labels(), strict=True):
            lo = (s + e) // 2 - core // 2
            if label == 1:
                assert genic[lo : lo + core].mean() > 0.5
                whole_window_disagrees += genic[s:e].mean() <= 0.5
            else:
                assert not near[lo : lo + core].any()
                whole_window_disagrees += near[s:e].any()
    # The label is the centre's, not the anchor window's: some 16 kb windows would get another label.
    assert whole_window_disagrees > 0


def test_nested_promoters_keep_the_tss_at_the_centre_and_negatives_far_from_any(nested, sample_chr20) -> None:
    _, genes = sample_chr20
    tss = {(g.tss, g.strand) for g in genes}
    all_tss = np.array(sorted(t for t, _ in tss))
    for length in NESTED_LENGTHS:
        for split in nested["promoter"][length].values():
            c, labels = split.coordinates(), split.labels()
            for s, e, strand, label in zip(c["start"], c["end"], c["strand"], labels, strict=True):
                if label == 1:
                    centre = s + length // 2 if strand == "+" else e - 1 - length // 2
                    assert (centre, strand) in tss
                else:  # TSS-free across the whole anchor window, with the margin
                    margin = genomic.PROMOTER_NEGATIVE_MARGIN + (ANCHOR - length) // 2
                    assert not np.any((all_tss >= s - margin) & (all_tss < e + margin))


def test_nested_data_has_its_own_builder_config_and_folder(tmp_path: pathlib.Path) -> None:
    plain = genomic.make_builder({"task": "species", "length": 1024}, tmp_path)
    crop = genomic.make_builder({"task": "species", "length": 1024, "nested": 16384}, tmp_path)
    assert crop.builder_config.name == "species_1024_nested16384" and crop.builder_config.nested == 16384
    assert plain.builder_config.name == "species_1024" and plain.data_dir != crop.data_dir
    whole = genomic.make_builder({"task": "species", "length": 16384, "nested": 16384}, tmp_path)
    assert whole.builder_config.name == "species_16384_nested16384"  # not the documented species_16384
    from seqjax.data.genomic.builder import builder_name

    assert builder_name({"task": "species", "length": 1024, "nested": 4096}).endswith(
        "species_1024_nested4096"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"length": 4096, "nested": 1024}, r"nested=1024 is shorter than length=4096.*set nested >= 4096"),
        ({"length": 1024, "nested": 4097}, r"differ by an odd number of bp"),
        ({"length": 1024, "nested": "16384"}, r"nested must be None or an int"),
        ({"length": 1024, "nested": True}, r"nested must be None or an int"),
        (
            {"length": 512, "nested": 4096},
            r"length=512 is shorter than the 1024 bp centre core.*length >= 1024",
        ),
    ],
)
def test_nested_bad_input_names_the_option_and_the_fix(tmp_path: pathlib.Path, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        genomic.make_sources({"task": "genic_vs_intergenic", **options}, str(tmp_path))
    from configs import genomic as genomic_config

    if isinstance(options["nested"], int) and not isinstance(options["nested"], bool):
        arg = f"lstm,length={options['length']},nested={options['nested']}"
        with pytest.raises(ValueError, match="configs/genomic.py: .*" + message):
            genomic_config.get_config(arg)
    with pytest.raises(ValueError, match=r"option nested='16k' must be an int"):
        genomic_config.get_config("lstm,nested=16k")


def test_centre_crop_refuses_a_crop_it_cannot_centre() -> None:
    windows = {"train": [genomic.Window("g", "1", 0, 10, "+", 0)], "validation": [], "test": []}
    assert genomic_windows.centre_crop(windows, 4)["train"][0] == genomic.Window("g", "1", 3, 7, "+", 0)
    for length in (5, 12):
        with pytest.raises(ValueError, match="no centred crop"):
            genomic_windows.centre_crop(windows, length)


def test_bootstrap_clusters_of_chr20_windows_are_their_split_blocks(prepared) -> None:
    """chr20's (and worm chrX's) windows cluster by the split block that holds them, since composition is
    regional; bacterial windows, split by genome, by 100 kb blocks."""
    from seqjax.experiment.clusters import example_clusters

    _, splits = prepared
    blocks = genomic.region_blocks(*genomic.SAMPLE_REGION[1:])
    for name in ("train", "test"):
        split = splits["genic_vs_intergenic"][name]
        starts, index = split.coordinates()["start"], split.split_blocks()
        for start, b in zip(starts, index, strict=True):
            assert blocks[b][0] <= start < blocks[b][1] and blocks[b][2] == name
        clusters = example_clusters(split)
        assert set(clusters) == {f"hg19:20:split-block-{b}" for b in set(index.tolist())}
    assert len(set(example_clusters(splits["genic_vs_intergenic"]["test"]))) == 2  # sample blocks 9 and 19
    worm = splits["human_or_worm"]["test"]
    assert set(example_clusters(worm)) == {
        f"{g}:{c}:split-block-{b}" for g, c in (("hg19", "20"), ("ce2", "X")) for b in (9, 19)
    }
    species = splits["species"]["test"]
    assert (species.split_blocks() == -1).all()
    c = species.coordinates()
    rows = zip(c["genome"], c["chrom"], c["start"], strict=True)
    expected = [f"{g}:{ch}:{s // 100_000}" for g, ch, s in rows]
    assert example_clusters(species).tolist() == expected


def test_a_changed_chromosome_extent_is_refused_naming_the_constant() -> None:
    from seqjax.data.genomic.builder import _check_blocked_region

    bases = np.zeros(10, np.uint8)
    with pytest.raises(ValueError, match=r"hg19 chr20: the offline data cover \[0, 10\).*FULL_REGION"):
        _check_blocked_region(genomic.Sequence("hg19", "20", 0, bases), "offline")
