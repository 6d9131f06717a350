"""Experiment (issue 20, seed 002): online learning on streams. Exact RTRL (LRU, `DiagonalRTRL`) and
SnAp-1 (LSTM) against online truncated BPTT through the last k = 1, 4, 16, 64 tokens (the same LRU and
LSTM models), prequentially (predict, then learn, at every token) on NARMA-10 and on household power one
step ahead. Strong non-neural baselines in the same table: running mean, persistence, online RLS on
lagged inputs. Logic, units of independence and the verdict rules (fixed before any run):
`seqjax/experiment/online_learning.py`.

    python experiments/online_learning.py --size=smoke     # ~1 min: the wiring (k = 1, 4; 600 tokens)
    python experiments/online_learning.py --size=medium    # 20,000 tokens, 3 seeds, k = 1, 4, 16, 64
    python experiments/online_learning.py --size=full      # the issue's: 10^5 tokens, 5 seeds

Each method's Adam rate is tuned per stream on the stream's first `--tune_steps` tokens, which are then
not scored (the rule: `seqjax/experiment/online_learning.py`); `--learning_rate=R` fixes one rate for
every method instead and scores every token.

Results: `experiments/results/online_learning_{size}_{platform}.md`, `.json` and `.png`. Runs go to
`<workdir>/<size>/<stream>/<method>/lr<rate>/seed<k>/`, tuning runs to `.../<method>/tune/lr<rate>/`
(each a `scripts/online.py`-style workdir); a killed driver resumes each run from its checkpoints and
skips finished ones.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from seqjax.common.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("size", "full", "smoke, medium or full (the issue's: 10^5 tokens, 5 seeds).")
flags.DEFINE_integer("steps", None, "Tokens per run (default: the size's).")
flags.DEFINE_integer("seeds", None, "Seeds per method (default: the size's).")
flags.DEFINE_list("windows", None, "TBPTT windows k (default: the size's).")
flags.DEFINE_list("streams", ["narma10", "power"], "Streams: narma10, power.")
flags.DEFINE_list(
    "methods",
    None,
    "Only these methods (default: all; e.g. to split a size over processes, each with its own --workdir).",
)
flags.DEFINE_integer("hidden", None, "Hidden size of the LRU and the LSTM (default: the size's).")
flags.DEFINE_integer("blocks", None, "Contiguous time blocks for the intervals (default: the size's).")
flags.DEFINE_float(
    "learning_rate",
    None,
    "One Adam rate for every method, not tuned (default: tuned per method and stream on the tuning prefix).",
)
flags.DEFINE_list("learning_rates", None, "The rates tuned over (default: the size's).")
flags.DEFINE_integer("tune_steps", None, "Tokens of the tuning prefix (default: the size's).")
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
flags.DEFINE_string("workdir", "/tmp/seqjax_online_learning", "Runs go to <workdir>/<size>/<stream>/...")
flags.DEFINE_bool("fresh", False, "Delete this size's runs under --workdir first.")
flags.DEFINE_string(
    "out", "experiments/results/online_learning_{size}_{platform}", "Output path, no extension."
)

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "steps": 600,
        "seeds": 2,
        "windows": [1, 4],
        "hidden": 4,
        "readout": 4,
        "blocks": 6,
        "chunk": 100,
        "tune_steps": 200,
        "learning_rates": [1e-3],  # one rate: the tuning runs' wiring, not a search
        "measure_memory": False,
    },
    "medium": {
        "steps": 20_000,
        "seeds": 3,
        "windows": [1, 4, 16, 64],
        "hidden": 16,
        "readout": 16,
        "blocks": 40,
        "chunk": 1000,
        "tune_steps": 2000,
        "learning_rates": [3e-4, 1e-3, 3e-3, 1e-2],
    },
    "full": {
        "steps": 100_000,
        "seeds": 5,
        "windows": [1, 4, 16, 64],
        "hidden": 32,
        "readout": 32,
        "blocks": 100,
        "chunk": 1000,
        "tune_steps": 10_000,
        "learning_rates": [3e-4, 1e-3, 3e-3, 1e-2],
    },
}
ALPHA = 0.05
LAGS = {"narma10": 20, "power": 8}


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    import jax
    import numpy as np

    from seqjax.experiment import online_learning as ol
    from seqjax.experiment.flags import prepare_workdir
    from seqjax.experiment.outputs import run_header, write_results
    from seqjax.online.streams import Narma10, bounded_seeds, household_power

    if FLAGS.size not in SIZES:
        raise app.UsageError(f"--size must be one of {sorted(SIZES)}, got {FLAGS.size!r}.")
    s = dict(SIZES[FLAGS.size])
    for name in ("steps", "seeds", "hidden", "blocks", "tune_steps"):
        if FLAGS[name].value is not None:
            s[name] = FLAGS[name].value
    if FLAGS.windows is not None:
        s["windows"] = [int(k) for k in FLAGS.windows]
    if FLAGS.learning_rates is not None:
        s["learning_rates"] = [float(r) for r in FLAGS.learning_rates]
    if FLAGS.learning_rate is not None:  # one fixed rate: nothing tuned, every token scored
        s |= {"learning_rate": FLAGS.learning_rate, "tune_steps": 0, "learning_rates": []}
    if s["tune_steps"] and s["tune_steps"] >= min(s["steps"], ol.power_steps(s["steps"])) // 2:
        raise app.UsageError(
            f"--tune_steps ({s['tune_steps']}) must be under half of the tokens per run ({s['steps']})."
        )
    s["size"] = FLAGS.size
    workdir = Path(FLAGS.workdir) / FLAGS.size
    prepare_workdir(workdir, {**s, "streams": FLAGS.streams}, fresh=FLAGS.fresh)
    narma_seeds = bounded_seeds(s["seeds"], s["steps"])
    p_steps = ol.power_steps(s["steps"])
    methods = ol.methods(s["windows"])
    if FLAGS.methods is not None:
        unknown = sorted(set(FLAGS.methods) - set(methods))
        if unknown:
            raise app.UsageError(f"--methods: {unknown} are not among {methods}.")
        methods = [m for m in methods if m in FLAGS.methods]
    runs: dict[str, dict[str, list]] = {}
    baselines: dict[str, dict[str, list]] = {}
    tuning: dict[str, dict[str, Any]] = {}
    started = time.time()
    for stream in FLAGS.streams:
        steps = s["steps"] if stream == "narma10" else p_steps
        runs[stream], tuning[stream] = {}, {}
        for method in methods:
            rate = s.get("learning_rate")
            if s["tune_steps"]:
                tuned = ol.tune_learning_rate(
                    stream,
                    method,
                    stream_seed=narma_seeds[0],
                    settings=s,
                    workdir=workdir / stream / method / "tune",
                )
                tuning[stream][method], rate = tuned, tuned["learning_rate"]
                print(f"{stream} {method}: Adam rate {rate:g} (tuning MSE {tuned['scores']})", flush=True)
            runs[stream][method] = []
            for seed in range(s["seeds"]):
                config = ol.method_config(
                    stream,
                    method,
                    seed=seed,
                    stream_seed=narma_seeds[seed],
                    steps=steps,
                    settings={**s, "learning_rate": rate},
                )
                t0 = time.time()
                result = ol.run_method(config, workdir / stream / method / f"lr{rate:g}" / f"seed{seed}")
                if "diverged_at" in result:  # kept, and judged by the diverged-run rule
                    done = f"diverged at token {result['diverged_at']:,}"
                else:
                    done = f"MSE {result['prequential']:.5f}"
                print(f"{stream} {method} seed {seed}: {done} ({time.time() - t0:.0f} s)", flush=True)
                runs[stream][method].append(result)
        # baselines on exactly the tokens each seed's runs saw
        per_seed = []
        for seed in range(s["seeds"] if stream == "narma10" else 1):
            source = Narma10(narma_seeds[seed]) if stream == "narma10" else household_power()
            tokens = source.chunk(0, steps)
            per_seed.append(
                ol.online_baselines(tokens.x, tokens.y, lags=LAGS[stream], persistence=stream == "power")
            )
        baselines[stream] = {name: [b[name] for b in per_seed] for name in per_seed[0]}
    level = 0.95
    summary = ol.summarize(
        runs,
        baselines,
        n_blocks=s["blocks"],
        confidence_level=level,
        n_resamples=FLAGS.resamples,
        scored_from=s["tune_steps"],
    )
    claims = ol.claim_verdicts(summary, s["windows"], alpha=ALPHA, n_resamples=FLAGS.resamples)
    platform = jax.default_backend()
    results = {
        **run_header(sys.argv, platform),
        # (the load says whether other jobs shared the cores, which the timings depend on)
        "machine": describe_machine(platform)
        + (f", load average {os.getloadavg()[0]:.1f} at the end" if platform == "cpu" else ""),
        "settings": s,
        "streams": FLAGS.streams,
        "narma_seeds": narma_seeds,
        "power_steps": p_steps,
        "confidence_level": level,
        "resamples": FLAGS.resamples,
        "claims": claims,
        "tuning": tuning,
        "summary": summary,
        "wall_seconds": time.time() - started,
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size, platform=platform)
    write_results(out, results, ol.markdown(results))
    ol.figure(results, out.with_suffix(".png"))
    del np


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
