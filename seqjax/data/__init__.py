"""Data: synthetic memory probes (real-task TFDS builders follow)."""

from seqjax.data.synthetic import SyntheticTask

__all__ = ["SyntheticTask"]
