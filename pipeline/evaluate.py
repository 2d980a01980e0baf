"""The evaluate stage: predict each held-out test scene whole, with predict's own code, and
score it against the scene's roads.

Writes (see docs/formats.md): ``metrics/eval.json`` (DVC metrics), ``plots/pr.csv`` (DVC plots),
``reports/<scene>_error_map.png`` and ``<scene>_quicklook.png``; merges the test metrics into
the model folder's ``model.json``; logs all of it to an MLflow run ``evaluate``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import parallel, raster, registry, tilesets
from pipeline.atomic import atomic_path, write_text_atomic
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
from pipeline.metrics import (
    DEFAULT_THRESHOLDS,
    SweepResult,
    ThresholdSweep,
    best_f1_threshold,
    relaxed_break_even,
)
from pipeline.model_config import CONFIG_FILE, read_config
from pipeline.scene_truth import SceneWindows, TruthError

log = logging.getLogger(__name__)

# Thresholds of the sweep, 0.00..1.00 (the same grid train chooses the model's threshold on).
SWEEP_THRESHOLDS = DEFAULT_THRESHOLDS
PNG_MAX_SIDE = 1024  # figures of larger scenes are downsampled to at most this many pixels a side
EVAL_BLOCK = 1024  # a test scene is scored in blocks of about this many pixels a side

# Error map classes, in increasing priority when a downsampled block holds several.
NODATA, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)
ERROR_PALETTE = np.array(
    [
        [128, 128, 128],  # nodata: grey
        [0, 0, 0],  # background correctly left out: black
        [255, 255, 0],  # road found: yellow
        [255, 0, 0],  # false alarm: red
        [0, 0, 255],  # road missed: blue
    ],
    dtype=np.uint8,
)
ERROR_LABELS = ("nodata", "background", "road found (TP)", "false alarm (FP)", "road missed (FN)")


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


# ------------------------------------------------------------------------------------ inputs
def held_out_scenes(data: DataParams) -> list[SceneSource]:
    """The scenes held out whole for testing (``split: test`` in params.yaml's data.scenes)."""
    scenes = [s for s in data.scenes if s.split == "test"]
    if not scenes:
        names = ", ".join(f"{s.name} ({s.split})" for s in data.scenes)
        raise EvaluateError(
            f"no test scene: evaluation needs at least one scene with `split: test` in params.yaml "
            f"data.scenes (scenes now: {names})"
        )
    return scenes


def sweep_thresholds(model_threshold: float) -> np.ndarray:
    """The sweep's thresholds, 0.00..1.00 in steps of 0.01, plus the model's own threshold."""
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
        classes = {}
        if class_attribute:
            try:
                classes = windows.road_classes(class_attribute)
            except TruthError as exc:  # a report the data cannot give: skip it, score the rest
                log.warning("evaluate: recall by road class skipped for %s: %s", scene.name, exc)
        by_class = {name: [0, 0] for name in classes}
        height, width = windows.info.height, windows.info.width
        if (predicted.ds.height, predicted.ds.width) != (height, width):
            raise EvaluateError(
                f"{prediction}: prediction grid {predicted.ds.width}x{predicted.ds.height} differs "
                f"from {scene.image} ({width}x{height})"
            )
        factor = downsample_factor((height, width), PNG_MAX_SIDE)
        step = factor * math.ceil(block / factor)  # block origins on the overview's grid
        small = (math.ceil(height / factor), math.ceil(width / factor))
        codes = np.full(small, NODATA, dtype=np.uint8)
        prob_small = np.full(small, np.nan, dtype=np.float32)
        valid_small = np.zeros(small, dtype=bool)
        sweep = ThresholdSweep(thresholds, rho)
        for r0 in range(0, height, step):
            for c0 in range(0, width, step):
                r1, c1 = min(r0 + step, height), min(c0 + step, width)
                # the block plus a margin of rho pixels, cut at the scene's edges
                rr0, cc0 = max(0, r0 - rho), max(0, c0 - rho)
                rr1, cc1 = min(height, r1 + rho), min(width, c1 + rho)
                _, valid, truth = windows.read(cc0, rr0, cc1 - cc0, rr1 - rr0)
                prob = raster.read_window(predicted, cc0, rr0, cc1 - cc0, rr1 - rr0)[0][0].astype(
                    np.float32
                )
                valid &= np.isfinite(prob)
                core = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
                sweep.update(prob, truth, valid, core=core)
                p, t, v = prob[core], truth[core], valid[core]
                reduced = reduce_codes(error_codes(p >= threshold, t, v), factor)
                at = (
                    slice(r0 // factor, r0 // factor + reduced.shape[0]),
                    slice(c0 // factor, c0 // factor + reduced.shape[1]),
                )
                codes[at] = reduced
                prob_small[at] = np.where(v, p, np.nan)[::factor, ::factor]
                valid_small[at] = v[::factor, ::factor]
                if classes:
                    found = v & (p >= threshold)
                    for name, polygons in classes.items():
                        road = windows.burn(polygons, c0, r0, c1 - c0, r1 - r0)
                        by_class[name][0] += int(np.count_nonzero(road & v))
                        by_class[name][1] += int(np.count_nonzero(road & found))
    return SceneScore(
        sweep=sweep,
        codes=codes,
        prob=prob_small,
        valid=valid_small,
        factor=factor,
        by_class={k: (a, b) for k, (a, b) in by_class.items()},
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


# ----------------------------------------------------------------------------------- figures
def error_codes(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel class (NODATA, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE)."""
    codes = np.full(pred.shape, TRUE_NEGATIVE, dtype=np.uint8)
    codes[pred & truth] = TRUE_POSITIVE
    codes[pred & ~truth] = FALSE_POSITIVE
    codes[~pred & truth] = FALSE_NEGATIVE
    codes[~valid] = NODATA
    return codes


def downsample_factor(shape: tuple[int, int], max_side: int = PNG_MAX_SIDE) -> int:
    """Smallest integer factor that brings both sides to ``max_side`` or less."""
    return max(1, math.ceil(max(shape) / max_side))


def reduce_codes(codes: np.ndarray, factor: int) -> np.ndarray:
    """Downsample class codes by ``factor``; a block shows its highest-priority class, so a
    one-pixel road error stays visible in an overview (missed > false alarm > found > rest)."""
    if factor == 1:
        return codes
    h, w = codes.shape
    hp, wp = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
    padded = np.full((hp, wp), NODATA, dtype=codes.dtype)
    padded[:h, :w] = codes
    return padded.reshape(hp // factor, factor, wp // factor, factor).max(axis=(1, 3))


def rgb_band_indexes(bands: list[str], count: int) -> list[int]:
    """1-based indexes of red, green, blue by band name; else the first three (or band 1)."""
    names = [b.lower() for b in bands]
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) + 1 for c in ("red", "green", "blue")]
    return [1, 2, 3] if count >= 3 else [1, 1, 1]


def stretch(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) floats in 0..1, each band stretched between its 2nd and 98th
    percentiles over valid pixels (raw uint8/uint16 imagery is rarely full-range)."""
    out = np.zeros(image.shape[1:] + (image.shape[0],), dtype=np.float32)
    for i, band in enumerate(image.astype(np.float32)):
        values = band[valid]
        lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def _new_figure(shape: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = shape
    fig = Figure(figsize=(8, 8 * h / w + 0.8), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def write_error_map(path: Path, codes: np.ndarray, title: str) -> Path:
    """A scene's error classes (``error_codes``, at overview resolution) as a PNG with a legend."""
    from matplotlib.patches import Patch

    rgb = ERROR_PALETTE[codes]
    fig = _new_figure(rgb.shape[:2])
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    handles = [
        Patch(color=ERROR_PALETTE[i] / 255, label=ERROR_LABELS[i]) for i in range(len(ERROR_LABELS))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    _save_figure(fig, path)
    return path


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")


def write_quicklook(
    path: Path,
    image: Path,
    score: SceneScore,
    bands: list[str],
    title: str,
    declared: raster.BandSpec | None = None,
) -> Path:
    """The scene's RGB with the road probability overlaid (transparent where it is low).
    ``declared``: the scene's own band declaration (``raster.band_plan``)."""
    plan = raster.band_plan(image, bands, declared)
    valid, prob = score.valid, score.prob
    rgb_idx = [plan.bands[i - 1] for i in rgb_band_indexes(bands, len(plan.bands))]
    rgb = stretch(raster.read_decimated(image, rgb_idx, *valid.shape), valid)
    fig = _new_figure(valid.shape)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    overlay = np.nan_to_num(prob, nan=0.0)
    im = ax.imshow(overlay, cmap="plasma", vmin=0, vmax=1, alpha=np.clip(overlay, 0, 1) * 0.8)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="road probability")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)
    return path


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


def update_model_config(model_dir: Path, metrics: dict[str, float]) -> Path:
    """Merge ``metrics`` into model.json's metrics; threshold and weights untouched."""
    config = read_config(model_dir)
    config.metrics = {**config.metrics, **{k: float(v) for k, v in metrics.items()}}
    return write_text_atomic(Path(model_dir) / CONFIG_FILE, config.model_dump_json(indent=2))


def _metric_key(scene: str) -> str:
    """A scene name as MLflow accepts it in metric keys."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", scene)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numbers as they are, one level of nested dicts (by class) as ``<name>/<class>``."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, int | float):
            flat[f"{prefix}{k}"] = float(v)
        elif isinstance(v, dict) and k != "per_scene":
            flat.update({f"{prefix}{k}/{_metric_key(c)}": float(x) for c, x in v.items()})
    return flat


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Overall metrics as they are, per-scene ones as ``<scene>/<metric>``, metrics by road
    class as ``[<scene>/]<metric>/<class>``."""
    flat = _flat(result)
    for scene, metrics in result.get("per_scene", {}).items():
        flat.update(_flat(metrics, f"{_metric_key(scene)}/"))
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
    test scene with road vectors is scored too (``network_eval``: APLS, TOPO).
    """
    model_dir = Path(model_dir)
    data_lines = tilesets.describe(data, tilesets.read_summaries(tile.stats_path))
    data = tilesets.expand(data, Path(tile.out_dir) / tilesets.PREPARED_DIR)
    scenes = held_out_scenes(data)
    config = read_config(model_dir)
    thresholds = sweep_thresholds(config.threshold)
    rho = params.relaxed_slack_px

    with (
        tempfile.TemporaryDirectory(prefix="roadseg-evaluate-") as tmp,
        parallel.shared_cluster(None, len(scenes), tile.workers) as scheduler,
    ):
        scores: dict[str, SceneScore] = {}
        network_scores: dict[str, dict[str, float]] = {}
        for scene in scenes:
            log.info("evaluate: predicting %s", scene.name)
            prediction = predict_scene(
                scene, Path(tmp), model_dir, params, tile.workers, scheduler=scheduler
            )
            scores[scene.name] = score_scene(
                scene,
                prediction,
                data,
                thresholds,
                rho,
                config.threshold,
                class_attribute=params.class_attribute,
            )
            if network is not None and scene.roads is not None:
                from pipeline.network_eval import score_scene_network

                log.info("evaluate: road network of %s", scene.name)
                scored = score_scene_network(
                    scene, prediction, network, network.threshold or config.threshold
                )
                if scored:
                    network_scores[scene.name] = scored
            prediction.unlink()  # a test scene's probability raster can be large
            if scores[scene.name].sweep.n_true == 0:
                log.warning(
                    "evaluate: test scene %s has no road pixels in its valid area", scene.name
                )
        sweeps = {name: score.sweep for name, score in scores.items()}

        pooled = ThresholdSweep(thresholds, rho)
        for sweep in sweeps.values():
            pooled += sweep
        if pooled.n_valid == 0:
            raise EvaluateError(
                "the test scenes have no valid pixel (all nodata?): nothing to evaluate"
            )
        curve = pooled.compute()
        test_best = best_f1_threshold(curve)  # an optimistic reference, never the model's
        result: dict[str, Any] = {
            **summarize(curve, config.threshold, test_best),
            "test_best_threshold": test_best,
        }
        result["relaxed_slack_px"] = rho
        result["per_scene"] = {
            name: summarize(s.compute(), config.threshold, test_best) for name, s in sweeps.items()
        }
        if params.class_attribute:
            pooled_by_class: dict[str, tuple[int, int]] = {}
            for name, score in scores.items():
                result["per_scene"][name].update(recall_by_class(score.by_class))
                for cls, (road, found) in score.by_class.items():
                    old = pooled_by_class.get(cls, (0, 0))
                    pooled_by_class[cls] = (old[0] + road, old[1] + found)
            result.update(recall_by_class(pooled_by_class))

        for name, values in network_scores.items():
            result["per_scene"][name].update(values)
        if network_scores:  # a network metric over scenes is the mean of the scenes' values
            for key in next(iter(network_scores.values())):
                result[key] = float(np.mean([v[key] for v in network_scores.values()]))

        # Issue 3: how far the U-Net is above band values alone (per-pixel logistic regression).
        add_baseline_metrics(result, scenes, data, tile.out_dir)

        # Figures show the model as it is used: at its own threshold.
        params.reports_dir.mkdir(parents=True, exist_ok=True)
        figures: list[Path] = []
        for scene in scenes:
            score = scores[scene.name]
            m = result["per_scene"][scene.name]
            title = (
                f"{scene.name}: threshold {config.threshold:.2f} (from validation), "
                f"IoU {m['iou']:.3f}, F1 {m['f1']:.3f}, "
                f"relaxed break-even {m['relaxed_break_even']:.3f} (rho {rho} px)"
            )
            figures.append(
                write_error_map(
                    params.reports_dir / f"{scene.name}_error_map.png", score.codes, title
                )
            )
            figures.append(
                write_quicklook(
                    params.reports_dir / f"{scene.name}_quicklook.png",
                    scene.image,
                    score,
                    data.bands,
                    scene.name,
                    scene.bands,
                )
            )

    metrics_path = write_text_atomic(params.metrics_path, json.dumps(result, indent=2) + "\n")
    pr_path = write_pr_csv(params.plots_dir / "pr.csv", curve)
    update_model_config(model_dir, model_metrics(result))
    run_id = log_run(
        register,
        params,
        result,
        {"metrics": [metrics_path], "plots": [pr_path], "reports": figures},
        model_dir,
        data_lines,
    )
    return {**result, "mlflow_run_id": run_id}
