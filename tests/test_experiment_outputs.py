"""`seqjax.experiment.outputs.code_version`: which code a run's record says trained it."""

from __future__ import annotations

import json
import subprocess

from seqjax.experiment.outputs import code_version


def _git(folder, *args):
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def test_code_version_is_the_commit_and_dirty_only_for_the_package_folder(tmp_path):
    package, elsewhere = tmp_path / "pkg", tmp_path / "runs"
    package.mkdir()
    elsewhere.mkdir()
    (package / "cell.py").write_text("x = 1\n")
    (elsewhere / "run.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert code_version.__wrapped__(package) == head
    # a tracked file outside the package changes (the packer rewriting carried runs): still clean
    (elsewhere / "run.json").write_text('{"a": 1}\n')
    (package / "new_untracked.py").write_text("")  # untracked files do not count either
    assert code_version.__wrapped__(package) == head
    (package / "cell.py").write_text("x = 2\n")
    assert code_version.__wrapped__(package) == head + "+dirty"


def test_code_version_outside_a_checkout_is_none(tmp_path):
    assert code_version.__wrapped__(tmp_path) is None


def test_write_results_keeps_files_that_hold_the_same_results(tmp_path):
    """A driver restarted over finished runs re-tabulates them: the same results with a new date leave
    the files (and their date) as they were; a changed number, or a changed report, rewrites both."""
    from seqjax.experiment.outputs import write_results

    out = tmp_path / "r"
    first = {"date": "2026-12-06 02:48 UTC", "code_version": "a", "mse": 0.5}
    write_results(out, first, "# r\n- date: 2026-12-06 02:48 UTC\nmse 0.5\n", echo=False)
    again = {"date": "2026-12-06 06:50 UTC", "code_version": "b", "mse": 0.5}
    write_results(out, again, "# r\n- date: 2026-12-06 06:50 UTC\nmse 0.5\n", echo=False)
    assert json.loads(out.with_suffix(".json").read_text()) == first
    assert "02:48" in out.with_suffix(".md").read_text()
    # the report's text changed (a new column), the numbers did not: written again
    write_results(out, again, "# r\n- date: 2026-12-06 06:50 UTC\nmse 0.5 (n=3)\n", echo=False)
    assert "(n=3)" in out.with_suffix(".md").read_text()
    assert json.loads(out.with_suffix(".json").read_text()) == again
    changed = {**again, "mse": 0.4}
    write_results(out, changed, "# r\n- date: 2026-12-06 06:50 UTC\nmse 0.4 (n=3)\n", echo=False)
    assert json.loads(out.with_suffix(".json").read_text())["mse"] == 0.4


def test_a_report_rewritten_by_other_code_keeps_its_commit_unless_the_results_change(tmp_path):
    """The report prints the commit that tabulated it (`provenance_lines`): a restart under a later
    commit over the same finished runs leaves the report, and the commit it names, as they were."""
    from seqjax.experiment.outputs import provenance_lines, write_results

    def report(results):
        return "\n".join(["# r", *provenance_lines(results), f"mse {results['mse']}", ""])

    out = tmp_path / "r"
    header = {"platform": "cpu", "size": "cpu", "command": "python experiments/x.py"}
    first = {**header, "date": "2026-12-06 02:48 UTC", "code_version": "a" * 40, "mse": 0.5}
    write_results(out, first, report(first), echo=False)
    assert "code aaaaaaaaaaaa\n" in out.with_suffix(".md").read_text()
    later = {**first, "date": "2026-12-07 09:00 UTC", "code_version": "b" * 40 + "+dirty"}
    write_results(out, later, report(later), echo=False)
    assert out.with_suffix(".md").read_text() == report(first)
    changed = {**later, "mse": 0.4}
    write_results(out, changed, report(changed), echo=False)
    assert "code bbbbbbbbbbbb+dirty\n" in out.with_suffix(".md").read_text()
