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


UNET_MULTIPLE = 32  # a depth-5 U-Net needs sides divisible by 2**5


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def axis_spans(
    size: int, window: int, overlap: int, multiple: int = UNET_MULTIPLE
) -> list[tuple[int, int]]:
    """``(offset, length)`` of the windows along one axis of ``size`` pixels.

    With ``stride = window - overlap``::

        size <= window:  one window at 0, length round_up(size, multiple) (padded < multiple px)
        otherwise:       n = ceil((size - window) / stride) + 1 windows;
                         window k < n-1 at k * stride, full length ``window``;
                         the last one has length
                           L = min(window, round_up(max(size - (n-1)*stride, 2*overlap), multiple))
                         and sits at ``size - L``, ending exactly at the raster edge.

    The last window is cropped to what is left of the raster instead of being a full window
    snapped back over its neighbour: the model computes ~(1 + overlap/stride) times the
    raster's pixels per axis (1.14 for 8192 px at 512/64), not a whole extra window (1.19).
    It keeps at least ``2 * overlap`` pixels, so its blending ramp has room and it never is a
    thin strip with no context (rslearn #486); being flush with the edge, it overlaps its
    neighbour by at least ``overlap``. No window reads past the raster unless the raster is
    smaller than one window. Every length is a multiple of ``multiple`` (the U-Net's stride).
    """
    if window <= 0 or window % multiple:
        raise ValueError(f"window must be a positive multiple of {multiple}, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window={window}), got {overlap}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if size <= window:
        return [(0, _round_up(size, multiple))]
    stride = window - overlap
    n = math.ceil((size - window) / stride) + 1
    last = min(window, _round_up(max(size - (n - 1) * stride, 2 * overlap), multiple))
    return [(k * stride, window) for k in range(n - 1)] + [(size - last, last)]


def axis_cover(spans: list[tuple[int, int]], start: int, end: int) -> range:
    """Indices of the windows (``axis_spans``, sorted) that overlap pixels ``[start, end)``."""
    lo = 0
    while lo < len(spans) and spans[lo][0] + spans[lo][1] <= start:
        lo += 1
    hi = lo
    while hi < len(spans) and spans[hi][0] < end:
        hi += 1
    return range(lo, hi)


@dataclass(frozen=True)
class WindowGrid:
    """The fixed grid of prediction windows over a ``height x width`` raster.

    Windows are ``window`` pixels square except along the last row and column, which are
    cropped to the raster (``axis_spans``). With ``col_window`` (and ``col_overlap``) they are
    ``window`` tall and ``col_window`` wide: a raster whose pixels are not square on the
    ground, resampled to square model pixels, is cut into windows that are square there.
    """

    height: int
    width: int
    window: int
    overlap: int
    multiple: int = UNET_MULTIPLE
    col_window: int | None = None  # None: ``window``
    col_overlap: int | None = None  # None: ``overlap``

    def __post_init__(self) -> None:
        # validates the arguments early, with the axis named
        for name, size, axis in (
            ("height", self.height, self.row_axis),
            ("width", self.width, self.col_axis),
        ):
            try:
                axis_spans(size, *axis)
            except ValueError as e:
                raise ValueError(f"window grid, {name}: {e}") from None

    @property
    def row_axis(self) -> tuple[int, int, int]:
        """(window, overlap, multiple) down the rows."""
        return self.window, self.overlap, self.multiple

    @property
    def col_axis(self) -> tuple[int, int, int]:
        """(window, overlap, multiple) across the columns."""
        window = self.window if self.col_window is None else self.col_window
        overlap = self.overlap if self.col_overlap is None else self.col_overlap
        return window, overlap, self.multiple

    @property
    def row_spans(self) -> list[tuple[int, int]]:
        return axis_spans(self.height, *self.row_axis)

    @property
    def col_spans(self) -> list[tuple[int, int]]:
        return axis_spans(self.width, *self.col_axis)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of windows (rows, columns)."""
        return len(self.row_spans), len(self.col_spans)

    @property
    def pixels(self) -> int:
        """Pixels the model computes over the whole grid (padding included)."""
        return sum(h for _, h in self.row_spans) * sum(w for _, w in self.col_spans)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def bounds(self) -> Rect:
        return Rect(0, 0, self.height, self.width)

    def rect(self, i: int, j: int) -> Rect:
        """Window (i, j) in pixels; extends past the raster only when that is smaller than a window."""
        (r, h), (c, w) = self.row_spans[i], self.col_spans[j]
        return Rect(r, c, h, w)

    def indices(self) -> Iterator[tuple[int, int]]:
        """All window indices, row-major."""
        rows, cols = self.shape
        for i in range(rows):
            for j in range(cols):
                yield i, j

    def touching(self, area: Rect) -> list[tuple[int, int]]:
        """Indices of the windows that overlap ``area``, row-major."""
        rows = axis_cover(self.row_spans, area.row_off, area.row_end)
        cols = axis_cover(self.col_spans, area.col_off, area.col_end)
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
