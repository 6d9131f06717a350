"""Attention weights against gradient attribution in a trained classifier (issue 19 §3): the weights read
through the reference path, the attributions, and the measures that compare them.

The weights. The attention engines do not return their softmax (the blockwise one never forms it). The
analysis path, `forward_with_weights`, runs the trained model with every softmax attention layer
(`Attention`, causal or bidirectional, and `SlidingWindowAttention`) computed from its materialised
weights, `seqjax.scan.attention.attention_weights` (the reference path's softmax), on the layer's own
queries and keys (its projections and positional encoding) and its own visibility (segments, padding,
window): its logits are the model's (the tests check them against the training path's), and it returns
each layer's weights [*batch, heads, L, L]. Nothing in the training path changes: the layers are
intercepted (`flax.linen.intercept_methods`) only inside this function.

Attention to a token. A classifier reads its logits from pooled features; `received_attention` weights
each query row of a layer's matrix by what the pooling gives that position and sums the rows:

    a_j = Σ_i π_i A_ij,     π = the pooling's weights over the positions (`pooling_weights`)

For mean pooling (the genomic classifiers) π is uniform over the valid positions, so a_j is the mean
attention token j receives over all queries (the column mean); at the last layer it is exactly the
weight of position j's value in the pooled attention output. For "first"/"last" pooling it is the
attention row of the pooled position. Per layer and head, and averaged over layers and heads.

Attribution, with respect to one logit per example (the driver: the predicted class), on the input
embedding e [L, d] (the encoder's output, for the DNA encoder W·p + b of the IUPAC probabilities p):

    gradient × input      g_j ⊙ e_j, per token Σ_d (the sum) or ‖·‖₂ (the L2 variant)
    integrated gradients  (e_j − e'_j) ⊙ (1/m) Σ_s ∇F(e' + α_s (e − e'))_j,  α_s = (s − ½)/m (midpoint)

with baseline e' (the driver: every token the neutral 'N', the token deletion writes; the zero
embedding does not serve a pre-norm model: its first RMSNorm makes F jump at e = 0, F(αe) does not tend
to F(0) as α → 0, and completeness fails at any number of steps). Completeness:
Σ_j IG_j = F(e) − F(e') up to the quadrature error, which `integrated_gradients` returns the means to
check. Gradients go through the training path (the engines' own gradients), not the analysis path.

Comparisons, per example: whether the top-attention token is among the top-k attributed tokens
(`top_in_top_k`; ties at the k-th place count as inside), the chance of that for a token drawn at random,
k / L (`chance_miss_rate`: 1 − k/L), Kendall's τ of attention and |attribution|, and token deletion
(`deleted`: the top-k tokens by a score replaced by a neutral token).

    >>> import numpy as np
    >>> attention = np.array([[0.1, 0.5, 0.2, 0.2]])
    >>> attribution = np.array([[3.0, 1.0, 2.0, 0.0]])
    >>> top_in_top_k(attention, attribution, 1).tolist(), top_in_top_k(attention, attribution, 3).tolist()
    ([False], [True])
    >>> round(chance_miss_rate(1024, 10), 4)
    0.9902
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.experiment.protocol import seed_folders_with_checkpoints, validation_rank
from seqjax.scan.attention import attention_weights

__all__ = [
    "chain_verdict",
    "chance_miss_rate",
    "chance_verdict",
    "chosen_runs",
    "claimed_rate_verdict",
    "deleted",
    "embed",
    "forward_from_embeddings",
    "forward_with_weights",
    "gradient_times_input",
    "integrated_gradients",
    "kendall_tau",
    "neutral_token",
    "pooling_weights",
    "random_positions",
    "rank_of_top",
    "received_attention",
    "softmax_attention_layers",
    "top_in_top_k",
    "top_k_positions",
]


# --------------------------------------------------------------------------------------------------
# The model: the analysis path (weights), and the training path from given embeddings
# --------------------------------------------------------------------------------------------------
def _is_softmax_layer(module: Any) -> bool:
    from seqjax.cells.attention import _SoftmaxAttention
    from seqjax.models.layer import CellLayer

    return isinstance(module, CellLayer) and isinstance(module.cell, _SoftmaxAttention)


def _is_encoder(module: Any) -> bool:
    from seqjax.models.encoders import DNAEncoder, LinearEncoder, TokenEmbedding

    return isinstance(module, DNAEncoder | TokenEmbedding | LinearEncoder)


def _reference_layer(layer_module: Any, args: Any, kwargs: Any) -> tuple[jax.Array, jax.Array]:
    """A softmax attention layer's output computed from its materialised weights (what `Attention.apply`
    without a state computes, its engine replaced by `attention_weights` · v), and the weights
    [*b, heads, L, L]."""
    xs = args[0]
    state = args[1] if len(args) > 1 else kwargs.get("state")
    if state is not None:
        raise ValueError(
            "forward_with_weights: a layer was given a carried state; pass whole sequences, no cache."
        )
    cell = layer_module.cell
    params = layer_module._with_shared(layer_module.cell_params(xs.shape[-1]), kwargs.get("shared"))
    xs, _, resets, mask, valid, seg, pos = cell._begin_apply(
        params, xs, None, kwargs.get("resets"), kwargs.get("mask")
    )
    q, k, v = cell._project(params, xs, pos)
    visibility = cell._sequence_visibility(pos, valid, mask, seg if resets is not None else None)
    slopes = jnp.asarray(cell.alibi_slopes(), cell._acc) if cell.positional == "alibi" else None
    weights = attention_weights(q, k, visibility, alibi_slopes=slopes)
    group = cell.num_heads // cell.kv_heads
    values = jnp.repeat(v, group, axis=-2) if group > 1 else v
    y = jnp.einsum(
        "...hqk,...khd->...qhd", weights.astype(v.dtype), values, preferred_element_type=cell._acc
    ).astype(q.dtype)
    return cell._finish(cell._output(params, y), mask), weights


def _apply(
    model: nn.Module,
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    embeddings: jax.Array | None,
    weights: list[jax.Array] | None,
) -> jax.Array:
    """`model`'s output on `batch` ({"inputs", "mask"?, "resets"?}); `embeddings` [*b, L, d] replace the
    input encoder's output; with a list `weights`, every softmax attention layer runs through the
    reference path and appends its weights there (in layer order)."""

    replaced = []

    def interceptor(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if embeddings is not None and _is_encoder(context.module):
            replaced.append(True)
            return embeddings
        if weights is not None and _is_softmax_layer(context.module):
            out, layer_weights = _reference_layer(context.module, args, kwargs)
            weights.append(layer_weights)
            return out, None
        return next_fun(*args, **kwargs)

    keywords = {name: batch[name] for name in ("mask", "resets") if name in batch}
    with nn.intercept_methods(interceptor):
        out = model.apply({"params": params}, batch["inputs"], deterministic=True, **keywords)
    if embeddings is not None and not replaced:
        raise ValueError("forward_from_embeddings: the model has no input encoder whose output to replace.")
    return out


def forward_with_weights(
    model: nn.Module, params: Any, batch: Mapping[str, jax.Array], *, embeddings: jax.Array | None = None
) -> tuple[jax.Array, list[jax.Array]]:
    """The analysis path: `model`'s output on `batch` with every softmax attention layer computed from its
    materialised weights (`attention_weights`), and those weights, one [*b, heads, L, L] array per layer
    in layer order. The output equals the training path's (`model.apply`) up to rounding; `embeddings`
    replace the encoder's output as in `forward_from_embeddings`.

        >>> logits, weights = forward_with_weights(model, params, {"inputs": tokens})  # doctest: +SKIP
        >>> [w.shape for w in weights]  # doctest: +SKIP
        [(8, 1, 1024, 1024), (8, 1, 1024, 1024)]
    """
    weights: list[jax.Array] = []
    out = _apply(model, params, batch, embeddings=embeddings, weights=weights)
    if not weights:
        raise ValueError("forward_with_weights: the model has no softmax attention layer.")
    return out, weights


def forward_from_embeddings(
    model: nn.Module, params: Any, batch: Mapping[str, jax.Array], embeddings: jax.Array
) -> jax.Array:
    """The training path (the model's own engines) with `embeddings` [*b, L, d_model] in place of the input
    encoder's output: the function whose gradients the attributions take. `batch["inputs"]` still goes in
    (for its shape), and its "mask"/"resets".

        >>> e = embed(model, params, tokens)  # doctest: +SKIP
        >>> bool(jnp.allclose(forward_from_embeddings(model, params, {"inputs": tokens}, e),
        ...                   model.apply({"params": params}, tokens)))  # doctest: +SKIP
        True
    """
    return _apply(model, params, batch, embeddings=embeddings, weights=None)


def embed(model: nn.Module, params: Any, inputs: jax.Array) -> jax.Array:
    """The input encoder's output [*b, L, d_model] for `inputs` (a model with a `backbone`)."""
    return model.apply({"params": params}, inputs, method=lambda m, x: m.backbone.encode(x))


def neutral_token(model: nn.Module, inputs: Any) -> int:
    """The token that carries no input: 'N' (any nucleotide, ¼ each) for the DNA encoder, as an ASCII byte
    for uint8 inputs and as `DNA_VOCAB`'s id otherwise. Other encoders have no neutral token here.

    >>> from seqjax.models.config import BackboneConfig
    >>> from seqjax.models.tasks import SequenceClassifier
    >>> model = SequenceClassifier(BackboneConfig(d_model=8, num_layers=1, encoder="dna"))
    >>> neutral_token(model, np.zeros(3, np.uint8)), neutral_token(model, np.zeros(3, np.int32))
    (78, 4)
    """
    from seqjax.models.encoders import DNA_VOCAB

    config = model.config
    if config.encoder != "dna":
        raise ValueError(
            f"neutral_token: only the DNA encoder has a neutral token ('N'); this model's is "
            f"{config.encoder!r}."
        )
    as_bytes = config.dna_input == "bytes" or (
        config.dna_input == "auto" and np.asarray(inputs).dtype == np.uint8
    )
    return ord("N") if as_bytes else DNA_VOCAB.index("N")


def softmax_attention_layers(model: nn.Module) -> list[Any]:
    """The softmax attention cells of the model's backbone, in layer order (the layers whose weights
    `forward_with_weights` returns)."""
    from seqjax.cells.attention import _SoftmaxAttention

    return [c for c in model.config.layer_cells() if isinstance(c, _SoftmaxAttention)]


# --------------------------------------------------------------------------------------------------
# Attention to a token
# --------------------------------------------------------------------------------------------------
def pooling_weights(mask: jax.Array, kind: str = "mean") -> jax.Array:
    """[*b, L] the weight the classifier's pooling gives each position: uniform over the valid positions
    ("mean"), or 1 at the first / last valid one.

    >>> pooling_weights(jnp.array([[True, True, False, True]])).tolist()
    [[0.3333333432674408, 0.3333333432674408, 0.0, 0.3333333432674408]]
    >>> pooling_weights(jnp.array([[True, True, False]]), "last").tolist()
    [[0.0, 1.0, 0.0]]
    """
    valid = jnp.asarray(mask, bool)
    length = valid.shape[-1]
    if kind == "mean":
        w = valid.astype(jnp.float32)
        return w / jnp.maximum(w.sum(-1, keepdims=True), 1.0)
    index = jnp.arange(length)
    if kind == "first":
        chosen = jnp.min(jnp.where(valid, index, length), axis=-1)
    elif kind == "last":
        chosen = jnp.max(jnp.where(valid, index, -1), axis=-1)
    else:
        raise ValueError(f"pooling_weights: kind must be 'mean', 'first' or 'last', got {kind!r}.")
    return (index == chosen[..., None]).astype(jnp.float32)


def received_attention(weights: jax.Array, query_weights: jax.Array) -> jax.Array:
    """[*b, heads, L] a_j = Σ_i π_i A_ij: the attention each key j receives from the queries, weighted by
    `query_weights` π [*b, L] (`pooling_weights`); for weights [*b, heads, L, L] whose rows sum to 1 and
    π summing to 1, a sums to 1 over j.

    >>> A = jnp.array([[[[1.0, 0.0], [0.25, 0.75]]]])
    >>> received_attention(A, jnp.array([[0.5, 0.5]])).tolist()
    [[[0.625, 0.375]]]
    """
    return jnp.einsum("...hqk,...q->...hk", weights.astype(jnp.float32), query_weights.astype(jnp.float32))


# --------------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------------
def gradient_times_input(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """x ⊙ ∇f(x) for f: [n, ...] → [n] (one output per example), elementwise (the caller reduces a token's
    features).

    >>> gradient_times_input(lambda x: (x**2).sum(-1), jnp.array([[1.0, 2.0]])).tolist()
    [[2.0, 8.0]]
    """
    return x * jax.grad(lambda z: f(z).sum())(x)


def integrated_gradients(
    f: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    baseline: jax.Array,
    steps: int,
    *,
    chunk: int = 1,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Integrated gradients of f: [n, ...] → [n] (one output per example) at x from `baseline` (x's
    shape), by the midpoint rule over `steps` points of the straight path, `chunk` points per pass
    (`steps` a multiple of it): (attributions, elementwise like x; f(x); f(baseline)). Completeness:
    the attributions of an example sum to f(x) − f(baseline), exactly for an f whose gradient is linear
    along the path, else up to the quadrature error.

    >>> f = lambda x: (x**2).sum(-1)
    >>> ig, fx, f0 = integrated_gradients(f, jnp.array([[1.0, 2.0]]), jnp.zeros((1, 2)), steps=4)
    >>> ig.tolist(), (fx - f0).tolist()
    ([[1.0, 4.0]], [5.0])
    """
    if steps < 1 or steps % chunk:
        raise ValueError(
            f"integrated_gradients: steps ({steps}) must be a positive multiple of chunk ({chunk})."
        )
    delta = x - baseline
    gradient = jax.vmap(jax.grad(lambda z: f(z).sum()))
    alphas = ((jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps).reshape(steps // chunk, chunk)

    def add(total: jax.Array, a: jax.Array) -> tuple[jax.Array, None]:
        shape = (chunk,) + (1,) * x.ndim
        points = baseline[None] + a.reshape(shape).astype(x.dtype) * delta[None]
        return total + gradient(points).sum(0), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(x), alphas)
    return delta * total / steps, f(x), f(baseline)


# --------------------------------------------------------------------------------------------------
# Comparisons (numpy: per example, after the scoring)
# --------------------------------------------------------------------------------------------------
def _valid(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return np.ones(scores.shape, bool) if mask is None else np.asarray(mask, bool)


def top_k_positions(scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """[n, min(k, L)] the positions of each row's k largest `scores` [n, L] among the valid ones (a row
    with fewer than k valid positions repeats its last; ties: the earlier position first).

    >>> top_k_positions(np.array([[0.1, 0.9, 0.5, 0.9]]), 2).tolist()
    [[1, 3]]
    """
    valid = _valid(scores, mask)
    ranked = np.where(valid, scores, -np.inf)
    order = np.argsort(-ranked, axis=-1, kind="stable")[..., : min(k, scores.shape[-1])]
    return order


def rank_of_top(primary: np.ndarray, secondary: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[n] the rank in `secondary` (0 = its largest) of each row's top position by `primary` [n, L]: the
    number of valid positions whose `secondary` score is strictly larger (ties count in its favour). The
    top position of `primary` is its first largest valid one.

    >>> rank_of_top(np.array([[0.1, 0.5, 0.4]]), np.array([[3.0, 1.0, 2.0]])).tolist()
    [2]
    """
    valid = _valid(primary, mask)
    top = np.argmax(np.where(valid, primary, -np.inf), axis=-1)
    at_top = np.take_along_axis(secondary, top[:, None], axis=-1)
    return np.sum(valid & (secondary > at_top), axis=-1)


def top_in_top_k(
    primary: np.ndarray, secondary: np.ndarray, k: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """[n] bool: whether each row's top position by `primary` (attention) is among the k largest by
    `secondary` (|attribution|): fewer than k valid positions score strictly higher (`rank_of_top`)."""
    return rank_of_top(primary, secondary, mask) < k


def chance_miss_rate(length: int | np.ndarray, k: int) -> float | np.ndarray:
    """1 − k/L: the probability that a position drawn uniformly from L is not among k given ones (0 for
    L ≤ k).

    >>> chance_miss_rate(100, 10), chance_miss_rate(5, 10)
    (0.9, 0.0)
    """
    length = np.asarray(length, np.float64)
    miss = np.maximum(1.0 - k / np.maximum(length, 1.0), 0.0)
    return float(miss) if miss.ndim == 0 else miss


def kendall_tau(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[n] Kendall's τ_b (scipy.stats.kendalltau) of each row's a and b [n, L] over its valid positions;
    0 where it is undefined (a constant row).

    >>> kendall_tau(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 3.0, 2.0]])).round(4).tolist()
    [0.3333]
    """
    from scipy import stats as scipy_stats

    valid = _valid(a, mask)
    out = np.zeros(a.shape[0])
    for i in range(a.shape[0]):
        tau = scipy_stats.kendalltau(a[i][valid[i]], b[i][valid[i]]).statistic
        out[i] = 0.0 if not np.isfinite(tau) else tau
    return out


def deleted(inputs: np.ndarray, positions: np.ndarray, token: int) -> np.ndarray:
    """`inputs` [n, L] with `positions` [n, k] of each row replaced by `token` (a copy).

    >>> deleted(np.array([[1, 2, 3]]), np.array([[0, 2]]), 9).tolist()
    [[9, 2, 9]]
    """
    out = np.array(inputs, copy=True)
    np.put_along_axis(out, positions, np.asarray(token, out.dtype), axis=-1)
    return out


def random_positions(valid: np.ndarray, k: int, draws: int, seed: int, windows: np.ndarray) -> np.ndarray:
    """[draws, n, min(k, L)] positions drawn uniformly without replacement among each window's valid
    ones (`valid` [n, L]; a window with fewer than k repeats them), keyed by (seed, the window's index in
    its split `windows` [n], the draw): the same for every model scored on that window.

    >>> random_positions(np.ones((1, 5), bool), 2, 3, 0, np.array([7])).shape
    (3, 1, 2)
    """
    k = min(k, valid.shape[-1])
    out = np.zeros((draws, len(windows), k), np.int64)
    for i, window in enumerate(windows):
        positions = np.flatnonzero(valid[i])
        for d in range(draws):
            chosen = np.random.default_rng([seed, int(window), d]).permutation(positions)[:k]
            out[d, i] = np.resize(chosen, k)
    return out


# --------------------------------------------------------------------------------------------------
# The verdict rules' words (`experiments/attention_attribution.py` fixes the rules)
# --------------------------------------------------------------------------------------------------
def claimed_rate_verdict(low: float, high: float, claimed: float, max_half_width: float) -> dict[str, Any]:
    """Whether a rate's interval (low, high) reproduces a claimed rate: "supported" when it contains
    `claimed` and its half-width is at most `max_half_width`, "contradicted" when it excludes it ("side":
    "above" or "below"), "inconclusive" when it contains it but is wider.

    >>> claimed_rate_verdict(0.40, 0.50, 0.43, 0.10)["verdict"]
    'supported'
    >>> claimed_rate_verdict(0.30, 0.60, 0.43, 0.10)["verdict"]
    'inconclusive'
    >>> claimed_rate_verdict(0.85, 0.95, 0.43, 0.10)
    {'verdict': 'contradicted', 'side': 'above', 'half_width': 0.04999999999999999}
    """
    half = (high - low) / 2.0
    if low <= claimed <= high:
        return {
            "verdict": "supported" if half <= max_half_width else "inconclusive",
            "side": "contains",
            "half_width": half,
        }
    return {"verdict": "contradicted", "side": "above" if low > claimed else "below", "half_width": half}


def chance_verdict(low: float, high: float, chance: float) -> str:
    """Whether a miss rate's interval lies below the chance miss rate ("supported": attention's top token
    is in the top-k more often than a random token), above it ("contradicted") or contains it
    ("inconclusive"; an end point equal to chance counts as containing it).

    >>> chance_verdict(0.4, 0.6, 0.99), chance_verdict(0.995, 1.0, 0.99), chance_verdict(0.9, 0.99, 0.99)
    ('supported', 'contradicted', 'inconclusive')
    """
    if high < chance:
        return "supported"
    if low > chance:
        return "contradicted"
    return "inconclusive"


def chain_verdict(first: str, second: str) -> str:
    """The verdict of "A > B > C" from the verdicts of "A > B" and "B > C": supported when both are,
    contradicted when either is, else depends when either depends, else inconclusive.

    >>> chain_verdict("supported", "supported"), chain_verdict("supported", "contradicted")
    ('supported', 'contradicted')
    >>> chain_verdict("depends", "inconclusive"), chain_verdict("supported", "inconclusive")
    ('depends', 'inconclusive')
    """
    words = {first, second}
    if words == {"supported"}:
        return "supported"
    if "contradicted" in words:
        return "contradicted"
    if "depends" in words:
        return "depends"
    return "inconclusive"


# --------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------
def chosen_runs(folder: str | os.PathLike[str], metric: str = "balanced_accuracy") -> list[Path]:
    """The seed folders of the rate a protocol chose under `folder` (`<workdir>/L<length>/<preset>`) for
    a classifier: the rate whose seed 0 has the largest final validation `metric` (the protocol's choice;
    a tie goes to the smaller rate), its seeds in order.

        >>> chosen_runs("runs/crossover_genomic/L1024/encoder")  # doctest: +SKIP
        [PosixPath('runs/crossover_genomic/L1024/encoder/lr0.001/seed0'), ...]
    """
    rates = []
    for rate in Path(folder).glob("lr*"):
        record = rate / "seed0" / "run.json"
        if record.exists():
            saved = json.loads(record.read_text())
            rates.append((float(saved["validation"][metric]), float(saved["learning_rate"]), rate))
    if not rates:
        raise FileNotFoundError(f"{folder} has no finished runs (lr*/seed0/run.json); train them first.")
    best = min(rates, key=lambda r: (*validation_rank(r[0], larger=True), r[1]))[2]  # the protocol's choice
    return seed_folders_with_checkpoints(best)
