"""Road vectors: read any OGR format, reproject, buffer centrelines in metres, burn masks.

Labels are made the way SpaceNet/APLS make them: a centreline is buffered by half its width
in metres (its own width attribute when it has a usable one, else ``default_half_width_m``,
SpaceNet's 2 m, each side), polygons are burned as they are, and a pixel is road when its
centre falls inside a road polygon. Buffering happens in a projected CRS in metres: the
image CRS when it is projected (distances converted to its linear unit), else the UTM zone
of the data, so a road is as wide in a geographic image as in a UTM one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS

from pipeline import osm as osm_module
from pipeline import raster
from pipeline.atomic import atomic_path
from pipeline.ground import is_mercator, metres_per_unit

log = logging.getLogger(__name__)

ROADS_LAYER = "roads"
NEGATIVES_LAYER = "negatives"  # a scene's hard negatives (synth writes its railway there)
_POLYGONAL = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)
_COLLECTION = shapely.GeometryType.GEOMETRYCOLLECTION
_READ_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.FieldError,
    pyogrio.errors.CRSError,
    OSError,
    ValueError,
)


class VectorError(ValueError):
    """Road vectors that cannot be used; the message names the file and the problem."""


def load_road_polygons(
    path: str | Path,
    crs: Any,
    *,
    width_attribute: str | None,
    default_half_width_m: float,
    bounds: tuple[float, float, float, float] | None = None,
    osm: Any = None,
    offset_m: tuple[float, float] | None = None,
) -> gpd.GeoDataFrame:
    """Road polygons in ``crs`` (the image CRS), one row per input feature, attributes kept.

    LineStrings (and points) are buffered by half their width in metres, polygons are kept
    as they are; invalid geometries are repaired with ``shapely.make_valid`` (the count is
    logged) and empty ones dropped. ``bounds`` (left, bottom, right, top in ``crs``), when
    given, must be touched by at least one road. ``osm`` (``OsmParams``), when given and
    applying, turns vectors with a ``highway`` attribute (OSM extracts, Overpass exports) into
    labels by ``pipeline.osm``'s rules: road classes only, no tunnels, widths from tags. Raises
    VectorError naming ``path`` for an unreadable file, vectors without CRS, no features, no
    road left after the OSM rules, or labels that miss the image. ``offset_m`` moves every
    road by (east, north) metres (a scene's declared ``label_offset_m``).
    """
    path = Path(path)
    target = CRS.from_user_input(crs)
    gdf = _road_features(path, target, bounds, osm)
    work = _working_crs(gdf, target)
    if _osm_applies(gdf, osm):
        half_m = (
            osm_module.full_widths_m(gdf, osm.class_widths_m, osm.lane_width_m, osm.default_width_m)
            / 2.0
        )
    else:
        half_m = _half_widths_m(gdf, width_attribute, default_half_width_m, path)
    geoms = gdf.to_crs(work).geometry.to_numpy()
    polygons = _shifted(_to_polygons(geoms, half_m / metres_per_unit(work)), offset_m, work)
    out = _in_target(gdf, polygons, work, target)
    out = out[~(out.geometry.isna() | out.geometry.is_empty)].reset_index(drop=True)
    if bounds is not None:
        _check_overlap(out, bounds, path)
    return out


def load_road_lines(
    path: str | Path,
    crs: Any,
    *,
    bounds: tuple[float, float, float, float] | None = None,
    osm: Any = None,
    offset_m: tuple[float, float] | None = None,
) -> gpd.GeoDataFrame:
    """The road features as they are (centrelines, not buffered) in ``crs``: the layer, the
    OSM rules and the ``offset_m`` shift that :func:`load_road_polygons` labels pixels with,
    so that a road network scored against them meets the roads the pixels were scored
    against. Raises VectorError as :func:`load_road_polygons` does (without the overlap
    check: a network truth outside the image is empty, not an error)."""
    path = Path(path)
    target = CRS.from_user_input(crs)
    gdf = _road_features(path, target, bounds, osm)
    work = _working_crs(gdf, target)
    geoms = _shifted(gdf.to_crs(work).geometry.to_numpy(), offset_m, work)
    return _in_target(gdf, geoms, work, target)


def _road_features(
    path: Path, target: CRS, bounds: tuple[float, float, float, float] | None, osm: Any
) -> gpd.GeoDataFrame:
    """The roads layer read (an OSM extract clipped to ``bounds`` while read), repaired, and
    filtered by the OSM rules when they apply."""
    gdf = _repair(
        _read(path, _bbox_4326(bounds, target) if osm_module.is_osm_file(path) else None), path
    )
    return _osm_roads(gdf, osm, path) if _osm_applies(gdf, osm) else gdf


def _in_target(
    gdf: gpd.GeoDataFrame, geoms: np.ndarray, work: CRS, target: CRS
) -> gpd.GeoDataFrame:
    """``gdf``'s attributes with ``geoms`` (one per row, in the working CRS ``work``), in
    ``target``."""
    attrs = pd.DataFrame(gdf.drop(columns=gdf.geometry.name)).reset_index(drop=True)
    out = gpd.GeoDataFrame(attrs, geometry=geoms, crs=work)
    return out if work.equals(target) else out.to_crs(target)


def _osm_applies(gdf: gpd.GeoDataFrame, osm: Any) -> bool:
    """Whether ``osm`` (``OsmParams``) rules turn these vectors into roads: OSM-tagged ones."""
    return osm is not None and osm.apply and osm_module.HIGHWAY in gdf.columns


def _shifted(geoms: np.ndarray, offset_m: tuple[float, float] | None, work: CRS) -> np.ndarray:
    """``geoms`` (in the projected ``work`` CRS) moved by (east, north) metres, when given (a
    scene's declared ``label_offset_m``)."""
    if offset_m is None:
        return geoms
    shift = np.asarray(offset_m, float) / metres_per_unit(work)
    return shapely.transform(geoms, lambda xy: xy + shift)


def load_scene_roads(scene: Any, data: Any, info: raster.RasterInfo) -> gpd.GeoDataFrame:
    """The road polygons of a ``SceneSource`` on its image's grid, with ``DataParams``' widths.

    Labels that miss the image entirely (a wrong CRS, the wrong file) are an error, not an
    empty mask. An empty file (0 bytes, or a layer without features) says the scene has no
    road, as SpaceNet ships its chips without roads: no polygons, with a warning.
    """
    path = Path(scene.roads)
    if is_empty(path):
        log.warning("%s: no road features: scene %s is all background", path, scene.name)
        crs = info.crs.to_wkt() if info.crs is not None else None
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    return load_road_polygons(
        scene.roads,
        info.crs,
        width_attribute=data.width_attribute,
        default_half_width_m=data.default_half_width_m,
        bounds=info.bounds,
        osm=data.osm,
        offset_m=scene.label_offset_m,
    )


def load_scene_negatives(scene: Any, data: Any, info: raster.RasterInfo) -> gpd.GeoDataFrame | None:
    """The hard-negative polygons of a ``SceneSource`` (its ``negatives`` vectors: railways,
    river banks) on its image grid, buffered like roads (``data.width_attribute``, else
    ``data.negative_half_width_m``); None when the scene names none or the file has no
    features (a scene without a railway). Unlike road labels they may all lie off the image."""
    if scene.negatives is None:
        return None
    path = Path(scene.negatives)
    if not path.exists():
        raise VectorError(f"{path}: file not found (scene {scene.name}'s negatives)")
    try:
        features = pyogrio.read_info(path)["features"]
    except _READ_ERRORS as e:
        raise VectorError(f"{path}: cannot read the negatives of scene {scene.name}: {e}") from None
    if features == 0:
        return None
    return load_road_polygons(
        path,
        info.crs,
        width_attribute=data.width_attribute,
        default_half_width_m=data.negative_half_width_m,
        offset_m=scene.label_offset_m,
    )


def burn_mask(polygons: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """uint8 mask on the grid (1 road, 0 else): pixel centres inside a road polygon.

    Only polygons that reach the grid are handed to the rasterizer (spatial index), so
    burning many small chips from one scene's roads stays cheap.
    """
    height, width = int(shape[0]), int(shape[1])
    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    frame = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    hits = polygons.sindex.query(frame, predicate="intersects") if len(polygons) else []
    geoms = polygons.geometry.to_numpy()[np.sort(np.asarray(hits, dtype=int))]
    return raster.burn_geometries(
        geoms, transform, (height, width), all_touched=False, dtype="uint8"
    )


GPKG_FIXED_DATE = "2000-01-01T00:00:00.000Z"
_date_lock = threading.Lock()
_date_users = 0
_date_before: str | None = None


@contextmanager
def fixed_gpkg_timestamp() -> Iterator[None]:
    """GeoPackages written inside get ``GPKG_FIXED_DATE`` as their write time.

    GDAL records the time of writing in each GeoPackage (``gpkg_contents.last_change``), so
    the same features written twice differ in bytes, and DVC sees a changed output. GDAL takes
    the time from ``OGR_CURRENT_DATE`` when it is set; pyogrio's GDAL has no thread-local
    option, so the variable is set process-wide while any thread is inside, and restored after.
    Pipeline stages under DVC use it; files a user asks for (predict's centrelines) keep the
    real time.
    """
    global _date_users, _date_before
    with _date_lock:
        if _date_users == 0:
            _date_before = os.environ.get("OGR_CURRENT_DATE")
            os.environ["OGR_CURRENT_DATE"] = GPKG_FIXED_DATE
        _date_users += 1
    try:
        yield
    finally:
        with _date_lock:
            _date_users -= 1
            if _date_users == 0:
                if _date_before is None:
                    os.environ.pop("OGR_CURRENT_DATE", None)
                else:
                    os.environ["OGR_CURRENT_DATE"] = _date_before


def write_vectors(
    gdf: gpd.GeoDataFrame, path: str | Path, *, layer: str = ROADS_LAYER, reproducible: bool = False
) -> Path:
    """Write ``gdf`` as one GeoPackage layer, atomically: a temporary file renamed on success.

    ``reproducible`` writes a fixed timestamp (``fixed_gpkg_timestamp``), so the same
    features give the same bytes.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with fixed_gpkg_timestamp() if reproducible else nullcontext():
            gdf.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio")
    return path


# ------------------------------------------------------------------------------------ reading
def _roads_layer(path: Path) -> str:
    """The ``roads`` layer when the file has one (``lines`` for an OSM extract), else its first."""
    layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    if not layers:
        raise VectorError(f"{path}: no layers")
    if osm_module.is_osm_file(path) and osm_module.OSM_LINES_LAYER in layers:
        return osm_module.OSM_LINES_LAYER
    return ROADS_LAYER if ROADS_LAYER in layers else layers[0]


def is_empty(path: str | Path) -> bool:
    """True for a file of 0 bytes or whose roads layer has no features; False for anything
    else (a missing or unreadable file is left to :func:`_read` to report)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.stat().st_size == 0:
        return True
    try:
        return pyogrio.read_info(path, layer=_roads_layer(path))["features"] == 0
    except (VectorError, *_READ_ERRORS):
        return False


def check_readable(path: str | Path) -> None:
    """Raise VectorError naming ``path`` when it is missing or OGR cannot open its roads layer
    (checked before any work starts; an empty file is a scene without roads)."""
    path = Path(path)
    if not path.exists():
        raise VectorError(f"{path}: file not found")
    if path.stat().st_size == 0:
        return
    try:
        pyogrio.read_info(path, layer=_roads_layer(path))  # a layer without features reads
    except _READ_ERRORS as e:
        raise VectorError(f"{path}: not a vector file OGR can read ({e})") from None


def _read(path: Path, bbox: tuple[float, float, float, float] | None = None) -> gpd.GeoDataFrame:
    """The roads layer (:func:`_roads_layer`), only features touching ``bbox`` (in the layer's
    CRS) when given; checked for CRS and features."""
    if not path.exists():
        raise VectorError(f"{path}: file not found")
    try:
        layer = _roads_layer(path)
        gdf = gpd.read_file(path, layer=layer, engine="pyogrio", bbox=bbox)
    except VectorError:
        raise
    except _READ_ERRORS as e:
        raise VectorError(f"{path}: not a vector file OGR can read ({e})") from e
    if len(gdf) == 0:
        raise VectorError(f"{path}: no features in layer {layer!r}")
    if gdf.crs is None:
        raise VectorError(
            f"{path}: the vectors have no CRS; assign one (e.g. ogr2ogr -a_srs) first"
        )
    return gdf


def _bbox_4326(
    bounds: tuple[float, float, float, float] | None, crs: CRS
) -> tuple[float, float, float, float] | None:
    """``bounds`` in ``crs`` as (west, south, east, north) degrees, with a small margin: OSM
    extracts are in EPSG:4326 and are clipped to the scene while they are read."""
    if bounds is None:
        return None
    from pyproj import Transformer

    west, south, east, north = Transformer.from_crs(
        crs, CRS.from_epsg(4326), always_xy=True
    ).transform_bounds(*bounds)
    margin = 0.001  # ~100 m: ways whose buffer reaches in from outside
    return (west - margin, south - margin, east + margin, north + margin)


def _osm_roads(gdf: gpd.GeoDataFrame, osm: Any, path: Path) -> gpd.GeoDataFrame:
    """The visible roads of OSM-tagged vectors (``pipeline.osm``); VectorError when none."""
    tagged = osm_module.unpack_tags(gdf)
    keep = osm_module.is_visible_road(tagged, osm.road_classes)
    if not keep.any():
        seen = sorted({str(v) for v in tagged[osm_module.HIGHWAY].dropna().unique()})
        raise VectorError(
            f"{path}: no roads after the OSM rules (highway values here: {seen or 'none'}; "
            f"counted as road: data.osm.road_classes)"
        )
    log.info(
        "%s: %d of %d OSM ways are visible roads (listed highway class, not in a tunnel)",
        path,
        int(keep.sum()),
        len(tagged),
    )
    return tagged[keep].copy()


def _repair(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Drop missing/empty geometries, repair invalid ones (make_valid) and say how many."""
    geoms = gdf.geometry.to_numpy()
    gdf = gdf[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))].copy()
    geoms = gdf.geometry.to_numpy()
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        fixed = geoms.copy()
        fixed[invalid] = shapely.make_valid(geoms[invalid])
        gdf = gdf.set_geometry(gpd.GeoSeries(fixed, index=gdf.index, crs=gdf.crs))
        log.warning("%s: repaired %d invalid geometries with make_valid", path, int(invalid.sum()))
        gdf = gdf[~shapely.is_empty(gdf.geometry.to_numpy())]
    if len(gdf) == 0:
        raise VectorError(f"{path}: no features with a usable geometry")
    return gdf


# ---------------------------------------------------------------------------------- buffering
def _working_crs(gdf: gpd.GeoDataFrame, target: CRS) -> CRS:
    """A CRS to buffer in whose units are ground metres: the target when projected (but not
    a Mercator such as EPSG:3857, whose metres are 1/cos(latitude) of true ones), else the
    data's UTM zone."""
    if target.is_projected and not is_mercator(target):
        return target
    return CRS.from_user_input(gdf.estimate_utm_crs())


def _half_widths_m(
    gdf: gpd.GeoDataFrame, attribute: str | None, default_m: float, path: Path
) -> np.ndarray:
    """Half width in metres per feature: attribute/2 where it is a positive number, else default."""
    half = np.full(len(gdf), float(default_m))
    if attribute is None:
        return half
    if attribute not in gdf.columns:
        log.info("%s: no attribute %r; every road is %.2f m each side", path, attribute, default_m)
        return half
    width = pd.to_numeric(gdf[attribute], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(width) & (width > 0)
    half[ok] = width[ok] / 2.0
    if not ok.all():
        log.info(
            "%s: %d features without a usable %r; they get %.2f m each side",
            path,
            int((~ok).sum()),
            attribute,
            default_m,
        )
    return half


def _to_polygons(geoms: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Buffer linear and point geometries by ``half`` (CRS units), keep polygons as they are."""
    types = shapely.get_type_id(geoms)
    out = geoms.copy()
    polygonal = np.isin(types, _POLYGONAL)
    collection = types == _COLLECTION
    other = ~(polygonal | collection)
    out[other] = shapely.buffer(geoms[other], half[other])
    for i in np.flatnonzero(collection):
        parts = shapely.get_parts(geoms[i])
        out[i] = shapely.union_all(_to_polygons(parts, np.full(len(parts), half[i])))
    return out


def _check_overlap(
    polygons: gpd.GeoDataFrame, bounds: tuple[float, float, float, float], path: Path
) -> None:
    frame = shapely.box(*bounds)
    if len(polygons) and shapely.intersects(polygons.geometry.to_numpy(), frame).any():
        return
    have = tuple(round(float(v), 3) for v in polygons.total_bounds) if len(polygons) else ()
    want = tuple(round(float(v), 3) for v in bounds)
    raise VectorError(
        f"{path}: the road labels miss the image entirely (labels {have}, image {want}, "
        f"both in the image CRS): wrong file or wrong CRS?"
    )
