"""Recurrence engines. Pure functions over time-major arrays; cells choose among them."""

from seqjax.scan.lstm import lstm_scan
from seqjax.scan.sequential import reverse_resets, scan_recurrence

__all__ = ["lstm_scan", "reverse_resets", "scan_recurrence"]
