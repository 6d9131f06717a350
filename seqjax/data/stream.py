"""Contiguous stream batching for segment recurrence: row b of batch s+1 continues row b of batch s.

A split's token stream (its documents in order, document starts marked) is cut into `batch_size`
contiguous lanes, one per batch row, and batch s holds segment s (the next `length` tokens) of every
lane. A model that carries each layer's state from one batch to the next (`RunConfig.segment_recurrence`)
then reads every lane as one long sequence, however long its documents are.

Training (`StreamBatches`): the inputs with a target are stream positions [0, N - 1). Each lane is
`lane_tokens = (N - 1) // batch_size` of them (lane b starts at b · lane_tokens; the last
(N - 1) % batch_size positions are never read), and an epoch is the `segments_per_epoch` whole segments
that fit in a lane: `lane_tokens // length`, or, when shuffled, `(lane_tokens - length + 1) // length`,
because each epoch then shifts every lane by a seeded offset in [0, length) so that segments cut the
text at other places each epoch (lanes are not reordered: contiguity is the point). A lane's tail past
its last whole segment is not read that epoch. Global batch i is segment i % S of epoch i // S: a pure
function of (split, batch_size, length, seed, shuffle, i), so the iterator state is the integer i.

Evaluation (`stream_eval_batches`): the lanes cover the whole split, `ceil((N - 1) / batch_size)`
positions each, the last segment of each lane padded (mask False, weight 0), so every target the
per-sequence evaluation counts is counted exactly once.

Evaluation by document (`document_eval_batches`): every document is its own lane, read from its first
token in segments of `length`, `batch_size` documents at a time (longest first, so lanes pad little),
with the state carried across a document's segments or reset at each one: the long-context evaluation
Transformer-XL reports, and the per-segment one, over the same targets. Each batch also has "document"
[batch_size] (the global rows' document index, -1 for an empty lane) for per-document sums, and on
request each target's byte offset from its document's start and its bytes (`target_byte_offsets`: a
BPE token counts the bytes of its decoded piece, `TokenStream.token_bytes`), for sums by position.
Each also has "counted_bytes" [batch_size] (the bytes of each global row's counted targets,
`counted_target_bytes`), which bits per byte divides by: exact for any span of a document read.

Every batch of a token stream has the keys of the per-sequence examples ("inputs", "targets",
"weights", "resets", "mask", [rows, length]), so it goes through the same shardings and loss. `resets`
marks document starts and the first token of every lane in an epoch: a lane's first segment never
continues the state another epoch (or the previous lane) left behind. A target counts (weight 1) where
the source's `TokenStream` says it does: every target for "packed" documents; not a document's first
token for "padded" ones, as their per-sequence examples count it.

Time series (`SeriesStream`, `TimeSeriesSplit.series_stream()`): the same lanes and segments over the
split's rows. A row is a position; its target is the next `horizon` rows, so the positions are
[0, T - horizon). A batch has "inputs" [rows, length, V], "targets" [rows, length, horizon, V]
(standardised as the split's windows), "weights" and "mask" [rows, length] (a position counts only when
its whole horizon lies inside the split and is observed), "resets" [rows, length] (lane starts only).
The batchers read any `Stream` (a `positions` count and a `segment` of rows), the protocol both meet.

    >>> import numpy as np
    >>> stream = TokenStream(np.arange(11), np.eye(11, dtype=bool)[0], np.ones(10, bool))
    >>> batches = StreamBatches(stream, batch_size=2, length=2, shuffle=False)
    >>> [batches.local_batch(s)["inputs"].tolist() for s in range(3)]  # lanes [0, 5) and [5, 10)
    [[[0, 1], [5, 6]], [[2, 3], [7, 8]], [[0, 1], [5, 6]]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np

from seqjax.data.pipeline import PrefetchedBatches

__all__ = [
    "SeriesStream",
    "Stream",
    "StreamBatches",
    "StreamSource",
    "TokenStream",
    "check_position_buckets",
    "counted_target_bytes",
    "document_eval_batches",
    "document_spans",
    "series_stream_of",
    "stream_eval_batches",
    "stream_of",
    "target_byte_offsets",
    "token_stream_of",
]


class Stream(Protocol):
    """A split as one stream of positions, what the lane batchers read: `positions` inputs that have a
    target, [0, positions), and `segment`, inputs [start, stop) as one batch row. `TokenStream` (documents)
    and `SeriesStream` (a time series) are the two."""

    @property
    def positions(self) -> int: ...

    def segment(self, start: int, stop: int, length: int, lane_start: bool) -> dict[str, np.ndarray]:
        """Inputs [start, stop) of the stream (stop - start <= length) as one row of `length` positions,
        padded after stop (mask False, weight 0); `lane_start` resets the state before its first input."""
        ...


def _row(
    count: int, length: int, lane_start: bool, starts: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The keys every stream row has but its inputs and targets: "weights" (zero: the stream fills in
    what counts), "resets" (`starts` of the `count` real positions, and the lane start), "mask"."""
    row = {
        "weights": np.zeros(length, np.float32),
        "resets": np.zeros(length, bool),
        "mask": np.zeros(length, bool),
    }
    if starts is not None:
        row["resets"][:count] = starts
    row["mask"][:count] = True
    if lane_start and count:
        row["resets"][0] = True
    return row


class TokenStream(NamedTuple):
    """A split as one stream: `tokens` [N] (ids), `starts` [N] bool (True at each document's first
    token), `counted` [N - 1] bool (whether the target tokens[t + 1] of input t counts), and optionally
    `token_bytes` [N] (how many bytes of text each token stands for: its decoded byte string's length
    for BPE; None means one byte per token, the byte-level tokenizer), which positions in bytes read
    (`target_byte_offsets`)."""

    tokens: np.ndarray
    starts: np.ndarray
    counted: np.ndarray
    token_bytes: np.ndarray | None = None

    @property
    def positions(self) -> int:
        """Inputs with a target: every token but the last."""
        return max(len(self.tokens) - 1, 0)

    def segment(self, start: int, stop: int, length: int, lane_start: bool) -> dict[str, np.ndarray]:
        """`Stream.segment`: "inputs" and "targets" (the next token) [length] int32."""
        count = max(stop - start, 0)
        row = {"inputs": np.zeros(length, np.int32), "targets": np.zeros(length, np.int32)}
        row |= _row(count, length, lane_start, self.starts[start:stop])
        row["inputs"][:count] = self.tokens[start:stop]
        row["targets"][:count] = self.tokens[start + 1 : stop + 1]
        row["weights"][:count] = self.counted[start:stop]
        return row


class SeriesStream(NamedTuple):
    """A split of a time series as one stream (`TimeSeriesSplit.series_stream()`): `values` [T, V]
    float32 (standardised as the split's windows are), `observed` [T, V] bool, and the `horizon`.

    Input position t (a row) has the target rows t + 1 ... t + horizon, so the positions are
    [0, T - horizon). The first `context` rows belong to the previous split (the look-back a validation
    or test window may read): they are inputs, never targets, so position t counts (weight 1) only when
    t + 1 >= context and every value of its `horizon` target rows is observed. `origins` (bool
    [positions], optional) marks the forecast origins of the split's windows (the last look-back row of
    each window): a row then also has "origins", scored apart by the carried evaluation.
    """

    values: np.ndarray
    observed: np.ndarray
    horizon: int
    context: int = 0
    origins: np.ndarray | None = None

    @property
    def positions(self) -> int:
        """Rows whose whole horizon lies in the stream."""
        return max(len(self.values) - self.horizon, 0)

    def segment(self, start: int, stop: int, length: int, lane_start: bool) -> dict[str, np.ndarray]:
        """`Stream.segment`: "inputs" [length, V], "targets" [length, horizon, V] (the next `horizon`
        rows of each input) float32; "weights" 1 where the position counts (the class docstring)."""
        count, horizon = max(stop - start, 0), self.horizon
        variables = self.values.shape[-1]
        row = {
            "inputs": np.zeros((length, variables), np.float32),
            "targets": np.zeros((length, horizon, variables), np.float32),
        }
        row |= _row(count, length, lane_start)
        if self.origins is not None:
            row["origins"] = np.zeros(length, np.float32)
        if not count:
            return row
        row["inputs"][:count] = self.values[start:stop]
        ahead = self.values[start + 1 : stop + horizon]  # every target row of the segment
        windows = np.lib.stride_tricks.sliding_window_view(ahead, horizon, axis=0)  # [count, V, horizon]
        row["targets"][:count] = np.swapaxes(windows, -1, -2)
        missing = np.concatenate([[0], np.cumsum(~self.observed[start + 1 : stop + horizon].all(-1))])
        observed = missing[horizon:] == missing[:-horizon]  # no unobserved value in the horizon
        inside = np.arange(start, stop) + 1 >= self.context
        row["weights"][:count] = observed & inside
        if self.origins is not None:
            row["origins"][:count] = self.origins[start:stop]
        return row


class StreamSource(Protocol):
    """A split that can serve its tokens as one stream (`DocumentSplit`)."""

    def token_stream(self) -> TokenStream: ...


def token_stream_of(source: Any) -> TokenStream:
    """`source.token_stream()`, checked; a TypeError naming what it needs for any other source."""
    if isinstance(source, TokenStream):
        return source
    if not callable(getattr(source, "token_stream", None)):
        raise TypeError(
            f"segment recurrence reads a split as one token stream, but {type(source).__name__} has no "
            f"token_stream(); use data.kind='documents' (seqjax.data.documents.DocumentSplit)."
        )
    stream = source.token_stream()
    n = len(stream.tokens)
    if len(stream.starts) != n or len(stream.counted) != max(n - 1, 0):
        raise ValueError(
            f"token_stream: tokens [{n}], starts [{len(stream.starts)}] and counted [{len(stream.counted)}] "
            f"do not match (counted has one entry per input with a target, N - 1)."
        )
    if stream.token_bytes is not None and len(stream.token_bytes) != n:
        raise ValueError(
            f"token_stream: token_bytes [{len(stream.token_bytes)}] must be [{n}] (one per token)."
        )
    return stream


def series_stream_of(source: Any) -> SeriesStream:
    """`source.series_stream()` (or a `SeriesStream`), checked."""
    stream = source if isinstance(source, SeriesStream) else source.series_stream()
    values, observed = np.asarray(stream.values), np.asarray(stream.observed)
    if values.ndim != 2 or observed.shape != values.shape:
        raise ValueError(
            f"series_stream: values {values.shape} must be [T, V] and observed {observed.shape} the same."
        )
    if stream.horizon < 1 or not 0 <= stream.context <= len(values):
        raise ValueError(
            f"series_stream: horizon={stream.horizon} must be >= 1 and context={stream.context} in "
            f"[0, {len(values)}] (the rows)."
        )
    if stream.origins is not None and len(stream.origins) != stream.positions:
        raise ValueError(
            f"series_stream: origins [{len(stream.origins)}] must have one entry per position "
            f"({stream.positions})."
        )
    return stream


def stream_of(source: Any) -> Stream:
    """The stream a split serves: a `TokenStream` (`token_stream()`, documents) or a `SeriesStream`
    (`series_stream()`, time series), checked; a TypeError naming what it needs for any other source."""
    if isinstance(source, SeriesStream) or callable(getattr(source, "series_stream", None)):
        return series_stream_of(source)
    if isinstance(source, TokenStream) or callable(getattr(source, "token_stream", None)):
        return token_stream_of(source)
    raise TypeError(
        f"segment recurrence reads a split as one stream, but {type(source).__name__} has neither "
        f"token_stream() nor series_stream(); use data.kind='documents' "
        f"(seqjax.data.documents.DocumentSplit) or data.kind='timeseries' "
        f"(seqjax.data.timeseries.TimeSeriesSplit)."
    )


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _check_rows(batch_size: int, process_count: int, process_index: int) -> int:
    if batch_size < 1 or process_count < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} does not divide over {process_count} processes; make it a multiple."
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
    return batch_size // process_count


class StreamBatches(PrefetchedBatches):
    """Global training batch `i` of a split's stream (this process's rows), prefetched on a thread.

    The interface of `seqjax.data.pipeline.TrainBatches` (`next()`, `local_batch(i)`, `state()`,
    `close()`, `start=`); the layout is the module docstring's.

    Args:
      source: the training split (one with `token_stream()` or `series_stream()`: `stream_of`), or a
        `Stream` (`TokenStream`, `SeriesStream`).
      batch_size: the global batch = the number of lanes; must divide by `process_count`.
      length: positions (tokens, time steps) per segment (the config's `length`).
      seed, shuffle: with `shuffle`, epoch e shifts every lane by an offset in [0, length) drawn from
        (seed, e); without, lanes start at their first token every epoch.
      process_index, process_count: which rows (lanes) of each global batch this process builds.
      start: the first batch index (the resumed data position).
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        length: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        start: int = 0,
        prefetch: int = 2,
    ) -> None:
        self._rows = _check_rows(batch_size, process_count, process_index)
        if length < 1:
            raise ValueError(f"StreamBatches: length={length}; a segment needs at least one token.")
        self._stream = stream_of(source)
        self.batch_size = batch_size
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.lane_tokens = self._stream.positions // batch_size  # positions (tokens, time steps) per lane
        self.max_offset = length - 1 if shuffle else 0
        self.segments_per_epoch = max(self.lane_tokens - self.max_offset, 0) // length
        if self.segments_per_epoch < 1:
            raise ValueError(
                f"StreamBatches: the split's {self._stream.positions} positions make {batch_size} lanes of "
                f"{self.lane_tokens} positions, too short for one segment of length={length}"
                + (f" after a shift of up to {self.max_offset}" if shuffle else "")
                + "; use a smaller batch_size or length."
            )
        self._first_lane = process_index * self._rows
        super().__init__(start=start, prefetch=prefetch)

    def epoch_offset(self, epoch: int) -> int:
        """How far every lane is shifted in `epoch` (0 without shuffling)."""
        if not self.shuffle:
            return 0
        return int(np.random.default_rng([self.seed, epoch]).integers(0, self.max_offset + 1))

    def lane_span(self, index: int, lane: int) -> tuple[int, int]:
        """[start, stop) stream positions of the inputs of global batch `index`, row `lane`."""
        epoch, segment = divmod(index, self.segments_per_epoch)
        start = lane * self.lane_tokens + self.epoch_offset(epoch) + segment * self.length
        return start, start + self.length

    def local_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `index` (pure: no iterator state involved)."""
        if index < 0:
            raise IndexError(f"StreamBatches: batch index {index} is negative.")
        first = index % self.segments_per_epoch == 0
        rows = []
        for lane in range(self._first_lane, self._first_lane + self._rows):
            start, stop = self.lane_span(index, lane)
            rows.append(self._stream.segment(start, stop, self.length, first))
        return _stack(rows)


def stream_eval_batches(
    source: Any,
    batch_size: int,
    length: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The whole split (any `stream_of` source) as `batch_size` contiguous lanes of
    ceil(positions / batch_size) inputs (for tokens, positions = N - 1), in segments of `length` (this
    process's rows); the last segment of each lane is padded.

    >>> stream = TokenStream(np.arange(8), np.eye(8, dtype=bool)[0], np.ones(7, bool))
    >>> [b["mask"].sum(-1).tolist() for b in stream_eval_batches(stream, 2, 3)]  # lanes [0, 4), [4, 7)
    [[3, 3], [1, 0]]
    """
    rows = _check_rows(batch_size, process_count, process_index)
    stream = stream_of(source)
    inputs = stream.positions
    if inputs == 0:
        raise ValueError("stream_eval_batches: the split has no targets; nothing to evaluate.")
    lane_tokens = math.ceil(inputs / batch_size)
    first_lane = process_index * rows
    for segment in range(math.ceil(lane_tokens / length)):
        batch = []
        for lane in range(first_lane, first_lane + rows):
            start = lane * lane_tokens + segment * length
            stop = min(start + length, (lane + 1) * lane_tokens, inputs)
            batch.append(stream.segment(start, stop, length, segment == 0))
        yield _stack(batch)


def document_spans(stream: TokenStream) -> np.ndarray:
    """[documents, 2] int64: the [start, stop) input positions of each document of `stream` (inputs are
    the positions with a target, [0, N - 1); a document's last input predicts the next one's first
    token, counted or not as `stream.counted` says).

    >>> document_spans(TokenStream(np.arange(7), np.array([1, 0, 0, 1, 0, 0, 0], bool), np.ones(6, bool)))
    array([[0, 3],
           [3, 6]])
    """
    inputs = max(len(stream.tokens) - 1, 0)
    starts = np.flatnonzero(stream.starts[:inputs])
    if inputs and (not len(starts) or starts[0] != 0):
        starts = np.concatenate([[0], starts])
    stops = np.append(starts[1:], inputs)
    return np.stack([starts, stops], axis=-1).astype(np.int64)


def check_position_buckets(edges: Any) -> np.ndarray:
    """`edges` (byte offsets from a document's start) checked and returned as int64: the buckets are
    [edges[i], edges[i + 1]) and [edges[-1], infinity), so they must start at 0 (every target falls in
    one) and strictly increase.

    >>> check_position_buckets((0, 1024, 2048)).tolist()
    [0, 1024, 2048]
    """
    array = np.asarray(edges)
    if array.ndim != 1 or not len(array) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"position_buckets must be a non-empty sequence of integer byte offsets, e.g. (0, 1024, 2048, "
            f"4096, 8192, 16384); got {edges!r}."
        )
    if array[0] != 0 or np.any(np.diff(array) <= 0):
        raise ValueError(
            f"position_buckets={array.tolist()} must start at 0 and strictly increase: bucket i is "
            f"[edges[i], edges[i + 1]) bytes from the document's start, the last one open-ended."
        )
    return array.astype(np.int64)


def target_byte_offsets(stream: TokenStream) -> tuple[np.ndarray, np.ndarray]:
    """Per input t of `stream` ([N - 1]): the byte offset of its target (token t + 1) from the first
    byte of input t's document (`document_spans`), int64, and the bytes the target stands for, float64
    (`stream.token_bytes`, else 1: byte-level). A document's first target sits after its first token
    (offset = that token's bytes); its last input's target is the next document's first token, at the
    document's byte length (counted or not as `stream.counted` says).

    >>> stream = TokenStream(np.arange(6), np.array([1, 0, 0, 1, 0, 0], bool), np.ones(5, bool),
    ...                      np.array([2, 1, 3, 1, 2, 2]))
    >>> [a.tolist() for a in target_byte_offsets(stream)]
    [[2, 3, 6, 1, 3], [1.0, 3.0, 1.0, 2.0, 2.0]]
    """
    inputs = max(len(stream.tokens) - 1, 0)
    sizes = np.ones(len(stream.tokens), np.int64)
    if stream.token_bytes is not None:
        sizes = np.asarray(stream.token_bytes, np.int64)
    before = np.concatenate([[0], np.cumsum(sizes)])  # before[i]: bytes of the stream before token i
    spans = document_spans(stream)
    first = np.repeat(spans[:, 0], spans[:, 1] - spans[:, 0])  # each input's document start
    offsets = before[1 : inputs + 1] - before[first]
    return offsets.astype(np.int64), sizes[1 : inputs + 1].astype(np.float64)


def counted_target_bytes(stream: TokenStream) -> np.ndarray:
    """Per input t of `stream` ([N - 1], float64): the bytes its target (token t + 1) stands for when it
    counts (`stream.token_bytes`, else 1: byte-level), 0 when it does not. Its sum over the inputs an
    evaluation reads is the bytes bits per byte divides by; why not tokens x the split's bytes per token:
    that average is exact only for the whole split, and a document's first tokens (what
    `max_document_tokens` reads) can be much shorter than it.

    >>> stream = TokenStream(np.arange(4), np.array([1, 0, 1, 0], bool), np.array([1, 0, 1], bool),
    ...                      np.array([2, 3, 1, 4]))
    >>> counted_target_bytes(stream).tolist()
    [3.0, 0.0, 4.0]
    """
    inputs = max(len(stream.tokens) - 1, 0)
    sizes = np.ones(inputs, np.float64)
    if stream.token_bytes is not None:
        sizes = np.asarray(stream.token_bytes[1 : inputs + 1], np.float64)
    return sizes * np.asarray(stream.counted[:inputs], bool)


def document_eval_batches(
    source: StreamSource | TokenStream,
    batch_size: int,
    length: int,
    *,
    carried: bool = True,
    byte_offsets: bool = False,
    max_document_tokens: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every document of the split as its own lane, `batch_size` documents at a time (longest first),
    in segments of `length` (this process's rows; the module docstring). With `max_document_tokens`, only
    each document's first that many tokens are read (and scored): a curve by position up to a bound costs
    no more for a 400 kB book than for a 40 kB one. With `carried` the state runs
    through each document's segments (only its first token resets); without, every segment starts from
    a reset, so no target sees context from an earlier segment. "document" [batch_size] holds the
    global rows' document indices (-1: no document), the same in every process, and "counted_bytes"
    [batch_size] float64 the bytes of each global row's counted targets (`counted_target_bytes`). With
    `byte_offsets`, also "target_offset" [batch_size, length] int64 (each target's byte offset from its
    document's start, `target_byte_offsets`; -1 on padding) and "target_bytes" [batch_size, length]
    float64 (the bytes it stands for; 0 on padding), for the global rows too: what per-position sums
    read.

    >>> stream = TokenStream(np.arange(8), np.array([1, 0, 0, 0, 0, 1, 0, 0], bool), np.ones(7, bool))
    >>> batches = list(document_eval_batches(stream, 2, 3, carried=False))
    >>> [(b["document"].tolist(), b["mask"].sum(-1).tolist(), b["resets"][:, 0].tolist()) for b in batches]
    [([0, 1], [3, 2], [True, True]), ([0, 1], [2, 0], [True, False])]
    >>> [b["mask"].sum(-1).tolist() for b in document_eval_batches(stream, 2, 3, max_document_tokens=2)]
    [[2, 2]]
    """
    rows = _check_rows(batch_size, process_count, process_index)
    if length < 1:
        raise ValueError(f"document_eval_batches: length={length}; a segment needs at least one token.")
    if max_document_tokens is not None and max_document_tokens < 1:
        raise ValueError(
            f"document_eval_batches: max_document_tokens={max_document_tokens}; give at least 1, or None "
            "to read whole documents."
        )
    stream = token_stream_of(source)
    spans = document_spans(stream)
    if max_document_tokens is not None:
        spans = spans.copy()
        spans[:, 1] = np.minimum(spans[:, 1], spans[:, 0] + max_document_tokens)
    if not len(spans):
        raise ValueError("document_eval_batches: the split has no targets; nothing to evaluate.")
    order = np.argsort(-(spans[:, 1] - spans[:, 0]), kind="stable")
    offsets, sizes = target_byte_offsets(stream) if byte_offsets else (None, None)
    counted_before = np.concatenate([[0.0], np.cumsum(counted_target_bytes(stream))])
    first_row = process_index * rows
    for group in range(0, len(order), batch_size):
        documents = np.full(batch_size, -1, np.int64)
        members = order[group : group + batch_size]
        documents[: len(members)] = members
        longest = max(int(spans[d, 1] - spans[d, 0]) for d in members)
        for segment in range(math.ceil(longest / length)):
            batch = []
            for row in range(first_row, first_row + rows):
                d = documents[row]
                start, stop = (0, 0) if d < 0 else spans[d]
                begin = start + segment * length
                lane_start = segment == 0 or not carried
                batch.append(stream.segment(begin, min(begin + length, stop), length, lane_start))
            extra = {"document": documents.copy(), "counted_bytes": np.zeros(batch_size, np.float64)}
            for row, d in enumerate(documents):  # every global row: the sums are global
                if d >= 0:
                    begin = min(int(spans[d, 0]) + segment * length, int(spans[d, 1]))
                    end = min(begin + length, int(spans[d, 1]))
                    extra["counted_bytes"][row] = counted_before[end] - counted_before[begin]
            if offsets is not None:
                extra["target_offset"] = np.full((batch_size, length), -1, np.int64)
                extra["target_bytes"] = np.zeros((batch_size, length), np.float64)
                for row, d in enumerate(documents):  # every global row: the sums are global
                    if d < 0:
                        continue
                    begin = int(spans[d, 0]) + segment * length
                    count = max(min(begin + length, int(spans[d, 1])) - begin, 0)  # 0: document done
                    extra["target_offset"][row, :count] = offsets[begin : begin + count]
                    extra["target_bytes"][row, :count] = sizes[begin : begin + count]
            yield _stack(batch) | extra
