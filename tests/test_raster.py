"""pipeline/raster.py on tiny real GeoTIFFs: what the stages rely on when they describe, read,
write and burn rasters. Rasters are written with rasterio directly (tests/helpers.py), so a
reader is never checked against its own module's writer alone."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import ColorInterp

from pipeline import raster
from pipeline.raster import RasterError
from tests.helpers import CRS, TRANSFORM, smooth_image, write_raster


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """120 x 160 uint8, 4 bands, nodata 0 on a strip at the left, tiled 64 px."""
    img = smooth_image(120, 160).astype(np.uint8)
    img[:, :, :20] = 0
    return write_raster(
        tmp_path / "scene.tif", img, nodata=0, tiled=True, blockxsize=64, blockysize=64
    )


def _rgba(tmp_path: Path) -> Path:
    """Three bands and an alpha band flagged as such (half of the pixels masked)."""
    img = smooth_image(100, 120).astype(np.uint8)
    path = write_raster(
        tmp_path / "rgba.tif",
        np.concatenate([img[:3], np.where(img[3:] > 150, 255, 0).astype(np.uint8)]),
    )
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


# ------------------------------------------------------------------------------ describing
def test_raster_info_describes_the_grid(scene):
    info = raster.raster_info(scene)
    assert (info.width, info.height, info.count, info.dtype) == (160, 120, 4, "uint8")
    assert info.crs == rasterio.crs.CRS.from_string(CRS) and info.transform == TRANSFORM
    assert info.nodata == 0 and not info.has_mask
    assert info.band_descriptions == ("red", "green", "blue", "nir")
    assert info.res == (0.5, 0.5) and info.metres_per_pixel == pytest.approx(0.5)
    left, top = TRANSFORM.c, TRANSFORM.f
    assert info.bounds == (left, top - 60.0, left + 80.0, top)


def test_pixel_size_in_metres_for_geographic_and_missing_crs(tmp_path):
    img = np.ones((1, 8, 8), np.uint8)
    geo = write_raster(
        tmp_path / "geo.tif", img, crs="EPSG:4326", transform=Affine(1e-5, 0, 7, 0, -1e-5, 47)
    )
    # measured on the ellipsoid at the centre: 1.112 m north-south but 0.760 m east-west at 47 N,
    # the side of a square of the same area (not 111,320 m per degree of either)
    geod = pyproj.Geod(ellps="WGS84")
    down = geod.inv(7.00004, 46.99996, 7.00004, 46.99995)[2]
    across = geod.inv(7.00004, 46.99996, 7.00005, 46.99996)[2]
    assert (down, across) == (pytest.approx(1.1117, abs=1e-3), pytest.approx(0.7600, abs=1e-3))
    assert raster.raster_info(geo).metres_per_pixel == pytest.approx(math.sqrt(down * across))
    bare = write_raster(tmp_path / "bare.tif", img, crs=None)
    assert raster.raster_info(bare).metres_per_pixel is None


def test_web_mercator_pixels_are_measured_on_the_ground(tmp_path):
    """An EPSG:3857 export (a web map's tiles, QGIS's XYZ layers) in 1.5 "metre" pixels at
    48 N: the projection's metres are 1/cos(48) of a ground metre, so the pixels are 1.0 m."""
    x0, y0 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(7, 48)
    merc = write_raster(
        tmp_path / "merc.tif",
        np.ones((1, 8, 8), np.uint8),
        crs="EPSG:3857",
        transform=Affine(1.5, 0, x0, 0, -1.5, y0),
    )
    assert raster.raster_info(merc).metres_per_pixel == pytest.approx(1.0, abs=0.01)


def test_an_alpha_band_that_holds_a_mask_is_the_mask_not_data(tmp_path):
    """(An alpha band that holds data: tests/test_bands.py.)"""
    path = _rgba(tmp_path)
    info = raster.raster_info(path)
    assert info.count == 3 and info.has_mask
    assert raster.band_plan(path, ["red", "green", "blue"]) == raster.BandPlan((1, 2, 3))
    with raster.open_reader(path) as reader:
        img, valid = reader.read(0, 0, 120, 100)
    assert img.shape == (3, 100, 120)
    assert 0 < valid.mean() < 1


@pytest.mark.parametrize("content", [None, b"not a raster at all"], ids=["missing", "garbage"])
def test_unreadable_rasters_are_a_raster_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.tif"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RasterError, match="bad.tif") as err:
        raster.raster_info(path)
    assert ("not found" in str(err.value)) == (content is None)


# ------------------------------------------------------------------------------ reading
def test_boundless_window_pads_with_invalid_zeros(scene):
    with raster.open_reader(scene) as reader:
        img, valid = reader.read(-10, -5, 40, 30)
    assert img.shape == (4, 30, 40) and valid.shape == (30, 40)
    assert (img[:, :5] == 0).all() and not valid[:5].any() and not valid[:, :10].any()
    # inside the raster but left of column 20: nodata, so invalid too
    assert not valid[5:, 10:30].any() and valid[5:, 30:].all()


def test_read_window_fast_path_equals_boundless_read(scene, tmp_path) -> None:
    rgba = _rgba(tmp_path)
    for path, bands in ((scene, 4), (rgba, 3)):
        invalid = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the alpha warning, tested above
            with raster.open_reader(path) as reader:
                for col, row, w, h in [
                    (0, 0, 64, 64),
                    (30, 20, 64, 50),
                    (-10, 5, 64, 64),
                    (90, 80, 64, 64),
                ]:
                    fast = raster.read_window(reader, col, row, w, h)
                    slow = reader.read(col, row, w, h)
                    assert fast[0].shape == slow[0].shape == (bands, h, w)  # alpha: a mask
                    assert (fast[0] == slow[0]).all() and (fast[1] == slow[1]).all()
                    invalid += int((~fast[1]).sum())
        assert invalid > 0


def test_a_window_gdal_cannot_read_is_a_raster_error_naming_file_and_window(tmp_path):
    img = smooth_image(128, 128).astype(np.uint8)
    path = write_raster(
        tmp_path / "broken.tif", img, tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64  # corrupt one deflate tile
    path.write_bytes(bytes(data))
    with raster.open_reader(path) as reader:
        with pytest.raises(RasterError, match=r"broken.tif.*column 64, row 64"):
            raster.read_window(reader, 64, 64, 64, 64)


def test_whole_raster_reads(scene):
    valid = raster.read_valid_mask(scene)
    assert valid.shape == (120, 160) and not valid[:, :20].any() and valid[:, 20:].all()
    with rasterio.open(scene) as ds:
        assert (raster.read_band_array(scene, 2) == ds.read(2)).all()
        full = ds.read([1, 4]).astype(np.float64)
    small = raster.read_decimated(scene, [1, 4], 30, 40)
    assert small.shape == (2, 30, 40)
    # area averaging of 4 x 4 blocks, nodata left out of the mean
    block = full[:, 0:4, 40:44].mean(axis=(1, 2))
    assert np.abs(small[:, 0, 10].astype(np.float64) - block).max() <= 1


# ------------------------------------------------------------------------------ writing
def test_write_geotiff_keeps_nir_as_data_and_carries_names_and_tags(tmp_path):
    img = smooth_image(300, 260).astype(np.uint8)
    out = raster.write_geotiff(
        tmp_path / "out.tif",
        img,
        crs=CRS,
        transform=TRANSFORM,
        nodata=0,
        band_descriptions=["red", "green", "blue", "nir"],
        tags={"CLASSES": "a, b"},
    )
    with rasterio.open(out) as ds:
        assert (ds.read() == img).all()
        assert ds.colorinterp == (
            ColorInterp.red,
            ColorInterp.green,
            ColorInterp.blue,
            ColorInterp.undefined,  # not alpha: a fourth uint8 band under RGB photometry would be
        )
        assert ds.descriptions == ("red", "green", "blue", "nir")
        assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
        assert ds.nodata == 0 and ds.crs == rasterio.crs.CRS.from_string(CRS)
    assert raster.landcover_classes(out) == ["a", "b"]
    small = raster.write_geotiff(
        tmp_path / "small.tif", img[0, :20, :30], crs=None, transform=TRANSFORM
    )
    with rasterio.open(small) as ds:
        assert ds.count == 1 and not ds.profile.get("tiled", False)
        assert ds.colorinterp == (ColorInterp.gray,)


def test_stream_cog_writes_a_cog_and_nothing_on_failure(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    out = tmp_path / "prob.tif"
    kw = dict(width=300, height=200, crs=CRS, transform=TRANSFORM, dtype="uint8", nodata=255)
    kw["cog_blocksize"] = 128  # small blocks, so the COG gets overviews
    with raster.stream_cog(out, description="road", scale=1 / 254, tags={"MODEL": "m"}, **kw) as w:
        w.write(np.full((200, 256), 7, np.uint8), 0, 0)
        w.write(np.full((200, 44), 9, np.uint8), 0, 256)
    assert cog_validate(str(out))[0]
    with rasterio.open(out) as ds:
        band = ds.read(1)
        assert (band[:, :256] == 7).all() and (band[:, 256:] == 9).all()
        assert ds.descriptions == ("road",) and ds.scales == (pytest.approx(1 / 254),)
        assert ds.tags()["MODEL"] == "m" and ds.overviews(1)
    before = out.read_bytes()

    with pytest.raises(FileExistsError):
        with raster.stream_cog(out, **kw):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with raster.stream_cog(out, overwrite=True, **kw) as w:
            w.write(np.zeros((200, 300), np.uint8), 0, 0)
            raise RuntimeError("boom")
    assert out.read_bytes() == before  # the old output is kept whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif"]  # no staging file left


# ------------------------------------------------------------------------------ burning
def test_burn_geometries_follows_the_pixel_centre_rule():
    transform = Affine(1.0, 0, 0, 0, -1.0, 10.0)  # 10 x 10 px of 1 m, origin top-left (0, 10)
    square = shapely.box(2.6, 2.6, 5.6, 5.6)  # holds the centres of columns 3..5, rows 4..6
    line = shapely.LineString([(0.5, 9.5), (9.5, 9.5)])  # along the top row
    out = raster.burn_geometries(
        [square, line, None, shapely.Polygon()], transform, (10, 10), values=[3, 5, 7, 9]
    )
    assert out.dtype == np.uint8
    assert (out[0] == 5).all()
    assert (out[4:7, 3:6] == 3).all() and out[1:].sum() == 3 * 9
    touched = raster.burn_geometries([square], transform, (10, 10), all_touched=True)
    assert (touched[4:8, 2:6] == 1).all() and touched.sum() == 16  # partly covered ones join
    assert (raster.burn_geometries([], transform, (4, 6), fill=2) == 2).all()
    with pytest.raises(ValueError, match="2 geometries but 1 values"):
        raster.burn_geometries([square, line], transform, (10, 10), values=[1])


def test_a_resampled_vrt_keeps_the_extent_the_mask_and_the_band_names(tmp_path):
    """0.5 m RGB with alpha to 1 m: block means, the alpha as the mask, the extent kept."""
    rgb = np.random.default_rng(0).integers(1, 255, (3, 80, 100)).astype(np.uint8)
    alpha = np.full((1, 80, 100), 255, np.uint8)
    alpha[0, :20, :20] = 0
    grid = Affine(0.5, 0, 500000, 0, -0.5, 5400000)
    src = tmp_path / "rgba.tif"
    profile = dict(driver="GTiff", width=100, height=80, count=4, dtype="uint8", crs=CRS)
    with rasterio.open(src, "w", **profile, transform=grid, photometric="RGB", alpha="YES") as ds:
        ds.write(np.concatenate([rgb, alpha]))
    vrt = raster.write_resampled_vrt(src, tmp_path / "r.vrt", 2.0, "image")
    info = raster.raster_info(vrt)
    assert (info.width, info.height, info.count, info.res) == (50, 40, 3, (1.0, 1.0))
    assert info.bounds == raster.raster_info(src).bounds and info.has_mask
    with raster.open_reader(vrt) as reader:
        image, valid = raster.read_window(reader, 0, 0, 50, 40)
    assert not valid[:10, :10].any() and valid[10:, :].all() and valid[:, 10:].all()
    means = rgb.reshape(3, 40, 2, 50, 2).astype(float).mean(axis=(2, 4))
    assert np.abs(image[:, 10:, 10:].astype(float) - means[:, 10:, 10:]).max() <= 1


def test_undeclared_nan_in_a_float_raster_reads_as_invalid(tmp_path):
    """NaN without a nodata value is what float imagery often holds outside its footprint:
    read as invalid and zeroed, so it never reaches the model as values."""
    data = smooth_image(40, 50).astype(np.float32)
    data[:, :, :10] = np.nan
    path = write_raster(tmp_path / "f.tif", data)
    with raster.open_reader(path) as reader:
        for col in (0, -5):  # inside the raster, and reaching past its edge
            image, valid = raster.read_window(reader, col, 0, 40, 40)
            assert np.isfinite(image).all()
            inside = slice(max(0, -col), None)
            assert not valid[:, inside][:, : 10 - max(0, col)].any()
            assert valid[:, 10 - col :].all()


def test_a_rotated_grid_has_its_pixel_size_along_its_own_axes(tmp_path):
    """A grid turned by 90 degrees: 0.5 m across and 2 m down whichever way it points (the
    sizes were 0 and a division by zero, or swapped on the ground)."""
    turned = Affine(0.0, 2.0, 500000.0, 0.5, 0.0, 5400000.0)
    path = write_raster(tmp_path / "r.tif", smooth_image(30, 20), transform=turned)
    info = raster.raster_info(path)
    assert info.res == pytest.approx((0.5, 2.0))
    assert info.pixel_metres == pytest.approx((2.0, 0.5), rel=1e-3)  # (down, across)
    # in degrees at 60 N, where a degree east is half a degree north on the ground: a column
    # steps 1e-5 degrees north (1.11 m), a row 4e-5 degrees east (2.23 m)
    degrees = Affine(0.0, 4e-5, 10.0, 1e-5, 0.0, 60.0)
    path = write_raster(
        tmp_path / "d.tif", smooth_image(30, 20), crs="EPSG:4326", transform=degrees
    )
    assert raster.raster_info(path).pixel_metres == pytest.approx((2.23, 1.11), abs=0.01)


def test_an_undeclared_fill_border_is_found_and_a_declared_one_is_not(tmp_path):
    data = smooth_image(64, 64).astype(np.uint8).clip(1, 254)
    data[:, :, :16] = 255  # a white collar on the left quarter
    data[:, 30:34, 30:34] = 0  # dark pixels inside the imagery: no border
    plan = raster.BandPlan((1, 2, 3, 4))
    found = raster.fill_border(write_raster(tmp_path / "w.tif", data), plan)
    assert found == (255.0, pytest.approx(0.25))
    assert raster.fill_border(write_raster(tmp_path / "n.tif", data, nodata=255), plan) is None
    inner = data.copy()
    inner[:, :, :16] = 100
    assert raster.fill_border(write_raster(tmp_path / "i.tif", inner), plan) is None
    signed = data.astype(np.int16)
    signed[:, :8] = -9999  # the fill of much elevation and reflectance data
    assert raster.fill_border(write_raster(tmp_path / "s.tif", signed), plan) == (
        -9999.0,
        pytest.approx(0.125),
    )


def test_band_percentiles_leave_undeclared_nan_and_a_declared_fill_out(tmp_path):
    data = smooth_image(64, 64).astype(np.float32)
    plain = raster.band_percentiles(write_raster(tmp_path / "p.tif", data), raster.BandPlan((1, 2)))
    holed = data.copy()
    holed[:, :10] = np.nan
    holed[:, 50:] = 255.0  # a white fill, given as predict --nodata 255
    plan = raster.BandPlan((1, 2), fill=255.0)
    stretch = raster.band_percentiles(write_raster(tmp_path / "h.tif", holed), plan)
    assert np.isfinite(stretch).all()
    assert all(high < 255 for _, high in stretch) and stretch != plain
