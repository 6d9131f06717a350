"""The training budget and the throughput count training steps alone: compiling and evaluation never
count against a model's `max_train_seconds` or its tokens/s (issue 15's equal-budget rule)."""

from __future__ import annotations

import time

from configs import synthetic
from seqjax.train import trainer

EVAL_SLEEP = 0.4


def _config(total: int):
    config = synthetic.get_config("gru,length=24")
    config.total_steps = total
    config.batch_size = 8
    config.model.d_model = 8
    config.log_every = 1000
    config.eval_every = 1
    config.checkpoint.every = 1000
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.optimizer.warmup_steps = 0
    return config


def _slow_eval(monkeypatch, seconds: float = EVAL_SLEEP):
    real = trainer.run_eval

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "run_eval", slow)


def test_evaluation_and_compile_are_not_training_time(tmp_path, monkeypatch):
    _slow_eval(monkeypatch)
    started = time.perf_counter()
    result = trainer.train(_config(5), str(tmp_path))
    wall = time.perf_counter() - started
    assert result["step"] == 5
    assert result["eval_seconds"] >= 5 * EVAL_SLEEP
    assert result["compile_seconds"] > 0
    # 4 timed steps (the first compiles); the rate is theirs alone.
    assert result["train_seconds"] < wall - result["eval_seconds"] - result["compile_seconds"]
    assert abs(result["steps_per_s"] * result["train_seconds"] - 4) < 1e-6
    # CPU time over the same steps: positive, and the evaluation's sleep (no CPU) is not in it.
    assert 0 < result["train_cpu_seconds"] < result["eval_seconds"]


def test_cpu_time_does_not_count_a_paused_step(tmp_path, monkeypatch):
    """A step that waits (another job holds the cores, or the process is stopped) takes wall-clock time
    but no CPU time: `train_seconds` counts the wait, `train_cpu_seconds` does not."""
    real = trainer._global_batch
    calls = []

    def waiting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # a timed step (the first compiles)
            time.sleep(EVAL_SLEEP)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_global_batch", waiting)
    config = _config(4)
    config.eval_every = 0  # every call above is then a training step's batch
    result = trainer.train(config, str(tmp_path))
    assert result["train_seconds"] >= EVAL_SLEEP
    assert result["train_cpu_seconds"] < result["train_seconds"] - 0.5 * EVAL_SLEEP


def test_a_slow_evaluation_does_not_spend_the_budget(tmp_path, monkeypatch):
    """Before, the budget was wall clock: one 1 s evaluation ended a 0.8 s budget after step 1."""
    _slow_eval(monkeypatch, seconds=1.0)
    config = _config(6)
    config.max_train_seconds = 0.8
    result = trainer.train(config, str(tmp_path))
    # A tiny model's 5 timed steps take about 0.1 s alone and 0.3 s on a loaded 2-core machine.
    assert result["step"] == 6
    assert result["eval_seconds"] >= 6 * 1.0 > config.max_train_seconds
