"""What the three real-task families (genomic, timeseries, documents) share when they prepare data.

- Where prepared data lives: `route_dir(data_dir, route)` is `<data_dir>/sample` for the embedded
  sample and `<data_dir>/full` for every other route (the same files by any route), so the two never mix.
- Config resolution: `resolve_config(data, defaults, family)` lays a data config over the family's
  DEFAULTS and rejects unknown keys and a wrong "kind"; `check_choice`, `check_int` and
  `check_fractions` validate single keys. Every error names the family, the key and the fix.
- Compressed raw files: `read_compressed(path)` and `open_compressed(path)` read gzip, xz and bz2
  (recognised by their magic bytes, else by the file suffix) or plain files; a truncated or corrupt
  archive is a ValueError naming the file and saying to fetch it again.
- Preparation across processes: every trainer process builds its sources, so several processes may
  prepare the same data set at once. `prepared_builder` holds a cross-process file lock
  (`preparation_lock`, `fcntl.flock` on a lock file next to the data set) while it constructs and
  prepares a TFDS builder: one process builds, the others wait and then find the data set ready; the
  `incomplete.*` folders a killed preparation left are removed first (`remove_incomplete_preparations`).
- The split-source role: `make_sources` of every family returns {split: SplitSource} for `SPLITS`.

    >>> route_dir("/data", "sample").as_posix(), route_dir("/data", "offline").as_posix()
    ('/data/sample', '/data/full')
    >>> resolve_config({"length": 8}, {"kind": "genomic", "length": 16}, "genomic")
    {'kind': 'genomic', 'length': 8}
"""

from __future__ import annotations

import bz2
import contextlib
import difflib
import fcntl
import gzip
import io
import logging
import lzma
import os
import pathlib
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Protocol, TypeVar

import numpy as np

__all__ = [
    "CORRUPT_ERRORS",
    "SPLITS",
    "SplitSource",
    "check_choice",
    "check_fractions",
    "check_int",
    "compression",
    "corrupt_file_error",
    "open_compressed",
    "preparation_lock",
    "prepared_builder",
    "read_compressed",
    "remove_incomplete_preparations",
    "resolve_config",
    "route_dir",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class _NotCustomConfigWarning(logging.Filter):
    """Drops TFDS's "Using custom data configuration: <config>" warning (absl logger): every seqjax data
    set is a builder with a config made from the run's options, so each train and eval process would
    repeat it, config and all, for nothing that needs attention."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


_CUSTOM_CONFIG_FILTER = _NotCustomConfigWarning()


class SplitSource(Protocol):
    """One split of a real task as a random-access source: what `make_sources` returns per split.

    `source[i]` is a dict of fixed-shape NumPy arrays, `len(source)` the example count, `describe()`
    a small dict of counts for logs. The families add what they know (`GenomicSplit.coordinates`,
    `TimeSeriesSplit.target_rows`, `DocumentSplit.target_byte_histogram`).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------------------
# Where prepared data lives


def route_dir(data_dir: str | os.PathLike[str], route: str) -> pathlib.Path:
    """`<data_dir>/sample` for the embedded sample, `<data_dir>/full` for the full data (any other route)."""
    return pathlib.Path(data_dir) / ("sample" if route == "sample" else "full")


# ----------------------------------------------------------------------------------------------------
# Config resolution


def _did_you_mean(value: Any, choices: Sequence[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_config(data: Mapping[str, Any], defaults: Mapping[str, Any], family: str) -> dict[str, Any]:
    """`data` laid over `defaults` (which hold "kind"); unknown keys and another kind are errors."""
    unknown = sorted(set(data) - set(defaults))
    if unknown:
        raise ValueError(f"{family} data config: unknown keys {unknown}; known keys are {sorted(defaults)}.")
    config = {**defaults, **dict(data)}
    if config["kind"] != defaults["kind"]:
        raise ValueError(
            f"{family} data config: kind must be {defaults['kind']!r} for this module, "
            f"got {config['kind']!r}."
        )
    return config


def check_choice(config: Mapping[str, Any], key: str, choices: Sequence[Any], family: str) -> None:
    """`config[key]` must be one of `choices`; the error suggests the closest one."""
    value = config[key]
    if value not in choices:
        raise ValueError(
            f"{family} data config: {key} must be one of {tuple(choices)}, got {value!r}"
            f"{_did_you_mean(value, choices)}."
        )


def check_int(
    config: dict[str, Any], key: str, family: str, *, minimum: int = 1, allow_none: bool = False
) -> None:
    """`config[key]` must be an int >= `minimum` (or None if allowed); stored back as a plain int."""
    value = config[key]
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        if allow_none:
            wanted = "None or " + wanted
        raise ValueError(f"{family} data config: {key} must be {wanted}, got {value!r}.")
    config[key] = int(value)


def check_fractions(config: dict[str, Any], key: str, family: str) -> None:
    """`config[key]` must be 3 positive (train, validation, test) fractions summing to 1; stored as a
    tuple of floats."""
    try:
        fractions = tuple(float(f) for f in config[key])
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"{family} data config: {key} must be 3 positive numbers (train, validation, test) summing "
            f"to 1, got {config[key]!r}."
        )
    config[key] = fractions


# ----------------------------------------------------------------------------------------------------
# Compressed raw files

_MAGIC = {"gz": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bz2": b"BZh"}
_OPENERS: dict[str, Callable[..., IO[bytes]]] = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}
#: What a truncated or corrupt gzip / xz / bz2 stream raises while it is read.
CORRUPT_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)


def compression(path: str | os.PathLike[str]) -> str | None:
    """ "gz", "xz" or "bz2" by the file's magic bytes (else by its suffix, so a file cut before its
    magic is still treated as the archive it claims to be); None for a plain file."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        head = f.read(6)
    for kind, magic in _MAGIC.items():
        # bz2's magic is short and printable: also ask for its block size digit.
        if head.startswith(magic) and (kind != "bz2" or head[3:4] in b"123456789"):
            return kind
    suffix = path.suffix.removeprefix(".")
    return suffix if suffix in _MAGIC and len(head) < len(_MAGIC[suffix]) else None


def corrupt_file_error(path: str | os.PathLike[str], kind: str, error: BaseException) -> ValueError:
    """The error for a truncated or corrupt `kind` archive: it names the file and the fix."""
    return ValueError(f"{path}: truncated or corrupt .{kind} file ({error}); delete it and fetch it again.")


def read_compressed(path: str | os.PathLike[str]) -> bytes:
    """The bytes of `path`, decompressed if it is gzip (also multi-member bgzip), xz or bz2."""
    kind = compression(path)
    if kind is None:
        return pathlib.Path(path).read_bytes()
    try:
        with _OPENERS[kind](path, "rb") as f:
            return f.read()
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, kind, e) from e


@contextlib.contextmanager
def open_compressed(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """`path` opened for streaming reads, decompressing as `read_compressed` does; a truncated or corrupt
    archive found while reading is the same ValueError."""
    kind = compression(path)
    if kind is None:
        with open(path, "rb") as f:
            yield f
        return
    try:
        with _OPENERS[kind](path, "rb") as f:
            yield f
    except CORRUPT_ERRORS as e:
        raise corrupt_file_error(path, kind, e) from e


# ----------------------------------------------------------------------------------------------------
# Preparation across processes

Builder = TypeVar("Builder")


@contextlib.contextmanager
def preparation_lock(
    lock_path: str | os.PathLike[str], *, holder: str = "preparing the same data set"
) -> Iterator[None]:
    """Holds an exclusive `fcntl.flock` on `lock_path` (created with its folder); logs while waiting
    ("Waiting for another process <holder> ...").

    The lock is released when the holder exits or dies, so a killed preparation never blocks the next.
    """
    lock_path = pathlib.Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process %s (lock %s).", holder, lock_path)
            started = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            log.info("Got the lock %s after %.1f s.", lock_path, time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepared_builder(
    make_builder: Callable[[], Builder], data_dir: str | os.PathLike[str], name: str, *, quiet: bool = False
) -> Builder:
    """`make_builder()` constructed and prepared under the lock `<data_dir>/.<name>.lock`.

    `data_dir` is the builder's own data_dir and `name` says which data set (e.g. "seqjax_documents-
    gutenberg"), so different data sets prepare in parallel. The builder is constructed inside the lock
    because TFDS reads a prepared data set's metadata on construction: a builder made while another
    process writes would not see the finished data set. `download_and_prepare` is a no-op when ready.
    Before preparing, the `incomplete.*` folders a killed preparation of this data set left next to its
    version folder are removed: under the lock no live preparation of it can own one.

    TFDS's "Using custom data configuration" warning is dropped (`_NotCustomConfigWarning`). With
    `quiet` (data embedded in the repository: nothing is downloaded), so is what TFDS prints to stdout
    while preparing ("Downloading and preparing dataset Unknown size ...", "... downloaded and
    prepared"); one log line says the data set was prepared instead.
    """
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_CUSTOM_CONFIG_FILTER)  # the logger TFDS warns on; one filter, added once
    with preparation_lock(pathlib.Path(data_dir) / f".{name}.lock"):
        builder = make_builder()
        remove_incomplete_preparations(builder.data_dir)  # type: ignore[attr-defined]
        if quiet and not builder.is_prepared():  # type: ignore[attr-defined]
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare()  # type: ignore[attr-defined]
            log.info("Prepared %s from the sample embedded in the repository, in %s.", name, builder.data_dir)
        else:
            builder.download_and_prepare()  # type: ignore[attr-defined]  # a no-op when prepared
    return builder


def remove_incomplete_preparations(version_dir: str | os.PathLike[str]) -> list[pathlib.Path]:
    """Removes the `incomplete.*` folders TFDS left beside `version_dir` (`<data set>/<config>/<version>`)
    when a preparation was killed; returns them. Call it only under the data set's preparation lock.

        >>> remove_incomplete_preparations("/nonexistent/seqjax_x/config/1.0.0")
        []
    """
    removed = []
    for folder in sorted(pathlib.Path(version_dir).parent.glob("incomplete.*")):
        if folder.is_dir():
            log.warning("Removing %s, left by a killed preparation.", folder)
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
