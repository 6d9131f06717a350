"""The training stream's order across epochs and seeds (`seqjax.data.pipeline.TrainBatches`)."""

from __future__ import annotations

import grain
import numpy as np

from seqjax.data.pipeline import TrainBatches, epoch_seed


class _Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"inputs": np.array([i], np.int32)}


def _stream(batches: TrainBatches, start: int, stop: int) -> list[int]:
    return [int(batches.element(p)["inputs"][0]) for p in range(start, stop)]


def test_another_seed_is_not_the_same_stream_one_epoch_later():
    # grain's .shuffle(seed).repeat() shuffles epoch e with seed + e: seed 1's stream was seed 0's
    # without its first epoch, so two data orders of a multi-epoch run shared all but one epoch
    source = _Numbers(24)
    grain_0 = grain.MapDataset.source(source).shuffle(seed=0).repeat()
    grain_1 = grain.MapDataset.source(source).shuffle(seed=1).repeat()
    assert [int(grain_1[p]["inputs"][0]) for p in range(48)] == [
        int(grain_0[p]["inputs"][0]) for p in range(24, 72)
    ]  # the defect the stream avoids
    seed_0, seed_1 = TrainBatches(source, 8, seed=0), TrainBatches(source, 8, seed=1)
    for e in range(3):
        assert _stream(seed_1, 24 * e, 24 * e + 24) != _stream(seed_0, 24 * e + 24, 24 * e + 48)
    # epoch 0 is grain's permutation with the seed itself: runs shorter than an epoch are unchanged
    assert _stream(seed_0, 0, 24) == [int(grain_0[p]["inputs"][0]) for p in range(24)]
    # every epoch is a permutation, each a different one, and the stream is a pure function of position
    epochs = [_stream(seed_0, 24 * e, 24 * e + 24) for e in range(6)]
    assert all(sorted(e) == list(range(24)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 6
    again = TrainBatches(source, 8, seed=0, start=13)
    assert _stream(again, 24 * 5, 24 * 6) == epochs[5]  # an epoch evicted and rebuilt reads the same
    for t in (seed_0, seed_1, again):
        t.close()


def test_epoch_seeds_do_not_collide_across_seeds_and_epochs():
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(20)}
    assert len(seeds) == 400
    assert epoch_seed(7, 0) == 7 and all(0 <= s < 2**32 for s in seeds)


def test_concurrent_batches_read_the_same_stream():
    # the prefetching threads build batches at once: the per-epoch datasets are shared under a lock
    import concurrent.futures

    source = _Numbers(10)
    reference = TrainBatches(source, 4, seed=2, prefetch=0)
    expected = [reference.local_batch(i)["inputs"][:, 0].tolist() for i in range(40)]
    shared = TrainBatches(source, 4, seed=2, prefetch=0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: shared.local_batch(i)["inputs"][:, 0].tolist(), range(40)))
    assert got == expected
    for t in (reference, shared):
        t.close()
