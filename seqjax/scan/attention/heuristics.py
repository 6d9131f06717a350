"""Choices from measurement: the blockwise form's block sizes and the method "auto" runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "BLOCK_ELEMENTS",
    "DEFAULT_BLOCK",
    "MIN_BLOCK",
    "NAIVE_MAX_PAIRS",
    "NAIVE_MAX_QUERIES",
    "choose_attention_method",
    "choose_blocks",
]

# Chosen from measurements on the 2-core CPU this project benchmarks on (f32, forward + backward); the
# numbers, and how to re-measure them, are in benchmarks/attention_heuristics_cpu.md.
DEFAULT_BLOCK = 256  # the largest default block
MIN_BLOCK = 64  # the smallest default block
BLOCK_ELEMENTS = 2**20  # default blocks keep batch · heads · block_q · block_k at most this
NAIVE_MAX_QUERIES = 32  # "auto" is "naive" for at most this many queries ...
NAIVE_MAX_PAIRS = 2**20  # ... and at most this many (query, key) pairs


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def choose_blocks(
    lq: int, lk: int, block_q: int | None = None, block_k: int | None = None, *, rows: int = 1
) -> tuple[int, int]:
    """The blockwise form's (block_q, block_k): the given sizes, else the largest power of two b ≤
    DEFAULT_BLOCK (and ≥ MIN_BLOCK) whose [rows, b, b] logits block holds at most BLOCK_ELEMENTS entries,
    capped at the length rounded up to a multiple of 8 (a longer block would only compute padding).
    `rows` = batch size × query heads.

    Why (sweeps of square blocks on the project's CPU, benchmarks/attention_heuristics_cpu.md): the best
    block keeps rows·b² near 2^19 to 2^20 (a 2–4 MiB float32 logits block that stays in cache between
    the matmul that makes it and the one that uses it); smaller blocks pay more loop iterations and
    rescaling passes. Memory is O(L·d + rows·block_q·block_k) either way.

    Example:
      >>> choose_blocks(100_000, 100_000, rows=64)
      (128, 128)
    """

    def default(length: int) -> int:
        b = DEFAULT_BLOCK
        while b > MIN_BLOCK and rows * b * b > BLOCK_ELEMENTS:
            b //= 2
        return min(b, length if length < 8 else _round_up(length, 8))

    bq = block_q if block_q is not None else default(max(lq, 1))
    bk = block_k if block_k is not None else default(max(lk, 1))
    return bq, bk


def choose_attention_method(
    lq: int,
    lk: int,
    *,
    dtype=jnp.float32,
    head_dim: int = 64,
    cudnn_supported: bool = False,
    platform: str | None = None,
) -> str:
    """The method `auto` uses.

    - GPU: "cudnn" when the call is one cuDNN's fused kernel computes (no positions, segment ids, masks,
      global tokens or ALiBi; Lq == Lk when causal or windowed; bf16/f16; head_dim a multiple of 8, at
      most 128).
    - Otherwise "naive" for few queries: Lq ≤ NAIVE_MAX_QUERIES and Lq·Lk ≤ NAIVE_MAX_PAIRS, so its
      [Lq, Lk] matrices are no larger than k and v themselves (decoding one token against a KV cache,
      short chunks); else "blockwise".

    Why (naive : blockwise times on the project's CPU, benchmarks/attention_heuristics_cpu.md): the
    blockwise form wins from about 64 queries on, whatever Lk (it skips the causal half, and its memory
    traffic is O(L·d) instead of O(L²)); below that its loop and the padding of the query block cost
    more than the materialised matrices. The GPU rule beyond cuDNN has not been measured yet.

    Example:
      >>> choose_attention_method(1, 4096, platform="cpu")  # decoding one token against a KV cache
      'naive'
    """
    platform = platform or jax.default_backend()
    if (
        platform == "gpu"
        and cudnn_supported
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
    ):
        return "cudnn"
    if lq <= NAIVE_MAX_QUERIES and lq * lk <= NAIVE_MAX_PAIRS:
        return "naive"
    return "blockwise"
