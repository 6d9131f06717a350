"""`eval_examples` may change when a run resumes (an operational key); the best checkpoint is then chosen
among the steps scored on the same evaluation subset as the newest scored step, never across subsets (a
few examples' noisy metric would otherwise win by chance), and retention keeps each subset's best.
Steps saved without the record (an older seqjax) count as one subset.
"""

from __future__ import annotations

import json
import logging
import os

import jax.numpy as jnp

from configs import synthetic
from seqjax.train.checkpoint import SCORED_ON, Checkpoints
from seqjax.train.trainer import evaluate, train
from tests.train_subprocess import with_overrides

WHOLE, FEW = 1000, 8


def _state(scale: float = 1.0):
    return {"w": scale * jnp.arange(6.0), "step": jnp.asarray(1, jnp.int32)}


def _save(ckpt: Checkpoints, losses: dict[int, float], scored_on: int | None) -> None:
    for step, loss in losses.items():
        ckpt.save(step, _state(step), metrics={"loss": loss}, scored_on=scored_on)


def test_best_step_compares_only_the_newest_subset(tmp_path, caplog):
    ckpt = Checkpoints(tmp_path, keep=2, best_metric="loss", async_save=False)
    _save(ckpt, {1: 3.0, 2: 2.0, 3: 2.5}, WHOLE)  # the whole split
    assert ckpt.best_step() == 2
    _save(ckpt, {4: 2.2, 5: 1.5, 6: 1.8}, FEW)  # resumed with eval_examples=FEW: lower by noise
    with caplog.at_level(logging.INFO, logger="seqjax.train.checkpoint"):
        assert ckpt.best_step() == 5  # among 4, 5, 6 only (kept: 5, 6)
    assert "steps [2] of" in caplog.text and "set aside" in caplog.text and f"{FEW} examples" in caplog.text
    # retention kept the whole split's best (2) beside the subset's (5) and the latest two
    assert ckpt.all_steps() == [2, 5, 6]
    # back to the whole split: its best over both parts of the run, not the subset's lower 1.5
    _save(ckpt, {7: 2.1}, WHOLE)
    assert ckpt.best_step() == 2
    _save(ckpt, {8: 1.9}, WHOLE)
    assert ckpt.best_step() == 8
    assert ckpt.all_steps() == [5, 7, 8]  # each subset's best (8; 5) and the latest two
    ckpt.close()


def test_steps_without_the_record_are_one_subset(tmp_path):
    ckpt = Checkpoints(tmp_path, keep=5, best_metric="loss", best_mode="min", async_save=False)
    _save(ckpt, {1: 3.0, 2: 1.0, 3: 2.0}, None)  # saved as an older seqjax did: no record
    assert ckpt.best_step() == 2  # as before
    assert all(SCORED_ON not in ckpt._manager.metrics(step) for step in ckpt.all_steps())
    _save(ckpt, {4: 1.5, 5: 1.2}, WHOLE)  # resumed by this seqjax: the subset is recorded from here
    assert ckpt.best_step() == 5
    ckpt.close()
    # read again (as `evaluate(step="best")` does): the record is on disk
    with Checkpoints(tmp_path, best_metric="loss", async_save=False) as again:
        assert again._manager.metrics(5)[SCORED_ON] == WHOLE and again.best_step() == 5


def _config(total: int, eval_examples: int | None):
    return with_overrides(
        synthetic.get_config("gru,length=24"),
        {
            "total_steps": total,
            "batch_size": 8,
            "eval_batch_size": 16,
            "data.eval_size": 48,
            "model.d_model": 16,
            "model.num_layers": 1,
            "log_every": 1000,
            "eval_every": 2,
            "eval_examples": eval_examples,
            "checkpoint.every": 2,
            "checkpoint.keep": 10,
            "checkpoint.async_save": False,
            "tensorboard": False,
            "optimizer.warmup_steps": 2,
        },
    )


def _saved_metrics(workdir: str) -> dict[int, dict]:
    """Each kept step's saved metrics, as Orbax wrote them."""
    out = {}
    folder = os.path.join(workdir, "checkpoints")
    for name in os.listdir(folder):
        if name.isdigit():
            with open(os.path.join(folder, name, "metrics", "metrics")) as f:
                out[int(name)] = json.load(f)
    return out


def test_a_run_resumed_with_fewer_eval_examples_picks_its_best_among_them(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    train(_config(6, None), workdir)  # evaluated on the whole validation split (48 examples)
    resumed = train(_config(12, 4), workdir, allow_config_change=["total_steps"])  # then on 4 of them
    assert resumed["step"] == 12
    saved = _saved_metrics(workdir)
    assert sorted(saved) == [2, 4, 6, 8, 10, 12]
    assert {s: saved[s][SCORED_ON] for s in saved} == {2: 48, 4: 48, 6: 48, 8: 4, 10: 4, 12: 4}
    comparable = min((8, 10, 12), key=lambda s: saved[s]["loss"])
    folder = os.path.join(workdir, "checkpoints")
    with (
        Checkpoints(folder, best_metric="loss", async_save=False) as ckpt,
        caplog.at_level(logging.INFO, logger="seqjax.train.checkpoint"),
    ):
        assert ckpt.best_step() == comparable
    assert "steps [2, 4, 6] of" in caplog.text
    # `evaluate(step="best")` restores that step
    assert evaluate(_config(12, 4), workdir, "validation", "best")["step"] == comparable


def test_retention_of_unscored_steps_is_orbax_bestn_s(tmp_path, monkeypatch):
    # a step saved without metrics (a preemption save between evaluations): grouping by subset keeps or
    # drops it exactly as orbax's BestN does
    from orbax.checkpoint import checkpoint_managers

    from seqjax.train import checkpoint

    def kept(folder, policy) -> list[int]:
        monkeypatch.setattr(checkpoint, "_BestOfEachSubset", policy)
        ckpt = Checkpoints(folder, keep=1, best_metric="loss", keep_best=1, async_save=False)
        _save(ckpt, {1: 3.0}, None)
        ckpt.save(2, _state(2.0))  # no metrics
        _save(ckpt, {3: 2.0, 4: 2.5}, None)
        steps = ckpt.all_steps()
        ckpt.close()
        return steps

    grouped = kept(tmp_path / "grouped", checkpoint._BestOfEachSubset)
    assert grouped == kept(tmp_path / "bestn", checkpoint_managers.BestN)
    assert 3 in grouped and 4 in grouped  # the best and the latest
