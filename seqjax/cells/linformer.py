"""Linformer self-attention (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity"): keys
and values are projected along the sequence axis to k rows before softmax attention, so time and memory
are O(n·k) instead of O(n²). An encoder cell: every projected row mixes all positions, future ones
included, so it can never be causal and has no `step`.

    q, k, v = W_q x̃, W_k x̃, W_v x̃                      (x̃ = x + PE(position) for "sinusoidal")
    K̃ = E · K,  Ṽ = F · V                               E, F ∈ R^{k×n}, K, V ∈ R^{n×d} per head
    y_i = W_o [ Σ_r softmax_r(q_i·K̃_r / √d) Ṽ_r ]_heads

Padding and shorter inputs. Token t's key and value are multiplied by column p_t of E and F, where p_t
is its position: the number of valid (mask=True) tokens before it, as in every seqjax attention cell.
Padded tokens contribute nothing (their rows are dropped before projecting). So a row with m valid tokens
is projected exactly as the paper projects a length-n input whose last n − m rows of K and V are zero:
the valid tokens moved to the front, padded to n with zero rows. For an unpadded input of length T ≤ n
that is E[:, :T] · K, what fairseq's Linformer computes for inputs shorter than max_seq_len. An input
whose time axis is longer than `max_length` (= n) is an error.

Resets (packed segments) restart positions at 0; each segment is projected on its own (segment s's
projected keys are Σ_{t in s} E[:, p_t] K_t), so segments never see each other. That form materialises
[T, T] scores per head (O(T²·k)): it exists so that packing is correct, not fast; give one sequence per
row to keep O(n·k).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.attention import _SoftmaxAttention
from seqjax.cells.base import DType, Params
from seqjax.cells.kv_cache import scatter_rows
from seqjax.cells.registry import register
from seqjax.common.checks import check_positive_int
from seqjax.scan.attention import Visibility

__all__ = ["CAUSAL_ALTERNATIVES", "SHARING_MODES", "Linformer", "LinformerState"]

#: How E and F are shared: one pair per key/value head, one pair for all heads (the paper's headwise
#: sharing), one matrix for keys and values of all heads (key-value sharing), or that one matrix for every
#: layer of the model too (the paper's layerwise sharing: `Linformer.shared_params`).
SHARING_MODES = ("none", "headwise", "key_value", "layerwise")
#: Registered cells that can serve causal models and streaming, named by Linformer's errors.
CAUSAL_ALTERNATIVES = ("attention", "sliding_window_attention", "performer", "linear_attention")

_WHY_NOT_CAUSAL = (
    "Linformer projects keys and values along the sequence axis (E, F are k x n), so every projected key "
    "and value mixes all positions, future ones included: it cannot be causal"
)


class LinformerState(NamedTuple):
    """Linformer's state: no keys are cached (an encoder sees its whole sequence), only the count that
    positions continue from.

    >>> LinformerState(length=jnp.zeros((2,), jnp.int32)).length.tolist()
    [0, 0]
    """

    length: jax.Array  # [*batch] int32: valid tokens of the current segment so far = the next position


@register("linformer")
@dataclasses.dataclass(frozen=True)
class Linformer(_SoftmaxAttention):
    """Linformer self-attention: keys and values projected along the sequence to `k` rows.

    Hyperparameters: as `Attention` (num_heads, head_dim, num_kv_heads, out_features, positional,
    rotary_base, method, block_size, dtype, param_dtype), plus
      max_length: n, the longest input (time axis) the cell is built for; E and F are k × n.
      k: the projected length (the paper's k; 256 is its main setting).
      sharing: "headwise" (default, the paper's: one E and one F per layer, shared by the heads),
        "key_value" (one matrix, E = F, shared by the heads), "layerwise" (the paper's: key_value, and
        one E for every layer of the model) or "none" (an E and an F per key/value head). Within one
        layer "layerwise" is "key_value"; the difference is `shared_params()` == ("e",), which tells a
        model (`seqjax.models.Backbone`) to hold one E for all its layers of this cell instead of one
        per layer. The cell alone still creates and reads its own E (see the last example).
      positional: "sinusoidal" (default: added to the input, standing in for the paper's learned
        absolute embeddings), "rotary" or "none". "alibi" is refused: it biases logits by key position,
        and a projected key row has no single position.
      causal: must stay False (see `step_unsupported`).

    Parameters: `w_q`, `w_k`, `w_v`, `w_o` as `Attention`; `e` [k, n] (keys' projection, the paper's E)
    and `f` [k, n] (values', F) for "headwise"; `e` only for "key_value" and "layerwise"; `e`, `f`
    [H_kv, k, n] for "none". E and F are initialised as in the authors' fairseq code: Glorot uniform with
    gain 1/√2, i.e. U(±√(3 / (n + k))). Per layer they add 2·k·n ("headwise"), k·n ("key_value") or
    2·H_kv·k·n ("none") parameters to the four projections; "layerwise" adds k·n to the whole model.

    State (`LinformerState`): only `length`, the valid tokens of the last segment; a given state
    continues positions (its tokens are not seen again).

    >>> import jax, jax.numpy as jnp
    >>> cell = Linformer(num_heads=2, head_dim=4, max_length=16, k=4)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> params["e"].shape, params["f"].shape                      # one E and one F for both heads
    ((4, 16), (4, 16))
    >>> ys, state = cell.apply(params, jnp.ones((2, 10, 3)))    # shorter than n: uses E[:, :10]
    >>> ys.shape, state.length.tolist(), cell.step_unsupported() is not None
    ((2, 10, 8), [10, 10], True)

    Layerwise sharing by hand: layers of a "layerwise" cell given the same E (one k × n matrix for the
    stack); `jax.grad` with respect to that E sums the layers' gradients. A `Backbone` does this itself.

    >>> shared = Linformer(num_heads=2, head_dim=4, max_length=16, k=4, sharing="layerwise")
    >>> shared.shared_params()
    ('e',)
    >>> keys = jax.random.split(jax.random.PRNGKey(0), 3)
    >>> e = shared.init(keys[0], 8)["e"]                           # [k, n]: the one projection
    >>> layers = [{**shared.init(key, 8), "e": e} for key in keys[1:]]
    >>> xs = jnp.ones((2, 10, 8))
    >>> for params in layers:
    ...     xs, _ = shared.apply(params, xs)
    >>> xs.shape
    (2, 10, 8)
    """

    max_length: int = 512
    k: int = 256
    sharing: str = "headwise"
    positional: str = "sinusoidal"
    causal: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.causal, bool | np.bool_) and self.causal:
            raise ValueError(
                f"Linformer: causal must be False. {_WHY_NOT_CAUSAL}. For a causal model use one of "
                f"{', '.join(CAUSAL_ALTERNATIVES)}."
            )
        super().__post_init__()
        check_positive_int("Linformer", "max_length", self.max_length, " (n: the longest input it serves)")
        check_positive_int("Linformer", "k", self.k, " (the projected length)")
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"Linformer: sharing must be one of {SHARING_MODES}, got {self.sharing!r}.")
        if self.positional == "alibi":
            raise ValueError(
                "Linformer: positional='alibi' biases each logit by the key's distance from the query, but "
                "a projected key row mixes every position and has none; use 'sinusoidal', 'rotary' or 'none'."
            )

    # -- parameters ----------------------------------------------------------------------------------
    @property
    def _projection_shape(self) -> tuple[int, ...]:
        heads = (self.kv_heads,) if self.sharing == "none" else ()
        return (*heads, self.k, self.max_length)

    @property
    def _projection_names(self) -> tuple[str, ...]:
        return ("e",) if self.sharing in ("key_value", "layerwise") else ("e", "f")

    def shared_params(self) -> tuple[str, ...]:
        """("e",) with sharing="layerwise" (a model holds one E for all its Linformer layers), else ().

        >>> Linformer(num_heads=1, head_dim=2, sharing="layerwise").shared_params()
        ('e',)
        """
        return ("e",) if self.sharing == "layerwise" else ()

    def init(self, key: jax.Array, input_size: int) -> Params:
        k_attention, *k_projections = jax.random.split(key, 1 + len(self._projection_names))
        params = super().init(k_attention, input_size)
        # fairseq's Linformer: xavier_uniform_(compress weight [k, n], gain=1/√2), variance 1 / (n + k).
        glorot_half = jax.nn.initializers.variance_scaling(0.5, "fan_avg", "uniform", in_axis=-1, out_axis=-2)
        for name, k_init in zip(self._projection_names, k_projections, strict=True):
            params[name] = glorot_half(k_init, self._projection_shape, self.param_dtype)
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = super().param_axes()
        heads = ("kv_heads",) if self.sharing == "none" else ()
        for name in self._projection_names:
            axes[name] = (*heads, "projected_length", "length")
        return axes

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> LinformerState:
        del dtype  # nothing but a count is held
        return LinformerState(length=jnp.zeros(tuple(batch_shape), jnp.int32))

    # -- no step, never causal -----------------------------------------------------------------------
    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        del streaming
        return f"{_WHY_NOT_CAUSAL}, and it has no step"

    def causal_unsupported(self) -> str | None:
        """Always the reason: a causal (next-token) model must refuse this cell.

        >>> "future" in Linformer(num_heads=1, head_dim=2).causal_unsupported()
        True
        """
        return f"{_WHY_NOT_CAUSAL}; causal alternatives: {', '.join(CAUSAL_ALTERNATIVES)}"

    def step(
        self, params: Params, state: Any, x: jax.Array, *, reset: Any = None, mask: Any = None
    ) -> tuple[LinformerState, jax.Array]:
        """Always raises TypeError: Linformer has no token-by-token form.

        >>> cell = Linformer(num_heads=1, head_dim=2, max_length=4, k=2)
        >>> cell.step({}, cell.initial_state(), jnp.ones(3))
        Traceback (most recent call last):
        ...
        TypeError: Linformer projects ... For streaming use one of attention, sliding_window_attention, ...
        """
        raise TypeError(
            f"{self.step_unsupported()}; use `apply` on the whole sequence. For streaming use one of "
            f"{', '.join(CAUSAL_ALTERNATIVES)}."
        )

    # -- apply ---------------------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: LinformerState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, LinformerState]:
        """xs [*batch, T, input_size] (T ≤ max_length) -> ys [*batch, T, output_size] and the token count
        after it. Padded outputs are 0; a given state only continues positions.

        >>> cell = Linformer(num_heads=1, head_dim=2, max_length=8, k=4)
        >>> params = cell.init(jax.random.PRNGKey(0), 3)
        >>> mask = jnp.array([[True, True, True, False, False]])     # right padding: 3 valid tokens
        >>> ys, state = cell.apply(params, jnp.ones((1, 5, 3)), mask=mask)
        >>> ys[0, 3:].tolist(), state.length.tolist()
        ([[0.0, 0.0], [0.0, 0.0]], [3])
        """
        given = state is not None
        xs, state, resets, mask, valid, seg, pos = self._begin_apply(params, xs, state, resets, mask)
        length = xs.shape[-2]
        self._check_length(state, given, length, resets, mask, valid, pos)
        q, k, v = self._project(params, xs, pos)
        e = params["e"]
        f = params["f" if "f" in self._projection_names else "e"]
        if resets is None:
            y = self._attend_projected(q, k, v, e, f, pos, valid, mask is not None, given, length)
        else:
            y = self._attend_segments(q, k, v, e, f, pos, valid, seg)
        ys = self._finish(self._output(params, y), mask)
        _, _, count = self._last_segment(state, seg, valid)
        return ys, LinformerState(length=count)

    def _check_length(
        self,
        state: LinformerState,
        given: bool,
        length: int,
        resets: jax.Array | None,
        mask: jax.Array | None,
        valid: jax.Array,
        pos: jax.Array,
    ) -> None:
        """Raises at trace time when the time axis exceeds n; with a given state, also when positions
        (which continue from it) pass n: at trace time when that is decided, else at run time."""
        n = self.max_length
        if length > n:
            raise ValueError(
                f"Linformer.apply: the input has {length} time steps, but the cell was built for "
                f"max_length n={n} (E and F are k x n = {self.k} x {n}). Build it with max_length >= "
                f"{length} (E and F grow with n), or feed windows of at most {n} steps."
            )
        if not given:
            return  # positions count valid tokens before each one: all < length <= n

        def message(needed: int) -> str:
            return (
                f"Linformer.apply: the given state's {needed - length} earlier tokens plus this input's "
                f"{length} need positions up to {needed}, but the cell was built for max_length n={n}. "
                f"Start without a state (or reset), or build it with max_length >= {needed}."
            )

        cached = state.length
        if not isinstance(cached, jax.core.Tracer):
            most = int(np.max(np.asarray(cached), initial=0))
            if most + length <= n:
                return
            if resets is None and mask is None:
                raise ValueError(message(most + length))

        def check(needed: Any) -> None:
            most = int(np.max(np.asarray(needed), initial=0))
            if most > n:
                raise ValueError(message(most))

        jax.debug.callback(check, jnp.where(valid, pos + 1, 0))

    def _along_length(self, projection: jax.Array, rows: jax.Array) -> jax.Array:
        """projection [(H_kv,) k, L] · rows [*b, L, H_kv, d] -> [*b, k, H_kv, d] in the compute dtype."""
        spec = "hrl,...lhd->...rhd" if self.sharing == "none" else "rl,...lhd->...rhd"
        projected = jnp.einsum(
            spec, projection.astype(self.dtype), rows.astype(self.dtype), preferred_element_type=self._acc
        )
        return projected.astype(self.dtype)

    def _attend_projected(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        e: jax.Array,
        f: jax.Array,
        pos: jax.Array,
        valid: jax.Array,
        padded: bool,
        given: bool,
        length: int,
    ) -> jax.Array:
        """One segment per row: K̃ = E·K and Ṽ = F·V over the rows' positions, then softmax attention of
        every query over the k projected rows. O(n·k) time and memory."""
        if padded or given:
            # Row p of the buffer holds the token at position p; padded tokens go to index `rows`, which
            # the scatter drops, so their keys and values are exactly absent. Without a state positions
            # stay below the input's length, so the buffer (and E's used columns) need not reach n.
            rows = self.max_length if given else length
            index = jnp.where(valid, pos, rows)
            zeros = jnp.zeros((*k.shape[:-3], rows, *k.shape[-2:]), k.dtype)
            k, v = scatter_rows(zeros, k, index), scatter_rows(zeros, v, index)
        else:
            rows = length  # positions are 0..T-1: E[:, :T] · K, as fairseq does for shorter inputs
        k_proj = self._along_length(e[..., :rows], k)
        v_proj = self._along_length(f[..., :rows], v)
        return self._attend(q, k_proj, v_proj, Visibility(causal=False))

    def _attend_segments(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        e: jax.Array,
        f: jax.Array,
        pos: jax.Array,
        valid: jax.Array,
        seg: jax.Array,
    ) -> jax.Array:
        """Packed segments: each query's projected keys are Σ_j [seg_j = seg_i, valid_j] E[:, p_j] K_j.

        With S = q·Kᵀ [T, T], the logits are (S ⊙ same) · E[:, p]ᵀ [T, k], and after the softmax P the
        output is ((P · F[:, p]) ⊙ same) · V: the same numbers as projecting each segment on its own,
        in O(T²·k) (see the module docstring)."""
        acc = self._acc
        *batch, length, heads, d = q.shape
        kv_heads = k.shape[-2]
        q = q.reshape(*batch, length, kv_heads, heads // kv_heads, d)  # query head h reads kv head h // g
        same = (seg[..., :, None] == seg[..., None, :]) & valid[..., None, :]  # [*b, T (query), T (key)]
        same = same[..., None, None, :, :]  # [*b, 1, 1, T, T] against [*b, H_kv, g, T, T]
        at = jnp.clip(pos, 0, self.max_length - 1)  # a padded token's column is never used (`same`)

        def columns(projection: jax.Array) -> jax.Array:
            """projection [(H_kv,) k, n] -> each key's column [*b, T, H_kv, k]."""
            picked = jnp.take(projection, at, axis=-1)  # [(H_kv,) k, *b, T]
            lead = projection.ndim - 1
            picked = jnp.moveaxis(picked, tuple(range(lead)), tuple(range(-lead, 0)))  # [*b, T, (H_kv,) k]
            if self.sharing != "none":
                picked = jnp.broadcast_to(picked[..., None, :], (*picked.shape[:-1], kv_heads, self.k))
            return picked.astype(acc)

        scores = jnp.einsum("...tcgd,...jcd->...cgtj", q, k, preferred_element_type=acc) / np.sqrt(d)
        scores = jnp.where(same, scores, 0)
        e_cols, f_cols = columns(e), columns(f)
        logits = jnp.einsum("...cgtj,...jcr->...cgtr", scores, e_cols)
        probs = jax.nn.softmax(logits, axis=-1)
        weights = jnp.where(same, jnp.einsum("...cgtr,...jcr->...cgtj", probs, f_cols), 0)
        y = jnp.einsum("...cgtj,...jcd->...tcgd", weights, v.astype(acc))
        return y.reshape(*batch, length, heads, d).astype(self.dtype)
