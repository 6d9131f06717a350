"""`scripts/benchmark_models.py` end to end at a tiny size: it measures whole models, keeps a JSON record
beside its table, and `--merge` adds a later run's cells to that record (a re-measured cell replaces the
old one, a cell the later run did not time leaves a timed one in place), refusing a record of another
model shape before measuring anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.driver_helpers import ROOT, driver_env

TINY = ["--d_model=16", "--num_layers=1", "--tokens_per_batch=32", "--gen_contexts=4", "--gen_tokens=2"]


def _benchmark(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/benchmark_models.py", f"--out={out}", *flags],
        cwd=ROOT,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(record: dict) -> dict[tuple[str, int], dict]:
    return {(r["model"], r["length"]): r for r in record["train"]}


@pytest.mark.slow
def test_a_merged_run_adds_cells_replaces_remeasured_ones_and_keeps_timed_ones(tmp_path: Path) -> None:
    out = tmp_path / "models.md"
    first = _benchmark(out, "--models=lstm", "--lengths=8,16", "--repeats=1", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    before = _rows(record)
    assert before["lstm", 16]["times_s"] and before["lstm", 16]["run"] == 0
    assert record["shape"]["d_model"] == 16 and record["runs"][0]["repeats"] == 1

    # --max_seconds_per_run=0: each model's first length is timed, its longer ones only compiled.
    second = _benchmark(
        out,
        "--models=lstm,gru",
        "--lengths=8,16",
        "--repeats=2",
        "--max_seconds_per_run=0",
        "--merge",
        "--note=quiet machine",
        *TINY,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    rows = _rows(record)
    assert rows["lstm", 8]["run"] == 1 and len(rows["lstm", 8]["times_s"]) == 2  # measured again
    assert rows["lstm", 16] == before["lstm", 16]  # not timed by run 2: run 1's timing stays
    assert rows["gru", 8]["times_s"] and rows["gru", 8]["run"] == 1
    assert rows["gru", 16]["status"] == "not timed"  # nothing older to keep
    assert record["models"] == ["lstm", "gru"] and len(record["runs"]) == 2
    assert record["runs"][1]["note"] == "quiet machine" and "--note" not in record["runs"][1]["command"]
    table = out.read_text()
    assert "| L=8 (B=4) | L=16 (B=2) |" in table and "median of 1 or 2" in table
    assert "(quiet machine). Its cells: LSTM at L=8 (training); GRU at L=8 (training); GRU at L=16" in table
    lstm_row = next(line for line in table.splitlines() if line.startswith("| LSTM |") and "—" not in line)
    tokens_per_s = [float(cell.replace(",", "")) for cell in lstm_row.strip("|").split("|")[1:]]
    assert len(tokens_per_s) == 2 and all(v > 0 for v in tokens_per_s)


def test_merge_refuses_another_shape_or_a_missing_record_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "models.md"
    missing = _benchmark(out, "--models=lstm", "--lengths=8", "--merge", *TINY)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "drop --merge" in missing.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()

    record = {"platform": "cpu", "shape": {"d_model": 64}, "runs": []}
    out.with_suffix(".json").write_text(json.dumps(record))
    out.write_text("the old table\n")
    broken = _benchmark(out, "--models=lstm", "--lengths=8", "--merge", *TINY)
    assert broken.returncode != 0 and "is not a benchmark_models record" in broken.stderr

    good = {
        "platform": "cpu",
        "machine": "m",
        "shape": {"d_model": 64, "num_layers": 1, "vocab": 256, "tokens_per_batch": 32, "gen_batch": 1},
        "runs": [{"date": "d", "command": "c", "repeats": 1, "jax": "j", "flax": "f"}],
        "models": [],
        "sizes": {},
        "lengths": [],
        "contexts": [],
        "train": [],
        "gen": [],
    }
    out.with_suffix(".json").write_text(json.dumps(good))
    other = _benchmark(out, "--models=lstm", "--lengths=8", "--merge", *TINY)
    assert other.returncode != 0
    assert "measured with d_model=64, this run with d_model=16" in other.stderr
    assert json.loads(out.with_suffix(".json").read_text()) == good and out.read_text() == "the old table\n"

    # The same shape, but a model whose parameter count has changed since: its old cells would mislead.
    changed = {
        **good,
        "shape": {**good["shape"], "d_model": 16},
        "models": ["lstm"],
        "sizes": {"lstm": [2.5, 999]},
    }
    out.with_suffix(".json").write_text(json.dumps(changed))
    refused = _benchmark(out, "--models=lstm", "--lengths=8", "--merge", *TINY)
    assert refused.returncode != 0 and "lstm has 999 parameters, built now" in refused.stderr
    unknown = {**changed, "models": ["no_such_model"]}
    out.with_suffix(".json").write_text(json.dumps(unknown))
    refused = _benchmark(out, "--models=lstm", "--lengths=8", "--merge", *TINY)
    assert refused.returncode != 0 and "unknown models ['no_such_model']" in refused.stderr
    assert out.read_text() == "the old table\n"
    json_out = _benchmark(tmp_path / "models.json", "--models=lstm", "--lengths=8", *TINY)
    assert json_out.returncode != 0 and "its JSON record goes beside it" in json_out.stderr
