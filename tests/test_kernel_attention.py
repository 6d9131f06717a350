"""Issue 19 §5: kernel attention against softmax (`seqjax.experiment.kernel_attention`): the divergence
metrics, the Performer and elu+1 matrices against the library's own cells, the captured queries and
keys against the model's own attention, and `experiments/kernel_attention.py` end to end (smoke)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.cells.attention import Attention
from seqjax.cells.kv_cache import segments_and_positions
from seqjax.cells.linear_attention import LinearAttention, Performer
from seqjax.experiment import kernel_attention as ka
from seqjax.models.config import BackboneConfig
from seqjax.models.tasks import LanguageModel
from seqjax.scan.attention import Visibility
from tests.driver_helpers import rule_class, rule_verdict, run_driver

B, L, H, D, INPUT = 2, 12, 2, 8, 6


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _flags() -> tuple[jax.Array, jax.Array]:
    """Resets (a new document at 5 in row 0) and padding (the last 2 tokens of row 1)."""
    resets = np.zeros((B, L), bool)
    resets[0, 5] = True
    mask = np.ones((B, L), bool)
    mask[1, -2:] = False
    return jnp.asarray(resets), jnp.asarray(mask)


def _visible(resets: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L, L] who sees whom: causal, within a segment, not padding (the cells' rule)."""
    seg, pos = segments_and_positions(mask, resets, jnp.zeros((B,), jnp.int32))
    vis = Visibility(
        q_positions=pos, kv_positions=pos, q_segment_ids=seg, kv_segment_ids=seg, kv_mask=mask, causal=True
    )
    return vis.pairs(L, L)


def test_kl_and_frobenius_of_identical_matrices_are_zero():
    resets, mask = _flags()
    visible = _visible(resets, mask)
    q, k = _normal(0, (B, L, H, D), 2.0), _normal(1, (B, L, H, D), 2.0)
    exact = ka.softmax_weights(q, k, visible)
    np.testing.assert_allclose(exact.sum(-1)[0], 1.0, rtol=1e-5)  # rows are distributions
    assert float(jnp.abs(ka.row_kl(exact, exact, visible)).max()) < 1e-5
    assert float(jnp.abs(ka.relative_frobenius(exact, exact)).max()) == 0.0
    inputs = ka.AttentionInputs(q, k, k, visible)
    other = ka.divergence(inputs, mask, "uniform")
    assert other["kl"].shape == (B, H) and bool((other["kl"] > 0).all())  # a different matrix: KL > 0
    # KL by hand on one row: p = softmax, q = uniform over the 3 keys row 2 sees
    p = np.asarray(exact[0, 0, 2, :3], np.float64)
    by_hand = float(np.sum(p * np.log(p * 3)))
    uniform = ka.uniform_weights(q, k, visible)
    assert float(ka.row_kl(exact, uniform, visible)[0, 0, 2]) == pytest.approx(by_hand, rel=1e-4)


def test_performer_approaches_softmax_as_features_grow():
    resets, mask = _flags()
    visible = _visible(resets, mask)
    q, k = _normal(2, (B, L, H, D), 0.7), _normal(3, (B, L, H, D), 0.7)
    inputs = ka.AttentionInputs(q, k, k, visible)
    measure = jax.jit(lambda w: ka.divergence(inputs, mask, "performer", w))
    kl, frob = [], []
    for m in (4, 32, 256, 2048):
        draws = [measure(ka.draw_features(jax.random.PRNGKey(10 * m + d), H, m, D)) for d in range(4)]
        kl.append(np.mean([float(r["kl"].mean()) for r in draws]))
        frob.append(np.mean([float(r["frobenius"].mean()) for r in draws]))
    assert kl == sorted(kl, reverse=True) and frob == sorted(frob, reverse=True), (kl, frob)
    assert kl[-1] < 0.01 and frob[-1] < 0.1, (kl, frob)
    assert kl[0] > 10 * kl[-1]


def _cell_inputs(cell, params, xs):
    """q, k, v [B, L, H, D] of a linear-attention cell (its one `w_qkv` projection)."""
    qkv = jnp.einsum("bli,ishd->blshd", xs, params["w_qkv"])
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


@pytest.mark.parametrize("kernel", ["elu+1", "performer"])
def test_kernel_rows_give_the_linear_attention_cells_outputs(kernel):
    """A·V with the kernel's normalised causal matrix is what `LinearAttention` (elu+1) and `Performer`
    (FAVOR+ with the same W) compute through their recurrences, resets and padding included."""
    resets, mask = _flags()
    xs = _normal(4, (B, L, INPUT), 0.5)
    if kernel == "elu+1":
        cell = LinearAttention(num_heads=H, head_dim=D, chunk_size=4)
    else:
        cell = Performer(num_heads=H, head_dim=D, num_features=16, chunk_size=4)
    params = cell.init(jax.random.PRNGKey(0), INPUT)
    want, _ = jax.jit(lambda p, x: cell.apply(p, x, resets=resets, mask=mask))(params, xs)
    q, k, v = _cell_inputs(cell, params, xs)
    visible = _visible(resets, mask)
    features = params.get("features")
    weights = ka.kernel_matrix(kernel, q, k, visible, features)
    got = jnp.einsum("blhd,hdo->blo", ka.attend(weights, v), params["w_o"])
    got = jnp.where(mask[..., None], got, 0.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=2e-4)
    if kernel == "elu+1":  # and the same matrix as elu_weights itself
        np.testing.assert_array_equal(np.asarray(weights), np.asarray(ka.elu_weights(q, k, visible)))


@pytest.mark.parametrize("kv_heads", [None, 1])
def test_captured_queries_and_keys_reproduce_the_attention_cell(kv_heads):
    """The captured q, k (rotary applied), v and visibility give the cell's own output: softmax(q·k/√d)
    over the visible keys, times v, through w_o (multi-head and multi-query)."""
    resets, mask = _flags()
    cell = Attention(num_heads=H, head_dim=D, num_kv_heads=kv_heads, max_length=L)
    params = cell.init(jax.random.PRNGKey(1), INPUT)
    xs = _normal(5, (B, L, INPUT), 2.0)
    want, _ = jax.jit(lambda p, x: cell.apply(p, x, resets=resets, mask=mask))(params, xs)
    inputs, cell_mask = ka._layer_inputs(cell, params, xs, resets, mask)
    assert inputs.q.shape == inputs.k.shape == (B, L, H, D)
    y = ka.attend(ka.softmax_weights(inputs.q, inputs.k, inputs.visible), inputs.v)
    got = cell._finish(cell._output(params, y), cell_mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def _tiny_model() -> tuple[LanguageModel, object, dict[str, jax.Array]]:
    config = BackboneConfig(
        d_model=16,
        num_layers=2,
        vocab_size=11,
        pattern=("a",),
        mixers={"a": {"cell": "attention", "num_heads": H, "head_dim": D, "max_length": L}},
        mlp_expansion=2.0,
    )
    model = LanguageModel(config)
    resets, mask = _flags()
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 11, (B, L)), jnp.int32)
    batch = {"inputs": tokens, "resets": resets, "mask": mask}
    params = model.init(jax.random.PRNGKey(2), tokens)["params"]
    return model, jax.tree.map(jnp.asarray, __import__("flax").linen.unbox(params)), batch


def test_capture_and_swap_on_a_model():
    model, params, batch = _tiny_model()
    plain = model.apply({"params": params}, batch["inputs"], resets=batch["resets"], mask=batch["mask"])
    logits, layers = jax.jit(lambda p: ka.capture_attention(model, p, batch))(params)
    # Capturing changes nothing (jit against the eager apply: rounding only).
    np.testing.assert_allclose(np.asarray(logits), np.asarray(plain), atol=1e-5, rtol=1e-5)
    assert len(layers) == 2 and layers[1].q.shape == (B, L, H, D)
    assert len(ka.attention_layers(model)) == 2
    # Every layer swapped for its materialised softmax: the model's own logits.
    swap = jax.jit(lambda p, w: ka.forward_with_kernel(model, p, batch, "softmax"))
    np.testing.assert_allclose(np.asarray(swap(params, None)), np.asarray(plain), atol=2e-5, rtol=2e-5)
    # Another kernel changes them; a Performer with many features changes them little.
    uniform = ka.forward_with_kernel(model, params, batch, "uniform")
    ws = [ka.draw_features(jax.random.PRNGKey(i), H, 4096, D) for i in range(2)]
    performer = jax.jit(lambda p, w: ka.forward_with_kernel(model, p, batch, "performer", w))(params, ws)
    far = float(jnp.abs(uniform - plain).max())
    near = float(jnp.abs(performer - plain).max())
    assert far > 1e-3 and near < far, (near, far)
    with pytest.raises(ValueError, match="no performer features"):
        ka.forward_with_kernel(model, params, batch, "performer")


def test_chosen_runs_take_the_rate_with_the_best_validation(tmp_path):
    # lr0.0003 diverged (NaN): never chosen over a finite metric, wherever it sorts
    rates = (("lr0.0003", 3e-4, float("nan"), 1), ("lr0.001", 1e-3, 4.2, 1), ("lr0.01", 1e-2, 4.0, 3))
    for rate, lr, bpb, seeds in (*rates, ("lr0.03", 3e-2, 4.1, 1)):
        for seed in range(seeds):
            folder = tmp_path / rate / f"seed{seed}"
            (folder / "checkpoints").mkdir(parents=True)
        record = {"learning_rate": lr, "validation": {"bits_per_byte": bpb}}
        (tmp_path / rate / "seed0" / "run.json").write_text(json.dumps(record))
    runs = ka.chosen_runs(tmp_path)
    assert [r.relative_to(tmp_path).as_posix() for r in runs] == [
        "lr0.01/seed0",
        "lr0.01/seed1",
        "lr0.01/seed2",
    ]
    with pytest.raises(FileNotFoundError):
        ka.chosen_runs(tmp_path / "none")


@pytest.mark.slow
def test_kernel_attention_smoke_run(tmp_path):
    results = run_driver("kernel_attention.py", tmp_path, "--size=smoke")
    rows = results["kernels"]
    assert list(rows) == ["softmax", "performer-16", "performer-64", "performer-256", "elu+1", "uniform"]
    assert results["windows"] == 6 and len(results["runs"]) == 2 and results["length"] == 64
    for name, row in rows.items():
        if name == "softmax":
            assert len(row["entropy_by_layer"]) == 2
            continue
        for key in ("kl", "frobenius", "bits_per_byte", "delta_bpb"):
            assert row[key]["low"] <= row[key]["estimate"] <= row[key]["high"], (name, key)
        assert row["kl"]["estimate"] > 0 and len(row["kl_by_layer"]) == 2
    assert rows["performer-16"]["kl"]["estimate"] > rows["performer-256"]["kl"]["estimate"]
    assert len(rows["performer-64"]["delta_bpb_by_draw"]) == 2
    softmax_bpb = rows["softmax"]["bits_per_byte"]["estimate"]
    for name, row in rows.items():
        if name == "softmax":
            continue
        # Δbpb is the swapped model's bits per byte minus the softmax model's, on the same windows; for a
        # Performer, the mean over its feature draws (each draw's Δbpb over all windows and seeds)
        delta = row["delta_bpb"]["estimate"]
        assert delta == pytest.approx(row["bits_per_byte"]["estimate"] - softmax_bpb, abs=1e-9), name
        if name.startswith("performer-"):
            assert delta == pytest.approx(np.mean(row["delta_bpb_by_draw"]), abs=1e-5), name
    # a tiny model: the verdicts are not pinned, but each must be the rule's over the recorded intervals
    # (an interval over fewer than 10 documents is not judged)
    words = {"claimed": "supported", "opposite": "contradicted", "neither": "inconclusive"}
    rule_a = results["rule_a"]
    assert set(rule_a["per_kernel"]) == {"performer-16", "performer-64", "performer-256", "elu+1"}
    classes = {
        k: rule_class(
            "greater",
            rows[k]["delta_bpb"]["low"],
            rows[k]["delta_bpb"]["high"],
            n_clusters=rows[k]["delta_bpb"]["n_clusters"],
        )
        for k in rule_a["per_kernel"]
    }

    def word(k):
        n = rows[k]["delta_bpb"]["n_clusters"]
        return f"not judged ({n} documents, fewer than 10)" if n < 10 else words[classes[k]]

    assert rule_a["per_kernel"] == {k: word(k) for k in classes}
    assert rule_a["verdict"] == rule_verdict(classes.values())
    assert math.isclose(rule_a["confidence_level"], 0.9875)
    # (b): KL(fewest features) - KL(most) and the same of Δbpb; supported when both lie above zero,
    # contradicted when the KL's does and the Δbpb's lies below, else inconclusive
    rule_b = results["rule_b"]
    assert (rule_b["fewest"], rule_b["most"]) == ("performer-16", "performer-256")
    kl, bpb = rule_b["kl_difference"], rule_b["delta_bpb_difference"]
    assert kl["estimate"] == pytest.approx(
        rows["performer-16"]["kl"]["estimate"] - rows["performer-256"]["kl"]["estimate"], abs=1e-9
    )
    assert bpb["estimate"] == pytest.approx(
        rows["performer-16"]["delta_bpb"]["estimate"] - rows["performer-256"]["delta_bpb"]["estimate"],
        abs=1e-9,
    )
    sides = tuple(rule_class("greater", d["low"], d["high"], n_clusters=d["n_clusters"]) for d in (kl, bpb))
    expected = {("claimed", "claimed"): "supported", ("claimed", "opposite"): "contradicted"}
    assert rule_b["verdict"] == expected.get(sides, "inconclusive"), (rule_b, sides)
    text = (tmp_path / "out.md").read_text()
    assert "## Verdicts" in text and "| performer-256 |" in text
    assert (tmp_path / "out.png").stat().st_size > 1000
    assert len(list((tmp_path / "runs" / "scores").glob("*.npz"))) == 2  # one cached score file per run
