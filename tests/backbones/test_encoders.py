"""One reusable suite run against every registered ``rs-`` encoder (smp's tests/encoders idea).

Tiny configuration: in_channels 4 (a band count no ImageNet stem has), 64 px, one output class.
The U-Net is built once per encoder and shared by the checks.
"""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from backbones import build_backbone, list_backbones
from backbones.encoders import (
    ENCODER_PREFIX,
    RsEncoder,
    encoder_archs,
    encoder_name,
    register_encoders,
)

IN_CHANNELS, SIZE = 4, 64


@pytest.fixture(scope="module", params=encoder_archs())
def unet(request: pytest.FixtureRequest) -> smp.Unet:
    torch.manual_seed(0)
    return smp.Unet(
        encoder_name(request.param), encoder_weights=None, in_channels=IN_CHANNELS, classes=1
    ).eval()


class TestEncoderSuite:
    def test_unet_output_shape(self, unet: smp.Unet) -> None:
        with torch.no_grad():
            out = unet(torch.randn(1, IN_CHANNELS, SIZE, SIZE))
        assert out.shape == (1, 1, SIZE, SIZE)
        assert torch.isfinite(out).all()

    def test_six_features_at_strides_1_to_32(self, unet: smp.Unet) -> None:
        x = torch.randn(2, IN_CHANNELS, SIZE, SIZE)
        with torch.no_grad():
            feats = unet.encoder(x)
        assert len(feats) == 6
        assert feats[0] is x  # the stride-1 skip is the input itself
        assert [f.shape[1] for f in feats] == list(unet.encoder.out_channels)
        assert [SIZE // f.shape[-1] for f in feats] == [1, 2, 4, 8, 16, 32]
        assert all(f.shape[-2] == f.shape[-1] and f.shape[0] == 2 for f in feats)

    def test_encoder_mirrors_the_backbone(self, unet: smp.Unet) -> None:
        encoder = unet.encoder
        assert isinstance(encoder, RsEncoder)
        backbone = build_backbone(
            encoder.arch, num_classes=3, in_channels=IN_CHANNELS, features_only=True
        )
        assert list(encoder.out_channels) == [
            IN_CHANNELS,
            *(f["num_chs"] for f in backbone.feature_info),
        ]
        enc_shapes = {k: v.shape for k, v in encoder.state_dict().items()}
        assert enc_shapes == {k: v.shape for k, v in backbone.state_dict().items()}
        assert encoder.get_submodule(encoder.first_conv).in_channels == IN_CHANNELS

    def test_no_vgg_centre_block(self, unet: smp.Unet) -> None:
        assert isinstance(unet.decoder.center, torch.nn.Identity)

    def test_backward_reaches_the_stem(self, unet: smp.Unet) -> None:
        unet.train()
        unet.zero_grad()
        unet(torch.randn(2, IN_CHANNELS, SIZE, SIZE)).mean().backward()
        stem = unet.encoder.get_submodule(unet.encoder.first_conv)
        assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
        unet.eval()


def test_encoder_names_and_registration() -> None:
    archs = encoder_archs()
    assert set(archs) == {a for a in list_backbones() if a.startswith(("vgg", "resnet"))} | {
        "googlenet"
    }
    assert "alexnet" not in archs and "lenet5" not in archs  # no stride-2 stage
    for arch in archs:
        name = encoder_name(arch)
        assert name == ENCODER_PREFIX + arch == f"rs-{arch}"
        assert smp.encoders.encoders[name]["encoder"] is RsEncoder
    before = dict(smp.encoders.encoders)
    register_encoders()  # idempotent
    assert smp.encoders.encoders == before
    # smp's own names stay untouched
    assert smp.encoders.encoders["resnet34"]["encoder"] is not RsEncoder


def test_foreign_encoder_under_our_name_is_refused() -> None:
    name = encoder_name("resnet18")
    saved = smp.encoders.encoders[name]
    smp.encoders.encoders[name] = {
        "encoder": torch.nn.Identity,
        "pretrained_settings": {},
        "params": {},
    }
    try:
        with pytest.raises(ValueError, match="foreign"):
            register_encoders()
    finally:
        smp.encoders.encoders[name] = saved


def test_shallower_encoder_and_dilation() -> None:
    shallow = smp.Unet(
        "rs-resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(64, 32, 16),
        in_channels=3,
        classes=2,
    )
    with torch.no_grad():
        assert len(shallow.encoder(torch.randn(1, 3, 64, 64))) == 4
        assert shallow(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    dilated = smp.DeepLabV3("rs-resnet18", encoder_weights=None, in_channels=4, classes=1)
    with torch.no_grad():
        feats = dilated.encoder(torch.randn(1, 4, 64, 64))
    assert feats[-1].shape[-1] == 64 // 8  # DeepLabV3 dilates the last two stages
    with pytest.raises(ValueError, match="cannot be dilated"):
        smp.DeepLabV3("rs-vgg11", encoder_weights=None, in_channels=4, classes=1)
