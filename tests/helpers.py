"""Helpers that several test modules share: a small random-weight model folder and tiny real
GeoTIFFs (pytest fixtures are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from pipeline.model import ModelConfig, build_unet, save_model

BANDS = ["red", "green", "blue", "nir"]
MEAN = [90.0, 100.0, 110.0, 120.0]
STD = [40.0, 45.0, 50.0, 55.0]
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5400000.0)
CRS = "EPSG:32632"


def make_model(
    folder: Path, mean: list[float] = MEAN, std: list[float] = STD, seed: int = 0, **config
) -> Path:
    """A small random-weight U-Net model folder (resnet18 encoder, 4 bands unless ``config``
    names others); ``config``: more ModelConfig fields (``normalisation="percentile"``, ...)."""
    torch.manual_seed(seed)
    config = {"bands": BANDS, **config}
    cfg = ModelConfig(encoder="resnet18", mean=mean, std=std, chip_size=64, **config)
    return save_model(build_unet(cfg), cfg, folder)


def smooth_image(height: int, width: int, bands: int = 4) -> np.ndarray:
    """A smooth, road-free test scene in 1..255 (so seams can only come from the windows)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = [110 + 70 * np.sin(xx / 17 + b) * np.cos(yy / 23 - b) + 0.1 * xx for b in range(bands)]
    return np.clip(np.stack(img), 1, 255)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    nodata: float | None = None,
    crs: str | None = CRS,
    transform: Affine = TRANSFORM,
    mask: np.ndarray | None = None,
    **extra,
) -> Path:
    """Write ``data`` (C, H, W) with rasterio directly, not through pipeline.raster, so tests
    of the pipeline's readers do not read what its own writer made."""
    count, height, width = data.shape
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        photometric="MINISBLACK",
        **extra,
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.descriptions = tuple(BANDS[:count]) if count <= 4 else tuple(None for _ in range(count))
        if mask is not None:
            ds.write_mask(mask.astype(np.uint8) * 255)
    return path


def read(path: Path) -> tuple[np.ndarray, dict]:
    """Band 1 of a predict output and what a user checks of it: profile, scales, tags,
    descriptions, overviews."""
    with rasterio.open(path) as ds:
        return ds.read(1), dict(
            ds.profile,
            scales=ds.scales,
            descriptions=ds.descriptions,
            tags=ds.tags(),
            overviews=ds.overviews(1),
        )
