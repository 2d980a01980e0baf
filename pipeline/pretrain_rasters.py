"""Rasters without labels as pretraining data (``pretrain.unlabelled``, task ``rotation``).

Analysts hold far more imagery than labels. Each listed raster is cut into a grid of square
cells; a cell with any invalid pixel (nodata value, alpha, dataset mask) is left out, and each
kept cell is served four times, turned by 0, 90, 180 and 270 degrees, the turn being its class
(:mod:`pipeline.pretrain_targets`). Pixels are normalised with the chips' train statistics, so
the rasters need the chips' bands in the same order. The grid is found one strip of rows at a
time and each patch is read when it is asked for: memory does not grow with the raster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.normalise import pretrain_band_stats, standardise
from pipeline.raster import RasterError, open_reader, raster_info, read_window


def valid_cells(path: Path, patch: int) -> list[tuple[int, int]]:
    """``(row, col)`` of the ``patch`` x ``patch`` grid cells of ``path`` with only valid pixels."""
    info = raster_info(path)
    cells = []
    with open_reader(path) as reader:
        for row in range(0, info.height - patch + 1, patch):
            ncols = info.width // patch
            _, valid = read_window(reader, 0, row, ncols * patch, patch)
            ok = valid.reshape(patch, ncols, patch).all(axis=(0, 2))
            cells += [(row, int(c) * patch) for c in np.nonzero(ok)[0]]
    return cells


class RasterRotationPatches(Dataset):
    """Normalised, turned patches of unlabelled rasters: ``(image (C, S, S) float32, turns)``."""

    def __init__(self, paths: list[Path], patch: int, mean: list[float], std: list[float]) -> None:
        self.patch = patch
        self.mean, self.std = pretrain_band_stats(mean, std)
        self.items: list[tuple[Path, int, int, int]] = []  # path, row, col, quarter turns
        for path in map(Path, paths):
            count = raster_info(path).count
            if count != len(mean):
                raise RasterError(
                    f"{path}: {count} bands, but the chips have {len(mean)}; pretrain.unlabelled "
                    "rasters need the chips' bands, in the same order"
                )
            self.items += [(path, r, c, k) for r, c in valid_cells(path, patch) for k in range(4)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, r, c, turns = self.items[k]
        with open_reader(path) as reader:
            image, _ = read_window(reader, c, r, self.patch, self.patch)
        x = np.rot90(standardise(image, self.mean, self.std), turns, axes=(1, 2))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(turns, dtype=torch.int64)
