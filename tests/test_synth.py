"""Synthetic scenes: file formats, determinism, plausible content, and that they are hard."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from pipeline import raster, vectors
from pipeline.config import SynthParams, SynthSceneSpec
from pipeline.synth import (
    LANDCOVER_CLASSES,
    ROAD_WIDTH_M,
    SceneFiles,
    generate_scene,
    road_table,
    run_synth,
)

SIZE = 512
ORIGIN = (500000.0, 5400000.0)


def _params(out_dir, scenes, **kw) -> SynthParams:
    return SynthParams(
        out_dir=out_dir,
        scenes=[SynthSceneSpec(name=n, seed=s) for n, s in scenes],
        size=kw.pop("size", SIZE),
        origin=ORIGIN,
        **kw,
    )


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[SynthParams, list[SceneFiles]]:
    params = _params(tmp_path_factory.mktemp("synth"), [("a", 1), ("b", 2)])
    return params, run_synth(params)


def _image(files: SceneFiles) -> np.ndarray:
    return np.stack([raster.read_band_array(files.image, b) for b in range(1, 5)])


def _labels(files: SceneFiles) -> np.ndarray:
    info = raster.raster_info(files.image)
    polys = vectors.load_road_polygons(
        files.roads,
        info.crs,
        width_attribute="width_m",
        default_half_width_m=2.0,
        bounds=info.bounds,
    )
    return vectors.burn_mask(polys, info.transform, (info.height, info.width))


def test_run_synth_writes_four_files_per_scene_and_no_leftovers(scenes):
    params, files = scenes
    assert [f.image.name for f in files] == ["a.tif", "b.tif"]
    written = sorted(p.name for p in params.out_dir.iterdir())
    kinds = ("tif", "roads.gpkg", "landcover.tif", "negatives.gpkg")
    assert written == sorted(f"{name}.{kind}" for name in "ab" for kind in kinds)


def test_the_railway_is_written_as_hard_negatives_on_its_ballast(scenes):
    """Scene a (seed 1) has two railway lines, b none: a's negatives band covers the painted
    ballast bed (grey, flat, not road), b's file has no rows and marks nothing."""
    from pipeline.config import DataParams, SceneSource
    from pipeline.synth.roads import RAILWAY_NEGATIVE_WIDTH_M

    params, files = scenes
    a = gpd.read_file(files[0].negatives)
    assert a.crs.to_epsg() == 4326 and list(a["kind"]) == ["railway", "railway"]
    assert (a["width_m"] == RAILWAY_NEGATIVE_WIDTH_M).all()
    assert len(gpd.read_file(files[1].negatives)) == 0
    data = DataParams(scenes=[{"name": "x", "image": files[0].image, "roads": files[0].roads}])
    masks = {}
    for f in files:
        scene = SceneSource(name=f.image.stem, image=f.image, roads=f.roads, negatives=f.negatives)
        info = raster.raster_info(f.image)
        polygons = vectors.load_scene_negatives(scene, data, info)
        masks[f.image.stem] = (
            None if polygons is None else vectors.burn_mask(polygons, info.transform, (SIZE, SIZE))
        )
    assert masks["b"] is None
    band = masks["a"].astype(bool) & ~_labels(files[0]).astype(bool)
    assert band.sum() > 2 * 400 * 4  # two lines across a 512 m scene, ~5 px wide
    image = _image(files[0]).astype(float)
    # ballast: grey (bands close to each other), brighter in red than the vegetation beside it
    centre = image[:3, band].std(axis=0).mean()
    assert centre < image[:3, ~band].std(axis=0).mean()


def test_image_grid_bands_and_nodata_read_back(scenes):
    params, files = scenes
    for index, f in enumerate(files):
        with rasterio.open(f.image) as ds:
            assert ds.crs == rasterio.crs.CRS.from_string("EPSG:32632")
            x0 = ORIGIN[0] + index * (SIZE * params.gsd + 1000.0)
            assert ds.transform == Affine(1.0, 0.0, x0, 0.0, -1.0, ORIGIN[1])
            assert (ds.width, ds.height, ds.count) == (SIZE, SIZE, 4)
            assert ds.dtypes == ("uint8",) * 4
            assert ds.descriptions == ("red", "green", "blue", "nir")
            assert ds.nodata == 0
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"


def test_scenes_do_not_overlap(scenes):
    _, files = scenes
    a, b = (shapely.box(*raster.raster_info(f.image).bounds) for f in files)
    assert not a.intersects(b)


def test_nodata_only_outside_a_footprint_and_never_inside(scenes):
    _, files = scenes
    img = _image(files[0])
    zero = img == 0
    assert np.array_equal(zero.any(axis=0), zero.all(axis=0))  # no valid pixel has a 0 band
    nodata = zero[0]
    assert 0.01 < nodata.mean() < 0.35
    assert nodata[0, 0] or nodata[0, -1] or nodata[-1, 0] or nodata[-1, -1]
    assert not nodata[SIZE // 2 - 50 : SIZE // 2 + 50, SIZE // 2 - 50 : SIZE // 2 + 50].any()


def test_uint16_scene_without_border_has_no_zero_pixel(tmp_path):
    params = _params(tmp_path, [("u16", 5)], size=256, dtype="uint16", nodata_border=False, gsd=0.5)
    img = _image(generate_scene(params.scenes[0], params, 0))
    assert img.dtype == np.uint16
    assert img.min() >= 1 and img.max() > 255


def test_same_seed_same_bytes_different_seed_different(scenes, tmp_path):
    params, files = scenes
    again = params.model_copy(update={"out_dir": tmp_path})
    rerun = generate_scene(params.scenes[0], again, 0)
    assert rerun.image.read_bytes() == files[0].image.read_bytes()
    assert rerun.landcover.read_bytes() == files[0].landcover.read_bytes()
    # the GeoPackage too, byte for byte (GDAL writes the time of writing into it unless told)
    assert rerun.roads.read_bytes() == files[0].roads.read_bytes()
    assert files[1].image.read_bytes() != files[0].image.read_bytes()
    other_seed = params.model_copy(
        update={"out_dir": tmp_path / "other", "scenes": [SynthSceneSpec(name="a", seed=99)]}
    )
    assert (
        generate_scene(other_seed.scenes[0], other_seed, 0).image.read_bytes()
        != files[0].image.read_bytes()
    )


def test_road_centrelines_are_in_epsg4326_with_attributes(scenes):
    _, files = scenes
    for f in files:
        roads = gpd.read_file(f.roads, layer="roads")
        assert roads.crs.to_epsg() == 4326
        assert set(roads.geom_type) == {"LineString"}
        assert {"road_class", "width_m", "bridge"} <= set(roads.columns)
        assert roads.bridge.dtype == bool
        assert set(roads.road_class) <= set(ROAD_WIDTH_M)
        for cls, width in zip(roads.road_class, roads.width_m, strict=True):
            lo, hi = ROAD_WIDTH_M[cls]
            assert lo <= width <= hi
        assert roads.road_class.nunique() >= 3


def test_roads_cover_a_plausible_fraction(scenes):
    _, files = scenes
    for f in files:
        assert 0.03 <= _labels(f).mean() <= 0.25


def test_roads_are_painted_where_the_labels_are(scenes):
    """Road pixels are mostly unvegetated; the same mask shifted off the roads is not."""
    _, files = scenes
    for f in files:
        img = _image(f).astype(float)
        ndvi = (img[3] - img[0]) / (img[3] + img[0] + 1e-6)
        bare = ndvi < np.quantile(ndvi[img[0] > 0], 0.5)
        label = _labels(f).astype(bool)
        label[img[0] == 0] = False
        shifted = np.roll(label, (9, 9), axis=(0, 1)) & ~label & (img[0] > 0)
        assert bare[label].mean() > bare[shifted].mean() + 0.15


def test_landcover_raster(scenes):
    _, files = scenes
    for f in files:
        info = raster.raster_info(f.landcover)
        assert (info.dtype, info.nodata, info.count) == ("uint8", 255, 1)
        assert info.transform == raster.raster_info(f.image).transform
        assert raster.landcover_classes(f.landcover) == LANDCOVER_CLASSES
        lc = raster.read_band_array(f.landcover)
        assert np.array_equal(lc == 255, _image(f)[0] == 0)
        present = set(np.unique(lc[lc != 255]).tolist())
        assert present <= set(range(len(LANDCOVER_CLASSES)))
        assert len(present) >= 5


def test_roads_crossing_water_become_bridges():
    water = shapely.box(40, -200, 60, 0)
    lines = [(shapely.LineString([(0, -100), (100, -100)]), "secondary")]
    table = road_table(np.random.default_rng(0), lines, 200.0, water)
    bridges = table[table.bridge]
    assert len(table) == 3 and len(bridges) == 1
    assert bridges.geometry.iloc[0].bounds == pytest.approx(
        (37.0, -100, 63.0, -100)
    )  # 3 m past the banks
    assert table.width_m.nunique() == 1  # one road, one width


def test_a_per_pixel_linear_classifier_cannot_find_the_roads(scenes, tmp_path):
    """Issue 3: band values alone must not give roads. The baseline evaluate reports
    (pipeline/baseline.py: logistic regression on raw bands, fitted on the train chips of
    scene a as the tile stage cuts them) stays under road IoU 0.35 on the whole of scene b."""
    from pipeline.baseline import MAX_BASELINE_IOU, fit_baseline, score_scene
    from pipeline.config import DataParams, TileParams
    from pipeline.tiling import run_tile

    _, files = scenes
    data = DataParams(
        scenes=[
            {"name": f.image.stem, "image": str(f.image), "roads": str(f.roads), "split": split}
            for f, split in zip(files, ("train", "test"), strict=True)
        ]
    )
    tile = TileParams(out_dir=tmp_path / "chips", chip_size=64, stride=64)
    run_tile(data, tile, workers=1, progress=False)
    fitted = fit_baseline(tile.out_dir)
    assert fitted.train_iou > 0.1  # it did learn something on its own scene
    iou = score_scene(fitted, data.scenes[1], data).iou
    assert iou < MAX_BASELINE_IOU, (
        f"per-pixel logistic regression reaches road IoU {iou:.3f}: scenes too easy"
    )


def test_no_synthetic_scenes_still_gives_the_stage_its_output_folder(tmp_path):
    """A project on its own rasters sets synth.scenes: [] and `dvc repro` still finds data/scenes."""
    out = tmp_path / "data" / "scenes"
    assert run_synth(SynthParams(out_dir=out, scenes=[])) == []
    assert out.is_dir() and not any(out.iterdir())
