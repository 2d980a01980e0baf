"""The evaluate stage on a tiny scene: real prediction (predict's code), road vectors in
EPSG:4326 burned on a UTM grid, a real MLflow SQLite store; plus pure figure helpers."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from pipeline import evaluate, raster, register
from pipeline.config import DataParams, EvaluateParams, RegisterParams, SceneSource, TileParams
from pipeline.evaluate import (
    EvaluateError,
    held_out_scenes,
    run_evaluate,
    sweep_thresholds,
)
from pipeline.evaluate_figures import (
    ERROR_PALETTE,
    NODATA,
    downsample_factor,
    error_codes,
    reduce_codes,
)
from pipeline.metrics import ThresholdSweep, confusion
from pipeline.scene_truth import SceneWindows

SIZE = 256
CRS = "EPSG:32632"
ORIGIN = (500000.0, 5400000.0)
TRANSFORM = Affine(1.0, 0.0, ORIGIN[0], 0.0, -1.0, ORIGIN[1])
BANDS = ["red", "green", "blue", "nir"]
ROAD_ROW = 100  # a horizontal road centred on this pixel row
RATE_KEYS = (
    "iou",
    "f1",
    "precision",
    "recall",
    "relaxed_precision",
    "relaxed_recall",
    "relaxed_break_even",
)

YELLOW, BLUE, RED, BLACK, GREY = (255, 255, 0), (0, 0, 255), (255, 0, 0), (0, 0, 0), (128, 128, 128)


# ---------------------------------------------------------------------------------- fixtures
def _nodata_corner() -> np.ndarray:
    """True where the image is nodata: a triangle in the top-left corner."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return rows + cols < 48


def _write_image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, size=(4, SIZE, SIZE), dtype=np.uint8)
    img[:, ROAD_ROW - 3 : ROAD_ROW + 3, :] = 200  # the road, 6 m wide
    img[:, :, 150:154] = 190  # an unmapped track: gives the model something to confuse
    img[:, _nodata_corner()] = 0
    return raster.write_geotiff(
        path, img, crs=CRS, transform=TRANSFORM, nodata=0, band_descriptions=BANDS
    )


def _write_roads(path: Path) -> Path:
    import geopandas as gpd
    from shapely.geometry import LineString

    y = ORIGIN[1] - (ROAD_ROW + 0.5)
    line = LineString([(ORIGIN[0] - 20, y), (ORIGIN[0] + SIZE + 20, y)])
    gdf = gpd.GeoDataFrame(
        {"road_class": ["residential"], "width_m": [6.0], "bridge": [False]},
        geometry=[line],
        crs=CRS,
    ).to_crs("EPSG:4326")
    gdf.to_file(path, layer="roads", driver="GPKG")
    return path


def _write_model(folder: Path, threshold: float = 0.5) -> Path:
    import torch

    from pipeline.model import ModelConfig, build_unet, save_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder="resnet18",
        bands=BANDS,
        mean=[90.0] * 4,
        std=[40.0] * 4,
        chip_size=64,
        threshold=threshold,
    )
    return save_model(build_unet(cfg), cfg, folder)


def _params(tmp_path: Path) -> tuple[EvaluateParams, TileParams, RegisterParams]:
    ev = EvaluateParams(
        window=128,
        overlap=32,
        batch_size=4,
        relaxed_slack_px=3,
        metrics_path=tmp_path / "metrics" / "eval.json",
        plots_dir=tmp_path / "plots",
        reports_dir=tmp_path / "reports",
    )
    reg = RegisterParams(experiment="roadseg-test", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    return ev, TileParams(workers=1), reg


@pytest.fixture
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_outputs(
    tmp_path: Path, ev: EvaluateParams, reg: RegisterParams, result: dict, scene: str
) -> None:
    """Checks every run_evaluate output against the returned metrics."""
    import matplotlib.image as mpimg
    from mlflow.tracking import MlflowClient

    on_disk = json.loads(ev.metrics_path.read_text())
    assert on_disk == {k: v for k, v in result.items() if k != "mlflow_run_id"}
    assert set(on_disk["per_scene"]) == {scene}
    for m in (on_disk, on_disk["per_scene"][scene]):
        for key in RATE_KEYS:
            assert 0.0 <= m[key] <= 1.0, key
            assert 0.0 <= m.get(f"{key}_at_test_best", 0.0) <= 1.0, key
    # the test F1-best threshold is at least as good on test as the model's own: optimistic
    assert on_disk["f1_at_test_best"] >= on_disk["f1"]

    with open(ev.plots_dir / "pr.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "threshold",
        "precision",
        "recall",
        "f1",
        "iou",
        "relaxed_precision",
        "relaxed_recall",
    ]
    thresholds = np.array([float(r["threshold"]) for r in rows])
    recall = np.array([float(r["recall"]) for r in rows])
    assert thresholds[0] == 0.0 and thresholds[-1] == 1.0 and np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(recall) <= 1e-9)  # fewer pixels predicted as the threshold rises
    best_row = rows[int(np.argmin(np.abs(thresholds - result["test_best_threshold"])))]
    assert float(best_row["f1"]) == pytest.approx(result["f1_at_test_best"], abs=1e-5)

    for kind in ("error_map", "quicklook"):
        png = mpimg.imread(ev.reports_dir / f"{scene}_{kind}.png")
        assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100

    client = MlflowClient(tracking_uri=reg.tracking_uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.run_name == "evaluate"
    assert client.get_experiment(run.info.experiment_id).name == reg.experiment
    assert run.data.metrics["iou"] == pytest.approx(result["iou"])
    assert run.data.metrics["relaxed_break_even"] == pytest.approx(result["relaxed_break_even"])
    assert run.data.metrics[f"{scene}/iou_at_test_best"] == pytest.approx(
        result["per_scene"][scene]["iou_at_test_best"]
    )
    logged = {
        a.path
        for folder in ("metrics", "plots", "reports")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "metrics/eval.json",
        "plots/pr.csv",
        f"reports/{scene}_error_map.png",
        f"reports/{scene}_quicklook.png",
    } <= logged


# ------------------------------------------------------------------------------- the stage
@pytest.mark.slow
def test_run_evaluate_end_to_end(tmp_path, isolated_mlflow):
    image = _write_image(tmp_path / "scene.tif")
    roads = _write_roads(tmp_path / "scene.roads.gpkg")
    model_dir = _write_model(tmp_path / "model")
    weights_before = _sha256(model_dir / "model.safetensors")
    data = DataParams(
        scenes=[
            SceneSource(name="held_out", image=image, roads=roads, split="test"),
            SceneSource(name="training", image=image, roads=roads, split="train"),
        ],
        bands=BANDS,
    )
    ev, tile, reg = _params(tmp_path)
    ev = ev.model_copy(update={"class_attribute": "road_class"})

    result = run_evaluate(ev, data, tile, model_dir, reg)

    _check_outputs(tmp_path, ev, reg, result, "held_out")
    by_class = result["per_scene"]["held_out"]["recall_by_class"]
    assert list(by_class) == ["residential"] and result["recall_by_class"] == by_class
    assert result["recall_by_class_scenes"] == ["held_out"]  # the scenes the card names
    assert result["road_pixels_by_class"]["residential"] == result["road_pixels"]  # the only road
    saved = json.loads(ev.metrics_path.read_text())
    assert saved["recall_by_class"] == pytest.approx(by_class)
    assert saved["views"] == 1 and "threshold_source" not in saved  # one view, train's threshold
    from mlflow.tracking import MlflowClient

    logged = (
        MlflowClient(tracking_uri=reg.tracking_uri).get_run(result["mlflow_run_id"]).data.metrics
    )
    assert logged["recall_by_class/residential"] == pytest.approx(by_class["residential"])
    assert logged["held_out/recall_by_class/residential"] == pytest.approx(by_class["residential"])
    valid = ~_nodata_corner()
    scene = result["per_scene"]["held_out"]
    assert scene["valid_pixels"] == int(valid.sum())
    assert scene["road_pixels"] == pytest.approx(6 * SIZE, rel=0.2)  # 6 m wide, across the scene
    assert result["threshold"] == 0.5

    model_json = json.loads((model_dir / "model.json").read_text())
    assert model_json["threshold"] == 0.5, "evaluate must not replace the model's threshold"
    assert model_json["metrics"]["test_iou"] == pytest.approx(result["iou"])
    assert model_json["metrics"]["relaxed_break_even"] == pytest.approx(
        result["relaxed_break_even"]
    )
    assert _sha256(model_dir / "model.safetensors") == weights_before


@pytest.mark.slow
def test_eval_json_is_written_only_once_the_mlflow_run_is(tmp_path, isolated_mlflow):
    """The tracking server down at the end of an evaluate: the run fails, and eval.json still
    holds the previous evaluation's scores (those of the release `pipeline evaluate` keeps),
    not new ones beside an old model."""
    import socket

    image = _write_image(tmp_path / "scene.tif")
    roads = _write_roads(tmp_path / "scene.roads.gpkg")
    data = DataParams(
        scenes=[SceneSource(name="held_out", image=image, roads=roads, split="test")], bands=BANDS
    )
    ev, tile, reg = _params(tmp_path)
    ev.metrics_path.parent.mkdir(parents=True)
    ev.metrics_path.write_text('{"iou": 0.41}\n')  # the previous evaluation's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = reg.model_copy(update={"tracking_uri": f"http://127.0.0.1:{closed}"})
    with pytest.raises(LookupError, match="tracking server is unreachable"):
        run_evaluate(ev, data, tile, _write_model(tmp_path / "model"), down)
    assert ev.metrics_path.read_text() == '{"iou": 0.41}\n'
    assert not list(ev.metrics_path.parent.glob("*.tmp*"))


def test_run_evaluate_scores_a_known_prediction(tmp_path, isolated_mlflow, monkeypatch):
    """Label raster truth, a prediction shifted by one pixel: exact expected numbers."""
    image = _write_image(tmp_path / "scene.tif")
    truth = np.zeros((SIZE, SIZE), dtype=np.uint8)
    truth[ROAD_ROW - 2 : ROAD_ROW + 2, :] = 1
    labels = truth.copy()
    labels[200:210, 10:20] = 255  # label nodata: must not count
    raster.write_geotiff(tmp_path / "labels.tif", labels, crs=CRS, transform=TRANSFORM, nodata=255)
    model_dir = _write_model(tmp_path / "model", threshold=0.375)  # off the sweep's grid
    prob = np.full((SIZE, SIZE), 0.1, dtype=np.float32)
    prob[ROAD_ROW - 1 : ROAD_ROW + 3, :] = 0.9  # the road, one pixel too low
    prob[_nodata_corner()] = np.nan

    def fake_predict(scene, out_dir, model_dir, params, workers, scheduler=None):
        return raster.write_geotiff(
            Path(out_dir) / "p.tif", prob, crs=CRS, transform=TRANSFORM, nodata=float("nan")
        )

    monkeypatch.setattr(evaluate, "predict_scene", fake_predict)
    data = DataParams(
        scenes=[
            SceneSource(name="labelled", image=image, labels=tmp_path / "labels.tif", split="test")
        ]
    )
    ev, tile, reg = _params(tmp_path)

    result = run_evaluate(ev, data, tile, model_dir, reg)

    valid = ~_nodata_corner()
    valid[200:210, 10:20] = False
    expected = confusion(prob >= 0.375, truth, valid)
    assert result["valid_pixels"] == int(valid.sum())
    assert result["threshold"] == 0.375
    assert result["iou"] == pytest.approx(expected.iou)
    assert result["precision"] == pytest.approx(expected.precision)
    assert 0.5 < result["iou"] < 1.0
    assert result["relaxed_precision"] == 1.0 and result["relaxed_recall"] == 1.0
    assert result["relaxed_break_even"] == pytest.approx(1.0)
    assert result["test_best_threshold"] == pytest.approx(0.11)  # lowest threshold above 0.1
    assert result["iou_at_test_best"] == pytest.approx(expected.iou)
    _check_outputs(tmp_path, ev, reg, result, "labelled")
    # the model keeps the threshold it came with (chosen on validation by train)
    model_json = json.loads((model_dir / "model.json").read_text())
    assert model_json["threshold"] == 0.375
    assert model_json["metrics"]["test_iou"] == pytest.approx(expected.iou)


@pytest.mark.slow
def test_evaluate_tta_scores_what_predict_tta_writes(tmp_path, scheduler):
    """evaluate.tta: the scored probability is predict --tta's, pixel for pixel, not the plain one."""
    from pipeline.config import PredictOptions
    from pipeline.predict import predict_raster

    image = _write_image(tmp_path / "scene.tif")
    model_dir = _write_model(tmp_path / "model")
    scene = SceneSource(
        name="held_out", image=image, roads=_write_roads(tmp_path / "r.gpkg"), split="test"
    )
    ev, _, _ = _params(tmp_path)
    with_tta = evaluate.predict_scene(
        scene,
        tmp_path / "tta",
        model_dir,
        ev.model_copy(update={"tta": True}),
        workers=1,
        scheduler=scheduler,
    )
    plain = evaluate.predict_scene(
        scene, tmp_path / "plain", model_dir, ev, workers=1, scheduler=scheduler
    )
    reference = predict_raster(
        image,
        tmp_path / "reference.tif",
        PredictOptions(
            model=model_dir,
            window=ev.window,
            overlap=ev.overlap,
            batch_size=ev.batch_size,
            scheduler=scheduler,
            tta=True,
            dtype="float32",
            progress=False,
        ),
    ).output
    read = {
        name: raster.read_band_array(path)
        for name, path in (("tta", with_tta), ("plain", plain), ("reference", reference))
    }
    np.testing.assert_array_equal(read["tta"], read["reference"])
    valid = np.isfinite(read["plain"])
    assert np.abs(read["tta"][valid] - read["plain"][valid]).max() > 1e-3


def test_no_test_scene_names_params(tmp_path):
    data = DataParams(
        scenes=[SceneSource(name="a", image=tmp_path / "a.tif", roads=tmp_path / "a.gpkg")]
    )
    with pytest.raises(EvaluateError, match=r"data\.scenes.*a \(auto\)"):
        held_out_scenes(data)
    ev, tile, reg = _params(tmp_path)
    with pytest.raises(EvaluateError, match="split: test"):
        run_evaluate(ev, data, tile, tmp_path / "no-model", reg)


def test_sweep_includes_the_model_threshold():
    assert len(sweep_thresholds(0.37)) == 119  # 0.01 steps, 0.001 steps at both ends
    th = sweep_thresholds(0.375)
    assert len(th) == 120 and 0.375 in th and np.all(np.diff(th) > 0)
    assert {0.001, 0.005, 0.995} <= set(np.round(th, 6))


def test_a_break_even_below_one_percent_is_resolved():
    """A model that is unsure on unfamiliar imagery: road pixels at 0.006, background at
    0.002 and 0.004. Precision and recall meet between 0.004 and 0.006; on the 0.01 grid
    alone the crossing would be interpolated between 0 and 0.01."""
    from pipeline.metrics import relaxed_break_even

    truth = np.zeros((60, 60), np.uint8)
    truth[:, 30] = 1
    prob = np.full((60, 60), 0.002, np.float32)
    prob[:, 10] = prob[:, 50] = 0.004
    prob[:, 30] = 0.006
    sweep = ThresholdSweep(sweep_thresholds(0.5), rho=0)
    sweep.update(prob, truth)
    value, at = relaxed_break_even(sweep.compute())
    assert value == pytest.approx(1.0) and 0.004 < at <= 0.006


# ------------------------------------------------------------------------------ error map
def test_error_map_colours():
    pred = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    truth = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    valid = np.array([[1, 1, 1], [1, 1, 0]], dtype=bool)
    rgb = ERROR_PALETTE[error_codes(pred, truth, valid)]
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    expected = [[YELLOW, RED, BLUE], [BLACK, YELLOW, GREY]]
    assert rgb.tolist() == [[list(c) for c in row] for row in expected]


def test_downsampled_error_map_keeps_errors_visible():
    codes = np.array(
        [
            [1, 1, 2, 2, 0],
            [1, 4, 2, 3, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    assert reduce_codes(codes, 2).tolist() == [[4, 3, 0], [1, 0, 0]]
    pred = np.zeros((10, 10), bool)
    truth = np.zeros((10, 10), bool)
    truth[3, 3] = True  # one missed road pixel
    codes = error_codes(pred, truth, np.ones((10, 10), bool))
    rgb = ERROR_PALETTE[reduce_codes(codes, downsample_factor(codes.shape, max_side=5))]
    assert rgb.shape == (5, 5, 3)
    assert tuple(rgb[1, 1]) == BLUE and tuple(rgb[0, 0]) == BLACK
    assert (ERROR_PALETTE[reduce_codes(np.ones((4, 4), np.uint8), 4)] == 0).all()


# ------------------------------------------------------------------------ block-wise scoring
@pytest.mark.parametrize("truth_from", ["roads", "labels"])
def test_blockwise_scoring_equals_the_whole_scene(tmp_path, monkeypatch, truth_from):
    """Blocks with a rho margin give exactly the counts and figures of one whole-scene pass,
    with roads and misses crossing block edges, nodata, and a scene that is not a multiple
    of the block or of the overview factor."""
    height, width = 250, 230
    rng = np.random.default_rng(1)
    img = rng.integers(60, 120, size=(4, height, width), dtype=np.uint8)
    img[:, :40, :40] = 0  # nodata corner
    image = raster.write_geotiff(tmp_path / "s.tif", img, crs=CRS, transform=TRANSFORM, nodata=0)
    truth = np.zeros((height, width), np.uint8)
    truth[ROAD_ROW - 3 : ROAD_ROW + 3, :] = 1
    truth[:, 61:65] = 1  # a vertical road across the block edge at 64
    if truth_from == "roads":
        scene = SceneSource(
            name="s", image=image, roads=_write_roads(tmp_path / "s.roads.gpkg"), split="test"
        )
        data = DataParams(scenes=[scene], bands=BANDS)
        with SceneWindows(scene, data) as w:
            truth = w.read(0, 0, width, height)[2].astype(np.uint8)
    else:
        labels = truth.copy()
        labels[150:170, 100:140] = 255  # label nodata across a block edge
        raster.write_geotiff(
            tmp_path / "labels.tif", labels, crs=CRS, transform=TRANSFORM, nodata=255
        )
        scene = SceneSource(name="s", image=image, labels=tmp_path / "labels.tif", split="test")
        data = DataParams(scenes=[scene], bands=BANDS)
    # a prediction that is right, shifted by up to 2 px, and wrong in places, with NaN nodata
    prob = rng.uniform(0, 0.3, size=(height, width)).astype(np.float32)
    prob[np.roll(truth, 2, axis=0) > 0] = 0.8
    prob[:, 200:] = rng.uniform(0, 1, size=(height, 30))
    prob[:40, :40] = np.nan
    pred = raster.write_geotiff(
        tmp_path / "p.tif", prob, crs=CRS, transform=TRANSFORM, nodata=float("nan")
    )
    thresholds = sweep_thresholds(0.45)
    monkeypatch.setattr(
        evaluate, "PNG_MAX_SIDE", 60
    )  # an overview factor (5) that blocks must respect

    whole = evaluate.score_scene(scene, pred, data, thresholds, 3, 0.45, block=4096)
    blocks = evaluate.score_scene(scene, pred, data, thresholds, 3, 0.45, block=64)
    assert blocks.factor == whole.factor == 5
    a, b = whole.sweep.compute(), blocks.sweep.compute()
    for field in ("tp", "fp", "fn", "tn"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.predicted_near_truth, b.predicted_near_truth)
    np.testing.assert_array_equal(a.true_near_prediction, b.true_near_prediction)
    np.testing.assert_array_equal(whole.codes, blocks.codes)
    np.testing.assert_array_equal(whole.valid, blocks.valid)
    np.testing.assert_array_equal(whole.prob, blocks.prob)
    # and the whole pass is the metrics module's own whole-array sweep
    direct = ThresholdSweep(thresholds, 3)
    valid = np.isfinite(prob) & (img[0] != 0)
    if truth_from == "labels":
        valid &= labels != 255
    direct.update(prob, truth > 0, valid)
    c = direct.compute()
    for field in ("tp", "fp", "fn", "tn", "predicted_near_truth", "true_near_prediction"):
        np.testing.assert_array_equal(getattr(a, field), getattr(c, field))
    assert whole.codes.shape == (50, 46)
    assert (whole.codes[:8, :8] == NODATA).all()


# ------------------------------------------------------------------------ recall by road class
def _write_two_class_roads(path: Path) -> Path:
    """A 6 m residential road along ROAD_ROW and a 4 m track down column 150 (4326 on disk)."""
    import geopandas as gpd
    from shapely.geometry import LineString

    y = ORIGIN[1] - (ROAD_ROW + 0.5)
    x = ORIGIN[0] + 150.5
    gdf = gpd.GeoDataFrame(
        {"road_class": ["residential", "track"], "width_m": [6.0, 4.0]},
        geometry=[
            LineString([(ORIGIN[0] - 20, y), (ORIGIN[0] + SIZE + 20, y)]),
            LineString([(x, ORIGIN[1] + 20), (x, ORIGIN[1] - SIZE - 20)]),
        ],
        crs=CRS,
    ).to_crs("EPSG:4326")
    gdf.to_file(path, layer="roads", driver="GPKG")
    return path


def test_a_test_scene_without_a_valid_pixel_is_named_not_scored_as_perfect(
    tmp_path, isolated_mlflow, monkeypatch
):
    """Beside a scored scene, one that is all nodata: its 0/0 figures were a perfect 1.0 in
    per_scene (and in the MLflow run); it is now left out of them and named."""
    image = _write_image(tmp_path / "scene.tif")
    truth = np.zeros((SIZE, SIZE), dtype=np.uint8)
    truth[ROAD_ROW - 2 : ROAD_ROW + 2, :] = 1
    raster.write_geotiff(tmp_path / "labels.tif", truth, crs=CRS, transform=TRANSFORM, nodata=255)
    empty = raster.write_geotiff(
        tmp_path / "empty.tif",
        np.zeros((4, SIZE, SIZE), np.uint8),
        crs=CRS,
        transform=TRANSFORM,
        nodata=0,
        band_descriptions=BANDS,
    )
    prob = np.full((SIZE, SIZE), 0.1, dtype=np.float32)
    prob[ROAD_ROW - 1 : ROAD_ROW + 3, :] = 0.9

    def fake_predict(scene, out_dir, model_dir, params, workers, scheduler=None):
        values = prob if scene.name == "labelled" else np.full_like(prob, np.nan)
        return raster.write_geotiff(
            Path(out_dir) / "p.tif", values, crs=CRS, transform=TRANSFORM, nodata=float("nan")
        )

    monkeypatch.setattr(evaluate, "predict_scene", fake_predict)
    labels = tmp_path / "labels.tif"
    scenes = [
        SceneSource(name="labelled", image=image, labels=labels, split="test"),
        SceneSource(name="blank", image=empty, labels=labels, split="test"),
    ]
    ev, tile, reg = _params(tmp_path)
    model_dir = _write_model(tmp_path / "model")

    result = run_evaluate(ev, DataParams(scenes=scenes), tile, model_dir, reg)

    valid = ~_nodata_corner()
    assert set(result["per_scene"]) == {"labelled"}
    assert result["unscored_scenes"] == ["blank"]
    assert result["iou"] == pytest.approx(confusion(prob >= 0.5, truth == 1, valid).iou)
    assert not (ev.reports_dir / "blank_error_map.png").exists()
    card = register._metric_rows(result, None)
    assert "Not scored (no valid pixel): blank" in card
    # every scene without a valid pixel: nothing to evaluate, said as before
    with pytest.raises(EvaluateError, match="no valid pixel"):
        run_evaluate(ev, DataParams(scenes=scenes[1:]), tile, model_dir, reg)


def test_the_card_names_the_scenes_recall_by_class_covers():
    rows = register._metric_rows(
        {
            "iou": 0.5,
            "recall_by_class": {"track": 0.25},
            "road_pixels_by_class": {"track": 40},
            "recall_by_class_scenes": [f"s{i}" for i in range(7)],
        },
        "road_class",
    )
    assert "over the test scenes with road classes: s0, s1, s2, s3, s4 and 2 more:" in rows
    assert "| track | 40 | 0.250 |" in rows


@pytest.mark.parametrize("block", [4096, 64])
def test_recall_by_road_class_counts_each_class_found_at_the_threshold(tmp_path, block):
    image = _write_image(tmp_path / "scene.tif")
    roads = _write_two_class_roads(tmp_path / "scene.roads.gpkg")
    scene = SceneSource(name="s", image=image, roads=roads, split="test")
    data = DataParams(scenes=[scene], bands=BANDS)
    # per-class truth, burned by the same code from one-class copies of the file
    import geopandas as gpd

    masks = {}
    for cls in ("residential", "track"):
        gdf = gpd.read_file(roads)
        one = tmp_path / f"{cls}.gpkg"
        gdf[gdf.road_class == cls].to_file(one, layer="roads", driver="GPKG")
        with SceneWindows(SceneSource(name=cls, image=image, roads=one, split="test"), data) as w:
            masks[cls] = w.read(0, 0, SIZE, SIZE)[2]
    valid = ~_nodata_corner()
    # the model finds the residential road and the top half of the track, nothing else
    prob = np.full((SIZE, SIZE), 0.1, dtype=np.float32)
    prob[: SIZE // 2][masks["track"][: SIZE // 2]] = 0.6
    prob[masks["residential"]] = 0.8  # where they cross, the residential road's value
    prob[~valid] = np.nan
    pred = raster.write_geotiff(
        tmp_path / "p.tif", prob, crs=CRS, transform=TRANSFORM, nodata=float("nan")
    )

    score = evaluate.score_scene(
        scene, pred, data, sweep_thresholds(0.5), 3, 0.5, block=block, class_attribute="road_class"
    )
    for cls in ("residential", "track"):
        road = masks[cls] & valid
        found = road & (prob >= 0.5)
        assert score.by_class[cls] == (int(road.sum()), int(found.sum()))
    metrics = evaluate.recall_by_class(score.by_class)
    assert metrics["recall_by_class"]["residential"] == 1.0
    assert 0.4 < metrics["recall_by_class"]["track"] < 0.6
    assert metrics["road_pixels_by_class"]["track"] == int((masks["track"] & valid).sum())

    # above 0.6 only the residential road is found: of the track, just the crossing, which
    # counts for both classes
    high = evaluate.score_scene(
        scene, pred, data, sweep_thresholds(0.7), 3, 0.7, block=block, class_attribute="road_class"
    )
    track = masks["track"] & valid
    crossing = track & masks["residential"]
    assert 0 < crossing.sum() < 0.1 * track.sum()
    assert evaluate.recall_by_class(high.by_class)["recall_by_class"] == {
        "residential": 1.0,
        "track": crossing.sum() / track.sum(),
    }


def test_vectors_without_the_class_attribute_are_scored_without_classes_and_a_warning(
    tmp_path, caplog
):
    image = _write_image(tmp_path / "scene.tif")
    roads = _write_two_class_roads(tmp_path / "scene.roads.gpkg")
    scene = SceneSource(name="s", image=image, roads=roads, split="test")
    data = DataParams(scenes=[scene], bands=BANDS)
    pred = raster.write_geotiff(
        tmp_path / "p.tif",
        np.zeros((SIZE, SIZE), np.float32),
        crs=CRS,
        transform=TRANSFORM,
        nodata=float("nan"),
    )
    plain = evaluate.score_scene(scene, pred, data, sweep_thresholds(0.5), 3, 0.5)
    with caplog.at_level("WARNING", logger="pipeline.evaluate"):
        score = evaluate.score_scene(
            scene, pred, data, sweep_thresholds(0.5), 3, 0.5, class_attribute="highway"
        )
    assert score.by_class == {}
    np.testing.assert_array_equal(score.sweep.compute().tp, plain.sweep.compute().tp)
    assert re.search(
        r"recall by road class skipped for s: .*scene.roads.gpkg: no attribute 'highway' "
        r".*\(it has: road_class, width_m\)",
        caplog.text,
    )


def test_metrics_by_class_reach_mlflow_as_flat_keys():
    result = {
        "iou": 0.5,
        "recall_by_class": {"track": 0.25, "motorway": 1.0},
        "per_scene": {"held out": {"iou": 0.5, "recall_by_class": {"track": 0.25}}},
    }
    assert evaluate.flat_metrics(result) == {
        "iou": 0.5,
        "recall_by_class/track": 0.25,
        "recall_by_class/motorway": 1.0,
        "held out/iou": 0.5,
        "held out/recall_by_class/track": 0.25,
    }


def test_several_test_scenes_are_predicted_on_one_cluster(
    tmp_path, isolated_mlflow, local_clusters_started
):
    """Workers start and load the model once for all test scenes; each scene is still scored."""
    image = _write_image(tmp_path / "scene.tif")
    roads = _write_roads(tmp_path / "scene.roads.gpkg")
    model_dir = _write_model(tmp_path / "model")
    data = DataParams(
        scenes=[
            SceneSource(name="east", image=image, roads=roads, split="test"),
            SceneSource(name="west", image=image, roads=roads, split="test"),
        ],
        bands=BANDS,
    )
    ev, tile, reg = _params(tmp_path)
    result = run_evaluate(ev, data, tile, model_dir, reg)
    assert len(local_clusters_started) == 1
    east, west = result["per_scene"]["east"], result["per_scene"]["west"]
    assert east["valid_pixels"] == west["valid_pixels"] == int((~_nodata_corner()).sum())
    assert east["iou"] == pytest.approx(west["iou"])  # the same image, the same pixels


@pytest.mark.slow
def test_transfer_sources_are_scored_apart_from_the_test_scenes(tmp_path, isolated_mlflow):
    """A `transfer: true` scene is predicted and scored like a test scene but reported on its
    own (eval.json's `transfer`, MLflow's transfer/<source>/...), never pooled into the
    headline metrics. Here it is the test scene's own image and roads: its figures must equal
    the test scene's exactly, and the headline must count the test scene's pixels only."""
    from mlflow.tracking import MlflowClient

    from pipeline.config import NetworkParams

    image = _write_image(tmp_path / "scene.tif")
    roads = _write_roads(tmp_path / "scene.roads.gpkg")
    model_dir = _write_model(tmp_path / "model")
    data = DataParams(
        scenes=[
            SceneSource(name="held_out", image=image, roads=roads, split="test"),
            SceneSource(name="elsewhere", image=image, roads=roads, transfer=True),
            SceneSource(name="training", image=image, roads=roads, split="train"),
        ],
        bands=BANDS,
    )
    ev, tile, reg = _params(tmp_path)
    network = NetworkParams(block_size=128, skeleton_tile=64, skeleton_halo_px=16)

    result = run_evaluate(ev, data, tile, model_dir, reg, network)

    assert set(result["per_scene"]) == {"held_out"}
    scene = result["per_scene"]["held_out"]
    assert result["valid_pixels"] == scene["valid_pixels"] == int((~_nodata_corner()).sum())
    other = result["transfer"]["elsewhere"]
    assert other["scenes"] == 1 and other["pixel_size_m"] == pytest.approx(1.0)
    assert (other["pixel_width_m"], other["pixel_height_m"]) == pytest.approx((1.0, 1.0))
    for key in ("iou", "relaxed_break_even", "recall", "valid_pixels", "road_pixels"):
        assert other[key] == pytest.approx(scene[key]), key
    for key in ("apls", "apls_raw", "topo_f1"):  # its road network is scored as the test's
        assert other[key] == pytest.approx(scene[key]), key
    assert other["iou_at_source_best"] >= other["iou"] - 1e-9
    assert other["relaxed_slack_px"] == 3  # a model without a pixel size: rho as given
    assert json.loads(ev.metrics_path.read_text())["transfer"] == result["transfer"]
    logged = MlflowClient(tracking_uri=reg.tracking_uri).get_run(result["mlflow_run_id"])
    assert logged.data.metrics["transfer/elsewhere/iou"] == pytest.approx(other["iou"])
    assert logged.data.metrics["iou"] == pytest.approx(result["iou"])


def test_the_relaxed_slack_is_the_same_on_the_ground_for_every_source(tmp_path):
    """Mnih's 3 px at a 1 m model's pixel size are 3 m: 10 px on a 0.3 m source, 1 px at 3 m;
    rho itself for a model without a pixel size (older models) or rho = 0."""
    from affine import Affine

    from pipeline.evaluate import scene_slack_px

    def scene(size_m: float) -> SceneSource:
        grid = Affine(size_m, 0, 500000, 0, -size_m, 5400000)
        image = raster.write_geotiff(
            tmp_path / f"{size_m}.tif", np.ones((1, 8, 8), np.uint8), crs=CRS, transform=grid
        )
        return SceneSource(name=f"s{size_m}", image=image, labels=image)

    assert [scene_slack_px(3, 1.0, scene(m)) for m in (1.0, 0.3, 0.5, 3.0, 10.0)] == [
        3,
        10,
        6,
        1,
        1,
    ]
    assert scene_slack_px(3, 0.5, scene(1.0)) == 2  # round(1.5): a 0.5 m model's 1.5 m
    assert scene_slack_px(3, None, scene(0.3)) == 3 and scene_slack_px(0, 1.0, scene(0.3)) == 0


def test_a_transfer_scene_cannot_be_trained_on():
    with pytest.raises(ValueError, match="transfer: true holds the whole scene out"):
        SceneSource(name="x", image="x.tif", labels="y.tif", transfer=True, split="train")
    assert SceneSource(name="x", image="x.tif", labels="y.tif", transfer=True).split == "test"


def test_only_transfer_scenes_is_still_no_test_scene(tmp_path):
    data = DataParams(
        scenes=[
            SceneSource(
                name="far", image=tmp_path / "a.tif", labels=tmp_path / "b.tif", transfer=True
            )
        ]
    )
    with pytest.raises(EvaluateError, match="no test scene"):
        held_out_scenes(data)


@pytest.mark.parametrize("block", [4096, 64])
def test_negatives_called_road_counts_the_background_under_a_scenes_negatives(tmp_path, block):
    """A railway (the scene's negatives) crossing both roads: its pixels off the roads are
    counted, those the prediction calls road are the false alarms; with and without classes."""
    import geopandas as gpd
    from shapely.geometry import LineString

    image = _write_image(tmp_path / "scene.tif")
    roads = _write_two_class_roads(tmp_path / "scene.roads.gpkg")
    left, top = TRANSFORM * (0, 0)
    right, bottom = TRANSFORM * (SIZE, SIZE)
    rail = LineString([(left, bottom + 20), (right, top - 20)])
    negatives = tmp_path / "scene.negatives.gpkg"
    gpd.GeoDataFrame({"width_m": [4.0]}, geometry=[rail], crs=CRS).to_file(
        negatives, layer="negatives"
    )
    scene = SceneSource(name="s", image=image, roads=roads, negatives=negatives, split="test")
    data = DataParams(scenes=[scene], bands=BANDS)
    with SceneWindows(scene, data) as w:
        truth = w.read(0, 0, SIZE, SIZE)[2]
    with SceneWindows(SceneSource(name="r", image=image, roads=negatives, split="test"), data) as w:
        band = w.read(0, 0, SIZE, SIZE)[2]
    valid = ~_nodata_corner()
    counted = band & ~truth & valid
    prob = np.full((SIZE, SIZE), 0.1, dtype=np.float32)
    prob[truth] = 0.9
    prob[: SIZE // 2][band[: SIZE // 2]] = 0.7  # the model calls the railway's top half road
    prob[~valid] = np.nan
    pred = raster.write_geotiff(
        tmp_path / "p.tif", prob, crs=CRS, transform=TRANSFORM, nodata=float("nan")
    )
    for attribute in (None, "road_class"):
        score = evaluate.score_scene(
            scene, pred, data, sweep_thresholds(0.5), 3, 0.5, block=block, class_attribute=attribute
        )
        called = counted & (prob >= 0.5)
        assert score.negatives == (int(counted.sum()), int(called.sum()))
        assert 0.3 < called.sum() / counted.sum() < 0.7 and (band & truth & valid).any()
        assert set(score.by_class) == (set() if attribute is None else {"residential", "track"})
    result = {"per_scene": {"s": {}}}
    evaluate._add_negative_false_alarms(result, {"s": score})
    assert result["negatives_called_road"] == called.sum() / counted.sum()
    assert result["per_scene"]["s"]["negative_pixels"] == int(counted.sum())
    # a scene without negatives reports nothing
    plain = SceneSource(name="s", image=image, roads=roads, split="test")
    score = evaluate.score_scene(plain, pred, data, sweep_thresholds(0.5), 3, 0.5, block=block)
    assert score.negatives is None
