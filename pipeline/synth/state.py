"""The state the passes share: one scene's grid, layout, land cover, noise, labels, sun and
(while painting) its reflectance image; and the timing of the passes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import shapely

from pipeline import vectors
from pipeline.synth.grid import _Grid, _Noise, _noises
from pipeline.synth.landcover import _Cells, _landcover
from pipeline.synth.layout import _Layout
from pipeline.synth.materials import _Palette

log = logging.getLogger("pipeline.synth")


@contextmanager
def _step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.debug("synth step %-12s %.2f s", name, time.perf_counter() - start)


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
        return np.array(
            [
                ce * math.sin(self.sun_azimuth),
                ce * math.cos(self.sun_azimuth),
                math.sin(self.sun_elevation),
            ]
        )


def _prepare(
    rng: np.random.Generator, grid: _Grid, layout: _Layout, polygons: gpd.GeoDataFrame
) -> _Scene:
    with _step("noise"):
        noise = _noises(rng, grid)
    with _step("land cover"):
        lc, cell, cells = _landcover(rng, grid, layout)
    with _step("labels"):
        label = vectors.burn_mask(polygons, grid.transform, grid.shape)
        local = shapely.transform(
            polygons.geometry.to_numpy(), lambda c: c - np.array([grid.x0, grid.y0])
        )
        polygons = gpd.GeoDataFrame(polygons.drop(columns=polygons.geometry.name), geometry=local)
    return _Scene(
        grid,
        layout,
        lc,
        cell,
        cells,
        noise,
        label,
        polygons,
        sun_azimuth=math.radians(rng.uniform(100, 260)),
        sun_elevation=math.radians(rng.uniform(35, 65)),
    )
