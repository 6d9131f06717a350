"""Full models, each a `Backbone` plus a head, and `build_task_model`, the one function that builds them.

- `LanguageModel`: tokens [*batch, time] → next-token logits [*batch, time, vocab] (optionally tied to
  the embedding table).
- `SequenceClassifier`: inputs [*batch, time, ...] → logits [*batch, num_classes] (masked mean, last- or
  first-valid-token pooling).
- `Forecaster`: series [*batch, time, num_variables] → forecast [*batch, horizon, num_variables], with
  RevIN and a direct multi-horizon head on the last valid token; with `per_position` (segment
  recurrence on a series stream), a forecast at every position [*batch, time, horizon, num_variables].

The step-mode methods (`prefill`, `step`) back `seqjax.models.generation`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.models.backbone import Backbone, Cache, check_causal, check_streamable
from seqjax.models.block import dense
from seqjax.models.config import BackboneConfig
from seqjax.models.heads import ClassificationHead, ForecastHead, RevIN, pool

__all__ = [
    "HEAD_KEYS",
    "TASKS",
    "Forecaster",
    "LanguageModel",
    "SequenceClassifier",
    "build_task_model",
    "from_config",
]


def _dtypes(config: BackboneConfig) -> tuple[Any, Any]:
    return (None if config.dtype == "float32" else jnp.dtype(config.dtype)), jnp.dtype(config.param_dtype)


class _StepMixin:
    @nn.nowrap
    def initial_cache(self, batch_shape: Sequence[int] = ()) -> Cache:
        return tuple(cell.initial_state(tuple(batch_shape)) for cell in self.config.layer_cells())

    @nn.nowrap
    def check_streamable(self) -> None:
        check_streamable(self.config, type(self).__name__)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array]:
        return Backbone(self.config, parent=None).example_inputs()


class LanguageModel(_StepMixin, nn.Module):
    """Backbone + next-token head. `tie_embeddings` reuses the embedding table as the output map.

    `vocab_size` of the output is `config.vocab_size` (16 for the DNA encoder's id vocabulary). A layer
    whose cell can never be causal (`Cell.causal_unsupported`, e.g. Linformer) is refused when the
    model is built.
    """

    config: BackboneConfig
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        # At construction, not at `init`: a cell that can never be causal (Linformer) is a config error.
        if isinstance(self.config, BackboneConfig):
            check_causal(self.config, type(self).__name__)
        super().__post_init__()

    def setup(self) -> None:
        c = self.config
        if not c.vocab_size:
            raise ValueError("LanguageModel needs config.vocab_size.")
        if self.tie_embeddings and c.encoder != "embedding":
            raise ValueError(f"LanguageModel: tie_embeddings needs encoder='embedding', got {c.encoder!r}.")
        self.backbone = Backbone(c)
        dtype, pdtype = _dtypes(c)
        self.lm_head = (
            None
            if self.tie_embeddings
            else dense(int(c.vocab_size), ("embed", "vocab"), use_bias=False, dtype=dtype, param_dtype=pdtype)
        )

    def logits(self, features: jax.Array) -> jax.Array:
        if self.lm_head is None:
            return self.backbone.encoder.attend(features)
        return self.lm_head(features).astype(jnp.float32)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """tokens [*batch, time] → logits [*batch, time, vocab] (float32); logits[t] predicts token t+1."""
        features, _ = self.backbone(tokens, resets=resets, mask=mask, deterministic=deterministic)
        return self.logits(features)

    def forward(
        self,
        tokens: jax.Array,
        cache: Cache | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, Cache]:
        """Like `__call__`, from an optional `cache`, also returning the cache after the last valid token."""
        features, cache = self.backbone(tokens, cache, resets=resets, mask=mask, deterministic=deterministic)
        return self.logits(features), cache

    def prefill(self, tokens: jax.Array, *, mask: jax.Array | None = None) -> tuple[Cache, jax.Array]:
        """(cache, logits at each row's last valid token [*batch, vocab])."""
        features, cache = self.backbone(tokens, mask=mask)
        return cache, self.logits(pool(features, mask, "last"))

    def step(
        self, token: jax.Array, cache: Cache, *, mask: jax.Array | None = None
    ) -> tuple[Cache, jax.Array]:
        """token [*batch] → (cache, logits [*batch, vocab])."""
        cache, features = self.backbone.step(token, cache, mask=mask)
        return cache, self.logits(features)


class SequenceClassifier(_StepMixin, nn.Module):
    """Backbone + pooling + linear: inputs → logits [*batch, num_classes]. `pooling`: mean / last / first."""

    config: BackboneConfig
    num_classes: int = 2
    pooling: str = "mean"

    def setup(self) -> None:
        dtype, pdtype = _dtypes(self.config)
        self.backbone = Backbone(self.config)
        self.head = ClassificationHead(self.num_classes, self.pooling, dtype=dtype, param_dtype=pdtype)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """`resets` split packed segments inside the backbone; pooling still spans the whole row."""
        features, _ = self.backbone(inputs, resets=resets, mask=mask, deterministic=deterministic)
        return self.head(features, mask)

    def prefill(self, inputs: jax.Array, *, mask: jax.Array | None = None) -> tuple[Cache, jax.Array]:
        """(cache, logits) with last-token pooling only: a mean cannot be carried in the cell states."""
        if self.pooling != "last":
            raise TypeError(
                f"SequenceClassifier: step mode needs pooling='last' (got {self.pooling!r}); use the "
                f"forward pass."
            )
        features, cache = self.backbone(inputs, mask=mask)
        return cache, self.head.from_pooled(pool(features, mask, "last"))

    def step(
        self, inputs: jax.Array, cache: Cache, *, mask: jax.Array | None = None
    ) -> tuple[Cache, jax.Array]:
        if self.pooling != "last":
            raise TypeError(
                f"SequenceClassifier: step mode needs pooling='last' (got {self.pooling!r}); use the "
                f"forward pass."
            )
        cache, features = self.backbone.step(inputs, cache, mask=mask)
        return cache, self.head.from_pooled(features)


class Forecaster(_StepMixin, nn.Module):
    """RevIN → linear encoder → backbone → direct multi-horizon head on the last valid token.

    `config.encoder` must be "linear" with `input_size` = number of variables. The step-mode cache is
    `(layer_states, revin_stats)`; see `seqjax.models.generation.forecast_step`.

    `per_position` (the stream form, set by the trainer with `segment_recurrence`): the same head on
    every position's features, series [*batch, time, V] → forecasts [*batch, time, horizon, V], the
    forecast at t being the `horizon` steps after t, as `stream_forecasts` produces them step by step.
    It has no RevIN (`revin` must be False): RevIN's statistics are those of the whole input sequence,
    so a forecast at t would read the segment's later steps (future values), and a stream carried
    across segments has no fixed window to take them from. The stream model relies on the split's own
    standardisation (per-variable training statistics) instead. Default: the last-token head.
    """

    config: BackboneConfig
    horizon: int = 1
    revin: bool = True
    revin_affine: bool = True
    revin_eps: float = 1e-5
    per_position: bool = False

    def setup(self) -> None:
        c = self.config
        if c.encoder != "linear":
            raise ValueError(
                f"Forecaster needs encoder='linear' with input_size = number of variables, got {c.encoder!r}."
            )
        if self.per_position and self.revin:
            raise ValueError(
                "Forecaster(per_position=True) forecasts at every position, where RevIN's statistics over "
                "the sequence would read future steps; set revin=False (the stream relies on the split's "
                "standardisation)."
            )
        dtype, pdtype = _dtypes(c)
        self.backbone = Backbone(c)
        self.norm = (
            RevIN(int(c.input_size), affine=self.revin_affine, eps=self.revin_eps) if self.revin else None
        )
        self.head = ForecastHead(self.horizon, int(c.input_size), dtype=dtype, param_dtype=pdtype)

    @property
    def num_variables(self) -> int:
        return int(self.config.input_size)

    def statistics(self, series: jax.Array, mask: jax.Array | None = None) -> Any:
        """RevIN's (mean, std) [*batch, num_variables] over the valid steps; None without RevIN."""
        return None if self.norm is None else self.norm.statistics(series, mask)

    def __call__(
        self,
        series: jax.Array,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
        stats: Any = None,
    ) -> jax.Array:
        """series [*batch, time, V] → forecast [*batch, horizon, V] for the steps after the last valid one
        (`per_position`: [*batch, time, horizon, V], the forecast after each step).

        `stats` overrides RevIN's statistics (default: those of `series`' valid steps).
        """
        forecast, _ = self.forward(series, resets=resets, mask=mask, deterministic=deterministic, stats=stats)
        return forecast

    def forward(
        self,
        series: jax.Array,
        cache: Cache | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
        stats: Any = None,
    ) -> tuple[jax.Array, tuple[Cache, Any]]:
        series = jnp.asarray(series, jnp.float32)
        if stats is None:
            stats = self.statistics(series, mask)
        x = series if self.norm is None else self.norm.normalize(series, stats, mask)
        features, layers = self.backbone(x, cache, resets=resets, mask=mask, deterministic=deterministic)
        y = self.head(features if self.per_position else pool(features, mask, "last"))
        if self.norm is not None:
            y = self.norm.denormalize(y, stats)
        return y, (layers, stats)

    def prefill(self, series: jax.Array, *, mask: jax.Array | None = None) -> tuple[Any, jax.Array]:
        """((layer_states, revin_stats), forecast at each row's last valid step); the stats stay fixed
        while streaming."""
        forecast, cache = self.forward(series, mask=mask)
        if self.per_position:  # the forecast after the last valid step
            flat = forecast.reshape(*forecast.shape[:-2], -1)
            forecast = pool(flat, mask, "last").reshape(*flat.shape[:-2], *forecast.shape[-2:])
        return cache, forecast

    def step(
        self, observation: jax.Array, cache: Any, *, mask: jax.Array | None = None
    ) -> tuple[Any, jax.Array]:
        """observation [*batch, V] → (cache, forecast [*batch, horizon, V]) after that observation."""
        layers, stats = cache
        x = jnp.asarray(observation, jnp.float32)
        if self.norm is not None:
            if stats is None:
                raise ValueError(
                    "Forecaster.step with RevIN needs statistics: prefill on a look-back window first, or "
                    "build the cache with generation.init_cache(model, batch_shape, stats=...)."
                )
            x = self.norm.normalize(x, stats)
        layers, features = self.backbone.step(x, layers, mask=mask)
        y = self.head(features)
        if self.norm is not None:
            y = self.norm.denormalize(y, stats)
        return (layers, stats), y


#: One word per task: the trainer's `config.task`, its losses and metrics use the same words.
TASKS: dict[str, type[nn.Module]] = {
    "backbone": Backbone,
    "lm": LanguageModel,
    "classification": SequenceClassifier,
    "forecast": Forecaster,
}
#: The task's own (head) options; every other key describes the backbone.
HEAD_KEYS: dict[str, tuple[str, ...]] = {
    "backbone": (),
    "lm": ("tie_embeddings",),
    "classification": ("num_classes", "pooling"),
    "forecast": ("horizon", "revin", "revin_affine", "revin_eps", "per_position"),
}


def _checked_task(task: str, where: str) -> str:
    task = str(task).lower()
    if task not in TASKS:
        close = difflib.get_close_matches(task, list(TASKS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown task {task!r}; choose one of {sorted(TASKS)}.{hint}")
    return task


def build_task_model(
    task: str, backbone: Mapping[str, Any] | BackboneConfig, head: Mapping[str, Any] | None = None
) -> nn.Module:
    """The model for `task` (a `TASKS` word): its backbone from `BackboneConfig` values, its head from
    the task's `HEAD_KEYS` options. A forecaster's encoder defaults to "linear".

        model = build_task_model("classification", {"d_model": 64, "encoder": "dna"}, {"num_classes": 4})
    """
    task = _checked_task(task, "build_task_model")
    head = dict(head or {})
    unknown = sorted(set(head) - set(HEAD_KEYS[task]))
    if unknown:
        raise ValueError(
            f"build_task_model: unknown {task!r} head option(s) {unknown}; known: {list(HEAD_KEYS[task])}."
        )
    if not isinstance(backbone, BackboneConfig):
        values = dict(backbone.to_dict() if hasattr(backbone, "to_dict") else backbone)
        if task == "forecast":
            values.setdefault("encoder", "linear")
        backbone = BackboneConfig.from_dict(values)
    return TASKS[task](backbone, **head)


def from_config(cfg: Any) -> nn.Module:
    """Builds a model from one flat dict / ml_collections ConfigDict: `build_task_model` with the keys split.

    `task` picks the model (see `TASKS`; default "backbone"); the task's own keys (`HEAD_KEYS`; for
    "forecast" also `num_variables` = the linear encoder's input_size) go to the head, every other key to
    `BackboneConfig`.
    """
    values = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    task = _checked_task(values.pop("task", "backbone"), "from_config")
    head = {k: values.pop(k) for k in HEAD_KEYS[task] if k in values}
    if task == "forecast" and "num_variables" in values:
        nv = values.pop("num_variables")
        if values.setdefault("input_size", nv) != nv:
            raise ValueError(f"from_config: num_variables={nv} but input_size={values['input_size']}.")
    return build_task_model(task, values, head)
