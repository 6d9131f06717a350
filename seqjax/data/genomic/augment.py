"""Training-time augmentation of DNA windows: reverse complement and random shifts (data options
`augment` and `max_shift`, checked by `catalog.check_augment`).

- `augment="reverse_complement"`: each training example is read from the other strand with probability
  1/2 (`seqjax.data.fasta.reverse_complement`: A<->T, C<->G, every IUPAC code complemented, N kept,
  either case). Label-preserving for genic_vs_intergenic (genes on either strand), species and
  human_or_worm; on promoter it removes the data set's orientation cue (positives read along their gene).
- `augment="shift"`: each training example is the `length` bp crop at a uniform offset in
  [-max_shift, +max_shift] bp from the centre of the window it was cut from, instead of the centre
  crop itself. That needs the flanking sequence: the windows must be nested centre crops (`nested=ANCHOR`
  with ANCHOR - length >= 2 * max_shift), and the training stream then reads the anchor windows (the
  same windows, in the same order, with the same labels: checked at start) and crops them. The label
  is the window's own: for nested genic_vs_intergenic, whose label is the centre 1,024 bp core's, up to
  max_shift bp of that core may leave the crop, so keep max_shift well under it (128 keeps >= 87.5%).
- `augment="both"`: the shift, then the reverse complement.

Only training batches are augmented (`seqjax.data.pipeline.TrainBatches(transform=...)`); validation and
test examples are never touched. The draws of example `position` of the training stream (batch i, row r
is position i * batch_size + r, whatever the processes) are a pure function of (seed, position), so a
resumed run sees the same augmented batches as an uninterrupted one, and the shift and the strand
draws are the same under "shift", "reverse_complement" and "both".

    >>> import numpy as np
    >>> window = {"inputs": np.frombuffer(b"AACCGGTTAC", np.uint8), "label": np.int32(1)}
    >>> flip = DnaAugmentation("reverse_complement", max_shift=0, length=10, anchor=10, seed=0, source=None)
    >>> sorted({flip(window, p)["inputs"].tobytes() for p in range(20)})
    [b'AACCGGTTAC', b'GTAACCGGTT']
    >>> shift = DnaAugmentation("shift", max_shift=1, length=8, anchor=10, seed=0, source=None)
    >>> sorted({shift(window, p)["inputs"].tobytes() for p in range(20)})
    [b'AACCGGTT', b'ACCGGTTA', b'CCGGTTAC']
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from seqjax.data.fasta import reverse_complement
from seqjax.data.genomic.catalog import AUGMENTS, resolve_config

__all__ = ["AUGMENT_SALT", "DnaAugmentation", "train_augmentation"]

#: Mixed into every draw's seed, so the augmentation's stream is not the shuffle's (which uses the seed).
AUGMENT_SALT = 0x5EA0_A06


@dataclasses.dataclass(frozen=True)
class DnaAugmentation:
    """The transform of one training example at one position of the training stream (module docstring).

    `source` is what the training stream reads: the train split itself, or (a shift) its anchor windows,
    `anchor` bp each; every example it returns is cut to `length` bp."""

    mode: str
    max_shift: int
    length: int
    anchor: int
    seed: int
    source: Any

    def __post_init__(self) -> None:
        if self.mode not in AUGMENTS or self.mode == "none":
            raise ValueError(f"DnaAugmentation: mode must be one of {AUGMENTS[1:]}, got {self.mode!r}.")
        if self.anchor - self.length < 2 * self.max_shift:
            raise ValueError(
                f"DnaAugmentation: a {self.anchor} bp window has no room to shift a {self.length} bp crop by "
                f"{self.max_shift} bp either way."
            )

    @property
    def shifts(self) -> bool:
        return self.mode in ("shift", "both")

    @property
    def flips(self) -> bool:
        return self.mode in ("reverse_complement", "both")

    def draw(self, position: int) -> tuple[int, bool]:
        """(the crop's offset from the centre in bp, whether it is reverse-complemented) at `position`.

        >>> a = DnaAugmentation("both", max_shift=3, length=4, anchor=10, seed=7, source=None)
        >>> a.draw(5) == a.draw(5), all(abs(a.draw(p)[0]) <= 3 for p in range(100))
        (True, True)
        """
        u = np.random.default_rng([self.seed % 2**32, AUGMENT_SALT, int(position)]).random(2)
        offset = int(np.floor(u[0] * (2 * self.max_shift + 1))) - self.max_shift if self.shifts else 0
        return offset, bool(u[1] < 0.5) and self.flips

    def __call__(self, example: Mapping[str, np.ndarray], position: int) -> dict[str, np.ndarray]:
        inputs = np.asarray(example["inputs"])
        if inputs.shape[0] != self.anchor:
            raise ValueError(
                f"DnaAugmentation: an example of {inputs.shape[0]} bp; this augmentation reads "
                f"{self.anchor} bp windows (its `source`)."
            )
        offset, flip = self.draw(position)
        start = (self.anchor - self.length) // 2 + offset
        inputs = inputs[start : start + self.length]
        return {**example, "inputs": reverse_complement(inputs) if flip else inputs}


def train_augmentation(
    data: Mapping[str, Any], data_dir: str | os.PathLike[str], train: Any, *, seed: int
) -> DnaAugmentation | None:
    """The augmentation a genomic data config asks for (None for `augment="none"`), for the train split
    `train` (`make_sources(data, data_dir)["train"]`) and the training stream's `seed`. A shift reads the
    same task's anchor windows (`nested=ANCHOR` at length ANCHOR, prepared if needed), checked to be
    `train`'s windows: as many, the same labels in order, and the first one's centre crop equal to
    `train`'s first example.

        >>> data = run.data.source_options()  # doctest: +SKIP
        >>> augmentation = train_augmentation(data, data_dir, train, seed=0)  # doctest: +SKIP
    """
    from seqjax.data.genomic.splits import make_sources

    config = resolve_config(data)
    mode, length = config["augment"], config["length"]
    if mode == "none":
        return None
    if mode == "reverse_complement":
        return DnaAugmentation(mode, 0, length, length, seed, train)
    anchor = config["nested"]
    windows = make_sources({**config, "length": anchor, "augment": "none", "max_shift": 0}, data_dir)["train"]
    same = len(windows) == len(train) and np.array_equal(windows.labels(), train.labels())
    if same and len(train):
        margin = (anchor - length) // 2
        same = np.array_equal(windows[0]["inputs"][margin : margin + length], train[0]["inputs"])
    if not same:
        raise ValueError(
            f"train_augmentation: the {anchor} bp anchor windows of {config['task']} are not the windows "
            f"the {length} bp crops were cut from ({len(windows)} against {len(train)} training examples, "
            "or other labels or bases); delete both prepared data sets and prepare them again."
        )
    return DnaAugmentation(mode, config["max_shift"], length, anchor, seed, windows)
