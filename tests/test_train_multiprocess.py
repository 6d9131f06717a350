"""Real two-process runs (2 local processes x 2 CPU devices, gloo collectives): they train the same
trajectory as one process with 4 devices; SIGTERM to one process (or to both, 0.5 s apart) saves one step
on both and exits 0; a SIGKILLed process makes its peer abort within --heartbeat_timeout_seconds; a
genomic run on a fresh data directory prepares the data once and trains."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

# Whole training runs (subprocesses or real tasks): `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir: str, *extra: str, steps: int = STEPS) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config=" + os.path.join(ROOT, "configs", "synthetic.py") + ":lstm,length=24",
        f"--workdir={workdir}",
        f"--config.total_steps={steps}",
        "--config.batch_size=8",
        "--config.model.d_model=16",
        "--config.log_every=1",
        "--config.eval_every=0",
        "--config.checkpoint.every=6",
        "--config.optimizer.warmup_steps=2",
        *extra,
    ]


def _env(devices: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}",
    }


def _losses(workdir: str) -> np.ndarray:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return np.asarray([r["loss"] for r in records if r["split"] == "train"])


def _launch(command: list[str], devices: int = 2) -> list[subprocess.Popen]:
    """Both processes of a two-process run of `command` (a scripts/train.py command line), `devices` CPU
    devices each."""
    address = f"127.0.0.1:{_free_port()}"
    return [
        subprocess.Popen(
            [*command, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
            env=_env(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def _steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _wait_for_checkpoint(workdir: str, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    """Waits until both processes train (a checkpoint is on disk); fails with their output otherwise."""
    deadline = time.time() + timeout
    while not _steps(workdir):
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            outputs = [p.communicate()[0] for p in procs]
            pytest.fail(
                "the run did not reach its first checkpoint:\n" + "\n---\n".join(o[-3000:] for o in outputs)
            )
        time.sleep(0.05)


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Both processes' output once they exit; kills them and fails if they run past `timeout`."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outputs = [p.communicate()[0] for p in procs]
        pytest.fail(f"still running after {timeout} s:\n" + "\n---\n".join(o[-3000:] for o in outputs))


def test_two_processes_match_one_process(tmp_path):
    single = str(tmp_path / "single")
    out = subprocess.run(_command(single), env=_env(4), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    multi = str(tmp_path / "multi")
    procs = _launch(_command(multi))
    outputs = _finish(procs, timeout=300)
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    assert "done: step 12" in outputs[0] and "done:" not in outputs[1]  # only process 0 reports

    expected, got = _losses(single), _losses(multi)
    assert len(got) == STEPS
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert sorted(int(d) for d in os.listdir(os.path.join(multi, "checkpoints")) if d.isdigit()) == [6, 12]


@pytest.mark.parametrize("signalled", ["one", "both"])
def test_sigterm_stops_both_processes_at_one_step(tmp_path, signalled):
    workdir = str(tmp_path)
    procs = _launch(_command(workdir, "--config.checkpoint.every=2", steps=100_000))
    _wait_for_checkpoint(workdir, procs)
    procs[1].send_signal(signal.SIGTERM)
    if signalled == "both":
        time.sleep(0.5)
        procs[0].send_signal(signal.SIGTERM)
    outputs = _finish(procs, timeout=60)
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    assert "SIGTERM: saved step" in outputs[0], outputs[0][-3000:]
    saved = int(outputs[0].split("SIGTERM: saved step")[1].split(";")[0])
    assert max(_steps(workdir)) == saved


def test_sigkill_makes_the_peer_abort_within_the_heartbeat_timeout(tmp_path):
    workdir = str(tmp_path)
    heartbeat = 5
    procs = _launch(
        _command(
            workdir, "--config.checkpoint.every=2", f"--heartbeat_timeout_seconds={heartbeat}", steps=100_000
        )
    )
    _wait_for_checkpoint(workdir, procs)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    text = _finish(procs[:1], timeout=heartbeat + 40)[0]
    procs[1].wait()
    elapsed = time.time() - killed
    assert procs[0].returncode != 0, text[-3000:]
    assert elapsed < heartbeat + 40, elapsed


def test_genomic_run_on_a_fresh_data_dir_prepares_once(tmp_path):
    """Both processes build their sources from one fresh data directory: one prepares under the
    preparation lock, the other waits and reads the finished data set; then both train."""
    data_dir = str(tmp_path / "data")
    command = [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config=" + os.path.join(ROOT, "configs", "genomic.py") + ":lstm,task=species,length=256",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data_dir={data_dir}",
        "--config.total_steps=2",
        "--config.optimizer.warmup_steps=0",
        "--config.batch_size=4",
        "--config.eval_every=0",
        "--config.model.d_model=8",
        "--config.model.num_layers=1",
        "--config.tensorboard=False",
    ]
    procs = _launch(command)
    outputs = _finish(procs, timeout=240)
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    assert "done: step 2" in outputs[0]
    # The preparation's own line (TFDS's output is silenced for embedded data): prepared once.
    assert sum("from the sample embedded in the repository" in text for text in outputs) == 1
