"""Materials: surface reflectance of ground, crops, road surfaces, paint, roofs, cars and
trees, and a scene's own palette (the module spectra jittered, soils shifted towards grey)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.types import BARE_SOIL

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
GROUND_TEX = np.array(
    [
        (0.10, 0.15, 0.12, 0.35, 0.30, 0.5),
        (0.08, 0.06, 0.06, 0.30, 0.10, 0.5),
        (0.10, 0.08, 0.07, 0.35, 0.20, 0.5),
        (0.10, 0.10, 0.08, 0.40, 0.30, 0.5),
        (0.06, 0.03, 0.02, 0.40, 0.10, 0.4),
        (0.10, 0.12, 0.12, 0.25, 0.45, 0.3),
        (0.08, 0.10, 0.10, 0.30, 0.40, 0.4),
    ],
    dtype=np.float32,
)
CROPS = _spectra(
    (0.050, 0.110, 0.040, 0.45),  # green cereal
    (0.120, 0.140, 0.080, 0.30),  # young crop, soil showing
    (0.280, 0.240, 0.130, 0.33),  # ripe grain
    (0.130, 0.100, 0.080, 0.17),  # ploughed
    (0.300, 0.270, 0.200, 0.30),  # stubble
    (0.350, 0.320, 0.060, 0.40),  # rapeseed in flower
    (0.110, 0.130, 0.080, 0.28),  # fallow
)
CROP_P = np.array([0.26, 0.14, 0.16, 0.16, 0.14, 0.04, 0.10])
CROP_STRIPES = np.array([0.05, 0.10, 0.06, 0.18, 0.14, 0.04, 0.05], dtype=np.float32)
VERGE = _spectra((0.10, 0.12, 0.07, 0.30))
# Asphalt and concrete reflect a little more at longer wavelengths (USGS spectral library);
# path radiance (haze) and skylight in shadows make dark surfaces look bluish, not the material.
ROAD_SURFACES = _spectra(
    (0.065, 0.061, 0.056, 0.080),  # new asphalt
    (0.105, 0.100, 0.092, 0.125),  # asphalt
    (0.160, 0.150, 0.135, 0.190),  # old asphalt, dusty
    (0.265, 0.255, 0.235, 0.300),  # concrete
    (0.230, 0.200, 0.160, 0.260),  # gravel
    (0.170, 0.140, 0.110, 0.220),  # dirt
)
NEW_ASPHALT, ASPHALT, OLD_ASPHALT, CONCRETE, GRAVEL, DIRT = range(len(ROAD_SURFACES))
# surface probabilities by road class
SURFACE_P = {
    "motorway": (0.45, 0.30, 0.0, 0.25, 0.0, 0.0),
    "primary": (0.35, 0.45, 0.15, 0.05, 0.0, 0.0),
    "secondary": (0.15, 0.45, 0.35, 0.05, 0.0, 0.0),
    "residential": (0.10, 0.35, 0.40, 0.15, 0.0, 0.0),
    "track": (0.0, 0.0, 0.0, 0.0, 0.55, 0.45),
}
PAINT = np.array([0.55, 0.55, 0.53, 0.50], np.float32)
BARRIER = np.array([0.30, 0.29, 0.27, 0.32], np.float32)
RUTS = np.array([0.12, 0.10, 0.08, 0.16], np.float32)
GRASS = np.array([0.07, 0.11, 0.05, 0.33], np.float32)
SIDEWALK = np.array([0.27, 0.26, 0.24, 0.29], np.float32)
BALLAST = np.array([0.17, 0.16, 0.15, 0.18], np.float32)
STEEL = np.array([0.08, 0.08, 0.09, 0.09], np.float32)
_RIVERBED = np.array([0.28, 0.26, 0.23, 0.29], np.float32)
ROOFS = _spectra(
    (0.26, 0.13, 0.09, 0.28),  # red tiles
    (0.19, 0.12, 0.09, 0.21),  # brown tiles
    (0.085, 0.083, 0.080, 0.10),  # dark grey
    (0.17, 0.165, 0.155, 0.19),  # grey
    (0.33, 0.325, 0.31, 0.34),  # light
)
FLAT_ROOFS = _spectra(
    (0.45, 0.46, 0.46, 0.45),  # white membrane, metal
    (0.30, 0.295, 0.285, 0.31),  # light grey
    (0.11, 0.105, 0.10, 0.13),  # bitumen
    (0.16, 0.20, 0.28, 0.24),  # blue-grey metal
)
PAVED = _spectra(
    (0.105, 0.100, 0.092, 0.125),  # asphalt (parking lots, driveways)
    (0.245, 0.235, 0.215, 0.28),  # concrete
    (0.20, 0.15, 0.12, 0.22),  # red pavers
    (0.21, 0.19, 0.16, 0.24),  # gravel
)
CARS = _spectra(
    (0.55, 0.55, 0.55, 0.50),
    (0.04, 0.04, 0.045, 0.05),
    (0.30, 0.30, 0.32, 0.30),
    (0.12, 0.12, 0.13, 0.12),
    (0.35, 0.06, 0.05, 0.30),
    (0.05, 0.08, 0.25, 0.20),
)
CAR_P = np.array([0.30, 0.22, 0.20, 0.12, 0.08, 0.08])
DECIDUOUS = np.array([0.050, 0.095, 0.040, 0.45], np.float32)
CONIFER = np.array([0.025, 0.050, 0.025, 0.26], np.float32)
SKYLIGHT = np.array([0.30, 0.33, 0.42, 0.24], np.float32)  # share of light left in shadow
HAZE = np.array([0.75, 0.85, 1.0, 0.40], np.float32)


@dataclass(frozen=True)
class Palette:
    """A scene's own materials: every region has its own soils and asphalt mixes."""

    ground_a: np.ndarray
    ground_b: np.ndarray
    crops: np.ndarray
    roads: np.ndarray
    riverbed: np.ndarray


def draw_palette(rng: np.random.Generator) -> Palette:
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

    return Palette(
        ground_a=grey(jitter(_GROUND_A), [BARE_SOIL]),
        ground_b=grey(jitter(_GROUND_B), [BARE_SOIL]),
        crops=grey(jitter(CROPS), [3, 4]),
        roads=grey(jitter(ROAD_SURFACES), [GRAVEL, DIRT]),
        riverbed=grey(jitter(_RIVERBED[None]), [0])[0],
    )
