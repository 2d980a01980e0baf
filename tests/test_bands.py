"""Which bands of a raster are data, in tile and predict: alpha flags, names, declared bands,
on real GeoTIFFs written with rasterio's defaults (a 4-band uint8 file gets band 4 flagged
alpha), a real U-Net and a real Dask cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from pipeline import parallel, raster
from pipeline.config import DataParams, PredictOptions, TileParams
from pipeline.model import ModelConfig, build_unet, save_model
from pipeline.predict import predict_raster
from pipeline.raster import RasterError, band_plan, parse_band_spec
from pipeline.tiling import TilingError, check_scenes, run_tile
from tests.conftest import BANDS, make_scene
from tests.helpers import MEAN, STD, make_model, read, smooth_image, write_raster

CRS = "EPSG:32632"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5400000.0)
EIGHT = ["coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2"]


def write_default(
    path: Path,
    data: np.ndarray,
    descriptions: list[str] | None = None,
    transform: Affine = TRANSFORM,
    **extra,
) -> Path:
    """A GeoTIFF with rasterio's (GDAL's) defaults: 3 or 4 uint8 bands become RGB(A)."""
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype.name,
        crs=CRS,
        transform=transform,
        **extra,
    ) as ds:
        ds.write(data)
        for i, name in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, name)
    return path


def rgbn(height: int = 96, width: int = 128) -> np.ndarray:
    return smooth_image(height, width).astype(np.uint8)


@pytest.fixture(scope="module")
def model4(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model4") / "unet")


@pytest.fixture(scope="module")
def model3(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet18", bands=BANDS[:3], mean=MEAN[:3], std=STD[:3], chip_size=64)
    return save_model(build_unet(cfg), cfg, tmp_path_factory.mktemp("model3") / "unet")


def _predict(image: Path, out: Path, model: Path, scheduler: str, **kw) -> np.ndarray:
    kw = dict(window=64, overlap=16, scheduler=scheduler, progress=False) | kw
    return read(predict_raster(image, out, PredictOptions(model=model, **kw)).output)[0]


# ------------------------------------------------------------------------------ band_plan
def test_rasterio_default_rgbn_reads_its_alpha_flagged_nir_as_data(tmp_path) -> None:
    path = write_default(tmp_path / "rgbn.tif", rgbn())
    with rasterio.open(path) as ds:  # what GDAL does with a 4-band uint8 file
        assert ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
    plan = band_plan(path, BANDS)
    assert plan.bands == (1, 2, 3, 4) and plan.validity == "all"
    assert "band 4 is flagged alpha but is used as data" in plan.note
    # an RGB model does not need band 4, but it holds no mask: not taken as validity either
    rgb = band_plan(path, BANDS[:3])
    assert rgb.bands == (1, 2, 3) and rgb.validity == "all" and "not a mask" in rgb.note
    with raster.open_reader(path, plan) as reader:
        image, valid = raster.read_window(reader, 0, 0, 64, 64)
        assert (image == rgbn()[:, :64, :64]).all() and valid.all()
        _, edge = raster.read_window(reader, 100, 80, 64, 64)  # past the raster: never valid
        assert edge[:16, :28].all() and not edge[16:].any() and not edge[:, 28:].any()


def test_true_alpha_stays_the_mask_or_is_a_clear_error(tmp_path) -> None:
    data = rgbn()
    data[3] = 255
    data[3, :20] = 0
    path = write_default(tmp_path / "rgba.tif", data)
    plan = band_plan(path, BANDS[:3])
    assert plan == raster.BandPlan((1, 2, 3), "dataset", "")
    with raster.open_reader(path, plan) as reader:
        _, valid = raster.read_window(reader, 0, 0, 64, 64)
    assert not valid[:20].any() and valid[20:].all()
    with pytest.raises(RasterError, match=r"rgba\.tif: band 4 is flagged alpha") as err:
        band_plan(path, BANDS)
    assert "read as a mask, the file has 3 data bands; read as data, 4" in str(err.value)
    assert "gdal_edit.py -colorinterp_4 undefined" in str(err.value)


def test_bands_are_picked_by_name_declared_or_refused(tmp_path) -> None:
    eight = np.concatenate([rgbn(), rgbn()[::-1]])
    named = write_default(tmp_path / "eight.tif", eight, EIGHT, photometric="MINISBLACK")
    plan = band_plan(named, BANDS)
    assert plan.bands == (5, 3, 2, 7) and "red=band 5" in plan.note
    assert band_plan(named, BANDS, [5, 3, 2, 7]).bands == (5, 3, 2, 7)
    assert band_plan(named, BANDS, {"nir": 8, "red": 5, "green": 3, "blue": 2}).bands == (
        5,
        3,
        2,
        8,
    )
    with pytest.raises(
        RasterError, match=r"eight\.tif: has 8 band\(s\), but .* its bands: 1=coastal, 2=blue"
    ) as refused:
        band_plan(named, ["red", "green", "blue", "swir"])
    assert "it has no swir band. Use a model trained on the bands it has" in str(refused.value)
    # an RGB file for an RGBN model: no declaration can make a near-infrared band
    rgb = write_default(tmp_path / "rgb.tif", rgbn()[:3], photometric="RGB")
    with pytest.raises(RasterError, match=r"its bands: 1=red, 2=green, 3=blue: it has no nir band"):
        band_plan(rgb, BANDS)
    with pytest.raises(RasterError, match=r"declared bands \[5, 3, 2, 9\], but the file has bands"):
        band_plan(named, BANDS, [5, 3, 2, 9])
    with pytest.raises(RasterError, match="name no band for nir"):
        band_plan(named, BANDS, {"red": 5, "green": 3, "blue": 2})
    # 8 bands under GDAL's default RGB photometric: bands 1-3 say red, green, blue, but only
    # descriptions are trusted that far (a WorldView-3 file's bands 1-3 are coastal, blue, green)
    rgb8 = write_default(tmp_path / "rgb8.tif", eight, photometric="RGB")
    with rasterio.open(rgb8) as ds:
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.red
    with pytest.raises(RasterError, match=r"has 8 band\(s\), .* its bands: 1=\?, 2=\?") as unnamed:
        band_plan(rgb8, BANDS[:3])
    assert (
        "name them (band descriptions) or declare them (predict --bands with 3 indexes in the "
        "order red, green, blue" in str(unnamed.value)
    )
    # names that do not match, same count: file order, said in one line
    other = write_default(tmp_path / "other.tif", rgbn(), ["b1", "b2", "b3", "b4"])
    plan = band_plan(other, BANDS)
    assert plan.bands == (1, 2, 3, 4) and "bands are used in file order" in plan.note
    assert parse_band_spec("5,3,2,7") == [5, 3, 2, 7]
    assert parse_band_spec("red=5, NIR=7") == {"red": 5, "nir": 7}
    with pytest.raises(ValueError, match="1-based band indexes"):
        parse_band_spec("red,green")


# -------------------------------------------------------------------------------- predict
def test_rgbn_with_rasterio_defaults_predicts_with_a_4_band_model(
    model4, scheduler, tmp_path
) -> None:
    plain = write_raster(tmp_path / "plain.tif", rgbn())  # band 4 not flagged alpha
    default = write_default(tmp_path / "default.tif", rgbn())
    expected = _predict(plain, tmp_path / "p.tif", model4, scheduler)
    got = _predict(default, tmp_path / "d.tif", model4, scheduler)
    assert np.array_equal(got, expected) and (got < 255).all()


def test_rgba_with_a_3_band_model_keeps_alpha_as_the_mask(model3, scheduler, tmp_path) -> None:
    data = rgbn()
    data[3] = 255
    data[3, :, :30] = 0
    rgba = write_default(tmp_path / "rgba.tif", data)
    out = _predict(rgba, tmp_path / "o.tif", model3, scheduler)
    assert (out[:, :30] == 255).all() and (out[:, 30:] < 255).all()


def test_true_alpha_with_a_4_band_model_is_a_clear_error(model4, tmp_path, monkeypatch) -> None:
    def no_cluster(*args):
        raise AssertionError("a model folder's errors must come before any cluster starts")

    monkeypatch.setattr(parallel, "cluster_client", no_cluster)
    data = rgbn()
    data[3] = np.where(data[3] > 120, 255, 0)
    rgba = write_default(tmp_path / "rgba.tif", data)
    with pytest.raises(RasterError, match=r"read as a mask.*read as data.*the model .* expects 4"):
        predict_raster(
            rgba, tmp_path / "o.tif", PredictOptions(model=model4, window=64, progress=False)
        )
    assert not (tmp_path / "o.tif").exists()


def test_8_band_file_predicts_with_the_bands_its_names_pick(model4, scheduler, tmp_path) -> None:
    """The model sees the same pixels as from a 4-band file of the picked bands: same output."""
    eight = np.concatenate([rgbn(), (255 - rgbn())[[1, 0, 3, 2]]])
    named = write_default(tmp_path / "named.tif", eight, EIGHT, photometric="MINISBLACK")
    four = write_raster(tmp_path / "four.tif", eight[[4, 2, 1, 6]])  # red, green, blue, nir
    expected = _predict(four, tmp_path / "f.tif", model4, scheduler)
    assert np.array_equal(_predict(named, tmp_path / "n.tif", model4, scheduler), expected)
    nameless = write_default(tmp_path / "nameless.tif", eight, photometric="MINISBLACK")
    with pytest.raises(RasterError, match=r"nameless\.tif: has 8 band\(s\).*--bands"):
        _predict(nameless, tmp_path / "x.tif", model4, scheduler)
    declared = _predict(nameless, tmp_path / "d.tif", model4, scheduler, bands=[5, 3, 2, 7])
    assert np.array_equal(declared, expected)


# ----------------------------------------------------------------------------------- tile
def _tile(out: Path) -> TileParams:
    return TileParams(out_dir=out, chip_size=64, stride=64, workers=1, split={"block_size_m": 128})


def test_tile_reads_rgbn_defaults_and_declared_bands_as_4_band_scenes(tmp_path) -> None:
    scene = make_scene(tmp_path, "src", seed=3)
    with rasterio.open(scene["image"]) as ds:
        data, transform = ds.read(), ds.transform
    default = write_default(tmp_path / "default.tif", data, transform=transform)
    shuffled = write_default(
        tmp_path / "shuffled.tif", data[[3, 0, 2, 1]], transform=transform, photometric="MINISBLACK"
    )
    entries = [
        {"name": "a", "image": str(default), "labels": scene["labels"]},
        {"name": "b", "image": str(shuffled), "labels": scene["labels"], "bands": [2, 4, 3, 1]},
    ]
    data_params = DataParams(scenes=entries, bands=BANDS)
    stats = run_tile(data_params, _tile(tmp_path / "chips"), workers=1, progress=False)
    a = np.load(tmp_path / "chips" / "a.images.npy")
    b = np.load(tmp_path / "chips" / "b.images.npy")
    assert a.shape[1] == 4 and np.array_equal(a, b) and len(stats["mean"]) == 4
    assert np.array_equal(a[0], data[:, :64, :64])
    entries[1]["bands"] = None  # shuffled, unnamed, same count: file order; 3 declared: refused
    entries[0]["bands"] = [1, 2, 3]
    with pytest.raises(TilingError, match=r"default\.tif: 3 band\(s\) declared"):
        check_scenes(DataParams(scenes=entries, bands=BANDS))


def test_predict_cli_takes_declared_bands_and_no_resample(capsys) -> None:
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["predict", "x.tif", "--bands", "5,3,2,7", "--no-resample"])
    assert args.bands == [5, 3, 2, 7] and args.no_resample
    args = build_parser().parse_args(["predict", "x.tif", "--bands", "red=5,nir=7"])
    assert args.bands == {"red": 5, "nir": 7} and not args.no_resample
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "x.tif", "--bands", "red,green"])
    assert "1-based band indexes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("descriptions", "expected"),
    [
        (["B2 (blue)", "B3 (green)", "B4 (red)", "B8 (nir)"], (3, 2, 1, 4)),
        (["Blue", "Green", "Red", "Near Infrared"], (3, 2, 1, 4)),
        (["blue", "green", "red", "nir08"], (3, 2, 1, 4)),
        (["Blue", "Green", "Red", "Near Infra-Red"], (3, 2, 1, 4)),  # infra-red is not red
    ],
)
def test_bands_named_in_other_words_are_picked_by_name(tmp_path, descriptions, expected):
    """Sentinel-2 and Landsat style descriptions in blue, green, red, nir order: picked by
    their words (the bands were read in file order before, blue as red, with a log line)."""
    path = write_default(tmp_path / "bgrn.tif", rgbn(), descriptions)
    plan = band_plan(path, BANDS)
    assert plan.bands == expected and "picked by name" in plan.note and not plan.warn


def test_file_order_against_the_bands_own_names_is_refused(tmp_path):
    """Blue, green, red, swir for a red, green, blue, nir model: the count matches, but file
    order would read blue as red; refused with the bands named, not predicted."""
    path = write_default(tmp_path / "bgrs.tif", rgbn(), ["blue", "green", "red", "swir16"])
    with pytest.raises(
        RasterError,
        match=r"bgrs\.tif: its bands \(1=blue, .*band 1 \(blue\) as red, band 3 \(red\) as blue\. Declare",
    ):
        band_plan(path, BANDS)
    assert band_plan(path, BANDS, [3, 2, 1, 4]).bands == (3, 2, 1, 4)  # declared: as asked


def test_red_edge_is_not_red_and_unmatched_names_are_a_warning(tmp_path):
    path = write_default(tmp_path / "s2.tif", rgbn(), ["Red Edge 1", "B3", "B2", "B8"])
    plan = band_plan(path, BANDS)
    assert plan.bands == (1, 2, 3, 4)
    assert plan.warn and "bands are used in file order (declare them" in plan.note


def test_a_paletted_band_is_refused_with_the_command_that_expands_it(tmp_path):
    data = rgbn()[:1]
    path = tmp_path / "palette.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=1,
        dtype="uint8",
        crs=CRS,
        transform=TRANSFORM,
        photometric="palette",
    ) as ds:
        ds.write(data)
        ds.write_colormap(1, {i: (i, 255 - i, 0, 255) for i in range(256)})
    with pytest.raises(
        RasterError, match=r"palette\.tif: band 1 is paletted .*gdal_translate -expand rgb"
    ):
        band_plan(path, ["red", "green", "blue"], [1, 1, 1])


def test_a_colour_infrared_file_with_gdals_default_colours_goes_in_file_order(tmp_path):
    """Three uint8 bands get red, green, blue by GDAL's default photometric, not by their
    author: a nir, red, green file for a nir, red, green model is read in file order with a
    warning, not refused as contradicting those colours."""
    path = write_default(tmp_path / "cir.tif", rgbn()[:3], photometric="RGB")
    plan = band_plan(path, ["nir", "red", "green"])
    assert plan.bands == (1, 2, 3) and plan.warn
