"""The zoo as segmentation_models_pytorch encoders: one adapter, names ``rs-<arch>``.

Importing this module registers ``rs-<arch>`` in ``smp.encoders.encoders`` for every backbone
whose declared features sit at strides 2, 4, 8, 16, 32 (VGG, ResNet, GoogLeNet; not AlexNet,
whose first layer has stride 4, nor LeNet-5). Then::

    import backbones.encoders
    model = smp.Unet("rs-resnet18", encoder_weights=None, in_channels=4, classes=1)
    load_backbone_weights(model.encoder, safetensors.torch.load_file("resnet18.safetensors"))

Why the prefix: smp silently overwrites an encoder registered under an existing name
(``resnet34``, ``vgg16``) and its Unet adds a centre block to encoders whose name starts with
``vgg``. smp only fetches named weights from a hub, so encoders are built with
``encoder_weights=None`` and our weights are loaded by :func:`load_backbone_weights`.

The adapter adopts the backbone's modules under their own names, so the encoder's state dict
is the backbone's minus the classifier head, and runs the backbone's trunk by name: features are
``[input, stage 1 .. stage depth]``, i.e. strides 1, 2, 4, ..., 2**depth.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import Tensor, nn

from . import build_backbone, list_backbones
from ._base import adapt_conv_weight, replace_conv_in_channels, run_trunk, trunk_stages

ENCODER_PREFIX = "rs-"
ENCODER_REDUCTIONS = [2, 4, 8, 16, 32]


def encoder_name(arch: str) -> str:
    """smp encoder name of zoo backbone ``arch``."""
    return ENCODER_PREFIX + arch


class RsEncoder(nn.Module, EncoderMixin):
    """smp encoder over a zoo backbone's trunk (``params: {"arch": ...}`` in smp's registry)."""

    _is_torch_scriptable = False  # modules are looked up by name at run time
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(self, arch: str, depth: int = 5, output_stride: int = 32) -> None:
        nn.Module.__init__(self)
        EncoderMixin.__init__(self)
        if not 1 <= depth <= 5:
            raise ValueError(f"{encoder_name(arch)}: depth must be in 1..5, got {depth}")
        backbone = build_backbone(arch, in_channels=3, features_only=True)
        reductions = [f["reduction"] for f in backbone.feature_info]
        if reductions != ENCODER_REDUCTIONS:
            raise ValueError(
                f"{arch}: features at strides {reductions}, an encoder needs {ENCODER_REDUCTIONS}"
            )
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self.arch = arch
        self.trunk = list(backbone.trunk)
        self.feature_info = [dict(f) for f in backbone.feature_info]
        self.head_names = tuple(backbone.head_names)
        self.first_conv = backbone.first_conv
        self._init_stem = backbone.init_conv
        self._supports_dilation = backbone.supports_dilation
        self._depth = depth
        self._in_channels = 3
        self._out_channels = [3, *(f["num_chs"] for f in backbone.feature_info)]
        self._output_stride = output_stride

    def _feature_modules(self) -> list[str]:
        return [f["module"] for f in self.feature_info[: self._depth]]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x, *run_trunk(self, self.trunk, self._feature_modules(), x)]

    def get_stages(self) -> dict[int, list[nn.Module]]:
        stages = trunk_stages(self, self.trunk, [f["module"] for f in self.feature_info])
        return {16: [stages[3]], 32: [stages[4]]}

    def make_dilated(self, output_stride: int) -> None:
        if not self._supports_dilation:
            raise ValueError(
                f"{encoder_name(self.arch)} downsamples with pooling and cannot be dilated"
            )
        super().make_dilated(output_stride)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """Re-make the stem for ``in_channels`` bands (smp calls this after construction).

        ``pretrained``: adapt the current kernels as smp does; otherwise initialise afresh.
        """
        if in_channels == self._in_channels:
            return
        conv = self.get_submodule(self.first_conv)
        weight = adapt_conv_weight(conv.weight.detach(), in_channels) if pretrained else None
        replace_conv_in_channels(conv, in_channels, self._init_stem, weight=weight)
        self._in_channels = in_channels
        self._out_channels = [in_channels, *self._out_channels[1:]]


@functools.cache
def _declared_reductions(arch: str) -> tuple[int, ...]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        backbone = build_backbone(arch, in_channels=3, features_only=True)
    return tuple(f["reduction"] for f in backbone.feature_info)


def encoder_archs() -> list[str]:
    """Backbones usable as U-Net encoders: those declaring features at strides 2, 4, ..., 32."""
    return [a for a in list_backbones() if list(_declared_reductions(a)) == ENCODER_REDUCTIONS]


def register_encoders() -> None:
    """Add ``rs-<arch>`` for every encoder arch to smp's registry; safe to call again."""
    for arch in encoder_archs():
        name = encoder_name(arch)
        entry = smp.encoders.encoders.get(name)
        if entry is not None and entry.get("encoder") is not RsEncoder:
            raise ValueError(f"smp already has a foreign encoder named {name!r}")
        smp.encoders.encoders[name] = {
            "encoder": RsEncoder,
            "pretrained_settings": {},
            "params": {"arch": arch},
        }


def _is_head_key(key: str, head_names: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in head_names)


def load_backbone_weights(encoder: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a pretrained classifier's full state dict into an ``rs-`` encoder, strictly.

    Every encoder key must be present; the only extra keys allowed are the classifier head's.
    When the stem's band count differs, the kernels are adapted as smp does for pretrained
    weights (cycled over the new bands, scaled by old/new; summed for one band). Any other shape
    mismatch raises ``ValueError``.
    """
    head_names = getattr(encoder, "head_names", None)
    first_conv = getattr(encoder, "first_conv", None)
    if head_names is None or first_conv is None:
        raise TypeError(f"{type(encoder).__name__} is not a zoo encoder (no head_names/first_conv)")
    expected = encoder.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(
        k for k in state_dict if k not in expected and not _is_head_key(k, head_names)
    )
    if missing or unexpected:
        raise ValueError(
            f"backbone weights do not fit the encoder: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    stem_key = f"{first_conv}.weight"
    loaded: dict[str, Any] = {}
    for key, target in expected.items():
        value = state_dict[key]
        if key == stem_key and value.dim() == 4 and value.shape[1] != target.shape[1]:
            value = adapt_conv_weight(value, target.shape[1])
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"{key}: weights have shape {tuple(value.shape)}, encoder {tuple(target.shape)}"
            )
        loaded[key] = value
    with torch.no_grad():
        encoder.load_state_dict(loaded, strict=True)


register_encoders()
