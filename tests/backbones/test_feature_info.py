"""Declared ``feature_info`` against the features a real forward pass produces.

The reduction of a feature is measured, not assumed: growing the input by 32 px grows a map
at cumulative stride r by exactly 32/r pixels, also for valid convolutions (LeNet) and odd
layouts (AlexNet) whose map sizes are not input/r.
"""

from __future__ import annotations

import pytest
import torch

from backbones import build_backbone, list_backbones
from backbones.encoders import encoder_archs

IN_CHANNELS = [1, 3, 4, 13]
STEP = 32


def base_size(arch: str) -> int:
    return 32 if arch == "lenet5" else 64


@torch.no_grad()
def features(model: torch.nn.Module, in_channels: int, size: int) -> list[torch.Tensor]:
    return model.forward_features(torch.randn(1, in_channels, size, size))


@pytest.mark.parametrize("in_channels", IN_CHANNELS)
@pytest.mark.parametrize("arch", list_backbones())
def test_feature_info_matches_forward(arch: str, in_channels: int) -> None:
    model = build_backbone(arch, num_classes=5, in_channels=in_channels, features_only=True).eval()
    info = model.feature_info
    assert info and all(set(f) == {"num_chs", "reduction", "module"} for f in info)
    size = base_size(arch)
    small, large = features(model, in_channels, size), features(model, in_channels, size + STEP)
    assert len(small) == len(large) == len(info)
    for f, a, b in zip(info, small, large, strict=True):
        assert a.shape[1] == b.shape[1] == f["num_chs"], f
        assert b.shape[2] - a.shape[2] == STEP // f["reduction"], f
        assert b.shape[3] - a.shape[3] == STEP // f["reduction"], f
        if arch in encoder_archs():  # padded nets: maps are exactly input / reduction
            assert a.shape[2:] == (size // f["reduction"],) * 2, f


@pytest.mark.parametrize("arch", list_backbones())
def test_stages_chain_to_the_features(arch: str) -> None:
    model = build_backbone(arch, num_classes=5, in_channels=4, features_only=True).eval()
    x = torch.randn(2, 4, base_size(arch), base_size(arch))
    stages = model.stages()
    assert len(stages) == len(model.feature_info)
    with torch.no_grad():
        expected = model.forward_features(x)
        for stage, want in zip(stages, expected, strict=True):
            x = stage(x)
            torch.testing.assert_close(x, want)


# One per head implementation (the VGG and ResNet variants share theirs; VGG heads take ~1 s to build).
HEADS = ["lenet5", "alexnet", "googlenet", "vgg11", "vgg11_bn", "resnet18", "resnet50"]


@pytest.mark.parametrize("arch", HEADS)
def test_classifier_runs_on_small_inputs(arch: str) -> None:
    """Full models (head included) from 64 px (LeNet-5: 32 px), with the same declaration."""
    model = build_backbone(arch, num_classes=5, in_channels=4).eval()
    assert (
        model.feature_info
        == build_backbone(arch, num_classes=5, in_channels=4, features_only=True).feature_info
    )
    size = base_size(arch)
    with torch.no_grad():
        out = model(torch.randn(2, 4, size, size))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_features_only_drops_the_head() -> None:
    model = build_backbone("resnet18", features_only=True)
    assert not hasattr(model, "fc") and not hasattr(model, "avgpool")
    full_keys = set(build_backbone("resnet18").state_dict())
    assert set(model.state_dict()) == {
        k for k in full_keys if not k.startswith(("fc.", "avgpool."))
    }
