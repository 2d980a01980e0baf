"""VGG-11/13/16/19 (configs A, B, D, E of Simonyan & Zisserman 2015), with and without BN.

torchvision's ``VGG`` is the paper's network; we keep its class and parameter names and build the
``features`` sequence ourselves (same layout as torchvision's ``make_layers``) so that the input
band count and ``feature_info`` are set where the layers are made.

Features: the last activation of conv blocks 2-5 (strides 2, 4, 8, 16; taken before their
max-pool, as timm and smp do) and the fifth pool (stride 32). Block 1 runs at stride 1; the
encoder's stride-1 skip is the input itself, as for every zoo encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.vgg import VGG, cfgs

from ._base import BackboneMixin, FeatureInfo, check_declaration, feature
from ._registry import register_backbone

# arch -> (torchvision config letter, batch norm)
_CONFIGS: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg13": ("B", False),
    "vgg16": ("D", False),
    "vgg19": ("E", False),
    "vgg11_bn": ("A", True),
    "vgg13_bn": ("B", True),
    "vgg16_bn": ("D", True),
    "vgg19_bn": ("E", True),
}


def _make_layers(
    cfg: list[str | int], batch_norm: bool, in_channels: int
) -> tuple[nn.Sequential, list[FeatureInfo]]:
    layers: list[nn.Module] = []
    info: list[FeatureInfo] = []
    reduction = 1
    channels = in_channels
    for v in cfg:
        if v == "M":
            if reduction > 1:  # the block before this pool runs at stride `reduction`
                info.append(feature(channels, reduction, f"features.{len(layers) - 1}"))
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            reduction *= 2
        else:
            out = int(v)
            layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
    info.append(feature(channels, reduction, f"features.{len(layers) - 1}"))
    return nn.Sequential(*layers), info


class VGGBackbone(BackboneMixin, VGG):
    head_names = ("avgpool", "classifier")
    first_conv = "features.0"

    def __init__(
        self,
        features: nn.Sequential,
        feature_info: list[FeatureInfo],
        num_classes: int = 1000,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(features, num_classes=num_classes, init_weights=True, dropout=dropout)
        self.trunk = [f"features.{i}" for i in range(len(features))]
        self.feature_info = feature_info
        check_declaration(self.trunk, self.feature_info)


def _vgg(
    arch: str,
    num_classes: int,
    in_channels: int,
    features_only: bool = False,
    dropout: float = 0.5,
    **kwargs: Any,
) -> VGGBackbone:
    if kwargs:
        raise TypeError(f"{arch}: unexpected arguments {sorted(kwargs)}")
    letter, batch_norm = _CONFIGS[arch]
    features, info = _make_layers(cfgs[letter], batch_norm, in_channels)
    if not features_only:
        return VGGBackbone(features, info, num_classes=num_classes, dropout=dropout)
    # The dense head holds ~120M of VGG's parameters and most of its build time. Build it on the
    # meta device (no memory, no init) and drop it; `features` already lives on the CPU and is
    # initialised by VGG's own loop as usual.
    with torch.device("meta"):
        model = VGGBackbone(features, info, num_classes=num_classes, dropout=dropout)
    model.remove_head()
    return model


@register_backbone("vgg11")
def vgg11(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg11", num_classes, in_channels, **kwargs)


@register_backbone("vgg13")
def vgg13(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg13", num_classes, in_channels, **kwargs)


@register_backbone("vgg16")
def vgg16(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg16", num_classes, in_channels, **kwargs)


@register_backbone("vgg19")
def vgg19(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg19", num_classes, in_channels, **kwargs)


@register_backbone("vgg11_bn")
def vgg11_bn(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg11_bn", num_classes, in_channels, **kwargs)


@register_backbone("vgg13_bn")
def vgg13_bn(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg13_bn", num_classes, in_channels, **kwargs)


@register_backbone("vgg16_bn")
def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg16_bn", num_classes, in_channels, **kwargs)


@register_backbone("vgg19_bn")
def vgg19_bn(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> VGGBackbone:
    return _vgg("vgg19_bn", num_classes, in_channels, **kwargs)
