"""Shared fixtures: tiny, real GeoTIFF scenes made by code (UTM CRS, nodata), and their chips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

os.environ.setdefault("MPLBACKEND", "Agg")

UTM = "EPSG:32632"
BANDS = ["red", "green", "blue", "nir"]


@pytest.fixture(autouse=True)
def _no_outside_mlflow(monkeypatch):
    """Tests never write to a tracking server or store named by the developer's environment.

    mlflow.set_tracking_uri/set_registry_uri also export these variables, so without this a
    URI set by one test would leak into the next.
    """
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def scheduler():
    """The address of one 2-worker LocalCluster shared by the tests that predict on it
    (``scheduler=`` / ``--scheduler``): its workers start and import torch once for the
    session, not once per test. Tests about starting, sizing or losing clusters start their
    own."""
    from pipeline import parallel

    with parallel.local_cluster(2, "cpu") as client:
        yield client.scheduler.address


@pytest.fixture(autouse=True)
def _own_model_cache(monkeypatch, tmp_path_factory):
    """Registry downloads go to a cache of this test's own, never the developer's ~/.cache."""
    monkeypatch.setenv("ROADSEG_CACHE_DIR", str(tmp_path_factory.mktemp("model-cache")))


def make_scene(
    folder: Path, name: str, seed: int, size: int = 256, origin=(500000.0, 5400000.0)
) -> dict:
    """A 4-band uint8 scene with straight and diagonal roads, a label raster and land cover.

    Roads are brighter and less green in NIR than the textured background, plus noise, so a
    small model learns them in a few steps. The top-left corner is nodata (0).
    """
    from pipeline.raster import write_geotiff

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    roads = np.zeros((size, size), bool)
    for _ in range(3):
        r = rng.integers(10, size - 10)
        roads[r - 2 : r + 2, :] = True
        c = rng.integers(10, size - 10)
        roads[:, c - 2 : c + 2] = True
    roads |= np.abs(xx - yy - rng.integers(-60, 60)) < 2
    landcover = ((xx // 64 + yy // 64 + seed) % 4).astype(np.uint8)
    base = np.stack(
        [60 + 20 * landcover, 90 + 10 * landcover, 50 + 15 * landcover, 150 - 20 * landcover]
    ).astype(float)
    road_colour = np.array([170, 165, 160, 90], float)[:, None, None]
    img = np.where(roads[None], road_colour, base) + rng.normal(0, 12, (4, size, size))
    img = np.clip(img, 1, 255).astype(np.uint8)
    nodata = (xx + yy) < 40
    img[:, nodata] = 0
    transform = Affine(1.0, 0, origin[0], 0, -1.0, origin[1])
    paths = {
        "image": folder / f"{name}.tif",
        "labels": folder / f"{name}.labels.tif",
        "landcover": folder / f"{name}.landcover.tif",
    }
    write_geotiff(
        paths["image"], img, crs=UTM, transform=transform, nodata=0, band_descriptions=BANDS
    )
    write_geotiff(paths["labels"], roads.astype(np.uint8), crs=UTM, transform=transform)
    lc = np.where(nodata, 255, landcover).astype(np.uint8)
    write_geotiff(
        paths["landcover"],
        lc,
        crs=UTM,
        transform=transform,
        nodata=255,
        tags={"CLASSES": "forest,cropland,grassland,water"},
    )
    return {"name": name, **{k: str(v) for k, v in paths.items()}}


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    for i, name in enumerate(["s1", "s2", "s3", "held"]):
        make_scene(folder, name, seed=i, origin=(500000.0 + i * 1000, 5400000.0))
    return folder


def scene_entries(folder: Path, names=("s1", "s2", "s3", "held")) -> list[dict]:
    out = []
    for name in names:
        out.append(
            {
                "name": name,
                "image": str(folder / f"{name}.tif"),
                "labels": str(folder / f"{name}.labels.tif"),
                "landcover": str(folder / f"{name}.landcover.tif"),
                "split": "test" if name == "held" else "auto",
            }
        )
    return out


@pytest.fixture(scope="session")
def chips_dir(tmp_path_factory, scenes_dir) -> Path:
    """Chips of the tiny scenes, cut by the real tile stage (64 px chips, spatial split)."""
    from pipeline.config import DataParams, TileParams
    from pipeline.tiling import run_tile

    out = tmp_path_factory.mktemp("chips")
    data = DataParams(scenes=scene_entries(scenes_dir), bands=BANDS)
    tile = TileParams(
        out_dir=out,
        chip_size=64,
        stride=64,
        workers=1,
        split={"block_size_m": 128, "val_fraction": 0.25, "gap_m": 0},
    )
    run_tile(data, tile, workers=1, progress=False)
    return out


@pytest.fixture
def local_clusters_started(monkeypatch) -> list[tuple]:
    """Records every ``parallel.local_cluster`` started (its arguments); the real one runs."""
    from pipeline import parallel

    started: list[tuple] = []
    real_local_cluster = parallel.local_cluster

    def counting_local_cluster(*args, **kwargs):
        started.append(args)
        return real_local_cluster(*args, **kwargs)

    monkeypatch.setattr(parallel, "local_cluster", counting_local_cluster)
    return started
