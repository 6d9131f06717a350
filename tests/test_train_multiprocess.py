"""A real two-process run (2 local processes x 2 CPU devices, gloo collectives) trains the same
trajectory as one process with 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "train.py"),
        "--config=" + os.path.join(ROOT, "configs", "synthetic.py") + ":lstm,length=24",
        f"--workdir={workdir}",
        f"--config.total_steps={STEPS}",
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


def test_two_processes_match_one_process(tmp_path):
    single = str(tmp_path / "single")
    out = subprocess.run(_command(single), env=_env(4), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]

    multi = str(tmp_path / "multi")
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _command(multi, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"),
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    assert "done: step 12" in outputs[0] and "done:" not in outputs[1]  # only process 0 reports

    expected, got = _losses(single), _losses(multi)
    assert len(got) == STEPS
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert sorted(int(d) for d in os.listdir(os.path.join(multi, "checkpoints")) if d.isdigit()) == [6, 12]
