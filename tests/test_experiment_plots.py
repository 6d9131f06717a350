"""`seqjax.experiment.benchmarks` reads the committed tables back into numbers, with their machines, and
`seqjax.experiment.plots` draws them: files for scripts, open figures for notebooks, and a backend left
alone wherever one was chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqjax.experiment import benchmarks, plots

matplotlib = pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parent.parent


def test_markdown_tables_keep_their_heading_and_skip_code_blocks():
    text = (
        "# Title\n\n```\n| not | a table |\n|---|---|\n```\n\n## Speed (cpu)\n\n"
        "| model | L=1,024 (B=64) | L=4,096 (B=16) |\n|---|---:|---:|\n"
        "| LSTM | 20,875 | |\n| GLA | **14,404** | 14,402 |\n"
    )
    (table,) = benchmarks.read_markdown_tables(text)
    assert table.heading == "Speed (cpu)"
    assert table.column("model") == ["LSTM", "GLA"]
    # an empty cell was not measured: it is left out, not read as zero
    assert benchmarks.series_by_length(table) == {
        "LSTM": {1024: 20875.0},
        "GLA": {1024: 14404.0, 4096: 14402.0},
    }
    with pytest.raises(KeyError, match="the table has"):
        table.column("speed")


@pytest.mark.parametrize(
    "text, value",
    [
        ("20,875", 20875.0),
        ("0.000", 0.0),
        ("1.2e+06", 1.2e6),
        ("", None),
        ("n/a", None),
        ("skipped: x", None),
    ],
)
def test_number(text, value):
    assert benchmarks.number(text) == value


def test_size_in_bytes():
    assert benchmarks.size_in_bytes("2.0 KiB") == 2048
    assert benchmarks.size_in_bytes("1.51 GiB") == 1.51 * 2**30
    assert benchmarks.size_in_bytes("0.21") is None


@pytest.mark.parametrize(
    "name, platform, machine, partial",
    [
        ("rnn_cpu.md", "cpu", "2-core CPU (Intel(R) Xeon(R) Processor)", False),
        ("rnn_gpu.md", "gpu", "NVIDIA H200", True),
        ("models_cpu.md", "cpu", "2-core CPU (AMD EPYC)", False),
        ("models_gpu.md", "gpu", "NVIDIA H200", True),
        ("linformer_cpu.md", "cpu", "2-core CPU (AMD EPYC)", False),
    ],
)
def test_each_committed_table_names_its_machine(name, platform, machine, partial):
    bench = benchmarks.read_benchmark(ROOT / "benchmarks" / name)
    assert (bench.platform, bench.machine, bench.partial) == (platform, machine, partial)
    assert bench.tables


def test_cell_timings_from_a_committed_table():
    bench = benchmarks.read_benchmark(ROOT / "benchmarks" / "attention_cpu.md")
    timings = benchmarks.cell_timings(bench)
    row = next(t for t in timings if t.implementation == "seqjax attention blockwise" and t.length == 16384)
    assert (row.median_s, row.peak_mib) == (15.854, 705.5)
    assert row.tokens_per_s == pytest.approx(8 * 16384 / 15.854)
    # "skipped: needs 32.4 GiB" rows are not measurements
    assert not any(t.implementation.startswith("naive") and t.length == 16384 for t in timings)
    series = benchmarks.family_series(timings, "peak_mib")
    assert series["softmax attention"]["exact attention (blockwise)"][1024] == 57.1


def test_a_median_under_the_tables_resolution_has_no_tokens_per_s():
    bench = benchmarks.read_benchmark(ROOT / "benchmarks" / "attention_gpu.md")
    naive = next(t for t in benchmarks.cell_timings(bench) if t.implementation.startswith("naive"))
    assert naive.median_s == 0.0 and naive.tokens_per_s is None


def test_backend_is_left_alone_where_one_was_chosen():
    assert not plots.backend_is_chosen(environ={}, modules={})
    assert plots.backend_is_chosen(
        environ={"MPLBACKEND": "module://matplotlib_inline.backend_inline"}, modules={}
    )
    assert plots.backend_is_chosen(environ={}, modules={"matplotlib.pyplot": object()})

    class Shell:  # an IPython module whose get_ipython() finds a running shell (a notebook kernel)
        @staticmethod
        def get_ipython():
            return object()

    class NoShell:
        @staticmethod
        def get_ipython():
            return None

    assert plots.backend_is_chosen(environ={}, modules={"IPython": Shell})
    assert not plots.backend_is_chosen(environ={}, modules={"IPython": NoShell})


def test_plots_return_an_open_figure_without_a_path_and_a_file_with_one(tmp_path):
    from matplotlib.figure import Figure

    plt = plots._pyplot()
    panels = {"tokens/s": {"LSTM": {1024: 2e4, 4096: 2.1e4}}, "MiB": {"LSTM": {1024: 69.0, 4096: 273.0}}}
    figure = plots.by_length(panels, title="two panels")
    assert isinstance(figure, Figure) and plt.fignum_exists(figure.number)  # left open for a notebook
    plt.close(figure)
    path = plots.by_length(panels, tmp_path / "figure.png")
    assert path == tmp_path / "figure.png" and path.stat().st_size > 0
    records = [{"step": 1, "split": "train", "loss": 1.0}, {"step": 1, "split": "eval", "accuracy": 0.5}]
    assert plots.run_metrics(records, "accuracy", tmp_path / "run.png").exists()


def test_guide_figures_come_from_the_committed_files(tmp_path):
    written = plots.guide_figures(ROOT, tmp_path)
    names = {p.name for p in written}
    assert {
        "cells_cpu.png",
        "cells_gpu.png",
        "models_cpu.png",
        "memory_scaling_cpu.png",
        "linformer_cpu.png",
    } <= names
    assert any(n.startswith("length_crossover_") for n in names)
    # docs/choosing_a_cell.md shows these files: each one it names is committed
    doc = (ROOT / "docs" / "choosing_a_cell.md").read_text()
    for name in names:
        if f"images/{name}" in doc:
            assert (ROOT / "docs" / "images" / name).exists(), (
                f"docs/images/{name}: run the command in the guide"
            )


@pytest.mark.parametrize("task", ["classification", "lm"])
def test_crossover_figure_draws_the_committed_verdict(task):
    path = ROOT / "experiments" / "results" / f"length_crossover_{task}_cpu_cpu.json"
    figure = plots.crossover_figure(path)
    data = json.loads(path.read_text())
    assert data["verdict"]["verdict"] in figure.axes[0].get_title()
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    # Genomic: GC content and 6-mer counts; other tasks: the table's strongest baseline.
    expected = (
        plots.GUIDE_BASELINES if task == "classification" else [data["summaries"][0]["strongest_baseline"]]
    )
    assert set(expected) <= set(labels)
    plots._pyplot().close(figure)


def test_metric_by_length_tells_twelve_models_apart() -> None:
    """Past the 10 default colors, each model still gets its own (color, marker, dash)."""
    import matplotlib.pyplot as plt

    models = [f"m{i:02d}" for i in range(12)]
    summary = {
        "metric": "exact match",
        "confidence_level": 0.95,
        "models": [{"model": m, "estimate": 0.0, "low": 0.0, "high": 0.1} for m in models],
    }
    fig = plots.metric_by_length({256: summary, 1024: summary})
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() in models]
    styles = {(line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(lines) == 12 and len(styles) == 12
    plt.close(fig)


def test_cost_by_length_plots_tokens_per_cpu_second_where_every_run_kept_it() -> None:
    """Runs on a shared or paused CPU host: their speed is drawn per CPU second when every run kept its
    CPU time, else as wall-clock tokens/s, and the axis says which."""
    import matplotlib.pyplot as plt

    row = {"model": "lstm", "tokens_per_s": 1e3, "step_memory_bytes": 2**20}
    timed = {**row, "tokens_per_cpu_s": 4e3}
    fig = plots.cost_by_length(
        {1024: {"models": [timed]}, 4096: {"models": [{**timed, "tokens_per_cpu_s": 2e3}]}}
    )
    assert fig.axes[0].get_ylabel() == "train tokens per CPU second"
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [4e3, 2e3]
    plt.close(fig)
    fig = plots.cost_by_length({1024: {"models": [timed]}, 4096: {"models": [row]}})  # one run without
    assert fig.axes[0].get_ylabel() == "train tokens/s (wall clock)"
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [1e3, 1e3]
    plt.close(fig)
