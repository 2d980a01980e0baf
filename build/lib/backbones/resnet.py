"""ResNet-18/34/50/101/152 (He et al. 2016): torchvision's model is the paper's, wrapped.

The wrapper adds the zoo contract (``feature_info``, trunk, removable head) and a stem for any
band count; parameter names stay torchvision's, so its state dicts load unchanged.
"""

from __future__ import annotations

from typing import Any

from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._base import BackboneMixin, check_declaration, feature, replace_conv_in_channels
from ._registry import register_backbone

_CONFIGS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}


class ResNetBackbone(BackboneMixin, ResNet):
    head_names = ("avgpool", "fc")
    first_conv = "conv1"
    # Only strided convolutions downsample layer3/layer4, so smp's dilation patch is exact.
    supports_dilation = True

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        if in_channels != 3:
            replace_conv_in_channels(self.conv1, in_channels, self.init_conv)
        e = block.expansion
        self.trunk = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        self.feature_info = [
            feature(64, 2, "relu"),
            feature(64 * e, 4, "layer1"),
            feature(128 * e, 8, "layer2"),
            feature(256 * e, 16, "layer3"),
            feature(512 * e, 32, "layer4"),
        ]
        check_declaration(self.trunk, self.feature_info)


def _resnet(
    arch: str, num_classes: int, in_channels: int, features_only: bool = False, **kwargs: Any
) -> ResNetBackbone:
    if kwargs:
        raise TypeError(f"{arch}: unexpected arguments {sorted(kwargs)}")
    block, layers = _CONFIGS[arch]
    model = ResNetBackbone(block, layers, num_classes=num_classes, in_channels=in_channels)
    if features_only:
        model.remove_head()
    return model


@register_backbone("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNetBackbone:
    return _resnet("resnet18", num_classes, in_channels, **kwargs)


@register_backbone("resnet34")
def resnet34(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNetBackbone:
    return _resnet("resnet34", num_classes, in_channels, **kwargs)


@register_backbone("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNetBackbone:
    return _resnet("resnet50", num_classes, in_channels, **kwargs)


@register_backbone("resnet101")
def resnet101(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNetBackbone:
    return _resnet("resnet101", num_classes, in_channels, **kwargs)


@register_backbone("resnet152")
def resnet152(num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNetBackbone:
    return _resnet("resnet152", num_classes, in_channels, **kwargs)
