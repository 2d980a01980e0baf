"""The tile stage's output (docs/formats.md, "Chips"): its names and codes, and its one reader.

Written by ``tiling``; read through the functions here by ``datasets`` (train), ``baseline``
(evaluate), ``pretrain_data`` (pretrain), ``register`` and ``tilesets``. Only numpy at import
(geopandas/pyogrio when the index is read): every reader can use it without pulling in the
writer's dependencies (dask) or torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "index.gpkg"  # one row per chip, footprint polygons: open it in QGIS
INDEX_LAYER = "chips"
STATS_FILE = "stats.json"  # bands, dtype, gsd_m, train mean/std, classes, counts, fingerprint
MASK_NODATA = 255  # in <scene>.masks.npy: 0 background, 1 road, 255 nodata (no loss, no metric)
MASK_NEGATIVE = 2  # in <scene>.masks.npy: background a scene's `negatives` mark (railways, ...)
LANDCOVER_UNKNOWN = 255  # in <scene>.landcover.npy


def read_chip_index(chips_dir: Path, geometry: bool = True) -> Any:
    """The chip index (layer ``chips``): a GeoDataFrame, or without ``geometry`` a plain
    DataFrame of its columns (no polygons to build). FileNotFoundError when there is none."""
    path = Path(chips_dir) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no chip index; run `pipeline tile` first")
    if geometry:
        import geopandas as gpd

        return gpd.read_file(path, layer=INDEX_LAYER, engine="pyogrio")
    import pyogrio

    return pyogrio.read_dataframe(path, layer=INDEX_LAYER, read_geometry=False)


def read_stats(chips_dir: Path, required: bool = True) -> dict[str, Any]:
    """``stats.json`` of a chips folder; when there is none, FileNotFoundError (``required``)
    or ``{}``."""
    path = Path(chips_dir) / STATS_FILE
    if not path.is_file():
        if not required:
            return {}
        raise FileNotFoundError(f"{path}: no chip statistics; run `pipeline tile` first")
    return json.loads(path.read_text())


def open_chip_array(
    chips_dir: Path, scene: str, kind: str, required: bool = True
) -> np.ndarray | None:
    """``<scene>.<kind>.npy`` (kind: images, masks, landcover), memory-mapped read-only;
    when the scene has none, FileNotFoundError (``required``) or None."""
    path = Path(chips_dir) / f"{scene}.{kind}.npy"
    if not path.exists():
        if not required:
            return None
        raise FileNotFoundError(f"{path}: no {kind} chips of scene {scene}; re-run `pipeline tile`")
    return np.load(path, mmap_mode="r", allow_pickle=False)


class ChipArrays:
    """Lazily memory-mapped per-scene chip arrays (opened in each worker process on first use)."""

    def __init__(self, chips_dir: Path) -> None:
        self.dir = Path(chips_dir)
        self._open: dict[tuple[str, str], np.ndarray] = {}

    def get(self, scene: str, kind: str) -> np.ndarray:
        key = (scene, kind)
        if key not in self._open:
            self._open[key] = open_chip_array(self.dir, scene, kind)
        return self._open[key]

    def __getstate__(self) -> dict:
        return {"dir": self.dir, "_open": {}}
