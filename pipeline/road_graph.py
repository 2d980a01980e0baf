"""Road graphs for scoring: read them from vector files, and bring them into metres.

Two kinds of input become a networkx ``MultiGraph`` whose nodes carry ``x``, ``y`` and whose
edges carry a shapely ``geometry`` (LineString in the same CRS), the CRS in
``graph.graph["crs"]`` (the osmnx convention):

- a road network GeoPackage with an ``edges`` layer (LineString; columns ``u``, ``v``, and
  ``edge_id``, ``length_m``, ``mean_prob``, ``min_prob`` that are kept as attributes) and a
  ``nodes`` layer (Point; ``node_id``, ``degree``), as ``pipeline network`` writes it;
- any line layer (road centrelines, OpenStreetMap extracts, SpaceNet GeoJSON): the lines are
  noded with shapely (split where they cross or touch), a line end that stops within 0.5 m of
  another line is joined to it (a T-junction drawn to a point inside a segment is rarely on it
  exactly after reprojection), and every line end becomes a node. Two roads that cross
  without a junction (a bridge) are then joined: mark such crossings in the data with the
  network format instead.

:func:`metric_graph` turns such a graph into a :class:`RoadGraph` in metres: a projected CRS
stays (coordinates scaled to metres when its unit is not the metre), a geographic one, or a
Mercator (the web's EPSG:3857, 1.4x too long at 45°), goes to the UTM zone of the data. A
second graph can be put into the first one's metric CRS, so that both are compared in the
same coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

from pipeline import raster
from pipeline.ground import is_mercator

END_SNAP_M = 0.5  # a line end this close to another line (metres) is joined to it
EDGES_LAYER = "edges"
NODES_LAYER = "nodes"
_LINES = ("LineString", "MultiLineString", "LineString Z", "MultiLineString Z")


class GraphInputError(ValueError):
    """A road graph that cannot be scored; the message names the file and the problem."""


@dataclass(frozen=True)
class RoadGraph:
    """An undirected road graph in metres, ready for the metrics.

    ``xy`` holds the node coordinates (n, 2); ``edges`` the end nodes of each edge (m, 2);
    ``lines`` a LineString per edge that runs from ``xy[u]`` to ``xy[v]``. Parallel edges and
    self-loops are allowed; an edge's length is the length of its line.
    """

    xy: np.ndarray
    edges: np.ndarray
    lines: np.ndarray
    crs: CRS | None = None

    @property
    def lengths(self) -> np.ndarray:
        return shapely.length(self.lines)

    @property
    def total_length_m(self) -> float:
        return float(self.lengths.sum())


# ------------------------------------------------------------------------------------- reading
def read_road_graph(
    path: str | Path,
    layer: str | None = None,
    within: gpd.GeoSeries | None = None,
    pixel_size_m: float | None = None,
) -> nx.MultiGraph:
    """A road graph from a vector file (see the module docstring for the two formats).

    ``layer`` picks the line layer; by default the ``edges`` layer when there is one, else the
    only line layer. ``within`` (an area with its CRS) keeps the parts of the lines inside it,
    noded as plain lines (a network GeoPackage's ends meet at its nodes, so its junctions
    stay). Data without a CRS (the network of a raster without georeferencing, in its pixels)
    is read with ``pixel_size_m`` metres a unit, on the pixel grid (``raster.PIXEL_GRID_WKT``).
    Raises GraphInputError naming ``path`` when the file, the layer or its lines (inside
    ``within``) are missing, or the data has no CRS and no ``pixel_size_m`` is given, or its
    own ``length_m`` says another size.
    """
    path = Path(path)
    layers = _line_layers(path)
    layer = layer or _default_layer(path, layers)
    if layer not in layers:
        raise GraphInputError(
            f"{path}: no line layer {layer!r} (line layers: {', '.join(layers) or 'none'})"
        )
    lines = _read_layer(path, layer, pixel_size_m)
    if within is not None:
        return graph_from_lines(_clip_lines(lines, within, f"{path}: layer {layer!r}"))
    if {"u", "v"} <= set(lines.columns):
        nodes = (
            _read_layer(path, NODES_LAYER, pixel_size_m)
            if NODES_LAYER in _all_layers(path)
            else None
        )
        return graph_from_network(lines, nodes, f"{path}: layer {layer!r}")
    return graph_from_lines(lines)


def raster_valid_area(path: str | Path, pixel_size_m: float | None = None) -> gpd.GeoSeries:
    """The valid pixels of a raster (its dataset mask) as an area with the raster's CRS; for a
    raster without georeferencing (a PNG tile, or predict's output of one), on the pixel grid
    with ``pixel_size_m`` metres a pixel, as the networks of such rasters are read."""
    info = raster.raster_info(path)
    if info.crs is not None:
        return gpd.GeoSeries([raster.valid_footprint(path)], crs=info.crs.to_wkt())
    if pixel_size_m is None:
        raise GraphInputError(
            f"{path}: the raster has no CRS: give its pixel size (score-network --pixel-size) "
            "to place its area on the pixel grid the networks are read on"
        )
    if info.transform != Affine.identity():
        raise GraphInputError(
            f"{path}: no CRS, but a grid of its own (a world file): its area cannot be placed "
            "on the networks' pixel grid; give it a CRS"
        )
    footprint = shapely.transform(raster.valid_footprint(path), lambda xy: xy * pixel_size_m)
    return gpd.GeoSeries([footprint], crs=raster.PIXEL_GRID_WKT)


def _clip_lines(lines: gpd.GeoDataFrame, area: gpd.GeoSeries, source: str) -> gpd.GeoDataFrame:
    """The parts of ``lines`` inside ``area`` (reprojected to the lines' CRS)."""
    if area.crs != lines.crs and (area.crs.is_engineering or lines.crs.is_engineering):
        raise GraphInputError(
            f"{source}: on {lines.crs.name}, the --within area on {area.crs.name}: one is a "
            "grid of its own, they cannot be placed on each other"
        )
    placed = area if area.crs == lines.crs else area.to_crs(lines.crs)
    inside = lines.clip(placed.union_all())
    inside = inside[inside.geom_type.isin(_LINES) & ~inside.geometry.is_empty]
    if len(inside) == 0:
        raise GraphInputError(f"{source}: no line inside the area to score")
    return inside


def graph_from_network(
    edges: gpd.GeoDataFrame, nodes: gpd.GeoDataFrame | None, source: str = "network"
) -> nx.MultiGraph:
    """The graph of a network GeoPackage: edges join nodes ``u`` and ``v`` as stored.

    Raises GraphInputError (naming ``source``) for an edge without integer ends or whose
    geometry is not one line.
    """
    lines = _single_lines(edges.geometry.to_numpy(), source)
    ends = edges[["u", "v"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(ends).all() and (ends == np.round(ends)).all()):
        raise GraphInputError(
            f"{source}: the u and v columns of the edges must be integer node ids"
        )
    ends = ends.astype(np.int64)
    graph = nx.MultiGraph(crs=edges.crs)
    if nodes is not None and "node_id" in nodes.columns:
        for node_id, point in zip(nodes["node_id"], nodes.geometry, strict=True):
            graph.add_node(int(node_id), x=point.x, y=point.y)
    attrs = edges.drop(columns=["u", "v", edges.geometry.name]).to_dict("records")
    for (u, v), line, attr in zip(ends.tolist(), lines, attrs, strict=True):
        for node, xy in ((u, line.coords[0]), (v, line.coords[-1])):
            if node not in graph:
                graph.add_node(node, x=xy[0], y=xy[1])
        graph.add_edge(u, v, geometry=line, **attr)
    return graph


def _single_lines(geoms: np.ndarray, source: str) -> np.ndarray:
    """LineStrings (MultiLineStrings that join into one line are joined)."""
    multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTILINESTRING
    geoms = geoms.copy()
    geoms[multi] = shapely.line_merge(geoms[multi])
    bad = np.flatnonzero(shapely.get_type_id(geoms) != shapely.GeometryType.LINESTRING)
    if len(bad):
        raise GraphInputError(
            f"{source}: {len(bad)} edges are not one line each (the first is row {bad[0]})"
        )
    return geoms


def graph_from_lines(lines: gpd.GeoDataFrame, snap_m: float = END_SNAP_M) -> nx.MultiGraph:
    """The graph of any line layer: lines noded where they cross or touch, ends as nodes.

    A line end that stops within ``snap_m`` metres of another line without touching it is
    joined to it (:func:`join_near_ends`): a side road drawn to a point inside another road's
    segment rarely lies on it exactly once reprojected, and would otherwise be cut off.
    """
    parts = shapely.get_parts(lines.geometry.explode(index_parts=False).to_numpy())
    parts = parts[~shapely.is_empty(parts)]
    noded = shapely.get_parts(shapely.node(shapely.multilinestrings(parts)))
    crs = CRS.from_user_input(lines.crs) if lines.crs is not None else None
    noded = join_near_ends(noded, snap_m / _metres_per_unit(crs))
    graph = nx.MultiGraph(crs=lines.crs)
    ids: dict[tuple[float, float], int] = {}
    for line in noded:
        ends = []
        for xy in (line.coords[0][:2], line.coords[-1][:2]):
            if xy not in ids:
                ids[xy] = len(ids)
                graph.add_node(ids[xy], x=xy[0], y=xy[1])
            ends.append(ids[xy])
        graph.add_edge(ends[0], ends[1], geometry=shapely.force_2d(line))
    return graph


def _metres_per_unit(crs: CRS | None) -> float:
    """Metres per unit of ``crs`` (a degree of latitude for a geographic CRS; metres when
    there is no CRS), to turn a tolerance in metres into the data's units."""
    if crs is None:
        return 1.0
    if crs.is_geographic:
        return 111_320.0
    return float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0


def join_near_ends(lines: np.ndarray, tolerance: float) -> np.ndarray:
    """``lines`` (noded LineStrings) with every dangling end that lies within ``tolerance``
    (data units) of another line joined to its nearest point there: that line is cut at the
    point and a straight connector added, all sharing the point's exact coordinates."""
    if tolerance <= 0 or len(lines) < 2:
        return lines
    ends = np.concatenate([shapely.get_point(lines, 0), shapely.get_point(lines, -1)])
    owner = np.tile(np.arange(len(lines)), 2)
    _, inverse, counts = np.unique(
        shapely.get_coordinates(ends), axis=0, return_inverse=True, return_counts=True
    )
    dangling = np.flatnonzero(counts[inverse.ravel()] == 1)
    near, line = shapely.STRtree(lines).query(
        ends[dangling], predicate="dwithin", distance=tolerance
    )
    best: dict[int, tuple[float, int]] = {}
    for i, j in zip(dangling[near], line, strict=True):
        d = shapely.distance(ends[i], lines[j])
        if j != owner[i] and d > 0 and d < best.get(i, (np.inf, -1))[0]:
            best[i] = (d, j)
    if not best:
        return lines
    cuts: dict[int, list[tuple[float, tuple[float, float]]]] = {}
    connectors = []
    for i, (_, j) in best.items():
        pos = float(shapely.line_locate_point(lines[j], ends[i]))
        point = _point_at(lines[j], pos)
        cuts.setdefault(j, []).append((pos, point))
        connectors.append(shapely.LineString([shapely.get_coordinates(ends[i])[0], point]))
    out = [_cut(line, cuts[j]) if j in cuts else [line] for j, line in enumerate(lines)]
    return np.array([piece for pieces in out for piece in pieces] + connectors, dtype=object)


def _along(coords: np.ndarray) -> np.ndarray:
    """Distance along a line's vertices from its start."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(coords, axis=0).T))])


def _point_at(line: shapely.LineString, pos: float) -> tuple[float, float]:
    """The point ``pos`` along ``line``: a vertex of it when ``pos`` falls on one."""
    coords = shapely.get_coordinates(line)
    along = _along(coords)
    k = int(np.searchsorted(along, pos))
    if k < len(along) and abs(along[k] - pos) <= 1e-9 * max(1.0, along[-1]):
        return tuple(coords[k])
    if k >= len(along):
        return tuple(coords[-1])
    t = (pos - along[k - 1]) / (along[k] - along[k - 1])
    return tuple(coords[k - 1] + t * (coords[k] - coords[k - 1]))


def _cut(
    line: shapely.LineString, cuts: list[tuple[float, tuple[float, float]]]
) -> list[shapely.LineString]:
    """``line`` cut at ``cuts`` ((position along it, the point there), any order) into pieces
    that share the cut points' exact coordinates."""
    coords = shapely.get_coordinates(line)
    along = _along(coords)
    pieces, current, k = [], [tuple(coords[0])], 1
    for pos, point in sorted(set(cuts)):
        while k < len(coords) and along[k] < pos:
            if tuple(coords[k]) != current[-1]:
                current.append(tuple(coords[k]))
            k += 1
        if point != current[-1]:
            current.append(point)
        if len(current) >= 2:
            pieces.append(shapely.LineString(current))
        current = [point]
    current += [tuple(c) for c in coords[k:] if tuple(c) != current[-1]]
    if len(current) >= 2:
        pieces.append(shapely.LineString(current))
    return pieces


def _all_layers(path: Path) -> dict[str, str]:
    if not path.exists():
        raise GraphInputError(f"{path}: no such file")
    try:
        return {str(name): str(kind) for name, kind in pyogrio.list_layers(path)}
    except (pyogrio.errors.DataSourceError, OSError) as e:
        raise GraphInputError(f"{path}: not a readable vector file ({e})") from e


def _line_layers(path: Path) -> list[str]:
    return [name for name, kind in _all_layers(path).items() if kind in _LINES]


def _default_layer(path: Path, line_layers: list[str]) -> str:
    if EDGES_LAYER in line_layers:
        return EDGES_LAYER
    if len(line_layers) == 1:
        return line_layers[0]
    if not line_layers:
        raise GraphInputError(f"{path}: no line layer (roads must be LineStrings)")
    raise GraphInputError(f"{path}: several line layers ({', '.join(line_layers)}); pick one")


def _read_layer(path: Path, layer: str, pixel_size_m: float | None = None) -> gpd.GeoDataFrame:
    try:
        gdf = gpd.read_file(path, layer=layer, engine="pyogrio")
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as e:
        raise GraphInputError(f"{path}: cannot read layer {layer!r} ({e})") from e
    if gdf.crs is None and pixel_size_m is None:
        raise GraphInputError(
            f"{path}: layer {layer!r} has no CRS; for the network of a raster without "
            "georeferencing give its pixel size in metres (score-network --pixel-size)"
        )
    if gdf.crs is None:  # pixels of a raster without georeferencing, pixel_size_m a side
        _check_units(gdf, pixel_size_m, f"{path}: layer {layer!r}")
        geometry = shapely.transform(gdf.geometry.values, lambda xy: xy * pixel_size_m)
        gdf = gdf.set_geometry(gpd.GeoSeries(geometry, index=gdf.index, crs=raster.PIXEL_GRID_WKT))
    gdf = gdf[~(gdf.geometry.isna() | gdf.geometry.is_empty)]
    if layer != NODES_LAYER and len(gdf) == 0:
        raise GraphInputError(f"{path}: layer {layer!r} has no lines")
    return gdf


def _check_units(lines: gpd.GeoDataFrame, pixel_size_m: float, what: str) -> None:
    """Refuse a pixel size that the layer's own ``length_m`` (``pipeline network`` writes it
    in metres) contradicts: a raster with a world file but no CRS has its network in the
    world file's units, not in pixels."""
    if "length_m" not in lines.columns:
        return
    units = float(lines.geometry.length.sum())
    if units <= 0:
        return
    per_unit = float(lines["length_m"].sum()) / units
    if not 0.99 <= per_unit / pixel_size_m <= 1.01:
        raise GraphInputError(
            f"{what}: its own lengths (length_m) say {per_unit:.4g} m per coordinate unit, not "
            f"the {pixel_size_m:g} m given: trace its raster again with `pipeline network "
            f"--pixel-size {pixel_size_m:g}` (a raster with a world file: give its units' size)"
        )


# ----------------------------------------------------------------------------------- in metres
def metric_crs(crs: Any, xy: np.ndarray) -> CRS:
    """The CRS to measure in: ``crs`` itself when projected, or a local engineering grid (the
    grid of a tile set without georeferencing, in its units), else (geographic, or a Mercator
    such as the web's EPSG:3857, whose metres are 1/cos(latitude) of true ones) the UTM zone
    of ``xy``."""
    crs = CRS.from_user_input(crs)
    if (crs.is_projected and not is_mercator(crs)) or crs.is_engineering:
        return crs
    if crs.is_projected:
        xy = np.asarray(
            Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(*xy.T)
        ).T
    lon, lat = xy.mean(axis=0) if len(xy) else (0.0, 0.0)
    info = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
    )
    if not info:
        raise GraphInputError(f"no UTM zone for longitude {lon:.4f}, latitude {lat:.4f}")
    return CRS.from_epsg(info[0].code)


def metric_graph(
    graph: nx.Graph, crs: Any = None, target: CRS | None = None, *, simplify: bool = True
) -> RoadGraph:
    """``graph`` as a :class:`RoadGraph` in metres.

    Directions and edge attributes are dropped; an edge that repeats another one (the same
    ends and geometry, in either direction: a two-way street of an osmnx graph) is dropped.

    ``crs`` defaults to ``graph.graph["crs"]``; a graph without any CRS is taken to be in
    metres already. ``target`` is the metric CRS to put it in (that of another graph), by
    default :func:`metric_crs` of its own. ``simplify`` merges the two edges at every node
    of degree two into one (as SpaceNet simplifies its graphs with osmnx), so that how a
    road is cut into edges does not change a score.
    """
    xy, edges, lines = _arrays(graph)
    crs = crs if crs is not None else graph.graph.get("crs")
    if crs is not None:
        source = CRS.from_user_input(crs)
        target = target or metric_crs(source, xy)
        xy, lines = _transform(xy, lines, source, target)
    elif target is not None:
        raise GraphInputError("a graph without a CRS cannot be compared with one that has one")
    road = RoadGraph(xy, edges, lines, target)
    return simplify_degree_two(road) if simplify else road


def _arrays(graph: nx.Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node coordinates, end-node indices and u -> v oriented lines of ``graph``."""
    index = {node: i for i, node in enumerate(graph.nodes)}
    try:
        xy = np.array([(d["x"], d["y"]) for _, d in graph.nodes(data=True)], dtype=float)
    except KeyError as e:
        raise GraphInputError("every node of a road graph needs 'x' and 'y'") from e
    xy = xy.reshape(-1, 2)
    edges, lines, seen = [], [], set()
    for u, v, data in graph.edges(data=True):
        iu, iv = index[u], index[v]
        line = _edge_line(xy[iu], xy[iv], data)
        key = _edge_key(iu, iv, line)
        if key not in seen:  # a two-way street of a directed graph is one road
            seen.add(key)
            edges.append((iu, iv))
            lines.append(line)
    edges_array = np.array(edges, dtype=np.int64).reshape(-1, 2)
    return xy, edges_array, np.array(lines, dtype=object).reshape(-1)


def _edge_key(iu: int, iv: int, line: shapely.LineString) -> tuple:
    """The same for an edge and its reverse (same ends, same geometry in either direction)."""
    coords = shapely.get_coordinates(line)
    forward = (iu, iv, coords.tobytes())
    backward = (iv, iu, coords[::-1].tobytes())
    return min(forward, backward)


def _edge_line(pu: np.ndarray, pv: np.ndarray, data: dict) -> shapely.LineString:
    line = data.get("geometry")
    if isinstance(line, str):
        line = shapely.from_wkt(line)
    if line is None or line.is_empty:
        return shapely.LineString([pu, pv])
    coords = shapely.get_coordinates(line)
    if np.hypot(*(coords[0] - pu)) > np.hypot(*(coords[0] - pv)):
        coords = coords[::-1]
    return shapely.LineString(coords)


def _transform(
    xy: np.ndarray, lines: np.ndarray, source: CRS, target: CRS
) -> tuple[np.ndarray, np.ndarray]:
    if not source.equals(target):
        tr = Transformer.from_crs(source, target, always_xy=True)
        xy = np.column_stack(tr.transform(xy[:, 0], xy[:, 1])) if len(xy) else xy
        lines = shapely.transform(lines, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))
    scale = _metres_per_unit(target)
    if scale != 1.0:
        xy = xy * scale
        lines = shapely.transform(lines, lambda c: c * scale)
    return xy, lines


def simplify_degree_two(road: RoadGraph) -> RoadGraph:
    """Merge the two edges at each node of degree two; drop nodes without edges."""
    ends = [list(e) for e in road.edges]
    coords = [shapely.get_coordinates(line) for line in road.lines]
    alive = [True] * len(ends)
    incident: list[list[int]] = [[] for _ in range(len(road.xy))]
    for e, (u, v) in enumerate(ends):
        incident[u].append(e)
        incident[v].append(e)
    for node, inc in enumerate(incident):
        if len(inc) != 2 or inc[0] == inc[1]:
            continue  # not degree two, or a self-loop (a ring left on its own)
        first, second = inc
        a = _other_end(ends[first], node)
        b = _other_end(ends[second], node)
        head = coords[first] if ends[first][1] == node else coords[first][::-1]
        tail = coords[second] if ends[second][0] == node else coords[second][::-1]
        coords[first] = np.vstack([head, tail[1:]])
        ends[first] = [a, b]
        alive[second] = False
        incident[b][incident[b].index(second)] = first
        inc.clear()
    keep = [e for e in range(len(ends)) if alive[e]]
    used = sorted({n for e in keep for n in ends[e]})
    renumber = {old: new for new, old in enumerate(used)}
    xy = road.xy[used].reshape(-1, 2).copy()
    for e in keep:
        node = ends[e][0]
        if ends[e][1] == node and len(incident[node]) == 2:
            coords[e] = _anchor_ring(coords[e])
            xy[renumber[node]] = coords[e][0]
    edges = np.array([[renumber[n] for n in ends[e]] for e in keep], dtype=np.int64)
    lines = np.array([shapely.LineString(coords[e]) for e in keep], dtype=object)
    return RoadGraph(xy, edges.reshape(-1, 2), lines, road.crs)


def _anchor_ring(coords: np.ndarray) -> np.ndarray:
    """A closed ring restarted at its lowest-x (then lowest-y) vertex.

    A ring on its own has no junction to start from; this vertex is a corner of the ring
    wherever it was cut into edges, so its control points do not depend on the cuts.
    """
    ring = coords[:-1]
    start = int(np.lexsort((ring[:, 1], ring[:, 0]))[0])
    return np.vstack([ring[start:], ring[: start + 1]])


def _other_end(ends: list[int], node: int) -> int:
    return ends[1] if ends[0] == node else ends[0]
