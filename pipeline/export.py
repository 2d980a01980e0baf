"""A trained model to ONNX, with the metadata the QGIS Deepness plugin reads.

The graph takes a normalised batch ``(N, C, H, W)`` float32, exactly what predict feeds the
torch model (``(x - mean) / std`` per band), and returns the road probability
``(N, 1, H, W)`` (the sigmoid is part of the graph). Batch, height and width are dynamic;
height and width must be multiples of 32 (the U-Net's depth).

Deepness (``deepness/processing/models``) reads JSON values from the model's metadata:
``model_type`` "Segmentor", ``class_names`` ``{"0": "road"}`` (one output channel: a binary
mask), ``resolution`` in cm per pixel, ``tiles_size`` (and ``tile_size``, the key its code
reads), ``tiles_overlap`` in percent of the tile, ``seg_thresh``, and
``standardization_mean``/``standardization_std``. Deepness divides every input by 255 and
then standardises, so our per-band mean/std (in the raster's own units) are stored divided
by 255: ``(x / 255 - mean / 255) / (std / 255) == (x - mean) / std`` for any sample type.
Deepness has one dynamic size for both sides (it refuses non-square outputs), so height and
width share the symbolic dimension ``size``; onnxruntime still runs non-square windows.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.atomic import atomic_path, refuse_existing
from pipeline.model import load_model
from pipeline.model_config import ModelConfig, resolve_model
from pipeline.registry import DEFAULT_TRACKING_URI

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "road_probability"
DEEPNESS_INPUT_SCALE = 255.0  # Deepness divides every input sample by this before standardising


class ProbabilityModel(nn.Module):
    """The U-Net followed by the sigmoid: logits -> road probability."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


def deepness_metadata(
    config: ModelConfig, model_ref: str, tile_size: int, overlap_px: int
) -> dict[str, str]:
    """The model's metadata as Deepness reads it (each value JSON), plus what made it."""
    meta: dict[str, object] = {
        "model_type": "Segmentor",
        "class_names": {"0": "road"},
        "tiles_size": tile_size,
        "tile_size": tile_size,
        "tiles_overlap": round(100 * overlap_px / tile_size),
        "seg_thresh": config.threshold,
        "standardization_mean": [m / DEEPNESS_INPUT_SCALE for m in config.mean],
        "standardization_std": [s / DEEPNESS_INPUT_SCALE for s in config.std],
        # not read by Deepness, for people and other tools
        "bands": config.bands,
        "band_mean": config.mean,
        "band_std": config.std,
        "encoder": config.encoder,
        "source_model": model_ref,
        "input": "(N, C, H, W) float32 (x - band_mean) / band_std; H, W multiples of 32",
        "output": "(N, 1, H, W) road probability",
    }
    if config.gsd_m:
        meta["resolution"] = round(config.gsd_m * 100, 3)
    return {k: json.dumps(v) for k, v in meta.items()}


def export_graph(net: nn.Module, in_channels: int, target: str | Path | io.BytesIO) -> None:
    """Write the ONNX graph of ``net`` + sigmoid (opset ``OPSET``, dynamic batch and size)."""
    example = torch.zeros(1, in_channels, 64, 64)
    dims = {0: "batch", 2: "size", 3: "size"}
    # The TorchScript exporter (deprecated since torch 2.9, still in 2.14): its dynamic_axes
    # name the dimensions as Deepness needs, and it exports the U-Net in seconds.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            ProbabilityModel(net).eval(),
            (example,),
            target if isinstance(target, io.BytesIO) else str(target),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
            dynamo=False,
        )


def check_tile(tile_size: int, overlap_px: int) -> None:
    if tile_size < 32 or tile_size % 32:
        raise ValueError(f"tile size must be a positive multiple of 32, got {tile_size}")
    if not 0 <= overlap_px < tile_size:
        raise ValueError(f"overlap must be in [0, tile size), got {overlap_px}")


def export_onnx(
    model: str | Path,
    output: str | Path,
    *,
    tile_size: int = 512,
    overlap_px: int = 64,
    overwrite: bool = False,
    tracking_default: str = DEFAULT_TRACKING_URI,
) -> Path:
    """Export a model folder or registry model (``models:/NAME@ALIAS``) to ONNX at ``output``.

    ``tile_size``/``overlap_px`` become Deepness's tile size and overlap (predict's defaults:
    512 and 64). The file is checked with ``onnx.checker`` and written atomically.
    """
    import onnx

    output = Path(output)
    check_tile(tile_size, overlap_px)
    refuse_existing(output, overwrite)
    folder = resolve_model(model, tracking_default)
    net, config = load_model(folder, torch.device("cpu"))
    with atomic_path(output, overwrite) as tmp:
        export_graph(net, config.in_channels, tmp)
        proto = onnx.load(str(tmp))
        for key, value in deepness_metadata(config, str(model), tile_size, overlap_px).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = f"roadseg road U-Net ({config.encoder}), from {model}"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return output
