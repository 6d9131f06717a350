"""Task heads: pooling + classification, RevIN + multi-horizon forecasting, next-token logits.

Pooling (features [*batch, time, d], mask [*batch, time] or None):
- `"mean"`: the mean over valid tokens (padded tokens get weight 0; a row with no valid token → 0).
- `"last"`: the features of the last valid token (the last True of the mask, or the last token). This is
  the summary of a left-to-right model.
- `"first"`: the first valid token, the summary of a right-to-left (reversed) model. A bidirectional
  model's tokens each see the whole sequence; "mean" is the usual choice there.
A row with no valid token pools to zeros.

RevIN (Kim et al. 2022): each series (batch row, variable) is normalised by the mean and standard
deviation of its valid look-back steps, std = sqrt(var + eps), then optionally scaled and shifted by a
learnable per-variable affine (init 1 and 0). The model forecasts in normalised units, and the forecast
is denormalised with the same statistics: y = (ŷ − β) / (γ + eps²) · std + mean. With the affine at its
init the forecast is therefore equivariant to shifting and (positively) scaling the input series.

The forecast head is *direct multi-horizon*: one linear map from the last valid token's features to
horizon × num_variables values. It works for any look-back length, with padding, and in streaming (one
observation at a time), which a flatten-the-whole-window head (PatchTST style) cannot.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.common.checks import check_flags
from seqjax.models.block import dense
from seqjax.models.partitioning import boxed

__all__ = [
    "POOLINGS",
    "ClassificationHead",
    "ForecastHead",
    "RevIN",
    "first_valid_index",
    "gather_time",
    "last_valid_index",
    "masked_mean",
    "pool",
]

POOLINGS = ("mean", "last", "first")


def _mask_or_ones(features: jax.Array, mask: jax.Array | None, owner: str = "pooling") -> jax.Array:
    """The [*batch, time] mask of `features` [*batch, time, d]: all True for None; any shape that
    broadcasts to [*batch, time] (e.g. [1, time] shared by the batch) is broadcast, as the cells do."""
    if mask is None:
        return jnp.ones(features.shape[:-1], bool)
    return check_flags(owner, "mask", mask, features.shape[:-1])


def masked_mean(features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """[*batch, time, d] → [*batch, d]: the mean over valid tokens (zeros for an all-padding row)."""
    m = _mask_or_ones(features, mask)
    summed = jnp.sum(jnp.where(m[..., None], features, 0), axis=-2, dtype=jnp.float32)
    count = jnp.maximum(jnp.sum(m, axis=-1, dtype=jnp.float32), 1.0)[..., None]
    return (summed / count).astype(features.dtype)


def last_valid_index(mask: jax.Array) -> jax.Array:
    """[*batch, time] bool → [*batch] int32: index of the last True, or -1 for a row with none."""
    mask = jnp.asarray(mask, bool)
    length = mask.shape[-1]
    idx = jnp.arange(length, dtype=jnp.int32)
    return jnp.max(jnp.where(mask, idx, -1), axis=-1)


def first_valid_index(mask: jax.Array) -> jax.Array:
    """[*batch, time] bool → [*batch] int32: index of the first True, or -1 for a row with none."""
    mask = jnp.asarray(mask, bool)
    length = mask.shape[-1]
    idx = jnp.arange(length, dtype=jnp.int32)
    first = jnp.min(jnp.where(mask, idx, length), axis=-1)
    return jnp.where(first == length, -1, first)


def gather_time(features: jax.Array, index: jax.Array) -> jax.Array:
    """features [*batch, time, d] at `index` [*batch] → [*batch, d]; index -1 gives zeros."""
    safe = jnp.maximum(index, 0)
    picked = jnp.take_along_axis(features, safe[..., None, None], axis=-2)[..., 0, :]
    return jnp.where((index >= 0)[..., None], picked, jnp.zeros((), features.dtype))


def pool(features: jax.Array, mask: jax.Array | None = None, kind: str = "mean") -> jax.Array:
    """Pools [*batch, time, d] → [*batch, d] with "mean", "last" or "first" (see the module docstring)."""
    if kind == "mean":
        return masked_mean(features, mask)
    m = _mask_or_ones(features, mask)
    if kind == "last":
        return gather_time(features, last_valid_index(m))
    if kind == "first":
        return gather_time(features, first_valid_index(m))
    raise ValueError(f"unknown pooling {kind!r}; choose one of {POOLINGS}.")


class ClassificationHead(nn.Module):
    """Pooled features → logits [*batch, num_classes]; kernel axes ('embed', 'classes')."""

    num_classes: int
    pooling: str = "mean"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"ClassificationHead: unknown pooling {self.pooling!r}; choose one of {POOLINGS}."
            )
        self.out = dense(
            self.num_classes,
            ("embed", "classes"),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return self.out(pool(features, mask, self.pooling)).astype(jnp.float32)

    def from_pooled(self, pooled: jax.Array) -> jax.Array:
        return self.out(pooled).astype(jnp.float32)


class RevIN(nn.Module):
    """Reversible instance normalisation over the time axis of [*batch, time, num_variables] series.

    `statistics(x, mask)` → (mean, std), each [*batch, num_variables], over valid steps only.
    `normalize(x, stats, mask)` → normalised x (zero at padded steps); works on one step [*batch, V] too.
    `denormalize(y, stats)` maps a forecast [*batch, horizon, V] back to the input's units.
    """

    num_variables: int
    affine: bool = True
    eps: float = 1e-5

    def setup(self) -> None:
        if self.affine:
            shape = (self.num_variables,)
            self.weight = self.param("weight", boxed(nn.initializers.ones, ("variables",), "no_decay"), shape)
            self.bias = self.param("bias", boxed(nn.initializers.zeros, ("variables",), "no_decay"), shape)

    def statistics(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x = jnp.asarray(x, jnp.float32)
        m = _mask_or_ones(x, mask, "RevIN")[..., None]
        count = jnp.maximum(jnp.sum(m, axis=-2, dtype=jnp.float32), 1.0)
        mean = jnp.sum(jnp.where(m, x, 0.0), axis=-2) / count
        var = jnp.sum(jnp.where(m, jnp.square(x - mean[..., None, :]), 0.0), axis=-2) / count
        return mean, jnp.sqrt(var + self.eps)

    def normalize(
        self, x: jax.Array, stats: tuple[jax.Array, jax.Array], mask: jax.Array | None = None
    ) -> jax.Array:
        mean, std = stats
        x = jnp.asarray(x, jnp.float32)
        if x.ndim == mean.ndim + 1:  # a sequence: stats broadcast over time
            mean, std = mean[..., None, :], std[..., None, :]
        out = (x - mean) / std
        if self.affine:
            out = out * self.weight + self.bias
        if mask is not None:
            out = jnp.where(_mask_or_ones(x, mask, "RevIN")[..., None], out, 0.0)
        return out

    def denormalize(self, y: jax.Array, stats: tuple[jax.Array, jax.Array]) -> jax.Array:
        mean, std = stats
        y = jnp.asarray(y, jnp.float32)
        if self.affine:
            y = (y - self.bias) / (self.weight + self.eps * self.eps)
        return y * std[..., None, :] + mean[..., None, :]


class ForecastHead(nn.Module):
    """Features [*batch, d] → forecast [*batch, horizon, num_variables] (one linear map)."""

    horizon: int
    num_variables: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        self.out = dense(
            self.horizon * self.num_variables,
            ("embed", "forecast"),
            use_bias=True,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def __call__(self, features: jax.Array) -> jax.Array:
        y = self.out(features).astype(jnp.float32)
        return y.reshape(*y.shape[:-1], self.horizon, self.num_variables)
