"""`seqjax.experiment.outputs.code_version`: which code a run's record says trained it."""

from __future__ import annotations

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
