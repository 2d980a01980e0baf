"""What resampling each axis buys for rasters with square-degree pixels (EPSG:4326).

Earth Engine exports, many data portals and QGIS's "save as" in EPSG:4326 give pixels that
are square in degrees, which on the ground are 1/cos(latitude) as tall as wide: 1.35x at
Boston, 2x at 60 N. Read as square, roads running east-west look narrower than roads running
north-south. This places real tiles with road masks (Massachusetts Roads: ``images/`` and
``masks/``, 1 m) at a latitude, warps them to EPSG:4326 at GDAL's default resolution
(``placed_tiles.py``) and predicts each with a model folder:

- as it is: ``pipeline predict``'s default (since 2026-12-07 each axis resampled to the
  model's pixel size when the pixels are far from square);
- with ``--no-resample``: the pixels read as square at their mean size, as predict read
  them before (their mean size is within the tolerance of a 1 m model's);
- the same tile on its 1 m UTM grid, what ``gdalwarp -t_srs EPSG:<utm>`` first would give:
  the reference.

Each is scored against its own grid's mask: IoU at the model's threshold and the relaxed
break-even (3 px), pooled over the tiles.

Usage::

    python benchmarks/degree_pixels.py --model models/unet \\
        --tiles ../shared/real_roads/massachusetts_roads \\
        --stems 10078720_15 10528795_15 24928900_15 25229185_15 --lat 60
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.placed_tiles import placement_args, utm_tile, warp_tile, write_rgba  # noqa: E402
from benchmarks.pooled_scores import score_rasters  # noqa: E402
from pipeline import ground  # noqa: E402

DEGREES = "EPSG:4326"


def place(args: argparse.Namespace, folder: Path) -> tuple[list, list]:
    """([(EPSG:4326 raster, its mask)], [(UTM raster, its mask)]) of the tiles."""
    degrees, utm = [], []
    for stem in args.stems:
        image, mask, crs, grid = utm_tile(args.tiles, stem, args.lon, args.lat)
        out, truth, transform = warp_tile(image, mask, crs, grid, DEGREES)
        degrees.append((write_rgba(folder / f"{stem}.4326.tif", out, DEGREES, transform), truth))
        valid_truth = mask.astype(bool) & (image[3] > 0)
        utm.append((write_rgba(folder / f"{stem}.utm.tif", image, crs, grid), valid_truth))
    return degrees, utm


def main() -> None:
    args = placement_args(__doc__.split("\n\n")[0], lat=60.0, lon=24.94)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        degrees, utm = place(args, folder)
        with rasterio.open(degrees[0][0]) as ds:
            down, across = ground.pixel_metres(ds.crs, ds.transform, ds.width, ds.height)
        print(
            f"{len(args.stems)} tiles at {args.lat:g} N in {DEGREES}: pixels {across:.3f} m wide, "
            f"{down:.3f} m tall on the ground"
        )
        for label, cases, extra in (
            ("as it is (predict's default)", degrees, []),
            ("read as square (--no-resample)", degrees, ["--no-resample"]),
            ("the tiles on their UTM grid (reference)", utm, []),
        ):
            iou, be = score_rasters(args.model, cases, folder, extra)
            print(f"  {label}: IoU {iou:.3f}, relaxed break-even {be:.3f}")


if __name__ == "__main__":
    main()
