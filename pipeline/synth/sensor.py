"""The sensor: illumination and colour balance, haze, blur, noise, quantisation to digital
numbers, and nodata outside a rotated acquisition footprint."""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage

from pipeline.synth.grid import Grid, smooth_noise
from pipeline.synth.materials import HAZE
from pipeline.synth.state import Scene

IMAGE_NODATA = 0


def apply_sensor(
    rng: np.random.Generator, sc: Scene, dtype: str, border: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Illumination, colour balance, haze, blur, noise, quantisation, nodata footprint."""
    img = sc.img
    gain = rng.uniform(0.8, 1.25) * rng.uniform(0.88, 1.12, 4)
    haze = rng.uniform(0.0, 0.08) * (
        1 + 0.5 * smooth_noise(rng, sc.grid.shape, 600.0 / sc.grid.gsd)
    )
    blur = rng.uniform(0.45, 0.8)
    white, gamma = rng.uniform(0.42, 0.6), rng.uniform(1.0, 1.4)
    valid = _footprint(rng, sc.grid) if border else np.ones(sc.grid.shape, bool)
    out = np.empty(img.shape, dtype=dtype)
    for b in range(4):
        band = ndimage.gaussian_filter(img[b] * np.float32(gain[b]) + haze * HAZE[b], blur)
        np.maximum(band, 0, out=band)
        band += (0.0015 + 0.006 * np.sqrt(band)) * rng.standard_normal(band.shape, dtype=np.float32)
        out[b] = _quantise(band, dtype, white, gamma)
        out[b][~valid] = IMAGE_NODATA
    sc.img = None
    return out, valid


def _quantise(band: np.ndarray, dtype: str, white: float, gamma: float) -> np.ndarray:
    """Reflectance to digital numbers, never 0 (0 is nodata)."""
    if dtype == "uint8":
        dn = 1 + 254 * np.clip(band / white, 0, 1) ** np.float32(1 / gamma)
        return np.rint(dn).astype(np.uint8)
    return np.rint(np.clip(band * 10000, 1, 65535)).astype(np.uint16)


def _footprint(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Valid pixels: inside a slightly rotated, shifted square, like an image footprint."""
    extent = grid.extent
    angle = math.radians(rng.uniform(3, 12)) * rng.choice([-1, 1])
    half = 0.5 * extent * rng.uniform(0.92, 1.0)
    centre = np.array([extent / 2, -extent / 2]) + rng.uniform(-0.04, 0.04, 2) * extent
    c, s = math.cos(angle), math.sin(angle)
    corners = (
        np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half @ np.array([[c, s], [-s, c]]) + centre
    )
    return grid.burn([shapely.Polygon(corners)]).astype(bool)
