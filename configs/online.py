"""Online learning on an unbounded stream (`seqjax.online.loop`): prequential evaluation (predict, then
learn, at every token), an optax optimizer, checkpoints that resume exactly.

    python scripts/online.py --config=configs/online.py:narma10:lru_rtrl --workdir=/tmp/online
    python scripts/online.py --config=configs/online.py:power:lstm_snap --config.total_steps=20000 ...

Arg: `stream:method[,key=value,...]`.
- stream: `narma10` (NARMA-10, input u_t, target y_{t+1}; unbounded), `power` (household power, the
  embedded sample, one step ahead, standardised with its first day only), `bytes` (next byte over the
  embedded perl_docs sample; bits per byte).
- method: `<cell>_<learner>` with cell lru, s5, s4d, mamba, lstm, gru, elstm and learner `rtrl` (exact
  diagonal RTRL: lru, s5, s4d, mamba), `snap` (SnAp-1: lstm, gru, elstm), `dense` (exact dense RTRL,
  any cell, small sizes) or `tbptt<k>` (online truncated BPTT through the last k tokens, any cell).
- options: hidden, state, readout, steps, lr, seed (init), stream_seed (NARMA), chunk.

    >>> c = get_config("narma10:lstm_tbptt16,hidden=8")
    >>> c.learner.kind, c.learner.window, c.model.cell, c.model.hidden_size
    ('tbptt', 16, 'lstm', 8)
"""

from __future__ import annotations

import re

import ml_collections

STREAMS = ("narma10", "power", "bytes")
LEARNER_NAMES = {"rtrl": "rtrl", "snap": "snap1", "dense": "dense_rtrl"}
OPTIONS = {
    "hidden": int,
    "state": int,
    "readout": int,
    "steps": int,
    "lr": float,
    "seed": int,
    "stream_seed": int,
    "chunk": int,
}


def parse(arg: str | None) -> tuple[str, str, str, int, dict]:
    """`stream:method[,options]` -> (stream, cell, learner kind, window, options)."""
    arg = arg or "narma10:lru_rtrl"
    if ":" not in arg:
        raise ValueError(f"configs/online.py: arg {arg!r} is not stream:method, e.g. narma10:lru_rtrl.")
    stream, rest = arg.split(":", 1)
    method, *parts = rest.split(",")
    if stream not in STREAMS:
        raise ValueError(f"configs/online.py: unknown stream {stream!r}; choose one of {list(STREAMS)}.")
    match = re.fullmatch(r"([a-z0-9]+)_(rtrl|snap|dense|tbptt(\d+))", method)
    if match is None:
        raise ValueError(
            f"configs/online.py: method {method!r} is not <cell>_<learner>, learner one of rtrl, snap, "
            "dense, tbptt<k> (e.g. lru_rtrl, lstm_snap, lstm_tbptt16)."
        )
    cell, learner, window = match.group(1), match.group(2), match.group(3)
    options = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in OPTIONS:
            raise ValueError(
                f"configs/online.py: option {part!r}; known key=value options: {sorted(OPTIONS)}."
            )
        options[key] = OPTIONS[key](value)
    if window is not None:
        return stream, cell, "tbptt", int(window), options
    return stream, cell, LEARNER_NAMES[learner], 16, options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    stream, cell, learner, window, o = parse(arg)
    c = ml_collections.ConfigDict()
    c.seed = o.get("seed", 0)  # parameter initialisation
    c.total_steps = o.get("steps", 100_000)
    c.chunk = o.get("chunk", 1000)  # tokens per jitted host call; checkpoints fall at chunk ends
    c.checkpoint_every = 10 * c.chunk
    c.keep = 2
    c.measure_memory = True  # XLA's plan of one token's step (one more compile)
    c.stream = ml_collections.ConfigDict(
        {
            "kind": stream,
            "seed": o.get("stream_seed", 0),  # narma10: the input draw
            "warmup": 1440,  # power: rows that standardise (never scored): the first day
            "corpus": "perl_docs",  # bytes
        }
    )
    hidden = o.get("hidden", 32)
    c.model = ml_collections.ConfigDict(
        {
            "cell": cell,
            "hidden_size": hidden,
            # lru, s5, s4d: the state per layer; mamba: N per inner channel (its RTRL traces grow as
            # hidden · inner² · N, so 16 by default)
            "state_size": o.get("state", 16 if cell == "mamba" else hidden),
            "num_layers": 1,
            "readout_hidden": o.get("readout", 32),  # 0: a linear readout
            "encoder": "auto",  # auto: a linear encoder for lru/s5/s4d (width = hidden), none otherwise
        }
    )
    c.learner = ml_collections.ConfigDict({"kind": learner, "window": window})
    c.optimizer = ml_collections.ConfigDict(
        {"name": "adam", "learning_rate": o.get("lr", 1e-3), "b1": 0.9, "b2": 0.999, "clip_norm": 1.0}
    )
    return c
