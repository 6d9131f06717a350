"""The model presets of issues 15 and 16: each builds through `configs/genomic.py:<preset>` and trains a few
steps on the embedded real sample; encoder presets are refused by next-token configs, and by forecasting
configs unless they serve forecasting (Linformer)."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from configs import documents, genomic, timeseries
from seqjax import cells
from seqjax.config import ENCODER_PRESETS, FORECASTING_ENCODER_PRESETS, HYBRID_PRESETS, PRESETS
from seqjax.models.config import BackboneConfig
from seqjax.train.trainer import train

sys.dont_write_bytecode = True

NEW_PRESETS = [
    "elstm",
    "s4d",
    "performer",
    "linear_attention",
    "bilstm",
    "encoder",
    "longformer",
    "linformer",
    # issue 22; `deltanet` is the same cell without the decay and the output gate, so only its build is
    # checked here (the cell contract runs both cells)
    "gated_deltanet",
    # Griffin: two RG-LRU blocks per local-attention block (`rglru` alone is checked by its build)
    "griffin",
    "mamba2",
    # xLSTM (mLSTM and sLSTM layers)
    "mlstm",
    "slstm",
    # GLA is fla's per-channel layer since issue 22 (`gla_scalar`, the per-head form, is checked by its build)
    "gla",
    # RWKV-7's time mixer (issue 22 §5)
    "rwkv7",
]


def _tiny(config, data_dir: str):
    config.total_steps = 2
    config.model.d_model = 8
    config.model.num_layers = 1
    config.batch_size = 8  # the test session has 8 host devices
    config.eval_batch_size = 8
    config.eval_every = 2
    config.log_every = 1
    config.data.max_examples_per_split = 16
    config.optimizer.warmup_steps = 1
    config.checkpoint.every = 2
    config.checkpoint.async_save = False
    config.tensorboard = False
    config.data_dir = data_dir
    return config


@pytest.fixture
def data_dir(shared_data_dir: str) -> str:
    """The session's prepared data (preparing the embedded sample is most of a test's time)."""
    return shared_data_dir


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_trains_on_genomic_classification(preset, data_dir, tmp_path):
    config = genomic.get_config(f"{preset},length=32")
    if preset == "longformer":
        config.model.mixers.longformer.window = 8  # shorter than the sequence, so the window matters
    if preset == "linformer":
        assert config.model.mixers.linformer.max_length == 32  # n is the task's length
        config.model.mixers.linformer.k = 8  # shorter than the sequence, so the projection compresses
    if preset == "griffin":
        config.model.num_layers = 3  # one whole pattern: RG-LRU, RG-LRU, local attention
        config.model.mixers.local_attention.window = 8  # shorter than the sequence, so the window matters
    result = train(_tiny(config, data_dir), str(tmp_path / "run"))
    assert result["step"] == 2
    assert np.isfinite(result["eval"]["balanced_accuracy"])


def test_linformer_layerwise_sharing_trains_with_one_projection(data_dir, tmp_path):
    """`linformer,sharing=layerwise`: the trainer shards, optimises and checkpoints the model's one E."""
    config = _tiny(genomic.get_config("linformer,length=32,sharing=layerwise"), data_dir)
    config.model.mixers.linformer.k = 8
    config.model.num_layers = 2
    result = train(config, str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["eval"]["balanced_accuracy"])
    params = result["state"].params
    assert params["backbone"]["shared"]["linformer"]["e"].shape == (8, 32)
    assert all("e" not in params["backbone"][f"blocks_{i}"]["mixer"]["cell"] for i in range(2))


def test_presets_build_the_cells_they_name():
    built = {name: _first_cell(name) for name in [*NEW_PRESETS, "deltanet", "rglru", "gla_scalar"]}
    assert isinstance(built["bilstm"], cells.Bidirectional)
    assert isinstance(built["bilstm"].forward, cells.LSTM)
    assert isinstance(built["encoder"], cells.Attention) and not built["encoder"].causal
    assert isinstance(built["longformer"], cells.Longformer) and built["longformer"].num_global == 1
    assert isinstance(built["linformer"], cells.Linformer) and built["linformer"].max_length == 32
    assert isinstance(built["s4d"], cells.S4D)
    assert isinstance(built["performer"], cells.Performer)
    assert isinstance(built["elstm"], cells.ELSTM)
    assert isinstance(built["linear_attention"], cells.LinearAttention)
    assert type(built["deltanet"]) is cells.DeltaNet and built["deltanet"].chunk_size is None
    assert built["deltanet"].resolved_chunk_size == (32 if jax.default_backend() == "cpu" else 64)
    assert isinstance(built["gated_deltanet"], cells.GatedDeltaNet) and built["gated_deltanet"].output_gate
    assert isinstance(built["rglru"], cells.RGLRU) and built["rglru"].d_model == 64
    assert isinstance(built["mamba2"], cells.Mamba2) and built["mamba2"].state_size == 128
    assert isinstance(built["mlstm"], cells.MLSTM) and built["mlstm"].inner_size == 2 * built["mlstm"].d_model
    assert isinstance(built["slstm"], cells.SLSTM) and built["slstm"].num_heads == 4
    assert type(built["gla"]) is cells.GatedLinearAttention and built["gla"].key_dim == 32  # d_v = 64
    assert type(built["gla_scalar"]) is cells.ScalarGatedLinearAttention
    assert isinstance(built["rwkv7"], cells.RWKV7) and built["rwkv7"].d_model == 64
    assert built["rwkv7"].head_dim == 64 and built["rwkv7"].method == "auto"
    # exactly the presets whose cells cannot stream left to right are the encoder presets
    no_stream = {name for name, cell in built.items() if cell.step_unsupported() is not None}
    assert no_stream == ENCODER_PRESETS


def test_griffin_preset_is_two_rglru_blocks_per_local_attention_block():
    """Griffin's layer pattern (cpu: 2 layers rounded up to one whole pattern of 3), multi-query local
    attention and Griffin's GeLU-gated MLP of expansion 3."""
    config = genomic.get_config("griffin,length=32")
    backbone = BackboneConfig.from_dict(config.model.to_dict())
    assert backbone.layer_mixers() == ("rglru", "rglru", "local_attention")
    kinds = [type(cell) for cell in backbone.layer_cells()]
    assert kinds == [cells.RGLRU, cells.RGLRU, cells.SlidingWindowAttention]
    local = backbone.layer_cells()[2]
    assert (local.window, local.kv_heads) == (256, 1)
    assert (backbone.mlp_activation, backbone.mlp_expansion) == ("geglu", 3.0)
    assert genomic.get_config("griffin,size=accelerator").model.num_layers == 6
    assert all(cell.step_unsupported() is None for cell in backbone.layer_cells())


def test_xl_attention_preset_remembers_one_segment():
    """The xl_attention preset's memory is the task's length (the training segment), unless overridden."""
    cell = _first_cell("xl_attention")
    assert isinstance(cell, cells.TransformerXLAttention) and cell.memory_length == 32
    config = documents.get_config("xl_attention,length=64")
    assert config.model.mixers.xl_attention.to_dict() == {"cell": "xl_attention", "memory_length": 64}
    assert cell.step_unsupported() is None


def _first_cell(preset: str) -> cells.Cell:
    config = genomic.get_config(f"{preset},length=32")
    return BackboneConfig.from_dict(config.model.to_dict()).layer_cells()[0]


REFUSED = [(preset, documents) for preset in sorted(ENCODER_PRESETS)] + [
    (preset, timeseries) for preset in sorted(ENCODER_PRESETS - FORECASTING_ENCODER_PRESETS)
]  # (every encoder forecasts: the second list is empty while FORECASTING_ENCODER_PRESETS has them all)


@pytest.mark.parametrize(
    "preset, config_module",
    REFUSED,
    ids=[f"{'lm' if module is documents else 'forecasting'}-{preset}" for preset, module in REFUSED],
)
def test_causal_tasks_refuse_encoder_presets(preset, config_module):
    with pytest.raises(ValueError, match=f"preset '{preset}' is a bidirectional encoder.*classification"):
        config_module.get_config(preset)


@pytest.mark.parametrize("preset", sorted(ENCODER_PRESETS))
def test_streaming_forecasters_refuse_encoder_presets(preset):
    """An encoder forecasts one window at a time; a stream forecaster (stream=1: a forecast at every
    position, the state carried across batches) would read later rows: the whole-config check refuses it."""
    from seqjax.train.run_config import resolve
    from seqjax.train.segments import check_segment_recurrence

    config = timeseries.get_config(f"{preset},stream=1")
    with pytest.raises(ValueError, match="cannot carry a state from one segment to the next"):
        check_segment_recurrence(resolve(config))


@pytest.mark.parametrize("preset", ["linformer", "longformer"])
def test_encoders_train_on_forecasting(preset, data_dir, tmp_path):
    """The forecaster reads the look-back window's last token once; its targets lie after the window, so
    an encoder reading the window both ways sees none of them."""
    assert preset in FORECASTING_ENCODER_PRESETS
    config = timeseries.get_config(f"{preset},lookback=32,horizon=4")
    if preset == "linformer":
        assert config.model.mixers.linformer.max_length == 32
        config.model.mixers.linformer.k = 8
    result = train(_tiny(config, data_dir), str(tmp_path / "run"))
    assert result["step"] == 2
    assert np.isfinite(result["eval"]["mse"])


def test_every_preset_is_documented_in_the_readme():
    with open("README.md") as f:
        readme = f.read()
    for name in [*PRESETS, *HYBRID_PRESETS]:
        assert f"`{name}`" in readme, name
