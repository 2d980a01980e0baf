"""Parameter counts of the published configurations (counted on the meta device: no memory)."""

from __future__ import annotations

import pytest
import torch

from backbones import build_backbone


def n_params(arch: str, trainable_only: bool = True, device: str = "meta", **kwargs: object) -> int:
    with torch.device(device):
        model = build_backbone(arch, **kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize(
    ("arch", "kwargs", "expected"),
    [
        ("lenet5", {"num_classes": 10, "in_channels": 1}, 60_000),
        ("alexnet", {}, 60_965_224),
        ("vgg11", {}, 132_863_336),
        ("vgg16", {}, 138_357_544),
        ("vgg19", {}, 143_667_240),
        ("vgg16_bn", {}, 138_365_992),
        ("googlenet", {}, 13_004_888),
        ("resnet18", {}, 11_689_512),
        ("resnet34", {}, 21_797_672),
        ("resnet50", {}, 25_557_032),
        ("resnet101", {}, 44_549_160),
        ("resnet152", {}, 60_192_808),
    ],
)
def test_published_parameter_count(arch: str, kwargs: dict, expected: int) -> None:
    assert n_params(arch, **kwargs) == expected


def test_meta_count_equals_real_count() -> None:
    assert n_params("resnet18", device="meta") == n_params("resnet18", device="cpu")


def test_lenet5_layer_by_layer() -> None:
    """The paper's per-layer figures: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164."""
    model = build_backbone("lenet5", num_classes=10, in_channels=1)
    per_layer = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in model.named_children()
        if name in {"c1", "s2", "c3", "s4", "c5", "f6", "output"}
    }
    assert per_layer == {
        "c1": 156,
        "s2": 12,
        "c3": 1516,
        "s4": 32,
        "c5": 48120,
        "f6": 10164,
        "output": 0,
    }


def test_lenet5_trainable_rbf_adds_the_centres() -> None:
    assert n_params("lenet5", num_classes=10, in_channels=1, trainable_rbf=True) == 60_000 + 10 * 84


def test_stem_follows_band_count() -> None:
    # conv1 of resnet18 is 64x3x7x7; 13 bands add 64*10*7*7 weights
    assert n_params("resnet18", in_channels=13) - n_params("resnet18") == 64 * 10 * 49
    assert n_params("alexnet", in_channels=4) - n_params("alexnet") == 96 * 121
