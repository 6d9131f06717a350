"""Device meshes and logical-axis sharding rules, built from config data.

A run config names the mesh (`mesh.shape`, `mesh.axes`) and the rules (`logical_rules`; the configs use
`seqjax.config.LOGICAL_RULES`) that map the cells' logical parameter axes ("embed", "heads", "mlp", ...)
and the activations' ("batch", "length") onto mesh axes. Sharding is data in the config, as in
big_vision and MaxText; nothing here knows about any particular model.

Sequence parallelism: the rules map "length" onto a `sequence` mesh axis; on a mesh where it has size
> 1 (`sequence_axis`), batches are placed split along time and the trainer runs every cell in its
sequence-parallel form. When that axis spans processes, processes share rows of the batch: each loads
the rows its devices hold (`DataLayout`, from the "batch" placement) and places its time slices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DataLayout",
    "LogicalRules",
    "data_layout",
    "make_mesh",
    "named_sharding",
    "resolve_mesh_shape",
    "rules_from_config",
    "sequence_axis",
    "sequence_size",
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


def sequence_axis(mesh: Mesh, rules: LogicalRules) -> str | None:
    """The mesh axis the time axis ("length") is split over, or None when time stays whole (no rule maps
    it, or its mesh axis has size 1: `rules_from_config` drops those). One axis at most.

        >>> mesh = make_mesh((1,), ("sequence",), devices=jax.devices()[:1])
        >>> sequence_axis(mesh, rules_from_config({"length": "sequence"}, mesh)) is None
        True
    """
    target = dict(rules).get("length")
    if target is None:
        return None
    axes = (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
    if len(axes) > 1:
        raise ValueError(
            f"logical_rules map 'length' onto {axes}; the time axis can be split over one mesh axis "
            f"(e.g. 'sequence') only."
        )
    return axes[0] if axes else None


def sequence_size(mesh: Mesh, rules: LogicalRules) -> int:
    """How many shards the time axis is split into (1: not split)."""
    axis = sequence_axis(mesh, rules)
    return 1 if axis is None else int(mesh.shape[axis])


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Which rows of every global batch this process loads.

    The batch is cut into `count` equal blocks of rows; this process loads block `index`
    (`TrainBatches(process_index=index, process_count=count)`), and `processes` names one process per
    block, in block order (the ones whose rows make up the global batch when rows are gathered on the
    host). Without sequence parallelism across processes, block i is process i's
    (`index = jax.process_index()`, `count = jax.process_count()`); when the time axis spans processes,
    the processes that hold different time slices of the same rows load the same block.
    """

    index: int = 0
    count: int = 1
    processes: tuple[int, ...] = (0,)

    @classmethod
    def per_process(cls) -> DataLayout:
        """Block i is process i's (no rows shared between processes)."""
        count = jax.process_count()
        return cls(jax.process_index(), count, tuple(range(count)))


def data_layout(mesh: Mesh, rules: LogicalRules) -> DataLayout:
    """This process's `DataLayout` on `mesh`: read from where the "batch" placement puts each block of
    rows (one row per batch shard)."""
    spec = spec_for(("batch",), rules)
    sharding = NamedSharding(mesh, spec)
    shards = math.prod(
        mesh.shape[a] for a in ((spec[0],) if isinstance(spec[0], str) else tuple(spec[0] or ()))
    )
    by_process: dict[int, set[int]] = {}
    for device, index in sharding.devices_indices_map((shards,)).items():
        rows = range(shards)[index[0]]
        by_process.setdefault(device.process_index, set()).update(rows)
    blocks: dict[int, tuple[int, ...]] = {p: tuple(sorted(rows)) for p, rows in by_process.items()}
    sizes = {len(rows) for rows in blocks.values()}
    for process, rows in blocks.items():
        if len(sizes) != 1 or rows != tuple(range(rows[0], rows[0] + len(rows))) or rows[0] % len(rows):
            raise ValueError(
                f"data_layout: process {process} holds batch shards {rows} of {shards} on mesh "
                f"{dict(mesh.shape)}; each process must hold one contiguous, equal block of the batch. "
                f"Order the mesh axes so that the batch axes are split between processes in blocks."
            )
    size = sizes.pop()
    count = shards // size
    first: dict[int, int] = {}
    for process in sorted(blocks):
        first.setdefault(blocks[process][0] // size, process)
    return DataLayout(
        index=blocks[jax.process_index()][0] // size,
        count=count,
        processes=tuple(first[i] for i in range(count)),
    )
