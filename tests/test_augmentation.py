"""Training-time DNA augmentation (`seqjax.data.genomic.augment`, the genomic data options `augment` and
`max_shift`): the reverse complement of known sequences, draws that are a pure function of (seed,
position), shifts that stay inside the anchor window and keep the label, evaluation never augmented, a
resumed run equal to an uninterrupted one, and bad option values as errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from seqjax.config import apply_overrides, load_config_file
from seqjax.data import fasta
from seqjax.data.genomic import DnaAugmentation, resolve_config
from seqjax.data.pipeline import TrainBatches
from seqjax.train import trainer
from seqjax.train.run_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# The embedded sample's species windows, chosen at 160 bp and cropped to their centre 128 bp.
ARG = "lstm,task=species,length=128,nested=160"


def _config(options: str = "", *overrides: str):
    config = load_config_file(ROOT / "configs/genomic.py", ARG + options)
    return apply_overrides(config, list(overrides))


def _bytes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, np.uint8)


def test_reverse_complement_of_known_sequences() -> None:
    assert fasta.reverse_complement(_bytes(b"ACCGTTTN")).tobytes() == b"NAAACGGT"
    # every IUPAC code pairs with its complement (R=A/G <-> Y=C/T, K=G/T <-> M=A/C, B <-> V, D <-> H);
    # S, W and N are their own complements
    assert fasta.reverse_complement(_bytes(b"RYKMBVDHSWN")).tobytes() == b"NWSDHBVKMRY"
    # lowercase keeps its case; a gap is left as it is
    assert fasta.reverse_complement(_bytes(b"acgTn-")).tobytes() == b"-nAcgt"
    sequence = _bytes(b"ACGTURYSWKMBDHVNacgtnrykm")
    twice = fasta.reverse_complement(fasta.reverse_complement(sequence)).tobytes()
    assert twice == sequence.tobytes().replace(b"U", b"T")  # U pairs with A, whose complement is T


def test_draws_are_a_pure_function_of_seed_and_position() -> None:
    def draws(mode: str, seed: int = 0, shift: int = 4) -> list[tuple[int, bool]]:
        augmentation = DnaAugmentation(mode, shift, length=8, anchor=8 + 2 * shift, seed=seed, source=None)
        return [augmentation.draw(p) for p in range(400)]

    both = draws("both")
    assert both == draws("both")  # the same seed and positions: the same draws, in any order of calls
    assert both != draws("both", seed=1)
    offsets = [o for o, _ in both]
    assert set(offsets) == set(range(-4, 5))  # uniform over [-max_shift, +max_shift], both ends reached
    assert 0.4 < np.mean([f for _, f in both]) < 0.6  # reverse-complemented with probability 1/2
    # the modes share the draws: "shift" moves as "both" does, "reverse_complement" flips as it does
    assert [o for o, _ in draws("shift")] == offsets and not any(f for _, f in draws("shift"))
    assert [f for _, f in draws("reverse_complement", shift=0)] == [f for _, f in both]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (",augment=flip", "augment must be one of"),
        (",augment=shift", "max_shift=0; set max_shift >= 1"),
        (",augment=reverse_complement,max_shift=8", "max_shift is the random shift's range"),
        (",augment=both,max_shift=17", r"Set nested >= 162 \(e.g. nested=162\), or lower max_shift"),
        (",augment=shift,max_shift=-1", "max_shift must be an int >= 0"),
    ],
)
def test_bad_options_are_config_errors_naming_the_fix(options: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trainer.setup(_config(options))  # refused by the start-up checks, before any data is read


def test_a_shift_needs_nested_crops() -> None:
    data = {"task": "species", "length": 128, "augment": "shift", "max_shift": 8}
    with pytest.raises(ValueError, match=r"no anchor \(nested=None\). Set nested >= 144"):
        resolve_config(data)
    with pytest.raises(ValueError, match="unknown keys"):  # the other data kinds have no such option
        from seqjax.data import timeseries

        timeseries.resolve_config({"augment": "shift"})


def test_shifts_stay_inside_the_anchor_and_keep_the_label() -> None:
    parts = trainer.setup(_config(",augment=both,max_shift=16", "train_examples=64", "train_subset_seed=3"))
    augmentation, stream, train = (
        parts["train_augmentation"],
        parts["train_stream"],
        parts["sources"]["train"],
    )
    assert (augmentation.mode, augmentation.anchor, augmentation.length) == ("both", 160, 128)
    np.testing.assert_array_equal(stream.indices, train.indices)  # the same 64 examples, as anchor windows
    seen = set()
    for i in range(0, 64, 7):
        window, crop = stream[i], train[i]
        assert window["inputs"].shape == (160,) and int(window["label"]) == int(crop["label"])
        np.testing.assert_array_equal(window["inputs"][16:144], crop["inputs"])  # the crop is its centre
        for position in range(i, 2000, 97):
            out = augmentation(window, position)
            offset, flip = augmentation.draw(position)
            assert abs(offset) <= 16 and int(out["label"]) == int(window["label"])
            forward = fasta.reverse_complement(out["inputs"]) if flip else out["inputs"]
            np.testing.assert_array_equal(forward, window["inputs"][16 + offset : 144 + offset])
            seen.add((offset, flip))
    assert {f for _, f in seen} == {False, True} and len({o for o, _ in seen}) > 10


def test_only_training_batches_are_augmented() -> None:
    plain = trainer.setup(_config())
    augmented = trainer.setup(_config(",augment=both,max_shift=16"))
    assert plain["train_augmentation"] is None
    for split in ("train", "validation", "test"):  # what evaluation, final_splits and baselines read
        for i in (0, 5, len(plain["sources"][split]) - 1):
            np.testing.assert_array_equal(
                augmented["sources"][split][i]["inputs"], plain["sources"][split][i]["inputs"]
            )

    def batch(parts, start: int = 0):
        batches = trainer._train_batches(
            parts["config"],
            parts["train_stream"],
            128,
            start,
            parts["data_layout"],
            parts["train_augmentation"],
        )
        try:
            return next(iter(batches))
        finally:
            batches.close()

    a, b = batch(plain), batch(augmented)
    np.testing.assert_array_equal(a["label"], b["label"])  # the same examples in the same order...
    assert not np.array_equal(a["inputs"], b["inputs"])  # ...augmented
    assert b["inputs"].shape == a["inputs"].shape == (8, 128)
    # resuming at batch 3 builds the batch an uninterrupted stream builds there
    stream = TrainBatches(
        augmented["train_stream"], 8, seed=0, start=0, transform=augmented["train_augmentation"]
    )
    try:
        third = [next(stream) for _ in range(4)][3]
    finally:
        stream.close()
    resumed = batch(augmented, start=3)
    for key in ("inputs", "label"):
        np.testing.assert_array_equal(resumed[key], third[key])


@pytest.mark.slow
def test_resumed_augmented_run_equals_uninterrupted_and_evaluation_is_untouched(tmp_path: Path) -> None:
    def config(total: int):
        return _config(
            ",augment=both,max_shift=16",
            f"total_steps={total}",
            "batch_size=8",
            "eval_batch_size=32",
            "model.d_model=8",
            "model.num_layers=1",
            "log_every=100",
            "eval_every=0",
            "checkpoint.every=2",
            "checkpoint.async_save=False",
            "tensorboard=False",
            "optimizer.schedule='constant'",
            "optimizer.warmup_steps=0",
            f"optimizer.total_steps={total}",
            "eval_examples=32",
        )

    whole = trainer.train(config(4), str(tmp_path / "whole"), final_splits=("validation",), final_examples=32)
    trainer.train(config(2), str(tmp_path / "resumed"))
    resumed = trainer.train(config(4), str(tmp_path / "resumed"), allow_config_change=["total_steps"])
    assert whole["step"] == resumed["step"] == 4
    for a, b in zip(
        jax.tree.leaves(whole["state"].params), jax.tree.leaves(resumed["state"].params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The same parameters scored by a config without augmentation: the same validation outputs.
    plain = _config("", "batch_size=8", "eval_batch_size=32", "model.d_model=8", "model.num_layers=1")
    out = trainer.evaluate(
        plain, str(tmp_path / "whole"), split="validation", step="latest", per_example=True, examples=32
    )
    np.testing.assert_allclose(
        out["per_example"]["logits"], whole["final"]["validation"]["per_example"]["logits"], rtol=1e-6
    )
