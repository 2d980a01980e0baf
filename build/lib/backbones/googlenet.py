"""GoogLeNet / Inception v1 (Szegedy et al. 2015) with its two auxiliary classifiers.

torchvision's model (batch-normalised ``BasicConv2d`` everywhere, as its weights were trained) is
wrapped with ``aux_logits=True, transform_input=False, init_weights=True``. In training mode
``forward`` returns ``GoogLeNetOutputs(logits, aux1, aux2)`` (aux1 on inception 4a, aux2 on 4d);
the paper weights the auxiliary losses by 0.3 (``PretrainParams.aux_weight``). In eval mode only
the main logits come back. Inputs from 64 px work: the auxiliary heads pool adaptively to 4x4.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn
from torchvision.models.googlenet import GoogLeNet

from ._base import BackboneMixin, check_declaration, feature, replace_conv_in_channels
from ._registry import register_backbone


class GoogLeNetOutputs(NamedTuple):
    logits: Tensor
    aux1: Tensor
    aux2: Tensor


class GoogLeNetBackbone(BackboneMixin, GoogLeNet):
    head_names = ("aux1", "aux2", "avgpool", "dropout", "fc")
    first_conv = "conv1.conv"

    @staticmethod
    def init_conv(conv: nn.Conv2d) -> None:
        nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.01, a=-2, b=2)

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            aux_logits=True,
            transform_input=False,
            init_weights=True,
            dropout=dropout,
            dropout_aux=dropout_aux,
        )
        if in_channels != 3:
            replace_conv_in_channels(self.conv1.conv, in_channels, self.init_conv)
        self.trunk = [
            "conv1", "maxpool1", "conv2", "conv3", "maxpool2",
            "inception3a", "inception3b", "maxpool3",
            "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
            "inception5a", "inception5b",
        ]  # fmt: skip
        self.feature_info = [
            feature(64, 2, "conv1"),
            feature(192, 4, "conv3"),
            feature(480, 8, "inception3b"),
            feature(832, 16, "inception4e"),
            feature(1024, 32, "inception5b"),
        ]
        check_declaration(self.trunk, self.feature_info)

    def classify(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        logits, aux2, aux1 = self._forward(x)
        if self.training:
            return GoogLeNetOutputs(logits, aux1, aux2)
        return logits


@register_backbone("googlenet")
def googlenet(
    num_classes: int = 1000, in_channels: int = 3, features_only: bool = False, **kwargs: Any
) -> GoogLeNetBackbone:
    model = GoogLeNetBackbone(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if features_only:
        model.remove_head()
    return model
