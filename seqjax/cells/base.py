"""The cell interface: hyperparameters in a frozen dataclass, parameters and state as explicit pytrees.

Two bases:
- `Cell`: what every sequence cell offers (`init`, `initial_state`, `step`, `apply`, `param_axes`,
  `param_groups`, `shared_params` (the parameters a model may hold once for all its layers),
  `input_size_of`, `output_size`, `step_unsupported`, which says whether `step` exists and, when it
  does not, why, and `causal_unsupported`, which says why a cell can never be causal). The model layer
  types and queries cells through it.
- `RecurrentCell(Cell)`: cells that split one token's work in two:
  - `project_inputs(params, x)`: everything that depends on the input only (input projections, biases).
    It is applied to a whole sequence at once, outside the time loop.
  - `recur(params, state, projected)`: the sequential part.

  `step` = `recur ∘ project_inputs` for one token; the default `apply` projects the whole sequence once
  and scans `recur` with `lax.scan`. Cells with a faster engine override `apply` and are tested against
  the loop of `step`.

Cells without that split (softmax attention, whose projections depend on the position held in the
state; the `Bidirectional` wrapper) derive from `Cell` and define `step` and `apply` themselves.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from seqjax.common.checks import check_flags
from seqjax.common.dense import dense
from seqjax.common.dtypes import accumulation_dtype
from seqjax.scan.sequential import broadcast_flags, reverse_resets, scan_recurrence, select_tree

PyTree = Any
Params = dict[str, Any]
State = PyTree
Axes = tuple[str | None, ...]
DType = Any

__all__ = [
    "Axes",
    "Cell",
    "Params",
    "RecurrentCell",
    "State",
    "accumulation_dtype",
    "check_sequence_axis",
    "check_sequence_parallel",
    "projection",
    "with_sequence_axis",
]


def _adopt_legacy_recurrent_cell(cls: type) -> None:
    """Keeps cells written before `RecurrentCell` existed working.

    Such a cell derives from `Cell` and defines `project_inputs` and `recur` only, relying on the
    `step` and `apply` that `Cell` used to provide. It gets `RecurrentCell`'s, with a DeprecationWarning
    that names the fix.
    """
    recurrent = globals().get("RecurrentCell")
    if recurrent is None or issubclass(cls, recurrent):
        return  # RecurrentCell itself is being defined, or the cell already has the split's methods
    if not (callable(getattr(cls, "project_inputs", None)) and callable(getattr(cls, "recur", None))):
        return
    adopted = [name for name in ("step", "apply") if getattr(cls, name) is getattr(Cell, name)]
    if not adopted:
        return  # it defines its own step and apply
    if not hasattr(cls, "scan_unroll"):
        adopted.append("scan_unroll")
    for name in adopted:
        setattr(cls, name, recurrent.__dict__[name])
    warnings.warn(
        f"{cls.__name__} derives from seqjax.cells.Cell and defines project_inputs/recur; derive it from "
        f"seqjax.cells.RecurrentCell instead, which provides the default step and apply.",
        DeprecationWarning,
        stacklevel=3,
    )


#: What to do instead of splitting time, in every refusal of sequence parallelism.
_SEQUENCE_ALTERNATIVES = (
    "Alternatives: shard the batch (data parallelism: mesh axes `data`/`fsdp`), shard the layer's width "
    "(model parallelism: mesh axis `model`), train on shorter segments with truncated BPTT (the trainer's "
    "`tbptt_length`), or use a linear-recurrence cell whose time axis can be split (S4D, S5, LRU, "
    "Mamba, Mamba2, LinearAttention, Performer, GatedLinearAttention, ScalarGatedLinearAttention, and "
    "xLSTM's matrix-memory layer MLSTM)."
)


@dataclasses.dataclass(frozen=True)
class Cell(abc.ABC):
    """Base class of all seqjax cells: the interface the model layer relies on.

    Subclasses are frozen dataclasses holding hyperparameters only. Cells with the `project_inputs` /
    `recur` split derive from `RecurrentCell`, which supplies `step` and `apply`.
    """

    #: registry name, set by `seqjax.cells.register`.
    name: ClassVar[str] = "cell"
    #: Whether the state holds every token seen (a KV cache that fills up: `Attention`) rather than a
    #: fixed summary, so it cannot be carried along an unbounded stream (segment recurrence refuses it).
    state_grows_with_sequence: ClassVar[bool] = False
    #: Whether the state update is a nonlinear function of the previous state (LSTM, GRU, E-LSTM, sLSTM),
    #: so the time axis cannot be split over devices (`sequence_parallel_unsupported`).
    nonlinear_recurrence: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _adopt_legacy_recurrent_cell(cls)

    # ----------------------------------------------------------------------------------------------
    # What each cell defines.
    # ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def init(self, key: jax.Array, input_size: int) -> Params:
        """Returns the parameter pytree for inputs with `input_size` features."""

    @abc.abstractmethod
    def initial_state(self, batch_shape: Sequence[int] = (), dtype: DType = jnp.float32) -> State:
        """The state before the first token (and after a reset); its size does not depend on time."""

    @abc.abstractmethod
    def param_axes(self) -> PyTree:
        """Logical axis names of every parameter, same tree structure as `init`'s result."""

    def param_groups(self) -> PyTree:
        """Optimizer group of every parameter, same tree structure as `init`'s result.

        "default" for ordinary weights; "ssm" for the dynamics parameters (A, Δ, λ) that S4, S5, LRU and
        Mamba train at their own learning rate and without weight decay. The trainer reads these.
        """
        return jax.tree.map(lambda _: "default", self.param_axes(), is_leaf=lambda x: isinstance(x, tuple))

    def shared_params(self) -> tuple[str, ...]:
        """Names of the parameters (keys of `init`'s result) that a model holds once for all its layers of
        this cell type, e.g. Linformer's E with `sharing="layerwise"`; () for every other cell.

        The cell itself is unchanged by it: `init` still creates them and `apply` reads them from its
        `params`, so the cell works alone. Sharing is the owner's choice: `seqjax.models.Backbone` creates
        them once (`params["backbone"]["shared"][cell.name]`) and passes the same arrays to every such
        layer, so their gradient sums over the layers. By hand, put the same arrays in each layer's
        params: `cell.apply({**params_i, "e": e}, xs)`.

        >>> from seqjax.cells import GRU
        >>> GRU(hidden_size=4).shared_params()
        ()
        """
        return ()

    @abc.abstractmethod
    def input_size_of(self, params: Params) -> int:
        """The input width that `params` were initialised for."""

    @property
    @abc.abstractmethod
    def output_size(self) -> int:
        """Features of each output token."""

    @abc.abstractmethod
    def step(
        self,
        params: Params,
        state: State,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        """Processes one token `x` [*batch, input_size].

        `reset` [*batch] clears the state before this token; `mask` [*batch] == False marks padding: the
        state is returned unchanged and the output is zero. Either flag may have any shape that
        broadcasts to [*batch]. Raises TypeError when `step_unsupported(streaming=False)` gives a reason.
        """

    @abc.abstractmethod
    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """Processes a whole sequence `xs` [*batch, time, input_size].

        `resets` and `mask` are [*batch, time] or any shape that broadcasts to it (e.g. [1, time] or
        [time]: one mask for the whole batch). Returns `ys` [*batch, time, output_size] and the state
        after the last valid token (the first one when the cell runs in reverse).
        """

    #: whether `apply` runs right to left; cells with a `reverse` field override this.
    @property
    def is_reversed(self) -> bool:
        return bool(getattr(self, "reverse", False))

    def step_unsupported(self, *, streaming: bool = True) -> str | None:
        """Why this cell cannot run token by token, or None if it can.

        `streaming=True` asks for a left-to-right stream (prefill, decode, generation), so it also
        refuses reversed cells: their `step` exists, but they read the sequence right to left. Cells
        whose `step` reads future tokens (bidirectional or non-causal forms) override this.
        """
        if streaming and self.is_reversed:
            return (
                f"{self._label} with reverse=True runs right to left, so it cannot stream tokens left to "
                f"right"
            )
        return None

    def causal_unsupported(self) -> str | None:
        """Why this cell can never be causal, whatever its settings, or None.

        A language model refuses a cell that gives a reason (`seqjax.models.LanguageModel`): its
        outputs would read the tokens they predict. Cells that are bidirectional only by a setting
        (causal=False, reverse=True, the `Bidirectional` wrapper) return None here and say so in
        `step_unsupported`; Linformer, whose sequence projection mixes all positions, gives a reason.

        >>> from seqjax.cells import GRU
        >>> GRU(hidden_size=4).causal_unsupported() is None
        True
        """
        return None

    def sequence_parallel_unsupported(self) -> str | None:
        """Why this cell's time axis cannot be split over a `sequence` mesh axis, or None if it can.

        Cells that can (S4D, S5, LRU, Mamba, Mamba-2, RG-LRU, the delta rules, the linear-attention
        cells, mLSTM, `Attention`, `SlidingWindowAttention` and `TransformerXLAttention`) have a
        `sequence_axis` field: set it with `with_sequence_axis`, and `apply` runs the sequence-parallel
        engine (`seqjax.scan.sequence_parallel`; for softmax attention
        `seqjax.scan.attention.sequence_parallel_attention`: a ring, an all-gather or a halo) inside
        `jax.set_mesh`. A nonlinear recurrence can never be split; other cells have no sequence-parallel
        form yet.

        >>> from seqjax.cells import LSTM, S4D
        >>> S4D(hidden_size=4).sequence_parallel_unsupported() is None
        True
        >>> "truncated BPTT" in LSTM(hidden_size=4).sequence_parallel_unsupported()
        True
        """
        if "sequence_axis" in {f.name for f in dataclasses.fields(self)}:
            return None
        if self.nonlinear_recurrence:
            return (
                f"{self._label} is a nonlinear recurrence: h_t depends on h_(t-1) through a nonlinearity, so "
                f"there is no associative combine that lets a device start its part of the sequence before "
                f"the previous device has finished; its time axis cannot be split over devices. "
                f"{_SEQUENCE_ALTERNATIVES}"
            )
        return f"{self._label} has no sequence-parallel form yet. {_SEQUENCE_ALTERNATIVES}"

    # ----------------------------------------------------------------------------------------------
    # Validation and the reset/padding rule, shared by every cell.
    # ----------------------------------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return type(self).__name__

    def _check_input(self, params: Params, x: Any, *, min_rank: int, what: str, form: str) -> jax.Array:
        x = jnp.asarray(x)
        shape_doc = "[*batch, input_size]" if form == "step" else "[*batch, time, input_size]"
        if x.ndim < min_rank:
            raise ValueError(
                f"{self._label}.{form}: `{what}` has rank {x.ndim} (shape {x.shape}), expected "
                f"{shape_doc} with rank >= {min_rank}."
                + (" For one token use `step`." if form == "apply" and x.ndim == 1 else "")
            )
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise TypeError(
                f"{self._label}.{form}: `{what}` is complex ({x.dtype}); cells take real features. Pass "
                f"the real and imaginary parts as separate features, e.g. jnp.concatenate([x.real, x.imag], "
                f"-1)."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{self._label}.{form}: `{what}` has dtype {x.dtype}; cells take floating-point features "
                f"(embed token ids first)."
            )
        expected = self.input_size_of(params)
        if x.shape[-1] != expected:
            raise ValueError(
                f"{self._label}.{form}: `{what}` has {x.shape[-1]} features (shape {x.shape}), but the "
                f"params were initialised with input_size={expected}. Re-run `init(key, "
                f"input_size={x.shape[-1]})` or project the inputs to {expected} features."
            )
        return x

    def _check_state(self, state: State, batch_shape: tuple[int, ...]) -> None:
        expected = jax.eval_shape(lambda: self.initial_state(batch_shape))
        got_struct = jax.tree.structure(state)
        if got_struct != jax.tree.structure(expected):
            raise ValueError(
                f"{self._label}: state has structure {got_struct}, expected {jax.tree.structure(expected)}"
                f"; build it with `cell.initial_state(batch_shape)`."
            )
        for got, exp in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
            if tuple(got.shape) != tuple(exp.shape):
                raise ValueError(
                    f"{self._label}: a state leaf has shape {tuple(got.shape)}, expected "
                    f"{tuple(exp.shape)} for batch shape {batch_shape}; build it with "
                    f"`cell.initial_state({batch_shape})`."
                )

    def _initial_like(self, state: State, batch_shape: tuple[int, ...]) -> State:
        initial = self.initial_state(batch_shape)
        return jax.tree.map(lambda i, s: i.astype(s.dtype), initial, state)

    def _check_step_args(
        self, params: Params, state: State, x: Any, reset: Any, mask: Any
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Validates `step`'s arguments; returns x and the flags as arrays (flags boolean)."""
        x = self._check_input(params, x, min_rank=1, what="x", form="step")
        batch_shape = x.shape[:-1]
        self._check_state(state, batch_shape)
        if reset is not None:
            reset = check_flags(self._label, "reset", reset, batch_shape)
        if mask is not None:
            mask = check_flags(self._label, "mask", mask, batch_shape)
        return x, reset, mask

    def _step_with_flags(
        self,
        state: State,
        batch_shape: tuple[int, ...],
        reset: jax.Array | None,
        mask: jax.Array | None,
        update: Callable[[State], tuple[State, jax.Array]],
    ) -> tuple[State, jax.Array]:
        """`update` (state -> (state, y)) under `step`'s rules: a reset starts from the initial state, a
        padded token keeps the old state and outputs zero. The flags are already validated."""
        prev = state
        if reset is not None:
            prev = select_tree(reset, self._initial_like(state, batch_shape), state)
        new, y = update(prev)
        if mask is not None:
            new = select_tree(mask, new, state)
            y = jnp.where(broadcast_flags(mask, y), y, jnp.zeros((), y.dtype))
        return new, y

    def _prepare_apply(
        self,
        params: Params,
        xs: Any,
        state: State | None,
        resets: Any,
        mask: Any,
    ) -> tuple[jax.Array, State, jax.Array | None, jax.Array | None]:
        """Validates `apply`'s arguments; returns resets already converted for the scan direction."""
        xs = self._check_input(params, xs, min_rank=2, what="xs", form="apply")
        batch_shape = xs.shape[:-2]
        if state is None:
            state = self.initial_state(batch_shape)
        else:
            self._check_state(state, batch_shape)
        if resets is not None:
            resets = check_flags(self._label, "resets", resets, xs.shape[:-1])
            if self.is_reversed:
                resets = reverse_resets(resets, time_axis=len(batch_shape))
        if mask is not None:
            mask = check_flags(self._label, "mask", mask, xs.shape[:-1])
        return xs, state, resets, mask


def projection(cell: Cell, spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """A cell's projection `jnp.einsum(spec, x, w)`: operands in the cell's compute dtype (`cell.dtype`),
    accumulated in its accumulation dtype, as one 2-D matmul (`seqjax.common.dense`) except under sequence
    parallelism (`cell.sequence_axis` set), where the einsum keeps the time axis sharded.

    >>> import jax.numpy as jnp
    >>> from seqjax import cells
    >>> cell = cells.get("gla", num_heads=2, head_dim=4)
    >>> projection(cell, "...i,ihd->...hd", jnp.ones((3, 5, 6)), jnp.ones((6, 2, 4))).shape
    (3, 5, 2, 4)
    """
    dtype = cell.dtype
    return dense(
        spec,
        x.astype(dtype),
        w.astype(dtype),
        preferred_element_type=accumulation_dtype(dtype),
        flatten=getattr(cell, "sequence_axis", None) is None,
    )


def check_sequence_parallel(cell: Cell) -> None:
    """Raises ValueError, with the reason and the alternatives, unless `cell`'s time axis can be split
    over devices (a `sequence` mesh axis). The trainer calls it for every cell of a model on a mesh with
    a `sequence` axis of size > 1.

    >>> from seqjax.cells import GRU
    >>> check_sequence_parallel(GRU(hidden_size=4))
    Traceback (most recent call last):
    ...
    ValueError: GRU is a nonlinear recurrence: ...
    """
    reason = cell.sequence_parallel_unsupported()
    if reason is not None:
        raise ValueError(reason)


def check_sequence_axis(label: str, sequence_axis: object) -> None:
    """Raises ValueError unless `sequence_axis` (a cell's field) is a mesh axis name or None.

    >>> check_sequence_axis("LRU", "sequence")
    >>> check_sequence_axis("LRU", 4)
    Traceback (most recent call last):
    ...
    ValueError: LRU: sequence_axis must be a mesh axis name or None, got 4.
    """
    if sequence_axis is not None and (not isinstance(sequence_axis, str) or not sequence_axis):
        raise ValueError(f"{label}: sequence_axis must be a mesh axis name or None, got {sequence_axis!r}.")


def with_sequence_axis(cell: Cell, sequence_axis: str | None) -> Cell:
    """`cell` with its time axis split over the mesh axis `sequence_axis` (None: not split).

    Checks with `check_sequence_parallel` first. The cell's `apply` must then run where the mesh is set
    (`with jax.set_mesh(mesh):`, or pass through the trainer).

    >>> from seqjax.cells import LRU
    >>> with_sequence_axis(LRU(hidden_size=4), "sequence").sequence_axis
    'sequence'
    """
    if sequence_axis is None and "sequence_axis" not in {f.name for f in dataclasses.fields(cell)}:
        return cell
    check_sequence_parallel(cell)
    return dataclasses.replace(cell, sequence_axis=sequence_axis)


@dataclasses.dataclass(frozen=True)
class RecurrentCell(Cell):
    """A cell with the `project_inputs` / `recur` split; `step` and the default `apply` come from it."""

    @abc.abstractmethod
    def project_inputs(self, params: Params, x: jax.Array) -> PyTree:
        """Input-only work for tokens `x` [..., input_size]; batched over any leading axes."""

    @abc.abstractmethod
    def recur(self, params: Params, state: State, projected: PyTree) -> tuple[State, jax.Array]:
        """One recurrence step on a batch of projected tokens: (state, projected_t) -> (state, y_t)."""

    #: `lax.scan` unroll factor for the default `apply`.
    @property
    def scan_unroll(self) -> int:
        return int(getattr(self, "unroll", 1))

    def step(
        self,
        params: Params,
        state: State,
        x: jax.Array,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        """Processes one token `x` [*batch, input_size].

        `reset` [*batch] clears the state before this token; `mask` [*batch] == False marks padding: the
        state is returned unchanged and the output is zero.
        """
        x, reset, mask = self._check_step_args(params, state, x, reset, mask)
        return self._step_with_flags(
            state,
            x.shape[:-1],
            reset,
            mask,
            lambda prev: self.recur(params, prev, self.project_inputs(params, x)),
        )

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        state: State | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, State]:
        """Processes a whole sequence `xs` [*batch, time, input_size].

        Returns `ys` [*batch, time, output_size] and the state after the last valid token (the first
        one when the cell runs in reverse).
        """
        xs, state, resets, mask = self._prepare_apply(params, xs, state, resets, mask)
        batch_shape = xs.shape[:-2]
        nb = len(batch_shape)
        # Time-major before projecting: transposing the narrow inputs is cheap, and the projection is
        # then a plain matmul (a matmul writing a transposed output is 2x slower on CPU).
        time_major = self.project_inputs(params, jnp.moveaxis(xs, nb, 0))
        if resets is not None:
            resets = jnp.moveaxis(resets, nb, 0)
        if mask is not None:
            mask = jnp.moveaxis(mask, nb, 0)
        ys, final = scan_recurrence(
            lambda s, p: self.recur(params, s, p),
            state,
            time_major,
            initial=self._initial_like(state, batch_shape),
            resets=resets,
            mask=mask,
            reverse=self.is_reversed,
            unroll=self.scan_unroll,
        )
        return jnp.moveaxis(ys, 0, nb), final
