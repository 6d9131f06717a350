"""The experiment protocol (issue 15): budgets, the learning-rate choice, saved predictions with their
clusters, intervals and paired differences from saved predictions, verdicts, and a smoke run of the
length-crossover driver end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqjax.config import apply_overrides, load_config_file
from seqjax.experiment import bits_per_byte, protocol, report, statistics
from seqjax.experiment.clusters import example_clusters
from seqjax.experiment.predictions import RunPredictions, read_predictions, write_predictions
from seqjax.experiment.report import Claim, judge, metric_interval, paired_difference
from seqjax.experiment.summary import best_by_family
from tests.driver_helpers import assert_claim_follows_summaries, driver_env, rule_class, rule_verdict
from tests.train_subprocess import refusal_line

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# Budget: equal tokens, and a schedule that ends at the budget.


def test_budget_steps_and_warmup():
    settings = protocol.ProtocolSettings(train_tokens=10_000, warmup_fraction=0.1)
    assert settings.total_steps(tokens_per_batch=1024) == 10  # ceil: the budget is spent, never cut short
    assert settings.total_steps(tokens_per_batch=10_000) == 1
    assert settings.warmup_steps(10) == 1 and settings.warmup_steps(100) == 10
    with pytest.raises(ValueError, match="learning_rates"):
        protocol.ProtocolSettings(train_tokens=10, learning_rates=())
    with pytest.raises(ValueError, match="warmup_fraction"):
        protocol.ProtocolSettings(train_tokens=10, warmup_fraction=1.0)


def test_run_config_has_cosine_ending_at_the_budget_and_no_time_limit():
    from seqjax.train.optimizer import make_schedule
    from seqjax.train.run_config import resolve

    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 40, warmup_fraction=0.05)
    config = resolve(protocol._run_config(base, settings, 3e-3, seed=4, tokens_per_batch=8 * 1024))
    assert config.total_steps == 40 and config.optimizer.total_steps == 40
    assert config.max_train_seconds is None and config.seed == 4
    schedule = make_schedule(3e-3, {**config.optimizer.__dict__})
    assert float(schedule(config.optimizer.warmup_steps)) == pytest.approx(3e-3)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-9)  # the decay ends exactly at the budget


def test_learning_rate_is_chosen_on_validation():
    def record(lr, validation, test):
        return protocol.RunRecord(
            "m", lr, 0, 1, 1, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"bpb": validation}, {"bpb": test}, "w"
        )

    grid = [record(1e-3, 2.0, 1.0), record(3e-3, 1.5, 9.0), record(1e-2, 1.5, 0.1)]
    # lower is better: 3e-3 and 1e-2 tie on validation; the smaller rate wins; test values are ignored
    assert protocol._choose(grid, "bpb", larger=False).learning_rate == 3e-3
    assert protocol._choose(grid, "bpb", larger=True).learning_rate == 1e-3
    # a run whose metric is not finite is never chosen over a finite one, wherever it is in the grid
    # (sorting by NaN leaves the order to the grid's: 1e-3 used to win here)
    for position in range(3):
        diverged = [record(1e-3, 2.0, 0.0), record(1e-2, 1.0, 0.0)]
        diverged.insert(position, record(3e-3, float("nan"), 0.0))
        assert protocol._choose(diverged, "bpb", larger=True).learning_rate == 1e-3
        assert protocol._choose(diverged, "bpb", larger=False).learning_rate == 1e-2


def test_a_rate_on_the_grid_edge_extends_the_grid(tmp_path, monkeypatch):
    # validation balanced accuracy peaks at 3e-2: 1e-2 (the top of the grid) is chosen first, so the
    # grid grows to 3e-2, which wins; its seeds train there. Another extension is not allowed.
    score = {1e-3: 0.3, 3e-3: 0.4, 1e-2: 0.5, 3e-2: 0.6, 1e-1: 0.9}
    trained = []

    def fake_train_once(model, config, settings, lr, seed, tokens_per_batch, folder, length, path, log, **kw):
        trained.append((lr, seed))
        return protocol.RunRecord(
            model, lr, seed, 1, 1, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"balanced_accuracy": score[lr]}, None, "w"
        )

    monkeypatch.setattr(protocol, "_train_once", fake_train_once)
    monkeypatch.setattr(protocol, "_test_from_checkpoint", lambda name, c, s, chosen, *a: chosen)
    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8192, learning_rates=(1e-3, 3e-3, 1e-2), seeds=2)
    result = protocol.run_comparison({"lstm": config}, settings, tmp_path, length=1024)["lstm"]
    assert [r.learning_rate for r in result.grid] == [1e-3, 3e-3, 1e-2, 3e-2]
    assert result.learning_rate == 3e-2 and trained[-1] == (3e-2, 1)
    none = dataclasses.replace(settings, grid_extensions=0)
    unextended = protocol.run_comparison({"lstm": config}, none, tmp_path, length=1024)["lstm"]
    assert unextended.learning_rate == 1e-2
    with pytest.raises(ValueError, match="grid_extensions"):
        dataclasses.replace(settings, grid_extensions=-1)


def test_a_grid_run_keeps_its_test_outputs_only_while_validation_could_choose_it(tmp_path, monkeypatch):
    # the grid in the order it trains: 1e-3, 3e-3 (beaten by 1e-3), 1e-2 (best so far), then the edge
    # extension 3e-2, which ties 1e-2 (a tie goes to the smaller rate: beaten); a run whose metric is
    # not finite comes after every finite one
    score = {1e-3: 0.5, 3e-3: 0.4, 1e-2: 0.7, 3e-2: 0.7}
    decided = {}

    def fake_train_once(model, config, settings, lr, seed, tokens_per_batch, folder, length, path, log, **kw):
        record = protocol.RunRecord(
            model, lr, seed, 1, 1, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"balanced_accuracy": score[lr]}, None, "w"
        )
        decided[lr] = kw["keep_test"](record)
        return record

    monkeypatch.setattr(protocol, "_train_once", fake_train_once)
    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8192, learning_rates=(1e-3, 3e-3, 1e-2))
    args = ("lstm", config, settings, tmp_path)
    kwargs = {"length": 1024, "tokens_per_batch": 8192}
    _, chosen = protocol.tune_learning_rate(*args, **kwargs)
    assert chosen.learning_rate == 1e-2 and decided[1e-2]  # the chosen run always keeps them
    assert decided == {1e-3: True, 3e-3: False, 1e-2: True, 3e-2: False}
    protocol.tune_learning_rate(*args, test_every_rate=True, **kwargs)  # e.g. stability's rate sensitivity
    assert all(decided.values())
    score[3e-3] = float("nan")
    _, chosen = protocol.tune_learning_rate(*args, **kwargs)
    assert chosen.learning_rate == 1e-2 and decided == {1e-3: True, 3e-3: False, 1e-2: True, 3e-2: False}
    score[1e-3] = float("nan")  # the first run keeps them whatever its metric
    protocol.tune_learning_rate(*args, **kwargs)
    assert decided == {1e-3: True, 3e-3: False, 1e-2: True, 3e-2: False}


def test_analytic_flops_count_attention_context():
    attention = load_config_file(ROOT / "configs/documents.py", "attention")
    lstm = load_config_file(ROOT / "configs/documents.py", "lstm")
    swa = load_config_file(ROOT / "configs/documents.py", "swa")
    n = 1000
    assert protocol.analytic_train_flops_per_token(lstm, n, 4096) == 6 * n
    assert protocol.analytic_train_flops_per_token(attention, n, 4096) == 6 * n + 2 * 6 * 64 * 4096
    window = int(swa.model.mixers["swa"]["window"])
    assert protocol.analytic_train_flops_per_token(swa, n, 4096) == 6 * n + 2 * 6 * 64 * window
    # Transformer-XL attends its memory only when segment recurrence carries it across batches.
    xl = load_config_file(ROOT / "configs/documents.py", "xl_attention,length=4096")
    assert protocol.analytic_train_flops_per_token(xl, n, 4096) == 6 * n + 2 * 6 * 64 * 4096
    xl.segment_recurrence = True
    assert protocol.analytic_train_flops_per_token(xl, n, 4096) == 6 * n + 2 * 6 * 64 * (4096 + 4096)


def test_apply_overrides_names_a_missing_key():
    config = load_config_file(ROOT / "configs/genomic.py", "lstm")
    assert apply_overrides(config, ["batch_size=2", "optimizer.clip_norm=None"]).batch_size == 2
    with pytest.raises(KeyError, match="unknown config key 'batch_sise'; did you mean 'batch_size'"):
        apply_overrides(config, ["batch_sise=2"])
    with pytest.raises(ValueError, match=r"dotted\.key=value"):
        apply_overrides(config, ["batch_size"])


# ----------------------------------------------------------------------------------------------------
# Saved predictions and their clusters.


class _Documents:
    """The attributes of a packed `DocumentSplit` that `example_clusters` reads."""

    packing = "packed"
    length = 4
    document_ids = ("a", "b", "c")
    _starts = np.array([0, 6, 7])
    _positions = np.array([0, 1, 2, 3])
    bytes_per_token = 2.0

    def __len__(self):
        return 4


def test_clusters_and_lm_predictions():
    source = _Documents()
    # sequences start at stream positions 0, 4, 8, 12: documents a, a, c, c
    assert example_clusters(source).tolist() == ["a", "a", "c", "c"]
    per_example = {"nll": np.array([4.0, 2.0, 1.0, 1.0]) * np.log(2.0), "tokens": np.array([4, 4, 4, 2])}
    run = protocol.run_predictions("lstm", 0, 4, "lm", per_example, source)
    assert run.targets.tolist() == [8.0, 8.0, 8.0, 4.0]  # bytes = tokens x bytes per token
    values = bits_per_byte(run.predictions, run.targets, np.ones((1, 4)))
    assert values[0] == pytest.approx(8.0 / 28.0)  # total bits over total bytes, not a mean of ratios
    # a BPE evaluation keeps each example's own target bytes: those, not tokens x the average
    with_bytes = {**per_example, "bytes": np.array([5, 9, 7, 3])}
    exact = protocol.run_predictions("lstm", 0, 4, "lm", with_bytes, source)
    assert exact.targets.tolist() == [5.0, 9.0, 7.0, 3.0]


def test_classification_predictions_keep_logits_and_cross_entropy():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    per_example = {"logits": logits, "label": np.array([0, 0, 1])}
    run = protocol.run_predictions("lstm", 1, 8, "classification", per_example, list(range(3)))
    expected = -np.log(np.exp(logits[[0, 1, 2], [0, 0, 1]]) / np.exp(logits).sum(-1))
    np.testing.assert_allclose(run.losses, expected)
    assert run.cluster_ids.tolist() == [0, 1, 2]  # no cluster information: each example its own
    with pytest.raises(ValueError, match="unknown task"):
        protocol.run_predictions("lstm", 1, 8, "regression", per_example, list(range(3)))


def _write_runs(folder: Path, model: str, correct: np.ndarray, seeds: int, rng: np.random.Generator):
    """Seeds of a classifier that is right where `correct` is True (up to a little seed noise)."""
    labels = np.arange(len(correct)) % 2
    paths = []
    for seed in range(seeds):
        flips = rng.random(len(correct)) < 0.02
        right = correct ^ flips
        predicted = np.where(right, labels, 1 - labels)
        logits = np.eye(2)[predicted].astype(np.float32)
        clusters = np.arange(len(correct)) // 10
        run = RunPredictions(
            model, seed, 64, np.arange(len(correct)), clusters, labels, logits, np.ones(len(correct))
        )
        paths.append(str(write_predictions(folder / model / f"seed{seed}.npz", run)))
    return paths


def test_paired_difference_and_verdicts_from_saved_predictions(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    strong = _write_runs(tmp_path, "lstm", rng.random(n) < 0.9, 5, rng)
    weak = _write_runs(tmp_path, "attention", rng.random(n) < 0.6, 5, rng)
    also_weak = _write_runs(tmp_path, "swa", rng.random(n) < 0.6, 5, rng)
    assert read_predictions(strong[0]).model == "lstm"

    def balanced_accuracy(paths):  # the seeds' mean balanced accuracy, by hand
        runs = [read_predictions(p) for p in paths]
        return np.mean(
            [np.mean([np.mean(r.predictions.argmax(-1)[r.targets == c] == c) for c in (0, 1)]) for r in runs]
        )

    interval = metric_interval(strong, "classification", n_resamples=300)
    assert interval.estimate == pytest.approx(balanced_accuracy(strong), abs=1e-12)
    assert interval.low < interval.estimate < interval.high and interval.n_clusters == n // 10
    claim = Claim("recurrent beats attention", "recurrent", "attention")
    better = paired_difference(strong, weak, "classification", n_resamples=300)
    assert better["estimate"] == pytest.approx(balanced_accuracy(strong) - balanced_accuracy(weak), abs=1e-12)
    assert better["low"] > 0 and better["p_value"] < 0.01 and "McNemar" in better["paired_test"]["name"]
    worse = paired_difference(weak, strong, "classification", n_resamples=300)
    assert worse["estimate"] == pytest.approx(-better["estimate"], abs=1e-12)
    tied = paired_difference(weak, also_weak, "classification", n_resamples=300)
    assert tied["low"] < 0 < tied["high"]
    assert judge(claim, {1024: better, 4096: better}, larger_is_better=True)["verdict"] == "supported"
    assert judge(claim, {1024: worse, 4096: worse}, larger_is_better=True)["verdict"] == "contradicted"
    assert judge(claim, {1024: better, 4096: worse}, larger_is_better=True)["verdict"] == "depends"
    assert judge(claim, {1024: better, 4096: tied}, larger_is_better=True)["verdict"] == "inconclusive"
    # lower-is-better metrics flip the claimed direction
    assert judge(claim, {1024: worse}, larger_is_better=False)["verdict"] == "supported"
    # Holm over the two keys: the smaller p-value doubled, the larger one kept (but never below it)
    holm = judge(claim, {1024: better, 4096: tied}, larger_is_better=True)["per_key"]
    first = min(1.0, 2 * better["p_value"])
    assert holm["1024"]["holm_p"] == pytest.approx(first)
    assert holm["4096"]["holm_p"] == pytest.approx(max(first, tied["p_value"]))
    assert better["p_value"] < tied["p_value"] < 1.0  # (so the second is not simply capped at 1)


def test_models_against_a_baseline_on_the_same_examples(tmp_path):
    from seqjax.baselines.result import BaselineResult
    from seqjax.experiment.summary import baseline_difference_table

    rng = np.random.default_rng(2)
    n = 400
    strong = _write_runs(tmp_path, "lstm", rng.random(n) < 0.9, 5, rng)
    labels = np.arange(n) % 2
    right = rng.random(n) < 0.6  # a baseline right 60% of the time
    kmer = BaselineResult(
        "k-mer", {}, {"prediction": np.where(right, labels, 1 - labels), "label": labels}, {}
    )
    ahead = report.baseline_difference(strong, kmer, "classification", n_resamples=300)

    # the estimate is the seeds' mean balanced accuracy minus the baseline's, on the same examples
    def balanced_accuracy(predicted):
        return np.mean([np.mean(predicted[labels == c] == c) for c in (0, 1)])

    own = np.mean([balanced_accuracy(read_predictions(p).predictions.argmax(-1)) for p in strong])
    base = balanced_accuracy(kmer.per_example["prediction"])
    assert ahead["estimate"] == pytest.approx(own - base) and ahead["low"] > 0 and ahead["p_value"] < 0.01
    # a baseline of other examples is refused; one without values for these examples gives None
    shuffled = BaselineResult("k-mer", {}, {"prediction": labels, "label": 1 - labels}, {})
    with pytest.raises(ValueError, match="scored other test examples"):
        report.baseline_difference(strong, shuffled, "classification", n_resamples=50)
    fewer = BaselineResult("k-mer", {}, {"prediction": labels[:10], "label": labels[:10]}, {})
    assert report.baseline_difference(strong, fewer, "classification", n_resamples=50) is None
    whole_documents = BaselineResult("5-gram", {}, {"bits": np.ones(n), "bytes": np.ones(n)}, {})
    assert report._baseline_values(whole_documents, "lm", n) is None  # not the models' windows
    table = baseline_difference_table(
        {
            "metric": "balanced_accuracy",
            "confidence_level": 0.95,
            "larger_is_better": True,
            "strongest_baseline": "k-mer",
            "against_strongest_baseline": {"lstm": ahead, "mamba": None, "s5": {"error": "other examples"}},
        }
    )
    assert "| lstm | +" in table and table.splitlines()[2].endswith("| the model |")
    assert "mamba" not in table and "| s5 | not paired: other examples |" in table


def test_bootstrap_p_value_is_two_sided():
    assert statistics.bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == 0.0
    assert statistics.bootstrap_p_value(np.array([-1.0, 1.0])) == 1.0
    assert statistics.bootstrap_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_best_of_each_family_is_chosen_on_validation():
    def result(name, validation, test):
        record = protocol.RunRecord(
            name, 1e-3, 0, 1, 1, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"acc": validation}, {"acc": test}, "w"
        )
        return protocol.ModelResult(name, [record], 1e-3, [record], [], 1.0, {})

    results = {
        "lstm": result("lstm", 0.6, 0.9),
        "mamba": result("mamba", 0.7, 0.1),
        "attention": result("attention", 0.5, 0.5),
    }
    assert best_by_family(results, "acc", larger=True) == {"recurrent": "mamba", "attention": "attention"}
    # a model whose mean is not finite (a diverged seed) comes after every finite one, met first or not
    diverged = {"gla": result("gla", float("nan"), 0.0), **results}
    assert best_by_family(diverged, "acc", larger=True)["recurrent"] == "mamba"
    assert best_by_family(diverged, "acc", larger=False)["recurrent"] == "lstm"
    assert best_by_family({"gla": result("gla", float("nan"), 0.0)}, "acc", larger=True) == {
        "recurrent": "gla"
    }
    assert report.family_of("longformer") == "attention" and report.family_of("elstm") == "recurrent"


def test_forecast_difference_reports_diebold_mariano(tmp_path):
    rng = np.random.default_rng(1)
    paths, mse = {}, {}
    for model, scale in (("lstm", 1.0), ("attention", 1.5)):
        paths[model], mse[model] = [], []
        for seed in range(3):
            truth = np.zeros((60, 4, 2), np.float32)
            forecast = truth + scale * rng.standard_normal(truth.shape).astype(np.float32)
            losses = np.mean(forecast.astype(np.float64) ** 2, axis=(1, 2))
            mse[model].append(np.mean((forecast.astype(np.float64) - truth) ** 2))
            run = RunPredictions(model, seed, 32, np.arange(60), np.arange(60) // 6, truth, forecast, losses)
            paths[model].append(str(write_predictions(tmp_path / model / f"{seed}.npz", run)))
    out = paired_difference(paths["lstm"], paths["attention"], "forecast", n_resamples=300)
    # the seeds' mean test MSE of each model, by hand, differenced; 10 blocks of 6 windows are resampled
    assert out["estimate"] == pytest.approx(np.mean(mse["lstm"]) - np.mean(mse["attention"]), rel=1e-6)
    assert out["n_clusters"] == 10
    assert out["high"] < 0 and "Diebold" in out["paired_test"]["name"]


# ----------------------------------------------------------------------------------------------------
# The driver end to end at smoke size: trains, saves predictions, tabulates, judges, plots, resumes.


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--presets=lstm,lstmm"], "configs/documents.py: unknown preset 'lstmm'; choose one of ["),
        (
            ["--presets=lstm", "--config_overrides=total_stepz=3"],
            "config override 'total_stepz=3': unknown config key 'total_stepz'; did you mean 'total_steps'",
        ),
    ],
    ids=["preset", "override"],
)
def test_a_driver_refuses_an_unknown_preset_or_key_in_one_line(tmp_path, args, message):
    """A driver given a preset or a config key that does not exist (a typo) names it and the fix, in one
    line with exit status 2, before any work (before: a traceback ending in a ValueError or KeyError)."""
    where = [f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}"]
    line = refusal_line("experiments/length_crossover.py", *args, "--size=smoke", *where, env=driver_env())
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("out*"))


@pytest.mark.slow
def test_length_crossover_smoke_run(tmp_path):
    env = driver_env()
    args = [
        sys.executable,
        str(ROOT / "experiments" / "length_crossover.py"),
        "--size=smoke",
        "--config=configs/genomic.py",
        "--options=task=species",
        "--presets=lstm,attention",
        "--lengths=256,512",
        "--tokens_per_batch=1024",
        "--claim_from=512",
        "--resamples=200",
        "--evaluation_examples=64",
        "--nostep_memory",
        f"--workdir={tmp_path / 'runs'}",
        f"--out={tmp_path / 'out'}",
    ]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    # two training steps: the verdict itself is chance, but it must be the rule's verdict of the paired
    # difference recorded at L = 512 (the claim covers L >= --claim_from only), of the best of each family
    assert list(results["verdict"]["per_key"]) == ["512"]
    assert_claim_follows_summaries(results["verdict"], results["summaries"], claim_from=512)
    for summary in results["summaries"]:
        assert summary["confidence_level"] == pytest.approx(1 - 0.05 / 2)  # Bonferroni over 2 lengths
        assert [r["model"] for r in summary["models"]] == ["lstm", "attention"]
        for row in summary["models"]:
            assert row["seeds"] == 2 and row["low"] <= row["estimate"] <= row["high"]
            assert abs(row["ratio"] - 1) <= 0.05 and row["train_tokens"] == 2048 and row["steps"] == 2
            assert row["train_cpu_seconds"] > 0 and row["tokens_per_cpu_s"] > 0  # the runs kept CPU time
            for path in row["predictions"]:
                run = read_predictions(path)  # 64 test examples spread evenly over the split
                assert run.n_examples == 64 and run.example_ids[-1] > 200
                assert np.all(np.diff(run.example_ids) > 0)
        names = [b["model"] for b in summary["baselines"]]
        assert "GC content + logistic regression" in names and any("6-mer" in n for n in names)
    text = (tmp_path / "out.md").read_text()
    assert "## Verdict: recurrent beats attention (lengths >= 512)" in text
    for suffix in ("_metric.png", "_cost.png", "_curves_L256.png"):
        assert (tmp_path / f"out{suffix}").stat().st_size > 1000


@pytest.mark.slow
def test_segment_recurrence_smoke_run(tmp_path):
    # Optimised: most of the run is the carried evaluation of a 49k-token document, 64 tokens at a time
    # (~3,000 calls of one program); it took 50 s at the suite's -O0 and 26 s at XLA's defaults.
    env = driver_env(optimised=True)
    args = [
        sys.executable,
        str(ROOT / "experiments" / "segment_recurrence.py"),
        "--size=smoke",
        "--presets=lstm",
        "--options=corpus=python_docs",  # the embedded sample: 2 test documents
        "--length=64",
        "--tokens_per_batch=512",
        "--resamples=200",
        "--nostep_memory",
        f"--workdir={tmp_path / 'runs'}",
        f"--out={tmp_path / 'out'}",
    ]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    row = results["models"]["lstm"]
    assert row["seeds"] == 2 and row["documents"] == 2 and row["train_tokens"] == 1024
    for key in ("carried", "reset", "difference"):
        assert row[key]["low"] <= row[key]["estimate"] <= row[key]["high"]
    gap = row["reset"]["estimate"] - row["carried"]["estimate"]
    assert row["difference"]["estimate"] == pytest.approx(gap)
    # the interval over 2 documents is not judged (fewer than the rule's 10 clusters), whatever its ends
    assert row["difference"]["n_clusters"] == 2
    assert (
        row["class"]
        == rule_class("greater", row["difference"]["low"], row["difference"]["high"], n_clusters=2)
        == "neither"
    )
    assert results["verdict"] == rule_verdict([row["class"]]) == "inconclusive"
    assert row["model_verdict"] == "not judged (2 documents, fewer than 10)"
    assert any("Kneser" in b["model"] for b in results["baselines"])
    for seed in (0, 1):  # every seed's per-document sums are kept for a rerun
        assert list((tmp_path / "runs" / "lstm").glob(f"lr*/seed{seed}/documents_carried.npz"))
    assert "## Verdict: the carried state lowers bits per byte" in (tmp_path / "out.md").read_text()


def test_a_finished_run_is_read_back_not_retrained(tmp_path, monkeypatch):
    from seqjax.train import trainer

    record = protocol.RunRecord(
        "lstm", 1e-3, 0, 10, 81920, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"balanced_accuracy": 0.5}, None, "w"
    )
    folder = tmp_path / "lstm" / "lr0.001" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record)))
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 10)
    again = protocol._train_once("lstm", base, settings, 1e-3, 0, 8 * 1024, folder, 1024, None, print)
    # a record without a config digest (an older one) is read back as it is, in the folder it is in
    assert again == dataclasses.replace(record, workdir=str(folder))
    digest = protocol._config_sha256(protocol._run_config(base, settings, 1e-3, 0, 8 * 1024))
    (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record) | {"config_sha256": digest}))
    assert (
        protocol._train_once("lstm", base, settings, 1e-3, 0, 8 * 1024, folder, 1024, None, print).steps == 10
    )
    wider = apply_overrides(base, ["model.mlp_expansion=5.0"])  # another parameter match, same folder
    with pytest.raises(ValueError, match="another config") as refused:
        protocol._train_once("lstm", wider, settings, 1e-3, 0, 8 * 1024, folder, 1024, None, print)
    assert f"folder is {tmp_path}: rerun with --fresh" in str(refused.value)  # which folder, which flag


def test_a_finished_run_evaluated_on_another_subset_is_refused(tmp_path, monkeypatch):
    """A record's scores are comparable only on the same evaluation subset (--evaluation_examples): a
    new record names its subset; an older one is refused when its kept test outputs hold more examples
    than asked for, and read back otherwise (a split may hold fewer)."""
    from seqjax.train import trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    record = protocol.RunRecord(
        "lstm", 1e-3, 0, 10, 81920, 1.0, 1.0, 0.0, 1.0, None, 1, 1, {"balanced_accuracy": 0.5}, None, "w"
    )
    folder = tmp_path / "lstm" / "lr0.001" / "seed0"
    folder.mkdir(parents=True)

    def read(examples):
        settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 10, evaluation_examples=examples)
        return protocol._train_once("lstm", base, settings, 1e-3, 0, 8 * 1024, folder, 1024, None, print)

    (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record) | {"evaluated_on": "256 spread"}))
    assert read(256).evaluated_on == "256 spread"
    for other, text in ((128, "128 spread"), (None, "all")):
        with pytest.raises(ValueError, match=f"evaluated on 256 spread examples.*asks for {text}"):
            read(other)
    (folder / "run.json").write_text(json.dumps(dataclasses.asdict(record)))  # an older record
    labels = np.arange(200) % 2
    run = RunPredictions(
        "lstm", 0, 1024, np.arange(200), labels // 50, labels, np.eye(2)[labels], labels * 0.1
    )
    write_predictions(folder / protocol.FINAL_TEST_PREDICTIONS, run)
    assert read(256).steps == 10 and read(200).steps == 10 and read(None).steps == 10
    with pytest.raises(
        ValueError, match=r"evaluated on 200 \(its test outputs'\) examples.*--evaluation_examples"
    ):
        read(128)
    assert protocol.evaluated_on(None) == "all" and protocol.evaluated_on(64) == "64 spread"


def test_noretrain_reads_finished_runs_and_never_trains_a_missing_one(tmp_path, monkeypatch):
    """--noretrain (train_missing=False) must not start training a run that has not finished (one still
    running in another process, or never started): it names the run and the fix, and exits with 2."""
    from absl import flags

    from seqjax.experiment.flags import define_run_flags, protocol_settings
    from seqjax.train import trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("--noretrain trained a run"))
    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 10, train_missing=False)
    folder = tmp_path / "lstm" / "lr0.001" / "seed1"
    with pytest.raises(protocol.MissingRunError, match="without --noretrain") as missing:
        protocol._train_once("lstm", base, settings, 1e-3, 1, 8 * 1024, folder, 1024, None, print)
    assert str(folder) in str(missing.value) and "lstm lr=0.001 seed=1" in str(missing.value)
    assert not folder.exists()  # nothing written for the missing run

    def driver(argv):
        protocol._train_once("lstm", base, settings, 1e-3, 1, 8 * 1024, folder, 1024, None, print)

    with pytest.raises(SystemExit) as exited:
        protocol.exit_when_interrupted(driver, [])
    assert exited.value.code == 2

    # the flag reaches the settings of every driver built on define_run_flags
    registry = flags.FlagValues()
    flags.DEFINE_integer("train_tokens", 1024, "", flag_values=registry)
    flags.DEFINE_list("learning_rates", ["0.001"], "", flag_values=registry)
    flags.DEFINE_integer("seeds", 2, "", flag_values=registry)
    flags.DEFINE_integer("grid_extensions", 1, "", flag_values=registry)
    flags.DEFINE_integer("evaluation_examples", None, "", flag_values=registry)
    flags.DEFINE_bool("step_memory", False, "", flag_values=registry)
    define_run_flags(registry, workdir="/tmp/x", runs="<workdir>/", out="x")
    registry(["driver", "--noretrain"])
    assert protocol_settings(registry).train_missing is False
    registry(["driver", "--retrain"])
    assert protocol_settings(registry).train_missing is True


def test_train_examples_subsets_only_the_train_split():
    from seqjax.train import trainer

    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    whole = trainer.setup(config)["sources"]
    config = apply_overrides(config, ["train_examples=16"])
    parts = trainer.setup(config)["sources"]
    assert len(parts["train"]) == 16 and len(parts["test"]) == len(whole["test"])
    # spread over the whole split: the last example comes from its end, not from its first 16
    assert parts["train"].indices[-1] > len(whole["train"]) * 0.9
    np.testing.assert_array_equal(
        parts["train"][3]["inputs"], whole["train"][int(parts["train"].indices[3])]["inputs"]
    )


def test_train_subset_seed_draws_stratified_subsets_and_data_seed_only_the_order():
    from seqjax.train import trainer

    config = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    parts = trainer.setup(apply_overrides(config, ["train_examples=40", "train_subset_seed=1"]))
    train = parts["sources"]["train"]
    labels = train.source.labels()
    counts = np.bincount(labels[train.indices], minlength=labels.max() + 1)
    expected = np.bincount(labels) * 40 / len(labels)
    assert counts.sum() == 40 and np.all(np.abs(counts - expected) < 1) and np.all(counts >= 1)
    again = trainer.setup(apply_overrides(config, ["train_examples=40", "train_subset_seed=1"]))
    other = trainer.setup(apply_overrides(config, ["train_examples=40", "train_subset_seed=2"]))
    np.testing.assert_array_equal(again["sources"]["train"].indices, train.indices)
    assert not np.array_equal(other["sources"]["train"].indices, train.indices)
    with pytest.raises(ValueError, match=r"train_examples=100000 exceeds the train split's \d+ examples"):
        trainer.setup(apply_overrides(config, ["train_examples=100000"]))

    def first_batch(overrides):
        c = trainer.resolve(apply_overrides(config, overrides))
        batches = trainer._train_batches(c, train, 1024, 0, parts["data_layout"])
        return next(iter(batches))["label"]

    by_seed = first_batch(["seed=3"])  # data_seed None: `seed` sets the order
    np.testing.assert_array_equal(first_batch(["seed=0", "data_seed=3"]), by_seed)  # the init seed does not
    assert not np.array_equal(first_batch(["seed=3", "data_seed=4"]), by_seed)


@pytest.mark.slow
def test_main_job_smoke_run_says_when_a_baseline_solves_the_task(tmp_path):
    env = driver_env()
    args = [
        sys.executable,
        str(ROOT / "scripts" / "compare.py"),
        "--presets=lstm,attention",
        "--options=task=species,length=256",
        "--train_tokens=4096",
        "--batch_size=8",
        "--nostep_memory",
        "--learning_rates=3e-3",
        "--seeds=2",
        "--evaluation_examples=48",
        "--resamples=200",
        f"--workdir={tmp_path / 'runs'}",
        f"--out={tmp_path / 'main'}",
    ]
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "main.json").read_text())
    # one verdict, the rule's, of the one length's paired difference (its value is chance here)
    assert len(summary["verdicts"]) == 1 and list(summary["verdicts"][0]["per_key"]) == ["256"]
    assert_claim_follows_summaries(summary["verdicts"][0], [summary], claim_from=256)
    assert [r["model"] for r in summary["models"]] == ["lstm", "attention"]
    text = (tmp_path / "main.md").read_text()
    assert "6-mer frequencies + logistic regression" in text and "verdict (recurrent beats attention)" in text
    # two training steps learn nothing, while k-mer composition solves the species task
    assert "is better than every model: every paired interval excludes zero" in text
    # ... and each model's paired difference to it, on the same test examples, says so too
    against = summary["against_strongest_baseline"]
    assert sorted(against) == ["attention", "lstm"] and all(d["high"] < 0 for d in against.values())
    assert "Each model against the strongest baseline" in text and "| the baseline |" in text
    # the baseline they are paired with is the best on validation (its score in the table), not on test
    validation = {b["model"]: b["validation"] for b in summary["baselines"]}
    assert summary["strongest_chosen_on"] == "validation"
    assert summary["strongest_baseline"] == max(validation, key=validation.get)
    assert "(chosen on validation)" in text and "| validation |" in text
    assert (tmp_path / "main_metric.png").stat().st_size > 1000


def test_a_run_stopped_by_a_signal_stops_the_experiment_unrecorded(tmp_path, monkeypatch):
    from seqjax.train import trainer

    seen = []

    def stopped(config, workdir, **kwargs):
        seen.append(workdir)
        return {"preempted": True, "step": 3}

    monkeypatch.setattr(trainer, "train", stopped)
    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 10)
    folder = tmp_path / "lstm" / "lr0.001" / "seed0"
    with pytest.raises(protocol.RunInterrupted, match="resumes"):
        protocol._train_once("lstm", base, settings, 1e-3, 0, 8 * 1024, folder, 1024, None, print)
    assert seen == [str(folder)] and not (folder / "run.json").exists()


def test_a_rerun_with_other_settings_is_refused_naming_the_folder_and_fresh(tmp_path):
    """Before: the main job wrote to a fixed /tmp/seqjax_compare and a rerun with another evaluation size
    silently reused the first run's records (their config digest does not cover it)."""
    from seqjax.experiment.flags import check_settings

    first = {"train_tokens": 491520, "evaluation_examples": None, "config_overrides": []}
    check_settings(str(tmp_path), first)
    check_settings(str(tmp_path), first)  # the same settings: the runs are reused (resumed)
    with pytest.raises(ValueError) as refused:
        check_settings(str(tmp_path), {**first, "evaluation_examples": 48})
    message = str(refused.value)
    assert str(tmp_path) in message and "--fresh" in message and "evaluation_examples None -> 48" in message


def test_a_rerun_over_some_keys_of_a_per_key_setting_reuses_their_runs(tmp_path):
    """few_shot records an anchor per task: re-tabulating one task of a two-task workdir is the same
    experiment for that task (before: refused, anchors {both} -> {one}); another anchor for it is not."""
    import json

    from seqjax.experiment.flags import check_settings

    both = {"train_tokens": 8192, "anchors": {"species": 4352, "genic_vs_intergenic": 4352}}
    check_settings(str(tmp_path), both)
    check_settings(str(tmp_path), {**both, "anchors": {"species": 4352}})
    assert json.loads((tmp_path / "settings.json").read_text())["anchors"] == both["anchors"]  # kept
    check_settings(str(tmp_path), {**both, "anchors": {"species": 4352, "promoter": 2048}})  # a new key
    assert json.loads((tmp_path / "settings.json").read_text())["anchors"]["promoter"] == 2048
    with pytest.raises(ValueError, match="anchors"):
        check_settings(str(tmp_path), {**both, "anchors": {"species": 8448}})


def test_runs_on_an_older_data_version_are_refused(tmp_path):
    """Genomic builder 2.0.0 re-cut chr20's splits. A workdir recorded before `data_version` was recorded
    holds runs on 1.0.0 data: reusing them for genomic data is refused, for the unchanged documents not."""
    import json

    from seqjax.experiment.flags import check_settings, data_record

    genomic, documents = tmp_path / "genic", tmp_path / "lm"
    for workdir in (genomic, documents):
        workdir.mkdir()
        (workdir / "settings.json").write_text(json.dumps({"train_tokens": 8192}))
    check_settings(str(documents), {"train_tokens": 8192, **data_record("configs/documents.py")})
    assert json.loads((documents / "settings.json").read_text())["data_version"] == "1.0.0"
    with pytest.raises(ValueError, match=r"data_version '1.0.0' -> '2.0.0'.*--fresh"):
        check_settings(str(genomic), {"train_tokens": 8192, **data_record("configs/genomic.py")})
    fresh = tmp_path / "new"  # a new workdir records the version and accepts it again
    check_settings(str(fresh), {"train_tokens": 8192, **data_record("configs/genomic.py")})
    check_settings(str(fresh), {"train_tokens": 8192, **data_record("configs/genomic.py")})
    assert data_record("configs/synthetic.py") == {}


def test_every_run_is_scored_at_its_last_step_as_the_table_says():
    """The table's `steps` column says the step scored is the step trained: the protocol's runs evaluate
    only after their last step, and keep only that checkpoint (no best-checkpoint selection)."""
    from seqjax.experiment.summary import model_table

    base = load_config_file(ROOT / "configs/genomic.py", "lstm,task=species,length=1024")
    settings = protocol.ProtocolSettings(train_tokens=8 * 1024 * 10)
    config = protocol._run_config(base, settings, 1e-3, 0, 8 * 1024)
    assert config.eval_every == 0 and config.checkpoint.every == config.total_steps == 10
    assert config.checkpoint.keep == 1
    row = {"model": "lstm", "estimate": 0.5, "low": 0.4, "high": 0.6, "seeds": 1, "parameters": 1}
    row |= {"ratio": 1.0, "learning_rate": 1e-3, "train_tokens": 1, "steps": 10, "tokens_per_s": 1.0}
    row |= {"flops_per_token": 1.0, "train_seconds": 1.0}
    assert "| steps (trained = scored) |" in model_table([row], "balanced_accuracy").splitlines()[0]


def test_the_table_gives_the_parameters_outside_the_match():
    """A Linformer's E (on the sequence-length axis) is outside the parameter match: its row gives the
    model's whole count, the matched ratio and how many parameters the match left out."""
    from seqjax.experiment.summary import model_table

    row = {"model": "linformer", "estimate": 0.5, "low": 0.4, "high": 0.6, "seeds": 1}
    row |= {"parameters": 1_285_998, "ratio": 0.999, "unmatched": 1_048_576, "learning_rate": 1e-3}
    row |= {"train_tokens": 1, "steps": 10, "tokens_per_s": 1.0, "flops_per_token": 1.0, "train_seconds": 1.0}
    assert "| 1,285,998 (0.999 without the 1,048,576 on the length axis) |" in model_table([row], "mse")
    assert "| 1,285,998 (0.999) |" in model_table([{**row, "unmatched": 0}], "mse")


def test_the_table_says_what_its_times_measure():
    """Wall-clock columns come with the note that they grow on a shared or paused machine; the CPU
    seconds are shown where the runs kept them, n/a where they did not."""
    from seqjax.experiment.summary import TIME_NOTE, model_table

    row = {"model": "lstm", "estimate": 0.5, "low": 0.4, "high": 0.6, "seeds": 1, "parameters": 1}
    row |= {"ratio": 1.0, "learning_rate": 1e-3, "train_tokens": 1, "steps": 10, "tokens_per_s": 1.0}
    row |= {"flops_per_token": 1.0, "train_seconds": 120.0}
    old, new = model_table([row], "mse"), model_table([{**row, "train_cpu_seconds": 97.4}], "mse")
    header = old.splitlines()[0].split(" | ")
    column = header.index("CPU s")
    assert old.splitlines()[2].split(" | ")[column] == "n/a"
    assert new.splitlines()[2].split(" | ")[column] == "97"
    assert header[column - 1] == "train s" and new.endswith(TIME_NOTE)
