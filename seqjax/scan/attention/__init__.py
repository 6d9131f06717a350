"""Exact softmax attention engines, one file per concern:

- `visibility`: `Visibility`, the one value that says which key each query sees (causal, window,
  segments, key padding, positions, global tokens).
- `reference`: `attention_reference`, the materialised [Lq, Lk] softmax the engines are tested against,
  and `attention_weights`, its weights (for analysis: the engines do not return them).
- `blockwise`: the blockwise form with an online softmax, a custom VJP and block skipping (O(L·d) memory).
- `cudnn`: the mapping onto `jax.nn.dot_product_attention` for the calls cuDNN's fused kernel computes.
- `heuristics`: block sizes and the method "auto" runs, chosen from measurements
  (benchmarks/attention_heuristics_cpu.md).
- `dispatch`: `attention`, which validates a call (`inputs`) and runs the method it names.
- `decode`: `decode_attention`, one query per row against a KV cache (the cells' `step`).
- `sequence_parallel`: `sequence_parallel_attention`, the time axis split over a mesh axis (ring,
  all-gather, or a halo for sliding windows).

A query that sees no key returns zeros (and zero gradients), never NaN.

Example:
  >>> import jax.numpy as jnp
  >>> q = k = v = jnp.ones((2, 16, 4, 8))  # [batch, L, heads, head_dim]
  >>> attention(q, k, v, Visibility(causal=True, window=4)).shape
  (2, 16, 4, 8)
"""

from seqjax.scan.attention.decode import decode_attention
from seqjax.scan.attention.dispatch import METHODS, attention
from seqjax.scan.attention.heuristics import (
    BLOCK_ELEMENTS,
    DEFAULT_BLOCK,
    MIN_BLOCK,
    NAIVE_MAX_PAIRS,
    NAIVE_MAX_QUERIES,
    choose_attention_method,
    choose_blocks,
)
from seqjax.scan.attention.reference import attention_reference, attention_weights
from seqjax.scan.attention.sequence_parallel import (
    SEQUENCE_PARALLEL_STRATEGIES,
    KVPrefix,
    sequence_parallel_attention,
)
from seqjax.scan.attention.visibility import Visibility

__all__ = [
    "BLOCK_ELEMENTS",
    "DEFAULT_BLOCK",
    "METHODS",
    "MIN_BLOCK",
    "NAIVE_MAX_PAIRS",
    "NAIVE_MAX_QUERIES",
    "SEQUENCE_PARALLEL_STRATEGIES",
    "KVPrefix",
    "Visibility",
    "attention",
    "attention_reference",
    "attention_weights",
    "choose_attention_method",
    "choose_blocks",
    "decode_attention",
    "sequence_parallel_attention",
]
