"""Peak memory of `pipeline tile` on a tile set against the number of tiles.

Writes N synthetic PNG tiles (RGB with a white fill block, 0/255 masks) per run into a
temporary folder, tiles them in a fresh process (one worker, so the figure is this process's
own) and prints the peak resident memory and the wall time. Flat memory across N is what
"thousands of tiles in bounded memory" means.

    python benchmarks/tileset_memory.py --tiles 25 200 --size 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import yaml


def write_png(path: Path, array: np.ndarray) -> None:
    array = array if array.ndim == 3 else array[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="PNG", width=array.shape[2], height=array.shape[1],
            count=array.shape[0], dtype="uint8",
        ) as dst:  # fmt: skip
            dst.write(array)


def make_tiles(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.integers(20, 200, (3, size, size), dtype=np.uint8)
        image[:, :, : size // 4] = 255
        mask = np.zeros((size, size), np.uint8)
        mask[size // 2 : size // 2 + 7] = 255
        write_png(root / "images" / f"{i:05d}.png", image)
        write_png(root / "masks" / f"{i:05d}.png", mask)


CHILD = """
import json, resource, sys, time
from pipeline.config import load_params
from pipeline.tiling import run_tile
p = load_params(sys.argv[1])
t = time.perf_counter()
stats = run_tile(p.data, p.tile, workers=1, progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "chips": sum(stats["counts"].values()),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(n: int, size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="roadseg-tileset-bench-") as tmp:
        root = Path(tmp) / "set"
        make_tiles(root, n, size)
        params = {
            "synth": {"scenes": []},
            "data": {
                "bands": ["red", "green", "blue"],
                "scenes": [
                    {
                        "name": "bench",
                        "root": str(root),
                        "images": "images/*.png",
                        "labels": "masks/{stem}.png",
                        "pixel_size_m": 1.0,
                        "fill": [255, 255, 255],
                    }
                ],
            },
            "tile": {"out_dir": str(Path(tmp) / "chips"), "chip_size": 128, "stride": 128},
            "pretrain": {"archs": []},
            "train": {"encoder_weights": "none"},
        }
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
        )
        return {"tiles": n, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=[25, 200])
    ap.add_argument("--size", type=int, default=256, help="tile side in pixels")
    args = ap.parse_args()
    for n in args.tiles:
        t = time.perf_counter()
        r = run(n, args.size)
        print(
            f"{r['tiles']:6d} tiles of {args.size} px: {r['chips']:6d} chips, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, tile {r['seconds']:.1f} s "
            f"(with writing the tiles {time.perf_counter() - t:.1f} s)"
        )


if __name__ == "__main__":
    main()
