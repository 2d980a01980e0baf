from __future__ import annotations

import pytest
import torch

import backbones
from backbones import _registry, build_backbone, list_backbones, register_backbone

EXPECTED = {
    "lenet5", "alexnet", "googlenet",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
}  # fmt: skip


def test_zoo_lists_every_family() -> None:
    assert set(list_backbones()) == EXPECTED
    assert list_backbones() == sorted(list_backbones())


def test_duplicate_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_backbone("resnet18")
        def other(num_classes: int = 1000, in_channels: int = 3) -> torch.nn.Module:
            raise AssertionError


def test_new_name_registers_once() -> None:
    @register_backbone("test-tiny")
    def tiny(num_classes: int = 1000, in_channels: int = 3) -> torch.nn.Module:
        return torch.nn.Conv2d(in_channels, num_classes, 1)

    try:
        assert "test-tiny" in list_backbones()
        conv = build_backbone("test-tiny", num_classes=2, in_channels=5)
        assert conv.weight.shape == (2, 5, 1, 1)
        with pytest.raises(ValueError):
            register_backbone("test-tiny")(tiny)
    finally:
        del _registry._BUILDERS["test-tiny"]


def test_unknown_name_and_bad_sizes() -> None:
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("resnet17")
    with pytest.raises(ValueError):
        build_backbone("resnet18", num_classes=0)
    with pytest.raises(ValueError):
        build_backbone("resnet18", in_channels=0)
    with pytest.raises(TypeError):
        build_backbone("resnet18", features_only=True, depth=3)


def test_public_api() -> None:
    assert callable(backbones.build_backbone) and callable(backbones.list_backbones)
