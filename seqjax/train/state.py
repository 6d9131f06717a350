"""The train state and where every part of it lives on the mesh.

The whole state (parameters, optimizer moments, optax's scalar counters, the step and the RNG key) is
placed with explicit NamedShardings: parameters by the logical-axis rules, optimizer leaves like the
parameter they track, everything else replicated. Left to inference, optax's scalar `count` lands on
a single device, which breaks multi-device checkpoint restore and donation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.core import meta, unfreeze
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.train.mesh import LogicalRules, spec_for

__all__ = ["CarriedTrainState", "TrainState", "init_train_state", "state_shardings"]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []: optimizer updates applied
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 [2] key data: dropout keys are folded from it and the step


@flax.struct.dataclass
class CarriedTrainState(TrainState):
    """A `TrainState` plus every layer's state carried from one batch to the next (segment recurrence).

    `carry` is the language model's cache (one cell state per layer, each leaf [batch_size, ...]) after
    the last batch; it is checkpointed with the rest of the state and sharded like the batch
    (`seqjax.train.segments`). A separate class, so that runs without segment recurrence keep the
    checkpoint layout they always had.
    """

    carry: Any


def _param_shardings(abstract_boxed: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    def place(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            names = tuple(leaf.names)
            shape = leaf.value.shape
        else:  # a parameter created without logical axes: replicated
            names, shape = (None,) * len(leaf.shape), leaf.shape
        return NamedSharding(mesh, spec_for(names, rules, shape=shape, mesh=mesh))

    return jax.tree.map(place, abstract_boxed, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def _path_key(path: Sequence[Any]) -> tuple[str, ...]:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
    return tuple(out)


def _opt_shardings(abstract_opt: Any, params_shardings: Any, abstract_params: Any, mesh: Mesh) -> Any:
    """Each optimizer leaf is sharded like the parameter whose tree path ends its own path (Adam's mu and
    nu, momentum traces), with the same shape; anything else (counts, scalars) is replicated."""
    by_path = {}
    for (path, sharding), shape in zip(
        jax.tree_util.tree_flatten_with_path(params_shardings)[0],
        jax.tree.leaves(abstract_params),
        strict=True,
    ):
        by_path[_path_key(path)] = (sharding, shape.shape)
    replicated = NamedSharding(mesh, P())

    def place(path: Any, leaf: Any) -> NamedSharding:
        key = _path_key(path)
        for start in range(len(key)):
            hit = by_path.get(key[start:])
            if hit is not None and tuple(hit[1]) == tuple(leaf.shape):
                return hit[0]
        return replicated

    return jax.tree_util.tree_map_with_path(place, abstract_opt)


def state_shardings(
    model: nn.Module,
    tx: optax.GradientTransformation,
    example_inputs: Sequence[Any],
    mesh: Mesh,
    rules: LogicalRules,
) -> tuple[TrainState, TrainState]:
    """(abstract state with shardings, shardings) for `model` trained by `tx`; no FLOPs, no memory."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_inputs))
    boxed_params = unfreeze(boxed)["params"]
    params_sh = _param_shardings(boxed_params, mesh, rules)
    abstract_params = meta.unbox(boxed_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = _opt_shardings(abstract_opt, params_sh, abstract_params, mesh)
    replicated = NamedSharding(mesh, P())
    shardings = TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params,
        opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    with_shardings = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return with_shardings, shardings


def make_state_init(
    model: nn.Module, tx: optax.GradientTransformation, shardings: TrainState
) -> Callable[..., TrainState]:
    """`init(seed, *example_inputs) -> TrainState`: a fresh state, initialised directly into `shardings`
    (no full copy on one device first). Parameters depend only on `seed`, not on the mesh.

    One program serves every seed: the keys and the example are its arguments, not constants, so a
    second seed neither traces nor compiles again (`seqjax.train.programs` keeps it for the next run).

        >>> import optax
        >>> from seqjax.train.mesh import make_mesh, rules_from_config
        >>> mesh = make_mesh((1,), ("data",), devices=jax.devices()[:1])
        >>> model, tx, example = nn.Dense(3), optax.sgd(0.1), (jnp.zeros((1, 2)),)
        >>> _, shardings = state_shardings(model, tx, example, mesh, rules_from_config({}, mesh))
        >>> init = make_state_init(model, tx, shardings)
        >>> a, b = init(0, *example), init(1, *example)  # one program, two seeds
        >>> a.params["kernel"].shape, bool((a.params["kernel"] == b.params["kernel"]).all())
        ((2, 3), False)
    """

    def init(init_key: jax.Array, dropout_key: jax.Array, *inputs: Any) -> TrainState:
        params = meta.unbox(unfreeze(model.init(init_key, *inputs))["params"])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(dropout_key),
        )

    jitted = jax.jit(init, out_shardings=shardings)

    def init_from_seed(seed: int, *example_inputs: Any) -> TrainState:
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        return jitted(init_key, dropout_key, *example_inputs)

    return init_from_seed


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    example_inputs: Sequence[Any],
    mesh: Mesh,
    rules: LogicalRules,
    seed: int,
) -> tuple[TrainState, TrainState]:
    """A fresh state, initialised directly into its shardings (`make_state_init`). Returns (state,
    shardings). Parameters depend only on `seed`, not on the mesh."""
    _, shardings = state_shardings(model, tx, example_inputs, mesh, rules)
    return make_state_init(model, tx, shardings)(seed, *example_inputs), shardings


def dropout_key(state: TrainState) -> jax.Array:
    """This step's dropout key: the same for a step whatever the mesh or a resume."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
