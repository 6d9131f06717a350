"""Recurrence engines. Pure functions over arrays; cells choose among them."""

from seqjax.scan.attention import (
    Visibility,
    attention,
    attention_reference,
    choose_attention_method,
    sequence_parallel_attention,
)
from seqjax.scan.diagonal import METHODS, choose_method, linear_recurrence
from seqjax.scan.lstm import lstm_scan
from seqjax.scan.matrix_recurrence import (
    linear_attention,
    linear_attention_chunked,
    linear_attention_fused,
    linear_attention_recurrent,
    normalized_linear_attention,
)
from seqjax.scan.selective import selective_scan
from seqjax.scan.sequence_parallel import (
    sequence_halo,
    sequence_parallel_delta_rule,
    sequence_parallel_generalized_delta_rule,
    sequence_parallel_linear_attention,
    sequence_parallel_linear_recurrence,
    sequence_parallel_mlstm,
    sequence_parallel_selective_scan,
    sequence_shards,
)
from seqjax.scan.sequential import reverse_resets, scan_recurrence

__all__ = [
    "METHODS",
    "Visibility",
    "attention",
    "attention_reference",
    "choose_attention_method",
    "choose_method",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_fused",
    "linear_attention_recurrent",
    "linear_recurrence",
    "lstm_scan",
    "normalized_linear_attention",
    "reverse_resets",
    "scan_recurrence",
    "selective_scan",
    "sequence_halo",
    "sequence_parallel_attention",
    "sequence_parallel_delta_rule",
    "sequence_parallel_generalized_delta_rule",
    "sequence_parallel_linear_attention",
    "sequence_parallel_linear_recurrence",
    "sequence_parallel_mlstm",
    "sequence_parallel_selective_scan",
    "sequence_shards",
]
