"""Benchmark ``pipeline network``: time and peak memory by raster size; APLS of a trained
model's network on a held-out scene, with and without repair; its share of predict's time.

Usage::

    # time and peak memory (each size in a fresh process; inputs are synthetic road
    # probability COGs written block by block)
    python benchmarks/network.py --sizes 4096,16384
    # a trained model on a held-out scene: APLS/TOPO of the repaired and the raw network,
    # and what building the network adds to predict's wall time
    python benchmarks/network.py --sizes '' --model models/release \\
        --scene data/scenes/heldout.tif --roads data/scenes/heldout.roads.gpkg
    # no model: the scene's roads as a perfect mask and as a degraded one (seeded)
    python benchmarks/network.py --sizes '' --simulate \\
        --scene data/scenes/heldout.tif --roads data/scenes/heldout.roads.gpkg

Peak memory is the child process's maximum resident set size (``ru_maxrss``): one block of
pixels, the skeleton pixels and the network. The synthetic roads: a curved grid every 160 px
(5 px wide, probability 0.6-0.95), 6 px gaps of probability 0.3 (trees) every ~400 px,
speckle and blobs of false alarms.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import raster
from pipeline.config import NetworkParams

SPACING = 160  # px between synthetic roads


def synthetic_probability(r0: int, c0: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Road probability of a block of the synthetic raster (a function of position only)."""
    rows = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
    cols = np.arange(c0, c0 + w, dtype=np.float32)[None, :]
    # curved roads: y = k * SPACING + 20 sin(x / 150 + k), and the same across
    wave_h = 20 * np.sin(cols / 150.0 + rows // SPACING)
    dist_h = np.abs((rows - wave_h + SPACING / 2) % SPACING - SPACING / 2)
    wave_v = 20 * np.sin(rows / 170.0 + cols // SPACING)
    dist_v = np.abs((cols - wave_v + SPACING / 2) % SPACING - SPACING / 2)
    dist = np.minimum(dist_h, dist_v)
    level = 0.6 + 0.35 * ((rows // SPACING * 7 + cols // SPACING * 3) % 5) / 4
    prob = np.where(dist <= 2.5, level, 0.02 + 0.1 * np.exp(-((dist - 2.5) ** 2) / 8))
    trees = ((rows % 397) < 6) | ((cols % 419) < 6)
    prob = np.where(trees & (dist <= 2.5), 0.3, prob)
    rng = np.random.default_rng([seed, r0, c0])
    speckle = rng.random((h, w), dtype=np.float32) < 2e-4
    prob = np.where(speckle, 0.8, prob)
    return np.clip(prob, 0, 1).astype(np.float32)


def make_input(path: Path, size: int, block: int = 1024) -> Path:
    """A size x size uint8 probability COG as predict writes it, block by block."""
    from affine import Affine

    with raster.stream_cog(
        path,
        width=size,
        height=size,
        crs="EPSG:32632",
        transform=Affine(1.0, 0, 500000.0, 0, -1.0, 5400000.0),
        dtype="uint8",
        nodata=255,
        scale=1 / 254,
        tags={"threshold": 0.5},
        overwrite=True,
    ) as writer:
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                h, w = min(block, size - r0), min(block, size - c0)
                prob = synthetic_probability(r0, c0, h, w)
                writer.write(np.rint(prob * 254).astype(np.uint8), r0, c0)
    return path


def child(prob: Path, out: Path) -> None:
    """Build the network of ``prob`` in this process; print wall, timings and peak RSS."""
    from pipeline.network import build_network, warm_up
    from pipeline.network_io import write_network

    t0 = time.perf_counter()
    warm_up()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    network = build_network(prob, NetworkParams())
    write_network(network, out, NetworkParams().simplify_m, overwrite=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss * 1024
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,  # the compile included
                "skan_compile_s": compile_s,
                "timings": network.timings,
                "edges": network.graph.number_of_edges(),
                "nodes": network.graph.number_of_nodes(),
                "peak_rss_bytes": peak,
            }
        )
    )


def size_rows(sizes: list[int], folder: Path) -> None:
    print(
        f"{'size':>7} {'build s':>8} {'Mpix/s':>7} {'CPU s':>7} {'edges':>7} {'peak RSS':>9}  phases"
    )
    for size in sizes:
        prob = make_input(folder / f"prob_{size}.tif", size)
        cmd = [sys.executable, __file__, "--child", str(prob), str(folder / f"net_{size}.gpkg")]
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in out["timings"].items())
        print(
            f"{size:>7} {out['wall_s']:>8.1f} {size * size / 1e6 / out['wall_s']:>7.2f} "
            f"{out.get('cpu_s', float('nan')):>7.1f} "
            f"{out['edges']:>7} {out['peak_rss_bytes'] / 2**30:>7.2f} GiB  {phases} "
            f"(skan compile {out['skan_compile_s']:.1f} s, once per process)"
        )
        prob.unlink()


def _cpu() -> float:
    """CPU seconds of this process and of its children that have ended (Dask's workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def mosaic_vrt(scene: Path, n: int, path: Path) -> Path:
    """A VRT of the scene repeated n x n times (same CRS and pixel size, its origin): a large
    raster with the scene's road density, for timing predict and the network at that size."""
    from xml.sax.saxutils import escape

    import rasterio

    with rasterio.open(scene) as src:
        w, h, t = src.width, src.height, src.transform
        bands = [
            (b, src.dtypes[b - 1], src.colorinterp[b - 1].name.capitalize())
            for b in range(1, src.count + 1)
        ]
        nodata, wkt = src.nodata, src.crs.to_wkt()
    gdal_types = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32", "int16": "Int16"}
    xml = [f'<VRTDataset rasterXSize="{w * n}" rasterYSize="{h * n}">']
    xml.append(f"  <SRS>{escape(wkt)}</SRS>")
    xml.append(f"  <GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>")
    for b, dtype, interp in bands:
        xml.append(f'  <VRTRasterBand dataType="{gdal_types[dtype]}" band="{b}">')
        xml.append(f"    <ColorInterp>{interp}</ColorInterp>")
        if nodata is not None:
            xml.append(f"    <NoDataValue>{nodata}</NoDataValue>")
        for i in range(n):
            for j in range(n):
                xml += [
                    "    <SimpleSource>",
                    f'      <SourceFilename relativeToVRT="0">{scene.resolve()}</SourceFilename>',
                    f"      <SourceBand>{b}</SourceBand>",
                    f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                    f'      <DstRect xOff="{j * w}" yOff="{i * h}" xSize="{w}" ySize="{h}"/>',
                    "    </SimpleSource>",
                ]
        xml.append("  </VRTRasterBand>")
    xml.append("</VRTDataset>")
    path.write_text("\n".join(xml) + "\n")
    return path


def model_rows(model: Path, scene: Path, roads: Path | None, folder: Path) -> None:
    """Predict the scene with --network; score the repaired and the raw network (when the
    scene's roads are given)."""
    from pipeline.config import PredictOptions, SceneSource
    from pipeline.network import network_raster
    from pipeline.network_eval import score_scene_network
    from pipeline.predict import predict_raster

    before = _cpu()
    result = predict_raster(
        scene,
        folder / "prob.tif",
        PredictOptions(model=model, network_params=NetworkParams(), overwrite=True, progress=False),
        network=folder / "net.gpkg",
    )
    predict_cpu = _cpu() - before
    net_s = result.timings["network"]
    # the network again, in this (warm) process: its CPU time alone
    t0, c0 = time.perf_counter(), time.process_time()
    network_raster(folder / "prob.tif", folder / "net2.gpkg", NetworkParams(), overwrite=True)
    net_wall, net_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"predict with --network: {result.seconds:.1f} s wall, of which the network {net_s:.2f} s "
        f"= {100 * net_s / (result.seconds - net_s):.1f} % of predict alone "
        f"({result.seconds - net_s:.1f} s). CPU: predict and network {predict_cpu:.1f} s "
        f"(client and workers), the network alone {net_cpu:.2f} s ({net_wall:.2f} s wall) = "
        f"{100 * net_cpu / (predict_cpu - net_cpu):.1f} % of predict's CPU"
    )
    print("predict phases:", {k: round(v, 2) for k, v in result.timings.items()})
    if roads is None:
        return
    tags = raster.raster_tags(folder / "prob.tif")
    threshold = float(tags["threshold"])
    source = SceneSource(name=scene.stem, image=scene, roads=roads, split="test")
    scores = score_scene_network(source, folder / "prob.tif", NetworkParams(), threshold)
    print(json.dumps(scores, indent=2))
    print(
        f"APLS repaired {scores['apls']:.3f}, raw skeleton {scores['apls_raw']:.3f} "
        f"(repair adds {scores['apls'] - scores['apls_raw']:+.3f}); TOPO F1 {scores['topo_f1']:.3f}"
    )


def simulated_rows(scene: Path, roads: Path, folder: Path, seed: int = 0) -> None:
    """Without a model: the scene's road vectors burned at their widths (a perfect mask),
    and a degraded copy (blurred, 40 occlusions of 5 m radius at probability 0.25, noise,
    blobs of false alarms); each scored repaired and raw against the same vectors."""
    import geopandas as gpd
    from scipy import ndimage as ndi

    from pipeline.config import SceneSource
    from pipeline.network_eval import score_scene_network

    info = raster.raster_info(scene)
    lines = gpd.read_file(roads).to_crs(info.crs.to_wkt())
    widths = lines["width_m"] if "width_m" in lines else [4.0] * len(lines)
    polygons = [g.buffer(w / 2) for g, w in zip(lines.geometry, widths, strict=True)]
    road = raster.burn_geometries(polygons, info.transform, (info.height, info.width)) > 0
    valid = raster.read_valid_mask(scene)
    rng = np.random.default_rng(seed)
    degraded = ndi.gaussian_filter(np.where(road, 0.85, 0.03), 1.5)
    yy, xx = np.mgrid[0 : info.height, 0 : info.width]
    rows, cols = np.nonzero(road)
    for i in rng.choice(len(rows), 40, replace=False):
        disc = (yy - rows[i]) ** 2 + (xx - cols[i]) ** 2 <= 25
        degraded[disc] = np.minimum(degraded[disc], 0.25)
    degraded += rng.normal(0, 0.08, degraded.shape)
    blobs = ndi.gaussian_filter(rng.random(degraded.shape), 4) > 0.535
    degraded = np.where(blobs, np.maximum(degraded, 0.7), degraded)
    source = SceneSource(name=scene.stem, image=scene, roads=roads, split="test")
    for name, prob in (("perfect mask", np.where(road, 0.9, 0.02)), ("degraded", degraded)):
        prob = np.clip(prob, 0, 1).astype(np.float32)
        prob[~valid] = np.nan
        path = raster.write_geotiff(
            folder / "sim.tif", prob, crs=info.crs, transform=info.transform, nodata=float("nan")
        )
        s = score_scene_network(source, path, NetworkParams(), 0.5)
        print(
            f"{name}: APLS repaired {s['apls']:.3f} (gt->prop {s['apls_gt_onto_prop']:.3f}, "
            f"prop->gt {s['apls_prop_onto_gt']:.3f}), raw skeleton {s['apls_raw']:.3f}; "
            f"TOPO F1 {s['topo_f1']:.3f} (precision {s['topo_precision']:.3f}, "
            f"recall {s['topo_recall']:.3f})"
        )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4096,16384", help="raster sides, comma-separated")
    ap.add_argument("--model", type=Path, help="a trained model folder")
    ap.add_argument("--scene", type=Path, help="a held-out scene (image)")
    ap.add_argument("--roads", type=Path, help="its road vectors")
    ap.add_argument(
        "--simulate",
        action="store_true",
        help="without a model: score the scene's roads as a perfect and a degraded mask",
    )
    ap.add_argument(
        "--mosaic",
        type=int,
        default=1,
        help="with --model: predict the scene repeated N x N times (a VRT), e.g. 16 for a "
        "16384^2 raster from a 1024^2 scene; APLS is then not scored",
    )
    ap.add_argument("--workdir", type=Path, help="where the inputs go (default: a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="roadseg-network-bench-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [int(s) for s in args.sizes.split(",") if s]
        if sizes:
            size_rows(sizes, folder)
        if args.model:
            scene, roads = args.scene, args.roads
            if args.mosaic > 1:
                scene, roads = mosaic_vrt(args.scene, args.mosaic, folder / "mosaic.vrt"), None
            model_rows(args.model, scene, roads, folder)
        if args.simulate:
            simulated_rows(args.scene, args.roads, folder)


if __name__ == "__main__":
    main()
