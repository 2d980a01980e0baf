"""Strict loading of a backbone classifier's state dict into a U-Net encoder."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch

from backbones import build_backbone
from backbones.encoders import encoder_name, load_backbone_weights


def unet(arch: str, in_channels: int) -> smp.Unet:
    return smp.Unet(encoder_name(arch), encoder_weights=None, in_channels=in_channels, classes=1)


def classifier_state(arch: str, in_channels: int, num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return build_backbone(arch, num_classes=num_classes, in_channels=in_channels).state_dict()


@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "vgg11_bn"])
def test_full_classifier_state_loads(arch: str) -> None:
    state = classifier_state(arch, 4)
    model = unet(arch, 4)
    load_backbone_weights(model.encoder, state)
    loaded = model.encoder.state_dict()
    assert loaded.keys() < state.keys()  # the head is the only difference
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_missing_key_raises() -> None:
    state = classifier_state("resnet18", 4)
    del state["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"missing \['layer1.0.conv1.weight'\]"):
        load_backbone_weights(unet("resnet18", 4).encoder, state)


def test_unexpected_non_head_key_raises() -> None:
    state = classifier_state("resnet18", 4)
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        load_backbone_weights(unet("resnet18", 4).encoder, state)


def test_corrupted_shape_raises() -> None:
    state = classifier_state("resnet18", 4)
    state["layer2.0.bn1.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match="layer2.0.bn1.weight"):
        load_backbone_weights(unet("resnet18", 4).encoder, state)


def test_other_architecture_raises() -> None:
    with pytest.raises(ValueError, match="missing"):
        load_backbone_weights(unet("resnet34", 4).encoder, classifier_state("resnet18", 4))


def test_failed_load_leaves_encoder_untouched() -> None:
    model = unet("resnet18", 4)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    state = classifier_state("resnet18", 4)
    state["layer4.1.bn2.running_var"] = torch.ones(3)
    with pytest.raises(ValueError):
        load_backbone_weights(model.encoder, state)
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, before[key])


@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "vgg11"])
def test_three_band_weights_into_four_band_encoder(arch: str) -> None:
    state = classifier_state(arch, 3)
    model = unet(arch, 4)
    load_backbone_weights(model.encoder, state)
    key = f"{model.encoder.first_conv}.weight"
    rgb, stem = state[key], model.encoder.state_dict()[key]
    assert stem.shape[1] == 4
    for band in range(4):  # cycled R, G, B, R and scaled by 3/4
        torch.testing.assert_close(stem[:, band], rgb[:, band % 3] * 3 / 4)
    for k, v in model.encoder.state_dict().items():
        if k != key:
            torch.testing.assert_close(v, state[k])


def test_three_band_weights_into_one_band_encoder_sum() -> None:
    state = classifier_state("resnet18", 3)
    model = unet("resnet18", 1)
    load_backbone_weights(model.encoder, state)
    torch.testing.assert_close(
        model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True)
    )


def test_non_zoo_encoder_is_rejected() -> None:
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1)
    with pytest.raises(TypeError):
        load_backbone_weights(model.encoder, classifier_state("resnet18", 3))
