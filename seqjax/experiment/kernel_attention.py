"""Kernelised attention against the exact softmax of a trained model (issue 19 §5): the attention
matrices, their divergence, and the trained model with its attention swapped.

Kernelised attention replaces the similarity exp(q·k / √d) by φ(q)·φ(k). Given the queries and keys a
trained softmax model computes (after its positional encoding, exactly what its softmax sees), every
kernel gives a causal attention matrix, each row normalised over the keys the query sees:

    softmax      A_ij ∝ exp(q_i·k_j / √d)                                   (the model's own)
    performer    A_ij ∝ φ(q_i')·φ(k_j'),  x' = x / d^{1/4},  φ = FAVOR+ positive random features
                 (`seqjax.cells.linear_attention.positive_random_features` on orthogonal draws W
                 [heads, m, d]), so E[φ(q')·φ(k')] = exp(q·k / √d)
    elu+1        A_ij ∝ φ(q_i)·φ(k_j),  φ = elu + 1 (`LinearAttention`'s map, on the unscaled q, k)
    uniform      A_ij = 1 / (keys seen): φ ≡ 1, the reference that uses no similarity at all

These are the matrices the recurrent (linear-time) cells compute implicitly: y_i = Σ_j A_ij v_j equals
`Performer` / `LinearAttention` with the same q, k, v and W (up to their `eps`), which the tests check.
The Performer's keys are shifted by the largest key logit of their document segment before the exp (a
factor common to every key a query sees, so it cancels in the row's normalisation; the cell itself
does not shift keys, see its docstring) and its queries by their own largest logit, as in the cell.

Divergence, per row i (a query) and per matrix (one head, one window):

    KL_i = Σ_j A_ij (log A_ij − log Â_ij)          ‖Â − A‖_F / ‖A‖_F

An approximate entry that underflows to 0 is floored at float32's smallest normal number, so its KL is
finite but large; `divergence` counts those entries.

The swap (`forward_with_kernel`): the trained model with every softmax attention layer's weights
replaced by a kernel's matrix, every trained parameter kept (q, k, v and output projections, MLPs,
norms): the downstream cost of the approximation, with no fine-tuning. Its layers after the first see
the swapped layers' outputs, so their queries and keys differ from the softmax model's.

    >>> import jax, jax.numpy as jnp
    >>> q = k = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 1, 8))     # [batch, L, heads, d]
    >>> visible = jnp.tril(jnp.ones((6, 6), bool))[None]
    >>> exact = softmax_weights(q, k, visible)
    >>> float(row_kl(exact, exact, visible).max()), float(relative_frobenius(exact, exact).max())
    (0.0, 0.0)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cells.linear_attention import orthogonal_random_features, positive_random_features
from seqjax.experiment.protocol import seed_folders_with_checkpoints, validation_rank

__all__ = [
    "KERNELS",
    "AttentionInputs",
    "attend",
    "attention_layers",
    "capture_attention",
    "chosen_runs",
    "divergence",
    "draw_features",
    "elu_weights",
    "forward_with_kernel",
    "kernel_matrix",
    "kernel_weights",
    "performer_weights",
    "relative_frobenius",
    "row_kl",
    "softmax_entropy",
    "softmax_log_weights",
    "softmax_weights",
    "swap_summary",
    "uniform_weights",
]

#: The kernels `forward_with_kernel` and `kernel_weights` know: the exact softmax, FAVOR+ with random
#: features, elu+1 linear attention, and uniform attention (the no-similarity reference).
KERNELS = ("softmax", "performer", "elu+1", "uniform")

#: The floor of an approximate weight in the KL's log (float32's smallest normal number).
TINY = float(np.finfo(np.float32).tiny)


class AttentionInputs(NamedTuple):
    """What one softmax attention layer saw in a forward pass: queries and keys after the positional
    encoding, in the compute dtype (the key/value heads repeated to the query heads), and which key each
    query sees."""

    q: jax.Array  # [*batch, L, heads, d]
    k: jax.Array  # [*batch, L, heads, d]
    v: jax.Array  # [*batch, L, heads, d]
    visible: jax.Array  # [*batch, L, L] bool: query i sees key j (causal, same segment, not padding)


# --------------------------------------------------------------------------------------------------
# The attention matrices
# --------------------------------------------------------------------------------------------------
def _heads_last(visible: jax.Array) -> jax.Array:
    """[*b, L, L] -> [*b, 1, L, L]: broadcast against [*b, heads, L, L]."""
    return visible[..., None, :, :]


def softmax_log_weights(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """[*b, heads, L, L] log softmax(q·k / √d) over the visible keys (−inf elsewhere), float32.

    >>> q = k = jnp.ones((1, 3, 1, 4))
    >>> log_p = softmax_log_weights(q, k, jnp.tril(jnp.ones((3, 3), bool))[None])
    >>> [round(x, 6) for x in jnp.exp(log_p)[0, 0, 2].tolist()]
    [0.333333, 0.333333, 0.333333]
    """
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(q.shape[-1])
    see = _heads_last(visible)
    logits = jnp.where(see, logits, -jnp.inf)
    top = jnp.max(logits, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.sum(jnp.where(see, jnp.exp(logits - top), 0.0), axis=-1, keepdims=True)
    return jnp.where(see, logits - top - jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)


def softmax_weights(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """[*b, heads, L, L] the exact causal softmax attention of q, k [*b, L, heads, d] over the visible
    keys (`visible` [*b, L, L]), float32; rows without a visible key are 0.

    >>> q = k = jnp.ones((1, 2, 1, 4))
    >>> softmax_weights(q, k, jnp.tril(jnp.ones((2, 2), bool))[None])[0, 0].tolist()
    [[1.0, 0.0], [0.5, 0.5]]
    """
    return jnp.exp(softmax_log_weights(q, k, visible))


def kernel_weights(phi_q: jax.Array, phi_k: jax.Array, visible: jax.Array) -> jax.Array:
    """[*b, heads, L, L] the normalised kernel attention φ(q_i)·φ(k_j) / Σ_{j' visible} φ(q_i)·φ(k_j')
    of positive features φ(q), φ(k) [*b, L, heads, m], float32; rows without a visible key (or whose
    similarities all underflow) are 0.

    >>> phi = jnp.ones((1, 3, 1, 2))
    >>> kernel_weights(phi, phi, jnp.tril(jnp.ones((3, 3), bool))[None])[0, 0, 1].tolist()
    [0.5, 0.5, 0.0]
    """
    similarity = jnp.einsum("...qhm,...khm->...hqk", phi_q.astype(jnp.float32), phi_k.astype(jnp.float32))
    similarity = jnp.where(_heads_last(visible), similarity, 0.0)
    total = jnp.sum(similarity, axis=-1, keepdims=True)
    return similarity / jnp.where(total > 0, total, 1.0)


def elu_weights(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """[*b, heads, L, L] elu+1 linear attention's normalised matrix (Katharopoulos et al. 2020; the map
    of `LinearAttention`, on q and k as given, unscaled).

    >>> q = k = jnp.zeros((1, 2, 1, 4))                          # φ(0) = 1: uniform rows
    >>> elu_weights(q, k, jnp.tril(jnp.ones((2, 2), bool))[None])[0, 0, 1].tolist()
    [0.5, 0.5]
    """
    feature = lambda x: jax.nn.elu(x.astype(jnp.float32)) + 1.0
    return kernel_weights(feature(q), feature(k), visible)


def uniform_weights(q: jax.Array, k: jax.Array, visible: jax.Array) -> jax.Array:
    """[*b, heads, L, L] 1 / (keys seen) on the visible keys: attention without any similarity.

    >>> q = k = jnp.ones((1, 3, 2, 4))
    >>> uniform_weights(q, k, jnp.tril(jnp.ones((3, 3), bool))[None])[0, 1, 2].tolist()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    ones = jnp.ones((*q.shape[:-1], 1), jnp.float32)
    return kernel_weights(ones, jnp.ones((*k.shape[:-1], 1), jnp.float32), visible)


def draw_features(key: jax.Array, num_heads: int, num_features: int, head_dim: int) -> jax.Array:
    """[heads, m, d] FAVOR+ projections, one independent orthogonal draw per head, as `Performer` draws
    them (`orthogonal_random_features`: blocks of d orthogonal rows, chi-distributed norms).

    >>> draw_features(jax.random.PRNGKey(0), 2, 16, 8).shape
    (2, 16, 8)
    """
    draw = lambda k: orthogonal_random_features(k, num_features, head_dim)
    return jax.vmap(draw)(jax.random.split(key, num_heads))


def performer_weights(q: jax.Array, k: jax.Array, visible: jax.Array, w: jax.Array) -> jax.Array:
    """[*b, heads, L, L] the Performer's (FAVOR+) normalised causal attention of q, k [*b, L, heads, d]
    with the random projections w [heads, m, d]: φ(x') = exp(W x' − |x'|²/2) / √m on x' = x / d^{1/4},
    so E[φ(q')·φ(k')] = exp(q·k / √d), the softmax's similarity. Queries are stabilised by their largest
    logit (as `Performer`), keys by the largest key logit of their segment (module docstring); both
    factors cancel in the row's normalisation.

    >>> q = k = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (1, 8, 1, 4))
    >>> visible = jnp.tril(jnp.ones((8, 8), bool))[None]
    >>> w = draw_features(jax.random.PRNGKey(1), 1, 4096, 4)     # many features: close to softmax
    >>> bool(jnp.abs(performer_weights(q, k, visible, w) - softmax_weights(q, k, visible)).max() < 0.02)
    True
    """
    scale = q.shape[-1] ** -0.25
    w = jax.lax.stop_gradient(w.astype(jnp.float32))
    phi_q = positive_random_features(q.astype(jnp.float32) * scale, w, stabilize=True)
    kx = k.astype(jnp.float32) * scale
    logits = jnp.einsum("...hd,...hmd->...hm", kx, w) - 0.5 * jnp.sum(kx * kx, axis=-1, keepdims=True)
    top = jnp.max(logits, axis=-1)  # [*b, L, heads]: each key's largest logit
    # The largest over the key's segment: the keys j, j' with j' visible from j or j from j'.
    together = visible | jnp.swapaxes(visible, -1, -2)
    shift = jnp.max(jnp.where(together[..., None], top[..., None, :, :], -jnp.inf), axis=-2)
    shift = jnp.where(jnp.isfinite(shift), shift, top)
    phi_k = jnp.exp(logits - jax.lax.stop_gradient(shift)[..., None]) / math.sqrt(w.shape[-2])
    return kernel_weights(phi_q, phi_k, visible)


def kernel_matrix(
    kernel: str, q: jax.Array, k: jax.Array, visible: jax.Array, features: jax.Array | None = None
) -> jax.Array:
    """[*b, heads, L, L] the attention matrix of `kernel` (one of `KERNELS`; "performer" needs
    `features` [heads, m, d]).

    >>> q = k = jnp.ones((1, 2, 1, 4))
    >>> kernel_matrix("uniform", q, k, jnp.tril(jnp.ones((2, 2), bool))[None])[0, 0, 1].tolist()
    [0.5, 0.5]
    """
    if kernel == "softmax":
        return softmax_weights(q, k, visible)
    if kernel == "performer":
        if features is None:
            raise ValueError("kernel_matrix: the performer needs its random projections `features`.")
        return performer_weights(q, k, visible, features)
    if kernel == "elu+1":
        return elu_weights(q, k, visible)
    if kernel == "uniform":
        return uniform_weights(q, k, visible)
    raise ValueError(f"kernel_matrix: kernel must be one of {KERNELS}, got {kernel!r}.")


# --------------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------------
def row_kl(
    exact: jax.Array, approx: jax.Array, visible: jax.Array, log_exact: jax.Array | None = None
) -> jax.Array:
    """[*b, heads, L] KL(exact row ‖ approx row) = Σ_j p_j (log p_j − log q_j) over the visible keys, in
    nats; `log_exact` (e.g. `softmax_log_weights`) avoids the log of an underflowed p. An approximate
    weight below `TINY` counts as `TINY` (module docstring).

    >>> p = jnp.array([[[[1.0, 0.0], [0.5, 0.5]]]])
    >>> q = jnp.array([[[[1.0, 0.0], [0.75, 0.25]]]])
    >>> visible = jnp.tril(jnp.ones((2, 2), bool))[None]
    >>> [round(x, 4) for x in row_kl(p, q, visible)[0, 0].tolist()]
    [0.0, 0.1438]
    """
    see = _heads_last(visible)
    if log_exact is None:
        log_exact = jnp.log(jnp.where(exact > 0, exact, 1.0))
    log_approx = jnp.log(jnp.maximum(approx, TINY))
    terms = jnp.where(see & (exact > 0), exact * (log_exact - log_approx), 0.0)
    return jnp.sum(terms, axis=-1)


def relative_frobenius(exact: jax.Array, approx: jax.Array) -> jax.Array:
    """[*b, heads] ‖approx − exact‖_F / ‖exact‖_F over each [L, L] matrix.

    >>> a = jnp.eye(2)[None, None]
    >>> relative_frobenius(a, 0.5 * a).tolist()
    [[0.5]]
    """
    error = jnp.sqrt(jnp.sum(jnp.square(approx - exact), axis=(-2, -1)))
    return error / jnp.sqrt(jnp.sum(jnp.square(exact), axis=(-2, -1)))


def divergence(
    inputs: AttentionInputs,
    row_weights: jax.Array,
    kernel: str,
    features: jax.Array | None = None,
    *,
    log_exact: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per window and head, the divergence of `kernel`'s matrix from the exact softmax of `inputs`:
    "kl" (the mean of the row KLs over the query rows with `row_weights` [*b, L] > 0, nats), "frobenius"
    (the relative Frobenius error) and "floored" (approximate weights of visible keys that underflowed
    to 0); each [*b, heads]. `log_exact`: `softmax_log_weights` of `inputs`, when already computed.

    >>> q = k = v = jnp.ones((1, 3, 1, 4))
    >>> inputs = AttentionInputs(q, k, v, jnp.tril(jnp.ones((3, 3), bool))[None])
    >>> result = divergence(inputs, jnp.ones((1, 3)), "uniform")     # equal logits: uniform rows
    >>> {name: round(float(x[0, 0]), 6) for name, x in result.items()}
    {'kl': 0.0, 'frobenius': 0.0, 'floored': 0.0}
    """
    if log_exact is None:
        log_exact = softmax_log_weights(inputs.q, inputs.k, inputs.visible)
    exact = jnp.exp(log_exact)
    approx = kernel_matrix(kernel, inputs.q, inputs.k, inputs.visible, features)
    rows = row_kl(exact, approx, inputs.visible, log_exact)
    weights = row_weights.astype(jnp.float32)[..., None, :]
    kl = jnp.sum(rows * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    floored = jnp.sum((approx <= 0) & _heads_last(inputs.visible), axis=(-2, -1))
    return {"kl": kl, "frobenius": relative_frobenius(exact, approx), "floored": floored}


def softmax_entropy(inputs: AttentionInputs, row_weights: jax.Array) -> jax.Array:
    """[*b, heads] the mean entropy (nats) of the exact softmax rows with `row_weights` > 0: how peaked
    the trained model's attention is (log of the keys seen for uniform rows).

    >>> q = k = v = jnp.zeros((1, 2, 1, 4))
    >>> inputs = AttentionInputs(q, k, v, jnp.tril(jnp.ones((2, 2), bool))[None])
    >>> round(float(softmax_entropy(inputs, jnp.ones((1, 2)))[0, 0]), 4)      # (0 + log 2) / 2
    0.3466
    """
    log_p = softmax_log_weights(inputs.q, inputs.k, inputs.visible)
    p = jnp.exp(log_p)
    rows = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)
    weights = row_weights.astype(jnp.float32)[..., None, :]
    return jnp.sum(rows * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)


# --------------------------------------------------------------------------------------------------
# A trained model's attention: captured, and swapped
# --------------------------------------------------------------------------------------------------
def _is_softmax_layer(module: Any) -> bool:
    from seqjax.cells.attention import Attention
    from seqjax.models.layer import CellLayer

    return isinstance(module, CellLayer) and isinstance(module.cell, Attention)


def _layer_inputs(
    cell: Any, params: Any, xs: jax.Array, resets: jax.Array | None, mask: jax.Array | None
) -> tuple[AttentionInputs, jax.Array | None]:
    """What `Attention.apply` (no state) computes before its engine call, from the cell's own pieces:
    q, k, v after the positional encoding (keys and values repeated to the query heads) and the
    visibility (causal, segments from `resets`, padding); and the padding `mask` it applies after."""
    if cell.positional == "alibi":
        raise ValueError(
            "kernel_attention: ALiBi adds a distance bias to the logits, which has no kernel form "
            "φ(q)·φ(k); use a model with positional='rotary', 'sinusoidal' or 'none'."
        )
    xs, _, resets, mask, valid, seg, pos = cell._begin_apply(params, xs, None, resets, mask)
    q, k, v = cell._project(params, xs, pos)
    visible = cell._sequence_visibility(pos, valid, mask, seg if resets is not None else None)
    group = cell.num_heads // cell.kv_heads
    if group > 1:
        k, v = jnp.repeat(k, group, axis=-2), jnp.repeat(v, group, axis=-2)
    length = xs.shape[-2]
    return AttentionInputs(q, k, v, visible.pairs(length, length)), mask


def _intercepted_apply(
    model: nn.Module,
    params: Any,
    batch: Mapping[str, jax.Array],
    on_layer: Callable[[int, Any, Any, AttentionInputs, jax.Array | None], jax.Array | None],
) -> jax.Array:
    """`model`'s logits for `batch`, with `on_layer(layer, cell, cell_params, inputs, mask)` called at
    every softmax attention layer; a returned array [*b, L, output] replaces the layer's output (None:
    the layer runs as it is)."""
    counter = [0]

    def interceptor(next_fun: Callable[..., Any], args: Any, kwargs: Any, context: Any) -> Any:
        if context.method_name != "__call__" or not _is_softmax_layer(context.module):
            return next_fun(*args, **kwargs)
        layer_module = context.module
        xs = args[0]
        state = args[1] if len(args) > 1 else kwargs.get("state")
        if state is not None:
            raise ValueError("kernel_attention: a layer with a carried state; pass whole windows, no cache.")
        cell = layer_module.cell
        cell_params = layer_module._with_shared(layer_module.cell_params(xs.shape[-1]), kwargs.get("shared"))
        inputs, mask = _layer_inputs(cell, cell_params, xs, kwargs.get("resets"), kwargs.get("mask"))
        layer = counter[0]
        counter[0] += 1
        replaced = on_layer(layer, cell, cell_params, inputs, mask)
        if replaced is None:
            return next_fun(*args, **kwargs)
        return replaced, None

    keywords = {name: batch[name] for name in ("mask", "resets") if name in batch}
    with nn.intercept_methods(interceptor):
        return model.apply({"params": params}, batch["inputs"], deterministic=True, **keywords)


def capture_attention(
    model: nn.Module, params: Any, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, list[AttentionInputs]]:
    """The softmax model's logits [*b, L, vocab] on `batch` ({"inputs", "resets"?, "mask"?}) and, per
    softmax attention layer in order, the `AttentionInputs` it attended with. The model runs unchanged;
    `softmax_weights(q, k, visible)` of a layer, applied to its v, gives that layer's engine output.

        >>> logits, layers = capture_attention(model, params, batch)  # doctest: +SKIP
        >>> softmax_weights(layers[0].q, layers[0].k, layers[0].visible).shape  # doctest: +SKIP
        (8, 1, 1024, 1024)
    """
    captured: list[AttentionInputs] = []

    def keep(layer: int, cell: Any, cell_params: Any, inputs: AttentionInputs, mask: Any) -> None:
        captured.append(inputs)
        return None

    logits = _intercepted_apply(model, params, batch, keep)
    return logits, captured


def attend(weights: jax.Array, v: jax.Array) -> jax.Array:
    """[*b, L, heads, d] Σ_j A_ij v_j for weights [*b, heads, L, L] and values v [*b, L, heads, d].

    >>> attend(jnp.ones((1, 1, 1, 1)), jnp.full((1, 1, 1, 2), 3.0)).tolist()
    [[[[3.0, 3.0]]]]
    """
    return jnp.einsum("...hqk,...khd->...qhd", weights, v.astype(jnp.float32))


def forward_with_kernel(
    model: nn.Module,
    params: Any,
    batch: Mapping[str, jax.Array],
    kernel: str,
    features: Sequence[jax.Array | None] | None = None,
) -> jax.Array:
    """The logits of `model` on `batch` with every softmax attention layer's matrix replaced by
    `kernel`'s (`KERNELS`; "performer" takes `features[layer]` [heads, m, d]), every trained parameter
    kept. kernel="softmax" recomputes the model's own attention from the materialised matrix.

        >>> w = [draw_features(jax.random.PRNGKey(i), 1, 64, 64) for i in range(2)]  # doctest: +SKIP
        >>> logits = forward_with_kernel(model, params, batch, "performer", w)  # doctest: +SKIP
    """
    if kernel not in KERNELS:
        raise ValueError(f"forward_with_kernel: kernel must be one of {KERNELS}, got {kernel!r}.")

    def swap(layer: int, cell: Any, cell_params: Any, inputs: AttentionInputs, mask: Any) -> jax.Array:
        w = None
        if kernel == "performer":
            if features is None or layer >= len(features) or features[layer] is None:
                raise ValueError(f"forward_with_kernel: no performer features for attention layer {layer}.")
            w = features[layer]
        weights = kernel_matrix(kernel, inputs.q, inputs.k, inputs.visible, w)
        y = attend(weights, inputs.v).astype(cell.dtype)
        return cell._finish(cell._output(cell_params, y), mask)

    return _intercepted_apply(model, params, batch, swap)


def attention_layers(model: nn.Module) -> list[Any]:
    """The `Attention` cells of a `LanguageModel`'s backbone, in layer order (the layers the swap
    replaces).

        >>> [c.num_heads for c in attention_layers(model)]  # doctest: +SKIP
        [1, 1]
    """
    from seqjax.cells.attention import Attention

    return [cell for cell in model.config.layer_cells() if isinstance(cell, Attention)]


def swap_summary(cells: Sequence[Any]) -> dict[str, Any]:
    """The shapes of the swapped layers: {"layers", "heads", "head_dim"} (every layer alike, or a
    ValueError).

    >>> from seqjax.cells.attention import Attention
    >>> swap_summary([Attention(num_heads=2, head_dim=8), Attention(num_heads=2, head_dim=8)])
    {'layers': 2, 'heads': 2, 'head_dim': 8}
    """
    shapes = {(c.num_heads, c.head_dim) for c in cells}
    if len(shapes) != 1:
        raise ValueError(f"kernel_attention: the attention layers differ in (heads, head_dim): {shapes}.")
    heads, dim = shapes.pop()
    return {"layers": len(cells), "heads": heads, "head_dim": dim}


def chosen_runs(folder: str | os.PathLike[str]) -> list[Path]:
    """The seed folders of the rate a protocol chose under `folder` (`<workdir>/L<length>/<preset>`):
    the rate whose seed 0 has the lowest final validation bits per byte (the protocol's choice), its
    seeds in order.

        >>> chosen_runs("runs/crossover_lm/L1024/attention")  # doctest: +SKIP
        [PosixPath('runs/crossover_lm/L1024/attention/lr0.01/seed0'), ...]
    """
    rates = []
    for rate in sorted(Path(folder).glob("lr*")):
        record = rate / "seed0" / "run.json"
        if record.exists():
            saved = json.loads(record.read_text())
            rates.append((saved["validation"]["bits_per_byte"], float(saved["learning_rate"]), rate))
    if not rates:
        raise FileNotFoundError(f"{folder} has no finished runs (lr*/seed0/run.json); train them first.")
    best = min(rates, key=lambda r: (*validation_rank(r[0], larger=False), r[1]))[2]  # the protocol's choice
    return seed_folders_with_checkpoints(best)
