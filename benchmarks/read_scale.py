"""Does a source lose its roads to the scale a model reads it at?

Predicts each raster with a model folder as it is and as if its pixels were ``k`` times
coarser (a copy with its transform scaled by ``k``, so predict resamples it ``k`` times
further), and scores every reading on the raster's own grid against its road centrelines
(SpaceNet GeoJSON, buffered ``--half-width`` metres each side in the local UTM zone): IoU and
pixel recall at the model's threshold, and the relaxed break-even (3 px), pooled.

Usage (the SpaceNet 3 chips pan-sharpened by the tile stage of a recipe with a SpaceNet tile
set; chips whose GeoJSON is empty are skipped)::

    python benchmarks/read_scale.py --model models/unet \\
        --images 'data/chips/tilesets/spacenet/*.vrt' \\
        --roads '<SpaceNet>/geojson/spacenetroads/spacenetroads_AOI_4_Shanghai_{stem}.geojson' \\
        --factors 1 1.5 2 3
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.features import rasterize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pooled_scores import PooledScores, predict_probability  # noqa: E402


def truth_mask(roads: Path, ds: rasterio.DatasetReader, half_width_m: float) -> np.ndarray:
    """The centrelines buffered in metres, burned on the raster's grid."""
    lines = gpd.read_file(roads)
    polygons = lines.to_crs(lines.estimate_utm_crs()).buffer(half_width_m).to_crs(ds.crs)
    shapes = [(g, 1) for g in polygons if not g.is_empty]
    return rasterize(shapes, out_shape=(ds.height, ds.width), transform=ds.transform) > 0


def coarser_copy(image: Path, factor: float, out: Path) -> Path:
    """``image`` with its transform scaled by ``factor`` (the pixels unchanged)."""
    with rasterio.open(image) as src:
        profile = dict(
            driver="GTiff", width=src.width, height=src.height, count=src.count,
            dtype=src.dtypes[0], crs=src.crs, transform=src.transform * Affine.scale(factor),
            nodata=src.nodata,
        )  # fmt: skip
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read())
            dst.descriptions, dst.colorinterp = src.descriptions, src.colorinterp
    return out


def score(model: Path, cases: list[tuple[Path, Path]], factor: float, folder: Path, half: float):
    """(IoU, pixel recall, relaxed break-even) of every image read ``factor`` times coarser."""
    scores = PooledScores(model)
    for image, roads in cases:
        copy = coarser_copy(image, factor, folder / f"{image.stem}.x{factor:g}.tif")
        out = folder / f"{image.stem}.x{factor:g}.prob.tif"
        prob, valid = predict_probability(copy, out, model)
        with rasterio.open(image) as ds:
            scores.add(prob, truth_mask(roads, ds, half), valid)
    return scores.iou, scores.recall, scores.break_even


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model folder")
    ap.add_argument("--images", required=True, help="a glob of georeferenced rasters")
    ap.add_argument("--roads", required=True, help="their centrelines, {stem} for the image's")
    ap.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--half-width", type=float, default=2.0, help="metres each side of a line")
    args = ap.parse_args()
    cases = []
    for image in sorted(Path(p) for p in glob.glob(args.images)):
        roads = Path(args.roads.format(stem=image.stem))
        if roads.stat().st_size:  # SpaceNet ships chips without roads as empty files
            cases.append((image, roads))
    with tempfile.TemporaryDirectory() as tmp:
        for factor in args.factors:
            iou, recall, be = score(args.model, cases, factor, Path(tmp), args.half_width)
            print(
                f"{len(cases)} rasters read {factor:g}x coarser: IoU {iou:.3f}, pixel recall "
                f"{recall:.3f}, relaxed break-even {be:.3f}"
            )


if __name__ == "__main__":
    main()
