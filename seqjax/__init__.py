"""seqjax: a JAX framework for long-sequence modeling.

`seqjax.cells` and `seqjax.scan` need only jax and numpy and load with the package. The subpackages above
them load on first access (`seqjax.models`, `seqjax.train`, ...), so `import seqjax` stays light on the
core install, and an attribute whose extra is missing raises an ImportError naming it:

    >>> import seqjax
    >>> seqjax.cells.LSTM.__name__
    'LSTM'
    >>> "models" in dir(seqjax)
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from seqjax import cells, scan

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these on first use
    from seqjax import baselines as baselines
    from seqjax import config as config
    from seqjax import data as data
    from seqjax import experiment as experiment
    from seqjax import models as models
    from seqjax import train as train

__version__ = "0.1.0"

#: The subpackages that load on first attribute access; each needs an extra (setup.cfg, seqjax.common.extras).
LAZY_SUBPACKAGES: tuple[str, ...] = ("baselines", "config", "data", "experiment", "models", "train")

# The lazy subpackages stay out of __all__: `from seqjax import *` would otherwise import all of them,
# which is slow with every extra installed and an ImportError on the core install.
__all__ = ["__version__", "cells", "scan"]


def __getattr__(name: str) -> object:
    """Imports a subpackage on first access (PEP 562): `import seqjax; seqjax.models.LanguageModel`."""
    if name in LAZY_SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazy subpackages, loaded or not (tab completion finds them)."""
    return sorted({*globals(), *LAZY_SUBPACKAGES})
