"""Normalisation that travels: the tile stage records each scene's band percentiles and the
train statistics after the stretch; ``train.normalisation: percentile`` trains on them and
stores the choice in the model (real chips from the real tile stage, a real training run)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import raster
from pipeline.config import load_params
from pipeline.datasets import (
    Normalisation,
    SegmentationChips,
    chip_normalisation,
    read_chip_index,
    read_stats,
)
from pipeline.model import load_model
from pipeline.normalise import percentile_stretch, standardise
from tests.conftest import BANDS
from tests.test_train import write_params


def test_tile_records_scene_percentiles_and_the_stretched_train_statistics(
    chips_dir, scenes_dir
) -> None:
    stats = read_stats(chips_dir)
    index = read_chip_index(chips_dir)
    total, total_sq, count = np.zeros(4), np.zeros(4), 0
    for scene, bands in stats["percentiles"].items():
        image = scenes_dir / f"{scene}.tif"
        expected = raster.band_percentiles(image, raster.band_plan(image, BANDS))
        assert bands == [list(b) for b in expected]
        lo, hi = np.asarray(bands).T
        rows = index[(index.scene == scene) & (index.split == "train")]
        images = np.load(chips_dir / f"{scene}.images.npy")[rows.array_index.to_numpy()]
        masks = np.load(chips_dir / f"{scene}.masks.npy")[rows.array_index.to_numpy()]
        px = images.transpose(1, 0, 2, 3)[:, masks != 255].astype(np.float64)
        px = (px - lo[:, None]) / (hi - lo)[:, None]
        total += px.sum(axis=1)
        total_sq += (px * px).sum(axis=1)
        count += px.shape[1]
    mean = total / count
    assert stats["percentile_mean"] == pytest.approx(mean.tolist(), rel=1e-9)
    assert stats["percentile_std"] == pytest.approx(
        np.sqrt(total_sq / count - mean**2).tolist(), rel=1e-6
    )
    assert 0.2 < min(mean) and max(mean) < 0.8  # the stretch maps each scene to about 0..1


def test_percentile_chips_are_stretched_by_their_own_scene(chips_dir) -> None:
    stats = read_stats(chips_dir)
    norm, mean, std = chip_normalisation(stats, "percentile", chips_dir / "stats.json")
    assert mean == stats["percentile_mean"] and std == stats["percentile_std"]
    ds = SegmentationChips(chips_dir, "train", norm)
    scene, j = ds.items[0]
    raw = np.load(chips_dir / f"{scene}.images.npy")[j].astype(np.float64)
    valid = np.load(chips_dir / f"{scene}.masks.npy")[j] != 255
    lo, hi = np.asarray(stats["percentiles"][scene]).T
    expected = (
        (raw - lo[:, None, None]) / (hi - lo)[:, None, None] - np.array(mean)[:, None, None]
    ) / np.array(std)[:, None, None]
    assert np.allclose(ds[0][0].numpy(), expected * valid, atol=1e-5)
    with pytest.raises(ValueError, match="re-run `pipeline tile`"):
        chip_normalisation({"mean": [0], "std": [1]}, "percentile", chips_dir / "stats.json")


@pytest.mark.slow
def test_percentile_training_stores_its_normalisation_in_the_model(
    tmp_path, scenes_dir, chips_dir, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = write_params(
        tmp_path,
        scenes_dir,
        chips_dir,
        epochs=1,
        max_batches_per_epoch=2,
        normalisation="percentile",
    )
    p = load_params(params)
    from pipeline.train import run_train

    run_train(p.train, p.tile, p.pretrain, p.register)
    _, config = load_model(p.train.out_dir)
    stats = read_stats(chips_dir)
    assert config.normalisation == "percentile"
    assert (config.mean, config.std) == (stats["percentile_mean"], stats["percentile_std"])


def test_nodata_pixels_are_zero_whatever_they_hold() -> None:
    """Float imagery often marks nodata with NaN: a chip's NaN must not reach the loss."""
    rng = np.random.default_rng(0)
    image = (rng.random((2, 8, 8)) * 200).astype(np.float32)
    image[:, :2, :3] = np.nan
    valid = np.ones((8, 8), bool)
    valid[:2, :3] = False
    mean, std = [90.0, 100.0], [40.0, 45.0]
    x = Normalisation.from_lists(mean, std).apply(image, valid)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert (x[:, ~valid] == 0).all()
    want = (image.astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.allclose(x[:, valid], want[:, valid], atol=1e-6)


def test_a_flat_band_is_stretched_without_dividing_by_zero() -> None:
    pixels = np.stack([np.full(100, 7.0), np.arange(100.0)])
    (lo0, hi0), (lo1, hi1) = percentile_stretch(pixels)
    assert (lo0, hi0) == (7.0, 8.0)
    assert (lo1, hi1) == pytest.approx((1.98, 97.02))
    image = pixels.reshape(2, 10, 10)
    x = standardise(
        image,
        np.zeros(2, np.float32),
        np.ones(2, np.float32),
        stretch=np.float32([[lo0, hi0], [lo1, hi1]]),
    )
    assert np.isfinite(x).all() and (x[0] == 0).all()
