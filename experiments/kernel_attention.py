"""Experiment (issue 19 §5): linear and kernel attention against the softmax of a trained model.

The issue: kernelised attention "replaces the dot-product similarity in self-attention with a kernel
function φ(a)ᵀφ(b)"; "if the kernel approximation diverges significantly from softmax attention, model
performance degrades". With the queries and keys of trained softmax models at L = 1k, the Performer
(FAVOR+, 16, 64, 256 random features) and elu+1 linear attention against the exact softmax rows: row-wise
KL divergence and relative Frobenius error, with intervals; and the downstream metric when the trained
model's attention is swapped.

Models. By default the document-LM crossover's exact-attention runs at 1k (`length_crossover.py`,
byte-level Python documentation, every seed of the rate it chose on validation): `--reuse_runs=<its
workdir>` reads `<reuse_runs>/L<--length>/<--preset>/`; `--runs` names run folders instead; with neither,
`--preset` is trained here on the protocol (`seqjax.experiment.protocol`; `--size=smoke`: a tiny model on
the embedded document sample, 2 steps, 2 seeds). Each run's last checkpoint is read with its own saved
config: nothing is trained again.

Windows. `--examples` test windows of L tokens spread evenly over the test split (`spread_indices`), the
same for every model; a window is a packed sequence of the split (a document boundary inside it is a
reset, which every kernel respects as the model does). The cluster of a window is the document of its
first target (`clusters.example_clusters`): intervals resample documents, and the seeds as a second level.

Per seed, window, attention layer and head (`seqjax.experiment.kernel_attention`): the queries and keys
after the rotary encoding, exactly what the softmax sees; the exact causal softmax matrix A; each
kernel's normalised causal matrix Â — the Performer with m ∈ --features positive orthogonal random
features (as the `Performer` cell draws them), --draws independent draws per m, elu+1 linear attention
(`LinearAttention`'s map), and uniform attention (1 / keys seen: the reference that uses no
similarity, outside the rules); the mean over the window's query rows of KL(A_i ‖ Â_i) (nats) and
‖Â − A‖_F / ‖A‖_F. A draw-dependent quantity is averaged over the draws first (the expected metric of a
random-feature draw), then over layers and heads (the unit is a window; per-layer values are reported
beside it). Downstream: the same model with every softmax attention matrix replaced by the kernel's, all
trained weights kept (no fine-tuning), test bits per byte on the same windows; Δbpb = bpb(kernel) −
bpb(softmax), paired by window and by seed (seed i's swapped model is seed i's model:
`paired_bootstrap(paired_seeds=True)`).

Verdict rules, fixed here before the CPU-size run:

(a) *Swapping the trained softmax attention for kernel K degrades the model*, for each K of the issue
    (Performer m = 16, 64, 256 and elu+1): the interval of Δbpb(K), at confidence 1 − 0.05 / 4
    (Bonferroni over the four kernels), bootstrap over documents and seeds. **supported** when it lies
    above zero, **contradicted** when below, **inconclusive** when it contains zero. Over the four:
    `verdict.verdict("greater", ...)` (supported only when every kernel's is).
(b) *The closer the approximation, the smaller the loss* (the issue's "if ... diverges significantly
    ..., performance degrades" as a relation, with the Performer's m as the knob that changes the
    divergence): the paired intervals (95%, documents and seeds) of KL(m_min) − KL(m_max) and of
    Δbpb(m_min) − Δbpb(m_max), m_min and m_max the fewest and most features. **supported** when both lie
    above zero (more features: less divergence and less loss); **contradicted** when the KL interval
    lies above zero and the Δbpb one below (less divergence, more loss); **inconclusive** otherwise,
    including when more features do not lower the KL (the knob then did not move the divergence).
    Beside it, descriptive only: whether the kernels' KL and Δbpb estimates rank alike, and the rank
    correlation of a window's KL and Δbpb within each kernel.

What the rules can and cannot say. Rule (a) is close to a tautology: the trained weights were fitted to
the softmax's outputs, so any kernel whose matrix differs changes every later layer's inputs, and a loss
is expected; what the measurement adds is its size, and whether a Performer's unbiased estimate at m
features is close enough to be harmless. Neither rule says anything about a model *trained* with a
kernel (whose queries and keys adapt to it); the swap is the question "is kernel K an approximation of
*this* softmax", not "is a kernel model as good". The estimate depends on the trained queries' and
keys' norms (FAVOR+'s variance grows like exp(|q'+k'|²)); the report gives them. At CPU size the
models are small and short-trained (one head of 64 per layer, 2 layers, 491,520 training tokens): the
result is about these models; the accelerator size is the experiment proper.

    python experiments/kernel_attention.py --size=smoke                         # ~30 s: the wiring
    python experiments/kernel_attention.py --reuse_runs=runs/crossover_lm       # CPU size (README)
    python experiments/kernel_attention.py --size=accelerator --reuse_runs=<the accelerator crossover>

Results: `experiments/results/kernel_attention_{size}_{platform}.md`, `.json` and `.png` (KL and Δbpb
against the number of features, elu+1 and uniform as separate points). Each run's scores are cached in
`<workdir>/scores/` (keyed by the run, the windows, features, draws and feature seed), so an interrupted
run resumes there.
"""

from __future__ import annotations

import logging
import math
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
flags.DEFINE_list("runs", [], "Run folders (with checkpoints) of trained softmax models; overrides the rest.")
flags.DEFINE_string(
    "reuse_runs", None, "A length_crossover.py --workdir: its <preset> runs at --length (module docstring)."
)
flags.DEFINE_string("preset", "attention", "The softmax-attention preset to read (or train).")
flags.DEFINE_integer("length", 1024, "The sequence length L of the runs (and of the windows).")
flags.DEFINE_string("config", "configs/documents.py", "Task config file, when training here.")
flags.DEFINE_string("options", "corpus=python_docs,route=offline", "Config-arg options, when training here.")
flags.DEFINE_integer("tokens_per_batch", 8192, "Tokens per training batch, when training here.")
flags.DEFINE_list("config_overrides", [], "Extra key=value config overrides, when training here.")
flags.DEFINE_list("features", ["16", "64", "256"], "The Performer's numbers of random features m.")
flags.DEFINE_integer("draws", 4, "Independent random-feature draws per m (per seed and layer).")
flags.DEFINE_integer("feature_seed", 0, "Seed of the random-feature draws.")
flags.DEFINE_integer("examples", 128, "Test windows of L tokens, spread evenly over the test split.")
flags.DEFINE_integer("window_batch", 8, "Windows per forward pass.")
flags.DEFINE_string("workdir", "/tmp/seqjax_kernel_attention", "Runs trained here and the score cache.")
flags.DEFINE_bool("fresh", False, "Delete --workdir first.")
flags.DEFINE_string("out", "experiments/results/kernel_attention_{size}_{platform}", "Output path, no ext.")

#: Defaults each --size brings for the flags the command line leaves out.
SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "accelerator": {"examples": 512, "draws": 8, "window_batch": 16},
    "smoke": {
        "length": 64,
        "tokens_per_batch": 512,
        "options": "corpus=python_docs",  # the embedded sample
        "examples": 6,
        "draws": 2,
        "window_batch": 3,
        "resamples": 200,
        "step_memory": False,
        "evaluation_examples": 4,
        "config_overrides": ["model.num_layers=2"],  # (a smoke size has 1 layer) per-layer results of 2
    },
}
#: Rule (a)'s claim, and the kernels it covers (the uniform reference is outside the rules).
CLAIM_A = "swapping the trained softmax attention for the kernel degrades the model"
CLAIM_B = "the closer the approximation, the smaller the loss"
WORD = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}


# --------------------------------------------------------------------------------------------------
# Scoring one run
# --------------------------------------------------------------------------------------------------
def kernel_keys(features: Sequence[int]) -> list[str]:
    """The scored kernels' names: "performer-<m>" per m, "elu+1", "uniform".

    >>> kernel_keys([16, 64])
    ['performer-16', 'performer-64', 'elu+1', 'uniform']
    """
    return [f"performer-{m}" for m in features] + ["elu+1", "uniform"]


def score_run(
    run: Path,
    indices: np.ndarray,
    features: Sequence[int],
    draws: int,
    feature_seed: int,
    window_batch: int,
    log: Any = print,
) -> dict[str, np.ndarray]:
    """One run's scores on the test windows `indices`: per window "nll/<kernel>" (summed nats; Performer
    [draws, windows]), "tokens", and per window, layer and head "kl/<kernel>", "frobenius/<kernel>",
    "floored/<kernel>" ([draws, ...] for the Performer), "entropy", "q_norm", "k_norm" (the mean norms of
    the scaled q' = q / d^{1/4}, k')."""
    import jax
    import jax.numpy as jnp

    from seqjax.experiment import kernel_attention as ka
    from seqjax.train.step import token_losses

    parts, params, _ = restore_run(run)
    model, source = parts["model"], parts["sources"]["test"]
    cells = ka.attention_layers(model)
    shape = ka.swap_summary(cells)
    seed = int(parts["config"].seed)

    def nll_of(logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        nll, weights, _ = token_losses(logits, batch)
        return (nll * weights).sum(-1)

    @jax.jit
    def softmax_pass(params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, list[Any], Any]:
        logits, layers = ka.capture_attention(model, params, batch)
        scale = shape["head_dim"] ** -0.25
        stats = {
            "entropy": jnp.stack([ka.softmax_entropy(x, batch["mask"]) for x in layers], 1),
            "q_norm": jnp.stack([_mean_norm(x.q * scale, batch["mask"]) for x in layers], 1),
            "k_norm": jnp.stack([_mean_norm(x.k * scale, batch["mask"]) for x in layers], 1),
        }
        return nll_of(logits, batch), layers, stats

    def layer_divergence(layers: list[Any], mask: Any, kernel: str, w: Any) -> dict[str, Any]:
        """Every layer's `divergence` [b, layers, heads], each layer's exact softmax computed once."""
        logs = [ka.softmax_log_weights(x.q, x.k, x.visible) for x in layers]
        per_layer = [
            ka.divergence(x, mask, kernel, None if w is None else w[i], log_exact=logs[i])
            for i, x in enumerate(layers)
        ]
        return jax.tree.map(lambda *xs: jnp.stack(xs, 1), *per_layer)

    @jax.jit
    def fixed_kernels(params: Any, batch: Mapping[str, jax.Array], layers: list[Any]) -> dict[str, Any]:
        """elu+1 and uniform: divergence per layer and the swapped model's NLL per window."""
        return {
            kernel: (
                layer_divergence(layers, batch["mask"], kernel, None),
                nll_of(ka.forward_with_kernel(model, params, batch, kernel), batch),
            )
            for kernel in ("elu+1", "uniform")
        }

    @jax.jit
    def performer(params: Any, batch: Mapping[str, jax.Array], layers: list[Any], ws: Any) -> Any:
        """The Performer with each draw of ws [draws, layers, heads, m, d], one draw at a time."""

        def one(w: Any) -> Any:
            divergence = layer_divergence(layers, batch["mask"], "performer", w)
            return divergence, nll_of(ka.forward_with_kernel(model, params, batch, "performer", w), batch)

        return jax.lax.map(one, ws)

    def draw(m: int, d: int) -> Any:
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(feature_seed), seed), m * 1000 + d)
        return jnp.stack(
            [
                ka.draw_features(jax.random.fold_in(key, layer), shape["heads"], m, shape["head_dim"])
                for layer in range(shape["layers"])
            ]
        )

    ws_by_m = {m: jnp.stack([draw(m, d) for d in range(draws)]) for m in features}
    parts_out: dict[str, list[np.ndarray]] = {}

    def add(name: str, value: Any) -> None:
        parts_out.setdefault(name, []).append(np.asarray(value))

    start = time.perf_counter()
    for first in range(0, len(indices), window_batch):
        chosen = indices[first : first + window_batch]
        examples = [source[int(i)] for i in chosen]
        batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0] if k != "valid"}
        nll, layers, stats = softmax_pass(params, batch)
        add("nll/softmax", nll)
        add("tokens", batch["weights"].sum(-1) if "weights" in batch else batch["mask"].sum(-1))
        for name, value in stats.items():
            add(name, value)
        for kernel, (divergence, nll) in fixed_kernels(params, batch, layers).items():
            for name, value in divergence.items():
                add(f"{name}/{kernel}", value)
            add(f"nll/{kernel}", nll)
        for m in features:
            divergence, nll = performer(params, batch, layers, ws_by_m[m])  # draws first
            for name, value in divergence.items():
                add(f"{name}/performer-{m}", value)
            add(f"nll/performer-{m}", nll)
        done = min(first + window_batch, len(indices))
        log(f"  {run}: {done}/{len(indices)} windows, {time.perf_counter() - start:.0f} s")
    # Windows on axis 0 of each array (axis 1 for the Performer's, whose draws come first).
    axis = lambda name: 1 if name.split("/")[-1].startswith("performer-") else 0
    scores = {name: np.concatenate(values, axis=axis(name)) for name, values in parts_out.items()}
    return scores | {"seconds": np.asarray(time.perf_counter() - start)}


def _mean_norm(x: Any, mask: Any) -> Any:
    """[b, heads] the mean norm of x [b, L, heads, d] over the unmasked positions."""
    import jax.numpy as jnp

    norms = jnp.linalg.norm(x.astype(jnp.float32), axis=-1)
    weights = mask.astype(jnp.float32)[..., None]
    return (norms * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------
def _per_window(array: np.ndarray, performer: bool) -> np.ndarray:
    """A [draws?, windows, layers, heads] array as [windows]: draws, layers and heads averaged."""
    if performer:
        array = array.mean(0)
    return array.reshape(array.shape[0], -1).mean(1)


def summarize(
    scores: Sequence[Mapping[str, np.ndarray]],
    clusters: np.ndarray,
    window_bytes: np.ndarray,
    features: Sequence[int],
    resamples: int,
) -> dict[str, Any]:
    """The table's rows, rules (a) and (b), and the diagnostics, from every seed's `score_run`.

    >>> summarize([scores_seed0, scores_seed1], clusters, window_bytes, [16, 64, 256], 2000)  # doctest: +SKIP
    """
    from scipy import stats as scipy_stats

    from seqjax.experiment import statistics, weighted_metrics
    from seqjax.experiment.verdict import classify_interval, not_judged, too_few_clusters, verdict_of_classes

    kernels = kernel_keys(features)
    claimed = [f"performer-{m}" for m in features] + ["elu+1"]
    joint = 1.0 - 0.05 / len(claimed)
    bpb = weighted_metrics.bits_per_byte
    nll = {"softmax": np.stack([s["nll/softmax"] for s in scores])}
    for k in kernels:
        stacked = np.stack([s[f"nll/{k}"] for s in scores])
        nll[k] = stacked.mean(1) if k.startswith("performer-") else stacked  # draws averaged
    layers = scores[0]["entropy"].shape[1]

    def unit_interval(values: np.ndarray, level: float = 0.95) -> dict[str, float]:
        return interval_fields(
            statistics.cluster_bootstrap(
                values, cluster_ids=clusters, confidence_level=level, n_resamples=resamples
            )
        )

    def per_layer(name: str, k: str) -> list[float]:
        arrays = [s[f"{name}/{k}"] for s in scores]
        if k.startswith("performer-"):
            arrays = [a.mean(0) for a in arrays]
        return [float(np.mean([a[:, layer].mean() for a in arrays])) for layer in range(layers)]

    softmax_bpb = statistics.cluster_bootstrap(
        nll["softmax"], targets=window_bytes, metric=bpb, cluster_ids=clusters, n_resamples=resamples
    )
    rows: dict[str, Any] = {
        "softmax": {
            "kernel": "softmax",
            "bits_per_byte": interval_fields(softmax_bpb),
            "entropy_by_layer": [
                float(np.mean([s["entropy"][:, i].mean() for s in scores])) for i in range(layers)
            ],
            "q_norm_by_layer": [
                float(np.mean([s["q_norm"][:, i].mean() for s in scores])) for i in range(layers)
            ],
            "k_norm_by_layer": [
                float(np.mean([s["k_norm"][:, i].mean() for s in scores])) for i in range(layers)
            ],
        }
    }
    window_kl: dict[str, np.ndarray] = {}
    sides: dict[str, str] = {}  # each claimed kernel's interval class under the rule
    for k in kernels:
        performer = k.startswith("performer-")
        kl = np.stack([_per_window(s[f"kl/{k}"], performer) for s in scores])
        frob = np.stack([_per_window(s[f"frobenius/{k}"], performer) for s in scores])
        window_kl[k] = kl
        delta = statistics.paired_bootstrap(
            nll[k],
            nll["softmax"],
            targets=window_bytes,
            metric=bpb,
            cluster_ids=clusters,
            confidence_level=joint,
            n_resamples=resamples,
            paired_seeds=True,
        )
        row = {
            "kernel": k,
            "features": int(k.split("-")[1]) if performer else None,
            "kl": unit_interval(kl),
            "kl_by_layer": per_layer("kl", k),
            "frobenius": unit_interval(frob),
            "frobenius_by_layer": per_layer("frobenius", k),
            "floored_weights": int(sum(s[f"floored/{k}"].sum() for s in scores)),
            "bits_per_byte": interval_fields(
                statistics.cluster_bootstrap(
                    nll[k], targets=window_bytes, metric=bpb, cluster_ids=clusters, n_resamples=resamples
                )
            ),
            "delta_bpb": interval_fields(delta) | {"confidence_level": joint, "n_clusters": delta.n_clusters},
        }
        if performer:  # the spread over draws: each draw's Δbpb over all windows and seeds
            per_draw = np.stack([s[f"nll/{k}"] for s in scores])  # [seeds, draws, windows]
            total_bytes = window_bytes.sum() * per_draw.shape[0]
            row["delta_bpb_by_draw"] = [
                float((per_draw[:, d].sum() - nll["softmax"].sum()) / total_bytes / math.log(2))
                for d in range(per_draw.shape[1])
            ]
        if k in claimed:
            # over fewer than MIN_CLUSTERS documents: not judged ("neither"), as in every table
            sides[k] = classify_interval("greater", delta.low, delta.high, n_clusters=delta.n_clusters)
            row["verdict"] = (
                not_judged(delta.n_clusters, "documents")
                if too_few_clusters(delta.n_clusters)
                else WORD[sides[k]]
            )
        rows[k] = row

    rule_a = {
        "claim": CLAIM_A,
        "confidence_level": joint,
        "per_kernel": {k: rows[k]["verdict"] for k in claimed},
        "verdict": verdict_of_classes(sides[k] for k in claimed),
    }

    # Rule (b): fewest against most features.
    few, many = f"performer-{min(features)}", f"performer-{max(features)}"
    rule_b: dict[str, Any] = {"claim": CLAIM_B, "fewest": few, "most": many, "verdict": "inconclusive"}
    if few != many:
        kl_diff = statistics.paired_bootstrap(
            window_kl[few], window_kl[many], cluster_ids=clusters, n_resamples=resamples, paired_seeds=True
        )
        bpb_diff = statistics.paired_bootstrap(
            nll[few],
            nll[many],
            targets=window_bytes,
            metric=bpb,
            cluster_ids=clusters,
            n_resamples=resamples,
            paired_seeds=True,
        )
        kl_side = classify_interval("greater", kl_diff.low, kl_diff.high, n_clusters=kl_diff.n_clusters)
        bpb_side = classify_interval("greater", bpb_diff.low, bpb_diff.high, n_clusters=bpb_diff.n_clusters)
        if kl_side == "claimed" and bpb_side == "claimed":
            rule_b["verdict"] = "supported"
        elif kl_side == "claimed" and bpb_side == "opposite":
            rule_b["verdict"] = "contradicted"
        rule_b |= {
            "kl_difference": interval_fields(kl_diff) | {"n_clusters": kl_diff.n_clusters},
            "delta_bpb_difference": interval_fields(bpb_diff) | {"n_clusters": bpb_diff.n_clusters},
        }
    else:
        rule_b["note"] = "one number of features: no knob"

    # Descriptive: do the kernels rank alike on KL and Δbpb, and does a window's KL go with its Δbpb?
    ranked = [k for k in claimed]
    kl_order = sorted(ranked, key=lambda k: rows[k]["kl"]["estimate"])
    bpb_order = sorted(ranked, key=lambda k: rows[k]["delta_bpb"]["estimate"])
    rho = lambda a, b: float(scipy_stats.spearmanr(a.ravel(), b.ravel()).statistic)
    softmax_window = nll["softmax"] / window_bytes / math.log(2)
    delta_window = {k: (nll[k] - nll["softmax"]) / window_bytes / math.log(2) for k in kernels}
    descriptive = {
        "kl_order": kl_order,
        "delta_bpb_order": bpb_order,
        "same_order": kl_order == bpb_order,
        "window_spearman": {k: rho(window_kl[k], delta_window[k]) for k in kernels},
        # Added after the CPU-size run, descriptive: a window's Δbpb against the softmax model's own
        # bits per byte on it, and elu+1's Δbpb against uniform attention's, window by window.
        "window_spearman_softmax_bpb": {k: rho(delta_window[k], softmax_window) for k in kernels},
        "elu_uniform_window_spearman": (
            rho(delta_window["elu+1"], delta_window["uniform"]) if "uniform" in delta_window else None
        ),
    }
    return {
        "kernels": rows,
        "rule_a": rule_a,
        "rule_b": rule_b,
        "descriptive": descriptive,
        "documents": len(np.unique(clusters)),
    }


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------
def _unjudged_note(n_clusters: int | None) -> str:
    """ " (not judged: ...)" for an interval over fewer than `verdict.MIN_CLUSTERS` documents, else "".

    >>> _unjudged_note(4), _unjudged_note(33)
    (' (not judged: 4 documents, fewer than 10)', '')
    """
    from seqjax.experiment.verdict import MIN_CLUSTERS, too_few_clusters

    return (
        f" (not judged: {n_clusters} documents, fewer than {MIN_CLUSTERS})"
        if too_few_clusters(n_clusters)
        else ""
    )


def markdown(results: Mapping[str, Any]) -> str:
    """The report: set-up, the two verdicts, the table by kernel, and the diagnostics."""
    rows = results["kernels"]
    soft = rows["softmax"]
    a, b, d = results["rule_a"], results["rule_b"], results["descriptive"]
    layers = len(soft["entropy_by_layer"])
    seconds = results["score_seconds"]
    lines = [
        "# Kernel attention against softmax (issue 19 §5)",
        "",
        *provenance_lines(results),
        f"- models: {len(results['runs'])} trained softmax runs ({results['model']}), each at its last "
        f"checkpoint: {', '.join(results['runs'])}",
        f"- windows: {results['windows']} test windows of {results['length']} tokens spread over the test "
        f"split ({results['documents']} documents; {results['scored_bytes']:,.0f} scored bytes per seed). "
        f"Intervals: bootstrap over documents and seeds ({results['resamples']} resamples); rule (a)'s at "
        f"{a['confidence_level']:.2%} (Bonferroni over its {len(a['per_kernel'])} kernels), the rest 95%.",
        f"- Performer: m ∈ {results['features']} positive orthogonal random features, {results['draws']} "
        f"independent draws per m, seed and layer (metrics averaged over the draws); elu+1: "
        f"`LinearAttention`'s map on the same q, k; uniform: 1 / keys seen (reference, outside the rules).",
        f"- Scoring took {seconds:.0f} s ({seconds / max(len(results['runs']), 1):.0f} s per run).",
        "",
        "## Verdicts",
        "",
        "Rules (fixed before the run; `experiments/kernel_attention.py`'s docstring): (a) per kernel, "
        f"*{CLAIM_A}* when the interval of Δbpb = bpb(swapped) − bpb(softmax) lies above zero; "
        f"(b) *{CLAIM_B}* "
        f"when both KL({b['fewest']}) − KL({b['most']}) and Δbpb({b['fewest']}) − Δbpb({b['most']}) lie "
        "above zero.",
        "",
        f"- (a) over the four kernels: **{a['verdict']}** — "
        + "; ".join(f"{k}: {v}" for k, v in a["per_kernel"].items())
        + ".",
    ]
    if "kl_difference" in b:
        lines.append(
            f"- (b) **{b['verdict']}** — KL({b['fewest']}) − KL({b['most']}) = "
            f"{interval_cell(b['kl_difference'], True)} "
            f"nats; Δbpb({b['fewest']}) − Δbpb({b['most']}) = "
            f"{interval_cell(b['delta_bpb_difference'], True)}"
            + _unjudged_note(b["kl_difference"].get("n_clusters"))
            + "."
        )
    else:
        lines.append(f"- (b) **{b['verdict']}** ({b.get('note', '')}).")
    lines += [
        f"- Descriptive: kernels by KL {' < '.join(d['kl_order'])}; "
        f"by Δbpb {' < '.join(d['delta_bpb_order'])} "
        f"({'the same order' if d['same_order'] else 'not the same order'}). Rank correlation of a window's "
        "KL with its Δbpb within each kernel: "
        + ", ".join(f"{k} {v:+.2f}" for k, v in d["window_spearman"].items())
        + ".",
        "- Added after the CPU-size run (descriptive, not part of the rules): rank correlation of a window's "
        "Δbpb with the softmax model's own bits per byte on it: "
        + ", ".join(f"{k} {v:+.2f}" for k, v in d["window_spearman_softmax_bpb"].items())
        + (
            "; of elu+1's Δbpb with uniform attention's, window by window: "
            f"{d['elu_uniform_window_spearman']:+.2f}."
            if d.get("elu_uniform_window_spearman") is not None
            else "."
        ),
        "",
        "## By kernel",
        "",
        f"Softmax (the trained model): **{interval_cell(soft['bits_per_byte'])}** bits per byte on these "
        "windows.",
        "",
        "| kernel | KL(softmax ‖ kernel), nats/row | "
        + " | ".join(f"KL layer {i}" for i in range(layers))
        + " | ‖Â − A‖_F / ‖A‖_F | bits per byte | Δbpb vs softmax | (a) |",
        "|---|---:|" + "---:|" * layers + "---:|---:|---:|---|",
    ]
    for k, row in rows.items():
        if k == "softmax":
            continue
        by_layer = " | ".join(f"{x:.3f}" for x in row["kl_by_layer"])
        lines.append(
            f"| {k} | {interval_cell(row['kl'])} | {by_layer} | {interval_cell(row['frobenius'])} | "
            f"{interval_cell(row['bits_per_byte'])} | {interval_cell(row['delta_bpb'], True)} | "
            f"{row.get('verdict', '(reference)')} |"
        )
    lines += [
        "",
        "## Diagnostics",
        "",
        "- The trained softmax attention: mean row entropy by layer "
        + ", ".join(f"{x:.2f}" for x in soft["entropy_by_layer"])
        + f" nats (uniform rows over an unbroken window: {_uniform_entropy(results['length']):.2f}); mean "
        "norms of the scaled "
        "queries q' = q / d^{1/4} by layer "
        + ", ".join(f"{x:.2f}" for x in soft["q_norm_by_layer"])
        + " and keys k' "
        + ", ".join(f"{x:.2f}" for x in soft["k_norm_by_layer"])
        + ". FAVOR+'s relative variance grows like exp(|q' + k'|²) / m: large norms make the estimate poor "
        "at any affordable m.",
        "- Δbpb of each random-feature draw (all windows and seeds): "
        + "; ".join(
            f"{k}: " + ", ".join(f"{x:+.3f}" for x in row["delta_bpb_by_draw"])
            for k, row in rows.items()
            if "delta_bpb_by_draw" in row
        )
        + ".",
        "- Approximate weights that underflowed to 0 (floored in the KL): "
        + ", ".join(f"{k} {row['floored_weights']}" for k, row in rows.items() if k != "softmax")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _uniform_entropy(length: int) -> float:
    """The mean entropy of uniform causal rows over `length` tokens: mean over i of log i.

    >>> round(_uniform_entropy(2), 4)
    0.3466
    """
    return float(np.mean(np.log(np.arange(1, length + 1))))


def plot(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """KL and Δbpb against the Performer's number of features (log x) with intervals; elu+1 and uniform
    as separate points at the right, past a dashed line."""
    from seqjax.experiment.plots import _finish, _pyplot

    plt = _pyplot()
    rows = results["kernels"]
    performers = [r for r in rows.values() if r.get("features")]
    ms = [r["features"] for r in performers]
    others = [k for k in ("elu+1", "uniform") if k in rows]
    x_others = [max(ms) * 4 * 2**i for i in range(len(others))]
    level = results["rule_a"]["confidence_level"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "kl", "KL(softmax ‖ kernel), nats per row (95%)"),
        (axes[1], "delta_bpb", f"Δ bits per byte vs softmax ({level:.2%})"),
    ):
        error = lambda r: [[r["estimate"] - r["low"]], [r["high"] - r["estimate"]]]
        est = [r[key]["estimate"] for r in performers]
        bars = np.concatenate([error(r[key]) for r in performers], axis=1)
        ax.errorbar(ms, est, yerr=bars, marker="o", capsize=3, label="Performer (FAVOR+)")
        for x, k in zip(x_others, others, strict=True):
            r = rows[k][key]
            ax.errorbar([x], [r["estimate"]], yerr=error(r), marker="s", capsize=3, linestyle="none", label=k)
        ax.axvline(max(ms) * 2, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms + x_others, [str(m) for m in ms] + others)
        ax.minorticks_off()
        ax.set_xlabel("random features m (Performer); other kernels")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Kernel attention vs softmax, {results['model']} (L = {results['length']})", fontsize=10)
    return _finish(fig, path)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    from seqjax.experiment.protocol import exit_when_interrupted

    exit_when_interrupted(_main, argv)


def _main(argv: list[str]) -> None:
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    apply_size_defaults(FLAGS, SIZE_DEFAULTS[FLAGS.size])
    import jax

    from seqjax.experiment.clusters import example_bytes
    from seqjax.experiment.kernel_attention import attention_layers, chosen_runs, swap_summary
    from seqjax.experiment.outputs import run_header, write_results

    features = sorted(int(m) for m in FLAGS.features)
    settings = {
        "features": features,
        "draws": FLAGS.draws,
        "feature_seed": FLAGS.feature_seed,
        "window_batch": FLAGS.window_batch,
    }
    scored = score_trained_runs(
        FLAGS, score_run, settings, root=ROOT, driver="kernel_attention", chosen=chosen_runs
    )
    parts, scores = scored.parts, scored.scores
    tokens = scores[0]["tokens"]
    if any(not np.array_equal(s["tokens"], tokens) for s in scores):
        raise ValueError("kernel_attention: the runs scored other targets; they must share the data.")
    window_bytes = example_bytes(parts["sources"]["test"], tokens)
    summary = summarize(scores, scored.clusters, window_bytes, features, FLAGS.resamples)
    platform = jax.default_backend()
    config = parts["config"]
    shape = swap_summary(attention_layers(parts["model"]))
    results = {
        **run_header(sys.argv, platform),
        "size": FLAGS.size,
        "model": (
            f"{FLAGS.preset}: {shape['layers']} softmax layers of {shape['heads']} head(s) of "
            f"{shape['head_dim']}, d_model {config.model['d_model']}"
        ),
        "runs": [str(r) for r in scored.runs],
        "length": scored.length,
        "windows": len(scored.indices),
        "scored_bytes": float(window_bytes.sum()),
        "features": features,
        "draws": FLAGS.draws,
        "feature_seed": FLAGS.feature_seed,
        "resamples": FLAGS.resamples,
        "score_seconds": scored.seconds,
        **summary,
    }
    out = ROOT / FLAGS.out.format(size=FLAGS.size, platform=platform)
    write_results(out, results, markdown(results))
    plot(results, f"{out}.png")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    app.run(main)
