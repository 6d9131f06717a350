"""Stream sources for online learning, addressed by position: `stream.chunk(position, count)` gives the
tokens [position, position + count) as a pure function of the stream's settings and the position, so a
run resumed from a checkpoint reads exactly the tokens it would have read (nothing is replayed through
the learner).

- `Narma10(seed)`: the standard NARMA-10 system (Atiya & Parlos 2000), unbounded:
      y_{t+1} = 0.3 y_t + 0.05 y_t Σ_{i=0}^{9} y_{t−i} + 1.5 u_{t−9} u_t + 0.1,   u_t ~ U[0, 0.5],
  y and u zero before t = 0. Token t: input u_t, target y_{t+1} (the model never sees y: it must
  identify the system from u alone). u is drawn in blocks of 4,096 from `np.random.default_rng([seed,
  block])`, so any u_t is random access; y is a recursion, so a cold read at position p recomputes y
  from 0 (a NumPy loop, ~3 µs a step; reading on from the last chunk costs nothing). The standard
  recurrence diverges for some draws of u (about 3 seeds in 10 within 10⁵ steps): the stream then raises
  `StreamDiverged` naming the position; `bounded_seeds` picks seeds that stay finite for a length.
- `OneStepSeries(values, warmup)`: a multivariate series one step ahead. Token t: input row
  warmup + t, target row warmup + t + 1, both standardised with the mean and standard deviation of the
  first `warmup` rows only. Those rows are never scored, so no statistic uses a value at or after a
  scored step (no look-ahead). `household_power(warmup=1440)` reads the real sample embedded in the
  repository (100,000 minutes × 7 variables; the first day standardises, 98,559 steps remain).
- `ByteStream(documents)`: next-byte prediction over documents one after another. Token t: input the
  one-hot byte t, target the one-hot byte t + 1; the first byte of a document carries a reset (states
  and traces cleared), and the step whose target would be the next document's first byte is padding
  (mask False: no loss, no update). `document_bytes("perl_docs")` reads an embedded corpus sample.

Every stream says its `loss` ("mse" or "cross_entropy"), `input_size`, `output_size` and `length` (None
when unbounded).

    >>> stream = Narma10(seed=0)
    >>> chunk = stream.chunk(0, 5)
    >>> chunk.x.shape, chunk.y.shape, chunk.reset.shape
    ((5, 1), (5, 1), (5,))
    >>> bool(np.all(stream.chunk(3, 2).y == chunk.y[3:5]))
    True
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ByteStream",
    "Chunk",
    "Narma10",
    "OneStepSeries",
    "Stream",
    "StreamDiverged",
    "bounded_seeds",
    "document_bytes",
    "household_power",
    "narma10_reference",
]

U_BLOCK = 4096  # u is drawn in blocks of this many steps, one generator per (seed, block)
NARMA_BOUND = 10.0  # |y| beyond this: the recurrence has diverged (it reaches inf within ~20 steps)


class StreamDiverged(ValueError):
    """A generated stream left its bounded range (NARMA-10's recurrence is unstable for some inputs)."""


class Chunk(NamedTuple):
    """`count` consecutive tokens: x [count, input_size] float32, y [count, output_size] float32, reset
    and mask [count] bool (the learner's flags)."""

    x: np.ndarray
    y: np.ndarray
    reset: np.ndarray
    mask: np.ndarray


class Stream(abc.ABC):
    """A position-addressed stream of (input, target) tokens."""

    loss: str  # "mse" or "cross_entropy"
    input_size: int
    output_size: int
    length: int | None  # tokens; None: unbounded

    @abc.abstractmethod
    def _tokens(self, position: int, count: int) -> Chunk: ...

    def chunk(self, position: int, count: int) -> Chunk:
        """Tokens [position, position + count); past the end of a finite stream is an error."""
        if isinstance(position, bool) or int(position) != position or position < 0:
            raise ValueError(
                f"{type(self).__name__}.chunk: position must be an integer >= 0, got {position!r}."
            )
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise ValueError(f"{type(self).__name__}.chunk: count must be a positive integer, got {count!r}.")
        position, count = int(position), int(count)
        if self.length is not None and position + count > self.length:
            raise ValueError(
                f"{type(self).__name__}.chunk: tokens [{position}, {position + count}) run past the stream's "
                f"end ({self.length} tokens); lower total_steps to at most {self.length}."
            )
        return self._tokens(position, count)

    def describe(self) -> dict[str, Any]:
        """What identifies the stream (saved with the run's config)."""
        return {"kind": type(self).__name__, "length": self.length}


# ==================================================================================================
# NARMA-10
# ==================================================================================================
def _narma_u(seed: int, start: int, stop: int) -> np.ndarray:
    """u_t for t in [start, stop), float64."""
    first, last = start // U_BLOCK, (stop - 1) // U_BLOCK
    blocks = [np.random.default_rng([seed, b]).uniform(0.0, 0.5, U_BLOCK) for b in range(first, last + 1)]
    return np.concatenate(blocks)[start - first * U_BLOCK : stop - first * U_BLOCK]


def narma10_reference(u: np.ndarray) -> np.ndarray:
    """y_1 .. y_T of NARMA-10 for inputs u_0 .. u_{T-1}, by the textbook loop (the tests' reference)."""
    y = np.zeros(len(u) + 1)
    for t in range(len(u)):
        window = y[max(0, t - 9) : t + 1].sum()
        u_lag = u[t - 9] if t >= 9 else 0.0
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * window + 1.5 * u_lag * u[t] + 0.1
    return y[1:]


@dataclasses.dataclass
class Narma10(Stream):
    """NARMA-10 (module docstring). `seed` picks the input draw."""

    seed: int = 0
    loss = "mse"
    input_size = 1
    output_size = 1
    length = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"Narma10: seed must be an integer >= 0, got {self.seed!r}.")
        self._reset_cursor()

    def _reset_cursor(self) -> None:
        # y_{cursor-9} .. y_cursor (the 10 values the next step reads), u_{cursor-9} .. u_{cursor-1}
        self._cursor = 0
        self._y = np.zeros(10)
        self._u = np.zeros(9)

    def _advance(self, u: np.ndarray) -> np.ndarray:
        """Runs the recurrence over `u` (inputs from the cursor on); returns y_{cursor+1} ...."""
        ys, us = list(self._y), list(self._u)
        out = np.empty(len(u))
        y_t, window = ys[-1], float(np.sum(ys))
        for i, u_t in enumerate(u.tolist()):
            y_next = 0.3 * y_t + 0.05 * y_t * window + 1.5 * us[-9] * u_t + 0.1
            if not abs(y_next) < NARMA_BOUND:  # also catches NaN
                raise StreamDiverged(
                    f"Narma10(seed={self.seed}): the recurrence diverges at position {self._cursor + i} "
                    f"(y = {y_next:.3g}); the standard NARMA-10 is unstable for some input draws. Use "
                    f"another seed (seqjax.online.streams.bounded_seeds lists stable ones)."
                )
            out[i] = y_next
            window += y_next - ys[-10]
            ys.append(y_next)
            us.append(u_t)
            del ys[0], us[0]
            y_t = y_next
        self._y, self._u = np.array(ys), np.array(us)
        self._cursor += len(u)
        return out

    def _tokens(self, position: int, count: int) -> Chunk:
        if position < self._cursor:
            self._reset_cursor()
        if position > self._cursor:  # a cold read: recompute y up to the position (no learning replayed)
            self._advance(_narma_u(self.seed, self._cursor, position))
        u = _narma_u(self.seed, position, position + count)
        y = self._advance(u)
        flags = np.zeros(count, bool)
        return Chunk(u[:, None].astype(np.float32), y[:, None].astype(np.float32), flags, ~flags)

    def describe(self) -> dict[str, Any]:
        return {"kind": "narma10", "seed": self.seed, "length": None}


def bounded_seeds(count: int, length: int, start: int = 0) -> list[int]:
    """The first `count` seeds from `start` whose NARMA-10 stays bounded for `length` steps.

    >>> bounded_seeds(2, 1000)
    [0, 1]
    """
    seeds, seed = [], start
    while len(seeds) < count:
        try:
            Narma10(seed).chunk(0, length)
            seeds.append(seed)
        except StreamDiverged:
            pass
        seed += 1
    return seeds


# ==================================================================================================
# A time series, one step ahead
# ==================================================================================================
@dataclasses.dataclass
class OneStepSeries(Stream):
    """`values` [T, V] one step ahead, standardised with the first `warmup` rows (module docstring);
    `observed` [T, V] (optional) excludes filled-in values from the statistics."""

    values: np.ndarray
    warmup: int
    observed: np.ndarray | None = None
    name: str = "series"
    loss = "mse"

    def __post_init__(self) -> None:
        values = np.asarray(self.values, np.float64)
        if values.ndim != 2:
            raise ValueError(f"OneStepSeries: values must be [time, variables], got shape {values.shape}.")
        if not np.all(np.isfinite(values)):
            raise ValueError("OneStepSeries: values hold NaN or Inf; fill missing values first.")
        if isinstance(self.warmup, bool) or int(self.warmup) != self.warmup or self.warmup < 2:
            raise ValueError(f"OneStepSeries: warmup must be an integer >= 2 (rows), got {self.warmup!r}.")
        if self.warmup >= len(values) - 1:
            raise ValueError(
                f"OneStepSeries: warmup {self.warmup} leaves no step of the {len(values)}-row series."
            )
        lead = values[: self.warmup]
        seen = np.ones_like(lead, bool) if self.observed is None else np.asarray(self.observed)[: self.warmup]
        counts = seen.sum(axis=0)
        mean = np.where(counts > 0, (lead * seen).sum(axis=0) / np.maximum(counts, 1), 0.0)
        var = np.where(counts > 0, ((lead - mean) ** 2 * seen).sum(axis=0) / np.maximum(counts, 1), 1.0)
        std = np.sqrt(var)
        self.mean, self.std = mean, np.where(std > 0, std, 1.0)  # constant over the warm-up: std 1
        self._z = ((values - self.mean) / self.std).astype(np.float32)
        self.input_size = self.output_size = values.shape[1]
        self.length = len(values) - self.warmup - 1

    def _tokens(self, position: int, count: int) -> Chunk:
        first = self.warmup + position
        flags = np.zeros(count, bool)
        return Chunk(self._z[first : first + count], self._z[first + 1 : first + count + 1], flags, ~flags)

    def describe(self) -> dict[str, Any]:
        return {"kind": "series", "name": self.name, "warmup": self.warmup, "length": self.length}


def household_power(warmup: int = 1440) -> OneStepSeries:
    """The embedded household power sample (100,000 minutes × 7 variables, missing values filled
    causally by `read_series`) one step ahead, standardised with its first `warmup` minutes."""
    values, observed = _household_power_sample()
    return OneStepSeries(values, warmup, observed, name="household_power")


@functools.lru_cache(maxsize=1)
def _household_power_sample() -> tuple[np.ndarray, np.ndarray]:
    """(values, observed) of the embedded sample, parsed once per process and read-only: it is package
    data, and a driver builds the stream for every method, rate and seed (parsing its 100,000 CSV rows
    took 0.4 s each time, 15 times in the online-learning smoke run)."""
    from seqjax.data.sources import sample_path
    from seqjax.data.timeseries import read_series

    series = read_series(sample_path("timeseries/household_power.csv.xz"), "household_power")
    values, observed = np.array(series.values), np.array(series.observed)
    values.flags.writeable = observed.flags.writeable = False
    return values, observed


# ==================================================================================================
# Bytes of documents
# ==================================================================================================
@dataclasses.dataclass
class ByteStream(Stream):
    """Next byte over `documents` (bytes each) in order (module docstring)."""

    documents: Sequence[bytes]
    name: str = "documents"
    loss = "cross_entropy"
    input_size = 256
    output_size = 256

    def __post_init__(self) -> None:
        docs = [bytes(d) for d in self.documents if len(d) > 0]
        if not docs:
            raise ValueError("ByteStream: give at least one non-empty document.")
        self._bytes = np.frombuffer(b"".join(docs), np.uint8)
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
        self._reset = np.zeros(len(self._bytes), bool)
        self._reset[starts] = True
        # the step at a document's last byte would predict the next document's first: padding
        self._mask = ~np.roll(self._reset, -1)
        self.length = len(self._bytes) - 1
        self.num_documents = len(docs)

    def _tokens(self, position: int, count: int) -> Chunk:
        eye = np.eye(256, dtype=np.float32)
        window = self._bytes[position : position + count + 1]
        stop = position + count
        return Chunk(eye[window[:-1]], eye[window[1:]], self._reset[position:stop], self._mask[position:stop])

    def describe(self) -> dict[str, Any]:
        return {"kind": "bytes", "name": self.name, "documents": self.num_documents, "length": self.length}


def document_bytes(corpus: str = "perl_docs") -> ByteStream:
    """The embedded sample of a document corpus (`seqjax.data.documents`) as one byte stream, its
    documents in id order, each UTF-8 encoded."""
    from seqjax.data.documents import read_documents
    from seqjax.data.documents.catalog import SOURCES
    from seqjax.data.sources import sample_path

    if corpus not in SOURCES:
        raise ValueError(f"document_bytes: unknown corpus {corpus!r}; choose one of {sorted(SOURCES)}.")
    documents = read_documents(corpus, sample_path(SOURCES[corpus].sample))
    return ByteStream([d.text.encode("utf-8") for d in documents], name=corpus)
