"""What declaring a tile set's fill colour at predict buys: `pipeline predict --nodata`.

Public tile sets ship PNG tiles whose imagery stops inside the tile, the rest filled with one
colour (Massachusetts Roads: white, 20-47 % of an edge tile), and a PNG cannot declare nodata.
Each tile is predicted as it ships, without and with ``--nodata VALUE``; the script prints, per
tile and pooled, the IoU on the imagery (off the fill) of the probability cut at the model's
threshold against the tile's mask, and how much of the fill the COG leaves as valid
probabilities (predicted as imagery) and as road.

Usage (the recipe's model, the Massachusetts test tiles as they ship)::

    python benchmarks/fill_nodata.py --model models/unet --pixel-size 1 --fill 255 \\
        --images ../real_roads/massachusetts_roads/images \\
        --masks ../real_roads/massachusetts_roads/masks \\
        --tiles 10078720_15 10528795_15 24928900_15 25229185_15
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

PIPELINE = str(Path(sys.executable).with_name("pipeline"))


def predict(image: Path, out: Path, model: str, pixel_size: float, fill: float | None) -> None:
    cmd = [PIPELINE, "predict", str(image), "--model", model, "-o", str(out), "-q"]
    cmd += ["--pixel-size", str(pixel_size)] + (
        ["--nodata", f"{fill:g}"] if fill is not None else []
    )
    subprocess.run(cmd, check=True, capture_output=True)


def score(prob_path: Path, fill: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    with rasterio.open(prob_path) as ds:
        stored = ds.read(1)
        valid = stored != ds.nodata
    road = valid & (stored / 254 >= threshold)
    on = ~fill
    tp, fp, fn = (
        int(np.count_nonzero(m & on)) for m in (road & truth, road & ~truth, ~road & truth)
    )
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "fill_valid": float(np.count_nonzero(valid & fill) / max(1, fill.sum())),
        "fill_road": int(np.count_nonzero(road & fill)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--masks", type=Path, required=True)
    ap.add_argument("--tiles", nargs="+", required=True)
    ap.add_argument("--pixel-size", type=float, default=1.0)
    ap.add_argument("--fill", type=float, default=255)
    args = ap.parse_args()
    threshold = json.loads((Path(args.model) / "model.json").read_text())["threshold"]
    pooled = {"as shipped": [0, 0, 0], f"--nodata {args.fill:g}": [0, 0, 0]}
    with tempfile.TemporaryDirectory() as tmp:
        for stem in args.tiles:
            image = args.images / f"{stem}.png"
            pixels = np.asarray(Image.open(image))
            fill = (pixels == args.fill).all(axis=-1)
            mask = np.asarray(Image.open(args.masks / f"{stem}.png"))
            truth = (mask[..., 0] if mask.ndim == 3 else mask) > 127
            for name, declared in zip(pooled, (None, args.fill), strict=True):
                out = Path(tmp) / f"{stem}.{declared}.tif"
                predict(image, out, args.model, args.pixel_size, declared)
                s = score(out, fill, truth, threshold)
                pooled[name] = [
                    a + b for a, b in zip(pooled[name], (s["tp"], s["fp"], s["fn"]), strict=True)
                ]
                iou = s["tp"] / max(1, s["tp"] + s["fp"] + s["fn"])
                print(
                    f"{stem} ({fill.mean():.0%} fill) {name}: IoU on the imagery {iou:.4f}, "
                    f"fill valid {s['fill_valid']:.0%}, fill called road {s['fill_road']} px"
                )
    for name, (tp, fp, fn) in pooled.items():
        print(
            f"pooled, {name}: IoU on the imagery {tp / max(1, tp + fp + fn):.4f} (threshold {threshold:g})"
        )


if __name__ == "__main__":
    main()
