"""AlexNet as published (Krizhevsky, Sutskever & Hinton 2012), two GPU streams included.

The paper splits the network over two GPUs that talk only at conv3 and the dense layers; here the
split is kept as ``groups=2`` in conv2, conv4 and conv5, while conv1, conv3 and the dense layers
are full. ReLU everywhere, local response normalisation after the first two convolutions,
overlapping 3x3 stride-2 max pools, dropout 0.5 on the outputs of fc6 and fc7. Paper
initialisation: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 elsewhere.

Layout at 224 px (padding 2 on conv1 makes the 224 px input of the paper's text give its 55x55
maps): 55 -> pool 27 -> 27 -> pool 13 -> 13 -> pool 6, i.e. 6x6x256 into fc6 and 60,965,224
parameters at 3 bands and 1000 classes. An adaptive average pool to 6x6 before the dense layers
(as torchvision does) lets 64 px inputs through (the last pool then yields 1x1).

AlexNet's first layer has stride 4, so it has no stride-2 feature: it declares features at
strides 4, 8, 16, 32 and is not offered as a U-Net encoder.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from ._base import BackboneMixin, check_declaration, feature
from ._registry import register_backbone

# Paper: b = a / (k + alpha * sum_{n neighbours} a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75.
# torch's LocalResponseNorm divides alpha by n, so the paper's layer is alpha = n * 1e-4 there.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def paper_lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=LRN_SIZE, alpha=LRN_SIZE * LRN_ALPHA, beta=LRN_BETA, k=LRN_K)


class AlexNet(BackboneMixin, nn.Module):
    head_names = ("avgpool", "classifier")
    first_conv = "features.conv1"

    @staticmethod
    def init_conv(conv: nn.Conv2d) -> None:
        nn.init.normal_(conv.weight, 0.0, 0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        pool = dict(kernel_size=3, stride=2)  # overlapping: z=3 > s=2
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=2),
                relu1=nn.ReLU(inplace=True),
                norm1=paper_lrn(),
                pool1=nn.MaxPool2d(**pool),
                conv2=nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2),
                relu2=nn.ReLU(inplace=True),
                norm2=paper_lrn(),
                pool2=nn.MaxPool2d(**pool),
                conv3=nn.Conv2d(256, 384, kernel_size=3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2),
                relu5=nn.ReLU(inplace=True),
                pool5=nn.MaxPool2d(**pool),
            )
        )
        self.features_only = features_only
        if not features_only:  # the dense head is 95% of the parameters: skip it when unused
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                OrderedDict(
                    fc6=nn.Linear(256 * 6 * 6, 4096),
                    relu6=nn.ReLU(inplace=True),
                    drop6=nn.Dropout(dropout),
                    fc7=nn.Linear(4096, 4096),
                    relu7=nn.ReLU(inplace=True),
                    drop7=nn.Dropout(dropout),
                    fc8=nn.Linear(4096, num_classes),
                )
            )
        self.trunk = [f"features.{name}" for name, _ in self.features.named_children()]
        self.feature_info = [
            feature(96, 4, "features.norm1"),
            feature(256, 8, "features.norm2"),
            feature(256, 16, "features.relu5"),
            feature(256, 32, "features.pool5"),
        ]
        check_declaration(self.trunk, self.feature_info)
        self._init_paper()

    def _init_paper(self) -> None:
        ones = {
            "features.conv2",
            "features.conv4",
            "features.conv5",
            "classifier.fc6",
            "classifier.fc7",
        }
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)

    def classify(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_backbone("alexnet")
def alexnet(
    num_classes: int = 1000, in_channels: int = 3, features_only: bool = False, **kwargs: Any
) -> AlexNet:
    return AlexNet(
        num_classes=num_classes, in_channels=in_channels, features_only=features_only, **kwargs
    )
