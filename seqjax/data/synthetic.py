"""Synthetic memory probes: copying with a delay, selective copying, associative recall.

Diagnostics for the trainer and for long memory, never stand-ins for the real tasks. Each task is a
random-access data source: example `i` is a pure function of (seed, i), so a data iterator's state is
just its position, and a resumed run sees exactly the examples it would have seen.

Every example is a dict of [length] arrays:
- "inputs": int32 token ids;
- "targets": int32, the token the model must emit at that position;
- "weights": float32, 1 where the loss counts (the recall positions), 0 elsewhere.

Token ids: 0 = blank/noise filler, 1 = the "go" delimiter, 2.. = data symbols (and keys/values).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["BLANK", "GO", "TASKS", "SyntheticTask"]

BLANK = 0
GO = 1
_FIRST_SYMBOL = 2
TASKS = ("copy", "selective_copy", "associative_recall")


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """A random-access synthetic task.

    Args:
      task: "copy" (K symbols, `delay` blanks, GO, then the K symbols to reproduce; by default the
        delay is `length - 2K - 1`, so it grows with length), "selective_copy" (K symbols scattered
        among blanks, GO, then the K symbols in order), or "associative_recall" (K key/value pairs,
        blanks, then `num_queries` keys whose values must be recalled).
      length: tokens per example.
      num_symbols: K, the symbols (or pairs) to remember.
      vocab_size: total ids, including BLANK and GO; data symbols are 2..vocab_size-1.
      num_queries: associative recall only.
      delay: copy only: the blanks between the last symbol and GO (None: `length - 2K - 1`, the whole
        sequence). A shorter delay puts blanks before the symbols, so the answer stays at the end and the
        distance to remember is `delay + K + 1` tokens whatever the length.
      seed: examples are a pure function of (seed, index).
    """

    task: str
    length: int
    num_symbols: int = 8
    vocab_size: int = 16
    num_queries: int = 4
    delay: int | None = None
    seed: int = 0
    size: int = 2**31 - 1

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"SyntheticTask: task must be one of {TASKS}, got {self.task!r}.")
        if self.vocab_size < _FIRST_SYMBOL + 2:
            raise ValueError(
                f"SyntheticTask: vocab_size must be >= 4 (blank, go, 2+ symbols), got {self.vocab_size}."
            )
        if self.delay is not None:
            if self.task != "copy":
                raise ValueError(f"SyntheticTask: delay is for task 'copy' only, not {self.task!r}.")
            if isinstance(self.delay, bool) or not isinstance(self.delay, int) or self.delay < 0:
                raise ValueError(f"SyntheticTask: delay must be an integer >= 0, got {self.delay!r}.")
        needed = self.min_length
        if self.length < needed:
            raise ValueError(
                f"SyntheticTask({self.task!r}): length {self.length} is too short for {self.num_symbols} "
                f"symbols; it needs at least {needed}. Raise length or lower num_symbols."
            )
        if self.task == "associative_recall":
            if self.num_symbols > self.vocab_size - _FIRST_SYMBOL:
                raise ValueError(
                    f"SyntheticTask: {self.num_symbols} distinct keys need vocab_size >= "
                    f"{self.num_symbols + _FIRST_SYMBOL}, got {self.vocab_size}."
                )
            if not 1 <= self.num_queries <= self.num_symbols:
                raise ValueError(
                    f"SyntheticTask: num_queries must be in [1, num_symbols={self.num_symbols}], got "
                    f"{self.num_queries}."
                )

    @property
    def min_length(self) -> int:
        if self.task == "associative_recall":
            return 2 * self.num_symbols + 2 * self.num_queries
        return 2 * self.num_symbols + 1 + (self.delay or 0)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(f"SyntheticTask index {index} out of range [0, {self.size}).")
        rng = np.random.default_rng((self.seed, int(index)))
        return getattr(self, f"_{self.task}")(rng)

    # -- the tasks -----------------------------------------------------------------------------------
    def _empty(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.full(self.length, BLANK, np.int32),
            np.full(self.length, BLANK, np.int32),
            np.zeros(self.length, np.float32),
        )

    def _symbols(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(_FIRST_SYMBOL, self.vocab_size, size=count).astype(np.int32)

    def _copy(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, targets, weights = self._empty()
        k = self.num_symbols
        symbols = self._symbols(rng, k)
        start = 0 if self.delay is None else self.length - 2 * k - 1 - self.delay
        inputs[start : start + k] = symbols
        self._answer(inputs, targets, weights, symbols)
        return {"inputs": inputs, "targets": targets, "weights": weights}

    def _selective_copy(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, targets, weights = self._empty()
        k = self.num_symbols
        symbols = self._symbols(rng, k)
        positions = np.sort(rng.choice(self.length - k - 1, size=k, replace=False))
        inputs[positions] = symbols
        self._answer(inputs, targets, weights, symbols)
        return {"inputs": inputs, "targets": targets, "weights": weights}

    def _associative_recall(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        inputs, targets, weights = self._empty()
        k, q = self.num_symbols, self.num_queries
        keys = (rng.permutation(self.vocab_size - _FIRST_SYMBOL)[:k] + _FIRST_SYMBOL).astype(np.int32)
        values = self._symbols(rng, k)
        inputs[0 : 2 * k : 2] = keys
        inputs[1 : 2 * k : 2] = values
        asked = rng.choice(k, size=q, replace=False)
        # Queries at the end, each key followed by a slot whose target is its value.
        start = self.length - 2 * q
        inputs[start::2] = keys[asked]
        targets[start::2] = values[asked]
        weights[start::2] = 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}

    def _answer(
        self, inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray, symbols: np.ndarray
    ) -> None:
        """GO at position L-K-1; the model emits symbol j at position L-K-1+j, and the input at each
        answer position after GO is the previous symbol (teacher forcing)."""
        k = len(symbols)
        go = self.length - k - 1
        inputs[go] = GO
        inputs[go + 1 :] = symbols
        targets[go : go + k] = symbols
        weights[go : go + k] = 1.0
