"""Measured backend tables: what `method="auto"` picks, per engine, platform and size.

Two engines are tuned, each with its own backends (`BACKENDS_BY_KIND`):
- `linear_recurrence` (the diagonal recurrence): "sequential", "associative", "chunked";
- `selective_scan` (Mamba's chunk-rematerialised scan): "remat_sequential", "remat_associative",
  "remat_unrolled", the recurrence run inside each chunk.

A table is the JSON that `scripts/tune_scan.py` writes after timing every backend of one engine (forward
+ backward) on one machine:

    {"kind": "linear_recurrence", "platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3",
     "jax": "0.10.2", "dtype": "float32", "command": "...",
     "measurements": [{"length": 4096, "state_elems": 16384,
                       "seconds": {"sequential": 0.74, "associative": 1.33, "chunked": 1.38}}, ...]}

`kind` names the engine (a table without `kind` is a `linear_recurrence` table). `auto` takes the
measured point nearest to the call (in log length and log state size) and returns its
fastest backend. Tables are looked up in this order: the files named by the environment variable
`SEQJAX_SCAN_TUNING` (separated by `os.pathsep`), tables added with `register_table`, then the tables
shipped in `seqjax/scan/tables/`. Within one source a table for the device kind in use wins over one
for another device of the same platform. Without any table for the platform, `choose_method` (and
`choose_selective_method`) fall back to a rule (see their docstrings).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BACKENDS",
    "BACKENDS_BY_KIND",
    "ENV_VAR",
    "Measurement",
    "TuningTable",
    "clear_registered_tables",
    "load_table",
    "matrix_chunk_size",
    "measured_method",
    "register_table",
    "table_from_dict",
]

ENV_VAR = "SEQJAX_SCAN_TUNING"
BACKENDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "linear_recurrence": ("sequential", "associative", "chunked"),
    "selective_scan": ("remat_sequential", "remat_associative", "remat_unrolled"),
}
BACKENDS: tuple[str, ...] = BACKENDS_BY_KIND["linear_recurrence"]
DEFAULT_KIND = "linear_recurrence"
_SHIPPED_DIR = Path(__file__).with_name("tables")


@dataclass(frozen=True)
class Measurement:
    """Forward + backward seconds of each backend at one (length, state size); None: did not run."""

    length: int
    state_elems: int
    seconds: Mapping[str, float | None]
    batch: int | None = None  # the leading batch of the point, where the table says (state_elems holds it)

    def fastest(self) -> str | None:
        timed = [(s, m) for m, s in self.seconds.items() if s is not None]
        return min(timed)[1] if timed else None


@dataclass(frozen=True)
class TuningTable:
    platform: str
    device_kind: str | None
    measurements: tuple[Measurement, ...]
    source: str = "<memory>"
    kind: str = DEFAULT_KIND

    def nearest(self, length: int, state_elems: int) -> Measurement | None:
        """The timed measurement closest to (length, state_elems) in log2 space; of points equally
        close, the one with more state elements, then the longer one, then the larger batch (the larger
        workload, where the choice costs the most time), whatever the order of the table's rows.

            >>> row = lambda n, s, best: Measurement(n, s, {best: 1.0})
            >>> table = TuningTable("cpu", None, (row(1024, 4096, "a"), row(1024, 16384, "b")))
            >>> table.nearest(1024, 8192).fastest()  # equally close to both: the larger state
            'b'
        """

        def distance(m: Measurement) -> tuple[float, int, int, int]:
            d = (math.log2(m.length) - math.log2(max(length, 1))) ** 2 + (
                math.log2(m.state_elems) - math.log2(max(state_elems, 1))
            ) ** 2
            return round(d, 9), -m.state_elems, -m.length, -(m.batch or 0)

        timed = [m for m in self.measurements if m.fastest() is not None]
        return min(timed, key=distance) if timed else None


def _bad(source: str, what: str) -> ValueError:
    return ValueError(
        f"scan tuning table {source}: {what}. Regenerate it with `python scripts/tune_scan.py` "
        f"(or unset ${ENV_VAR} to use the shipped tables)."
    )


def _positive_int(value: Any, name: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(source, f"{name} must be a positive integer, got {value!r}")
    return value


def table_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> TuningTable:
    """Validates a decoded table; every problem names the table and the field."""
    if not isinstance(data, Mapping):
        raise _bad(source, f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("kind", DEFAULT_KIND)
    if kind not in BACKENDS_BY_KIND:
        raise _bad(source, f"kind is {kind!r}, expected one of {', '.join(map(repr, BACKENDS_BY_KIND))}")
    backends = BACKENDS_BY_KIND[kind]
    platform = data.get("platform")
    if not isinstance(platform, str) or not platform:
        raise _bad(source, "`platform` (e.g. 'cpu', 'gpu', 'tpu') is missing")
    device_kind = data.get("device_kind")
    if device_kind is not None and not isinstance(device_kind, str):
        raise _bad(source, f"`device_kind` must be a string, got {device_kind!r}")
    rows = data.get("measurements")
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise _bad(source, "`measurements` must be a non-empty list")
    measurements = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise _bad(source, f"measurements[{i}] is not an object")
        length = _positive_int(row.get("length"), f"measurements[{i}].length", source)
        state_elems = _positive_int(row.get("state_elems"), f"measurements[{i}].state_elems", source)
        seconds = row.get("seconds")
        if not isinstance(seconds, Mapping) or not seconds:
            raise _bad(source, f"measurements[{i}].seconds must map backends to seconds")
        for method, value in seconds.items():
            if method not in backends:
                raise _bad(
                    source,
                    f"measurements[{i}] times unknown {kind} backend {method!r} (known: "
                    f"{', '.join(backends)})",
                )
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise _bad(
                    source, f"measurements[{i}].seconds[{method!r}] must be > 0 or null, got {value!r}"
                )
        batch = row.get("batch")
        if batch is not None:
            batch = _positive_int(batch, f"measurements[{i}].batch", source)
        measurements.append(Measurement(length, state_elems, dict(seconds), batch))
    return TuningTable(platform, device_kind, tuple(measurements), source, kind)


def load_table(path: str | os.PathLike[str]) -> TuningTable:
    """Reads and validates one JSON table."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise _bad(str(path), f"cannot be read ({err.strerror or err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad(str(path), f"is not valid JSON ({err})") from err
    return table_from_dict(data, str(path))


_registered: list[TuningTable] = []


def register_table(table: TuningTable | Mapping[str, Any] | str | os.PathLike[str]) -> TuningTable:
    """Makes `auto` use this table ahead of the shipped ones (the environment variable still comes first)."""
    if isinstance(table, (str, os.PathLike)):
        table = load_table(table)
    elif not isinstance(table, TuningTable):
        table = table_from_dict(table)
    _registered.insert(0, table)
    return table


def clear_registered_tables() -> None:
    _registered.clear()


@functools.cache
def _shipped() -> tuple[TuningTable, ...]:
    if not _SHIPPED_DIR.is_dir():
        return ()
    return tuple(load_table(p) for p in sorted(_SHIPPED_DIR.glob("*.json")))


@functools.lru_cache(maxsize=8)
def _env_table(path: str, mtime_ns: int) -> TuningTable:
    del mtime_ns  # part of the cache key only: an edited file is read again
    return load_table(path)


def _sources() -> list[list[TuningTable]]:
    sources = []
    env_tables = []
    for env_path in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        try:
            mtime = os.stat(env_path).st_mtime_ns
        except OSError as err:
            raise ValueError(
                f"${ENV_VAR}={env_path!r} names no readable file ({err.strerror}). Point it at a table "
                f"written by `python scripts/tune_scan.py` (several: separated by {os.pathsep!r}), or "
                f"unset it."
            ) from err
        env_tables.append(_env_table(env_path, mtime))
    if env_tables:
        sources.append(env_tables)
    sources.append(list(_registered))
    sources.append(list(_shipped()))
    return sources


def measured_method(
    length: int,
    state_elems: int,
    platform: str,
    device_kind: str | None = None,
    *,
    kind: str = DEFAULT_KIND,
) -> str | None:
    """The fastest `kind` backend at the nearest measured size on `platform`, or None without a table."""
    if kind not in BACKENDS_BY_KIND:
        raise ValueError(f"measured_method: unknown kind {kind!r}; known: {', '.join(BACKENDS_BY_KIND)}.")
    for tables in _sources():
        candidates = [t for t in tables if t.platform == platform and t.kind == kind]
        if not candidates:
            continue
        same_device = [t for t in candidates if device_kind is not None and t.device_kind == device_kind]
        table = (same_device or candidates)[0]
        nearest = table.nearest(length, state_elems)
        if nearest is not None:
            return nearest.fastest()
    return None


#: Tokens per chunk of the matrix-state chunked engines for a cell whose `chunk_size` is None, by platform
#: and engine; anything not listed takes `MATRIX_CHUNK_DEFAULT`, the references' 64
#: (flash-linear-attention's kernels). On CPU, training at 4,096 tokens (batch 8, 8 heads of 64, input
#: width 128, forward + backward, whole cells, 2026-12-02) with chunks of 32 against 64:
#: - "delta_rule" (DeltaNet, Gated DeltaNet): 2 cores 3.62 and 3.27 s against 4.19 and 3.70 (DeltaNet,
#:   two rounds); one core 3.83 against 4.31, Gated DeltaNet 9.14 against 9.92.
#: - "linear_attention" (the scalar-decay engine: LinearAttention, Performer, the per-head GLA): 2 cores
#:   2.58 and 2.53 s against 3.28 and 2.68 (LinearAttention); one core 2.10 against 2.44.
#: - "gla" (the per-channel engine) stays at 64: 2 cores 2.61 and 3.27 s with 32 against 2.18 and 2.32
#:   (one core preferred 32: 2.34 against 2.59).
MATRIX_CHUNK_BY_PLATFORM: dict[str, dict[str, int]] = {"cpu": {"delta_rule": 32, "linear_attention": 32}}
MATRIX_CHUNK_DEFAULT = 64


def matrix_chunk_size(engine: str, platform: str | None = None) -> int:
    """The default chunk of a matrix-state chunked `engine` ("delta_rule", "linear_attention", "gla") on
    `platform` (None: JAX's default backend).

    >>> cases = [("delta_rule", "cpu"), ("delta_rule", "gpu"), ("gla", "cpu")]
    >>> [matrix_chunk_size(engine, platform) for engine, platform in cases]
    [32, 64, 64]
    """
    if platform is None:
        import jax  # here, not at import: the tables above must load without initialising a backend

        platform = jax.default_backend()
    return MATRIX_CHUNK_BY_PLATFORM.get(platform, {}).get(engine, MATRIX_CHUNK_DEFAULT)
