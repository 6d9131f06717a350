"""Recurrence engines. Pure functions over arrays; cells choose among them."""

from seqjax.scan.linear import METHODS, choose_method, linear_recurrence
from seqjax.scan.lstm import lstm_scan
from seqjax.scan.sequential import reverse_resets, scan_recurrence

__all__ = ["METHODS", "choose_method", "linear_recurrence", "lstm_scan", "reverse_resets", "scan_recurrence"]
