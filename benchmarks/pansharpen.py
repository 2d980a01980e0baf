"""Peak memory and time of `pipeline pansharpen` against the image size.

Writes a synthetic uint16 PAN of side N (0.3 m, tiled GeoTIFF, written block by block) and an
8-band MUL of side N/4 (1.2 m) per run into a temporary folder, fuses bands 5,3,2 in a fresh
process and prints its peak resident memory and wall time. Flat memory across N is what "block
by block" means (GDAL's cache is capped while the COG is written).

    python benchmarks/pansharpen.py --sizes 2048 8192
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
from affine import Affine

BLOCK = 1024
CHILD = """
import json, resource, sys, time
from pipeline.pansharpen import pansharpen
t = time.perf_counter()
pansharpen(sys.argv[1], sys.argv[2], sys.argv[3], bands={"red": 5, "green": 3, "blue": 2})
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_tiled(path: Path, side: int, count: int, pixel: float) -> None:
    """A tiled uint16 GeoTIFF of ``side``² written one block at a time (smooth ramps + noise)."""
    profile = dict(
        driver="GTiff", width=side, height=side, count=count, dtype="uint16", tiled=True,
        blockxsize=256, blockysize=256, crs="EPSG:32651",
        transform=Affine(pixel, 0, 350000.0, 0, -pixel, 3450000.0),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, side, BLOCK):
            for c in range(0, side, BLOCK):
                h, w = min(BLOCK, side - r), min(BLOCK, side - c)
                block = rng.integers(100, 900, (count, h, w), dtype=np.uint16)
                dst.write(block, window=rasterio.windows.Window(c, r, w, h))


def run(side: int, folder: Path) -> dict:
    pan, mul, out = folder / f"pan{side}.tif", folder / f"mul{side}.tif", folder / f"ps{side}.tif"
    write_tiled(pan, side, 1, 0.3)
    write_tiled(mul, side // 4, 8, 1.2)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(pan), str(mul), str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"side": side, "megapixels": side * side / 1e6, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(side, Path(tmp)) for side in args.sizes]
    print("| PAN side | Mpx | wall s | peak RSS MiB |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['side']} | {r['megapixels']:.0f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(f"peak RSS ratio {rows[-1]['side']}² / {rows[0]['side']}²: {ratio:.2f}")


if __name__ == "__main__":
    main()
