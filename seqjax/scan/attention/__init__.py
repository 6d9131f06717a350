"""Exact softmax attention engines: a blockwise form with an online softmax (O(L·d) memory) and the
materialised reference.

Which key j a query i sees is decided by data, not by index, so the same engine serves causal and
bidirectional attention, packed sequences (segment ids), padding (kv_mask), a KV cache placed before
the new tokens, sliding windows and global tokens:

    visible(i, j) = kv_mask[j]
                    and q_segment_ids[i] == kv_segment_ids[j]
                    and (kv_positions[j] <= q_positions[i]                if causal)
                    and (q_positions[i] - kv_positions[j] < window        if causal and window
                         |q_positions[i] - kv_positions[j]| < window      if not causal and window
                         or kv_global[j] or q_global[i])

A query that sees no key returns zeros (and zero gradients), never NaN.

The blockwise form (`method="blockwise"`, FlashAttention-2's algorithm):

- Forward. Queries in blocks of `block_q`; for each query block a loop over key blocks of `block_k`
  keeps the running row maximum m, the running sum l = Σ exp(s − m) and the unnormalised output
  o = Σ exp(s − m) v, rescaling both by exp(m_old − m_new) when the maximum grows. Only [block_q,
  block_k] logits exist at a time. It saves q, k, v, the output and logsumexp = m + log l per query.
- Backward (a custom VJP). For each key block, a loop over query blocks recomputes the logits and
  P = exp(s − logsumexp), then dV += Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − D) with D = rowsum(dO ∘ O),
  dQ += dS K (into a full-size dq buffer, in place) and dK += dSᵀ Q. Memory is O(L·d). Only reverse
  mode is defined (no `jax.jvp`); gradients reach q, k, v and the ALiBi slopes.
- Block skipping. Each block is summarised per batch row (min/max position, min/max segment id, any
  valid key, any global key/query). A (query block, key block) pair is computed only when the summaries
  say it may hold a visible pair; this test is conservative (it never drops a visible pair), and tight
  when positions are non-decreasing along time. Each query block loops over exactly its listed key
  blocks (and each key block over its query blocks in the backward pass), so a skipped pair costs
  nothing: causal attention does about half the work of bidirectional attention and a sliding window
  of w costs O(L·w).
- GQA/MQA: the Hq query heads are grouped as [Hkv, Hq / Hkv] against the Hkv key/value heads inside
  the matmuls; k and v are never repeated.
- Dtypes: matmul operands stay in the input dtype (bf16/f16 allowed) and accumulate in float32
  (`preferred_element_type`); the softmax statistics are float32. float64 inputs compute in float64.
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
from seqjax.scan.attention.reference import attention_reference
from seqjax.scan.attention.visibility import visibility

__all__ = [
    "BLOCK_ELEMENTS",
    "DEFAULT_BLOCK",
    "METHODS",
    "MIN_BLOCK",
    "NAIVE_MAX_PAIRS",
    "NAIVE_MAX_QUERIES",
    "attention",
    "attention_reference",
    "choose_attention_method",
    "choose_blocks",
    "decode_attention",
    "visibility",
]
