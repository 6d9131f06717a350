"""The optional dependencies of seqjax's subpackages, and the check that names the extra to install.

The core install (`pip install seqjax`) is jax and numpy: enough for `seqjax.cells` and `seqjax.scan`.
Each subpackage above them calls `require` first thing in its `__init__`, so a missing dependency is
one ImportError that says which module is missing and which extra brings it, instead of a traceback
from deep inside the first heavy import:

    >>> require("seqjax.example", "models", "json")  # present: nothing happens
    >>> require("seqjax.example", "models", "no_such_module")
    Traceback (most recent call last):
    ...
    ModuleNotFoundError: seqjax.example needs no_such_module, which is not installed: ...'seqjax[models]'...

The module tuples below are what each subpackage imports, directly or through the subpackages it
builds on; tests/test_install.py checks them against the extras of setup.cfg.
"""

from __future__ import annotations

import importlib.util

__all__ = [
    "BASELINES_MODULES",
    "DATA_MODULES",
    "EXPERIMENT_MODULES",
    "MODELS_MODULES",
    "TRAIN_MODULES",
    "missing_modules",
    "require",
]

#: seqjax.models (extra `models`): Flax linen and, on first use of NnxCellLayer, flax.nnx.
MODELS_MODULES: tuple[str, ...] = ("flax",)
#: seqjax.data (extra `data`): the TFDS builders, grain batches, pandas series, the BPE tokenizer, epath.
DATA_MODULES: tuple[str, ...] = ("tensorflow_datasets", "grain", "pandas", "tokenizers", "etils")
#: seqjax.train and seqjax.config (extra `train`): the trainer over the models and the data.
TRAIN_MODULES: tuple[str, ...] = (
    *MODELS_MODULES,
    *DATA_MODULES,
    "optax",
    "orbax.checkpoint",
    "ml_collections",
    "absl",
    "tensorboardX",
)
#: seqjax.baselines (extra `experiments`): the non-neural baselines over the data's splits.
BASELINES_MODULES: tuple[str, ...] = (*DATA_MODULES, "scipy", "sklearn", "threadpoolctl")
#: seqjax.experiment (extra `experiments`): the protocol runs the trainer and the baselines.
EXPERIMENT_MODULES: tuple[str, ...] = (*TRAIN_MODULES, "scipy", "sklearn")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        # ImportError: a parent package is missing (or an import hook refuses the name);
        # ValueError: the module is in sys.modules without a spec.
        return False


def missing_modules(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here, found without importing them (only the
    parent package of a dotted name is imported, e.g. the `orbax` namespace for `orbax.checkpoint`)."""
    return [module for module in modules if not _installed(module)]


def require(subpackage: str, extra: str, *modules: str) -> None:
    """Raises ModuleNotFoundError naming the missing modules of `modules` and `pip install
    'seqjax[<extra>]'` when any is missing; does nothing (and imports nothing heavy) otherwise.

    Called at the top of a subpackage's `__init__`, before its own imports, so a light install fails
    with the fix instead of a traceback from inside flax or tensorflow_datasets.
    """
    missing = missing_modules(*modules)
    if not missing:
        return
    names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    verb = "is" if len(missing) == 1 else "are"
    raise ModuleNotFoundError(
        f"{subpackage} needs {names}, which {verb} not installed: pip install 'seqjax[{extra}]' "
        f"(from a clone: pip install -e '.[{extra}]')",
        name=missing[0],
    )
