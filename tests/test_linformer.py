"""Linformer: with k = n and E = F = identity it is exact bidirectional attention (a dense reference
written plainly here); padding is masked; the sharing modes have the paper's parameter counts; layerwise
sharing (one E held by the model) equals per-layer projections all set to that matrix, values and
gradients; causal use, step mode, inputs longer than n and invalid sharing settings are clear errors."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import genomic, timeseries
from seqjax import cells, models
from seqjax.config import check_preset_task, parse_arg

D = 5  # input width
SHARING = ["none", "headwise", "key_value", "layerwise"]


def dense_bidirectional_attention(params, xs, num_heads: int, head_dim: int):
    """Exact softmax attention over every token, by the definition: xs [B, T, D] -> [B, T, out]."""
    q = jnp.einsum("bti,ihd->bthd", xs, params["w_q"])
    k = jnp.einsum("bti,ihd->bthd", xs, params["w_k"])
    v = jnp.einsum("bti,ihd->bthd", xs, params["w_v"])
    group = num_heads // k.shape[-2]  # grouped-query: query head h reads key/value head h // group
    k, v = jnp.repeat(k, group, axis=-2), jnp.repeat(v, group, axis=-2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    probs = jax.nn.softmax(scores, axis=-1)
    y = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return jnp.einsum("bthd,hdo->bto", y, params["w_o"])


def identity_projections(cell: cells.Linformer, params):
    """params with E (and F) the n x n identity (k = n), per key/value head for sharing="none"."""
    eye = jnp.eye(cell.max_length)
    if cell.sharing == "none":
        eye = jnp.broadcast_to(eye, (cell.kv_heads, *eye.shape))
    return {**params, **{name: eye for name in ("e", "f") if name in params}}


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("num_kv_heads", [None, 1], ids=["mha", "mqa"])
def test_identity_projections_equal_exact_attention_values_and_gradients(sharing, num_kv_heads):
    t = 12
    cell = cells.Linformer(
        num_heads=2,
        head_dim=4,
        num_kv_heads=num_kv_heads,
        max_length=t,
        k=t,
        sharing=sharing,
        positional="none",
    )
    params = identity_projections(cell, cell.init(jax.random.PRNGKey(0), D))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, t, D))
    attention_params = {name: params[name] for name in ("w_q", "w_k", "w_v", "w_o")}

    def linformer_loss(p, x):
        return jnp.sum(jnp.sin(cell.apply({**params, **p}, x)[0]))

    def dense_loss(p, x):
        return jnp.sum(jnp.sin(dense_bidirectional_attention(p, x, cell.num_heads, cell.head_dim)))

    ys, _ = jax.jit(cell.apply)(params, xs)
    ref = jax.jit(dense_bidirectional_attention, static_argnums=(2, 3))(
        attention_params, xs, cell.num_heads, cell.head_dim
    )
    np.testing.assert_allclose(ys, ref, rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(linformer_loss, argnums=(0, 1)))(attention_params, xs)
    ref_grads = jax.jit(jax.grad(dense_loss, argnums=(0, 1)))(attention_params, xs)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_identity_projections_with_rotary_equal_the_bidirectional_attention_cell():
    """Rotary positions too: the projection acts on already rotated keys, as exact attention sees them."""
    t = 10
    cell = cells.Linformer(num_heads=2, head_dim=4, max_length=t, k=t, positional="rotary")
    exact = cells.Attention(num_heads=2, head_dim=4, causal=False, positional="rotary", max_length=t)
    params = identity_projections(cell, cell.init(jax.random.PRNGKey(0), D))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, t, D))
    attention_params = {name: params[name] for name in ("w_q", "w_k", "w_v", "w_o")}
    np.testing.assert_allclose(cell.apply(params, xs)[0], exact.apply(attention_params, xs)[0], atol=1e-6)


@pytest.mark.parametrize("sharing", SHARING)
def test_padding_is_masked(sharing):
    """Changing padded tokens changes no valid output; padded outputs are 0; a left-padded row equals the
    unpadded one (positions count valid tokens only)."""
    t = 9
    cell = cells.Linformer(num_heads=2, head_dim=3, max_length=16, k=4, sharing=sharing)
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, t, D))
    mask = np.ones((3, t), bool)
    mask[0, 6:] = False  # right padding
    mask[1, :2] = False  # left padding
    mask[2, [1, 4, 5]] = False  # padding in the middle
    mask = jnp.asarray(mask)
    garbage = 100.0 * jax.random.normal(jax.random.PRNGKey(2), xs.shape)
    changed = jnp.where(mask[..., None], xs, garbage)

    @jax.jit
    def run(xs, changed):
        return cell.apply(params, xs, mask=mask)[0], cell.apply(params, changed, mask=mask)[0]

    ys, ys_changed = run(xs, changed)
    np.testing.assert_array_equal(np.asarray(ys)[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(ys_changed, ys, atol=1e-6)
    # Gradients do not reach padded inputs.
    grad = jax.jit(jax.grad(lambda x: jnp.sum(cell.apply(params, x, mask=mask)[0] ** 2)))(xs)
    np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0.0)
    # Left padding: the same as the valid tokens alone.
    apply = jax.jit(cell.apply)  # a compiled program per shape, not op by op
    alone, _ = apply(params, xs[1:2, 2:])
    np.testing.assert_allclose(ys[1:2, 2:], alone, atol=1e-6)
    # Right padding equals the shorter input, which uses E[:, :6] (zero rows for the rest of n).
    short, _ = apply(params, xs[0:1, :6])
    np.testing.assert_allclose(ys[0:1, :6], short, atol=1e-6)


def test_shorter_input_is_the_input_padded_to_n_with_zero_key_and_value_rows():
    """The documented semantics, computed plainly: K and V padded to n rows with zeros, then E·K, F·V."""
    n, t = 16, 7
    cell = cells.Linformer(num_heads=2, head_dim=3, max_length=n, k=5, positional="none")
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, t, D))
    q = jnp.einsum("bti,ihd->bthd", xs, params["w_q"])
    k = jnp.einsum("bti,ihd->bthd", xs, params["w_k"])
    v = jnp.einsum("bti,ihd->bthd", xs, params["w_v"])
    pad = ((0, 0), (0, n - t), (0, 0), (0, 0))
    k_proj = jnp.einsum("rn,bnhd->brhd", params["e"], jnp.pad(k, pad))
    v_proj = jnp.einsum("rn,bnhd->brhd", params["f"], jnp.pad(v, pad))
    probs = jax.nn.softmax(jnp.einsum("bthd,brhd->bhtr", q, k_proj) / np.sqrt(3), axis=-1)
    ref = jnp.einsum("bthd,hdo->bto", jnp.einsum("bhtr,brhd->bthd", probs, v_proj), params["w_o"])
    np.testing.assert_allclose(cell.apply(params, xs)[0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharing", SHARING)
def test_packed_segments_equal_separate_rows(sharing):
    """The resets form projects each segment on its own; with no reset set it equals the fast form."""
    cell = cells.Linformer(num_heads=4, head_dim=2, num_kv_heads=2, max_length=12, k=3, sharing=sharing)
    params = cell.init(jax.random.PRNGKey(0), D)
    a = jax.random.normal(jax.random.PRNGKey(1), (1, 5, D))
    b = jax.random.normal(jax.random.PRNGKey(2), (1, 7, D))
    packed = jnp.concatenate([a, b], 1)
    resets = jnp.zeros((1, 12), bool).at[0, 5].set(True)
    mask = jnp.ones((1, 12), bool).at[0, 8].set(False)

    @jax.jit
    def run(params):
        ys, state = cell.apply(params, packed, resets=resets, mask=mask)
        ys_a, _ = cell.apply(params, a)
        ys_b, _ = cell.apply(params, b, mask=mask[:, 5:])
        unset, _ = cell.apply(params, packed, resets=jnp.zeros_like(resets), mask=mask)
        fast, _ = cell.apply(params, packed, mask=mask)
        return ys, state, ys_a, ys_b, unset, fast

    ys, state, ys_a, ys_b, unset, fast = run(params)
    np.testing.assert_allclose(ys, jnp.concatenate([ys_a, ys_b], 1), atol=1e-6)
    np.testing.assert_allclose(unset, fast, atol=1e-6)
    assert state.length.tolist() == [6]  # the last segment's valid tokens


def test_a_given_state_continues_positions():
    """Positions continue from the state's count: E's columns from there on are used."""
    cell = cells.Linformer(num_heads=2, head_dim=3, max_length=16, k=4, positional="none")
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (1, 6, D))
    ys, state = cell.apply(params, xs, cells.LinformerState(length=jnp.array([3])))
    assert state.length.tolist() == [9]
    # The same as 3 earlier tokens whose keys and values are zero: pad in front, shift E by nothing.
    shifted = {**params, "e": params["e"][:, 3:], "f": params["f"][:, 3:]}
    short = dataclasses.replace(cell, max_length=13)
    np.testing.assert_allclose(ys, short.apply(shifted, xs)[0], atol=1e-6)


# ------------------------------------------------------------------------------------------------------
# Parameters.
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sharing, projection_params",
    [
        ("none", lambda h, k, n: 2 * h * k * n),  # an E and an F per head
        ("headwise", lambda h, k, n: 2 * k * n),  # one E and one F per layer
        ("key_value", lambda h, k, n: k * n),  # E = F
        ("layerwise", lambda h, k, n: k * n),  # the cell alone holds its E (a model holds one for all)
    ],
)
def test_parameter_counts_follow_the_paper(sharing, projection_params):
    h, d, k, n = 3, 4, 6, 20
    cell = cells.Linformer(num_heads=h, head_dim=d, max_length=n, k=k, sharing=sharing)
    params = cell.init(jax.random.PRNGKey(0), D)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    usual = 3 * D * h * d + h * d * (h * d)  # w_q, w_k, w_v and w_o (out = h·d)
    assert count == usual + projection_params(h, k, n)
    assert set(cell.param_axes()) == set(params)


def test_projections_are_initialised_like_the_reference():
    """fairseq's Linformer: Glorot uniform with gain 1/√2 on [k, n], variance 1 / (n + k)."""
    k, n = 64, 1024
    cell = cells.Linformer(num_heads=1, head_dim=4, max_length=n, k=k)
    e = np.asarray(cell.init(jax.random.PRNGKey(0), D)["e"])
    bound = np.sqrt(3.0 / (n + k))
    assert np.max(np.abs(e)) <= bound
    assert abs(np.std(e) - np.sqrt(1.0 / (n + k))) < 0.02 * np.sqrt(1.0 / (n + k))


def test_bfloat16_compute_keeps_float32_parameters():
    cell = cells.Linformer(num_heads=2, head_dim=4, max_length=32, k=8, dtype=jnp.bfloat16)
    params = cell.init(jax.random.PRNGKey(0), D)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    ys, _ = cell.apply(params, jax.random.normal(jax.random.PRNGKey(1), (2, 20, D)))
    assert ys.dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------------
# Layerwise sharing: one E for every layer of the model.
# ------------------------------------------------------------------------------------------------------
LAYERS, K, N, WIDTH = 3, 4, 12, 8  # a backbone of three Linformer layers over [*, N, WIDTH] features


def _backbone(sharing: str, num_layers: int = LAYERS) -> models.Backbone:
    mixer = {"cell": "linformer", "num_heads": 2, "head_dim": 4, "max_length": N, "k": K, "sharing": sharing}
    config = models.BackboneConfig(
        d_model=WIDTH, num_layers=num_layers, encoder="none", pattern="lin", mixers={"lin": mixer}
    )
    return models.Backbone(config)


def _params(sharing: str) -> dict:
    xs = jnp.ones((1, N, WIDTH))
    return nn.unbox(_backbone(sharing).init(jax.random.PRNGKey(0), xs))["params"]


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def test_layerwise_sharing_holds_one_k_by_n_matrix_for_the_model():
    """The paper's layerwise count: one k x n matrix for all layers, where key-value sharing has one per
    layer and headwise sharing two per layer; the rest of the model is the same."""
    layerwise = _params("layerwise")
    assert jax.tree.map(jnp.shape, layerwise["shared"]) == {"linformer": {"e": (K, N)}}
    for i in range(LAYERS):
        assert sorted(layerwise[f"blocks_{i}"]["mixer"]["cell"]) == ["w_k", "w_o", "w_q", "w_v"]
    count = _count(layerwise)
    assert count == _count(_params("key_value")) - (LAYERS - 1) * K * N
    assert count == _count(_params("headwise")) - (2 * LAYERS - 1) * K * N
    # Boxed like a layer's E: its logical axes shard it, its optimizer group is the cell's.
    boxed = _backbone("layerwise").init(jax.random.PRNGKey(0), jnp.ones((1, N, WIDTH)))["params"]
    e = boxed["shared"]["linformer"]["e"]
    assert e.names == ("projected_length", "length") and e.group == "default"


def test_layerwise_sharing_equals_per_layer_projections_set_to_one_matrix():
    """Values and gradients: the layerwise model equals the headwise model whose every E and F is the
    shared matrix, and the shared matrix's gradient is the sum of those E's and F's gradients."""
    shared = _params("layerwise")
    e = shared["shared"]["linformer"]["e"] + 0.1 * jax.random.normal(jax.random.PRNGKey(3), (K, N))
    shared["shared"]["linformer"]["e"] = e
    per_layer = {name: value for name, value in shared.items() if name != "shared"}
    per_layer = jax.tree.map(lambda x: x, per_layer)  # a copy: the layers' trees are edited below
    for i in range(LAYERS):
        per_layer[f"blocks_{i}"]["mixer"]["cell"] = {
            **per_layer[f"blocks_{i}"]["mixer"]["cell"],
            "e": e,
            "f": e,
        }
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, N, WIDTH))
    mask = jnp.arange(N) < jnp.array([[N], [N - 3]])  # row 1 padded: the masked path too

    def loss(model):
        return lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, xs, mask=mask)[0]))

    value, grads = jax.jit(jax.value_and_grad(loss(_backbone("layerwise"))))(shared)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(loss(_backbone("headwise"))))(per_layer)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    summed = sum(
        ref_grads[f"blocks_{i}"]["mixer"]["cell"][name] for i in range(LAYERS) for name in ("e", "f")
    )
    np.testing.assert_allclose(grads["shared"]["linformer"]["e"], summed, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(summed).max()) > 0
    for i in range(LAYERS):  # every other parameter's gradient is the unshared model's
        cell_grads = ref_grads[f"blocks_{i}"]["mixer"]["cell"]
        ref_grads[f"blocks_{i}"]["mixer"]["cell"] = {k: v for k, v in cell_grads.items() if k not in "ef"}
    del grads["shared"]
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layerwise_sharing_from_the_preset_option_and_its_errors():
    for module, arg in ((genomic, "linformer,length=32"), (timeseries, "linformer,lookback=32")):
        config = module.get_config(f"{arg},sharing=layerwise")
        assert config.model.mixers.linformer.sharing == "layerwise"
        model = {**config.model.to_dict(), "input_size": 3}  # forecasting: the trainer sets it from the data
        cell = models.BackboneConfig.from_dict(model).layer_cells()[0]
        assert cell.shared_params() == ("e",)
        assert module.get_config(arg).model.mixers.linformer.sharing == "key_value"  # the preset's default
    with pytest.raises(ValueError, match=r"option 'sharing' is for preset\(s\) \['linformer'\], not 'lstm'"):
        genomic.get_config("lstm,sharing=layerwise")
    with pytest.raises(
        ValueError, match=r"sharing='layer' of preset 'linformer' must be one of .*'layerwise'"
    ):
        parse_arg("linformer,sharing=layer", "lstm", {}, "configs/genomic.py")
    # Layers that share one E must build it in one shape.
    base = {"cell": "linformer", "num_heads": 2, "head_dim": 4, "max_length": N, "sharing": "layerwise"}
    with pytest.raises(
        ValueError,
        match=r"mixers 'a' and 'b' are Linformer layers whose \['e'\] .*"
        r"sharing='layerwise'.*e float32\[4, 12\] vs e float32\[6, 12\]",
    ):
        models.BackboneConfig(
            d_model=WIDTH,
            encoder="none",
            pattern=("a", "b"),
            mixers={"a": {**base, "k": 4}, "b": {**base, "k": 6}},
        )
    # A layer that does not hold E must be given it.
    cell = cells.Linformer(num_heads=2, head_dim=4, max_length=N, k=K, sharing="layerwise")
    layer = models.CellLayer(cell, input_size=WIDTH, external_params=("e",))
    xs = jnp.ones((1, N, WIDTH))
    variables = layer.init(jax.random.PRNGKey(0), xs, shared={"e": jnp.zeros((K, N))})
    assert "e" not in variables["params"]["cell"]
    with pytest.raises(ValueError, match=r"holds no \['e'\] .* pass shared=\{'e': \.\.\.\}"):
        layer.apply(variables, xs)
    # Alone (no external_params), a layerwise cell's layer holds its E like key-value sharing.
    alone = models.CellLayer(cell).init(jax.random.PRNGKey(0), xs)
    assert "e" in alone["params"]["cell"]


# ------------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------------
ALTERNATIVES = "attention, sliding_window_attention, performer, linear_attention"


def test_causal_is_refused_naming_why_and_the_alternatives():
    with pytest.raises(ValueError, match=f"future ones included: it cannot be causal.*{ALTERNATIVES}"):
        cells.Linformer(num_heads=2, head_dim=4, causal=True)


def test_step_mode_is_refused():
    cell = cells.Linformer(num_heads=2, head_dim=4, max_length=8, k=4)
    params = cell.init(jax.random.PRNGKey(0), D)
    assert "cannot be causal" in cell.step_unsupported(streaming=False)
    with pytest.raises(TypeError, match=f"projects keys and values along the sequence.*{ALTERNATIVES}"):
        cell.step(params, cell.initial_state((2,)), jnp.ones((2, D)))
    # and through a model's step mode, naming the layer
    model = models.from_config(
        {
            "task": "classification",
            "d_model": 8,
            "num_layers": 1,
            "encoder": "none",
            "pooling": "last",
            "pattern": ("lin",),
            "mixers": {"lin": {"cell": "linformer", "max_length": 8, "k": 4}},
        }
    )
    with pytest.raises(TypeError, match=r"layer 0 \(blocks_0, mixer 'lin'\) uses Linformer projects"):
        model.check_streamable()


def test_a_causal_language_model_is_refused_at_build_time():
    spec = {"cell": "linformer", "max_length": 16, "k": 4}
    config = {"task": "lm", "d_model": 8, "num_layers": 2, "vocab_size": 11, "pattern": ("gru", "lin")}
    layer = r"layer 1 \(blocks_1, mixer 'lin'\) uses Linformer"
    with pytest.raises(ValueError, match=f"{layer}.*{ALTERNATIVES}"):
        models.from_config({**config, "mixers": {"lin": spec}})
    with pytest.raises(ValueError, match="preset 'linformer' is a bidirectional encoder"):
        check_preset_task("linformer", "lm")
    # the same layers serve a classifier
    models.from_config({**config, "task": "classification", "mixers": {"lin": spec}})


def test_an_input_longer_than_n_is_refused_naming_both_numbers_and_the_fix():
    cell = cells.Linformer(num_heads=2, head_dim=4, max_length=16, k=4)
    params = cell.init(jax.random.PRNGKey(0), D)
    with pytest.raises(ValueError, match=r"has 20 time steps.*max_length n=16.*max_length >= 20"):
        cell.apply(params, jnp.ones((1, 20, D)))
    with pytest.raises(ValueError, match=r"has 20 time steps.*max_length n=16"):
        jax.jit(cell.apply)(params, jnp.ones((1, 20, D)), mask=jnp.ones((1, 20), bool))
    # A given state's positions count too.
    with pytest.raises(ValueError, match=r"need positions up to 21.*max_length n=16"):
        cell.apply(params, jnp.ones((1, 16, D)), cells.LinformerState(length=jnp.array([5])))


def test_alibi_and_unknown_sharing_are_refused():
    with pytest.raises(ValueError, match=r"alibi.*mixes every position and has none"):
        cells.Linformer(num_heads=2, head_dim=4, positional="alibi")
    with pytest.raises(ValueError, match="sharing must be one of"):
        cells.Linformer(num_heads=2, head_dim=4, sharing="sequence")
