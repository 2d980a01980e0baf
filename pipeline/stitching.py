"""Pure numpy: blend overlapping window predictions into output blocks, without seams.

Idea from raster-vision's ``SemanticSegmentationSmoothLabels`` (accumulate weight * score and
weight, divide), but streamed: memory holds only the output blocks still waiting for windows,
never a whole-scene accumulator.

Weights. Each window gets a separable weight ``w(y, x) = wy(y) * wx(x)``. Along an axis the
weight is 1 except on a side shared with a neighbouring window, where it rises as a
cosine-squared (Hann) ramp over the pixels the two windows share::

    ramp(m) = sin^2(pi/2 * (m + 1/2) / L)      m = 0 .. L-1, L = pixels shared with the neighbour
                                                (at most half of either window)

The neighbour's falling ramp is ``cos^2`` over the same pixels, so in 1-D the two sum to 1
(a true cross-fade). Sampling at pixel centres keeps every weight > 0, and a side on the
raster border gets no ramp at all: border pixels are never down-weighted towards the edge.
Because weights are separable and windows form a Cartesian grid, the total weight at a pixel
is ``Wy(y) * Wx(x)`` with ``W = sum of the 1-D weights``: each window's contribution can be
normalised on its own (``w * p / W``), and an output pixel is simply the sum of the
contributions of the windows that touch it, whatever the block or task it was computed in.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np

from pipeline.windows import UNET_MULTIPLE, Rect, WindowGrid, axis_spans, blocks

NODATA_UINT8 = 255
UINT8_MAX_PROB = 254  # probability p is stored as round(p * 254); 255 is nodata
UINT8_SCALE = 1.0 / UINT8_MAX_PROB


def taper(window: int, before: int, after: int) -> np.ndarray:
    """1-D window weight: 1, with a cos^2 ramp of ``before`` / ``after`` pixels at each end.

    A ramp length of 0 means that side is on the raster border (no neighbour): no taper.
    """
    if before < 0 or after < 0 or before > window or after > window:
        raise ValueError(f"ramps ({before}, {after}) must lie in [0, window={window}]")
    w = np.ones(window, dtype=np.float64)
    if before:
        w[:before] *= np.sin(0.5 * np.pi * (np.arange(before) + 0.5) / before) ** 2
    if after:
        w[window - after :] *= np.sin(0.5 * np.pi * (np.arange(after)[::-1] + 0.5) / after) ** 2
    return w


@functools.lru_cache(maxsize=64)
def _axis(
    size: int, window: int, overlap: int, multiple: int
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    spans = axis_spans(size, window, overlap, multiple)
    n = len(spans)

    def ramp(a: int, b: int) -> int:  # shared pixels of windows a and b, at most half of either
        (oa, la), (ob, lb) = spans[a], spans[b]
        return max(0, min(oa + la - ob, la // 2, lb // 2))

    weights = []
    total = np.zeros(max(size, spans[-1][0] + spans[-1][1]), dtype=np.float64)
    for k, (off, length) in enumerate(spans):
        w = taper(length, ramp(k - 1, k) if k > 0 else 0, ramp(k, k + 1) if k < n - 1 else 0)
        w.setflags(write=False)
        weights.append(w)
        total[off : off + length] += w
    total = total[:size]
    total.setflags(write=False)
    return tuple(weights), total


def axis_weights(
    size: int, window: int, overlap: int, multiple: int = UNET_MULTIPLE
) -> list[np.ndarray]:
    """The 1-D weight of every window along an axis (same order as ``axis_spans``)."""
    return list(_axis(size, window, overlap, multiple)[0])


def axis_weight_sum(
    size: int, window: int, overlap: int, multiple: int = UNET_MULTIPLE
) -> np.ndarray:
    """Sum of all windows' 1-D weights at each of the ``size`` pixels (always > 0)."""
    return _axis(size, window, overlap, multiple)[1]


def window_contribution_weight(grid: WindowGrid, i: int, j: int) -> tuple[Rect, np.ndarray]:
    """(area inside the raster, normalised weight ``w / W`` over that area) for window (i, j).

    Summing ``weight * probability`` over every window that touches a pixel gives the blended
    probability there; the weight array is cropped to the raster (padding is discarded).
    """
    rect = grid.rect(i, j)
    inside = rect.intersect(grid.bounds)
    wy = axis_weights(grid.height, *grid.row_axis)[i][: inside.height]
    wx = axis_weights(grid.width, *grid.col_axis)[j][: inside.width]
    ty = axis_weight_sum(grid.height, *grid.row_axis)[inside.row_off : inside.row_end]
    tx = axis_weight_sum(grid.width, *grid.col_axis)[inside.col_off : inside.col_end]
    return inside, np.outer(wy / ty, wx / tx).astype(np.float32)


class BlockAssembler:
    """Collects task results into output blocks and hands each block back once complete.

    ``regions`` lists the raster area of every task (all tasks, known up front); a block is
    complete when every task whose area touches it has been added. Block arrays are allocated
    on first contribution and dropped once returned, so memory holds only open blocks.
    """

    def __init__(self, height: int, width: int, block: int, regions: Iterable[Rect]) -> None:
        self.height, self.width, self.block = height, width, block
        self.blocks = blocks(height, width, block)
        self._cols = -(-width // block)
        self._pending = np.zeros(len(self.blocks), dtype=np.int64)
        for region in regions:
            for b in self._block_ids(region):
                self._pending[b] += 1
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.peak_open = 0
        self._ready = [b for b in range(len(self.blocks)) if self._pending[b] == 0]

    def _block_ids(self, region: Rect) -> list[int]:
        region = region.intersect(Rect(0, 0, self.height, self.width))
        if region.empty:
            return []
        r0, r1 = region.row_off // self.block, (region.row_end - 1) // self.block
        c0, c1 = region.col_off // self.block, (region.col_end - 1) // self.block
        return [r * self._cols + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]

    @property
    def open_blocks(self) -> int:
        return len(self._open)

    @property
    def done(self) -> bool:
        return not self._pending.any() and not self._ready

    def initially_complete(self) -> list[tuple[Rect, np.ndarray, np.ndarray]]:
        """Blocks no task touches (only possible for an empty task list): all nodata."""
        out = [self._finish(b) for b in self._ready]
        self._ready = []
        return out

    def add(
        self, region: Rect, contrib: np.ndarray | None, valid: np.ndarray | None
    ) -> list[tuple[Rect, np.ndarray, np.ndarray]]:
        """Add one task's summed contributions over ``region`` (None: all its windows skipped).

        Returns the blocks this completes as (rect, probability float32, valid bool).
        """
        if contrib is not None and (
            contrib.shape != (region.height, region.width)
            or valid is None
            or valid.shape != contrib.shape
        ):
            raise ValueError(f"contribution shape {contrib.shape} does not match {region}")
        finished = []
        for b in self._block_ids(region):
            if self._pending[b] <= 0:
                raise RuntimeError(f"block {self.blocks[b]} received more results than expected")
            if contrib is not None:
                rect = self.blocks[b]
                if b not in self._open:
                    self._open[b] = (
                        np.zeros((rect.height, rect.width), np.float32),
                        np.zeros((rect.height, rect.width), bool),
                    )
                    self.peak_open = max(self.peak_open, len(self._open))
                acc, ok = self._open[b]
                part = region.intersect(rect)
                dst, src = part.slices_in(rect), part.slices_in(region)
                acc[dst] += contrib[src]
                ok[dst] |= valid[src]
            self._pending[b] -= 1
            if self._pending[b] == 0:
                finished.append(self._finish(b))
        return finished

    def _finish(self, b: int) -> tuple[Rect, np.ndarray, np.ndarray]:
        rect = self.blocks[b]
        if b in self._open:
            acc, ok = self._open.pop(b)
        else:
            acc = np.zeros((rect.height, rect.width), np.float32)
            ok = np.zeros((rect.height, rect.width), bool)
        return rect, acc, ok


def encode_uint8(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probability -> uint8 ``round(p * 254)``; 255 where not valid."""
    out = np.rint(np.clip(prob, 0.0, 1.0) * UINT8_MAX_PROB).astype(np.uint8)
    out[~valid] = NODATA_UINT8
    return out


def encode_float32(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Probability in 0..1 as float32; NaN where not valid."""
    out = np.clip(prob, 0.0, 1.0).astype(np.float32)
    out[~valid] = np.nan
    return out


def decode(values: np.ndarray) -> np.ndarray:
    """Stored output values (uint8 or float32) -> probability float32, NaN where nodata."""
    if values.dtype == np.uint8:
        out = values.astype(np.float32) * np.float32(UINT8_SCALE)
        out[values == NODATA_UINT8] = np.nan
        return out
    return values.astype(np.float32)
