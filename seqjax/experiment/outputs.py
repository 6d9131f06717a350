"""What every experiment driver writes beside its results: when, where and by which command it ran,
and the `.json` + `.md` pair (`experiments/*.py`).

    >>> header = run_header(["experiments/lookback.py", "--size=smoke"], "cpu")
    >>> header["command"], header["platform"]
    ('python experiments/lookback.py --size=smoke', 'cpu')
"""

from __future__ import annotations

import datetime
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_header", "write_results"]


def run_header(argv: Sequence[str], platform: str) -> dict[str, str]:
    """{"date" (UTC, minutes), "platform" (JAX's backend), "command" (argv, shell-quoted)}."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform,
        "command": " ".join(["python", *map(shlex.quote, argv)]),
    }


def write_results(out: str | Path, results: Mapping[str, Any], text: str, *, echo: bool = True) -> Path:
    """Writes `<out>.json` (the results) and `<out>.md` (`text`), making the folder; returns `out`. With
    `echo`, prints the report and where it went (the drivers' plots follow it).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_results(Path(folder) / "r" / "x", {"a": 1}, "# x\\n", echo=False)
    ...     (path.with_suffix(".json").read_text(), path.with_suffix(".md").read_text())
    ('{\\n "a": 1\\n}\\n', '# x\\n')
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    out.with_suffix(".md").write_text(text)
    if echo:
        print(text)
        print(f"wrote {out}.md and .json", flush=True)
    return out
