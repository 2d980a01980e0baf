"""The classifier zoo: LeNet-5, AlexNet, VGG, GoogLeNet, ResNet, built by name.

``build_backbone(name, num_classes, in_channels)`` returns a classifier whose ``feature_info``
declares its feature stages and whose ``stages()`` produce them; ``backbones.encoders`` turns the
ones with stride-2..32 stages into smp encoders named ``rs-<name>`` (imported separately because
it imports segmentation_models_pytorch).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import alexnet, googlenet, lenet, resnet, vgg  # noqa: F401  (register the builders)
from ._base import BackboneMixin, FeatureInfo
from ._registry import get_builder, register_backbone, registered_names

__all__ = ["BackboneMixin", "FeatureInfo", "build_backbone", "list_backbones", "register_backbone"]


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return registered_names()


def build_backbone(
    name: str, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any
) -> nn.Module:
    """Build backbone ``name`` with a ``num_classes`` head and an ``in_channels`` band stem.

    Extra keyword arguments go to the family builder; all accept ``features_only=True`` (no head,
    ``forward`` returns the feature list), e.g. ``dropout``, ``trainable_rbf`` (LeNet-5).
    No weights are ever downloaded.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return get_builder(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
