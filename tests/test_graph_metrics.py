"""APLS and TOPO on small graphs whose scores are worked out by hand from the definitions.

Coordinates are metres in UTM 33N (EPSG:32633) around an origin; every road is a multiple of
50 m long, so APLS control points fall every 50 m and TOPO samples every 5 m exactly.
"""

from __future__ import annotations

from fractions import Fraction

import networkx as nx
import pytest
import shapely
from pyproj import Transformer

from pipeline.config import GraphMetricsParams
from pipeline.graph_metrics import apls_points, control_positions, score_networks
from pipeline.road_graph import metric_graph

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0
# TOPO with a radius that reaches every sample of these small graphs
WIDE = GraphMetricsParams(topo_radius_m=1000.0)


def road_graph(*roads: list[tuple[float, float]], crs: str = UTM) -> nx.MultiGraph:
    """One edge per road (a polyline in metres from the origin); equal end points are one node."""
    graph = nx.MultiGraph(crs=crs)
    for road in roads:
        pts = [(X0 + x, Y0 + y) for x, y in road]
        for p in (pts[0], pts[-1]):
            graph.add_node(p, x=p[0], y=p[1])
        graph.add_edge(pts[0], pts[-1], geometry=shapely.LineString(pts))
    return graph


def harmonic(a: Fraction, b: Fraction) -> float:
    return float(2 * a * b / (a + b))


# Two parallel 200 m roads joined by a 100 m bridge in their middle (an "H").
SOUTH_W, SOUTH_E = [(0, 0), (100, 0)], [(100, 0), (200, 0)]
NORTH_W, NORTH_E = [(0, 100), (100, 100)], [(100, 100), (200, 100)]
BRIDGE = [(100, 0), (100, 100)]
H_ROADS = (SOUTH_W, SOUTH_E, NORTH_W, NORTH_E, BRIDGE)
# A 300 m U and a 100 m straight road closing it.
U_ROAD = [(0, 0), (0, 100), (100, 100), (100, 0)]
SHORTCUT = [(0, 0), (100, 0)]


def test_identical_graphs_score_one() -> None:
    g = road_graph(*H_ROADS)
    scores = score_networks(g, g, WIDE)
    assert scores == pytest.approx(
        {
            "apls": 1.0,
            "apls_gt_onto_prop": 1.0,
            "apls_prop_onto_gt": 1.0,
            "topo_precision": 1.0,
            "topo_recall": 1.0,
            "topo_f1": 1.0,
        }
    )


def test_missing_road() -> None:
    """Truth: two 200 m roads 100 m apart; the proposal has only the southern one.

    APLS: each road has control points at 0, 50, ..., 200 m (5 points, 20 ordered pairs).
    Truth -> proposal: southern pairs d = 0; northern points are 100 m from the proposal,
    so missing: 20 pairs d = 1; C = 1 - 20/40 = 1/2. Proposal -> truth: 20 pairs, d = 0,
    C = 1. APLS = 2 (1/2)(1) / (3/2) = 2/3.
    TOPO: 5 seeds per road; a southern seed finds all 41 samples of the road as holes and as
    marbles, all matched; a northern seed has no proposal within 11 m: 41 holes, 0 marbles.
    Precision 1, recall 205/410 = 1/2, F1 2/3.
    """
    south, north = [(0, 0), (200, 0)], [(0, 100), (200, 100)]
    scores = score_networks(road_graph(south, north), road_graph(south), WIDE)
    assert scores["apls_gt_onto_prop"] == pytest.approx(0.5)
    assert scores["apls_prop_onto_gt"] == pytest.approx(1.0)
    assert scores["apls"] == pytest.approx(2 / 3)
    assert scores["topo_precision"] == pytest.approx(1.0)
    assert scores["topo_recall"] == pytest.approx(0.5)
    assert scores["topo_f1"] == pytest.approx(2 / 3)


def test_removed_bridge() -> None:
    """Truth: the H; the proposal lacks the bridge.

    APLS truth -> proposal: 11 control points (5 on each road, the bridge's midpoint M), all
    connected: 110 ordered pairs. M is 50 m from the proposal, missing: 20 pairs with d = 1;
    the 50 pairs across the roads have no proposal path: d = 1; the 40 pairs along a road
    d = 0. C = 1 - 70/110 = 4/11. Proposal -> truth: the 10 road points, 40 pairs along the
    roads, d = 0: C = 1. APLS = 2 (4/11) / (15/11) = 8/15.
    TOPO: 11 seeds (5 per road, M); each seed's holes are all 101 truth samples (41 per road,
    19 inside the bridge). A road seed's marbles are its road's 41 samples, all matched; M
    finds no proposal within 11 m. Precision 1, recall 410/1111.
    """
    truth = road_graph(*H_ROADS)
    proposal = road_graph(SOUTH_W, SOUTH_E, NORTH_W, NORTH_E)
    scores = score_networks(truth, proposal, WIDE)
    assert scores["apls_gt_onto_prop"] == pytest.approx(4 / 11)
    assert scores["apls_prop_onto_gt"] == pytest.approx(1.0)
    assert scores["apls"] == pytest.approx(8 / 15)
    recall = Fraction(410, 1111)
    assert scores["topo_precision"] == pytest.approx(1.0)
    assert scores["topo_recall"] == pytest.approx(float(recall))
    assert scores["topo_f1"] == pytest.approx(harmonic(Fraction(1), recall))


def test_control_points_say_where_the_removed_bridge_costs() -> None:
    """The removed bridge again, point by point: the bridge's midpoint M is missing (its 10
    pairs d = 1); each road point keeps its 4 pairs along its road (d = 0) and loses the 5
    across and the one to M (d = 1): mean d 6/10. The proposal's points keep every pair."""
    truth, proposal = (metric_graph(g) for g in (road_graph(*H_ROADS), road_graph(*H_ROADS[:4])))
    onto_prop, onto_truth = apls_points(truth, proposal, WIDE)
    xy = [(round(x - X0, 6), round(y - Y0, 6)) for x, y in onto_prop.xy]
    m = xy.index((100.0, 50.0))
    assert not onto_prop.snapped[m] and onto_prop.snapped.sum() == 10
    assert onto_prop.pairs[m] == 10 and onto_prop.mean_d[m] == pytest.approx(1.0)
    roads = [i for i in range(len(xy)) if i != m]
    assert list(onto_prop.pairs[roads]) == [10] * 10
    assert onto_prop.mean_d[roads] == pytest.approx([0.6] * 10)
    assert onto_prop.score == pytest.approx(4 / 11)  # 1 - (10 x 6 + 10) / 110
    assert onto_truth.snapped.all() and list(onto_truth.pairs) == [4] * 10
    assert onto_truth.mean_d == pytest.approx([0.0] * 10)


def test_spurious_shortcut() -> None:
    """Truth: the 300 m U; the proposal adds a 100 m road closing it into a 400 m ring.

    Truth control points at s = 0, 50, ..., 300 m along the U: truth path |ds|, proposal path
    min(|ds|, 400 - |ds|). Truth -> proposal, over 21 pairs (each counted both ways): ds = 250
    (2 pairs) d = 100/250, ds = 300 (1 pair) d = 200/300, others 0:
    C = 1 - (2 * 2/5 + 2/3) / 21 = 293/315.
    Proposal -> truth: the 7 U points and the shortcut's midpoint S, 50 m from the truth
    (missing): 14 pairs with S, d = 1; the U pairs now have proposal length L = min(ds, 400 -
    ds) and truth length ds: ds = 250, d = 100/150 (2 pairs); ds = 300, d = min(1, 2) = 1
    (1 pair). C = 1 - (14 + 2 * (2 * 2/3 + 1)) / 56 = 2/3.
    TOPO: 7 seeds; holes: the U's 61 samples; marbles: the ring's 80, 61 matched.
    Precision 61/80, recall 1.
    """
    scores = score_networks(road_graph(U_ROAD), road_graph(U_ROAD, SHORTCUT), WIDE)
    gt_onto_prop, prop_onto_gt = Fraction(293, 315), Fraction(2, 3)
    assert scores["apls_gt_onto_prop"] == pytest.approx(float(gt_onto_prop))
    assert scores["apls_prop_onto_gt"] == pytest.approx(float(prop_onto_gt))
    assert scores["apls"] == pytest.approx(harmonic(gt_onto_prop, prop_onto_gt))
    precision = Fraction(61, 80)
    assert scores["topo_precision"] == pytest.approx(float(precision))
    assert scores["topo_recall"] == pytest.approx(1.0)
    assert scores["topo_f1"] == pytest.approx(harmonic(precision, Fraction(1)))


def test_scores_do_not_depend_on_how_roads_are_cut_into_edges() -> None:
    truth = road_graph(U_ROAD)
    proposal = road_graph(U_ROAD, SHORTCUT)
    cut_truth = road_graph(
        [(0, 0), (0, 37)], [(0, 37), (0, 100), (63, 100)], [(63, 100), (100, 100), (100, 0)]
    )
    cut_proposal = road_graph(
        [(0, 0), (0, 100), (12, 100)],
        [(12, 100), (100, 100), (100, 0)],
        [(0, 0), (71, 0)],
        [(71, 0), (100, 0)],
    )
    assert score_networks(cut_truth, cut_proposal, WIDE) == pytest.approx(
        score_networks(truth, proposal, WIDE)
    )


def test_geographic_crs_is_measured_in_metres() -> None:
    """The H and the bridgeless H in longitude/latitude score as they do in UTM."""
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)

    def in_lonlat(graph: nx.MultiGraph) -> nx.MultiGraph:
        out = nx.MultiGraph(crs="EPSG:4326")
        for n, d in graph.nodes(data=True):
            lon, lat = to_lonlat.transform(d["x"], d["y"])
            out.add_node(n, x=lon, y=lat)
        for u, v, d in graph.edges(data=True):
            line = [to_lonlat.transform(*xy) for xy in d["geometry"].coords]
            out.add_edge(u, v, geometry=shapely.LineString(line))
        return out

    truth = road_graph(*H_ROADS)
    proposal = road_graph(SOUTH_W, SOUTH_E, NORTH_W, NORTH_E)
    geo_truth = in_lonlat(truth)
    assert metric_graph(geo_truth).total_length_m == pytest.approx(500.0, abs=1e-3)
    assert score_networks(geo_truth, in_lonlat(proposal), WIDE) == pytest.approx(
        score_networks(truth, proposal, WIDE)
    )
    # a UTM proposal is put into the truth's coordinates before it is compared
    assert score_networks(geo_truth, proposal, WIDE)["apls"] == pytest.approx(8 / 15)


def test_control_points_follow_the_reference_spacing() -> None:
    """None under 37.5 m, a midpoint up to 50 m, else ceil(L / 50) - 1 evenly spaced."""
    roads = [[(0, y), (length, y)] for y, length in enumerate([30, 40, 50, 120, 200])]
    road = metric_graph(road_graph(*roads), simplify=False)
    edge, pos = control_positions(road, 50.0)
    assert edge.tolist() == [1, 2, 3, 3, 4, 4, 4]
    assert pos.tolist() == pytest.approx([20, 25, 40, 80, 50, 100, 150])


def test_curved_eps_leaves_nearly_straight_edges_without_control_points() -> None:
    """The reference's is_curved_eps: (length - bounding-box diagonal) / length must reach it."""
    straight = [(0, 0), (100, 0)]
    bent = [(0, 50), (50, 80), (100, 50)]  # 116.6 m long, box diagonal 104.4 m: 0.105
    road = metric_graph(road_graph(straight, bent), simplify=False)
    assert control_positions(road, 50.0, curved_eps=0.1)[0].tolist() == [1, 1]
    assert control_positions(road, 50.0, curved_eps=0.12)[0].tolist() == []
    assert control_positions(road, 50.0)[0].tolist() == [0, 1, 1]


def test_a_two_way_directed_graph_scores_as_the_undirected_one() -> None:
    """osmnx graphs hold each two-way street twice, once per direction."""
    truth = road_graph(*H_ROADS)
    directed = nx.MultiDiGraph(crs=UTM)
    directed.add_nodes_from(truth.nodes(data=True))
    for u, v, d in truth.edges(data=True):
        directed.add_edge(u, v, geometry=d["geometry"])
        directed.add_edge(v, u, geometry=shapely.LineString(d["geometry"].coords[::-1]))
    assert directed.number_of_edges() == 2 * truth.number_of_edges()
    assert metric_graph(directed).total_length_m == pytest.approx(500.0)
    proposal = road_graph(SOUTH_W, SOUTH_E, NORTH_W, NORTH_E)
    assert score_networks(directed, proposal, WIDE) == pytest.approx(
        score_networks(truth, proposal, WIDE)
    )


def test_an_empty_proposal_scores_zero_and_an_empty_truth_too() -> None:
    truth = road_graph(*H_ROADS)
    empty = nx.MultiGraph(crs=UTM)
    assert set(score_networks(truth, empty).values()) == {0.0}
    assert set(score_networks(empty, truth).values()) == {0.0}


@pytest.mark.parametrize(
    "shift, apls_value, topo_f1",
    [
        (3.0, 1.0, 1.0),  # within APLS's 4 m snap and TOPO's 5 m match
        (4.5, 0.0, 1.0),  # every APLS control point missing; TOPO still matches
        (6.0, 0.0, 0.0),  # TOPO seeds still find the proposal (11 m), no hole matches
    ],
)
def test_a_shifted_proposal_meets_the_snap_and_match_distances(
    shift: float, apls_value: float, topo_f1: float
) -> None:
    south, north = [(0, 0), (200, 0)], [(0, 100), (200, 100)]
    moved = [[(x, y + shift) for x, y in road] for road in (south, north)]
    scores = score_networks(road_graph(south, north), road_graph(*moved), WIDE)
    assert scores["apls"] == pytest.approx(apls_value)
    assert scores["topo_f1"] == pytest.approx(topo_f1)


def test_a_sample_of_sources_is_seeded() -> None:
    """Scores from a sample repeat for a seed; a sample of all sources is the full score."""
    truth = road_graph(*H_ROADS)
    proposal = road_graph(SOUTH_W, SOUTH_E, NORTH_W, NORTH_E)
    sample = WIDE.model_copy(update={"apls_max_sources": 4, "topo_max_seeds": 4, "seed": 7})
    first = score_networks(truth, proposal, sample)
    assert score_networks(truth, proposal, sample) == first
    assert first["apls"] != pytest.approx(8 / 15)  # 4 of 11 sources: another estimate
    everything = WIDE.model_copy(update={"apls_max_sources": 11, "topo_max_seeds": 11})
    assert score_networks(truth, proposal, everything)["apls"] == pytest.approx(8 / 15)
