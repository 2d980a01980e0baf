"""The road network: arterials, spokes out of towns, town street grids and unpaved tracks;
the road table (class, width, bridges where roads cross water) and its file form."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import shapely

from pipeline.synth.geometry import (
    chaikin,
    curve_through,
    edge_point,
    frames,
    line_parts,
    wander,
)
from pipeline.synth.grid import Grid
from pipeline.synth.types import Town

# full road width in metres, by class (the gpkg's width_m is drawn from these ranges)
ROAD_WIDTH_M: dict[str, tuple[float, float]] = {
    "motorway": (18.0, 22.0),
    "primary": (9.0, 12.0),
    "secondary": (6.5, 8.0),
    "residential": (5.0, 6.5),
    "track": (3.0, 4.0),
}
# width of the band along a railway marked as a hard negative: its 3.4 m ballast bed
# (paint.py) and a metre each side
RAILWAY_NEGATIVE_WIDTH_M = 5.4
# every synthetic road has a width; the fallback only matters to other readers of the gpkg
LABEL_HALF_WIDTH_M = 2.0
_CLIP_MARGIN_M = 25.0  # roads run this far past the scene edge so their buffers reach it


def road_network(rng: np.random.Generator, extent: float, towns: list[Town]) -> list[tuple]:
    """(LineString, road_class) pairs in local metres, not yet clipped to the scene."""
    roads: list[tuple] = []
    if extent >= 800 and rng.random() < 0.35:
        roads.append((_arterial(rng, extent, None, 0.02 * extent), "motorway"))
    for k in range(1 + min(2, int(rng.poisson(extent / 3000)))):
        through = towns[k].centre if k < len(towns) else None
        roads.append((_arterial(rng, extent, through, 0.05 * extent), "primary"))
    for town in towns:
        for _ in range(int(rng.integers(1, 3))):
            roads.append((_spoke(rng, extent, town), "secondary"))
        roads.extend((street, "residential") for street in _town_streets(rng, town))
    anchors = [line for line, cls in roads if cls in ("primary", "secondary")]
    n_tracks = 2 + int(rng.poisson(min(80.0, 5.0 * (extent / 1000) ** 2 + 2)))
    roads.extend((t, "track") for t in _tracks(rng, extent, anchors, towns, n_tracks))
    return roads


def _arterial(
    rng: np.random.Generator, extent: float, through: np.ndarray | None, wiggle: float
) -> shapely.LineString:
    side = int(rng.integers(4))
    exit_side = (side + 2) % 4 if rng.random() < 0.7 else (side + 1) % 4
    ctrl = [edge_point(rng, extent, side, 150.0)]
    if through is not None:
        ctrl.append(through)
    ctrl.append(edge_point(rng, extent, exit_side, 150.0))
    return curve_through(rng, ctrl, max(extent / 5, 80.0), wiggle)


def _spoke(rng: np.random.Generator, extent: float, town: Town) -> shapely.LineString:
    """A secondary road leaving a town centre."""
    path = wander(
        rng, town.centre, rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.2) * extent, 20.0, 0.12, 0.9
    )
    return shapely.LineString(chaikin(path, 3))


def _town_streets(rng: np.random.Generator, town: Town) -> list[shapely.LineString]:
    """A rotated street grid with some blocks merged (dropped segments), clipped to the town."""
    xs, ys = town.xs, town.ys
    segs = [((x, ys[j]), (x, ys[j + 1])) for x in xs for j in range(len(ys) - 1)]
    segs += [((xs[i], y), (xs[i + 1], y)) for y in ys for i in range(len(xs) - 1)]
    seg = np.array(segs, dtype=float)[rng.random(len(segs)) > 0.12]
    local = town.to_local(seg.reshape(-1, 2)).reshape(seg.shape)
    clipped = shapely.intersection(shapely.linestrings(local), town.polygon)
    merged = shapely.line_merge(shapely.union_all(clipped))
    return [g for g in line_parts([merged]) if g.length > 15.0]


def _tracks(
    rng: np.random.Generator, extent: float, anchors: list, towns: list[Town], n: int
) -> list[shapely.LineString]:
    """Unpaved tracks branching off roads, and off other tracks, outside towns; they end in
    fields and forests (dead ends)."""
    towns_area = shapely.union_all([t.polygon for t in towns])
    out: list[shapely.LineString] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        pool = anchors + out
        length = np.array([line.length for line in pool])
        road = pool[int(rng.choice(len(pool), p=length / length.sum()))]
        p, t, nrm = frames(np.array([road]), np.array([rng.uniform(0, road.length)]))
        if shapely.contains_xy(towns_area, *p[0]) or not (
            0 <= p[0, 0] <= extent and -extent <= p[0, 1] <= 0
        ):
            continue
        side = 1.0 if rng.random() < 0.5 else -1.0
        heading = math.atan2(side * nrm[0, 1], side * nrm[0, 0]) + rng.normal(0, 0.3)
        path = chaikin(wander(rng, p[0], heading, rng.uniform(80.0, 500.0), 6.0, 0.10, 0.9), 2)
        entered = np.flatnonzero(shapely.contains_xy(towns_area, path[:, 0], path[:, 1]))
        path = path[: entered[0]] if len(entered) else path  # tracks stop at the edge of town
        if len(path) >= 2:
            out.append(shapely.LineString(path))
    return out


def road_table(
    rng: np.random.Generator, lines: list[tuple], extent: float, water: shapely.Geometry
) -> gpd.GeoDataFrame:
    """Clip to the scene, draw widths, split roads where they cross water into bridges."""
    frame = shapely.box(
        -_CLIP_MARGIN_M, -extent - _CLIP_MARGIN_M, extent + _CLIP_MARGIN_M, _CLIP_MARGIN_M
    )
    span = shapely.buffer(water, 3.0) if not water.is_empty else None
    rows = []
    for line, cls in lines:
        width = round(float(rng.uniform(*ROAD_WIDTH_M[cls])), 1)
        clipped = shapely.intersection(line, frame)
        pieces = [(clipped, False)]
        if span is not None and shapely.intersects(clipped, span):
            pieces = [
                (shapely.difference(clipped, span), False),
                (shapely.intersection(clipped, span), True),
            ]
        rows.extend(
            (part, cls, width, bridge) for geom, bridge in pieces for part in line_parts([geom])
        )
    geoms, classes, widths, bridges = zip(*rows, strict=True) if rows else ((), (), (), ())
    return gpd.GeoDataFrame(
        {
            "road_class": list(classes),
            "width_m": np.array(widths, float),
            "bridge": np.array(bridges, bool),
        },
        geometry=list(geoms),
    )


def railways_for_file(rails: list[shapely.LineString], grid: Grid, crs: str) -> gpd.GeoDataFrame:
    """The railway centrelines as hard negatives (``<scene>.negatives.gpkg``): ``kind`` and
    ``width_m`` (the painted ballast bed and a metre beside it), in EPSG:4326 like the roads;
    no rows when the scene has no railway."""
    table = gpd.GeoDataFrame(
        {"kind": ["railway"] * len(rails), "width_m": [RAILWAY_NEGATIVE_WIDTH_M] * len(rails)},
        geometry=gpd.GeoSeries(list(rails)),
    )
    return roads_for_file(table, grid, crs)


def roads_for_file(roads: gpd.GeoDataFrame, grid: Grid, crs: str) -> gpd.GeoDataFrame:
    """The layout's roads in the scene CRS, then in EPSG:4326 as the file format says."""
    shifted = shapely.transform(
        roads.geometry.to_numpy(), lambda c: c + np.array([grid.x0, grid.y0])
    )
    return gpd.GeoDataFrame(roads.drop(columns="geometry"), geometry=shifted, crs=crs).to_crs(
        "EPSG:4326"
    )
