"""Land-cover patch labelling and AlexNet's augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backbones.augment import PcaNoise
from pipeline.pretrain_data import PatchDataset, label_patches, read_chip_folder, resolve_task
from pipeline.pretrain_targets import ROAD_CLASSES
from tests.chipdata import ROAD_DRAWINGS, draw_road, write_chips


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory):
    return read_chip_folder(write_chips(tmp_path_factory.mktemp("chips")))


def test_majority_rule_at_sixty_percent() -> None:
    lc = np.zeros((10, 20), np.uint8)
    nodata = np.zeros_like(lc, dtype=bool)
    lc[0:5, 0:5].flat[:15] = 2  # 15/25 = 60% class 2 -> kept as 2
    lc[0:5, 5:10].flat[:14] = 1  # 14/25 = 56% class 1, 44% class 0 -> skipped
    lc[5:10, 5:10] = 1
    nodata[7, 7] = True  # one nodata pixel -> skipped
    lc[0:5, 10:15] = 2  # clean 100%
    out = label_patches(lc, nodata, patch=5, num_classes=3)
    assert out == [(0, 0, 2), (0, 10, 2), (0, 15, 0), (5, 0, 0), (5, 10, 0), (5, 15, 0)]


def test_unknown_class_value_raises() -> None:
    lc = np.full((4, 4), 7, np.uint8)
    with pytest.raises(ValueError, match="outside"):
        label_patches(lc, np.zeros((4, 4), bool), patch=2, num_classes=3)


def test_dataset_items_are_clean_normalised_patches(chips) -> None:
    ds = PatchDataset(chips, "train", input_size=32)
    assert len(ds) > 0
    mean = np.asarray(chips.stats["mean"], np.float32)[:, None, None]
    std = np.asarray(chips.stats["std"], np.float32)[:, None, None]
    for k, (scene, i, r, c, label) in enumerate(ds.items):
        lc = chips.landcover[scene][i, r : r + 32, c : c + 32]
        assert (lc != 255).all() and (chips.masks[scene][i, r : r + 32, c : c + 32] != 255).all()
        assert (lc == label).mean() >= 0.6
        x, y = ds[k]
        assert y.item() == label and x.shape == (4, 32, 32) and x.dtype == torch.float32
        expected = (
            chips.images[scene][i, :, r : r + 32, c : c + 32].astype(np.float32) - mean
        ) / std
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)
    # chip 0 has a nodata corner: its top-left patch must be absent
    assert ("s1", 0, 0, 0) not in {it[:4] for it in ds.items}
    val = PatchDataset(chips, "val", input_size=32)
    assert len(val) > 0 and not {it[1] for it in val.items} & {it[1] for it in ds.items}


def test_small_chips_are_resized_to_input_size(chips) -> None:
    ds = PatchDataset(chips, "train", input_size=96)  # chips are 64 px
    assert ds.patch == 64 and ds[0][0].shape == (4, 96, 96)


def test_pca_noise_follows_the_band_covariance() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    scales = np.array([3.0, 1.0, 0.5, 0.1])
    pixels = (rng.normal(size=(20000, 4)) * scales) @ basis.T
    pca = PcaNoise.fit(pixels)
    np.testing.assert_allclose(np.sort(pca.eigvals), np.sort(scales**2), rtol=0.05)
    draws = np.stack([pca.sample(rng) for _ in range(4000)])
    # noise = P (alpha * lambda), alpha ~ N(0, 0.1): its covariance is P diag(0.01 lambda^2) P^T
    expected = pca.eigvecs @ np.diag(0.01 * pca.eigvals**2) @ pca.eigvecs.T
    np.testing.assert_allclose(np.cov(draws, rowvar=False), expected, atol=0.02 * expected.max())


def test_alexnet_augmentations_change_pixels_not_labels(chips) -> None:
    plain = PatchDataset(chips, "train", input_size=32)
    aug = PatchDataset(chips, "train", input_size=32, augment=True, seed=3)
    aug.pca = PcaNoise.fit(aug.sample_pixels())
    assert aug.items == plain.items
    flipped = shifted = 0
    for k in range(len(plain)):
        x0, y0 = plain[k]
        x1, y1 = aug[k]
        assert y1 == y0 and x1.shape == x0.shape
        assert not torch.equal(x1, x0)
        # colour noise is one constant per band: remove it and look for a crop / flip of the patch
        centred = x1 - x1.mean(dim=(1, 2), keepdim=True)
        if torch.allclose(centred, (x0 - x0.mean(dim=(1, 2), keepdim=True)).flip(-1), atol=1e-4):
            flipped += 1
        elif not torch.allclose(centred, x0 - x0.mean(dim=(1, 2), keepdim=True), atol=1e-4):
            shifted += 1
    assert flipped > 0 and shifted > 0


def test_reading_needs_land_cover(tmp_path: Path) -> None:
    folder = write_chips(tmp_path)
    (folder / "s1.landcover.npy").unlink()
    with pytest.raises(ValueError, match="land cover"):
        read_chip_folder(folder)


@pytest.fixture(scope="module")
def road_chips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chips with drawn roads and no land cover (a user's labelled imagery)."""
    return write_chips(tmp_path_factory.mktemp("roads"), with_landcover=False, roads=True)


def test_auto_task_is_land_cover_where_it_exists_else_roads(road_chips_dir, tmp_path) -> None:
    assert resolve_task(write_chips(tmp_path), "auto") == "landcover"
    assert resolve_task(road_chips_dir, "auto") == "roads"
    assert resolve_task(road_chips_dir, "rotation") == "rotation"
    with pytest.raises(ValueError, match="no land-cover classes; use pretrain.task"):
        read_chip_folder(road_chips_dir, "landcover")


def test_road_patches_carry_the_class_of_their_drawing(road_chips_dir) -> None:
    chips = read_chip_folder(road_chips_dir, "roads")
    assert chips.classes == ROAD_CLASSES and not chips.landcover
    ds = PatchDataset(chips, "train", input_size=32)
    expected = {
        "none": "no road",
        "horizontal": "road E-W",
        "vertical": "road N-S",
        "cross": "junction",
    }
    seen = set()
    for k, (scene, i, r, c, label) in enumerate(ds.items):
        cell = chips.masks[scene][i, r : r + 32, c : c + 32]
        assert (cell != 255).all()
        drawing = next(d for d in ROAD_DRAWINGS if np.array_equal(cell, draw_road(32, d)))
        assert ROAD_CLASSES[label] == expected[drawing]
        assert ds[k][1].item() == label
        seen.add(drawing)
    assert seen == set(ROAD_DRAWINGS)
    # chip 0's nodata corner spoils its top-left cell
    assert ("s1", 0, 0, 0) not in {it[:4] for it in ds.items}


def test_a_flip_mirrors_the_road_direction(road_chips_dir) -> None:
    chips = read_chip_folder(road_chips_dir, "roads")
    aug = PatchDataset(chips, "train", input_size=32, augment=True, seed=0)
    aug.items = [
        ("s1", 1, 0, 0, ROAD_CLASSES.index("road NE-SW"))
    ]  # any cell: the label is what moves
    labels = {aug[0][1].item() for _ in range(20)}
    assert labels == {ROAD_CLASSES.index("road NE-SW"), ROAD_CLASSES.index("road NW-SE")}


def test_rotation_patches_are_turned_by_their_class(road_chips_dir) -> None:
    chips = read_chip_folder(road_chips_dir, "rotation")
    assert chips.classes == ["0°", "90°", "180°", "270°"]
    ds = PatchDataset(chips, "train", input_size=32)
    plain = PatchDataset(read_chip_folder(road_chips_dir, "roads"), "train", input_size=32)
    assert len(ds) == 4 * len(plain)
    x0, y0 = ds[0]
    assert y0.item() == 0
    for k in (1, 2, 3):
        xk, yk = ds[k]
        assert yk.item() == k and ds.items[k][:4] == ds.items[0][:4]
        torch.testing.assert_close(xk, torch.rot90(x0, k, dims=(1, 2)))
