"""`auto` follows measured tables: the shipped CPU table, $SEQJAX_SCAN_TUNING, registered ones, the tuner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.scan import linear_recurrence, tuning
from seqjax.scan.diagonal import choose_method

ROOT = Path(__file__).resolve().parents[1]


def _table(platform: str, rows: list[tuple[int, int, dict]], device_kind: str | None = None) -> dict:
    return {
        "kind": "linear_recurrence",
        "platform": platform,
        "device_kind": device_kind,
        "measurements": [{"length": n, "state_elems": s, "seconds": sec} for n, s, sec in rows],
    }


@pytest.fixture(autouse=True)
def _no_extra_tables(monkeypatch):
    monkeypatch.delenv(tuning.ENV_VAR, raising=False)
    tuning.clear_registered_tables()
    yield
    tuning.clear_registered_tables()


def test_shipped_gpu_tables_choose_the_measured_winners():
    from seqjax.scan.selective import choose_selective_method

    # benchmarks/linear_recurrence_tuning_gpu.md and selective_scan_tuning_gpu.md (one H200).
    assert choose_method(16384, 16384, "gpu", "NVIDIA H200") == "associative"
    assert choose_selective_method(16384, 16384, "gpu", "NVIDIA H200") == "remat_associative"
    assert choose_selective_method(1024, 131072, "gpu", "NVIDIA H200") == "remat_sequential"


def test_shipped_cpu_table_exists_and_matches_the_cpu_benchmarks():
    shipped = [t for t in tuning._shipped() if t.platform == "cpu"]
    assert shipped, "seqjax/scan/tables/ should ship a CPU table (python scripts/tune_scan.py)"
    # benchmarks/scan_cpu.md: lax.scan beat both log-depth forms at every size measured on this CPU.
    for length in (1024, 4096, 16384):
        assert choose_method(length, 8 * 128 * 16, "cpu") == "sequential"


def test_shipped_cpu_selective_table_chooses_the_unrolled_chunks():
    from seqjax.scan.selective import DEFAULT_CHUNK, choose_selective_method

    # benchmarks/selective_scan_tuning_cpu.md: remat_unrolled was the fastest at every measured point but
    # one, batch 1 at 64k tokens, where remat_sequential and it are within noise (the table's run 2 and 4).
    for length in (64, 1024, 16384):
        for state in (16384, 131072):
            assert choose_selective_method(length, state, "cpu") == "remat_unrolled"
    assert choose_selective_method(65536, 4 * 256 * 16, "cpu") == "remat_unrolled"
    assert choose_selective_method(65536, 1 * 256 * 16, "cpu") == "remat_sequential"
    assert DEFAULT_CHUNK["remat_unrolled"] < DEFAULT_CHUNK["remat_sequential"]


def test_nearest_measured_point_decides(tmp_path):
    rows = [
        (64, 1024, {"sequential": 1.0, "associative": 2.0, "chunked": 3.0}),
        (4096, 1024, {"sequential": 3.0, "associative": 1.0, "chunked": 2.0}),
        (4096, 65536, {"sequential": 3.0, "associative": 2.0, "chunked": 1.0}),
        (16384, 65536, {"sequential": None, "associative": 2.0, "chunked": None}),
    ]
    tuning.register_table(_table("gpu", rows))
    assert choose_method(32, 512, "gpu") == "sequential"
    assert choose_method(2048, 2048, "gpu") == "associative"  # nearer (4096, 1024) than (64, 1024)
    assert choose_method(6000, 131072, "gpu") == "chunked"
    assert choose_method(65536, 65536, "gpu") == "associative"  # untimed backends are never chosen
    # A platform without a table keeps the rule.
    assert choose_method(4096, 1024, "tpu") == "associative"
    assert choose_method(64, 1024, "tpu") == "sequential"


def test_device_kind_match_wins_and_env_var_comes_first(tmp_path, monkeypatch):
    fast_seq = {"sequential": 1.0, "associative": 2.0}
    fast_assoc = {"sequential": 2.0, "associative": 1.0}
    tuning.register_table(_table("gpu", [(1024, 1024, fast_seq)], device_kind="A100"))
    tuning.register_table(_table("gpu", [(1024, 1024, fast_assoc)], device_kind="H100"))
    assert choose_method(1024, 1024, "gpu", "A100") == "sequential"
    assert choose_method(1024, 1024, "gpu", "H100") == "associative"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_table("gpu", [(1024, 1024, {"chunked": 1.0, "associative": 2.0})])))
    monkeypatch.setenv(tuning.ENV_VAR, str(path))
    assert choose_method(1024, 1024, "gpu", "H100") == "chunked"
    # The environment table does not hide the shipped table of another platform.
    assert choose_method(1024, 1024, "cpu") == "sequential"


def test_a_given_device_kind_is_kept_when_the_platform_is_this_one():
    tuning.register_table(_table("cpu", [(1024, 1024, {"chunked": 1.0, "sequential": 2.0})], device_kind="X"))
    tuning.register_table(_table("cpu", [(1024, 1024, {"associative": 1.0, "sequential": 2.0})], "Y"))
    assert choose_method(1024, 1024, device_kind="X") == "chunked"
    assert choose_method(1024, 1024, device_kind="Y") == "associative"


def test_auto_runs_the_measured_backend_and_agrees_with_it(monkeypatch):
    platform = "cpu"
    tuning.register_table(_table(platform, [(40, 60, {"sequential": 2.0, "chunked": 1.0})]))
    assert choose_method(37, 60, platform) == "chunked"
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(0.5, 1.0, (3, 37, 20)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 37, 20)), jnp.float32)
    calls = []
    real = tuning.measured_method
    monkeypatch.setattr(tuning, "measured_method", lambda *args: calls.append(args) or real(*args))
    # compiled (eager, the chunked scan runs op by op); the choice is made at trace time
    auto, _ = jax.jit(lambda a, b: linear_recurrence(a, b, axis=1))(a, b)
    chunked, _ = jax.jit(lambda a, b: linear_recurrence(a, b, axis=1, method="chunked"))(a, b)
    assert calls and calls[0][:2] == (37, 60)
    np.testing.assert_array_equal(auto, chunked)


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "expected a JSON object"),
        ({"measurements": [{}]}, "`platform`"),
        ({"platform": "gpu", "measurements": []}, "non-empty list"),
        ({"platform": "gpu", "measurements": [{"length": 0, "state_elems": 4, "seconds": {}}]}, "length"),
        (
            {"platform": "gpu", "measurements": [{"length": 8, "state_elems": 4, "seconds": {"fft": 1.0}}]},
            "'fft'",
        ),
        (
            {
                "platform": "gpu",
                "measurements": [{"length": 8, "state_elems": 4, "seconds": {"chunked": -1}}],
            },
            r"seconds\['chunked'\] must be > 0",
        ),
        ({"kind": "attention", "platform": "gpu", "measurements": []}, "kind is 'attention'"),
    ],
)
def test_bad_tables_are_refused_with_the_fix(data, message):
    with pytest.raises(ValueError, match=message) as info:
        tuning.table_from_dict(data, "bad.json")
    assert "bad.json" in str(info.value) and "scripts/tune_scan.py" in str(info.value)


def test_unreadable_env_table_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.ENV_VAR, str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"SEQJAX_SCAN_TUNING.*missing\.json"):
        choose_method(1024, 1024, "gpu")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    monkeypatch.setenv(tuning.ENV_VAR, str(broken))
    with pytest.raises(ValueError, match="not valid JSON"):
        choose_method(1024, 1024, "gpu")


def test_tuner_writes_a_table_auto_reads(tmp_path, monkeypatch):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "tune_scan.py"),
            "--kinds=linear_recurrence",
            "--lengths=16,128",
            "--state_elems=64",
            "--batch=2",
            "--repeats=1",
            f"--out={out}",
            f"--markdown={md}",
        ],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    table = tuning.load_table(out)
    assert table.platform == "cpu" and [m.length for m in table.measurements] == [16, 128]
    assert all(set(m.seconds) == set(tuning.BACKENDS) for m in table.measurements)
    assert all(s is not None and s > 0 for m in table.measurements for s in m.seconds.values())
    monkeypatch.setenv(tuning.ENV_VAR, str(out))
    assert choose_method(128, 64, "cpu") == table.measurements[1].fastest()
    assert "| 128 | 64 |" in md.read_text()


def test_mamba_asks_the_selective_scan_tables_with_the_whole_step_state(monkeypatch):
    from seqjax import cells
    from seqjax.scan import selective

    calls = []
    real = selective.choose_selective_method
    monkeypatch.setattr(
        selective, "choose_selective_method", lambda n, s, *a: calls.append((n, s)) or real(n, s, *a)
    )
    cell = cells.Mamba(d_model=4, state_size=3, chunk_size=4)
    params = cell.init(jax.random.key(0), 4)
    cell.apply(params, jnp.ones((5, 9, 4)))
    assert calls == [(9, 5 * cell.d_inner * 3)]  # length; batch × channels × state, as the tables count it


def _selective_table(platform: str, rows: list[tuple[int, int, dict]]) -> dict:
    return {**_table(platform, rows), "kind": "selective_scan"}


def test_selective_scan_auto_reads_its_own_tables_only():
    from seqjax.scan.selective import choose_selective_method, selective_scan

    # A linear_recurrence table for the platform does not decide the selective scan, and vice versa.
    tuning.register_table(_table("tpu", [(1024, 1024, {"sequential": 3.0, "associative": 1.0})]))
    assert choose_method(1024, 1024, "tpu") == "associative"
    assert choose_selective_method(1024, 1024, "tpu") == "remat_sequential"  # the rule: no selective table
    tuning.register_table(_table("gpu", [(1024, 1024, {"sequential": 3.0, "associative": 1.0})]))
    tuning.register_table(
        _selective_table(
            "gpu",
            [
                (256, 16384, {"remat_sequential": 1.0, "remat_associative": 2.0}),
                (16384, 16384, {"remat_sequential": 2.0, "remat_associative": 1.0}),
            ],
        )
    )
    assert choose_selective_method(512, 16384, "gpu") == "remat_sequential"
    assert choose_selective_method(8192, 16384, "gpu") == "remat_associative"
    assert choose_method(1024, 1024, "gpu") == "associative"
    # On this CPU, with a table that says associative, `auto` runs associative and equals it.
    tuning.register_table(
        _selective_table("cpu", [(16, 2 * 3 * 4, {"remat_sequential": 2.0, "remat_associative": 1.0})])
    )
    args = (
        jnp.ones((2, 16, 3)),
        jnp.full((2, 16, 3), 0.1),
        -jnp.ones((3, 4)),
        jnp.ones((2, 16, 4)),
        jnp.ones((2, 16, 4)),
    )
    assert choose_selective_method(16, 2 * 3 * 4) == "remat_associative"
    auto = selective_scan(*args, chunk_size=4)
    assoc = selective_scan(*args, chunk_size=4, method="remat_associative")
    np.testing.assert_array_equal(auto[0], assoc[0])


def test_bad_selective_tables_and_methods_are_refused():
    from seqjax.scan.selective import selective_scan

    with pytest.raises(ValueError, match="unknown selective_scan backend 'sequential'"):
        tuning.register_table(_selective_table("gpu", [(64, 64, {"sequential": 1.0})]))
    with pytest.raises(ValueError, match="kind is 'lstm'"):
        tuning.register_table({**_table("gpu", [(64, 64, {"sequential": 1.0})]), "kind": "lstm"})
    x = jnp.ones((1, 4, 2))
    with pytest.raises(ValueError, match="unknown method 'chunked'"):
        selective_scan(x, x, -jnp.ones((2, 3)), jnp.ones((1, 4, 3)), jnp.ones((1, 4, 3)), method="chunked")


def test_several_environment_tables(tmp_path, monkeypatch):
    from seqjax.scan.selective import choose_selective_method

    lin, sel = tmp_path / "lin.json", tmp_path / "sel.json"
    lin.write_text(json.dumps(_table("gpu", [(64, 64, {"chunked": 1.0, "sequential": 2.0})])))
    sel.write_text(
        json.dumps(_selective_table("gpu", [(64, 64, {"remat_associative": 1.0, "remat_sequential": 2.0})]))
    )
    monkeypatch.setenv(tuning.ENV_VAR, f"{lin}{os.pathsep}{sel}")
    assert choose_method(64, 64, "gpu") == "chunked"
    assert choose_selective_method(64, 64, "gpu") == "remat_associative"


def test_tuner_writes_a_selective_table(tmp_path, monkeypatch):
    out, md = tmp_path / "s.json", tmp_path / "s.md"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "tune_scan.py"),
            "--kinds=selective_scan",
            "--lengths=32",
            "--state_elems=64",
            "--batch=2",
            "--state_size=4",
            "--repeats=1",
            "--min_seconds=0",
            f"--out={out}",
            f"--markdown={md}",
        ],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    table = tuning.load_table(out)
    assert table.kind == "selective_scan" and table.platform == "cpu"
    assert set(table.measurements[0].seconds) == {"remat_sequential", "remat_associative", "remat_unrolled"}
    assert "# `selective_scan` backends" in md.read_text()


def _tune(out: Path, md: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [sys.executable, str(ROOT / "scripts" / "tune_scan.py"), f"--out={out}", f"--markdown={md}"]
    return subprocess.run(
        [*command, "--kinds=linear_recurrence", "--state_elems=64", "--repeats=1", "--min_seconds=0", *flags],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tuner_merges_points_into_a_table_written_before_rows_named_their_run(tmp_path):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    old_seconds = {"sequential": 1.0, "associative": 2.0, "chunked": 3.0}
    # A table of the layout before --merge: its command at the top, no batch per row, and (assembled by
    # hand from two runs, as the GPU selective-scan table was) one row naming its own command.
    legacy = {
        **_table("cpu", [(16, 64, old_seconds), (128, 64, old_seconds)], device_kind="cpu"),
        "date": "2026-11-22 04:42 UTC",
        "command": "python scripts/tune_scan.py --batch=2",
    }
    legacy["measurements"][0]["command"] = "python scripts/tune_scan.py --batch=2 --lengths=16"
    out.write_text(json.dumps(legacy))
    done = _tune(out, md, "--merge", "--batch=2", "--lengths=128,512", "--note=quiet machine")
    assert done.returncode == 0, done.stderr[-2000:]
    table = json.loads(out.read_text())
    rows = {(r["length"], r["batch"]): r for r in table["measurements"]}
    assert sorted(rows) == [(16, 2), (128, 2), (512, 2)]
    assert rows[16, 2]["seconds"] == old_seconds and rows[16, 2]["command"] == 0  # kept, with its run
    assert rows[128, 2]["seconds"] != old_seconds and rows[128, 2]["command"] == 2  # measured again
    commands = [r["command"] for r in table["commands"]]
    assert commands[:2] == [legacy["measurements"][0]["command"], legacy["command"]]
    assert "--merge" in commands[2] and "--note" not in commands[2]
    assert table["commands"][2]["note"] == "quiet machine"
    assert tuning.load_table(out).nearest(16, 64).seconds == old_seconds  # auto still reads it
    text = md.read_text()
    assert "| 16 | 64 | 2 | " in text and "run 3 (" in text and "  - quiet machine" in text

    # Another batch at the same length and state is a new row, not a replacement.
    assert _tune(out, md, "--merge", "--batch=1", "--lengths=128", "--note", "spaced note").returncode == 0
    table = json.loads(out.read_text())
    assert [(r["length"], r["batch"]) for r in table["measurements"]] == [
        (16, 2),
        (128, 1),
        (128, 2),
        (512, 2),
    ]
    assert table["commands"][3]["note"] == "spaced note" and "note" not in table["commands"][3]["command"]
    assert table["command"] == table["commands"][3]["command"]  # the top names the latest run

    # A point measured again with fewer backends (--methods) leaves the row of backends timed together.
    before = {(r["length"], r["batch"]): r for r in table["measurements"]}
    assert _tune(out, md, "--merge", "--batch=2", "--lengths=128", "--methods=sequential").returncode == 0
    after = {(r["length"], r["batch"]): r for r in json.loads(out.read_text())["measurements"]}
    assert after[128, 2] == before[128, 2]


def test_tuner_refuses_to_merge_into_another_platforms_table_and_leaves_it(tmp_path):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    out.write_text(json.dumps(_table("gpu", [(16, 64, {"sequential": 1.0})], device_kind="NVIDIA H200")))
    before = out.read_text()
    done = _tune(out, md, "--merge", "--lengths=16")
    assert done.returncode != 0
    assert "--merge" in done.stderr and "platform 'gpu'" in done.stderr and "another --out" in done.stderr
    assert out.read_text() == before and not md.exists()

    # Points of another chunk size are another program: refused too, naming the flag to give.
    chunked = {
        **_table("cpu", [(16, 64, {"sequential": 1.0})], device_kind="cpu"),
        "commands": [{"date": "d", "command": "c", "chunk_size": 32, "state_size": None}],
    }
    chunked["measurements"][0].update(batch=8, command=0)
    out.write_text(json.dumps(chunked))
    before = out.read_text()
    done = _tune(out, md, "--merge", "--lengths=16")
    assert done.returncode != 0 and "chunk_size [32]" in done.stderr and "--chunk_size=32" in done.stderr
    assert out.read_text() == before and not md.exists()


def test_equally_near_points_are_chosen_the_same_whatever_the_rows_order():
    rows = [
        tuning.Measurement(1024, 4096, {"sequential": 1.0, "chunked": 2.0}, batch=1),
        tuning.Measurement(1024, 16384, {"sequential": 2.0, "chunked": 1.0}, batch=4),
        tuning.Measurement(4096, 8192, {"sequential": 2.0, "associative": 1.0}, batch=1),
        tuning.Measurement(4096, 8192, {"sequential": 2.0, "chunked": 1.0}, batch=8),
    ]
    for order in (rows, rows[::-1]):
        table = tuning.TuningTable("cpu", None, tuple(order))
        assert table.nearest(1024, 8192).fastest() == "chunked"  # the larger state of two equally near
        assert table.nearest(4096, 8192).batch == 8  # one point at two batches: the larger batch


def test_shipped_selective_tables_are_their_markdown():
    # benchmarks/selective_scan_tuning_{cpu,gpu}.md are what tune_scan.py writes from the shipped JSON,
    # so a --merge into them rewrites nothing but the new rows (a subprocess: the script defines flags).
    program = (
        "import json, sys; sys.path.insert(0, 'scripts'); import tune_scan; "
        "tune_scan.FLAGS(['tune_scan']); "
        "[print(p, tune_scan._markdown(json.load(open(f'seqjax/scan/tables/selective_scan_{p}.json'))) == "
        "open(f'benchmarks/selective_scan_tuning_{p}.md').read()) for p in ('cpu', 'gpu')]"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cpu", "True", "gpu", "True"]
