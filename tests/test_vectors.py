"""Road vectors: any OGR format in, road polygons in the image CRS out, widths in metres."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from datetime import datetime, timezone

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from shapely.geometry import LineString, Polygon

from pipeline import raster
from pipeline.vectors import (
    GPKG_FIXED_DATE,
    VectorError,
    burn_mask,
    load_road_polygons,
    load_scene_roads,
    write_vectors,
)

UTM = "EPSG:32632"
X0, Y0 = 500000.0, 5400000.0
GRID = Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)  # 1 m pixels, upper-left corner at (X0, Y0)


def _roads(widths: list[float | None], crs: str = UTM) -> gpd.GeoDataFrame:
    """Horizontal centrelines at y = Y0 - 20, - 50, - 80 (pixel row edges), x from 10 to 90 m."""
    lines = [
        LineString([(X0 + 10, Y0 - 20 - 30 * i), (X0 + 90, Y0 - 20 - 30 * i)])
        for i in range(len(widths))
    ]
    return gpd.GeoDataFrame(
        {"width_m": widths, "road_class": ["x"] * len(widths)}, geometry=lines, crs=UTM
    ).to_crs(crs)


def _column_widths(mask: np.ndarray, col: int = 50) -> list[int]:
    """Lengths of the runs of road pixels down one column."""
    runs, n = [], 0
    for v in mask[:, col]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


def test_lines_in_epsg4326_are_buffered_in_metres_in_the_image_crs(tmp_path):
    path = tmp_path / "roads.gpkg"
    _roads([4.0, 8.0, None], crs="EPSG:4326").to_file(path, layer="roads")
    polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    assert polys.crs == UTM
    assert list(polys.road_class) == ["x", "x", "x"]  # attributes are kept
    mask = burn_mask(polys, GRID, (100, 100))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    # 4 m wide, 8 m wide, and no width -> 2 m each side (SpaceNet's default)
    assert _column_widths(mask) == [4, 8, 4]
    assert np.flatnonzero(mask[:, 50])[:4].tolist() == [18, 19, 20, 21]


def test_width_attribute_none_uses_the_default_half_width(tmp_path):
    path = tmp_path / "roads.gpkg"
    _roads([4.0, 12.0]).to_file(path, layer="roads")
    polys = load_road_polygons(path, UTM, width_attribute=None, default_half_width_m=3.0)
    assert _column_widths(burn_mask(polys, GRID, (100, 100))) == [6, 6]


def test_polygons_are_burned_as_they_are(tmp_path):
    square = Polygon(
        [(X0 + 10, Y0 - 10), (X0 + 20, Y0 - 10), (X0 + 20, Y0 - 20), (X0 + 10, Y0 - 20)]
    )
    path = tmp_path / "areas.gpkg"
    gpd.GeoDataFrame({"width_m": [30.0]}, geometry=[square], crs=UTM).to_file(path)
    polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    mask = burn_mask(polys, GRID, (40, 40))
    assert mask.sum() == 100 and mask[10:20, 10:20].all()


def test_geographic_image_crs_buffers_in_the_local_utm_zone(tmp_path):
    """An image in EPSG:4326 with ~1 m pixels: a 6 m road still burns ~6 pixels across."""
    line = LineString([(X0 + 50, Y0 - 5), (X0 + 50, Y0 - 95)])  # runs north-south
    path = tmp_path / "ns.gpkg"
    gpd.GeoDataFrame({"width_m": [6.0]}, geometry=[line], crs=UTM).to_file(path)
    lon0, lat0 = gpd.GeoSeries([shapely.Point(X0, Y0)], crs=UTM).to_crs(4326).iloc[0].coords[0]
    dlat = 1.0 / 111_320.0
    dlon = dlat / math.cos(math.radians(lat0))
    grid = Affine(dlon, 0.0, lon0, 0.0, -dlat, lat0)
    polys = load_road_polygons(
        path, "EPSG:4326", width_attribute="width_m", default_half_width_m=2.0
    )
    assert polys.crs.to_epsg() == 4326
    mask = burn_mask(polys, grid, (100, 100))
    across = mask[30:70].sum(axis=1)
    assert 5 <= across.min() and across.max() <= 7, across


def test_web_mercator_image_crs_buffers_in_ground_metres(tmp_path):
    """An image in EPSG:3857 at 60 N, where a unit of the projection is half a metre: a 6 m
    road burns 12 of its 1-unit pixels across, not 6."""
    path = tmp_path / "ns.gpkg"
    line = LineString([(10.0, 60.0), (10.0, 60.001)])  # runs north-south for ~110 m
    gpd.GeoDataFrame({"width_m": [6.0]}, geometry=[line], crs=4326).to_file(path)
    x0, y0 = gpd.GeoSeries([shapely.Point(10.0, 60.001)], crs=4326).to_crs(3857).iloc[0].coords[0]
    grid = Affine(1.0, 0.0, x0 - 50, 0.0, -1.0, y0)
    polys = load_road_polygons(
        path, "EPSG:3857", width_attribute="width_m", default_half_width_m=2.0
    )
    across = burn_mask(polys, grid, (200, 100))[40:160].sum(axis=1)
    assert 11 <= across.min() and across.max() <= 13, across


def test_invalid_geometry_is_repaired_and_reported(tmp_path, caplog):
    bowtie = Polygon([(X0, Y0), (X0 + 10, Y0 - 10), (X0 + 10, Y0), (X0, Y0 - 10)])
    path = tmp_path / "bad_geom.gpkg"
    gpd.GeoDataFrame({"width_m": [1.0]}, geometry=[bowtie], crs=UTM).to_file(path)
    with caplog.at_level(logging.WARNING, logger="pipeline.vectors"):
        polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    assert "repaired 1 invalid" in caplog.text and str(path) in caplog.text
    assert polys.geometry.is_valid.all()
    assert polys.geometry.iloc[0].geom_type == "MultiPolygon"
    assert abs(polys.geometry.area.sum() - 50.0) < 1e-6  # two triangles, not buffered


@pytest.mark.parametrize(
    "driver,suffix", [("GeoJSON", ".geojson"), ("ESRI Shapefile", ".shp"), ("GPKG", ".gpkg")]
)
def test_any_ogr_format_gives_the_same_mask(tmp_path, driver, suffix):
    path = tmp_path / f"roads{suffix}"
    _roads([4.0, 6.0], crs="EPSG:4326").to_file(path, driver=driver)
    polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    assert _column_widths(burn_mask(polys, GRID, (100, 100))) == [4, 6]


def test_the_roads_layer_is_preferred_in_a_multi_layer_file(tmp_path):
    path = tmp_path / "two.gpkg"
    _roads([10.0]).to_file(path, layer="aaa_other")
    _roads([4.0]).to_file(path, layer="roads")
    polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    assert _column_widths(burn_mask(polys, GRID, (100, 100))) == [4]


def test_burn_mask_of_a_window_equals_the_slice_of_the_whole(tmp_path):
    path = tmp_path / "roads.gpkg"
    _roads([4.0, 8.0, 3.0], crs="EPSG:4326").to_file(path)
    polys = load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)
    whole = burn_mask(polys, GRID, (100, 100))
    window = burn_mask(polys, GRID * Affine.translation(32, 16), (40, 40))
    assert np.array_equal(window, whole[16:56, 32:72])
    assert burn_mask(polys, GRID * Affine.translation(500, 500), (40, 40)).sum() == 0


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.gpkg"
    with pytest.raises(VectorError, match="nowhere.gpkg.*not found"):
        load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.gpkg"
    path.write_bytes(b"this is not a geopackage" * 20)
    with pytest.raises(VectorError, match="garbage.gpkg"):
        load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_vectors_without_crs_are_refused(tmp_path):
    path = tmp_path / "nocrs.shp"
    gpd.GeoDataFrame({"width_m": [4.0]}, geometry=[LineString([(0, 0), (10, 0)])]).to_file(path)
    with pytest.raises(VectorError, match="nocrs.shp.*no CRS"):
        load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)


def test_a_file_without_features_is_refused(tmp_path):
    path = tmp_path / "empty.gpkg"
    empty = gpd.GeoDataFrame(
        {"width_m": np.array([], float)}, geometry=gpd.GeoSeries([], crs=UTM), crs=UTM
    )
    empty.to_file(path, layer="roads", geometry_type="LineString")
    with pytest.raises(VectorError, match="empty.gpkg.*no features"):
        load_road_polygons(path, UTM, width_attribute="width_m", default_half_width_m=2.0)


def test_labels_that_miss_the_image_are_refused(tmp_path):
    path = tmp_path / "elsewhere.gpkg"
    _roads([4.0], crs="EPSG:4326").to_file(path)
    inside = (X0, Y0 - 100, X0 + 100, Y0)
    assert len(
        load_road_polygons(
            path, UTM, width_attribute="width_m", default_half_width_m=2.0, bounds=inside
        )
    )
    far = (X0 + 5000, Y0 - 100, X0 + 5100, Y0)
    with pytest.raises(VectorError, match="elsewhere.gpkg.*miss the image"):
        load_road_polygons(
            path, UTM, width_attribute="width_m", default_half_width_m=2.0, bounds=far
        )


def test_write_vectors_is_atomic_and_readable(tmp_path):
    path = tmp_path / "out" / "roads.gpkg"
    write_vectors(_roads([4.0], crs="EPSG:4326"), path)
    assert [p.name for p in path.parent.iterdir()] == ["roads.gpkg"]
    back = gpd.read_file(path, layer="roads")
    assert back.crs.to_epsg() == 4326 and len(back) == 1


def _last_change(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT last_change FROM gpkg_contents").fetchone()[0]


def test_reproducible_geopackages_are_byte_identical_and_others_keep_the_real_time(
    tmp_path, monkeypatch
):
    """Stage outputs under DVC must hash the same for the same features; a file a user asks
    for records when it was written."""
    monkeypatch.delenv("OGR_CURRENT_DATE", raising=False)
    roads = _roads([4.0, 6.0])
    a = write_vectors(roads, tmp_path / "a.gpkg", reproducible=True)
    b = write_vectors(roads, tmp_path / "b.gpkg", reproducible=True)
    assert a.read_bytes() == b.read_bytes()
    assert _last_change(a) == GPKG_FIXED_DATE
    assert "OGR_CURRENT_DATE" not in os.environ  # restored after the write
    user = write_vectors(roads, tmp_path / "user.gpkg")
    assert _last_change(user)[:4] == str(datetime.now(timezone.utc).year)


@pytest.mark.parametrize("kind", ["zero_bytes", "no_features"])
def test_an_empty_roads_file_makes_a_scene_without_roads(tmp_path, caplog, kind):
    """SpaceNet ships its chips without roads as 0-byte GeoJSON: all background, warned."""
    from pipeline.config import DataParams, SceneSource

    image = raster.write_geotiff(
        tmp_path / "chip.tif", np.full((3, 32, 32), 80, np.uint8), crs=UTM,
        transform=Affine(1.0, 0, 500000.0, 0, -1.0, 5400000.0),
    )  # fmt: skip
    roads = tmp_path / "roads.geojson"
    if kind == "zero_bytes":
        roads.write_bytes(b"")
    else:
        gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=UTM)).to_file(roads, driver="GeoJSON")
    scene = SceneSource(name="chip", image=image, roads=roads, split="train")
    data = DataParams(scenes=[scene], bands=["red", "green", "blue"])
    with caplog.at_level(logging.WARNING, logger="pipeline.vectors"):
        polygons = load_scene_roads(scene, data, raster.raster_info(image))
    assert len(polygons) == 0 and polygons.crs == raster.raster_info(image).crs
    assert "roads.geojson: no road features: scene chip is all background" in caplog.text
    mask = burn_mask(polygons, raster.raster_info(image).transform, (32, 32))
    assert mask.shape == (32, 32) and not mask.any()
