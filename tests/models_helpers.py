"""Helpers shared by the tests/test_models_*.py files (a helper module: it holds no tests).

Compiles dominate these tests' time on CPU, and a cell's `init` is among the slowest programs to
compile, so each cell is initialised once per session (`cell_params`) and equivalence tests build model
variables from those (`fast_variables`) instead of compiling `model.init` for every case.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqjax import cells, models

D, VOCAB, B, L = 8, 11, 2, 12

# (id, cell) — every cell reads D features.
MODEL_CELL_CASES = [
    ("lstm-narrow", cells.LSTM(hidden_size=6)),  # output_size != d_model: the block adds a projection
    ("gru", cells.GRU(hidden_size=D)),
    ("elstm", cells.ELSTM(hidden_size=D, memory_slots=2, memory_width=4)),
    ("s4d", cells.S4D(hidden_size=D, state_size=4, chunk_size=4)),
    ("s5", cells.S5(hidden_size=D, state_size=4, chunk_size=4)),
    ("lru", cells.LRU(hidden_size=D, state_size=4, chunk_size=4)),
    ("mamba", cells.Mamba(d_model=D, state_size=4, chunk_size=4)),
    ("linear-attention", cells.LinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("gla", cells.GatedLinearAttention(num_heads=2, head_dim=D // 2, chunk_size=4)),
    ("performer", cells.Performer(num_heads=2, head_dim=D // 2, num_features=8, chunk_size=4)),
]
if hasattr(cells, "Attention"):
    MODEL_CELL_CASES.append(("attention", cells.Attention(num_heads=2, head_dim=D // 2, max_length=32)))
if hasattr(cells, "SlidingWindowAttention"):
    MODEL_CELL_CASES.append(
        ("sliding-window", cells.SlidingWindowAttention(num_heads=2, head_dim=D // 2, window=4))
    )
CASE_IDS = [name for name, _ in MODEL_CELL_CASES]
CASE_CELLS = [cell for _, cell in MODEL_CELL_CASES]


def tokens(seed: int = 0, shape=(B, L)) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def lm(cell, num_layers: int = 2, **kw) -> models.LanguageModel:
    cfg = models.BackboneConfig(
        d_model=D, num_layers=num_layers, vocab_size=VOCAB, pattern=("m",), mixers={"m": cell}
    )
    return models.LanguageModel(cfg, **kw)


def assert_close(a, b, tol=1e-5):
    """|a − b| <= tol · max(1, max|b|), leaf by leaf."""

    def check(x, y):
        x, y = np.asarray(x, np.complex128), np.asarray(y, np.complex128)
        scale = max(1.0, float(np.max(np.abs(y), initial=0)))
        err = float(np.max(np.abs(x - y), initial=0))
        assert err <= tol * scale, f"max |diff| = {err:.3g} (scale {scale:.3g})"

    jax.tree.map(check, a, b)


@functools.cache
def cell_params(cell, input_size: int = D, seed: int = 0):
    """`cell.init` once per (cell, size, seed) in the session."""
    return cell.init(jax.random.PRNGKey(seed), input_size)


def fast_variables(model, *args, seed: int = 0):
    """Variables for equivalence tests without compiling `model.init`: each layer's cell parameters from
    its cell's own `init` (cached), every other parameter random (norm scales ≈ 1), all unboxed."""
    abstract = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), *args))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [getattr(p, "key", None) for p in path]
        if "cell" in keys:
            return None
        if keys[-1] == "scale":
            return jnp.asarray(1.0 + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
        scale = leaf.shape[0] ** -0.5 if leaf.ndim >= 2 else 0.1
        return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

    out = jax.tree_util.tree_map_with_path(fill, abstract)
    backbone = out["params"]["backbone"] if "backbone" in out["params"] else out["params"]
    for i, cell in enumerate(model.config.layer_cells()):
        backbone[f"blocks_{i}"]["mixer"]["cell"] = cell_params(cell, int(model.config.d_model), seed + i % 2)
    return out


def check_step_matches_parallel(model, variables, toks, prompt_lengths, *, use_mask=True):
    """Right-padded prompts (row r has prompt_lengths[r] valid tokens, padded with junk to the longest):
    prefill + decode of each row's own continuation == the parallel logits of each row's full sequence.
    One compiled program: forward, prefill and a `lax.scan` of decode steps."""
    p = max(prompt_lengths)
    n_new = toks.shape[1] - p
    lengths = np.asarray(prompt_lengths)
    rows = np.arange(toks.shape[0])
    mask = jnp.asarray(np.arange(p)[None, :] < lengths[:, None])
    prompt = jnp.where(mask, toks[:, :p], tokens(99, (toks.shape[0], p)))
    continuation = toks[rows[:, None], lengths[:, None] + np.arange(n_new)[None, :]]
    if not use_mask:
        assert len(set(prompt_lengths)) == 1
        mask = None

    @jax.jit
    def run(variables, toks, prompt, mask, continuation):
        full = model.apply(variables, toks)
        cache, last = models.prefill(model, variables, prompt, mask=mask)
        step = lambda cache, tok: models.decode_step(model, variables, cache, tok)
        _, decoded = jax.lax.scan(step, cache, continuation.T)
        return full, last, jnp.moveaxis(decoded, 0, 1)

    full, last, decoded = run(variables, toks, prompt, mask, continuation)
    assert_close(last, full[rows, lengths - 1])
    assert_close(decoded, full[rows[:, None], lengths[:, None] + np.arange(n_new)[None, :]])
    return full
