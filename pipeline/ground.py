"""Distances on the ground, in metres, whatever a raster's or a layer's CRS.

A projected CRS such as UTM measures metres (or feet) directly. A geographic CRS measures
degrees, and a Mercator projection such as the web's EPSG:3857 measures "metres" that are
1/cos(latitude) of a metre on the ground (1.35 at 42 N): both are measured on the
ellipsoid here. Pixel sizes, spur and gap lengths, and the ``length_m`` of every layer the
pipeline writes come from these functions, so a web-map export is read at its true scale.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pyproj
import shapely
from affine import Affine

# pixel sizes within this ratio of each other are read as they are: a raster of the model's
# (predict), a training scene of the chips' (tile), a pixel's height of its width
GSD_TOLERANCE = 1.25


def is_mercator(crs: Any) -> bool:
    """A (non-transverse) Mercator projection, such as the web's EPSG:3857: its metres are
    1/cos(latitude) of a metre on the ground (any CRS object with ``to_wkt``, or what pyproj
    reads)."""
    crs = _pyproj_crs(crs)
    if not crs.is_projected:
        return False
    operation = crs.coordinate_operation
    method = operation.method_name.lower() if operation is not None else ""
    return "mercator" in method and "transverse" not in method


def measured_on_ellipsoid(crs: Any) -> bool:
    """Whether ``crs``'s units are not ground metres: degrees, or a Mercator's metres."""
    return crs is not None and (_pyproj_crs(crs).is_geographic or is_mercator(crs))


def metres_per_unit(crs: Any) -> float:
    """Metres in one unit of a projected CRS or of a local engineering one (tile sets:
    ``LOCAL_GRID_WKT``, which has units but no linear units in PROJ's sense); a rasterio or a
    pyproj CRS."""
    if not isinstance(crs, pyproj.CRS) and hasattr(crs, "units_factor"):  # rasterio's CRS
        return float((crs.linear_units_factor if crs.is_projected else crs.units_factor)[1])
    axes = _pyproj_crs(crs).axis_info
    return float(axes[0].unit_conversion_factor) if axes else 1.0


def ground_lengths(lines: list, crs: Any) -> list[float]:
    """Lengths in metres of ``lines`` in ``crs`` (a rasterio CRS or None: the lines' units):
    on the ellipsoid for a geographic CRS or a Mercator, else scaled by the unit."""
    if measured_on_ellipsoid(crs):
        source = _pyproj_crs(crs)
        if source.is_projected:  # a Mercator: measure on the ellipsoid
            to_geo = pyproj.Transformer.from_crs(source, source.geodetic_crs, always_xy=True)
            lines = [
                shapely.transform(g, lambda xy: np.column_stack(to_geo.transform(*xy.T)))
                for g in lines
            ]
        geod = source.get_geod()
        return [abs(geod.geometry_length(g)) for g in lines]
    factor = metres_per_unit(crs) if crs is not None else 1.0
    return [float(shapely.length(g)) * factor for g in lines]


def pixel_metres(crs: Any, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """(metres per row, metres per column) on the ground at the raster's centre: one pixel
    step down and one across, measured by ``ground_lengths``."""
    key = (crs.to_wkt(), tuple(transform)[:6], int(width), int(height))
    return _pixel_metres(*key)


def pixel_size_m(crs: Any, transform: Affine, width: int, height: int) -> float:
    """One number for the pixel's size in metres: the geometric mean of its height and width
    on the ground (they differ in a geographic CRS away from the equator: a square-degree
    pixel at 60 N is half as wide as tall), the side of a square of the same area."""
    down, across = pixel_metres(crs, transform, width, height)
    return math.sqrt(down * across)


def stretch(crs: Any, transform: Affine, width: int, height: int) -> float:
    """How much taller than wide (or wider than tall) a pixel is on the ground (>= 1): 1 in a
    projected CRS with square pixels, 1/cos(latitude) for square-degree pixels."""
    down, across = pixel_metres(crs, transform, width, height)
    return max(down, across) / min(down, across)


def square_pixel_advice(
    crs: Any, transform: Affine, width: int, height: int, tolerance: float = GSD_TOLERANCE
) -> str | None:
    """None for pixels square on the ground within ``tolerance`` (a ratio); else what is wrong
    and the gdalwarp command to square pixels in the raster's UTM zone. Square-degree pixels
    away from the equator are not square: an EPSG:4326 export at 50 N has pixels 1.56x as
    tall as wide, and a model reads them as square."""
    grid = (crs, transform, width, height)
    if stretch(*grid) <= tolerance:
        return None
    down, across = pixel_metres(*grid)
    size = pixel_size_m(*grid)
    return (
        f"pixels are {across:.3g} m wide and {down:.3g} m tall on the ground, read as square: "
        "roads running one way look narrower than roads running the other; warp it to square "
        f"pixels first (gdalwarp -t_srs EPSG:{utm_epsg(*centre_lonlat(*grid))} -tr {size:.3g} "
        f"{size:.3g} -r bilinear)"
    )


def passes_for(sizes: tuple[float, float], size_m: float, tolerance: float = GSD_TOLERANCE) -> bool:
    """Whether pixels of ``sizes`` (metres per row, per column) pass for square pixels of
    ``size_m``: each side within ``tolerance`` (a ratio) of it, and square within it."""
    sides = all(1 / tolerance <= m / size_m <= tolerance for m in sizes)
    return sides and max(sizes) / min(sizes) <= tolerance


def centre_lonlat(crs: Any, transform: Affine, width: int, height: int) -> tuple[float, float]:
    """(longitude, latitude) of the raster's centre."""
    x, y = transform @ (width / 2, height / 2)
    source = _pyproj_crs(crs)
    to_geo = pyproj.Transformer.from_crs(source, source.geodetic_crs, always_xy=True)
    lon, lat = to_geo.transform(x, y)
    return float(lon), float(lat)


def utm_epsg(lon: float, lat: float) -> int:
    """The EPSG code of the WGS 84 UTM zone holding (lon, lat)."""
    return (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) % 60 + 1


@functools.lru_cache(maxsize=256)
def _pixel_metres(wkt: str, t: tuple[float, ...], width: int, height: int) -> tuple[float, float]:
    transform = Affine(*t)
    x, y = transform @ (width / 2, height / 2)
    # one column and one row on: the steps follow the grid, also where it is rotated
    across, down = ground_lengths(
        [
            shapely.LineString([(x, y), transform @ (width / 2 + 1, height / 2)]),
            shapely.LineString([(x, y), transform @ (width / 2, height / 2 + 1)]),
        ],
        _pyproj_crs(wkt),
    )
    return float(down), float(across)


def _pyproj_crs(crs: Any) -> pyproj.CRS:
    if isinstance(crs, pyproj.CRS):
        return crs
    return pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
