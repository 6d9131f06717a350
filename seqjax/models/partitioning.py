"""Logical axes and optimizer groups of model parameters.

Every parameter a seqjax model creates is boxed in a `GroupedPartitioned`: flax's
`nn.LogicallyPartitioned` (so `nn.get_partition_spec` and `nn.logical_to_mesh_sharding` work on the
variables `model.init` returns) plus one more static field, `group`, the parameter's optimizer group:

- `"default"`: ordinary weights (weight decay applies);
- `"no_decay"`: norm scales, biases and RevIN's affine of the model's own layers;
- `"ssm"`: SSM dynamics (A, Δ, λ, ...) as the cell's `param_groups()` says: own learning rate, no decay;
- `"frozen"`: not trained (the Performer's random features).

Cell parameters keep the groups their cell gives (`cell.param_groups()`); the model's own layers
(embeddings, norms, MLPs, projections, heads) are labelled here.

`param_groups(model, params)` reads the groups back as a tree shaped like `params`, and
`weight_decay_mask(model, params)` turns them into the boolean mask `optax.add_decayed_weights` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from flax.core import meta, unfreeze

__all__ = [
    "GROUPS",
    "GroupedPartitioned",
    "boxed",
    "param_groups",
    "weight_decay_mask",
]

#: the optimizer groups a parameter can be in.
GROUPS = ("default", "no_decay", "ssm", "frozen")


class GroupedPartitioned(nn.LogicallyPartitioned):
    """`nn.LogicallyPartitioned` with the parameter's optimizer group as static metadata."""

    group: str = struct.field(default="default", pytree_node=False)

    def __eq__(self, other: Any) -> bool:  # arrays have no truth value; compare like the parent class
        if self is other:
            return True
        if other.__class__ is self.__class__:
            return (self.value,) == (other.value,)
        return NotImplemented


def boxed(
    init: Callable[..., Any], names: Sequence[str | None], group: str = "default"
) -> Callable[..., Any]:
    """Wraps an initializer so its value is boxed with logical axis `names` and optimizer `group`."""
    if group not in GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; groups are {GROUPS}.")
    names = tuple(names)

    def wrapper(*args: Any, **kwargs: Any) -> GroupedPartitioned:
        value = init(*args, **kwargs)
        if jnp.ndim(value) != len(names):
            raise ValueError(
                f"a parameter of shape {jnp.shape(value)} was given {len(names)} logical axis names {names}; "
                f"give one name (or None) per dimension."
            )
        return GroupedPartitioned(value, names, group=group)

    return wrapper


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _groups_from_boxes(tree: Any) -> Any:
    def group_of(x: Any) -> str:
        if isinstance(x, GroupedPartitioned):
            return x.group
        return "default"

    return jax.tree.map(group_of, tree, is_leaf=_is_box)


def _has_boxes(tree: Any) -> bool:
    return any(_is_box(x) for x in jax.tree.leaves(tree, is_leaf=_is_box))


def _abstract_variables(model: nn.Module) -> Any:
    example = getattr(model, "example_inputs", None)
    if example is None:
        raise TypeError(
            f"param_groups: {type(model).__name__} has no `example_inputs()`, so the groups cannot be "
            f"rebuilt from unboxed params; pass the boxed variables that `model.init` returned."
        )
    args = example()
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args))


def param_groups(model: nn.Module | None, params: Any = None) -> Any:
    """The optimizer group of every parameter, as a tree shaped like `params`.

    `params` may be boxed (what `model.init` returns, whole variables or just `["params"]`): the groups
    are read from the boxes and `model` may be None. For unboxed params (plain arrays) the groups are
    rebuilt from `model` (an abstract `init` on `model.example_inputs()`, no FLOPs) and matched to
    `params`' structure. With `params=None` the groups of `model`'s `"params"` collection are returned.
    """
    if params is not None and _has_boxes(params):
        return _groups_from_boxes(unfreeze(params))
    if model is None:
        raise ValueError(
            "param_groups: `params` are not boxed, so pass the model to rebuild the groups from."
        )
    groups = _groups_from_boxes(unfreeze(_abstract_variables(model)))
    if params is None:
        return groups["params"]
    want = jax.tree.structure(unfreeze(params))
    for candidate in (groups, groups["params"]):
        if jax.tree.structure(candidate) == want:
            return candidate
    raise ValueError(
        f"param_groups: `params` do not have the structure of {type(model).__name__}'s parameters "
        f"(got {want}); pass `variables` or `variables['params']` from this model's `init`."
    )


def weight_decay_mask(model: nn.Module | None, params: Any = None, *, decay_vectors: bool = True) -> Any:
    """True where weight decay applies (group "default"), False for "no_decay", "ssm" and "frozen".

    `decay_vectors=False` also exempts every parameter with fewer than 2 dimensions (biases and scales
    inside cells, e.g. an LSTM's b_ih, whose cells label them "default"). The tree fits
    `optax.add_decayed_weights(..., mask=...)` / `optax.adamw(..., mask=...)`.
    """
    groups = param_groups(model, params)
    if decay_vectors:
        return jax.tree.map(lambda g: g == "default", groups)
    shapes = _abstract_variables(model)["params"] if params is None else meta.unbox(unfreeze(params))
    return jax.tree.map(lambda g, p: g == "default" and len(p.shape) >= 2, groups, meta.unbox(shapes))
