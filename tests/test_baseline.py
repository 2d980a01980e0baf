"""The per-pixel logistic-regression baseline: sampling, threshold, window-by-window scoring,
and what evaluate writes of it (eval.json, MLflow, warnings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from pipeline import baseline, evaluate, raster
from pipeline.config import DataParams, EvaluateParams, RegisterParams, TileParams
from pipeline.metrics import confusion
from tests.conftest import BANDS, scene_entries
from tests.helpers import make_model


def test_best_iou_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    truth = rng.random(500) < 0.2
    prob = np.round(np.clip(0.3 * truth + rng.random(500) * 0.7, 0, 1), 2)  # ties on purpose
    threshold, iou = baseline.best_iou_threshold(prob, truth)
    brute = max((confusion(prob >= t, truth).iou, t) for t in np.unique(prob))
    assert iou == pytest.approx(brute[0]) and threshold == brute[1]


def test_train_pixels_are_deterministic_valid_and_from_train_chips_only(chips_dir):
    x, y = baseline.sample_train_pixels(chips_dir, max_pixels=5000, seed=0)
    x2, y2 = baseline.sample_train_pixels(chips_dir, max_pixels=5000, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert 5000 <= len(y) < 5000 + 200 and x.shape == (len(y), 4)
    assert (x > 0).all()  # nodata (0 in every band) is never sampled
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    train = index[index.split == "train"]
    masks = np.concatenate(
        [np.load(chips_dir / f"{s}.masks.npy")[g.array_index] for s, g in train.groupby("scene")]
    )
    assert y.mean() == pytest.approx((masks == 1).sum() / (masks != 255).sum(), abs=0.03)


def test_a_colour_separable_road_is_found_and_scored_window_by_window(chips_dir, scenes_dir):
    """The fixture scenes paint roads in their own colour: band values alone find them, so the
    baseline is no strawman. Scoring in 100 px windows gives the whole-scene counts."""
    fitted = baseline.fit_baseline(chips_dir, max_pixels=20_000)
    data = DataParams(scenes=scene_entries(scenes_dir), bands=BANDS)
    held = data.scenes[-1]
    counts = baseline.score_scene(fitted, held, data, window=100)
    assert counts.iou > 0.6
    image = np.stack([raster.read_band_array(held.image, b) for b in range(1, 5)])
    valid = raster.read_valid_mask(held.image)
    pred = fitted.predict(image.reshape(4, -1).T).reshape(valid.shape)
    truth = raster.read_band_array(held.labels) == 1
    assert counts == confusion(pred, truth, valid)


def test_no_train_chips_is_an_error_naming_the_index(tmp_path):
    with pytest.raises(baseline.BaselineError, match="index.gpkg: no chip index"):
        baseline.fit_baseline(tmp_path)


def test_evaluate_writes_the_baseline_and_warns_when_it_is_too_strong(
    tmp_path, chips_dir, scenes_dir, monkeypatch, caplog
):
    """A perfect 'U-Net' (the labels as probabilities) on colour-separable roads: the baseline
    is strong (> 0.35) and the ratio under 2, so both warnings fire; keys reach eval.json and
    the MLflow run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    data = DataParams(scenes=scene_entries(scenes_dir), bands=BANDS)
    held = data.scenes[-1]
    info = raster.raster_info(held.image)

    def labels_as_prediction(scene, out_dir, model_dir, params, workers, scheduler=None):
        prob = np.where(raster.read_band_array(scene.labels) == 1, 0.9, 0.1).astype(np.float32)
        prob[~raster.read_valid_mask(scene.image)] = np.nan
        return raster.write_geotiff(
            Path(out_dir) / "p.tif",
            prob,
            crs=info.crs,
            transform=info.transform,
            nodata=float("nan"),
        )

    monkeypatch.setattr(evaluate, "predict_scene", labels_as_prediction)
    ev = EvaluateParams(
        metrics_path=tmp_path / "eval.json",
        plots_dir=tmp_path / "plots",
        reports_dir=tmp_path / "reports",
    )
    reg = RegisterParams(experiment="baseline-test", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    with caplog.at_level(logging.WARNING, logger="pipeline.baseline"):
        result = evaluate.run_evaluate(
            ev,
            data,
            TileParams(out_dir=chips_dir, workers=1),
            make_model(tmp_path / "model", mean=[90.0] * 4, std=[40.0] * 4),
            reg,
        )

    on_disk = json.loads(ev.metrics_path.read_text())
    scene = on_disk["per_scene"]["held"]
    assert on_disk["iou"] == pytest.approx(1.0)
    assert (
        0.6 < scene["baseline_logreg_iou"] == on_disk["baseline_logreg_iou"] < 1.0
    )  # one test scene
    assert on_disk["iou_vs_baseline"] == pytest.approx(1.0 / on_disk["baseline_logreg_iou"])
    assert "too easy" in caplog.text and "under 2x" in caplog.text
    metrics = (
        MlflowClient(tracking_uri=reg.tracking_uri).get_run(result["mlflow_run_id"]).data.metrics
    )
    assert metrics["baseline_logreg_iou"] == pytest.approx(on_disk["baseline_logreg_iou"])
    assert metrics["held/iou_vs_baseline"] == pytest.approx(scene["iou_vs_baseline"])


def test_chips_of_other_bands_skip_the_baseline_with_a_warning(chips_dir, scenes_dir, caplog):
    """Chips tiled with four bands, evaluate asked for three: the baseline cannot score the
    scene (a raw scikit-learn error after every scene was predicted, before); it is left out,
    and the warning says to tile again."""
    data = DataParams(scenes=scene_entries(scenes_dir), bands=BANDS[:3])
    held = data.scenes[-1]
    result = {"iou": 0.5, "per_scene": {"held": {"iou": 0.5}}}
    with caplog.at_level(logging.WARNING, logger="pipeline.baseline"):
        baseline.add_baseline_metrics(result, [held], data, chips_dir)
    assert (
        "baseline_logreg_iou" not in result
        and "baseline_logreg_iou" not in result["per_scene"]["held"]
    )
    assert f"the chips in {chips_dir} have 4 band(s), data.bands names 3" in caplog.text
    assert "run `pipeline tile` again" in caplog.text
