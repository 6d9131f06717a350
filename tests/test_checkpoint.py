"""Orbax checkpoints: round trip with iterator state and config, retention, refusal of NaN states,
fallback past a corrupt latest step, and restoring onto a mesh of another shape."""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.train.checkpoint import CheckpointError, Checkpoints, NonFiniteStateError
from seqjax.train.mesh import make_mesh


def _state(scale: float = 1.0):
    return {
        "params": {"w": scale * jnp.arange(32.0).reshape(8, 4), "b": scale * jnp.ones(4)},
        "step": jnp.asarray(3, jnp.int32),
    }


def _abstract(state, shardings=None):
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def test_round_trip_carries_data_state_and_config(tmp_path):
    ckpt = Checkpoints(tmp_path, save_every=2, keep=2)
    state = _state()
    ckpt.save(4, state, data_state={"epoch": 1, "position": 17}, config={"model": {"layers": (2, 3)}})
    ckpt.wait()
    restored = ckpt.restore(_abstract(state))
    assert restored.step == 4 and restored.skipped_steps == ()
    assert restored.data_state == {"epoch": 1, "position": 17}
    assert restored.config == {"model": {"layers": [2, 3]}}
    jax.tree.map(np.testing.assert_array_equal, restored.state, state)
    assert ckpt.should_save(6) and not ckpt.should_save(5)
    ckpt.close()


def test_empty_directory_restores_none(tmp_path):
    with Checkpoints(tmp_path) as ckpt:
        assert ckpt.restore(_abstract(_state())) is None


def test_keeps_latest_n_and_the_best(tmp_path):
    ckpt = Checkpoints(tmp_path, keep=2, best_metric="loss", best_mode="min", async_save=False)
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0}
    for step, loss in losses.items():
        ckpt.save(step, _state(step), metrics={"loss": loss})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4, 5]
    assert ckpt.best_step() == 2
    with pytest.raises(KeyError, match="best_metric 'loss'"):
        ckpt.save(6, _state(), metrics={"accuracy": 1.0})
    ckpt.close()


def test_nan_state_is_never_written(tmp_path):
    ckpt = Checkpoints(tmp_path, async_save=False)
    ckpt.save(1, _state())
    bad = _state()
    bad["params"]["b"] = bad["params"]["b"].at[2].set(jnp.nan)
    with pytest.raises(NonFiniteStateError, match=r"step 2: .*NaN or Inf.*last good checkpoint .* step 1"):
        ckpt.save(2, bad)
    ckpt.wait()
    assert ckpt.all_steps() == [1]
    ckpt.close()


def _corrupt(step_dir: str) -> None:
    """Truncates every array data file of a saved step to zero bytes."""
    hit = 0
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            path = os.path.join(root, name)
            if "/d/" in path or name.endswith(".ocdbt") or "ocdbt" in root:
                with open(path, "wb"):
                    hit += 1
    assert hit, f"found no array files to corrupt under {step_dir}"


def test_corrupt_latest_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    ckpt = Checkpoints(tmp_path, keep=3, async_save=False)
    ckpt.save(1, _state(1.0), data_state={"position": 1})
    ckpt.save(2, _state(2.0), data_state={"position": 2})
    ckpt.wait()
    _corrupt(os.path.join(ckpt.directory, "2"))
    with caplog.at_level(logging.WARNING), Checkpoints(tmp_path) as reader:
        restored = reader.restore(_abstract(_state()))
    assert restored.step == 1 and restored.skipped_steps == (2,)
    assert restored.data_state == {"position": 1}
    jax.tree.map(np.testing.assert_array_equal, restored.state, _state(1.0))
    assert "step 2" in caplog.text and "falling back" in caplog.text

    _corrupt(os.path.join(ckpt.directory, "1"))
    with Checkpoints(tmp_path) as reader, pytest.raises(CheckpointError, match="could be restored"):
        reader.restore(_abstract(_state()))
    ckpt.close()


def test_unfinished_save_is_not_a_step(tmp_path):
    """Orbax writes into a temporary directory first; one left behind by a killed run is ignored."""
    ckpt = Checkpoints(tmp_path, async_save=False)
    ckpt.save(1, _state())
    ckpt.wait()
    os.makedirs(os.path.join(ckpt.directory, "2.orbax-checkpoint-tmp-1234", "state"))
    with Checkpoints(tmp_path) as reader:
        assert reader.all_steps() == [1]
        assert reader.restore(_abstract(_state())).step == 1
    ckpt.close()


def test_restore_onto_another_mesh_shape(tmp_path):
    mesh8 = make_mesh((4, 2), ("data", "model"))
    state = _state()
    placed = jax.device_put(
        state,
        {
            "params": {"w": NamedSharding(mesh8, P("data", "model")), "b": NamedSharding(mesh8, P("model"))},
            "step": NamedSharding(mesh8, P()),
        },
    )
    ckpt = Checkpoints(tmp_path, async_save=True)
    ckpt.save(7, placed)
    ckpt.close()

    mesh4 = make_mesh((2, 2), ("fsdp", "model"), devices=jax.devices()[4:])
    target = {
        "params": {"w": NamedSharding(mesh4, P(None, "fsdp")), "b": NamedSharding(mesh4, P())},
        "step": NamedSharding(mesh4, P()),
    }
    with Checkpoints(tmp_path) as reader:
        restored = reader.restore(_abstract(state, target))
    assert restored.state["params"]["w"].sharding == target["params"]["w"]
    assert set(restored.state["params"]["w"].sharding.device_set) == set(jax.devices()[4:])
    jax.tree.map(np.testing.assert_array_equal, restored.state, state)


def _mixed_state(mesh):
    """Every kind of leaf a train state has, one of them sharded over the mesh's 8 devices."""
    sharded = jax.device_put(jnp.arange(64.0).reshape(8, 8) / 7, NamedSharding(mesh, P("data", None)))
    return {
        "f32": sharded,
        "bf16": (jnp.arange(12.0) / 3).astype(jnp.bfloat16),
        "f16": jnp.linspace(-2, 2, 5, dtype=jnp.float16),
        "i8": jnp.arange(-3, 4, dtype=jnp.int8),
        "u32": jnp.asarray([0, 1, 2**32 - 1], jnp.uint32),
        "i32": jnp.asarray(3, jnp.int32),
        "bool": jnp.asarray([True, False, True]),
        "key": jax.random.key(7),
        "raw_key": jax.random.PRNGKey(8),
    }


def test_host_and_device_checks_give_the_same_digests_and_finiteness(monkeypatch):
    """A small single-process state is checked in numpy (no per-state compile), a large or multi-process
    one on its devices: the digests of every leaf type, a sharded one included, must agree, so a
    checkpoint written by one is verified by the other; so must the non-finite check."""
    from seqjax.train import checkpoint

    mesh = make_mesh((8, 1), ("data", "model"))
    state = _mixed_state(mesh)
    assert checkpoint._on_host(jax.tree.leaves(state))
    host = checkpoint._finite_and_digests(state)
    monkeypatch.setattr(checkpoint, "HOST_CHECK_MAX_BYTES", 0)
    assert not checkpoint._on_host(jax.tree.leaves(state))
    device = checkpoint._finite_and_digests(state)
    assert host == device and host[0] is True
    assert len({tuple(d) for d in host[1].values()}) == len(host[1])  # no two leaves alike
    for leaf in ("f32", "bf16", "f16"):
        broken = {**state, leaf: state[leaf].at[1].set(jnp.nan)}
        monkeypatch.setattr(checkpoint, "HOST_CHECK_MAX_BYTES", 0)
        on_device = checkpoint._finite_and_digests(broken)
        monkeypatch.setattr(checkpoint, "HOST_CHECK_MAX_BYTES", 2**30)
        assert checkpoint._finite_and_digests(broken) == on_device and on_device[0] is False


def test_a_checkpoint_checked_on_the_host_restores_with_the_device_check(tmp_path, monkeypatch):
    from seqjax.train import checkpoint

    state = _state()
    with Checkpoints(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, data_state={"next_batch": 1})
    monkeypatch.setattr(checkpoint, "HOST_CHECK_MAX_BYTES", 0)
    with Checkpoints(tmp_path) as ckpt:
        restored = ckpt.restore(_abstract(state))
    assert restored.step == 1
    jax.tree.map(np.testing.assert_array_equal, restored.state, state)
