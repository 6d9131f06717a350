"""Experiment (issue 19 §3): attention weights against gradient attribution in a trained classifier.

The claim: "In 43% of evaluated cases, the highest-attention tokens were not among the top-10 most
predictive features as determined by gradient-based attribution methods." It names no sequence length,
model or chance rate. With the weights and gradients of trained exact-attention classifiers: for each test
window, whether the top-attention token is among the 10 tokens of largest |attribution|, against the
chance of that for a token drawn at random (1 − 10/L misses: 0.990 at L = 1,024); Kendall's τ between
attention and |attribution|; and a deletion test.

Models. By default the genomic length crossover's exact-attention encoder at 1k (`length_crossover.py
--config=configs/genomic.py --options=task=species,route=offline`, preset `encoder`: 2 bidirectional
softmax layers, mean pooling; every seed of the rate it chose on validation): `--reuse_runs=<its
workdir>` reads `<reuse_runs>/L<--length>/<--preset>/`; `--runs` names run folders instead; with
neither, `--preset` is trained here on the protocol (`seqjax.experiment.protocol`; `--size=smoke`: a
tiny model on the embedded genomic sample, 2 steps, 2 seeds). Each run's last checkpoint is read with
its own saved config: nothing is trained again. No document classifier exists in the project (the
document task is a language model), so the genomic classifier is the only one.

Windows. `--examples` test windows of L bp spread evenly over the test split (`spread_indices`; the
CPU size's 64 are every other one of the 128 the crossover scored), the same for every seed. The
cluster of a window is its 100 kb genome block (`clusters.example_clusters`): intervals resample blocks,
and the seeds as a second level.

Per seed and window (`seqjax.experiment.attention_attribution`):

- Attention. The analysis path runs the model with every attention layer computed from its materialised
  softmax (`seqjax.scan.attention.attention_weights`, the reference path); its logits are checked against
  the training path's (the report gives the largest difference). The attention a token j receives is
  a_j = Σ_i π_i A_ij with π the pooling's weights: for this mean-pooled encoder, the mean over all query
  positions of the attention paid to j (the column mean; at the last layer, the weight of position j's
  value in the pooled attention output). Per layer and head, and averaged over layers and heads
  ("mean", the primary). The top-attention token is its argmax (the first, on a tie).
- Attribution, of the predicted class's logit (the class the model predicts on the intact window), on
  the input embedding (the DNA encoder's output W·p + b, d = 64 per token), through the training path:
  gradient × input, per token Σ_d g ⊙ e (and the ‖g ⊙ e‖₂ variant); integrated gradients (IG) from the
  baseline where every token is 'N' (the neutral IUPAC code, ¼ of each base: the encoder's embedding of
  N, the token deletion writes; not the zero embedding, where the first block's RMSNorm makes the logit
  jump, so completeness fails at any number of steps), --ig_steps midpoint-rule points; its completeness error
  |Σ_j IG_j − (F(x) − F(baseline))| / |F(x) − F(baseline)| is reported. Top-10 by |attribution|, ties at
  the 10th place inside.
- Deletion: the top-k tokens (k ∈ --deletions) by the averaged attention, by |IG|, by |gradient × input|,
  by signed IG (descriptive), and at random (--random_draws draws of k positions, the same for every seed,
  averaged per window) replaced by 'N' ('N' is in the IUPAC alphabet the encoder reads and in real
  assemblies; the padding byte would encode as the bias alone, a vector the model never saw inside a
  window). Measured: the change in the probability of the class predicted on the intact window (Δp_pred,
  the explained output), the change in the true class's probability (Δp_true) and the accuracy.

Verdict rules, fixed here before the CPU-size run. Intervals are two-level cluster bootstraps (genome
blocks, seeds); rules (a) and (b) read the miss rate m of the averaged attention against |IG|, the
fraction of (seed, window) pairs whose top-attention token is not among the 10 largest |IG|, with its 95%
interval.

(a) *The 43% figure* ("in 43% of cases the top-attention token is not among the top-10 attributed"):
    **supported** when the interval of m contains 0.43 and its half-width is at most 0.10 (the
    measurement could tell 0.43 from 0.33 and 0.53); **contradicted** when the interval excludes 0.43
    (the report says on which side); **inconclusive** otherwise (it contains 0.43 but is wider).
(b) *Attention's top token agrees with gradient attribution more than chance*: **supported** when the
    interval of m lies below the chance miss rate 1 − 10/L (mean over the windows of their valid lengths),
    **contradicted** when it lies above (the top-attention token is in the top-10 less often than a random
    token), **inconclusive** when it contains it.
(c) *Attribution-guided deletion hurts the prediction more than attention-guided deletion, which hurts it
    more than random deletion*: for each k, the paired intervals (windows, blocks and seeds; seed i of each
    arm is one model, `paired_seeds=True`) of Δp_pred(|IG|) − Δp_pred(attention) and of Δp_pred(attention)
    − Δp_pred(random), at 1 − 0.05/(2 × the number of k) (Bonferroni); each ordering's word over the k by
    `verdict.verdict("less", ...)`. **supported** when both orderings are supported, **contradicted** when
    either is contradicted, else **depends** when either depends, else **inconclusive**. The same rule on
    Δp_true is reported beside it as secondary.

Beside the rules, descriptive: m and τ for each layer and head and for gradient × input (sum and L2)
with their intervals (and the rules' words for gradient × input), the rank of the top-attention token
in the |IG| order, how peaked the received attention is and where its top token lies in the window.

What the rules can and cannot say. The claim gives no L, model, task, attribution method or chance rate.
A 43% miss rate means nothing without L: at L = 1,024 a token drawn at random misses the top-10 99.0% of
the time, so 43% would be agreement 58 times chance (hit rate 57% against 1%); at L = 20 chance misses
50%. Rule (a) asks only whether this model reproduces the number; rule (b) asks the question the
number stands for. Neither says which of attention or attribution is the better explanation: the
deletion test (c) asks which tokens the prediction depends on, with IG favoured by construction (IG
from the N baseline is a first-order account of replacing tokens by N, which is what deletion does);
attention-guided deletion is the comparison that can fail. Attention here is one definition (received
attention under the pooling); attention rollout or value-weighted norms could rank tokens differently.
At CPU size the models are small and short-trained (60 steps, balanced accuracy 0.63 on these windows'
split, below GC content alone): the result is about these models at L = 1,024; no run exists at 512 or
2,048, and `--size=accelerator` with an accelerator crossover's runs is the experiment proper.

    python experiments/attention_attribution.py --size=smoke                           # ~30 s: the wiring
    python experiments/attention_attribution.py --reuse_runs=runs/crossover_genomic    # CPU size (README)
    python experiments/attention_attribution.py --size=accelerator --reuse_runs=<the accelerator crossover>

Results: `experiments/results/attention_attribution_{size}_{platform}.md`, `.json` and `.png` (miss
rates against chance and the claim; deletion curves). Each run's scores are cached in `<workdir>/scores/`
(keyed by the run, its last checkpoint, the windows and the settings), so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from seqjax.experiment.flags import apply_size_defaults, define_protocol_flags
from seqjax.experiment.interval_format import interval_cell, interval_fields
from seqjax.experiment.outputs import provenance_lines
from seqjax.experiment.trained_runs import restore_run, score_trained_runs

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
define_protocol_flags(FLAGS, train_tokens=8192 * 60)
flags.DEFINE_enum(
    "size", "cpu", ["cpu", "accelerator", "smoke"], "Defaults per size (smoke: a tiny model trained here)."
)
flags.DEFINE_list("runs", [], "Run folders (with checkpoints) of trained attention classifiers.")
flags.DEFINE_string(
    "reuse_runs", None, "A length_crossover.py --workdir: its <preset> runs at --length (module docstring)."
)
flags.DEFINE_string("preset", "encoder", "The exact-attention classifier preset to read (or train).")
flags.DEFINE_integer("length", 1024, "The sequence length L of the runs (and of the windows).")
flags.DEFINE_string("config", "configs/genomic.py", "Task config file, when training here.")
flags.DEFINE_string("options", "task=species,route=offline", "Config-arg options, when training here.")
flags.DEFINE_integer("tokens_per_batch", 8192, "Tokens per training batch, when training here.")
flags.DEFINE_list("config_overrides", [], "Extra key=value config overrides, when training here.")
flags.DEFINE_integer("examples", 64, "Test windows of L tokens, spread evenly over the test split.")
flags.DEFINE_integer("window_batch", 8, "Windows per pass.")
flags.DEFINE_integer("top_k", 10, "The claim's top-k of attribution.")
flags.DEFINE_integer("ig_steps", 32, "Integrated gradients: points of the midpoint rule.")
flags.DEFINE_integer("ig_chunk", 4, "Integrated gradients: points per pass (divides --ig_steps).")
flags.DEFINE_list("deletions", ["1", "10", "50"], "Deletion test: numbers of tokens k replaced by 'N'.")
flags.DEFINE_integer("random_draws", 4, "Deletion test: random draws of k positions per window.")
flags.DEFINE_integer("deletion_seed", 0, "Seed of the random deletions.")
flags.DEFINE_string("workdir", "/tmp/seqjax_attention_attribution", "Runs trained here and the score cache.")
flags.DEFINE_bool("fresh", False, "Delete --workdir first.")
flags.DEFINE_string(
    "out", "experiments/results/attention_attribution_{size}_{platform}", "Output path, no extension."
)

#: Defaults each --size brings for the flags the command line leaves out.
SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "accelerator": {"examples": 512, "ig_steps": 64, "ig_chunk": 8, "window_batch": 16, "random_draws": 8},
    "smoke": {
        "length": 64,
        "tokens_per_batch": 512,
        "options": "task=species",  # the embedded genomic sample
        "examples": 8,
        "window_batch": 4,
        "ig_steps": 8,
        "random_draws": 2,
        "resamples": 200,
        "step_memory": False,
        "evaluation_examples": 4,
        "config_overrides": ["model.num_layers=2"],  # (a smoke size has 1 layer) per-layer results of 2
    },
}
#: The claim's miss rate, and the rules' claims.
CLAIMED_MISS_RATE = 0.43
#: Rule (a): the largest half-width of an interval that can support the 43% figure.
MAX_HALF_WIDTH = 0.10
CLAIM_A = "in 43% of cases the top-attention token is not among the top-10 attributed tokens"
CLAIM_B = "attention's top token is among the top-10 attributed tokens more often than chance"
CLAIM_C = "attribution-guided deletion hurts more than attention-guided, which hurts more than random"
#: Attributions: the per-token scores ranked (by |·| for the signed ones) and their names.
ATTRIBUTIONS = {
    "ig": "integrated gradients",
    "gxi": "gradient × input (sum)",
    "gxi_l2": "gradient × input (L2)",
}
#: Deletion orders: the token scores whose top k are deleted.
ORDERS = {
    "attention": "attention (mean over layers and heads)",
    "ig": "|integrated gradients|",
    "gxi": "|gradient × input|",
    "ig_signed": "integrated gradients, signed (descriptive)",
    "random": "random",
}
WORD = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}
SIDE = {"contains": "contains", "above": "lies above", "below": "lies below"}


# --------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------
def _require_classifier(run: Path, config: Any) -> None:
    if config.task != "classification":
        raise ValueError(f"attention_attribution: {run} is a {config.task!r} run; it needs a classifier.")


def restore(run: Path) -> tuple[dict[str, Any], Any, int]:
    """`trained_runs.restore_run` of a classifier's run (any other task is a ValueError)."""
    return restore_run(run, check=_require_classifier)


# --------------------------------------------------------------------------------------------------
# Scoring one run
# --------------------------------------------------------------------------------------------------
def score_run(
    run: Path,
    indices: np.ndarray,
    *,
    ig_steps: int,
    ig_chunk: int,
    deletions: Sequence[int],
    random_draws: int,
    deletion_seed: int,
    window_batch: int,
    log: Any = print,
) -> dict[str, np.ndarray]:
    """One run's scores on the test windows `indices` (windows on axis 0 unless said): "label", "logits"
    and "analysis_logits" [n, classes] (training and analysis path), "valid" [n, L], "received" [n,
    layers, heads, L], per token "ig", "gxi", "gxi_l2" [n, L], "ig_fx", "ig_f0" [n] (the logit at the
    window and at the baseline), and per deletion order and k "deleted/<order>/<k>" [n, classes] the
    probabilities after deleting ("random": [draws, n, classes])."""
    import jax
    import jax.numpy as jnp

    from seqjax.experiment import attention_attribution as aa

    parts, params, _ = restore(run)
    model, source = parts["model"], parts["sources"]["test"]
    pooling = str(parts["config"].head["pooling"])

    def batch_of(inputs: Any, mask: Any) -> dict[str, Any]:
        return {"inputs": inputs} if mask is None else {"inputs": inputs, "mask": mask}

    @jax.jit
    def analysis(params: Any, inputs: Any, mask: Any) -> tuple[Any, Any, Any]:
        batch = batch_of(inputs, mask)
        logits = model.apply({"params": params}, **batch, deterministic=True)  # the training path
        analysed, weights = aa.forward_with_weights(model, params, batch)
        valid = jnp.ones(inputs.shape, bool) if mask is None else mask
        pi = aa.pooling_weights(valid, pooling)
        received = jnp.stack([aa.received_attention(w, pi) for w in weights], axis=1)
        return logits, analysed, received

    @jax.jit
    def attribution(params: Any, inputs: Any, mask: Any, neutral: Any, classes: Any) -> dict[str, Any]:
        batch = batch_of(inputs, mask)
        rows = jnp.arange(inputs.shape[0])
        f = lambda e: aa.forward_from_embeddings(model, params, batch, e)[rows, classes]
        e = aa.embed(model, params, inputs)
        gxi = aa.gradient_times_input(f, e)
        ig, fx, f0 = aa.integrated_gradients(f, e, aa.embed(model, params, neutral), ig_steps, chunk=ig_chunk)
        return {
            "ig": ig.sum(-1),
            "gxi": gxi.sum(-1),
            "gxi_l2": jnp.linalg.norm(gxi, axis=-1),
            "ig_fx": fx,
            "ig_f0": f0,
        }

    @jax.jit
    def probabilities(params: Any, inputs: Any, mask: Any) -> Any:
        logits = model.apply({"params": params}, **batch_of(inputs, mask), deterministic=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    parts_out: dict[str, list[np.ndarray]] = {}
    add = lambda name, value: parts_out.setdefault(name, []).append(np.asarray(value))
    start = time.perf_counter()
    for first in range(0, len(indices), window_batch):
        chosen = indices[first : first + window_batch]
        examples = [source[int(i)] for i in chosen]
        inputs = np.stack([e["inputs"] for e in examples])
        mask = np.stack([e["mask"] for e in examples]).astype(bool) if "mask" in examples[0] else None
        valid = np.ones(inputs.shape, bool) if mask is None else mask
        token = aa.neutral_token(model, inputs)
        neutral = np.where(valid, np.asarray(token, inputs.dtype), inputs)
        jmask = None if mask is None else jnp.asarray(mask)
        logits, analysed, received = analysis(params, jnp.asarray(inputs), jmask)
        classes = jnp.argmax(logits, axis=-1)
        scores = attribution(params, jnp.asarray(inputs), jmask, jnp.asarray(neutral), classes)
        add("label", np.asarray([int(e["label"]) for e in examples]))
        add("logits", logits)
        add("analysis_logits", analysed)
        add("valid", valid)
        add("received", received)
        for name, value in scores.items():
            add(name, value)
        received = np.asarray(received)
        ranking = {
            "attention": received.mean(axis=(1, 2)),
            "ig": np.abs(np.asarray(scores["ig"])),
            "gxi": np.abs(np.asarray(scores["gxi"])),
            "ig_signed": np.asarray(scores["ig"]),
        }
        for k in deletions:
            for order, score in ranking.items():
                positions = aa.top_k_positions(score, k, valid)
                cut = aa.deleted(inputs, positions, token)
                add(f"deleted/{order}/{k}", probabilities(params, jnp.asarray(cut), jmask))
            draws = aa.random_positions(valid, k, random_draws, deletion_seed, chosen)
            per_draw = [
                probabilities(params, jnp.asarray(aa.deleted(inputs, p, token)), jmask) for p in draws
            ]
            add(f"deleted/random/{k}", np.stack([np.asarray(p) for p in per_draw]))
        done = min(first + window_batch, len(indices))
        log(f"  {run}: {done}/{len(indices)} windows, {time.perf_counter() - start:.0f} s")
    axis = lambda name: 1 if name.startswith("deleted/random/") else 0
    scores = {name: np.concatenate(values, axis=axis(name)) for name, values in parts_out.items()}
    return scores | {"seconds": np.asarray(time.perf_counter() - start)}


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------
def unit_names(layers: int, heads: int) -> list[str]:
    """The attention units compared: every layer and head, then their mean.

    >>> unit_names(2, 1)
    ['layer 0 head 0', 'layer 1 head 0', 'mean']
    """
    return [f"layer {layer} head {h}" for layer in range(layers) for h in range(heads)] + ["mean"]


def _unit_scores(received: np.ndarray) -> dict[str, np.ndarray]:
    """{unit: [n, L]} from received [n, layers, heads, L]."""
    _, layers, heads, _ = received.shape
    names = unit_names(layers, heads)
    out = {names[layer * heads + h]: received[:, layer, h] for layer in range(layers) for h in range(heads)}
    return out | {"mean": received.mean(axis=(1, 2))}


def _attribution_scores(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.abs(scores[name]) for name in ATTRIBUTIONS}


def rule_a(miss: Mapping[str, float]) -> dict[str, Any]:
    """Rule (a) on the miss rate's interval {"estimate", "low", "high"} (module docstring).

    >>> rule_a({"estimate": 0.90, "low": 0.85, "high": 0.95})["verdict"]
    'contradicted'
    """
    from seqjax.experiment.attention_attribution import claimed_rate_verdict

    word = claimed_rate_verdict(miss["low"], miss["high"], CLAIMED_MISS_RATE, MAX_HALF_WIDTH)
    return {"claim": CLAIM_A, "claimed": CLAIMED_MISS_RATE} | word | _unjudged(miss)


def _unjudged(miss: Mapping[str, float]) -> dict[str, Any]:
    """{} for a miss-rate interval over enough genome blocks; else an inconclusive verdict and the reason
    (`verdict.MIN_CLUSTERS`: a bootstrap over so few blocks cannot reach its level).

    >>> _unjudged({"low": 0.3, "high": 0.5, "n_clusters": 3})
    {'verdict': 'inconclusive', 'note': 'not judged (3 blocks, fewer than 10)'}
    """
    from seqjax.experiment.verdict import not_judged, too_few_clusters

    n = miss.get("n_clusters")
    return {"verdict": "inconclusive", "note": not_judged(int(n))} if too_few_clusters(n) else {}


def rule_b(miss: Mapping[str, float], chance: float) -> dict[str, Any]:
    """Rule (b): the miss rate's interval against the chance miss rate (module docstring).

    >>> rule_b({"estimate": 0.5, "low": 0.4, "high": 0.6}, 0.99)["verdict"]
    'supported'
    """
    from seqjax.experiment.attention_attribution import chance_verdict

    word = chance_verdict(miss["low"], miss["high"], chance)
    return {"claim": CLAIM_B, "chance_miss_rate": chance, "verdict": word} | _unjudged(miss)


def summarize(
    scores: Sequence[Mapping[str, np.ndarray]],
    clusters: np.ndarray,
    top_k: int,
    deletions: Sequence[int],
    resamples: int,
) -> dict[str, Any]:
    """The agreement table, the deletion table, rules (a)–(c) and the diagnostics, from every seed's
    `score_run`.

    >>> summarize([scores_seed0, scores_seed1], clusters, 10, [1, 10, 50], 2000)  # doctest: +SKIP
    """
    from seqjax.experiment import attention_attribution as aa
    from seqjax.experiment import statistics, weighted_metrics
    from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters, verdict_of_classes

    def interval(values: np.ndarray, level: float = 0.95) -> dict[str, float]:
        return interval_fields(
            statistics.cluster_bootstrap(
                values, cluster_ids=clusters, confidence_level=level, n_resamples=resamples
            )
        )

    n_blocks = len(np.unique(clusters))  # the miss rate's resampled clusters (rules a and b)
    valid = scores[0]["valid"]
    lengths = valid.sum(-1)
    chance = float(np.mean(aa.chance_miss_rate(lengths, top_k)))
    layers, heads = scores[0]["received"].shape[1:3]
    units = unit_names(layers, heads)

    # Agreement: per unit and attribution, the miss rate, Kendall's τ and the top token's rank.
    agreement: dict[str, dict[str, Any]] = {}
    for unit in units:
        agreement[unit] = {}
        for name in ATTRIBUTIONS:
            miss, tau, rank = [], [], []
            for s in scores:
                attention = _unit_scores(s["received"])[unit]
                attribution = _attribution_scores(s)[name]
                r = aa.rank_of_top(attention, attribution, s["valid"])
                miss.append((r >= top_k).astype(np.float64))
                rank.append(r.astype(np.float64))
                tau.append(aa.kendall_tau(attention, attribution, s["valid"]))
            miss_a, tau_a, rank_a = np.stack(miss), np.stack(tau), np.stack(rank)
            row = {
                "hits": round(float((1.0 - miss_a).sum())),
                "hits_by_seed": [round(float(x)) for x in (1.0 - miss_a).sum(1)],
                "pairs": int(miss_a.size),
                "miss_rate": interval(miss_a) | {"n_clusters": n_blocks},
                "kendall_tau": interval(tau_a),
                "median_rank": float(np.median(rank_a)),
                "mean_rank_fraction": float(np.mean(rank_a / lengths[None])),
            }
            row["rule_a"] = rule_a(row["miss_rate"])["verdict"]
            row["rule_b"] = rule_b(row["miss_rate"], chance)["verdict"]
            agreement[unit][name] = row
    expected_hits = float(len(scores) * np.sum(1.0 - aa.chance_miss_rate(lengths, top_k)))
    primary = agreement["mean"]["ig"]
    rules = {"a": rule_a(primary["miss_rate"]), "b": rule_b(primary["miss_rate"], chance)}

    # Deletion: per order and k, Δp of the predicted and of the true class, and the accuracy.
    labels = scores[0]["label"]
    if any(not np.array_equal(s["label"], labels) for s in scores):
        raise ValueError("attention_attribution: the runs scored other windows; they must share the data.")
    rows = np.arange(len(labels))
    probability = lambda logits: (
        np.exp(logits - logits.max(-1, keepdims=True))
        / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
    )
    intact = [probability(s["logits"].astype(np.float64)) for s in scores]
    predicted = [np.argmax(s["logits"], -1) for s in scores]
    p_pred0 = np.stack([p[rows, c] for p, c in zip(intact, predicted, strict=True)])
    p_true0 = np.stack([p[rows, labels] for p in intact])
    deletion: dict[str, dict[str, Any]] = {}
    delta_pred: dict[tuple[str, int], np.ndarray] = {}
    delta_true: dict[tuple[str, int], np.ndarray] = {}
    for order in ORDERS:
        deletion[order] = {}
        for k in deletions:
            after = [s[f"deleted/{order}/{k}"].astype(np.float64) for s in scores]
            if order == "random":  # [draws, n, classes]: each draw's measure, then the mean over draws
                p_pred = np.stack([a[:, rows, c].mean(0) for a, c in zip(after, predicted, strict=True)])
                p_true = np.stack([a[:, rows, labels].mean(0) for a in after])
                correct = np.stack([(a.argmax(-1) == labels).mean(0) for a in after])
            else:
                p_pred = np.stack([a[rows, c] for a, c in zip(after, predicted, strict=True)])
                p_true = np.stack([a[rows, labels] for a in after])
                correct = np.stack([(a.argmax(-1) == labels).astype(np.float64) for a in after])
            delta_pred[order, k] = p_pred - p_pred0
            delta_true[order, k] = p_true - p_true0
            deletion[order][str(k)] = {
                "delta_p_predicted": interval(delta_pred[order, k]),
                "delta_p_true": interval(delta_true[order, k]),
                "accuracy": interval(correct),
            }

    joint = 1.0 - 0.05 / (2 * len(deletions))

    def ordering(delta: Mapping[tuple[str, int], np.ndarray], a: str, b: str) -> dict[str, Any]:
        """Δp(a) − Δp(b) per k (paired: windows, blocks, seeds), and the ordering's word over the k."""
        per_k, sides = {}, []
        for k in deletions:
            diff = statistics.paired_bootstrap(
                delta[a, k],
                delta[b, k],
                cluster_ids=clusters,
                confidence_level=joint,
                n_resamples=resamples,
                paired_seeds=True,
            )
            # over fewer than MIN_CLUSTERS genome blocks: not judged ("neither"), as in every table
            sides.append(classify_interval("less", diff.low, diff.high, n_clusters=diff.n_clusters))
            word = not_judged(diff.n_clusters) if too_few_clusters(diff.n_clusters) else WORD[sides[-1]]
            per_k[str(k)] = interval_fields(diff) | {"n_clusters": diff.n_clusters, "class": word}
        return {"by_k": per_k, "verdict": verdict_of_classes(sides)}

    rule_c: dict[str, Any] = {"claim": CLAIM_C, "confidence_level": joint}
    for name, delta in (("predicted", delta_pred), ("true", delta_true)):
        first = ordering(delta, "ig", "attention")
        second = ordering(delta, "attention", "random")
        rule_c[name] = {
            "attribution_vs_attention": first,
            "attention_vs_random": second,
            "verdict": aa.chain_verdict(first["verdict"], second["verdict"]),
        }
    rule_c["verdict"] = rule_c["predicted"]["verdict"]
    rules["c"] = rule_c

    # Diagnostics.
    logits = np.stack([s["logits"] for s in scores])
    analysis_gap = float(max(np.abs(s["analysis_logits"] - s["logits"]).max() for s in scores))
    change = np.concatenate([s["ig_fx"] - s["ig_f0"] for s in scores])
    total = np.concatenate([s["ig"].sum(-1) for s in scores])
    relative = np.abs(total - change) / np.maximum(np.abs(change), 1e-6)
    mean_attention = [_unit_scores(s["received"])["mean"] for s in scores]
    top_position = np.concatenate([np.argmax(np.where(valid, a, -np.inf), -1) for a in mean_attention])
    edge = max(1, round(0.01 * valid.shape[-1]))
    peak = np.concatenate([a.max(-1) * lengths for a in mean_attention])
    peak_by_unit = {
        unit: float(
            np.median(np.concatenate([_unit_scores(s["received"])[unit].max(-1) * lengths for s in scores]))
        )
        for unit in units
    }
    accuracy = statistics.cluster_bootstrap(
        np.argmax(logits, -1),
        targets=labels,
        metric=weighted_metrics.balanced_accuracy,
        cluster_ids=clusters,
        n_resamples=resamples,
    )
    diagnostics = {
        "analysis_max_abs_logit_difference": analysis_gap,
        "ig_completeness_relative_error": {
            "median": float(np.median(relative)),
            "p95": float(np.quantile(relative, 0.95)),
            "max": float(relative.max()),
        },
        "balanced_accuracy": interval_fields(accuracy),
        "accuracy": interval((np.argmax(logits, -1) == labels[None]).astype(np.float64)),
        "p_predicted": float(p_pred0.mean()),
        "p_true": float(p_true0.mean()),
        "peak_attention_times_length": {
            "median": float(np.median(peak)),
            "p95": float(np.quantile(peak, 0.95)),
            "median_by_unit": peak_by_unit,
        },
        "top_attention_at_edges": float(
            np.mean((top_position < edge) | (top_position >= valid.shape[-1] - edge))
        ),
        "edge_tokens": edge,
    }
    return {
        "chance_miss_rate": chance,
        "expected_hits_by_chance": expected_hits,
        "top_k": top_k,
        "units": units,
        "agreement": agreement,
        "deletion": deletion,
        "rules": rules,
        "diagnostics": diagnostics,
        "blocks": len(np.unique(clusters)),
    }


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
def markdown(results: Mapping[str, Any]) -> str:
    """The report: set-up, the three verdicts, the agreement table, the deletion table, diagnostics."""
    rules, agreement, deletion = results["rules"], results["agreement"], results["deletion"]
    diag = results["diagnostics"]
    primary = agreement["mean"]["ig"]
    chance, k = results["chance_miss_rate"], results["top_k"]
    seconds = results["score_seconds"]
    a, b, c = rules["a"], rules["b"], rules["c"]
    ks = results["deletions"]
    lines = [
        "# Attention weights against gradient attribution (issue 19 §3)",
        "",
        *provenance_lines(results),
        f"- models: {len(results['runs'])} trained runs ({results['model']}), each at its last "
        f"checkpoint: {', '.join(results['runs'])}",
        f"- windows: {results['windows']} test windows of {results['length']} bp spread over the test split "
        f"({results['blocks']} genome blocks of 100 kb). Intervals: bootstrap over blocks and seeds "
        f"({results['resamples']} resamples), 95% unless stated; rule (c)'s at {c['confidence_level']:.2%} "
        f"(Bonferroni over its 2 × {len(ks)} differences).",
        "- attention to token j: Σ_i π_i A_ij with π the mean pooling's weights (the mean attention j "
        "receives over all queries), per layer and head and averaged; weights from the analysis path "
        "(every layer through `attention_weights`, the reference softmax), whose logits match the "
        f"training path's to {diag['analysis_max_abs_logit_difference']:.1e}.",
        f"- attribution of the predicted class's logit on the input embedding: integrated gradients from "
        f"the all-'N' baseline ({results['ig_steps']} midpoint points; completeness error median "
        f"{diag['ig_completeness_relative_error']['median']:.1e}, 95th percentile "
        f"{diag['ig_completeness_relative_error']['p95']:.1e}), gradient × input (sum and L2 over the "
        "embedding). Top-10 by |attribution|.",
        f"- deletion: the top-k tokens (k ∈ {ks}) replaced by 'N'; random: {results['random_draws']} draws "
        "per window, averaged.",
        f"- Scoring took {seconds:.0f} s ({seconds / max(len(results['runs']), 1):.0f} s per run).",
        "",
        "## Verdicts",
        "",
        "Rules (fixed before the run; `experiments/attention_attribution.py`'s docstring), on the miss rate "
        "m of the averaged attention against |integrated gradients|:",
        "",
        f"- (a) *{CLAIM_A}*: **{a['verdict']}** — m = {interval_cell(primary['miss_rate'])} (the interval "
        f"{SIDE[a['side']]} 0.43; "
        f"half-width {a['half_width']:.3f}, at most {MAX_HALF_WIDTH} to support)"
        + (f"; {a['note']}." if "note" in a else "."),
        f"- (b) *{CLAIM_B}*: **{b['verdict']}** — m = {interval_cell(primary['miss_rate'])} against the "
        f"chance miss rate 1 − {k}/L = {chance:.4f}" + (f"; {b['note']}." if "note" in b else "."),
        f"- (c) *{CLAIM_C}* (on the predicted class's probability): **{c['verdict']}** — |IG| vs attention: "
        f"{c['predicted']['attribution_vs_attention']['verdict']}; attention vs random: "
        f"{c['predicted']['attention_vs_random']['verdict']}. On the true class's probability "
        f"(secondary): **{c['true']['verdict']}** ({c['true']['attribution_vs_attention']['verdict']}; "
        f"{c['true']['attention_vs_random']['verdict']}).",
        "",
        f"## Is the top-attention token among the top-{k} attributed? (chance miss rate {chance:.4f})",
        "",
        f"Hits: (seed, window) pairs whose top-attention token is in the top-{k}, of "
        f"{primary['pairs']} (by seed in brackets); a random token would hit "
        f"{results['expected_hits_by_chance']:.1f} times on average.",
        "",
        "| attention | attribution | miss rate m | hits | Kendall τ (attention, \\|attribution\\|) | median "
        "rank of the top-attention token | (a) | (b) |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for unit, by_attribution in agreement.items():
        for name, row in by_attribution.items():
            lines.append(
                f"| {unit} | {ATTRIBUTIONS[name]} | {interval_cell(row['miss_rate'])} | {row['hits']} "
                f"({', '.join(map(str, row['hits_by_seed']))}) | "
                f"{interval_cell(row['kendall_tau'], True)} | "
                f"{row['median_rank']:.0f} of {results['length']} | "
                f"{row['rule_a']} | {row['rule_b']} |"
            )
    lines += [
        "",
        "The (a) and (b) columns apply the rules' words to every row; the verdicts above are the "
        "averaged attention against integrated gradients. A row where no pair hits has the degenerate "
        "interval [1, 1], which rule (b)'s words call *contradicted* whatever the number of pairs; its hits "
        "against the chance expectation say how much that means (the hits added after a trial run on 16 "
        "windows of one seed, their split by seed after the CPU-size run; descriptive).",
        "",
        "## Deletion: the top-k tokens replaced by 'N'",
        "",
        f"Intact windows: p(predicted class) {diag['p_predicted']:.3f}, p(true class) {diag['p_true']:.3f}, "
        f"accuracy {interval_cell(diag['accuracy'])}.",
        "",
        "| deleted by | k | Δp(predicted class) | Δp(true class) | accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    for order, by_k in deletion.items():
        for kk, row in by_k.items():
            lines.append(
                f"| {ORDERS[order].replace('|', chr(92) + '|')} | {kk} | "
                f"{interval_cell(row['delta_p_predicted'], True)} | "
                f"{interval_cell(row['delta_p_true'], True)} | "
                f"{interval_cell(row['accuracy'])} |"
            )
    lines += [
        "",
        f"Paired differences ({c['confidence_level']:.2%}); negative: the first hurts more:",
        "",
        "| measure | k | Δp(\\|IG\\|) − Δp(attention) | Δp(attention) − Δp(random) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("predicted", "true"):
        first = c[name]["attribution_vs_attention"]["by_k"]
        second = c[name]["attention_vs_random"]["by_k"]
        for kk in first:
            lines.append(
                f"| p({name} class) | {kk} | {interval_cell(first[kk], True)} ({first[kk]['class']}) | "
                f"{interval_cell(second[kk], True)} ({second[kk]['class']}) |"
            )
    lines += [
        "",
        "## Diagnostics",
        "",
        f"- The models on these windows: balanced accuracy {interval_cell(diag['balanced_accuracy'])}.",
        "- Analysis path against training path: largest |Δ logit| "
        f"{diag['analysis_max_abs_logit_difference']:.1e} over every window and seed.",
        "- Integrated gradients' completeness, |Σ IG − (F(x) − F(baseline))| / |F(x) − F(baseline)|: median "
        f"{diag['ig_completeness_relative_error']['median']:.1e}, 95th percentile "
        f"{diag['ig_completeness_relative_error']['p95']:.1e}, largest "
        f"{diag['ig_completeness_relative_error']['max']:.1e}.",
        f"- How peaked the averaged received attention is: its largest a_j × L (1 for uniform attention) has "
        f"median {diag['peak_attention_times_length']['median']:.2f} and 95th percentile "
        f"{diag['peak_attention_times_length']['p95']:.2f} (medians by unit, added after the run: "
        + ", ".join(f"{u} {v:.2f}" for u, v in diag["peak_attention_times_length"]["median_by_unit"].items())
        + f"); the top-attention token lies within "
        f"{diag['edge_tokens']} tokens of an end of the window in {diag['top_attention_at_edges']:.1%} of "
        "the windows.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Left: the miss rate per attention unit and attribution with intervals, against chance and the
    claim's 43%. Right: Δp(predicted class) against k per deletion order."""
    from seqjax.experiment.plots import _finish, _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    units = results["units"]
    x = np.arange(len(units))
    width = 0.8 / len(ATTRIBUTIONS)
    for i, (name, label) in enumerate(ATTRIBUTIONS.items()):
        rows = [results["agreement"][u][name]["miss_rate"] for u in units]
        est = np.array([r["estimate"] for r in rows])
        bars = np.array([[r["estimate"] - r["low"] for r in rows], [r["high"] - r["estimate"] for r in rows]])
        ax.errorbar(x + (i - 1) * width, est, yerr=bars, marker="o", capsize=3, linestyle="none", label=label)
    ax.axhline(results["chance_miss_rate"], color="grey", linestyle="--", label="chance 1 − k/L")
    ax.axhline(CLAIMED_MISS_RATE, color="red", linestyle=":", label="the claim's 43%")
    ax.set_xticks(x, units, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"miss rate: top-attention token not in top-{results['top_k']} (95%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ks = [int(k) for k in results["deletions"]]
    for order, label in ORDERS.items():
        rows = [results["deletion"][order][str(k)]["delta_p_predicted"] for k in ks]
        est = np.array([r["estimate"] for r in rows])
        bars = np.array([[r["estimate"] - r["low"] for r in rows], [r["high"] - r["estimate"] for r in rows]])
        ax.errorbar(ks, est, yerr=bars, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("tokens deleted (replaced by 'N'), k")
    ax.set_ylabel("Δ p(predicted class) (95%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(
        f"Attention vs gradient attribution, {results['model']} (L = {results['length']})", fontsize=10
    )
    return _finish(fig, path)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)


def _chosen_runs(folder: Path) -> list[Path]:
    from seqjax.experiment.attention_attribution import chosen_runs
    from seqjax.experiment.protocol import HEADLINE

    return chosen_runs(folder, metric=HEADLINE["classification"][0])


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    apply_size_defaults(FLAGS, SIZE_DEFAULTS[FLAGS.size])
    import jax

    from seqjax.experiment.attention_attribution import softmax_attention_layers
    from seqjax.experiment.outputs import run_header, write_results

    deletions = sorted(int(k) for k in FLAGS.deletions)
    settings = {
        "ig_steps": FLAGS.ig_steps,
        "ig_chunk": FLAGS.ig_chunk,
        "deletions": deletions,
        "random_draws": FLAGS.random_draws,
        "deletion_seed": FLAGS.deletion_seed,
        "window_batch": FLAGS.window_batch,
    }
    scored = score_trained_runs(
        FLAGS,
        score_run,
        settings,
        root=ROOT,
        driver="attention_attribution",
        chosen=_chosen_runs,
        restore=restore,
    )
    parts = scored.parts
    summary = summarize(scored.scores, scored.clusters, FLAGS.top_k, deletions, FLAGS.resamples)
    platform = jax.default_backend()
    config = parts["config"]
    cells = softmax_attention_layers(parts["model"])
    heads = sorted({c.num_heads for c in cells})
    results = {
        **run_header(sys.argv, platform),
        "size": FLAGS.size,
        "model": (
            f"{FLAGS.preset}: {len(cells)} {'causal' if cells[0].causal else 'bidirectional'} softmax layers "
            f"of {'/'.join(map(str, heads))} head(s) of {cells[0].head_dim}, d_model "
            f"{config.model['d_model']}, {config.head['pooling']} pooling, "
            f"{config.head['num_classes']} classes"
        ),
        "runs": [str(r) for r in scored.runs],
        "length": scored.length,
        "windows": len(scored.indices),
        "resamples": FLAGS.resamples,
        "score_seconds": scored.seconds,
        **settings,
        **summary,
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))
    plot(results, f"{out}.png")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
