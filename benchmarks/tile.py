"""Tile-stage throughput and memory, and the training dataset's chips/s.

A 4096 x 4096 synthetic scene is generated once; the 16384 x 16384 scene is a VRT mosaic of
4 x 4 copies of it (with its roads translated to match), so both sizes go through the same
code path a user's raster does. Peak RSS is sampled over the whole process tree.

    python benchmarks/tile.py [--base 4096] [--mosaic 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import geopandas as gpd
import psutil
from shapely import affinity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import SynthParams  # noqa: E402
from pipeline.datasets import Normalisation, SegmentationChips, read_stats  # noqa: E402
from pipeline.raster import raster_info  # noqa: E402
from pipeline.synth import generate_scene  # noqa: E402


class PeakRSS:
    """Samples the RSS of this process and its children every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def mosaic_vrt(src: Path, roads: Path, n: int, out: Path) -> tuple[Path, Path]:
    """An n x n VRT mosaic of ``src`` and its roads translated into each copy's place."""
    info = raster_info(src)
    w, h = info.width, info.height
    dx, dy = info.transform.a * w, info.transform.e * h
    bands = []
    for b in range(1, info.count + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT='0'>{src}</SourceFilename><SourceBand>{b}</SourceBand>"
            f"<SrcRect xOff='0' yOff='0' xSize='{w}' ySize='{h}'/><DstRect xOff='{c * w}' yOff='{r * h}' xSize='{w}' ySize='{h}'/></SimpleSource>"
            for r in range(n)
            for c in range(n)
        )
        bands.append(
            f"<VRTRasterBand dataType='{info.dtype.capitalize() if info.dtype != 'uint8' else 'Byte'}' band='{b}'><NoDataValue>0</NoDataValue>{sources}</VRTRasterBand>"
        )
    t = info.transform
    vrt = (
        f"<VRTDataset rasterXSize='{w * n}' rasterYSize='{h * n}'><SRS>{info.crs.to_wkt()}</SRS>"
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    out.mkdir(parents=True, exist_ok=True)
    vrt_path = out / "mosaic.vrt"
    vrt_path.write_text(vrt)
    gdf = gpd.read_file(roads).to_crs(info.crs)
    parts = [
        gdf.assign(geometry=gdf.geometry.apply(affinity.translate, xoff=c * dx, yoff=r * dy))
        for r in range(n)
        for c in range(n)
    ]
    roads_out = out / "mosaic.roads.gpkg"
    gpd.GeoDataFrame(gpd.pd.concat(parts, ignore_index=True), crs=info.crs).to_file(
        roads_out, layer="roads"
    )
    return vrt_path, roads_out


def run_tile_subprocess(
    image: Path, roads: Path, out: Path, workers: int
) -> tuple[float, int, int]:
    """Tile one scene in a child process; returns (seconds, peak RSS bytes, chips)."""
    root = str(Path(__file__).resolve().parents[1])
    code = (
        f"import sys, json; sys.path.insert(0, {root!r})\n"
        "from pipeline.config import DataParams, TileParams\n"
        "from pipeline.tiling import run_tile\n"
        f"d = DataParams(scenes=[{{'name': 'scene', 'image': {str(image)!r}, 'roads': {str(roads)!r}}}])\n"
        f"t = TileParams(out_dir={str(out)!r}, chip_size=256, stride=256, split={{'block_size_m': 1024}})\n"
        f"s = run_tile(d, t, workers={workers}, progress=False)\n"
        "print(json.dumps(s['counts']))\n"
    )
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
    seconds = time.perf_counter() - t0
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    return seconds, rss.peak, sum(counts.values())


def dataset_rate(chips_dir: Path, n: int = 400) -> float:
    stats = read_stats(chips_dir)
    ds = SegmentationChips(
        chips_dir, "train", Normalisation.from_lists(stats["mean"], stats["std"]), augment=True
    )
    t0 = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", type=int, default=4096, help="side of the synthetic scene")
    ap.add_argument("--mosaic", type=int, default=4, help="copies per side of the large VRT scene")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth = SynthParams(
            out_dir=tmp / "scenes", scenes=[{"name": "base", "seed": 5}], size=args.base
        )
        t0 = time.perf_counter()
        files = generate_scene(synth.scenes[0], synth, 0)
        print(f"synth {args.base}x{args.base}: {time.perf_counter() - t0:.1f} s")
        rows = []
        big_image, big_roads = mosaic_vrt(files.image, files.roads, args.mosaic, tmp / "mosaic")
        for label, image, roads in [
            (f"{args.base}^2", files.image, files.roads),
            (f"{args.base * args.mosaic}^2 (VRT)", big_image, big_roads),
        ]:
            out = tmp / f"chips-{len(rows)}"
            seconds, peak, chips = run_tile_subprocess(image, roads, out, args.workers)
            mpix = raster_info(image).width * raster_info(image).height / 1e6
            rows.append((label, seconds, mpix / seconds, peak / 2**20, chips))
            if len(rows) == 1:
                rate = dataset_rate(out)
        print(f"{'scene':<22}{'seconds':>9}{'Mpix/s':>9}{'peak RSS MiB':>14}{'chips':>8}")
        for label, s, mps, mib, chips in rows:
            print(f"{label:<22}{s:>9.1f}{mps:>9.2f}{mib:>14.0f}{chips:>8}")
        print(f"peak RSS ratio large/small: {rows[1][3] / rows[0][3]:.2f}")
        print(f"dataset (augmented, 256 px chips): {rate:.0f} chips/s")


if __name__ == "__main__":
    main()
