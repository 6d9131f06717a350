"""seqjax.experiment.matching: abstract counts equal a real init's; matching reaches ±5% for every preset."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from seqjax import models
from seqjax.config import ENCODER_PRESETS, PRESETS, load_config_file
from seqjax.experiment import count_parameters, match_parameters
from seqjax.experiment.matching import LENGTH_AXES

TOLERANCE = 0.05


def _config(path: str, arg: str):
    return load_config_file(path, arg)


def _real_count(task: str, backbone: dict, head: dict, inputs: jax.Array) -> int:
    """The reference: a real init on real (zero) inputs, its parameters counted leaf by leaf."""
    model = models.build_task_model(task, backbone, head)
    variables = jax.jit(model.init)(jax.random.key(1), inputs)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "path, arg, task, inputs",
    [
        ("configs/documents.py", "gru", "lm", jnp.zeros((2, 8), jnp.int32)),
        ("configs/genomic.py", "attention,task=species", "classification", jnp.zeros((2, 8), jnp.int32)),
    ],
)
def test_count_equals_real_init(path, arg, task, inputs):
    config = _config(path, arg)
    expected = _real_count(task, dict(config.model), dict(config.head), inputs)
    assert count_parameters(config) == expected


def test_forecast_count_equals_real_init_and_needs_input_size():
    config = _config("configs/timeseries.py", "lstm")
    backbone = {**dict(config.model), "input_size": 3}
    head = {**dict(config.head), "horizon": 96}
    expected = _real_count("forecast", backbone, head, jnp.zeros((2, 8, 3), jnp.float32))
    assert count_parameters(config, input_size=3) == expected  # horizon from data.horizon (96)
    with pytest.raises(ValueError, match="input_size"):
        count_parameters(config)


def test_mlp_slope_is_three_projections_per_unit_per_layer():
    # Hand count: a SwiGLU MLP of h units has gate, up (d_model x h) and down (h x d_model), no bias.
    config = _config("configs/genomic.py", "lstm,task=species")
    d_model, layers = config.model.d_model, config.model.num_layers
    config.model.mlp_expansion = 1.0
    one = count_parameters(config)
    config.model.mlp_expansion = 2.0
    two = count_parameters(config)
    assert two - one == 3 * d_model * layers * d_model


@pytest.mark.parametrize(
    "path, options", [("configs/genomic.py", "task=species"), ("configs/documents.py", "")]
)
def test_every_preset_matches_within_tolerance(path, options):
    # Encoder presets read future tokens: classification only (the LM config refuses them).
    names = [p for p in PRESETS if path == "configs/genomic.py" or p not in ENCODER_PRESETS]
    configs = {p: _config(path, ",".join(x for x in (p, "size=cpu", options) if x)) for p in names}
    original = {name: count_parameters(c, excluding_axes=LENGTH_AXES) for name, c in configs.items()}
    matched, report = match_parameters(configs, tolerance=TOLERANCE)
    target = max(original.values())
    assert [m.name for m in report] == names
    for m in report:
        assert m.target == target
        assert abs(m.ratio - 1) <= TOLERANCE, m
        # the config says what the report says, the length-axis parameters (Linformer's E) apart
        assert count_parameters(matched[m.name], excluding_axes=LENGTH_AXES) == m.parameters
        assert count_parameters(matched[m.name]) == m.total
        assert (m.unmatched > 0) == (m.name == "linformer"), m
    # The inputs are left as they were.
    assert all(c.model.mlp_expansion == 4.0 for c in configs.values())


def test_one_target_at_every_length_with_the_linformer_projection_left_out():
    # The Linformer's E is k x L per layer: counted, it would set the target and every model's size
    # would follow the length (the look-back experiment's first runs: 237k, 438k, 1.22M at 96, 512, 2048).
    def match_at(length: int, **kwargs):
        arg = f"task=species,length={length}"
        configs = {p: _config("configs/genomic.py", f"{p},{arg}") for p in ("lstm", "linformer")}
        return {m.name: m for m in match_parameters(configs, tolerance=TOLERANCE, **kwargs)[1]}

    short, long = match_at(1024), match_at(4096)
    assert short["lstm"].target == long["lstm"].target  # one size at both lengths
    assert short["lstm"].total == short["lstm"].parameters and short["lstm"].unmatched == 0
    # E (256 x L, one per layer for keys and values: sharing="key_value") on top of the matched count
    assert long["linformer"].unmatched == 2 * 256 * 4096 == 4 * short["linformer"].unmatched
    assert long["linformer"].parameters == short["linformer"].parameters
    # Counting every parameter (the old rule) puts the target at the Linformer's total, length by length.
    everything = match_at(4096, excluding_axes=())
    assert everything["lstm"].target == everything["linformer"].parameters > 4 * long["lstm"].target
    assert everything["linformer"].unmatched == 0


def test_named_target_and_cell_knob():
    configs = {p: _config("configs/genomic.py", f"{p},task=species") for p in ("lstm", "gru")}
    matched, report = match_parameters(configs, target="gru", knob="cell")
    lstm = report[0]
    assert (lstm.knob, lstm.key) == ("cell", "model.mixers.lstm.hidden_size")
    assert lstm.value < 64 and abs(lstm.ratio - 1) <= TOLERANCE
    assert matched["lstm"].model.mixers.lstm.hidden_size == lstm.value
    assert report[1].knob == "reference" and matched["gru"] is configs["gru"]


def test_mlp_falls_back_to_cell_width_when_mixer_alone_exceeds_target():
    config = _config("configs/genomic.py", "elstm,task=species")
    config.model.mlp_expansion = 1 / config.model.d_model
    target = int(0.8 * count_parameters(config))  # below even a one-unit MLP: the cell must shrink
    config.model.mlp_expansion = 0.5  # kept as the config has it while the cell narrows
    matched, report = match_parameters({"elstm": config}, target=target)
    assert (report[0].knob, report[0].key) == ("cell", "model.mixers.elstm.hidden_size")
    assert abs(report[0].ratio - 1) <= TOLERANCE
    assert count_parameters(matched["elstm"]) == report[0].parameters


def test_impossible_target_names_the_model_and_the_gap():
    configs = {"lstm": _config("configs/genomic.py", "lstm,task=species")}
    with pytest.raises(ValueError, match=r"model 'lstm' cannot reach 1,000 parameters within ±5%.*\+"):
        match_parameters(configs, target=1000)


def test_bad_arguments_name_the_argument():
    configs = {"lstm": _config("configs/genomic.py", "lstm,task=species")}
    with pytest.raises(ValueError, match="knob="):
        match_parameters(configs, knob="depth")
    with pytest.raises(ValueError, match="tolerance="):
        match_parameters(configs, tolerance=1.5)
    with pytest.raises(ValueError, match="target='gru' is not one of"):
        match_parameters(configs, target="gru")
    with pytest.raises(ValueError, match="configs_by_name is empty"):
        match_parameters({})


def test_solver_is_deterministic():
    def solve():
        configs = {p: _config("configs/documents.py", p) for p in ("lstm", "mamba", "attention")}
        return match_parameters(configs)[1]

    assert solve() == solve()
