"""The tile stage on real GeoTIFFs: chips, index, split without overlap, stats, determinism, errors."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import LineString

from pipeline import tiling
from pipeline.config import DataParams, TileParams
from pipeline.raster import write_geotiff
from pipeline.tiling import TilingError, check_scenes, plan_chips, run_tile, task_chunks
from tests.conftest import BANDS, UTM, make_scene, scene_entries

REFUSED_GRID = Affine(1, 0, 500000, 0, -1, 5400000)  # 1 m pixels in UTM, for the refused inputs


def test_index_describes_every_chip(chips_dir):
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    assert set(index.columns) >= {
        "chip_id",
        "scene",
        "array_index",
        "row_off",
        "col_off",
        "split",
        "road_fraction",
        "nodata_fraction",
        "geometry",
    }
    assert index.crs.to_epsg() == 32632
    assert index["chip_id"].is_unique
    for scene, rows in index.groupby("scene"):
        images = np.load(chips_dir / f"{scene}.images.npy", mmap_mode="r")
        masks = np.load(chips_dir / f"{scene}.masks.npy", mmap_mode="r")
        assert images.shape[1:] == (4, 64, 64) and images.dtype == np.uint8
        assert len(images) == len(masks) == len(rows)
        assert sorted(rows["array_index"]) == list(range(len(rows)))
    # footprints are the chip windows: 64 m squares at 1 m GSD
    assert np.allclose(index.geometry.area, 64 * 64)


def test_chips_match_the_source_raster(chips_dir, scenes_dir):
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    row = index[(index.scene == "s2") & (index.nodata_fraction == 0)].iloc[3]
    images = np.load(chips_dir / "s2.images.npy")
    masks = np.load(chips_dir / "s2.masks.npy")
    with (
        rasterio.open(scenes_dir / "s2.tif") as src,
        rasterio.open(scenes_dir / "s2.labels.tif") as lab,
    ):
        win = rasterio.windows.Window(row.col_off, row.row_off, 64, 64)
        assert np.array_equal(images[row.array_index], src.read(window=win))
        assert np.array_equal(masks[row.array_index], lab.read(1, window=win))


def test_splits_never_overlap_and_held_out_scene_is_test(chips_dir):
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    assert set(index[index.scene == "held"].split) == {"test"}
    auto = index[index.scene != "held"]
    assert {"train", "val"} <= set(auto.split)
    for _, group in auto.groupby("scene"):
        for (_, a), (_, b) in itertools.combinations(group.iterrows(), 2):
            if a.split != b.split:
                assert a.geometry.intersection(b.geometry).area == 0


def test_nodata_is_marked_in_masks_and_heavy_nodata_chips_skipped(chips_dir):
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    assert index.nodata_fraction.max() <= 0.5
    s1 = index[index.scene == "s1"]
    corner = s1[(s1.row_off == 0) & (s1.col_off == 0)]
    assert len(corner) == 1 and corner.nodata_fraction.iloc[0] > 0
    masks = np.load(chips_dir / "s1.masks.npy")
    images = np.load(chips_dir / "s1.images.npy")
    m = masks[corner.array_index.iloc[0]]
    assert np.array_equal(m == 255, (images[corner.array_index.iloc[0]] == 0).all(axis=0))


def test_stats_come_from_valid_train_pixels(chips_dir):
    stats = json.loads((chips_dir / "stats.json").read_text())
    index = gpd.read_file(chips_dir / "index.gpkg", layer="chips")
    pixels = []
    for _, r in index[index.split == "train"].iterrows():
        img = np.load(chips_dir / f"{r.scene}.images.npy", mmap_mode="r")[r.array_index]
        mask = np.load(chips_dir / f"{r.scene}.masks.npy", mmap_mode="r")[r.array_index]
        pixels.append(img[:, mask != 255].astype(float))
    px = np.concatenate(pixels, axis=1)
    assert np.allclose(stats["mean"], px.mean(axis=1), rtol=1e-6)
    assert np.allclose(stats["std"], px.std(axis=1), rtol=1e-4)
    assert stats["bands"] == BANDS
    assert stats["dtype"] == "uint8" and stats["gsd_m"] == 1.0  # carried into the model's config
    assert stats["landcover_classes"] == ["forest", "cropland", "grassland", "water"]
    assert stats["counts"]["test"] > 0


def test_whole_validation_scenes_with_val_fraction_zero(tmp_path, scenes_dir):
    """`split: val` scenes give every val chip, val_fraction 0 leaves every other block to
    train, and the normalisation stats stay those of the train chips."""
    entries = scene_entries(scenes_dir)
    entries[2]["split"] = "val"  # s3 held out whole for validation
    data = DataParams(scenes=entries, bands=BANDS)
    tile = TileParams(
        out_dir=tmp_path,
        chip_size=64,
        stride=64,
        workers=1,
        split={"block_size_m": 128, "val_fraction": 0.0, "gap_m": 32},
    )
    stats = run_tile(data, tile, workers=1, progress=False)
    index = gpd.read_file(tmp_path / "index.gpkg", layer="chips")
    assert set(index[index.scene == "s3"].split) == {"val"}
    assert set(index[index.scene.isin(["s1", "s2"])].split) == {"train"}
    assert set(index[index.scene == "held"].split) == {"test"}
    # no block of s1/s2 is pulled in for a gap: as many chips as a whole-scene grid gives
    whole = index[index.scene.isin(["s3", "held"])].groupby("scene").size()
    assert index[index.scene == "s1"].shape[0] == index[index.scene == "s2"].shape[0] == whole.max()
    assert stats["counts"] == {
        "train": int((index.split == "train").sum()),
        "val": int((index.split == "val").sum()),
        "test": int((index.split == "test").sum()),
    }


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def mixed_scenes(tmp_path_factory, scenes_dir) -> DataParams:
    """s1 and held with label rasters, plus "r": s2's image with road centrelines in
    EPSG:4326 (so the vector path, reprojection and the per-worker roads cache are tiled too)."""
    folder = tmp_path_factory.mktemp("roads")
    with rasterio.open(scenes_dir / "s2.tif") as src:
        left, bottom, right, top = src.bounds
    lines = [
        LineString([(left, bottom + f * (top - bottom)), (right, top - f * (top - bottom))])
        for f in (0.2, 0.6)
    ]
    lines.append(LineString([(left + 100, bottom), (left + 100, top)]))
    roads = gpd.GeoDataFrame({"width_m": [6.0, 4.0, 8.0]}, geometry=lines, crs=UTM).to_crs(
        "EPSG:4326"
    )
    roads.to_file(folder / "r.roads.gpkg", layer="roads")
    entries = scene_entries(scenes_dir, ("s1", "held"))
    entries.insert(
        1, {"name": "r", "image": str(scenes_dir / "s2.tif"), "roads": str(folder / "r.roads.gpkg")}
    )
    return DataParams(scenes=entries, bands=BANDS)


def _tile(out, **kw) -> TileParams:
    return TileParams(out_dir=out, chip_size=64, stride=32, split={"block_size_m": 128}, **kw)


def test_tiling_is_byte_identical_whatever_the_workers_and_task_size(
    tmp_path, mixed_scenes, caplog
):
    """One task per scene in this process vs 3-chip tasks on two Dask workers, two in flight:
    chips, index and stats are the same bytes."""
    plans = plan_chips(mixed_scenes, _tile(tmp_path), check_scenes(mixed_scenes))
    assert all(
        len(task_chunks(chips, 3)) >= 10 for chips in plans.values()
    )  # scenes really are split
    run_tile(
        mixed_scenes, _tile(tmp_path / "one"), workers=1, chips_per_task=10_000, progress=False
    )
    with caplog.at_level(logging.DEBUG, logger="pipeline.tiling"):
        run_tile(
            mixed_scenes,
            _tile(tmp_path / "two"),
            workers=2,
            chips_per_task=3,
            max_in_flight=2,
            progress=False,
        )
    one, two = _digest(tmp_path / "one"), _digest(tmp_path / "two")
    assert {"index.gpkg", "stats.json", "r.images.npy", "r.masks.npy", "s1.landcover.npy"} <= set(
        one
    )
    assert one == two
    # the roads of scene r were read once per worker, not once per task
    built = re.search(r"r: \d+ chips from (\d+) tasks, roads built (\d+) times", caplog.text)
    assert built and int(built[1]) >= 10 and 1 <= int(built[2]) <= 2
    masks = np.load(tmp_path / "two" / "r.masks.npy")
    assert 0.02 < (masks == 1).mean() < 0.5  # the vector roads were burned


def test_roads_are_built_once_per_scene_in_one_process(tmp_path, mixed_scenes):
    before = tiling.ROADS_LOADS
    run_tile(mixed_scenes, _tile(tmp_path), workers=1, chips_per_task=2, progress=False)
    assert tiling.ROADS_LOADS - before == 1  # one scene with roads, dozens of tasks
    assert not tiling._ROADS  # and not kept after the stage


def test_progress_bar_counts_chips(tmp_path, mixed_scenes, capsys):
    total = sum(
        len(c)
        for c in plan_chips(mixed_scenes, _tile(tmp_path), check_scenes(mixed_scenes)).values()
    )
    run_tile(mixed_scenes, _tile(tmp_path), workers=2, chips_per_task=8, progress=True)
    err = capsys.readouterr().err
    assert "tile" in err and f"{total}/{total}" in err and "chip" in err


def test_a_failing_task_names_the_file_and_leaves_no_partial_arrays(tmp_path, scenes_dir):
    """A task that fails on a worker stops the stage with the worker's error; no .npy is left."""
    bad = tmp_path / "bad.roads.gpkg"
    bad.write_text("not a geopackage")
    entries = scene_entries(scenes_dir, ("s1", "held"))
    entries.append({"name": "bad", "image": str(scenes_dir / "s3.tif"), "roads": str(bad)})
    out = tmp_path / "chips"
    with pytest.raises(Exception, match="bad.roads.gpkg"):
        run_tile(
            DataParams(scenes=entries, bands=BANDS),
            _tile(out),
            workers=2,
            chips_per_task=4,
            progress=False,
        )
    assert not list(out.glob("bad.*.npy")) and not list(out.glob(".*.raw"))


def test_image_without_crs_is_refused_naming_the_file(tmp_path, scenes_dir):
    bad = tmp_path / "nocrs.tif"
    write_geotiff(bad, np.ones((4, 64, 64), np.uint8), crs=None, transform=REFUSED_GRID)
    entries = scene_entries(scenes_dir, ("s1",))
    entries[0]["image"] = str(bad)
    with pytest.raises(TilingError, match="nocrs.tif: image has no CRS"):
        check_scenes(DataParams(scenes=entries, bands=BANDS))


def test_band_count_mismatch_is_refused(tmp_path, scenes_dir):
    three = tmp_path / "rgb.tif"
    write_geotiff(three, np.ones((3, 64, 64), np.uint8), crs=UTM, transform=REFUSED_GRID)
    entries = scene_entries(scenes_dir, ("s1",))
    entries.append(
        {"name": "rgb", "image": str(three), "labels": str(scenes_dir / "s1.labels.tif")}
    )
    with pytest.raises(TilingError, match="rgb.tif: has 3 band"):
        check_scenes(DataParams(scenes=entries, bands=BANDS))


def test_mixed_sample_types_are_refused(tmp_path, scenes_dir):
    deep = tmp_path / "deep.tif"
    write_geotiff(deep, np.ones((4, 64, 64), np.uint16), crs=UTM, transform=REFUSED_GRID)
    entries = scene_entries(scenes_dir, ("s1",))
    entries.append(
        {"name": "deep", "image": str(deep), "labels": str(scenes_dir / "s1.labels.tif")}
    )
    with pytest.raises(TilingError, match=r"deep.tif: sample type uint16, but .*s1.tif is uint8"):
        check_scenes(DataParams(scenes=entries, bands=BANDS))


def test_label_raster_on_another_grid_is_refused(tmp_path):
    scene = make_scene(tmp_path, "x", seed=5)
    shifted = tmp_path / "shifted.tif"
    write_geotiff(
        shifted,
        np.ones((256, 256), np.uint8),
        crs=UTM,
        transform=Affine(1, 0, 500010, 0, -1, 5400000),
    )
    entry = {"name": "x", "image": scene["image"], "labels": str(shifted)}
    with pytest.raises(TilingError, match="shifted.tif: label raster is on another grid"):
        check_scenes(DataParams(scenes=[entry], bands=BANDS))


def _finer_copy(scene: dict, folder: Path, name: str, rows: int = 2) -> dict:
    """``scene`` (1 m) at 0.5 m: every pixel of image, labels and land cover as ``rows`` x 2
    (``rows=1``: pixels 1 m tall and 0.5 m wide)."""
    fine = {"name": name}
    for key in ("image", "labels", "landcover"):
        with rasterio.open(scene[key]) as src:
            data, t, crs, nodata = src.read(), src.transform, src.crs, src.nodata
            descriptions = list(src.descriptions) if key == "image" else None
        data = np.kron(data, np.ones((1, rows, 2), data.dtype))
        grid = Affine(t.a / 2, 0, t.c, 0, t.e / rows, t.f)
        fine[key] = folder / f"{name}.{key}.tif"
        write_geotiff(
            fine[key], data, crs=crs, transform=grid, nodata=nodata, band_descriptions=descriptions
        )
    return fine


def test_scenes_at_another_pixel_size_are_chipped_at_the_models(tmp_path):
    """A 0.5 m copy of a 1 m scene beside two 1 m scenes is chipped resampled to 1 m (the
    median): the same chips as its 1 m original, and stats.json says so; with `resample:
    false` it is chipped at 0.5 m, four times the chips."""
    a = make_scene(tmp_path, "a", seed=1)
    b = make_scene(tmp_path, "b", seed=2, origin=(501000.0, 5400000.0))
    fine = _finer_copy(a, tmp_path, "fine")
    scenes = [{**s, "split": "train"} for s in (a, b, fine)]
    data = DataParams(scenes=scenes, bands=BANDS)
    stats = run_tile(data, _tile(tmp_path / "on"), workers=1, progress=False)
    assert stats["gsd_m"] == 1.0 and stats["resampled"] == {"fine": 0.5}
    chips = tmp_path / "on"
    for kind in ("images", "masks"):
        np.testing.assert_array_equal(
            np.load(chips / f"fine.{kind}.npy"), np.load(chips / f"a.{kind}.npy")
        )
    off = run_tile(data, _tile(tmp_path / "off", resample=False), workers=1, progress=False)
    assert off["gsd_m"] == 1.0 and off["resampled"] == {}
    n = len(np.load(chips / "a.masks.npy"))
    assert n == 49  # 256 px at 64 px chips, a 32 px stride
    assert len(np.load(tmp_path / "off" / "fine.masks.npy")) > 3 * n


def test_pixels_taller_than_wide_are_chipped_square(tmp_path, caplog):
    """A copy of a 1 m scene with pixels 0.5 m wide and 1 m tall (an EPSG:4326 export's
    are such, away from the equator) is chipped through a VRT with square 1 m pixels: the
    chips of its original; with `resample: false` as it is, and the tile stage says so."""
    a = make_scene(tmp_path, "a", seed=1)
    wide = _finer_copy(a, tmp_path, "wide", rows=1)
    data = DataParams(scenes=[{**s, "split": "train"} for s in (a, wide)], bands=BANDS)
    stats = run_tile(data, _tile(tmp_path / "on", pixel_size_m=1.0), workers=1, progress=False)
    assert stats["resampled"] == {"wide": pytest.approx(0.7071, abs=1e-4)}
    with rasterio.open(tmp_path / "on" / "resampled" / "wide.image.vrt") as vrt:
        assert (vrt.width, vrt.height, vrt.res) == (256, 256, (1.0, 1.0))
    for kind in ("images", "masks"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "on" / f"wide.{kind}.npy"),
            np.load(tmp_path / "on" / f"a.{kind}.npy"),
        )
    with caplog.at_level("WARNING", logger="pipeline.tiling"):
        run_tile(data, _tile(tmp_path / "off", resample=False), workers=1, progress=False)
    assert "wide.image.tif: pixels are 0.5 m wide and 1 m tall on the ground" in caplog.text
    assert "warp it to square pixels first (gdalwarp -t_srs EPSG:32632 -tr 0.707" in caplog.text


def test_a_declared_pixel_size_resamples_every_scene_to_it(tmp_path):
    a = make_scene(tmp_path, "a", seed=1)
    stats = run_tile(
        DataParams(scenes=[{**a, "split": "train"}], bands=BANDS),
        _tile(tmp_path / "chips", pixel_size_m=2.0),
        workers=1,
        progress=False,
    )
    assert stats["gsd_m"] == 2.0 and stats["resampled"] == {"a": 1.0}
    with rasterio.open(tmp_path / "chips" / "resampled" / "a.image.vrt") as vrt:
        assert (vrt.width, vrt.height, vrt.res) == (128, 128, (2.0, 2.0))
    with pytest.raises(ValueError, match="pixel_size_m is the size scenes are resampled to"):
        TileParams(out_dir=tmp_path, pixel_size_m=2.0, resample=False)
