"""Imagery from other sources at predict: band plans, band ranges, and what resampling to the
model's pixel size costs and gives, on real rasters.

Three parts, printed as tables:

* ``plans``: for each real georeferenced raster (SpaceNet 3 Shanghai MUL 8-band 1.2 m and PAN
  0.3 m, RoadNet Ottawa RGB 0.3 m), its bands as GDAL names them, the plan an RGB and an RGBN
  model get (``raster.band_plan``; declared bands for SpaceNet MUL, whose colour
  interpretation is GDAL's default, not its band order), and each planned band's 2-98 %
  range (what ``normalisation: percentile`` stretches to 0..1);
* ``cost``: predict wall time on Ottawa-11 (1280 x 1024 at 0.3 m) with a random-weight RGB
  U-Net that says it was trained at 1.0 m, resampled (the default) against ``--no-resample``
  (speed does not depend on what the weights learned);
* ``--model DIR``: a trained RGBN model on the 10 SpaceNet MUL chips (bands 5,3,2,7 declared):
  IoU and F1 at the model's threshold against the 2 m-buffered centreline masks, as the
  raster is (1.2 m) and resampled to the model's pixel size (``gsd_tolerance`` 1.05).

Usage::

    python benchmarks/transfer.py --real /work/shared/real_roads
    python benchmarks/transfer.py --real /work/shared/real_roads --model models/release
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import raster  # noqa: E402
from pipeline.config import PredictOptions  # noqa: E402
from pipeline.model_config import read_config  # noqa: E402
from pipeline.predict import predict_raster  # noqa: E402

RGB, RGBN = ["red", "green", "blue"], ["red", "green", "blue", "nir"]
MUL_BANDS = {"red": 5, "green": 3, "blue": 2, "nir": 7}  # WorldView-3 order


def sources(real: Path) -> list[tuple[str, Path, dict | None]]:
    sn = real / "spacenet_shanghai_roads" / "AOI_4_Shanghai_Roads_Sample"
    return [
        ("spacenet MUL img1196", sn / "MUL" / "MUL_AOI_4_Shanghai_img1196.tif", MUL_BANDS),
        ("spacenet PAN img1196", sn / "PAN" / "PAN_AOI_4_Shanghai_img1196.tif", None),
        ("ottawa 11", real / "ottawa_roadnet" / "11" / "Ottawa-11.tif", None),
    ]


def plan_line(path: Path, wanted: list[str], declared: dict | None) -> str:
    try:
        plan = raster.band_plan(path, wanted, declared)
    except raster.RasterError as e:
        return "refused: " + str(e).split(": ", 1)[1][:70] + "..."
    ranges = raster.band_percentiles(path, plan)
    return f"bands {list(plan.bands)}, 2-98 %: " + ", ".join(
        f"{lo:.0f}-{hi:.0f}" for lo, hi in ranges
    )


def show_plans(real: Path) -> None:
    print("\n## Band plans and band ranges")
    for name, path, declared in sources(real):
        info = raster.raster_info(path)
        print(
            f"{name}: {info.count} x {info.dtype}, {info.metres_per_pixel:.2f} m, "
            f"names {raster.band_names(path)}"
        )
        for label, wanted in (("RGB", RGB), ("RGBN", RGBN)):
            print(f"   {label} model: {plan_line(path, wanted, None)}")
            if declared:
                sub = {k: v for k, v in declared.items() if k in wanted}
                print(f"   {label} model, declared {sub}: {plan_line(path, wanted, sub)}")


def random_model(folder: Path, bands: list[str], gsd: float) -> Path:
    import torch

    from pipeline.model import ModelConfig, build_unet, save_model

    torch.manual_seed(0)
    n = len(bands)
    cfg = ModelConfig(
        encoder="resnet18", bands=bands, mean=[100.0] * n, std=[50.0] * n, chip_size=256, gsd_m=gsd
    )
    return save_model(build_unet(cfg), cfg, folder)


def show_cost(real: Path, tmp: Path, workers: int) -> None:
    print("\n## Resampling cost (Ottawa-11, 1280 x 1024 at 0.3 m; random RGB model at 1.0 m)")
    image = real / "ottawa_roadnet" / "11" / "Ottawa-11.tif"
    model = random_model(tmp / "rgb", RGB, 1.0)
    for resample in (True, False):
        options = PredictOptions(
            model=model, workers=workers, device="cpu", progress=False, resample=resample,
            overwrite=True,
        )  # fmt: skip
        res = predict_raster(image, tmp / f"o_{resample}.tif", options)
        print(
            f"resample={resample!s:5}  {res.seconds:6.1f} s  windows {res.windows_run:3d}  "
            f"model {res.timings.get('model', 0):6.1f} s (worker)"
        )


def scores(prob: Path, truth: Path, threshold: float) -> tuple[int, int, int]:
    p = raster.read_band_array(prob)
    t = raster.read_band_array(truth) > 0
    valid = p != 255
    road = (p.astype(np.float32) / 254 >= threshold) & valid
    return int((road & t).sum()), int((road & ~t & valid).sum()), int((~road & t & valid).sum())


def show_model(real: Path, model: Path, tmp: Path, workers: int) -> None:
    config = read_config(model)
    print(
        f"\n## {model} ({', '.join(config.bands)}, {config.gsd_m} m, normalisation "
        f"{config.normalisation}) on the 10 SpaceNet MUL chips (1.2 m), bands 5,3,2,7"
    )
    sn = real / "spacenet_shanghai_roads"
    declared = {b: MUL_BANDS[b] for b in config.bands}
    for label, tolerance in (("as it is (1.2 m)", 10.0), ("resampled to the model", 1.05)):
        tp = fp = fn = 0
        t0 = time.perf_counter()
        for image in sorted((sn / "AOI_4_Shanghai_Roads_Sample" / "MUL").glob("*.tif")):
            chip = image.stem.removeprefix("MUL_")
            options = PredictOptions(
                model=model, workers=workers, device="cpu", progress=False, bands=declared,
                gsd_tolerance=tolerance, overwrite=True,
            )  # fmt: skip
            out = predict_raster(image, tmp / f"{chip}.tif", options)
            a, b, c = scores(out.output, sn / "derived" / f"MUL_roadmask_buf2m_{chip}.tif",
                             config.threshold)  # fmt: skip
            tp, fp, fn = tp + a, fp + b, fn + c
        iou = tp / max(tp + fp + fn, 1)
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        print(f"{label:24} IoU {iou:.3f}  F1 {f1:.3f}  ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, default=Path("/work/shared/real_roads"))
    ap.add_argument("--model", type=Path, help="a trained RGBN model folder (optional)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--skip-cost", action="store_true")
    args = ap.parse_args()
    show_plans(args.real)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_cost:
            show_cost(args.real, Path(tmp), args.workers)
        if args.model:
            show_model(args.real, args.model, Path(tmp), args.workers)
    print(json.dumps({"real": str(args.real), "model": str(args.model)}))


if __name__ == "__main__":
    main()
