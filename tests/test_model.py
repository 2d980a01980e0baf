"""The U-Net options of train (the seed's transposed-convolution decoder, dropout, scSE
attention) build what they say and survive the save/load round trip predict relies on."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pipeline.model import autocast_dtype, build_unet, cpu_has_native_bf16, load_model, save_model
from pipeline.model_config import ModelConfig


def _config(**options) -> ModelConfig:
    return ModelConfig(
        encoder="resnet18",
        bands=["r", "g", "b", "nir"],
        mean=[0.0] * 4,
        std=[1.0] * 4,
        chip_size=64,
        **options,
    )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decoder_upsampling": "transposed"},
        {"dropout": 0.3},
        {"decoder_attention": "scse"},
        {"decoder_upsampling": "transposed", "dropout": 0.2, "decoder_attention": "scse"},
        {"decoder_channels": [64, 32, 16, 16, 8]},
        {"decoder_channels": [64, 32, 16, 16, 8], "decoder_upsampling": "transposed"},
    ],
    ids=["default", "transposed", "dropout", "scse", "all", "narrow", "narrow-transposed"],
)
def test_unet_options_round_trip(options, tmp_path):
    torch.manual_seed(0)
    model = build_unet(_config(**options)).eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        before = model(x)
    assert before.shape == (2, 1, 64, 64)

    save_model(model, _config(**options), tmp_path / "m")
    loaded, config = load_model(tmp_path / "m")  # strict: the options rebuild the same modules
    assert config.model_dump(exclude={"weights_sha256"}) == _config(**options).model_dump(
        exclude={"weights_sha256"}
    )
    assert len(config.weights_sha256) == 64  # recorded at save time, checked at load
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_options_change_the_network():
    modules = {
        name: [type(m).__name__ for m in build_unet(_config(**opts)).modules()]
        for name, opts in {
            "default": {},
            "transposed": {"decoder_upsampling": "transposed"},
            "dropout": {"dropout": 0.3},
            "scse": {"decoder_attention": "scse"},
        }.items()
    }
    assert "ConvTranspose2d" not in modules["default"]
    assert modules["transposed"].count("ConvTranspose2d") == 5  # one per decoder block
    assert "Dropout2d" in modules["dropout"] and "Dropout2d" not in modules["default"]
    assert "SCSEModule" in modules["scse"] and "SCSEModule" not in modules["default"]


def test_decoder_channels_set_the_decoder_width_and_older_models_keep_smp_s_default(tmp_path):
    narrow = build_unet(_config(decoder_channels=[64, 32, 16, 16, 8]))
    default = build_unet(_config())
    widths = [block.conv2[0].out_channels for block in narrow.decoder.blocks]
    assert widths == [64, 32, 16, 16, 8]
    assert [block.conv2[0].out_channels for block in default.decoder.blocks] == [
        256,
        128,
        64,
        32,
        16,
    ]
    assert (
        sum(p.numel() for p in narrow.decoder.parameters())
        < sum(p.numel() for p in default.decoder.parameters()) / 4
    )
    # a model.json written before decoder_channels existed rebuilds smp's default decoder
    save_model(default, _config(), tmp_path / "old")
    path = tmp_path / "old" / "model.json"
    saved = json.loads(path.read_text())
    del saved["decoder_channels"]
    path.write_text(json.dumps(saved))
    loaded, config = load_model(tmp_path / "old")
    assert config.decoder_channels == [256, 128, 64, 32, 16]
    with pytest.raises(ValueError, match="decoder_channels"):
        _config(decoder_channels=[64, 32, 16, 8])


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    model = build_unet(_config(dropout=0.5))
    x = torch.randn(1, 4, 64, 64)
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # a fresh mask per pass
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert isinstance(model.segmentation_head[0], nn.Dropout2d)


def test_autocast_choice_per_device_and_use():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32", training=True) is None
    assert autocast_dtype(cpu, "bf16", training=False) is torch.bfloat16
    # CPU inference stays float32 unless asked: its pixels must not depend on the thread count
    assert autocast_dtype(cpu, "auto", training=False) is None
    # CPU training takes bf16 only where the hardware computes it (emulated bf16 is slower)
    assert autocast_dtype(cpu, "auto", training=True) is (
        torch.bfloat16 if cpu_has_native_bf16() else None
    )


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 autocast is emulated on this CPU")
def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    model = build_unet(_config()).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        full = torch.sigmoid(model(x))
        with torch.autocast(
            "cpu", dtype=autocast_dtype(torch.device("cpu"), "bf16", training=False)
        ):
            half = torch.sigmoid(model(x).float())
    assert half.dtype == torch.float32
    assert (
        0 < (half - full).abs().max() < 0.1
    )  # really ran in bf16, and stayed a probability map of the same model
