"""How a model trained on one source of real imagery holds on others: IoU and relaxed
break-even of ``pipeline predict``'s output (resampled to the model's pixel size, the
default, and optionally as the raster is) against each source's road labels.

Sources (from the development set, ``--real``; each is skipped when its folder is missing):

* ``massachusetts``: the Massachusetts Roads tiles named by ``--mass-tiles`` (default the
  recipe's 4 test tiles), 1 m, white fill as nodata: the model's own source, for reference;
* ``deepglobe``: the 5 DeepGlobe tiles (0.5 m satellite RGB, JPEG, masks 255 = road);
* ``ottawa``: RoadNet Ottawa-11 (0.21 m Google Earth RGB in EPSG:4326; road surface red on
  white);
* ``spacenet-mul``: the 10 SpaceNet 3 Shanghai MUL chips, bands 5,3,2 as red, green, blue
  (WorldView-3, 11-bit in uint16, 1.2 m), against the 2 m-buffered centreline masks;
* ``spacenet-pansharp``: the same chips pan-sharpened to 0.3 m (``pipeline pansharpen``,
  GDAL's weighted Brovey: the MUL bands upsampled onto the PAN grid, each scaled by PAN / their
  mean), against the PAN masks.

Tiles without georeferencing are prepared as ``pipeline tile`` prepares a tile set (a VRT on a
local grid at the declared pixel size, a 0/1/255 label GeoTIFF). Scores pool every tile of a
source; the relaxed slack is 3 m (Mnih's 3 px at 1 m) in the source's own pixels. IoU is
given at the model's threshold and at the best threshold on the source itself (an oracle:
how much a threshold tuned there would add).

Usage::

    python benchmarks/real_transfer.py --model /tmp/mass/models/unet [--model other] \
        [--sources deepglobe,ottawa] [--no-resample-too]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import raster  # noqa: E402
from pipeline.config import LabelConvention, PredictOptions, TileSetSource  # noqa: E402
from pipeline.metrics import ThresholdSweep, relaxed_break_even  # noqa: E402
from pipeline.model_config import read_config  # noqa: E402
from pipeline.predict import predict_raster  # noqa: E402
from pipeline.tilesets import prepare_tile  # noqa: E402

MASS_TEST = ["10078720_15", "10528795_15", "24928900_15", "25229185_15"]
MUL_RGB = {"red": 5, "green": 3, "blue": 2}  # WorldView-3 band order
SLACK_M = 3.0


@dataclass(frozen=True)
class Pair:
    """One image and its 0/1 label raster (255 = nodata) on the same grid."""

    name: str
    image: Path
    labels: Path
    bands: dict[str, int] | None = None


def _prepared(ts: TileSetSource, stem: str, image: Path, label: Path, out: Path) -> Pair:
    out.mkdir(parents=True, exist_ok=True)
    prepare_tile(ts, stem, image, label, out)
    return Pair(f"{ts.name}_{stem}", out / f"{stem}.vrt", out / f"{stem}.labels.tif")


def massachusetts(real: Path, tmp: Path, stems: list[str]) -> list[Pair]:
    root = real / "massachusetts_roads"
    ts = TileSetSource(
        name="mass", root=root, images="images/*.png", labels="masks/{stem}.png",
        pixel_size_m=1.0, label=LabelConvention(road=[255], background=[0]), fill=[255, 255, 255],
    )  # fmt: skip
    return [
        _prepared(ts, s, root / "images" / f"{s}.png", root / "masks" / f"{s}.png", tmp / "mass")
        for s in stems
    ]


def deepglobe(real: Path, tmp: Path) -> list[Pair]:
    root = real / "deepglobe_roads" / "train"
    ts = TileSetSource(
        name="deepglobe", root=root, images="*_sat.jpg", labels="{stem}_mask.png", pixel_size_m=0.5,
        label=LabelConvention(road=[255, 255, 255], background=[0, 0, 0], edge_threshold=0.5),
    )  # fmt: skip
    return [
        _prepared(ts, p.name.removesuffix("_sat.jpg"), p, Path(str(p).replace("_sat.jpg", "_mask.png")), tmp / "dg")
        for p in sorted(root.glob("*_sat.jpg"))
    ]  # fmt: skip


def ottawa(real: Path, tmp: Path) -> list[Pair]:
    root = real / "ottawa_roadnet" / "11"
    ts = TileSetSource(
        name="ottawa", root=root, images="Ottawa-*.tif", labels="{stem}.png",  # labels named below
        label=LabelConvention(road=[255, 0, 0], background=[255, 255, 255], edge_threshold=0.5),
    )  # fmt: skip
    return [_prepared(ts, "11", root / "Ottawa-11.tif", root / "segmentation.png", tmp / "ottawa")]


def _chips(real: Path) -> list[str]:
    mul = real / "spacenet_shanghai_roads" / "AOI_4_Shanghai_Roads_Sample" / "MUL"
    return sorted(p.stem.removeprefix("MUL_") for p in mul.glob("MUL_*.tif"))


def spacenet_mul(real: Path, tmp: Path) -> list[Pair]:
    sn = real / "spacenet_shanghai_roads"
    return [
        Pair(
            f"mul_{c}",
            sn / "AOI_4_Shanghai_Roads_Sample" / "MUL" / f"MUL_{c}.tif",
            sn / "derived" / f"MUL_roadmask_buf2m_{c}.tif",
            MUL_RGB,
        )  # fmt: skip
        for c in _chips(real)
    ]


def pansharpen(mul: Path, pan: Path, out: Path) -> Path:
    """MUL bands 5,3,2 sharpened onto the PAN grid (``pipeline pansharpen``: GDAL's weighted
    Brovey; uint16, 0 = nodata)."""
    from pipeline.pansharpen import pansharpen as gdal_pansharpen

    return gdal_pansharpen(pan, mul, out, bands=MUL_RGB, nodata=0, overwrite=True)


def spacenet_pansharp(real: Path, tmp: Path) -> list[Pair]:
    sn = real / "spacenet_shanghai_roads"
    base = sn / "AOI_4_Shanghai_Roads_Sample"
    (tmp / "ps").mkdir(parents=True, exist_ok=True)
    return [
        Pair(
            f"ps_{c}",
            pansharpen(
                base / "MUL" / f"MUL_{c}.tif",
                base / "PAN" / f"PAN_{c}.tif",
                tmp / "ps" / f"{c}.tif",
            ),
            sn / "derived" / f"PAN_roadmask_buf2m_{c}.tif",
        )  # fmt: skip
        for c in _chips(real)
    ]


SOURCES = {
    "massachusetts": None,  # needs the tile list: built in main
    "deepglobe": deepglobe,
    "ottawa": ottawa,
    "spacenet-mul": spacenet_mul,
    "spacenet-pansharp": spacenet_pansharp,
}


def score(pairs: list[Pair], model: Path, tmp: Path, resample: bool, workers: int) -> dict:
    """Predict every pair, pool the threshold sweep, return the figures of one source."""
    config = read_config(model)
    sweep: ThresholdSweep | None = None
    t0 = time.perf_counter()
    for pair in pairs:
        options = PredictOptions(
            model=model, workers=workers, progress=False, bands=pair.bands, resample=resample,
            overwrite=True,
        )  # fmt: skip
        out = predict_raster(pair.image, tmp / f"{pair.name}.prob.tif", options).output
        prob = raster.read_band_array(out)
        truth = raster.read_band_array(pair.labels)
        valid = (prob != 255) & (truth != 255)
        mpp = raster.raster_info(pair.image).metres_per_pixel or config.gsd_m or 1.0
        if sweep is None:
            sweep = ThresholdSweep(rho=max(1, round(SLACK_M / mpp)))
        sweep.update(prob.astype(np.float32) / 254, (truth == 1).astype(np.uint8), valid)
    curve = sweep.compute()
    at = (
        curve.index_of(config.threshold)
        if config.threshold is not None
        else int(np.argmax(curve.f1))
    )
    be, _ = relaxed_break_even(curve)
    return dict(
        iou=float(curve.iou[at]), f1=float(curve.f1[at]), precision=float(curve.precision[at]),
        recall=float(curve.recall[at]), iou_best=float(curve.iou.max()),
        best_threshold=float(curve.thresholds[int(np.argmax(curve.iou))]), break_even=be,
        road_fraction=float((curve.tp[0] + curve.fn[0]) / max(sweep.n_valid, 1)),
        seconds=time.perf_counter() - t0, rho=sweep.rho,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=Path("/work/shared/real_roads"))
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--mass-tiles", default=",".join(MASS_TEST))
    ap.add_argument("--no-resample-too", action="store_true", help="also score --no-resample")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    print(
        "| model | source | resampled | IoU @ model threshold | F1 | P / R | IoU at best threshold (t) | break-even (slack 3 m) | road % | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name in args.sources.split(","):
            if name == "massachusetts":
                pairs = massachusetts(args.real, tmp, args.mass_tiles.split(","))
            else:
                pairs = SOURCES[name](args.real, tmp)
            for model in args.model:
                cfg = read_config(model)
                for resample in (True, False) if args.no_resample_too else (True,):
                    r = score(pairs, model, tmp, resample, args.workers)
                    print(
                        f"| {model} ({cfg.normalisation}, t {cfg.threshold}) | {name} ({len(pairs)}) | {resample} "
                        f"| {r['iou']:.3f} | {r['f1']:.3f} | {r['precision']:.2f} / {r['recall']:.2f} "
                        f"| {r['iou_best']:.3f} ({r['best_threshold']:.2f}) | {r['break_even']:.3f} "
                        f"| {100 * r['road_fraction']:.1f} | {r['seconds']:.0f} |",
                        flush=True,
                    )  # fmt: skip


if __name__ == "__main__":
    main()
