"""OpenStreetMap roads as labels: road classes, widths from tags, tunnels and railways left out."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from affine import Affine

from pipeline import osm
from pipeline.config import DataParams, OsmParams, SceneSource, TileParams
from pipeline.raster import raster_info
from pipeline.vectors import VectorError, burn_mask, load_scene_roads

from .conftest import BANDS, make_scene
from .osm_data import scene_ways, write_osm

ORIGIN = (500000.0, 5400000.0)
SIZE = 256


@pytest.mark.parametrize(
    ("tag", "metres"),
    [("7", 7.0), ("7.5 m", 7.5), ("7,5", 7.5), ("24'", 24 * 0.3048), ("10 ft", 3.048)],
)
def test_width_tags_parse_to_metres(tag, metres):
    assert osm.parse_width_m(tag) == pytest.approx(metres)


@pytest.mark.parametrize("tag", ["wide", "", None, "0", "-3"])
def test_unusable_width_tags_are_nan(tag):
    assert np.isnan(osm.parse_width_m(tag))


def test_other_tags_unpack_into_columns():
    frame = pd.DataFrame(
        {
            "highway": ["primary", "track"],
            "other_tags": ['"lanes"=>"2","bridge"=>"yes","name:de"=>"A \\"B\\""', None],
        }
    )
    out = osm.unpack_tags(frame)
    assert out["lanes"][0] == "2" and pd.isna(out["lanes"][1])
    assert out["bridge"][0] == "yes" and pd.isna(out["bridge"][1])
    assert osm.parse_other_tags(frame["other_tags"][0])["name:de"] == 'A "B"'


def test_width_comes_from_width_then_lanes_then_class():
    frame = pd.DataFrame(
        {
            "highway": ["primary", "primary", "primary", "bus_guideway"],
            "width": ["12", None, None, None],
            "lanes": ["4", "4", None, None],
        }
    )
    widths = osm.full_widths_m(frame, {"primary": 10.0}, lane_width_m=3.0, default_width_m=5.0)
    assert widths.tolist() == [12.0, 12.0, 10.0, 5.0]


def test_visible_roads_are_listed_classes_outside_tunnels():
    frame = pd.DataFrame(
        {
            "highway": ["primary", "footway", None, "primary", "primary", "primary"],
            "tunnel": [None, None, None, "yes", "no", None],
            "covered": [None, None, None, None, None, "yes"],
        }
    )
    keep = osm.is_visible_road(frame, ["primary"])
    assert keep.tolist() == [True, False, False, False, True, False]


@pytest.fixture
def osm_scene(tmp_path):
    scene = make_scene(tmp_path, "ortho", seed=3, size=SIZE, origin=ORIGIN)
    roads = write_osm(tmp_path / "extract.osm", scene_ways(ORIGIN, SIZE))
    return SceneSource(name="ortho", image=scene["image"], roads=roads)


def test_an_osm_extract_becomes_road_labels_by_class_and_tags(osm_scene):
    data = DataParams(scenes=[osm_scene], bands=BANDS)
    info = raster_info(osm_scene.image)
    roads = load_scene_roads(osm_scene, data, info)
    assert sorted(roads["highway"]) == ["motorway", "residential", "secondary", "track"]
    # each way runs 296 m (the scene plus 20 m either side): area / length ~ full width
    widths = dict(zip(roads["highway"], roads.geometry.area / 296.0, strict=True))
    assert widths["motorway"] == pytest.approx(10.5, rel=0.05)  # 3 lanes x 3.5 m
    assert widths["residential"] == pytest.approx(6.0, rel=0.05)  # class width
    assert widths["track"] == pytest.approx(3.0, rel=0.06)  # width tag
    assert widths["secondary"] == pytest.approx(9.0, rel=0.05)  # a bridge is visible

    mask = burn_mask(roads, info.transform, (info.height, info.width))
    rows_with_road = mask.mean(axis=1) > 0.9
    for kept in (40, 100, 160, 180):
        assert rows_with_road[kept], kept
    for left_out in (70, 130, 200, 220):  # tunnel, construction, footway, railway
        assert not mask[left_out].any(), left_out


def test_osm_rules_follow_params_and_can_be_turned_off(osm_scene):
    info = raster_info(osm_scene.image)
    only_tracks = DataParams(
        scenes=[osm_scene], bands=BANDS, osm=OsmParams(road_classes=["track", "footway"])
    )
    assert sorted(load_scene_roads(osm_scene, only_tracks, info)["highway"]) == [
        "footway",
        "track",
    ]
    raw = DataParams(scenes=[osm_scene], bands=BANDS, osm=OsmParams(apply=False))
    assert len(load_scene_roads(osm_scene, raw, info)) == 8  # every way, railway included


def _network_rows(scene: SceneSource, osm_params: OsmParams | None = None) -> list[int]:
    """The rows (metres below the scene's top) of the roads in the scene's network truth."""
    from pipeline.network_eval import truth_network

    data = DataParams(scenes=[scene], bands=BANDS, osm=osm_params or OsmParams())
    graph = truth_network(scene, data)
    return sorted({round(ORIGIN[1] - graph.nodes[u]["y"]) for u, _ in graph.edges()})


def test_the_network_truth_of_an_osm_scene_reads_the_roads_the_labels_read(osm_scene):
    # the `lines` layer of the extract, OSM rules applied: no tunnel, footway or railway
    assert _network_rows(osm_scene) == [40, 100, 160, 180]
    assert _network_rows(osm_scene, OsmParams(apply=False)) == [
        40,
        70,
        100,
        130,
        160,
        180,
        200,
        220,
    ]
    moved = osm_scene.model_copy(update={"label_offset_m": (0.0, -10.0)})  # labels 10 m south
    assert _network_rows(moved) == [50, 110, 170, 190]


def test_an_extract_without_visible_roads_is_a_clear_error(osm_scene, tmp_path):
    only_paths = write_osm(
        tmp_path / "paths.osm",
        [([(ORIGIN[0], ORIGIN[1] - 10), (ORIGIN[0] + 200, ORIGIN[1] - 10)], {"highway": "path"})],
    )
    scene = osm_scene.model_copy(update={"roads": only_paths})
    data = DataParams(scenes=[scene], bands=BANDS)
    with pytest.raises(VectorError, match=r"paths\.osm: no roads after the OSM rules.*'path'"):
        load_scene_roads(scene, data, raster_info(scene.image))


def test_the_extract_is_clipped_to_the_scene_while_read(osm_scene, tmp_path):
    far = (ORIGIN[0] + 50_000, ORIGIN[1])  # 50 km east: outside the scene
    ways = scene_ways(ORIGIN, SIZE) + scene_ways(far, SIZE)
    roads = write_osm(tmp_path / "region.osm", ways)
    scene = osm_scene.model_copy(update={"roads": roads})
    info = raster_info(scene.image)
    loaded = load_scene_roads(scene, DataParams(scenes=[scene], bands=BANDS), info)
    assert len(loaded) == 4


def test_the_tile_stage_cuts_chips_from_an_orthophoto_and_an_osm_extract(osm_scene, tmp_path):
    from pipeline.tiling import run_tile

    data = DataParams(scenes=[osm_scene], bands=BANDS)
    tile = TileParams(out_dir=tmp_path / "chips", chip_size=64, stride=64, workers=1)
    stats = run_tile(data, tile, workers=1, progress=False)
    assert sum(stats["counts"].values()) > 0
    masks = np.load(tmp_path / "chips" / "ortho.masks.npy")
    road = (masks == 1).mean()
    # four visible roads of 10.5 + 6 + 3 + 9 m across a 256 m scene (less the nodata corner)
    assert 0.08 < road < 0.14, road
    assert json.loads((tmp_path / "chips" / "stats.json").read_text())["counts"]


def test_scene_grid_in_another_crs_reads_the_same_roads(osm_scene, tmp_path):
    """The scene's bounds are turned into degrees for clipping: an image in UTM 33N (another
    zone) over the same ground gets the same ways."""
    from pipeline.raster import write_geotiff

    from_pyproj = pytest.importorskip("pyproj").Transformer.from_crs(
        "EPSG:32632", "EPSG:32633", always_xy=True
    )
    x, y = from_pyproj.transform(*ORIGIN)
    image = write_geotiff(
        tmp_path / "zone33.tif",
        np.full((4, SIZE, SIZE), 100, np.uint8),
        crs="EPSG:32633",
        transform=Affine(1.0, 0, x, 0, -1.0, y),
        band_descriptions=BANDS,
    )
    scene = osm_scene.model_copy(update={"image": image})
    loaded = load_scene_roads(scene, DataParams(scenes=[scene], bands=BANDS), raster_info(image))
    assert sorted(loaded["highway"]) == ["motorway", "residential", "secondary", "track"]


def test_recall_by_osm_class_reads_the_highway_tag(osm_scene):
    """evaluate.class_attribute: highway works on an OSM extract as it comes."""
    from pipeline.scene_truth import SceneWindows

    truth = SceneWindows(osm_scene, DataParams(scenes=[osm_scene], bands=BANDS))
    assert sorted(truth.road_classes("highway")) == [
        "motorway",
        "residential",
        "secondary",
        "track",
    ]
