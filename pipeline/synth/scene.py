"""One scene end to end, and the synth stage: layout, road file, labels, objects, paint,
sensor, then the image, road GeoPackage, land-cover raster and the railway as hard negatives
written atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import raster, vectors
from pipeline.config import BAND_NAMES_RGBN, SynthParams, SynthSceneSpec
from pipeline.synth.grid import scene_grid
from pipeline.synth.layout import draw_layout
from pipeline.synth.objects import place_objects
from pipeline.synth.paint import paint_scene
from pipeline.synth.roads import LABEL_HALF_WIDTH_M, railways_for_file, roads_for_file
from pipeline.synth.sensor import IMAGE_NODATA, apply_sensor
from pipeline.synth.state import log, prepare_scene, timed_step
from pipeline.synth.types import LANDCOVER_CLASSES, LANDCOVER_NODATA
from pipeline.vectors import NEGATIVES_LAYER


@dataclass(frozen=True)
class SceneFiles:
    """The four files of one scene."""

    image: Path
    roads: Path
    landcover: Path
    negatives: Path


def generate_scene(spec: SynthSceneSpec, params: SynthParams, index: int) -> SceneFiles:
    """Write ``<name>.tif``, ``<name>.roads.gpkg``, ``<name>.landcover.tif`` and
    ``<name>.negatives.gpkg`` (the railway) to ``params.out_dir``.

    Scene ``index`` shifts the origin east by ``index * (size * gsd + 1000)`` metres so that
    scenes never overlap. Every file is written atomically.
    """
    files = SceneFiles(*params.scene_files(spec.name))
    grid = scene_grid(params, index)
    layout_rng, cover_rng, object_rng, paint_rng, sensor_rng = np.random.default_rng(
        spec.seed
    ).spawn(5)
    start = time.perf_counter()
    with timed_step("layout"):
        layout = draw_layout(layout_rng, grid)
    with timed_step("road vectors"):
        vectors.write_vectors(
            roads_for_file(layout.roads, grid, params.crs), files.roads, reproducible=True
        )
        vectors.write_vectors(
            railways_for_file(layout.rails, grid, params.crs),
            files.negatives,
            layer=NEGATIVES_LAYER,
            reproducible=True,
        )
        polygons = vectors.load_road_polygons(
            files.roads,
            params.crs,
            width_attribute="width_m",
            default_half_width_m=LABEL_HALF_WIDTH_M,
            bounds=grid.bounds,
        )
    scene = prepare_scene(cover_rng, grid, layout, polygons)
    with timed_step("objects"):
        objects = place_objects(object_rng, scene)
    with timed_step("paint"):
        paint_scene(paint_rng, scene, objects)
    with timed_step("sensor"):
        image, valid = apply_sensor(sensor_rng, scene, params.dtype, params.nodata_border)
    with timed_step("write"):
        raster.write_geotiff(
            files.image,
            image,
            crs=params.crs,
            transform=grid.transform,
            nodata=IMAGE_NODATA,
            band_descriptions=list(BAND_NAMES_RGBN),
        )
        landcover = np.where(valid, scene.lc, LANDCOVER_NODATA).astype(np.uint8)
        raster.write_geotiff(
            files.landcover,
            landcover,
            crs=params.crs,
            transform=grid.transform,
            nodata=LANDCOVER_NODATA,
            tags={"CLASSES": ",".join(LANDCOVER_CLASSES)},
        )
    log.info("synth %s: %d px, %.1f s", spec.name, params.size, time.perf_counter() - start)
    return files


def run_synth(params: SynthParams) -> list[SceneFiles]:
    """Generate every scene in ``params.scenes`` (scene i gets origin offset i).

    ``out_dir`` is created even for an empty list: a project on its own rasters sets
    ``synth.scenes: []`` and the DVC stage still has its (empty) output.
    """
    Path(params.out_dir).mkdir(parents=True, exist_ok=True)
    return [generate_scene(spec, params, i) for i, spec in enumerate(params.scenes)]
