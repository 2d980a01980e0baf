"""Trees: crowns on a jittered grid by land-cover density, hedgerows and avenues beside roads;
Gaussian crowns summed into canopy cover, relief and tone, sun-lit crown shading and crown
shadows thrown as far as each tree is tall."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage

from pipeline.synth.geometry import frames, ragged_arange
from pipeline.synth.grid import resize_linear
from pipeline.synth.landcover import field_parcels
from pipeline.synth.materials import CONIFER, DECIDUOUS, SKYLIGHT
from pipeline.synth.state import Scene
from pipeline.synth.types import CROPLAND, FOREST, GRASSLAND

_CROWN_RADIUS_M = ((False, 2.3), (True, 4.0))  # (broad crown?, radius): two crown sizes
# probability that a tree stands at a candidate point (4 m apart), by land-cover class
_TREE_DENSITY = np.array([0.9, 0.0, 0.06, 0.015, 0.0, 0.12, 0.03], np.float32)


@dataclass
class _Trees:
    row: np.ndarray  # pixel coordinates (float)
    col: np.ndarray
    height: np.ndarray  # m
    large: np.ndarray  # bool: broad crown
    conifer: np.ndarray  # 0..1
    tone: np.ndarray


def paint_trees(rng: np.random.Generator, sc: Scene) -> None:
    """Crowns over everything (roads included: they stay road in the labels), with shadows."""
    trees = _tree_points(rng, sc)
    if not len(trees.row):
        return
    cover, relief, tone, conifer = _canopy(sc, trees)
    alpha = _crown_alpha(cover)
    shadow = _tree_shadows(sc, trees) * (1 - alpha)
    shade = _crown_shading(sc, relief) * (1 + 0.12 * sc.noise.fine)
    for b in range(4):
        ground = sc.img[b] * (1 - 0.7 * shadow * (1 - SKYLIGHT[b]))  # crowns let some light through
        crown = (DECIDUOUS[b] + (CONIFER[b] - DECIDUOUS[b]) * conifer) * tone * shade
        sc.img[b] = ground + (crown - ground) * alpha


def _tree_points(rng: np.random.Generator, sc: Scene) -> _Trees:
    """Candidates on a jittered 4 m grid (trees keep their distance), kept by land-cover
    density; hedgerows along some field margins; avenue trees beside some roads."""
    g = sc.grid
    row, col = _jittered_grid(rng, g.extent, 4.0)
    row, col = row / g.gsd, col / g.gsd
    n = len(row)
    r, c = row.astype(np.intp), col.astype(np.intp)
    cls = sc.lc[r, c]
    p = _TREE_DENSITY[cls] * np.clip(1 + 0.7 * sc.noise.low[r, c], 0, 1.6)
    crop = np.flatnonzero(cls == CROPLAND)
    cid = sc.cell[r[crop], c[crop]]
    _, _, edge, _ = field_parcels(sc.cells, cid, col[crop] * g.gsd, -row[crop] * g.gsd)
    p[crop] = np.where((edge < 2.0) & sc.cells.hedges[cid], 0.7, 0.0)
    p[sc.blocked[r, c]] = 0
    keep = rng.random(n) < p
    row, col, cls = row[keep], col[keep], cls[keep]
    a_row, a_col = _avenue_trees(rng, sc)
    row, col = np.concatenate([row, a_row]), np.concatenate([col, a_col])
    cls = np.concatenate([cls, np.full(len(a_row), GRASSLAND, np.uint8)])
    forest = cls == FOREST
    k = len(row)
    cid = sc.cell[row.astype(np.intp), col.astype(np.intp)]
    return _Trees(
        row=row,
        col=col,
        height=np.where(forest, rng.uniform(12, 24, k), rng.uniform(4, 11, k)),
        large=rng.random(k) < np.where(forest, 0.2, 0.6),
        conifer=np.where(forest, rng.random(k) < sc.cells.conifer[cid], rng.random(k) < 0.1).astype(
            np.float32
        ),
        tone=rng.uniform(0.8, 1.2, k),
    )


def _jittered_grid(
    rng: np.random.Generator, extent: float, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) in metres: one point per ``spacing`` cell, placed at random within the
    middle 70 % of its cell."""
    n = int(extent // spacing)
    cells = (np.arange(n) + 0.5) * spacing
    y, x = np.meshgrid(cells, cells, indexing="ij")
    jitter = rng.uniform(-0.35, 0.35, (2, n * n)) * spacing
    return y.ravel() + jitter[0], x.ravel() + jitter[1]


def _avenue_trees(rng: np.random.Generator, sc: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Rows of trees beside some roads; their crowns overhang the road edges."""
    roads = sc.layout.roads
    sel = roads.road_class.isin(["primary", "secondary", "residential", "track"]).to_numpy()
    sel = sel & (rng.random(len(roads)) < 0.55)
    lines = roads.geometry.to_numpy()[sel]
    if not len(lines):
        return np.empty(0), np.empty(0)
    spacing = rng.uniform(7, 11)
    counts = (shapely.length(lines) // spacing).astype(np.intp)
    idx = np.repeat(np.arange(len(lines)), 2 * counts)
    p, _, nrm = frames(lines[idx], (ragged_arange(2 * counts) // 2 + 0.5) * spacing)
    side = np.where(ragged_arange(2 * counts) % 2 == 0, 1.0, -1.0)
    xy = p + nrm * (side * (roads.width_m.to_numpy()[sel][idx] / 2 + 1.5))[:, None]
    inside = (
        (xy[:, 0] >= 0)
        & (xy[:, 0] < sc.grid.extent)
        & (xy[:, 1] <= 0)
        & (xy[:, 1] > -sc.grid.extent)
    )
    r, c = sc.grid.pixel(xy)
    ok = inside & ~sc.blocked[r, c] & (rng.random(len(xy)) < 0.85)
    return -xy[ok, 1] / sc.grid.gsd, xy[ok, 0] / sc.grid.gsd


def _canopy(sc: Scene, trees: _Trees) -> tuple[np.ndarray, ...]:
    """Per pixel: crown cover (Gaussian crowns summed, ~1 at a crown centre), canopy relief
    in metres (a dome as high as the crown is wide, for shading), crown tone, conifer share.

    Tone and conifer share vary slowly, so they are made on a grid twice as coarse.
    """
    shape = sc.grid.shape
    cover = np.zeros(shape, np.float32)
    relief = np.zeros(shape, np.float32)
    tone_sum = conifer_sum = cover_coarse = None
    for large, radius_m in _CROWN_RADIUS_M:
        sel = trees.large == large
        if not sel.any():
            continue
        row, col = trees.row[sel], trees.col[sel]
        sigma = radius_m / 2.0 / sc.grid.gsd
        (c,) = _splat(row, col, [np.ones(len(row))], shape, sigma, max(1, int(sigma)))
        cover += c
        relief += radius_m * c
        coarse = _splat(
            row,
            col,
            [np.ones(len(row)), trees.tone[sel], trees.conifer[sel]],
            shape,
            sigma,
            2,
            upsample=False,
        )
        if cover_coarse is None:
            cover_coarse, tone_sum, conifer_sum = coarse
        else:
            cover_coarse += coarse[0]
            tone_sum += coarse[1]
            conifer_sum += coarse[2]
    norm = np.maximum(cover_coarse, 1e-3)
    return (
        cover,
        relief,
        _upsample_to(tone_sum / norm, shape, 2),
        _upsample_to(conifer_sum / norm, shape, 2),
    )


def _crown_alpha(cover: np.ndarray) -> np.ndarray:
    """Opacity of the canopy from summed Gaussian crowns (1 at a lone crown's centre)."""
    return np.clip((cover - 0.12) / 0.3, 0.0, 1.0)


def _tree_shadows(sc: Scene, trees: _Trees) -> np.ndarray:
    """Crown shadows, each thrown as far as its own tree is tall (made at half resolution)."""
    g = sc.grid
    length = trees.height / math.tan(sc.sun_elevation) / g.gsd
    row = trees.row + math.cos(sc.sun_azimuth) * length  # away from the sun; rows run south
    col = trees.col - math.sin(sc.sun_azimuth) * length
    inside = (row >= 0) & (row < g.size) & (col >= 0) & (col < g.size)
    cover = np.zeros(g.shape, np.float32)
    for large, radius_m in _CROWN_RADIUS_M:
        sel = inside & (trees.large == large)
        if sel.any():
            cover += _splat(
                row[sel], col[sel], [np.ones(int(sel.sum()))], g.shape, radius_m / 2.0 / g.gsd, 2
            )[0]
    return _crown_alpha(cover)


def _splat(
    row: np.ndarray,
    col: np.ndarray,
    weights: list[np.ndarray],
    shape: tuple[int, int],
    sigma_px: float,
    factor: int,
    upsample: bool = True,
) -> list[np.ndarray]:
    """Sum of Gaussian blobs (peak = weight) at points, made on a grid ``factor`` times
    coarser; upsampled to ``shape`` unless ``upsample`` is False."""
    cshape = (shape[0] // factor + 2, shape[1] // factor + 2)
    idx = (row // factor).astype(np.intp) * cshape[1] + (col // factor).astype(np.intp)
    sigma = sigma_px / factor
    out = []
    for w in weights:
        acc = np.bincount(
            idx, weights=w * (2 * np.pi * sigma * sigma), minlength=cshape[0] * cshape[1]
        )
        acc = ndimage.gaussian_filter(
            acc.reshape(cshape).astype(np.float32), sigma, mode="constant"
        )
        out.append(_upsample_to(acc, shape, factor) if upsample else acc)
    return out


def _upsample_to(coarse: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Back to ``shape`` from a grid binned ``factor`` times coarser (with padding cells)."""
    if factor == 1:
        return np.ascontiguousarray(coarse[: shape[0], : shape[1]])
    full = resize_linear(coarse, (coarse.shape[0] * factor, coarse.shape[1] * factor))
    return np.ascontiguousarray(full[: shape[0], : shape[1]])


def _crown_shading(sc: Scene, relief: np.ndarray) -> np.ndarray:
    """Lambertian shading of the canopy surface: sunlit and shaded sides of crowns."""
    gy, gx = np.gradient(relief * np.float32(1.0 / sc.grid.gsd))
    sx, sy, sz = sc.sun_vector  # east, north, up; rows run south
    shade = (-gx * sx + gy * sy + sz) / np.sqrt(1 + gx * gx + gy * gy)
    return np.clip(shade / sz, 0.25, 1.6)
