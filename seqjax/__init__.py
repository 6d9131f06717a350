"""seqjax: a JAX framework for long-sequence modeling."""

from seqjax import cells, scan

__version__ = "0.1.0"

__all__ = ["__version__", "cells", "scan"]
