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

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.placed_tiles import placement_args, utm_tile, warp_tile, write_rgba  # noqa: E402
from benchmarks.pooled_scores import score_rasters  # noqa: E402

WEB = "EPSG:3857"


def to_web_mercator(
    image: np.ndarray, mask: np.ndarray, crs: str, grid: Affine, folder: Path, stem: str
) -> tuple[Path, np.ndarray, Path]:
    """The tile warped to EPSG:3857 (GeoTIFF with alpha), its warped mask, and a copy whose
    CRS says UTM metres for the same pixels (the reading before 2026-12-07)."""
    out, truth, dst_t = warp_tile(image, mask, crs, grid, WEB)
    merc = write_rgba(folder / f"{stem}.3857.tif", out, WEB, dst_t)
    as_metres = write_rgba(folder / f"{stem}.as_metres.tif", out, crs, dst_t)
    return merc, truth, as_metres


def main() -> None:
    args = placement_args(__doc__.split("\n\n")[0], lat=42.36, lon=-71.06)
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
            iou, be = score_rasters(args.model, cases, folder)
            print(f"  {label}: IoU {iou:.3f}, relaxed break-even {be:.3f}")


if __name__ == "__main__":
    main()
