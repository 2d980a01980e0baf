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
beds, railway ballast, field margins and stubble share the spectra of asphalt, concrete and gravel roads.

Modules, in the order a scene is made: ``types`` (land-cover classes, towns, the layout: what
the passes share without importing each other), ``grid`` (scene grid, noise, hashes), ``geometry``
(polylines, frames, rectangles), ``layout`` (towns, rivers, railway) with ``roads`` (the road
network and its table), ``landcover`` (Voronoi cells, field parcels), ``materials``
(spectra, a scene's palette), ``state`` (what the passes share), ``objects`` (buildings, lots,
cars), ``paint`` (ground, roads, buildings) with ``trees`` (canopy, crown shadows), ``sensor``
(illumination to digital numbers, nodata footprint), ``scene`` (one scene's files, the stage).
"""

from pipeline.synth.roads import ROAD_WIDTH_M, road_table
from pipeline.synth.scene import SceneFiles, generate_scene, run_synth
from pipeline.synth.types import LANDCOVER_CLASSES

__all__ = [
    "LANDCOVER_CLASSES",
    "ROAD_WIDTH_M",
    "SceneFiles",
    "road_table",
    "generate_scene",
    "run_synth",
]
