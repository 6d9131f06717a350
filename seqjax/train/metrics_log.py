"""A run's metric records: `workdir/metrics.jsonl` and, optionally, TensorBoard event files.

- One JSON object per line, each with "step" and "split" ("train" or "eval") and the numbers.
- Only the writing process (process 0 of a run) touches the files; the others pass `enabled=False`.
- A resumed run starts at the restored checkpoint's step, so records a killed or preempted run wrote past
  that step would appear twice. On open, `metrics.jsonl` keeps only records at or before `start_step`
  (a torn last line from a killed writer is dropped too), and the TensorBoard writer is opened with
  `purge_step=start_step + 1`, which makes TensorBoard hide the older events from that step on.

    >>> import tempfile
    >>> workdir = tempfile.mkdtemp()
    >>> log = MetricsLog(workdir, start_step=0, tensorboard=False)
    >>> log.write({"step": 1, "split": "train", "loss": 2.5})
    >>> log.write({"step": 2, "split": "train", "loss": 2.0})
    >>> log.close()
    >>> MetricsLog(workdir, start_step=1, tensorboard=False).close()  # resumed at step 1
    >>> read_records(workdir)
    [{'step': 1, 'split': 'train', 'loss': 2.5}]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["METRICS_FILE", "MetricsLog", "read_records"]

METRICS_FILE = "metrics.jsonl"


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line cut short when the writer was killed
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_records(workdir: str) -> list[dict[str, Any]]:
    """The records in `workdir/metrics.jsonl`, in order (none when there is no file)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r for r in map(_parse, f) if r is not None]


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites `path` without the records past `step`, atomically (a temp file, then a rename)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if (record := _parse(line)) is not None and record["step"] <= step]
    if len(kept) == len(lines) and (not lines or lines[-1].endswith("\n")):
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
    os.replace(tmp, path)


class MetricsLog:
    """Appends metric records to `workdir/metrics.jsonl` and (`tensorboard`) `workdir/tensorboard`.

    `start_step`: the step the run starts from (0, or the restored checkpoint's); records past it are
    dropped on open. `enabled=False` (every process but 0) makes every method a no-op.
    """

    def __init__(self, workdir: str, *, start_step: int, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._summary = None
        if not enabled:
            return
        _drop_records_after(self.path, start_step)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # TensorBoard hides events at or past purge_step that precede this writer's first event.
            self._summary = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one record (with "step" and "split") to the file and its finite numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._summary is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, int | float) and math.isfinite(v):
                    self._summary.add_scalar(f"{record['split']}/{k}", v, record["step"])
            self._summary.flush()

    def close(self) -> None:
        """Closes the TensorBoard writer (the JSON file is closed after every record)."""
        if self._summary is not None:
            self._summary.close()
            self._summary = None
