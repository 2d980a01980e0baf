"""Spatial train/val/test split by blocks of area, and the chip grid inside each block.

Random splits over overlapping tiles leak pixels between train and validation (FIELD_NOTES
#10). Here the scene is cut into square blocks of ``block_size_m``; each block gets one split,
and chips are laid out *inside* their block, so a chip never crosses a block border. Where a
block's neighbour (any of 8) has another split, the sides facing it are pulled in by half of
``gap_m``: chips of different splits are then at least ``gap_m`` apart along each axis.
Pure Python, no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChipWindow:
    row_off: int
    col_off: int
    size: int
    split: str


def assign_blocks(
    keys: list[tuple[str, int, int]], val_fraction: float, test_fraction: float, seed: int
) -> dict[tuple[str, int, int], str]:
    """Assign each block key (scene, block_row, block_col) a split, deterministically.

    Counts are rounded so that every non-zero fraction gets at least one block when there are
    at least three blocks.
    """
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    n_test = min(n_test, n)
    n_val = min(n_val, n - n_test)
    out = {}
    for i, key in enumerate(order):
        out[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def block_grid(height: int, width: int, block_px: int) -> list[tuple[int, int]]:
    """(block_row, block_col) of every block touching the raster, row-major."""
    rows = -(-height // block_px)
    cols = -(-width // block_px)
    return [(r, c) for r in range(rows) for c in range(cols)]


def _offsets(start: int, stop: int, size: int, stride: int) -> list[int]:
    """Chip offsets in [start, stop): a regular grid, plus one snapped to ``stop - size``
    so that the span is covered to its end."""
    if stop - start < size:
        return []
    offs = list(range(start, stop - size + 1, stride))
    if offs[-1] + size < stop:
        offs.append(stop - size)
    return offs


def chips_in_blocks(
    height: int,
    width: int,
    *,
    block_px: int,
    gap_px: int,
    chip_size: int,
    stride: int,
    split_of: dict[tuple[int, int], str],
) -> list[ChipWindow]:
    """Chip windows of one scene, each inside one block, pulled in by gap_px/2 at split borders."""
    half = gap_px // 2 + gap_px % 2
    chips: list[ChipWindow] = []
    for (br, bc), split in sorted(split_of.items()):
        top, left = br * block_px, bc * block_px
        bottom, right = min(top + block_px, height), min(left + block_px, width)
        pull = {"top": 0, "bottom": 0, "left": 0, "right": 0}
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                other = split_of.get((br + dr, bc + dc))
                if (dr or dc) and other is not None and other != split:
                    if dr == -1:
                        pull["top"] = half
                    if dr == 1:
                        pull["bottom"] = half
                    if dc == -1:
                        pull["left"] = half
                    if dc == 1:
                        pull["right"] = half
        rows = _offsets(top + pull["top"], bottom - pull["bottom"], chip_size, stride)
        cols = _offsets(left + pull["left"], right - pull["right"], chip_size, stride)
        chips.extend(ChipWindow(r, c, chip_size, split) for r in rows for c in cols)
    return chips


def whole_scene_chips(
    height: int, width: int, chip_size: int, stride: int, split: str
) -> list[ChipWindow]:
    """Chips of a scene held out as a whole (or assigned whole to train/val)."""
    rows = _offsets(0, height, chip_size, stride)
    cols = _offsets(0, width, chip_size, stride)
    return [ChipWindow(r, c, chip_size, split) for r in rows for c in cols]


def overlaps(a: ChipWindow, b: ChipWindow, margin: int = 0) -> bool:
    """True when the two chips overlap or come closer than ``margin`` pixels on both axes."""
    return (
        a.row_off < b.row_off + b.size + margin
        and b.row_off < a.row_off + a.size + margin
        and a.col_off < b.col_off + b.size + margin
        and b.col_off < a.col_off + a.size + margin
    )
