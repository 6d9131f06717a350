"""Which machine a measurement ran on, in words a benchmark or experiment report prints."""

from __future__ import annotations

import os
import platform as pyplatform
from pathlib import Path

__all__ = ["cpu_model", "describe_machine"]


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The processor's model name (`/proc/cpuinfo` on Linux; Python's `platform` elsewhere), so that
    tables from two machines of one architecture (an Intel Xeon and an AMD EPYC are both `x86_64`) are
    not read as one.

        >>> isinstance(cpu_model(), str) and cpu_model() != ""
        True
    """
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:  # not Linux, or no access
        pass
    return pyplatform.processor() or pyplatform.machine() or "unknown CPU"


def describe_machine(platform: str | None = None) -> str:
    """The machine JAX runs on: "2-core CPU (AMD EPYC)" on the CPU platform, the accelerators' device
    kinds and count otherwise ("1 x NVIDIA H200").

        >>> describe_machine("cpu").split("-core CPU (")[0] == str(os.cpu_count())
        True
    """
    import jax  # (imported here: the CPU description needs no backend)

    platform = platform or jax.default_backend()
    if platform == "cpu":
        return f"{os.cpu_count()}-core CPU ({cpu_model()})"
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"{len(devices)} x {', '.join(kinds)}"
