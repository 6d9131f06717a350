"""A byte n-gram language model with interpolated Kneser–Ney smoothing (NumPy, exact normalisation).

The model (Chen & Goodman 1998, "interpolated Kneser–Ney", one discount per order):

    P_n(w | h) = max(c(h w) - D_n, 0) / c(h) + D_n * N1+(h ·) / c(h) * P_{n-1}(w | h')   if c(h) > 0
               = P_{n-1}(w | h')                                                         otherwise
    P_0(w)     = 1 / 256

where h' drops h's oldest byte. At the highest order c(.) are raw counts; at every lower order they
are continuation counts N1+(· h w), the number of distinct bytes seen before h w (why: a lower order
is only consulted where the longer context is rare, so what matters is in how many contexts a byte
sequence occurs, not how often). N1+(h ·) is the number of distinct bytes seen after h.
D_m = n1 / (n1 + 2 n2) from the order's count-of-counts (Ney's estimate), clipped to [0.05, 0.95] so
that every byte keeps a nonzero probability even on degenerate training data. Since every count is >= 1
> D, the probabilities over the 256 bytes sum to 1 at every context (tested exactly).

`order` is the n of the n-gram: a byte is predicted from the `order - 1` bytes before it. Documents
are modelled independently: each is left-padded with `order - 1` copies of a document-start symbol
(256, never predicted), so the first bytes of a document are predicted from the start-of-document
context and no n-gram spans two documents. Counts live in sorted int64 arrays (an n-gram is a base-257
number) looked up with `np.searchsorted`, vectorised over all positions of a document.

    >>> model = KneserNeyBytes([b"abracadabra"], order=3)
    >>> round(float(model.probabilities(b"ab").sum()), 12)
    1.0
    >>> round(float(model.probabilities(b"ab")[ord("r")]), 3)
    0.755
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_ORDER", "KneserNeyBytes"]

#: 257**7 still fits an int64 n-gram code; the issue asks for orders up to 5.
MAX_ORDER = 7
_BASE = 257  # 256 byte values + the document-start symbol
_START = 256
_DISCOUNT_RANGE = (0.05, 0.95)


class _OrderTable:
    """The counts of one order: sorted n-gram codes with their counts, and per context (the code
    without its last byte) the total count and the number of distinct following bytes."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray) -> None:
        self.codes = codes  # sorted, unique
        self.counts = counts.astype(np.float64)
        contexts = codes // _BASE
        starts = np.flatnonzero(np.concatenate([[True], contexts[1:] != contexts[:-1]]))
        self.contexts = contexts[starts]
        self.context_totals = np.add.reduceat(self.counts, starts)
        self.context_types = np.diff(np.append(starts, len(codes))).astype(np.float64)
        n1 = float(np.sum(counts == 1))
        n2 = float(np.sum(counts == 2))
        discount = n1 / (n1 + 2 * n2) if n1 + n2 > 0 else 0.5
        self.discount = float(np.clip(discount, *_DISCOUNT_RANGE))

    @staticmethod
    def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position = np.minimum(np.searchsorted(sorted_keys, queries), max(len(sorted_keys) - 1, 0))
        found = sorted_keys[position] == queries if len(sorted_keys) else np.zeros(len(queries), bool)
        return position, found

    def interpolate(self, codes: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P_m(w | h) for the n-grams `codes` given P_{m-1} of the same queries (`lower`)."""
        context_position, context_found = self._find(self.contexts, codes // _BASE)
        gram_position, gram_found = self._find(self.codes, codes)
        count = np.where(gram_found, self.counts[gram_position], 0.0)
        total = np.where(context_found, self.context_totals[context_position], 1.0)
        types = np.where(context_found, self.context_types[context_position], 0.0)
        smoothed = np.maximum(count - self.discount, 0.0) / total + self.discount * types / total * lower
        return np.where(context_found, smoothed, lower)


class KneserNeyBytes:
    """An order-`order` byte n-gram model with interpolated Kneser–Ney smoothing, fit on `documents`.

    >>> model = KneserNeyBytes([b"aaaa"], order=2)
    >>> bool(model.probabilities(b"a")[ord("a")] > 0.9)
    True
    """

    def __init__(self, documents: Sequence[bytes], order: int) -> None:
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"KneserNeyBytes: order must be an int in [1, {MAX_ORDER}], got {order!r}.")
        if not any(len(d) for d in documents):
            raise ValueError("KneserNeyBytes: documents hold no byte; fit on a non-empty train split.")
        self.order = int(order)
        self.training_bytes = int(sum(len(d) for d in documents))
        codes = self._codes(documents)  # codes[m - 1]: the m-gram ending at each training byte
        self.tables = []
        for m in range(1, self.order + 1):
            if m == self.order:
                grams, counts = np.unique(codes[m - 1], return_counts=True)
            else:
                # continuation count of an m-gram: how many distinct (m+1)-grams end with it
                longer = np.unique(codes[m])
                grams, counts = np.unique(longer % _BASE**m, return_counts=True)
            self.tables.append(_OrderTable(grams, counts))

    def _codes(self, documents: Sequence[bytes]) -> list[np.ndarray]:
        """For m = 1..order, the base-257 code of the m-gram ending at every byte of `documents`."""
        pad = self.order - 1
        padded = [np.concatenate([np.full(pad, _START), np.frombuffer(d, np.uint8)]) for d in documents]
        sequence = np.concatenate(padded).astype(np.int64) if padded else np.zeros(0, np.int64)
        lengths = np.array([len(d) for d in documents], np.int64)
        doc_starts = np.concatenate([[0], np.cumsum(lengths + pad)[:-1]]) + pad
        targets = np.concatenate(
            [np.arange(s, s + n, dtype=np.int64) for s, n in zip(doc_starts, lengths, strict=True)]
        )
        codes = [sequence[targets]]
        for m in range(2, self.order + 1):
            codes.append(codes[-1] + sequence[targets - (m - 1)] * _BASE ** (m - 1))
        return codes

    def _probabilities_of_codes(self, codes: list[np.ndarray]) -> np.ndarray:
        probability = np.full(len(codes[0]), 1.0 / 256.0)
        for table, order_codes in zip(self.tables, codes, strict=True):
            probability = table.interpolate(order_codes, probability)
        return probability

    def document_nats(self, document: bytes) -> np.ndarray:
        """float64[len(document)]: -ln P(byte | the preceding bytes of the document) for each byte."""
        if len(document) == 0:
            return np.zeros(0)
        return -np.log(self._probabilities_of_codes(self._codes([document])))

    def probabilities(self, context: bytes) -> np.ndarray:
        """float64[256]: P(next byte | `context`), `context` being the document so far (only its last
        `order - 1` bytes matter; a shorter one starts at the document start)."""
        history = np.frombuffer(bytes(context)[-(self.order - 1) :] if self.order > 1 else b"", np.uint8)
        history = np.concatenate([np.full(self.order - 1 - len(history), _START), history]).astype(np.int64)
        candidates = np.arange(256, dtype=np.int64)
        codes = [candidates]
        for m in range(2, self.order + 1):
            codes.append(codes[-1] + history[len(history) - (m - 1)] * _BASE ** (m - 1))
        return self._probabilities_of_codes(codes)
