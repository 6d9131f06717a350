"""The prequential online loop: at every token of a stream, predict, score the prediction, then learn
from the token (an optax update with the learner's gradient), with checkpoints that resume exactly.

    from seqjax.online.loop import run
    result = run(config, "/tmp/online")          # config: configs/online.py's ConfigDict
    result["prequential"], result["seconds_per_step"], result["step_memory_bytes"]

Semantics. Token t's prediction is made with the parameters after the updates from tokens 0 .. t-1 and
before the target y_t is used; its score (squared error averaged over outputs, or bits for bytes) is
recorded, then y_t's loss gives the learner's gradient and the optimizer updates the parameters that
predict token t + 1. The prequential score is the mean of the recorded scores (padding excluded).

Speed. `config.chunk` tokens run per host call, as one jitted `lax.scan` over (learner step, optimizer
update); the stream supplies the chunk's tokens by position (`seqjax.online.streams`).

Checkpoints (Orbax, `seqjax.train.checkpoint.Checkpoints`: atomic, checksummed, NaN/Inf refused) at
chunk ends every `config.checkpoint_every` tokens and at the end hold the parameters, the optimizer
state, the learner state (cell states, traces, stream position) and the RNG key, with the stream
position and the config as JSON. A rerun with the same workdir restores the newest readable one and
continues from its position: the same compiled chunk program on the same tokens from the same state, so
the run ends bitwise where an uninterrupted one does (on one CPU; tests/test_online_loop.py). Complex
states and traces (LRU, S5, S4D) are stored as (real, imaginary) pairs. SIGTERM/SIGINT save at the
next chunk end and return.

Logs in the workdir: `prequential.f32`, one float32 per token (NaN for padding), and `chunks.jsonl`, one
line per chunk (position, steps, seconds, score sum and count). Both are cut back to the checkpoint's
position on resume, so a killed run leaves no record of tokens it will redo.

A non-finite score or parameter stops the run with `NonFiniteLossError` naming the token; nothing of
that chunk is logged or saved, and the last checkpoint stays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from seqjax.common.extras import TRAIN_MODULES, require

# The learners need only jax; the loop optimises with optax and checkpoints through seqjax.train, so
# without the train extra importing it is one error naming the fix.
require(__name__, "train", *TRAIN_MODULES)

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from seqjax import cells
from seqjax.online.dense_rtrl import DenseRTRL
from seqjax.online.diagonal_rtrl import DIAGONAL_CELLS, DiagonalRTRL
from seqjax.online.learner import OnlineLearner, squared_error
from seqjax.online.model import OnlineModel
from seqjax.online.snap import SnAp1
from seqjax.online.streams import Narma10, Stream, document_bytes, household_power
from seqjax.online.tbptt import OnlineTBPTT

__all__ = [
    "CELLS",
    "LEARNERS",
    "NonFiniteLossError",
    "OnlineLoop",
    "build_stream",
    "read_prequential",
    "run",
]

log = logging.getLogger(__name__)

PyTree = Any
LN2 = math.log(2.0)

CELLS: dict[str, Callable[..., Any]] = {
    "lru": lambda c: cells.LRU(c.hidden_size, state_size=c.state_size),
    "s5": lambda c: cells.S5(c.hidden_size, state_size=c.state_size),
    "s4d": lambda c: cells.S4D(c.hidden_size, state_size=c.state_size),
    "mamba": lambda c: cells.Mamba(d_model=c.hidden_size, state_size=c.state_size),
    "lstm": lambda c: cells.LSTM(c.hidden_size),
    "gru": lambda c: cells.GRU(c.hidden_size),
    "elstm": lambda c: cells.ELSTM(c.hidden_size),
}
#: learner.kind -> (class, what it accepts, for the error message)
LEARNERS: dict[str, tuple[type, str]] = {
    "rtrl": (DiagonalRTRL, "exact diagonal RTRL: cells lru, s5, s4d, mamba"),
    "snap1": (SnAp1, "SnAp-1: cells lstm, gru, elstm"),
    "dense_rtrl": (DenseRTRL, "exact dense RTRL: any cell, small hidden sizes"),
    "tbptt": (OnlineTBPTT, "online truncated BPTT: any cell (learner.window tokens)"),
}
PREQUENTIAL_FILE = "prequential.f32"
CHUNKS_FILE = "chunks.jsonl"


class ConfigRefused(ValueError):
    """A config the loop will not run: a value it does not accept (the message names `config.<key>` and
    what it accepts), or a workdir that holds a run with another config. Raised before any training;
    `scripts/online.py` prints the message alone and exits with status 2."""


class NonFiniteLossError(FloatingPointError):
    """The prequential score or the parameters became NaN/Inf at stream position `token`; nothing of the
    chunk was saved."""

    def __init__(self, message: str, token: int) -> None:
        super().__init__(message)
        self.token = token


# ==================================================================================================
# Building the pieces from the config
# ==================================================================================================
def build_stream(c: Any) -> Stream:
    """The stream of a config's `stream` section (configs/online.py)."""
    kind = c.kind
    if kind == "narma10":
        return Narma10(int(c.seed))
    if kind == "power":
        return household_power(int(c.warmup))
    if kind == "bytes":
        return document_bytes(c.corpus)
    raise ConfigRefused(f"config: stream.kind must be one of narma10, power, bytes; got {kind!r}.")


def _loss_and_score(kind: str) -> tuple[Callable, Callable]:
    """(training loss [*batch], per-token score [*batch]) for a stream's loss kind."""
    if kind == "mse":
        return squared_error, lambda pred, y: jnp.mean((pred - y) ** 2, axis=-1)

    def cross_entropy(pred: jax.Array, y: jax.Array) -> jax.Array:
        return -jnp.sum(y * jax.nn.log_softmax(pred, axis=-1), axis=-1)

    return cross_entropy, lambda pred, y: cross_entropy(pred, y) / LN2


def _model(c: Any, stream: Stream) -> OnlineModel:
    if c.cell not in CELLS:
        raise ConfigRefused(f"config: model.cell must be one of {sorted(CELLS)}, got {c.cell!r}.")
    layers = tuple(CELLS[c.cell](c) for _ in range(int(c.num_layers)))
    # The diagonal recurrences (and Mamba) map hidden_size features to hidden_size: "auto" encodes.
    diagonal = type(layers[0]) in DIAGONAL_CELLS or c.cell == "mamba"
    encoder = diagonal if c.encoder == "auto" else bool(c.encoder)
    if diagonal and not encoder and stream.input_size != c.hidden_size:
        raise ConfigRefused(
            f"config: model.encoder=False needs model.hidden_size == the stream's input size "
            f"({stream.input_size}) for a {c.cell} cell (it maps hidden_size features to hidden_size)."
        )
    hidden = int(c.readout_hidden)
    return OnlineModel(
        layers,
        input_size=stream.input_size,
        output_size=stream.output_size,
        encoder=encoder,
        readout_hidden=hidden if hidden > 0 else None,
    )


def _learner(c: Any, model: OnlineModel, loss_fn: Callable) -> OnlineLearner:
    if c.kind not in LEARNERS:
        raise ConfigRefused(f"config: learner.kind must be one of {sorted(LEARNERS)}, got {c.kind!r}.")
    cls, accepts = LEARNERS[c.kind]
    try:
        if c.kind == "tbptt":
            return OnlineTBPTT(model, loss_fn=loss_fn, window=int(c.window))
        return cls(model, loss_fn=loss_fn)
    except (TypeError, ValueError) as e:
        raise ConfigRefused(
            f"config: learner.kind={c.kind!r} ({accepts}) cannot train this model: {e}"
        ) from None


def _optimizer(c: Any) -> optax.GradientTransformation:
    if c.name == "adam":
        base = optax.adam(c.learning_rate, b1=c.b1, b2=c.b2)
    elif c.name == "sgd":
        base = optax.sgd(c.learning_rate)
    else:
        raise ConfigRefused(f"config: optimizer.name must be adam or sgd, got {c.name!r}.")
    if not (c.learning_rate > 0 and math.isfinite(c.learning_rate)):
        raise ConfigRefused(f"config: optimizer.learning_rate must be positive, got {c.learning_rate!r}.")
    if c.clip_norm and c.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(c.clip_norm), base)
    return base


# ==================================================================================================
# Storing complex leaves (Orbax and the checksums take real arrays)
# ==================================================================================================
def _to_real(tree: PyTree) -> PyTree:
    return jax.tree.map(
        lambda a: jnp.stack([jnp.real(a), jnp.imag(a)], -1) if jnp.iscomplexobj(a) else a, tree
    )


def _from_real(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(
        lambda a, t: lax.complex(a[..., 0], a[..., 1]) if jnp.iscomplexobj(t) else a, tree, like
    )


# ==================================================================================================
# The loop
# ==================================================================================================
@dataclasses.dataclass
class OnlineLoop:
    """The pieces of one online run and its jitted chunk program.

    state = {"params", "opt_state", "learner": LearnerState, "key"}; `run_chunk(state, x, y, reset,
    mask)` over [n, ...] tokens returns (state, scores [n], predictions [n, out]).
    """

    config: Any
    stream: Stream = dataclasses.field(init=False)
    model: OnlineModel = dataclasses.field(init=False)
    learner: OnlineLearner = dataclasses.field(init=False)
    optimizer: optax.GradientTransformation = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.stream = build_stream(c.stream)
        self.loss_fn, self.score_fn = _loss_and_score(self.stream.loss)
        self.model = _model(c.model, self.stream)
        self.learner = _learner(c.learner, self.model, self.loss_fn)
        self.optimizer = _optimizer(c.optimizer)
        self.run_chunk = jax.jit(self._chunk)

    def init_state(self, seed: int | None = None) -> dict[str, Any]:
        key = jax.random.PRNGKey(int(self.config.seed if seed is None else seed))
        init_key, key = jax.random.split(key)
        params = self.model.init(init_key)
        return {
            "params": params,
            "opt_state": self.optimizer.init(params),
            "learner": self.learner.init(params, ()),
            "key": key,
        }

    def token(self, state: dict[str, Any], x: jax.Array, y: jax.Array, reset: jax.Array, mask: jax.Array):
        """One token: predict (learner.step scores the params before this token's update), then update."""
        params = state["params"]
        learner_state, pred, _, grads = self.learner.step(params, state["learner"], x, y, reset, mask)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], params)
        # a padded token has zero gradient, but Adam's moments would still decay: padding changes nothing
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(mask, a, b), new, old)
        params = keep(optax.apply_updates(params, updates), params)
        opt_state = keep(opt_state, state["opt_state"])
        score = jnp.where(mask, self.score_fn(pred, y), jnp.nan)
        new = {"params": params, "opt_state": opt_state, "learner": learner_state, "key": state["key"]}
        return new, score, pred

    def _chunk(self, state: dict[str, Any], xs, ys, resets, masks):
        def body(st: dict[str, Any], tok: tuple[jax.Array, ...]):
            st, score, pred = self.token(st, *tok)
            return st, (score, pred)

        state, (scores, preds) = lax.scan(body, state, (xs, ys, resets, masks))
        return state, scores, preds

    def step_memory_bytes(self, state: dict[str, Any]) -> int | None:
        """XLA's memory plan (arguments + outputs + temporaries) of one token's step and update."""
        from seqjax.common.xla import plan_bytes

        s = self.stream
        x, y = jnp.zeros((s.input_size,)), jnp.zeros((s.output_size,))
        flag = jnp.asarray(False)
        return plan_bytes(jax.jit(self.token).lower(state, x, y, flag, ~flag).compile())


def read_prequential(workdir: str | os.PathLike[str]) -> np.ndarray:
    """The per-token scores a run in `workdir` logged (float32, NaN for padding)."""
    return np.fromfile(os.path.join(workdir, PREQUENTIAL_FILE), np.float32)


def _truncate_logs(workdir: str, position: int) -> None:
    """Cuts the logs back to `position` tokens (a killed run may have logged past its checkpoint)."""
    path = os.path.join(workdir, PREQUENTIAL_FILE)
    if os.path.exists(path):
        with open(path, "r+b") as f:
            f.truncate(4 * position)
    path = os.path.join(workdir, CHUNKS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            lines = [line for line in f if line.strip() and json.loads(line)["position"] <= position]
        with open(path, "w") as f:
            f.writelines(lines)


def _config_dict(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config)))


def _check_same_run(saved: Mapping[str, Any], current: Mapping[str, Any], workdir: str) -> None:
    """Only total_steps may change on resume (to extend a run)."""

    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(current)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "total_steps")
    if changed:
        what = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
        raise ConfigRefused(
            f"{workdir} holds a run with another config ({what}); give another --workdir, or delete it."
        )


def _check_steps(c: Any) -> None:
    total, chunk = int(c.total_steps), int(c.chunk)
    if total < 1 or chunk < 1 or int(c.checkpoint_every) % chunk:
        raise ConfigRefused(
            f"config: total_steps ({total}) and chunk ({chunk}) must be positive and checkpoint_every "
            f"({c.checkpoint_every}) a multiple of chunk (checkpoints fall at chunk ends)."
        )


def run(
    config: Any,
    workdir: str | os.PathLike[str],
    *,
    echo: Callable[[str], None] | None = print,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the online loop of `config` in `workdir` until `config.total_steps` tokens.

    The run holds `workdir`'s lock (`seqjax.train.workdir`: a second run on it is a
    `WorkdirLockedError`). `stop_at` (tests) stops after the chunk that reaches that position, with a
    checkpoint. Returns
    {"position", "prequential" (mean score so far), "metric", "seconds_per_step" (median over chunks
    after the first), "step_memory_bytes", "resumed_from", "preempted", "state"}.
    """
    from seqjax.train.workdir import lock_workdir

    c = config
    _check_steps(c)  # (before the lock: a config refused here leaves no workdir)
    workdir = os.path.abspath(os.fspath(workdir))
    lock = lock_workdir(workdir)  # two runs appending to one workdir's logs would corrupt both
    try:
        return _run_locked(c, workdir, say=echo or (lambda _: None), stop_at=stop_at)
    finally:
        lock.release()


def _run_locked(c: Any, workdir: str, *, say: Callable[[str], None], stop_at: int | None) -> dict[str, Any]:
    from seqjax.train.checkpoint import Checkpoints
    from seqjax.train.preemption import StopSignals

    total, chunk = int(c.total_steps), int(c.chunk)
    loop = OnlineLoop(c)
    if loop.stream.length is not None and total > loop.stream.length:
        raise ConfigRefused(
            f"config: total_steps {total} exceeds the stream's {loop.stream.length} tokens "
            f"({loop.stream.describe()})."
        )
    current = _config_dict(c)
    state = loop.init_state()
    abstract = jax.eval_shape(lambda: _to_real(state))
    position, resumed_from = 0, None
    ckpt = Checkpoints(
        os.path.join(workdir, "checkpoints"),
        save_every=int(c.checkpoint_every),
        keep=int(c.keep),
        async_save=False,
    )
    with ckpt, StopSignals() as signals:
        saved = ckpt.saved_config()
        if saved is not None:
            _check_same_run(saved[1], current, workdir)
            restored = ckpt.restore(abstract)
        else:
            restored = None
        if restored is not None:
            state = _from_real(restored.state, state)
            position = resumed_from = int(restored.data_state["position"])
            if int(state["learner"].position) != position:
                raise ValueError(f"{workdir}: checkpoint step {restored.step} disagrees with its position.")
            say(f"resumed from position {position}")
        _truncate_logs(workdir, position)
        memory = loop.step_memory_bytes(state) if c.measure_memory else None
        seconds: list[float] = []
        preempted = None
        scores_path, chunks_path = os.path.join(workdir, PREQUENTIAL_FILE), os.path.join(workdir, CHUNKS_FILE)
        with open(scores_path, "ab") as scores_file, open(chunks_path, "a") as chunks_file:
            while position < total:
                n = min(chunk, total - position)
                tokens = loop.stream.chunk(position, n)
                start = time.perf_counter()
                new_state, scores, _ = loop.run_chunk(state, *map(jnp.asarray, tokens))
                scores = np.asarray(scores)
                elapsed = time.perf_counter() - start
                bad = ~np.isfinite(scores) & tokens.mask
                if bad.any() or not _finite(new_state["params"]):
                    at = position + (int(np.argmax(bad)) if bad.any() else n - 1)
                    raise NonFiniteLossError(
                        f"token {at}: the prequential loss or the parameters became NaN/Inf; stopped "
                        f"without saving (the last checkpoint, position {ckpt.latest_step() or 0}, is "
                        f"kept). Lower optimizer.learning_rate or set optimizer.clip_norm.",
                        token=at,
                    )
                state, position = new_state, position + n
                seconds.append(elapsed / n)
                scores_file.write(scores.astype(np.float32).tobytes())
                scores_file.flush()
                valid = scores[tokens.mask]
                line = {"position": position, "steps": n, "seconds": elapsed}
                line |= {"score_sum": float(valid.sum()), "count": int(valid.size)}
                chunks_file.write(json.dumps(line) + "\n")
                chunks_file.flush()
                stop = signals.stop_signal()
                done = position >= total or (stop_at is not None and position >= stop_at)
                if ckpt.should_save(position) or done or stop:
                    data_state = {"position": position, "stream": loop.stream.describe()}
                    ckpt.save(position, _to_real(state), data_state=data_state, config=current)
                if stop:
                    preempted = stop
                    say(f"stopped by signal {stop} at position {position} (saved)")
                    break
                if done:
                    break
    all_scores = read_prequential(workdir)
    timed = seconds[1:] or seconds
    result = {
        "position": position,
        "prequential": float(np.nanmean(all_scores)) if all_scores.size else float("nan"),
        "metric": "mse" if loop.stream.loss == "mse" else "bits_per_byte",
        "seconds_per_step": float(np.median(timed)) if timed else None,
        "step_memory_bytes": memory,
        "resumed_from": resumed_from,
        "preempted": preempted,
        "state": state,
    }
    say(
        f"done: position {position}, prequential {result['metric']} {result['prequential']:.5f}"
        + (f", {result['seconds_per_step'] * 1e6:.1f} µs/step" if result["seconds_per_step"] else "")
    )
    return result


def _finite(tree: PyTree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))
