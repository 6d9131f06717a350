"""Exact softmax attention cells: `Attention` (full context, KV cache) and `SlidingWindowAttention`
(a local window plus global tokens, ring buffer).

Both project x [*, input_size] to q [*, H, d] and k, v [*, H_kv, d] (`w_q`, `w_k`, `w_v`, no biases;
H_kv = `num_kv_heads` divides H: grouped-query attention, multi-query for H_kv = 1), attend with the
engine in `seqjax.scan.attention` (`Attention.step`: its one-query form `decode_attention`), and
project the heads back with `w_o` [H, d, output_size].

Positions. A token's position is the number of valid (mask=True) tokens before it in its segment,
counting the tokens already in the state. Padding therefore moves no position, and a reset starts again
at 0. Rotary embeddings (`positional="rotary"`), ALiBi biases (`"alibi"`) and the Transformer's
sinusoidal embedding added to the input (`"sinusoidal"`) all read these positions, so `apply` equals a
loop of `step` with any padding and resets.

State. `step` carries the keys and values it has seen, already rotated: a KV cache of `max_length`
slots (`Attention`) or a ring buffer of the last `window` tokens plus the `num_global` global tokens
(`SlidingWindowAttention`). Its size does not depend on the sequence length. The cache is stored in the
state's dtype (`initial_state(dtype=...)`, float32 by default, which holds bfloat16 keys exactly);
`length` is an int32 count. A reset replaces the state by `initial_state`, an empty cache.

`apply` is the training form: one call of the engine over the whole sequence with segment ids (from
resets), a key mask (from padding) and the positions above. Given a state, the cached keys are placed
before the new ones, so queries also see them; without one, nothing is cached and the cost is that of
plain attention.

Sequence parallelism. With `sequence_axis` set (a mesh axis name, inside `jax.set_mesh`), `apply`
splits the time axis over that axis: the positions and segment ids are computed on the whole sequence
first (global positions, so rotary, ALiBi and sinusoidal encodings are those of one device), the
projections are per token, and the engine is `sequence_parallel_attention` with `sequence_strategy`
("auto": the ring for `Attention`, a halo of `window` − 1 tokens for `SlidingWindowAttention` without
global tokens, the ring with them; docs/scan.md). Given a state, its cache (a KV cache, a window's ring
buffer, Transformer-XL's memory) is not split: it goes to the engine as a replicated `KVPrefix` that
every shard's queries attend, and the new state is taken from the sharded keys and values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.base import Cell, DType, Params, accumulation_dtype, check_sequence_axis, projection
from seqjax.cells.kv_cache import (
    clear_rows,
    ring_positions,
    ring_write_index,
    scatter_rows,
    segments_and_positions,
)
from seqjax.cells.positional import POSITIONALS, alibi_slopes, rotary_embedding, sinusoidal_embedding
from seqjax.cells.registry import register
from seqjax.common.checks import check_positive_int
from seqjax.scan.attention import (
    METHODS,
    SEQUENCE_PARALLEL_STRATEGIES,
    KVPrefix,
    Visibility,
    attention,
    decode_attention,
    sequence_parallel_attention,
)
from seqjax.scan.sequence_parallel import sequence_shards

__all__ = [
    "POSITIONALS",
    "Attention",
    "AttentionState",
    "SlidingWindowAttention",
    "SlidingWindowState",
    "alibi_slopes",
    "rotary_embedding",
    "sinusoidal_embedding",
]


class AttentionState(NamedTuple):
    k: jax.Array  # [*batch, max_length, kv_heads, head_dim]: slot p holds the (rotated) key at position p
    v: jax.Array  # [*batch, max_length, kv_heads, head_dim]
    length: jax.Array  # [*batch] int32: valid tokens in the cache = the next token's position


class SlidingWindowState(NamedTuple):
    k: jax.Array  # [*batch, window, kv_heads, head_dim]: ring buffer, slot p % window holds position p
    v: jax.Array  # [*batch, window, kv_heads, head_dim]
    global_k: jax.Array  # [*batch, num_global, kv_heads, head_dim]: slot p holds position p < num_global
    global_v: jax.Array  # [*batch, num_global, kv_heads, head_dim]
    length: jax.Array  # [*batch] int32: valid tokens of the current segment so far = the next position


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


# --------------------------------------------------------------------------------------------------
# The shared machinery
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _SoftmaxAttention(Cell):
    """Hyperparameters, projections, positions, the engine call and `apply`, shared by both cells (not
    registered). A cell supplies its cache: `_cached` (the state's keys as the engine sees them) and
    `_state_after` (the state after a sequence)."""

    num_heads: int
    head_dim: int
    num_kv_heads: int | None = None
    out_features: int | None = None
    causal: bool = True
    positional: str = "rotary"
    rotary_base: float = 10000.0
    method: str = "auto"
    block_size: int | None = None
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    sequence_axis: str | None = None
    sequence_strategy: str = "auto"

    def __post_init__(self) -> None:
        label = type(self).__name__
        check_sequence_axis(label, self.sequence_axis)
        if self.sequence_strategy not in SEQUENCE_PARALLEL_STRATEGIES:
            raise ValueError(
                f"{label}: sequence_strategy must be one of {SEQUENCE_PARALLEL_STRATEGIES}, got "
                f"{self.sequence_strategy!r}."
            )
        check_positive_int(label, "num_heads", self.num_heads)
        check_positive_int(label, "head_dim", self.head_dim)
        if self.block_size is not None:
            check_positive_int(label, "block_size", self.block_size, " or None (the engine chooses)")
        if self.out_features is not None:
            check_positive_int(label, "out_features", self.out_features)
        if self.num_kv_heads is not None:
            check_positive_int(label, "num_kv_heads", self.num_kv_heads, " or None (= num_heads)")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"{label}: num_heads={self.num_heads} is not a multiple of num_kv_heads="
                    f"{self.num_kv_heads}; choose num_kv_heads dividing num_heads (1 = multi-query, None = "
                    f"one key/value head per query head)."
                )
        if self.positional not in POSITIONALS:
            raise ValueError(f"{label}: positional must be one of {POSITIONALS}, got {self.positional!r}.")
        if self.positional == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"{label}: positional='rotary' rotates feature pairs and needs an even head_dim, got "
                f"head_dim={self.head_dim}; use an even head_dim or positional='alibi'."
            )
        if not self.rotary_base > 0:
            raise ValueError(f"{label}: rotary_base must be > 0, got {self.rotary_base!r}.")
        if self.method not in METHODS:
            raise ValueError(f"{label}: method must be one of {METHODS}, got {self.method!r}.")
        if not isinstance(self.causal, bool | np.bool_):
            raise ValueError(f"{label}: causal must be True or False, got {self.causal!r}.")

    # -- sizes ---------------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def output_size(self) -> int:
        return self.num_heads * self.head_dim if self.out_features is None else self.out_features

    @property
    def _acc(self) -> jnp.dtype:
        return accumulation_dtype(self.dtype)

    def input_size_of(self, params: Params) -> int:
        return params["w_q"].shape[0]

    # -- parameters ----------------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        h, hkv, d, pd = self.num_heads, self.kv_heads, self.head_dim, self.param_dtype
        k_q, k_k, k_v, k_o = jax.random.split(key, 4)
        proj = jax.nn.initializers.glorot_uniform(in_axis=0, out_axis=(1, 2))
        out = jax.nn.initializers.glorot_uniform(in_axis=(0, 1), out_axis=2)
        return {
            "w_q": proj(k_q, (input_size, h, d), pd),
            "w_k": proj(k_k, (input_size, hkv, d), pd),
            "w_v": proj(k_v, (input_size, hkv, d), pd),
            "w_o": out(k_o, (h, d, self.output_size), pd),
        }

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        return {
            "w_q": ("embed", "heads", "head_dim"),
            "w_k": ("embed", "kv_heads", "head_dim"),
            "w_v": ("embed", "kv_heads", "head_dim"),
            "w_o": ("heads", "head_dim", "embed"),
        }

    def alibi_slopes(self) -> np.ndarray:
        """[num_heads] the ALiBi slopes this cell uses with positional="alibi"."""
        return alibi_slopes(self.num_heads)

    # -- per-token work ------------------------------------------------------------------------------
    # No `project_inputs` / `recur` split (this is a `Cell`, not a `RecurrentCell`): every projection
    # depends on the token's position (rotary, sinusoidal), which depends on the state, so `step` and
    # `apply` project.
    def _mm(self, x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
        return projection(self, spec, x, w)

    def _project(
        self, params: Params, x: jax.Array, positions: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [..., input_size], positions [...] -> q [..., H, d], k, v [..., H_kv, d] in the compute
        dtype, with the positional encoding applied."""
        if self.positional == "sinusoidal":
            x = x.astype(self._acc) + sinusoidal_embedding(positions, x.shape[-1], self._acc)
        q = self._mm(x, params["w_q"], "...i,ihd->...hd")
        k = self._mm(x, params["w_k"], "...i,ihd->...hd")
        v = self._mm(x, params["w_v"], "...i,ihd->...hd")
        if self.positional == "rotary":
            q = rotary_embedding(q, positions, self.rotary_base)
            k = rotary_embedding(k, positions, self.rotary_base)
        return q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype)

    def _attend(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        visibility: Visibility,
        split: bool = False,
        prefix: KVPrefix | None = None,
    ) -> jax.Array:
        slopes = jnp.asarray(self.alibi_slopes(), self._acc) if self.positional == "alibi" else None
        if split:  # the time axis over `sequence_axis`, the cache (if any) replicated before it
            return sequence_parallel_attention(
                q,
                k,
                v,
                visibility,
                alibi_slopes=slopes,
                strategy=self.sequence_strategy,
                block_q=self.block_size,
                block_k=self.block_size,
                sequence_axis=self.sequence_axis,
                kv_prefix=prefix,
            )
        return attention(
            q,
            k,
            v,
            visibility,
            alibi_slopes=slopes,
            method=self.method,
            block_q=self.block_size,
            block_k=self.block_size,
        )

    def _output(self, params: Params, y: jax.Array) -> jax.Array:
        return self._mm(y, params["w_o"], "...hd,hdo->...o").astype(self.dtype)

    # -- apply ---------------------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: Any = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """xs [*batch, T, input_size] -> ys [*batch, T, output_size] and the state after the sequence.

        With `state`, queries of the first segment also attend to the cached tokens; without one, no
        cache is read. The cells differ only in their cache (`_cached`, `_state_after`), in who sees
        whom (`_sequence_visibility`) and in capacity (`_check_apply_capacity`)."""
        given = state is not None
        split = self.sequence_axis is not None and sequence_shards(self.sequence_axis) > 1
        # Positions and segment ids from the whole sequence (global positions under a split).
        xs, state, resets, mask, valid, seg, pos = self._begin_apply(params, xs, state, resets, mask)
        self._check_apply_capacity(state, given, xs.shape[-2], resets, mask, valid, pos)
        q, k, v = self._project(params, xs, pos)

        visible = self._sequence_visibility(pos, valid, mask, seg if resets is not None else None)
        keys, values, prefix = k, v, None
        if given and split:  # the cache, replicated, before every shard's keys (in segment 0)
            c_keys, c_values, c_pos, c_ok, c_global = self._cached(state, state.length.astype(jnp.int32))
            prefix = KVPrefix(
                k=c_keys,
                v=c_values,
                positions=c_pos,
                mask=c_ok,
                segment_ids=None if visible.kv_segment_ids is None else jnp.zeros_like(c_pos),
                is_global=None if visible.kv_global is None else c_global,
            )
        elif given:  # the cached tokens go before the new ones, in segment 0
            c_keys, c_values, c_pos, c_ok, c_global = self._cached(state, state.length.astype(jnp.int32))
            keys = jnp.concatenate([c_keys, k], axis=-3)
            values = jnp.concatenate([c_values, v], axis=-3)
            kv_seg, kv_global = visible.kv_segment_ids, visible.kv_global
            if kv_seg is not None:
                kv_seg = jnp.concatenate([jnp.zeros_like(c_pos), kv_seg], axis=-1)
            if kv_global is not None:
                kv_global = jnp.concatenate([c_global, kv_global], axis=-1)
            visible = dataclasses.replace(
                visible,
                kv_positions=jnp.concatenate([c_pos, pos], axis=-1),
                kv_segment_ids=kv_seg,
                kv_mask=jnp.concatenate([c_ok, valid], axis=-1),
                kv_global=kv_global,
            )
        y = self._attend(q, keys, values, visible, split, prefix)
        ys = self._finish(self._output(params, y), mask)

        in_last, cont, length = self._last_segment(state, seg, valid)
        return ys, self._state_after(state, k, v, pos, in_last, cont, length)

    def _sequence_visibility(
        self, pos: jax.Array, valid: jax.Array, mask: jax.Array | None, seg: jax.Array | None
    ) -> Visibility:
        """Who sees whom among the sequence's own tokens: positions, segment ids (None without resets)
        and padding."""
        return Visibility(
            q_positions=pos,
            kv_positions=pos,
            q_segment_ids=seg,
            kv_segment_ids=seg,
            kv_mask=mask,
            causal=self.causal,
        )

    def _check_apply_capacity(
        self,
        state: Any,
        given: bool,
        length: int,
        resets: jax.Array | None,
        mask: jax.Array | None,
        valid: jax.Array,
        pos: jax.Array,
    ) -> None:
        """Raises when the sequence cannot fit the state; a ring buffer always fits."""

    # -- shared parts of step and apply --------------------------------------------------------------
    def _require_causal(self) -> None:
        if not self.causal:
            raise TypeError(
                f"{self._label} with causal=False has no step form: every token attends to later tokens. "
                f"Use `apply` on the whole sequence, or causal=True for streaming and generation."
            )

    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        if not self.causal:
            return f"{self._label} with causal=False attends to future tokens, so it cannot stream"
        return super().step_unsupported(streaming=streaming)

    def _step_flags(
        self, params: Params, state: Any, x: Any, reset: Any, mask: Any
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        self._require_causal()
        return self._check_step_args(params, state, x, reset, mask)

    def _begin_apply(
        self, params: Params, xs: Any, state: Any, resets: Any, mask: Any
    ) -> tuple[jax.Array, Any, jax.Array | None, jax.Array | None, jax.Array, jax.Array, jax.Array]:
        """Validated arguments, plus valid [*b, T], segment ids and positions [*b, T]."""
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        valid = jnp.ones(xs.shape[:-1], bool) if mask is None else mask
        seg, pos = segments_and_positions(valid, resets, state.length.astype(jnp.int32))
        return xs, state, resets, mask, valid, seg, pos

    @staticmethod
    def _last_segment(state: Any, seg: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """in_last [*b, T]: valid tokens of the sequence's last segment; cont [*b]: whether that segment
        continues the given state; length [*b]: the state's length after the sequence."""
        last = seg[..., -1]
        in_last = valid & (seg == last[..., None])
        cont = last == 0
        length = jnp.where(cont, state.length, 0) + jnp.sum(in_last, axis=-1, dtype=jnp.int32)
        return in_last, cont, length.astype(state.length.dtype)

    @staticmethod
    def _kept(cont: jax.Array, cache: jax.Array) -> jax.Array:
        """The cache where the last segment continues the state, zeros where a reset emptied it."""
        return jnp.where(cont.reshape(cont.shape + (1,) * (cache.ndim - cont.ndim)), cache, 0)

    def _finish(self, ys: jax.Array, mask: jax.Array | None) -> jax.Array:
        if mask is not None:
            ys = jnp.where(mask[..., None], ys, jnp.zeros((), ys.dtype))
        return ys


# --------------------------------------------------------------------------------------------------
# The cells
# --------------------------------------------------------------------------------------------------
@register("attention")
@dataclasses.dataclass(frozen=True)
class Attention(_SoftmaxAttention):
    """Multi-head exact softmax attention with a KV cache, causal (default) or bidirectional.

        q, k, v = W_q x̃, W_k x̃, W_v x̃  (x̃ = x, or x + PE(position) for positional="sinusoidal")
        q, k ← rotary(q, position), rotary(k, position)             (positional="rotary")
        y_i = W_o [ Σ_j softmax_j(q_i·k_j / √d − slope_h·|p_i − p_j|) v_j ]_heads
              over the visible j: same segment, not padding, p_j ≤ p_i when causal; the ALiBi term only
              for positional="alibi".

    State (`AttentionState`): the KV cache k, v [*batch, max_length, H_kv, d] (keys rotated) and
    `length` [*batch] int32. `step` writes slot `length` and attends over slots 0..length; it raises
    when the cache is full (also under jit, through a host callback). `apply` raises a ValueError at
    trace time when a sequence without resets or padding (plus the cache, when its length is known)
    cannot fit, and otherwise checks at run time. Bidirectional attention (causal=False) has no `step`.

    Hyperparameters:
      num_heads, head_dim: H and d.
      num_kv_heads: H_kv, dividing H; None = H (multi-head), 1 = multi-query, else grouped-query.
      out_features: width of the output projection; default H · d.
      causal: True (default) for causal attention, False for bidirectional.
      positional: "rotary" (default; `rotary_base` 10000), "alibi" (the paper's slopes, see
        `alibi_slopes`), "sinusoidal" (added to the input before the projections) or "none".
      max_length: KV-cache capacity: the most valid tokens one segment may hold, in `step` and in the
        state `apply` returns.
      method, block_size: the engine of `apply` (`seqjax.scan.attention.attention`: "auto",
        "blockwise", "naive" or "cudnn") and the blockwise form's block size for queries and keys
        (None: the engine chooses). `step` always uses `decode_attention`.
      sequence_axis: a mesh axis name that splits the time axis of `apply` over devices (None: not
        split); see `seqjax.cells.with_sequence_axis` and docs/scan.md, "Sequence parallelism".
      sequence_strategy: `sequence_parallel_attention`'s strategy under the split ("auto", "ring",
        "all_gather", "halo").
      dtype: compute dtype (bfloat16 allowed); softmax and sums accumulate in float32.
      param_dtype: dtype of the parameters.

    Parameters: `w_q` [input_size, H, d], `w_k`, `w_v` [input_size, H_kv, d], `w_o` [H, d, out];
    Glorot-uniform, no biases.

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.Attention(num_heads=2, head_dim=4, max_length=16)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, cache = cell.apply(params, jnp.ones((2, 5, 3)), cell.initial_state((2,)))
    >>> ys.shape, cache.k.shape, cache.length.tolist()        # 16 slots, 5 used
    ((2, 5, 8), (2, 16, 2, 4), [5, 5])
    >>> cache, y = cell.step(params, cache, jnp.ones((2, 3)))
    >>> y.shape, cache.length.tolist()
    ((2, 8), [6, 6])
    """

    max_length: int = 2048
    # The KV cache keeps every token of the segment (up to max_length): carried across batches it fills.
    state_grows_with_sequence: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("Attention", "max_length", self.max_length, " (the KV-cache capacity)")

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> AttentionState:
        shape = (*batch_shape, self.max_length, self.kv_heads, self.head_dim)
        return AttentionState(
            k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), length=jnp.zeros(batch_shape, jnp.int32)
        )

    # -- capacity ------------------------------------------------------------------------------------
    def _overflow_message(self, form: str, needed: int) -> str:
        return (
            f"Attention.{form}: the KV cache holds max_length={self.max_length} tokens per segment, but "
            f"{needed} are needed. Build the cell with max_length >= {needed}, start a new segment (reset) "
            f"before the cache fills, or use SlidingWindowAttention for unbounded streams."
        )

    def _check_capacity(self, needed: jax.Array, form: str) -> None:
        """Raises if any entry of `needed` (valid tokens a segment must hold) exceeds max_length: at once
        for concrete values, at run time (host callback) under a trace."""
        limit = self.max_length

        def check(n: Any) -> None:
            most = int(np.max(np.asarray(n), initial=0))
            if most > limit:
                raise ValueError(self._overflow_message(form, most))

        if _is_concrete(needed):
            check(needed)
        else:
            jax.debug.callback(check, needed)

    # -- step ----------------------------------------------------------------------------------------
    def step(
        self,
        params: Params,
        state: AttentionState,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[AttentionState, jax.Array]:
        """One token: writes its key and value at slot `length` and attends over slots 0..length
        (`RecurrentCell.step`'s reset and padding rules)."""
        x, reset, mask = self._step_flags(params, state, x, reset, mask)
        length = state.length if reset is None else jnp.where(reset, 0, state.length)
        needed = length + 1 if mask is None else jnp.where(mask, length + 1, 0)
        self._check_capacity(needed, "step")
        # Not `Cell._step_with_flags`: its selects between the old and the new state (for resets and
        # padding) pass over the whole cache every token. A reset only needs length 0 for the attention;
        # padding only needs the write and the length left alone.
        cleared = reset if reset is None or mask is None else reset & mask
        new, y = self._decode(params, state, x, length.astype(jnp.int32), mask, cleared)
        if mask is not None:
            y = jnp.where(mask[..., None], y, jnp.zeros((), y.dtype))
        return new, y

    def _decode(
        self,
        params: Params,
        state: AttentionState,
        x: jax.Array,
        pos: jax.Array,
        write: jax.Array | None,
        cleared: jax.Array | None,
    ) -> tuple[AttentionState, jax.Array]:
        """The token at position `pos` [*batch] against the first `pos` slots of `state`; the new state
        has the token's key and value at slot `pos` where `write` (None: everywhere) and an empty
        cache before it where `cleared`.

        The cache is written first (one row per batch entry) and `decode_attention` reads the written
        cache: XLA then updates a donated state in place, where reading the old cache before the
        write, or any select over all slots, costs copies of the whole cache every token (see
        `decode_attention` and docs/performance.md). The written slot itself is masked out and the
        token's key enters as one extra logit in the compute dtype, as `apply` sees it."""
        q, k, v = self._project(params, x, pos)
        cache_k, cache_v = state.k, state.v
        if cleared is not None:
            cache_k, cache_v = clear_rows(cleared, cache_k), clear_rows(cleared, cache_v)
        index = pos if write is None else jnp.where(write, pos, self.max_length)  # max_length: no write
        new = AttentionState(
            k=scatter_rows(cache_k, k[..., None, :, :], index[..., None]),
            v=scatter_rows(cache_v, v[..., None, :, :], index[..., None]),
            length=(pos + 1 if write is None else jnp.where(write, pos + 1, state.length)).astype(
                state.length.dtype
            ),
        )
        slopes = jnp.asarray(self.alibi_slopes(), self._acc) if self.positional == "alibi" else None
        y = decode_attention(q, new.k, new.v, pos, k_new=k, v_new=v, alibi_slopes=slopes)
        return new, self._output(params, y)

    # -- apply ---------------------------------------------------------------------------------------
    def _cached(self, state: AttentionState, length: jax.Array) -> tuple[jax.Array, ...]:
        """The cache's keys and values [*b, max_length, H_kv, d] (compute dtype), slot positions and
        validity [*b, max_length] after `length` tokens, and its global flags: None (no global tokens)."""
        m = self.max_length
        slots = jnp.broadcast_to(jnp.arange(m), (*length.shape, m))
        keys, values = state.k.astype(self.dtype), state.v.astype(self.dtype)
        return keys, values, slots, slots < length[..., None], None

    def _state_after(
        self,
        state: AttentionState,
        k: jax.Array,
        v: jax.Array,
        pos: jax.Array,
        in_last: jax.Array,
        cont: jax.Array,
        length: jax.Array,
    ) -> AttentionState:
        index = jnp.where(in_last, pos, self.max_length)
        return AttentionState(
            k=scatter_rows(self._kept(cont, state.k), k, index),
            v=scatter_rows(self._kept(cont, state.v), v, index),
            length=length,
        )

    def _check_apply_capacity(
        self,
        state: AttentionState,
        given: bool,
        length: int,
        resets: jax.Array | None,
        mask: jax.Array | None,
        valid: jax.Array,
        pos: jax.Array,
    ) -> None:
        """Trace-time when the shapes (and a concrete cache length) decide it, else a run-time check of
        the largest position + 1 among the valid tokens."""
        cached = state.length if given else None
        known = cached is None or _is_concrete(cached)
        most_cached = 0 if cached is None or not known else int(np.max(np.asarray(cached), initial=0))
        if known and length + most_cached <= self.max_length:
            return  # every segment fits, whatever the resets and padding
        if resets is None and mask is None and length + most_cached > self.max_length:
            # One segment of `length` new tokens after the cache (whose length is at least 0 when
            # unknown): it cannot fit, whatever the data.
            raise ValueError(self._overflow_message("apply", length + most_cached))
        self._check_capacity(jnp.where(valid, pos + 1, 0), "apply")


@register("sliding_window_attention")
@dataclasses.dataclass(frozen=True)
class SlidingWindowAttention(_SoftmaxAttention):
    """Multi-head softmax attention over a sliding window, with optional global tokens (Longformer's
    local + global attention; global tokens at the start are also "attention sinks").

    A query sees itself and the `window` − 1 previous valid tokens of its segment, plus the first
    `num_global` tokens of its segment. With causal=False the window is two-sided (|p_i − p_j| <
    window) and the global tokens also see their whole segment; that form has no `step`. Positions,
    projections and positional encodings as in `Attention`.

    State (`SlidingWindowState`): a ring buffer k, v [*batch, window, H_kv, d] (slot p % window holds
    position p), the global tokens' k, v [*batch, num_global, H_kv, d], and `length` [*batch] int32, the
    valid tokens of the current segment so far. Its size depends on `window` and `num_global` only, so
    streams have no length limit. `apply` runs the engine with `window` and `kv_global`, whose
    blockwise form skips the key blocks outside the band: O(L · window) time.

    Hyperparameters: those of `Attention` but `max_length`, plus `window` (w ≥ 1, default 256) and
    `num_global` (≥ 0, default 0).
    Parameters: `w_q` [input_size, H, d], `w_k`, `w_v` [input_size, H_kv, d], `w_o` [H, d, out].

    >>> import jax, jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.SlidingWindowAttention(num_heads=2, head_dim=4, window=3)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, state.k.shape                                # a ring of `window` slots
    ((2, 5, 8), (2, 3, 2, 4))
    """

    window: int = 256
    num_global: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(
            "SlidingWindowAttention",
            "window",
            self.window,
            " (the tokens a query sees, itself included; window=1 sees only itself)",
        )
        g = self.num_global
        if isinstance(g, bool) or not isinstance(g, int | np.integer) or g < 0:
            raise ValueError(
                f"SlidingWindowAttention: num_global must be a non-negative integer (the number of global "
                f"tokens at the start of each segment; 0 for none), got {g!r}."
            )

    def initial_state(
        self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32
    ) -> SlidingWindowState:
        ring = (*batch_shape, self.window, self.kv_heads, self.head_dim)
        glob = (*batch_shape, self.num_global, self.kv_heads, self.head_dim)
        return SlidingWindowState(
            k=jnp.zeros(ring, dtype),
            v=jnp.zeros(ring, dtype),
            global_k=jnp.zeros(glob, dtype),
            global_v=jnp.zeros(glob, dtype),
            length=jnp.zeros(batch_shape, jnp.int32),
        )

    def _cached(self, state: SlidingWindowState, length: jax.Array) -> tuple[jax.Array, ...]:
        """The state's keys and values [*b, G + w, H_kv, d] (compute dtype), positions and validity
        [*b, G + w] and global flags, after `length` tokens. Ring slots holding a global token are
        invalid: that token is attended through the global slots."""
        g = self.num_global
        ring_pos = ring_positions(length, self.window)
        glob_pos = jnp.broadcast_to(jnp.arange(g), (*length.shape, g))
        keys = jnp.concatenate([state.global_k, state.k], axis=-3).astype(self.dtype)
        values = jnp.concatenate([state.global_v, state.v], axis=-3).astype(self.dtype)
        positions = jnp.concatenate([glob_pos, ring_pos], axis=-1)
        glob_ok = glob_pos < length[..., None]
        ok = jnp.concatenate([glob_ok, (ring_pos >= 0) & (ring_pos >= g)], axis=-1)
        is_global = jnp.concatenate([glob_ok, jnp.zeros_like(ring_pos, bool)], axis=-1)
        return keys, values, positions, ok, is_global

    # -- step ----------------------------------------------------------------------------------------
    def step(
        self,
        params: Params,
        state: SlidingWindowState,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[SlidingWindowState, jax.Array]:
        """One token: writes ring slot `length % window` (and global slot `length` while length <
        num_global) and attends over the global tokens and the ring."""
        x, reset, mask = self._step_flags(params, state, x, reset, mask)
        return self._step_with_flags(
            state, x.shape[:-1], reset, mask, lambda prev: self._step_token(params, prev, x)
        )

    def _step_token(
        self, params: Params, state: SlidingWindowState, x: jax.Array
    ) -> tuple[SlidingWindowState, jax.Array]:
        """One valid token after `state` (no reset, no padding): writes the ring (and global) slot of its
        position and attends."""
        pos = state.length.astype(jnp.int32)
        q, k, v = self._project(params, x, pos)
        w, g = self.window, self.num_global
        ring_write = (jnp.arange(w) == (pos % w)[..., None])[..., None, None]
        glob_write = (jnp.arange(g) == pos[..., None])[..., None, None]

        def put(where: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(where, new[..., None, :, :].astype(old.dtype), old)

        new = SlidingWindowState(
            k=put(ring_write, k, state.k),
            v=put(ring_write, v, state.v),
            global_k=put(glob_write, k, state.global_k),
            global_v=put(glob_write, v, state.global_v),
            length=state.length + 1,
        )
        keys, values, positions, ok, _ = self._cached(new, pos + 1)
        # The current token's own key/value in the compute dtype, as `apply` sees it.
        own = jnp.concatenate([glob_write, ring_write], axis=-3)
        keys = jnp.where(own, k[..., None, :, :], keys)
        values = jnp.where(own, v[..., None, :, :], values)
        visible = Visibility(
            q_positions=pos[..., None], kv_positions=positions, kv_mask=ok, causal=self.causal
        )
        y = self._attend(q[..., None, :, :], keys, values, visible)
        return new, self._output(params, y[..., 0, :, :])

    # -- apply ---------------------------------------------------------------------------------------
    def _sequence_visibility(
        self, pos: jax.Array, valid: jax.Array, mask: jax.Array | None, seg: jax.Array | None
    ) -> Visibility:
        g = self.num_global
        is_global = pos < g
        return dataclasses.replace(
            super()._sequence_visibility(pos, valid, mask, seg),
            kv_global=valid & is_global if g else None,
            q_global=is_global if g and not self.causal else None,
            window=self.window,
        )

    def _state_after(
        self,
        state: SlidingWindowState,
        k: jax.Array,
        v: jax.Array,
        pos: jax.Array,
        in_last: jax.Array,
        cont: jax.Array,
        length: jax.Array,
    ) -> SlidingWindowState:
        g, w = self.num_global, self.window
        ring_index = ring_write_index(pos, in_last, length, w)
        glob_index = jnp.where(in_last & (pos < g), pos, g)
        return SlidingWindowState(
            k=scatter_rows(self._kept(cont, state.k), k, ring_index),
            v=scatter_rows(self._kept(cont, state.v), v, ring_index),
            global_k=scatter_rows(self._kept(cont, state.global_k), k, glob_index),
            global_v=scatter_rows(self._kept(cont, state.global_v), v, glob_index),
            length=length,
        )
