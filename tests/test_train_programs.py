"""A run reuses the programs of an earlier run in the process that built the same ones
(`seqjax.train.programs`): the seeds of a model trace and compile once, a run that differs in anything
its programs are built from builds its own, and reused programs train exactly as fresh ones do."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import synthetic
from seqjax.train import programs, trainer


def _config(seed: int = 0, **changes):
    config = synthetic.get_config("gru,length=24")
    config.total_steps = 3
    config.batch_size = 8
    config.model.d_model = 8
    config.log_every = 1000
    config.eval_every = 3
    config.checkpoint.every = 1000
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.optimizer.warmup_steps = 0
    config.report_step_memory = True
    config.seed = seed
    for key, value in changes.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The train steps built (one entry each), with no programs kept from earlier tests."""
    programs.drop_kept_programs()
    built: list[str] = []
    real = trainer.make_train_step

    def counting(*args, **kwargs):
        built.append("step")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "make_train_step", counting)
    yield built
    programs.drop_kept_programs()


def test_a_second_seed_reuses_the_programs_and_trains_as_fresh_programs_do(tmp_path, builds):
    first = trainer.train(_config(seed=0), str(tmp_path / "seed0"))
    reused = trainer.train(_config(seed=1), str(tmp_path / "seed1"))
    assert builds == ["step"]  # the second seed built nothing
    assert reused["step_memory_bytes"] == first["step_memory_bytes"]  # XLA's plan, measured once
    # not the first seed's parameters: the seed is an argument of the initialisation, not a constant
    leaves = jax.tree.leaves
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(leaves(first["state"].params), leaves(reused["state"].params), strict=True)
    )

    programs.drop_kept_programs()  # (the next run traces, lowers and compiles its own)
    fresh = trainer.train(_config(seed=1), str(tmp_path / "seed1_fresh"))
    assert builds == ["step", "step"]
    for a, b in zip(leaves(reused["state"].params), leaves(fresh["state"].params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reused["metrics"]["loss"] == fresh["metrics"]["loss"]
    assert reused["eval"] == fresh["eval"]


@pytest.mark.parametrize(
    "change",
    [
        {"optimizer.learning_rate": 0.5},  # a constant of the step
        {"optimizer.total_steps": 7},  # the schedule's length
        {"model.d_model": 16},  # the model
        {"max_param_abs": 10.0},  # the update guard
        {"batch_size": 16},  # the shapes
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_run_that_differs_in_what_its_programs_are_built_from_builds_its_own(change, builds):
    kept = trainer._run_programs(trainer.setup(_config()))
    assert (
        trainer._run_programs(trainer.setup(_config(seed=3, data_seed=5, eval_every=1, log_every=1))) is kept
    )
    assert trainer._run_programs(trainer.setup(_config(**change))) is not kept


def test_a_key_that_cannot_be_hashed_is_built_every_time():
    key = programs.ProgramKey(model=("a", ["list"]), optimizer={}, task="lm")
    assert programs.run_programs(key, list) is not programs.run_programs(key, list)


def test_evaluating_a_run_trained_in_the_process_uses_its_evaluation_program(tmp_path, builds, monkeypatch):
    evaluations: list[str] = []
    real = trainer.make_eval_fn
    monkeypatch.setattr(trainer, "make_eval_fn", lambda *a, **k: evaluations.append("eval") or real(*a, **k))
    config, workdir = _config(), str(tmp_path / "run")
    trainer.train(config, workdir)
    reused = trainer.evaluate(config, workdir, step="latest", per_example=True)
    assert evaluations == ["eval"]  # built for the run's periodic evaluation, not again
    programs.drop_kept_programs()
    fresh = trainer.evaluate(config, workdir, step="latest", per_example=True)
    assert evaluations == ["eval", "eval"]
    assert reused["metrics"] == fresh["metrics"]
    for name, values in fresh["per_example"].items():
        np.testing.assert_array_equal(reused["per_example"][name], values, err_msg=name)


def test_an_evaluation_cap_reads_examples_spread_over_the_split_and_says_which(tmp_path):
    # A split stored in order (of class, genome, document) must not be judged on its first examples.
    from seqjax.data.pipeline import spread_indices

    workdir = str(tmp_path / "run")
    trainer.train(_config(), workdir)
    whole = trainer.evaluate(_config(eval_examples=None), workdir, step="latest", per_example=True)
    total = len(whole["indices"])
    capped = trainer.evaluate(_config(eval_examples=5), workdir, step="latest", per_example=True)
    assert capped["indices"].tolist() == spread_indices(total, 5).tolist()
    assert capped["indices"][-1] >= total // 2  # not the first five
    for name, values in capped["per_example"].items():
        assert len(values) == 5, name
        np.testing.assert_allclose(values, whole["per_example"][name][capped["indices"]], rtol=1e-6)
    # `examples` and the config's cap together: the cap spread over the examples asked for
    both = trainer.evaluate(_config(eval_examples=3), workdir, step="latest", per_example=True, examples=10)
    assert both["indices"].tolist() == spread_indices(total, 10)[spread_indices(10, 3)].tolist()
    assert all(len(values) == 3 for values in both["per_example"].values())
