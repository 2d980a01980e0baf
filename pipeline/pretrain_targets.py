"""Patch classes for pretraining derived from data a user has: road masks, or imagery alone.

``roads``: each ``patch`` x ``patch`` cell of a chip's road mask (0 background, 1 road, 255
nodata) gets one of :data:`ROAD_CLASSES`:

- ``no road``: under :data:`MIN_ROAD_SHARE` of its pixels are road;
- ``junction``: a road component inside the disk around the cell's centre (radius
  :data:`RING_RADIUS` of the side) leaves that disk in three or more places (a T, a cross, a
  fork); two parallel roads or a bend leave it in two places each and are not junctions;
- otherwise the dominant road direction in four 45° bins (E-W, NE-SW, N-S, NW-SE; north is up,
  the first row of the chip), from the structure tensor of the mask: the road runs across the
  mask's mean gradient orientation.

``rotation`` (self-supervised, RotNet, Gidaris et al. 2018): every valid cell four times, turned
by 0, 90, 180 and 270 degrees; the class is the turn. It needs imagery only.

Cells with any nodata pixel are left out, as land-cover cells are.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ROAD_CLASSES = ["no road", "road E-W", "road NE-SW", "road N-S", "road NW-SE", "junction"]
JUNCTION = ROAD_CLASSES.index("junction")
ROTATION_CLASSES = ["0°", "90°", "180°", "270°"]
MIN_ROAD_SHARE = 0.01
RING_RADIUS = 0.4  # of the cell side: the disk reaches 80 % of the way to the cell's edges


def road_direction_bin(road: np.ndarray) -> int:
    """0 E-W, 1 NE-SW, 2 N-S, 3 NW-SE: the road direction of a 0/1 mask, from its structure tensor."""
    m = ndimage.gaussian_filter(road.astype(np.float64), 1.0)
    gy, gx = np.gradient(m)  # gy along rows (southwards), gx along columns (eastwards)
    gy = -gy  # north up
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    gradient_angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))  # -90 .. 90, from east
    road_angle = (gradient_angle + 90.0) % 180.0
    return int(np.round(road_angle / 45.0)) % 4


def has_junction(road: np.ndarray, radius_share: float = RING_RADIUS) -> bool:
    """Whether one road component inside the central disk crosses the disk's rim 3+ times."""
    side = min(road.shape)
    radius = radius_share * side
    cy, cx = (road.shape[0] - 1) / 2, (road.shape[1] - 1) / 2
    yy, xx = np.mgrid[: road.shape[0], : road.shape[1]]
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    components, n = ndimage.label(road.astype(bool) & disk, structure=np.ones((3, 3)))
    if n == 0:
        return False
    steps = max(64, int(2 * np.pi * radius * 2))
    angles = np.linspace(0, 2 * np.pi, steps, endpoint=False)
    rr = np.clip(np.round(cy + (radius - 1) * np.sin(angles)).astype(int), 0, road.shape[0] - 1)
    cc = np.clip(np.round(cx + (radius - 1) * np.cos(angles)).astype(int), 0, road.shape[1] - 1)
    rim = components[rr, cc]
    starts = rim[(rim != 0) & (rim != np.roll(rim, 1))]  # first rim sample of each crossing
    if starts.size == 0:
        return False
    return int(np.bincount(starts).max()) >= 3


def road_patch_class(road: np.ndarray) -> int:
    """The :data:`ROAD_CLASSES` index of one cell's 0/1 road mask."""
    if road.mean() < MIN_ROAD_SHARE:
        return 0
    if has_junction(road):
        return JUNCTION
    return 1 + road_direction_bin(road)


def grid_cells(nodata: np.ndarray, patch: int) -> list[tuple[int, int]]:
    """``(row, col)`` of the ``patch`` x ``patch`` grid cells of one chip free of nodata."""
    nr, nc = nodata.shape[0] // patch, nodata.shape[1] // patch
    if nr == 0 or nc == 0:
        return []
    bad = np.asarray(nodata[: nr * patch, : nc * patch]).reshape(nr, patch, nc, patch)
    keep = ~bad.any(axis=(1, 3))
    return [(int(r) * patch, int(c) * patch) for r, c in zip(*np.nonzero(keep), strict=True)]


def label_road_patches(
    mask: np.ndarray, nodata: np.ndarray, patch: int
) -> list[tuple[int, int, int]]:
    """``(row, col, class)`` of the clean cells of one chip's road mask (1 = road)."""
    road = np.asarray(mask) == 1
    return [
        (r, c, road_patch_class(road[r : r + patch, c : c + patch]))
        for r, c in grid_cells(nodata, patch)
    ]


def label_rotation_patches(nodata: np.ndarray, patch: int) -> list[tuple[int, int, int]]:
    """``(row, col, quarter_turns)``: each clean cell four times, once per turn."""
    return [(r, c, k) for r, c in grid_cells(nodata, patch) for k in range(4)]
