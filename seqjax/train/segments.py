"""Segment recurrence: an LM trained and evaluated on consecutive segments of a token stream, or a
forecaster on consecutive segments of a time series, with every layer's state carried from one batch to
the next (the recurrence of Transformer-XL, Dai et al. 2019, for cells whose state has a fixed size).

- Data: `seqjax.data.stream` cuts the split's stream into `batch_size` contiguous lanes; batch s is
  segment s of every lane, so row b of batch s + 1 continues row b of batch s.
- State: the train state is a `CarriedTrainState`, whose `carry` (the LM's cache, one cell state per
  layer, each leaf [batch_size, ...]) is placed like the batch ("batch" logical axis) and checkpointed
  with the parameters; the train step runs from it and stops the gradient at the batch boundary
  (`seqjax.train.step`).
- Which models: a language model on data whose splits are token streams ("documents"), or a
  forecaster with a forecast at every position (`Forecaster(per_position=True)`, no RevIN) on time
  series ("timeseries"), made of cells whose state has a fixed size and runs left to right
  (`STREAM_DATA_KINDS`, `check_stream_task`). Softmax attention (`Attention`) keeps every token in its
  KV cache, so it is refused; Transformer-XL attention (`TransformerXLAttention`, the last
  `memory_length` keys and values) and sliding-window attention (its window) carry a ring buffer and
  are allowed.
- Evaluation: `make_stream_eval_fn` and `evaluate_stream` score the split as contiguous lanes with the
  state carried across segments; the LM metrics are those of the per-sequence evaluation, over the
  same targets; the forecast metrics (MSE/MAE, normalised scale) are over the positions that count,
  and (`origin_*`) over exactly the forecast origins of the split's windows.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import models
from seqjax.cells.base import Cell
from seqjax.data.metrics import forecast_metrics_from_sums
from seqjax.data.stream import check_position_buckets
from seqjax.train.evaluation import split_metrics
from seqjax.train.mesh import LogicalRules, spec_for
from seqjax.train.run_config import ConfigError, RunConfig
from seqjax.train.state import CarriedTrainState, TrainState
from seqjax.train.step import Batch, forecast_sums, forward, forward_from, token_losses

__all__ = [
    "STREAM_DATA_KINDS",
    "add_initial_carry",
    "carried_state_problem",
    "carry_shardings",
    "check_carried_state_model",
    "check_segment_recurrence",
    "check_stream_lm",
    "check_stream_task",
    "evaluate_stream",
    "initial_carry",
    "make_stream_eval_fn",
    "model_carry_shardings",
    "stream_metrics",
    "with_carry",
]

#: Per task, the data kinds whose splits serve a stream (`seqjax.data.stream.stream_of`): a token stream
#: (`token_stream()`) for the LM, a time series (`series_stream()`) for the forecaster.
STREAM_DATA_KINDS = {"lm": ("documents",), "forecast": ("timeseries",)}
_STREAMS = {"lm": "token streams", "forecast": "time series"}


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
        values = dict(config)
        if values.get("encoder") == "linear" and not values.get("input_size"):
            values["input_size"] = 1  # a forecaster's: the trainer sets it from the data; no cell reads it
        config = models.BackboneConfig.from_dict(values)
    for i, (mixer, cell) in enumerate(zip(config.layer_mixers(), config.layer_cells(), strict=True)):
        problem = carried_state_problem(cell)
        if problem is not None:
            raise ConfigError(
                f"{where}: layer {i} (blocks_{i}, mixer {mixer!r}) uses cell {cell.name!r} "
                f"({type(cell).__name__}), which {problem}. Use cells with a fixed-size causal state (lstm, "
                f"gru, elstm, s4d, s5, lru, mamba, linear_attention, gla, gla_scalar, performer, "
                f"sliding_window_attention, which carries its window, or xl_attention, which carries "
                f"Transformer-XL's memory), or turn segment recurrence off."
            )


def check_stream_task(run: RunConfig, where: str, *, carried: bool = True) -> None:
    """Raises ConfigError (prefixed `where`) unless `run` is a task that reads a stream on data whose
    splits serve one (`STREAM_DATA_KINDS`: an LM on documents, a forecaster on time series; the
    forecaster without RevIN), every layer's state carriable: what training and evaluating with a
    carried state need. Without `carried` (a stream read in segments each from the initial state) the
    layers are not checked: any model reads it."""
    kinds = STREAM_DATA_KINDS.get(run.task)
    if kinds is None:
        raise ConfigError(
            f"{where}: carries each layer's state from one segment to the next along a stream, which only "
            f"the language model task (a token stream) and the forecast task (a time series) read; task "
            f"{run.task!r} scores each sequence on its own."
        )
    if run.data.kind not in kinds:
        raise ConfigError(
            f"{where}: task {run.task!r} needs data whose splits are {_STREAMS[run.task]} (data.kind in "
            f"{list(kinds)}), got data.kind={run.data.kind!r}, whose examples are independent sequences."
        )
    if run.task == "forecast" and run.head.get("revin", True):
        raise ConfigError(
            f"{where}: the forecaster forecasts at every position of the stream, where RevIN's statistics "
            f"(over the whole segment) would read future steps; set config.head.revin=False (the stream "
            f"relies on the split's standardisation by training statistics)."
        )
    if carried:
        check_carried_state_model(run.model, where)


#: The LM's check, by its first name.
check_stream_lm = check_stream_task


def check_segment_recurrence(run: RunConfig) -> None:
    """Raises ConfigError naming the key when `run.segment_recurrence` cannot work: a task or data that
    has no stream (`check_stream_task`), a layer whose state cannot be carried, RevIN on the
    forecaster, or a train subset (`train_examples`); and when `head.per_position` (the forecaster's
    stream head, which segment recurrence sets) is asked for without it."""
    if run.task == "forecast" and run.head.get("per_position") and not run.segment_recurrence:
        raise ConfigError(
            "config.head.per_position=True forecasts at every position, which only a stream's targets "
            "score; windows have one target, after their last step. Set config.segment_recurrence=True "
            "(it sets per_position itself), or leave per_position False."
        )
    if not run.segment_recurrence:
        return
    where = "config.segment_recurrence"
    check_stream_task(run, where)
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
def _stream_sums(task: str, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per row: the LM's {"nll", "tokens"}; the forecaster's {"se", "ae"} [rows, horizon] (errors
    averaged over the variables, summed over the counted positions) and "forecasts" (their count), and
    with the batch's "origins" the same at the windows' forecast origins ("origin_se", "origin_ae",
    "origins")."""
    if task == "lm":
        nll, weights, _ = token_losses(outputs, batch)
        return {"nll": (nll * weights).sum(-1), "tokens": weights.sum(-1)}
    squared, absolute, weights = forecast_sums(outputs, batch)
    squared, absolute = (x / outputs.shape[-1] for x in (squared, absolute))
    sums = {}
    marks = {"": (weights, "forecasts")}
    if "origins" in batch:
        marks["origin_"] = (batch["origins"].astype(jnp.float32), "origins")
    for prefix, (w, count) in marks.items():
        sums[f"{prefix}se"] = (squared * w[..., None]).sum(1)
        sums[f"{prefix}ae"] = (absolute * w[..., None]).sum(1)
        sums[count] = w.sum(-1)
    return sums


def make_stream_eval_fn(
    model: nn.Module,
    params_shardings: Any,
    carry_shardings_: Any,
    batch_shardings: Any,
    task: str = "lm",
    *,
    per_position: bool = False,
    carried: bool = True,
) -> Callable[[Any, Any, Batch], tuple[dict[str, jax.Array], Any]]:
    """`fn(params, carry, batch) -> (sums per row, carry after the batch)`: the model run from `carry`,
    deterministic; the sums (`task` "lm": {"nll", "tokens"}; "forecast": squared and absolute errors
    per horizon step and counts, see `stream_metrics`) are replicated (every process reads them), the
    carry stays sharded like the batch and is donated.

    `per_position` (LM): the sums also hold each position's counted NLL and weight, "position_nll" and
    "position_weights" [rows, length] (for sums by position in a document, `evaluate_stream`).
    Without `carried`, every batch runs from the initial state, exactly as the per-sequence evaluation
    runs a sequence (no cache in or out: any causal LM, softmax attention included); `carry` is passed
    through untouched (pass None, with `carry_shardings_` None)."""
    mesh = jax.tree.leaves(params_shardings)[0].mesh

    def sums(outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        out = _stream_sums(task, outputs, batch)
        if per_position:
            nll, weights, _ = token_losses(outputs, batch)
            out |= {"position_nll": nll * weights, "position_weights": weights}
        return out

    def fn(params: Any, carry: Any, batch: Batch) -> tuple[dict[str, jax.Array], Any]:
        if not carried:
            return sums(forward(model, params, batch, deterministic=True, rng=None), batch), carry
        outputs, cache = forward_from(model, params, batch, carry, deterministic=True, rng=None)
        cache = jax.tree.map(lambda new, old: new.astype(old.dtype), cache, carry)
        return sums(outputs, batch), cache

    return jax.jit(
        fn,
        in_shardings=(params_shardings, carry_shardings_, batch_shardings),
        out_shardings=(NamedSharding(mesh, P()), carry_shardings_),
        donate_argnums=(1,),
    )


def stream_metrics(
    data: Mapping[str, np.ndarray], *, bytes_per_token: float = 1.0, num_bytes: float | None = None
) -> dict[str, float]:
    """The metrics of `evaluate_stream`'s sums: the LM's (`evaluation.split_metrics`) from {"nll",
    "tokens"} (bits per byte over `num_bytes`, else the summed "bytes", else tokens x `bytes_per_token`);
    the forecaster's MSE, MAE (and per horizon prefix) over the counted positions, "examples"
    their count, and the same prefixed "origin_" over the windows' forecast origins when scored."""
    if "nll" in data:
        return split_metrics(data, "lm", bytes_per_token=bytes_per_token, num_bytes=num_bytes)
    out = forecast_metrics_from_sums(data["se"], data["ae"], float(data["forecasts"].sum()))
    if "origin_se" in data:
        origins = forecast_metrics_from_sums(
            data["origin_se"], data["origin_ae"], float(data["origins"].sum())
        )
        out |= {f"origin_{k}": v for k, v in origins.items()}
    return out


def evaluate_stream(
    eval_fn: Callable[[Any, Any, Batch], tuple[dict[str, jax.Array], Any]],
    params: Any,
    carry: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    to_device: Callable[[Mapping[str, np.ndarray]], Batch],
    *,
    bytes_per_token: float = 1.0,
    num_bytes: float | None = None,
    position_buckets: Sequence[int] | np.ndarray | None = None,
    target_losses: list[dict[str, np.ndarray]] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs `eval_fn` (`make_stream_eval_fn`) over `batches`, carrying the state from each segment to the
    next. Returns (the metrics, `stream_metrics`: for the LM as `evaluation.split_metrics` computes
    them, and the sums per lane: {"nll", "tokens"}, or the forecaster's). Batches of
    `seqjax.data.stream.document_eval_batches` carry "document" (each global row's document, -1 for
    none): the sums are then per document, [max document + 1], with "bytes" (the bytes of the counted
    targets, from the batches' "counted_bytes"), which bits per byte divides by. Batches without them
    (`stream_eval_batches`: the whole split) divide by `num_bytes` (the caller's count of the split's
    counted target bytes, `seqjax.data.stream.counted_target_bytes`), else tokens x `bytes_per_token`.

    `position_buckets` (byte offsets, `stream.check_position_buckets`; by document only, with
    `make_stream_eval_fn(per_position=True)` and `document_eval_batches(byte_offsets=True)`): the sums
    also have "bucket_nll", "bucket_tokens" and "bucket_bytes" [documents, buckets]: each document's
    counted target NLL (nats), targets and the bytes those targets stand for, by the bucket of the
    target's byte offset from the document's start. "nll" and "tokens" are then the same per-position
    values summed (float64), so the buckets add up to them to float64 round-off.

    `target_losses` (a list, with `position_buckets`): each batch appends its counted targets as 1-D
    arrays {"document", "offset" (byte offset from the document's start), "bytes", "nll" (nats,
    float32)}, one entry per target, in no particular order (`trainer.evaluate(per_target=True)` sorts
    them): the per-target losses the bucket sums are made of."""
    edges = None if position_buckets is None else check_position_buckets(position_buckets)
    if target_losses is not None and edges is None:
        raise ValueError("evaluate_stream(target_losses=...) needs position_buckets (the byte offsets).")
    totals: dict[str, np.ndarray] | None = None
    for host, sums in _dispatched_ahead(eval_fn, params, carry, batches, to_device, STREAM_EVAL_AHEAD):
        documents = host.get("document")
        rows = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        if "counted_bytes" in host:
            rows["bytes"] = np.asarray(host["counted_bytes"], np.float64)
        if edges is not None:
            if target_losses is not None:
                target_losses.append(_counted_targets(rows, host, documents))
            rows = _bucket_rows(rows, host, documents, edges)
        if documents is None:
            totals = rows if totals is None else {k: totals[k] + v for k, v in rows.items()}
            continue
        size = int(documents.max()) + 1
        if totals is None:
            totals = {k: np.zeros((size, *v.shape[1:])) for k, v in rows.items()}
        totals = {k: _grown(v, size) for k, v in totals.items()}
        used = documents >= 0
        for k, v in rows.items():
            np.add.at(totals[k], documents[used], v[used])
    if totals is None:
        raise ValueError("evaluate_stream: no batches; nothing to evaluate.")
    return stream_metrics(totals, bytes_per_token=bytes_per_token, num_bytes=num_bytes), totals


#: Host-only keys of document batches: never sent to the device.
_HOST_KEYS = ("document", "counted_bytes", "target_offset", "target_bytes")

#: Segments `evaluate_stream` dispatches before it reads the first one's sums back.
STREAM_EVAL_AHEAD = 16


def _dispatched_ahead(
    eval_fn: Callable[[Any, Any, Batch], tuple[dict[str, jax.Array], Any]],
    params: Any,
    carry: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    to_device: Callable[[Mapping[str, np.ndarray]], Batch],
    ahead: int,
) -> Iterator[tuple[Mapping[str, np.ndarray], dict[str, jax.Array]]]:
    """Yields (host batch, its device sums) in order, keeping up to `ahead` segments dispatched but
    not yet read. Why: reading a segment's sums back (`np.asarray`) waits for it, so reading each one
    at once leaves the device idle while the host builds and sends the next batch; with segments in
    flight (JAX's dispatch is asynchronous) the host's work overlaps the device's. The carry still
    passes from each segment to the next on the device, and the sums are read in order, so the totals
    are the same."""
    pending: collections.deque = collections.deque()
    for host in batches:
        sent = {k: v for k, v in host.items() if k not in _HOST_KEYS}
        sums, carry = eval_fn(params, carry, to_device(sent))
        pending.append((host, sums))
        if len(pending) > ahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _bucket_rows(
    rows: dict[str, np.ndarray],
    host: Mapping[str, np.ndarray],
    documents: np.ndarray | None,
    edges: np.ndarray,
) -> dict[str, np.ndarray]:
    """One batch's per-row sums with the per-position values turned into per-row bucket sums
    [rows, buckets] ("bucket_nll", "bucket_tokens", "bucket_bytes"), and "nll", "tokens" re-summed from
    the same per-position values (so the buckets add up to them)."""
    if documents is None or "target_offset" not in host:
        raise ValueError(
            "evaluate_stream(position_buckets=...) needs document batches with byte offsets "
            "(seqjax.data.stream.document_eval_batches(..., byte_offsets=True))."
        )
    if "position_nll" not in rows:
        raise ValueError(
            "evaluate_stream(position_buckets=...) needs per-position sums: "
            "make_stream_eval_fn(..., per_position=True)."
        )
    nll, weights = rows.pop("position_nll"), rows.pop("position_weights")
    offsets = np.asarray(host["target_offset"])
    bucket = np.searchsorted(edges, np.maximum(offsets, 0), side="right") - 1  # [rows, length]
    one_hot = bucket[..., None] == np.arange(len(edges))  # [rows, length, buckets]
    weighted_bytes = weights * np.asarray(host["target_bytes"], np.float64)
    rows["bucket_nll"] = np.einsum("rl,rlb->rb", nll, one_hot)
    rows["bucket_tokens"] = np.einsum("rl,rlb->rb", weights, one_hot)
    rows["bucket_bytes"] = np.einsum("rl,rlb->rb", weighted_bytes, one_hot)
    rows["nll"], rows["tokens"] = nll.sum(-1), weights.sum(-1)
    return rows


def _counted_targets(
    rows: Mapping[str, np.ndarray], host: Mapping[str, np.ndarray], documents: np.ndarray | None
) -> dict[str, np.ndarray]:
    """One batch's counted targets (weight > 0, in a document) as 1-D arrays: "document", "offset",
    "bytes" and "nll" (nats, float32), read before `_bucket_rows` sums them away."""
    if documents is None or "target_offset" not in host or "position_nll" not in rows:
        raise ValueError(
            "evaluate_stream(target_losses=...) needs document batches with byte offsets and per-position "
            "sums (document_eval_batches(byte_offsets=True), make_stream_eval_fn(per_position=True))."
        )
    weights = rows["position_weights"]
    counted = (weights > 0) & (documents >= 0)[:, None]
    row, _ = np.nonzero(counted)
    return {
        "document": documents[row].astype(np.int64),
        "offset": np.asarray(host["target_offset"])[counted].astype(np.int64),
        "bytes": np.asarray(host["target_bytes"])[counted].astype(np.int64),
        # position_nll is nll * weight; a counted target's weight is 1 (0/1 weights), so this is its nll
        "nll": (rows["position_nll"][counted] / weights[counted]).astype(np.float32),
    }


def _grown(sums: np.ndarray, size: int) -> np.ndarray:
    """`sums` [n, ...] padded with zeros to at least `size` rows."""
    if size <= len(sums):
        return sums
    return np.pad(sums, [(0, size - len(sums))] + [(0, 0)] * (sums.ndim - 1))
