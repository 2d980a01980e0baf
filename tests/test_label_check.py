"""`pipeline label-check`: the shift of OSM labels against the imagery, and what they miss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from affine import Affine

from pipeline.cli import main
from pipeline.config import DataParams, LabelCheckParams, SceneSource
from pipeline.label_check import check_labels, check_scene
from pipeline.raster import write_geotiff

from .conftest import BANDS, UTM
from .osm_data import write_osm

ORIGIN = (500000.0, 5400000.0)
SIZE = 256
# (x0, y0, x1, y1) offsets from the top-left corner in metres (y down), full width, highway
ROADS = [
    ((-20, 60, 276, 60), 6.0, "residential"),
    ((-20, 170, 276, 170), 8.0, "secondary"),
    ((80, -20, 80, 276), 10.0, "primary"),
    ((190, -20, 190, 276), 6.0, "residential"),
]
EXTRA_ROAD_X = 130  # on the imagery and in the model's output, missing from the labels


def _paint(size: int, roads, seed: int = 0) -> np.ndarray:
    """Road probability-like mask of ``roads`` (axis-aligned bands) on a size x size grid."""
    out = np.zeros((size, size), np.float32)
    for (x0, y0, _x1, y1), width, _ in roads:
        half = width / 2
        if y0 == y1:
            out[max(0, int(y0 - half)) : int(y0 + half), :] = 1
        else:
            out[:, max(0, int(x0 - half)) : int(x0 + half)] = 1
    return out


@pytest.fixture
def scene_dir(tmp_path):
    rng = np.random.default_rng(0)
    roads = _paint(SIZE, ROADS) > 0
    img = rng.normal(90, 12, (4, SIZE, SIZE))
    img[:, roads] = rng.normal(175, 8, (4, int(roads.sum())))
    transform = Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1])
    write_geotiff(
        tmp_path / "ortho.tif",
        np.clip(img, 1, 255).astype(np.uint8),
        crs=UTM,
        transform=transform,
        band_descriptions=BANDS,
    )
    return tmp_path


def _osm(path, east: float, north: float):
    """The roads as OSM ways, drawn ``east``/``north`` metres away from where the image has them."""
    ways = []
    for (x0, y0, x1, y1), width, highway in ROADS:
        coords = [
            (ORIGIN[0] + x0 + east, ORIGIN[1] - y0 + north),
            (ORIGIN[0] + x1 + east, ORIGIN[1] - y1 + north),
        ]
        ways.append((coords, {"highway": highway, "width": str(width)}))
    return write_osm(path, ways)


PARAMS = LabelCheckParams(window_px=256, windows=2, max_shift_m=12)


def test_edges_find_the_shift_of_osm_labels_and_a_declared_offset_removes_it(scene_dir):
    roads = _osm(scene_dir / "off.osm", east=6.0, north=-4.0)  # 6 m east, 4 m south
    scene = SceneSource(name="ortho", image=scene_dir / "ortho.tif", roads=roads)
    data = DataParams(scenes=[scene], bands=BANDS)
    found = check_scene(scene, data, PARAMS)
    assert (found.shift_east_m, found.shift_north_m) == pytest.approx((-6.0, 4.0), abs=1.0)
    assert found.flagged and found.response == "edges"
    assert found.peak_to_median >= PARAMS.min_clarity and found.clear

    corrected = scene.model_copy(update={"label_offset_m": (-6.0, 4.0)})
    again = check_scene(corrected, data.model_copy(update={"scenes": [corrected]}), PARAMS)
    assert again.shift_m <= 1.0 and not again.flagged
    assert again.declared_offset_m == (-6.0, 4.0)


def test_labels_in_place_are_not_flagged(scene_dir):
    roads = _osm(scene_dir / "good.osm", east=0.0, north=0.0)
    scene = SceneSource(name="ortho", image=scene_dir / "ortho.tif", roads=roads)
    found = check_scene(scene, DataParams(scenes=[scene], bands=BANDS), PARAMS)
    assert found.shift_m <= 1.0 and not found.flagged


def test_a_first_models_probabilities_give_the_shift_and_the_missed_roads(scene_dir):
    probs = scene_dir / "probs"
    probs.mkdir()
    extra = [((EXTRA_ROAD_X, -20, EXTRA_ROAD_X, 276), 6.0, "driveway")]
    prob = _paint(SIZE, ROADS + extra)
    write_geotiff(
        probs / "ortho_roads.tif",
        np.round(prob * 254).astype(np.uint8),
        crs=UTM,
        transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]),
        nodata=255,
    )
    roads = _osm(scene_dir / "off.osm", east=6.0, north=-4.0)
    scene = SceneSource(name="ortho", image=scene_dir / "ortho.tif", roads=roads)
    [found] = check_labels(DataParams(scenes=[scene], bands=BANDS), PARAMS, probs)
    assert found.response == "probability"
    assert (found.shift_east_m, found.shift_north_m) == pytest.approx((-6.0, 4.0), abs=1.0)
    # the unlabelled road runs 256 m; where it crosses the two labelled horizontal roads (now
    # at y 64 +- 3 and 174 +- 4 m) it is within 10 m of a label over 26 + 28 m: 202 m missed.
    # Every labelled road is near its label everywhere.
    assert found.omitted_km == pytest.approx(0.202, abs=0.015)
    assert found.predicted_km == pytest.approx(5 * 0.256, rel=0.1)


def test_the_command_writes_a_report_and_names_the_offset_scene(scene_dir, tmp_path, capsys):
    roads = _osm(scene_dir / "off.osm", east=6.0, north=-4.0)
    params = {
        "synth": {"scenes": []},
        "data": {
            "bands": BANDS,
            "scenes": [
                {"name": "ortho", "image": str(scene_dir / "ortho.tif"), "roads": str(roads)}
            ],
        },
        "pretrain": {"archs": []},
        "train": {"encoder_weights": "none"},
        "label_check": {"window_px": 256, "report_path": str(tmp_path / "check.json")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["label-check", "--params", str(tmp_path / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ortho: labels sit" in out and "label_offset_m: [-6, 4]" in out
    [row] = json.loads((tmp_path / "check.json").read_text())
    assert row["scene"] == "ortho" and row["flagged"] is True


def test_a_missing_probability_raster_names_the_command_that_makes_it(scene_dir):
    roads = _osm(scene_dir / "good.osm", east=0.0, north=0.0)
    scene = SceneSource(name="ortho", image=scene_dir / "ortho.tif", roads=roads)
    with pytest.raises(
        FileNotFoundError, match="ortho_roads.tif: no probability raster.*pipeline predict"
    ):
        check_labels(DataParams(scenes=[scene], bands=BANDS), PARAMS, scene_dir / "none")


def test_a_tile_sets_label_rasters_are_checked_after_tiling(tmp_path, capsys):
    """Tiles without georeferencing (a public tile set): labels drawn 6 px west and 4 px south
    of the roads the first model finds, and one road the labels miss."""
    from pipeline.raster import local_grid

    from .test_tilesets import write_image

    root = tmp_path / "set"
    image = np.full((3, SIZE, SIZE), 90, np.uint8)
    found = _paint(SIZE, ROADS + [((EXTRA_ROAD_X, -20, EXTRA_ROAD_X, 276), 6.0, "track")])
    image[:, found > 0] = 180
    labelled = [((x0 - 6, y0 + 4, x1 - 6, y1 + 4), w, h) for (x0, y0, x1, y1), w, h in ROADS]
    write_image(root / "images" / "t1.png", image, "PNG")
    write_image(root / "masks" / "t1.png", (_paint(SIZE, labelled) * 255).astype(np.uint8), "PNG")
    params = {
        "synth": {"scenes": []},
        "data": {
            "bands": ["red", "green", "blue"],
            "scenes": [
                {
                    "name": "set",
                    "root": str(root),
                    "images": "images/*.png",
                    "labels": "masks/{stem}.png",
                    "pixel_size_m": 1.0,
                    "label": {"road": [255], "background": [0]},
                    "split": {"val_fraction": 0.0, "test_fraction": 0.0},
                }
            ],  # fmt: skip
        },
        "tile": {"out_dir": str(tmp_path / "chips"), "chip_size": 64, "stride": 64, "workers": 1},
        "pretrain": {"archs": []},
        "train": {"encoder_weights": "none"},
        # the unlabelled road's edges lower the peak's clarity (9.1 here) below the default 10
        "label_check": {
            "window_px": 256,
            "min_clarity": 8,
            "report_path": str(tmp_path / "check.json"),
        },  # fmt: skip
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    probs = tmp_path / "probs"
    probs.mkdir()
    crs, transform = local_grid(1.0, SIZE)
    write_geotiff(
        probs / "t1_roads.tif", np.round(found * 254).astype(np.uint8), crs=crs,
        transform=transform, nodata=255,
    )  # fmt: skip
    args = ["label-check", "--params", str(path), "--probabilities", str(probs)]
    assert main(args) == 2  # before `pipeline tile` the prepared tiles do not exist: an error
    assert "pipeline tile" in capsys.readouterr().err
    assert main(["tile", "-q", "--params", str(path)]) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "set_t1: labels sit 7.2 m off" in out and "label raster" in out
    [row] = json.loads((tmp_path / "check.json").read_text())
    assert row["labels"] == "raster" and row["flagged"]
    assert (row["shift_east_m"], row["shift_north_m"]) == pytest.approx((6.0, 4.0), abs=1.0)
    assert row["omitted_km"] > 0.15  # the track, 256 m, less where it meets labelled roads


def test_a_road_vector_tile_set_gets_one_offset_for_all_its_tiles(scene_dir, tmp_path, capsys):
    """Two georeferenced chips whose road files are drawn 6 m east and 4 m south of the roads:
    each tile is flagged with the advice to set the offset on its tile set, the set's line
    gives the median shift, and that offset declared on the tile set clears every tile."""
    import geopandas as gpd
    from shapely.geometry import LineString

    from pipeline import raster

    root = tmp_path / "sn"
    (root / "chips").mkdir(parents=True)
    (root / "roads").mkdir()
    image = raster.read_all(scene_dir / "ortho.tif")
    for i, stem in enumerate(["c1", "c2"]):
        x0, y0 = ORIGIN[0] + 1000 * i, ORIGIN[1]
        write_geotiff(
            root / "chips" / f"{stem}.tif", image, crs=UTM,
            transform=Affine(1.0, 0, x0, 0, -1.0, y0), band_descriptions=BANDS,
        )  # fmt: skip
        lines = [
            LineString([(x0 + a + 6, y0 - b - 4), (x0 + c + 6, y0 - d - 4)])
            for (a, b, c, d), _, _ in ROADS
        ]
        gpd.GeoDataFrame({"width": [w for _, w, _ in ROADS]}, geometry=lines, crs=UTM).to_file(
            root / "roads" / f"{stem}.geojson", driver="GeoJSON"
        )
    entry = {
        "name": "sn", "root": str(root), "images": "chips/*.tif", "roads": "roads/{stem}.geojson",
        "split": {"val_fraction": 0.0, "test_fraction": 0.0},
    }  # fmt: skip
    params = {
        "synth": {"scenes": []},
        "data": {"bands": BANDS, "width_attribute": "width", "scenes": [entry]},
        "tile": {"out_dir": str(tmp_path / "out"), "chip_size": 64, "stride": 64, "workers": 1},
        "pretrain": {"archs": []},
        "train": {"encoder_weights": "none"},
        "label_check": {"window_px": 256, "report_path": str(tmp_path / "check.json")},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert main(["tile", "-q", "--params", str(path)]) == 0
    capsys.readouterr()
    assert main(["label-check", "--params", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sn_c1: labels sit" in out and "on tile set 'sn' in data.scenes" in out
    assert "tile set 'sn': median shift of its 2 clear tiles (of 2): east -6 m, north 4 m" in out
    assert "label_offset_m: [-6, 4] on the tile set moves every tile" in out

    params["data"]["scenes"][0]["label_offset_m"] = [-6.0, 4.0]
    path.write_text(yaml.safe_dump(params))
    assert main(["label-check", "--params", str(path)]) == 0
    rows = json.loads((tmp_path / "check.json").read_text())
    assert [r["flagged"] for r in rows] == [False, False]
    assert all(abs(r["shift_east_m"]) <= 1 and abs(r["shift_north_m"]) <= 1 for r in rows)


def test_a_shift_in_degrees_is_measured_along_each_axis(tmp_path):
    """Square-degree pixels at 60 N are 0.558 m wide and 1.11 m tall: label raster drawn 6 px
    west and 4 px south of the image's roads is 3.3 m east-west and 4.5 m north-south off."""
    rng = np.random.default_rng(0)
    roads = _paint(SIZE, ROADS) > 0
    img = rng.normal(90, 12, (4, SIZE, SIZE))
    img[:, roads] = rng.normal(175, 8, (4, int(roads.sum())))
    labelled = [((x0 - 6, y0 + 4, x1 - 6, y1 + 4), w, h) for (x0, y0, x1, y1), w, h in ROADS]
    grid = dict(crs="EPSG:4326", transform=Affine(1e-5, 0, 9.0, 0, -1e-5, 60.0))
    image = write_geotiff(
        tmp_path / "geo.tif", np.clip(img, 1, 255).astype(np.uint8), band_descriptions=BANDS, **grid
    )
    labels = write_geotiff(
        tmp_path / "geo.labels.tif", (_paint(SIZE, labelled) > 0).astype(np.uint8), **grid
    )
    scene = SceneSource(name="geo", image=image, labels=labels)
    found = check_scene(scene, DataParams(scenes=[scene], bands=BANDS), PARAMS)
    assert (found.shift_east_m, found.shift_north_m) == pytest.approx(
        (6 * 0.558, 4 * 1.114), abs=0.3
    )
