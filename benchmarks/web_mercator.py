"""What reading a web-map export at its ground pixel size buys at predict.

Imagery downloaded from a tile server, or saved from QGIS's XYZ layers, comes in the web's
EPSG:3857, whose "metres" are 1/cos(latitude) of a metre on the ground (1.35 at Boston). Until
2026-12-07 `pipeline predict` took them for metres, so a 1 m export at 42 N was resampled as
if it were 1.35 m. This places real tiles with road masks (Massachusetts Roads: ``images/`` and
``masks/``, 1 m) at a latitude, warps them to EPSG:3857 as a web map would serve them (GDAL's
default resolution for the warp, bilinear imagery, nearest masks, the white fill outside the
imagery carried as alpha), and predicts each with a model folder twice:

- as it is: the pixel size measured on the ground (the current code);
- with the Mercator units read as metres (the same pixels and transform in a UTM CRS): what
  the code did before.

Each is scored against the warped mask: IoU at the model's threshold and the relaxed
break-even (3 px), pooled over the tiles.

Usage::

    python benchmarks/web_mercator.py --model models/unet \\
        --tiles ../shared/real_roads/massachusetts_roads \\
        --stems 10078720_15 10528795_15 24928900_15 25229185_15 --lat 42.36
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import calculate_default_transform, reproject

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pooled_scores import PooledScores, predict_probability  # noqa: E402

WEB = "EPSG:3857"


def utm_tile(
    tiles: Path, stem: str, lon: float, lat: float
) -> tuple[np.ndarray, np.ndarray, str, Affine]:
    """(RGBA image, mask) of one tile on a 1 m UTM grid centred at (lon, lat); alpha 0 where
    the tile is pure white (its fill outside the imagery)."""
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


def to_web_mercator(
    image: np.ndarray, mask: np.ndarray, crs: str, grid: Affine, folder: Path, stem: str
) -> tuple[Path, np.ndarray, Path]:
    """The tile warped to EPSG:3857 (GeoTIFF with alpha), its warped mask, and a copy whose
    CRS says UTM metres for the same pixels (the reading before 2026-12-07)."""
    h, w = mask.shape
    left, top = grid * (0, 0)
    right, bottom = grid * (w, h)
    dst_t, dw, dh = calculate_default_transform(crs, WEB, w, h, left, bottom, right, top)
    out = np.zeros((4, dh, dw), np.uint8)
    for b in range(4):
        reproject(
            image[b], out[b], src_transform=grid, src_crs=crs, dst_transform=dst_t, dst_crs=WEB,
            resampling=Resampling.nearest if b == 3 else Resampling.bilinear,
        )  # fmt: skip
    truth = np.zeros((dh, dw), np.uint8)
    reproject(
        mask, truth, src_transform=grid, src_crs=crs, dst_transform=dst_t, dst_crs=WEB,
        resampling=Resampling.nearest,
    )  # fmt: skip
    merc = _write(folder / f"{stem}.3857.tif", out, WEB, dst_t)
    as_metres = _write(folder / f"{stem}.as_metres.tif", out, crs, dst_t)
    return merc, truth.astype(bool) & (out[3] > 0), as_metres


def _write(path: Path, data: np.ndarray, crs: str, transform: Affine) -> Path:
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=4, dtype="uint8",
        crs=crs, transform=transform, photometric="RGB", tiled=True, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def score(model: Path, cases: list[tuple[Path, np.ndarray]], folder: Path) -> tuple[float, float]:
    """(IoU at the model's threshold, relaxed break-even) of the rasters, pooled."""
    scores = PooledScores(model)
    for raster_path, truth in cases:
        out = folder / f"{raster_path.stem}.prob.tif"
        prob, valid = predict_probability(raster_path, out, model)
        scores.add(prob, truth, valid)
    return scores.iou, scores.break_even


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model folder")
    ap.add_argument("--tiles", type=Path, required=True, help="a folder with images/ and masks/")
    ap.add_argument("--stems", nargs="+", required=True, help="the tiles to use")
    ap.add_argument("--lat", type=float, default=42.36, help="where to place them (degrees)")
    ap.add_argument("--lon", type=float, default=-71.06)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ground, as_metres = [], []
        for stem in args.stems:
            merc, truth, wrong = to_web_mercator(
                *utm_tile(args.tiles, stem, args.lon, args.lat), folder, stem
            )
            ground.append((merc, truth))
            as_metres.append((wrong, truth))
        with rasterio.open(ground[0][0]) as ds:
            units = ds.res[0]
        print(
            f"{len(args.stems)} tiles at {args.lat:g} N in EPSG:3857: {units:.3f} units a pixel, "
            f"{units * math.cos(math.radians(args.lat)):.3f} m on the ground"
        )
        for label, cases in (
            ("read at its ground pixel size", ground),
            ("Mercator units read as metres (before 2026-12-07)", as_metres),
        ):
            iou, be = score(args.model, cases, folder)
            print(f"  {label}: IoU {iou:.3f}, relaxed break-even {be:.3f}")


if __name__ == "__main__":
    main()
