"""`pipeline score-network`: real GeoPackages in, APLS and TOPO out, clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import pytest
import shapely

from pipeline.cli import main
from pipeline.graph_metrics import score_networks
from pipeline.road_graph import (
    GraphInputError,
    graph_from_lines,
    join_near_ends,
    metric_graph,
    read_road_graph,
)

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0


def line(*pts: tuple[float, float]) -> shapely.LineString:
    return shapely.LineString([(X0 + x, Y0 + y) for x, y in pts])


def write_network(path: Path, with_bridge: bool = True, crs: str = UTM) -> Path:
    """The "H" (two 200 m roads, a 100 m bridge) as a network GeoPackage (edges + nodes)."""
    nodes = {0: (0, 0), 1: (100, 0), 2: (200, 0), 3: (0, 100), 4: (100, 100), 5: (200, 100)}
    ends = [(0, 1), (1, 2), (3, 4), (4, 5)] + ([(1, 4)] if with_bridge else [])
    edges = gpd.GeoDataFrame(
        {
            "edge_id": range(len(ends)),
            "u": [u for u, _ in ends],
            "v": [v for _, v in ends],
            "length_m": [100.0] * len(ends),
            "mean_prob": [0.9] * len(ends),
            "min_prob": [0.8] * len(ends),
        },
        geometry=[line(nodes[u], nodes[v]) for u, v in ends],
        crs=crs,
    )
    points = gpd.GeoDataFrame(
        {"node_id": list(nodes), "degree": [1, 3, 1, 1, 3, 1]},
        geometry=[shapely.Point(X0 + x, Y0 + y) for x, y in nodes.values()],
        crs=crs,
    )
    edges.to_file(path, layer="edges", driver="GPKG")
    points.to_file(path, layer="nodes", driver="GPKG")
    return path


def write_centrelines(path: Path, crs: str = "EPSG:4326", layer: str = "roads") -> Path:
    """The H without its bridge as two plain centrelines (no nodes, no u/v), in ``crs``."""
    roads = gpd.GeoDataFrame(
        {"name": ["south", "north"]},
        geometry=[line((0, 0), (200, 0)), line((0, 100), (200, 100))],
        crs=UTM,
    )
    roads.to_crs(crs).to_file(path, layer=layer, driver="GPKG")
    return path


def test_network_geopackage_becomes_its_graph(tmp_path: Path) -> None:
    graph = read_road_graph(write_network(tmp_path / "truth.gpkg"))
    assert graph.number_of_nodes() == 6
    assert graph.number_of_edges() == 5
    assert sorted(d for _, d in graph.degree()) == [1, 1, 1, 1, 3, 3]
    assert all(d["mean_prob"] == pytest.approx(0.9) for *_, d in graph.edges(data=True))


def test_crossing_centrelines_are_noded(tmp_path: Path) -> None:
    """A road across the middle of two others makes two junctions of degree 3."""
    roads = gpd.GeoDataFrame(
        geometry=[line((0, 0), (200, 0)), line((0, 100), (200, 100)), line((100, -50), (100, 150))],
        crs=UTM,
    )
    roads.to_file(tmp_path / "roads.geojson", driver="GeoJSON")
    graph = read_road_graph(tmp_path / "roads.geojson")
    assert graph.number_of_edges() == 7
    assert sorted(d for _, d in graph.degree()) == [1] * 6 + [4, 4]


def _t_junction(tmp_path: Path, gap_m: float, crs: str) -> nx.MultiGraph:
    """The south road of the H and a 100 m side road from its middle northwards whose end
    stops ``gap_m`` short of it, written in ``crs`` (a side road drawn to a point inside the
    other road's segment: after reprojection it lies a hair off that segment)."""
    roads = gpd.GeoDataFrame(
        geometry=[line((0, 0), (200, 0)), line((100.3, gap_m), (100.3, 100))], crs=UTM
    )
    roads.to_crs(crs).to_file(tmp_path / f"t{gap_m}{crs[-4:]}.gpkg", layer="roads")
    return read_road_graph(tmp_path / f"t{gap_m}{crs[-4:]}.gpkg")


@pytest.mark.parametrize("crs", [UTM, "EPSG:4326", "EPSG:3857"])
def test_a_side_road_ending_on_or_just_short_of_a_road_joins_it(tmp_path: Path, crs) -> None:
    """Within 0.5 m (a hair off after reprojection, or an undershoot) the side road joins the
    road at a junction of degree 3; 2 m short it stays a separate road."""
    for gap in (0.0, 1e-9, 0.3):
        graph = _t_junction(tmp_path, gap, crs)
        assert nx.is_connected(graph), gap
        # the junction, three dead ends, and where the gap was bridged a node of degree 2
        assert sorted(d for _, d in graph.degree() if d != 2) == [1, 1, 1, 3], gap
        # on the road exactly: noded as it is (3 edges), unless reprojection moved it a hair
        assert graph.number_of_edges() in (
            (3, 4) if gap == 0 and crs != UTM else (3,) if gap == 0 else (4,)
        )
        metric = metric_graph(graph, simplify=False)
        assert metric.total_length_m == pytest.approx(300.0, abs=0.1)
    apart = _t_junction(tmp_path, 2.0, crs)
    assert not nx.is_connected(apart) and apart.number_of_edges() == 2


def test_joining_an_end_scores_the_t_junction_as_the_network_that_has_it(tmp_path: Path) -> None:
    """A truth whose side road lies a hair off the road scores a proposal with the junction
    as it scores itself: 1.0."""
    truth = _t_junction(tmp_path, 1e-9, "EPSG:4326")
    proposal = _t_junction(tmp_path, 0.0, UTM)
    scores = score_networks(truth, proposal)
    assert scores["apls"] == pytest.approx(1.0, abs=1e-4)
    assert scores["topo_f1"] > 0.98  # one hole of 63 left over by the round trip's millimetres
    # without joining, the truth's side road is cut off: every pair across the junction fails
    unjoined = graph_from_lines(gpd.read_file(tmp_path / "t1e-094326.gpkg"), snap_m=0.0)
    assert score_networks(unjoined, proposal)["apls"] < 0.8


def test_join_near_ends_cuts_the_road_at_a_shared_point_without_empty_pieces() -> None:
    road = shapely.LineString([(0, 0), (50, 0), (100, 0)])
    side = shapely.LineString([(50, 0.2), (50, 40)])  # above an existing vertex of the road
    other = shapely.LineString([(80, -0.1), (80, -30)])  # below the road's second segment
    out = join_near_ends(np.array([road, side, other], dtype=object), 0.5)
    assert all(piece.length > 0 for piece in out)
    assert sum(piece.length for piece in out) == pytest.approx(100 + 39.8 + 29.9 + 0.2 + 0.1)
    ends = [tuple(c) for piece in out for c in (piece.coords[0], piece.coords[-1])]
    assert ends.count((50.0, 0.0)) == 3 and ends.count((80.0, 0.0)) == 3
    untouched = np.array([road, shapely.LineString([(50, 3), (50, 40)])], dtype=object)
    assert list(join_near_ends(untouched, 0.5)) == list(untouched)


def test_score_network_prints_and_writes_json(tmp_path: Path, capsys) -> None:
    """Bridge missing (the proposal in longitude/latitude): APLS 8/15 as worked out in
    tests/test_graph_metrics.py::test_removed_bridge."""
    truth = write_network(tmp_path / "truth.gpkg")
    proposal = write_centrelines(tmp_path / "proposal.gpkg")
    out = tmp_path / "scores.json"
    assert main(["score-network", str(truth), str(proposal), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "APLS  0.5333" in text
    assert "TOPO  F1" in text
    scores = json.loads(out.read_text())
    assert scores["apls"] == pytest.approx(8 / 15)
    assert scores["apls_gt_onto_prop"] == pytest.approx(4 / 11)
    # control points written over the truth network it reads: refused, even with --overwrite
    before = truth.read_bytes()
    args = ["score-network", str(truth), str(proposal), "--points", str(truth), "--overwrite"]
    assert main(args) == 2
    assert "is also an input of this command" in capsys.readouterr().err
    assert truth.read_bytes() == before
    assert scores["topo_precision"] == pytest.approx(1.0)
    assert scores["truth_length_m"] == pytest.approx(500.0)
    assert scores["proposal_length_m"] == pytest.approx(400.0, abs=1e-3)
    assert scores["metric_crs"] == UTM
    # the JSON is not replaced without --overwrite
    assert main(["score-network", str(truth), str(proposal), "--json", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["score-network", str(truth), str(truth), "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["apls"] == pytest.approx(1.0)


def test_score_network_writes_where_apls_is_lost(tmp_path: Path, capsys) -> None:
    """--points: the control points of both directions, styled for QGIS; the truth's points
    give back the score printed (the bridge's midpoint missing: 4/11)."""
    import sqlite3

    truth = write_network(tmp_path / "truth.gpkg")
    proposal = write_network(tmp_path / "proposal.gpkg", with_bridge=False)
    out = tmp_path / "points.gpkg"
    assert main(["score-network", str(truth), str(proposal), "--points", str(out)]) == 0
    assert "truth->proposal 0.3636" in capsys.readouterr().out
    points = gpd.read_file(out, layer="truth_points")
    assert points.crs == UTM and len(points) == 11
    [missing] = points.index[~points["snapped"]]
    assert points.geometry[missing].coords[0] == pytest.approx((X0 + 100, Y0 + 50))
    assert points["mean_d"][missing] == pytest.approx(1.0)
    weighted = (points["mean_d"] * points["pairs"]).sum() / points["pairs"].sum()
    assert 1 - weighted == pytest.approx(4 / 11)
    own = gpd.read_file(out, layer="proposal_points")
    assert len(own) == 10 and own["snapped"].all() and (own["mean_d"] == 0).all()
    with sqlite3.connect(out) as con:
        styled = dict(con.execute("SELECT f_table_name, styleQML FROM layer_styles"))
    assert set(styled) == {"truth_points", "proposal_points"}
    assert 'attr="mean_d"' in styled["truth_points"]  # graduated: kept green .. lost red
    assert '<range lower="0.99" upper="1"' in styled["truth_points"]
    # not replaced without --overwrite; replaced, the same bytes (a DVC output stays the same)
    args = ["score-network", str(truth), str(proposal), "--points", str(out)]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    written = out.read_bytes()
    assert main([*args, "--overwrite"]) == 0
    assert out.read_bytes() == written
    # a sample leaves the other points without pairs (NULL)
    assert main([*args, "--overwrite", "--max-sources", "3"]) == 0
    sampled = gpd.read_file(out, layer="truth_points")
    assert (sampled["pairs"] > 0).sum() == 3 and sampled["mean_d"].isna().sum() == 8


def _without_crs(path: Path, units_per_m: float) -> Path:
    """The network GeoPackage at ``path`` as `pipeline network` writes one for a raster
    without georeferencing: the same layers in pixel coordinates, no CRS."""
    out = path.with_name(f"{path.stem}.pixels.gpkg")
    for layer in ("edges", "nodes"):
        frame = gpd.read_file(path, layer=layer)
        geometry = shapely.transform(frame.geometry.values, lambda xy: xy * units_per_m)
        frame = gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=list(geometry))
        frame.to_file(out, layer=layer, driver="GPKG", mode="a" if layer == "nodes" else "w")
    return out


@pytest.mark.filterwarnings("ignore:'crs' was not provided")  # as pipeline network writes them
def test_networks_without_a_crs_are_scored_in_pixels_of_the_size_given(
    tmp_path: Path, capsys
) -> None:
    """Networks of a tile without georeferencing (DeepGlobe's JPEGs, predicted with
    --pixel-size 0.5): in pixels, no CRS; scored with --pixel-size 0.5 they give what the
    same networks in metres give (the bridge missing: 8/15), and never against a network
    placed on Earth."""
    truth = _without_crs(write_network(tmp_path / "truth.gpkg"), 2.0)
    proposal = _without_crs(write_network(tmp_path / "prop.gpkg", with_bridge=False), 2.0)
    out = tmp_path / "scores.json"
    assert main(["score-network", str(truth), str(proposal)]) == 2
    err = capsys.readouterr().err
    assert f"{truth}: layer 'edges' has no CRS" in err and "--pixel-size" in err
    args = ["score-network", str(truth), str(proposal), "--pixel-size", "0.5", "--json", str(out)]
    assert main(args) == 0
    scores = json.loads(out.read_text())
    assert scores["apls"] == pytest.approx(8 / 15)
    assert scores["truth_length_m"] == pytest.approx(500.0)
    assert scores["metric_crs"].startswith("roadseg pixel grid")
    # the files' own length_m (metres) say 0.5 m a pixel: another size is refused
    assert main(["score-network", str(truth), str(proposal), "--pixel-size", "1"]) == 2
    assert "length_m) say 0.5 m per coordinate unit, not the 1 m given" in capsys.readouterr().err
    placed = write_network(tmp_path / "placed.gpkg")
    assert main(["score-network", str(placed), str(proposal), "--pixel-size", "0.5"]) == 2
    assert "cannot be placed on each other" in capsys.readouterr().err


def test_networks_on_a_local_tile_grid_are_measured_in_its_metres(tmp_path: Path) -> None:
    """The networks of a tile set without georeferencing (Massachusetts Roads) lie on
    roadseg's local metre grid, an engineering CRS: scored in it, not sent to a UTM zone."""
    from pipeline.raster import LOCAL_GRID_WKT

    truth = write_network(tmp_path / "truth.gpkg", crs=LOCAL_GRID_WKT)
    proposal = write_network(tmp_path / "proposal.gpkg", with_bridge=False, crs=LOCAL_GRID_WKT)
    out = tmp_path / "scores.json"
    assert main(["score-network", str(truth), str(proposal), "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["apls"] == pytest.approx(8 / 15)
    assert scores["truth_length_m"] == pytest.approx(500.0)
    assert "roadseg local tile grid" in scores["metric_crs"]


def test_within_a_raster_scores_only_where_it_has_pixels(tmp_path: Path, capsys) -> None:
    """--within: the truth's right-hand 75 m lie where the image has no data; the proposal,
    traced from that image, stops where its pixels stop and is complete inside them."""
    from affine import Affine

    from pipeline import raster

    truth = write_network(tmp_path / "truth.gpkg")
    proposal = tmp_path / "proposal.gpkg"
    gpd.GeoDataFrame(
        geometry=[line((0, 0), (125, 0)), line((0, 100), (125, 100)), line((100, 0), (100, 100))],
        crs=UTM,
    ).to_file(proposal, driver="GPKG")
    image = np.full((1, 140, 240), 50, np.uint8)
    image[:, :, 145:] = 0  # nodata from x = 125 m on
    transform = Affine(1.0, 0.0, X0 - 20, 0.0, -1.0, Y0 + 120)
    scene = raster.write_geotiff(
        tmp_path / "scene.tif", image, crs=UTM, transform=transform, nodata=0
    )
    out = tmp_path / "s.json"
    assert main(["score-network", str(truth), str(proposal), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["apls"] < 0.9  # the right-hand ends count as missed
    args = ["score-network", str(truth), str(proposal), "--within", str(scene), "--json", str(out)]
    assert main([*args, "--overwrite"]) == 0
    scores = json.loads(out.read_text())
    assert scores["truth_length_m"] == pytest.approx(350.0, abs=0.5)  # 2 x 125 m + the bridge
    assert scores["apls"] == pytest.approx(1.0, abs=0.01) and scores["within"] == str(scene)
    capsys.readouterr()
    bare = raster.write_geotiff(tmp_path / "bare.tif", image, crs=None, transform=transform)
    assert main(["score-network", str(truth), str(proposal), "--within", str(bare)]) == 2
    assert "bare.tif" in capsys.readouterr().err


def test_layers_are_selectable(tmp_path: Path, capsys) -> None:
    path = write_network(tmp_path / "both.gpkg")
    write_centrelines(path, crs=UTM, layer="osm")
    args = ["score-network", str(path), str(path), "--proposal-layer", "osm", "--json"]
    assert main([*args, str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["apls"] == pytest.approx(8 / 15)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no such file"),
        (lambda p: write_centrelines(p, layer="roads") and p, "no line layer 'edges'"),
        (
            lambda p: gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs=UTM).to_file(p) or p,
            "no line layer",
        ),
    ],
)
def test_bad_input_names_the_file(tmp_path: Path, capsys, make, message) -> None:
    truth = write_network(tmp_path / "truth.gpkg")
    bad = make(tmp_path / "bad.gpkg")
    layer = ["--proposal-layer", "edges"] if "edges" in message else []
    assert main(["score-network", str(truth), str(bad), *layer]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert message in err


def test_score_network_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["score-network", "--help"])
    out = capsys.readouterr().out
    for option in ("--json", "--truth-layer", "--proposal-layer", "--max-sources", "APLS"):
        assert option in out
    assert "--params" not in out  # the defaults of GraphMetricsParams, not a params file


def test_network_edges_must_be_single_lines_with_integer_ends(tmp_path: Path) -> None:
    path = write_network(tmp_path / "net.gpkg")
    edges = gpd.read_file(path, layer="edges")
    joined = edges.copy()
    joined.loc[0, "geometry"] = shapely.MultiLineString(
        [line((0, 0), (50, 0)), line((50, 0), (100, 0))]
    )
    joined.to_file(tmp_path / "joined.gpkg", layer="edges")
    assert read_road_graph(tmp_path / "joined.gpkg").number_of_edges() == 5
    broken = edges.copy()
    broken.loc[0, "geometry"] = shapely.MultiLineString(
        [line((0, 0), (40, 0)), line((50, 0), (100, 0))]
    )
    broken.to_file(tmp_path / "broken.gpkg", layer="edges")
    with pytest.raises(
        GraphInputError, match=r"broken.gpkg: layer 'edges': 1 edges are not one line"
    ):
        read_road_graph(tmp_path / "broken.gpkg")
    edges.assign(u=edges["u"] + 0.0).to_file(tmp_path / "float.gpkg", layer="edges")
    assert read_road_graph(tmp_path / "float.gpkg").number_of_edges() == 5
    edges.assign(u=edges["u"] + 0.5).to_file(tmp_path / "half.gpkg", layer="edges")
    with pytest.raises(GraphInputError, match="half.gpkg: layer 'edges': the u and v columns"):
        read_road_graph(tmp_path / "half.gpkg")
