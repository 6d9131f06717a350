"""Step mode for whole models: prefill, decode one token at a time, generate, stream forecasts.

    cache, logits = prefill(model, variables, prompt, mask=prompt_mask)   # each layer's `apply`
    cache, logits = decode_step(model, variables, cache, token)            # each cell's `step`
    tokens = generate(model, variables, prompt, num_tokens=32, key=key, top_k=8)

The cache is the tuple of per-layer cell states (for a `Forecaster`, `(layer_states, revin_stats)`); its
size does not grow with the context for recurrent cells (attention cells carry their KV cache). Prefill
with a right-padded prompt (`mask`) leaves each row's cache at its own last valid token, so decoding
continues every row from where its prompt ended.

Models whose cells cannot run left to right token by token (bidirectional, reversed, non-causal) raise
a TypeError naming the layer and the cell.

`params` may be the variables `init` returned (`{"params": ...}`, boxed or not) or the `"params"` tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqjax.models.tasks import Forecaster, LanguageModel

__all__ = [
    "decode_step",
    "forecast_step",
    "generate",
    "init_cache",
    "prefill",
    "sample_token",
    "stream_forecasts",
]


def _variables(params: Any) -> Any:
    if isinstance(params, Mapping) and "params" in params:
        return params
    return {"params": params}


def _check(model: nn.Module) -> None:
    check = getattr(model, "check_streamable", None)
    if check is None or not callable(getattr(model, "step", None)):
        raise TypeError(f"{type(model).__name__} has no step mode.")
    check()


def init_cache(model: nn.Module, batch_shape: Sequence[int] = (), *, stats: Any = None) -> Any:
    """The cache before any token: every layer's initial state (needs no parameters).

    For a `Forecaster` the cache is `(layer_states, stats)`, `stats` being RevIN's (mean, std)
    [*batch, num_variables] to normalise with (required when the model uses RevIN).
    """
    _check(model)
    layers = model.initial_cache(tuple(batch_shape))
    if isinstance(model, Forecaster):
        return layers, stats
    return layers


def prefill(
    model: nn.Module, params: Any, inputs: jax.Array, *, mask: jax.Array | None = None
) -> tuple[Any, Any]:
    """Runs the whole prompt through every layer's `apply` from initial states.

    Returns (cache, last_output): the output at each row's last valid token (LM: logits [*batch, vocab];
    Forecaster: the forecast; Backbone: features).
    """
    _check(model)
    return model.apply(_variables(params), inputs, mask=mask, method="prefill")


def decode_step(
    model: nn.Module, params: Any, cache: Any, inputs: jax.Array, *, mask: jax.Array | None = None
) -> tuple[Any, Any]:
    """One token (or observation) per row through every cell's `step`: returns (cache, output)."""
    _check(model)
    return model.apply(_variables(params), inputs, cache, mask=mask, method="step")


def sample_token(
    logits: jax.Array,
    key: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
) -> jax.Array:
    """logits [*batch, vocab] → int32 tokens [*batch]: argmax, or a sample at `temperature` from the top k."""
    logits = jnp.asarray(logits, jnp.float32)
    if greedy or temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        kth = lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def generate(
    model: LanguageModel,
    params: Any,
    prompt: jax.Array,
    *,
    num_tokens: int,
    key: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Samples `num_tokens` continuations of `prompt` [*batch, time]: returns int32 [*batch, num_tokens].

    Prefill, then a `lax.scan` of decode steps: shapes are fixed, so the whole call jits (with
    `num_tokens`, `top_k`, `greedy` and `temperature` static). `mask` marks a right-padded prompt.
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(f"generate needs a LanguageModel, got {type(model).__name__}.")
    if int(num_tokens) < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
    sample = lambda logits, k: sample_token(logits, k, temperature=temperature, top_k=top_k, greedy=greedy)
    cache, logits = prefill(model, params, prompt, mask=mask)
    keys = jax.random.split(key, int(num_tokens))
    first = sample(logits, keys[0])

    def body(carry: tuple[Any, jax.Array], k: jax.Array) -> tuple[tuple[Any, jax.Array], jax.Array]:
        cache, token = carry
        cache, logits = decode_step(model, params, cache, token)
        token = sample(logits, k)
        return (cache, token), token

    _, rest = lax.scan(body, (cache, first), keys[1:])
    tokens = jnp.concatenate([first[None], rest], axis=0)
    return jnp.moveaxis(tokens, 0, -1)


def forecast_step(
    model: Forecaster, params: Any, cache: Any, observation: jax.Array, *, mask: jax.Array | None = None
) -> tuple[Any, jax.Array]:
    """Feeds one observation [*batch, V]; returns (cache, the current forecast [*batch, horizon, V]).

    RevIN's statistics stay those in the cache (from `prefill`'s look-back window, or given to
    `init_cache`): renormalising at every step would change every earlier normalised input.
    """
    if not isinstance(model, Forecaster):
        raise TypeError(f"forecast_step needs a Forecaster, got {type(model).__name__}.")
    return decode_step(model, params, cache, observation, mask=mask)


def stream_forecasts(
    model: Forecaster, params: Any, cache: Any, series: jax.Array, *, mask: jax.Array | None = None
) -> tuple[Any, jax.Array]:
    """`forecast_step` over series [*batch, time, V] with `lax.scan`.

    Returns (cache, forecasts [*batch, time, horizon, V]): the forecast after each observation.
    """
    series = jnp.asarray(series, jnp.float32)
    t_axis = series.ndim - 2
    xs = jnp.moveaxis(series, t_axis, 0)
    ms = None if mask is None else jnp.moveaxis(jnp.asarray(mask, bool), t_axis, 0)

    def body(cache: Any, inp: Any) -> tuple[Any, jax.Array]:
        obs, m = inp
        return forecast_step(model, params, cache, obs, mask=m)

    cache, forecasts = lax.scan(body, cache, (xs, ms))
    return cache, jnp.moveaxis(forecasts, 0, t_axis)
