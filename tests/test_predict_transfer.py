"""Imagery from another source at predict: a raster finer or coarser than the model's ``gsd_m``
is resampled window by window and its probability comes back on the raster's own grid; a
model trained with percentile normalisation sees a darker sensor's raster as it saw its
training imagery (real GeoTIFFs, a real U-Net, real Dask clusters)."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyproj
import pytest
from affine import Affine

from pipeline import raster
from pipeline.config import PredictOptions
from pipeline.model_config import read_config
from pipeline.predict import pixel_scale, predict_raster
from tests.helpers import MEAN, STD, make_model, read, smooth_image, write_raster

FINE = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5400000.0)
COARSE = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5400000.0)


@pytest.fixture(scope="module")
def metre_model(tmp_path_factory) -> Path:
    """A random-weight model trained (so its config says) at 1.0 m."""
    folder = make_model(tmp_path_factory.mktemp("model") / "unet", seed=1)
    cfg = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**cfg, "gsd_m": 1.0}))
    return folder


def fine_image() -> np.ndarray:
    """256 x 320 px at 0.5 m, smooth at the scale of a 1 m model, nodata (0) in a corner."""
    img = smooth_image(128, 160)
    img = np.kron(img, np.ones((1, 2, 2)))  # 2 x 2 blocks: its 1 m average is exact
    img = img.astype(np.uint8)
    img[:, :40, :60] = 0
    return img


@pytest.mark.slow
def test_a_finer_raster_is_predicted_at_the_models_pixel_size_on_its_own_grid(
    metre_model, scheduler, tmp_path
) -> None:
    data = fine_image()
    fine = write_raster(tmp_path / "fine.tif", data, nodata=0)
    kw = dict(model=metre_model, window=64, overlap=16, progress=False)
    res = predict_raster(
        fine, tmp_path / "a.tif", PredictOptions(scheduler=scheduler, windows_per_task=5, **kw)
    )
    a, prof = read(res.output)
    # (a) the input's grid, CRS and nodata; the model ran at 1 m: 128 px windows of the raster
    assert (prof["height"], prof["width"], prof["transform"]) == (256, 320, FINE)
    assert prof["crs"].to_epsg() == 32632 and prof["tags"]["model_pixels_per_pixel"] == "0.5"
    assert prof["nodata"] == 255 and prof["scales"] == pytest.approx((1 / 254,))
    assert (a[:40, :60] == 255).all() and (a[40:, 60:] < 255).all()
    assert res.windows_run == 3 * 3  # 128 px windows at a 96 px stride
    # (b) the same pixels whatever the workers and task size
    b = read(
        predict_raster(
            fine,
            tmp_path / "b.tif",
            PredictOptions(workers=1, device="cpu", windows_per_task=1, **kw),
        ).output
    )[0]
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # (c) about what the model says on a 1 m copy, brought back to 0.5 m
    coarse_data = data.reshape(4, 128, 2, 160, 2).astype(float).mean(axis=(2, 4)).astype(np.uint8)
    coarse = write_raster(tmp_path / "coarse.tif", coarse_data, nodata=0, transform=COARSE)
    c = read(
        predict_raster(coarse, tmp_path / "c.tif", PredictOptions(scheduler=scheduler, **kw)).output
    )[0]
    c = np.kron(c, np.ones((2, 2), np.uint8))
    inside = (a < 255) & (c < 255)
    inside[:48, :] = inside[:, :68] = False  # away from the nodata edge, which moves by a pixel
    err = np.abs(a[inside].astype(float) - c[inside]) / 254
    assert err.mean() < 0.02 and np.quantile(err, 0.99) < 0.08
    # without resampling the model sees 0.5 m pixels: another answer, and a warning
    with pytest.warns(UserWarning, match=r"fine.tif: pixels are 0.50 m.*trained at 1.00 m"):
        d = read(
            predict_raster(
                fine, tmp_path / "d.tif", PredictOptions(scheduler=scheduler, resample=False, **kw)
            ).output
        )[0]
    assert np.abs(d[inside].astype(float) - c[inside]).mean() / 254 > 2 * err.mean()


@pytest.mark.slow
def test_pixels_taller_than_wide_are_resampled_each_way(metre_model, scheduler, tmp_path) -> None:
    """Pixels 1 m tall and 0.5 m wide (an EPSG:4326 export at 60 N has such pixels): each
    window is resampled to 1 m square pixels, so the model sees what it sees on a 1 m copy,
    and the probability comes back on the raster's own grid."""
    metre = smooth_image(128, 160)
    narrow = np.kron(metre, np.ones((1, 1, 2))).astype(np.uint8)  # each column twice
    tall = write_raster(
        tmp_path / "tall.tif", narrow, transform=Affine(0.5, 0, 500000, 0, -1.0, 5400000)
    )
    kw = dict(model=metre_model, window=64, overlap=16, progress=False)
    a, prof = read(
        predict_raster(tall, tmp_path / "a.tif", PredictOptions(scheduler=scheduler, **kw)).output
    )
    assert (prof["height"], prof["width"]) == (128, 320)
    assert prof["tags"]["model_pixels_per_pixel"] == "1 0.5"
    square = write_raster(tmp_path / "square.tif", metre.astype(np.uint8), transform=COARSE)
    c = read(
        predict_raster(square, tmp_path / "c.tif", PredictOptions(scheduler=scheduler, **kw)).output
    )[0]
    c = np.repeat(c, 2, axis=1)
    err = np.abs(a.astype(float) - c) / 254
    assert err.mean() < 0.02 and np.quantile(err, 0.99) < 0.08
    # read as square (the pixels' mean size, 0.71 m, is within 1.5 of the model's): another
    # answer, and a warning that says how to square them
    with pytest.warns(UserWarning, match=r"tall.tif: pixels are 0.5 m wide and 1 m tall"):
        d = read(
            predict_raster(
                tall,
                tmp_path / "d.tif",
                PredictOptions(scheduler=scheduler, resample=False, gsd_tolerance=1.5, **kw),
            ).output
        )[0]
    assert np.abs(d.astype(float) - c).mean() / 254 > 2 * err.mean()


def test_within_tolerance_or_without_gsd_nothing_is_resampled(metre_model, tmp_path) -> None:
    cfg = read_config(metre_model)
    near = write_raster(
        tmp_path / "near.tif",
        smooth_image(32, 32).astype(np.uint8),
        transform=Affine(1.2, 0, 500000, 0, -1.2, 5400000),
    )
    info = raster.raster_info(near)
    assert pixel_scale(near, info, cfg, "m") == (1.0, 1.0)
    assert pixel_scale(near, info, cfg, "m", tolerance=1.1) == pytest.approx((1.2, 1.2))
    assert pixel_scale(near, info, cfg.model_copy(update={"gsd_m": None}), "m") == (1.0, 1.0)
    # a declared pixel size is for rasters without georeferencing: the CRS's wins, said once
    with pytest.warns(UserWarning, match=r"near.tif: georeferenced, with 1.2 m pixels: --pixel"):
        assert pixel_scale(near, info, cfg, "m", tolerance=1.1, pixel_size_m=0.5) == pytest.approx(
            (1.2, 1.2)
        )


def test_a_raster_far_coarser_than_the_model_is_said(metre_model, tmp_path) -> None:
    """10 m pixels (Sentinel-2) for a 1 m model: resampled, with a warning that says what
    that costs; 3 m pixels: resampled without one."""
    cfg = read_config(metre_model)
    scales, said = {}, {}
    for size in (10.0, 3.0):
        coarse = write_raster(
            tmp_path / f"s{size:g}.tif",
            smooth_image(32, 32).astype(np.uint8),
            transform=Affine(size, 0, 500000, 0, -size, 5400000),
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scales[size] = pixel_scale(coarse, raster.raster_info(coarse), cfg, "m")
        said[size] = [str(w.message) for w in caught if w.category is UserWarning]
    assert scales == {10.0: (10.0, 10.0), 3.0: (3.0, 3.0)}
    assert said[3.0] == [] and len(said[10.0]) == 1
    assert said[10.0][0].startswith(f"{tmp_path / 's10.tif'}: pixels are 10 m, 10x the model's 1 m")
    assert "100 model pixels per raster pixel" in said[10.0][0]


def test_the_hint_for_a_raster_in_degrees_reprojects_to_its_utm_zone(metre_model, tmp_path) -> None:
    shutil.copytree(metre_model, tmp_path / "m")
    geo = write_raster(
        tmp_path / "geo.tif",
        smooth_image(32, 32).astype(np.uint8),
        crs="EPSG:4326",
        transform=Affine(4e-6, 0, 9.0, 0, -4e-6, 48.0),  # ~0.45 m, in zone 32 north
    )
    info = raster.raster_info(geo)
    hint = r"gdalwarp -t_srs EPSG:32632 -tr 1 1; the raster is in"
    # at 48 N square-degree pixels are 1.49x as tall as wide: that is said too
    with pytest.warns(UserWarning, match="read as square"), pytest.warns(UserWarning, match=hint):
        assert pixel_scale(geo, info, read_config(tmp_path / "m"), "m", resample=False) == (1, 1)


def test_a_web_mercator_raster_is_read_at_its_ground_pixel_size(metre_model, tmp_path) -> None:
    """EPSG:3857 "metres" are 1/cos(latitude) of a ground metre: at 48 N a 1.5 unit pixel is
    1.0 m (nothing to resample for a 1 m model), a 1 unit pixel 0.67 m (resampled)."""
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(9, 48)
    cfg = read_config(metre_model)
    scales = {}
    for unit in (1.5, 1.0):
        merc = write_raster(
            tmp_path / f"merc{unit}.tif",
            smooth_image(32, 32).astype(np.uint8),
            crs="EPSG:3857",
            transform=Affine(unit, 0, x0, 0, -unit, y0),
        )
        scales[unit] = pixel_scale(merc, raster.raster_info(merc), cfg, "m")
    assert scales[1.5] == (1.0, 1.0)  # a Mercator's pixels are square on the ground
    assert scales[1.0] == pytest.approx((math.cos(math.radians(48)),) * 2, rel=0.01)
    # without resampling, the hint warps to UTM in metres: -tr in Mercator units would be 1.49
    with pytest.warns(UserWarning, match=r"-t_srs EPSG:32632 -tr 1 1; the raster is in Mercator"):
        pixel_scale(merc, raster.raster_info(merc), cfg, "m", resample=False)


def test_pixels_far_from_square_are_resampled_or_said_with_a_warp_to_square(
    metre_model, tmp_path
) -> None:
    """Square-degree pixels at 60 N are twice as tall as wide on the ground: resampled each
    way to the model's pixel size, or said with --no-resample; at 10 N nearly square (1.02):
    read as they are, saying nothing."""
    cfg = read_config(metre_model)
    for lat, far in ((60.0, True), (10.0, False)):
        geo = write_raster(
            tmp_path / f"lat{lat:g}.tif",
            smooth_image(32, 32).astype(np.uint8),
            crs="EPSG:4326",
            transform=Affine(1e-5, 0, 9.0, 0, -1e-5, lat),
        )
        info = raster.raster_info(geo)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scale = pixel_scale(geo, info, cfg, "m")
            as_is = pixel_scale(geo, info, cfg, "m", resample=False)
        assert scale == (pytest.approx((1.11, 0.558), abs=0.005) if far else (1.0, 1.0))
        assert as_is == (1.0, 1.0)
        said = [str(w.message) for w in caught if "read as square" in str(w.message)]
        assert len(said) == int(far), said  # said only without resampling
        if far:
            assert said[0].startswith(f"{geo}: pixels are 0.558 m wide and 1.11 m tall")
            assert "gdalwarp -t_srs EPSG:32632 -tr 0.788 0.788" in said[0]


def _with(folder: Path, dest: Path, **fields) -> Path:
    shutil.copytree(folder, dest)
    cfg = json.loads((dest / "model.json").read_text())
    (dest / "model.json").write_text(json.dumps({**cfg, **fields}))
    return dest


@pytest.mark.slow
def test_a_percentile_model_sees_a_darker_flatter_copy_alike(
    metre_model, scheduler, tmp_path
) -> None:
    bright = smooth_image(96, 128)
    bright[:, :10, :10] = 0  # nodata stays out of the percentiles
    dark = np.where(bright > 0, bright * 0.4 + 5, 0)  # another sensor: darker, flatter
    kw = dict(window=64, overlap=16, scheduler=scheduler, progress=False)
    percentile = _with(
        metre_model,
        tmp_path / "p",
        normalisation="percentile",
        mean=[0.5] * 4,
        std=[0.3] * 4,
        gsd_m=None,
    )
    dataset = _with(metre_model, tmp_path / "d", gsd_m=None)
    out = {}
    for name, data in (("bright", bright), ("dark", dark)):
        img = write_raster(tmp_path / f"{name}.tif", data.astype(np.float32), nodata=0)
        for model in (percentile, dataset):
            res = predict_raster(
                img, tmp_path / f"{name}_{model.name}.tif", PredictOptions(model=model, **kw)
            )
            out[name, model.name] = read(res.output)[0].astype(float) / 254
    valid = out["bright", "p"] < 255 / 254
    assert (out["dark", "p"][~valid] == 255 / 254).all()
    same = np.abs(out["bright", "p"] - out["dark", "p"])[valid]
    other = np.abs(out["bright", "d"] - out["dark", "d"])[valid]
    assert same.max() <= 2 / 254 and other.mean() > 0.01  # mean/std alone: another answer


def test_band_percentiles_come_from_valid_pixels_of_the_planned_bands(tmp_path) -> None:
    data = np.zeros((2, 200, 300), np.uint16)
    data[0] = np.arange(300)[None] + 100  # 100 .. 399 along x
    data[1] = 7  # flat
    data[:, :, :50] = 0  # nodata
    path = write_raster(tmp_path / "p.tif", data, nodata=0)
    ((lo, hi), (flat_lo, flat_hi)) = raster.band_percentiles(path, raster.band_plan(path))
    assert lo == pytest.approx(150 + 0.02 * 249, abs=2) and hi == pytest.approx(
        150 + 0.98 * 249, abs=2
    )
    assert (flat_lo, flat_hi) == (7.0, 8.0)


@pytest.mark.filterwarnings("ignore:.*border of 0 on every band:UserWarning")  # said below
def test_a_tile_without_georeferencing_is_resampled_by_its_declared_pixel_size(
    metre_model, scheduler, tmp_path
) -> None:
    """Public tile sets ship as PNG/JPEG without georeferencing (DeepGlobe: 0.5 m). Declared
    with ``pixel_size_m`` such a tile is predicted as a georeferenced 0.5 m raster is, the
    output records the size for `pipeline network`, whose lengths are then metres; undeclared,
    the warning says what is assumed. No library warning about the missing CRS reaches the
    user beyond predict's own."""
    import warnings

    from PIL import Image

    from pipeline.config import NetworkParams
    from pipeline.network import build_network

    data = fine_image()
    png = tmp_path / "tile.png"
    Image.fromarray(np.moveaxis(data[:3], 0, -1)).save(png)
    model3 = make_model(
        tmp_path / "m3", MEAN[:3], STD[:3], seed=1, bands=["red", "green", "blue"], gsd_m=1.0
    )
    kw = dict(model=model3, window=64, overlap=16, progress=False, scheduler=scheduler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict_raster(
            png,
            tmp_path / "a.tif",
            PredictOptions(pixel_size_m=0.5, **kw),
            network=tmp_path / "a.gpkg",
        ).output
    said = [str(w.message) for w in caught]
    assert said[1:] == [f"{png}: raster has no CRS; the prediction will have none either"], said
    # the image's zero corner, which a PNG cannot declare as nodata
    assert said[0].startswith(f"{png}: 3% of it is a border of 0 on every band"), said
    a, prof = read(out)
    assert prof["crs"] is None and (prof["height"], prof["width"]) == (256, 320)
    assert prof["tags"]["model_pixels_per_pixel"] == "0.5" and prof["tags"]["pixel_size_m"] == "0.5"
    with pytest.warns(
        UserWarning, match=r"pixel size is unknown: it is read as the model's \(1 m\)"
    ):
        b = read(predict_raster(png, tmp_path / "b.tif", PredictOptions(**kw)).output)[0]
    assert read(tmp_path / "b.tif")[1]["tags"]["model_pixels_per_pixel"] == "1"
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1, (
        "0.5 m pixels seen as 1 m: another answer"
    )
    # the network of the declared output measures metres, not pixels
    import geopandas as gpd

    assert build_network(out, NetworkParams(threshold=0.5)).scale == (0.5, 0.5)
    edges = gpd.read_file(tmp_path / "a.gpkg", layer="edges")
    assert len(edges) and edges.crs is None
    assert edges["length_m"].to_numpy() == pytest.approx(0.5 * edges.geometry.length.to_numpy())


def test_a_declared_pixel_size_serves_rasters_with_no_metric_grid(metre_model, tmp_path) -> None:
    """Ground control points without a transform give no pixel size either: the declared one
    is used; without a CRS and --no-resample the hint resizes in pixels (gdalwarp -tr would
    do nothing there)."""
    import rasterio
    from rasterio.control import GroundControlPoint

    from pipeline.predict import raster_pixel_size

    gcps = [
        GroundControlPoint(row=r, col=c, x=500000 + c, y=5400000 - r)
        for r, c in ((0, 0), (0, 31), (31, 0), (31, 31))
    ]
    path = tmp_path / "gcps.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=32, height=32, count=4, dtype="uint8",
        gcps=gcps, crs="EPSG:32632", photometric="MINISBLACK",
    ) as ds:  # fmt: skip
        ds.write(smooth_image(32, 32).astype(np.uint8))
    info = raster.raster_info(path)
    assert info.gcps and info.metres_per_pixel is None
    assert raster_pixel_size(path, info, 0.5) == 0.5 and raster_pixel_size(path, info, None) is None
    bare = write_raster(tmp_path / "bare.tif", smooth_image(32, 32).astype(np.uint8), crs=None)
    cfg = read_config(metre_model)
    with pytest.warns(UserWarning, match=r"gdal_translate -r average -outsize 50% 50%"):
        scale = pixel_scale(bare, raster.raster_info(bare), cfg, "m", False, pixel_size_m=0.5)
    assert scale == (1.0, 1.0)


def test_the_plan_line_says_the_windows_as_they_are_cut() -> None:
    """Windows square on the ground over pixels twice as tall as wide are twice as wide in
    pixels; a raster smaller than one window is one window of its own size (rounded up to
    the U-Net's multiple of 32)."""
    from pipeline.predict import plan_line
    from pipeline.windows import WindowGrid

    tall = WindowGrid(4000, 4000, 512, 64, col_window=1024, col_overlap=128)
    assert "windows of 512 x 1024 px" in plan_line("a.tif", tall, 4, 2)
    small = WindowGrid(1024, 1280, 1728, 256, col_window=2432, col_overlap=300)
    assert plan_line("o.tif", small, 1, 1) == (
        "predict o.tif: 1,024 x 1,280 px, 1 windows of 1024 x 1280 px in 1 tasks on 1 worker thread(s)"
    )


def test_resampling_keeps_nan_nodata_out_of_valid_pixels() -> None:
    """A float window with NaN where it is invalid, resampled up and down: the valid pixels
    stay finite (NaN times a zero weight spread into them before)."""
    from pipeline.inference import resample_window

    image = np.full((2, 33, 33), 50.0, np.float32)
    valid = np.ones((33, 33), bool)
    image[:, :, :7] = np.nan
    valid[:, :7] = False
    for shape in ((64, 64), (16, 16)):
        out, ok = resample_window(image, valid, shape)
        assert ok.any() and np.isfinite(out[:, ok]).all()
        assert out[:, ok] == pytest.approx(50.0)


def test_an_undeclared_white_collar_is_warned_of_before_predicting(
    metre_model, scheduler, tmp_path
) -> None:
    """A mosaic's white collar without nodata is predicted as imagery: predict says so, with
    the option that declares it; declared, in the file or by --nodata, the collar is nodata in
    the output and nothing is said."""
    import warnings

    data = fine_image().clip(1, 254)
    data[:, :, :80] = 255
    kw = dict(model=metre_model, window=64, overlap=16, progress=False, scheduler=scheduler)
    bare = write_raster(tmp_path / "bare.tif", data)
    with pytest.warns(
        UserWarning, match=r"bare\.tif: 25% of it is a border of 255 on every band.*--nodata 255"
    ):
        predict_raster(bare, tmp_path / "a.tif", PredictOptions(**kw))
    declared = write_raster(tmp_path / "declared.tif", data, nodata=255)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = predict_raster(declared, tmp_path / "b.tif", PredictOptions(**kw)).output
    prob, prof = read(out)
    assert (prob[:, :80] == prof["nodata"]).all() and (prob[:, 80:] != prof["nodata"]).all()
    # --nodata 255 (predict.fill) on the bare raster: what declaring it in the file gives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = predict_raster(bare, tmp_path / "c.tif", PredictOptions(fill=255, **kw)).output
    assert np.array_equal(read(given)[0], prob) and read(given)[1]["tags"]["fill"] == "255"
