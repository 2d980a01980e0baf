"""The one module that opens rasters (rasterio/GDAL).

Everything else asks this module for windows, grids and writers, so that nodata handling,
error messages and atomic writes live in one place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.windows import Window


class RasterError(ValueError):
    """A raster that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RasterInfo:
    """The grid and sample description of a raster, without its pixels."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    has_mask: bool  # a per-dataset mask or alpha band beyond a nodata value
    band_descriptions: tuple[str | None, ...]

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster CRS."""
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioIOError as e:
        if not Path(path).exists():
            raise RasterError(f"{path}: file not found") from e
        raise RasterError(f"{path}: not a raster GDAL can read ({e})") from e


def raster_info(path: str | Path) -> RasterInfo:
    """Describe a raster's grid; raises RasterError naming the file when it cannot be read."""
    path = Path(path)
    with _open(path) as ds:
        alpha = any(ci == ColorInterp.alpha for ci in ds.colorinterp)
        per_dataset = any(
            rasterio.enums.MaskFlags.per_dataset in flags and rasterio.enums.MaskFlags.nodata not in flags
            for flags in ds.mask_flag_enums
        )
        return RasterInfo(
            path=path,
            width=ds.width,
            height=ds.height,
            count=ds.count - (1 if alpha else 0),
            dtype=ds.dtypes[0],
            crs=ds.crs,
            transform=ds.transform,
            nodata=ds.nodata,
            has_mask=alpha or per_dataset,
            band_descriptions=tuple(ds.descriptions),
        )


@contextlib.contextmanager
def open_reader(path: str | Path) -> Iterator[WindowReader]:
    """Keep one dataset open for many window reads (one per worker/task, not per window)."""
    path = Path(path)
    ds = _open(path)
    try:
        yield WindowReader(ds, path)
    finally:
        ds.close()


class WindowReader:
    """Reads windows of an open dataset, padding outside the raster with nodata."""

    def __init__(self, ds: rasterio.DatasetReader, path: Path) -> None:
        self.ds = ds
        self.path = path
        alpha_idx = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
        self._bands = [b for b in range(1, ds.count + 1) if b not in alpha_idx]

    @property
    def count(self) -> int:
        return len(self._bands)

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (image[C,H,W] in the file's dtype, valid[H,W] bool) for a window.

        Parts of the window outside the raster are returned as zeros with valid=False, so
        callers can use fixed-size windows at the edges. Validity combines the nodata value,
        per-dataset masks and alpha bands (GDAL's dataset mask).
        """
        win = Window(col_off, row_off, width, height)
        img = self.ds.read(self._bands, window=win, boundless=True, fill_value=0)
        valid = self.ds.dataset_mask(window=win, boundless=True) > 0
        return img, valid

    def read_band(self, band: int, col_off: int, row_off: int, width: int, height: int) -> np.ndarray:
        win = Window(col_off, row_off, width, height)
        return self.ds.read(band, window=win, boundless=True, fill_value=0)


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part.tif", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A killed or failing writer leaves no partial file under the final name.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")
    tmp = _atomic_target(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_geotiff(
    path: str | Path,
    array: np.ndarray,
    *,
    crs: CRS | str | None,
    transform: Affine,
    nodata: float | None = None,
    band_descriptions: list[str] | None = None,
    tags: dict[str, Any] | None = None,
    compress: str = "deflate",
    blocksize: int = 256,
) -> Path:
    """Write a (C,H,W) or (H,W) array as a tiled, compressed GeoTIFF, atomically."""
    path = Path(path)
    if array.ndim == 2:
        array = array[None]
    count, height, width = array.shape
    tiled = width >= blocksize and height >= blocksize
    profile: dict[str, Any] = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress=compress,
        BIGTIFF="IF_SAFER",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            if band_descriptions:
                for i, d in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, d)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return path
