"""Longformer self-attention (Beltagy et al. 2020): a symmetric sliding window plus global tokens, each
with its own projections. An encoder cell: it reads future tokens, so it has no `step`.

    local:   q, k, v = W_q x, W_k x, W_v x
             y_i = Σ_j softmax_j(q_i·k_j / √d) v_j   over |p_i − p_j| ≤ window/2, or j global
    global:  q_g, k_g, v_g = W_q^g x, W_k^g x, W_v^g x   (the paper's Q_g, K_g, V_g)
             y_i = Σ_j softmax_j(q_g,i·k_g,j / √d) v_g,j   over every j, for global i
    out:     W_o y

The global tokens are the first `num_global` positions of each segment (a classification token among
them; read it with the head's "first" pooling). Every token attends to them through the local
projections, and they attend to every token through the global ones, as in HF's
`LongformerSelfAttention`. Padding (mask=False) is never attended and outputs zero; resets start a new
segment with its own global tokens.
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
from seqjax.cells.registry import register
from seqjax.scan.attention import Visibility

__all__ = ["Longformer", "LongformerState"]

_GLOBAL = ("w_q_global", "w_k_global", "w_v_global")


class LongformerState(NamedTuple):
    # No tokens are cached (an encoder sees its whole sequence); the count continues positions only.
    length: jax.Array  # [*batch] int32: valid tokens of the current segment so far = the next position


@register("longformer")
@dataclasses.dataclass(frozen=True)
class Longformer(_SoftmaxAttention):
    """Longformer self-attention: symmetric window, global tokens with their own q/k/v projections.

    Hyperparameters: as `Attention` (num_heads, head_dim, num_kv_heads, out_features, positional,
    rotary_base, method, block_size, dtype, param_dtype), plus
      window: Longformer's `attention_window`, an even int >= 2: each token sees window/2 tokens on each
        side (and itself).
      num_global: the first `num_global` tokens of each segment are global (default 1: a [CLS] token).
      causal: must stay False (Longformer's encoder attention is bidirectional).

    Parameters: `w_q`, `w_k`, `w_v`, `w_o` as `Attention`, and `w_q_global`, `w_k_global`, `w_v_global`
    with the shapes of `w_q`, `w_k`, `w_v`. Without resets the global attention costs
    O(num_global · T); with resets it is computed for every query (O(T²)) and kept for the global ones.

    Example:
    >>> import jax, jax.numpy as jnp
    >>> cell = Longformer(num_heads=2, head_dim=4, window=4, num_global=1)
    >>> params = cell.init(jax.random.PRNGKey(0), 3)
    >>> ys, state = cell.apply(params, jnp.ones((2, 5, 3)))
    >>> ys.shape, cell.step_unsupported() is not None
    ((2, 5, 8), True)
    """

    window: int = 512
    num_global: int = 1
    causal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.window
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 2 or w % 2:
            raise ValueError(
                f"Longformer: window must be an even int >= 2 (Longformer's attention_window: window/2 "
                f"tokens on each side), got {w!r}; e.g. window=512."
            )
        g = self.num_global
        if isinstance(g, bool) or not isinstance(g, int | np.integer) or g < 0:
            raise ValueError(
                f"Longformer: num_global must be a non-negative int (the global tokens at the start of each "
                f"segment; 1 for a classification token), got {g!r}."
            )
        if self.causal:
            raise ValueError(
                "Longformer: causal must be False (its window and global tokens read both sides); for a "
                "causal local attention use SlidingWindowAttention."
            )

    # -- parameters ----------------------------------------------------------------------------------
    def init(self, key: jax.Array, input_size: int) -> Params:
        k_local, k_global = jax.random.split(key)
        params = super().init(k_local, input_size)
        extra = super().init(k_global, input_size)  # the same shapes and initialisation
        params.update({name: extra[name[: -len("_global")]] for name in _GLOBAL})
        return params

    def param_axes(self) -> dict[str, tuple[str, ...]]:
        axes = super().param_axes()
        axes.update({name: axes[name[: -len("_global")]] for name in _GLOBAL})
        return axes

    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> LongformerState:
        del dtype  # nothing but a count is held
        return LongformerState(length=jnp.zeros(tuple(batch_shape), jnp.int32))

    # -- no step -------------------------------------------------------------------------------------
    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        del streaming
        return "Longformer attends to tokens on both sides (and its global tokens to all), so it has no step"

    def step(self, params: Params, state: Any, x: jax.Array, *, reset: Any = None, mask: Any = None):
        raise TypeError(f"{self.step_unsupported()}; use `apply` on the whole sequence.")

    # -- apply ---------------------------------------------------------------------------------------
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: LongformerState | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, LongformerState]:
        """xs [*batch, T, input_size] -> ys [*batch, T, output_size] and the token count after it. A
        given state only continues positions (its tokens are not cached, and are not global)."""
        xs, state, resets, mask, valid, seg, pos = self._begin_apply(params, xs, state, resets, mask)
        seg_ids = seg if resets is not None else None
        g = self.num_global
        is_global = valid & (pos < g)

        q, k, v = self._project(params, xs, pos)
        local = Visibility(
            q_positions=pos,
            kv_positions=pos,
            q_segment_ids=seg_ids,
            kv_segment_ids=seg_ids,
            kv_mask=mask,
            kv_global=is_global if g else None,
            causal=False,
            window=self.window // 2 + 1,  # the engine's symmetric window counts |Δp| < window
        )
        y = self._attend(q, k, v, local)
        if g:
            y = self._with_global_rows(params, xs, pos, seg_ids, mask, valid, state, is_global, y)
        ys = self._finish(self._output(params, y), mask)
        _, _, length = self._last_segment(state, seg, valid)
        return ys, LongformerState(length=length)

    def _with_global_rows(
        self,
        params: Params,
        xs: jax.Array,
        pos: jax.Array,
        seg_ids: jax.Array | None,
        mask: jax.Array | None,
        valid: jax.Array,
        state: LongformerState,
        is_global: jax.Array,
        y_local: jax.Array,
    ) -> jax.Array:
        """y_local with the rows of global tokens replaced by their global attention over all tokens."""
        global_params = {name[: -len("_global")]: params[name] for name in _GLOBAL}
        _, k_g, v_g = self._project(global_params, xs, pos)
        everything = Visibility(
            kv_positions=pos, q_segment_ids=seg_ids, kv_segment_ids=seg_ids, kv_mask=mask, causal=False
        )
        if seg_ids is not None:
            # Segments start anywhere, so every query gets the global form, and the global ones keep it.
            q_g, _, _ = self._project(global_params, xs, pos)
            y_g = self._attend(q_g, k_g, v_g, dataclasses.replace(everything, q_positions=pos))
            return jnp.where(is_global[..., None, None], y_g, y_local)
        # One segment: its global tokens are its first `g` valid tokens, slot s = position − start.
        g = self.num_global
        start = state.length.astype(jnp.int32)[..., None]
        slot_of_token = jnp.where(is_global, pos - start, g)  # g: not global
        slots = jnp.arange(g)
        token_of_slot = jnp.argmax(slot_of_token[..., None, :] == slots[:, None], axis=-1)  # [*b, g]
        x_g = jnp.take_along_axis(xs, token_of_slot[..., None], axis=-2)
        q_g, _, _ = self._project(global_params, x_g, start + slots)
        y_g = self._attend(q_g, k_g, v_g, dataclasses.replace(everything, q_positions=start + slots))
        back = jnp.take_along_axis(y_g, jnp.minimum(slot_of_token, g - 1)[..., None, None], axis=-3)
        return jnp.where(is_global[..., None, None], back, y_local)
