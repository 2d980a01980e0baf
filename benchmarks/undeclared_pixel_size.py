"""What declaring the pixel size of un-georeferenced tiles buys at predict.

Public tile sets ship as JPEG/PNG without georeferencing (DeepGlobe: 0.5 m). `pipeline predict`
reads such a tile at the model's own pixel size unless ``--pixel-size`` says otherwise. This
predicts every ``*_sat.jpg`` of a DeepGlobe-style folder both ways with a model folder and
scores each against its ``*_mask.png`` (white = road): IoU at the model's threshold and the
relaxed break-even (3 px), pooled over the tiles.

Usage::

    python benchmarks/undeclared_pixel_size.py --model models/unet \\
        --tiles ../shared/real_roads/deepglobe_roads/train --pixel-size 0.5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pooled_scores import PooledScores, predict_probability  # noqa: E402


def score(model: Path, tiles: list[Path], extra: list[str], folder: Path) -> tuple[float, float]:
    """(IoU at the model's threshold, relaxed break-even) of the tiles predicted with ``extra``."""
    scores = PooledScores(model)
    for tile in tiles:
        prob, valid = predict_probability(tile, folder / f"{tile.stem}.tif", model, extra)
        mask = Path(str(tile).replace("_sat.jpg", "_mask.png"))
        scores.add(prob, np.asarray(Image.open(mask).convert("L")) > 127, valid)
    return scores.iou, scores.break_even


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="a model folder")
    ap.add_argument("--tiles", type=Path, required=True, help="a folder of *_sat.jpg / *_mask.png")
    ap.add_argument("--pixel-size", type=float, default=0.5, help="the tiles' pixel size, metres")
    args = ap.parse_args()
    tiles = sorted(args.tiles.glob("*_sat.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (
            (f"--pixel-size {args.pixel_size:g}", ["--pixel-size", f"{args.pixel_size:g}"]),
            ("undeclared (read at the model's pixel size)", []),
        ):
            iou, be = score(args.model, tiles, extra, Path(tmp))
            print(f"{len(tiles)} tiles, {label}: IoU {iou:.3f}, relaxed break-even {be:.3f}")


if __name__ == "__main__":
    main()
