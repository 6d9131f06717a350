"""What every experiment driver writes beside its results: when, where and by which command it ran,
with which code (`code_version`), and the `.json` + `.md` pair (`experiments/*.py`).

    >>> header = run_header(["experiments/lookback.py", "--size=smoke"], "cpu")
    >>> header["command"], header["platform"]
    ('python experiments/lookback.py --size=smoke', 'cpu')
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["code_version", "provenance_lines", "run_header", "short_code_version", "write_results"]


def run_header(argv: Sequence[str], platform: str) -> dict[str, str | None]:
    """{"date" (UTC, minutes), "platform" (JAX's backend), "command" (argv, shell-quoted), "code_version"
    (the git commit that wrote the results, `code_version`; each run's own is in its `run.json`)}."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform,
        "command": " ".join(["python", *map(shlex.quote, argv)]),
        "code_version": code_version(),
    }


def short_code_version(version: str | None) -> str:
    """`code_version` as a report prints it: the commit's first 12 hex digits (and "+dirty"), or
    "unknown" when the code ran outside a git checkout.

        >>> short_code_version("0123456789abcdef0123456789abcdef01234567+dirty")
        '0123456789ab+dirty'
    """
    if not version:
        return "unknown"
    commit, dirty, _ = version.partition("+dirty")
    return commit[:12] + ("+dirty" if dirty else "")


def provenance_lines(results: Mapping[str, Any], *, details: str = "") -> list[str]:
    """The first two bullet lines of a driver's report: when, on what, at which size and with which code
    (`run_header`'s keys and "size"; `details` is appended to the first line), and the command.

        >>> results = {"date": "2026-12-06 13:00 UTC", "platform": "cpu", "size": "smoke",
        ...            "command": "python experiments/lookback.py", "code_version": "0123456789abcdef"}
        >>> print("\\n".join(provenance_lines(results, details="; route `offline`")))
        - date: 2026-12-06 13:00 UTC; platform cpu; size `smoke`; route `offline`; code 0123456789ab
        - command: `python experiments/lookback.py`
    """
    code = short_code_version(results.get("code_version"))
    return [
        f"- date: {results['date']}; platform {results['platform']}; size `{results['size']}`{details}; "
        f"code {code}",
        f"- command: `{results['command']}`",
    ]


@functools.cache
def code_version(package_dir: str | Path | None = None) -> str | None:
    """The git commit of the checkout holding `package_dir` (default: this `seqjax` package), with
    "+dirty" when a tracked file under that folder differs from it; None outside a git checkout or without
    git. Only the package's own folder counts as dirty: the experiments rewrite tracked files of their
    own (carried runs) while they run, and those do not change what a run computes. The package's own
    is resolved when this module is imported, so a long experiment reports the code it loaded.

        >>> version = code_version()
        >>> version is None or len(version.removesuffix("+dirty")) == 40
        True
    """
    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed wheel)
        return None
    return commit + ("+dirty" if changed else "")


#: Header keys that say when and with what the results were written, not what they are.
_WRITING_KEYS = ("date", "code_version")


def _same_results(out: Path, payload: str, text: str) -> bool:
    """Whether `<out>.json` and `<out>.md` already hold these results and this report apart from
    `_WRITING_KEYS` (a driver restarted over finished runs re-tabulates them): then they stay as they
    are, with the date they were made. A report whose text changed otherwise is written again."""
    try:
        old = json.loads(out.with_suffix(".json").read_text())
        old_text = out.with_suffix(".md").read_text()
    except (OSError, ValueError):
        return False
    new = json.loads(payload)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False

    def kept(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in _WRITING_KEYS}

    if kept(old) != kept(new):
        return False
    # the report prints the date and the commit (`provenance_lines`); only they may differ
    old_date, new_date = old.get("date"), new.get("date")
    if isinstance(old_date, str) and isinstance(new_date, str) and old_date:
        old_text = old_text.replace(old_date, new_date)
    old_code, new_code = old.get("code_version"), new.get("code_version")
    if isinstance(old_code, str) and isinstance(new_code, str) and old_code:
        old_text = old_text.replace(
            f"code {short_code_version(old_code)}", f"code {short_code_version(new_code)}"
        )
    return old_text == text


def write_results(out: str | Path, results: Mapping[str, Any], text: str, *, echo: bool = True) -> Path:
    """Writes `<out>.json` (the results) and `<out>.md` (`text`), making the folder; returns `out`. Files
    that already hold the same results (all but their date and commit) are left as they are. With
    `echo`, prints the report and where it went (the drivers' plots follow it).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = write_results(Path(folder) / "r" / "x", {"a": 1}, "# x\\n", echo=False)
    ...     (path.with_suffix(".json").read_text(), path.with_suffix(".md").read_text())
    ('{\\n "a": 1\\n}\\n', '# x\\n')
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(results, indent=1, default=float) + "\n"
    unchanged = _same_results(out, payload, text)
    if not unchanged:
        for path, content in ((out.with_suffix(".json"), payload), (out.with_suffix(".md"), text)):
            # a stop mid-write leaves the previous file whole, never half of one
            partial = path.with_name(path.name + ".partial")
            partial.write_text(content)
            os.replace(partial, path)
    if echo:
        print(text)
        print(f"{'unchanged (the same results)' if unchanged else 'wrote'} {out}.md and .json", flush=True)
    return out


# Resolved once, when the drivers import this module at their start: an experiment that runs for days
# reports the code it loaded, not a commit made in its checkout while it ran.
code_version()
