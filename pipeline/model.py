"""Build the road U-Net from a :class:`ModelConfig`, save it and load it without unpickling.

A trained model is a folder: ``model.safetensors`` (the smp.Unet state dict) and
``model.json`` (the config, ``pipeline.model_config``). The config carries everything predict
needs: encoder, bands, normalisation, chip size and decision threshold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.model_config import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    ModelError,
    check_weights,
    config_json,
    file_sha256,
    read_config,
)


class TransposedUpBlock(nn.Module):
    """A U-Net decoder block whose 2x upsampling is a learned transposed convolution (the seed's
    U-Net) instead of smp's interpolation; smp's block then resizes by identity."""

    def __init__(self, block: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.block = block

    def forward(
        self, x: torch.Tensor, height: int, width: int, skip_connection: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.block(self.up(x), height, width, skip_connection=skip_connection)


def build_unet(config: ModelConfig) -> nn.Module:
    """An ``smp.Unet`` with the zoo encoder ``rs-<encoder>``, no hub weights, one output logit."""
    import segmentation_models_pytorch as smp

    from backbones.encoders import encoder_name

    model = smp.Unet(
        encoder_name=encoder_name(config.encoder),
        encoder_weights=None,
        in_channels=config.in_channels,
        classes=1,
        decoder_channels=tuple(config.decoder_channels),
        decoder_attention_type=None
        if config.decoder_attention == "none"
        else config.decoder_attention,
    )
    if config.decoder_upsampling == "transposed":
        _use_transposed_upsampling(model, config.decoder_channels)
    if config.dropout > 0:
        head = model.segmentation_head
        model.segmentation_head = nn.Sequential(nn.Dropout2d(config.dropout), *head)
    return model


def _use_transposed_upsampling(model: nn.Module, decoder_channels: list[int]) -> None:
    encoder_channels = list(model.encoder.out_channels)[1:][::-1]
    in_channels = [encoder_channels[0], *decoder_channels[:-1]]
    model.decoder.blocks = nn.ModuleList(
        TransposedUpBlock(block, ch)
        for block, ch in zip(model.decoder.blocks, in_channels, strict=True)
    )


def save_model(model: nn.Module, config: ModelConfig, folder: Path) -> Path:
    """Write weights and config into ``folder`` atomically (temp files, then rename); the
    config records the weights' SHA-256, which ``load_model`` checks."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
        digest = file_sha256(tmp)
    config = config.model_copy(update={"weights_sha256": digest})
    write_text_atomic(folder / CONFIG_FILE, config_json(config))
    return folder


def load_model(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Load a model folder strictly; returns (model in eval mode on ``device``, config).

    Raises ModelError naming the file when the weights fail their checksum, are not
    safetensors, or do not fit the network model.json describes (another band count, encoder).
    """
    folder = Path(folder)
    config = read_config(folder)
    check_weights(folder, config)
    model = build_unet(config)
    state = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ModelError(
            f"{folder / WEIGHTS_FILE}: weights do not fit the network {CONFIG_FILE} describes "
            f"(encoder {config.encoder}, {config.in_channels} bands): {first}; the two files "
            "come from different models"
        ) from None
    return model.to(device).eval(), config


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 convolutions in hardware (AMX tiles or AVX-512 BF16).

    Elsewhere oneDNN emulates bf16 and autocast is slower than float32, so ``auto`` keeps fp32.
    """
    # private torch probes (stable since 2.1); a torch without them is treated as no native bf16
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(
    device: torch.device, precision: str = "auto", *, training: bool
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto | fp32 | bf16) on ``device``; None = float32.

    auto on CUDA: bf16 where the GPU supports it; otherwise fp16 for inference and float32 for
    training (fp16 training would need loss scaling). auto on CPU: bf16 for training where the
    CPU has native bf16 (2.7x the fp32 training throughput of the demo U-Net on this project's
    AMX machine; BENCHMARKS.md), float32 for inference: bf16 rounding makes a CPU's output
    depend on its thread count (up to 4/254 between 1 and 2 threads, measured), and predict
    promises pixels that do not depend on the worker layout; ``bf16`` asks for the 3.7x faster
    CPU inference anyway. Weights, optimiser state and losses stay float32 in every case.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None if training else torch.float16
    if precision == "bf16" or (training and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        from pipeline.parallel import DeviceError

        raise DeviceError("--device cuda asked for, but torch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
