"""What the real-imagery predict benchmarks share: `pipeline predict` run as a user runs it
(single view, with predict's defaults whatever the params.yaml of the folder it runs in
says), and IoU, pixel recall and the relaxed break-even pooled over many rasters."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from pipeline.metrics import DEFAULT_THRESHOLDS, ThresholdSweep, relaxed_break_even

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def predict_probability(
    raster: Path, out: Path, model: Path, extra: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(probability, validity) of ``raster`` on its own grid, predicted single-view by
    ``pipeline predict`` into ``out`` with ``model`` and ``extra`` options. It runs in an empty
    folder: predict's defaults (window, overlap, precision), not a params.yaml of the folder
    the benchmark runs in."""
    raster, out, model = (Path(p).resolve() for p in (raster, out, model))
    cmd = [PIPELINE, "predict", str(raster), "-o", str(out), "--model", str(model)]
    cmd += ["-q", "--no-tta", "--overwrite", *(extra or [])]
    with tempfile.TemporaryDirectory(prefix="roadseg-bench-") as empty:
        subprocess.run(cmd, check=True, capture_output=True, cwd=empty)
    with rasterio.open(out) as ds:
        raw = ds.read(1)
    return raw.astype(np.float32) / 254, raw != 255


class PooledScores:
    """Pixel counts at a model's threshold and a threshold sweep, summed over rasters."""

    def __init__(self, model: Path) -> None:
        self.threshold = json.loads((model / "model.json").read_text())["threshold"]
        self.tp = self.fp = self.fn = 0
        self.sweep = ThresholdSweep(DEFAULT_THRESHOLDS, rho=3)

    def add(self, prob: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        """One raster's probability against its truth, over its valid pixels."""
        pred = (prob >= self.threshold) & valid
        self.tp += int((pred & truth).sum())
        self.fp += int((pred & ~truth & valid).sum())
        self.fn += int((~pred & truth & valid).sum())
        self.sweep.update(prob, truth, valid)

    @property
    def iou(self) -> float:
        return self.tp / (self.tp + self.fp + self.fn)

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn)

    @property
    def break_even(self) -> float:
        """The relaxed (3 px) precision-recall break-even."""
        return relaxed_break_even(self.sweep.compute())[0]


def score_rasters(
    model: Path, cases: list[tuple[Path, np.ndarray]], folder: Path, extra: list[str] | None = None
) -> tuple[float, float]:
    """(IoU at the model's threshold, relaxed break-even) of rasters predicted single-view with
    ``extra`` options into ``folder``, each against its truth (bool, on its grid), pooled."""
    scores = PooledScores(model)
    for k, (raster, truth) in enumerate(cases):
        prob, valid = predict_probability(
            raster, folder / f"{raster.stem}.{k}.prob.tif", model, extra
        )
        scores.add(prob, truth, valid)
    return scores.iou, scores.break_even
