"""The one module that opens rasters (rasterio/GDAL).

Everything else asks this module for windows, grids and writers, so that nodata handling,
error messages and atomic writes live in one place.
"""

from __future__ import annotations

import contextlib
import warnings
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

from pipeline.atomic import atomic_path, temporary_name, write_text_atomic


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
    def metres_per_pixel(self) -> float | None:
        """Pixel size in metres (approximate for geographic CRSs: 111,320 m per degree); None
        without a CRS."""
        if self.crs is None:
            return None
        if self.crs.is_geographic:
            return self.res[0] * 111_320.0
        if not self.crs.is_projected:  # a local engineering CRS (tile sets: LOCAL_GRID_WKT)
            return self.res[0] * self.crs.units_factor[1]
        return self.res[0] * self.crs.linear_units_factor[1]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings():  # a tile without CRS is refused or given a grid by name
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
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
        if alpha:
            warnings.warn(
                f"{path}: a band is flagged as alpha and is used as a mask, not as data; if it is a "
                "spectral band (e.g. NIR), unflag it: gdal_edit.py -colorinterp_4 undefined",
                stacklevel=2,
            )
        per_dataset = any(
            rasterio.enums.MaskFlags.per_dataset in flags
            and rasterio.enums.MaskFlags.nodata not in flags
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

    def read(
        self, col_off: int, row_off: int, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (image[C,H,W] in the file's dtype, valid[H,W] bool) for a window.

        Parts of the window outside the raster are returned as zeros with valid=False, so
        callers can use fixed-size windows at the edges. Validity combines the nodata value,
        per-dataset masks and alpha bands (GDAL's dataset mask).
        """
        win = Window(col_off, row_off, width, height)
        img = self.ds.read(self._bands, window=win, boundless=True, fill_value=0)
        valid = self.ds.dataset_mask(window=win, boundless=True) > 0
        return img, valid

    def read_band(
        self, band: int, col_off: int, row_off: int, width: int, height: int
    ) -> np.ndarray:
        win = Window(col_off, row_off, width, height)
        return self.ds.read(band, window=win, boundless=True, fill_value=0)


_COLOR_NAMES = {"red": ColorInterp.red, "green": ColorInterp.green, "blue": ColorInterp.blue}


def band_colorinterp(descriptions: list[str] | None, count: int) -> list[ColorInterp]:
    """Colour interpretation from band names: red/green/blue where named, else undefined/gray."""
    names = [d.lower() if d else "" for d in (descriptions or [])] + [""] * count
    default = ColorInterp.gray if count == 1 else ColorInterp.undefined
    return [_COLOR_NAMES.get(names[i], default) for i in range(count)]


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
    if count != 3:
        # GDAL would flag a 4th uint8 band as alpha under RGB photometry; NIR is no alpha.
        profile["photometric"] = "MINISBLACK"
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            dst.colorinterp = band_colorinterp(band_descriptions, count)
            if band_descriptions:
                for i, d in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, d)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return path


# ---------------------------------------------------------------- georeferencing wrappers
# The grid given to images without georeferencing: a local engineering CRS in metres, x east
# and y north, origin at the image's lower-left corner (it claims no place on Earth).
LOCAL_GRID_WKT = (
    'LOCAL_CS["roadseg local tile grid (metres, origin at the lower-left corner)",'
    'UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


def local_grid(pixel_size_m: float, height: int) -> tuple[CRS, Affine]:
    """The local grid of an image without georeferencing, ``pixel_size_m`` metres a pixel:
    its lower-left corner at (0, 0), so its coordinates are positive metres."""
    return CRS.from_wkt(LOCAL_GRID_WKT), Affine(
        pixel_size_m, 0, 0, 0, -pixel_size_m, height * pixel_size_m
    )


def write_vrt(
    path: str | Path,
    source: RasterInfo,
    *,
    crs: CRS,
    transform: Affine,
    nodata: list[float] | None = None,
) -> Path:
    """A GDAL VRT that shows ``source`` (by absolute path) on the grid ``crs``/``transform``,
    with a per-band nodata value: GDAL's dataset mask is then invalid where every band holds
    its nodata value (a fill colour), valid elsewhere. Written atomically."""
    import xml.etree.ElementTree as ET

    root = ET.Element("VRTDataset", rasterXSize=str(source.width), rasterYSize=str(source.height))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in transform.to_gdal()
    )
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
    for band in range(1, source.count + 1):
        el = ET.SubElement(
            root, "VRTRasterBand", dataType=gdal_type.get(source.dtype, "Float32"), band=str(band)
        )
        if nodata is not None:
            ET.SubElement(el, "NoDataValue").text = repr(float(nodata[band - 1]))
        src = ET.SubElement(el, "SimpleSource")
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = str(
            Path(source.path).resolve()
        )
        ET.SubElement(src, "SourceBand").text = str(band)
    if source.count == 3:
        for el, ci in zip(root.iter("VRTRasterBand"), ("Red", "Green", "Blue"), strict=True):
            ET.SubElement(el, "ColorInterp").text = ci
    return write_text_atomic(path, ET.tostring(root, encoding="unicode"))


def read_all(path: str | Path) -> np.ndarray:
    """Every band of a raster, (C, H, W) in its dtype (one tile of a tile set at a time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with _open(Path(path)) as ds:
            return ds.read()


# ---------------------------------------------------------------- whole-raster reads (evaluate)
def read_valid_mask(path: str | Path) -> np.ndarray:
    """GDAL's dataset mask of the whole raster as a bool array (True = valid pixel)."""
    with _open(Path(path)) as ds:
        return ds.dataset_mask() > 0


def read_band_array(path: str | Path, band: int = 1) -> np.ndarray:
    """One whole band in the file's dtype (for small rasters: evaluation scenes, labels)."""
    with _open(Path(path)) as ds:
        return ds.read(band)


def read_decimated(path: str | Path, bands: list[int], height: int, width: int) -> np.ndarray:
    """Bands (1-based) resampled by area averaging to ``height`` x ``width``, nodata excluded.

    For quicklooks of large rasters: GDAL reads from overviews where present, so memory
    follows the output size, not the raster's.
    """
    from rasterio.enums import Resampling

    with _open(Path(path)) as ds:
        return ds.read(bands, out_shape=(len(bands), height, width), resampling=Resampling.average)


# ---------------------------------------------------------------- class rasters (tile)
def landcover_classes(path: str | Path) -> list[str]:
    """Class names of a land-cover raster from its ``CLASSES`` tag (index = pixel value)."""
    with _open(Path(path)) as ds:
        names = ds.tags().get("CLASSES", "")
    return [n.strip() for n in names.split(",") if n.strip()]


# ------------------------------------------- window reads, streaming COG writer (predict)
STREAM_CACHE_BYTES = 64 * 2**20  # GDAL block cache while streaming (its default: 5 % of RAM)


@contextlib.contextmanager
def gdal_cache_limit(nbytes: int = STREAM_CACHE_BYTES) -> Iterator[None]:
    """Cap GDAL's block cache inside the block, so reading or writing a whole large raster
    window by window does not grow the process by the raster's size."""
    with rasterio.Env(GDAL_CACHEMAX=int(nbytes)):
        yield


class BlockWriter:
    """Writes blocks of band 1 into an open, tiled staging GeoTIFF."""

    def __init__(self, ds: Any) -> None:
        self._ds = ds

    def write(self, data: np.ndarray, row_off: int, col_off: int) -> None:
        height, width = data.shape
        self._ds.write(data, 1, window=Window(col_off, row_off, width, height))


@contextlib.contextmanager
def stream_cog(
    path: str | Path,
    *,
    width: int,
    height: int,
    crs: CRS | None,
    transform: Affine,
    dtype: str,
    nodata: float | None,
    description: str | None = None,
    scale: float | None = None,
    tags: dict[str, Any] | None = None,
    overwrite: bool = False,
    cog_blocksize: int = 512,
    staging_blocksize: int = 256,
    overview_resampling: str = "average",
) -> Iterator[BlockWriter]:
    """Stream a one-band raster block by block into a Cloud Optimised GeoTIFF at ``path``.

    Blocks go into a tiled staging GeoTIFF beside the output (blocks aligned to
    ``staging_blocksize`` are written without read-modify-write); on success the staging file
    is converted with GDAL's COG driver (deflate, overviews by ``overview_resampling``, band
    description, scale and tags carried over) to a temporary name and renamed over ``path``.
    On any error, or a kill, no file appears under ``path``; an existing ``path`` is replaced
    only with ``overwrite=True``. GDAL's cache is capped so memory stays flat in raster size.
    """
    from rasterio.shutil import copy as gdal_copy

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as final_tmp, gdal_cache_limit():
        staging = temporary_name(path)
        try:
            profile: dict[str, Any] = dict(
                driver="GTiff",
                width=width,
                height=height,
                count=1,
                dtype=dtype,
                crs=crs,
                transform=transform,
                nodata=nodata,
                tiled=True,
                blockxsize=staging_blocksize,
                blockysize=staging_blocksize,
                compress="deflate",
                zlevel=1,
                BIGTIFF="IF_SAFER",
            )
            with rasterio.open(staging, "w", **profile) as dst:
                if description:
                    dst.set_band_description(1, description)
                if scale is not None:
                    dst.scales = (scale,)
                    dst.offsets = (0.0,)
                if tags:
                    dst.update_tags(**{k: str(v) for k, v in tags.items()})
                yield BlockWriter(dst)
            with rasterio.open(staging) as src:
                gdal_copy(
                    src,
                    str(final_tmp),
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES",
                    BLOCKSIZE=cog_blocksize,
                    OVERVIEW_RESAMPLING=overview_resampling.upper(),
                    BIGTIFF="IF_SAFER",
                    NUM_THREADS="ALL_CPUS",
                )
        finally:
            staging.unlink(missing_ok=True)


def read_window(
    reader: WindowReader, col_off: int, row_off: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """``reader.read``, faster for windows inside the raster, with GDAL read failures (a corrupt
    tile, a vanished VRT source) turned into a RasterError naming the file and window (which,
    unlike RasterioIOError, survives pickling between Dask processes).

    rasterio's boundless reads go through a warped VRT (~20 ms for a 4-band 512 px window, six
    times the read itself), so they are used only for windows that reach past the edge.
    """
    ds = reader.ds
    inside = (
        col_off >= 0
        and row_off >= 0
        and col_off + width <= ds.width
        and row_off + height <= ds.height
    )
    try:
        if not inside:
            return reader.read(col_off, row_off, width, height)
        win = Window(col_off, row_off, width, height)
        return ds.read(reader._bands, window=win), ds.dataset_mask(window=win) > 0
    except RasterioIOError as e:
        reason = str(e)
    # raised outside the except block: no unpicklable RasterioIOError rides along as context
    raise RasterError(
        f"{reader.path}: cannot read the window at column {col_off}, row {row_off} "
        f"({width} x {height} px): {reason}"
    )


# ------------------------------------------------------------ burning vectors (vectors, synth)
def burn_geometries(
    geoms: Any,
    transform: Affine,
    shape: tuple[int, int],
    *,
    values: Any = None,
    all_touched: bool = False,
    dtype: str = "uint8",
    fill: int = 0,
) -> np.ndarray:
    """Rasterize shapely geometries onto the grid ``transform`` x ``shape`` (rows, cols).

    A polygon burns the pixels whose centres it contains (``all_touched=False``, the rule
    the road labels use); a line burns the pixels it crosses. ``values`` gives one burn value
    per geometry (default 1); later geometries overwrite earlier ones. Missing and empty
    geometries are skipped; with nothing to burn the result is all ``fill``.
    """
    from rasterio.features import rasterize

    out_shape = (int(shape[0]), int(shape[1]))
    geoms = list(geoms)
    vals = [1] * len(geoms) if values is None else np.asarray(values).tolist()
    if len(vals) != len(geoms):
        raise ValueError(f"burn_geometries: {len(geoms)} geometries but {len(vals)} values")
    pairs = [(g, v) for g, v in zip(geoms, vals, strict=True) if g is not None and not g.is_empty]
    if not pairs:
        return np.full(out_shape, fill, dtype=dtype)
    return rasterize(
        pairs,
        out_shape=out_shape,
        transform=transform,
        fill=fill,
        all_touched=all_touched,
        dtype=dtype,
    )
