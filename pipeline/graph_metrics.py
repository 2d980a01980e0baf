"""APLS and TOPO: how well a proposed road network matches the true one, in metres.

API for callers (the evaluate stage, ``pipeline score-network``)::

    from pipeline.config import GraphMetricsParams
    from pipeline.graph_metrics import score_networks
    scores = score_networks(truth_graph, proposal_graph, GraphMetricsParams())
    # {"apls", "apls_gt_onto_prop", "apls_prop_onto_gt",
    #  "topo_precision", "topo_recall", "topo_f1"}: floats in [0, 1]

The graphs are networkx graphs (``Graph``/``MultiGraph``, directions ignored) whose nodes
carry ``x``, ``y`` and whose edges may carry a LineString ``geometry`` (else straight
segments), with the CRS in ``graph.graph["crs"]`` or passed as ``truth_crs``/``proposal_crs``
(see :mod:`pipeline.road_graph` for readers). Everything is measured in metres, in the
truth's CRS when projected (not a Mercator: EPSG:3857's metres are not the ground's), else
in the UTM zone of the truth; the proposal is reprojected.

**APLS** is the SpaceNet metric as the CosmiQ reference ``apls.py`` (Van Etten et al. 2018)
computes it, with ``linestring_delta=50``, ``max_snap_dist=4``, ``min_path_length=10`` and
midpoints injected on straight and curved edges alike (``is_curved_eps < 0``):

1. Control points of a graph: all its nodes, plus points inserted along each edge: none on
   an edge shorter than 0.75 x 50 m, its midpoint on one up to 50 m, else ceil(L / 50) - 1
   points evenly spaced.
2. Each control point of the truth is snapped onto the nearest edge of the proposal (as it is,
   without its own control points) and inserted there as a node, when within 4 m; else it
   is missing.
3. For each ordered pair (a, b) of truth control points joined by a truth path of length
   L >= 10 m: d = min(1, |L - L'| / L) with L' the proposal path between the snapped points;
   d = 1 when b is missing or no proposal path exists; when a itself is missing, d = 1 for
   every b reachable from it in the truth (the reference skips the 10 m rule there).
   C(truth -> proposal) = 1 - mean(d) (0 when there are no pairs).
4. The same with the roles swapped gives C(proposal -> truth), which punishes spurious roads.
5. APLS = harmonic mean of the two, 0 when either is 0.

Checked against that reference (the ``apls`` 0.1.0 package: ``make_graphs`` then
``compute_apls_metric``) on random perturbed grid cities with spacings 30, 50 and 200 m, with
and without ``is_curved_eps`` (``apls_curved_eps`` here), and on the hand-worked cases of
tests/test_graph_metrics.py: equal to 6 decimals, with ``simplify=False`` since the reference
does not simplify itself (SpaceNet simplifies its graphs with osmnx before scoring). Note that
the reference's command line defaults differ from the metric as published and used here
(``--linestring_delta 200 --is_curved_eps 0.12 --min_path_length 0.001``); all are
parameters of :class:`GraphMetricsParams`.

Departures from the reference, none of which changes a score on graphs without ties: points
that land on the same spot of the other graph share one node (the reference renames nodes,
which can lose a point); the nearest edge is exact (an R-tree) rather than searched among
the edges of the nearest nodes; shortest paths come from scipy's Dijkstra. With
``apls_max_sources`` the pairs are those from a seeded sample of source control points to
every control point (the reference's ``make_graphs_yuge`` instead drops the inserted points).
This is *not* the APLS of Sat2Graph, RNGDet++ and SAM-Road (a Go program: ~2 m
densification, 10 m snapping, arithmetic mean); figures of the two do not compare.

**TOPO** (Biagioni and Eriksson 2012): seeds every 50 m along the truth edges; each is paired
with the nearest point of the proposal within 11 m (a seed without one keeps its holes and
finds no marbles). Both graphs are sampled at most 5 m apart along every edge; the samples
within 300 m of the seed along the truth are its holes, those within 300 m of its proposal
point along the proposal its marbles. Holes and marbles closer than 5 m are matched one to
one (a maximum bipartite matching). Precision = matched / marbles and recall = matched /
holes, with the counts summed over all seeds; F1 their harmonic mean. The direction of the
proposal edge at a seed is not checked. This is Biagioni and Eriksson's propagation along
both graphs, not CosmiQ's ``topo_metric.py`` (20 random truth nodes as origins, subgraphs cut
by straight-line distance, holes every 30 m); TOPO figures of different codes do not compare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import shapely
from pyproj import CRS
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, maximum_bipartite_matching
from scipy.spatial import cKDTree

from pipeline.config import GraphMetricsParams
from pipeline.road_graph import (
    GraphInputError,
    RoadGraph,
    metric_graph,
    raster_valid_area,
    read_road_graph,
)

# what receives the APLS control points of both directions (truth -> proposal, proposal ->
# truth) and the CRS they are in: pipeline.apls_points.write_control_points, bound to a path
PointsSink = Callable[["ControlPoints", "ControlPoints", "CRS | None"], Any]
_TOL = 1e-6  # metres: points this close to a node or to each other are the same place
_BATCH_BYTES = 64 * 2**20  # Dijkstra rows held at a time (sources x nodes x 8 bytes)


def score_networks(
    truth_graph: nx.Graph,
    proposal_graph: nx.Graph,
    params: GraphMetricsParams | None = None,
    *,
    truth_crs: Any = None,
    proposal_crs: Any = None,
    points: PointsSink | None = None,
) -> dict[str, float]:
    """APLS (both directions and their harmonic mean) and TOPO precision, recall and F1;
    ``points``, when given, receives the APLS control points of both directions and the CRS
    they are in (``pipeline.apls_points.write_control_points`` writes them to a file)."""
    params = params or GraphMetricsParams()
    truth = metric_graph(truth_graph, truth_crs, simplify=params.simplify)
    proposal = metric_graph(proposal_graph, proposal_crs, truth.crs, simplify=params.simplify)
    return _scores(truth, proposal, params, points)


def _scores(
    truth: RoadGraph, proposal: RoadGraph, params: GraphMetricsParams, points: PointsSink | None
) -> dict[str, float]:
    directions = apls_points(truth, proposal, params)
    if points is not None:
        points(*directions, truth.crs)
    return {**apls_scores(*directions), **topo(truth, proposal, params)}


def score_network_files(
    truth_path: str | Path,
    proposal_path: str | Path,
    params: GraphMetricsParams | None = None,
    *,
    truth_layer: str | None = None,
    proposal_layer: str | None = None,
    within: str | Path | None = None,
    points: PointsSink | None = None,
    pixel_size_m: float | None = None,
) -> dict[str, Any]:
    """:func:`score_networks` of two vector files (see :func:`pipeline.road_graph.read_road_graph`),
    with the lengths of both networks and the CRS they were measured in. With ``within`` (a
    raster: the image the proposal was predicted from), the truth is clipped to its valid
    pixels, as evaluate clips a scene's roads: a road where the image has no data cannot be
    found. The proposal is scored whole; ``points`` as for :func:`score_networks`. Files
    without a CRS (networks of rasters without georeferencing, in pixels) are read with
    ``pixel_size_m`` metres a pixel; both must then be without one."""
    params = params or GraphMetricsParams()
    area = raster_valid_area(within, pixel_size_m) if within is not None else None
    truth_graph = read_road_graph(truth_path, truth_layer, area, pixel_size_m)
    proposal_graph = read_road_graph(proposal_path, proposal_layer, None, pixel_size_m)
    _same_kind_of_grid(truth_graph, proposal_graph, truth_path, proposal_path)
    truth = metric_graph(truth_graph, simplify=params.simplify)
    proposal = metric_graph(proposal_graph, None, truth.crs, simplify=params.simplify)
    return {
        **_scores(truth, proposal, params, points),
        "truth_length_m": truth.total_length_m,
        "proposal_length_m": proposal.total_length_m,
        "metric_crs": _crs_name(truth.crs),
        "truth": str(truth_path),
        "proposal": str(proposal_path),
        "within": str(within) if within is not None else None,
        "apls_definition": "SpaceNet APLS (CosmiQ apls.py), not the Sat2Graph variant",
        "params": params.model_dump(),
    }


def _crs_name(crs: CRS | None) -> str | None:
    """A CRS as the scores name it: its code, or the name of a grid of its own (engineering)."""
    if crs is None:
        return None
    return crs.name if crs.is_engineering else crs.to_string()


def _same_kind_of_grid(truth: nx.Graph, proposal: nx.Graph, *paths: str | Path) -> None:
    """Refuse to compare a network on a grid of its own (the pixels of a raster without
    georeferencing, a tile set's local grid) with one on another grid or on Earth."""
    crs = [CRS.from_user_input(g.graph["crs"]) for g in (truth, proposal)]
    local = [c.is_engineering for c in crs]
    if any(local) and crs[0] != crs[1]:
        which = paths[local.index(True)]
        raise GraphInputError(
            f"{which}: on a grid of its own ({crs[local.index(True)].name}), the other network "
            "on another: they cannot be placed on each other"
        )


def format_scores(scores: dict[str, Any]) -> str:
    """The scores as a few lines of text for a terminal."""
    return "\n".join(
        [
            f"APLS  {scores['apls']:.4f}  (truth->proposal {scores['apls_gt_onto_prop']:.4f}, "
            f"proposal->truth {scores['apls_prop_onto_gt']:.4f}; SpaceNet definition)",
            f"TOPO  F1 {scores['topo_f1']:.4f}  (precision {scores['topo_precision']:.4f}, "
            f"recall {scores['topo_recall']:.4f})",
            f"roads truth {scores['truth_length_m'] / 1000:.3f} km, proposal "
            f"{scores['proposal_length_m'] / 1000:.3f} km, measured in {scores['metric_crs']}",
        ]
    )


# ------------------------------------------------------------------------------ weighted graphs
@dataclass(frozen=True)
class _Split:
    """A RoadGraph cut at points along its edges, as a sparse matrix of piece lengths.

    ``point_node[k]`` is the node of the k-th point; nodes beyond the graph's own are the new
    points, at ``new_edge``/``new_pos`` (edge index, metres from its start).
    """

    matrix: csr_matrix
    point_node: np.ndarray
    new_edge: np.ndarray
    new_pos: np.ndarray

    @property
    def n_nodes(self) -> int:
        return self.matrix.shape[0]


def _split(road: RoadGraph, edge: np.ndarray, pos: np.ndarray) -> _Split:
    """Cut ``road`` at the points (``edge[k]``, ``pos[k]`` metres along it)."""
    n0, lengths = len(road.xy), road.lengths
    order = np.lexsort((pos, edge))
    starts = np.searchsorted(edge[order], np.arange(len(lengths) + 1))
    point_node = np.empty(len(pos), dtype=np.int64)
    new_edge: list[int] = []
    new_pos: list[float] = []
    rows, cols, weights = [], [], []
    for e, (u, v) in enumerate(road.edges):
        prev, prev_pos, length = u, 0.0, lengths[e]
        for k in order[starts[e] : starts[e + 1]]:
            p = pos[k]
            if p <= _TOL:
                point_node[k] = u
            elif p >= length - _TOL:
                point_node[k] = v
            elif p - prev_pos <= _TOL and prev != u:
                point_node[k] = prev
            else:
                node = n0 + len(new_edge)
                new_edge.append(e)
                new_pos.append(p)
                rows.append(prev), cols.append(node), weights.append(p - prev_pos)
                prev, prev_pos, point_node[k] = node, p, node
        rows.append(prev), cols.append(v), weights.append(length - prev_pos)
    n = n0 + len(new_edge)
    return _Split(
        _matrix(rows, cols, weights, n), point_node, np.array(new_edge), np.array(new_pos)
    )


def _matrix(rows: list[int], cols: list[int], weights: list[float], n: int) -> csr_matrix:
    """Symmetric-use sparse matrix keeping the shortest of parallel pieces (no zero weights)."""
    r, c = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    w = np.maximum(np.array(weights, dtype=float), 1e-9)
    keep = lo != hi
    lo, hi, w = lo[keep], hi[keep], w[keep]
    order = np.lexsort((w, hi, lo))
    lo, hi, w = lo[order], hi[order], w[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return coo_matrix((w[first], (lo[first], hi[first])), shape=(n, n)).tocsr()


def _node_xy(road: RoadGraph, split: _Split) -> np.ndarray:
    """Coordinates of every node of ``split``: the graph's own, then the new points."""
    if len(split.new_edge) == 0:
        return road.xy
    points = shapely.line_interpolate_point(road.lines[split.new_edge], split.new_pos)
    return np.vstack([road.xy, shapely.get_coordinates(points)])


def _batches(n_sources: int, n_nodes: int) -> Iterator[slice]:
    """Slices of the sources whose Dijkstra rows together stay within _BATCH_BYTES."""
    size = max(1, min(256, _BATCH_BYTES // (8 * max(n_nodes, 1))))
    for i in range(0, n_sources, size):
        yield slice(i, i + size)


# --------------------------------------------------------------------------------------- APLS
def apls(truth: RoadGraph, proposal: RoadGraph, params: GraphMetricsParams) -> dict[str, float]:
    """APLS of two graphs in the same metric CRS (see the module docstring)."""
    return apls_scores(*apls_points(truth, proposal, params))


@dataclass(frozen=True)
class ControlPoints:
    """The APLS control points of one graph scored onto the other (one direction): where
    each point is, whether it snapped onto the other graph, and the path-length differences
    d of the pairs that start from it (none for a point left out of a sample)."""

    xy: np.ndarray  # (N, 2) in the metric CRS
    snapped: np.ndarray  # (N,) bool: the other graph within the snap distance
    pairs: np.ndarray  # (N,) int: pairs counted from the point
    d_sum: np.ndarray  # (N,) float: their d summed

    @property
    def score(self) -> float:
        """C(this graph -> the other): 1 - the mean d over every pair."""
        count = int(self.pairs.sum())
        return float(1.0 - self.d_sum.sum() / count) if count else 0.0

    @property
    def mean_d(self) -> np.ndarray:
        """Each point's mean d (NaN without pairs): what it costs the score, 0 to 1."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.pairs > 0, self.d_sum / self.pairs, np.nan)


def apls_points(
    truth: RoadGraph, proposal: RoadGraph, params: GraphMetricsParams
) -> tuple[ControlPoints, ControlPoints]:
    """The control points of both directions: truth onto proposal, proposal onto truth."""
    return _control_points(truth, proposal, params), _control_points(proposal, truth, params)


def apls_scores(gt_onto_prop: ControlPoints, prop_onto_gt: ControlPoints) -> dict[str, float]:
    """APLS, the harmonic mean of the two directions (0 when either is 0), and both."""
    a, b = gt_onto_prop.score, prop_onto_gt.score
    both = 0.0 if min(a, b) <= 0 else float(2 * a * b / (a + b))
    return {"apls": both, "apls_gt_onto_prop": a, "apls_prop_onto_gt": b}


def control_positions(
    road: RoadGraph, spacing: float, curved_eps: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(edge, metres along it) of the control points APLS inserts along edges.

    ``curved_eps`` (the reference's ``is_curved_eps``), when given, leaves out the edges that
    are nearly straight: those whose length exceeds their bounding box's diagonal by less
    than this fraction of the length.
    """
    edges, positions = [], []
    lengths = road.lengths
    diagonals = _bbox_diagonals(road.lines)
    for e, length in enumerate(lengths):
        if length < 0.75 * spacing - _TOL:
            continue
        if curved_eps is not None and abs(diagonals[e] - length) / length < curved_eps:
            continue
        if length <= spacing + _TOL:
            inner = np.array([0.5 * length])
        else:
            inner = np.linspace(0.0, length, int(np.ceil(length / spacing - _TOL)) + 1)[1:-1]
        edges += [e] * len(inner)
        positions += list(inner)
    return np.array(edges, dtype=np.int64), np.array(positions, dtype=float)


def _bbox_diagonals(lines: np.ndarray) -> np.ndarray:
    bounds = shapely.bounds(lines).reshape(-1, 4)
    return np.hypot(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])


def _control_points(
    source: RoadGraph, other: RoadGraph, params: GraphMetricsParams
) -> ControlPoints:
    """``source``'s control points scored onto ``other`` (C(source -> other) is their score)."""
    positions = control_positions(source, params.apls_control_spacing_m, params.apls_curved_eps)
    native = _split(source, *positions)
    n_points = native.n_nodes  # control points: every node of the source with its midpoints
    xy = _node_xy(source, native).reshape(-1, 2)
    other_node = np.full(n_points, -1, dtype=np.int64)
    prime = None
    if n_points and len(other.edges):
        snapped_on = _snap(xy, other, params.apls_snap_m)
        prime = _split(other, snapped_on[1], snapped_on[2])
        other_node[snapped_on[0]] = prime.point_node
    pairs, d_sum = np.zeros(n_points, np.int64), np.zeros(n_points)
    sources = _sample(n_points, params.apls_max_sources, params.seed)
    if prime is None:  # nothing to snap onto: every pair a source reaches counts d = 1
        if n_points:
            _, component = connected_components(native.matrix, directed=False)
            pairs[sources] = np.bincount(component)[component[sources]] - 1
        return ControlPoints(xy, other_node >= 0, pairs, pairs.astype(float))
    for batch in _batches(len(sources), max(n_points, prime.n_nodes)):
        rows = sources[batch]
        lengths = dijkstra(native.matrix, directed=False, indices=rows)
        d_sum[rows], pairs[rows] = _path_differences(
            lengths, rows, other_node, prime, params.apls_min_path_m
        )
    return ControlPoints(xy, other_node >= 0, pairs, d_sum)


def _snap(points: np.ndarray, road: RoadGraph, max_distance: float) -> tuple:
    """(point index, edge, metres along it) of the points within ``max_distance`` of ``road``."""
    geoms = shapely.points(points)
    tree = shapely.STRtree(road.lines)
    (idx, edge), _ = tree.query_nearest(
        geoms, max_distance=max_distance, return_distance=True, all_matches=False
    )
    pos = shapely.line_locate_point(road.lines[edge], geoms[idx])
    return idx, edge, pos


def _sample(n: int, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _path_differences(
    lengths: np.ndarray,
    rows: np.ndarray,
    other_node: np.ndarray,
    other: _Split,
    min_m: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of d, pairs counted) from each of the source points ``rows`` (``lengths``: their
    distances in the source)."""
    n_points = len(other_node)
    lengths = lengths[:, :n_points]
    reach = np.isfinite(lengths)
    reach[np.arange(len(rows)), rows] = False
    present = other_node[rows] >= 0
    # a missing start: d = 1 for every point it reaches (the reference skips the 10 m rule)
    counts = reach.sum(axis=1)
    sums = counts.astype(float)
    if not present.any():
        return sums, counts
    starts = other_node[rows[present]]
    other_lengths = dijkstra(other.matrix, directed=False, indices=starts)
    ends = np.where(other_node >= 0, other_node, 0)
    alt = np.where(other_node >= 0, other_lengths[:, ends], np.inf)
    truth = lengths[present]
    counted = reach[present] & (truth >= min_m)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(np.isfinite(alt), np.minimum(1.0, np.abs(truth - alt) / truth), 1.0)
    sums[present] = np.where(counted, d, 0.0).sum(axis=1)
    counts[present] = counted.sum(axis=1)
    return sums, counts


# --------------------------------------------------------------------------------------- TOPO
def topo(truth: RoadGraph, proposal: RoadGraph, params: GraphMetricsParams) -> dict[str, float]:
    """TOPO precision, recall and F1 of two graphs in the same metric CRS."""
    gt, gt_seeds = _densify(truth, params.topo_interval_m, params.topo_seed_spacing_m)
    prop, _ = _densify(proposal, params.topo_interval_m, None)
    seeds = gt_seeds[_sample(len(gt_seeds), params.topo_max_seeds, params.seed)]
    matched = holes = marbles = 0
    if len(prop.xy):
        dist, nearest = cKDTree(prop.xy).query(
            gt.xy[seeds], distance_upper_bound=params.topo_seed_match_m
        )
        starts = np.where(np.isfinite(dist), nearest, -1)
    else:
        starts = np.full(len(seeds), -1)
    radius = params.topo_radius_m
    for batch in _batches(len(seeds), max(len(gt.xy), len(prop.xy))):
        gt_dist = dijkstra(gt.matrix, directed=False, indices=seeds[batch], limit=radius)
        prop_dist = _distances_or_none(prop.matrix, starts[batch], radius)
        for within_gt, within_prop in zip(
            np.isfinite(gt_dist), np.isfinite(prop_dist), strict=True
        ):
            h, m = gt.xy[within_gt], prop.xy[within_prop]
            matched += _match_count(h, m, params.topo_match_m)
            holes += len(h)
            marbles += len(m)
    precision = matched / marbles if marbles else 0.0
    recall = matched / holes if holes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"topo_precision": precision, "topo_recall": recall, "topo_f1": f1}


@dataclass(frozen=True)
class _Dense:
    xy: np.ndarray
    matrix: csr_matrix


def _densify(
    road: RoadGraph, interval: float, seed_spacing: float | None
) -> tuple[_Dense, np.ndarray]:
    """``road`` sampled at most ``interval`` apart along edges, and its seed nodes.

    Seeds are the samples nearest to every ``seed_spacing`` metres from each edge's start.
    """
    edges, positions, seeds = [], [], []
    for e, length in enumerate(road.lengths):
        n = max(1, int(np.ceil(length / interval - _TOL)))
        first = len(positions)
        edges += [e] * (n - 1)
        positions += list(np.linspace(0.0, length, n + 1)[1:-1])
        if seed_spacing is not None and length > 0:
            steps = np.rint(np.arange(0.0, length + _TOL, seed_spacing) / (length / n))
            seeds += [(e, int(k), first + int(k) - 1, n) for k in steps]
    split = _split(road, np.array(edges, dtype=np.int64), np.array(positions, dtype=float))
    u, v = road.edges[:, 0], road.edges[:, 1]
    nodes = {u[e] if k == 0 else v[e] if k == n else split.point_node[p] for e, k, p, n in seeds}
    return _Dense(_node_xy(road, split), split.matrix), np.array(sorted(nodes), dtype=np.int64)


def _distances_or_none(matrix: csr_matrix, starts: np.ndarray, radius: float) -> np.ndarray:
    out = np.full((len(starts), matrix.shape[0]), np.inf)
    ok = starts >= 0
    if ok.any():
        out[ok] = dijkstra(matrix, directed=False, indices=starts[ok], limit=radius)
    return out


def _match_count(holes: np.ndarray, marbles: np.ndarray, max_distance: float) -> int:
    """Size of a maximum one-to-one matching of holes to marbles closer than ``max_distance``."""
    if len(holes) == 0 or len(marbles) == 0:
        return 0
    pairs = cKDTree(holes).sparse_distance_matrix(
        cKDTree(marbles), max_distance, output_type="ndarray"
    )
    if len(pairs) == 0:
        return 0
    graph = csr_matrix(
        (np.ones(len(pairs)), (pairs["i"], pairs["j"])), shape=(len(holes), len(marbles))
    )
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
