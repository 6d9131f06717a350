"""Which key each query sees: `Visibility`, the one value every attention engine reads the rule from.

The rule is decided by data, not by index, so the same engines serve causal and bidirectional attention,
packed sequences (segment ids), padding (kv_mask), a KV cache placed before the new tokens, sliding
windows and global tokens:

    visible(i, j) = kv_mask[j]
                    and q_segment_ids[i] == kv_segment_ids[j]
                    and (kv_positions[j] <= q_positions[i]                if causal)
                    and (q_positions[i] - kv_positions[j] < window        if causal and window
                         |q_positions[i] - kv_positions[j]| < window      if not causal and window
                         or kv_global[j] or q_global[i])
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Visibility"]

_PER_TOKEN = (
    "q_positions",
    "kv_positions",
    "q_segment_ids",
    "kv_segment_ids",
    "kv_mask",
    "kv_global",
    "q_global",
)
#: Every field, in order: the keywords an engine takes instead of a `Visibility` value.
_FIELDS = (*_PER_TOKEN, "causal", "window")


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=list(_PER_TOKEN), meta_fields=["causal", "window"]
)
@dataclasses.dataclass(frozen=True, eq=False)
class Visibility:
    """Which keys each query sees (the rule in the module docstring). A pytree: the per-token arrays are
    its leaves, `causal` and `window` are static.

    Fields (all optional; None means the term is absent):
      q_positions, kv_positions: [*batch, Lq] / [*batch, Lk] integer positions (default: arange; a KV
        cache before the new tokens passes its own). Leading axes of the per-token arrays broadcast.
      q_segment_ids, kv_segment_ids: [*batch, Lq] / [*batch, Lk] integer ids (both or neither).
      kv_mask: [*batch, Lk] bool, False = a key no query sees (padding).
      kv_global, q_global: [*batch, Lk] / [*batch, Lq] bool, tokens exempt from `window`.
      causal: keys at later positions are invisible (default True).
      window: a Python int >= 1, or None for no window.

    Example:
      >>> import jax.numpy as jnp
      >>> vis = Visibility(window=2)
      >>> vis.pairs(3, 3).astype(int)
      Array([[1, 0, 0],
             [1, 1, 0],
             [0, 1, 1]], dtype=int32)
    """

    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    kv_mask: jax.Array | None = None
    kv_global: jax.Array | None = None
    q_global: jax.Array | None = None
    causal: bool = True
    window: int | None = None

    def pairs(self, lq: int, lk: int) -> jax.Array:
        """[*batch, Lq, Lk] bool: whether query i sees key j, materialised (positions default to
        arange(Lq) and arange(Lk))."""
        qp = jnp.arange(lq) if self.q_positions is None else self.q_positions
        kp = jnp.arange(lk) if self.kv_positions is None else self.kv_positions
        qp, kp = qp[..., :, None], kp[..., None, :]
        visible = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), bool)
        if self.causal:
            visible &= kp <= qp
        if self.window is not None:
            near = (qp - kp < self.window) if self.causal else (jnp.abs(qp - kp) < self.window)
            if self.kv_global is not None:
                near |= self.kv_global[..., None, :]
            if self.q_global is not None:
                near |= self.q_global[..., :, None]
            visible &= near
        if self.q_segment_ids is not None or self.kv_segment_ids is not None:
            if self.q_segment_ids is None or self.kv_segment_ids is None:
                raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither.")
            visible &= self.q_segment_ids[..., :, None] == self.kv_segment_ids[..., None, :]
        if self.kv_mask is not None:
            visible &= self.kv_mask[..., None, :]
        return visible

    def checked(self, fn: str, batch: tuple[int, ...], lq: int, lk: int) -> Visibility:
        """This value with every per-token array checked and broadcast to [*batch, L], and `window` an
        int; raises an error naming the field and the fix otherwise. `fn` names the caller in errors."""
        if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
            raise ValueError(f"{fn}: pass both `q_segment_ids` and `kv_segment_ids`, or neither.")
        window = self.window
        if window is not None:
            try:
                window = operator.index(window)
            except TypeError:
                raise TypeError(f"{fn}: `window` must be a Python int or None, got {window!r}.") from None
            if window <= 0:
                raise ValueError(f"{fn}: `window` must be >= 1 (or None for no window), got {window}.")
        return Visibility(
            q_positions=_per_token("q_positions", self.q_positions, batch, lq, "Lq", "int"),
            kv_positions=_per_token("kv_positions", self.kv_positions, batch, lk, "Lk", "int"),
            q_segment_ids=_per_token("q_segment_ids", self.q_segment_ids, batch, lq, "Lq", "int"),
            kv_segment_ids=_per_token("kv_segment_ids", self.kv_segment_ids, batch, lk, "Lk", "int"),
            kv_mask=_per_token("kv_mask", self.kv_mask, batch, lk, "Lk", "bool"),
            kv_global=_per_token("kv_global", self.kv_global, batch, lk, "Lk", "bool"),
            q_global=_per_token("q_global", self.q_global, batch, lq, "Lq", "bool"),
            causal=self.causal,
            window=window,
        )

    def per_token_given(self) -> tuple[str, ...]:
        """The names of the per-token arrays that are set."""
        return tuple(name for name in _PER_TOKEN if getattr(self, name) is not None)


def _from_call(fn: str, arguments: Mapping[str, Any]) -> Visibility:
    """The visibility of an engine call, from the engine's `arguments` (its `locals()` on entry): the
    `visibility` value, or one built from the keyword form (`causal=`, `window=`, `kv_mask=`, ...: every
    engine takes `Visibility`'s fields as keywords too, and they are read here by name so that the
    engines do not each forward them); refuses both at once, so neither silently wins. `fn` names the
    engine in errors.

        >>> _from_call("attention", {"visibility": None, **vars(Visibility(window=4))}).window
        4
    """
    visibility = arguments["visibility"]
    keywords = {name: arguments[name] for name in _FIELDS}
    if visibility is None:
        return Visibility(**keywords)
    if not isinstance(visibility, Visibility):
        raise TypeError(
            f"{fn}: `visibility` must be a seqjax.scan.attention.Visibility or None, got "
            f"{type(visibility).__name__}; pass per-token arrays as keywords (e.g. kv_mask=...) instead."
        )
    defaults = Visibility()
    clashing = [name for name, value in keywords.items() if _differs(value, getattr(defaults, name))]
    if clashing:
        raise TypeError(
            f"{fn}: got both `visibility` and the keyword(s) {', '.join(clashing)}; set them in the "
            "Visibility value (dataclasses.replace(visibility, ...)) or pass only keywords."
        )
    return visibility


def _differs(value: Any, default: Any) -> bool:
    if default is None:
        return value is not None
    return bool(value) != default


def _per_token(name: str, x, batch: tuple[int, ...], length: int, which: str, kind: str) -> jax.Array | None:
    """Checks a [*batch, L] per-token array (leading axes may broadcast) and broadcasts it."""
    if x is None:
        return None
    x = jnp.asarray(x)
    expected = (*batch, length)
    if x.ndim == 0 or x.shape[-1] != length or x.ndim > len(expected):
        raise ValueError(
            f"attention: `{name}` has shape {x.shape}, expected {expected} ([*batch, {which}], one entry per "
            f"{'query' if which == 'Lq' else 'key'}; leading axes may broadcast)."
        )
    try:
        x = jnp.broadcast_to(x, expected)
    except ValueError:
        raise ValueError(
            f"attention: `{name}` has shape {x.shape}, which does not broadcast to {expected} "
            f"([*batch, {which}])."
        ) from None
    if kind == "bool" and x.dtype != jnp.bool_:
        raise TypeError(
            f"attention: `{name}` must be boolean, got dtype {x.dtype}; pass `{name}.astype(bool)`."
        )
    if kind == "int" and not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"attention: `{name}` must be an integer array, got dtype {x.dtype}; pass "
            f"`{name}.astype(jnp.int32)`."
        )
    return x
