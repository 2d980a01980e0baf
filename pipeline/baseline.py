"""A per-pixel baseline: logistic regression on raw band values (issue 3).

If band values alone found the roads, a U-Net's IoU would say little about learning road
shape and context, and the synthetic scenes would be too easy. So evaluate fits this
baseline on pixels sampled from the train chips (nodata excluded, fixed seed), with its
threshold where the IoU on those training pixels is best (the strongest threshold it can
choose without seeing the test scene), scores it on each whole held-out scene, read window
by window, and reports the U-Net's IoU as a multiple of it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.chip_format import INDEX_FILE, MASK_NODATA, open_chip_array, read_chip_index
from pipeline.config import DataParams, SceneSource
from pipeline.metrics import Confusion, confusion
from pipeline.scene_truth import SceneWindows

log = logging.getLogger(__name__)

MAX_TRAIN_PIXELS = 100_000  # sampled from the train chips: about 1 s to fit on one core
SCORE_WINDOW = 1024  # pixels a side of the windows a held-out scene is read in


class BaselineError(ValueError):
    """The baseline cannot be fitted or scored; the message names the file."""


@dataclass(frozen=True)
class PixelBaseline:
    """A fitted logistic regression on raw band values and the threshold it predicts road at."""

    model: Any  # sklearn Pipeline: StandardScaler -> LogisticRegression
    threshold: float
    train_pixels: int
    train_iou: float  # IoU on the training pixels at ``threshold``: it did learn something

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Road (bool) for each row of ``pixels`` (N, bands), raw band values."""
        if len(pixels) == 0:
            return np.zeros(0, dtype=bool)
        return self.model.predict_proba(pixels.astype(np.float64))[:, 1] >= self.threshold


def sample_train_pixels(
    chips_dir: Path, max_pixels: int = MAX_TRAIN_PIXELS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(band values (N, C) float64, road (N,) bool) sampled evenly from the valid pixels of
    the train chips listed in ``chips_dir/index.gpkg``; deterministic for ``seed``."""
    try:
        index = read_chip_index(chips_dir, geometry=False)
    except FileNotFoundError as e:
        raise BaselineError(str(e)) from None
    train = index[index["split"] == "train"].sort_values(["scene", "array_index"])
    if train.empty:
        raise BaselineError(
            f"{Path(chips_dir) / INDEX_FILE}: no train chips to fit the baseline on"
        )
    per_chip = math.ceil(max_pixels / len(train))
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for scene, rows in train.groupby("scene", sort=True):
        images = open_chip_array(chips_dir, scene, "images")
        masks = open_chip_array(chips_dir, scene, "masks")
        for i in rows["array_index"]:
            mask = np.asarray(masks[i]).ravel()
            valid = np.flatnonzero(mask != MASK_NODATA)
            take = (
                rng.choice(valid, size=min(per_chip, len(valid)), replace=False)
                if len(valid)
                else valid
            )
            take.sort()
            image = np.asarray(images[i])
            xs.append(image.reshape(image.shape[0], -1)[:, take].T.astype(np.float64))
            ys.append(mask[take] == 1)
    return np.concatenate(xs), np.concatenate(ys)


def best_iou_threshold(prob: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, IoU) maximising the IoU of ``prob >= threshold`` against ``truth``, over
    every distinct probability (exact: predicting the k most probable pixels, for each k)."""
    order = np.argsort(-prob, kind="stable")
    p, t = prob[order], truth[order]
    tp = np.cumsum(t)
    last = np.r_[p[1:] != p[:-1], True]  # cut only between distinct probabilities
    k = np.arange(1, len(p) + 1)
    iou = np.where(last, tp / (k + t.sum() - tp), -1.0)
    best = int(np.argmax(iou))
    return float(p[best]), float(iou[best])


def fit_baseline(
    chips_dir: Path, max_pixels: int = MAX_TRAIN_PIXELS, seed: int = 0
) -> PixelBaseline:
    """Fit the logistic regression on sampled train-chip pixels and pick its threshold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = sample_train_pixels(chips_dir, max_pixels, seed)
    if y.all() or not y.any():
        raise BaselineError(
            f"{chips_dir}: the sampled train pixels are all one class; cannot fit the baseline"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    threshold, iou = best_iou_threshold(model.predict_proba(x)[:, 1], y)
    return PixelBaseline(model=model, threshold=threshold, train_pixels=len(y), train_iou=iou)


def _bands_differ(baseline: PixelBaseline, data: DataParams, chips_dir: Path) -> bool:
    """Warn (and say True) when the chips the baseline was fitted on have another number of
    bands than the scenes are read with: chips tiled before ``data.bands`` changed."""
    fitted = baseline.model.n_features_in_
    if fitted == len(data.bands):
        return False
    log.warning(
        "evaluate: the chips in %s have %d band(s), data.bands names %d (%s): they were "
        "tiled with other bands; run `pipeline tile` again; per-pixel baseline skipped",
        chips_dir,
        fitted,
        len(data.bands),
        ", ".join(data.bands),
    )
    return True


def score_scene(
    baseline: PixelBaseline, scene: SceneSource, data: DataParams, window: int = SCORE_WINDOW
) -> Confusion:
    """Confusion counts of the baseline on a whole scene, read ``window`` pixels at a time,
    against the truth evaluate uses (``scene_truth.SceneWindows``)."""
    total = Confusion(0, 0, 0, 0)
    with SceneWindows(scene, data) as windows:
        info = windows.info
        for row_off in range(0, info.height, window):
            for col_off in range(0, info.width, window):
                h, w = min(window, info.height - row_off), min(window, info.width - col_off)
                image, valid, truth = windows.read(col_off, row_off, w, h)
                pred = np.zeros((h, w), dtype=bool)
                pred[valid] = baseline.predict(image[:, valid].T)
                total = total + confusion(pred, truth, valid)
    return total


MAX_BASELINE_IOU = 0.35  # issue 3: band values alone must stay under this road IoU
MIN_RATIO = 2.0  # issue 3: the U-Net must reach at least this multiple of the baseline's IoU


def add_baseline_metrics(
    result: dict[str, Any], scenes: list[SceneSource], data: DataParams, chips_dir: Path
) -> None:
    """Add ``baseline_logreg_iou`` and ``iou_vs_baseline`` (the U-Net's ``iou``, at the
    model's threshold, over the baseline's) to ``result`` (pooled over ``scenes``) and to each
    ``result["per_scene"][name]``; warn when the baseline passes MAX_BASELINE_IOU or the
    ratio is under MIN_RATIO. The ratio is left out where the baseline finds no road at all;
    both are left out, with a warning, when ``chips_dir`` has no chip index to fit on.
    """
    index_path = Path(chips_dir) / INDEX_FILE
    if not index_path.exists():
        log.warning(
            "evaluate: no chip index %s to fit the per-pixel baseline on; baseline skipped",
            index_path,
        )
        return
    baseline = fit_baseline(chips_dir)
    if _bands_differ(baseline, data, chips_dir):
        return
    log.info(
        "baseline: logistic regression on %d train pixels, threshold %.3f (train IoU %.3f)",
        baseline.train_pixels,
        baseline.threshold,
        baseline.train_iou,
    )
    pooled = Confusion(0, 0, 0, 0)
    targets = []
    for scene in scenes:
        counts = score_scene(baseline, scene, data)
        pooled = pooled + counts
        targets.append((scene.name, result["per_scene"][scene.name], counts))
    targets.append(("all test scenes", result, pooled))
    for name, metrics, counts in targets:
        metrics["baseline_logreg_iou"] = counts.iou
        if counts.tp == 0:
            log.warning(
                "evaluate: the per-pixel baseline finds no road on %s; no iou_vs_baseline", name
            )
            continue
        metrics["iou_vs_baseline"] = metrics["iou"] / counts.iou
        if counts.iou > MAX_BASELINE_IOU:
            log.warning(
                "evaluate: a per-pixel logistic regression on band values reaches road IoU %.3f on %s "
                "(over %.2f): band values alone find the roads, the scene is too easy",
                counts.iou,
                name,
                MAX_BASELINE_IOU,
            )
        if metrics["iou_vs_baseline"] < MIN_RATIO:
            log.warning(
                "evaluate: U-Net IoU %.3f on %s is %.2fx the per-pixel baseline's %.3f (under %.0fx)",
                metrics["iou"],
                name,
                metrics["iou_vs_baseline"],
                counts.iou,
                MIN_RATIO,
            )
