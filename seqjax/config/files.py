"""Loading a task config file (`configs/x.py`) by its path, as `--config=configs/x.py:arg` does.

config = load_config_file("configs/genomic.py", "mamba,task=promoter")
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

__all__ = ["load_config_file"]


def load_config_file(path: str | os.PathLike[str], arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (relative paths from the current directory)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_config_file: no config file {path!r}; give a configs/*.py path.")
    name = "seqjax_config_file_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses and pickling look the module up
    spec.loader.exec_module(module)
    return module.get_config(arg)
