"""The names and codes of the tile stage's output (docs/formats.md, "Chips"), in one place.

Written by ``tiling``, read by ``datasets`` (train), ``baseline`` (evaluate) and
``pipeline.pretrain_data`` (pretrain). No imports: every reader can use it without pulling in the
writer's dependencies (dask, geopandas).
"""

INDEX_FILE = "index.gpkg"  # one row per chip, footprint polygons: open it in QGIS
INDEX_LAYER = "chips"
STATS_FILE = "stats.json"  # bands, dtype, gsd_m, train mean/std, classes, counts, fingerprint
MASK_NODATA = 255  # in <scene>.masks.npy: 0 background, 1 road, 255 nodata (no loss, no metric)
LANDCOVER_UNKNOWN = 255  # in <scene>.landcover.npy
