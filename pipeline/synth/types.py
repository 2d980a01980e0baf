"""Types and constants the synthesis passes share: the land-cover classes, the towns and the
scene layout (local metres: x east, y north, origin at the scene's upper-left corner).

They live here, apart from the code that draws them (``layout``, ``roads``, ``landcover``), so
that every pass can name them without importing another pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely

LANDCOVER_CLASSES: list[str] = [
    "forest",
    "cropland",
    "grassland",
    "bare_soil",
    "water",
    "residential",
    "industrial",
]
FOREST, CROPLAND, GRASSLAND, BARE_SOIL, WATER, RESIDENTIAL, INDUSTRIAL = range(
    len(LANDCOVER_CLASSES)
)
LANDCOVER_NODATA = 255


@dataclass(frozen=True)
class Town:
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
class Layout:
    towns: list[Town]
    water: shapely.Geometry  # rivers, possibly empty
    dry_bed: shapely.Geometry  # dry river beds, possibly empty
    rails: list[shapely.LineString]  # railway track centrelines
    roads: gpd.GeoDataFrame  # local metres: LineString, road_class, width_m, bridge
