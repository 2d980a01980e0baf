"""Scene layout in local metres: towns with rotated street grids, rivers and dry river beds,
a railway, and the road network that runs through them (``roads.py``)."""

from __future__ import annotations

import math

import numpy as np
import shapely

from pipeline.synth.geometry import chaikin, curve_through, edge_point, line_parts, wander
from pipeline.synth.grid import Grid
from pipeline.synth.materials import ROOFS
from pipeline.synth.roads import road_network, road_table
from pipeline.synth.types import Layout, Town


def draw_layout(rng: np.random.Generator, grid: Grid) -> Layout:
    extent = grid.extent
    towns = _place_towns(rng, extent)
    water = _river_bodies(rng, extent, rng.random() < 0.6, (8.0, 30.0))
    dry_bed = _river_bodies(rng, extent, rng.random() < 0.4, (10.0, 30.0))
    rails = _railway(rng, extent) if extent >= 300 and rng.random() < 0.4 else []
    lines = road_network(rng, extent, towns)
    roads = road_table(rng, lines, extent, water)
    return Layout(towns, water, dry_bed, rails, roads)


def _place_towns(rng: np.random.Generator, extent: float) -> list[Town]:
    """At least one town; more in larger scenes, never overlapping."""
    area_km2 = (extent / 1000.0) ** 2
    wanted = 1 + rng.poisson(min(0.25 * area_km2, 6.0))
    towns: list[Town] = []
    for _ in range(60 * wanted):
        if len(towns) == wanted:
            break
        radius = min(rng.uniform(150.0, 480.0), 0.42 * extent)
        centre = rng.uniform(0.15, 0.85, 2) * np.array([extent, -extent])
        if all(np.hypot(*(centre - t.centre)) > 1.1 * (radius + t.radius) for t in towns):
            towns.append(_town(rng, centre, radius))
    return towns


def _town(rng: np.random.Generator, centre: np.ndarray, radius: float) -> Town:
    phi = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    r = np.ones_like(phi)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    outline = centre + radius * r[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    reach = 1.4 * radius
    return Town(
        centre=centre,
        radius=radius,
        angle=rng.uniform(0, np.pi / 2),
        polygon=shapely.Polygon(outline),
        xs=_jittered_positions(rng, reach, rng.uniform(60.0, 110.0)),
        ys=_jittered_positions(rng, reach, rng.uniform(60.0, 110.0)),
        roof_p=rng.dirichlet(np.full(len(ROOFS), 0.8)),
        sidewalks=bool(rng.random() < 0.6),
    )


def _jittered_positions(rng: np.random.Generator, reach: float, spacing: float) -> np.ndarray:
    steps = spacing * rng.uniform(0.75, 1.25, int(2 * reach / spacing) + 2)
    return -reach + rng.uniform(0, spacing) + np.concatenate([[0.0], np.cumsum(steps)])


def _river_bodies(
    rng: np.random.Generator, extent: float, present: bool, width_m: tuple[float, float]
) -> shapely.Geometry:
    """A meandering channel crossing the scene, as a polygon (or an empty geometry)."""
    if not present:
        return shapely.Polygon()
    side = int(rng.integers(4))
    start = edge_point(rng, extent, side, 60.0)
    target = rng.uniform(0.3, 0.7, 2) * np.array([extent, -extent])
    heading = math.atan2(*(target - start)[::-1])
    path = wander(rng, start, heading, 1.8 * extent + 120, max(4.0, extent / 150), 0.10, 0.97)
    width = min(rng.uniform(*width_m), extent / 14)
    return shapely.buffer(shapely.LineString(chaikin(path, 2)), width / 2)


def _railway(rng: np.random.Generator, extent: float) -> list[shapely.LineString]:
    side = int(rng.integers(4))
    ctrl = [edge_point(rng, extent, side, 80.0), edge_point(rng, extent, (side + 2) % 4, 80.0)]
    line = curve_through(rng, ctrl, extent / 3, 0.03 * extent)
    if rng.random() < 0.5:
        return [line]
    return line_parts(shapely.offset_curve(np.array([line, line]), np.array([-2.1, 2.1])))
