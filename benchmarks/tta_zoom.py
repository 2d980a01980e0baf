"""What zooming in at test time buys on real tiles: multi-scale test-time augmentation.

Competition entries average a model's predictions over flips, rotations and scales. `pipeline
predict --tta` averages the eight flips and rotations; this measures what scales would add.
Each tile of a prepared tile set (the tile stage's ``data/chips/tilesets/<set>/<stem>.vrt``
and ``<stem>.labels.tif``) is predicted with ``--tta`` at its own scale and at each scale s of
``--scales``: a VRT of the tile whose transform says its pixels are s times their size, so
that predict resamples each window by s to the model's pixel size and the probability back
onto the tile's grid. For every combination of scales, the probabilities are averaged, cut at
the F1-best threshold pooled over the ``--val`` tiles, and scored as pooled IoU over the
``--test`` tiles (with the IoU at the test tiles' own best threshold beside it).

Usage (the Massachusetts recipe's folder, after ``pipeline tile`` and ``pipeline train``)::

    python benchmarks/tta_zoom.py --model models/unet --prepared data/chips/tilesets/mass \\
        --val 23129125_15 26429275_15 \\
        --test 10078720_15 10528795_15 24928900_15 25229185_15 --scales 0.75 1.333 1.6 2
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pooled_scores import predict_probability  # noqa: E402
from pipeline import raster  # noqa: E402
from pipeline.metrics import SweepResult, ThresholdSweep, best_f1_threshold  # noqa: E402

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def zoomed(vrt: Path, scale: float, folder: Path) -> Path:
    """A VRT of ``vrt`` whose pixels are declared ``scale`` times their size."""
    info = raster.raster_info(vrt)
    t = info.transform
    return raster.write_vrt(
        folder / f"{vrt.stem}_x{scale:g}.vrt",
        info,
        crs=info.crs,
        transform=Affine(t.a * scale, t.b, t.c, t.d, t.e * scale, t.f),
        nodata=None if info.nodata is None else [info.nodata] * info.count,
    )


def predictions(
    model: Path, prepared: Path, stems: list[str], scales: list[float], folder: Path
) -> dict[tuple[str, float], np.ndarray]:
    """Probability (NaN outside the imagery) of every tile at every scale, eight views each."""
    found = {}
    for stem, scale in itertools.product(stems, scales):
        vrt = prepared / f"{stem}.vrt"
        source = vrt if scale == 1 else zoomed(vrt, scale, folder)
        out = folder / f"{stem}_x{scale:g}.prob.tif"
        prob, valid = predict_probability(source, out, model, ["--tta"])
        found[stem, scale] = np.where(valid, prob, np.nan)
        print(f"  predicted {stem} at x{scale:g}", flush=True)
    return found


def pooled_curve(
    probs: dict, labels: dict, stems: list[str], scales: tuple[float, ...]
) -> SweepResult:
    """Counts at every threshold of the scales' mean probability, pooled over the tiles."""
    sweep = ThresholdSweep(THRESHOLDS, rho=0)
    for stem in stems:
        truth, known = labels[stem]
        sweep.update(np.mean([probs[stem, s] for s in scales], axis=0), truth, known)
    return sweep.compute()


def read_labels(prepared: Path, stems: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each tile's (road, known) from the tile stage's label raster."""
    labels = {}
    for stem in stems:
        path = prepared / f"{stem}.labels.tif"
        values, nodata = raster.read_band_array(path), raster.raster_info(path).nodata
        labels[stem] = (values == 1, values != nodata)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--val", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--scales", nargs="+", type=float, default=[0.75, 1.333, 1.6, 2.0])
    args = ap.parse_args()
    scales = [1.0, *[s for s in args.scales if s != 1]]
    stems = [*args.val, *args.test]
    labels = read_labels(args.prepared, stems)
    with tempfile.TemporaryDirectory(prefix="roadseg-zoom-") as tmp:
        probs = predictions(args.model, args.prepared, stems, scales, Path(tmp))
    print("| scales | threshold (val) | test IoU | at the test tiles' best threshold |")
    print("|---|---|---|---|")
    for k in range(1, len(scales) + 1):
        for combo in itertools.combinations(scales, k):
            threshold = best_f1_threshold(pooled_curve(probs, labels, args.val, combo))
            test = pooled_curve(probs, labels, args.test, combo)
            iou = test.iou
            print(
                f"| {' + '.join(f'{s:g}' for s in combo)} | {threshold:.2f} | "
                f"{iou[test.index_of(threshold)]:.3f} | {iou.max():.3f} "
                f"({THRESHOLDS[int(np.argmax(iou))]:.2f}) |"
            )


if __name__ == "__main__":
    main()
