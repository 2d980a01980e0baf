"""The scene grid, and the fields sampled on it: smooth noise and per-key hashes.

``Grid`` maps between local metres (x east, y north, origin at the scene's upper-left
corner), pixels and the scene CRS, and rasterizes local geometries. ``smooth_noise`` makes smooth
noise fields at a given blob size; ``hash01`` gives deterministic uniforms per integer key
(per-parcel and per-road choices that must not depend on drawing order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from pipeline import raster
from pipeline.config import SynthParams


@dataclass(frozen=True)
class Grid:
    size: int
    gsd: float
    x0: float  # scene CRS coordinates of the upper-left corner
    y0: float

    @property
    def extent(self) -> float:
        return self.size * self.gsd

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def transform(self) -> Affine:
        return Affine(self.gsd, 0.0, self.x0, 0.0, -self.gsd, self.y0)

    @property
    def local_transform(self) -> Affine:
        """Transform of the same grid in local metres (origin at the upper-left corner)."""
        return Affine(self.gsd, 0.0, 0.0, 0.0, -self.gsd, 0.0)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.extent, self.x0 + self.extent, self.y0)

    def pixel(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of local points, clipped to the grid."""
        col = np.clip((xy[:, 0] / self.gsd).astype(np.intp), 0, self.size - 1)
        row = np.clip((-xy[:, 1] / self.gsd).astype(np.intp), 0, self.size - 1)
        return row, col

    def burn(
        self, geoms, values=None, dtype: str = "uint8", all_touched: bool = False
    ) -> np.ndarray:
        """Rasterize local-metre geometries onto the scene grid."""
        return raster.burn_geometries(
            geoms,
            self.local_transform,
            self.shape,
            values=values,
            all_touched=all_touched,
            dtype=dtype,
        )


def scene_grid(params: SynthParams, index: int) -> Grid:
    step = params.size * params.gsd + 1000.0
    return Grid(params.size, params.gsd, params.origin[0] + index * step, params.origin[1])


def _resize_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` to ``n`` samples along ``axis`` (cell centres aligned)."""
    m = a.shape[axis]
    pos = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
    i0 = np.minimum(pos.astype(np.intp), m - 2)
    shape = [1] * a.ndim
    shape[axis] = n
    w = (pos - i0).astype(np.float32).reshape(shape)
    a0 = np.take(a, i0, axis=axis)
    return a0 + (np.take(a, i0 + 1, axis=axis) - a0) * w


def resize_linear(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _resize_axis(_resize_axis(a, shape[0], 0), shape[1], 1)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth noise (mean ~0, std ~1, float32) with blobs about ``scale_px`` pixels across."""
    if scale_px < 2:
        g = ndimage.gaussian_filter(
            rng.standard_normal(shape, dtype=np.float32), max(0.5, scale_px / 2)
        )
    else:
        coarse = (max(2, round(shape[0] / scale_px) + 2), max(2, round(shape[1] / scale_px) + 2))
        g = resize_linear(
            ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 0.8), shape
        )
    sample = g[::7, ::7]
    g -= sample.mean()
    g /= sample.std() + 1e-6
    return g


@dataclass
class Noise:
    low: np.ndarray  # ~80 m blobs
    mid: np.ndarray  # ~10 m
    fine: np.ndarray  # ~1.5 m


def noise_fields(rng: np.random.Generator, grid: Grid) -> Noise:
    def field(scale_m: float) -> np.ndarray:
        return smooth_noise(rng, grid.shape, scale_m / grid.gsd)

    low = field(80.0) + 0.5 * field(30.0)
    low /= 1.12
    return Noise(low=low, mid=field(10.0) + 0.4 * field(4.0), fine=field(1.5))


def hash01(salt: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer key tuple (splitmix64), for per-parcel choices."""
    h = np.full(np.shape(keys[0]), np.uint64(salt), dtype=np.uint64)
    for k, mult in zip(
        keys, (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9), strict=False
    ):
        h ^= np.asarray(k).astype(np.int64).astype(np.uint64) * np.uint64(mult)
        h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)
