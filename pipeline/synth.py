"""Synthetic road scenes that a model has to understand rather than colour-match.

A scene is made in three passes, each from its own seeded generator (same seed -> same bytes):

1. Layout, in local metres (x east, y north, origin at the scene's upper-left corner): towns
   with rotated street grids, arterials, secondary roads, unpaved tracks, a river that roads
   cross on bridges, a dry river bed, a railway; a Voronoi partition of land cover, warped by
   noise; houses with driveways along streets, industrial lots with parking, farmsteads.
2. Materials, with a palette of the scene's own (soils from brown to grey, asphalt mixes):
   each land-cover class paints its own texture (striped fields with margins and hedgerows,
   tree crowns with shading, mottled grass, turbid water, gravel river beds). Roads are painted from the polygons that
   ``vectors.load_road_polygons`` + ``burn_mask`` make of the written GeoPackage, the same
   polygons the tile stage burns, so image and labels agree pixel for pixel; then cars,
   roofs with their shadows, and tree crowns that overhang roads (still road in the labels,
   as in real data sets).
3. Sensor: sun-dependent shading, per-scene illumination and colour balance, haze, blur,
   noise, quantisation, and nodata outside a rotated acquisition footprint.

Road-like distractors are deliberate: roofs, parking lots, driveways, sidewalks, dry river
beds, railway ballast, field margins and stubble share the spectra of asphalt, concrete and
gravel, so a per-pixel classifier on the bands cannot find roads (tests/test_synth.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from scipy import ndimage, signal
from scipy.spatial import cKDTree

from pipeline import raster, vectors
from pipeline.config import BAND_NAMES_RGBN, SynthParams, SynthSceneSpec

log = logging.getLogger(__name__)

LANDCOVER_CLASSES: list[str] = [
    "forest", "cropland", "grassland", "bare_soil", "water", "residential", "industrial",
]
FOREST, CROPLAND, GRASSLAND, BARE_SOIL, WATER, RESIDENTIAL, INDUSTRIAL = range(len(LANDCOVER_CLASSES))
LANDCOVER_NODATA = 255
IMAGE_NODATA = 0

# full road width in metres, by class (the gpkg's width_m is drawn from these ranges)
ROAD_WIDTH_M: dict[str, tuple[float, float]] = {
    "motorway": (18.0, 22.0),
    "primary": (9.0, 12.0),
    "secondary": (6.5, 8.0),
    "residential": (5.0, 6.5),
    "track": (3.0, 4.0),
}
# every synthetic road has a width; the fallback only matters to other readers of the gpkg
_LABEL_HALF_WIDTH_M = 2.0
_CLIP_MARGIN_M = 25.0  # roads run this far past the scene edge so their buffers reach it

# --------------------------------------------------------------------------------- materials
# Surface reflectance, bands (red, green, blue, nir), roughly 0..1.


def _spectra(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# two end members per land-cover class, mixed per pixel by noise
_GROUND_A = _spectra(
    (0.035, 0.060, 0.030, 0.22),  # forest floor
    (0.080, 0.120, 0.060, 0.35),  # cropland (repainted parcel by parcel)
    (0.060, 0.100, 0.045, 0.36),  # green grass
    (0.260, 0.220, 0.170, 0.30),  # light dry soil
    (0.025, 0.045, 0.050, 0.012),  # clear water
    (0.070, 0.100, 0.050, 0.33),  # lawns
    (0.235, 0.225, 0.205, 0.27),  # concrete yards
)
_GROUND_B = _spectra(
    (0.070, 0.070, 0.050, 0.18),  # leaf litter
    (0.140, 0.120, 0.090, 0.22),
    (0.150, 0.150, 0.100, 0.28),  # dry grass
    (0.170, 0.130, 0.100, 0.22),  # darker soil
    (0.060, 0.080, 0.065, 0.030),  # turbid water
    (0.170, 0.160, 0.140, 0.20),  # bare gardens, paved yards
    (0.150, 0.160, 0.120, 0.22),  # gravel with weeds
)
# per class: brightness weight of low/mid/fine noise, mixing weight of low/mid noise, and the
# mean share of the second end member
_GROUND_TEX = np.array([
    (0.10, 0.15, 0.12, 0.35, 0.30, 0.5),
    (0.08, 0.06, 0.06, 0.30, 0.10, 0.5),
    (0.10, 0.08, 0.07, 0.35, 0.20, 0.5),
    (0.10, 0.10, 0.08, 0.40, 0.30, 0.5),
    (0.06, 0.03, 0.02, 0.40, 0.10, 0.4),
    (0.10, 0.12, 0.12, 0.25, 0.45, 0.3),
    (0.08, 0.10, 0.10, 0.30, 0.40, 0.4),
], dtype=np.float32)
_CROPS = _spectra(
    (0.050, 0.110, 0.040, 0.45),  # green cereal
    (0.120, 0.140, 0.080, 0.30),  # young crop, soil showing
    (0.280, 0.240, 0.130, 0.33),  # ripe grain
    (0.130, 0.100, 0.080, 0.17),  # ploughed
    (0.300, 0.270, 0.200, 0.30),  # stubble
    (0.350, 0.320, 0.060, 0.40),  # rapeseed in flower
    (0.110, 0.130, 0.080, 0.28),  # fallow
)
_CROP_P = np.array([0.26, 0.14, 0.16, 0.16, 0.14, 0.04, 0.10])
_CROP_STRIPES = np.array([0.05, 0.10, 0.06, 0.18, 0.14, 0.04, 0.05], dtype=np.float32)
_VERGE = _spectra((0.10, 0.12, 0.07, 0.30))
# Asphalt and concrete reflect a little more at longer wavelengths (USGS spectral library);
# path radiance (haze) and skylight in shadows make dark surfaces look bluish, not the material.
_ROAD_SURFACES = _spectra(
    (0.065, 0.061, 0.056, 0.080),  # new asphalt
    (0.105, 0.100, 0.092, 0.125),  # asphalt
    (0.160, 0.150, 0.135, 0.190),  # old asphalt, dusty
    (0.265, 0.255, 0.235, 0.300),  # concrete
    (0.230, 0.200, 0.160, 0.260),  # gravel
    (0.170, 0.140, 0.110, 0.220),  # dirt
)
NEW_ASPHALT, ASPHALT, OLD_ASPHALT, CONCRETE, GRAVEL, DIRT = range(len(_ROAD_SURFACES))
# surface probabilities by road class
_SURFACE_P = {
    "motorway": (0.45, 0.30, 0.0, 0.25, 0.0, 0.0),
    "primary": (0.35, 0.45, 0.15, 0.05, 0.0, 0.0),
    "secondary": (0.15, 0.45, 0.35, 0.05, 0.0, 0.0),
    "residential": (0.10, 0.35, 0.40, 0.15, 0.0, 0.0),
    "track": (0.0, 0.0, 0.0, 0.0, 0.55, 0.45),
}
_PAINT = np.array([0.55, 0.55, 0.53, 0.50], np.float32)
_BARRIER = np.array([0.30, 0.29, 0.27, 0.32], np.float32)
_RUTS = np.array([0.12, 0.10, 0.08, 0.16], np.float32)
_GRASS = np.array([0.07, 0.11, 0.05, 0.33], np.float32)
_SIDEWALK = np.array([0.27, 0.26, 0.24, 0.29], np.float32)
_BALLAST = np.array([0.17, 0.16, 0.15, 0.18], np.float32)
_STEEL = np.array([0.08, 0.08, 0.09, 0.09], np.float32)
_RIVERBED = np.array([0.28, 0.26, 0.23, 0.29], np.float32)
_ROOFS = _spectra(
    (0.26, 0.13, 0.09, 0.28),  # red tiles
    (0.19, 0.12, 0.09, 0.21),  # brown tiles
    (0.085, 0.083, 0.080, 0.10),  # dark grey
    (0.17, 0.165, 0.155, 0.19),  # grey
    (0.33, 0.325, 0.31, 0.34),  # light
)
_FLAT_ROOFS = _spectra(
    (0.45, 0.46, 0.46, 0.45),  # white membrane, metal
    (0.30, 0.295, 0.285, 0.31),  # light grey
    (0.11, 0.105, 0.10, 0.13),  # bitumen
    (0.16, 0.20, 0.28, 0.24),  # blue-grey metal
)
_PAVED = _spectra(
    (0.105, 0.100, 0.092, 0.125),  # asphalt (parking lots, driveways)
    (0.245, 0.235, 0.215, 0.28),  # concrete
    (0.20, 0.15, 0.12, 0.22),  # red pavers
    (0.21, 0.19, 0.16, 0.24),  # gravel
)
_CARS = _spectra(
    (0.55, 0.55, 0.55, 0.50), (0.04, 0.04, 0.045, 0.05), (0.30, 0.30, 0.32, 0.30),
    (0.12, 0.12, 0.13, 0.12), (0.35, 0.06, 0.05, 0.30), (0.05, 0.08, 0.25, 0.20),
)
_CAR_P = np.array([0.30, 0.22, 0.20, 0.12, 0.08, 0.08])
_DECIDUOUS = np.array([0.050, 0.095, 0.040, 0.45], np.float32)
_CONIFER = np.array([0.025, 0.050, 0.025, 0.26], np.float32)
_SKYLIGHT = np.array([0.30, 0.33, 0.42, 0.24], np.float32)  # share of light left in shadow
_HAZE = np.array([0.75, 0.85, 1.0, 0.40], np.float32)
_CROWN_RADIUS_M = ((False, 2.3), (True, 4.0))  # (broad crown?, radius): two crown sizes
# probability that a tree stands at a candidate point (4 m apart), by land-cover class
_TREE_DENSITY = np.array([0.9, 0.0, 0.06, 0.015, 0.0, 0.12, 0.03], np.float32)


# ------------------------------------------------------------------------------ public API
@dataclass(frozen=True)
class SceneFiles:
    """The three files of one scene."""

    image: Path
    roads: Path
    landcover: Path


def generate_scene(spec: SynthSceneSpec, params: SynthParams, index: int) -> SceneFiles:
    """Write ``<name>.tif``, ``<name>.roads.gpkg`` and ``<name>.landcover.tif`` to ``params.out_dir``.

    Scene ``index`` shifts the origin east by ``index * (size * gsd + 1000)`` metres so that
    scenes never overlap. Every file is written atomically.
    """
    out = Path(params.out_dir)
    files = SceneFiles(out / f"{spec.name}.tif", out / f"{spec.name}.roads.gpkg",
                       out / f"{spec.name}.landcover.tif")
    grid = _grid(params, index)
    layout_rng, cover_rng, object_rng, paint_rng, sensor_rng = np.random.default_rng(spec.seed).spawn(5)
    start = time.perf_counter()
    with _step("layout"):
        layout = _layout(layout_rng, grid)
    with _step("road vectors"):
        vectors.write_vectors(_roads_for_file(layout.roads, grid, params.crs), files.roads)
        polygons = vectors.load_road_polygons(
            files.roads, params.crs, width_attribute="width_m",
            default_half_width_m=_LABEL_HALF_WIDTH_M, bounds=grid.bounds,
        )
    scene = _prepare(cover_rng, grid, layout, polygons)
    with _step("objects"):
        objects = _objects(object_rng, scene)
    with _step("paint"):
        _paint(paint_rng, scene, objects)
    with _step("sensor"):
        image, valid = _sensor(sensor_rng, scene, params.dtype, params.nodata_border)
    with _step("write"):
        raster.write_geotiff(files.image, image, crs=params.crs, transform=grid.transform,
                             nodata=IMAGE_NODATA, band_descriptions=list(BAND_NAMES_RGBN))
        landcover = np.where(valid, scene.lc, LANDCOVER_NODATA).astype(np.uint8)
        raster.write_geotiff(files.landcover, landcover, crs=params.crs, transform=grid.transform,
                             nodata=LANDCOVER_NODATA, tags={"CLASSES": ",".join(LANDCOVER_CLASSES)})
    log.info("synth %s: %d px, %.1f s", spec.name, params.size, time.perf_counter() - start)
    return files


def run_synth(params: SynthParams) -> list[SceneFiles]:
    """Generate every scene in ``params.scenes`` (scene i gets origin offset i)."""
    return [generate_scene(spec, params, i) for i, spec in enumerate(params.scenes)]


@contextmanager
def _step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.debug("synth step %-12s %.2f s", name, time.perf_counter() - start)


# ------------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class _Grid:
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

    def burn(self, geoms, values=None, dtype: str = "uint8", all_touched: bool = False) -> np.ndarray:
        """Rasterize local-metre geometries onto the scene grid."""
        return raster.burn_geometries(geoms, self.local_transform, self.shape, values=values,
                                      all_touched=all_touched, dtype=dtype)


def _grid(params: SynthParams, index: int) -> _Grid:
    step = params.size * params.gsd + 1000.0
    return _Grid(params.size, params.gsd, params.origin[0] + index * step, params.origin[1])


# ----------------------------------------------------------------------------------- noise
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


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _resize_axis(_resize_axis(a, shape[0], 0), shape[1], 1)


def _noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Smooth noise (mean ~0, std ~1, float32) with blobs about ``scale_px`` pixels across."""
    if scale_px < 2:
        g = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), max(0.5, scale_px / 2))
    else:
        coarse = (max(2, round(shape[0] / scale_px) + 2), max(2, round(shape[1] / scale_px) + 2))
        g = _upsample(ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), 0.8), shape)
    sample = g[::7, ::7]
    g -= sample.mean()
    g /= sample.std() + 1e-6
    return g


@dataclass
class _Noise:
    low: np.ndarray  # ~80 m blobs
    mid: np.ndarray  # ~10 m
    fine: np.ndarray  # ~1.5 m


def _noises(rng: np.random.Generator, grid: _Grid) -> _Noise:
    def field(scale_m: float) -> np.ndarray:
        return _noise(rng, grid.shape, scale_m / grid.gsd)

    low = field(80.0) + 0.5 * field(30.0)
    low /= 1.12
    return _Noise(low=low, mid=field(10.0) + 0.4 * field(4.0), fine=field(1.5))


def _hash01(salt: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer key tuple (splitmix64), for per-parcel choices."""
    h = np.full(np.shape(keys[0]), np.uint64(salt), dtype=np.uint64)
    for k, mult in zip(keys, (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9), strict=False):
        h ^= np.asarray(k).astype(np.int64).astype(np.uint64) * np.uint64(mult)
        h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


# -------------------------------------------------------------------------- geometry helpers
def _chaikin(pts: np.ndarray, iterations: int) -> np.ndarray:
    """Corner cutting: a polyline becomes a smooth curve with the same end points."""
    for _ in range(iterations):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.empty((2 * len(q), 2))
        mid[0::2], mid[1::2] = q, r
        pts = np.vstack([pts[:1], mid, pts[-1:]])
    return pts


def _wander(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
            step: float, turn_sd: float, persistence: float) -> np.ndarray:
    """A path whose heading meanders around ``heading`` (AR(1) deviations): rivers, tracks."""
    n = max(2, int(length / step))
    deviation = signal.lfilter([1.0], [1.0, -persistence], rng.normal(0.0, turn_sd, n))
    h = heading + deviation
    steps = step * np.stack([np.cos(h), np.sin(h)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _edge_point(rng: np.random.Generator, extent: float, side: int, margin: float) -> np.ndarray:
    """A point just outside scene edge ``side`` (0 top, 1 right, 2 bottom, 3 left)."""
    t = rng.uniform(0.1, 0.9) * extent
    return np.array([(t, margin), (extent + margin, -t), (t, -extent - margin), (-margin, -t)][side])


def _curve_through(rng: np.random.Generator, ctrl: list[np.ndarray], spacing: float,
                   wiggle: float, smooth: int = 5) -> shapely.LineString:
    """A smooth road through control points, bent sideways by up to ~``wiggle`` metres."""
    pts = [ctrl[0]]
    for a, b in zip(ctrl[:-1], ctrl[1:], strict=True):
        seg = b - a
        length = float(np.hypot(*seg)) + 1e-9
        normal = np.array([-seg[1], seg[0]]) / length
        n = max(1, int(length // spacing))
        pts.extend(a + seg * k / n + normal * rng.normal(0.0, wiggle) for k in range(1, n))
        pts.append(b)
    return shapely.LineString(_chaikin(np.array(pts), smooth))


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(c)`` for each count c."""
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def _frames(lines: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, unit tangent and left normal at distances along lines (arrays of equal length)."""
    length = shapely.length(lines)
    d = np.clip(dist, 0.0, length)
    a = np.maximum(np.minimum(d, length - 0.5), 0.0)
    p = shapely.get_coordinates(shapely.line_interpolate_point(lines, d))
    p0 = shapely.get_coordinates(shapely.line_interpolate_point(lines, a))
    p1 = shapely.get_coordinates(shapely.line_interpolate_point(lines, np.minimum(a + 0.5, length)))
    t = p1 - p0
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    return p, t, np.stack([-t[:, 1], t[:, 0]], axis=1)


def _rects(centre: np.ndarray, e1: np.ndarray, e2: np.ndarray, a: np.ndarray, b: np.ndarray,
           lo: float = -0.5, hi: float = 0.5) -> np.ndarray:
    """Rectangles (polygons) spanning ``a`` along ``e1`` and ``b * [lo, hi]`` along ``e2``."""
    a = np.asarray(a, float)[:, None]
    b = np.asarray(b, float)[:, None]
    corners = [centre - e1 * a / 2 + e2 * b * lo, centre + e1 * a / 2 + e2 * b * lo,
               centre + e1 * a / 2 + e2 * b * hi, centre - e1 * a / 2 + e2 * b * hi]
    return shapely.polygons(np.stack(corners, axis=1))


def _line_parts(geoms) -> list[shapely.LineString]:
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    return [g for g in parts if g.geom_type == "LineString" and g.length > 1.0]


def _dashes(lines: np.ndarray, dash: float, gap: float, rng: np.random.Generator) -> np.ndarray:
    """Dashed copies of lines: straight pieces ``dash`` long every ``dash + gap`` metres."""
    if not len(lines):
        return lines
    period = dash + gap
    counts = (shapely.length(lines) // period).astype(np.intp)
    idx = np.repeat(np.arange(len(lines)), counts)
    start = _ragged_arange(counts) * period + rng.uniform(0, gap, len(lines))[idx]
    p0 = shapely.get_coordinates(shapely.line_interpolate_point(lines[idx], start))
    p1 = shapely.get_coordinates(shapely.line_interpolate_point(lines[idx], start + dash))
    return shapely.linestrings(np.stack([p0, p1], axis=1))


# ---------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class _Town:
    centre: np.ndarray
    radius: float
    angle: float  # street grid orientation, radians from east
    polygon: shapely.Polygon
    xs: np.ndarray  # street positions in the town frame
    ys: np.ndarray
    roof_p: np.ndarray  # roof palette probabilities (a town has a style)
    sidewalks: bool

    def to_local(self, pts: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.centre + pts @ np.array([[c, s], [-s, c]])

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([c, s]), np.array([-s, c])


@dataclass
class _Layout:
    towns: list[_Town]
    water: shapely.Geometry  # rivers, possibly empty
    dry_bed: shapely.Geometry  # dry river beds, possibly empty
    rails: list[shapely.LineString]  # railway track centrelines
    roads: gpd.GeoDataFrame  # local metres: LineString, road_class, width_m, bridge


def _layout(rng: np.random.Generator, grid: _Grid) -> _Layout:
    extent = grid.extent
    towns = _place_towns(rng, extent)
    water = _river_bodies(rng, extent, rng.random() < 0.6, (8.0, 30.0))
    dry_bed = _river_bodies(rng, extent, rng.random() < 0.4, (10.0, 30.0))
    rails = _railway(rng, extent) if extent >= 300 and rng.random() < 0.4 else []
    lines = _road_network(rng, extent, towns)
    roads = _road_table(rng, lines, extent, water)
    return _Layout(towns, water, dry_bed, rails, roads)


def _place_towns(rng: np.random.Generator, extent: float) -> list[_Town]:
    """At least one town; more in larger scenes, never overlapping."""
    area_km2 = (extent / 1000.0) ** 2
    wanted = 1 + rng.poisson(min(0.25 * area_km2, 6.0))
    towns: list[_Town] = []
    for _ in range(60 * wanted):
        if len(towns) == wanted:
            break
        radius = min(rng.uniform(150.0, 480.0), 0.42 * extent)
        centre = rng.uniform(0.15, 0.85, 2) * np.array([extent, -extent])
        if all(np.hypot(*(centre - t.centre)) > 1.1 * (radius + t.radius) for t in towns):
            towns.append(_town(rng, centre, radius))
    return towns


def _town(rng: np.random.Generator, centre: np.ndarray, radius: float) -> _Town:
    phi = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    r = np.ones_like(phi)
    for k in (2, 3, 5):
        r += rng.uniform(0.0, 0.12) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    outline = centre + radius * r[:, None] * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    reach = 1.4 * radius
    return _Town(
        centre=centre, radius=radius, angle=rng.uniform(0, np.pi / 2),
        polygon=shapely.Polygon(outline),
        xs=_jittered_positions(rng, reach, rng.uniform(60.0, 110.0)),
        ys=_jittered_positions(rng, reach, rng.uniform(60.0, 110.0)),
        roof_p=rng.dirichlet(np.full(len(_ROOFS), 0.8)),
        sidewalks=bool(rng.random() < 0.6),
    )


def _jittered_positions(rng: np.random.Generator, reach: float, spacing: float) -> np.ndarray:
    steps = spacing * rng.uniform(0.75, 1.25, int(2 * reach / spacing) + 2)
    return -reach + rng.uniform(0, spacing) + np.concatenate([[0.0], np.cumsum(steps)])


def _river_bodies(rng: np.random.Generator, extent: float, present: bool,
                  width_m: tuple[float, float]) -> shapely.Geometry:
    """A meandering channel crossing the scene, as a polygon (or an empty geometry)."""
    if not present:
        return shapely.Polygon()
    side = int(rng.integers(4))
    start = _edge_point(rng, extent, side, 60.0)
    target = rng.uniform(0.3, 0.7, 2) * np.array([extent, -extent])
    heading = math.atan2(*(target - start)[::-1])
    path = _wander(rng, start, heading, 1.8 * extent + 120, max(4.0, extent / 150), 0.10, 0.97)
    width = min(rng.uniform(*width_m), extent / 14)
    return shapely.buffer(shapely.LineString(_chaikin(path, 2)), width / 2)


def _railway(rng: np.random.Generator, extent: float) -> list[shapely.LineString]:
    side = int(rng.integers(4))
    ctrl = [_edge_point(rng, extent, side, 80.0), _edge_point(rng, extent, (side + 2) % 4, 80.0)]
    line = _curve_through(rng, ctrl, extent / 3, 0.03 * extent)
    if rng.random() < 0.5:
        return [line]
    return _line_parts(shapely.offset_curve(np.array([line, line]), np.array([-2.1, 2.1])))


def _road_network(rng: np.random.Generator, extent: float, towns: list[_Town]) -> list[tuple]:
    """(LineString, road_class) pairs in local metres, not yet clipped to the scene."""
    roads: list[tuple] = []
    if extent >= 800 and rng.random() < 0.35:
        roads.append((_arterial(rng, extent, None, 0.02 * extent), "motorway"))
    for k in range(1 + min(2, int(rng.poisson(extent / 3000)))):
        through = towns[k].centre if k < len(towns) else None
        roads.append((_arterial(rng, extent, through, 0.05 * extent), "primary"))
    for town in towns:
        for _ in range(int(rng.integers(1, 3))):
            roads.append((_spoke(rng, extent, town), "secondary"))
        roads.extend((street, "residential") for street in _town_streets(rng, town))
    anchors = [line for line, cls in roads if cls in ("primary", "secondary")]
    n_tracks = 2 + int(rng.poisson(min(80.0, 5.0 * (extent / 1000) ** 2 + 2)))
    roads.extend((t, "track") for t in _tracks(rng, extent, anchors, towns, n_tracks))
    return roads


def _arterial(rng: np.random.Generator, extent: float, through: np.ndarray | None,
              wiggle: float) -> shapely.LineString:
    side = int(rng.integers(4))
    exit_side = (side + 2) % 4 if rng.random() < 0.7 else (side + 1) % 4
    ctrl = [_edge_point(rng, extent, side, 150.0)]
    if through is not None:
        ctrl.append(through)
    ctrl.append(_edge_point(rng, extent, exit_side, 150.0))
    return _curve_through(rng, ctrl, max(extent / 5, 80.0), wiggle)


def _spoke(rng: np.random.Generator, extent: float, town: _Town) -> shapely.LineString:
    """A secondary road leaving a town centre."""
    path = _wander(rng, town.centre, rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.2) * extent,
                   20.0, 0.12, 0.9)
    return shapely.LineString(_chaikin(path, 3))


def _town_streets(rng: np.random.Generator, town: _Town) -> list[shapely.LineString]:
    """A rotated street grid with some blocks merged (dropped segments), clipped to the town."""
    xs, ys = town.xs, town.ys
    segs = [((x, ys[j]), (x, ys[j + 1])) for x in xs for j in range(len(ys) - 1)]
    segs += [((xs[i], y), (xs[i + 1], y)) for y in ys for i in range(len(xs) - 1)]
    seg = np.array(segs, dtype=float)[rng.random(len(segs)) > 0.12]
    local = town.to_local(seg.reshape(-1, 2)).reshape(seg.shape)
    clipped = shapely.intersection(shapely.linestrings(local), town.polygon)
    merged = shapely.line_merge(shapely.union_all(clipped))
    return [g for g in _line_parts([merged]) if g.length > 15.0]


def _tracks(rng: np.random.Generator, extent: float, anchors: list, towns: list[_Town],
            n: int) -> list[shapely.LineString]:
    """Unpaved tracks branching off roads, and off other tracks, outside towns; they end in
    fields and forests (dead ends)."""
    towns_area = shapely.union_all([t.polygon for t in towns])
    out: list[shapely.LineString] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        pool = anchors + out
        length = np.array([line.length for line in pool])
        road = pool[int(rng.choice(len(pool), p=length / length.sum()))]
        p, t, nrm = _frames(np.array([road]), np.array([rng.uniform(0, road.length)]))
        if shapely.contains_xy(towns_area, *p[0]) or not (0 <= p[0, 0] <= extent and -extent <= p[0, 1] <= 0):
            continue
        side = 1.0 if rng.random() < 0.5 else -1.0
        heading = math.atan2(side * nrm[0, 1], side * nrm[0, 0]) + rng.normal(0, 0.3)
        path = _chaikin(_wander(rng, p[0], heading, rng.uniform(80.0, 500.0), 6.0, 0.10, 0.9), 2)
        entered = np.flatnonzero(shapely.contains_xy(towns_area, path[:, 0], path[:, 1]))
        path = path[: entered[0]] if len(entered) else path  # tracks stop at the edge of town
        if len(path) >= 2:
            out.append(shapely.LineString(path))
    return out


def _road_table(rng: np.random.Generator, lines: list[tuple], extent: float,
                water: shapely.Geometry) -> gpd.GeoDataFrame:
    """Clip to the scene, draw widths, split roads where they cross water into bridges."""
    frame = shapely.box(-_CLIP_MARGIN_M, -extent - _CLIP_MARGIN_M, extent + _CLIP_MARGIN_M, _CLIP_MARGIN_M)
    span = shapely.buffer(water, 3.0) if not water.is_empty else None
    rows = []
    for line, cls in lines:
        width = round(float(rng.uniform(*ROAD_WIDTH_M[cls])), 1)
        clipped = shapely.intersection(line, frame)
        pieces = [(clipped, False)]
        if span is not None and shapely.intersects(clipped, span):
            pieces = [(shapely.difference(clipped, span), False), (shapely.intersection(clipped, span), True)]
        rows.extend((part, cls, width, bridge) for geom, bridge in pieces for part in _line_parts([geom]))
    geoms, classes, widths, bridges = zip(*rows, strict=True) if rows else ((), (), (), ())
    return gpd.GeoDataFrame({"road_class": list(classes), "width_m": np.array(widths, float),
                             "bridge": np.array(bridges, bool)}, geometry=list(geoms))


def _roads_for_file(roads: gpd.GeoDataFrame, grid: _Grid, crs: str) -> gpd.GeoDataFrame:
    """The layout's roads in the scene CRS, then in EPSG:4326 as the file format says."""
    shifted = shapely.transform(roads.geometry.to_numpy(), lambda c: c + np.array([grid.x0, grid.y0]))
    return gpd.GeoDataFrame(roads.drop(columns="geometry"), geometry=shifted, crs=crs).to_crs("EPSG:4326")


# ------------------------------------------------------------------------------ land cover
@dataclass
class _Cells:
    """Per Voronoi cell: land-cover class and the parameters of its texture."""

    cls: np.ndarray  # uint8 class
    industrial: np.ndarray  # bool: industrial when inside a town
    bright: np.ndarray  # brightness offset
    mix: np.ndarray  # end member mixing offset
    angle: np.ndarray  # field orientation
    strip: np.ndarray  # field width, m
    length: np.ndarray  # field length, m
    phase: np.ndarray  # (n, 2) field grid offsets, m
    hedges: np.ndarray  # bool: hedgerows along field margins
    conifer: np.ndarray  # share of conifers in a forest
    salt: int


@dataclass(frozen=True)
class _Palette:
    """A scene's own materials: every region has its own soils and asphalt mixes."""

    ground_a: np.ndarray
    ground_b: np.ndarray
    crops: np.ndarray
    roads: np.ndarray
    riverbed: np.ndarray


def _palette(rng: np.random.Generator) -> _Palette:
    """Module spectra jittered by a few percent per band, and soils (bare ground, ploughed
    fields, stubble, unpaved tracks, river gravel) drawn from warm brown towards neutral grey
    (chalk, limestone), a shift by region that real soils show."""
    def jitter(table: np.ndarray) -> np.ndarray:
        return (table * rng.uniform(0.95, 1.05, table.shape)).astype(np.float32)

    neutral = rng.uniform(0.0, 0.8)

    def grey(table: np.ndarray, rows: list[int]) -> np.ndarray:
        out = table.copy()
        mean = out[rows, :3].mean(axis=1, keepdims=True)
        out[rows, :3] += (mean - out[rows, :3]) * neutral
        return out

    return _Palette(
        ground_a=grey(jitter(_GROUND_A), [BARE_SOIL]),
        ground_b=grey(jitter(_GROUND_B), [BARE_SOIL]),
        crops=grey(jitter(_CROPS), [3, 4]),
        roads=grey(jitter(_ROAD_SURFACES), [GRAVEL, DIRT]),
        riverbed=grey(jitter(_RIVERBED[None]), [0])[0],
    )


@dataclass
class _Scene:
    grid: _Grid
    layout: _Layout
    lc: np.ndarray  # uint8 land-cover class per pixel
    cell: np.ndarray  # int32 Voronoi cell per pixel
    cells: _Cells
    noise: _Noise
    label: np.ndarray  # uint8 road mask, what the tile stage burns from the gpkg
    polygons: gpd.GeoDataFrame  # road polygons in local metres, with attributes
    sun_azimuth: float  # radians, clockwise from north
    sun_elevation: float  # radians
    palette: _Palette | None = None  # this scene's materials
    img: np.ndarray | None = None  # (4, H, W) float32 reflectance
    blocked: np.ndarray | None = None  # bool: no tree trunk may stand here

    def shadow_offset(self, height_m: float) -> np.ndarray:
        """Local-metre vector from an object's foot to the tip of its shadow."""
        length = height_m / math.tan(self.sun_elevation)
        return -length * np.array([math.sin(self.sun_azimuth), math.cos(self.sun_azimuth)])

    @property
    def sun_vector(self) -> np.ndarray:
        """Unit vector towards the sun (east, north, up)."""
        ce = math.cos(self.sun_elevation)
        return np.array([ce * math.sin(self.sun_azimuth), ce * math.cos(self.sun_azimuth),
                         math.sin(self.sun_elevation)])


def _prepare(rng: np.random.Generator, grid: _Grid, layout: _Layout, polygons: gpd.GeoDataFrame) -> _Scene:
    with _step("noise"):
        noise = _noises(rng, grid)
    with _step("land cover"):
        lc, cell, cells = _landcover(rng, grid, layout)
    with _step("labels"):
        label = vectors.burn_mask(polygons, grid.transform, grid.shape)
        local = shapely.transform(polygons.geometry.to_numpy(), lambda c: c - np.array([grid.x0, grid.y0]))
        polygons = gpd.GeoDataFrame(polygons.drop(columns=polygons.geometry.name), geometry=local)
    return _Scene(grid, layout, lc, cell, cells, noise, label, polygons,
                  sun_azimuth=math.radians(rng.uniform(100, 260)),
                  sun_elevation=math.radians(rng.uniform(35, 65)))


def _landcover(rng: np.random.Generator, grid: _Grid,
               layout: _Layout) -> tuple[np.ndarray, np.ndarray, _Cells]:
    """Warped Voronoi cells with rural classes; towns, rivers and dry beds painted over."""
    extent = grid.extent
    n = max(12, int(extent * extent / rng.uniform(90, 140) ** 2))
    seeds = rng.uniform(0, 1, (n, 2)) * np.array([extent, -extent])
    f = max(1, round(4.0 / grid.gsd))  # cells are found on a ~4 m grid, then refined
    coarse = _coarse_cells(rng, grid, seeds, f)
    cells = _cell_table(rng, grid, layout, seeds, coarse, f)
    cell = _refine_cells(rng, grid, coarse, f)
    lc = cells.cls[cell]
    towns_mask = grid.burn([t.polygon for t in layout.towns]).astype(bool)
    lc[towns_mask] = np.where(cells.industrial[cell[towns_mask]], INDUSTRIAL, RESIDENTIAL)
    if not layout.dry_bed.is_empty:
        lc[grid.burn([layout.dry_bed]).astype(bool)] = BARE_SOIL
    if not layout.water.is_empty:
        lc[grid.burn([layout.water]).astype(bool)] = WATER
    return lc, cell, cells


def _coarse_cells(rng: np.random.Generator, grid: _Grid, seeds: np.ndarray, f: int) -> np.ndarray:
    shape = (math.ceil(grid.size / f), math.ceil(grid.size / f))
    step = f * grid.gsd
    warp = [_noise(rng, shape, 150.0 / step) * 25.0 for _ in range(2)]
    rows, cols = np.indices(shape, dtype=np.float32)
    x = (cols + 0.5) * step + warp[0]
    y = -(rows + 0.5) * step + warp[1]
    _, idx = cKDTree(seeds).query(np.stack([x.ravel(), y.ravel()], axis=1))
    return idx.reshape(shape).astype(np.int32)


def _refine_cells(rng: np.random.Generator, grid: _Grid, coarse: np.ndarray, f: int) -> np.ndarray:
    """Full-resolution cell ids: coarse ids looked up through a fine noise warp (ragged edges)."""
    amp = 4.0 / grid.gsd
    r = np.arange(grid.size, dtype=np.float32)[:, None] + amp * _noise(rng, grid.shape, 12.0 / grid.gsd)
    r = np.clip(r / f, 0, coarse.shape[0] - 1).astype(np.intp)
    c = np.arange(grid.size, dtype=np.float32)[None, :] + amp * _noise(rng, grid.shape, 12.0 / grid.gsd)
    c = np.clip(c / f, 0, coarse.shape[1] - 1).astype(np.intp)
    return coarse[r, c]


def _cell_table(rng: np.random.Generator, grid: _Grid, layout: _Layout, seeds: np.ndarray,
                coarse: np.ndarray, f: int) -> _Cells:
    n = len(seeds)
    in_town = np.zeros(n, bool)
    for town in layout.towns:
        in_town |= shapely.contains_xy(town.polygon, seeds[:, 0], seeds[:, 1])
    coarse_transform = Affine(f * grid.gsd, 0, 0, 0, -f * grid.gsd, 0)
    road_px = raster.burn_geometries(layout.roads.geometry.to_numpy(), coarse_transform, coarse.shape,
                                     all_touched=True).astype(bool)
    has_road = np.bincount(coarse[road_px], minlength=n) > 0
    cls = _rural_classes(rng, seeds, grid.extent, in_town, has_road)
    industrial = in_town & (rng.random(n) < 0.22)
    for town in layout.towns:
        inside = np.flatnonzero(shapely.contains_xy(town.polygon, seeds[:, 0], seeds[:, 1]))
        if len(inside) >= 3 and not industrial[inside].any() and rng.random() < 0.8:
            industrial[rng.choice(inside)] = True
    return _Cells(
        cls=cls, industrial=industrial,
        bright=rng.normal(0, 0.08, n).astype(np.float32),
        mix=rng.normal(0, 0.15, n).astype(np.float32),
        angle=rng.uniform(0, np.pi, n).astype(np.float32),
        strip=rng.uniform(25, 70, n).astype(np.float32),
        length=rng.uniform(120, 400, n).astype(np.float32),
        phase=rng.uniform(0, 400, (n, 2)).astype(np.float32),
        hedges=rng.random(n) < 0.35,
        conifer=rng.beta(0.7, 0.7, n).astype(np.float32),
        salt=int(rng.integers(2**62)),
    )


def _rural_classes(rng: np.random.Generator, seeds: np.ndarray, extent: float,
                   in_town: np.ndarray, has_road: np.ndarray) -> np.ndarray:
    """Cropland, forest, grassland, bare soil and lakes, forest clustered by a smooth field.

    Forest, cropland, grassland and bare soil each get at least one cell when there are
    enough cells outside towns; lakes only where no road runs (roads cross rivers on bridges,
    not lakes).
    """
    rural = np.array([FOREST, CROPLAND, GRASSLAND, BARE_SOIL, WATER])
    field = ndimage.gaussian_filter(rng.standard_normal((8, 8)), 1.0)
    field /= field.std() + 1e-9
    at = np.clip((seeds * np.array([1, -1]) / extent) * 7, 0, 7).T[::-1]
    tendency = ndimage.map_coordinates(field, at, order=1)
    weights = np.tile([0.26, 0.40, 0.22, 0.06, 0.06], (len(seeds), 1))
    weights[:, 0] *= np.exp(1.2 * tendency)
    weights[:, 1] *= np.exp(-1.2 * tendency)
    cum = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cls = rural[np.minimum((cum < rng.random(len(seeds))[:, None]).sum(axis=1), len(rural) - 1)]
    free = rng.permutation(np.flatnonzero(~in_town))
    if len(free) >= 4:
        cls[free[:4]] = rural[:4]
    cls[(cls == WATER) & (has_road | in_town)] = GRASSLAND
    return cls.astype(np.uint8)


# --------------------------------------------------------------------------------- objects
@dataclass
class _Objects:
    roofs: np.ndarray  # roof polygons (gable halves), local metres
    roof_colour: np.ndarray  # (n, 4) reflectance including sun shading
    footprints: np.ndarray  # building footprints
    heights: np.ndarray  # m
    paved: np.ndarray  # driveways, parking lots, yards
    paved_kind: np.ndarray  # index into _PAVED
    cars: np.ndarray
    car_colour: np.ndarray  # index into _CARS
    stall_lines: np.ndarray  # parking stall markings (lines)


def _objects(rng: np.random.Generator, sc: _Scene) -> _Objects:
    obstacles = _obstacles(sc)
    parts = [_houses(rng, sc, obstacles), _farmsteads(rng, sc, obstacles)]
    for town in sc.layout.towns:
        lots = _industrial_lots(rng, sc, town, obstacles)
        parts.append(lots)
        parts.extend(_parking(rng, lot) for lot in lots["parking"])
    parts.append(_road_cars(rng, sc))

    def cat(key: str, dtype: type = object) -> np.ndarray:
        items = [np.asarray(p[key], dtype=dtype) for p in parts if key in p and len(p[key])]
        return np.concatenate(items) if items else np.empty(0, dtype=dtype)

    return _Objects(
        roofs=cat("roofs"), roof_colour=cat("roof_colour", np.float32).reshape(-1, 4),
        footprints=cat("footprints"), heights=cat("heights", float),
        paved=cat("paved"), paved_kind=cat("paved_kind", np.intp),
        cars=cat("cars"), car_colour=cat("car_colour", np.intp), stall_lines=cat("stall_lines"),
    )


def _obstacles(sc: _Scene) -> shapely.STRtree:
    """Where buildings may not go: roads (plus a margin), railways, water."""
    geoms = list(shapely.buffer(sc.polygons.geometry.to_numpy(), 1.5))
    geoms += [shapely.buffer(r, 4.0) for r in sc.layout.rails]
    if not sc.layout.water.is_empty:
        geoms.append(sc.layout.water)
    return shapely.STRtree(geoms)


def _free(candidates: np.ndarray, obstacles: shapely.STRtree) -> np.ndarray:
    """Mask of candidates that touch no obstacle and no earlier kept candidate."""
    ok = np.ones(len(candidates), bool)
    if not len(candidates):
        return ok
    hit, _ = obstacles.query(candidates, predicate="intersects")
    ok[hit] = False
    a, b = shapely.STRtree(candidates).query(candidates, predicate="intersects")
    for i, j in zip(a[a < b], b[a < b], strict=True):
        if ok[i] and ok[j]:
            ok[j] = False
    return ok


def _houses(rng: np.random.Generator, sc: _Scene, obstacles: shapely.STRtree) -> dict:
    """Houses along streets in residential areas, gable roofs, most with a driveway."""
    roads = sc.layout.roads[sc.layout.roads.road_class.isin(["residential", "secondary", "primary"])]
    lines = roads.geometry.to_numpy()
    width = roads.width_m.to_numpy()
    spacing = 17.0
    counts = (shapely.length(lines) // spacing).astype(np.intp) if len(lines) else np.zeros(0, np.intp)
    idx = np.repeat(np.arange(len(lines)), 2 * counts)
    n = len(idx)
    dist = spacing * (0.5 + _ragged_arange(2 * counts) // 2) + rng.uniform(-2.5, 2.5, n)
    side = np.where(_ragged_arange(2 * counts) % 2 == 0, 1.0, -1.0)[:, None]
    p, t, nrm = _frames(lines[idx], dist)
    along, depth = rng.uniform(9, 17, n), rng.uniform(8, 13, n)
    setback = rng.uniform(3, 8, n)
    centre = p + side * nrm * (width[idx] / 2 + setback + depth / 2)[:, None]
    footprint = _rects(centre, t, nrm, along, depth)
    row, col = sc.grid.pixel(centre)
    keep = (sc.lc[row, col] == RESIDENTIAL) & _free(footprint, obstacles) if n else np.zeros(0, bool)
    return _house_parts(rng, sc, centre[keep], t[keep], nrm[keep] * side[keep], along[keep],
                        depth[keep], footprint[keep], setback[keep])


def _house_parts(rng: np.random.Generator, sc: _Scene, centre: np.ndarray, t: np.ndarray,
                 towards_house: np.ndarray, along: np.ndarray, depth: np.ndarray,
                 footprint: np.ndarray, setback: np.ndarray) -> dict:
    """Gable roofs with colours by town style, driveways to the street."""
    n = len(centre)
    towns = sc.layout.towns
    style = np.zeros(n, np.intp)
    for k, town in enumerate(towns):
        inside = shapely.contains_xy(town.polygon, centre[:, 0], centre[:, 1]) if n else np.zeros(0, bool)
        style[inside] = k
    palette = np.array([t.roof_p for t in towns]) if towns else np.ones((1, len(_ROOFS))) / len(_ROOFS)
    roofs, colour = _gable_roofs(rng, sc, centre, t, towards_house, along, depth, palette[style])
    has_drive = rng.random(n) < 0.6
    shift = rng.uniform(-0.3, 0.3, n) * along
    start = centre - towards_house * (depth / 2)[:, None] + t * shift[:, None]
    mid = start - towards_house * (setback / 2)[:, None]  # from the house front to the road edge
    drives = _rects(mid[has_drive], towards_house[has_drive], t[has_drive], setback[has_drive] + 1.0,
                    np.full(int(has_drive.sum()), 3.0))
    return dict(
        roofs=roofs, roof_colour=colour, footprints=footprint, heights=rng.uniform(3.5, 6.5, n),
        paved=drives, paved_kind=rng.choice([0, 1, 2, 3], int(has_drive.sum()), p=[0.4, 0.3, 0.2, 0.1]),
    )


def _gable_roofs(rng: np.random.Generator, sc: _Scene, centre: np.ndarray, u: np.ndarray,
                 v: np.ndarray, a: np.ndarray, b: np.ndarray,
                 palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two roof planes per building (``a`` along ``u``, ``b`` along ``v``), ridge along the
    longer side, each plane lit by the sun; colours drawn per building from ``palette`` rows."""
    n = len(centre)
    long_u = a >= b
    e1 = np.where(long_u[:, None], u, v)
    e2 = np.where(long_u[:, None], v, u)
    la, lb = np.where(long_u, a, b), np.where(long_u, b, a)
    halves = np.concatenate([_rects(centre, e1, e2, la, lb, 0.0, 0.5), _rects(centre, e1, e2, la, lb, -0.5, 0.0)])
    pitch = math.radians(35)
    sun = sc.sun_vector
    shade = []
    for sign in (1.0, -1.0):
        normal = np.concatenate([sign * e2 * math.sin(pitch), np.full((n, 1), math.cos(pitch))], axis=1)
        shade.append(np.clip(normal @ sun / sun[2], 0.35, 1.5))
    cum = np.cumsum(palette, axis=1) if n else np.zeros((0, len(_ROOFS)))
    kind = np.minimum((cum < rng.random(n)[:, None]).sum(axis=1), len(_ROOFS) - 1)
    base = _ROOFS[kind] * rng.uniform(0.85, 1.15, (n, 1)).astype(np.float32)
    colour = np.concatenate([base * shade[0][:, None], base * shade[1][:, None]]).astype(np.float32)
    return halves, colour


def _farmsteads(rng: np.random.Generator, sc: _Scene, obstacles: shapely.STRtree) -> dict:
    """Farms beside rural roads: a concrete or gravel yard, a driveway and a few large barns."""
    roads = sc.layout.roads[sc.layout.roads.road_class.isin(["primary", "secondary", "track"])]
    wanted = int(rng.poisson(2.5 * (sc.grid.extent / 1000) ** 2))
    roofs, colours, footprints, heights, paved, kinds = [], [], [], [], [], []
    palette = np.array([[0.3, 0.25, 0.15, 0.2, 0.1]])
    for _ in range(wanted if len(roads) else 0):
        k = int(rng.integers(len(roads)))
        line, width = roads.geometry.iloc[k], float(roads.width_m.iloc[k])
        p, t, nrm = _frames(np.array([line]), rng.uniform(0, line.length, 1))
        nrm = nrm * rng.choice([-1.0, 1.0])
        a, b = rng.uniform(35, 70), rng.uniform(30, 55)
        centre = p + nrm * (width / 2 + 6 + b / 2)
        yard = _rects(centre, t, nrm, [a], [b])
        row, col = sc.grid.pixel(centre)
        if sc.lc[row[0], col[0]] not in (CROPLAND, GRASSLAND, BARE_SOIL) or not _free(yard, obstacles).all():
            continue
        drive = _rects(p + nrm * (width / 2 + 3.5), nrm, t, [8.0], [5.0])
        n = int(rng.integers(2, 5))
        along, depth = rng.uniform(12, 30, n), rng.uniform(9, 16, n)
        slots = rng.permutation(3)[:n] if n <= 3 else np.array([0, 1, 2, 0])
        # barns stand along the back and the sides of the yard
        u_off = np.where(slots == 1, -a / 2 + depth / 2 + 1, np.where(slots == 2, a / 2 - depth / 2 - 1, 0.0))
        v_off = np.where(slots == 0, b / 2 - depth / 2 - 1, rng.uniform(-b / 4, b / 4, n))
        u_axis = np.where((slots == 0)[:, None], t, nrm)
        v_axis = np.where((slots == 0)[:, None], nrm, t)
        bc = centre + t * u_off[:, None] + nrm * v_off[:, None]
        barns = _rects(bc, u_axis, v_axis, np.minimum(along, np.where(slots == 0, a, b) - 4), depth)
        keep = _free(barns, shapely.STRtree([]))
        r, c = _gable_roofs(rng, sc, bc[keep], u_axis[keep], v_axis[keep],
                            np.minimum(along, np.where(slots == 0, a, b) - 4)[keep], depth[keep],
                            np.repeat(palette, int(keep.sum()), axis=0))
        roofs.extend(r)
        colours.append(c)
        footprints.extend(barns[keep])
        heights.extend(rng.uniform(5, 9, int(keep.sum())))
        paved.extend([yard[0], drive[0]])
        kinds.extend([int(rng.choice([1, 3])), 3])
    return dict(roofs=np.array(roofs, dtype=object),
                roof_colour=np.concatenate(colours) if colours else np.empty((0, 4), np.float32),
                footprints=np.array(footprints, dtype=object), heights=np.array(heights),
                paved=np.array(paved, dtype=object), paved_kind=np.array(kinds, np.intp))


def _industrial_lots(rng: np.random.Generator, sc: _Scene, town: _Town,
                     obstacles: shapely.STRtree) -> dict:
    """Blocks of the street grid in industrial cells: halls, parking lots, concrete yards."""
    e1, e2 = town.axes
    halls, heights, colours, paved, kinds, parking = [], [], [], [], [], []
    for i in range(len(town.xs) - 1):
        for j in range(len(town.ys) - 1):
            mid = np.array([(town.xs[i] + town.xs[i + 1]) / 2, (town.ys[j] + town.ys[j + 1]) / 2])
            centre = town.to_local(mid[None])
            row, col = sc.grid.pixel(centre)
            if sc.lc[row[0], col[0]] != INDUSTRIAL:
                continue
            a = town.xs[i + 1] - town.xs[i] - rng.uniform(12, 18)
            b = town.ys[j + 1] - town.ys[j] - rng.uniform(12, 18)
            lot = _rects(centre, e1[None], e2[None], [a], [b])
            if a < 15 or b < 15 or not _free(lot, obstacles).all():
                continue
            kind = rng.choice(3, p=[0.55, 0.25, 0.20])
            if kind == 0:
                scale = rng.uniform(0.6, 0.95, 2)
                halls.append(_rects(centre, e1[None], e2[None], [a * scale[0]], [b * scale[1]])[0])
                heights.append(rng.uniform(7, 15))
                colours.append(_FLAT_ROOFS[rng.choice(len(_FLAT_ROOFS))] * rng.uniform(0.9, 1.1))
                paved.append(lot[0])
                kinds.append(1)
            elif kind == 1:
                paved.append(lot[0])
                kinds.append(0)
                parking.append((centre[0], e1, e2, a, b))
            else:
                paved.append(lot[0])
                kinds.append(int(rng.choice([1, 3])))
    return dict(roofs=np.array(halls, dtype=object), footprints=np.array(halls, dtype=object),
                heights=np.array(heights),
                roof_colour=np.array(colours, np.float32).reshape(-1, 4),
                paved=np.array(paved, dtype=object), paved_kind=np.array(kinds, np.intp), parking=parking)


def _parking(rng: np.random.Generator, lot: tuple) -> dict:
    """Stall rows (5 m deep, 2.5 m wide) facing 6.5 m aisles; cars in some stalls."""
    centre, e1, e2, a, b = lot
    row_v = []
    v = -b / 2 + 1.0
    while v + 5.0 <= b / 2:
        row_v.append(v + 2.5)
        v += 5.0 if len(row_v) % 2 else 11.5  # stall rows back to back, then an aisle
    n_across = int((a - 2) // 2.5)
    if not row_v or n_across < 1:
        return {}
    us = -a / 2 + 1.0 + 2.5 * (np.arange(n_across) + 0.5)
    uu, vv = np.meshgrid(us, np.array(row_v))
    stall = centre + uu.reshape(-1, 1) * e1 + vv.reshape(-1, 1) * e2
    occupied = rng.random(len(stall)) < rng.uniform(0.3, 0.9)
    k = int(occupied.sum())
    cars = _rects(stall[occupied], np.tile(e2, (k, 1)), np.tile(e1, (k, 1)),
                  rng.uniform(4.2, 4.8, k), np.full(k, 1.85))
    edges = stall - 1.25 * e1
    lines = shapely.linestrings(np.stack([edges - 2.5 * e2, edges + 2.5 * e2], axis=1))
    return dict(cars=cars, car_colour=rng.choice(len(_CARS), k, p=_CAR_P), stall_lines=lines)


def _road_cars(rng: np.random.Generator, sc: _Scene) -> dict:
    """Cars in lanes (parked at the kerb in residential streets), aligned with the road."""
    per_m = {"motorway": 1 / 35, "primary": 1 / 50, "secondary": 1 / 90, "residential": 1 / 45, "track": 1 / 3000}
    roads = sc.layout.roads
    lines = roads.geometry.to_numpy()
    if not len(lines):
        return {}
    density = roads.road_class.map(per_m).to_numpy(float)
    counts = rng.poisson(shapely.length(lines) * density)
    idx = np.repeat(np.arange(len(lines)), counts)
    n = len(idx)
    p, t, nrm = _frames(lines[idx], rng.uniform(0, 1, n) * shapely.length(lines[idx]))
    w = roads.width_m.to_numpy()[idx]
    cls = roads.road_class.to_numpy()[idx]
    lane = np.where(cls == "motorway", rng.choice([0.15, 0.35], n), 0.25) * w
    lane = np.where(cls == "residential", w / 2 - 1.1, lane) * rng.choice([-1.0, 1.0], n)
    truck = rng.random(n) < np.where(np.isin(cls, ["motorway", "primary"]), 0.15, 0.02)
    length = np.where(truck, rng.uniform(10, 16, n), rng.uniform(4.2, 4.9, n))
    cars = _rects(p + nrm * lane[:, None], t, nrm, length, np.where(truck, 2.5, 1.85))
    return dict(cars=cars, car_colour=rng.choice(len(_CARS), n, p=_CAR_P))


# ---------------------------------------------------------------------------------- paint
def _paint(rng: np.random.Generator, sc: _Scene, obj: _Objects) -> None:
    """Reflectance of every pixel, from the ground up to the tree tops."""
    sc.palette = _palette(rng)
    with _step("ground"):
        sc.img = _ground(sc)
        _cropland(sc)
        _dry_bed(sc)
    road = sc.label.astype(bool)
    with _step("features"):
        rails = _railway_paint(sc)
        paved = _paved(sc, obj, road)
        roofs = _building_mask(sc, obj, road)
    with _step("roads"):
        _roads(rng, sc, road)
        _cars(sc, obj, road, paved)
    with _step("buildings"):
        _shadows(sc, obj, roofs)
        _roofs(sc, obj, road)
    sc.blocked = road | roofs | paved | rails | (sc.lc == WATER)
    with _step("trees"):
        _trees(rng, sc)


def _ground(sc: _Scene) -> np.ndarray:
    """Two end members per class mixed by noise, brightness varied per cell and by noise."""
    lc, nz = sc.lc, sc.noise
    tex = [_GROUND_TEX[:, k][lc] for k in range(6)]
    bright = 1.0 + tex[0] * nz.low + tex[1] * nz.mid + tex[2] * nz.fine + sc.cells.bright[sc.cell]
    mix = np.clip(tex[5] + tex[3] * nz.low + tex[4] * nz.mid + sc.cells.mix[sc.cell], 0.0, 1.0)
    img = np.empty((4,) + lc.shape, np.float32)
    for b in range(4):
        a = sc.palette.ground_a[:, b][lc]
        img[b] = (a + (sc.palette.ground_b[:, b][lc] - a) * mix) * bright
    return img


def _parcels(cells: _Cells, cid: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple:
    """Field parcel (i, j), distance to the parcel edge and the across-field coordinate."""
    th = cells.angle[cid]
    c, s = np.cos(th), np.sin(th)
    u = x * c + y * s + cells.phase[cid, 0]
    v = -x * s + y * c + cells.phase[cid, 1]
    w, ln = cells.strip[cid], cells.length[cid]
    i, j = np.floor(u / w), np.floor(v / ln)
    fu, fv = u - i * w, v - j * ln
    edge = np.minimum(np.minimum(fu, w - fu), np.minimum(fv, ln - fv))
    return i, j, edge, u


def _cropland(sc: _Scene) -> None:
    """Fields: one crop per parcel, tillage stripes along it, grassy margins between parcels."""
    rows, cols = np.nonzero(sc.lc == CROPLAND)
    if not rows.size:
        return
    cid = sc.cell[rows, cols]
    gsd = sc.grid.gsd
    i, j, edge, across = _parcels(sc.cells, cid, (cols + 0.5) * gsd, -(rows + 0.5) * gsd)
    salt = sc.cells.salt
    crop = np.minimum(np.searchsorted(np.cumsum(_CROP_P), _hash01(salt, cid, i, j)), len(_CROPS) - 1)
    tone = (0.85 + 0.3 * _hash01(salt + 1, cid, i, j)).astype(np.float32)
    period = (5.0 + 10.0 * _hash01(salt + 2, cid, i, j)).astype(np.float32)
    stripes = np.cos((2 * np.pi) * across / period).astype(np.float32)
    mod = tone * (1 + _CROP_STRIPES[crop] * stripes + 0.05 * sc.noise.fine[rows, cols]
                  + 0.07 * sc.noise.mid[rows, cols])
    verge = np.clip(1.6 - edge / 1.0, 0.0, 1.0).astype(np.float32)  # ~1.5 m grass margins
    for b in range(4):
        field = sc.palette.crops[crop, b] * mod
        sc.img[b, rows, cols] = field + (_VERGE[0, b] * (1 + 0.1 * sc.noise.mid[rows, cols]) - field) * verge


def _dry_bed(sc: _Scene) -> None:
    """Gravel and sand of a dry river bed, with damp channels and patches of scrub."""
    if sc.layout.dry_bed.is_empty:
        return
    m = sc.grid.burn([sc.layout.dry_bed]).astype(bool)
    mid, fine = sc.noise.mid[m], sc.noise.fine[m]
    colour = sc.palette.riverbed[:, None] * (1 + 0.08 * fine) * np.where(mid < -0.9, 0.7, 1.0)
    scrub = np.clip(mid - 1.0, 0, 1)
    _blend(sc.img, m, colour * (1 - scrub) + _GRASS[:, None] * scrub, 1.0)


def _railway_paint(sc: _Scene) -> np.ndarray:
    """Ballast beds with two dark rails each; returns the ballast mask."""
    rails = np.array(sc.layout.rails, dtype=object)
    if not len(rails):
        return np.zeros(sc.grid.shape, bool)
    ballast = sc.grid.burn(shapely.buffer(rails, 1.7, cap_style="flat")).astype(bool)
    _blend(sc.img, ballast, _BALLAST[:, None] * (1 + 0.1 * sc.noise.fine[ballast]), 1.0)
    steel = _line_parts(shapely.offset_curve(np.concatenate([rails, rails]),
                                             np.repeat([-0.72, 0.72], len(rails))))
    _paint_lines(sc, np.array(steel, dtype=object), 0.3, _STEEL, ballast)
    return ballast


def _paved(sc: _Scene, obj: _Objects, road: np.ndarray) -> np.ndarray:
    """Driveways, lots, yards and sidewalks: road materials that are not road."""
    sidewalks = _sidewalks(sc, road)
    _blend(sc.img, sidewalks, _SIDEWALK[:, None] * (1 + 0.06 * sc.noise.fine[sidewalks]), 1.0)
    kind = sc.grid.burn(obj.paved, values=obj.paved_kind + 1) if len(obj.paved) else np.zeros(sc.grid.shape, np.uint8)
    m = (kind > 0) & ~road
    colour = _PAVED[kind[m] - 1].T * (1 + 0.08 * sc.noise.fine[m] + 0.06 * sc.noise.mid[m])
    _blend(sc.img, m, colour, 1.0)
    _paint_lines(sc, obj.stall_lines, 0.12, _PAINT, m)
    return m | sidewalks


def _sidewalks(sc: _Scene, road: np.ndarray) -> np.ndarray:
    roads = sc.layout.roads
    towns = [t for t in sc.layout.towns if t.sidewalks]
    sel = roads.road_class.isin(["residential", "secondary"]).to_numpy()
    if not towns or not sel.any():
        return np.zeros(sc.grid.shape, bool)
    area = shapely.union_all([t.polygon for t in towns])
    lines = shapely.intersection(roads.geometry.to_numpy()[sel], area)
    walks = shapely.buffer(lines, roads.width_m.to_numpy()[sel] / 2 + 1.8, cap_style="flat")
    return sc.grid.burn(walks).astype(bool) & ~road


def _building_mask(sc: _Scene, obj: _Objects, road: np.ndarray) -> np.ndarray:
    if not len(obj.roofs):
        return np.zeros(sc.grid.shape, bool)
    return sc.grid.burn(obj.footprints).astype(bool) & ~road


def _roads(rng: np.random.Generator, sc: _Scene, road: np.ndarray) -> None:
    """Road surfaces from the label polygons, then markings, ruts and bridge parapets."""
    polys = sc.polygons
    if not road.any():
        return
    # wide roads on top; at equal width, a road's bridge piece below its other pieces
    order = np.lexsort((~polys.bridge.to_numpy(bool), polys.width_m.to_numpy()))
    ids = sc.grid.burn(polys.geometry.to_numpy()[order], values=np.arange(1, len(order) + 1),
                       dtype="int32")
    surface, tone, blend = _surfaces(rng, polys.iloc[order])
    rid = ids[road]
    rid[rid == 0] = 1  # a label pixel no single polygon claims (edge case): any road
    material = surface[rid - 1]
    material[_bridge_decks(sc)[road]] = CONCRETE
    colour = (sc.palette.roads[material] * tone[rid - 1]).T
    colour *= 1 + 0.06 * sc.noise.fine[road] + 0.08 * sc.noise.mid[road]
    colour *= np.where(sc.noise.mid[road] > 1.3, 0.85, 1.0)  # patched asphalt
    alpha = np.where(material == CONCRETE, 1.0, blend[rid - 1])  # tracks fade into the ground
    sc.img[:, road] = sc.img[:, road] * (1 - alpha) + colour * alpha
    for lines, width, paint in _markings(rng, sc.layout.roads):
        _paint_lines(sc, lines, width, paint, road)


def _bridge_decks(sc: _Scene) -> np.ndarray:
    """Bridge decks with square ends (the label polygons of bridge pieces have round caps)."""
    roads = sc.layout.roads[sc.layout.roads.bridge.to_numpy(bool)]
    if not len(roads):
        return np.zeros(sc.grid.shape, bool)
    decks = shapely.buffer(roads.geometry.to_numpy(), roads.width_m.to_numpy() / 2, cap_style="flat")
    return sc.grid.burn(decks).astype(bool)


def _surfaces(rng: np.random.Generator, polys: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per road piece: surface material, tone (per band: each scene has its own asphalt)
    and opacity (unpaved tracks are faint). Pieces of one road (split at bridges) share class
    and width, and so their look: the choices are hashed from those."""
    cls = polys.road_class.to_numpy()
    kind = np.array([list(ROAD_WIDTH_M).index(c) if c in ROAD_WIDTH_M else 3 for c in cls])
    width = np.rint(polys.width_m.to_numpy(float) * 10)
    salt = int(rng.integers(2**62))
    pick, shade, fade = (_hash01(salt + k, kind, width) for k in range(3))
    cum = np.cumsum([_SURFACE_P[c] for c in ROAD_WIDTH_M], axis=1)[kind]
    surface = np.minimum((cum < pick[:, None]).sum(axis=1), len(_ROAD_SURFACES) - 1)
    tone = ((0.75 + 0.55 * shade)[:, None] * rng.uniform(0.93, 1.07, (1, 4))).astype(np.float32)
    blend = np.where(cls == "track", 0.45 + 0.4 * fade, 1.0).astype(np.float32)
    return surface, tone, blend


def _markings(rng: np.random.Generator, roads: gpd.GeoDataFrame) -> list[tuple]:
    """(lines, width_m, colour) of lane markings, barriers, track ruts and bridge parapets."""
    geoms = roads.geometry.to_numpy()
    width = roads.width_m.to_numpy()
    cls = roads.road_class.to_numpy()

    def offset(sel: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.array(_line_parts(shapely.offset_curve(geoms[sel], d)), dtype=object)

    out = []
    mw, pr = cls == "motorway", cls == "primary"
    sec = (cls == "secondary") & (rng.random(len(cls)) < 0.6)
    tr, br = cls == "track", roads.bridge.to_numpy(bool)
    out.append((geoms[mw], 0.8, _BARRIER))
    for sign in (-1, 1):
        out.append((_dashes(offset(mw, sign * 0.25 * width[mw]), 6.0, 12.0, rng), 0.2, _PAINT))
        out.append((offset(mw, sign * (width[mw] / 2 - 1.0)), 0.25, _PAINT))
        out.append((offset(pr, sign * (width[pr] / 2 - 0.4)), 0.15, _PAINT))
        out.append((offset(tr, sign * 0.75), 0.35, _RUTS))
        out.append((offset(br, sign * (width[br] / 2 - 0.3)), 0.5, _BARRIER))
    out.append((_dashes(geoms[pr], 3.0, 6.0, rng), 0.15, _PAINT))
    out.append((_dashes(geoms[sec], 3.0, 9.0, rng), 0.12, _PAINT))
    out.append((geoms[tr], 0.6, _GRASS))
    return out


def _cars(sc: _Scene, obj: _Objects, road: np.ndarray, paved: np.ndarray) -> None:
    if not len(obj.cars):
        return
    ids = sc.grid.burn(obj.cars, values=np.arange(1, len(obj.cars) + 1), dtype="int32")
    m = (ids > 0) & (road | paved)
    colour = _CARS[obj.car_colour[ids[m] - 1]].T * (1 + 0.05 * sc.noise.fine[m])
    _blend(sc.img, m, colour, 0.9)


def _shadows(sc: _Scene, obj: _Objects, roofs: np.ndarray) -> None:
    """Cast shadows (lit by the bluish sky only) of buildings, and of bridge decks on water."""
    shade = np.zeros(sc.grid.shape, bool)
    if len(obj.footprints):
        corners = shapely.get_coordinates(obj.footprints).reshape(len(obj.footprints), 5, 2)[:, :4]
        tip = np.stack([sc.shadow_offset(h) for h in obj.heights])[:, None, :]
        hulls = shapely.convex_hull(shapely.multipoints(np.concatenate([corners, corners + tip], axis=1)))
        shade |= sc.grid.burn(hulls).astype(bool) & ~roofs
    bridges = sc.polygons[sc.polygons.bridge.to_numpy(bool)]
    if len(bridges):
        offset = sc.shadow_offset(6.0)
        moved = shapely.transform(bridges.geometry.to_numpy(), lambda c: c + offset)
        shade |= sc.grid.burn(moved).astype(bool) & (sc.lc == WATER) & ~sc.label.astype(bool)
    sc.img[:, shade] *= _SKYLIGHT[:, None]


def _roofs(sc: _Scene, obj: _Objects, road: np.ndarray) -> None:
    if not len(obj.roofs):
        return
    ids = sc.grid.burn(obj.roofs, values=np.arange(1, len(obj.roofs) + 1), dtype="int32")
    m = (ids > 0) & ~road
    colour = obj.roof_colour[ids[m] - 1].T * (1 + 0.04 * sc.noise.fine[m] + 0.05 * sc.noise.mid[m])
    _blend(sc.img, m, colour, 1.0)


def _blend(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> None:
    """img[:, mask] <- (1 - alpha) img + alpha colour; colour is (4, 1) or (4, n)."""
    if not mask.any():
        return
    img[:, mask] = img[:, mask] * (1 - alpha) + np.asarray(colour, np.float32).reshape(4, -1) * alpha


def _paint_lines(sc: _Scene, lines: np.ndarray, width_m: float, colour: np.ndarray,
                 within: np.ndarray) -> None:
    """Thin lines: buffered when wider than a pixel, else one pixel at ``width / gsd`` opacity."""
    if not len(lines):
        return
    gsd = sc.grid.gsd
    if width_m >= 1.2 * gsd:
        mask, alpha = sc.grid.burn(shapely.buffer(lines, width_m / 2, cap_style="flat")), 1.0
    else:
        mask, alpha = sc.grid.burn(lines), width_m / gsd
    _blend(sc.img, mask.astype(bool) & within, colour[:, None], alpha)


# ----------------------------------------------------------------------------------- trees
@dataclass
class _Trees:
    row: np.ndarray  # pixel coordinates (float)
    col: np.ndarray
    height: np.ndarray  # m
    large: np.ndarray  # bool: broad crown
    conifer: np.ndarray  # 0..1
    tone: np.ndarray


def _trees(rng: np.random.Generator, sc: _Scene) -> None:
    """Crowns over everything (roads included: they stay road in the labels), with shadows."""
    trees = _tree_points(rng, sc)
    if not len(trees.row):
        return
    cover, relief, tone, conifer = _canopy(sc, trees)
    alpha = _crown_alpha(cover)
    shadow = _tree_shadows(sc, trees) * (1 - alpha)
    shade = _crown_shading(sc, relief) * (1 + 0.12 * sc.noise.fine)
    for b in range(4):
        ground = sc.img[b] * (1 - 0.7 * shadow * (1 - _SKYLIGHT[b]))  # crowns let some light through
        crown = (_DECIDUOUS[b] + (_CONIFER[b] - _DECIDUOUS[b]) * conifer) * tone * shade
        sc.img[b] = ground + (crown - ground) * alpha


def _tree_points(rng: np.random.Generator, sc: _Scene) -> _Trees:
    """Candidates on a jittered 4 m grid (trees keep their distance), kept by land-cover
    density; hedgerows along some field margins; avenue trees beside some roads."""
    g = sc.grid
    row, col = _jittered_grid(rng, g.extent, 4.0)
    row, col = row / g.gsd, col / g.gsd
    n = len(row)
    r, c = row.astype(np.intp), col.astype(np.intp)
    cls = sc.lc[r, c]
    p = _TREE_DENSITY[cls] * np.clip(1 + 0.7 * sc.noise.low[r, c], 0, 1.6)
    crop = np.flatnonzero(cls == CROPLAND)
    cid = sc.cell[r[crop], c[crop]]
    _, _, edge, _ = _parcels(sc.cells, cid, col[crop] * g.gsd, -row[crop] * g.gsd)
    p[crop] = np.where((edge < 2.0) & sc.cells.hedges[cid], 0.7, 0.0)
    p[sc.blocked[r, c]] = 0
    keep = rng.random(n) < p
    row, col, cls = row[keep], col[keep], cls[keep]
    a_row, a_col = _avenue_trees(rng, sc)
    row, col = np.concatenate([row, a_row]), np.concatenate([col, a_col])
    cls = np.concatenate([cls, np.full(len(a_row), GRASSLAND, np.uint8)])
    forest = cls == FOREST
    k = len(row)
    cid = sc.cell[row.astype(np.intp), col.astype(np.intp)]
    return _Trees(
        row=row, col=col,
        height=np.where(forest, rng.uniform(12, 24, k), rng.uniform(4, 11, k)),
        large=rng.random(k) < np.where(forest, 0.2, 0.6),
        conifer=np.where(forest, rng.random(k) < sc.cells.conifer[cid], rng.random(k) < 0.1).astype(np.float32),
        tone=rng.uniform(0.8, 1.2, k),
    )


def _jittered_grid(rng: np.random.Generator, extent: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) in metres: one point per ``spacing`` cell, placed at random within the
    middle 70 % of its cell."""
    n = int(extent // spacing)
    cells = (np.arange(n) + 0.5) * spacing
    y, x = np.meshgrid(cells, cells, indexing="ij")
    jitter = rng.uniform(-0.35, 0.35, (2, n * n)) * spacing
    return y.ravel() + jitter[0], x.ravel() + jitter[1]


def _avenue_trees(rng: np.random.Generator, sc: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Rows of trees beside some roads; their crowns overhang the road edges."""
    roads = sc.layout.roads
    sel = roads.road_class.isin(["primary", "secondary", "residential", "track"]).to_numpy()
    sel = sel & (rng.random(len(roads)) < 0.55)
    lines = roads.geometry.to_numpy()[sel]
    if not len(lines):
        return np.empty(0), np.empty(0)
    spacing = rng.uniform(7, 11)
    counts = (shapely.length(lines) // spacing).astype(np.intp)
    idx = np.repeat(np.arange(len(lines)), 2 * counts)
    p, _, nrm = _frames(lines[idx], (_ragged_arange(2 * counts) // 2 + 0.5) * spacing)
    side = np.where(_ragged_arange(2 * counts) % 2 == 0, 1.0, -1.0)
    xy = p + nrm * (side * (roads.width_m.to_numpy()[sel][idx] / 2 + 1.5))[:, None]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < sc.grid.extent) & (xy[:, 1] <= 0) & (xy[:, 1] > -sc.grid.extent)
    r, c = sc.grid.pixel(xy)
    ok = inside & ~sc.blocked[r, c] & (rng.random(len(xy)) < 0.85)
    return -xy[ok, 1] / sc.grid.gsd, xy[ok, 0] / sc.grid.gsd


def _canopy(sc: _Scene, trees: _Trees) -> tuple[np.ndarray, ...]:
    """Per pixel: crown cover (Gaussian crowns summed, ~1 at a crown centre), canopy relief
    in metres (a dome as high as the crown is wide, for shading), crown tone, conifer share.

    Tone and conifer share vary slowly, so they are made on a grid twice as coarse.
    """
    shape = sc.grid.shape
    cover = np.zeros(shape, np.float32)
    relief = np.zeros(shape, np.float32)
    tone_sum = conifer_sum = cover_coarse = None
    for large, radius_m in _CROWN_RADIUS_M:
        sel = trees.large == large
        if not sel.any():
            continue
        row, col = trees.row[sel], trees.col[sel]
        sigma = radius_m / 2.0 / sc.grid.gsd
        (c,) = _splat(row, col, [np.ones(len(row))], shape, sigma, max(1, int(sigma)))
        cover += c
        relief += radius_m * c
        coarse = _splat(row, col, [np.ones(len(row)), trees.tone[sel], trees.conifer[sel]], shape,
                        sigma, 2, upsample=False)
        if cover_coarse is None:
            cover_coarse, tone_sum, conifer_sum = coarse
        else:
            cover_coarse += coarse[0]
            tone_sum += coarse[1]
            conifer_sum += coarse[2]
    norm = np.maximum(cover_coarse, 1e-3)
    return cover, relief, _upsample_to(tone_sum / norm, shape, 2), _upsample_to(conifer_sum / norm, shape, 2)


def _crown_alpha(cover: np.ndarray) -> np.ndarray:
    """Opacity of the canopy from summed Gaussian crowns (1 at a lone crown's centre)."""
    return np.clip((cover - 0.12) / 0.3, 0.0, 1.0)


def _tree_shadows(sc: _Scene, trees: _Trees) -> np.ndarray:
    """Crown shadows, each thrown as far as its own tree is tall (made at half resolution)."""
    g = sc.grid
    length = trees.height / math.tan(sc.sun_elevation) / g.gsd
    row = trees.row + math.cos(sc.sun_azimuth) * length  # away from the sun; rows run south
    col = trees.col - math.sin(sc.sun_azimuth) * length
    inside = (row >= 0) & (row < g.size) & (col >= 0) & (col < g.size)
    cover = np.zeros(g.shape, np.float32)
    for large, radius_m in _CROWN_RADIUS_M:
        sel = inside & (trees.large == large)
        if sel.any():
            cover += _splat(row[sel], col[sel], [np.ones(int(sel.sum()))], g.shape, radius_m / 2.0 / g.gsd, 2)[0]
    return _crown_alpha(cover)


def _splat(row: np.ndarray, col: np.ndarray, weights: list[np.ndarray], shape: tuple[int, int],
           sigma_px: float, factor: int, upsample: bool = True) -> list[np.ndarray]:
    """Sum of Gaussian blobs (peak = weight) at points, made on a grid ``factor`` times
    coarser; upsampled to ``shape`` unless ``upsample`` is False."""
    cshape = (shape[0] // factor + 2, shape[1] // factor + 2)
    idx = (row // factor).astype(np.intp) * cshape[1] + (col // factor).astype(np.intp)
    sigma = sigma_px / factor
    out = []
    for w in weights:
        acc = np.bincount(idx, weights=w * (2 * np.pi * sigma * sigma), minlength=cshape[0] * cshape[1])
        acc = ndimage.gaussian_filter(acc.reshape(cshape).astype(np.float32), sigma, mode="constant")
        out.append(_upsample_to(acc, shape, factor) if upsample else acc)
    return out


def _upsample_to(coarse: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Back to ``shape`` from a grid binned ``factor`` times coarser (with padding cells)."""
    if factor == 1:
        return np.ascontiguousarray(coarse[: shape[0], : shape[1]])
    full = _upsample(coarse, (coarse.shape[0] * factor, coarse.shape[1] * factor))
    return np.ascontiguousarray(full[: shape[0], : shape[1]])


def _crown_shading(sc: _Scene, relief: np.ndarray) -> np.ndarray:
    """Lambertian shading of the canopy surface: sunlit and shaded sides of crowns."""
    gy, gx = np.gradient(relief * np.float32(1.0 / sc.grid.gsd))
    sx, sy, sz = sc.sun_vector  # east, north, up; rows run south
    shade = (-gx * sx + gy * sy + sz) / np.sqrt(1 + gx * gx + gy * gy)
    return np.clip(shade / sz, 0.25, 1.6)


# ---------------------------------------------------------------------------------- sensor
def _sensor(rng: np.random.Generator, sc: _Scene, dtype: str, border: bool) -> tuple[np.ndarray, np.ndarray]:
    """Illumination, colour balance, haze, blur, noise, quantisation, nodata footprint."""
    img = sc.img
    gain = rng.uniform(0.8, 1.25) * rng.uniform(0.88, 1.12, 4)
    haze = rng.uniform(0.0, 0.08) * (1 + 0.5 * _noise(rng, sc.grid.shape, 600.0 / sc.grid.gsd))
    blur = rng.uniform(0.45, 0.8)
    white, gamma = rng.uniform(0.42, 0.6), rng.uniform(1.0, 1.4)
    valid = _footprint(rng, sc.grid) if border else np.ones(sc.grid.shape, bool)
    out = np.empty(img.shape, dtype=dtype)
    for b in range(4):
        band = ndimage.gaussian_filter(img[b] * np.float32(gain[b]) + haze * _HAZE[b], blur)
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


def _footprint(rng: np.random.Generator, grid: _Grid) -> np.ndarray:
    """Valid pixels: inside a slightly rotated, shifted square, like an image footprint."""
    extent = grid.extent
    angle = math.radians(rng.uniform(3, 12)) * rng.choice([-1, 1])
    half = 0.5 * extent * rng.uniform(0.92, 1.0)
    centre = np.array([extent / 2, -extent / 2]) + rng.uniform(-0.04, 0.04, 2) * extent
    c, s = math.cos(angle), math.sin(angle)
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * half @ np.array([[c, s], [-s, c]]) + centre
    return grid.burn([shapely.Polygon(corners)]).astype(bool)
