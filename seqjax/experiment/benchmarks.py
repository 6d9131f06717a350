"""Reading the committed benchmark tables (`benchmarks/*.md`) back into numbers, with the machine each
was measured on.

The benchmark scripts write markdown for people; the notebooks and the cell-choice guide
(`docs/choosing_a_cell.md`) plot the same numbers, so this module parses those files rather than
keeping a second copy of the data.

- `read_markdown_tables`: every pipe table of a markdown text, under its nearest heading.
- `read_benchmark`: one `benchmarks/*.md` file: its tables, platform, machine, date and whether the run
  was partial (the GPU tables ran under a time limit).
- `cell_timings`: the rows of a `scripts/benchmark.py` table (length, implementation, median seconds,
  XLA peak), with tokens/s = batch · length / median.
- `series_by_length`: a table whose columns are lengths (`L=1,024 (B=64)`, `C=16,384`) as
  {row label: {length: value}}, the shape `plots.by_length` draws.

    >>> table = read_markdown_tables("## Speed\\n\\n| model | L=1,024 | L=4,096 |\\n|---|---:|---:|\\n"
    ...                              "| LSTM | 20,875 | 21,647 |\\n")[0]
    >>> table.heading, table.columns
    ('Speed', ('model', 'L=1,024', 'L=4,096'))
    >>> series_by_length(table)
    {'LSTM': {1024: 20875.0, 4096: 21647.0}}
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "CELL_LABELS",
    "BenchmarkFile",
    "CellTiming",
    "MarkdownTable",
    "cell_series",
    "cell_timings",
    "number",
    "read_benchmark",
    "read_markdown_tables",
    "series_by_length",
    "size_in_bytes",
]

#: The rows of `scripts/benchmark.py`'s tables that are each cell's default (seqjax's own) form, and the
#: short label plots give them. Peers (flax, torch, autodiff baselines) and alternative backends are left
#: out: they answer "how fast is seqjax's engine", not "which cell".
CELL_LABELS: dict[str, str] = {
    "seqjax LSTM fused (unroll=1)": "LSTM",
    "seqjax GRU (unroll=1)": "GRU",
    "seqjax ELSTM (slots=16, width=32, unroll=1)": "E-LSTM",
    "seqjax S4D auto": "S4D",
    "seqjax S5 auto": "S5",
    "seqjax LRU auto": "LRU",
    "seqjax Mamba (expand 1) chunked": "Mamba",
    "seqjax GLA chunked": "GLA",
    "seqjax LinearAttention chunked": "linear attention",
    "seqjax Performer chunked": "Performer",
    "seqjax attention blockwise": "exact attention (blockwise)",
    "seqjax attention blockwise, window 512": "sliding window 512",
    "naive (materialised reference)": "exact attention, materialised [L, L]",
    "exact attention (Attention, causal=False)": "exact bidirectional attention",
    "exact attention, materialised (method=naive)": "exact bidirectional, materialised [L, L]",
    "Linformer k=256, sharing=headwise": "Linformer k=256 (headwise)",
    "Linformer k=256, sharing=key_value": "Linformer k=256 (key_value)",
}

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


@dataclasses.dataclass(frozen=True)
class MarkdownTable:
    """One pipe table: the nearest heading above it, its header cells and its body rows (as text)."""

    heading: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def records(self) -> list[dict[str, str]]:
        """The rows as {column: cell} dicts (a short row's missing cells are "")."""
        return [
            dict(zip(self.columns, row + ("",) * (len(self.columns) - len(row)), strict=False))
            for row in self.rows
        ]

    def column(self, name: str) -> list[str]:
        """One column's cells; KeyError naming the columns there are."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; the table has {list(self.columns)}")
        i = self.columns.index(name)
        return [row[i] if i < len(row) else "" for row in self.rows]


def _cells(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


def read_markdown_tables(text: str) -> list[MarkdownTable]:
    """Every pipe table of a markdown text, in order. A table is a `| ... |` header line, a `|---|`
    delimiter line, and the `|` lines after it; fenced code blocks are skipped."""
    tables: list[MarkdownTable] = []
    heading, fenced = "", False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif (
            not fenced
            and line.startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?", lines[i + 1].strip())
        ):
            columns, rows = _cells(line), []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append(MarkdownTable(heading, columns, tuple(rows)))
            continue
        i += 1
    return tables


def number(text: str) -> float | None:
    """A table cell as a float ("20,875" → 20875.0, "**0.88**" → 0.88, "1.2e+06"); None for an empty,
    "n/a" or "skipped: ..." cell."""
    match = re.fullmatch(r"[*\s]*([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)[*\s]*", text)
    return float(match.group(1).replace(",", "")) if match else None


def size_in_bytes(text: str) -> float | None:
    """A memory cell as bytes ("2.0 KiB" → 2048.0, "1.51 GiB"); None when the cell is not a size."""
    match = re.fullmatch(r"\s*([\d,]*\.?\d+)\s*(B|KiB|MiB|GiB|TiB)\s*", text)
    return float(match.group(1).replace(",", "")) * _UNITS[match.group(2)] if match else None


def _length(column: str) -> int | None:
    # "L=1,024 (B=64)", "C=16,384", "L = 4,096", "1024"
    match = re.match(r"\s*(?:[A-Za-z]+\s*=\s*)?([\d,]+)\b", column)
    return int(match.group(1).replace(",", "")) if match else None


def series_by_length(
    table: MarkdownTable, parse: Callable[[str], float | None] = number
) -> dict[str, dict[int, float]]:
    """{row label: {length: value}} from a table whose first column labels the rows and whose other
    columns are lengths; cells that `parse` cannot read (empty: not measured) are left out."""
    lengths = [_length(c) for c in table.columns[1:]]
    series: dict[str, dict[int, float]] = {}
    for row in table.rows:
        points = {}
        for length, cell in zip(lengths, row[1:], strict=False):
            value = parse(cell)
            if length is not None and value is not None:
                points[length] = value
        series[row[0]] = points
    return series


@dataclasses.dataclass(frozen=True)
class BenchmarkFile:
    """A `benchmarks/*.md` file: where it was measured and its tables.

    `machine` is what the file says about the hardware ("2-core CPU (Intel(R) Xeon(R) Processor)",
    "NVIDIA H200"); `partial` is True when the file says some of its rows were not measured; `batch` is
    the batch of `scripts/benchmark.py`'s rows (None when the file does not state one).
    """

    path: Path
    title: str
    platform: str
    machine: str
    date: str
    batch: int | None
    partial: bool
    tables: tuple[MarkdownTable, ...]

    def table(self, heading_contains: str) -> MarkdownTable:
        """The first table whose heading contains the text (case-insensitive)."""
        for table in self.tables:
            if heading_contains.lower() in table.heading.lower():
                return table
        raise KeyError(
            f"{self.path.name}: no table under a heading containing {heading_contains!r}; headings: "
            f"{[t.heading for t in self.tables]}"
        )


def _machine(text: str, platform: str) -> str:
    kind = re.search(r"device kind `([^`]+)`(?: \((.+?)\);)?", text)
    cores = re.search(r"(?:`os\.cpu_count\(\)`|`nproc`)\s*=\s*(\d+)|(\d+)[- ]cores?\b", text)
    n = next((g for g in (cores.groups() if cores else ()) if g), None)
    if kind and kind.group(1) != "cpu":
        return kind.group(1)
    gpu = re.search(r"NVIDIA [A-Z]\w+", text) or re.search(r"\bone ([AHLTV]\d{2,3})\b", text)
    if platform == "gpu" and gpu:
        return gpu.group(0) if gpu.group(0).startswith("NVIDIA") else f"NVIDIA {gpu.group(1)}"
    detail = kind.group(2) if kind and kind.group(2) else None
    if detail is None:
        named = re.search(r"\b(Intel[^;,)]*|AMD EPYC[^;,)]*)", text)
        detail = named.group(1).strip() if named else None
    machine = f"{n}-core {platform.upper()}" if n else platform.upper()
    return f"{machine} ({detail})" if detail else machine


def read_benchmark(path: str | Path) -> BenchmarkFile:
    """Parses one `benchmarks/*.md` file (see `BenchmarkFile`). From a checkout's root:

    bench = read_benchmark("benchmarks/rnn_cpu.md")
    bench.platform, bench.machine, bench.batch  # ('cpu', '2-core CPU (Intel(R) Xeon(R) Processor)', 8)
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    title = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")), path.stem)
    stated = re.search(r"[Pp]latform:? (cpu|gpu|tpu)\b", text)
    suffix = re.search(r"_(cpu|gpu|tpu)$", path.stem)
    platform = stated.group(1) if stated else suffix.group(1) if suffix else "unknown"
    date = re.search(r"\b(\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2} UTC)?)", text)
    batch = re.search(r"^- batch (\d+)", text, re.MULTILINE)
    return BenchmarkFile(
        path=path,
        title=title,
        platform=platform,
        machine=_machine(text, platform),
        date=date.group(1) if date else "",
        batch=int(batch.group(1)) if batch else None,
        partial="partial" in text.lower(),
        tables=tuple(read_markdown_tables(text)),
    )


@dataclasses.dataclass(frozen=True)
class CellTiming:
    """One measured row of a `scripts/benchmark.py` table (forward + backward of one cell)."""

    length: int
    implementation: str
    median_s: float
    peak_mib: float | None
    #: batch · length / median; None where the median printed as 0.000 (under the table's 1 ms resolution)
    tokens_per_s: float | None


def cell_timings(bench: BenchmarkFile) -> list[CellTiming]:
    """The measured rows of every `length | implementation | median s | ...` table of the file (skipped
    rows, such as "skipped: needs 32.4 GiB", are left out)."""
    rows = []
    for table in bench.tables:
        if table.columns[:3] != ("length", "implementation", "median s"):
            continue
        for record in table.records():
            median, length = number(record["median s"]), number(record["length"])
            if median is None or length is None:
                continue
            peak = number(record.get("XLA peak MiB", ""))
            tokens = bench.batch * length / median if bench.batch and median > 0 else None
            rows.append(CellTiming(int(length), record["implementation"], median, peak, tokens))
    return rows


def cell_series(
    timings: list[CellTiming], field: str, labels: Mapping[str, str] = CELL_LABELS
) -> dict[str, dict[int, float]]:
    """{label: {length: value}} of one `CellTiming` field ("tokens_per_s", "peak_mib", "median_s") for
    the implementations `labels` names, in `labels`' order; values that are None are left out."""
    series: dict[str, dict[int, float]] = {}
    for implementation, label in labels.items():
        points = {
            t.length: getattr(t, field)
            for t in timings
            if t.implementation == implementation and getattr(t, field) is not None
        }
        if points:
            series[label] = dict(sorted(points.items()))
    return series


#: The `scripts/benchmark.py` tables of single cells, by file stem (`benchmarks/<stem>_<platform>.md`).
CELL_FILES = ("rnn", "ssm", "linear_attention", "linear_attention_64k", "attention")

#: The cell families of the guide and their `CELL_LABELS` labels.
FAMILIES: dict[str, tuple[str, ...]] = {
    "recurrent": ("LSTM", "GRU", "E-LSTM"),
    "state-space": ("S4D", "S5", "LRU", "Mamba"),
    "linear attention": ("GLA", "linear attention", "Performer"),
    "softmax attention": (
        "exact attention (blockwise)",
        "sliding window 512",
        "exact attention, materialised [L, L]",
    ),
}


def read_cell_benchmarks(root: str | Path, platform: str) -> tuple[list[CellTiming], list[BenchmarkFile]]:
    """Every measured row of the `CELL_FILES` tables of one platform ("cpu", "gpu") under
    `root/benchmarks`, and the files read (those that exist)."""
    files = [
        read_benchmark(path)
        for stem in CELL_FILES
        if (path := Path(root) / "benchmarks" / f"{stem}_{platform}.md").exists()
    ]
    return [timing for bench in files for timing in cell_timings(bench)], files


def family_series(timings: list[CellTiming], field: str) -> dict[str, dict[str, dict[int, float]]]:
    """{family: {label: {length: value}}} of one `CellTiming` field over the `FAMILIES`; a family with no
    measured row is left out."""
    series = cell_series(timings, field)
    grouped = {
        family: {label: series[label] for label in labels if label in series}
        for family, labels in FAMILIES.items()
    }
    return {family: members for family, members in grouped.items() if members}
