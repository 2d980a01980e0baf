"""Network metrics in evaluate: truth from road vectors (EPSG:4326) on a UTM scene, the
proposal from a probability raster; APLS/TOPO into eval.json, model.json and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import LineString

from pipeline import evaluate, raster
from pipeline.config import (
    DataParams,
    EvaluateParams,
    NetworkParams,
    RegisterParams,
    SceneSource,
    TileParams,
)
from pipeline.network_eval import score_scene_network, truth_network

SIZE = 256
CRS = "EPSG:32632"
ORIGIN = (500000.0, 5400000.0)
TRANSFORM = Affine(1.0, 0.0, ORIGIN[0], 0.0, -1.0, ORIGIN[1])
ROW, COL = 100, 160  # a horizontal and a vertical road cross here
PARAMS = NetworkParams(block_size=128, skeleton_tile=64, skeleton_halo_px=16, seam_margin_px=16)


def _nodata_corner() -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return rows + cols < 48


def _scene(tmp_path: Path) -> SceneSource:
    img = np.full((4, SIZE, SIZE), 90, np.uint8)
    img[:, _nodata_corner()] = 0
    image = raster.write_geotiff(
        tmp_path / "scene.tif", img, crs=CRS, transform=TRANSFORM, nodata=0
    )
    y, x = ORIGIN[1] - (ROW + 0.5), ORIGIN[0] + COL + 0.5
    lines = [
        LineString([(ORIGIN[0] - 20, y), (ORIGIN[0] + SIZE + 20, y)]),  # runs off the scene
        LineString([(x, ORIGIN[1] + 10), (x, ORIGIN[1] - SIZE - 10)]),
    ]
    roads = gpd.GeoDataFrame({"width_m": [6.0, 6.0]}, geometry=lines, crs=CRS).to_crs("EPSG:4326")
    roads.to_file(tmp_path / "scene.roads.gpkg", layer="roads", driver="GPKG")
    return SceneSource(
        name="held_out", image=image, roads=tmp_path / "scene.roads.gpkg", split="test"
    )


def _prediction(tmp_path: Path, gap_prob: float | None = None) -> Path:
    prob = np.full((SIZE, SIZE), 0.02, np.float32)
    prob[ROW - 2 : ROW + 2, :] = 0.9
    prob[:, COL - 2 : COL + 2] = 0.9
    if gap_prob is not None:
        prob[190:196, COL - 2 : COL + 2] = gap_prob  # 6 m of the vertical road under a tree
    prob[_nodata_corner()] = np.nan
    return raster.write_geotiff(
        tmp_path / "prob.tif", prob, crs=CRS, transform=TRANSFORM, nodata=float("nan")
    )


def test_truth_network_is_clipped_to_the_valid_area_and_noded(tmp_path):
    graph = truth_network(_scene(tmp_path))
    degrees = sorted(d for _, d in graph.degree)
    assert degrees == [1, 1, 1, 1, 4]  # the cross, cut at the scene's edges and nodata
    xs = [d["x"] for _, d in graph.nodes(data=True)]
    assert min(xs) >= ORIGIN[0] and max(xs) <= ORIGIN[0] + SIZE + 1e-6


def test_perfect_prediction_scores_one_and_repair_bridges_a_gap(tmp_path):
    scene = _scene(tmp_path)
    perfect = score_scene_network(scene, _prediction(tmp_path), PARAMS, 0.5)
    assert perfect["apls"] > 0.95 and perfect["topo_f1"] > 0.95
    assert perfect["apls_raw"] > 0.9

    gap = score_scene_network(scene, _prediction(tmp_path, gap_prob=0.3), PARAMS, 0.5)
    assert gap["apls"] > 0.95  # bridged
    assert gap["apls_raw"] < gap["apls"] - 0.05  # the raw skeleton keeps the gap
    for key in ("apls_gt_onto_prop", "apls_prop_onto_gt", "topo_precision", "topo_recall"):
        assert 0.0 <= gap[key] <= 1.0


@pytest.mark.slow
def test_evaluate_reports_network_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline.model import ModelConfig, build_unet, save_model

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working dir
    scene = _scene(tmp_path)
    cfg = ModelConfig(
        encoder="resnet18", bands=["red", "green", "blue", "nir"], mean=[90.0] * 4,
        std=[40.0] * 4, chip_size=64, threshold=0.5,
    )  # fmt: skip
    model_dir = save_model(build_unet(cfg), cfg, tmp_path / "model")
    (tmp_path / "pred").mkdir()
    prediction = _prediction(tmp_path / "pred", gap_prob=0.3)

    def known_prediction(scene, out_dir, model_dir, params, workers, scheduler=None):
        target = Path(out_dir) / "p.tif"
        target.write_bytes(prediction.read_bytes())
        return target

    monkeypatch.setattr(evaluate, "predict_scene", known_prediction)
    ev = EvaluateParams(
        metrics_path=tmp_path / "metrics" / "eval.json",
        plots_dir=tmp_path / "plots",
        reports_dir=tmp_path / "reports",
    )
    tile = TileParams(out_dir=tmp_path / "chips", workers=1)
    reg = RegisterParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="t")
    result = evaluate.run_evaluate(ev, DataParams(scenes=[scene]), tile, model_dir, reg, PARAMS)

    saved = json.loads(ev.metrics_path.read_text())
    for key in ("apls", "apls_gt_onto_prop", "apls_prop_onto_gt", "topo_f1", "apls_raw"):
        assert saved[key] == pytest.approx(saved["per_scene"]["held_out"][key])
    assert saved["apls"] > 0.95 and "iou" in saved
    card = json.loads((model_dir / "model.json").read_text())["metrics"]
    assert card["test_apls"] == pytest.approx(saved["apls"])
    assert card["test_topo_f1"] == pytest.approx(saved["topo_f1"])
    client = MlflowClient(tracking_uri=reg.tracking_uri)
    logged = client.get_run(result["mlflow_run_id"])
    assert logged.data.metrics["apls"] == pytest.approx(saved["apls"])
    assert logged.data.metrics["held_out/topo_recall"] == pytest.approx(saved["topo_recall"])
    # where the repaired network loses APLS, beside the error map, and in the run
    points = gpd.read_file(ev.reports_dir / "held_out_apls_points.gpkg", layer="truth_points")
    kept = 1 - (points["mean_d"] * points["pairs"]).sum() / points["pairs"].sum()
    assert kept == pytest.approx(saved["apls_gt_onto_prop"])
    logged_reports = {a.path for a in client.list_artifacts(result["mlflow_run_id"], "reports")}
    assert "reports/held_out_apls_points.gpkg" in logged_reports


def test_scene_without_roads_in_its_valid_area_has_no_network_metrics(tmp_path):
    scene = _scene(tmp_path)
    far = LineString([(ORIGIN[0] + 5000, ORIGIN[1]), (ORIGIN[0] + 6000, ORIGIN[1])])
    gpd.GeoDataFrame(geometry=[far], crs=CRS).to_file(tmp_path / "far.gpkg", driver="GPKG")
    elsewhere = scene.model_copy(update={"roads": tmp_path / "far.gpkg"})
    assert score_scene_network(elsewhere, _prediction(tmp_path), PARAMS, 0.5) == {}


# ------------------------------------------------------- a tile set scored against its labels
TILE = 160  # pixels a side, 1 m each
FILL = 24  # left columns of the tile are white fill (nodata), the horizontal road runs into it


def _tile_set_scene(tmp_path: Path, centrelines: bool = False) -> tuple[SceneSource, DataParams]:
    """A Massachusetts-like tile set (PNG, no georeferencing, 0/255 masks, white fill)
    prepared by `pipeline tile`: the test tile as evaluate sees it, on its local grid. With
    ``centrelines``, each tile also ships a centreline mask that draws the horizontal road
    alone (1 px on row 81), as RoadNet ships `centerline.png` beside its surface labels."""
    from pipeline import tilesets
    from pipeline.cli import main
    from pipeline.config import load_params
    from tests.test_tilesets import params_file, write_image

    rng = np.random.default_rng(0)
    for stem in ("t1", "t2"):
        image = rng.integers(20, 200, (3, TILE, TILE), dtype=np.uint8)
        image[:, :, :FILL] = 255
        mask = np.zeros((TILE, TILE), np.uint8)
        mask[78:85, :] = 255  # 7 px bands, as Massachusetts draws its roads
        mask[:, 98:105] = 255
        write_image(tmp_path / "set" / "images" / f"{stem}.png", image, "PNG")
        write_image(tmp_path / "set" / "masks" / f"{stem}.png", mask, "PNG")
        centre = np.zeros((TILE, TILE), np.uint8)
        centre[81, :] = 255
        write_image(tmp_path / "set" / "centres" / f"{stem}.png", centre, "PNG")
    entry = {
        "name": "mass", "root": str(tmp_path / "set"), "images": "images/*.png",
        "labels": "masks/{stem}.png", "pixel_size_m": 1.0,
        "label": {"road": [255], "background": [0]}, "fill": [255, 255, 255],
        "split": {"val_fraction": 0.0, "test_fraction": 0.0, "test": ["t1"]},
    }  # fmt: skip
    if centrelines:
        entry["centrelines"] = "centres/{stem}.png"
    params = params_file(tmp_path, [entry])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    data = tilesets.expand(load_params(params).data, tmp_path / "chips" / "tilesets")
    (scene,) = [s for s in data.scenes if s.split == "test"]
    return scene, data


def _tile_prediction(scene: SceneSource, folder: Path, drop_vertical: bool = False) -> Path:
    info = raster.raster_info(scene.labels)
    labels = raster.read_band_array(scene.labels)
    prob = np.where(labels == 1, 0.9, 0.02).astype(np.float32)
    if drop_vertical:
        prob[:, 98:105] = np.where(prob[:, 98:105] > 0.5, 0.02, prob[:, 98:105])
        prob[78:85, 98:105] = 0.9  # the crossing stays, the vertical road is gone
    prob[:, :FILL] = np.nan
    folder.mkdir(exist_ok=True)
    return raster.write_geotiff(
        folder / "p.tif", prob, crs=info.crs, transform=info.transform, nodata=float("nan")
    )


def test_truth_mask_of_a_tile_is_the_labels_inside_the_imagery(tmp_path):
    from pipeline.network_eval import MASK_NODATA, write_truth_mask

    scene, data = _tile_set_scene(tmp_path)
    mask = raster.read_band_array(write_truth_mask(scene, data, tmp_path / "m.tif"))
    assert (mask[:, :FILL] == MASK_NODATA).all()  # the road runs on into the fill: not truth
    assert (mask[78:85, FILL:] == 1).all() and (mask[:, 98:105] == 1).all()
    assert set(np.unique(mask[:, FILL:])) == {0, 1}
    assert raster.raster_info(tmp_path / "m.tif").crs == raster.raster_info(scene.image).crs


def test_a_tile_set_scene_is_scored_against_the_network_of_its_labels(tmp_path):
    scene, data = _tile_set_scene(tmp_path)
    assert scene.roads is None and scene.labels is not None
    perfect = score_scene_network(scene, _tile_prediction(scene, tmp_path / "a"), PARAMS, 0.5, data)
    assert perfect["apls"] > 0.95 and perfect["topo_f1"] > 0.95
    half = score_scene_network(
        scene, _tile_prediction(scene, tmp_path / "b", drop_vertical=True), PARAMS, 0.5, data
    )
    # the horizontal road found (136 m of 296 m), the vertical one missed: recall-side APLS low
    assert half["apls_gt_onto_prop"] < 0.6 and half["apls_prop_onto_gt"] > 0.9
    assert half["topo_recall"] < 0.6 < half["topo_precision"]
    assert not list((tmp_path / "b").glob("*truth*"))  # the traced truth mask is removed


def test_a_tile_sets_centrelines_are_its_truth_network(tmp_path):
    """RoadNet's layout: surface labels and a centreline mask per tile. The truth network is
    the centrelines' (here the horizontal road alone, inside the imagery), not the labels'
    skeleton: a proposal of that road alone scores as perfect against it."""
    from pipeline.network_eval import MASK_NODATA, label_truth_network, write_truth_mask

    scene, data = _tile_set_scene(tmp_path, centrelines=True)
    centres = raster.read_band_array(scene.centrelines)
    assert (centres[:, :FILL] == MASK_NODATA).all() and (centres[81, FILL:] == 1).all()
    assert centres[:, FILL:].sum() == TILE - FILL  # one 1 px line
    mask = raster.read_band_array(write_truth_mask(scene, data, tmp_path / "m.tif"))
    np.testing.assert_array_equal(mask, centres)
    truth = label_truth_network(scene, data, PARAMS, tmp_path)
    length = sum(float(d["length_m"]) for *_, d in truth.edges(data=True))
    assert length == pytest.approx(TILE - FILL, abs=6)  # the labels' skeleton: 136 + 160 m
    horizontal = _tile_prediction(scene, tmp_path / "b", drop_vertical=True)
    scores = score_scene_network(scene, horizontal, PARAMS, 0.5, data)
    assert scores["apls"] > 0.9 and scores["topo_f1"] > 0.9


def test_a_centreline_raster_that_does_not_fit_is_refused(tmp_path):
    """Read pixel for pixel, a centreline raster on another grid, of several bands or marking
    road with 255 would be a wrong (or an empty) truth network without a word: refused,
    naming the file and what differs."""
    from pipeline.network_eval import check_centrelines, write_truth_mask
    from pipeline.scene_truth import TruthError

    scene, data = _tile_set_scene(tmp_path)
    info = raster.raster_info(scene.image)
    line = np.zeros((1, TILE, TILE), np.uint8)
    line[0, 81] = 1

    def centrelines(name, values, crs=info.crs, transform=info.transform):
        path = raster.write_geotiff(tmp_path / name, values, crs=crs, transform=transform)
        return scene.model_copy(update={"centrelines": path})

    shifted = info.transform * Affine.translation(5, 0)
    cases = {
        "size.tif": (line[:, :10, :10], {}, "size 10x10 vs 160x160"),
        "crs.tif": (line, {"crs": "EPSG:32632"}, "CRS EPSG:32632 vs"),
        "origin.tif": (line, {"transform": shifted}, "origin"),
        "rgb.tif": (np.concatenate([line] * 3), {}, "3 bands; a scene's centreline raster is one"),
    }
    for name, (values, grid, said) in cases.items():
        with pytest.raises(TruthError, match=f"{name}: .*{said}"):
            check_centrelines(centrelines(name, values, **grid))
    with pytest.raises(TruthError, match=r"255.tif: values other than 0 and 1 \(e.g. 255\)"):
        write_truth_mask(centrelines("255.tif", line * 255), data, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_the_truth_of_a_tile_does_not_follow_the_cleaning_settings(tmp_path):
    """A sweep of `network` cleaning settings scores every proposal against one truth."""
    from pipeline.network_eval import label_truth_network

    scene, data = _tile_set_scene(tmp_path)
    plain = label_truth_network(scene, data, PARAMS, tmp_path)
    strict = PARAMS.model_copy(update={"min_component_m": 10_000.0, "spur_min_m": 500.0})
    swept = label_truth_network(scene, data, strict, tmp_path)
    assert swept.number_of_edges() == plain.number_of_edges() > 0
    dropped = score_scene_network(scene, _tile_prediction(scene, tmp_path / "a"), strict, 0.5, data)
    assert dropped["apls"] == 0.0  # the proposal, not the truth, lost every piece under 10 km


def test_a_test_scene_with_an_empty_road_file_has_no_network_metrics(tmp_path, caplog):
    """A SpaceNet chip without roads (0-byte GeoJSON) held out for testing: no network."""
    scene = _scene(tmp_path)
    (tmp_path / "none.geojson").write_bytes(b"")
    empty = scene.model_copy(update={"roads": tmp_path / "none.geojson"})
    assert truth_network(empty).number_of_edges() == 0
    with caplog.at_level("WARNING", logger="pipeline.network_eval"):
        assert score_scene_network(empty, _prediction(tmp_path), PARAMS, 0.5) == {}
    assert "held_out has no road in its valid area" in caplog.text
