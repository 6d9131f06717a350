"""Matched models (issue 15, item 2): parameter counts within a tolerance of one target, solved per model.

`count_parameters(config)` counts a task model's parameters from its run config without allocating them
(`jax.eval_shape` over the model's `init`): the number the trainer reports as `num_params`.

`match_parameters(configs, target=...)` turns one knob per model until every count is within
`tolerance` of the target (the largest model's count by default, or a named reference's):

- knob "mlp" (the default): the MLP's hidden units, `model.mlp_expansion` = units / d_model. The count
  is affine in the units (gate, up and down projections), so two probes give the exact solution.
- knob "cell": the width of the mixer cell, when the MLP cannot reach the target (the mixer alone
  exceeds it even with a one-unit MLP, or the config has no MLP, `mlp_expansion=0`), or when asked for;
  the MLP then stays at the config's own expansion.
  The field is the cell's `hidden_size` (LSTM, GRU, E-LSTM), `state_size` (S5, LRU, whose hidden_size
  must equal d_model), `head_dim` with `num_heads` kept (linear attention, GLA, attention, sliding
  window) or `expand` (Mamba), searched by integer bisection
  on one side of the default width (the count is monotone there; at the default the block's output
  projection disappears, so the count is not monotone across it).

Parameters on a sequence-length axis (`LENGTH_AXES`: the Linformer's projections E and F, k x L each) are
left out of the match by default (`excluding_axes`) and reported as each model's `unmatched` count. Why:
they grow with the length the model is built for, so with them in the count the target would follow the
Linformer's length (at look-backs 96, 512 and 2048 of a forecasting comparison the largest model was the
Linformer at 194k, 438k and 1.22M parameters), and every other model would be a different size at each
length: a comparison across lengths would then compare model sizes too. Without them one target holds
at every length, and the Linformer carries its projections on top (the tables say how many).

A model that no knob brings within the tolerance is a `ValueError` naming it and the gap.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from seqjax import models
from seqjax.cells import registry
from seqjax.models.block import mlp_hidden_size
from seqjax.models.config import build_mixer, normalize_mixers
from seqjax.train.run_config import RunConfig, resolve

__all__ = [
    "CELL_WIDTH_FIELDS",
    "KNOBS",
    "LENGTH_AXES",
    "MatchedModel",
    "count_parameters",
    "match_parameters",
]

#: The knobs `match_parameters` turns: the MLP's width, or the mixer cell's.
KNOBS = ("mlp", "cell")
#: The cell fields that set a cell's width, in order: the first that the cell has and that can move
#: (an SSM's hidden_size must equal d_model, so S5 and LRU move their state_size).
CELL_WIDTH_FIELDS = ("hidden_size", "head_dim", "expand", "state_size")
#: Logical axes of parameters whose size is the sequence length (module docstring): out of the match.
LENGTH_AXES = ("length",)
#: Width fields that move in steps: S5's state comes in complex-conjugate pairs.
_WIDTH_STEPS = {"state_size": 2}
#: How far above its default a cell width is searched when the target is larger (no MLP to grow).
_MAX_GROWTH = 16


@dataclasses.dataclass(frozen=True)
class MatchedModel:
    """One model of a match: its count, the count over the target, and the knob that set it.

    `knob` is "mlp", "cell" or "reference" (the target model, left as it was); `override` is the dotted
    config key and value that reproduce the match on the command line (`model.mlp_expansion=2.5`).
    `parameters` is the matched count; `unmatched` the parameters left out of it (on `LENGTH_AXES`), so
    the model has `parameters + unmatched` in all (`total`).
    """

    name: str
    parameters: int
    target: int
    knob: str
    key: str
    value: float | int
    unmatched: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.unmatched

    @property
    def ratio(self) -> float:
        return self.parameters / self.target

    @property
    def override(self) -> str:
        return f"{self.key}={self.value}"


def _task_model(config: Any, input_size: int | None, horizon: int | None) -> Any:
    run = resolve(config)
    backbone, head = dict(run.model), dict(run.head)
    if run.task == "forecast":
        # What the trainer reads off the data (trainer._fit_to_data): the variables and the horizon.
        backbone["encoder"] = "linear"
        if input_size is not None:
            backbone["input_size"] = int(input_size)
        if backbone.get("input_size") is None:
            raise ValueError(
                "count_parameters: a forecast config has no model.input_size (the trainer takes it from the "
                "data); pass input_size=<number of variables>."
            )
        if horizon is not None:
            head["horizon"] = int(horizon)
        if head.get("horizon") is None:
            head["horizon"] = run.data.options.get("horizon")
        if head.get("horizon") is None:
            raise ValueError(
                "count_parameters: a forecast config has neither head.horizon nor data.horizon; "
                "pass horizon=<steps ahead>."
            )
    return models.build_task_model(run.task, backbone, head)


def count_parameters(
    config: Any,
    *,
    input_size: int | None = None,
    horizon: int | None = None,
    excluding_axes: Sequence[str] = (),
) -> int:
    """Parameters of the model a run config (ConfigDict, nested dict or `RunConfig`) builds, unallocated.

    A forecast config needs `input_size` (the data's variables) unless its model section sets it.
    `excluding_axes`: parameters with any of these logical axes are not counted (`LENGTH_AXES`: those
    that grow with the sequence length).

    >>> from seqjax.config import load_config_file
    >>> count_parameters(load_config_file("configs/genomic.py", "lstm,task=species"))
    165764
    >>> linformer = load_config_file("configs/genomic.py", "linformer,task=species,length=1024")
    >>> count_parameters(linformer) - count_parameters(linformer, excluding_axes=LENGTH_AXES)
    524288

    (the Linformer's E: 256 x 1024 per layer, 2 layers).
    """
    return _counts(config, input_size, horizon, excluding_axes)[0]


def _counts(
    config: Any, input_size: int | None, horizon: int | None, excluding_axes: Sequence[str]
) -> tuple[int, int]:
    """(the parameters off `excluding_axes`, those on them), from one abstract init."""
    import flax.linen as nn  # (flax is this module's dependency through seqjax.models)

    model = _task_model(config, input_size, horizon)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs()))
    left_out = set(excluding_axes)
    counted = excluded = 0
    for leaf in jax.tree.leaves(shapes["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        boxed = isinstance(leaf, nn.Partitioned)
        size = math.prod((leaf.value if boxed else leaf).shape)
        if boxed and left_out.intersection(leaf.names):
            excluded += size
        else:
            counted += size
    return counted, excluded


# -- editing one model value of a config, of whichever kind it came as ------------------------------------
def _model_values(config: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(resolve(config).model))


def _with_model(config: Any, model: dict[str, Any]) -> Any:
    """`config` with its model section replaced, returned as the same kind (ConfigDict, dict, RunConfig)."""
    if isinstance(config, RunConfig):
        return dataclasses.replace(config, model=types.MappingProxyType(model))
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict: keep its references and locks
        out = copy.deepcopy(config)
        with out.unlocked():
            for key, value in model.items():
                out.model[key] = value
        return out
    out = copy.deepcopy(dict(config))
    out["model"] = model
    return out


def _single_mixer(model: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The (key, dict spec) of the one mixer a config's pattern uses; a cell knob needs exactly one."""
    pattern = model.get("pattern", ())
    pattern = [p.strip() for p in pattern.split(",")] if isinstance(pattern, str) else list(pattern)
    used = list(dict.fromkeys(pattern))
    if len(used) != 1:
        raise ValueError(
            f"match_parameters: model {name!r} mixes {used}; knob='cell' needs a pattern of one mixer."
        )
    mixers = dict(model.get("mixers") or {})
    spec = mixers.get(used[0], used[0])
    if isinstance(spec, str):
        spec = {"cell": spec}
    return used[0], dict(spec)


def _cell_widths(model: dict[str, Any], name: str) -> tuple[str, dict[str, Any], Any, list[str]]:
    """(mixer key, its dict spec, the built cell, the width fields it has) of the config's mixer cell."""
    key, spec = _single_mixer(model, name)
    ((_, normalized),) = normalize_mixers({key: spec})
    cell = build_mixer(normalized, d_model=int(model["d_model"]), where=f"model {name!r}, mixer {key!r}")
    fields = {f.name for f in dataclasses.fields(registry.lookup(spec["cell"])) if f.init}
    if "num_heads" not in fields:  # Mamba-2's head_dim splits a width that `expand` sets: not a width
        fields.discard("head_dim")
    return key, spec, cell, [f for f in CELL_WIDTH_FIELDS if f in fields]


def _with_width(
    model: dict[str, Any], key: str, spec: dict[str, Any], cell: Any, field: str, width: int
) -> dict:
    """The model values with the mixer's `field` set to `width` (attention keeps its number of heads)."""
    new_spec = {**spec, field: int(width)}
    if field == "head_dim":
        new_spec["num_heads"] = int(cell.num_heads)  # only the heads' width moves
    out = copy.deepcopy(model)
    out["mixers"] = {**dict(model.get("mixers") or {}), key: new_spec}
    return out


def _nearest(widths: range, target: int, count: Callable[[int], int]) -> int:
    """The width in `widths` (count increasing over it) whose count is nearest `target`; bisection."""
    i = bisect.bisect_left(widths, target, key=count)
    candidates = [widths[j] for j in (i - 1, i) if 0 <= j < len(widths)]
    return min(candidates, key=lambda w: (abs(count(w) - target), w))


def _solve_mlp(config: Any, name: str, target: int, count: Callable[[Any], int]) -> MatchedModel | None:
    """The MLP width nearest the target (exact: affine in the units), or None if it cannot get close."""
    model = _model_values(config)
    if float(model.get("mlp_expansion", 4.0)) == 0.0:
        return None  # no MLP in this config: nothing to widen
    d_model = int(model["d_model"])

    def at(units: int) -> int:
        return count(_with_model(config, {**model, "mlp_expansion": units / d_model}))

    one, two = at(1), at(2)
    per_unit, fixed = two - one, one - (two - one)
    units = max(1, round((target - fixed) / per_unit))
    expansion = units / d_model
    assert mlp_hidden_size(d_model, expansion) == units  # units / d_model rounds back to units
    return MatchedModel(name, fixed + per_unit * units, target, "mlp", "model.mlp_expansion", expansion)


def _solve_cell(config: Any, name: str, target: int, count: Callable[[Any], int]) -> MatchedModel:
    """The cell width nearest the target, on the first width field that can move (see CELL_WIDTH_FIELDS)."""
    model = _model_values(config)
    key, spec, cell, fields = _cell_widths(model, name)
    for field in fields:
        default = int(getattr(cell, field))

        def at(width: int, field: str = field) -> int:
            return count(_with_config_width(config, model, key, spec, cell, field, width))

        step = _WIDTH_STEPS.get(field, 1)
        if at(default) > target:
            widths = range(default % step or step, default, step)
        else:
            widths = range(default + step, _MAX_GROWTH * default + 1, step)
        if not len(widths):
            continue
        try:
            at(widths[len(widths) // 2])
        except ValueError:
            continue  # this field is tied to d_model in this cell (an SSM's hidden_size): try the next
        width = _nearest(widths, target, at)
        return MatchedModel(name, at(width), target, "cell", f"model.mixers.{key}.{field}", width)
    raise ValueError(
        f"match_parameters: model {name!r} ({spec['cell']}) has no cell width that can move "
        f"(tried {', '.join(fields) or 'none of ' + ', '.join(CELL_WIDTH_FIELDS)}); "
        "knob='cell' cannot match it."
    )


def _with_config_width(
    config: Any, model: dict, key: str, spec: dict, cell: Any, field: str, width: int
) -> Any:
    return _with_model(config, _with_width(model, key, spec, cell, field, width))


def _apply(config: Any, match: MatchedModel) -> Any:
    model = _model_values(config)
    if match.knob == "mlp":
        return _with_model(config, {**model, "mlp_expansion": match.value})
    key, spec, cell, _ = _cell_widths(model, match.name)
    return _with_config_width(config, model, key, spec, cell, match.key.rsplit(".", 1)[1], int(match.value))


def match_parameters(
    configs_by_name: Mapping[str, Any],
    target: str | int | None = None,
    *,
    tolerance: float = 0.05,
    knob: str = "mlp",
    input_size: int | None = None,
    horizon: int | None = None,
    excluding_axes: Sequence[str] = LENGTH_AXES,
) -> tuple[dict[str, Any], list[MatchedModel]]:
    """Each config with one knob set so its parameter count is within `tolerance` of the target.

    `target`: None (the largest count among the configs), a name of `configs_by_name` (that model's count,
    its config left as it is) or a number of parameters. `knob`: "mlp" (the MLP's width, falling back to
    the cell's width when the MLP cannot reach the target) or "cell" (the cell's width only).
    `excluding_axes`: parameters on these logical axes are left out of every count and of the target
    (default `LENGTH_AXES`, module docstring; `()` counts every parameter) and reported as `unmatched`.
    Returns (the matched configs, of the kind given, and one `MatchedModel` per name, in the order given).

    >>> from seqjax.config import load_config_file
    >>> configs = {p: load_config_file("configs/genomic.py", p) for p in ("lstm", "attention")}
    >>> matched, report = match_parameters(configs, target="lstm")
    >>> [(m.name, m.knob, m.value) for m in report]
    [('lstm', 'reference', 4.0), ('attention', 'mlp', 5.375)]
    """
    if knob not in KNOBS:
        raise ValueError(f"match_parameters: knob={knob!r}; choose one of {KNOBS}.")
    if not 0 <= tolerance < 1:
        raise ValueError(f"match_parameters: tolerance={tolerance} must be in [0, 1), e.g. 0.05 for ±5%.")
    if not configs_by_name:
        raise ValueError("match_parameters: configs_by_name is empty; give at least one name -> config.")

    def count(config: Any) -> int:
        return count_parameters(config, input_size=input_size, horizon=horizon, excluding_axes=excluding_axes)

    # The knobs (MLP and cell widths) leave the length-axis parameters as they are (the Linformer's E is
    # k x L), so each model's unmatched count is read once, from its config as given.
    both = {name: _counts(c, input_size, horizon, excluding_axes) for name, c in configs_by_name.items()}
    counts = {name: matched for name, (matched, _) in both.items()}

    def with_unmatched(match: MatchedModel) -> MatchedModel:
        return dataclasses.replace(match, unmatched=both[match.name][1])

    reference = None
    if target is None:
        reference = max(counts, key=counts.get)
    elif isinstance(target, str):
        if target not in counts:
            raise ValueError(f"match_parameters: target={target!r} is not one of the names {sorted(counts)}.")
        reference = target
    elif int(target) < 1:
        raise ValueError(f"match_parameters: target={target} parameters; give a positive count or a name.")
    goal = counts[reference] if reference is not None else int(target)

    matched, report = {}, []
    for name, config in configs_by_name.items():
        if name == reference:
            expansion = float(_model_values(config).get("mlp_expansion", 4.0))
            match = MatchedModel(name, counts[name], goal, "reference", "model.mlp_expansion", expansion)
            matched[name] = config
            report.append(with_unmatched(match))
            continue
        match = _solve_mlp(config, name, goal, count) if knob == "mlp" else None
        if match is None or abs(match.ratio - 1) > tolerance:
            match = _solve_cell(config, name, goal, count)
        if abs(match.ratio - 1) > tolerance:
            raise ValueError(
                f"match_parameters: model {name!r} cannot reach {goal:,} parameters within ±{tolerance:.0%}: "
                f"the nearest is {match.parameters:,} ({match.ratio - 1:+.1%}, {match.override}); change its "
                "config (width, layers, state size) or the target."
            )
        matched[name] = _apply(config, match)
        report.append(with_unmatched(match))
    return matched, report
