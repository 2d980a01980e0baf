"""The register stage: publish the evaluated model to the MLflow registry and move aliases.

A new version of ``road-unet`` is registered with its tags and a model card; the alias
``champion`` moves to it only if its test IoU is at least the current champion's, otherwise
it becomes ``challenger``. Everything MLflow-specific goes through pipeline/registry.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from pipeline import registry, tilesets
from pipeline.atomic import write_text_atomic
from pipeline.chip_format import open_chip_array
from pipeline.config import Params
from pipeline.model_config import ModelConfig, read_config

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def _network_note(metrics: dict) -> str:
    if "apls" not in metrics:
        return ""
    return (
        "\nRoad network metrics: `apls` (both directions `apls_gt_onto_prop`, `apls_prop_onto_gt`) "
        "is APLS as SpaceNet defines it (CosmiQ apls.py: control points every 50 m, 4 m snapping, "
        "harmonic mean of the two directions); `topo_*` is TOPO (Biagioni and Eriksson 2012). Both "
        "score the network `pipeline network` builds from the prediction (params.yaml `network`) "
        "against the scenes' road vectors (a scene with a label raster: against the network "
        "traced the same way from its labels, or from its centreline raster where it has one); "
        "`apls_raw` is the raw skeleton graph without repair. "
        "The champion alias is decided on test IoU.\n"
    )


def _transfer_section(metrics: dict, gsd_m: float | None, test_scenes: int | None) -> str:
    """Where the model holds: the held-out test scenes beside each transfer source."""
    sources = metrics.get("transfer") or {}
    if not sources:
        return (
            "\n## Other sources\nNot measured: add a scene or tile set from another place or "
            "sensor to data.scenes with `transfer: true` and evaluate scores it here.\n"
        )
    gsd = f"{gsd_m:g}" if gsd_m else "?"
    lines = [
        "\n## Other sources (held out whole, never trained on; `transfer: true`)",
        "Predicted as `pipeline predict` would (resampled to the model's pixel size), at the "
        "model's threshold, but \"IoU at its best threshold\" at the source's own F1-best "
        "threshold; APLS of the road network, the mean over the scenes. The relaxed slack is "
        "the same on the ground for every source (`relaxed_slack_px` pixels of the model's "
        "pixel size).\n",
        "| source | scenes | pixel size (m) | IoU | relaxed break-even | recall | IoU at its best threshold | APLS |",
        "|---|---|---|---|---|---|---|---|",
        f"| test scenes (this data) | {test_scenes if test_scenes is not None else '?'} | {gsd} | "
        f"{metrics['iou']:.3f} | {metrics['relaxed_break_even']:.3f} | {metrics['recall']:.3f} | "
        f"{metrics.get('iou_at_test_best', float('nan')):.3f} | {_apls_cell(metrics)} |",
    ]
    for name, m in sources.items():
        lines.append(
            f"| {name} | {m['scenes']:.0f} | {_pixel_size_cell(m)} | {m['iou']:.3f} | "
            f"{m['relaxed_break_even']:.3f} | {m['recall']:.3f} | {m['iou_at_source_best']:.3f} | "
            f"{_apls_cell(m)} |"
        )
    return "\n".join(lines) + "\n"


def _pixel_size_cell(metrics: dict) -> str:
    """The source's pixel size; "wide x tall" for pixels more than 2 % from square."""
    width, height = metrics.get("pixel_width_m"), metrics.get("pixel_height_m")
    if width and height and max(width, height) / min(width, height) > 1.02:
        return f"{width:.2g} x {height:.2g}"
    return f"{metrics['pixel_size_m']:.2g}"


def _apls_cell(metrics: dict) -> str:
    return f"{metrics['apls']:.3f}" if "apls" in metrics else "not scored"


def _metric_rows(m: dict, class_attribute: str | None) -> str:
    """The test metrics' table rows, and recall by road class when evaluated."""
    rows = "\n".join(
        f"| {k} | {v:.4f} |"
        for k, v in m.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )
    if m.get("unscored_scenes"):
        rows += f"\n\nNot scored (no valid pixel): {_names(m['unscored_scenes'])}"
    by_class = m.get("recall_by_class") or {}
    if by_class:
        pixels = m.get("road_pixels_by_class", {})
        covered = m.get("recall_by_class_scenes") or []
        over = f", over the test scenes with road classes: {_names(covered)}" if covered else ""
        rows += (
            f"\n\nRecall by road class (`{class_attribute}`), at the decision threshold{over}:\n\n"
            "| road class | road pixels | recall |\n|---|---|---|\n"
            + "\n".join(f"| {c} | {pixels.get(c, '')} | {r:.3f} |" for c, r in by_class.items())
        )
    return rows


def _names(names: list[str], shown: int = 5) -> str:
    """Scene names for a card line: the first ``shown``, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _tta_threshold_note(config) -> str:
    if config.threshold_tta is None:
        return ""
    return (
        f"; with `predict --tta` {config.threshold_tta:.3f} (F1-best on the same chips "
        "averaged over the eight flips and rotations, chosen by evaluate)"
    )


def _augmentation(train) -> str:
    if not train.augment:
        return "no augmentation"
    zoom = f", zoom up to {1 + train.scale_jitter:g}x" if train.scale_jitter > 0 else ""
    return f"augmentation: flips and rotations, colour jitter {train.colour_jitter:g}{zoom}"


def _normalisation(kind: str) -> str:
    if kind == "percentile":
        return (
            "each raster stretched between its own 2-98 % band percentiles (predict does the same)"
        )
    return "the training chips' band mean and standard deviation"


def model_card(
    params: Params,
    config,
    eval_metrics: dict,
    version_hint: str = "",
    test_scenes: int | None = None,
) -> str:
    """A markdown model card: data, params, metrics, where the model holds, intended use,
    limits (``test_scenes``: how many test scenes the metrics pool)."""
    m = eval_metrics
    rows = _metric_rows(m, params.evaluate.class_attribute)
    scenes = "; ".join(
        tilesets.describe(params.data, tilesets.read_summaries(params.tile.stats_path))
    )
    gsd = f"{config.gsd_m:g} m" if config.gsd_m else "that of the training scenes"
    dtype = config.dtype or "the training scenes' sample type"
    return f"""# {params.register.model_name} {version_hint}

U-Net (segmentation-models-pytorch) with the `{config.encoder}` encoder from roadseg's classifier
zoo (encoder weights: {config.encoder_weights}{f"; fine-tuned from {config.init_from}" if config.init_from else ""}), predicting per-pixel road probability.

## Data
- Scenes: {scenes}
- Bands: {", ".join(config.bands)} ({dtype}); pixel size {gsd}; chip size {config.chip_size} px
- Training data fingerprint: `{config.data_fingerprint}`
- Code commit: `{config.git_commit or "unknown"}`

## Training
- Epochs {params.train.epochs}, batch {params.train.batch_size}, AdamW lr {params.train.lr},
  loss {params.train.loss}, {_augmentation(params.train)}
- Normalisation: {_normalisation(config.normalisation)}

## Metrics on held-out test scenes (whole scenes, stitched like {"predict --tta: the mean of the eight flips and rotations" if params.evaluate.tta else "predict"})
| metric | value |
|---|---|
{rows}

Decision threshold (F1-best on the validation chips, chosen by train): {config.threshold:.3f}{_tta_threshold_note(config)}
{_network_note(m)}{_transfer_section(m, config.gsd_m, test_scenes)}
## Intended use
Road probability maps from {len(config.bands)}-band ({", ".join(config.bands)}) {dtype} imagery
at a pixel size close to {gsd}, for mapping teams to review in a GIS.
`pipeline predict region.tif` (it warns on another sample type or pixel size).

## Limits
- Trained on the scenes above only; other sensors, seasons or resolutions may need
  fine-tuning (see "Other sources" for what was measured).
- Roads under canopy are labelled as road in training and may be over- or under-predicted.
- Probabilities are not calibrated beyond the threshold choice.
"""


class RegisterError(ValueError):
    """The model cannot be registered as it stands; the message names the file."""


def read_evaluation(eval_path: Path, config: ModelConfig, model_dir: Path) -> dict:
    """evaluate's metrics, refused (one line naming the files) when they are not JSON, lack
    the test IoU, or belong to another evaluation than the model's: an evaluate stopped after
    writing them (its MLflow run failed) leaves the previous release beside new scores, which
    must not be registered together."""
    try:
        metrics = json.loads(eval_path.read_text())
    except json.JSONDecodeError as e:
        raise RegisterError(f"{eval_path}: not JSON ({e}); run `pipeline evaluate` again") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("iou"), int | float):
        raise RegisterError(
            f"{eval_path}: no test IoU ('iou'): not evaluate's metrics, or those of an older "
            "roadseg; run `pipeline evaluate` again"
        )
    recorded = config.metrics.get("test_iou")
    if recorded is not None and abs(recorded - metrics["iou"]) > 1e-9:
        raise RegisterError(
            f"{eval_path}: test IoU {metrics['iou']:.6g}, but the model in {model_dir} was "
            f"evaluated at {recorded:.6g}: the two come from different evaluations (one that "
            "stopped part way?); run `pipeline evaluate` again"
        )
    return metrics


def run_register(params: Params, *, model_dir: Path, eval_path: Path) -> dict:
    """Register ``model_dir`` (evaluated) as a new version; returns what was done."""
    reg = params.register
    config = read_config(model_dir)
    eval_metrics = read_evaluation(Path(eval_path), config, Path(model_dir))
    # Test IoU at the model's own threshold (chosen on validation), not the optimistic test-best.
    test_iou = float(eval_metrics["iou"])
    views = int(eval_metrics.get("views", 1))  # 8: scored as predict --tta writes it
    test_set = test_set_id(eval_metrics)
    run_info = json.loads((params.train.out_dir / "run.json").read_text())
    example = _input_example(params, config.in_channels)

    with registry.tracked_run(
        reg.experiment, "train", tracking_default=reg.tracking_uri, run_id=run_info["mlflow_run_id"]
    ) as run_id:
        registry.log_metrics(
            {f"test_{k}": v for k, v in eval_metrics.items() if isinstance(v, int | float)}
        )
        model_uri = registry.log_pyfunc_model(model_dir, example)
        card = model_card(
            params,
            config,
            {k: v for k, v in eval_metrics.items() if k != "per_scene"},
            test_scenes=len(eval_metrics.get("per_scene", {})),
        )
        registry.log_text(card, "model_card.md")
        registry.set_run_description(card)
        registry.set_logged_model_description(model_uri, card)
        log_evaluation(params, Path(eval_path))
        tags = _version_tags(config, test_iou, views, test_set)
        version = registry.register_version(model_uri, reg.model_name, tags, description=card)

    champion = registry.alias_version(reg.model_name, CHAMPION)
    alias, champion_iou = _alias(reg.model_name, version, test_iou, (views, test_set), champion)
    registry.set_alias(reg.model_name, alias, version)

    receipt = {
        "model_name": reg.model_name,
        "version": version,
        "alias": alias,
        "test_iou": test_iou,
        "views": views,
        "test_set": test_set,
        "previous_champion": champion,
        "previous_champion_iou": champion_iou,
        "run_id": run_id,
        "tracking_uri": registry.tracking_uri(reg.tracking_uri),
    }
    write_text_atomic(reg.receipt_path, json.dumps(receipt, indent=2))
    return receipt


def _version_tags(
    config: ModelConfig, test_iou: float, views: int, test_set: str
) -> dict[str, str]:
    """What a registry version is tagged with: the model, its score and how it was scored."""
    return {
        "encoder": config.encoder,
        "encoder_weights": config.encoder_weights,
        "init_from": config.init_from or "-",
        "data_fingerprint": config.data_fingerprint,
        "git_commit": config.git_commit,
        "test_iou": f"{test_iou:.6f}",
        "threshold": f"{config.threshold:.4f}",
        "threshold_tta": "-" if config.threshold_tta is None else f"{config.threshold_tta:.4f}",
        "views": str(views),
        "test_set": test_set,
    }


def test_set_id(eval_metrics: dict) -> str:
    """A short digest of what the test IoU was measured on: each test scene's name, valid
    pixels and road pixels (eval.json's ``per_scene``). Another split, other tiles or
    relabelled roads give another id; a retrained model on the same test data the same."""
    scenes = eval_metrics.get("per_scene", {})
    rows = [(name, s.get("valid_pixels"), s.get("road_pixels")) for name, s in scenes.items()]
    # scenes without a valid pixel, in per_scene as (name, 0, 0) before 2026-12-08: same ids
    rows = sorted(rows + [(name, 0, 0) for name in eval_metrics.get("unscored_scenes", [])])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _not_comparable(tags: dict, views: int, test_set: str) -> str | None:
    """Why the champion's test IoU (its version ``tags``) cannot be compared with a new one
    scored over ``views`` on ``test_set``, or None when it can."""
    champion_views = int(tags.get("views", "1"))  # versions registered before 2026-12-07: 1
    if champion_views != views:
        # the eight-view mean scores higher than the same model's single view
        return f"scored over {views} view(s), the champion over {champion_views}"
    champion_set = tags.get("test_set")  # absent on versions registered before 2026-12-07
    if champion_set is not None and champion_set != test_set:
        return f"scored on other test data (test set {test_set}, the champion's {champion_set})"
    return None


def _alias(
    model_name: str, version: str, test_iou: float, scoring: tuple[int, str], champion: str | None
) -> tuple[str, float | None]:
    """champion when the new version's test IoU is at least the champion's (as the tags keep
    it, 6 decimals: the same model registered again ties), else challenger; the champion's IoU.

    ``scoring`` is (views, test set id) of the new score. IoUs over a different number of views
    or on different test data are not compared: the new version is then a challenger, and the
    log says how to promote it by hand."""
    if champion is None or champion == version:
        return CHAMPION, None
    tags = registry.version_tags(model_name, champion)
    champion_iou = float(tags.get("test_iou", "-1"))
    reason = _not_comparable(tags, *scoring)
    if reason is not None:
        log.warning(
            "%s v%s was %s (champion v%s): their test IoUs (%.4f, %.4f) are not comparable, "
            "so v%s is the challenger; `pipeline models promote %s` makes it the champion",
            model_name, version, reason, champion, test_iou, champion_iou, version, version,
        )  # fmt: skip
        return CHALLENGER, champion_iou
    alias = CHAMPION if float(f"{test_iou:.6f}") >= champion_iou else CHALLENGER
    return alias, champion_iou


def log_evaluation(params: Params, eval_path: Path) -> None:
    """The evaluate stage's results in the training run the new version joins, so that the
    version's source run shows them: ``evaluation/`` holds eval.json, each test scene's error
    map and quicklook, and the precision-recall curve drawn from plots/pr.csv."""
    registry.log_artifact(eval_path, "evaluation")
    for figure in sorted(Path(params.evaluate.reports_dir).glob("*.png")):
        registry.log_artifact(figure, "evaluation")
    pr_csv = Path(params.evaluate.plots_dir) / "pr.csv"
    if pr_csv.is_file():
        fig = pr_curve_figure(pr_csv, params.evaluate.relaxed_slack_px)
        registry.log_figure(fig, "evaluation/pr_curve.png")


def pr_curve_figure(pr_csv: Path, slack_px: int):
    """Precision against recall over thresholds, per pixel and relaxed (``plots/pr.csv``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(pr_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(5, 5))
    for prefix, label in (("", "per pixel"), ("relaxed_", f"relaxed ({slack_px} px)")):
        recall = [float(r[f"{prefix}recall"]) for r in rows]
        precision = [float(r[f"{prefix}precision"]) for r in rows]
        ax.plot(recall, precision, label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Precision-recall on the test scenes (thresholds 0..1)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    plt.close(fig)  # logged by MLflow from the object; closed so figures do not pile up
    return fig


def promote(params: Params, version: str) -> None:
    """Move ``champion`` to ``version`` by hand (the version stops being the challenger)."""
    registry.configure(params.register.tracking_uri)
    versions = {v["version"] for v in registry.list_versions(params.register.model_name)}
    if str(version) not in versions:
        raise LookupError(
            f"{params.register.model_name} has no version {version} (versions: {sorted(versions)})"
        )
    name = params.register.model_name
    registry.set_alias(name, CHAMPION, str(version))
    if registry.alias_version(name, CHALLENGER) == str(version):  # it challenges no one now
        registry.delete_alias(name, CHALLENGER)


def _input_example(params: Params, channels: int) -> np.ndarray:
    """A small real input: the top-left 64 px of the first test (else any) chip."""
    chips_dir = Path(params.tile.out_dir)
    data = tilesets.expand(params.data, chips_dir / tilesets.PREPARED_DIR, check_prepared=False)
    for scene in [s.name for s in data.scenes if s.split == "test"] + [s.name for s in data.scenes]:
        arr = open_chip_array(chips_dir, scene, "images", required=False)
        if arr is not None and len(arr):
            return np.asarray(arr[:1, :, :64, :64], dtype=np.float32)
    return np.zeros((1, channels, 64, 64), np.float32)
