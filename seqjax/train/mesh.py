"""Device meshes and logical-axis sharding rules, built from config data.

A run config names the mesh (`mesh.shape`, `mesh.axes`) and the rules (`logical_rules`; the configs use
`seqjax.config.LOGICAL_RULES`) that map the cells' logical parameter axes ("embed", "heads", "mlp", ...)
and the activations' ("batch", "length") onto mesh axes. Sharding is data in the config, as in
big_vision and MaxText; nothing here knows about any particular model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "LogicalRules",
    "make_mesh",
    "named_sharding",
    "resolve_mesh_shape",
    "rules_from_config",
    "spec_for",
]

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces one `-1` in `mesh_shape` by the devices that remain; checks the product."""
    shape = [int(s) for s in mesh_shape]
    if shape.count(-1) > 1:
        raise ValueError(
            f"mesh_shape {tuple(shape)} has more than one -1; at most one axis can take 'the rest'."
        )
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh_shape {tuple(shape)}: sizes must be positive or -1.")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh_shape {tuple(shape)}: the fixed axes use {known} devices, which does not divide the "
                f"{num_devices} available; change mesh_shape."
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices but {num_devices} are available; "
            f"use -1 for one axis to take the rest."
        )
    return tuple(shape)


def make_mesh(
    mesh_shape: Sequence[int],
    mesh_axes: Sequence[str],
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with Auto axis types (so `with_sharding_constraint` and logical rules apply)."""
    if len(mesh_shape) != len(mesh_axes):
        raise ValueError(
            f"mesh_shape {tuple(mesh_shape)} and mesh_axes {tuple(mesh_axes)} differ in length; give one "
            f"size per axis name."
        )
    if len(set(mesh_axes)) != len(mesh_axes):
        raise ValueError(f"mesh_axes {tuple(mesh_axes)} repeats a name.")
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, tuple(mesh_axes), axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
    return Mesh(
        np.asarray(devices).reshape(shape),
        tuple(mesh_axes),
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
    )


def rules_from_config(rules: Any, mesh: Mesh | None = None) -> LogicalRules:
    """Normalises rules given as a mapping or a sequence of pairs; drops mesh axes the mesh lacks.

    Dropping unknown mesh axes lets one rule set serve a 1-axis data-parallel mesh and a 3-axis
    data × fsdp × model mesh alike.
    """
    items = rules.items() if isinstance(rules, Mapping) else rules
    out = []
    for pair in items:
        if len(pair) != 2:
            raise ValueError(f"logical rule {pair!r} is not a (logical_name, mesh_axes) pair.")
        logical, target = pair
        if isinstance(target, str):
            target = (target,)
        elif target is not None:
            target = tuple(target)
        if mesh is not None and target is not None:
            target = tuple(a for a in target if a in mesh.axis_names and mesh.shape[a] > 1)
        if not target:
            target = None
        elif len(target) == 1:
            target = target[0]
        out.append((str(logical), target))
    return tuple(out)


def spec_for(
    logical_axes: Sequence[str | None],
    rules: LogicalRules,
    *,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions have these logical names.

    A mesh axis is used at most once per array (the first dimension that claims it wins), as a
    PartitionSpec requires. Given `shape` and `mesh`, a mesh axis that does not divide its dimension is
    left out (that dimension is replicated over it) rather than failing at placement: a 5-head layer on
    a 2-way `model` axis still runs.
    """
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match an array of shape {tuple(shape)}.")
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        target = table.get(name) if name is not None else None
        axes = [a for a in ((target,) if isinstance(target, str) else tuple(target or ())) if a not in used]
        if shape is not None and mesh is not None:
            kept, size = [], int(shape[dim])
            for a in axes:
                if size % (math.prod(mesh.shape[k] for k in kept) * mesh.shape[a]) == 0:
                    kept.append(a)
            axes = kept
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


def named_sharding(
    mesh: Mesh, logical_axes: Sequence[str | None], rules: LogicalRules, shape: Sequence[int] | None = None
) -> NamedSharding:
    """`spec_for` on `mesh`, as a NamedSharding."""
    return NamedSharding(mesh, spec_for(logical_axes, rules, shape=shape, mesh=mesh))
