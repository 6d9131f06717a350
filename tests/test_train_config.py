"""The run config: every key the trainer reads is a key of every task config (and so settable from the
command line), the typed config reads back what it writes, and a wrong key, type or value is an error
naming the key and what it accepts."""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from seqjax import models
from seqjax.config import load_config_file, parse_arg
from seqjax.train import run_config
from seqjax.train.optimizer import OptimizerConfig
from seqjax.train.run_config import ConfigError, resolve, schema
from tests.train_subprocess import refusal_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
# configs/online.py configures the online loop (seqjax.online.loop, tests/test_online_loop.py), not
# the trainer: its arg is stream:method and its keys are the loop's.
CONFIG_FILES = [
    p for p in CONFIG_FILES if not os.path.basename(p).startswith("_") and os.path.basename(p) != "online.py"
]
ARGS = ["lstm", "attention", "swa,size=accelerator", "mamba"]


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key != "mixers":
            out |= _keys(value, f"{prefix}{key}.")
        else:
            out.add(prefix + key)
    return out


@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_key_is_a_field_and_every_field_a_key(path, arg):
    config = load_config_file(path, arg)
    run = resolve(config)
    keys = _keys(config.to_dict())
    if run.data.kind != "synthetic":  # a real kind's own data keys are the data layer's
        keys = {k for k in keys if not k.startswith("data.") or k in ("data.kind", "data.shuffle")}
    assert keys == _keys(schema(run.task, run.data.kind)), os.path.basename(path)


def test_the_schema_is_the_typed_configs_fields():
    sections = {"optimizer": OptimizerConfig, "mesh": run_config.MeshConfig}
    sections["checkpoint"] = run_config.CheckpointConfig
    tree = schema("classification", "genomic")
    assert set(tree) == {f.name for f in dataclasses.fields(run_config.RunConfig)}
    for name, cls in sections.items():
        assert set(tree[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert set(tree["model"]) == {f.name for f in dataclasses.fields(models.BackboneConfig)}
    for task in run_config.TASKS:
        assert set(schema(task, "synthetic")["head"]) == set(models.tasks.HEAD_KEYS[task])
    synthetic = {f.name for f in dataclasses.fields(run_config.SyntheticDataConfig)}
    assert set(schema("lm", "synthetic")["data"]) == {"kind", "shuffle", *synthetic}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_resolved_config_reads_back_its_own_dict(path):
    run = resolve(load_config_file(path, "lstm"))
    assert resolve(run.to_dict()) == run
    assert resolve(run) is run


def test_every_option_can_be_set_on_the_command_line():
    argv = [
        "train.py",
        f"--config={ROOT}/configs/synthetic.py:lstm,length=24",
        "--config.tensorboard=False",
        "--config.data.shuffle=True",
        "--config.data.eval_size=32",
        "--config.model.norm=layernorm",
        "--config.model.input_size=3",
        "--config.head.tie_embeddings=True",
        "--config.optimizer.b2=0.95",
        "--config.optimizer.ssm_learning_rate=0.01",
        "--config.mesh.num_devices=2",
    ]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    run = resolve(values.config)
    assert run.tensorboard is False and run.data.shuffled and run.data.options["eval_size"] == 32
    assert run.model["norm"] == "layernorm" and run.head["tie_embeddings"] is True
    assert (run.optimizer.b2, run.optimizer.ssm_learning_rate, run.mesh.num_devices) == (0.95, 0.01, 2)
    assert run.optimizer.total_steps == run.total_steps == 300  # one reference


def test_a_comma_separated_pattern_on_the_command_line_is_a_layer_pattern():
    # ml_collections keeps a tuple field's command-line string whole: ("lstm,gru",)
    from seqjax.models.config import BackboneConfig

    config = f"--config={ROOT}/configs/synthetic.py:lstm,length=24"
    argv = ["train.py", config, "--config.model.pattern=lstm,gru"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    assert tuple(values.config.model.pattern) == ("lstm,gru",)
    backbone = BackboneConfig(d_model=8, num_layers=3, vocab_size=5, pattern=values.config.model.pattern)
    assert backbone.pattern == ("lstm", "gru") and backbone.layer_mixers() == ("lstm", "gru", "lstm")


def test_wrong_type_or_value_names_the_key_and_what_it_accepts():
    config = load_config_file(os.path.join(ROOT, "configs", "genomic.py"), "lstm").to_dict()
    with pytest.raises(ConfigError, match=r"config\.checkpoint\.best_mode: 'maximum' .* \['min', 'max'\]"):
        resolve({**config, "checkpoint": {**config["checkpoint"], "best_mode": "maximum"}})
    with pytest.raises(
        ConfigError, match=r"config\.task: 'forecasting' .* \['lm', 'classification', 'forecast'\]"
    ):
        resolve({**config, "task": "forecasting"})
    with pytest.raises(ConfigError, match=r"config\.batch_size: expected an int, got '8' \(str\)"):
        resolve({**config, "batch_size": "8"})
    with pytest.raises(ConfigError, match=r"config\.tbptt_updates: 'sample' .* \['batch', 'chunk'\]"):
        resolve({**config, "tbptt_updates": "sample"})
    with pytest.raises(
        ConfigError, match=r"config\.optimizer\.name: 'adagrad' .* \['adamw', 'adam', 'sgd', 'lion'\]"
    ):
        resolve({**config, "optimizer": {**config["optimizer"], "name": "adagrad"}})
    with pytest.raises(
        ConfigError, match=r"config\.model\.remat: 'everything' is not allowed; choose one of"
    ):
        resolve({**config, "model": {**config["model"], "remat": "everything"}})
    with pytest.raises(ConfigError, match=r"config\.head\.pooling: 'max' .* \['mean', 'last', 'first'\]"):
        resolve({**config, "head": {**config["head"], "pooling": "max"}})
    with pytest.raises(ConfigError, match=r"config\.mesh\.shape\[0\]: expected an int, got 'x'"):
        resolve({**config, "mesh": {**config["mesh"], "shape": ("x",)}})
    with pytest.raises(
        ConfigError, match=r"config\.optimizer: unknown key\(s\) 'learning_rat' \(did you mean"
    ):
        resolve({**config, "optimizer": {**config["optimizer"], "learning_rat": 0.1}})
    with pytest.raises(ConfigError, match=r"config\.head: unknown key\(s\) 'tie_embeddings'"):
        resolve({**config, "head": {**config["head"], "tie_embeddings": True}})
    with pytest.raises(ConfigError, match=r"config\.total_steps is missing"):
        resolve({k: v for k, v in config.items() if k != "total_steps"})


def test_config_arg_values_are_typed():
    preset, options = parse_arg("gla,length=1024,size=accelerator", "lstm", {"length": int}, "configs/x.py")
    assert (preset, options) == ("gla", {"length": 1024, "size": "accelerator"})
    with pytest.raises(ValueError, match=r"configs/x.py: option length='long' must be an int"):
        parse_arg("gla,length=long", "lstm", {"length": int}, "configs/x.py")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lenght'\]"):
        parse_arg("gla,lenght=4", "lstm", {"length": int}, "configs/x.py")


def test_one_word_per_task():
    assert set(models.TASKS) == {"backbone", *run_config.TASKS}
    with pytest.raises(ValueError, match=r"unknown task 'forecasting'.*Did you mean 'forecast'"):
        models.from_config({"task": "forecasting"})


def test_train_closes_the_checkpointer_and_batches_on_any_error(tmp_path, monkeypatch):
    from seqjax.data import pipeline
    from seqjax.train import checkpoint, trainer

    closed = []
    for cls in (checkpoint.Checkpoints, pipeline.TrainBatches):
        original = cls.close
        monkeypatch.setattr(
            cls, "close", lambda self, original=original, cls=cls: (closed.append(cls), original(self))[1]
        )

    def broken_eval(*args, **kwargs):
        raise RuntimeError("eval failed")

    monkeypatch.setattr(trainer, "run_eval", broken_eval)
    config = load_config_file(os.path.join(ROOT, "configs", "synthetic.py"), "lstm,length=24")
    config.total_steps, config.batch_size, config.model.d_model = 2, 8, 16
    config.eval_every, config.tensorboard, config.optimizer.warmup_steps = 1, False, 0
    config.checkpoint.async_save = False
    with pytest.raises(RuntimeError, match="eval failed"):
        trainer.train(config, str(tmp_path))
    assert closed.count(checkpoint.Checkpoints) == 1 and closed.count(pipeline.TrainBatches) == 1


# ----------------------------------------------------------------------------------------------------
# The command line: every key's meaning, and a misspelled key as a one-line error.
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_key_has_a_meaning(path):
    """`--print_config` reads each key's meaning from run_config.FIELD_DOCS: a key added without one
    fails here (the task configs' data keys included)."""
    from seqjax.config.cli import config_keys

    config = load_config_file(path, "lstm")
    keys = [k for k, v in config_keys(config).items() if not isinstance(v, dict)]
    missing = [k for k in keys if run_config.field_doc(k) is None]
    assert not missing, missing
    for task in run_config.TASKS:
        leaves = config_keys(schema(task, "synthetic"))
        keys = [k for k, v in leaves.items() if not isinstance(v, dict)]
        assert not [k for k in keys if run_config.field_doc(k) is None]


@pytest.mark.parametrize(
    ("override", "closest"),
    [
        ("total_stepz", "total_steps"),
        ("trainer.num_steps", "total_steps"),
        ("optimiser.learning_rate", "optimizer.learning_rate"),
        ("lr", "optimizer.learning_rate"),
        ("data.lenght", "data.length"),
    ],
)
def test_an_unknown_override_names_the_closest_keys(override, closest):
    from seqjax.config.cli import unknown_override

    config = load_config_file(os.path.join(ROOT, "configs", "genomic.py"), "lstm")
    message = unknown_override(config, override)
    assert message.startswith(f"unknown config key {override!r}; did you mean {closest!r}"), message
    assert unknown_override(config, "optimizer.learning_rate") is None
    assert unknown_override(config, "model.mixers.lstm.cell") is None


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("override", "closest"), [("total_stepz", "total_steps"), ("trainer.num_steps", "total_steps")]
)
def test_a_misspelled_key_on_the_command_line_is_one_line(tmp_path, override, closest):
    """Before: an escaped AttributeError ('\\'total_stepz\\'\\nDid you mean ...') or a 40-line traceback
    ending in KeyError: "'trainer'"."""
    line = refusal_line(
        "scripts/train.py",
        "--config=configs/genomic.py:lstm",
        f"--workdir={tmp_path / 'run'}",
        f"--config.{override}=5",
    )
    assert f"unknown config key {override!r}; did you mean {closest!r}" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("configs/genomic.py:lstmm", "configs/genomic.py: unknown preset 'lstmm'; choose one of ["),
        ("configs/genomic.py:lstm,task=specie", "configs/genomic.py: task must be one of ["),
        ("configs/genomicc.py:lstm", "--config: no config file 'configs/genomicc.py'; give a configs/*.py"),
    ],
    ids=["preset", "option", "file"],
)
def test_a_config_file_that_refuses_its_argument_is_one_line(tmp_path, config, message):
    """Before: absl's "FATAL Flags parsing error" around ml_collections' traceback of the config file's
    ValueError, exit status 1; for a missing file, a traceback from the first use of the config."""
    line = refusal_line("scripts/train.py", f"--config={config}", f"--workdir={tmp_path / 'run'}")
    assert line.startswith(f"scripts/train.py: {message}"), line
    assert not (tmp_path / "run").exists()


def test_print_config_lists_every_key_and_exits_without_training(tmp_path):
    from seqjax.config.cli import config_keys

    done = _script(
        "scripts/train.py", "--config=configs/genomic.py:lstm", "--config.total_steps=7", "--print_config"
    )
    assert done.returncode == 0, done.stderr
    config = load_config_file(os.path.join(ROOT, "configs", "genomic.py"), "lstm")
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    keys = [k for k, v in config_keys(config).items() if not isinstance(v, dict)]
    assert sorted(rows) == sorted(keys)
    assert rows["total_steps"].split()[1] == "7"  # the override applied
    assert run_config.FIELD_DOCS["total_steps"] in rows["total_steps"]
    assert "default 0.001" in rows["optimizer.learning_rate"]  # the trainer's default beside the value
