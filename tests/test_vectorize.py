"""vectorize.py: skeleton graph, spur pruning, and GeoPackages from real probability rasters."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine

from pipeline.vectorize import (
    neighbour_table,
    prune_spurs,
    skeleton_lines,
    skeletonize_mask,
    trace_edges,
    vectorize_raster,
)


def _pixels(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask)


def test_staircase_line_has_no_false_junctions() -> None:
    m = np.zeros((20, 20), bool)
    for k in range(15):  # a 4-connected staircase: diagonal links are redundant
        m[k + 2, k + 2] = m[k + 2, k + 3] = True
    table = neighbour_table(_pixels(m))
    degree = (table >= 0).sum(1)
    assert degree.max() == 2 and (degree == 1).sum() == 2
    edges = trace_edges(_pixels(m))
    assert len(edges) == 1 and len(edges[0][2]) == m.sum()


def test_t_junction_gives_three_edges_and_a_ring_one() -> None:
    m = np.zeros((40, 40), bool)
    m[20, 5:35] = True
    m[5:20, 18] = True
    edges = trace_edges(_pixels(m))
    assert len(edges) == 3
    nodes = [n for a, b, _ in edges for n in (a, b)]
    junction = max(set(nodes), key=nodes.count)
    assert nodes.count(junction) == 3  # all three meet at one node
    lengths = sorted(round(float(np.hypot(*np.diff(c, axis=0).T).sum())) for _, _, c in edges)
    assert lengths == [13, 15, 16]

    ring = np.zeros((30, 30), bool)
    ring[5, 5:20] = ring[20, 5:20] = ring[5:21, 5] = ring[5:21, 19] = True
    (edge,) = trace_edges(_pixels(ring))
    assert edge[:2] == (-1, -1) and (edge[2][0] == edge[2][-1]).all()  # closed
    assert trace_edges(np.array([[3, 3]])) == []  # an isolated pixel is no road


def test_prune_spurs_removes_short_spurs_and_specks_only() -> None:
    m = np.zeros((60, 60), bool)
    m[30, 5:55] = True  # main road
    m[31:35, 40] = True  # 4 px spur
    m[5:30, 15] = True  # 25 px side road
    m[50, 10:13] = True  # 3 px speck
    edges = trace_edges(_pixels(m))
    kept = prune_spurs(edges, min_length=8)
    lengths = sorted(float(np.hypot(*np.diff(c, axis=0).T).sum()) for _, _, c in kept)
    assert len(kept) == 4 and min(lengths) > 8  # spur and speck gone; 10 px end and side road stay
    lines = skeleton_lines(_pixels(m), min_spur_px=8, simplify_px=0.5)
    # the main road runs through where the spur was (merged there), split only at the side road
    assert len(lines) == 3
    assert max(g.length for g in lines) == pytest.approx(39, abs=2)  # column 15 .. 54
    assert sum(g.length for g in lines) == pytest.approx(49 + 25, abs=3)


def test_skeleton_of_a_wide_road_is_its_centreline() -> None:
    m = np.zeros((50, 80), bool)
    m[20:29, 5:75] = True
    lines = skeleton_lines(_pixels(skeletonize_mask(m)), min_spur_px=10)
    assert len(lines) == 1
    ys = np.asarray(lines[0].coords)[:, 1]
    assert np.allclose(ys, 24.5, atol=1.0)


def _write_prob(path: Path, values: np.ndarray, crs: str, transform: Affine) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=values.shape[1],
        height=values.shape[0],
        count=1,
        dtype="uint8",
        nodata=255,
        crs=crs,
        transform=transform,
    ) as ds:
        ds.write(values, 1)
    return path


def _cross(size: int = 200) -> np.ndarray:
    v = np.full((size, size), 30, np.uint8)  # p ~ 0.12
    v[97:104, 10:190] = 220  # p ~ 0.87, 7 px wide
    v[10:190, 147:154] = 220
    v[:, :5] = 255  # nodata strip
    return v


def test_vectorize_raster_writes_linestrings_with_lengths(tmp_path: Path) -> None:
    tr = Affine(0.5, 0, 500000, 0, -0.5, 5400000)
    src = _write_prob(tmp_path / "p.tif", _cross(), "EPSG:32632", tr)
    out = vectorize_raster(src, tmp_path / "roads.gpkg", threshold=0.5, min_spur_m=5)
    roads = gpd.read_file(out, layer="roads")
    assert set(roads.geom_type) == {"LineString"} and roads.crs.to_epsg() == 32632
    assert len(roads) == 4  # the cross: four arms meeting at one junction
    # two roads of ~180 px at 0.5 m, a little shorter at the ends after thinning
    assert roads["length_m"].sum() == pytest.approx(2 * 180 * 0.5, rel=0.06)
    np.testing.assert_allclose(roads["length_m"], roads.length)
    minx, miny, maxx, maxy = roads.total_bounds
    assert 500000 + 5 <= minx and maxx <= 500000 + 95 and 5400000 - 95 <= miny
    # tiles with halos give the same network as one tile
    tiled = gpd.read_file(
        vectorize_raster(src, tmp_path / "tiled.gpkg", threshold=0.5, tile=64), layer="roads"
    )
    assert tiled["length_m"].sum() == pytest.approx(roads["length_m"].sum(), rel=0.02)
    with pytest.raises(FileExistsError):
        vectorize_raster(src, out, threshold=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif", "roads.gpkg", "tiled.gpkg"]


def test_spur_length_is_in_metres_whatever_the_pixel_size(tmp_path: Path) -> None:
    arms = {}
    for res in (0.5, 4.0):  # the same 200 px cross: arms of ~45 m at 0.5 m, ~360 m at 4 m
        src = _write_prob(
            tmp_path / f"p{res}.tif",
            _cross(),
            "EPSG:32632",
            Affine(res, 0, 500000, 0, -res, 5400000),
        )
        arms[res] = len(
            gpd.read_file(
                vectorize_raster(src, tmp_path / f"r{res}.gpkg", threshold=0.5, min_spur_m=100),
                layer="roads",
            )
        )
    assert arms[4.0] == 4 and arms[0.5] < 4  # 100 m prunes the short arms only where they are short


def test_geographic_crs_lengths_are_geodesic_metres(tmp_path: Path) -> None:
    v = np.zeros((40, 200), np.uint8)
    v[18:23, 10:190] = 254
    tr = Affine(1e-5, 0, 9.0, 0, -1e-5, 0.0002)  # near the equator, ~1.11 m pixels
    out = vectorize_raster(
        _write_prob(tmp_path / "g.tif", v, "EPSG:4326", tr), tmp_path / "g.gpkg", threshold=0.5
    )
    roads = gpd.read_file(out, layer="roads")
    assert len(roads) == 1
    assert roads["length_m"].iloc[0] == pytest.approx(178 * 1.1132, rel=0.03)


def test_web_mercator_lengths_and_spurs_are_ground_metres(tmp_path: Path) -> None:
    """EPSG:3857 at 60 N: a "metre" of the projection is half a metre on the ground. Lengths
    are measured on the ellipsoid and the spur length is in ground metres (the cross's short
    arm, 40 px, is 10 m on the ground and 20 in the projection's units: pruned at 15 m)."""
    to_merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x0, y0 = to_merc.transform(10.0, 60.0)
    src = _write_prob(tmp_path / "m.tif", _cross(), "EPSG:3857", Affine(0.5, 0, x0, 0, -0.5, y0))
    out = vectorize_raster(src, tmp_path / "m.gpkg", threshold=0.5, min_spur_m=5)
    roads = gpd.read_file(out, layer="roads")
    assert len(roads) == 4
    assert roads["length_m"].sum() == pytest.approx(0.5 * roads.length.sum(), rel=0.01)
    assert roads["length_m"].sum() == pytest.approx(2 * 180 * 0.25, rel=0.06)
    pruned = vectorize_raster(src, tmp_path / "p.gpkg", threshold=0.5, min_spur_m=15)
    assert len(gpd.read_file(pruned, layer="roads")) < 4


def test_no_roads_gives_an_empty_layer(tmp_path: Path) -> None:
    src = _write_prob(
        tmp_path / "e.tif", np.zeros((64, 64), np.uint8), "EPSG:32632", Affine(1, 0, 0, 0, -1, 64)
    )
    roads = gpd.read_file(vectorize_raster(src, tmp_path / "e.gpkg", threshold=0.5), layer="roads")
    assert len(roads) == 0 and "length_m" in roads
