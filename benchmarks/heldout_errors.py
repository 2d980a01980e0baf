"""Where a trained model still errs on a whole test scene: recall by road class and by land
cover, recall under tree canopy (synthetic scenes), and the largest false-alarm components.

The figures in BENCHMARKS.md's error analysis come from here. The model predicts the scene
with ``pipeline.predict.predict_raster`` (float32, the evaluate stage's window and overlap), and
the truth is the evaluate stage's own (``SceneWindows``: the road vectors burned by width), so
the pixel counts at the model's threshold match ``metrics/eval.json``.

    .venv/bin/python benchmarks/heldout_errors.py                   # models/release on 'heldout'
    .venv/bin/python benchmarks/heldout_errors.py --model models:/road-unet@champion --scene heldout

For a scene that ``pipeline synth`` made (its name is in ``synth.scenes``), the scene is
generated again in a temporary folder to recover the canopy opacity painted over each pixel
(it is not written to disk by synth); the regenerated image must equal the file on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import raster  # noqa: E402
from pipeline.config import Params, load_params  # noqa: E402
from pipeline.metrics import confusion  # noqa: E402
from pipeline.scene_truth import SceneWindows  # noqa: E402

CANOPY_BINS = (0.0, 0.25, 0.5, 0.75, 0.9)  # lower edges of the canopy-opacity bins
OPAQUE = 0.9  # canopy opacity from which a road is (nearly) invisible from above


def synthetic_canopy(p: Params, scene: str, image: Path) -> np.ndarray | None:
    """Canopy opacity (0..1 per pixel) of a synthetic scene, recovered by generating it again;
    None when the scene is not one of ``synth.scenes``."""
    from pipeline.synth import trees
    from pipeline.synth.scene import generate_scene

    index = next((i for i, s in enumerate(p.synth.scenes) if s.name == scene), None)
    if index is None:
        return None
    captured: list[np.ndarray] = []
    canopy = trees._canopy

    def spy(
        sc: object, t: object
    ) -> tuple[np.ndarray, ...]:  # crown cover -> opacity, as _trees does
        out = canopy(sc, t)
        captured.append(trees._crown_alpha(out[0]))
        return out

    trees._canopy = spy
    try:
        with tempfile.TemporaryDirectory() as d:
            files = generate_scene(
                p.synth.scenes[index], p.synth.model_copy(update={"out_dir": Path(d)}), index
            )
            with rasterio.open(files.image) as again, rasterio.open(image) as disk:
                if not np.array_equal(again.read(), disk.read()):
                    raise SystemExit(
                        f"{image}: differs from what synth makes of scene {scene!r} now; run `pipeline synth`"
                    )
    finally:
        trees._canopy = canopy
    return (
        captured[0] if captured else np.zeros((p.synth.size, p.synth.size), np.float32)
    )  # no trees


def recall_table(
    rows: dict[str, np.ndarray], pred: np.ndarray, groups: dict[str, np.ndarray]
) -> list[str]:
    """Markdown rows: for each truth mask in ``rows``, pixels and recall inside each group mask."""
    out = ["| road class | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, truth in rows.items():
        cells = []
        for mask in groups.values():
            m = truth & mask
            n = int(m.sum())
            cells.append(f"{n:,} px, {pred[m].mean():.2f}" if n else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> None:
    from pipeline.config import PredictOptions
    from pipeline.model_config import resolve_model
    from pipeline.predict import predict_raster

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--model",
        default="models/release",
        help="model folder or models:/ URI (evaluate's threshold)",
    )
    ap.add_argument("--scene", default="heldout")
    ap.add_argument("--threshold", type=float, default=None, help="default: the model's own")
    ap.add_argument(
        "--components", type=int, default=5, help="largest false-alarm components to list"
    )
    args = ap.parse_args(argv)

    p = load_params(args.params)
    scene = next((s for s in p.data.scenes if s.name == args.scene), None)
    if scene is None:
        raise SystemExit(f"{args.params}: no scene {args.scene!r} in data.scenes")
    folder = resolve_model(args.model, p.register.tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        predict_raster(
            scene.image,
            Path(d) / "prob.tif",
            PredictOptions(
                model=folder,
                window=p.evaluate.window,
                overlap=p.evaluate.overlap,
                dtype="float32",
                tta=p.evaluate.tta,  # scored as evaluate scores it
                progress=False,
            ),
        )
        prob = raster.read_band_array(Path(d) / "prob.tif")
        written = raster.raster_tags(Path(d) / "prob.tif").get("threshold")
    # the threshold predict cut at: the model's, or with evaluate.tta its threshold_tta
    threshold = args.threshold if args.threshold is not None else float(written)
    with SceneWindows(scene, p.data) as sw:
        h, w = sw.info.height, sw.info.width
        _, valid, truth = sw.read(0, 0, w, h)
        attribute = p.evaluate.class_attribute
        classes = (
            {k: sw.burn(v, 0, 0, w, h) & valid for k, v in sw.road_classes(attribute).items()}
            if attribute
            else {}
        )
    truth &= valid
    pred = (prob >= threshold) & valid
    scored = confusion(pred, truth, valid)  # evaluate's counts at the model's threshold
    print(f"# {scene.name} with {args.model} at threshold {threshold:.2f}\n")
    print(
        f"IoU {scored.iou:.3f}, precision {scored.precision:.3f}, recall {scored.recall:.3f}; "
        f"road pixels {int(truth.sum()):,}, missed {scored.fn:,}, false alarms {scored.fp:,}\n"
    )
    rows = {**classes, "all roads": truth}

    if scene.landcover is not None:
        lc, names = (
            raster.read_band_array(scene.landcover),
            raster.landcover_classes(scene.landcover),
        )
        nodata = raster.raster_info(scene.landcover).nodata
        groups = {
            names[k] if k < len(names) else str(k): lc == k
            for k in np.unique(lc[truth])
            if k != nodata
        }
        print("Recall by land cover under the road (pixels, recall):\n")
        print("\n".join(recall_table(rows, pred, groups)) + "\n")

    alpha = synthetic_canopy(p, scene.name, scene.image)
    if alpha is not None:
        edges = (*CANOPY_BINS, 1.01)
        groups = {
            f"canopy {lo:.2f}-{min(hi, 1):.2f}": (alpha >= lo) & (alpha < hi)
            for lo, hi in pairwise(edges)
        }
        print("Recall by canopy opacity over the road (pixels, recall):\n")
        print("\n".join(recall_table(rows, pred, groups)) + "\n")
        hidden = truth & (alpha >= OPAQUE)
        missed_hidden = int((~pred & hidden).sum())
        print(
            f"Roads under canopy opacity >= {OPAQUE}: {int(hidden.sum()):,} px ({hidden.sum() / truth.sum():.1%} of road), "
            f"{missed_hidden:,} missed ({missed_hidden / max(1, scored.fn):.0%} of all misses); "
            f"IoU with them left out of the score: {confusion(pred, truth, valid & ~hidden).iou:.3f}\n"
        )

    labels, n = ndimage.label(pred & ~truth, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][: args.components]
    print(
        f"False alarms: {n} components; the largest {len(order)} hold {sizes[order].sum():,} px "
        f"({sizes[order].sum() / max(1, scored.fp):.0%} of false-alarm pixels):\n"
    )
    removed = 0
    for k in order:
        rr, cc = np.nonzero(labels == k + 1)
        removed += int(sizes[k])
        print(
            f"- {sizes[k]:,} px around row {rr.mean():.0f}, col {cc.mean():.0f} "
            f"(extent {np.ptp(rr) + 1} x {np.ptp(cc) + 1} px); IoU without it and the larger ones: "
            f"{replace(scored, fp=scored.fp - removed).iou:.3f}"
        )
    print(json.dumps({"iou": scored.iou, "threshold": threshold}))


if __name__ == "__main__":
    main()
