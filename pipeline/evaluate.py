"""The evaluate stage: predict each held-out test scene whole, with predict's own code, and
score it against the scene's roads.

Writes (see docs/formats.md): ``metrics/eval.json`` (DVC metrics), ``plots/pr.csv`` (DVC plots),
``reports/<scene>_error_map.png`` and ``<scene>_quicklook.png`` (drawn by
``evaluate_figures.py``), and with the road network scored ``<scene>_apls_points.gpkg``
(where the network loses APLS: ``pipeline.apls_points``); merges the test metrics into the model folder's ``model.json``; logs
all of it to an MLflow run ``evaluate``.

A scene is scored block by block (``EVAL_BLOCK`` pixels a side, read with a margin of the
relaxed slack so the relaxed metrics see across block edges): memory does not grow with the
scene, and the counts are exactly those of the whole scene at once. What a scene adds to the
result is integer counts per threshold, so scenes pool exactly: the overall metrics are over
all test pixels together (micro average), not a mean of per-scene scores. The figures are
built from the same blocks at overview resolution.

The model is scored at the threshold it came with, which train chose on validation chips
(F1-best there): those plain numbers are honest. Evaluate never changes that threshold. As a
labelled reference it also reports the F1-best threshold of the test scenes themselves and
the metrics there (``test_best_threshold``, ``*_at_test_best``): chosen on the data they
score, they are optimistic.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import parallel, raster, registry, tilesets, vectors
from pipeline.atomic import write_text_atomic
from pipeline.baseline import add_baseline_metrics
from pipeline.config import (
    DataParams,
    EvaluateParams,
    NetworkParams,
    PredictOptions,
    RegisterParams,
    SceneSource,
    TileParams,
)
from pipeline.evaluate_figures import (
    NODATA,
    PNG_MAX_SIDE,
    downsample_factor,
    error_codes,
    reduce_codes,
    scene_title,
    write_error_map,
    write_quicklook,
)
from pipeline.metrics import (
    DEFAULT_THRESHOLDS,
    SweepResult,
    ThresholdSweep,
    best_f1_threshold,
    relaxed_break_even,
)
from pipeline.model_config import CONFIG_FILE, config_json, read_config
from pipeline.scene_truth import SceneWindows, TruthError
from pipeline.tta_threshold import choose_tta_threshold

log = logging.getLogger(__name__)

# Thresholds of the sweep: 0.00..1.00 in steps of 0.01 (the grid train chooses the model's
# threshold on), and steps of 0.001 below 0.01 and above 0.99, where a model on imagery unlike
# its training data often has its break-even point (the Massachusetts model on Ottawa: 0.007).
SWEEP_THRESHOLDS = np.union1d(
    DEFAULT_THRESHOLDS, np.r_[np.arange(1, 10) / 1000, 1 - np.arange(1, 10) / 1000]
)
EVAL_BLOCK = 1024  # a test scene is scored in blocks of about this many pixels a side
_NEGATIVES = "negatives"  # score_scene counts a scene's hard negatives as a class of their own


class EvaluateError(ValueError):
    """The evaluate stage cannot run; the message says which input to fix."""


@dataclass(frozen=True)
class SceneScore:
    """One test scene, scored: its counts, and what its figures show at overview resolution."""

    sweep: ThresholdSweep
    codes: np.ndarray  # uint8 error classes at the model's threshold, reduced by ``factor``
    prob: np.ndarray  # float32 probability at every ``factor``-th pixel, NaN where nodata
    valid: np.ndarray  # bool, every ``factor``-th pixel: pixels that count
    factor: int
    by_class: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # class -> (road px, found px)
    negatives: tuple[int, int] | None = None  # (hard-negative px, of them called road); None: none


# ------------------------------------------------------------------------------------ inputs
def held_out_scenes(data: DataParams) -> list[SceneSource]:
    """The scenes held out whole for testing (``split: test`` in params.yaml's data.scenes)."""
    scenes = [s for s in data.scenes if s.split == "test" and not s.transfer]
    if not scenes:
        names = ", ".join(f"{s.name} ({s.split})" for s in data.scenes)
        raise EvaluateError(
            f"no test scene: evaluation needs at least one scene with `split: test` in params.yaml "
            f"data.scenes (scenes now: {names})"
        )
    return scenes


def transfer_sources(entries: list[Any], data: DataParams) -> dict[str, list[SceneSource]]:
    """The ``transfer: true`` entries of data.scenes as given (``entries``, before tile sets
    are expanded) and the scenes of each in the expanded ``data``."""
    by_name = {s.name: s for s in data.scenes}
    return {
        e.name: [by_name[n] for n in tilesets.entry_scene_names(e)]
        for e in entries
        if getattr(e, "transfer", False)
    }


def sweep_thresholds(model_threshold: float) -> np.ndarray:
    """The sweep's thresholds (``SWEEP_THRESHOLDS``) plus the model's own threshold."""
    if np.any(np.isclose(SWEEP_THRESHOLDS, model_threshold, rtol=0.0, atol=1e-9)):
        return SWEEP_THRESHOLDS.copy()
    return np.union1d(SWEEP_THRESHOLDS, [float(model_threshold)])


def predict_scene(
    scene: SceneSource,
    out_dir: Path,
    model_dir: Path,
    params: EvaluateParams,
    workers: int,
    scheduler: str | None = None,
) -> Path:
    """A float32 probability raster of the whole scene, made by predict's own code path (on
    ``scheduler``'s cluster when given, else on a local cluster of ``workers`` of its own)."""
    from pipeline.predict import predict_raster

    options = PredictOptions(
        model=model_dir,
        window=params.window,
        overlap=params.overlap,
        batch_size=params.batch_size,
        precision=params.precision,
        tta=params.tta,
        bands=scene.bands,
        dtype="float32",
        workers=workers,
        scheduler=scheduler,
        overwrite=True,
        progress=False,
    )
    result = predict_raster(scene.image, Path(out_dir) / f"{scene.name}_prob.tif", options)
    return Path(result.output)


@dataclass
class _Overview:
    """What a scene's figures show, at every ``factor``-th pixel, filled block by block."""

    factor: int
    codes: np.ndarray
    prob: np.ndarray
    valid: np.ndarray

    @classmethod
    def empty(cls, height: int, width: int) -> _Overview:
        factor = downsample_factor((height, width), PNG_MAX_SIDE)
        small = (math.ceil(height / factor), math.ceil(width / factor))
        return cls(
            factor=factor,
            codes=np.full(small, NODATA, dtype=np.uint8),
            prob=np.full(small, np.nan, dtype=np.float32),
            valid=np.zeros(small, dtype=bool),
        )

    def add(
        self, row: int, col: int, prob: np.ndarray, codes: np.ndarray, valid: np.ndarray
    ) -> None:
        """A block at (``row``, ``col``) (origins on the overview's grid), full resolution."""
        f = self.factor
        reduced = reduce_codes(codes, f)
        at = (
            slice(row // f, row // f + reduced.shape[0]),
            slice(col // f, col // f + reduced.shape[1]),
        )
        self.codes[at] = reduced
        self.prob[at] = np.where(valid, prob, np.nan)[::f, ::f]
        self.valid[at] = valid[::f, ::f]


def _scene_blocks(
    height: int, width: int, step: int, margin: int
) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Blocks of ``step`` pixels a side as (row0, col0, row1, col1), each with the window to
    read: the block plus ``margin`` pixels around it, cut at the scene's edges."""
    for r0 in range(0, height, step):
        for c0 in range(0, width, step):
            r1, c1 = min(r0 + step, height), min(c0 + step, width)
            rr0, cc0 = max(0, r0 - margin), max(0, c0 - margin)
            rr1, cc1 = min(height, r1 + margin), min(width, c1 + margin)
            yield (r0, c0, r1, c1), (rr0, cc0, rr1, cc1)


def _road_classes(
    windows: SceneWindows, scene: str, class_attribute: str | None
) -> dict[str, object]:
    """The scene's road polygons by class; none without ``class_attribute`` or when the truth
    cannot give classes (a warning says why; the scene is still scored)."""
    if not class_attribute:
        return {}
    try:
        return windows.road_classes(class_attribute)
    except TruthError as exc:  # a report the data cannot give: skip it, score the rest
        log.warning("evaluate: recall by road class skipped for %s: %s", scene, exc)
        return {}


def _check_same_grid(
    predicted: raster.WindowReader, windows: SceneWindows, prediction: Path, image: Path
) -> tuple[int, int]:
    """The scene's (height, width); EvaluateError when the prediction is on another grid."""
    height, width = windows.info.height, windows.info.width
    if (predicted.ds.height, predicted.ds.width) != (height, width):
        raise EvaluateError(
            f"{prediction}: prediction grid {predicted.ds.width}x{predicted.ds.height} differs "
            f"from {image} ({width}x{height})"
        )
    return height, width


def _count_classes(
    windows: SceneWindows,
    classes: dict[str, object],
    counts: dict[str, list[int]],
    box: tuple[int, int, int, int],
    counted: np.ndarray,
    called_road: np.ndarray,
) -> None:
    """Add, per class, a block's pixels that count (``counted``) under its polygons and those
    of them called road to ``counts``."""
    r0, c0, r1, c1 = box
    for name, polygons in classes.items():
        inside = windows.burn(polygons, c0, r0, c1 - c0, r1 - r0) & counted
        counts[name][0] += int(np.count_nonzero(inside))
        counts[name][1] += int(np.count_nonzero(inside & called_road))


def score_scene(
    scene: SceneSource,
    prediction: Path,
    data: DataParams,
    thresholds: np.ndarray,
    rho: int,
    threshold: float,
    block: int = EVAL_BLOCK,
    class_attribute: str | None = None,
) -> SceneScore:
    """Score ``prediction`` (float32 probability on the image grid, NaN = nodata) against the
    scene's truth, ``block`` pixels at a time; valid excludes the image's nodata, the
    prediction's NaN and a label raster's nodata. With ``class_attribute``, also counts each
    road class's valid pixels and those found at ``threshold`` (vector truth only; vectors
    without that attribute get a warning naming the file and are scored without classes)."""
    with SceneWindows(scene, data) as windows, raster.open_reader(prediction) as predicted:
        classes = _road_classes(windows, scene.name, class_attribute)
        by_class = {name: [0, 0] for name in classes}
        polygons = vectors.load_scene_negatives(scene, data, windows.info)
        negatives = {} if polygons is None else {_NEGATIVES: polygons}
        negative_counts = {name: [0, 0] for name in negatives}
        height, width = _check_same_grid(predicted, windows, prediction, scene.image)
        overview = _Overview.empty(height, width)
        step = overview.factor * math.ceil(block / overview.factor)  # on the overview's grid
        sweep = ThresholdSweep(thresholds, rho)
        for box, (rr0, cc0, rr1, cc1) in _scene_blocks(height, width, step, rho):
            _, valid, truth = windows.read(cc0, rr0, cc1 - cc0, rr1 - rr0)
            prob = raster.read_window(predicted, cc0, rr0, cc1 - cc0, rr1 - rr0)[0][0].astype(
                np.float32
            )
            valid &= np.isfinite(prob)
            r0, c0, r1, c1 = box
            core = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
            sweep.update(prob, truth, valid, core=core)
            p, t, v = prob[core], truth[core], valid[core]
            overview.add(r0, c0, p, error_codes(p >= threshold, t, v), v)
            if classes:
                _count_classes(windows, classes, by_class, box, v, p >= threshold)
            if negatives:  # a negative under a road is road: its background only
                _count_classes(windows, negatives, negative_counts, box, v & ~t, p >= threshold)
    return SceneScore(
        sweep=sweep,
        codes=overview.codes,
        prob=overview.prob,
        valid=overview.valid,
        factor=overview.factor,
        by_class={k: (a, b) for k, (a, b) in by_class.items()},
        negatives=tuple(negative_counts[_NEGATIVES]) if negatives else None,
    )


def recall_by_class(counts: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    """``recall_by_class`` (found / road pixels) and ``road_pixels_by_class`` of the classes
    that have road pixels in the valid area. A pixel where roads of two classes meet counts
    for both."""
    present = {k: v for k, v in sorted(counts.items()) if v[0] > 0}
    return {
        "recall_by_class": {k: found / road for k, (road, found) in present.items()},
        "road_pixels_by_class": {k: road for k, (road, _) in present.items()},
    }


# ----------------------------------------------------------------------------------- scoring
def summarize(curve: SweepResult, threshold: float, test_best: float) -> dict[str, float]:
    """Flat metrics at ``threshold`` (the model's) and, suffixed ``_at_test_best``, at the
    test F1-best threshold ``test_best`` (optimistic), plus the break-even point."""
    out: dict[str, float] = {"threshold": float(threshold)}
    for suffix, t in (("", threshold), ("_at_test_best", test_best)):
        k = curve.index_of(t)
        c, r = curve.confusion_at(k), curve.relaxed_at(k)
        out.update(
            {
                f"iou{suffix}": c.iou,
                f"f1{suffix}": c.f1,
                f"precision{suffix}": c.precision,
                f"recall{suffix}": c.recall,
                f"relaxed_precision{suffix}": r.precision,
                f"relaxed_recall{suffix}": r.recall,
            }
        )
    value, at = relaxed_break_even(curve)
    out["relaxed_break_even"] = value
    out["relaxed_break_even_threshold"] = at
    out["valid_pixels"] = int(curve.tp[0] + curve.fp[0] + curve.fn[0] + curve.tn[0])
    out["road_pixels"] = int(curve.tp[0] + curve.fn[0])
    return out


def model_metrics(result: dict[str, Any]) -> dict[str, float]:
    """What model.json records: test metrics at the threshold it carries (chosen on validation)."""
    network = {f"test_{k}": result[k] for k in ("apls", "topo_f1") if k in result}
    return {
        **network,
        "test_iou": result["iou"],
        "test_f1": result["f1"],
        "test_precision": result["precision"],
        "test_recall": result["recall"],
        "test_relaxed_precision": result["relaxed_precision"],
        "test_relaxed_recall": result["relaxed_recall"],
        "relaxed_break_even": result["relaxed_break_even"],
    }


# ----------------------------------------------------------------------------------- outputs
def write_pr_csv(path: Path, curve: SweepResult) -> Path:
    """One row per threshold: plain and relaxed precision/recall, F1, IoU (DVC plots)."""
    import io

    columns = {
        "threshold": curve.thresholds,
        "precision": curve.precision,
        "recall": curve.recall,
        "f1": curve.f1,
        "iou": curve.iou,
        "relaxed_precision": curve.relaxed_precision,
        "relaxed_recall": curve.relaxed_recall,
    }
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in zip(*columns.values(), strict=True):
        writer.writerow(f"{v:.6g}" for v in row)
    return write_text_atomic(path, buf.getvalue())


def update_model_config(
    model_dir: Path, metrics: dict[str, float], threshold_tta: float | None = None
) -> Path:
    """Merge ``metrics`` into model.json's metrics, and set ``threshold_tta`` when given;
    threshold and weights untouched."""
    config = read_config(model_dir)
    config.metrics = {**config.metrics, **{k: float(v) for k, v in metrics.items()}}
    if threshold_tta is not None:
        config.threshold_tta = float(threshold_tta)
    return write_text_atomic(Path(model_dir) / CONFIG_FILE, config_json(config))


def _metric_key(scene: str) -> str:
    """A scene name as MLflow accepts it in metric keys."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", scene)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers as they are, one level of nested dicts (by class) as ``<name>/<class>``."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, int | float):
            flat[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict) and k not in ("per_scene", "transfer"):
            flat.update({f"{prefix}{k}/{_metric_key(c)}": float(x) for c, x in v.items()})
    return flat


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Overall metrics as they are, per-scene ones as ``<scene>/<metric>``, metrics by road
    class as ``[<scene>/]<metric>/<class>``."""
    flat = _flat(result)
    for scene, metrics in result.get("per_scene", {}).items():
        flat.update(_flat(metrics, f"{_metric_key(scene)}/"))
    for source, metrics in result.get("transfer", {}).items():
        flat.update(_flat(metrics, f"transfer/{_metric_key(source)}/"))
    return flat


def log_run(
    register: RegisterParams,
    params: EvaluateParams,
    result: dict[str, Any],
    artifacts: dict[str, list[Path]],
    model_dir: Path,
    data_lines: list[str] | None = None,
) -> str:
    """One MLflow run ``evaluate`` with params, metrics and output files; returns its id.
    ``data_lines`` describe the data (a tile set in one line: ``tilesets.describe``)."""
    with registry.tracked_run(
        register.experiment,
        "evaluate",
        tracking_default=register.tracking_uri,
        tags={"stage": "evaluate"},
    ) as run_id:
        registry.log_params(
            {
                "evaluate": params.model_dump(mode="json"),
                "model_dir": str(model_dir),
                "scenes": sorted(result["per_scene"]),
                "data": data_lines or [],
            }
        )
        registry.log_metrics(flat_metrics(result))
        for folder, paths in artifacts.items():
            for p in paths:
                registry.log_artifact(p, folder)
    return run_id


# ------------------------------------------------------------------------------------- stage
def _score_scenes(
    scenes: list[SceneSource],
    model_dir: Path,
    params: EvaluateParams,
    data: DataParams,
    tile: TileParams,
    network: NetworkParams | None,
    threshold: float,
    scheduler: str | None,
    tmp: Path,
) -> tuple[dict[str, SceneScore], dict[str, dict[str, float]]]:
    """Predict and score each test scene in turn, at the model's ``threshold``; (pixel
    scores, road network scores) by scene."""
    thresholds = sweep_thresholds(threshold)
    gsd_m = read_config(model_dir).gsd_m
    scores: dict[str, SceneScore] = {}
    network_scores: dict[str, dict[str, float]] = {}
    for scene in scenes:
        log.info("evaluate: predicting %s", scene.name)
        prediction = predict_scene(scene, tmp, model_dir, params, tile.workers, scheduler=scheduler)
        scores[scene.name] = score_scene(
            scene,
            prediction,
            data,
            thresholds,
            scene_slack_px(params.relaxed_slack_px, gsd_m, scene),
            threshold,
            class_attribute=params.class_attribute,
        )
        if network is not None:
            from pipeline.network_eval import score_scene_network

            log.info("evaluate: road network of %s", scene.name)
            points = apls_points_path(params, scene)
            points.parent.mkdir(parents=True, exist_ok=True)
            scored = score_scene_network(
                scene, prediction, network, network.threshold or threshold, data, points=points
            )
            if scored:
                network_scores[scene.name] = scored
            else:  # no road to score: no points, not those of an earlier run
                points.unlink(missing_ok=True)
        prediction.unlink()  # a test scene's probability raster can be large
        if scores[scene.name].sweep.n_true == 0:
            log.warning("evaluate: test scene %s has no road pixels in its valid area", scene.name)
    return scores, network_scores


def _scored_scenes(
    scenes: list[SceneSource],
    scores: dict[str, SceneScore],
    network_scores: dict[str, dict[str, float]],
) -> tuple[list[SceneSource], list[str]]:
    """The test scenes with at least one valid pixel, and the names of those without (all
    nodata), taken out of ``scores`` and ``network_scores``: a scene with nothing to score
    would get 0/0 as a perfect 1.0 in its per-scene figures. Refuses when none is left."""
    unscored = [s.name for s in scenes if scores[s.name].sweep.n_valid == 0]
    if len(unscored) == len(scenes):
        raise EvaluateError(
            "the test scenes have no valid pixel (all nodata?): nothing to evaluate"
        )
    for name in unscored:
        log.warning("evaluate: test scene %s has no valid pixel (all nodata?); not scored", name)
        del scores[name]
        network_scores.pop(name, None)
    return [s for s in scenes if s.name not in unscored], unscored


def scene_slack_px(rho: int, gsd_m: float | None, scene: SceneSource) -> int:
    """The relaxed slack on a scene's own grid: ``rho`` pixels of the model's pixel size
    (``gsd_m``), so that a source of another pixel size (0.3 m against a 1 m model: 10 px)
    is given the same slack on the ground (Mnih's 3 px at 1 m are 3 m); ``rho`` itself for a
    model or a scene without a pixel size in metres."""
    mpp = raster.raster_info(scene.image).metres_per_pixel
    if not gsd_m or not mpp:
        return rho
    return max(1, round(rho * gsd_m / mpp)) if rho > 0 else 0


def _pooled_metrics(
    scores: dict[str, SceneScore], threshold: float, rho: int
) -> tuple[dict[str, Any], SweepResult]:
    """The metrics over all test pixels together (micro average) and per scene, at the model's
    ``threshold`` and at the test F1-best one; and the pooled curve (for the PR plot)."""
    sweeps = {name: score.sweep for name, score in scores.items()}
    pooled = ThresholdSweep(sweep_thresholds(threshold), rho)
    for sweep in sweeps.values():
        pooled += sweep
    curve = pooled.compute()
    test_best = best_f1_threshold(curve)  # an optimistic reference, never the model's
    result: dict[str, Any] = {
        **summarize(curve, threshold, test_best),
        "test_best_threshold": test_best,
    }
    result["relaxed_slack_px"] = rho
    result["per_scene"] = {
        name: summarize(s.compute(), threshold, test_best) for name, s in sweeps.items()
    }
    return result, curve


def transfer_metrics(
    scores: dict[str, SceneScore],
    sources: dict[str, list[SceneSource]],
    threshold: float,
    rho: int,
    networks: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per transfer source, the metrics over its scenes' pixels together at the model's
    ``threshold``; suffixed ``_at_source_best``, at that source's own F1-best threshold (how
    much of the loss a threshold chosen for the source would win back); and, from
    ``networks`` (road network scores by scene), the mean over its scenes as for the test
    scenes. Scenes without a valid pixel are left out and named (``unscored_scenes``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, given in sources.items():
        scenes = [s for s in given if scores[s.name].sweep.n_valid]
        if not scenes:
            log.warning("evaluate: transfer source %s has no valid pixel; not scored", name)
            continue
        pooled = ThresholdSweep(sweep_thresholds(threshold), rho)
        for scene in scenes:
            pooled += scores[scene.name].sweep
        unscored = [s.name for s in given if s not in scenes]
        curve = pooled.compute()
        best = best_f1_threshold(curve)
        metrics = {
            k.replace("_at_test_best", "_at_source_best"): v
            for k, v in summarize(curve, threshold, best).items()
        }
        out[name] = {
            **metrics,
            **_mean_network_scores([(networks or {}).get(s.name, {}) for s in scenes]),
            "source_best_threshold": best,
            "scenes": len(scenes),
            # the slack on its scenes' own grids (``scene_slack_px``): rho at the model's size
            "relaxed_slack_px": float(np.median([scores[s.name].sweep.rho for s in scenes])),
            **_pixel_sizes(scenes),
            **({"unscored_scenes": unscored} if unscored else {}),  # no valid pixel
        }
    return out


def _mean_network_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each road network metric over the scenes that have it."""
    scored = [s for s in scores if s]
    return {k: float(np.mean([s[k] for s in scored])) for k in (scored[0] if scored else {})}


def _pixel_sizes(scenes: list[SceneSource]) -> dict[str, float]:
    """The scenes' median pixel size on the ground in metres (``ground.pixel_size_m``: the
    side of a square of the same area), and their median pixel width and height, which differ
    for square-degree pixels away from the equator (predict resamples each axis on its own)."""
    infos = [raster.raster_info(s.image) for s in scenes]
    sides = np.median([info.pixel_metres for info in infos], axis=0)
    return {
        "pixel_size_m": float(np.median([info.metres_per_pixel for info in infos])),
        "pixel_width_m": float(sides[1]),
        "pixel_height_m": float(sides[0]),
    }


def _add_scene_reports(
    result: dict[str, Any],
    scores: dict[str, SceneScore],
    network_scores: dict[str, dict[str, float]],
    class_attribute: str | None,
) -> None:
    """Beside the pixel metrics: recall by road class (with ``class_attribute``), hard
    negatives called road, and the road network metrics."""
    if class_attribute:
        _add_class_recall(result, scores)
    _add_negative_false_alarms(result, scores)
    _add_network_metrics(result, network_scores)


def _add_class_recall(result: dict[str, Any], scores: dict[str, SceneScore]) -> None:
    """Recall by road class, per scene and pooled over the scenes that have classes (road
    vectors with the attribute); ``recall_by_class_scenes`` names those scenes, as a label
    raster or vectors without the attribute give none."""
    pooled_by_class: dict[str, tuple[int, int]] = {}
    covered = []
    for name, score in scores.items():
        result["per_scene"][name].update(recall_by_class(score.by_class))
        if any(road for road, _ in score.by_class.values()):
            covered.append(name)
        for cls, (road, found) in score.by_class.items():
            old = pooled_by_class.get(cls, (0, 0))
            pooled_by_class[cls] = (old[0] + road, old[1] + found)
    result.update(recall_by_class(pooled_by_class))
    if covered:
        result["recall_by_class_scenes"] = covered


def _add_negative_false_alarms(result: dict[str, Any], scores: dict[str, SceneScore]) -> None:
    """``negatives_called_road``: the share of the test scenes' hard-negative pixels (their
    ``negatives`` vectors: a railway) the model calls road, per scene and over the scenes."""
    total = [0, 0]
    for name, score in scores.items():
        if score.negatives is None or score.negatives[0] == 0:
            continue
        pixels, called = score.negatives
        result["per_scene"][name].update(
            {"negatives_called_road": called / pixels, "negative_pixels": pixels}
        )
        total = [total[0] + pixels, total[1] + called]
    if total[0]:
        result.update({"negatives_called_road": total[1] / total[0], "negative_pixels": total[0]})


def _add_network_metrics(
    result: dict[str, Any], network_scores: dict[str, dict[str, float]]
) -> None:
    """Each scene's road network metrics; over scenes, the mean of the scenes' values."""
    for name, values in network_scores.items():
        result["per_scene"][name].update(values)
    result.update(_mean_network_scores(list(network_scores.values())))


def apls_points_path(params: EvaluateParams, scene: SceneSource) -> Path:
    """Where evaluate writes a test scene's APLS control points (``pipeline.apls_points``)."""
    return params.reports_dir / f"{scene.name}_apls_points.gpkg"


def _write_figures(
    params: EvaluateParams,
    scenes: list[SceneSource],
    scores: dict[str, SceneScore],
    result: dict[str, Any],
    threshold: float,
    bands: list[str],
) -> list[Path]:
    """Each test scene's error map and quicklook in ``params.reports_dir``; the model as it
    is used: at its own ``threshold``."""
    params.reports_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    for scene in scenes:
        score = scores[scene.name]
        title = scene_title(
            scene.name, threshold, result["per_scene"][scene.name], params.relaxed_slack_px
        )
        error_map = params.reports_dir / f"{scene.name}_error_map.png"
        figures.append(write_error_map(error_map, score.codes, title))
        figures.append(
            write_quicklook(
                params.reports_dir / f"{scene.name}_quicklook.png",
                scene.image,
                score.prob,
                score.valid,
                bands,
                scene.name,
                scene.bands,
            )
        )
        if scene.name in result.get("per_scene", {}) and "apls" in result["per_scene"][scene.name]:
            figures.append(apls_points_path(params, scene))  # written when it was scored
    return figures


def _write_outputs(
    params: EvaluateParams,
    register: RegisterParams,
    model_dir: Path,
    result: dict[str, Any],
    curve: SweepResult,
    figures: list[Path],
    data_lines: list[str],
    threshold_tta: float | None = None,
) -> str:
    """pr.csv, the test metrics (and the eight-view threshold) in model.json, the MLflow run
    (its id returned), and eval.json last: when the run fails, eval.json still describes the
    previous evaluation, the one of the release ``pipeline evaluate`` then keeps."""
    text = json.dumps(result, indent=2) + "\n"
    pr_path = write_pr_csv(params.plots_dir / "pr.csv", curve)
    update_model_config(model_dir, model_metrics(result), threshold_tta)
    with tempfile.TemporaryDirectory(prefix="roadseg-eval-") as tmp:
        logged = write_text_atomic(Path(tmp) / params.metrics_path.name, text)
        run_id = log_run(
            register,
            params,
            result,
            {"metrics": [logged], "plots": [pr_path], "reports": figures},
            model_dir,
            data_lines,
        )
    write_text_atomic(params.metrics_path, text)
    return run_id


def run_evaluate(
    params: EvaluateParams,
    data: DataParams,
    tile: TileParams,
    model_dir: Path,
    register: RegisterParams,
    network: NetworkParams | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on the test scenes; writes metrics, plots, figures, model.json;
    returns the metrics (as in eval.json) plus ``mlflow_run_id``.

    Prediction runs with ``tile.workers`` workers. With ``network``, the road network of each
    test scene is scored too (``network_eval``: APLS, TOPO; against the road vectors, or the
    network traced from a label raster).
    """
    model_dir = Path(model_dir)
    data_lines = tilesets.describe(data, tilesets.read_summaries(tile.stats_path))
    entries = list(data.scenes)
    data = tilesets.expand(data, Path(tile.out_dir) / tilesets.PREPARED_DIR)
    scenes = held_out_scenes(data)
    sources = transfer_sources(entries, data)
    others = [s for group in sources.values() for s in group]
    if network is not None:
        _check_centrelines(scenes + others)
    config = read_config(model_dir)
    threshold_tta = _eight_view_threshold(model_dir, params, tile)
    threshold = config.threshold if threshold_tta is None else threshold_tta

    with (
        tempfile.TemporaryDirectory(prefix="roadseg-evaluate-") as tmp,
        parallel.shared_cluster(None, len(scenes) + len(others), tile.workers) as scheduler,
    ):
        scores, network_scores = _score_scenes(
            scenes, model_dir, params, data, tile, network, threshold, scheduler, Path(tmp)
        )
        scenes, unscored = _scored_scenes(scenes, scores, network_scores)
        result, curve = _pooled_metrics(scores, threshold, params.relaxed_slack_px)
        if unscored:
            result["unscored_scenes"] = unscored
        if config.gsd_m:  # every scene's slack on the ground
            result["relaxed_slack_m"] = params.relaxed_slack_px * config.gsd_m
        if others:
            other_scores, other_networks = _score_scenes(
                others, model_dir, params, data, tile, network, threshold, scheduler, Path(tmp)
            )
            result["transfer"] = transfer_metrics(
                other_scores, sources, threshold, params.relaxed_slack_px, other_networks
            )
        _add_scene_reports(result, scores, network_scores, params.class_attribute)
        # Issue 3: how far the U-Net is above band values alone (per-pixel logistic regression).
        add_baseline_metrics(result, scenes, data, tile.out_dir)
        figures = _write_figures(params, scenes, scores, result, threshold, data.bands)

    result["views"] = 8 if params.tta else 1  # what the scores are of: register compares like
    if threshold_tta is not None:
        result["threshold_source"] = "validation chips, mean of the eight flips and rotations"
    run_id = _write_outputs(
        params, register, model_dir, result, curve, figures, data_lines, threshold_tta
    )
    return {**result, "mlflow_run_id": run_id}


def _check_centrelines(scenes: list[SceneSource]) -> None:
    """Refuse a scene's centreline raster (its truth network) that does not fit its image
    before any scene is predicted, not after."""
    from pipeline.network_eval import check_centrelines

    for scene in scenes:
        if scene.centrelines is not None:
            check_centrelines(scene)


def _eight_view_threshold(
    model_dir: Path, params: EvaluateParams, tile: TileParams
) -> float | None:
    """With ``tta``: the eight-view mean's threshold, chosen on the validation chips, which
    the test scenes are cut at and model.json keeps for ``predict --tta``; else (or without
    validation chips) None, and the model's own threshold applies."""
    if not params.tta:
        return None
    chosen = choose_tta_threshold(model_dir, tile, params.precision)  # None: it says why
    if chosen is not None:
        log.info("threshold for the eight-view mean: %.3f", chosen)
    return chosen
