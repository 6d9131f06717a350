"""Checkpoint and workdir faults (issue 14): a corrupt newest step is moved aside instead of looping;
flipped bytes and an edited data position are caught by checksums; exploded parameters are never saved;
`data_state = {}` falls back; a workdir is locked by one run; a resume with a changed config is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from seqjax.train.checkpoint import UNREADABLE, Checkpoints
from seqjax.train.trainer import NonFiniteLossError, setup, train
from seqjax.train.workdir import ConfigChangedError, WorkdirLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(scale: float = 1.0):
    w = jax.random.normal(jax.random.key(0), (64, 64)) * 0.1  # big enough to be stored uncompressed
    return {"params": {"w": scale * w, "b": scale * jnp.ones(4)}, "step": jnp.asarray(3, jnp.int32)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _files(step_dir: str, part: str = "state") -> list[str]:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, part)) for f in fs)


def _truncate_arrays(step_dir: str) -> None:
    for path in _files(step_dir):
        if "/d/" in path:
            open(path, "wb").close()


def _delete(name: str):
    def corrupt(step_dir: str) -> None:
        hits = [p for p in _files(step_dir) if os.path.basename(p) == name]
        assert hits, f"no {name} under {step_dir}"
        for path in hits:
            os.remove(path)

    return corrupt


def _empty_data_state(step_dir: str) -> None:
    open(os.path.join(step_dir, "data_state", "metadata"), "w").close()


CORRUPTIONS = {
    "truncated arrays": _truncate_arrays,
    "deleted _METADATA": _delete("_METADATA"),
    "deleted manifest.ocdbt": _delete("manifest.ocdbt"),
    "empty data state": _empty_data_state,
}


def _set_aside(directory: str) -> list[str]:
    return sorted(d for d in os.listdir(directory) if UNREADABLE in d)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_unreadable_step_is_moved_aside_and_can_be_saved_again(tmp_path, corruption):
    """Before: the fallback left the unreadable step 2 in place, so saving step 2 again raised
    StepAlreadyExistsError on every restart."""
    with Checkpoints(tmp_path, keep=3, async_save=False) as ckpt:
        ckpt.save(1, _state(1.0), data_state={"next_batch": 1})
        ckpt.save(2, _state(2.0), data_state={"next_batch": 2})
    CORRUPTIONS[corruption](os.path.join(str(tmp_path), "2"))
    with Checkpoints(tmp_path, keep=3, async_save=False) as ckpt:
        restored = ckpt.restore(_abstract(_state()))
        assert restored.step == 1 and restored.skipped_steps == (2,)
        assert ckpt.all_steps() == [1]
        ckpt.save(2, _state(2.0), data_state={"next_batch": 2})  # retrained: the same step number again
    with Checkpoints(tmp_path) as reader:
        restored = reader.restore(_abstract(_state()))
    assert restored.step == 2 and restored.skipped_steps == ()
    jax.tree.map(np.testing.assert_array_equal, restored.state, _state(2.0))
    assert [d.split(UNREADABLE)[0] for d in _set_aside(str(tmp_path))] == ["2"]  # kept for inspection


def test_flipped_bytes_in_an_array_file_are_a_checksum_mismatch(tmp_path):
    """Before: the flipped bytes restored as silently wrong (finite) values."""
    with Checkpoints(tmp_path, keep=3, async_save=False) as ckpt:
        ckpt.save(1, _state(1.0))
        ckpt.save(2, _state(2.0))
    data = max((p for p in _files(os.path.join(str(tmp_path), "2")) if "/d/" in p), key=os.path.getsize)
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    with Checkpoints(tmp_path) as reader:
        restored = reader.restore(_abstract(_state()))
    assert restored.step == 1 and restored.skipped_steps == (2,)
    jax.tree.map(np.testing.assert_array_equal, restored.state, _state(1.0))


def test_edited_data_position_is_a_checksum_mismatch(tmp_path):
    """Before: {"next_batch": 20} edited to 21 resumed at the wrong data position silently."""
    with Checkpoints(tmp_path, keep=3, async_save=False) as ckpt:
        ckpt.save(1, _state(1.0), data_state={"next_batch": 10})
        ckpt.save(2, _state(2.0), data_state={"next_batch": 20})
    with open(os.path.join(str(tmp_path), "2", "data_state", "metadata"), "w") as f:
        json.dump({"next_batch": 21}, f)
    with Checkpoints(tmp_path) as reader:
        restored = reader.restore(_abstract(_state()))
    assert restored.step == 1 and restored.data_state == {"next_batch": 10}


# ----------------------------------------------------------------------------------------------------
# The trainer.
# ----------------------------------------------------------------------------------------------------
def _config(total: int = 8):
    config = synthetic.get_config("gru,length=24")
    config.total_steps = total
    config.batch_size = 8
    config.model.d_model = 16
    config.log_every = 1000
    config.eval_every = 0
    config.checkpoint.every = 4
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.optimizer.warmup_steps = 2
    return config


def _steps(workdir: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _rewrite_data_state(step_dir: str, data_state: dict, item: str = "data_state") -> None:
    """Writes `data_state` (or another JSON `item` of the step, e.g. "config") with a matching checksum,
    as a buggy or older writer would have saved it."""
    with open(os.path.join(step_dir, item, "metadata"), "w") as f:
        json.dump(data_state, f)
    path = os.path.join(step_dir, "checksums", "metadata")
    with open(path) as f:
        checksums = json.load(f)
    checksums[item] = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()
    with open(path, "w") as f:
        json.dump(checksums, f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 8-step run (checkpoints 4 and 8) and its final parameters."""
    workdir = str(tmp_path_factory.mktemp("trained"))
    result = train(_config(), workdir)
    assert _steps(workdir) == [4, 8]
    return workdir, jax.tree.map(np.asarray, result["state"].params)


def _copy(trained, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    subprocess.run(["cp", "-r", trained[0], workdir], check=True)
    return workdir


@pytest.mark.parametrize(
    "fault",
    ["truncated arrays", "no data position", "data position != step"],
)
def test_trainer_resumes_past_a_bad_newest_step(trained, tmp_path, fault):
    """Before: truncated arrays -> fallback to step 4, retrain, StepAlreadyExistsError saving step 8 (on
    every restart); `data_state = {}` -> a bare KeyError 'next_batch'; a position that disagrees with the
    step (checksum matching) -> resumed at the wrong data position."""
    workdir = _copy(trained, tmp_path)
    step_dir = os.path.join(workdir, "checkpoints", "8")
    if fault == "truncated arrays":
        _truncate_arrays(step_dir)
    else:
        _rewrite_data_state(step_dir, {} if fault == "no data position" else {"next_batch": 7})
    result = train(_config(), workdir)
    assert result["step"] == 8 and _steps(workdir) == [4, 8]
    assert [d.split(UNREADABLE)[0] for d in _set_aside(os.path.join(workdir, "checkpoints"))] == ["8"]
    # Retrained from step 4 on the same data: the same parameters as the uninterrupted run.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, result["state"].params), trained[1])


def test_exploded_parameters_are_never_checkpointed(tmp_path):
    """Before: with learning rate 1e6, parameters of 1e6..5e37 were checkpointed before the loss turned
    NaN, so every restart resumed from an exploded state."""
    config = _config(total=6)
    config.checkpoint.every = 1
    config.optimizer.learning_rate = 1e6
    config.optimizer.warmup_steps = 0
    with pytest.raises(NonFiniteLossError, match=r"step \d+: .*largest \|parameter\|.*max_param_abs=10000"):
        train(config, str(tmp_path))
    abstract = setup(config)["abstract_state"]
    with Checkpoints(os.path.join(str(tmp_path), "checkpoints")) as ckpt:
        for step in ckpt.all_steps():
            params = ckpt.restore(abstract, step=step).state.params
            largest = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(params))
            assert largest <= 1e4, f"step {step} saved parameters up to {largest}"


def test_a_second_run_on_a_locked_workdir_names_the_holder(tmp_path):
    """Before: two trainers on one workdir interleaved their saves or crashed (ENOTEMPTY)."""
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from seqjax.train.workdir import WorkdirLock; "
            "lock = WorkdirLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); time.sleep(120)",
            workdir,
        ],
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=rf"in use by another run \(pid {holder.pid} on host"):
            train(_config(total=4), workdir)
        assert not os.path.isdir(os.path.join(workdir, "checkpoints"))  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    assert train(_config(total=4), workdir)["step"] == 4  # the kernel dropped the dead holder's lock


def test_resume_with_another_config_lists_the_keys(trained, tmp_path):
    """Before: a second run with another learning rate and seed silently continued the first's run."""
    workdir = _copy(trained, tmp_path)
    changed = _config(total=12)
    changed.optimizer.learning_rate = 0.5
    changed.seed = 7
    changed.log_every = 3  # operational: free to change
    with pytest.raises(ConfigChangedError) as err:
        train(changed, workdir)
    message = str(err.value)
    for key in ("optimizer.learning_rate", "seed", "total_steps", "optimizer.total_steps"):
        assert f"  {key}: " in message
    assert "log_every" not in message
    assert "--allow_config_change=" in message

    bigger = _config(total=12)
    bigger.model.d_model = 32
    with pytest.raises(ConfigChangedError, match=r"another model or data[\s\S]*model\.d_model: 16"):
        train(bigger, workdir, allow_config_change=["total_steps"])
    with pytest.raises(ConfigChangedError, match=r"\['model.d_model'\], which can never change"):
        train(bigger, workdir, allow_config_change=["model.d_model"])

    result = train(_config(total=12), workdir, allow_config_change=["total_steps"])
    assert result["step"] == 12 and _steps(workdir) == [8, 12]


def test_a_run_saved_before_a_config_key_existed_resumes(trained, tmp_path):
    """A checkpoint written by an older seqjax lacks keys added since: they take their defaults on resume,
    and only a non-default value counts as a change."""
    workdir = _copy(trained, tmp_path)
    step_dir = os.path.join(workdir, "checkpoints", "8")
    path = os.path.join(step_dir, "config", "metadata")
    with open(path) as f:
        saved = json.load(f)
    del saved["train_examples"]  # added after this run was saved
    _rewrite_data_state(step_dir, saved, item="config")
    subset = _config(total=12)
    subset.train_examples = 4
    with pytest.raises(ConfigChangedError, match=r"train_examples: None \(saved\) -> 4"):
        train(subset, workdir, allow_config_change=["total_steps"])
    result = train(_config(total=12), workdir, allow_config_change=["total_steps"])
    assert result["step"] == 12
