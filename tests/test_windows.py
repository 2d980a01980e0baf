"""windows.py: pure grid maths, checked exhaustively on small sizes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.windows import (
    Rect,
    WindowGrid,
    axis_cover,
    axis_spans,
    blocks,
    window_groups,
)

SIZES = [1, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 200, 255, 256, 257, 500, 512, 513, 1000]
WINDOWS = [(32, 0), (32, 8), (64, 0), (64, 16), (64, 31), (128, 32), (96, 40), (512, 64)]
M = 32  # the U-Net multiple


@pytest.mark.parametrize(("window", "overlap"), WINDOWS)
def test_axis_spans_cover_every_pixel_and_respect_overlap(window: int, overlap: int) -> None:
    for size in SIZES:
        spans = axis_spans(size, window, overlap)
        offs = [o for o, _ in spans]
        covered = np.zeros(max(size, spans[-1][0] + spans[-1][1]), int)
        for o, n in spans:
            assert n % M == 0 and 0 < n <= window  # every window is a U-Net-valid side
            covered[o : o + n] += 1
        assert covered[:size].min() >= 1, (size, window, overlap)
        assert offs[0] == 0
        assert offs == sorted(offs)
        if size <= window:
            assert spans == [(0, -(-size // M) * M)]  # padded by less than one multiple
            continue
        assert sum(spans[-1]) == size  # the last window ends at the edge: nothing read past it
        assert all(n == window for _, n in spans[:-1])  # only the last one is cropped
        assert spans[-1][1] >= min(window, 2 * overlap)  # never a thin strip
        shared = [a + n - b for (a, n), (b, _) in itertools.pairwise(spans)]
        assert min(shared) >= overlap  # at least the asked overlap everywhere
        assert all(s == overlap for s in shared[:-1])
        # the docstring formula for the count, and no window fewer would do
        n = math.ceil((size - window) / (window - overlap)) + 1
        assert len(spans) == n
        assert (n - 2) * (window - overlap) + window < size


def test_axis_spans_examples() -> None:
    assert axis_spans(8192, 512, 0) == [(o, 512) for o in range(0, 8192, 512)]
    assert axis_spans(1000, 512, 64) == [(0, 512), (448, 512), (872, 128)]
    assert axis_spans(900, 512, 64) == [(0, 512), (420, 480)]
    assert axis_spans(300, 512, 64) == [(0, 320)]
    spans = axis_spans(8192, 512, 64)
    assert len(spans) == 19 and spans[-1] == (8192 - 128, 128)
    # what the model computes along the axis: 18 full windows and a cropped one
    assert sum(n for _, n in spans) == 18 * 512 + 128


@pytest.mark.parametrize(
    ("size", "window", "overlap"), [(0, 32, 0), (10, 0, 0), (10, 32, 32), (10, 32, -1), (10, 48, 0)]
)
def test_axis_spans_rejects_bad_arguments(size: int, window: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        axis_spans(size, window, overlap)


def test_grid_rejects_bad_overlap_naming_the_axis() -> None:
    with pytest.raises(ValueError, match="height"):
        WindowGrid(100, 100, 64, 64)
    with pytest.raises(ValueError, match="width"):
        WindowGrid(100, 100, 64, 16, col_window=64, col_overlap=64)


def test_grid_pixels_counts_what_the_model_computes() -> None:
    grid = WindowGrid(8192, 8192, 512, 64)
    assert grid.pixels == sum(
        grid.rect(i, j).height * grid.rect(i, j).width for i, j in grid.indices()
    )
    assert grid.pixels / WindowGrid(8192, 8192, 512, 0).pixels == pytest.approx((9344 / 8192) ** 2)


def test_axis_cover_matches_brute_force() -> None:
    for size, (window, overlap) in itertools.product([65, 200, 513], WINDOWS):
        spans = axis_spans(size, window, overlap)
        for start in range(0, size, 7):
            for end in range(start + 1, min(size, start + 150) + 1, 11):
                expect = [k for k, (o, n) in enumerate(spans) if o < end and o + n > start]
                assert list(axis_cover(spans, start, end)) == expect


def test_rect_geometry() -> None:
    a, b = Rect(0, 0, 10, 10), Rect(5, 8, 10, 10)
    assert a.intersect(b) == Rect(5, 8, 5, 2)
    assert a.union(b) == Rect(0, 0, 15, 18)
    assert Rect(0, 0, 4, 4).intersect(Rect(10, 10, 2, 2)).empty
    rs, cs = Rect(5, 8, 5, 2).slices_in(b)
    assert (rs, cs) == (slice(0, 5), slice(0, 2))
    with pytest.raises(ValueError):
        a.slices_in(b)


def test_grid_touching_and_indices() -> None:
    grid = WindowGrid(height=300, width=200, window=64, overlap=16)
    rows, cols = grid.shape
    assert len(grid) == rows * cols == len(list(grid.indices()))
    area = Rect(100, 50, 30, 60)
    touching = grid.touching(area)
    brute = [(i, j) for i, j in grid.indices() if not grid.rect(i, j).intersect(area).empty]
    assert touching == brute


def test_window_groups_partition_the_grid() -> None:
    grid = WindowGrid(height=300, width=500, window=64, overlap=16)
    for k in (1, 3, 4, 100):
        groups = window_groups(grid, k)
        members = [w for g in groups for w in g.windows]
        assert sorted(members) == sorted(grid.indices())  # each window in exactly one task
        assert len(members) == len(set(members))
        assert all(len(g.windows) <= k for g in groups)
        for g in groups:
            union = grid.rect(*g.windows[0])
            for w in g.windows:
                union = union.union(grid.rect(*w))
                assert grid.rect(*w).intersect(grid.bounds).intersect(g.region) == grid.rect(
                    *w
                ).intersect(grid.bounds)
            assert g.region == union.intersect(grid.bounds)
        assert [g.index for g in groups] == list(range(len(groups)))
    with pytest.raises(ValueError):
        window_groups(grid, 0)


def test_window_groups_on_raster_smaller_than_window() -> None:
    grid = WindowGrid(height=40, width=50, window=64, overlap=16)
    (g,) = window_groups(grid, 4)
    assert g.windows == ((0, 0),)
    assert g.region == Rect(0, 0, 40, 50)  # cropped: padding never reaches the output


def test_blocks_tile_the_raster_exactly() -> None:
    for h, w, b in [(300, 500, 128), (256, 256, 256), (10, 700, 256), (1, 1, 512)]:
        count = np.zeros((h, w), int)
        for r in blocks(h, w, b):
            assert 0 < r.height <= b and 0 < r.width <= b
            count[r.row_off : r.row_end, r.col_off : r.col_end] += 1
        assert (count == 1).all()
    with pytest.raises(ValueError):
        blocks(10, 10, 0)
