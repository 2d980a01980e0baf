"""Land cover: warped Voronoi cells with rural classes, towns, rivers and dry beds painted
over; per-cell texture parameters, and the field parcels that cropland cells are cut into."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline import raster
from pipeline.synth.grid import Grid, smooth_noise
from pipeline.synth.types import (
    BARE_SOIL,
    CROPLAND,
    FOREST,
    GRASSLAND,
    INDUSTRIAL,
    RESIDENTIAL,
    WATER,
    Layout,
)


@dataclass
class Cells:
    """Per Voronoi cell: land-cover class and the parameters of its texture."""

    cls: np.ndarray  # uint8 class
    industrial: np.ndarray  # bool: industrial when inside a town
    bright: np.ndarray  # brightness offset
    mix: np.ndarray  # end member mixing offset
    angle: np.ndarray  # field orientation
    strip: np.ndarray  # field width, m
    length: np.ndarray  # field length, m
    phase: np.ndarray  # (n, 2) field grid offsets, m
    hedges: np.ndarray  # bool: hedgerows along field margins
    conifer: np.ndarray  # share of conifers in a forest
    salt: int


def draw_landcover(
    rng: np.random.Generator, grid: Grid, layout: Layout
) -> tuple[np.ndarray, np.ndarray, Cells]:
    """Warped Voronoi cells with rural classes; towns, rivers and dry beds painted over."""
    extent = grid.extent
    n = max(12, int(extent * extent / rng.uniform(90, 140) ** 2))
    seeds = rng.uniform(0, 1, (n, 2)) * np.array([extent, -extent])
    f = max(1, round(4.0 / grid.gsd))  # cells are found on a ~4 m grid, then refined
    coarse = _coarse_cells(rng, grid, seeds, f)
    cells = _cell_table(rng, grid, layout, seeds, coarse, f)
    cell = _refine_cells(rng, grid, coarse, f)
    lc = cells.cls[cell]
    towns_mask = grid.burn([t.polygon for t in layout.towns]).astype(bool)
    lc[towns_mask] = np.where(cells.industrial[cell[towns_mask]], INDUSTRIAL, RESIDENTIAL)
    if not layout.dry_bed.is_empty:
        lc[grid.burn([layout.dry_bed]).astype(bool)] = BARE_SOIL
    if not layout.water.is_empty:
        lc[grid.burn([layout.water]).astype(bool)] = WATER
    return lc, cell, cells


def _coarse_cells(rng: np.random.Generator, grid: Grid, seeds: np.ndarray, f: int) -> np.ndarray:
    shape = (math.ceil(grid.size / f), math.ceil(grid.size / f))
    step = f * grid.gsd
    warp = [smooth_noise(rng, shape, 150.0 / step) * 25.0 for _ in range(2)]
    rows, cols = np.indices(shape, dtype=np.float32)
    x = (cols + 0.5) * step + warp[0]
    y = -(rows + 0.5) * step + warp[1]
    _, idx = cKDTree(seeds).query(np.stack([x.ravel(), y.ravel()], axis=1))
    return idx.reshape(shape).astype(np.int32)


def _refine_cells(rng: np.random.Generator, grid: Grid, coarse: np.ndarray, f: int) -> np.ndarray:
    """Full-resolution cell ids: coarse ids looked up through a fine noise warp (ragged edges)."""
    amp = 4.0 / grid.gsd
    r = np.arange(grid.size, dtype=np.float32)[:, None] + amp * smooth_noise(
        rng, grid.shape, 12.0 / grid.gsd
    )
    r = np.clip(r / f, 0, coarse.shape[0] - 1).astype(np.intp)
    c = np.arange(grid.size, dtype=np.float32)[None, :] + amp * smooth_noise(
        rng, grid.shape, 12.0 / grid.gsd
    )
    c = np.clip(c / f, 0, coarse.shape[1] - 1).astype(np.intp)
    return coarse[r, c]


def _cell_table(
    rng: np.random.Generator,
    grid: Grid,
    layout: Layout,
    seeds: np.ndarray,
    coarse: np.ndarray,
    f: int,
) -> Cells:
    n = len(seeds)
    in_town = np.zeros(n, bool)
    for town in layout.towns:
        in_town |= shapely.contains_xy(town.polygon, seeds[:, 0], seeds[:, 1])
    coarse_transform = Affine(f * grid.gsd, 0, 0, 0, -f * grid.gsd, 0)
    road_px = raster.burn_geometries(
        layout.roads.geometry.to_numpy(), coarse_transform, coarse.shape, all_touched=True
    ).astype(bool)
    has_road = np.bincount(coarse[road_px], minlength=n) > 0
    cls = _rural_classes(rng, seeds, grid.extent, in_town, has_road)
    industrial = in_town & (rng.random(n) < 0.22)
    for town in layout.towns:
        inside = np.flatnonzero(shapely.contains_xy(town.polygon, seeds[:, 0], seeds[:, 1]))
        if len(inside) >= 3 and not industrial[inside].any() and rng.random() < 0.8:
            industrial[rng.choice(inside)] = True
    return Cells(
        cls=cls,
        industrial=industrial,
        bright=rng.normal(0, 0.08, n).astype(np.float32),
        mix=rng.normal(0, 0.15, n).astype(np.float32),
        angle=rng.uniform(0, np.pi, n).astype(np.float32),
        strip=rng.uniform(25, 70, n).astype(np.float32),
        length=rng.uniform(120, 400, n).astype(np.float32),
        phase=rng.uniform(0, 400, (n, 2)).astype(np.float32),
        hedges=rng.random(n) < 0.35,
        conifer=rng.beta(0.7, 0.7, n).astype(np.float32),
        salt=int(rng.integers(2**62)),
    )


def _rural_classes(
    rng: np.random.Generator,
    seeds: np.ndarray,
    extent: float,
    in_town: np.ndarray,
    has_road: np.ndarray,
) -> np.ndarray:
    """Cropland, forest, grassland, bare soil and lakes, forest clustered by a smooth field.

    Forest, cropland, grassland and bare soil each get at least one cell when there are
    enough cells outside towns; lakes only where no road runs (roads cross rivers on bridges,
    not lakes).
    """
    rural = np.array([FOREST, CROPLAND, GRASSLAND, BARE_SOIL, WATER])
    field = ndimage.gaussian_filter(rng.standard_normal((8, 8)), 1.0)
    field /= field.std() + 1e-9
    at = np.clip((seeds * np.array([1, -1]) / extent) * 7, 0, 7).T[::-1]
    tendency = ndimage.map_coordinates(field, at, order=1)
    weights = np.tile([0.26, 0.40, 0.22, 0.06, 0.06], (len(seeds), 1))
    weights[:, 0] *= np.exp(1.2 * tendency)
    weights[:, 1] *= np.exp(-1.2 * tendency)
    cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cls = rural[np.minimum((cum < rng.random(len(seeds))[:, None]).sum(axis=1), len(rural) - 1)]
    free = rng.permutation(np.flatnonzero(~in_town))
    if len(free) >= 4:
        cls[free[:4]] = rural[:4]
    cls[(cls == WATER) & (has_road | in_town)] = GRASSLAND
    return cls.astype(np.uint8)


def field_parcels(cells: Cells, cid: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple:
    """Field parcel (i, j), distance to the parcel edge and the across-field coordinate."""
    th = cells.angle[cid]
    c, s = np.cos(th), np.sin(th)
    u = x * c + y * s + cells.phase[cid, 0]
    v = -x * s + y * c + cells.phase[cid, 1]
    w, ln = cells.strip[cid], cells.length[cid]
    i, j = np.floor(u / w), np.floor(v / ln)
    fu, fv = u - i * w, v - j * ln
    edge = np.minimum(np.minimum(fu, w - fu), np.minimum(fv, ln - fv))
    return i, j, edge, u
