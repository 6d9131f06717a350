"""Segment recurrence: every layer's state carried from one batch to the next along a token stream.

- Models: for every LM cell whose state is carriable, the forward pass over 4 consecutive segments, each
  from the previous one's state, equals the forward pass over the whole sequence (resets included).
- Data: the stream batcher's lanes are contiguous across batches, every target of an epoch is read once
  (but the lane tails), resets mark document starts and lane starts, batches are pure functions of the
  index (resumable) and split by process; the evaluation lanes count every target exactly once.
- Train step: with learning rate 0, the losses of consecutive carried steps are the whole stream's, with
  or without truncated BPTT inside the batch.
- Trainer: a run stopped at step k and resumed ends with the parameters and carried state of the
  uninterrupted run, on the same mesh (bitwise) and on another mesh (float round-off); so does
  `scripts/train.py` killed with SIGKILL mid-stream and rerun (bitwise); carried evaluation counts the
  targets per-sequence evaluation counts.
- Errors: softmax attention (a growing state), encoders, other tasks and other data are refused, naming
  the layer and the cell; Transformer-XL attention (a fixed memory) is allowed and its preset trains.
"""

from __future__ import annotations

import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import documents, genomic, synthetic
from seqjax import cells, models
from seqjax.config import LOGICAL_RULES
from seqjax.data.stream import StreamBatches, TokenStream, stream_eval_batches
from seqjax.train import mesh as mesh_lib
from seqjax.train import segments
from seqjax.train.checkpoint import Checkpoints
from seqjax.train.run_config import ConfigError, resolve
from seqjax.train.state import CarriedTrainState, TrainState, state_shardings
from seqjax.train.step import LOSSES, make_train_step
from seqjax.train.trainer import evaluate, setup, train
from tests.cell_cases import contract_cases
from tests.models_helpers import VOCAB, B, D, assert_close, fast_variables, lm, tokens
from tests.train_subprocess import (
    checkpoint_steps,
    finish,
    start,
    start_and_wait,
    train_command,
    with_overrides,
)

SEGMENT = 5  # tokens per segment; sliding-window attention's window (4) crosses segment boundaries

CARRIABLE = [
    ("lstm", cells.LSTM(hidden_size=D)),
    ("gru", cells.GRU(hidden_size=D)),
    ("elstm", cells.ELSTM(hidden_size=D, memory_slots=2, memory_width=4)),
    ("s4d", cells.S4D(hidden_size=D, state_size=4, chunk_size=4)),
    ("s5", cells.S5(hidden_size=D, state_size=4, chunk_size=4)),
    ("lru", cells.LRU(hidden_size=D, state_size=4, chunk_size=4)),
    ("mamba", cells.Mamba(d_model=D, state_size=4, chunk_size=4)),
    ("linear-attention", cells.LinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("gla", cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("gla-scalar", cells.ScalarGatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("performer", cells.Performer(num_heads=2, head_dim=D // 2, num_features=8, chunk_size=4)),
    ("deltanet", cells.DeltaNet(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("gated-deltanet", cells.GatedDeltaNet(num_heads=2, head_dim=D // 2, chunk_size=4)),
    # the token shift carries the previous input across segments (d_model = D); W_o and the LoRA
    # down-projections drawn (the authors' zeros would make the layer's output 0)
    ("rwkv7", cells.RWKV7(num_heads=2, head_dim=D // 2, d_model=D, zero_init=False, chunk_size=4)),
    ("mamba2", cells.Mamba2(d_model=D, state_size=4, expand=2, head_dim=D // 2, chunk_size=4)),
    ("rglru", cells.RGLRU(d_model=D, num_heads=2, chunk_size=4)),
    ("mlstm", cells.MLSTM(d_model=D, num_heads=2, qkv_block_size=2, chunk_size=4)),
    ("slstm", cells.SLSTM(hidden_size=D, num_heads=2, recurrent_init="standard")),
    ("sliding-window", cells.SlidingWindowAttention(num_heads=2, head_dim=D // 2, window=4, num_global=1)),
    # Transformer-XL equals the whole sequence when its memory covers the stream (M = the 4 segments);
    # with a shorter memory it is another function (tests/test_xl_attention.py checks that one).
    ("xl-attention", cells.TransformerXLAttention(num_heads=2, head_dim=D // 2, memory_length=4 * SEGMENT)),
]


# --------------------------------------------------------------------------------------------------
# Models: consecutive segments with the carried state == the whole sequence.
# --------------------------------------------------------------------------------------------------
def test_every_carriable_lm_cell_is_covered():
    """Each registered cell (as the cell contract builds it) that runs left to right with a fixed-size
    state has a case above; the others are refused."""
    covered = {cell.name for _, cell in CARRIABLE}
    refused = set()
    for case, cell in contract_cases():
        assert not isinstance(cell, str), cell
        if segments.carried_state_problem(cell) is None:
            assert cell.name in covered, f"add a segment-recurrence case for {case!r}"
        else:
            refused.add(cell.name)
    assert {"attention", "longformer"} <= refused


@pytest.mark.parametrize("cell", [c for _, c in CARRIABLE], ids=[i for i, _ in CARRIABLE])
def test_segments_with_carried_state_equal_the_whole_sequence(cell):
    """LanguageModel.forward over 4 segments, each from the cache the previous one returned."""
    model = lm(cell, num_layers=1)
    toks = tokens(0, (B, 4 * SEGMENT))
    # A document starts inside a segment (row 0) and at a segment's first token (row 1).
    resets = np.zeros((B, 4 * SEGMENT), bool)
    resets[0, 7], resets[1, 2 * SEGMENT] = True, True

    @jax.jit
    def run(variables):
        whole, final = model.apply(variables, toks, method="forward", resets=resets)
        cache, pieces = None, []
        for s in range(4):
            part = slice(s * SEGMENT, (s + 1) * SEGMENT)
            logits, cache = model.apply(
                variables, toks[:, part], cache, method="forward", resets=resets[:, part]
            )
            pieces.append(logits)
        return jnp.concatenate(pieces, axis=1), whole, cache, final

    segmented, whole, cache, final = run(fast_variables(model, toks))
    assert_close(segmented, whole, tol=2e-5)
    assert_close(cache, final, tol=2e-5)  # the state after the stream, too


# --------------------------------------------------------------------------------------------------
# Data: the stream batcher.
# --------------------------------------------------------------------------------------------------
N = 203  # stream tokens; tokens[t] = t, so a batch's values are stream positions
DOCUMENT_STARTS = (0, 17, 60, 61, 150)


def _positions_stream(counted_starts: bool = True) -> TokenStream:
    starts = np.zeros(N, bool)
    starts[list(DOCUMENT_STARTS)] = True
    counted = np.ones(N - 1, bool) if counted_starts else ~starts[1:]
    return TokenStream(np.arange(N), starts, counted)


def test_lanes_are_contiguous_and_every_target_is_read_once_per_epoch():
    stream, rows, length = _positions_stream(), 4, 8
    batches = StreamBatches(stream, rows, length, shuffle=False)
    lane = (N - 1) // rows  # 50 inputs per lane, 6 whole segments
    assert (batches.lane_tokens, batches.segments_per_epoch) == (lane, 6)
    epoch = [batches.local_batch(s) for s in range(batches.segments_per_epoch)]
    inputs = np.concatenate([b["inputs"] for b in epoch], axis=1)  # [rows, 48]: each lane in order
    for r in range(rows):
        np.testing.assert_array_equal(inputs[r], np.arange(r * lane, r * lane + 6 * length))
    targets = np.concatenate([b["targets"] for b in epoch], axis=1)
    np.testing.assert_array_equal(targets, inputs + 1)
    read = np.bincount(targets.ravel(), minlength=N)
    assert read.max() == 1  # no target twice
    tails = {t + 1 for r in range(rows) for t in range(r * lane + 6 * length, (r + 1) * lane)}
    tails |= set(range(rows * lane + 1, N))  # the inputs past the last whole lane
    assert set(np.flatnonzero(read == 0)) == {0} | tails  # only the lane ends are left out
    for s, batch in enumerate(epoch):
        assert batch["mask"].all() and (batch["weights"] == 1).all()
        expected = stream.starts[batch["inputs"]]
        if s == 0:
            expected[:, 0] = True  # a lane's first segment never continues another state
        np.testing.assert_array_equal(batch["resets"], expected)
    # The next epoch starts the lanes again, from a reset.
    again = batches.local_batch(batches.segments_per_epoch)
    np.testing.assert_array_equal(again["inputs"], epoch[0]["inputs"])
    assert again["resets"][:, 0].all()


def test_shuffled_epochs_shift_the_lanes_by_a_seeded_offset():
    stream, rows, length = _positions_stream(), 4, 8
    batches = StreamBatches(stream, rows, length, seed=3, shuffle=True)
    per_epoch = batches.segments_per_epoch
    assert per_epoch == (50 - (length - 1)) // length
    offsets = [batches.epoch_offset(e) for e in range(6)]
    assert all(0 <= o < length for o in offsets) and len(set(offsets)) > 1
    assert offsets == [StreamBatches(stream, rows, length, seed=3).epoch_offset(e) for e in range(6)]
    for e in range(3):
        epoch = [batches.local_batch(e * per_epoch + s) for s in range(per_epoch)]
        inputs = np.concatenate([b["inputs"] for b in epoch], axis=1)
        for r in range(rows):
            start = r * 50 + offsets[e]
            np.testing.assert_array_equal(inputs[r], np.arange(start, start + per_epoch * length))
        assert epoch[0]["resets"][:, 0].all()


def test_batches_resume_from_their_state_and_split_by_process():
    stream = _positions_stream()
    whole = StreamBatches(stream, 4, 8, seed=1)
    seen = [next(whole) for _ in range(9)]
    assert whole.state() == {"next_batch": 9}
    resumed = StreamBatches(stream, 4, 8, seed=1, start=whole.state()["next_batch"] - 4)
    for i in range(5, 9):
        batch = next(resumed)
        for key in seen[i]:
            np.testing.assert_array_equal(batch[key], seen[i][key])
    for process in range(2):
        part = StreamBatches(stream, 4, 8, seed=1, process_index=process, process_count=2)
        for i in (0, 7):
            rows = slice(2 * process, 2 * process + 2)
            np.testing.assert_array_equal(part.local_batch(i)["inputs"], seen[i]["inputs"][rows])
        part.close()
    whole.close()
    resumed.close()
    with pytest.raises(ValueError, match="too short for one segment"):
        StreamBatches(stream, 16, 16, shuffle=False)


@pytest.mark.parametrize("counted_starts", [True, False], ids=["packed", "padded"])
def test_evaluation_lanes_count_every_target_once(counted_starts):
    stream = _positions_stream(counted_starts)
    batches = list(stream_eval_batches(stream, 4, 8))
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    mask = np.concatenate([b["mask"] for b in batches], axis=1)
    counts = np.bincount(targets[mask], minlength=N)
    np.testing.assert_array_equal(counts[1:], np.ones(N - 1))  # every target once, padding aside
    counted = np.bincount(targets[weights > 0], minlength=N)[1:]
    np.testing.assert_array_equal(counted, stream.counted.astype(int))
    for b in batches:
        assert not b["inputs"][~b["mask"]].any() and not b["weights"][~b["mask"]].any()


@pytest.mark.parametrize("ahead", [0, 1, 3, 100])
def test_stream_evaluation_with_segments_in_flight_reads_them_in_order(ahead, monkeypatch):
    """`evaluate_stream` keeps segments dispatched ahead of the one it reads back; the carry must still
    pass from each segment to the next and each segment's sums land on its own documents."""

    @jax.jit
    def eval_fn(params, carry, batch):  # the sums depend on the carry: a segment out of order shows
        nll = (batch["inputs"].sum(-1) + carry) * params
        return {"nll": nll, "tokens": jnp.ones_like(nll)}, carry + 1.0

    rng = np.random.default_rng(0)
    batches = [
        {"inputs": rng.normal(size=(2, 4)).astype(np.float32), "document": np.array([i % 3, -1])}
        for i in range(7)
    ]
    expected = np.zeros(3)
    for i, b in enumerate(batches):
        expected[i % 3] += 2.0 * (float(b["inputs"][0].astype(np.float64).sum()) + i)
    monkeypatch.setattr(segments, "STREAM_EVAL_AHEAD", ahead)
    _, totals = segments.evaluate_stream(eval_fn, 2.0, jnp.zeros(()), iter(batches), lambda host: host)
    np.testing.assert_allclose(totals["nll"], expected, rtol=1e-6)
    np.testing.assert_array_equal(totals["tokens"], [3.0, 2.0, 2.0])


def test_document_split_serves_its_stream(tmp_path):
    from seqjax.data import documents

    data_dir = str(tmp_path / "data")
    for packing in ("packed", "padded"):
        source = documents.make_sources({"corpus": "gutenberg", "length": 64, "packing": packing}, data_dir)
        test = source["test"]
        stream = test.token_stream()
        examples = [test[i] for i in range(len(test))]
        weight = sum(float(e["weights"].sum()) for e in examples)
        assert stream.counted.sum() == weight  # the per-sequence evaluation's targets
        assert len(stream.tokens) == test.num_tokens and stream.starts.sum() == test.num_documents
        if packing == "packed":
            inputs = np.concatenate([e["inputs"][e["mask"]] for e in examples])
            np.testing.assert_array_equal(inputs, stream.tokens[:-1])


# --------------------------------------------------------------------------------------------------
# The train step: carried state across steps == one pass over the stream.
# --------------------------------------------------------------------------------------------------
def _step_model() -> models.LanguageModel:
    config = models.BackboneConfig(
        d_model=D,
        num_layers=2,
        vocab_size=VOCAB,
        pattern=("lstm", "gla"),
        mixers={"gla": cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)},
    )
    return models.LanguageModel(config)


# Truncated BPTT with one update per batch runs from the carried state in the trainer tests below.
@pytest.mark.parametrize("tbptt", [(None, "batch"), (4, "chunk")], ids=["bptt", "tbptt-chunk"])
def test_carried_steps_score_the_whole_stream(tbptt):
    model, rows, length, count = _step_model(), 2, 8, 3
    toks = tokens(5, (rows, length * count + 1))
    resets = np.zeros((rows, length * count), bool)
    resets[1, 11] = True
    tx = optax.sgd(0.0)  # parameters stay put: each step's loss is the stream's loss on its segment
    mesh = mesh_lib.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    example = (jnp.zeros((rows, length), jnp.int32),)
    abstract, plain = state_shardings(model, tx, example, mesh, rules)
    _, shardings = segments.with_carry(abstract, plain, model, rows, mesh, rules)
    # Parameters without compiling `model.init` (`fast_variables`), placed as the trainer places them.
    params = fast_variables(model, *example)["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jnp.zeros(2, jnp.uint32)
    )
    state = segments.add_initial_carry(jax.device_put(state, plain), model, rows, shardings)
    by_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    step = make_train_step(
        model,
        tx,
        LOSSES["lm"],
        shardings,
        dict.fromkeys(("inputs", "targets", "resets", "mask"), by_row),
        tbptt_length=tbptt[0],
        tbptt_updates=tbptt[1],
        segment_recurrence=True,
    )
    params = jax.tree.map(np.asarray, state.params)
    nll = 0.0
    for s in range(count):
        part = slice(s * length, (s + 1) * length)
        batch = {
            "inputs": toks[:, part],
            "targets": toks[:, s * length + 1 : (s + 1) * length + 1],
            "resets": jnp.asarray(resets[:, part]),
            "mask": jnp.ones((rows, length), bool),
        }
        state, metrics = step(state, batch)
        nll += float(metrics["loss"]) * float(metrics["tokens"])
    assert isinstance(state, CarriedTrainState)
    logits = jax.jit(model.apply)({"params": params}, toks[:, :-1], resets=jnp.asarray(resets))
    whole = optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).sum()
    np.testing.assert_allclose(nll, float(whole), rtol=1e-5)
    assert state.carry[0].h.sharding.spec == jax.sharding.PartitionSpec("data", None)


# --------------------------------------------------------------------------------------------------
# The trainer: resume (same mesh, another mesh) and carried evaluation.
# --------------------------------------------------------------------------------------------------
TOTAL, HALF = 6, 3


def small_run(config, data_dir: str):
    """`config` as the trainer tests run it: TOTAL steps of batch 8, a 2-layer width-16 model, checkpoints
    at HALF and TOTAL (synchronous), no logging, TensorBoard or periodic evaluation."""
    config.total_steps = TOTAL
    config.batch_size = 8
    config.eval_batch_size = 8
    config.model.d_model = 16
    config.model.num_layers = 2
    config.log_every = 100
    config.eval_every = 0
    config.checkpoint.every = HALF  # steps HALF and TOTAL are kept
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.optimizer.warmup_steps = 2
    config.data_dir = data_dir
    return config


def _config(data_dir: str):
    config = documents.get_config("gla,length=32")
    config.segment_recurrence = True
    config.tbptt_length = 16  # chunks inside the batch, the first from the carried state
    return small_run(config, data_dir)


def _mesh(config, shape, axes, devices):
    config.mesh.shape, config.mesh.axes, config.mesh.num_devices = shape, axes, devices
    return config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def uninterrupted_run(root, make_config) -> dict:
    """`make_config(data_dir)` trained uninterrupted on a 4 x 2 mesh under `root` (checkpointed at HALF and
    TOTAL): {"root", "data_dir", "whole" (train's result)}, for the resume tests to copy and cut."""
    data_dir = str(root / "data")
    whole = train(_mesh(make_config(data_dir), (4, 2), ("data", "model"), 8), str(root / "whole"))
    return {"root": root, "data_dir": data_dir, "whole": whole}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run with segment recurrence on a 4 x 2 mesh, checkpointed at HALF and TOTAL."""
    return uninterrupted_run(tmp_path_factory.mktemp("segments"), _config)


def _killed_at_half(runs, workdir: str) -> str:
    """The uninterrupted run's workdir as a run killed after saving step HALF leaves it."""
    shutil.copytree(runs["root"] / "whole", workdir)
    shutil.rmtree(f"{workdir}/checkpoints/{TOTAL}")
    return workdir


def test_killed_and_resumed_run_equals_uninterrupted(runs, tmp_path):
    workdir = _killed_at_half(runs, str(tmp_path / "resumed"))
    config = _mesh(_config(runs["data_dir"]), (4, 2), ("data", "model"), 8)
    # The checkpoint at HALF holds the carried state after HALF batches (not the initial one).
    parts = setup(config)
    with Checkpoints(f"{workdir}/checkpoints", async_save=False) as ckpt:
        restored = ckpt.restore(parts["abstract_state"])
    assert restored.step == HALF and restored.data_state["next_batch"] == HALF
    assert isinstance(restored.state, CarriedTrainState)
    assert all(np.abs(x).max() > 0 for x in _leaves(restored.state.carry))
    resumed = train(config, workdir)
    assert resumed["step"] == runs["whole"]["step"] == TOTAL
    # Same mesh, same compiled step, same batches, same carried state: bitwise.
    for a, b in zip(_leaves(resumed["state"]), _leaves(runs["whole"]["state"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_carried_state_restores_onto_another_mesh(runs, tmp_path):
    workdir = _killed_at_half(runs, str(tmp_path / "moved"))
    # 4 devices as 2 x 2 (data x fsdp): the carried state is resharded on restore.
    config = _mesh(_config(runs["data_dir"]), (2, 2), ("data", "fsdp"), 4)
    resumed = train(config, workdir)
    assert resumed["step"] == TOTAL
    whole = runs["whole"]["state"]
    for a, b in zip(_leaves(resumed["state"].params), _leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)  # other meshes sum in another order
    for a, b in zip(_leaves(resumed["state"].carry), _leaves(whole.carry), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)
    h = resumed["state"].carry[0]  # GLA's state
    leaf = jax.tree.leaves(h)[0]
    assert leaf.sharding.mesh.size == 4
    assert leaf.sharding.spec[0] == ("data", "fsdp")  # the batch axis, as the batch is placed


KILL_TOTAL, KILL_EVERY = 40, 4
KILL_CONFIG = "documents.py:gla,length=32"


def _kill_overrides(data_dir: str) -> dict:
    """A run of KILL_TOTAL steps on the documents stream, a checkpoint every KILL_EVERY steps (all kept, to
    compare the killed run's last one with the uninterrupted run's at the same step). One GLA layer on a
    2-device mesh (the carried state sharded by lane), without truncated BPTT (the in-process resume test
    above has it): each subprocess spends most of its ~15 s on imports and compiles."""
    return {
        "segment_recurrence": True,
        "total_steps": KILL_TOTAL,
        "batch_size": 8,
        "eval_batch_size": 8,
        "model.d_model": 16,
        "model.num_layers": 1,
        "mesh.num_devices": 2,
        "log_every": 1000,
        "eval_every": 0,
        "tensorboard": False,
        "checkpoint.every": KILL_EVERY,
        "checkpoint.keep": KILL_TOTAL // KILL_EVERY,
        "checkpoint.async_save": False,  # as test_train_resume's SIGKILL test
        "data_dir": data_dir,
    }


@pytest.mark.slow
def test_sigkill_mid_stream_then_rerun_equals_uninterrupted(tmp_path):
    """`scripts/train.py` killed (SIGKILL) mid-stream and rerun with the same command ends with the
    parameters and carried state of the same command run uninterrupted in another workdir."""
    overrides = _kill_overrides(str(tmp_path / "data"))
    whole_dir, killed_dir = str(tmp_path / "whole"), str(tmp_path / "killed")
    # The uninterrupted run goes alongside the one that is killed (the data set is prepared once, under a
    # lock the other waits on).
    whole = start(train_command(KILL_CONFIG, whole_dir, overrides))
    command = train_command(KILL_CONFIG, killed_dir, overrides)
    proc = start_and_wait(command, killed_dir, at_least=2 * KILL_EVERY)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(checkpoint_steps(killed_dir))
    assert killed_at < KILL_TOTAL, "the run finished before it could be killed; the test proved nothing"
    out = finish(start(command))
    assert f"resumed from step {killed_at} (data position {killed_at})" in out, out[-3000:]
    finish(whole)

    parts = setup(with_overrides(documents.get_config(KILL_CONFIG.split(":")[1]), overrides))

    def restore(workdir: str, step: int):
        with Checkpoints(f"{workdir}/checkpoints", async_save=False) as ckpt:
            restored = ckpt.restore(parts["abstract_state"], step=step)
        # One batch per step: the stream position saved with the state is the step's.
        assert restored.data_state["next_batch"] == step and int(restored.state.step) == step
        return restored.state

    # Killed mid-stream: the last checkpoint before the kill holds a carried state past the stream's start,
    # and the killed run had got there as the uninterrupted run did.
    at_kill = restore(killed_dir, killed_at)
    assert all(np.abs(x).max() > 0 for x in _leaves(at_kill.carry))
    for a, b in zip(_leaves(at_kill), _leaves(restore(whole_dir, killed_at)), strict=True):
        np.testing.assert_array_equal(a, b)
    # Bitwise, as test_train_resume's SIGKILL test: both processes run the same compiled step (the same
    # command, mesh and XLA flags), on the same batches (each a pure function of `next_batch`), from the
    # same state (the parameters, optimizer state, dropout key and carried state restore exactly).
    resumed, uninterrupted = restore(killed_dir, KILL_TOTAL), restore(whole_dir, KILL_TOTAL)
    for part in ("params", "carry"):
        for a, b in zip(_leaves(getattr(resumed, part)), _leaves(getattr(uninterrupted, part)), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=part)
    for a, b in zip(_leaves(resumed), _leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)  # the optimizer state and the step too


def test_carried_evaluation_counts_the_per_sequence_targets(runs):
    config = _config(runs["data_dir"])
    workdir = str(runs["root"] / "whole")
    carried = evaluate(config, workdir, split="test", step="latest", carried_state=True)
    plain = evaluate(config, workdir, split="test", step="latest")
    assert carried["step"] == plain["step"] == TOTAL
    assert carried["metrics"]["tokens"] == plain["metrics"]["tokens"]  # the same targets
    assert carried["per_lane"]["tokens"].shape == (8,)
    # Same model, same targets; the carried state only adds context (a 6-step model barely uses it).
    assert carried["metrics"]["bits_per_byte"] == pytest.approx(plain["metrics"]["bits_per_byte"], rel=0.05)
    with pytest.raises(ValueError, match="per_example"):
        evaluate(config, workdir, split="test", carried_state=True, per_example=True)


def test_evaluation_by_document_carried_and_reset_score_the_same_targets(runs):
    config = _config(runs["data_dir"])
    workdir = str(runs["root"] / "whole")
    plain = evaluate(config, workdir, split="test", step="latest")
    carried = evaluate(config, workdir, split="test", step="latest", carried_state=True, by_document=True)
    reset = evaluate(config, workdir, split="test", step="latest", by_document=True)
    assert carried["metrics"]["tokens"] == reset["metrics"]["tokens"] == plain["metrics"]["tokens"]
    np.testing.assert_array_equal(carried["per_document"]["tokens"], reset["per_document"]["tokens"])
    documents_in_split = int(setup(config)["sources"]["test"].token_stream().starts.sum())
    assert len(carried["per_document"]["nll"]) == documents_in_split  # one entry per document
    assert carried["metrics"]["bits_per_byte"] != reset["metrics"]["bits_per_byte"]
    with pytest.raises(ValueError, match="per_example"):
        evaluate(config, workdir, split="test", by_document=True, examples=4)


def test_evaluation_by_position_in_both_modes(runs):
    config = _config(runs["data_dir"])
    workdir = str(runs["root"] / "whole")
    edges = (0, 16, 64, 256)
    results = {
        carried: evaluate(
            config,
            workdir,
            split="test",
            step="latest",
            carried_state=carried,
            by_document=True,
            position_buckets=edges,
        )
        for carried in (True, False)
    }
    stream = setup(config)["sources"]["test"].token_stream()
    for result in results.values():
        documents = result["per_document"]
        assert result["position_buckets"] == list(edges)
        assert documents["bucket_nll"].shape == (int(stream.starts.sum()), len(edges))
        np.testing.assert_allclose(documents["bucket_nll"].sum(-1), documents["nll"], rtol=1e-12)
        np.testing.assert_array_equal(documents["bucket_tokens"].sum(-1), documents["tokens"])
        np.testing.assert_array_equal(documents["bucket_bytes"], documents["bucket_tokens"])  # byte-level
        assert (documents["bucket_tokens"][:, -1] > 0).any()  # some document reaches 256 bytes
        assert result["metrics"]["tokens"] == stream.counted.sum()
    carried, reset = (results[k]["per_document"] for k in (True, False))
    np.testing.assert_array_equal(carried["bucket_tokens"], reset["bucket_tokens"])
    # The first segment (32 tokens) of every document is scored alike; the carried state changes the rest.
    np.testing.assert_allclose(carried["bucket_nll"][:, 0], reset["bucket_nll"][:, 0], rtol=1e-5)
    assert not np.allclose(carried["bucket_nll"][:, 2:], reset["bucket_nll"][:, 2:])
    with pytest.raises(ValueError, match="by_document=True"):
        evaluate(config, workdir, split="test", position_buckets=edges)
    with pytest.raises(ValueError, match="strictly increase"):
        evaluate(config, workdir, split="test", by_document=True, position_buckets=(0, 64, 16))


def test_repeated_evaluations_reuse_their_programs_and_score_as_fresh_ones(runs, monkeypatch):
    """A driver scores the seeds of a model one after another, in each mode: an evaluation that would
    build the same program as an earlier one in the process uses it (`seqjax.train.programs`), another
    mode builds its own, and a reused program scores exactly what a fresh one does."""
    from seqjax.train import programs, trainer

    config = _config(runs["data_dir"])
    workdir = str(runs["root"] / "whole")
    built: list[str] = []
    for module, name in ((segments, "make_stream_eval_fn"), (trainer, "make_eval_fn")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name, **k: built.append(_n) or _r(*a, **k))
    programs.drop_kept_programs()
    edges = (0, 16, 64)

    def by_position(carried: bool) -> dict:
        return evaluate(
            config, workdir, split="test", by_document=True, carried_state=carried, position_buckets=edges
        )

    first, again = by_position(False), by_position(False)
    by_position(True)  # the other mode: a program of its own
    plain = [evaluate(config, workdir, split="test", step="latest") for _ in range(2)]
    assert built == ["make_stream_eval_fn", "make_stream_eval_fn", "make_eval_fn"]
    assert plain[0]["metrics"] == plain[1]["metrics"]

    programs.drop_kept_programs()
    fresh = by_position(False)
    assert built[-1] == "make_stream_eval_fn"
    for result in (first, again):
        assert result["metrics"] == fresh["metrics"]
        for name, values in fresh["per_document"].items():
            np.testing.assert_array_equal(result["per_document"][name], values, err_msg=name)


def test_stream_evaluation_equals_each_lane_in_one_pass():
    """`evaluate_stream` over padded segments == each lane's whole sequence scored at once."""
    model, rows, length = _step_model(), 4, 8
    stream = _positions_stream()
    stream = stream._replace(tokens=np.asarray(tokens(7, (1, N)))[0])
    variables = fast_variables(model, jnp.zeros((rows, length), jnp.int32))
    metrics, lanes = carried_evaluation(model, variables, rows, stream_eval_batches(stream, rows, length))
    # Each lane as one right-padded row of ceil((N - 1) / rows) inputs, scored in one pass.
    lane = -(-(N - 1) // rows)
    whole = {k: np.zeros((rows, lane), t) for k, t in (("inputs", int), ("targets", int), ("resets", bool))}
    mask = np.zeros((rows, lane), bool)
    for r in range(rows):
        start, stop = r * lane, min((r + 1) * lane, N - 1)
        whole["inputs"][r, : stop - start] = stream.tokens[start:stop]
        whole["targets"][r, : stop - start] = stream.tokens[start + 1 : stop + 1]
        whole["resets"][r, : stop - start] = stream.starts[start:stop]
        whole["resets"][r, 0] = True
        mask[r, : stop - start] = True
    logits = jax.jit(model.apply)(variables, whole["inputs"], resets=whole["resets"], mask=mask)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, whole["targets"])
    np.testing.assert_allclose(lanes["nll"], np.where(mask, nll, 0).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(lanes["tokens"], mask.sum(-1))
    assert metrics["tokens"] == N - 1


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------
def _recurrent_documents(preset: str):
    config = documents.get_config(f"{preset},length=32")
    config.segment_recurrence = True
    return config


def test_softmax_attention_is_refused_naming_the_layer_and_cell(tmp_path):
    config = _recurrent_documents("attention")
    with pytest.raises(ConfigError, match=r"layer 0 \(blocks_0, mixer 'attention'\) uses cell 'attention'"):
        segments.check_segment_recurrence(resolve(config))
    with pytest.raises(ConfigError, match=r"for softmax attention across segments use xl_attention"):
        train(config, str(tmp_path / "run"))  # before any data or compile work
    hybrid = _recurrent_documents("lstm")
    hybrid.model.pattern = ("lstm", "attention")
    hybrid.model.mixers = {"lstm": {"cell": "lstm"}, "attention": {"cell": "attention", "max_length": 64}}
    with pytest.raises(ConfigError, match=r"layer 1 .* KV cache of max_length=64 slots"):
        segments.check_segment_recurrence(resolve(hybrid))
    encoder = _recurrent_documents("lstm")
    encoder.model.mixers = {"lstm": {"cell": "lstm", "bidirectional": True}}
    with pytest.raises(ConfigError, match="cannot carry a state from one segment to the next"):
        segments.check_segment_recurrence(resolve(encoder))


def test_bounded_attention_is_allowed_and_recurrence_is_off_by_default():
    segments.check_segment_recurrence(resolve(_recurrent_documents("swa")))
    segments.check_segment_recurrence(resolve(_recurrent_documents("xl_attention")))
    segments.check_segment_recurrence(resolve(_recurrent_documents("mamba")))
    assert resolve(documents.get_config("attention")).segment_recurrence is False


def test_xl_attention_preset_trains_with_segment_recurrence(tmp_path):
    """A short run of the xl_attention preset: its memory (the segment length) is carried across
    batches, checkpointed with the parameters, and read by the carried evaluation."""
    config = _recurrent_documents("xl_attention")
    assert config.model.mixers.xl_attention.memory_length == 32  # the training segment length
    config.total_steps, config.batch_size, config.eval_batch_size = 2, 8, 8
    config.model.d_model, config.model.num_layers = 8, 1
    config.log_every, config.eval_every, config.tensorboard = 1, 0, False
    config.checkpoint.every, config.checkpoint.async_save = 2, False
    config.optimizer.warmup_steps = 1
    config.data_dir = str(tmp_path / "data")
    result = train(config, str(tmp_path / "run"))
    assert result["step"] == 2
    carry = result["state"].carry[0]
    assert isinstance(carry, cells.XLAttentionState) and carry.k.shape[:2] == (8, 32)
    assert (np.asarray(carry.length) > 0).all() and np.abs(np.asarray(carry.k)).max() > 0
    carried = evaluate(config, str(tmp_path / "run"), split="test", step="latest", carried_state=True)
    assert np.isfinite(carried["metrics"]["bits_per_byte"])


def test_other_tasks_and_data_are_refused():
    classification = genomic.get_config("lstm,task=species,length=512")
    classification.segment_recurrence = True
    with pytest.raises(ConfigError, match="task 'classification' scores each sequence on its own"):
        segments.check_segment_recurrence(resolve(classification))
    stream_free = synthetic.get_config("lstm,length=24")
    stream_free.segment_recurrence = True
    with pytest.raises(ConfigError, match=r"data\.kind='synthetic'"):
        segments.check_segment_recurrence(resolve(stream_free))
    subset = _recurrent_documents("lstm")
    subset.train_examples = 10
    with pytest.raises(ConfigError, match="train_examples"):
        segments.check_segment_recurrence(resolve(subset))


# --------------------------------------------------------------------------------------------------
# Helpers shared with tests/test_series_stream.py.
# --------------------------------------------------------------------------------------------------
def carried_evaluation(model, variables, rows: int, batches, task: str = "lm"):
    """`segments.evaluate_stream` of `model` over `batches` (each key's rows split over a 2-device data
    mesh, the parameters replicated), from the initial state: (metrics, sums per lane)."""
    mesh = mesh_lib.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rules = mesh_lib.rules_from_config(LOGICAL_RULES, mesh)
    batches = list(batches)
    params = variables["params"]
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    carry_sh = segments.model_carry_shardings(model, rows, mesh, rules)
    params_sh = jax.tree.map(lambda _: replicated, params)
    batch_sh = dict.fromkeys(batches[0], by_row)
    eval_fn = segments.make_stream_eval_fn(model, params_sh, carry_sh, batch_sh, task)
    return segments.evaluate_stream(
        eval_fn,
        params,
        segments.initial_carry(model, rows, carry_sh),
        batches,
        lambda batch: {k: jnp.asarray(v) for k, v in batch.items()},
    )
