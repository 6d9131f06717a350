"""seqjax.online's loop (issue 20): the streams, prequential semantics, exact resume after SIGKILL, bad
input. Small models and streams: the whole file runs in well under a minute on 2 cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.online import get_config
from seqjax.online import loop as online_loop
from seqjax.online.streams import (
    ByteStream,
    Narma10,
    OneStepSeries,
    StreamDiverged,
    household_power,
    narma10_reference,
)
from tests.train_subprocess import ROOT, refusal_line, start

# -- streams ----------------------------------------------------------------------------------------


def test_narma10_is_the_textbook_recurrence_and_position_addressed():
    stream = Narma10(seed=3)
    whole = stream.chunk(0, 5000)
    u = np.concatenate([np.random.default_rng([3, b]).uniform(0.0, 0.5, 4096) for b in range(2)])[:5000]
    np.testing.assert_array_equal(whole.x[:, 0], u.astype(np.float32))  # u_t ~ U[0, 0.5], seeded blocks
    reference = narma10_reference(u)  # the plain loop: y_{t+1} from y_t..y_{t-9}, u_t, u_{t-9}
    np.testing.assert_array_equal(whole.y[:, 0], reference.astype(np.float32))
    # any position, read cold (a fresh stream) or after a jump back, gives the same tokens
    for fresh in (Narma10(seed=3), stream):
        part = fresh.chunk(4321, 500)
        np.testing.assert_array_equal(part.x, whole.x[4321:4821])
        np.testing.assert_array_equal(part.y, whole.y[4321:4821])
    assert not np.array_equal(Narma10(seed=4).chunk(0, 10).x, whole.x[:10])


def test_narma10_divergence_is_an_error_naming_the_position():
    diverging = next(s for s in range(20) if _diverges(s))
    with pytest.raises(StreamDiverged, match=rf"seed={diverging}.*diverges at position \d+"):
        Narma10(diverging).chunk(0, 100_000)


def _diverges(seed: int) -> bool:
    try:
        Narma10(seed).chunk(0, 100_000)
    except StreamDiverged:
        return True
    return False


def test_series_stream_normalises_with_the_warmup_only():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(50, 3)) * [1.0, 2.0, 3.0] + [0.0, 5.0, -1.0]
    stream = OneStepSeries(values, warmup=10)
    mean, std = values[:10].mean(0), values[:10].std(0)
    np.testing.assert_allclose(stream.mean, mean)
    np.testing.assert_allclose(stream.std, std)
    assert stream.length == 39
    chunk = stream.chunk(0, 39)
    np.testing.assert_allclose(chunk.x, (values[10:49] - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunk.y, (values[11:50] - mean) / std, rtol=1e-5, atol=1e-6)
    # no look-ahead: changing any row after the warm-up changes neither statistic nor earlier tokens
    later = values.copy()
    later[30:] += 1000.0
    changed = OneStepSeries(later, warmup=10)
    np.testing.assert_array_equal(changed.mean, stream.mean)
    np.testing.assert_array_equal(changed.chunk(0, 19).x, stream.chunk(0, 19).x)
    np.testing.assert_array_equal(changed.chunk(0, 19).y, stream.chunk(0, 19).y)
    with pytest.raises(ValueError, match="past the stream's end"):
        stream.chunk(30, 10)
    with pytest.raises(ValueError, match="NaN or Inf"):
        OneStepSeries(np.full((20, 1), np.nan), warmup=5)


def test_household_power_is_the_embedded_sample_one_step_ahead():
    stream = household_power(warmup=1440)
    assert (stream.input_size, stream.length) == (7, 100_000 - 1440 - 1)
    chunk = stream.chunk(0, 3)
    np.testing.assert_array_equal(chunk.x[1:], chunk.y[:2])  # the target is the next input


def test_byte_stream_resets_documents_and_pads_across_them():
    stream = ByteStream([b"abc", b"de"])
    chunk = stream.chunk(0, stream.length)
    assert stream.length == 4
    assert chunk.x.argmax(-1).tolist() == list(b"abcd") and chunk.y.argmax(-1).tolist() == list(b"bcde")
    assert chunk.reset.tolist() == [True, False, False, True]
    assert chunk.mask.tolist() == [True, True, False, True]  # c -> d crosses documents: padding


# -- the loop ---------------------------------------------------------------------------------------


def _config(arg: str = "narma10:lru_rtrl,hidden=4,state=4,readout=4", **top):
    c = get_config(arg)
    c.total_steps, c.chunk, c.checkpoint_every, c.measure_memory = 60, 20, 20, False
    for k, v in top.items():
        c[k] = v
    return c


def test_prequential_prediction_precedes_the_update_with_its_token():
    c = _config()
    loop = online_loop.OnlineLoop(c)
    state0 = loop.init_state()
    tokens = loop.stream.chunk(0, 30)
    _, scores, preds = loop.run_chunk(state0, *map(jnp.asarray, tokens))
    # by hand: the prediction of token t uses the parameters updated by tokens 0..t-1 only
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    params, opt_state, ls = state0["params"], opt.init(state0["params"]), state0["learner"]
    step = jax.jit(loop.learner.step)

    @jax.jit  # one program, not the optimizer's ops one by one for every token
    def update(grads, opt_state, params):
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for t in range(30):
        ls, pred, _, grads = step(params, ls, tokens.x[t], tokens.y[t])
        np.testing.assert_allclose(preds[t], pred, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores[t], np.mean((np.asarray(pred) - tokens.y[t]) ** 2), rtol=1e-5)
        params, opt_state = update(grads, opt_state, params)
    # changing the target of token 10 leaves predictions 0..10 alone and changes 11 on
    ys = tokens.y.copy()
    ys[10] += 1.0
    _, _, changed = loop.run_chunk(state0, tokens.x, ys, tokens.reset, tokens.mask)
    np.testing.assert_array_equal(changed[:11], preds[:11])
    assert not np.allclose(changed[11], preds[11])


def test_run_resumes_in_process_and_logs_every_token(tmp_path):
    c = _config()
    whole = online_loop.run(c, tmp_path / "whole", echo=None)
    first = online_loop.run(c, tmp_path / "split", echo=None, stop_at=40)
    assert first["position"] == 40
    second = online_loop.run(c, tmp_path / "split", echo=None)
    assert second["resumed_from"] == 40 and second["position"] == 60
    for a, b in zip(jax.tree.leaves(whole["state"]), jax.tree.leaves(second["state"]), strict=True):
        np.testing.assert_array_equal(a, b)
    scores = online_loop.read_prequential(tmp_path / "split")
    np.testing.assert_array_equal(scores, online_loop.read_prequential(tmp_path / "whole"))
    assert scores.shape == (60,) and whole["prequential"] == pytest.approx(float(scores.mean()))


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"learner.kind='rtrl'.*DiagonalRTRL: cells\[0\] is LSTM"):
        online_loop.OnlineLoop(_config("narma10:lstm_rtrl,hidden=4"))
    with pytest.raises(ValueError, match="method 'lstm_bptt'"):
        get_config("narma10:lstm_bptt")
    with pytest.raises(ValueError, match="unknown stream"):
        get_config("weather:lstm_snap")
    with pytest.raises(ValueError, match="multiple of chunk"):
        online_loop.run(_config(checkpoint_every=30), tmp_path / "a", echo=None)
    with pytest.raises(ValueError, match="exceeds the stream's"):
        online_loop.run(_config("power:lstm_snap,hidden=2", total_steps=10**6), tmp_path / "b", echo=None)
    # a learning rate that blows up: stopped with a message naming the token, nothing saved
    c = _config("narma10:lstm_tbptt2,hidden=4,readout=4,lr=1e30")
    c.optimizer.clip_norm = 0.0
    with pytest.raises(online_loop.NonFiniteLossError, match=r"token \d+: .*NaN/Inf"):
        online_loop.run(c, tmp_path / "nan", echo=None)
    assert not [d for d in os.listdir(tmp_path / "nan" / "checkpoints") if d.isdigit()]
    # a workdir another run holds is refused, naming the holder
    from seqjax.train.workdir import WorkdirLock, WorkdirLockedError

    held = WorkdirLock(str(tmp_path / "held"))
    os.makedirs(tmp_path / "held")
    held.acquire()
    try:
        with pytest.raises(WorkdirLockedError, match=rf"in use by another run \(pid {os.getpid()}"):
            online_loop.run(_config(total_steps=20), tmp_path / "held", echo=None)
    finally:
        held.release()
    assert not os.path.exists(tmp_path / "held" / "prequential.f32")
    # resuming with another config is refused
    online_loop.run(_config(total_steps=20), tmp_path / "c", echo=None)
    other = _config()
    other.optimizer.learning_rate = 0.5
    with pytest.raises(ValueError, match=r"another config.*learning_rate"):
        online_loop.run(other, tmp_path / "c", echo=None)


# -- SIGKILL then resume ----------------------------------------------------------------------------

KILL_ARG = "narma10:lstm_snap,hidden=4,readout=4"
KILL_TOTAL, KILL_CHUNK = 3000, 50


def _command(workdir) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "online.py"),
        f"--config={os.path.join(ROOT, 'configs', 'online.py')}:{KILL_ARG}",
        f"--workdir={workdir}",
        f"--config.total_steps={KILL_TOTAL}",
        f"--config.chunk={KILL_CHUNK}",
        f"--config.checkpoint_every={KILL_CHUNK}",
        "--config.measure_memory=False",
    ]


def _steps(workdir) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _wait_for_checkpoint(proc, workdir, position: int) -> None:
    deadline = time.time() + 180
    while not any(s >= position for s in _steps(workdir)):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"no checkpoint at {position} or later appeared"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_then_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """`scripts/online.py` stopped with SIGTERM (it saves and exits 0), rerun, killed with SIGKILL, and
    rerun with the same command ends with the parameters, optimizer state, traces and per-token scores
    of the same command run uninterrupted."""
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    whole = start(_command(whole_dir))
    proc = start(_command(killed_dir))
    _wait_for_checkpoint(proc, killed_dir, 4 * KILL_CHUNK)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stdout.read()[-3000:]
    termed_at = max(_steps(killed_dir))
    assert f"stopped by signal {int(signal.SIGTERM)} at position {termed_at} (saved)" in proc.stdout.read()
    assert termed_at < KILL_TOTAL, "the run finished before SIGTERM; the test proved nothing"
    assert online_loop.read_prequential(killed_dir).shape == (termed_at,)  # logs end at the save
    proc = start(_command(killed_dir))
    _wait_for_checkpoint(proc, killed_dir, termed_at + 4 * KILL_CHUNK)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_steps(killed_dir))
    assert killed_at < KILL_TOTAL, "the run finished before it could be killed; the test proved nothing"
    out = subprocess.run(
        _command(killed_dir),
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from position {killed_at}" in out.stdout
    assert whole.wait(timeout=240) == 0, whole.stdout.read()[-3000:]

    c = get_config(KILL_ARG)
    c.total_steps, c.chunk, c.checkpoint_every, c.measure_memory = KILL_TOTAL, KILL_CHUNK, KILL_CHUNK, False
    template = online_loop._to_real(online_loop.OnlineLoop(c).init_state())
    from seqjax.train.checkpoint import Checkpoints

    def restore(workdir):
        with Checkpoints(workdir / "checkpoints", async_save=False) as ckpt:
            restored = ckpt.restore(jax.eval_shape(lambda: template), step=KILL_TOTAL)
        assert restored.data_state["position"] == KILL_TOTAL
        return restored.state

    for a, b in zip(jax.tree.leaves(restore(killed_dir)), jax.tree.leaves(restore(whole_dir)), strict=True):
        np.testing.assert_array_equal(a, b)  # params, Adam moments and count, LSTM state, SnAp traces
    np.testing.assert_array_equal(
        online_loop.read_prequential(killed_dir), online_loop.read_prequential(whole_dir)
    )
    assert online_loop.read_prequential(killed_dir).shape == (KILL_TOTAL,)


def test_a_gelu_readout_keeps_diagonal_rtrl_exact():
    """`readout_hidden` acts after the state: exact RTRL still equals BPTT (float64, resets, padding)."""
    from seqjax import cells
    from seqjax.online import DiagonalRTRL, OnlineModel
    from seqjax.online.learner import accumulate, bptt_gradient
    from tests.test_online_rtrl import D_IN, D_OUT, F64, relative_error, stream

    with jax.enable_x64(True):
        model = OnlineModel(
            (cells.LRU(D_IN, 4, **F64),),
            D_IN,
            D_OUT,
            encoder=False,
            readout_hidden=5,
            param_dtype=jnp.float64,
        )
        params = model.init(jax.random.PRNGKey(0))
        assert params["readout"]["w_hidden"].shape == (D_IN, 5) and params["readout"]["w"].shape == (5, D_OUT)
        xs, ys, resets, mask = stream()
        # each in one compiled program (eager autodiff and scans compile op by op)
        _, want = jax.jit(lambda p: bptt_gradient(model, p, xs, ys, resets=resets, mask=mask))(params)
        got, _, _ = jax.jit(lambda p: accumulate(DiagonalRTRL(model), p, xs, ys, resets=resets, mask=mask))(
            params
        )
        assert relative_error(got, want) < 1e-10


def test_the_script_refuses_a_bad_config_in_one_line(tmp_path):
    """scripts/online.py: a config value the loop refuses is one line naming `config.<key>`, exit status 2,
    and no workdir (before: a traceback, and the workdir with its lock file left behind)."""
    workdir = tmp_path / "run"
    line = refusal_line(
        "scripts/online.py",
        "--config=configs/online.py:narma10:lru_rtrl",
        f"--workdir={workdir}",
        "--config.total_steps=-3",
    )
    assert line.startswith("scripts/online.py: config: total_steps (-3)"), line
    assert not workdir.exists()
    assert issubclass(online_loop.ConfigRefused, ValueError)  # (callers that catch ValueError still do)
