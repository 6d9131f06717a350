"""`Backbone`: input encoder → blocks (each may use a different cell) → final norm.

    config = BackboneConfig(d_model=64, num_layers=3, vocab_size=11, pattern=("lstm", "mamba", "gla"))
    backbone = Backbone(config)
    variables = backbone.init(key, tokens)
    features, cache = backbone.apply(variables, tokens, mask=mask)       # whole sequences
    cache, feats_t = backbone.apply(variables, tokens[:, 0], cache, method=Backbone.step)   # one token

`cache` is a tuple with one cell state per layer; `resets` and `mask` reach every block.

Parameters shared across layers: a cell whose `shared_params()` names some (Linformer with
sharing="layerwise": its E) gets them from the backbone, which holds one copy per cell type,
`params["backbone"]["shared"][cell.name]`, and passes it to every layer of that type; the layers' own
parameter trees (`blocks_i/mixer/cell`) leave them out. The gradient of a shared parameter is the sum of
what each layer contributes.
 See `Backbone`'s example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqjax.cells.base import State, with_sequence_axis
from seqjax.models.block import make_norm, remat_block
from seqjax.models.config import BackboneConfig
from seqjax.models.encoders import DNAEncoder, LinearEncoder, TokenEmbedding
from seqjax.models.heads import pool
from seqjax.models.layer import init_shared_params, step_error

__all__ = ["Backbone", "Cache", "check_causal", "check_streamable", "sequence_parallel_config"]

#: per-layer cell states, in layer order.
Cache = tuple[State, ...]


def _as_config(config: Any) -> BackboneConfig:
    if isinstance(config, BackboneConfig):
        return config
    return BackboneConfig.from_dict(config)


def check_streamable(config: BackboneConfig, owner: str = "model") -> None:
    """Raises TypeError naming the first layer (and its cell) that cannot run in step mode."""
    for i, (name, cell) in enumerate(zip(config.layer_mixers(), config.layer_cells(), strict=True)):
        problem = step_error(cell)
        if problem is not None:
            raise TypeError(
                f"{owner} cannot run in step mode: layer {i} (blocks_{i}, mixer {name!r}) uses {problem}. "
                f"Use the whole-sequence forward pass, or a left-to-right cell in that layer."
            )


def check_causal(config: BackboneConfig, owner: str = "model") -> None:
    """Raises ValueError naming the first layer whose cell can never be causal (its
    `causal_unsupported` gives a reason): a next-token model built on it would read the tokens it
    predicts. Cells that are bidirectional by a setting are not refused here (see `check_streamable`).

    >>> config = BackboneConfig(d_model=8, num_layers=1, vocab_size=11, pattern=("linformer",))
    >>> check_causal(config, "LanguageModel")
    Traceback (most recent call last):
    ...
    ValueError: LanguageModel predicts each token from the tokens before it, but layer 0 ... be causal; ...
    """
    for i, (name, cell) in enumerate(zip(config.layer_mixers(), config.layer_cells(), strict=True)):
        problem = cell.causal_unsupported()
        if problem is not None:
            raise ValueError(
                f"{owner} predicts each token from the tokens before it, but layer {i} (blocks_{i}, mixer "
                f"{name!r}) uses {type(cell).__name__}: {problem}."
            )


def sequence_parallel_config(
    config: BackboneConfig, sequence_axis: str | None, owner: str = "model"
) -> BackboneConfig:
    """`config` with every layer's cell splitting its time axis over the mesh axis `sequence_axis`
    (`cells.with_sequence_axis`; None: `config` unchanged). Raises ValueError naming the first layer (and
    its mixer and cell) whose cell cannot be split, with the reason and the alternatives
    (`Cell.sequence_parallel_unsupported`). The model must then run where the mesh is set
    (`jax.set_mesh`; the trainer does).

    >>> config = BackboneConfig(d_model=8, num_layers=1, vocab_size=11, pattern=("lstm",))
    >>> sequence_parallel_config(config, "sequence")
    Traceback (most recent call last):
    ...
    ValueError: model cannot split the time axis over the mesh axis 'sequence': layer 0 (blocks_0, ...
    """
    if sequence_axis is None:
        return config
    for i, (name, cell) in enumerate(zip(config.layer_mixers(), config.layer_cells(), strict=True)):
        reason = cell.sequence_parallel_unsupported()
        if reason is not None:
            raise ValueError(
                f"{owner} cannot split the time axis over the mesh axis {sequence_axis!r}: layer {i} "
                f"(blocks_{i}, mixer {name!r}) uses {type(cell).__name__}, which cannot run sequence-"
                f"parallel: {reason}"
            )
    mixers = {name: with_sequence_axis(config.mixer_cell(name), sequence_axis) for name in config.pattern}
    return dataclasses.replace(config, mixers=mixers)


class Backbone(nn.Module):
    """Encoder → `num_layers` blocks → final norm; see `BackboneConfig` for every option.

    Linformer's layerwise sharing: one E ([k, n]) for the whole model, held by the backbone.

    >>> import jax, jax.numpy as jnp
    >>> lin = {"cell": "linformer", "max_length": 16, "k": 4, "sharing": "layerwise"}
    >>> config = BackboneConfig(d_model=8, num_layers=3, encoder="none", pattern="lin", mixers={"lin": lin})
    >>> variables = Backbone(config).init(jax.random.PRNGKey(0), jnp.ones((2, 16, 8)))
    >>> params = nn.unbox(variables)["params"]
    >>> params["shared"]["linformer"]["e"].shape        # the one E of the whole model
    (4, 16)
    >>> sorted(params["blocks_0"]["mixer"]["cell"])     # each layer's own: no E
    ['w_k', 'w_o', 'w_q', 'w_v']
    """

    config: BackboneConfig

    def setup(self) -> None:
        c = self.config
        if not isinstance(c, BackboneConfig):
            raise TypeError(
                f"Backbone.config must be a BackboneConfig (use BackboneConfig.from_dict), got {type(c)}."
            )
        dtype = None if c.dtype == "float32" else jnp.dtype(c.dtype)
        pdtype = jnp.dtype(c.param_dtype)
        d = int(c.d_model)
        if c.encoder == "embedding":
            self.encoder = TokenEmbedding(int(c.vocab_size), d, dtype=dtype, param_dtype=pdtype)
        elif c.encoder == "dna":
            self.encoder = DNAEncoder(d, input_format=c.dna_input, dtype=dtype, param_dtype=pdtype)
        elif c.encoder == "linear":
            self.encoder = LinearEncoder(int(c.input_size), d, dtype=dtype, param_dtype=pdtype)
        else:
            self.encoder = None
        block_cls = remat_block(c.remat)
        layer_cells = c.layer_cells()
        # One copy of each cell type's shared parameters (`Cell.shared_params`) for all its layers.
        sharing = {cell.name: cell for cell in layer_cells if cell.shared_params()}
        self.shared_by_layer = tuple(cell.name if cell.shared_params() else None for cell in layer_cells)
        if sharing:

            def init_shared(key: jax.Array) -> dict[str, Any]:
                keys = jax.random.split(key, len(sharing))
                return {
                    name: init_shared_params(cell, k, d)
                    for (name, cell), k in zip(sharing.items(), keys, strict=True)
                }

            self.shared = self.param("shared", init_shared)
        else:
            self.shared = None
        self.blocks = [
            block_cls(
                cell=cell,
                d_model=d,
                mlp_expansion=float(c.mlp_expansion),
                mlp_activation=c.mlp_activation,
                norm=c.norm,
                norm_eps=float(c.norm_eps),
                prenorm=bool(c.prenorm),
                dropout_rate=float(c.dropout_rate),
                use_bias=bool(c.use_bias),
                dtype=dtype,
                param_dtype=pdtype,
                external_params=cell.shared_params(),
            )
            for cell in layer_cells
        ]
        self.final_norm = (
            make_norm(c.norm, eps=float(c.norm_eps), dtype=dtype, param_dtype=pdtype)
            if c.final_norm
            else None
        )
        self.embed_dropout = nn.Dropout(rate=float(c.dropout_rate))

    def encode(self, inputs: jax.Array) -> jax.Array:
        """Inputs → [..., d_model] features, token by token."""
        if self.encoder is None:
            x = jnp.asarray(inputs)
            if x.shape[-1] != self.config.d_model:
                raise ValueError(
                    f"Backbone(encoder='none'): inputs have {x.shape[-1]} features, expected d_model="
                    f"{self.config.d_model}."
                )
            return x
        return self.encoder(inputs)

    def __call__(
        self,
        inputs: jax.Array,
        cache: Cache | None = None,
        *,
        resets: jax.Array | None = None,
        mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, Cache]:
        """inputs [*batch, time, ...] → (features [*batch, time, d_model], cache).

        `cache` (optional) holds each layer's state before the first token (None: initial states), so a
        long prompt can be prefilled in pieces. The returned cache is the state after the last valid token.
        """
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(
                f"Backbone: cache has {len(cache)} layer states, the model has {len(self.blocks)} layers."
            )
        x = self.embed_dropout(self.encode(inputs), deterministic=deterministic)
        states = []
        for i, block in enumerate(self.blocks):
            state = None if cache is None else cache[i]
            x, state = block(x, state, resets, mask, deterministic, self._shared(i))
            states.append(state)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, tuple(states)

    def step(
        self,
        inputs: jax.Array,
        cache: Cache,
        *,
        reset: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[Cache, jax.Array]:
        """One token per sequence: inputs [*batch, ...] → (cache, features [*batch, d_model])."""
        if len(cache) != len(self.blocks):
            raise ValueError(
                f"Backbone: cache has {len(cache)} layer states, the model has {len(self.blocks)} layers."
            )
        x = self.encode(inputs)
        states = []
        for i, (block, state) in enumerate(zip(self.blocks, cache, strict=True)):
            state, x = block.step(x, state, reset, mask, self._shared(i))
            states.append(state)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return tuple(states), x

    def _shared(self, layer: int) -> dict[str, Any] | None:
        """The shared parameters layer `layer`'s cell reads (None when it holds all of its own)."""
        name = self.shared_by_layer[layer]
        return None if name is None else self.shared[name]

    def prefill(self, inputs: jax.Array, *, mask: jax.Array | None = None) -> tuple[Cache, jax.Array]:
        """(cache, features at each row's last valid token [*batch, d_model])."""
        features, cache = self(inputs, mask=mask)
        return cache, pool(features, mask, "last")

    @nn.nowrap
    def initial_cache(self, batch_shape: Sequence[int] = ()) -> Cache:
        """Every layer's initial state for `batch_shape` (needs no parameters)."""
        return tuple(cell.initial_state(tuple(batch_shape)) for cell in self.config.layer_cells())

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array]:
        """A one-token batch of the right kind, for abstract `init` (`param_groups`)."""
        c = self.config
        if c.encoder in ("embedding", "dna"):
            return (jnp.zeros((1, 1), jnp.int32),)
        width = c.input_size if c.encoder == "linear" else c.d_model
        return (jnp.zeros((1, 1, int(width)), jnp.float32),)

    @nn.nowrap
    def check_streamable(self) -> None:
        check_streamable(self.config, type(self).__name__)
