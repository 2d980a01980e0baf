"""Write a road network (``network.RoadNetwork``) as a GeoPackage: layers ``edges`` and
``nodes`` in the raster's CRS (docs/formats.md).

Node ids follow the nodes' (row, col) order and edge ids the edges' geometry, so the same
network always gets the same ids. Lengths are in metres: geodesic for a geographic CRS, the
CRS's units converted to metres otherwise (pixels without a CRS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from pipeline.atomic import atomic_path
from pipeline.network_repair import oriented, path_length, sorted_edges
from pipeline.raster import RasterInfo

EDGES_LAYER = "edges"
NODES_LAYER = "nodes"


@dataclass
class RoadNetwork:
    """A road graph in pixel space (see ``network_repair``) with the raster's grid."""

    graph: nx.MultiGraph
    info: RasterInfo
    scale: tuple[float, float]  # metres per row, metres per column
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)


def simplify_path(path: np.ndarray, scale: tuple[float, float], tolerance_m: float) -> np.ndarray:
    """Douglas-Peucker in metres; both ends stay; a ring keeps at least a triangle."""
    import shapely

    if tolerance_m <= 0 or len(path) < 3:
        return path
    metric = path * scale
    simple = shapely.get_coordinates(shapely.simplify(shapely.LineString(metric), tolerance_m))
    if len(simple) < (4 if np.allclose(path[0], path[-1]) else 2):
        return path
    return simple / scale


def _to_crs(path: np.ndarray, transform) -> np.ndarray:
    """(K, 2) row/col pixel indexes -> (K, 2) x/y of the pixel centres."""
    t = transform
    cols, rows = path[:, 1] + 0.5, path[:, 0] + 0.5
    return np.column_stack([t.c + cols * t.a + rows * t.b, t.f + cols * t.d + rows * t.e])


def _lengths(lines: list, crs) -> list[float]:
    import pyproj
    import shapely

    if crs is not None and crs.is_geographic:
        geod = pyproj.CRS.from_user_input(crs.to_wkt()).get_geod()
        return [abs(geod.geometry_length(g)) for g in lines]
    factor = crs.linear_units_factor[1] if crs is not None else 1.0
    return [float(shapely.length(g)) * factor for g in lines]


def network_frames(network: RoadNetwork, simplify_m: float):
    """(edges, nodes) GeoDataFrames of ``network`` (edges simplified by ``simplify_m``)."""
    import geopandas as gpd
    import pyproj
    import shapely

    graph, info = network.graph, network.info
    crs = pyproj.CRS.from_user_input(info.crs.to_wkt()) if info.crs else None
    nodes = sorted(graph.nodes)
    ids = {n: i for i, n in enumerate(nodes)}
    rows = []
    for u, v, _, data in sorted_edges(graph):
        a, b = sorted((u, v), key=ids.__getitem__)
        path, probs = oriented(data, a) if u != v else (data["path"], data["probs"])
        simple = simplify_path(path, network.scale, simplify_m)
        line = shapely.LineString(_to_crs(simple, info.transform))
        low = float(np.min(probs))
        rows.append((ids[a], ids[b], line, max(float(np.mean(probs, dtype=float)), low), low))
    lines = [r[2] for r in rows]
    edges = gpd.GeoDataFrame(
        {
            "edge_id": np.arange(len(rows), dtype=np.int64),
            "u": np.array([r[0] for r in rows], np.int64),
            "v": np.array([r[1] for r in rows], np.int64),
            "length_m": np.array(_lengths(lines, info.crs), float),
            "mean_prob": np.array([r[3] for r in rows], float),
            "min_prob": np.array([r[4] for r in rows], float),
        },
        geometry=lines,
        crs=crs,
    )
    xy = _to_crs(np.array(nodes, float).reshape(-1, 2), info.transform)
    nodes_frame = gpd.GeoDataFrame(
        {
            "node_id": np.arange(len(nodes), dtype=np.int64),
            "degree": np.array([graph.degree(n) for n in nodes], np.int64),
        },
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]),
        crs=crs,
    )
    return edges, nodes_frame


def write_network(
    network: RoadNetwork, out_path: str | Path, simplify_m: float, *, overwrite: bool = False
) -> Path:
    """Both layers into one GeoPackage, written beside ``out_path`` and renamed into place,
    with their default QGIS styles (edges by mean probability, nodes by degree)."""
    from pipeline.styles import add_network_styles

    edges, nodes = network_frames(network, simplify_m)
    with atomic_path(Path(out_path), overwrite=overwrite) as tmp:
        edges.to_file(tmp, layer=EDGES_LAYER, driver="GPKG", geometry_type="LineString")
        nodes.to_file(tmp, layer=NODES_LAYER, driver="GPKG", geometry_type="Point", mode="a")
        add_network_styles(tmp, threshold=network.threshold)  # QGIS opens both layers styled
    return Path(out_path)


def total_length_m(network: RoadNetwork) -> float:
    """Length of all edges in metres at pixel resolution (before simplification)."""
    return sum(path_length(d["path"], network.scale) for _, _, d in network.graph.edges(data=True))
