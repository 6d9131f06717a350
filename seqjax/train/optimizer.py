"""optax optimizers from config data, with the parameter groups the cells and models declare.

Groups (a tree of strings matching the params, from `seqjax.models.param_groups`):
- "default": the configured optimizer with weight decay;
- "no_decay": the same without weight decay (norm scales, biases, embeddings if configured);
- "ssm": the SSM dynamics (A, Δ, λ) at their own learning rate and without weight decay, as S4, S5,
  LRU and Mamba train them;
- "frozen": never updated (e.g. a Performer's random features).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import optax

__all__ = ["GROUPS", "OPTIMIZERS", "SCHEDULES", "OptimizerConfig", "make_optimizer", "make_schedule"]

GROUPS = ("default", "no_decay", "ssm", "frozen")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Every optimizer option and its default (the `optimizer` section of a run config).

    make_optimizer(OptimizerConfig(name="lion", learning_rate=3e-4), param_groups)
    """

    name: str = dataclasses.field(default="adamw", metadata={"choices": OPTIMIZERS})
    learning_rate: float = 1e-3
    schedule: str = dataclasses.field(default="cosine", metadata={"choices": SCHEDULES})  # after warmup
    warmup_steps: int = 0
    total_steps: int = 1000
    end_learning_rate_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    clip_norm: float | None = None
    grad_accum_steps: int = 1
    ssm_learning_rate: float | None = None  # None: learning_rate


_DEFAULTS: dict[str, Any] = dataclasses.asdict(OptimizerConfig())


def _options(config: Any) -> dict[str, Any]:
    if isinstance(config, OptimizerConfig):
        config = dataclasses.asdict(config)
    given = dict(config.items() if hasattr(config, "items") else config)
    unknown = sorted(set(given) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"optimizer config: unknown key(s) {unknown}; known keys are {sorted(_DEFAULTS)}.")
    options = {**_DEFAULTS, **given}
    if options["name"] not in OPTIMIZERS:
        raise ValueError(f"optimizer config: name must be one of {OPTIMIZERS}, got {options['name']!r}.")
    if options["schedule"] not in SCHEDULES:
        raise ValueError(
            f"optimizer config: schedule must be one of {SCHEDULES}, got {options['schedule']!r}."
        )
    if int(options["grad_accum_steps"]) < 1:
        raise ValueError(
            f"optimizer config: grad_accum_steps must be >= 1, got {options['grad_accum_steps']}."
        )
    if int(options["warmup_steps"]) > int(options["total_steps"]):
        raise ValueError(
            f"optimizer config: warmup_steps ({options['warmup_steps']}) exceeds total_steps "
            f"({options['total_steps']})."
        )
    return options


def make_schedule(peak: float, options: Mapping[str, Any]) -> optax.Schedule:
    """Linear warmup to `peak`, then cosine or linear decay to `peak * end_learning_rate_fraction`.

    Steps count optimizer updates (after gradient accumulation), so the schedule does not depend on
    `grad_accum_steps`.
    """
    warmup = int(options["warmup_steps"])
    total = int(options["total_steps"])
    end = peak * float(options["end_learning_rate_fraction"])
    kind = options["schedule"]
    if kind == "constant":
        decay = optax.constant_schedule(peak)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=end / peak if peak else 0.0)
    else:
        decay = optax.linear_schedule(peak, end, max(total - warmup, 1))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _base(
    options: Mapping[str, Any], learning_rate: optax.Schedule, weight_decay: float
) -> optax.GradientTransformation:
    name = options["name"]
    if name in ("adamw", "adam"):
        return optax.adamw(
            learning_rate,
            b1=options["b1"],
            b2=options["b2"],
            eps=options["eps"],
            weight_decay=weight_decay if name == "adamw" else 0.0,
        )
    if name == "lion":
        return optax.lion(learning_rate, b1=options["b1"], b2=options["b2"], weight_decay=weight_decay)
    sgd = optax.sgd(learning_rate, momentum=options["momentum"] or None, nesterov=bool(options["nesterov"]))
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
    return sgd


def make_optimizer(config: Any, param_groups: Any = None) -> optax.GradientTransformation:
    """The optimizer a config describes.

    Args:
      config: an `OptimizerConfig`, or a mapping with some of its keys (unknown keys are an error).
      param_groups: a tree of group names matching the params (see module docstring); None puts every
        parameter in "default".
    """
    options = _options(config)
    peak = float(options["learning_rate"])
    ssm_peak = float(options["ssm_learning_rate"]) if options["ssm_learning_rate"] is not None else peak
    weight_decay = float(options["weight_decay"])
    transforms = {
        "default": _base(options, make_schedule(peak, options), weight_decay),
        "no_decay": _base(options, make_schedule(peak, options), 0.0),
        "ssm": _base(options, make_schedule(ssm_peak, options), 0.0),
        "frozen": optax.set_to_zero(),
    }
    if param_groups is None:
        update = transforms["default"]
    else:
        labels = jax.tree.leaves(param_groups)
        unknown = sorted(set(labels) - set(GROUPS))
        if unknown:
            raise ValueError(f"param_groups: unknown group(s) {unknown}; groups are {GROUPS}.")
        update = optax.multi_transform(transforms, param_groups)
    chain = [update]
    if options["clip_norm"]:
        chain.insert(0, optax.clip_by_global_norm(float(options["clip_norm"])))
    tx = optax.chain(*chain) if len(chain) > 1 else update
    if int(options["grad_accum_steps"]) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(options["grad_accum_steps"]))
    return tx
