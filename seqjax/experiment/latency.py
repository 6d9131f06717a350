"""Inference latency and throughput of equal-parameter language models by length and batch (issue 19
§4): the measurements, the statistics and the verdict rules of `experiments/latency.py`.

Measurements. Every timed call is a compiled program (`jax.jit(...).lower(...).compile()`, so compile
time is never timed), run once untimed (warm-up), then timed with `jax.block_until_ready`. Peers are
timed *interleaved*: one round calls every program of the sweep once, in an order rotated each round,
and the sweep runs several rounds. Load that comes and goes on a shared machine then falls on all peers
of a round alike, and a round is the unit of independence: intervals resample rounds, pairing the peers'
times of the same round (`paired_interval`).

- `prefill_times`: `models.prefill` (the whole prompt through every layer, the cache and the last
  token's logits) at batch 1, one sweep per length.
- `throughput_times`: the same prefill at one length for several batch sizes, every (model, batch) in
  one sweep; tokens/s = batch * length / time, and the batching gain = throughput(B) / throughput(1).
- `decode_times`: after a prefill of C tokens, `models.decode_step` (one token per row, the cache
  donated), one step per model per round.

Statistics. `summary`: median and interquartile range of a program's times. `paired_interval`: any
statistic of the peers' medians (a ratio of latencies, a ratio of batching gains) with a percentile
bootstrap over rounds. `crossovers`: the lengths where a latency ratio's median crosses 1, interpolated
on log-log axes between the measured lengths.

Rules (`RULES`, fixed before any run, and `claim_verdict`) compare a ratio's interval with a threshold,
through `verdict.verdict` on log(ratio / threshold).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from seqjax.experiment.verdict import Direction, classify_intervals, verdict

__all__ = [
    "FAMILIES",
    "RNN",
    "RULES",
    "TRANSFORMER",
    "analyse",
    "claim_verdict",
    "crossovers",
    "decode_times",
    "interleaved_times",
    "paired_interval",
    "prefill_times",
    "rounds_for",
    "rule_verdicts",
    "summary",
    "throughput_times",
]

#: The family of each model of `equal_parameters.MIXERS`.
FAMILIES: dict[str, str] = {
    "lstm": "recurrent",
    "gru": "recurrent",
    "elstm": "recurrent",
    "slstm": "recurrent",
    "s5": "state space",
    "lru": "state space",
    "mamba": "state space",
    "mamba2": "state space",
    "rglru": "state space",
    "linear_attention": "linear attention",
    "gla": "linear attention",
    "deltanet": "linear attention",
    "gated_deltanet": "linear attention",
    "rwkv7": "linear attention",
    "mlstm": "linear attention",
    "attention": "transformer",
    "sliding_window": "transformer",
}
#: The claim's "RNN" and "transformer": the classic recurrent network and the exact-attention transformer.
RNN = "lstm"
TRANSFORMER = "attention"

#: The verdict rules, fixed before the first run. Ratios are of median latencies (seconds per call),
#: RNN over transformer, with 95% percentile-bootstrap intervals over rounds (the unit of independence).
RULES: dict[str, dict[str, Any]] = {
    "a": {
        "claim": "For short sequences (< 100 tokens), RNN inference can be competitive with or faster than "
        "transformers.",
        "rule": "At every measured L < 100 (batch 1), the prefill-latency ratio LSTM / exact attention lies "
        "below 1.25 ('competitive with or faster': at most 25% slower): supported when every interval lies "
        "below 1.25, contradicted when every interval lies above 1.25, depends when some lie below and some "
        "above, inconclusive otherwise. Whether the LSTM is outright faster (interval below 1) is reported "
        "beside it.",
        "direction": "less",
        "threshold": 1.25,
    },
    "b": {
        "claim": "At medium lengths (100-1,000 tokens), transformers typically achieve lower latency.",
        "rule": "At every measured L in [100, 1024] (batch 1; 1k is measured as 1,024), the prefill-latency "
        "ratio LSTM / exact attention lies above 1 (attention faster): supported when every interval lies "
        "above 1, contradicted when every interval lies below 1, depends when mixed, inconclusive otherwise.",
        "direction": "greater",
        "threshold": 1.0,
    },
    "c": {
        "claim": "Processing 32 sequences of 256 tokens each is nearly as fast as processing one sequence.",
        "rule": "For the exact-attention transformer at L = 256, the time ratio t(batch 32) / t(batch 1) "
        "lies below 1.5 ('nearly as fast': the batch costs at most half again one sequence, i.e. at least "
        "21x the throughput, two thirds of the ideal 32x; 2x would be 'twice as slow', not 'nearly as "
        "fast'): "
        "supported when the interval lies below 1.5, contradicted when above, inconclusive otherwise.",
        "direction": "less",
        "threshold": 1.5,
    },
    "d": {
        "claim": "RNNs benefit less from batching.",
        "rule": "At L = 256, for every measured batch B > 1 (8, 32, 128), the ratio of batching gains "
        "gain_LSTM(B) / gain_attention(B), gain(B) = throughput(B) / throughput(1), lies below 1: supported "
        "when every interval lies below 1, contradicted when every interval lies above 1, depends when "
        "mixed, inconclusive otherwise.",
        "direction": "less",
        "threshold": 1.0,
    },
}


# --------------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------------
def interleaved_times(
    calls: Mapping[Hashable, Callable[[], Any]],
    rounds: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, np.ndarray]:
    """Seconds of every call in each of `rounds` rounds: {key: [rounds]}. Round r calls the keys in
    their order rotated by r, each call waited for (`jax.block_until_ready` on what it returns).

    >>> times = interleaved_times({"a": lambda: 1, "b": lambda: 2}, 3)
    >>> sorted(times), times["a"].shape
    (['a', 'b'], (3,))
    """
    import jax

    keys = list(calls)
    times = {key: np.zeros(rounds) for key in keys}
    for r in range(rounds):
        for i in range(len(keys)):
            key = keys[(i + r) % len(keys)]
            start = clock()
            jax.block_until_ready(calls[key]())
            times[key][r] = clock() - start
    return times


def rounds_for(seconds_per_round: float, budget_s: float, least: int, most: int) -> int:
    """Rounds that fit `budget_s` at `seconds_per_round` (the warm-up's), within [least, most].

    >>> rounds_for(0.5, 10.0, 5, 15), rounds_for(0.001, 10.0, 5, 15), rounds_for(10.0, 10.0, 5, 15)
    (15, 15, 5)
    """
    fit = int(budget_s / max(seconds_per_round, 1e-9))
    return max(least, min(most, fit))


def _compile(fn: Callable[..., Any], *args: Any, donate: tuple[int, ...] = ()) -> Any:
    import jax

    return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


def _timed_sweep(
    calls: Mapping[Hashable, Callable[[], Any]], budget_s: float, least: int, most: int
) -> tuple[dict[Hashable, np.ndarray], float]:
    """Warm-up (one untimed call each), one untimed calibration round whose length sets the rounds
    (`rounds_for`; a first call's one-off costs would make the warm-up a poor guide), then the
    interleaved rounds; (times, seconds of the calibration round)."""
    import jax

    for call in calls.values():
        jax.block_until_ready(call())
    per_round = float(sum(t[0] for t in interleaved_times(calls, 1).values()))
    return interleaved_times(calls, rounds_for(per_round, budget_s, least, most)), per_round


def _tokens(batch: int, length: int, vocab: int) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.random.randint(jax.random.key(1), (batch, length), 0, vocab, jnp.int32)


@functools.cache
def _variables(name: str, expansion: float, shape: Any) -> Any:
    """The variables of one mixer's LM, initialised once: they do not depend on attention's cache
    capacity (`max_length`), so every length and batch reuses them (and their compile)."""
    import jax

    from seqjax import models
    from seqjax.experiment.equal_parameters import backbone_config

    model = models.LanguageModel(backbone_config(name, expansion, 8, shape))
    return jax.jit(model.init)(jax.random.key(0), _tokens(1, 8, shape.vocab))


def _model(name: str, expansion: float, max_length: int, shape: Any) -> tuple[Any, Any]:
    """(LanguageModel, its variables) of one mixer at its matched MLP expansion."""
    from seqjax import models
    from seqjax.experiment.equal_parameters import backbone_config

    model = models.LanguageModel(backbone_config(name, expansion, max_length, shape))
    return model, _variables(name, expansion, shape)


def _prefill_call(name: str, expansion: float, batch: int, length: int, shape: Any) -> Callable[[], Any]:
    from seqjax import models

    model, variables = _model(name, expansion, length, shape)
    prompt = _tokens(batch, length, shape.vocab)
    compiled = _compile(lambda v, p: models.prefill(model, v, p), variables, prompt)
    return lambda: compiled(variables, prompt)


def prefill_times(
    sizes: Mapping[str, tuple[float, int]],
    lengths: Sequence[int],
    shape: Any,
    *,
    budget_s: float,
    least: int,
    most: int,
    cap_s: float,
    log: Callable[[str], None] = print,
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, str]]:
    """Batch-1 prefill seconds per length and model ({L: {name: [rounds]}}), the models of `sizes`
    ({name: (MLP expansion, parameters)}) interleaved at each length. A model whose median exceeds
    `cap_s` at one length is not run at the longer ones; returns the times and {name: why skipped}."""
    out: dict[int, dict[str, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for length in sorted(lengths):
        names = [n for n in sizes if n not in skipped]
        if not names:
            break
        calls = {n: _prefill_call(n, sizes[n][0], 1, length, shape) for n in names}
        times, warm = _timed_sweep(calls, budget_s, least, most)
        out[length] = {str(n): t for n, t in times.items()}
        log(
            f"prefill L={length:>6}: {len(times[names[0]])} rounds ({warm:.2f} s a round): "
            + ", ".join(f"{n} {1e3 * np.median(t):.2f} ms" for n, t in times.items())
        )
        for n, t in times.items():
            if np.median(t) > cap_s and length < max(lengths):
                skipped[str(n)] = f"median {np.median(t):.2f} s at L={length:,} > the cap of {cap_s:g} s"
    return out, skipped


def throughput_times(
    sizes: Mapping[str, tuple[float, int]],
    length: int,
    batches: Sequence[int],
    shape: Any,
    *,
    budget_s: float,
    least: int,
    most: int,
    log: Callable[[str], None] = print,
) -> dict[str, dict[int, np.ndarray]]:
    """Prefill seconds at `length` for every model and batch, all in one interleaved sweep (so the
    batching gains of two models are paired by round): {name: {batch: [rounds]}}."""
    calls = {(n, b): _prefill_call(n, sizes[n][0], b, length, shape) for n in sizes for b in sorted(batches)}
    times, warm = _timed_sweep(calls, budget_s, least, most)
    log(f"throughput L={length}: {len(next(iter(times.values())))} rounds ({warm:.2f} s a round)")
    out: dict[str, dict[int, np.ndarray]] = {}
    for (n, b), t in times.items():
        out.setdefault(str(n), {})[int(b)] = t
    return out


def decode_times(
    sizes: Mapping[str, tuple[float, int]],
    contexts: Sequence[int],
    shape: Any,
    *,
    steps: int,
    log: Callable[[str], None] = print,
) -> dict[int, dict[str, np.ndarray]]:
    """Seconds of one decode step (batch 1) after a prompt of C tokens, `steps` rounds interleaved over
    the models: {C: {name: [steps]}}. The cache grows by one token a round (attention's capacity is
    C + steps + 2); a context's prefill is not timed."""
    from seqjax import models

    out: dict[int, dict[str, np.ndarray]] = {}
    for context in sorted(contexts):
        states: dict[str, list[Any]] = {}
        calls: dict[Hashable, Callable[[], Any]] = {}
        for n in sizes:
            model, variables = _model(n, sizes[n][0], context + steps + 2, shape)
            prompt = _tokens(1, context, shape.vocab)
            cache, logits = _compile(lambda v, p, m=model: models.prefill(m, v, p), variables, prompt)(
                variables, prompt
            )
            token = logits.argmax(-1).astype("int32")
            step = _compile(
                lambda v, c, t, m=model: models.decode_step(m, v, c, t), variables, cache, token, donate=(1,)
            )
            states[n] = [cache]

            def call(
                step: Any = step, variables: Any = variables, state: list[Any] = states[n], t: Any = token
            ):
                state[0], logits = step(variables, state[0], t)
                return logits

            calls[n] = call
        times, _ = _timed_sweep(calls, 0.0, steps, steps)
        out[context] = {str(n): t for n, t in times.items()}
        log(
            f"decode C={context:>6}: "
            + ", ".join(f"{n} {1e3 * np.median(t):.3f} ms" for n, t in times.items())
        )
    return out


# --------------------------------------------------------------------------------------------------
# Statistics.
# --------------------------------------------------------------------------------------------------
def summary(times: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median, first and third quartile (seconds) and the number of timed repeats.

    >>> summary([1.0, 2.0, 3.0, 4.0, 100.0])
    {'median': 3.0, 'q1': 2.0, 'q3': 4.0, 'repeats': 5}
    """
    t = np.asarray(times, float)
    q1, median, q3 = np.quantile(t, [0.25, 0.5, 0.75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "repeats": int(t.size)}


def paired_interval(
    times: Mapping[Hashable, Sequence[float] | np.ndarray],
    statistic: Callable[[Mapping[Hashable, Any]], Any],
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    rng_seed: int = 0,
) -> dict[str, float]:
    """`statistic` of the peers' median times, with a percentile-bootstrap interval over rounds: each
    resample draws rounds with replacement and takes every peer's times of the drawn rounds together
    (the peers were timed interleaved, so round r of one is paired with round r of the others).
    `statistic` gets {key: median} and must be elementwise (it is also given {key: [n_resamples]}).

    >>> t = {"a": [2.0, 2.1, 1.9, 2.0], "b": [1.0, 1.0, 1.1, 0.9]}
    >>> r = paired_interval(t, lambda m: m["a"] / m["b"], n_resamples=200)
    >>> r["estimate"], r["low"] <= r["estimate"] <= r["high"]
    (2.0, True)
    """
    arrays = {k: np.asarray(v, float) for k, v in times.items()}
    rounds = {a.shape for a in arrays.values()}
    if len(rounds) != 1 or len(next(iter(rounds))) != 1:
        raise ValueError(f"paired_interval: the peers need the same number of rounds, got {sorted(rounds)}.")
    n = next(iter(arrays.values())).size
    estimate = float(statistic({k: float(np.median(a)) for k, a in arrays.items()}))
    index = np.random.default_rng(rng_seed).integers(0, n, (n_resamples, n))
    distribution = np.asarray(statistic({k: np.median(a[index], axis=1) for k, a in arrays.items()}), float)
    alpha = (1.0 - confidence_level) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return {
        "estimate": estimate,
        "low": float(low),
        "high": float(high),
        "confidence_level": confidence_level,
    }


def claim_verdict(
    direction: Direction, intervals: Mapping[Hashable, Mapping[str, float]], threshold: float
) -> tuple[str, dict[Hashable, str]]:
    """The verdict (`verdict.verdict`) of "the ratio lies {direction} `threshold`" at every key, with
    each key's class (claimed / opposite / neither); ("not evaluated", {}) when there is no interval.

    >>> claim_verdict("less", {32: {"low": 0.5, "high": 0.9}, 64: {"low": 0.8, "high": 1.1}}, 1.25)
    ('supported', {32: 'claimed', 64: 'claimed'})
    >>> claim_verdict("greater", {100: {"low": 0.5, "high": 0.9}, 256: {"low": 1.1, "high": 1.3}}, 1.0)
    ('depends', {100: 'opposite', 256: 'claimed'})
    """
    if not intervals:
        return "not evaluated", {}
    logs = {
        k: (math.log(v["low"] / threshold), math.log(v["high"] / threshold)) for k, v in intervals.items()
    }
    return verdict(direction, logs), dict(classify_intervals(direction, logs))


def crossovers(ratios: Mapping[int, float]) -> list[float]:
    """The lengths where a latency ratio {L: median ratio} crosses 1 between two measured lengths,
    interpolated linearly in log(ratio) against log(L); a measured ratio of exactly 1 is a crossing there.

    >>> crossovers({100: 0.5, 400: 2.0, 1600: 4.0})
    [200.0]
    >>> crossovers({32: 2.0, 64: 1.5}), crossovers({32: 2.0, 64: 1.0, 128: 0.5})
    ([], [64.0])
    """
    points = sorted((length, math.log(ratio)) for length, ratio in ratios.items())
    out = [float(length) for length, a in points if a == 0]
    for (l0, a), (l1, b) in itertools.pairwise(points):
        if a * b < 0:
            out.append(math.exp(math.log(l0) + (math.log(l1) - math.log(l0)) * a / (a - b)))
    return sorted(round(x, 1) for x in out)


# --------------------------------------------------------------------------------------------------
# Analysis: summaries, ratios against the transformers, the rules' verdicts.
# --------------------------------------------------------------------------------------------------
def _ratio(a: Hashable, b: Hashable) -> Callable[[Mapping[Hashable, Any]], Any]:
    return lambda m: m[a] / m[b]


def _gain_ratio(
    a1: Hashable, ab: Hashable, b1: Hashable, bb: Hashable
) -> Callable[[Mapping[Hashable, Any]], Any]:
    # gain(B) = throughput(B) / throughput(1) = B * t(1) / t(B); the B cancels in the ratio of gains.
    return lambda m: (m[a1] / m[ab]) / (m[b1] / m[bb])


def analyse(
    prefill: Mapping[int, Mapping[str, np.ndarray]],
    throughput: Mapping[str, Mapping[int, np.ndarray]],
    throughput_length: int,
    decode: Mapping[int, Mapping[str, np.ndarray]],
    *,
    n_resamples: int = 2000,
) -> dict[str, Any]:
    """Everything the report needs from the times: per program `summary`; per length, each model's
    latency ratio to each transformer with its interval and the crossovers; tokens/s and batching
    gains; decode summaries and ratios to exact attention; and the four rules' verdicts (`RULES`)."""

    def boot(times: Mapping[Hashable, np.ndarray], stat: Callable[..., Any]) -> dict[str, float]:
        return paired_interval(times, stat, n_resamples=n_resamples)

    transformers = [n for n in FAMILIES if FAMILIES[n] == "transformer"]
    out: dict[str, Any] = {
        "prefill": {},
        "prefill_ratios": {},
        "crossovers": {},
        "throughput": {},
        "decode": {},
    }
    for length, times in sorted(prefill.items()):
        out["prefill"][str(length)] = {n: summary(t) for n, t in times.items()}
        for ref in (r for r in transformers if r in times):
            for n in (n for n in times if n != ref):
                ratio = boot({n: times[n], ref: times[ref]}, _ratio(n, ref))
                out["prefill_ratios"].setdefault(ref, {}).setdefault(n, {})[str(length)] = ratio
    for ref, by_model in out["prefill_ratios"].items():
        out["crossovers"][ref] = {
            n: crossovers({int(length): r["estimate"] for length, r in by_length.items()})
            for n, by_length in by_model.items()
        }

    for n, by_batch in throughput.items():
        rows = {}
        for b, t in sorted(by_batch.items()):
            s = summary(t)
            rows[str(b)] = {**s, "tokens_per_s": b * throughput_length / s["median"]}
            if b != 1 and 1 in by_batch:
                pair = {1: by_batch[1], b: t}
                rows[str(b)]["gain"] = boot(pair, lambda m, b=b: b * m[1] / m[b])
                rows[str(b)]["time_ratio"] = boot(pair, lambda m, b=b: m[b] / m[1])
        out["throughput"][n] = rows

    for context, times in sorted(decode.items()):
        row = {n: summary(t) for n, t in times.items()}
        for n in (n for n in times if n != TRANSFORMER and TRANSFORMER in times):
            pair = {n: times[n], TRANSFORMER: times[TRANSFORMER]}
            row[n]["ratio_to_attention"] = boot(pair, _ratio(n, TRANSFORMER))
        out["decode"][str(context)] = row
    decode_ratios: dict[str, dict[int, float]] = {}
    for context, row in out["decode"].items():
        for n, s in row.items():
            if "ratio_to_attention" in s:
                decode_ratios.setdefault(n, {})[int(context)] = s["ratio_to_attention"]["estimate"]
    out["decode_crossovers"] = {n: crossovers(r) for n, r in decode_ratios.items()}
    out["verdicts"] = rule_verdicts(prefill, throughput, throughput_length, n_resamples=n_resamples)
    return out


def rule_verdicts(
    prefill: Mapping[int, Mapping[str, np.ndarray]],
    throughput: Mapping[str, Mapping[int, np.ndarray]],
    throughput_length: int,
    *,
    n_resamples: int = 2000,
) -> dict[str, dict[str, Any]]:
    """The verdict of each rule of `RULES` with the intervals it read ({rule: {verdict, classes,
    intervals}}; rule (a) also "faster": the same rule against 1); a rule whose models, lengths or
    batches were not measured is "not evaluated"."""

    def boot(times: Mapping[Hashable, np.ndarray], stat: Callable[..., Any]) -> dict[str, float]:
        return paired_interval(times, stat, n_resamples=n_resamples)

    evidence: dict[str, dict[Hashable, dict[str, float]]] = {key: {} for key in RULES}
    for length, times in prefill.items():
        if RNN in times and TRANSFORMER in times:
            interval = boot({RNN: times[RNN], TRANSFORMER: times[TRANSFORMER]}, _ratio(RNN, TRANSFORMER))
            if length < 100:
                evidence["a"][length] = interval
            if 100 <= length <= 1024:
                evidence["b"][length] = interval
    attention, rnn = throughput.get(TRANSFORMER, {}), throughput.get(RNN, {})
    if throughput_length == 256 and 1 in attention and 32 in attention:
        evidence["c"][32] = boot({1: attention[1], 32: attention[32]}, lambda m: m[32] / m[1])
    if throughput_length == 256 and 1 in attention and 1 in rnn:
        for b in sorted(set(attention) & set(rnn) - {1}):
            keys = {("r", 1): rnn[1], ("r", b): rnn[b], ("t", 1): attention[1], ("t", b): attention[b]}
            evidence["d"][b] = boot(keys, _gain_ratio(("r", 1), ("r", b), ("t", 1), ("t", b)))
    out = {}
    for key, rule in RULES.items():
        label, classes = claim_verdict(rule["direction"], evidence[key], rule["threshold"])
        out[key] = {
            "verdict": label,
            "classes": {str(k): v for k, v in classes.items()},
            "intervals": {str(k): v for k, v in sorted(evidence[key].items())},
        }
    if evidence["a"]:
        out["a"]["faster"] = claim_verdict("less", evidence["a"], 1.0)[0]
    return out
