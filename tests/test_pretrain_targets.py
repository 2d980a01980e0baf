"""Pretraining classes derived from road masks, on hand-drawn patches."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.pretrain_targets import (
    JUNCTION,
    ROAD_CLASSES,
    grid_cells,
    has_junction,
    label_road_patches,
    label_rotation_patches,
    road_patch_class,
)

SIDE = 48


def band(angle_deg: float, offset: float = 0.0, width: float = 5.0) -> np.ndarray:
    """A straight road through the patch (north up), ``offset`` px beside the centre."""
    yy, xx = np.mgrid[:SIDE, :SIDE].astype(float)
    x, y = xx - (SIDE - 1) / 2, (SIDE - 1) / 2 - yy  # east, north
    a = np.radians(angle_deg)
    distance = np.abs(-np.sin(a) * x + np.cos(a) * y - offset)  # from the line at that angle
    return (distance <= width / 2).astype(np.uint8)


def cls(name: str) -> int:
    return ROAD_CLASSES.index(name)


@pytest.mark.parametrize(
    ("angle", "name"),
    [
        (0, "road E-W"),
        (10, "road E-W"),
        (45, "road NE-SW"),
        (90, "road N-S"),
        (100, "road N-S"),
        (135, "road NW-SE"),
        (170, "road E-W"),
    ],
)
def test_straight_roads_get_their_direction(angle: float, name: str) -> None:
    assert road_patch_class(band(angle)) == cls(name)


def test_no_road_and_a_speck_of_road() -> None:
    empty = np.zeros((SIDE, SIDE), np.uint8)
    assert road_patch_class(empty) == cls("no road")
    speck = empty.copy()
    speck[:3, :3] = 1  # 9 / 2304 = 0.4 % < 1 %
    assert road_patch_class(speck) == cls("no road")


def test_crossings_and_forks_are_junctions() -> None:
    cross = band(0) | band(90)
    tee = band(0) | (band(90) & (np.arange(SIDE)[:, None] >= SIDE // 2))  # stem goes south
    diagonal_cross = band(45) | band(135)
    for road in (cross, tee, diagonal_cross):
        assert has_junction(road)
        assert road_patch_class(road) == JUNCTION


def test_parallel_roads_and_a_bend_are_not_junctions() -> None:
    parallel = band(0, offset=-8) | band(0, offset=8)
    assert not has_junction(parallel)
    assert road_patch_class(parallel) == cls("road E-W")
    half = SIDE // 2
    bend = np.zeros((SIDE, SIDE), np.uint8)  # from the west edge to the centre, then north
    bend[half - 2 : half + 3, : half + 3] = 1
    bend[: half + 3, half - 2 : half + 3] = 1
    assert not has_junction(bend)
    assert road_patch_class(bend) != JUNCTION
    # a road ending in the patch (a dead end) crosses the rim once
    stub = band(0) & (np.arange(SIDE)[None, :] < half)
    assert not has_junction(stub)


def test_cells_with_nodata_are_left_out_and_labels_follow_the_cells() -> None:
    mask = np.zeros((2 * SIDE, 2 * SIDE), np.uint8)
    mask[:SIDE, :SIDE] = band(90)
    mask[:SIDE, SIDE:] = band(0) | band(90)
    nodata = np.zeros(mask.shape, bool)
    nodata[-1, -1] = True  # spoils the bottom-right cell only
    assert grid_cells(nodata, SIDE) == [(0, 0), (0, SIDE), (SIDE, 0)]
    assert label_road_patches(mask, nodata, SIDE) == [
        (0, 0, cls("road N-S")),
        (0, SIDE, JUNCTION),
        (SIDE, 0, cls("no road")),
    ]
    rotations = label_rotation_patches(nodata, SIDE)
    assert rotations[:4] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3)]
    assert len(rotations) == 12
