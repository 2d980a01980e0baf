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
from pipeline.synth.grid import Grid, Noise, noise_fields
from pipeline.synth.landcover import Cells, draw_landcover
from pipeline.synth.materials import Palette
from pipeline.synth.types import Layout

log = logging.getLogger("pipeline.synth")


@contextmanager
def timed_step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.debug("synth step %-12s %.2f s", name, time.perf_counter() - start)


@dataclass
class Scene:
    grid: Grid
    layout: Layout
    lc: np.ndarray  # uint8 land-cover class per pixel
    cell: np.ndarray  # int32 Voronoi cell per pixel
    cells: Cells
    noise: Noise
    label: np.ndarray  # uint8 road mask, what the tile stage burns from the gpkg
    polygons: gpd.GeoDataFrame  # road polygons in local metres, with attributes
    sun_azimuth: float  # radians, clockwise from north
    sun_elevation: float  # radians
    palette: Palette | None = None  # this scene's materials
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


def prepare_scene(
    rng: np.random.Generator, grid: Grid, layout: Layout, polygons: gpd.GeoDataFrame
) -> Scene:
    with timed_step("noise"):
        noise = noise_fields(rng, grid)
    with timed_step("land cover"):
        lc, cell, cells = draw_landcover(rng, grid, layout)
    with timed_step("labels"):
        label = vectors.burn_mask(polygons, grid.transform, grid.shape)
        local = shapely.transform(
            polygons.geometry.to_numpy(), lambda c: c - np.array([grid.x0, grid.y0])
        )
        polygons = gpd.GeoDataFrame(polygons.drop(columns=polygons.geometry.name), geometry=local)
    return Scene(
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
