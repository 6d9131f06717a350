"""Batches from a random-access source: shuffled with grain, sharded by process, resumable by position.

A source is anything with `len(source)` and `source[i] -> dict of NumPy arrays` (fixed shapes): the
synthetic tasks and every real task's split. Training batches come from a stream of epochs, each a
permutation of the source by grain (`grain.MapDataset.source(source).shuffle(epoch_seed)`), which is
random access, so global batch `i` is always elements [i·B, (i+1)·B) of that stream and the whole
iterator state is the integer `i`. Epoch 0 is shuffled with `seed` itself and epoch e > 0 with a seed
mixed from (seed, e) (`epoch_seed`): grain's own `.shuffle(seed).repeat()` shuffles epoch e with
seed + e, which made seed s + 1's stream seed s's with its first epoch dropped (two "independent" data
orders that share all but one epoch; found 2026-12-06). Runs shorter than an epoch see the same
examples as before the fix. Each process builds only its own contiguous rows of a global batch,
so 1 process or N processes see the same global batches.

A training stream may take a `transform(example, position)` (training-time augmentation, e.g.
`seqjax.data.genomic.augment`): it is applied to element `position` of the stream as the batch is built,
so it stays a pure function of the position and never reaches evaluation.

Evaluation walks a split once in order, with no `drop_last`: the last batch is padded by repeating
its final example and marked by `valid` = False, so every example counts exactly once.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grain
import numpy as np

__all__ = [
    "IndexedSource",
    "PrefetchedBatches",
    "RandomAccessSource",
    "TrainBatches",
    "epoch_seed",
    "eval_batches",
    "spread_indices",
    "stack_examples",
    "stratified_indices",
    "subset_indices",
]


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


def stack_examples(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class PrefetchedBatches:
    """Global batch `i` (this process's rows) by index, the next ones built ahead on a background thread.

    Subclasses define `local_batch(index)`, a pure function of the index; iterating yields batches
    `start`, `start + 1`, ... and `state()` is the data position a checkpoint saves.
    """

    def __init__(self, *, start: int = 0, prefetch: int = 2) -> None:
        self.next_batch = start
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: dict[int, concurrent.futures.Future] = {}
        self._prefetch = prefetch

    def local_batch(self, index: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def state(self) -> dict[str, int]:
        return {"next_batch": self.next_batch}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        index = self.next_batch
        for ahead in range(index, index + self._prefetch + 1):
            if ahead not in self._pending:
                self._pending[ahead] = self._pool.submit(self.local_batch, ahead)
        batch = self._pending.pop(index).result()
        self.next_batch = index + 1
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class TrainBatches(PrefetchedBatches):
    """Global training batch `i` (this process's rows), prefetched on a background thread.

    Args:
      source: the training split.
      batch_size: the global batch; must divide by `process_count`.
      seed: shuffling seed (each epoch is a different permutation); `shuffle=False` keeps source order.
      process_index, process_count: which rows of each global batch this process builds.
      start: the first batch index (the resumed data position).
      transform: None, or `transform(example, position)` -> the example trained on, applied to element
        `position` (= i * batch_size + row of global batch i) of the stream: training-time augmentation,
        a pure function of the position (module docstring).
    """

    def __init__(
        self,
        source: RandomAccessSource,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        start: int = 0,
        prefetch: int = 2,
        transform: Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]] | None = None,
    ) -> None:
        if batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} does not divide over {process_count} processes; make it a multiple."
            )
        if len(source) == 0:
            raise ValueError("TrainBatches: the training split is empty; check the data config.")
        self._source = grain.MapDataset.source(source)
        self._seed = seed
        self._shuffle = shuffle
        self._epochs: dict[int, Any] = {}  # epoch -> its shuffled dataset (a few at a time)
        self._epochs_lock = threading.Lock()  # prefetching threads build batches concurrently
        self.batch_size = batch_size
        self._rows = batch_size // process_count
        self._offset = process_index * self._rows
        self._transform = transform
        super().__init__(start=start, prefetch=prefetch)

    def element(self, position: int) -> dict[str, np.ndarray]:
        """Element `position` of the training stream (before any transform)."""
        epoch, index = divmod(position, len(self._source))
        if not self._shuffle:
            return self._source[index]
        with self._epochs_lock:
            dataset = self._epochs.get(epoch)
            if dataset is None:
                if len(self._epochs) > 4:  # batches move forward: keep the last few epochs' datasets
                    self._epochs.pop(min(self._epochs))
                dataset = self._epochs[epoch] = self._source.shuffle(seed=epoch_seed(self._seed, epoch))
        return dataset[index]

    def local_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `index` (pure: no iterator state involved)."""
        start = index * self.batch_size + self._offset
        positions = range(start, start + self._rows)
        if self._transform is None:
            return stack_examples([self.element(p) for p in positions])
        return stack_examples([self._transform(self.element(p), p) for p in positions])


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of `epoch` of a training stream seeded `seed` (module docstring): `seed` for
    epoch 0, else 32 bits drawn from `numpy.random.SeedSequence([seed, epoch])`, so that no two
    (seed, epoch) pairs share a permutation by construction.

    >>> epoch_seed(3, 0), epoch_seed(3, 1) == epoch_seed(4, 0), epoch_seed(3, 1) == epoch_seed(3, 1)
    (3, False, True)
    """
    if epoch == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint32)[0])


def eval_batches(
    source: RandomAccessSource,
    batch_size: int,
    *,
    max_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, Any]]:
    """The split in order, once, in global batches of `batch_size` (this process's rows); with
    `max_examples`, that many examples spread evenly over the split (`spread_indices`), not its first
    ones: a split stored in order of class, genome or document would otherwise be judged on one part.

    Each batch carries `valid` [rows] bool; padded rows repeat the last example read.

        >>> split = [{"x": i} for i in range(10)]
        >>> [b["x"][b["valid"]].tolist() for b in eval_batches(split, 2, max_examples=4)]
        [[0, 2], [5, 7]]
    """
    if batch_size % process_count:
        raise ValueError(f"eval batch_size={batch_size} does not divide over {process_count} processes.")
    chosen = spread_indices(len(source), max_examples)
    total = len(chosen)
    rows = batch_size // process_count
    for start in range(0, total, batch_size):
        positions = [start + process_index * rows + r for r in range(rows)]
        valid = np.array([i < total for i in positions])
        examples = [source[int(chosen[min(i, total - 1)])] for i in positions]
        yield {**stack_examples(examples), "valid": valid}


def spread_indices(total: int, count: int | None) -> np.ndarray:
    """`count` example indices spread evenly over a split of `total` (floor(j * total / count)), in
    order; every index when `count` is None or not smaller. A fixed subset that still covers every part
    of the split (every genome, document and time block), the same for every model evaluated on it.

    >>> spread_indices(10, 4).tolist(), spread_indices(3, None).tolist()
    ([0, 2, 5, 7], [0, 1, 2])
    """
    if count is None or count >= total:
        return np.arange(total, dtype=np.int64)
    if count < 1:
        raise ValueError(f"spread_indices: count={count}; pass a positive number of examples or None.")
    return (np.arange(count, dtype=np.int64) * total) // count


def stratified_indices(labels: np.ndarray | None, total: int, count: int, seed: int) -> np.ndarray:
    """A random subset of `count` of a split's `total` examples drawn with `seed`, in order: stratified
    by `labels` (each class gets its share of `count`, largest remainders first, and at least one
    example while `count` allows) or, with `labels` None, uniform. A learning-curve subsample: several
    seeds give several subsets of one size.

    >>> stratified_indices(np.array([0] * 8 + [1] * 2), 10, 5, seed=0).size
    5
    >>> np.bincount(np.array([0] * 8 + [1] * 2)[stratified_indices(np.array([0] * 8 + [1] * 2), 10, 5, 0)])
    array([4, 1])
    """
    if count < 1 or count > total:
        raise ValueError(f"stratified_indices: count={count}; pass a number of examples in [1, {total}].")
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(total, size=count, replace=False)).astype(np.int64)
    labels = np.asarray(labels)
    if labels.shape != (total,):
        raise ValueError(f"stratified_indices: {labels.shape[0]} labels for a split of {total} examples.")
    classes, sizes = np.unique(labels, return_counts=True)
    share = sizes * count / total
    quota = np.floor(share).astype(np.int64)
    if count >= len(classes):  # every class present while the count allows
        quota = np.maximum(quota, 1)
    while quota.sum() > count:  # the minimum of one overshot: take back from the largest quotas
        quota[np.argmax(quota - share)] -= 1
    for i in np.argsort(-(share - quota), kind="stable")[: count - quota.sum()]:
        quota[i] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=min(int(q), int(n)), replace=False)
        for c, q, n in zip(classes, quota, sizes, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def subset_indices(source: RandomAccessSource, count: int, seed: int | None = None) -> np.ndarray:
    """`count` examples of `source`: spread evenly (`spread_indices`; `seed` None), or drawn with
    `seed`, stratified by label where the source lists its labels (`labels()`, e.g. a genomic split;
    `stratified_indices`). The trainer's `train_examples` / `train_subset_seed` subset, so anything fit
    on "the same subset" (a baseline's learning curve) can draw it again.

    >>> subset_indices(list(range(10)), 4).tolist()
    [0, 2, 5, 7]
    """
    if seed is None:
        return spread_indices(len(source), count)
    labels = source.labels() if callable(getattr(source, "labels", None)) else None
    return stratified_indices(labels, len(source), count, seed)


class IndexedSource:
    """The examples `indices` of `source`, as a random-access source of their own (`len`, `[i]`)."""

    def __init__(self, source: RandomAccessSource, indices: np.ndarray) -> None:
        self.source = source
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.source[int(self.indices[index])]
