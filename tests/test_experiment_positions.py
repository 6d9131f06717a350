"""seqjax.experiment.positions: bits per byte and perplexity by position in the document, with
intervals over documents and seeds, and the late-minus-early contrast; and its plot.

Synthetic per-document bucket sums with known bits per byte per bucket: the estimates equal the ratio
of sums (mean over seeds), the intervals cover the known values, the contrast has the right sign, and
bad input is refused with a message naming the fix.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from seqjax.experiment.positions import bucket_label, position_curve

EDGES = (0, 1024, 2048, 4096)
TRUE_BPB = np.array([3.0, 2.5, 2.0, 1.5])  # falls with position: the model uses the context
BYTES_PER_TOKEN = 4.0


def _sums(seeds: int = 3, documents: int = 40, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per seed {"bucket_nll", "bucket_tokens", "bucket_bytes"} [documents, 4]: documents of 500 to 6000
    bytes (the short ones never reach the later buckets), each bucket's NLL its bytes x TRUE_BPB x ln 2
    times document-level noise (mean 1) and a little seed-level noise."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(500, 6000, documents)
    stops = np.array([*EDGES[1:], np.inf])
    size = np.clip(lengths[:, None] - np.array(EDGES)[None, :], 0, stops - np.array(EDGES)).astype(np.float64)
    document_noise = rng.uniform(0.8, 1.2, (documents, 1))
    out = []
    for _ in range(seeds):
        noise = document_noise * rng.uniform(0.98, 1.02, (documents, len(EDGES)))
        nll = size * TRUE_BPB * math.log(2) * noise
        out.append({"bucket_nll": nll, "bucket_tokens": size / BYTES_PER_TOKEN, "bucket_bytes": size})
    return out


def test_estimates_are_ratios_of_sums_and_intervals_cover_the_known_values():
    sums = _sums()
    curve = position_curve(sums, EDGES, contrast=(2048, 0), n_resamples=1000)
    assert curve["edges"] == list(EDGES) and curve["seeds"] == 3 and curve["confidence_level"] == 0.95
    size = sums[0]["bucket_bytes"]
    for k, bucket in enumerate(curve["buckets"]):
        reached = size[:, k] > 0
        assert bucket["documents"] == int(reached.sum()) and bucket["bytes"] == size[:, k].sum()
        direct = np.mean([s["bucket_nll"][:, k].sum() / size[:, k].sum() / math.log(2) for s in sums])
        bpb = bucket["bits_per_byte"]
        assert bpb["estimate"] == pytest.approx(direct, rel=1e-12)
        assert bpb["low"] < TRUE_BPB[k] < bpb["high"], (k, bpb)
        assert bpb["low"] < bpb["estimate"] < bpb["high"]
        # Perplexity per token: exp(nats per token) = exp(bpb x ln 2 x bytes per token), interval mapped.
        ppl = bucket["perplexity"]
        assert ppl["estimate"] == pytest.approx(math.exp(direct * math.log(2) * BYTES_PER_TOKEN), rel=1e-9)
        assert ppl["low"] < ppl["estimate"] < ppl["high"]
    assert [b["label"] for b in curve["buckets"]] == ["0-1k", "1k-2k", "2k-4k", "4k+"]
    assert [b["midpoint"] for b in curve["buckets"]] == [512, 1536, 3072, 6144]
    assert curve["buckets"][0]["documents"] == 40 > curve["buckets"][3]["documents"] > 2
    # The late bucket predicts better: bpb(2-4k) - bpb(0-1k) is about -1.0, its interval below zero.
    contrast = curve["contrast"]
    assert (contrast["late"], contrast["early"]) == ("2k-4k", "0-1k")
    assert contrast["documents"] == int((size[:, 2] > 0).sum())
    assert contrast["high"] < 0 and contrast["low"] < -1.0 < contrast["high"]
    reverse = position_curve(sums, EDGES, contrast=(0, 2048), n_resamples=1000)["contrast"]
    assert reverse["estimate"] == pytest.approx(-contrast["estimate"]) and reverse["low"] > 0


def test_the_contrast_is_paired_within_documents():
    # Document difficulty varies a lot (x0.5 to x1.5) but equally at every position: the paired contrast
    # stays narrow, much narrower than either bucket's interval.
    sums = _sums(seeds=1)
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 1.5, (40, 1))
    sums[0]["bucket_nll"] = sums[0]["bucket_nll"] * scale
    curve = position_curve(sums, EDGES, contrast=(1024, 0), n_resamples=500)
    width = curve["contrast"]["high"] - curve["contrast"]["low"]
    bucket = curve["buckets"][0]["bits_per_byte"]
    assert width < 0.5 * (bucket["high"] - bucket["low"])


def test_sparse_buckets_have_no_interval():
    sums = _sums(seeds=2, documents=5)
    for s in sums:  # only document 0 reaches 4k+; nothing reaches a bucket past 1M
        for key in s:
            s[key] = np.concatenate([s[key], np.zeros((5, 1))], axis=1)
            s[key][1:, 3] = 0.0
        s["bucket_bytes"][0, 3] = 100.0
        s["bucket_nll"][0, 3] = 100.0 * math.log(2)
        s["bucket_tokens"][0, 3] = 25.0
    curve = position_curve(sums, (*EDGES, 1 << 20), contrast=(4096, 0), n_resamples=100)
    one, empty = curve["buckets"][3], curve["buckets"][4]
    assert one["documents"] == 1 and one["bits_per_byte"]["estimate"] == pytest.approx(1.0)
    assert math.isnan(one["bits_per_byte"]["low"]) and math.isnan(one["perplexity"]["high"])
    assert empty["documents"] == 0 and math.isnan(empty["bits_per_byte"]["estimate"])
    assert curve["contrast"]["documents"] == 1 and math.isnan(curve["contrast"]["low"])


@pytest.mark.parametrize(
    ("edges", "contrast", "change", "message"),
    [
        ((0, 2048, 1024, 4096), None, None, "strictly increase"),
        ((1, 1024, 2048, 4096), None, None, "start at 0"),
        ((0, 1024, 2048), None, None, "expected \\[documents, 3\\]"),
        (EDGES, (3000, 0), None, "not a bucket start"),
        (EDGES, (0, 0), None, "with itself"),
        (EDGES, None, "tokens", "same documents and targets"),
        (EDGES, None, "missing", "by_document=True"),
    ],
)
def test_bad_input_is_refused(edges, contrast, change, message):
    sums = _sums(seeds=2)
    if change == "tokens":
        sums[1]["bucket_tokens"] = sums[1]["bucket_tokens"] + 1
    if change == "missing":
        del sums[1]["bucket_bytes"]
    with pytest.raises(ValueError, match=message):
        position_curve(sums, edges, contrast=contrast, n_resamples=10)


def test_bucket_labels():
    assert [bucket_label((0, 1024, 2048, 4096, 8192, 16384), i) for i in range(6)] == [
        "0-1k",
        "1k-2k",
        "2k-4k",
        "4k-8k",
        "8k-16k",
        "16k+",
    ]


def test_metric_by_position_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from seqjax.experiment.plots import metric_by_position

    curves = {
        "lstm 4k, carried": position_curve(_sums(), EDGES, n_resamples=50),
        "lstm 4k, reset": position_curve(_sums(seed=1), EDGES, n_resamples=50),
    }
    path = metric_by_position(curves, tmp_path / "positions.png", title="bpb by position")
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert metric_by_position(curves, tmp_path / "ppl.png", metric="perplexity").exists()
    with pytest.raises(ValueError, match="metric"):
        metric_by_position(curves, tmp_path / "x.png", metric="accuracy")
