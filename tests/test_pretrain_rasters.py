"""Unlabelled rasters as rotation-pretraining patches (pretrain.unlabelled)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from rasterio.transform import from_origin

from pipeline.config import PretrainParams
from pipeline.pretrain_rasters import RasterRotationPatches, valid_cells
from pipeline.raster import RasterError, write_geotiff

MEAN, STD = [100.0, 80.0, 60.0, 120.0], [20.0, 10.0, 5.0, 40.0]


def raster(path: Path, bands: int = 4, nodata_cell: bool = True) -> Path:
    """A 70 x 100 px raster: with 32 px cells a 2 x 3 grid (edges cut off), one cell with nodata."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (bands, 70, 100)).astype(np.uint8)
    if nodata_cell:
        image[:, 40, 70] = 0  # row 1, column 2 of the grid
    transform = from_origin(500000, 5400000, 1.0, 1.0)
    return write_geotiff(path, image, crs="EPSG:32632", transform=transform, nodata=0)


def test_cells_with_nodata_are_left_out(tmp_path: Path) -> None:
    path = raster(tmp_path / "u.tif")
    assert valid_cells(path, 32) == [(0, 0), (0, 32), (0, 64), (32, 0), (32, 32)]


def test_patches_are_normalised_and_turned(tmp_path: Path) -> None:
    path = raster(tmp_path / "u.tif")
    ds = RasterRotationPatches([path, path], 32, MEAN, STD)
    assert len(ds) == 2 * 5 * 4
    x0, y0 = ds[0]
    from pipeline.raster import open_reader

    with open_reader(path) as reader:
        image, _ = reader.read(0, 0, 32, 32)
    expected = (
        image.astype(np.float32) - np.asarray(MEAN, np.float32)[:, None, None]
    ) / np.asarray(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(x0.numpy(), expected, rtol=1e-6)
    for k in (1, 2, 3):
        xk, yk = ds[k]
        assert yk.item() == k
        torch.testing.assert_close(xk, torch.rot90(x0, k, dims=(1, 2)))


def test_other_bands_are_an_error_naming_the_file(tmp_path: Path) -> None:
    path = raster(tmp_path / "rgb.tif", bands=3)
    with pytest.raises(RasterError, match="rgb.tif: 3 bands, but the chips have 4"):
        RasterRotationPatches([path], 32, MEAN, STD)


def test_unlabelled_rasters_need_the_rotation_task(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="only task rotation learns from imagery"):
        PretrainParams(task="roads", unlabelled=[tmp_path / "u.tif"])
    assert PretrainParams(task="rotation", unlabelled=[tmp_path / "u.tif"]).unlabelled
