"""experiments/context_use.py (issue 18 §1, §5) end to end at smoke size on the embedded document sample:
trains two variants on the protocol, scores the test documents by position (carried and reset), writes
the table, JSON, plots and the truncation cost, and reads its cached evaluations back on a rerun (another
BPE vocabulary: no scoring again; a cache of another format: refused). And perplexity per BPE token
(`seqjax.experiment.bpe_perplexity`) on hand-made per-byte losses and tokenizations."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from seqjax.experiment.bpe_perplexity import (
    BYTE_LOSS_FORMAT,
    ByteLosses,
    bpe_position_sums,
    load_byte_losses,
    perplexity_curve,
    save_byte_losses,
    token_boundaries,
)
from seqjax.experiment.outputs import code_version
from tests.driver_helpers import ROOT, driver_env, rule_class, run_driver


def _losses(per_document: list[dict[int, float]], ids: list[str] | None = None) -> ByteLosses:
    """`ByteLosses` from {byte offset: nats} per document."""
    document = np.concatenate([np.full(len(d), i) for i, d in enumerate(per_document)]).astype(np.int64)
    offsets = np.concatenate([sorted(d) for d in per_document]).astype(np.int64)
    nll = np.concatenate([[d[o] for o in sorted(d)] for d in per_document]).astype(np.float32)
    return ByteLosses.from_targets(
        {"document": document, "offset": offsets, "bytes": np.ones_like(offsets), "nll": nll},
        ids or [f"doc{i}" for i in range(len(per_document))],
    )


def test_bpe_perplexity_is_the_chain_rule_with_tokens_in_their_first_bytes_bucket():
    rng = np.random.default_rng(0)
    # Two documents of 10 bytes, tokens [0,2) [2,5) [5,6) [6,10); buckets [0, 4) and [4, inf). The model
    # scores offsets 1..10 (10: the next document's first byte, outside the text) of the first, and
    # only 1..7 of the second (a bound on its tokens: the last token is cut).
    nats = [{o: float(rng.uniform(0.1, 3.0)) for o in range(1, 11)}, {}]
    nats[1] = {o: float(rng.uniform(0.1, 3.0)) for o in range(1, 8)}
    bounds = [np.array([0, 2, 5, 6, 10])] * 2
    sums = bpe_position_sums(_losses(nats), bounds, edges=(0, 4))

    def bits(d: int, first: int, stop: int) -> float:
        return sum(nats[d][o] for o in range(first, stop)) / math.log(2)

    # document 0: [0,2) is partly scored (its byte 0 is never a target): out; [2,5) straddles the edge
    # at 4 and goes whole to its first byte's bucket, 0; [5,6) and [6,10) -> bucket 1.
    np.testing.assert_array_equal(sums["bucket_tokens"][0], [1, 2])
    np.testing.assert_array_equal(sums["bucket_bytes"][0], [3, 5])
    np.testing.assert_allclose(
        sums["bucket_nll"][0] / math.log(2), [bits(0, 2, 5), bits(0, 5, 10)], rtol=1e-6
    )
    assert sums["partial_tokens"][0] == 1 and sums["excluded_bytes"][0] == 2  # byte 1 and offset 10
    # document 1: the last token [6,10) has only bytes 6 and 7 scored: out, with them
    np.testing.assert_array_equal(sums["bucket_tokens"][1], [1, 1])
    np.testing.assert_allclose(sums["bucket_nll"][1] / math.log(2), [bits(1, 2, 5), bits(1, 5, 6)], rtol=1e-6)
    assert sums["partial_tokens"][1] == 2 and sums["excluded_bytes"][1] == 3  # bytes 1, 6 and 7

    curve = perplexity_curve([sums], (0, 4), n_resamples=50)
    expected = [
        2 ** ((bits(0, 2, 5) + bits(1, 2, 5)) / 2),
        2 ** ((bits(0, 5, 10) + bits(1, 5, 6)) / 3),
    ]
    got = [b["perplexity"]["estimate"] for b in curve["buckets"]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    overall = 2 ** ((bits(0, 2, 10) + bits(1, 2, 6)) / 5)
    assert curve["overall"]["perplexity"]["estimate"] == pytest.approx(overall, rel=1e-6)
    assert curve["overall"]["tokens"] == 5 and curve["overall"]["label"] == "all"
    for row in (*curve["buckets"], curve["overall"]):
        assert row["perplexity"]["low"] <= row["perplexity"]["estimate"] <= row["perplexity"]["high"]
    # Per byte the same bits give another perplexity: the unit matters.
    per_byte = 2 ** ((bits(0, 2, 10) + bits(1, 2, 6)) / 12)
    assert not math.isclose(per_byte, overall, rel_tol=0.1)


def test_bpe_tokens_of_a_trained_tokenizer_cover_each_document(tmp_path):
    from seqjax.data.bpe import train_bpe

    train = [b"def add(a, b):\n    return a + b\n" * 20, "naïve café, déjà vu\n".encode() * 20]
    test = [b"def sub(a, b):\n    return a - b\n", "café déjà\n".encode()]
    tokenizer = train_bpe(train, 300)
    bounds = token_boundaries(tokenizer, test)
    assert [int(b[-1]) for b in bounds] == [len(t) for t in test]
    assert all(np.all(np.diff(b) > 0) for b in bounds) and len(bounds[0]) - 1 < len(test[0])  # merges
    again = token_boundaries(train_bpe(train, 300), test)  # deterministic: the same tokens
    assert all(np.array_equal(a, b) for a, b in zip(bounds, again, strict=True))
    # With one byte loss of 1 bit per scored byte, a whole token costs exactly its length in bits.
    losses = _losses([{o: math.log(2) for o in range(1, len(t))} for t in test])
    sums = bpe_position_sums(losses, bounds, edges=(0,))
    np.testing.assert_allclose(sums["bucket_nll"][:, 0] / math.log(2), sums["bucket_bytes"][:, 0])
    assert np.all(sums["bucket_bytes"][:, 0] + sums["excluded_bytes"] == [len(t) - 1 for t in test])


def test_byte_loss_cache_round_trip_and_refusals(tmp_path):
    losses = _losses([{1: 0.5, 2: 1.5}, {1: 2.0}], ids=["a", "b"])
    path = tmp_path / "byte_losses_reset.npz"
    save_byte_losses(path, losses)
    back = load_byte_losses(path)
    assert back.document_ids == ("a", "b") and back.max_tokens is None
    np.testing.assert_array_equal(back.starts, [0, 2, 3])
    np.testing.assert_array_equal(back.offsets, losses.offsets)
    np.testing.assert_array_equal(back.nll, losses.nll)
    assert back.nll.dtype == np.float32
    np.testing.assert_allclose(back.document_nats(), [2.0, 2.0])
    back.check_documents(["a", "b"], "test")
    with pytest.raises(ValueError, match="other documents"):
        back.check_documents(["a", "c"], "test")
    with pytest.raises(ValueError, match="other documents"):
        back.check_documents(["a"], "test")
    with np.load(path) as saved:
        fields = dict(saved)
    np.savez(path, **(fields | {"format": np.asarray(BYTE_LOSS_FORMAT + 1)}))
    with pytest.raises(ValueError, match="format"):
        load_byte_losses(path)
    targets = {"document": np.zeros(2, np.int64), "offset": np.array([1, 3]), "nll": np.ones(2)}
    with pytest.raises(ValueError, match="byte-level"):
        ByteLosses.from_targets(targets | {"bytes": np.array([1, 2])}, ["a"])
    with pytest.raises(ValueError, match="sorted"):
        ByteLosses.from_targets(targets | {"offset": np.array([3, 1]), "bytes": np.ones(2)}, ["a"])
    with pytest.raises(ValueError, match="same documents"):
        bpe_position_sums(losses, [np.array([0, 3])], edges=(0,))


@pytest.mark.slow
def test_context_use_smoke_run(tmp_path):
    args = [
        "--size=smoke",
        "--variants=lstm@64,lstm@32:segment_recurrence=True",
        "--options=corpus=python_docs",  # the embedded sample: 2 test documents
        "--tokens_per_batch=512",
        "--position_buckets=0,64,128,256",
        "--contrast=128,0",
        "--claim_bucket=128",
        "--min_document_bytes=256",
        "--max_document_tokens=512",
        "--resamples=200",
        "--nostep_memory",
    ]
    results = run_driver("context_use.py", tmp_path, *args, "--bpe_vocab_size=512")
    assert results["documents"]["qualifying"] == results["documents"]["total"] == 2
    plain, recurrent = results["variants"]["lstm@64"], results["variants"]["lstm@32:segment_recurrence=True"]
    assert list(plain["modes"]) == ["reset"] and list(recurrent["modes"]) == ["carried", "reset"]
    assert plain["batch_size"] == 8 and recurrent["batch_size"] == 16  # equal tokens per batch
    assert plain["train_tokens"] == recurrent["train_tokens"] == 1024
    assert abs(plain["parameters"] / recurrent["parameters"] - 1) <= 0.05
    words = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}

    def judged(interval, direction, words):  # the rule's word for a difference over documents, restated
        if not (math.isfinite(interval["low"]) and math.isfinite(interval["high"])):
            return "inconclusive"  # fewer than 2 documents: no interval
        if interval["documents"] < 10:
            return f"not judged ({interval['documents']} documents, fewer than 10)"
        return words[rule_class(direction, interval["low"], interval["high"])]

    truncation_words = {"claimed": "costs", "opposite": "helps", "neither": "no measurable cost"}
    for row in (plain, recurrent):
        assert row["seeds"] == 2
        for curve in row["modes"].values():
            assert [b["label"] for b in curve["buckets"]] == ["0-64", "64-128", "128-256", "256+"]
            for b in curve["buckets"]:
                assert (
                    b["bits_per_byte"]["low"] <= b["bits_per_byte"]["estimate"] <= b["bits_per_byte"]["high"]
                )
            # rule 1: the late bucket's bpb minus the early one's lies below zero; over the smoke's 2
            # documents (each its own cluster, fewer than the rule's 10) the interval is not judged
            contrast = curve["contrast"]
            assert (contrast["late"], contrast["early"]) == ("128-256", "0-64")
            assert (
                curve["verdict"]
                == judged(contrast, "less", words)
                == "not judged (2 documents, fewer than 10)"
            )
    # rule 2 needs an attention variant; rule 3 compares the segment-recurrent lstm with the full one
    assert results["rule2"]["verdict"] == "inconclusive" and "attention" in results["rule2"]["note"]
    cost = results["truncation"]["lstm@32:segment_recurrence=True"]
    assert cost["full"] == "lstm@64" and cost["mode"] == "carried" and len(cost["buckets"]) == 4
    assert all(math.isfinite(b["low"]) for b in cost["buckets"])
    # rule 3's class of bpb(truncated) - bpb(full) (above zero costs, below zero helps): over 2
    # documents, not judged
    for b in cost["buckets"]:
        assert (
            b["class"] == judged(b, "greater", truncation_words) == "not judged (2 documents, fewer than 10)"
        ), b
    # the n-gram control, scored by position on the same documents and spans as the models
    assert list(results["baselines"]) == ["3-gram Kneser–Ney", "5-gram Kneser–Ney"]
    for curve in results["baselines"].values():
        reached = [b["documents"] for b in curve["buckets"]]
        assert reached == [b["documents"] for b in plain["modes"]["reset"]["buckets"]]
        assert (
            curve["buckets"][0]["bits_per_byte"]["estimate"]
            < plain["modes"]["reset"]["buckets"][0]["bits_per_byte"]["estimate"]
        )  # 2 training steps: the n-gram model is far ahead
    text = (tmp_path / "out.md").read_text()
    assert "| 5-gram Kneser–Ney (baseline) |" in text
    assert "**2 of 2** have at least 256 scored bytes" in text and "## (3) What truncation costs" in text
    for suffix in ("_bpb.png", "_perplexity.png"):
        assert (tmp_path / f"out{suffix}").stat().st_size > 1000
    for seed in (0, 1):  # every seed's per-document sums and per-byte losses are cached for a rerun
        assert list((tmp_path / "runs" / "L32").glob(f"*/lr*/seed{seed}/positions_carried.npz"))
        assert list((tmp_path / "runs" / "L32").glob(f"*/lr*/seed{seed}/byte_losses_carried.npz"))
    # perplexity per BPE token: a BPE of the train split, every bucket and all of them, with intervals
    bpe = results["bpe"]
    assert bpe["vocab_size"] == 512 and bpe["corpus"] == "python_docs" and bpe["train_documents"] > 0
    assert bpe["tokens"] > 0 and 1 < bpe["bytes_per_token"] < 8
    scored = results["documents"]["qualifying_bytes"]
    assert bpe["bytes"] + bpe["excluded_bytes"] == scored  # counted or left out, every scored byte
    assert bpe["partial_tokens"] <= 2 * results["documents"]["qualifying"]  # a first and a last per document
    for row in (plain, recurrent):
        for curve in row["modes"].values():
            per_token = curve["bpe"]
            assert [b["label"] for b in per_token["buckets"]] == ["0-64", "64-128", "128-256", "256+"]
            assert per_token["overall"]["tokens"] == bpe["tokens"]
            for b in (*per_token["buckets"], per_token["overall"]):
                assert b["perplexity"]["low"] <= b["perplexity"]["estimate"] <= b["perplexity"]["high"]
                # a BPE token is several bytes: its perplexity is above the per-byte one
            byte_ppl = 2 ** curve["buckets"][1]["bits_per_byte"]["estimate"]
            assert per_token["buckets"][1]["perplexity"]["estimate"] > byte_ppl
    assert "## Perplexity per BPE token by position" in text and "18.3 vs 24.7" in text
    assert "vocabulary 512" in text

    # A rerun with another vocabulary re-tabulates from the caches: nothing is scored again.
    caches = sorted((tmp_path / "runs").rglob("byte_losses_*.npz"))
    stamps = [p.stat().st_mtime_ns for p in caches]
    again = run_driver("context_use.py", tmp_path, *args, "--bpe_vocab_size=300")
    assert [p.stat().st_mtime_ns for p in caches] == stamps
    assert again["bpe"]["vocab_size"] == 300 and again["bpe"]["bytes_per_token"] < bpe["bytes_per_token"]
    assert again["variants"]["lstm@64"]["modes"]["reset"]["buckets"] == plain["modes"]["reset"]["buckets"]

    # A cache in another format is refused, not read as this one.
    with np.load(caches[0]) as saved:
        fields = dict(saved)
    np.savez(caches[0], **(fields | {"format": np.asarray(0)}))
    command = [sys.executable, str(ROOT / "experiments" / "context_use.py"), *args]
    command += [f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'refused'}"]
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0 and "format 0" in done.stderr and str(caches[0]) in done.stderr
    assert not (tmp_path / "refused.json").exists()
    assert json.loads((tmp_path / "out.json").read_text())["bpe"]["vocab_size"] == 300


def test_the_default_variants_hold_issue_18s_language_models():
    from tests.driver_helpers import load_driver

    driver = load_driver("context_use.py")
    context = driver.default_variants("context", "cpu", 16384)
    presets = {name.split("@")[0] for name in context}
    assert {"lstm", "elstm", "mamba", "gla", "s5", "attention", "swa", "xl_attention"} <= presets
    assert {int(name.split("@")[1].split(":")[0]) for name in context if ":" not in name} == {1024, 4096}
    assert "lstm@16384:tbptt_length=256" in driver.default_variants("truncation", "cpu", 16384)


def test_reused_crossover_runs_without_checkpoints_are_trained_again_and_checked(tmp_path):
    """`--reuse_runs` on a crossover whose runs were carried (no checkpoints): each scored seed is trained
    again in context_use's own workdir, must reproduce its record, and is scored from there; the
    crossover's folder is only read. The crossover matched parameters among all of its models, so reading
    one of them back matches among the same set (else the digests differ). A record the retraining does
    not reproduce is refused, naming both folders."""
    import shutil

    budget = ["--size=smoke", "--options=corpus=python_docs", "--tokens_per_batch=512", "--nostep_memory"]
    crossover = [sys.executable, str(ROOT / "experiments" / "length_crossover.py"), *budget]
    crossover += ["--config=configs/documents.py", "--presets=lstm,attention", "--lengths=64"]
    crossover += ["--claim_from=64", "--resamples=100", f"--workdir={tmp_path / 'crossover'}"]
    crossover += [f"--out={tmp_path / 'crossover_out'}"]
    done = subprocess.run(crossover, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    seed1 = next((tmp_path / "crossover" / "L64" / "lstm").glob("lr*/seed1"))
    shutil.rmtree(seed1 / "checkpoints")  # as scripts/carry_runs.py carries it
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "crossover").rglob("*") if p.is_file()}

    scoring = [*budget, "--variants=lstm@64", f"--reuse_runs={tmp_path / 'crossover'}"]
    scoring += ["--position_buckets=0,64,128", "--contrast=64,0", "--claim_bucket=64", "--resamples=100"]
    scoring += ["--min_document_bytes=128", "--max_document_tokens=256", "--bpe_vocab_size=0"]
    results = run_driver("context_use.py", tmp_path, *scoring)
    assert results["variants"]["lstm@64"]["seeds"] == 2
    retrained = tmp_path / "runs" / "retrained" / "L64" / "lstm" / seed1.parent.name / "seed1"
    original = json.loads((seed1 / "run.json").read_text())
    again = json.loads((retrained / "run.json").read_text())
    assert again["validation"] == original["validation"]  # the same run, bit for bit on one machine
    # each record says which code trained it, with which JAX, and when
    assert again["code_version"] == code_version() and again["jax_version"] == original["jax_version"]
    assert again["finished_utc"].endswith(" UTC") and again["finished_utc"] >= original["finished_utc"]
    assert list(retrained.glob("positions_reset.npz"))  # scored from the retrained parameters
    assert not list(seed1.glob("positions_*.npz"))  # seed 0 kept its checkpoint: scored in place
    assert list(seed1.parent.parent.glob("lr*/seed0/positions_reset.npz"))
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "crossover").rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before  # nothing of the crossover rewritten
    assert all(p.name.startswith("positions_") for p in set(after) - set(before))

    # a record that the retraining does not reproduce (another machine, another code) is refused; the
    # retrained run is read back rather than trained a third time (the refusal compares the two records)
    record = json.loads((seed1 / "run.json").read_text())
    record["validation"]["bits_per_byte"] += 0.1
    (seed1 / "run.json").write_text(json.dumps(record))
    command = [sys.executable, str(ROOT / "experiments" / "context_use.py"), *scoring]
    command += [f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'refused'}"]
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0 and "not the same run" in done.stderr and str(seed1) in done.stderr
    assert not (tmp_path / "refused.json").exists()


def test_plots_are_redrawn_from_a_results_json(tmp_path):
    """`--replot`'s path: the committed truncation results redrawn without training or scoring, the
    legend beside the axes (6 variants and 2 baselines would hide curves inside them)."""
    from tests.driver_helpers import load_driver

    driver = load_driver("context_use.py")
    results = json.loads((ROOT / "experiments/results/context_use_truncation_cpu_cpu.json").read_text())
    driver.draw_plots(tmp_path / "out", results)
    for suffix in ("_bpb.png", "_perplexity.png"):
        assert (tmp_path / f"out{suffix}").stat().st_size > 1000


def test_replot_without_a_results_json_names_the_file(tmp_path):
    """`--replot` of an --out that holds no results: a usage error naming the JSON it looked for, and
    nothing drawn."""
    command = [sys.executable, str(ROOT / "experiments" / "context_use.py"), "--replot"]
    command += [f"--out={tmp_path / 'nothing'}"]
    done = subprocess.run(command, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"--replot: no {tmp_path / 'nothing.json'}" in done.stderr
    assert list(tmp_path.iterdir()) == []
