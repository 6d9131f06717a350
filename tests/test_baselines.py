"""The non-neural baselines (seqjax.baselines): each beats its task's trivial baseline on the embedded
samples, and each piece equals a plain reference on small cases.

References: brute-force k-mer counts; a dictionary implementation of interpolated Kneser–Ney written
from the formula; hand-computed unigram KN probabilities; the `xz` and `bzip2` command-line tools;
scikit-learn's Ridge on explicitly built DLinear / NLinear features; exactly linear synthetic series;
`seqjax.data.metrics.forecast_metrics` and `seqjax.data.documents.unigram_bits_per_byte`.

Measured numbers on the embedded samples (test split) that the loose thresholds below stand for:
species 1024 bp balanced accuracy: majority 0.25, GC content 0.71, 4-mers 0.95; python_docs bits per
byte: unigram 4.87, 3-gram KN 2.95, xz -9e 2.43, bz2 2.39; electricity (look-back 96, horizon 24,
capped) MSE: mean ~1.0, seasonal-naive / NLinear / DLinear < 0.2.
"""

from __future__ import annotations

import bz2
import itertools
import lzma
import math
import shutil
import subprocess
from collections import Counter, defaultdict

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from seqjax.baselines import documents, genomic, timeseries
from seqjax.baselines.kneser_ney import KneserNeyBytes
from seqjax.data import metrics


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("baselines_data"))


# --- genomic -------------------------------------------------------------------------------------------


def _brute_force_kmers(window: bytes, k: int, canonical: bool) -> Counter:
    complement = {"A": "T", "C": "G", "G": "C", "T": "A"}
    counts: Counter = Counter()
    text = window.decode()
    for i in range(len(text) - k + 1):
        kmer = text[i : i + k]
        if set(kmer) <= set("ACGT"):
            if canonical:
                kmer = min(kmer, "".join(complement[b] for b in reversed(kmer)))
            counts[kmer] += 1
    return counts


@pytest.mark.parametrize("k,canonical", [(1, False), (3, False), (3, True), (4, True)])
def test_kmer_frequencies_equal_brute_force_counts(k, canonical):
    rng = np.random.default_rng(k)
    windows = [
        rng.choice(list(b"ACGTN"), size=60, p=[0.24] * 4 + [0.04]).astype(np.uint8).tobytes()
        for _ in range(3)
    ]
    windows.append(b"ACGTRYACGT" * 6)  # IUPAC codes break k-mers too
    frequencies = genomic.kmer_frequencies(
        np.frombuffer(b"".join(windows), np.uint8).reshape(4, 60), k, canonical=canonical
    )
    all_kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]  # base-4 order, A=0 .. T=3
    if canonical:
        rc = lambda s: "".join({"A": "T", "C": "G", "G": "C", "T": "A"}[b] for b in reversed(s))
        all_kmers = [s for s in all_kmers if s <= rc(s)]
    assert frequencies.shape == (4, len(all_kmers))
    for row, window in zip(frequencies, windows, strict=True):
        counts = _brute_force_kmers(window, k, canonical)
        expected = np.array([counts[s] for s in all_kmers], np.float64) / max(sum(counts.values()), 1)
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-12)


def test_gc_content_counts_only_acgt():
    windows = np.frombuffer(b"GGCCAATTNN" + b"GCGCGCGCNR", np.uint8).reshape(2, 10)
    np.testing.assert_allclose(genomic.gc_content(windows), [0.5, 1.0])


def test_genomic_baselines_beat_majority_class(data_dir):
    results = genomic.evaluate_baselines(
        {"task": "species", "length": 1024}, data_dir, "test", kmer_sizes=(4,)
    )
    by_name = {r.name: r for r in results}
    majority = by_name["majority class"].metrics["balanced_accuracy"]
    gc = by_name["GC content + logistic regression"]
    kmer = by_name["4-mer frequencies + logistic regression"]
    assert majority == pytest.approx(0.25)
    assert gc.metrics["balanced_accuracy"] > majority + 0.3, gc.metrics  # measured 0.71
    assert kmer.metrics["balanced_accuracy"] > 0.85, kmer.metrics  # measured 0.95
    # per-example values line up with the metrics
    assert kmer.per_example["probabilities"].shape == (kmer.metrics["examples"], 4)
    accuracy = np.mean(kmer.per_example["prediction"] == kmer.per_example["label"])
    assert accuracy == pytest.approx(kmer.metrics["accuracy"])
    again = genomic.evaluate_baselines({"task": "species", "length": 1024}, data_dir, "test", kmer_sizes=(4,))
    np.testing.assert_array_equal(again[2].per_example["probabilities"], kmer.per_example["probabilities"])


# --- documents: Kneser–Ney -----------------------------------------------------------------------------


def _reference_kneser_ney(documents_: list[bytes], order: int):
    """Interpolated KN straight from the formula, with dictionaries (the document start is symbol 256)."""
    grams: list[Counter] = [Counter() for _ in range(order + 1)]  # grams[m][tuple of m symbols]
    for document in documents_:
        sequence = [256] * (order - 1) + list(document)
        for t in range(order - 1, len(sequence)):
            for m in range(1, order + 1):
                grams[m][tuple(sequence[t - m + 1 : t + 1])] += 1
    tables = {order: grams[order]}
    for m in range(1, order):  # continuation counts: distinct left neighbours
        tables[m] = Counter(gram[1:] for gram in grams[m + 1])
    discounts = {}
    for m, table in tables.items():
        n1 = sum(1 for c in table.values() if c == 1)
        n2 = sum(1 for c in table.values() if c == 2)
        discounts[m] = min(max(n1 / (n1 + 2 * n2), 0.05), 0.95)
    totals, types = defaultdict(Counter), defaultdict(Counter)
    for m, table in tables.items():
        for gram, c in table.items():
            totals[m][gram[:-1]] += c
            types[m][gram[:-1]] += 1

    def probability(context: tuple, byte: int) -> float:
        p = 1 / 256
        for m in range(1, order + 1):
            h = context[len(context) - (m - 1) :] if m > 1 else ()
            if totals[m][h] > 0:
                d = discounts[m]
                p = max(tables[m][(*h, byte)] - d, 0) / totals[m][h] + d * types[m][h] / totals[m][h] * p
        return p

    return probability


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_equals_reference_and_normalises(order):
    corpus = [b"abracadabra", b"the cat sat on the mat", b"aaaa\x00\xff"]
    model = KneserNeyBytes(corpus, order)
    reference = _reference_kneser_ney(corpus, order)
    for text in (b"", b"a", b"ab", b"abr", b"the c", b"zzz", b"\xff\x00", b"mat"):
        history = ([256] * (order - 1) + list(text))[len(text) :] if order > 1 else []
        history = tuple(history[-(order - 1) :]) if order > 1 else ()
        probabilities = model.probabilities(text)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-12), (order, text)
        assert probabilities.min() > 0
        expected = [reference(history, b) for b in range(256)]
        np.testing.assert_allclose(probabilities, expected, rtol=1e-12, atol=0)


def test_kneser_ney_unigram_by_hand():
    # "aab": counts a=2, b=1; n1 = 1, n2 = 1 -> D = 1/3; 3 tokens, 2 types.
    p = KneserNeyBytes([b"aab"], order=1).probabilities(b"")
    d = 1 / 3
    assert p[ord("a")] == pytest.approx((2 - d) / 3 + d * 2 / 3 / 256, rel=1e-14)
    assert p[ord("b")] == pytest.approx((1 - d) / 3 + d * 2 / 3 / 256, rel=1e-14)
    assert p[ord("z")] == pytest.approx(d * 2 / 3 / 256, rel=1e-14)


def test_document_nats_are_the_chain_of_next_byte_probabilities():
    model = KneserNeyBytes([b"hello world, hello there"], order=3)
    document = b"hello who"
    chained = [-math.log(model.probabilities(document[:t])[document[t]]) for t in range(len(document))]
    np.testing.assert_allclose(model.document_nats(document), chained, rtol=1e-12)


def test_ngram_position_sums_bucket_every_byte_after_the_first():
    model = KneserNeyBytes([b"hello world, hello there"], order=3)
    docs = [b"hello who is there", b"hi"]
    sums = documents.ngram_position_sums(model, docs, edges=(0, 4, 8))
    for i, doc in enumerate(docs):
        nats = model.document_nats(doc)[1:]  # byte 0 is the models' first input, never a target
        offsets = np.arange(1, len(doc))
        for k, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10**9)]):
            inside = (offsets >= lo) & (offsets < hi)
            assert sums["bucket_bytes"][i, k] == inside.sum() == sums["bucket_tokens"][i, k]
            assert sums["bucket_nll"][i, k] == pytest.approx(nats[inside].sum(), rel=1e-12)
        assert sums["nll"][i] == pytest.approx(nats.sum(), rel=1e-12)
    # a bound on the scored span (a model's max_document_tokens) cuts each document's targets
    bounded = documents.ngram_position_sums(model, docs, edges=(0, 4, 8), scored_bytes=[5, 5])
    assert bounded["bucket_bytes"].tolist() == [[3.0, 2.0, 0.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="one count per document"):
        documents.ngram_position_sums(model, docs, edges=(0, 4), scored_bytes=[5])
    with pytest.raises(ValueError, match="position_buckets"):
        documents.ngram_position_sums(model, docs, edges=(4, 8))


# --- documents: compressors and the real sample --------------------------------------------------------


KNOWN_TEXT = b"It was the best of times, it was the worst of times, " * 20


@pytest.mark.parametrize("compressor,command", [("xz", ["xz", "-9e", "-c"]), ("bz2", ["bzip2", "-9", "-c"])])
def test_compressor_bits_match_the_command_line_tool(compressor, command):
    bits = documents.compressor_document_bits([KNOWN_TEXT], compressor)
    library = {"xz": lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), "bz2": bz2.compress}
    assert bits[0] == 8 * len(library[compressor](KNOWN_TEXT))
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    output = subprocess.run(command, input=KNOWN_TEXT, capture_output=True, check=True).stdout
    assert bits[0] == 8 * len(output)


def test_document_baselines_beat_unigram(data_dir):
    config = {"corpus": "python_docs", "length": 512}
    results = documents.evaluate_baselines(config, data_dir, "test", orders=(3,))
    bpb = {r.name: r.metrics["bits_per_byte"] for r in results}
    unigram = bpb["unigram (add-one)"]
    assert 4.0 < unigram < 5.5, bpb  # measured 4.87
    assert bpb["3-gram interpolated Kneser–Ney"] < unigram - 1.5, bpb  # measured 2.95
    assert bpb["xz -9e (lzma)"] < unigram - 2.0, bpb  # measured 2.43
    assert bpb["bz2 -9"] < unigram - 2.0, bpb  # measured 2.39
    # aggregate = total bits / total bytes of the per-document values
    ngram = results[1]
    assert ngram.per_example["bits"].sum() / ngram.per_example["bytes"].sum() == pytest.approx(
        ngram.metrics["bits_per_byte"]
    )
    # the per-document unigram is the project's trivial baseline, up to the split's first byte
    from seqjax.data.documents import make_sources, unigram_bits_per_byte

    sources = make_sources(config, data_dir)
    assert unigram == pytest.approx(unigram_bits_per_byte(sources["train"], sources["test"]), abs=2e-3)


def _chained_window_bits(model: KneserNeyBytes, window: dict) -> float:
    """Bits of a window's counted targets, each from `model.probabilities` given the window's bytes since
    its last document start: the definition, one target at a time."""
    bits, context = 0.0, b""
    for t in range(int((window["weights"] > 0).sum())):
        if window["resets"][t]:
            context = b""
        context += bytes([int(window["inputs"][t])])
        bits -= math.log2(model.probabilities(context)[int(window["targets"][t])])
    return bits


def test_window_baselines_score_the_models_windows(data_dir):
    from seqjax.data.documents import make_sources

    config = {"corpus": "python_docs", "length": 512}
    test = make_sources(config, data_dir)["test"]
    train_documents = documents.read_split_documents(config, data_dir)["train"]
    windows = [test[i] for i in range(len(test))]
    results = documents.evaluate_window_baselines(train_documents, windows, orders=(3,), compressors=("xz",))
    names = ["unigram (add-one)", "3-gram interpolated Kneser–Ney", "xz -9e (lzma)"]
    assert [r.name for r in results] == names
    counted = np.array([w["weights"].sum() for w in windows])
    for r in results:
        assert r.settings["scored"] == "windows" and len(r.per_example["bits"]) == len(windows)
        np.testing.assert_array_equal(r.per_example["bytes"], counted)  # the models' targets, by window
    assert counted.sum() == test.num_tokens - 1  # every byte of the split but its first, as the models
    # The n-gram's bits of each window, by the definition: a window with a document start inside it, the
    # first window (a document start at 0) and one that starts mid-document.
    model = KneserNeyBytes(train_documents, 3)
    inside = next(i for i, w in enumerate(windows) if w["resets"][1:].any())
    mid = next(i for i, w in enumerate(windows) if not w["resets"][0])
    for i in {0, inside, mid}:
        by_definition = _chained_window_bits(model, windows[i])
        assert results[1].per_example["bits"][i] == pytest.approx(by_definition, rel=1e-9)
    # the compressor compresses each window's target bytes alone
    targets = bytes(windows[mid]["targets"][: int(counted[mid])].astype(np.uint8))
    xz = lzma.compress(targets, preset=9 | lzma.PRESET_EXTREME)
    assert results[2].per_example["bits"][mid] == 8 * len(xz)
    # aggregates are total bits / total bytes; the unigram's is the project's trivial baseline
    from seqjax.data.documents import unigram_bits_per_byte

    sources = make_sources(config, data_dir)
    unigram = results[0].metrics["bits_per_byte"]
    assert unigram == pytest.approx(unigram_bits_per_byte(sources["train"], sources["test"]), abs=2e-3)
    assert results[1].metrics["bits_per_byte"] < unigram - 1.0


def test_task_baselines_of_a_byte_documents_task_score_the_runs_windows(data_dir, tmp_path):
    from configs import documents as documents_config
    from seqjax.data.pipeline import spread_indices
    from seqjax.experiment.comparison import task_baselines
    from seqjax.experiment.summary import baseline_rows

    config = documents_config.get_config("lstm,corpus=python_docs,length=256")
    config.data_dir = data_dir
    found, clusters = task_baselines(config, examples=16)
    assert len(clusters) == 16 and all(r.settings["scored"] == "windows" for r in found)
    from seqjax.data.documents import make_sources

    test = make_sources({"corpus": "python_docs", "length": 256}, data_dir)["test"]
    expected = [test[int(i)]["weights"].sum() for i in spread_indices(len(test), 16)]
    for r in found:
        np.testing.assert_array_equal(r.per_example["bytes"], expected)
    # intervals resample the windows by the clusters given (the documents), as the models' do
    assert len(set(clusters.tolist())) < 16  # several windows per document, so the clusters matter
    rows = baseline_rows(found, "lm", clusters, n_resamples=300)
    ngram = next(r for r in rows if "5-gram" in r["model"])
    assert ngram["low"] < ngram["estimate"] < ngram["high"]
    with pytest.raises(ValueError, match="form 1 cluster"):  # the clusters are used: one is refused
        baseline_rows(found, "lm", np.zeros(16, int), n_resamples=300)
    # a model's runs on those windows pair with the baseline: one 0.25 bits per byte worse on every
    # window differs by +0.25 exactly, the interval too
    from seqjax.experiment.predictions import RunPredictions, write_predictions
    from seqjax.experiment.report import baseline_difference

    ngram_bits, window_bytes = ngram.get("estimate"), found[2].per_example["bytes"]
    nats = (found[2].per_example["bits"] + 0.25 * window_bytes) * math.log(2.0)
    columns = np.stack([nats, np.zeros(16), window_bytes], axis=1)
    ids = spread_indices(len(test), 16)
    run = RunPredictions("lstm", 0, 256, ids, clusters, window_bytes, columns, nats / window_bytes)
    paths = [str(write_predictions(tmp_path / "lstm.npz", run))]
    d = baseline_difference(paths, found[2], "lm", n_resamples=200)
    assert d["estimate"] == pytest.approx(0.25) and d["low"] == pytest.approx(0.25) == d["high"]
    assert found[2].metrics["bits_per_byte"] == pytest.approx(ngram_bits)


def test_validation_scores_choose_the_strongest_baseline_not_the_test_split(data_dir):
    """The strongest baseline (the one every model is paired with) is chosen on the validation windows
    the models are scored on, as the models' rates are: its validation scores are the baselines' bits
    per byte on those windows, by definition, and the test split plays no part in the choice."""
    from configs import documents as documents_config
    from seqjax.data.documents import make_sources
    from seqjax.data.pipeline import spread_indices
    from seqjax.experiment.comparison import baseline_validation_estimates
    from seqjax.experiment.summary import strongest_baseline

    config = documents_config.get_config("lstm,corpus=python_docs,length=256")
    config.data_dir = data_dir
    scores = baseline_validation_estimates(config, examples=12)
    validation = make_sources({"corpus": "python_docs", "length": 256}, data_dir)["validation"]
    windows = [validation[int(i)] for i in spread_indices(len(validation), 12)]
    train = documents.read_split_documents({"corpus": "python_docs", "length": 256}, data_dir)["train"]
    by_hand = documents.evaluate_window_baselines(train, windows)
    assert scores == pytest.approx({r.name: r.metrics["bits_per_byte"] for r in by_hand}, rel=1e-9)
    # a test split that favours another baseline does not move the choice
    rows = [{"model": name, "estimate": 1.0 if "unigram" in name else 9.0} for name in scores]
    chosen, on = strongest_baseline(rows, larger=False, validation=scores)
    assert on == "validation" and chosen["model"] == min(scores, key=scores.get) != rows[0]["model"]
    assert strongest_baseline(rows, larger=False)[0]["model"] == rows[0]["model"]  # on test: the unigram
    rows.append({"model": "skipped", "estimate": float("nan")})  # no test values: never chosen
    assert strongest_baseline(rows, larger=False, validation={**scores, "skipped": 0.0})[0] == chosen


def test_a_baseline_estimate_is_its_interval_estimate_and_needs_no_clusters():
    """The validation score that chooses the strongest baseline is the test table's estimate computed the
    same way (balanced accuracy, mean squared error, bits per byte as a ratio of sums), and a split of one
    time block, where no interval can be drawn, still has one."""
    from seqjax.baselines.result import BaselineResult
    from seqjax.experiment.report import baseline_estimate, baseline_interval

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    kinds = {
        "classification": {"prediction": np.where(rng.random(60) < 0.7, labels, 0), "label": labels},
        "forecast": {"mse": rng.random(60), "mae": rng.random(60)},
        "lm": {"bits": rng.random(60) * 100, "bytes": rng.integers(20, 60, 60).astype(float)},
    }
    by_hand = {
        "classification": np.mean(
            [np.mean(kinds["classification"]["prediction"][labels == c] == c) for c in range(3)]
        ),
        "forecast": kinds["forecast"]["mse"].mean(),
        "lm": kinds["lm"]["bits"].sum() / kinds["lm"]["bytes"].sum(),
    }
    clusters = np.arange(60) // 6
    for task, per_example in kinds.items():
        result = BaselineResult("b", {}, per_example, {"scored": "windows"})
        estimate = baseline_estimate(result, task)
        assert estimate == pytest.approx(by_hand[task], rel=1e-12)
        assert estimate == pytest.approx(baseline_interval(result, task, clusters, n_resamples=50).estimate)
        with pytest.raises(ValueError, match="1 cluster"):  # the interval needs clusters; the estimate not
            baseline_interval(result, task, np.zeros(60, int), n_resamples=50)
    skipped = BaselineResult("skipped", {"mse": 0.5}, {})
    assert baseline_estimate(skipped, "forecast") == 0.5


def test_a_baseline_of_other_examples_is_refused_not_silently_kept():
    """Cutting a baseline to the models' examples: arrays of the split's length are cut, arrays of the
    subset's length kept; any other length means it scored other examples, which is refused (before, it
    was kept and then never paired, or scored on other windows on validation)."""
    from seqjax.baselines.result import BaselineResult
    from seqjax.experiment.comparison import _subset

    indices = np.array([1, 4, 7])
    whole = BaselineResult("k-mer", {}, {"label": np.arange(10), "prediction": np.arange(10) % 2})
    cut = _subset(whole, indices, 10)
    assert cut.per_example["label"].tolist() == [1, 4, 7] and cut.settings["examples"] == 3
    scored = BaselineResult("windows", {}, {"bits": np.ones(3), "bytes": np.full(3, 8.0)})
    assert _subset(scored, indices, 10).per_example["bits"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"'other' has 9 values of 'label'.*10 examples.*3 of them"):
        _subset(BaselineResult("other", {}, {"label": np.arange(9)}), indices, 10)


def test_window_baselines_refuse_token_ids_above_a_byte(data_dir):
    window = {
        "inputs": np.array([300, 2], np.int32),
        "targets": np.array([2, 3], np.int32),
        "weights": np.ones(2, np.float32),
        "resets": np.array([True, False]),
    }
    with pytest.raises(ValueError, match="byte-tokenised documents only"):
        documents.evaluate_window_baselines([b"abc"], [window])


# --- time series ---------------------------------------------------------------------------------------


def _reference_trend(x: np.ndarray, kernel: int) -> np.ndarray:
    pad = (kernel - 1) // 2
    return np.array(
        [np.convolve(np.r_[[r[0]] * pad, r, [r[-1]] * pad], np.ones(kernel) / kernel, "valid") for r in x]
    )


@pytest.mark.parametrize("kind", ["nlinear", "dlinear"])
def test_linear_forecaster_equals_sklearn_ridge(kind):
    rng = np.random.default_rng(0)
    series = np.cumsum(rng.normal(size=(120, 2)), axis=0)
    inputs, targets = timeseries.windows_from_series(series, lookback=12, horizon=4)
    ridge, kernel = 0.05, 5
    model = timeseries.fit_linear_forecaster(
        [(inputs[:50], targets[:50]), (inputs[50:], targets[50:])], kind, ridge=ridge, kernel=kernel
    )
    x = inputs.transpose(0, 2, 1).reshape(-1, 12)  # (window, variable) rows
    y = targets.transpose(0, 2, 1).reshape(-1, 4)
    if kind == "nlinear":
        features, y = x - x[:, -1:], y - x[:, -1:]
    else:
        trend = _reference_trend(x, kernel)
        features = np.concatenate([x - trend, trend], axis=1)
    reference = Ridge(alpha=ridge * len(x), fit_intercept=True, solver="svd").fit(features, y)
    np.testing.assert_allclose(model.weights, reference.coef_.T, atol=1e-9)
    np.testing.assert_allclose(model.bias, reference.intercept_, atol=1e-9)
    expected = reference.predict(features) + (x[:, -1:] if kind == "nlinear" else 0)
    np.testing.assert_allclose(
        model.forecast(inputs), expected.reshape(-1, 2, 4).transpose(0, 2, 1), atol=1e-9
    )


@pytest.mark.parametrize("kind", ["nlinear", "dlinear"])
def test_linear_forecaster_recovers_an_exactly_linear_map(kind):
    rng = np.random.default_rng(1)
    weights, bias = rng.normal(size=(8, 3)), rng.normal(size=3)
    inputs = rng.normal(size=(200, 8, 2))
    x = inputs.transpose(0, 2, 1)  # [N, V, L]
    level = x[..., -1:] if kind == "nlinear" else 0.0
    targets = ((x - level) @ weights + bias + level).transpose(0, 2, 1)
    model = timeseries.fit_linear_forecaster([(inputs, targets)], kind, ridge=0.0, kernel=3)
    new_inputs = rng.normal(size=(5, 8, 2))
    new_x = new_inputs.transpose(0, 2, 1)
    new_level = new_x[..., -1:] if kind == "nlinear" else 0.0
    expected = ((new_x - new_level) @ weights + bias + new_level).transpose(0, 2, 1)
    np.testing.assert_allclose(model.forecast(new_inputs), expected, atol=1e-8)


def test_seasonal_naive_and_trend_equal_brute_force():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(3, 10, 2))
    forecasts = timeseries.seasonal_naive_forecasts(inputs, horizon=7, period=4)
    for t in range(7):
        np.testing.assert_array_equal(forecasts[:, t], inputs[:, 10 - 4 + t % 4])
    trend = timeseries.moving_average_trend(inputs, kernel=5)
    for v in range(2):
        np.testing.assert_allclose(trend[:, :, v], _reference_trend(inputs[:, :, v], 5), atol=1e-12)


def test_timeseries_baselines_beat_mean_forecast(data_dir):
    config = {"dataset": "electricity", "lookback": 96, "horizon": 24, "max_examples_per_split": 600}
    results = timeseries.evaluate_baselines(config, data_dir, "test")
    mse = {r.name: r.metrics["mse"] for r in results}
    mean = mse["mean"]
    assert mean > 0.5, mse  # measured ~1.0
    for name in (
        "seasonal-naive (period 24)",
        "NLinear (ridge, closed form)",
        "DLinear (ridge, closed form)",
    ):
        assert mse[name] < 0.5 * mean, mse
    # the chunked metrics equal the project's forecast_metrics on the whole split
    from seqjax.data.timeseries import make_sources

    test = make_sources(config, data_dir)["test"]
    inputs, targets = (np.stack([test[i][key] for i in range(len(test))]) for key in ("inputs", "targets"))
    linear = timeseries.fit_linear_forecaster(
        timeseries.window_batches(make_sources(config, data_dir)["train"]), "dlinear"
    )
    reference = metrics.forecast_metrics(linear.forecast(inputs), targets)
    dlinear = results[-1]
    assert dlinear.metrics["mse"] == pytest.approx(reference["mse"], rel=1e-6)
    assert dlinear.metrics["mae"] == pytest.approx(reference["mae"], rel=1e-6)
    assert dlinear.per_example["mse"].shape == (len(test),)


def test_errors_to_metrics_equal_forecast_metrics():
    rng = np.random.default_rng(3)
    forecasts, targets = rng.normal(size=(2, 6, 200, 3))
    error = forecasts - targets
    ours = timeseries.errors_to_metrics((error**2).mean(2), np.abs(error).mean(2))
    reference = metrics.forecast_metrics(forecasts, targets)
    assert ours.keys() == reference.keys()
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], rel=1e-12)


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error():
    window = np.frombuffer(b"ACGTACGT", np.uint8)[None]
    for k in (0, 9, True):
        with pytest.raises(ValueError, match="k must be an int in"):
            genomic.kmer_frequencies(window, k)
    with pytest.raises(ValueError, match="shorter than k"):
        genomic.kmer_frequencies(window[:, :3], 4)
    with pytest.raises(ValueError, match="train split is empty"):
        genomic.fit_evaluate(np.zeros((0, 2)), np.zeros(0), np.zeros((2, 2)), np.zeros(2), 2)
    with pytest.raises(ValueError, match="evaluation split is empty"):
        genomic.fit_evaluate(np.eye(2), np.arange(2), np.zeros((0, 2)), np.zeros(0), 2)
    with pytest.raises(ValueError, match="order must be an int"):
        KneserNeyBytes([b"abc"], order=0)
    with pytest.raises(ValueError, match="hold no byte"):
        KneserNeyBytes([], order=3)
    with pytest.raises(ValueError, match="hold no byte"):
        documents.ngram_document_bits([b""], [b"abc"], order=3)
    with pytest.raises(ValueError, match="compressor must be one of"):
        documents.compressor_document_bits([b"abc"], "zip")
    with pytest.raises(ValueError, match="longer than the series"):
        timeseries.windows_from_series(np.zeros((10, 1)), lookback=8, horizon=4)
    with pytest.raises(ValueError, match="period must lie in"):
        timeseries.seasonal_naive_forecasts(np.zeros((1, 8, 1)), horizon=4, period=24)
    with pytest.raises(ValueError, match="no train window"):
        timeseries.fit_linear_forecaster([], "dlinear")
    with pytest.raises(ValueError, match="kind must be one of"):
        timeseries.fit_linear_forecaster([], "linear")
