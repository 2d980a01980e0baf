"""What every backbone in the zoo shares: declared feature stages, a trunk, a removable head.

A backbone declares, where it builds its layers (timm's ``feature_info``), the feature maps it
offers: ``{"num_chs", "reduction", "module"}`` where ``module`` names the submodule whose output
is the feature. It also lists its ``trunk``: the ordered names of the submodules that, applied one
after the other, take the input to the last feature. Everything else follows from those two
declarations: :meth:`BackboneMixin.stages` cuts the trunk after each feature module, and
:func:`run_trunk` returns the features. The encoder adapter uses the same names on itself, so a
backbone and its encoder share parameter names and stage boundaries by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn


class FeatureInfo(TypedDict):
    num_chs: int
    reduction: int
    module: str


def feature(num_chs: int, reduction: int, module: str) -> FeatureInfo:
    return FeatureInfo(num_chs=num_chs, reduction=reduction, module=module)


def run_trunk(
    root: nn.Module, trunk: Sequence[str], feature_modules: Sequence[str], x: Tensor
) -> list[Tensor]:
    """Apply ``trunk`` modules of ``root`` in order; collect outputs of ``feature_modules``.

    Stops after the last requested feature, so a shallower encoder does not pay for deeper stages.
    Modules are looked up by name on every call: a module replaced after construction (a patched
    stem, a converted norm layer) is the one that runs.
    """
    wanted = set(feature_modules)
    features: list[Tensor] = []
    for name in trunk:
        if len(features) == len(feature_modules):
            break
        x = root.get_submodule(name)(x)
        if name in wanted:
            features.append(x)
    return features


def trunk_stages(
    root: nn.Module, trunk: Sequence[str], feature_modules: Sequence[str]
) -> list[nn.Sequential]:
    """The trunk cut after each feature module: stage ``i`` maps feature ``i-1`` to feature ``i``."""
    stages: list[nn.Sequential] = []
    current: list[nn.Module] = []
    wanted = list(feature_modules)
    for name in trunk:
        if len(stages) == len(wanted):
            break
        current.append(root.get_submodule(name))
        if name == wanted[len(stages)]:
            stages.append(nn.Sequential(*current))
            current = []
    return stages


def check_declaration(trunk: Sequence[str], info: Sequence[FeatureInfo]) -> None:
    """Feature modules must appear in the trunk, in order, with growing reductions."""
    positions = []
    for f in info:
        if f["module"] not in trunk:
            raise ValueError(f"feature module {f['module']!r} is not in the trunk {list(trunk)}")
        positions.append(list(trunk).index(f["module"]))
    if positions != sorted(positions) or len(set(positions)) != len(positions):
        raise ValueError("feature modules must follow the trunk order")
    reductions = [f["reduction"] for f in info]
    if reductions != sorted(reductions):
        raise ValueError(f"feature reductions must not decrease: {reductions}")


class BackboneMixin:
    """Mixed into every zoo model (first in the bases, so its ``forward`` wins).

    Class attributes: ``head_names`` are the child modules that only serve classification (their
    state-dict keys are the only ones an encoder may lack); ``first_conv`` is the dotted name of the
    stem convolution whose input channels follow the band count; ``supports_dilation`` says whether
    smp may trade the last strides for dilation (true where only convolutions downsample).
    Instances set ``feature_info`` and ``trunk`` while building their layers.
    """

    head_names: tuple[str, ...] = ()
    first_conv: str = ""
    # Training divides the logits by this before the cross-entropy (see LeNet-5); 1 elsewhere.
    loss_temperature: float = 1.0
    supports_dilation: bool = False
    features_only: bool = False
    feature_info: list[FeatureInfo]
    trunk: list[str]

    @staticmethod
    def init_conv(conv: nn.Conv2d) -> None:
        """Initialise a (replaced) stem convolution the way the family initialises its layers."""
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def feature_modules(self) -> list[str]:
        return [f["module"] for f in self.feature_info]

    def stages(self) -> list[nn.Sequential]:
        """One module per ``feature_info`` entry; chained they reproduce :meth:`forward_features`."""
        return trunk_stages(self, self.trunk, self.feature_modules())  # type: ignore[arg-type]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        return run_trunk(self, self.trunk, self.feature_modules(), x)  # type: ignore[arg-type]

    def forward(self, x: Tensor):
        # The return type differs by family: GoogLeNet returns a tuple while training.
        if self.features_only:
            return self.forward_features(x)
        return self.classify(x)

    def classify(self, x: Tensor):
        """The classifier's forward; by default the wrapped torchvision model's."""
        return super().forward(x)  # type: ignore[misc]

    def remove_head(self) -> None:
        """Drop the classification head; ``forward`` then returns the feature list."""
        for name in self.head_names:
            delattr(self, name)
        self.features_only = True


def replace_conv_in_channels(
    conv: nn.Conv2d,
    in_channels: int,
    init: Callable[[nn.Conv2d], None],
    weight: Tensor | None = None,
) -> None:
    """Give ``conv`` a new input-channel count, in place (references to it stay valid).

    With ``weight`` the new kernel is copied from it, otherwise ``init`` initialises it.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if in_channels % conv.groups:
        raise ValueError(f"in_channels {in_channels} is not divisible by groups {conv.groups}")
    shape = (conv.out_channels, in_channels // conv.groups, *conv.kernel_size)
    old = conv.weight
    conv.in_channels = in_channels
    conv.weight = nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device))
    if weight is None:
        init(conv)
    else:
        if tuple(weight.shape) != shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != {shape}")
        with torch.no_grad():
            conv.weight.copy_(weight)


def adapt_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt a stem kernel (out, old_in, k, k) to ``in_channels`` inputs as smp does.

    One input: the kernels summed over the old bands. Otherwise the old bands are cycled over the
    new ones (R, G, B, R, ...) and the result scaled by old/new, which keeps the activation scale
    roughly where the pretrained layers expect it.
    """
    old_in = weight.shape[1]
    if in_channels == old_in:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels, device=weight.device) % old_in
    return weight[:, idx] * (old_in / in_channels)
