"""The one module that opens rasters (rasterio/GDAL).

Everything else asks this module for windows, grids and writers, so that nodata handling,
error messages and atomic writes live in one place.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from pipeline import band_matching, ground, sources
from pipeline.atomic import (
    atomic_path,
    error_chain,
    free_bytes_if_full,
    temporary_name,
    write_text_atomic,
)
from pipeline.normalise import percentile_stretch


class RasterError(ValueError):
    """A raster that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class RasterInfo:
    """The grid and sample description of a raster, without its pixels."""

    path: str | Path  # a GDAL name such as /vsicurl/https://... stays a string
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    has_mask: bool  # a per-dataset mask or alpha band beyond a nodata value
    band_descriptions: tuple[str | None, ...]  # ``count`` leaves out alpha; ``band_plan`` decides
    # ground control points (rasterio GroundControlPoint) and their CRS, for a raster
    # georeferenced by GCPs instead of a transform; empty otherwise
    gcps: tuple[Any, ...] = ()
    gcp_crs: CRS | None = None

    @property
    def res(self) -> tuple[float, float]:
        """(width, height) of a pixel in the CRS's units, also for a rotated grid."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def pixel_metres(self) -> tuple[float, float] | None:
        """(metres per row, metres per column) on the ground (``ground.pixel_metres``): they
        differ for square-degree pixels away from the equator; None without a CRS."""
        if self.crs is None:
            return None
        return ground.pixel_metres(self.crs, self.transform, self.width, self.height)

    @property
    def metres_per_pixel(self) -> float | None:
        """Pixel size in metres on the ground (``ground.pixel_size_m``: measured on the
        ellipsoid in degrees or a Mercator's units, so an EPSG:3857 export is read at its true
        scale); None without a CRS."""
        if self.crs is None:
            return None
        return ground.pixel_size_m(self.crs, self.transform, self.width, self.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))


def _open(path: str | Path) -> rasterio.DatasetReader:
    path = sources.gdal_name(path)  # /vsicurl/https://... stays a string
    try:
        if sources.is_remote(path):
            # a COG over HTTP or in a bucket: no probing for sidecar files (.aux.xml, .msk, a
            # directory listing), each a request GDAL's docs advise against for cloud rasters
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                return rasterio.open(path)
        with warnings.catch_warnings():  # a tile without CRS is refused or given a grid by name
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        if sources.is_remote(path):
            raise RasterError(f"{path}: GDAL cannot read it ({e})") from e
        if not Path(path).exists():
            raise RasterError(f"{path}: file not found") from e
        raise RasterError(f"{path}: not a raster GDAL can read ({e})") from e


def raster_info(path: str | Path) -> RasterInfo:
    """Describe a raster's grid; raises RasterError naming the file when it cannot be read."""
    path = sources.gdal_name(path)
    with _open(path) as ds:
        alpha = any(ci == ColorInterp.alpha for ci in ds.colorinterp)
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
            gcps=tuple(ds.gcps[0]),
            gcp_crs=ds.gcps[1],
        )


# ------------------------------------------------------------ which bands are data (all stages)
BandSpec = Sequence[int] | Mapping[str, int]  # declared bands: 1-based indexes, or name -> index

# colour interpretations that name a band (GDAL >= 3.10 also has nir, rededge, swir, ...)
_NAMELESS = {ColorInterp.undefined, ColorInterp.gray, ColorInterp.palette, ColorInterp.alpha}
COLOUR_SAMPLE_PX = 1024  # side of the decimated read that tells a colour mask from a grey one
ALPHA_SAMPLE_PX = 256  # side of the decimated read that tells a true alpha from a spectral band


@dataclass(frozen=True)
class BandPlan:
    """Which bands of a raster are read as data, and where its validity comes from.

    ``bands`` are 1-based indexes in the order the model (or ``data.bands``) wants them.
    ``validity``: ``dataset`` is GDAL's dataset mask (a per-dataset mask, else the nodata
    value, else an alpha band); ``all`` counts every pixel inside the raster as valid, used
    when the band GDAL would take as the mask is flagged alpha but holds data.
    ``note``: one line for the user when the plan is not the plain file order ('' otherwise);
    ``warn`` when it is a doubt to warn of, not a fact to note.
    """

    bands: tuple[int, ...]
    validity: Literal["dataset", "all"] = "dataset"
    note: str = ""
    warn: bool = False  # the note is a warning: bands in file order that their names do not confirm
    fill: float | None = None  # pixels with this value on every data band are nodata too


def parse_band_spec(text: str) -> list[int] | dict[str, int]:
    """``"5,3,2,7"`` -> [5, 3, 2, 7]; ``"red=5,green=3"`` -> {"red": 5, "green": 3}."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        if items and all("=" in t for t in items):
            pairs = [t.split("=", 1) for t in items]
            return {k.strip().lower(): int(v) for k, v in pairs}
        return [int(t) for t in items]
    except ValueError:
        raise ValueError(
            f"bands {text!r}: give 1-based band indexes (5,3,2,7) or names (red=5,green=3,...)"
        ) from None


def band_names(path: str | Path) -> list[str]:
    """Each band's name: its description, else its colour interpretation ('' when neither)."""
    with _open(sources.gdal_name(path)) as ds:
        return _band_names(ds)


def _band_names(ds: rasterio.DatasetReader) -> list[str]:
    # Red/green/blue of a file with more than 4 bands come from the TIFF's RGB photometric,
    # GDAL's default, not from its author: SpaceNet's 8-band WorldView-3 chips say bands 1-3
    # are red, green, blue (they are coastal, blue, green). Only descriptions name those.
    weak = {ColorInterp.red, ColorInterp.green, ColorInterp.blue} if ds.count > 4 else set()
    return [
        (desc or "").strip().lower() or ("" if ci in _NAMELESS or ci in weak else ci.name.lower())
        for desc, ci in zip(ds.descriptions, ds.colorinterp, strict=True)
    ]


def _describe(names: list[str], alpha: int | None) -> str:
    return ", ".join(
        f"{i}={n or '?'}{' (alpha)' if i == alpha else ''}" for i, n in enumerate(names, start=1)
    )


def _alpha_values(ds: rasterio.DatasetReader, band: int) -> np.ndarray:
    """Distinct values of a decimated read of ``band`` (overviews where present)."""
    from rasterio.enums import Resampling

    shape = (min(ds.height, ALPHA_SAMPLE_PX), min(ds.width, ALPHA_SAMPLE_PX))
    return np.unique(ds.read(band, out_shape=shape, resampling=Resampling.nearest))


def fill_border(path: str | Path, plan: BandPlan) -> tuple[float, float] | None:
    """(value, share of the raster) of an undeclared fill around the imagery: pixels where
    every data band holds one fill value (``_fill_candidates``), and that reach the
    raster's edge, on a decimated read; None when the file declares nodata or a mask, or has
    no such border. A warped or mosaicked raster's collar read as imagery is predicted as
    imagery, its straight edge often as a road."""
    from rasterio.enums import Resampling
    from scipy import ndimage

    if plan.fill is not None:  # declared by the user
        return None
    with _open(sources.gdal_name(path)) as ds:
        if ds.nodata is not None or plan.validity == "all" or _declares_mask(ds):
            return None
        shape = (min(ds.height, COLOUR_SAMPLE_PX), min(ds.width, COLOUR_SAMPLE_PX))
        try:
            image = ds.read(
                list(plan.bands),
                out_shape=(len(plan.bands), *shape),
                resampling=Resampling.nearest,
            )
        except RasterioError:  # a corrupt block: predict names it when it reads that window
            return None
    fills = _fill_candidates(image.dtype)
    best: tuple[float, float] | None = None
    for value in fills:
        labels, _ = ndimage.label((image == value).all(axis=0))
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        share = float(np.isin(labels, edge[edge > 0]).mean())
        if share > 0 and (best is None or share > best[1]):
            best = (float(value), share)
    return best


def _fill_candidates(dtype: np.dtype) -> list[float]:
    """Values fills are written with: 0, white (an unsigned type's largest value), and the
    negative fills of signed and float data (-9999, the type's lowest)."""
    if dtype.kind == "u":
        return [0, np.iinfo(dtype).max]
    low = np.iinfo(dtype).min if dtype.kind == "i" else np.finfo(dtype).min
    return [0, -9999, low] if low < -9999 else [0, low]


def _declares_mask(ds: rasterio.DatasetReader) -> bool:
    """A per-dataset mask or an alpha band: validity the file declares beyond nodata."""
    flags = ds.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags


def _is_mask(values: np.ndarray) -> bool:
    """A true alpha holds one value, or 0 and one other (0/255); a spectral band has a spread."""
    return len(values) == 1 or (len(values) == 2 and values[0] == 0)


def _declared(path: Path, count: int, wanted: list[str] | None, declared: BandSpec) -> list[int]:
    if isinstance(declared, Mapping):
        names = {k.lower(): v for k, v in declared.items()}
        missing = [w for w in wanted or [] if w.lower() not in names]
        if missing:
            raise RasterError(
                f"{path}: declared bands {dict(declared)} name no band for {', '.join(missing)}"
            )
        bands = [names[w.lower()] for w in wanted] if wanted else list(names.values())
    else:
        bands = [int(b) for b in declared]
    if wanted and len(bands) != len(wanted):
        raise RasterError(
            f"{path}: {len(bands)} band(s) declared ({list(bands)}), but {len(wanted)} are needed "
            f"({', '.join(wanted)})"
        )
    bad = [b for b in bands if not 1 <= b <= count]
    if bad or not bands:
        raise RasterError(
            f"{path}: declared bands {list(bands)}, but the file has bands 1..{count}"
        )
    return bands


def _by_name(names: list[str], wanted: list[str] | None) -> list[int] | None:
    """Bands picked by name (``band_matching.pick_by_name``); None without wanted names."""
    return band_matching.pick_by_name(names, wanted) if wanted else None


def _in_file_order(
    path: Path, names: list[str], plain: list[int], wanted: list[str] | None
) -> list[int]:
    """The data bands in file order, refused (naming the bands) where their descriptions
    say they are other wanted bands: a blue, green, red, swir file read as red, green, blue,
    nir would feed blue as red without a word. Descriptions only: the red, green, blue
    colour interpretation GDAL gives any 3-band uint8 file by default says nothing of a
    colour-infrared (nir, red, green) file's bands; there the note warns."""
    if wanted:
        wrong = band_matching.contradiction(names, plain, wanted)
        if wrong:
            raise RasterError(
                f"{path}: its bands ({_describe(names, None)}) do not name every band of "
                f"{', '.join(wanted)}, and in file order they would be read against their "
                f"names: {wrong}. Declare which band stands for each (--bands with "
                f"{len(wanted)} indexes; data.scenes[].bands)"
            )
    return plain


def _paletted(path: Path, palette: list[int], bands: list[int]) -> None:
    """Refuse a paletted band as data: its values index a colour table, they are no colour."""
    used = [b for b in palette if b in bands]
    if used:
        raise RasterError(
            f"{path}: band {used[0]} is paletted (colour-table indexes, not colours); expand it "
            f"to red, green, blue first: gdal_translate -expand rgb {path.name} rgb.tif"
        )


def band_plan(
    path: str | Path,
    wanted: list[str] | None = None,
    declared: BandSpec | None = None,
    wanted_by: str = "params data.bands",
) -> BandPlan:
    """Decide which bands of ``path`` are data (in the order of ``wanted``) and its validity.

    Bands are taken, in this order of preference: as ``declared`` (indexes, or names ->
    indexes); by name (band descriptions, else colour interpretation), when every wanted
    name names one band; else in file order when the count matches exactly. A band flagged
    alpha is data when it is picked by name or declaration, when ``wanted`` needs one band
    more than the file has without it, or when its values are no mask (a true alpha holds
    0 and one other value; a spectral band stored in it has a spread): then validity comes
    from nodata or a per-dataset mask, not from it. Raises RasterError naming the file and
    its band names when no reading fits, and naming both readings when an alpha that looks
    like a mask would be needed as data. ``wanted_by`` names who wants the bands in errors.
    """
    path = sources.gdal_name(path)
    with _open(path) as ds:
        names = _band_names(ds)
        described = [(d or "").strip().lower() for d in ds.descriptions]
        alphas = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.alpha]
        alpha = alphas[-1] if alphas else None
        palette = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.palette]
        gdal_alpha_mask = MaskFlags.alpha in ds.mask_flag_enums[0]
        values = _alpha_values(ds, alpha) if alpha else None
        count = ds.count
    alpha_is_mask = values is None or _is_mask(values)
    plain = [b for b in range(1, count + 1) if b != alpha or not alpha_is_mask]
    if declared is not None:
        bands, how = _declared(path, count, wanted, declared), "as declared"
    elif (bands := _by_name(names, wanted)) is not None:
        how = "by name"
    elif wanted is None or len(plain) == len(wanted):
        bands, how = _in_file_order(path, described, plain, wanted), "in file order"
    elif alpha and len(plain) + 1 == len(wanted):
        raise RasterError(
            f"{path}: band {alpha} is flagged alpha and holds a mask ({_values(values)}): read as "
            f"a mask, the file has {len(plain)} data bands; read as data, {count}; {wanted_by} "
            f"expects {len(wanted)} ({', '.join(wanted)}). If band {alpha} is data, unflag it "
            f"(gdal_edit.py -colorinterp_{alpha} undefined) or declare the bands (--bands); if it "
            "is a mask, this raster lacks a band"
        )
    else:
        raise RasterError(_no_reading(path, names, alpha, plain, wanted, wanted_by))
    _paletted(path, palette, bands)
    return _finish_plan(path, bands, how, names, wanted, alpha, values, gdal_alpha_mask)


def _no_reading(
    path: Path,
    names: list[str],
    alpha: int | None,
    plain: list[int],
    wanted: list[str],
    wanted_by: str,
) -> str:
    """Why no band reading fits: a band the file does not have (every band is named, and
    none is a wanted one: no declaration can help), or bands it does not name."""
    head = (
        f"{path}: has {len(plain)} band(s), but {wanted_by} expects {len(wanted)} "
        f"({', '.join(wanted)}); its bands: {_describe(names, alpha)}"
    )
    absent = [w for w in wanted if not any(band_matching.names_band(n, w) for n in names)]
    if all(names[b - 1] for b in plain) and absent:
        return (
            f"{head}: it has no {' or '.join(absent)} band. Use a model trained on the bands "
            "it has (data.bands), or declare which band stands for each (--bands with "
            f"{len(wanted)} indexes; data.scenes[].bands)"
        )
    worldview = {"red": 5, "green": 3, "blue": 2, "nir": 7}  # WorldView-3's 8 bands
    example = ""
    if all(w.lower() in worldview for w in wanted):
        indexes = ",".join(str(worldview[w.lower()]) for w in wanted)
        example = f", e.g. {indexes} for a WorldView-3 chip"
    return (
        f"{head}; name them (band descriptions) or declare them (predict --bands with "
        f"{len(wanted)} indexes in the order {', '.join(wanted)}{example}; data.scenes[].bands)"
    )


def _values(values: np.ndarray | None) -> str:
    if values is None or len(values) <= 2:
        return "values " + "/".join(str(v) for v in (values if values is not None else []))
    return f"{len(values)} distinct values, {values[0]} to {values[-1]}"


def _finish_plan(
    path: Path,
    bands: list[int],
    how: str,
    names: list[str],
    wanted: list[str] | None,
    alpha: int | None,
    values: np.ndarray | None,
    gdal_alpha_mask: bool,
) -> BandPlan:
    notes = []
    warn = False
    validity: Literal["dataset", "all"] = "dataset"
    if alpha is not None and gdal_alpha_mask and (alpha in bands or not _is_mask(values)):
        validity = "all"
        use = "used as data" if alpha in bands else "not a mask"
        notes.append(
            f"band {alpha} is flagged alpha but is {use} ({_values(values)}); validity from "
            "nodata or a mask: none set, every pixel counts as valid"
        )
    if how == "in file order" and wanted:
        used = [names[b - 1] for b in bands]
        if any(u and not band_matching.names_band(u, w) for u, w in zip(used, wanted, strict=True)):
            warn = True
            notes.append(
                f"band names ({_describe(names, alpha)}) do not match {', '.join(wanted)}; "
                "bands are used in file order (declare them if that is not their order: "
                "--bands, data.scenes[].bands)"
            )
    elif how != "in file order" and bands != list(range(1, len(bands) + 1)):
        picked = ", ".join(f"{w}=band {b}" for w, b in zip(wanted or bands, bands, strict=True))
        notes.append(f"bands picked {how}: {picked}")
    note = f"{path}: " + "; ".join(notes) if notes else ""
    return BandPlan(tuple(bands), validity, note, warn)


PERCENTILE_SAMPLE_PX = 1024  # longer side of the decimated read the percentiles come from


def band_percentiles(
    path: str | Path, plan: BandPlan, size: int = PERCENTILE_SAMPLE_PX
) -> list[tuple[float, float]]:
    """Each planned band's (2nd, 98th) percentile over the valid pixels of a decimated read of
    the whole raster (nearest neighbour, from overviews where present: a sample of real pixel
    values, cheap for any raster size). High is at least low + 1 (a flat band)."""
    path = sources.gdal_name(path)
    with _open(path) as ds:
        step = max(1.0, max(ds.height, ds.width) / size)
        shape = (max(1, round(ds.height / step)), max(1, round(ds.width / step)))
        img = ds.read(list(plan.bands), out_shape=(len(plan.bands), *shape))
        if plan.validity == "all":
            valid = np.ones(shape, bool)
        else:
            valid = ds.dataset_mask(out_shape=shape) > 0
    img, valid = _screen(img, valid, plan.fill)
    if not valid.any():
        raise RasterError(
            f"{shown_name(path)}: no valid pixel to take band percentiles from (all nodata or "
            "fill?); leave it out"
        )
    return percentile_stretch(img[:, valid])


@contextlib.contextmanager
def open_reader(path: str | Path, plan: BandPlan | None = None) -> Iterator[WindowReader]:
    """Keep one dataset open for many window reads (one per worker/task, not per window).

    ``plan`` (``band_plan``) says which bands are data and where validity comes from; without
    one, every band not flagged alpha is data and validity is GDAL's dataset mask.
    """
    path = sources.gdal_name(path)
    ds = _open(path)
    try:
        yield WindowReader(ds, path, plan)
    finally:
        ds.close()


def _screen(
    image: np.ndarray, valid: np.ndarray, fill: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity with NaN/inf (``_finite``) and, where given, ``fill`` on every band
    taken out of the valid pixels."""
    image, valid = _finite(image, valid)
    if fill is not None:
        valid = valid & ~(image == fill).all(axis=0)
    return image, valid


def _finite(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float window's NaN and infinite pixels as invalid (zeroed): nodata a file does not
    declare, which would otherwise reach the model as values."""
    if image.dtype.kind != "f":
        return image, valid
    finite = np.isfinite(image).all(axis=0)
    if finite.all():
        return image, valid
    return np.where(finite, image, 0), valid & finite


class WindowReader:
    """Reads windows of an open dataset, padding outside the raster with nodata."""

    def __init__(
        self, ds: rasterio.DatasetReader, path: Path, plan: BandPlan | None = None
    ) -> None:
        self.ds = ds
        self.path = path
        if plan is None:
            alpha_idx = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
            plan = BandPlan(tuple(b for b in range(1, ds.count + 1) if b not in alpha_idx))
        if max(plan.bands) > ds.count:
            raise RasterError(f"{path}: has {ds.count} bands, cannot read band {max(plan.bands)}")
        self._bands = list(plan.bands)
        self._all_valid = plan.validity == "all"
        self._fill = plan.fill

    def screen(self, image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A window's values and validity, screened (``_screen``) with the plan's fill."""
        return _screen(image, valid, self._fill)

    def _valid(self, win: Window, boundless: bool) -> np.ndarray:
        if not self._all_valid:
            return self.ds.dataset_mask(window=win, boundless=boundless) > 0
        valid = np.ones((int(win.height), int(win.width)), bool)
        if boundless:  # outside the raster is never valid
            r0, c0 = int(win.row_off), int(win.col_off)
            valid[: max(0, -r0)] = False
            valid[max(0, self.ds.height - r0) :] = False
            valid[:, : max(0, -c0)] = False
            valid[:, max(0, self.ds.width - c0) :] = False
        return valid

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
        return self.screen(img, self._valid(win, boundless=True))

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


# ------------------------------------------------------- physical values (network, scaled bands)
@dataclass(frozen=True)
class BandScaling:
    """How stored values of a band become physical ones: ``value * scale + offset``; stored
    ``nodata`` (or NaN) means no value."""

    scale: float
    offset: float
    nodata: float | None
    dtype: str

    @property
    def declared(self) -> bool:
        """Whether the file says how to scale (GDAL scale/offset metadata beyond 1 and 0)."""
        return (self.scale, self.offset) != (1.0, 0.0)


def band_scaling(path: str | Path, band: int = 1) -> BandScaling:
    """Scale, offset and nodata of one band as the file declares them (GDAL metadata)."""
    with _open(Path(path)) as ds:
        scale = ds.scales[band - 1] if ds.scales else 1.0
        offset = ds.offsets[band - 1] if ds.offsets else 0.0
        return BandScaling(
            float(1.0 if scale is None else scale),
            float(0.0 if offset is None else offset),
            ds.nodata,
            ds.dtypes[band - 1],
        )


def read_scaled(
    reader: WindowReader,
    scaling: BandScaling,
    col_off: int,
    row_off: int,
    width: int,
    height: int,
    band: int = 1,
) -> np.ndarray:
    """One band's window as float32 physical values; NaN at nodata and outside the raster."""
    ds = reader.ds
    out = np.full((height, width), np.nan, np.float32)
    # the part inside the raster, read plainly: rasterio's boundless reads go through a
    # warped VRT, several times slower
    c0, r0 = max(col_off, 0), max(row_off, 0)
    c1, r1 = min(col_off + width, ds.width), min(row_off + height, ds.height)
    if c1 <= c0 or r1 <= r0:
        return out
    win = Window(c0, r0, c1 - c0, r1 - r0)
    values = ds.read(band, window=win).astype(np.float32)
    values = values * np.float32(scaling.scale) + np.float32(scaling.offset)
    values[ds.read_masks(band, window=win) == 0] = np.nan
    out[r0 - row_off : r1 - row_off, c0 - col_off : c1 - col_off] = values
    return out


def read_raw(
    reader: WindowReader, col_off: int, row_off: int, size: int, band: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One band's ``size`` x ``size`` window from (``row_off``, ``col_off``) as the file stores
    the values, and where they are valid (GDAL's mask); cut at the raster's edges, empty for a
    window that starts outside it."""
    ds = reader.ds
    if not (0 <= col_off < ds.width and 0 <= row_off < ds.height):
        return np.zeros((0, 0), ds.dtypes[band - 1]), np.zeros((0, 0), bool)
    win = Window(col_off, row_off, min(size, ds.width - col_off), min(size, ds.height - row_off))
    return ds.read(band, window=win), ds.read_masks(band, window=win) > 0


def valid_footprint(path: str | Path, max_side: int = 2048) -> Any:
    """The area with valid pixels (GDAL's dataset mask) as a shapely (Multi)Polygon in the
    raster's CRS, traced on the mask decimated to at most ``max_side`` pixels a side."""
    import shapely
    from rasterio.features import shapes

    with _open(Path(path)) as ds:
        factor = max(1, -(-max(ds.width, ds.height) // max_side))
        shape = (-(-ds.height // factor), -(-ds.width // factor))
        mask = (ds.dataset_mask(out_shape=shape) > 0).astype(np.uint8)
        transform = ds.transform * Affine.scale(ds.width / shape[1], ds.height / shape[0])
    polygons = [
        shapely.geometry.shape(g) for g, v in shapes(mask, mask > 0, transform=transform) if v
    ]
    return shapely.union_all(polygons) if polygons else shapely.Polygon()


def raster_tags(path: str | Path) -> dict[str, str]:
    """The dataset's GDAL metadata tags (default domain)."""
    with _open(path) as ds:
        return dict(ds.tags())


# ---------------------------------------------------------------- georeferencing wrappers
# The grid given to images without georeferencing: a local engineering CRS in metres, x east
# and y north, origin at the image's lower-left corner (it claims no place on Earth).
LOCAL_GRID_WKT = (
    'LOCAL_CS["roadseg local tile grid (metres, origin at the lower-left corner)",'
    'UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


# The grid of a network traced from a raster without georeferencing, read in metres of its
# declared pixel size: x right and y down from the top-left corner, so it is not the local
# tile grid (y north) and is compared only with networks on the same grid.
PIXEL_GRID_WKT = (
    'LOCAL_CS["roadseg pixel grid (metres, y down from the top-left corner)",'
    'UNIT["metre",1],AXIS["Easting",EAST],AXIS["Southing",SOUTH]]'
)


def same_grid(a: RasterInfo, b: RasterInfo) -> bool:
    """Whether two rasters share one grid: size, CRS and transform."""
    return (
        (a.width, a.height) == (b.width, b.height)
        and a.crs == b.crs
        and a.transform.almost_equals(b.transform, precision=1e-6)
    )


def grid_difference(label: RasterInfo, image: RasterInfo) -> str:
    """What differs between two grids, label first: size, CRS, pixel size, origin."""
    parts = []
    if (label.width, label.height) != (image.width, image.height):
        parts.append(f"size {label.width}x{label.height} vs {image.width}x{image.height}")
    if label.crs != image.crs:
        parts.append(f"CRS {label.crs} vs {image.crs}")
    if not np.allclose(label.res, image.res, rtol=1e-6, atol=0):
        parts.append(
            f"pixel size {label.res[0]:.10g} x {label.res[1]:.10g} vs {image.res[0]:.10g} x {image.res[1]:.10g}"
        )
    (lx, ly), (ix, iy) = label.transform @ (0, 0), image.transform @ (0, 0)
    if not np.allclose((lx, ly), (ix, iy), rtol=0, atol=1e-6 * max(image.res)):
        parts.append(f"origin ({lx:.10g}, {ly:.10g}) vs ({ix:.10g}, {iy:.10g})")
    if not parts:  # rotation or shear terms
        parts.append(f"transform {tuple(label.transform)[:6]} vs {tuple(image.transform)[:6]}")
    return "; ".join(parts)


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
    crs: CRS | None,
    transform: Affine | None,
    nodata: list[float] | None = None,
    bands: list[int] | None = None,
    scaling: tuple[float, float] | None = None,
    tags: dict[str, str] | None = None,
    source_mask: bool = False,
) -> Path:
    """A GDAL VRT that shows ``source`` (by absolute path) on the grid ``crs``/``transform``
    (none: the source's pixels, without georeferencing), with a per-band nodata value: GDAL's
    dataset mask is then invalid where every band holds its nodata value (a fill colour),
    valid elsewhere. ``bands`` picks the source's bands (default: all), ``scaling`` declares
    GDAL's (scale, offset) of every band (value x scale + offset is what it means), ``tags``
    are dataset metadata, and ``source_mask`` keeps the source's own dataset mask (an alpha
    band or a mask file, which a VRT does not pass on by itself). Written atomically."""
    import xml.etree.ElementTree as ET

    root = ET.Element("VRTDataset", rasterXSize=str(source.width), rasterYSize=str(source.height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    if transform is not None:
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in transform.to_gdal()
        )
    if tags:
        metadata = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(metadata, "MDI", key=key).text = str(value)
    bands = bands or list(range(1, source.count + 1))
    gdal_type = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
    for i, band in enumerate(bands, start=1):
        el = ET.SubElement(
            root, "VRTRasterBand", dataType=gdal_type.get(source.dtype, "Float32"), band=str(i)
        )
        if nodata is not None:
            ET.SubElement(el, "NoDataValue").text = repr(float(nodata[i - 1]))
        if scaling is not None:
            ET.SubElement(el, "Offset").text = repr(float(scaling[1]))
            ET.SubElement(el, "Scale").text = repr(float(scaling[0]))
        _vrt_source(el, source.path, str(band))
    if len(bands) == 3:
        for el, ci in zip(root.iter("VRTRasterBand"), ("Red", "Green", "Blue"), strict=True):
            ET.SubElement(el, "ColorInterp").text = ci
    if source_mask:
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        _vrt_source(mask, source.path, "mask,1")
    return write_text_atomic(path, ET.tostring(root, encoding="unicode"))


def _vrt_source(band: Any, source: str | Path, source_band: str) -> None:
    import xml.etree.ElementTree as ET

    src = ET.SubElement(band, "SimpleSource")
    ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = str(Path(source).resolve())
    ET.SubElement(src, "SourceBand").text = source_band


def shown_name(path: str | Path) -> str:
    """How a message names a raster: a VRT over one file (a tile set's tile, as the tile stage
    prepares it) by that file, which is the one the user knows; anything else as it is."""
    if Path(path).suffix.lower() != ".vrt":
        return str(path)
    try:
        with _open(Path(path)) as ds:
            sources = {f for f in ds.files[1:] if Path(f).suffix.lower() != ".vrt"}
    except RasterError:
        return str(path)
    return f"{sources.pop()} (as {path})" if len(sources) == 1 else str(path)


def is_colour(path: str | Path, bands: int = 3) -> bool:
    """Whether the first ``bands`` bands differ by more than a quarter of the largest value
    anywhere in a decimated read (nearest, from overviews where present): a colour image, not
    a grey one stored as RGB."""
    from rasterio.enums import Resampling

    with _open(Path(path)) as ds:
        if ds.count < bands:
            return False
        shape = (min(ds.height, COLOUR_SAMPLE_PX), min(ds.width, COLOUR_SAMPLE_PX))
        values = ds.read(list(range(1, bands + 1)), out_shape=(bands, *shape),
                         resampling=Resampling.nearest)  # fmt: skip
    values = values.astype(np.float64)
    # a quarter of the largest value apart: JPEG's colour noise in a grey mask is not colour
    return bool(np.abs(values - values[:1]).max() > 0.25 * max(values.max(), 1.0))


def band_maximum(path: str | Path, band: int = 1) -> float:
    """The largest valid value of one band (NaN is not one), read block by block (it stops at
    the largest value the data type holds); -inf when the band has no valid pixel."""
    with _open(Path(path)) as ds:
        dtype = np.dtype(ds.dtypes[band - 1])
        top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.inf
        largest = -np.inf
        for _, window in ds.block_windows(band):
            values = ds.read(band, window=window, masked=True).compressed()
            values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
            if values.size:
                largest = max(largest, float(values.max()))
            if largest >= top:
                break
    return largest


ResampleKind = Literal["image", "labels", "classes"]


def write_resampled_vrt(
    source: str | Path, path: str | Path, factor: float | tuple[float, float], kind: ResampleKind
) -> Path:
    """A GDAL warped VRT of ``source`` in its own CRS with pixels ``factor`` times as large
    (one number, or (down, across): pixels made square on the ground; the extent kept, the size
    rounded), referring to ``source`` by absolute path. Imagery is
    area-averaged down and bilinear up, as predict resamples windows; labels (road = 1) are
    averaged down (a pixel is road where most of it is) and nearest up; class rasters take
    the most frequent class down, nearest up. Nodata, masks and band names carry over.
    Written atomically."""
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as gdal_copy
    from rasterio.vrt import WarpedVRT

    fy, fx = factor if isinstance(factor, tuple) else (factor, factor)
    down = fy * fx > 1  # fewer pixels: averaged
    resampling = {
        "image": Resampling.average if down else Resampling.bilinear,
        "labels": Resampling.average if down else Resampling.nearest,
        "classes": Resampling.mode if down else Resampling.nearest,
    }[kind]
    with _open(Path(source).resolve()) as src:
        width, height = max(1, round(src.width / fx)), max(1, round(src.height / fy))
        transform = src.transform * Affine.scale(src.width / width, src.height / height)
        # validity from an alpha band or a per-dataset mask is warped into an alpha band
        alphas = [i + 1 for i, ci in enumerate(src.colorinterp) if ci == ColorInterp.alpha]
        masked = src.nodata is None and (
            bool(alphas) or MaskFlags.per_dataset in src.mask_flag_enums[0]
        )
        with (
            WarpedVRT(
                src,
                crs=src.crs,
                transform=transform,
                width=width,
                height=height,
                resampling=resampling,
                add_alpha=masked and not alphas,
                src_alpha=alphas[0] if alphas else 0,
            ) as vrt,  # fmt: skip
            atomic_path(path) as tmp,
        ):
            gdal_copy(vrt, tmp, driver="VRT")
            if masked:  # GDAL writes the added alpha band without saying it is alpha
                _mark_last_band_alpha(tmp)
    return Path(path)


def _mark_last_band_alpha(vrt: Path) -> None:
    import xml.etree.ElementTree as ET

    tree = ET.parse(vrt)
    last = tree.getroot().findall("VRTRasterBand")[-1]
    interp = last.find("ColorInterp")
    (ET.SubElement(last, "ColorInterp") if interp is None else interp).text = "Alpha"
    tree.write(vrt, encoding="unicode")


def read_all(path: str | Path) -> np.ndarray:
    """Every band of a raster, (C, H, W) in its dtype (one tile of a tile set at a time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with _open(Path(path)) as ds:
            return ds.read()


def read_colours(path: str | Path) -> np.ndarray:
    """The data bands of a label image as colours (C, H, W): a paletted band's indexes looked
    up in its colour table (red, green, blue; a paint program's palette PNG), alpha left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with _open(Path(path)) as ds:
            data = ds.read()
            paletted = ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette
            table = ds.colormap(1) if paletted else None
    if table is not None:
        lut = np.zeros((256, 3), np.uint8)
        for index, rgba in table.items():
            if 0 <= index < 256:
                lut[index] = rgba[:3]
        return np.moveaxis(lut[data[0]], -1, 0)
    return data[: raster_info(path).count]


# ---------------------------------------------------------------- whole-raster reads (evaluate)
def read_valid_mask(path: str | Path) -> np.ndarray:
    """GDAL's dataset mask of the whole raster as a bool array (True = valid pixel)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
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


# what GDAL raises when a write fails (disk full, folder removed, file system read-only)
_WRITE_ERRORS = (CPLE_BaseError, RasterioError, OSError)


def write_error(path: Path, error: BaseException) -> RasterError:
    """A RasterError naming ``path`` for a failed write, saying so when the disk is full."""
    free = free_bytes_if_full(path, error)
    if free is not None:
        return RasterError(
            f"{path}: the disk is full ({free / 2**20:.0f} MiB free); free some space "
            "or write the output elsewhere (-o)"
        )
    text = "; ".join(dict.fromkeys(str(e) for e in error_chain(error) if str(e)))
    return RasterError(f"{path}: cannot write the output ({text})")


class BlockWriter:
    """Writes blocks of band 1 into an open, tiled staging GeoTIFF."""

    def __init__(self, ds: Any, path: Path | None = None) -> None:
        self._ds = ds
        self._path = Path(path or ds.name)

    def write(self, data: np.ndarray, row_off: int, col_off: int) -> None:
        height, width = data.shape
        try:
            self._ds.write(data, 1, window=Window(col_off, row_off, width, height))
        except _WRITE_ERRORS as e:
            raise write_error(self._path, e) from None


@contextlib.contextmanager
def block_geotiff(
    path: str | Path,
    *,
    width: int,
    height: int,
    dtype: str,
    crs: CRS | str | None,
    transform: Affine,
    tags: dict[str, Any] | None = None,
    blocksize: int = 256,
) -> Iterator[BlockWriter]:
    """A tiled, compressed one-band GeoTIFF written block by block through the yielded
    ``BlockWriter`` (memory flat in its size), renamed into place when the block ends without
    an error (removed otherwise)."""
    georef = dict(crs=crs, transform=transform)
    profile = _staging_profile(width, height, dtype, None, georef, blocksize)
    with atomic_path(Path(path)) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        yield BlockWriter(dst, Path(path))


def _staging_profile(
    width: int,
    height: int,
    dtype: str,
    nodata: float | None,
    georef: dict[str, Any],
    blocksize: int,
) -> dict[str, Any]:
    """The creation options of the tiled, lightly compressed staging GeoTIFF."""
    return dict(
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype=dtype,
        **georef,
        nodata=nodata,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
        compress="deflate",
        zlevel=1,
        BIGTIFF="IF_SAFER",
    )


def _describe_band(
    dst: rasterio.io.DatasetWriter,
    description: str | None,
    scale: float | None,
    tags: dict[str, Any] | None,
) -> None:
    """Band description, scale (offset 0) and dataset tags, each when given."""
    if description:
        dst.set_band_description(1, description)
    if scale is not None:
        dst.scales = (scale,)
        dst.offsets = (0.0,)
    if tags:
        dst.update_tags(**{k: str(v) for k, v in tags.items()})


@contextlib.contextmanager
def quiet_without_crs(georeferenced: bool) -> Iterator[None]:
    """Writing an output without a CRS, rasterio and pyogrio warn on every open ("'crs' was
    not provided", "the given matrix is equal to Affine.identity"); predict has said once
    that its output has no CRS, as its input has none. Georeferenced: nothing is silenced."""
    if georeferenced:  # warnings' filters are process-wide: left alone where nothing is due
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        yield


def ground_pixel_size(info: RasterInfo) -> float | None:
    """Metres per pixel: the CRS's, else the ``pixel_size_m`` tag predict writes on the output
    of a raster declared with ``--pixel-size``; None when neither says."""
    if info.crs is not None:
        return info.metres_per_pixel
    declared = raster_tags(info.path).get("pixel_size_m")
    return float(declared) if declared else None


def metres_per_unit_without_crs(info: RasterInfo, declared: float | None) -> float:
    """Metres per unit of the transform of a raster without a CRS (pixels for a bare tile,
    world-file units for one with a transform): by its ``declared`` pixel size (metres,
    ``ground_pixel_size``), else 1, the units taken as they are."""
    return declared / info.res[0] if declared else 1.0


def copy_to_cog(
    source: str | Path, out: Path, blocksize: int = 512, overview_resampling: str = "average"
) -> None:
    """Convert any raster GDAL opens (a file, or a VRT given as its XML) into a COG at ``out``
    with GDAL's COG driver (deflate, overviews), block by block."""
    from rasterio.shutil import copy as gdal_copy

    with rasterio.open(str(source)) as src:
        gdal_copy(
            src,
            str(out),
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BLOCKSIZE=blocksize,
            OVERVIEW_RESAMPLING=overview_resampling.upper(),
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )


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
    gcps: tuple[Any, ...] = (),
    gcp_crs: CRS | None = None,
) -> Iterator[BlockWriter]:
    """Stream a one-band raster block by block into a Cloud Optimised GeoTIFF at ``path``.

    Blocks go into a tiled staging GeoTIFF beside the output (blocks aligned to
    ``staging_blocksize`` are written without read-modify-write); on success the staging file
    is converted with GDAL's COG driver (deflate, overviews by ``overview_resampling``, band
    description, scale and tags carried over) to a temporary name and renamed over ``path``.
    On any error, or a kill, no file appears under ``path``; an existing ``path`` is replaced
    only with ``overwrite=True``. GDAL's cache is capped so memory stays flat in raster size.
    ``gcps`` (with ``gcp_crs``) georeference the output by ground control points instead of
    ``transform``, as the input was. A failed write (disk full, folder gone) raises RasterError
    naming ``path``.
    """
    path = Path(path)
    georef = dict(gcps=list(gcps), crs=gcp_crs) if gcps else dict(crs=crs, transform=transform)
    georeferenced = crs is not None or bool(gcps)
    profile = _staging_profile(width, height, dtype, nodata, georef, staging_blocksize)
    with atomic_path(path, overwrite=overwrite) as final_tmp, gdal_cache_limit():
        staging = temporary_name(path)
        try:
            in_body = False
            try:
                with quiet_without_crs(georeferenced):
                    dst = rasterio.open(staging, "w", **profile)
                with dst:
                    _describe_band(dst, description, scale, tags)
                    in_body = True
                    yield BlockWriter(dst, path)
                    in_body = False
                with quiet_without_crs(georeferenced):
                    copy_to_cog(staging, final_tmp, cog_blocksize, overview_resampling)
            except _WRITE_ERRORS as e:
                if in_body:  # the caller's own error, raised through the yield
                    raise
                raise write_error(path, e) from None
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
        return reader.screen(
            ds.read(reader._bands, window=win), reader._valid(win, boundless=False)
        )
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
