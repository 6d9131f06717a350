"""Segment recurrence: an LM trained and evaluated on consecutive segments of a token stream, with every
layer's state carried from one batch to the next (the recurrence of Transformer-XL, Dai et al. 2019,
for cells whose state has a fixed size).

- Data: `seqjax.data.stream` cuts the split's stream into `batch_size` contiguous lanes; batch s is
  segment s of every lane, so row b of batch s + 1 continues row b of batch s.
- State: the train state is a `CarriedTrainState`, whose `carry` (the LM's cache, one cell state per
  layer, each leaf [batch_size, ...]) is placed like the batch ("batch" logical axis) and checkpointed
  with the parameters; the train step runs from it and stops the gradient at the batch boundary
  (`seqjax.train.step`).
- Which models: a language model on data whose splits are token streams ("documents"), made of cells
  whose state has a fixed size and runs left to right. Softmax attention (`Attention`) keeps every
  token in its KV cache, so it is refused; Transformer-XL attention (`TransformerXLAttention`, the
  last `memory_length` keys and values) and sliding-window attention (its window) carry a ring buffer
  and are allowed.
- Evaluation: `make_stream_eval_fn` and `evaluate_stream` score the split as contiguous lanes with the
  state carried across segments; the metrics are those of the per-sequence evaluation, over the same
  targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import models
from seqjax.cells.base import Cell
from seqjax.train.evaluation import split_metrics
from seqjax.train.mesh import LogicalRules, spec_for
from seqjax.train.run_config import ConfigError, RunConfig
from seqjax.train.state import CarriedTrainState, TrainState
from seqjax.train.step import Batch, forward_from, token_losses

__all__ = [
    "STREAM_DATA_KINDS",
    "add_initial_carry",
    "carried_state_problem",
    "carry_shardings",
    "check_carried_state_model",
    "check_segment_recurrence",
    "check_stream_lm",
    "evaluate_stream",
    "initial_carry",
    "make_stream_eval_fn",
    "model_carry_shardings",
    "with_carry",
]

#: Data kinds whose splits serve a token stream (`token_stream()`).
STREAM_DATA_KINDS = ("documents",)


def carried_state_problem(cell: Cell) -> str | None:
    """Why `cell`'s state cannot be carried from one segment to the next, or None when it can: the state
    must run left to right and have a fixed size (see the module docstring).

    >>> from seqjax import cells
    >>> carried_state_problem(cells.SlidingWindowAttention(num_heads=1, head_dim=4, window=8)) is None
    True
    >>> carried_state_problem(cells.TransformerXLAttention(num_heads=1, head_dim=4, memory_length=8)) is None
    True
    >>> print(carried_state_problem(cells.Attention(num_heads=1, head_dim=4)))  # doctest: +ELLIPSIS
    keeps every token of the segment in its state (a KV cache of max_length=2048 slots)...
    """
    streaming = cell.step_unsupported(streaming=True)
    if streaming is not None:
        return f"cannot carry a state from one segment to the next: {streaming}"
    if cell.state_grows_with_sequence:
        capacity = getattr(cell, "max_length", None)
        slots = f" of max_length={capacity} slots" if capacity is not None else ""
        return (
            f"keeps every token of the segment in its state (a KV cache{slots}), which a stream carried "
            f"across batches would overflow; for softmax attention across segments use xl_attention "
            f"(TransformerXLAttention: Transformer-XL's memory of the last memory_length keys and values)"
        )
    return None


def check_carried_state_model(config: models.BackboneConfig | Mapping[str, Any], where: str) -> None:
    """Raises ConfigError (prefixed `where`) naming the first layer, its mixer and its cell, when a
    layer's state cannot be carried across segments (`carried_state_problem`)."""
    if not isinstance(config, models.BackboneConfig):
        config = models.BackboneConfig.from_dict(dict(config))
    for i, (mixer, cell) in enumerate(zip(config.layer_mixers(), config.layer_cells(), strict=True)):
        problem = carried_state_problem(cell)
        if problem is not None:
            raise ConfigError(
                f"{where}: layer {i} (blocks_{i}, mixer {mixer!r}) uses cell {cell.name!r} "
                f"({type(cell).__name__}), which {problem}. Use cells with a fixed-size causal state (lstm, "
                f"gru, elstm, s4d, s5, lru, mamba, linear_attention, gla, performer, "
                f"sliding_window_attention, which carries its window, or xl_attention, which carries "
                f"Transformer-XL's memory), or turn segment recurrence off."
            )


def check_stream_lm(run: RunConfig, where: str) -> None:
    """Raises ConfigError (prefixed `where`) unless `run` is a language model on data whose splits are
    token streams, every layer's state carriable: what training and evaluating with a carried state
    need."""
    if run.task != "lm":
        raise ConfigError(
            f"{where}: carries each layer's state from one segment to the next along a token stream, which "
            f"only the language model task reads; task {run.task!r} scores each sequence on its own."
        )
    if run.data.kind not in STREAM_DATA_KINDS:
        raise ConfigError(
            f"{where}: needs data whose splits are token streams (data.kind in {list(STREAM_DATA_KINDS)}), "
            f"got data.kind={run.data.kind!r}, whose examples are independent sequences."
        )
    check_carried_state_model(run.model, where)


def check_segment_recurrence(run: RunConfig) -> None:
    """Raises ConfigError naming the key when `run.segment_recurrence` cannot work: another task than
    "lm", data whose splits are not token streams, a layer whose state cannot be carried, or a train
    subset (`train_examples`). Nothing to check when it is off."""
    if not run.segment_recurrence:
        return
    where = "config.segment_recurrence"
    check_stream_lm(run, where)
    if run.train_examples is not None:
        raise ConfigError(
            f"{where}: trains on the whole train stream, cut into contiguous lanes; train_examples="
            f"{run.train_examples} picks separate examples. Set train_examples=None."
        )


# --------------------------------------------------------------------------------------------------
# The carried state: placement, initial value, and the train state that holds it.
# --------------------------------------------------------------------------------------------------
def carry_shardings(abstract_carry: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Each leaf [batch, ...] placed like the batch: its first axis on the "batch" logical axis (left
    replicated when the mesh axes do not divide it), the rest replicated.

    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    >>> carry = (jax.ShapeDtypeStruct((8, 16), np.float32),)
    >>> tuple(carry_shardings(carry, mesh, (("batch", "data"),))[0].spec)
    ('data', None)
    """

    def place(leaf: Any) -> NamedSharding:
        if not leaf.shape:
            return NamedSharding(mesh, P())
        names = ("batch",) + (None,) * (len(leaf.shape) - 1)
        return NamedSharding(mesh, spec_for(names, rules, shape=leaf.shape, mesh=mesh))

    return jax.tree.map(place, abstract_carry)


def model_carry_shardings(model: nn.Module, batch_size: int, mesh: Mesh, rules: LogicalRules) -> Any:
    """`carry_shardings` of `model`'s cache for `batch_size` rows."""
    return carry_shardings(_abstract_carry(model, batch_size), mesh, rules)


def _abstract_carry(model: nn.Module, batch_size: int) -> Any:
    return jax.eval_shape(lambda: model.initial_cache((batch_size,)))


def initial_carry(model: nn.Module, batch_size: int, shardings: Any) -> Any:
    """Every layer's initial state for `batch_size` rows, created directly in its `shardings`."""
    return jax.jit(lambda: model.initial_cache((batch_size,)), out_shardings=shardings)()


def with_carry(
    abstract_state: TrainState,
    shardings: TrainState,
    model: nn.Module,
    batch_size: int,
    mesh: Mesh,
    rules: LogicalRules,
) -> tuple[CarriedTrainState, CarriedTrainState]:
    """(abstract state, shardings) of `state_shardings` extended with the carried state of `batch_size`
    rows: what a segment-recurrence run checkpoints and restores (onto any mesh)."""
    abstract_carry = _abstract_carry(model, batch_size)
    carry_sh = carry_shardings(abstract_carry, mesh, rules)
    placed = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_carry, carry_sh
    )

    def extend(state: TrainState, carry: Any) -> CarriedTrainState:
        return CarriedTrainState(
            step=state.step, params=state.params, opt_state=state.opt_state, rng=state.rng, carry=carry
        )

    return extend(abstract_state, placed), extend(shardings, carry_sh)


def add_initial_carry(
    state: TrainState, model: nn.Module, batch_size: int, shardings: CarriedTrainState
) -> CarriedTrainState:
    """A fresh `state` extended with every layer's initial state for `batch_size` rows, placed as
    `shardings.carry` says."""
    return CarriedTrainState(
        step=state.step,
        params=state.params,
        opt_state=state.opt_state,
        rng=state.rng,
        carry=initial_carry(model, batch_size, shardings.carry),
    )


# --------------------------------------------------------------------------------------------------
# Evaluation with the state carried across segments.
# --------------------------------------------------------------------------------------------------
def make_stream_eval_fn(
    model: nn.Module, params_shardings: Any, carry_shardings_: Any, batch_shardings: Any
) -> Callable[[Any, Any, Batch], tuple[dict[str, jax.Array], Any]]:
    """`fn(params, carry, batch) -> ({"nll", "tokens"} per row, carry after the batch)`: the LM run from
    `carry`, deterministic; the sums are replicated (every process reads them), the carry stays sharded
    like the batch and is donated."""
    mesh = jax.tree.leaves(params_shardings)[0].mesh

    def fn(params: Any, carry: Any, batch: Batch) -> tuple[dict[str, jax.Array], Any]:
        logits, cache = forward_from(model, params, batch, carry, deterministic=True, rng=None)
        nll, weights, _ = token_losses(logits, batch)
        cache = jax.tree.map(lambda new, old: new.astype(old.dtype), cache, carry)
        return {"nll": (nll * weights).sum(-1), "tokens": weights.sum(-1)}, cache

    return jax.jit(
        fn,
        in_shardings=(params_shardings, carry_shardings_, batch_shardings),
        out_shardings=(NamedSharding(mesh, P()), carry_shardings_),
        donate_argnums=(1,),
    )


def evaluate_stream(
    eval_fn: Callable[[Any, Any, Batch], tuple[dict[str, jax.Array], Any]],
    params: Any,
    carry: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    to_device: Callable[[Mapping[str, np.ndarray]], Batch],
    *,
    bytes_per_token: float = 1.0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs `eval_fn` (`make_stream_eval_fn`) over `batches`, carrying the state from each segment to the
    next. Returns (the LM metrics, as `evaluation.split_metrics` computes them, and {"nll", "tokens"}
    summed per lane). Batches of `seqjax.data.stream.document_eval_batches` carry "document" (each global
    row's document, -1 for none): the sums are then per document, [max document + 1]."""
    nll: np.ndarray | None = None
    tokens: np.ndarray | None = None
    for host in batches:
        documents = host.get("document")
        sums, carry = eval_fn(params, carry, to_device({k: v for k, v in host.items() if k != "document"}))
        row_nll = np.asarray(sums["nll"], np.float64)
        row_tokens = np.asarray(sums["tokens"], np.float64)
        if documents is None:
            nll = row_nll if nll is None else nll + row_nll
            tokens = row_tokens if tokens is None else tokens + row_tokens
            continue
        size = int(documents.max()) + 1
        if nll is None:
            nll, tokens = np.zeros(size), np.zeros(size)
        elif size > len(nll):
            nll, tokens = (np.pad(a, (0, size - len(a))) for a in (nll, tokens))
        used = documents >= 0
        np.add.at(nll, documents[used], row_nll[used])
        np.add.at(tokens, documents[used], row_tokens[used])
    if nll is None:
        raise ValueError("evaluate_stream: no batches; nothing to evaluate.")
    data = {"nll": nll, "tokens": tokens}
    return split_metrics(data, "lm", bytes_per_token=bytes_per_token), data
