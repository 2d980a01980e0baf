"""Pure grid maths for windowed prediction: window offsets, output blocks, task groups.

Nothing here reads pixels. The window grid is a fixed function of ``(raster size, window,
overlap)`` only, so every pixel sees the same windows however the raster is later cut into
output blocks or Dask tasks: that is what makes a prediction independent of block size and
worker count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Rect:
    """A pixel rectangle ``[row_off, row_off + height) x [col_off, col_off + width)``."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def empty(self) -> bool:
        return self.height <= 0 or self.width <= 0

    def intersect(self, other: Rect) -> Rect:
        """The overlap of two rectangles (``empty`` when they do not touch)."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        return Rect(r0, c0, max(0, r1 - r0), max(0, c1 - c0))

    def union(self, other: Rect) -> Rect:
        """The bounding rectangle of both."""
        r0, c0 = min(self.row_off, other.row_off), min(self.col_off, other.col_off)
        r1, c1 = max(self.row_end, other.row_end), max(self.col_end, other.col_end)
        return Rect(r0, c0, r1 - r0, c1 - c0)

    def slices_in(self, outer: Rect) -> tuple[slice, slice]:
        """Array slices selecting this rectangle inside an array that covers ``outer``."""
        r, c = self.row_off - outer.row_off, self.col_off - outer.col_off
        if r < 0 or c < 0 or r + self.height > outer.height or c + self.width > outer.width:
            raise ValueError(f"{self} is not inside {outer}")
        return slice(r, r + self.height), slice(c, c + self.width)


def axis_offsets(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of the windows along one axis of ``size`` pixels.

    With ``stride = window - overlap``::

        n = 1                                         if size <= window
        n = ceil((size - window) / stride) + 1        otherwise
        offset_i = round(i * (size - window) / (n - 1))   for i in 0 .. n-1

    The first window starts at 0 and the last ends exactly at ``size``, so no window reads
    past the raster unless the raster is smaller than one window (then one window at 0, padded
    with nodata). Offsets are spread evenly, so neighbouring windows overlap by at least
    ``overlap`` pixels and by the same amount (to a pixel) all along the axis: no thin strip is
    left for a snapped-back last window (rslearn #486). Every pixel is covered.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window={window}), got {overlap}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size <= window:
        return [0]
    span = size - window
    n = math.ceil(span / (window - overlap)) + 1
    # round half up in integers: floor(i*span/(n-1) + 1/2)
    return [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def axis_cover(offsets: list[int], window: int, start: int, end: int) -> range:
    """Indices of the windows (sorted ``offsets``) that overlap pixels ``[start, end)``."""
    lo = 0
    while lo < len(offsets) and offsets[lo] + window <= start:
        lo += 1
    hi = lo
    while hi < len(offsets) and offsets[hi] < end:
        hi += 1
    return range(lo, hi)


@dataclass(frozen=True)
class WindowGrid:
    """The fixed grid of square prediction windows over a ``height x width`` raster."""

    height: int
    width: int
    window: int
    overlap: int

    def __post_init__(self) -> None:
        # validates the arguments early, with the axis named
        for name, size in (("height", self.height), ("width", self.width)):
            try:
                axis_offsets(size, self.window, self.overlap)
            except ValueError as e:
                raise ValueError(f"window grid, {name}: {e}") from None

    @property
    def row_offsets(self) -> list[int]:
        return axis_offsets(self.height, self.window, self.overlap)

    @property
    def col_offsets(self) -> list[int]:
        return axis_offsets(self.width, self.window, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of windows (rows, columns)."""
        return len(self.row_offsets), len(self.col_offsets)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def bounds(self) -> Rect:
        return Rect(0, 0, self.height, self.width)

    def rect(self, i: int, j: int) -> Rect:
        """Window (i, j) in pixels; may extend past the raster when it is smaller than a window."""
        return Rect(self.row_offsets[i], self.col_offsets[j], self.window, self.window)

    def indices(self) -> Iterator[tuple[int, int]]:
        """All window indices, row-major."""
        rows, cols = self.shape
        for i in range(rows):
            for j in range(cols):
                yield i, j

    def touching(self, area: Rect) -> list[tuple[int, int]]:
        """Indices of the windows that overlap ``area``, row-major."""
        rows = axis_cover(self.row_offsets, self.window, area.row_off, area.row_end)
        cols = axis_cover(self.col_offsets, self.window, area.col_off, area.col_end)
        return [(i, j) for i in rows for j in cols]


@dataclass(frozen=True)
class WindowGroup:
    """Windows run by one task, and the raster area their predictions cover."""

    index: int
    windows: tuple[tuple[int, int], ...]
    region: Rect  # union of the windows, clipped to the raster


def window_groups(grid: WindowGrid, windows_per_task: int) -> list[WindowGroup]:
    """Cut the grid into tasks of up to ``windows_per_task`` neighbouring windows.

    Groups are runs of consecutive windows along a grid row, listed row-major, so tasks
    submitted in order sweep the raster top to bottom and finished output blocks follow
    closely behind (few blocks are open at once).
    """
    if windows_per_task < 1:
        raise ValueError(f"windows_per_task must be >= 1, got {windows_per_task}")
    rows, cols = grid.shape
    groups: list[WindowGroup] = []
    for i in range(rows):
        for j0 in range(0, cols, windows_per_task):
            members = tuple((i, j) for j in range(j0, min(cols, j0 + windows_per_task)))
            region = grid.rect(*members[0])
            for m in members[1:]:
                region = region.union(grid.rect(*m))
            groups.append(WindowGroup(len(groups), members, region.intersect(grid.bounds)))
    return groups


def blocks(height: int, width: int, block: int) -> list[Rect]:
    """Output blocks: ``block x block`` tiles of the raster, row-major, cropped at the edges."""
    if block <= 0:
        raise ValueError(f"block size must be positive, got {block}")
    return [
        Rect(r, c, min(block, height - r), min(block, width - c))
        for r in range(0, height, block)
        for c in range(0, width, block)
    ]
