"""The whole run config is checked before any work: a value out of range, a mesh the devices or the
sharding rules cannot give, a batch that does not divide over the mesh, or a best_metric the task never
reports is a ConfigError naming `config.<key>` and the fix, raised before data is built or anything is
compiled (issue 14, "Config validation"). On 8 fake CPU devices (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from configs import synthetic
from seqjax.config import load_config_file
from seqjax.train import trainer
from seqjax.train.preflight import check_before_work, data_parallel_size, eval_metric_names
from seqjax.train.run_config import ConfigError, resolve
from tests.train_subprocess import refusal_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    config = synthetic.get_config("lstm,length=24")
    config.total_steps, config.batch_size, config.eval_batch_size = 2, 8, 8
    config.model.d_model = 16
    config.eval_every, config.tensorboard, config.optimizer.warmup_steps = 0, False, 0
    config.checkpoint.async_save = False
    return config


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the trainer gets as far as building the data."""

    def build_sources(*args, **kwargs):
        raise AssertionError("the trainer built the data before rejecting the config")

    monkeypatch.setattr(trainer, "build_sources", build_sources)


def _set(path: str, value):
    def apply(config):
        *parents, key = path.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[key] = value

    return apply


# (fault, change to the config, what the error must say)
FAULTS = [
    ("total_steps=-5", _set("total_steps", -5), r"config\.total_steps: -5 .*>= 1"),
    (
        "learning_rate=-1",
        _set("optimizer.learning_rate", -1.0),
        r"config\.optimizer\.learning_rate: -1\.0 .*>= 0",
    ),
    ("batch_size=-4", _set("batch_size", -4), r"config\.batch_size: -4 .*>= 1"),
    ("batch_size=0", _set("batch_size", 0), r"config\.batch_size: 0 .*>= 1"),
    ("log_every=0", _set("log_every", 0), r"config\.log_every: 0 .*>= 1"),
    ("checkpoint.every=0", _set("checkpoint.every", 0), r"config\.checkpoint\.every: 0 .*>= 1"),
    (
        "model.dtype=float17",
        _set("model.dtype", "float17"),
        r"config\.model\.dtype: 'float17' .*\['float32', 'bfloat16', 'float16', 'float64'\]",
    ),
    (
        "warmup_steps>total_steps",
        _set("optimizer.warmup_steps", 50),
        r"config\.optimizer\.warmup_steps: 50 exceeds config\.optimizer\.total_steps \(2\)",
    ),
    (
        "mesh.axes=('datta',)",
        _set("mesh.axes", ("datta",)),
        r"config\.mesh\.axes: 'datta' .*\['data', 'fsdp', 'model', 'sequence'\]",
    ),
    (
        "mesh.num_devices=16 on 8",
        _set("mesh.num_devices", 16),
        r"config\.mesh\.num_devices: 16 but only 8 device\(s\).*at most 8",
    ),
    (
        "mesh.shape=(3,-1) on 8",
        lambda c: (_set("mesh.shape", (3, -1))(c), _set("mesh.axes", ("data", "model"))(c)),
        r"config\.mesh\.shape: .*does not divide the 8",
    ),
    (
        "batch_size=6 on 8 data-parallel",
        _set("batch_size", 6),
        r"config\.batch_size: 6 does not divide over the data-parallel mesh size 8.*multiple of 8",
    ),
    (
        "eval_batch_size=6 on 8 data-parallel",
        _set("eval_batch_size", 6),
        r"config\.eval_batch_size: 6 does not divide over the data-parallel mesh size 8",
    ),
    (
        "model.pattern typo",
        _set("model.pattern", ("lstm", "gruu")),
        r"config\.model: .*pattern entry 'gruu' is neither a key of `mixers`",
    ),
    (
        "checkpoint.best_metric typo",
        _set("checkpoint.best_metric", "los"),
        r"config\.checkpoint\.best_metric: 'los' .*task 'lm'.*\['bits_per_byte', 'loss', 'perplexity'\]",
    ),
]


@pytest.mark.parametrize(("change", "message"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_bad_config_fails_before_any_work(tmp_path, no_work, change, message):
    config = _config()
    change(config)
    with pytest.raises(ConfigError, match=message):
        trainer.train(config, str(tmp_path))


def test_the_checks_pass_every_shipped_config():
    for name in ("synthetic", "genomic", "timeseries", "documents"):
        run = resolve(load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), "lstm"))
        check_before_work(run, jax.devices(), 1)


def test_the_data_parallel_size_is_the_batch_rules_mesh_axes():
    config = _config()
    config.mesh.shape, config.mesh.axes = (2, 2, 2), ("data", "fsdp", "model")
    assert data_parallel_size(resolve(config), (2, 2, 2)) == 4
    config.batch_size = 12  # divides over data x fsdp = 4, not over the 8 devices
    check_before_work(resolve(config), jax.devices(), 1)
    with pytest.raises(ConfigError, match=r"config\.batch_size: 12 does not divide over the process count 8"):
        check_before_work(resolve(config), jax.devices(), 8)


def test_best_metric_is_checked_against_the_tasks_metrics():
    config = load_config_file(os.path.join(ROOT, "configs", "genomic.py"), "lstm")
    config.checkpoint.best_metric = "loss"  # the LM's metric, never reported by a classifier
    with pytest.raises(ConfigError, match=r"'loss' is not an eval metric of task 'classification'"):
        check_before_work(resolve(config), jax.devices(), 1)
    assert "mse@96" in eval_metric_names("forecast", horizon=192)
    assert "mse@96" not in eval_metric_names("forecast", horizon=96)
    config = load_config_file(os.path.join(ROOT, "configs", "timeseries.py"), "lstm")  # horizon 96
    config.checkpoint.best_metric = "mse@96"
    with pytest.raises(ConfigError, match=r"config\.checkpoint\.best_metric: 'mse@96'"):
        check_before_work(resolve(config), jax.devices(), 1)


def test_a_real_data_kinds_options_are_checked_before_work(tmp_path, no_work):
    config = load_config_file(os.path.join(ROOT, "configs", "timeseries.py"), "lstm")
    config.data.horizon = 0
    with pytest.raises(
        ConfigError, match=r"config\.data: timeseries data config: horizon must be a positive"
    ):
        trainer.train(config, str(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tbptt_length": 300}, r"config\.tbptt_length=300 must divide the sequence length 1024.*\[1, 2, 4"),
        (
            {
                "mesh.num_devices": 3,
                "mesh.shape": (1, 3),
                "mesh.axes": ("data", "sequence"),
                "model.pattern": ("gla",),
            },
            r"splits the time axis 3 ways .*'sequence'.*does not divide the sequence length 1024",
        ),
    ],
    ids=["tbptt_length", "sequence_axis"],
)
def test_a_length_that_does_not_divide_is_refused_before_the_documents_are_prepared(
    tmp_path, no_work, override, message
):
    # the documents' length is known from their options: a full corpus is not downloaded first
    config = load_config_file(os.path.join(ROOT, "configs", "documents.py"), "lstm,length=1024")
    for key, value in override.items():
        _set(key, value)(config)
    with pytest.raises(ConfigError, match=message):
        trainer.train(config, str(tmp_path))


@pytest.mark.parametrize("name", ["synthetic", "genomic", "timeseries", "documents"])
def test_every_config_takes_model_dtype_on_the_command_line(name):
    argv = ["train.py", f"--config={ROOT}/configs/{name}.py:lstm", "--config.model.dtype=bfloat16"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    assert resolve(values.config).model["dtype"] == "bfloat16"


def test_the_training_script_exits_non_zero_naming_the_key(tmp_path):
    # one line naming the key, exit status 2 (a usage error), and no workdir left behind
    line = refusal_line(
        "scripts/train.py",
        "--config=configs/synthetic.py:lstm,length=24",
        f"--workdir={tmp_path / 'run'}",
        "--config.total_steps=-5",
    )
    assert line.startswith("scripts/train.py: config.total_steps: -5"), line
    assert not os.path.exists(tmp_path / "run")


def test_the_training_script_refuses_a_held_workdir_in_one_line(tmp_path):
    """A workdir another run holds (its lock, taken here) is refused before training: exit status 2 and
    one line naming the holder and the fix, as for a bad config value."""
    from seqjax.train.workdir import WorkdirLock

    workdir = tmp_path / "run"
    workdir.mkdir()
    held = WorkdirLock(str(workdir))
    held.acquire()
    try:
        line = refusal_line(
            "scripts/train.py",
            "--config=configs/synthetic.py:lstm,length=24",
            f"--workdir={workdir}",
            "--config.total_steps=2",
            "--config.optimizer.warmup_steps=1",
        )
    finally:
        held.release()
    assert f"in use by another run (pid {os.getpid()}" in line and "another --workdir" in line
    assert sorted(os.listdir(workdir)) == [".lock"]  # nothing else written


def test_the_evaluation_script_names_a_workdir_without_checkpoints(tmp_path):
    """A workdir with no checkpoints (a typo, a run not trained yet) is one line and exit status 2, before
    any data is prepared, and nothing is written into it (before: a traceback, an Orbax thread's error at
    exit, and an empty checkpoints folder left in the workdir)."""
    line = refusal_line(
        "scripts/evaluate.py", "--config=configs/synthetic.py:lstm,length=24", f"--workdir={tmp_path}"
    )
    assert line == (
        f"scripts/evaluate.py: No checkpoints in {tmp_path / 'checkpoints'}: train the run first, or pass "
        "the workdir of a trained run."
    )
    assert os.listdir(tmp_path) == []


def test_the_evaluation_script_refuses_a_count_of_no_examples(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "scripts/evaluate.py", f"--workdir={tmp_path}", "--max_examples=0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "--max_examples=0: give a positive count" in done.stderr
    assert os.listdir(tmp_path) == []
