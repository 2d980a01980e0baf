"""Real tiles with road masks placed on the Earth and warped as exports come: what the
benchmarks of CRS handling share (``web_mercator.py``, ``degree_pixels.py``).

A Massachusetts Roads tile (``images/<stem>.png`` and ``masks/<stem>.png``, 1 m, no
georeferencing) is put on a 1 m UTM grid centred at a longitude and latitude, then warped to
another CRS at GDAL's default resolution, as a web map or an Earth Engine export would serve
it: bilinear imagery, nearest masks, the white fill outside the imagery carried as alpha.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import calculate_default_transform, reproject


def utm_tile(
    tiles: Path, stem: str, lon: float, lat: float
) -> tuple[np.ndarray, np.ndarray, str, Affine]:
    """(RGBA image, mask) of one tile on a 1 m UTM grid centred at (lon, lat), with the grid's
    CRS and transform; alpha 0 where the tile is pure white (its fill outside the imagery)."""
    from pyproj import Transformer

    rgb = np.asarray(Image.open(tiles / "images" / f"{stem}.png").convert("RGB"))
    mask = (np.asarray(Image.open(tiles / "masks" / f"{stem}.png").convert("L")) > 127).astype(
        np.uint8
    )
    alpha = np.where((rgb == 255).all(axis=2), 0, 255).astype(np.uint8)
    zone = 32600 + int((lon + 180) // 6) % 60 + 1
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{zone}", always_xy=True).transform(lon, lat)
    h, w = mask.shape
    grid = Affine(1.0, 0, x - w / 2, 0, -1.0, y + h / 2)
    return np.dstack([rgb, alpha]).transpose(2, 0, 1), mask, f"EPSG:{zone}", grid


def warp_tile(
    image: np.ndarray, mask: np.ndarray, crs: str, grid: Affine, dst_crs: str
) -> tuple[np.ndarray, np.ndarray, Affine]:
    """The RGBA tile and its mask warped to ``dst_crs`` at GDAL's default resolution (square
    pixels in ``dst_crs``'s units): (image, mask & alpha as bool, transform)."""
    h, w = mask.shape
    left, top = grid * (0, 0)
    right, bottom = grid * (w, h)
    dst_t, dw, dh = calculate_default_transform(crs, dst_crs, w, h, left, bottom, right, top)
    out = np.zeros((4, dh, dw), np.uint8)
    for b in range(4):
        reproject(
            image[b], out[b], src_transform=grid, src_crs=crs, dst_transform=dst_t,
            dst_crs=dst_crs, resampling=Resampling.nearest if b == 3 else Resampling.bilinear,
        )  # fmt: skip
    truth = np.zeros((dh, dw), np.uint8)
    reproject(
        mask, truth, src_transform=grid, src_crs=crs, dst_transform=dst_t, dst_crs=dst_crs,
        resampling=Resampling.nearest,
    )  # fmt: skip
    return out, truth.astype(bool) & (out[3] > 0), dst_t


def write_rgba(path: Path, data: np.ndarray, crs: str, transform: Affine) -> Path:
    """An RGBA GeoTIFF (band 4 marked alpha), tiled and deflated."""
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=4, dtype="uint8",
        crs=crs, transform=transform, photometric="RGB", tiled=True, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def placement_args(description: str, lat: float, lon: float) -> argparse.Namespace:
    """The command line of a benchmark that places tiles: --model, --tiles, --stems, and
    --lat / --lon (defaults ``lat``, ``lon``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", type=Path, required=True, help="a model folder")
    ap.add_argument("--tiles", type=Path, required=True, help="a folder with images/ and masks/")
    ap.add_argument("--stems", nargs="+", required=True, help="the tiles to use")
    ap.add_argument("--lat", type=float, default=lat, help="where to place them (degrees)")
    ap.add_argument("--lon", type=float, default=lon)
    return ap.parse_args()
