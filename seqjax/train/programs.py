"""A run's jitted programs (state initialisation, train step, evaluation), kept for the next run in the
same process that would build the same ones, and for `trainer.evaluate` (its per-sequence evaluation is
the run's; the carried and by-document evaluations are kept under keys of their own).

An experiment driver trains many runs in one process that differ only in their seeds or data: the seeds
of a model, the subsets of a learning curve, a run killed and resumed. Their programs are the same, but
JAX traces and lowers a new closure anew (its persistent compilation cache saves only the XLA compile
after that), and for a short run tracing, lowering and compiling are most of its time. `run_programs`
hands such a run the jitted functions of the earlier one, so it starts at its first step.

The key is every value the programs are built from, compared by value (`ProgramKey`): the model (a
Flax module: its fields, the cell configs within them included), the optimizer's options (the learning
rate and its schedule are constants in the step), the task's loss, the truncated-BPTT and
segment-recurrence settings, the update guard, the shardings (mesh, devices and axes included) and the
example's shapes and dtypes. What is not in the key cannot change the programs: seeds, data order and
subsets, budgets, logging, checkpoints and evaluation intervals are all outside them. Nor is the code:
after changing what a step traces within the process (a patched function, a reloaded module), call
`drop_kept_programs()`.

    >>> import flax.linen as nn, jax.numpy as jnp
    >>> key = ProgramKey(model=nn.Dense(3), optimizer={"learning_rate": 0.1}, task="lm")
    >>> built = []
    >>> first = run_programs(key, lambda: built.append(1) or "programs")
    >>> again = run_programs(ProgramKey(model=nn.Dense(3), optimizer={"learning_rate": 0.1}, task="lm"),
    ...                      lambda: built.append(1) or "programs")
    >>> other = run_programs(key._replace(optimizer={"learning_rate": 0.2}), lambda: "other")
    >>> (again is first, len(built), other)
    (True, 1, 'other')
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax

#: How many runs' programs are kept: a driver runs the seeds of one model one after another, so the last
#: few are the ones asked for again; more would keep executables (and their memory mappings) alive.
KEPT = 4

T = TypeVar("T")


class ProgramKey(NamedTuple):
    """Everything a run's programs are built from (see the module docstring); compared by value."""

    model: Hashable
    optimizer: Mapping[str, Any]
    task: str
    options: tuple = ()  # the train step's other arguments (TBPTT, segment recurrence, update guard)
    state_shardings: Any = None
    batch_shardings: Any = None  # of the training batches and of the evaluation batches
    example: Any = None

    def hashable(self) -> Hashable:
        """The key as a tuple of hashable values: pytrees as (structure, leaves), the options as JSON."""
        return (
            self.model,
            json.dumps(self.optimizer, sort_keys=True, default=repr),
            self.task,
            self.options,
            _tree_key(self.state_shardings),
            _tree_key(self.batch_shardings),
            _tree_key(jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), self.example)),
        )


def _tree_key(tree: Any) -> Hashable:
    leaves, structure = jax.tree.flatten(tree)
    return structure, tuple(leaves)


_kept: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()


def run_programs(key: ProgramKey, build: Callable[[], T]) -> T:
    """The programs built for `key` by an earlier run in this process, else `build()` (kept for later).
    A key with a value that cannot be hashed (a model field holding a list, say) is built and not kept."""
    hashable = key.hashable()
    try:
        hash(hashable)
    except TypeError:
        return build()
    if hashable in _kept:
        _kept.move_to_end(hashable)
        return _kept[hashable]
    programs = build()
    _kept[hashable] = programs
    while len(_kept) > KEPT:
        _kept.popitem(last=False)
    return programs


def drop_kept_programs() -> None:
    """Forgets every kept run's programs (with `jax.clear_caches()`, frees their executables)."""
    _kept.clear()
