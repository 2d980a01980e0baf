"""Hard negatives: a scene's `negatives` vectors (railways, ...) marked in the chips as code 2,
weighed by train.negative_weight, background for everything else."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import LineString

from pipeline.chip_format import MASK_NEGATIVE, MASK_NODATA, read_chip_index, read_stats
from pipeline.config import DataParams, TileParams
from pipeline.datasets import Normalisation, SegmentationChips
from pipeline.tiling import TilingError, run_tile
from pipeline.vectors import burn_mask, load_scene_negatives
from tests.conftest import BANDS, UTM, scene_entries
from tests.test_label_noise import train_losses

WIDTH_M = 6.0


def _negatives_file(folder: Path, image: Path, lines: int = 1) -> Path:
    """A railway across the image (a diagonal, so it crosses the scene's roads), EPSG:4326."""
    with rasterio.open(image) as src:
        left, bottom, right, top = src.bounds
    geoms = [LineString([(left, top - 30), (right, bottom + 30)])][:lines]
    gdf = gpd.GeoDataFrame(
        {"kind": ["railway"] * len(geoms), "width_m": [WIDTH_M] * len(geoms)},
        geometry=gpd.GeoSeries(geoms, crs=UTM),
        crs=UTM,
    ).to_crs("EPSG:4326")
    path = folder / f"{image.stem}.negatives{lines}.gpkg"
    gdf.to_file(path, layer="negatives")
    return path


def _tile(out: Path, scenes_dir: Path, negatives: Path | None) -> DataParams:
    entries = scene_entries(scenes_dir, ("s1", "s2", "held"))
    entries[0]["negatives"] = None if negatives is None else str(negatives)
    data = DataParams(scenes=entries, bands=BANDS)
    tile = TileParams(
        out_dir=out, chip_size=64, stride=64, workers=1, split={"block_size_m": 128, "gap_m": 0}
    )
    run_tile(data, tile, workers=1, progress=False)
    return data


@pytest.fixture(scope="module")
def negative_chips(tmp_path_factory, scenes_dir) -> tuple[Path, Path, DataParams]:
    folder = tmp_path_factory.mktemp("negatives")
    path = _negatives_file(folder, scenes_dir / "s1.tif")
    data = _tile(folder / "chips", scenes_dir, path)
    return folder / "chips", path, data


def test_negatives_are_code_2_where_background_and_roads_win(negative_chips, scenes_dir):
    chips, _, data = negative_chips
    scene = data.scenes[0]
    with rasterio.open(scene.image) as src:
        info_transform = src.transform
    from pipeline.raster import raster_info

    polygons = load_scene_negatives(scene, data, raster_info(scene.image))
    index = read_chip_index(chips, geometry=False)
    masks = np.load(chips / "s1.masks.npy")
    with rasterio.open(scenes_dir / "s1.labels.tif") as lab:
        labels = lab.read(1)
    marked = crossed = 0
    for _, row in index[index.scene == "s1"].iterrows():
        r, c, s = int(row.row_off), int(row.col_off), int(row["size"])
        band = burn_mask(polygons, info_transform * Affine.translation(c, r), (s, s)) > 0
        mask, road = masks[int(row.array_index)], labels[r : r + s, c : c + s] == 1
        valid = mask != MASK_NODATA
        # code 2 exactly on the band's valid background; a road crossing it stays road
        np.testing.assert_array_equal(mask == MASK_NEGATIVE, band & valid & ~road)
        np.testing.assert_array_equal(mask == 1, road & valid)
        marked += int((mask == MASK_NEGATIVE).sum())
        crossed += int((band & road & valid).sum())
    # the 6 m band along a ~360 m diagonal, less roads and nodata; it crosses roads
    assert 1000 < marked < 6 * 400 and crossed > 0
    for other in ("s2", "held"):
        assert not (np.load(chips / f"{other}.masks.npy") == MASK_NEGATIVE).any()


def test_road_fraction_and_stats_ignore_the_negatives(negative_chips, tmp_path, scenes_dir):
    chips, _, _ = negative_chips
    _tile(tmp_path / "plain", scenes_dir, None)
    with_neg, plain = read_chip_index(chips, False), read_chip_index(tmp_path / "plain", False)
    np.testing.assert_array_equal(with_neg["road_fraction"], plain["road_fraction"])
    assert read_stats(chips)["mean"] == read_stats(tmp_path / "plain")["mean"]
    np.testing.assert_array_equal(
        np.load(chips / "s1.masks.npy") % MASK_NEGATIVE == 0,
        np.load(tmp_path / "plain/s1.masks.npy") % MASK_NEGATIVE == 0,
    )


def test_a_negatives_file_without_features_marks_nothing(tmp_path, scenes_dir):
    empty = gpd.GeoDataFrame(
        {"kind": [], "width_m": []}, geometry=gpd.GeoSeries([], crs="EPSG:4326"), crs="EPSG:4326"
    )
    path = tmp_path / "none.gpkg"
    empty.to_file(path, layer="negatives", geometry_type="LineString")
    _tile(tmp_path / "chips", scenes_dir, path)
    _tile(tmp_path / "plain", scenes_dir, None)
    for scene in ("s1", "s2", "held"):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"chips/{scene}.masks.npy"),
            np.load(tmp_path / f"plain/{scene}.masks.npy"),
        )


def test_a_missing_negatives_file_is_refused_naming_it(tmp_path, scenes_dir):
    with pytest.raises(
        TilingError, match=r"nowhere\.gpkg: file not found \(scene s1's negatives\)"
    ):
        _tile(tmp_path / "chips", scenes_dir, tmp_path / "nowhere.gpkg")
    assert not (tmp_path / "chips" / "index.gpkg").exists()


def test_dataset_weighs_negatives_and_leaves_image_and_target_alone(negative_chips):
    chips, _, _ = negative_chips
    stats = read_stats(chips)
    norm = Normalisation.from_lists(stats["mean"], stats["std"])
    kw = dict(augment=True, seed=3, scale_jitter=0.2)
    plain = SegmentationChips(chips, "train", norm, **kw)
    weighted = SegmentationChips(chips, "train", norm, negative_weight=3.0, **kw)
    index = read_chip_index(chips, geometry=False)
    train = index[index.split == "train"].sort_values(["scene", "array_index"]).reset_index()
    with_band = [i for i, row in train.iterrows() if row.scene == "s1"]
    seen = 0
    for i in with_band:
        x0, y0, v0 = plain[i]
        x1, y1, v1 = weighted[i]
        assert x0.equal(x1) and y0.equal(y1)  # same augmentation; the image is not scaled
        assert set(v0.unique().tolist()) <= {0.0, 1.0}
        heavy = v1 == 3.0
        assert (y1[heavy] == 0).all() and v0[heavy].eq(1).all()
        assert v1[~heavy].equal(v0[~heavy])
        seen += int(heavy.sum())
    assert seen > 500


def test_training_takes_the_weight(tmp_path, scenes_dir, negative_chips, monkeypatch):
    """Two epochs of every train chip with negative_weight 1 and 5: the weighted loss differs
    from the first epoch (the band's pixels count five times), and the run records the weight."""
    chips, _, _ = negative_chips
    losses = {}
    for weight in (1.0, 5.0):
        folder = tmp_path / f"w{weight:g}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        losses[weight] = train_losses(
            folder,
            scenes_dir,
            chips,
            precision="fp32",
            negative_weight=weight,
            max_batches_per_epoch=None,
        )
    assert all(abs(a - b) > 1e-4 for a, b in zip(losses[1.0], losses[5.0], strict=True))

    import mlflow

    from pipeline.config import load_params

    p = load_params(tmp_path / "w5/params.yaml")
    mlflow.set_tracking_uri(p.register.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["train.negative_weight"] == "5.0"
