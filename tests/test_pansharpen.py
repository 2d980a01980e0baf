"""`pipeline pansharpen`: MUL bands on the PAN grid by GDAL's weighted Brovey, named so that
the tile stage and predict pick them by name; bad pairs end in one line naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline import raster
from pipeline.cli import main
from pipeline.pansharpen import PansharpenError, pansharpen
from pipeline.raster import parse_band_spec

CRS = "EPSG:32651"
ORIGIN = (350000.0, 3450000.0)
PAN_PX, MUL_PX = 0.5, 2.0
SIZE_M = 32.0
MUL_LEVELS = [40, 80, 120, 160]  # each MUL band one value: Brovey then scales the PAN by band


def _pair(folder: Path, mul_crs: str = CRS) -> tuple[Path, Path, np.ndarray]:
    n_pan, n_mul = int(SIZE_M / PAN_PX), int(SIZE_M / MUL_PX)
    pan = np.random.default_rng(0).integers(50, 200, (n_pan, n_pan)).astype(np.uint16)
    mul = np.stack([np.full((n_mul, n_mul), v, np.uint16) for v in MUL_LEVELS])
    pan_path = raster.write_geotiff(
        folder / "PAN.tif",
        pan,
        crs=CRS,
        transform=Affine(PAN_PX, 0, *ORIGIN[:1], 0, -PAN_PX, ORIGIN[1]),
    )
    mul_path = raster.write_geotiff(
        folder / "MUL.tif",
        mul,
        crs=mul_crs,
        transform=Affine(MUL_PX, 0, ORIGIN[0], 0, -MUL_PX, ORIGIN[1]),
    )
    return pan_path, mul_path, pan


def test_mul_bands_are_sharpened_onto_the_pan_grid_and_named(tmp_path):
    pan_path, mul_path, pan = _pair(tmp_path)
    out = pansharpen(
        pan_path, mul_path, tmp_path / "ps.tif", bands={"red": 3, "green": 2, "blue": 1}
    )
    with rasterio.open(out) as ds:
        sharp = ds.read().astype(float)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert (ds.crs, ds.transform, ds.shape) == (
            rasterio.crs.CRS.from_string(CRS),
            Affine(PAN_PX, 0, ORIGIN[0], 0, -PAN_PX, ORIGIN[1]),
            pan.shape,
        )
    assert raster.band_names(out) == ["red", "green", "blue"]
    # weighted Brovey, weights 1/3: band * PAN / mean of the bands kept (120, 80, 40 -> 80)
    for band, level in zip(sharp, (120, 80, 40), strict=True):
        np.testing.assert_allclose(band, pan * level / 80.0, atol=1.0)


def test_a_vrt_output_computes_the_same_pixels_as_it_is_read(tmp_path):
    pan_path, mul_path, _ = _pair(tmp_path)
    bands = {"red": 3, "green": 2, "blue": 1, "nir": 4}
    cog = pansharpen(pan_path, mul_path, tmp_path / "ps.tif", bands=bands)
    vrt = pansharpen(pan_path, mul_path, tmp_path / "ps.vrt", bands=bands, nodata=0)
    assert vrt.read_text().startswith('<VRTDataset subClass="VRTPansharpenedDataset">')
    np.testing.assert_array_equal(raster.read_all(vrt), raster.read_all(cog))
    assert raster.band_names(vrt) == ["red", "green", "blue", "nir"]
    assert raster.raster_info(vrt).nodata == 0


def test_keeping_an_extra_band_leaves_the_colours_as_they_are(tmp_path):
    """The pseudo-panchromatic band Brovey divides by is red, green and blue alike: adding
    nir gives the 3-band product plus a band, not other colours."""
    pan_path, mul_path, pan = _pair(tmp_path)
    rgb = pansharpen(
        pan_path, mul_path, tmp_path / "rgb.tif", bands={"red": 3, "green": 2, "blue": 1}
    )
    rgbn = pansharpen(
        pan_path, mul_path, tmp_path / "rgbn.tif", bands={"red": 3, "green": 2, "blue": 1, "nir": 4}
    )
    np.testing.assert_array_equal(raster.read_all(rgbn)[:3], raster.read_all(rgb))
    np.testing.assert_allclose(raster.read_all(rgbn)[3], pan * 160 / 80.0, atol=1.0)


def test_bands_the_file_names_need_no_declaration(tmp_path):
    pan_path, mul_path, _ = _pair(tmp_path)
    with rasterio.open(mul_path, "r+") as ds:  # a 4-band file whose bands say what they are
        for i, name in enumerate(["blue", "green", "red", "nir"], start=1):
            ds.set_band_description(i, name)
    out = pansharpen(pan_path, mul_path, tmp_path / "ps.tif")
    assert raster.band_names(out) == ["red", "green", "blue"]
    np.testing.assert_allclose(
        raster.read_all(out)[0].mean() / raster.read_all(out)[2].mean(), 3.0, rtol=0.02
    )


def test_the_cli_writes_a_cog_and_refuses_to_overwrite(tmp_path, capsys):
    pan_path, mul_path, _ = _pair(tmp_path)
    args = ["pansharpen", str(pan_path), str(mul_path), "--bands", "red=3,green=2,blue=1"]
    assert main(args) == 0
    assert (tmp_path / "PAN_pansharpened.tif").is_file()
    assert main(args) == 2
    assert "PAN_pansharpened.tif" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    # --overwrite replaces an output, never an input: the MUL as the output is refused
    before = mul_path.read_bytes()
    assert main(args + ["-o", str(mul_path), "--overwrite"]) == 2
    assert "is also an input of this command" in capsys.readouterr().err
    assert mul_path.read_bytes() == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unnamed", "MUL.tif: its bands do not say which are red, green and blue"),
        ("band", "MUL.tif: has 4 bands, no band {'red': 9}"),
        ("coarse", "PAN.tif: pixel 2 is not finer than the MUL's 2"),
        ("crs", "MUL.tif: CRS EPSG:32650 differs from the panchromatic"),
        ("pan_bands", "MUL.tif: 4 bands; the panchromatic image has one"),
        ("twice", "MUL.tif: bands [1, 1, 2] give 2 distinct names for 3 bands"),
        ("nan", "PAN.tif: nodata nan cannot mark uint16 pixels"),
        ("png", "ps.png: this output is written as a .tif (a COG) or a .vrt"),
    ],
)
def test_pairs_that_cannot_be_fused_name_the_file(tmp_path, capsys, case, message):
    pan, mul, _ = _pair(tmp_path, mul_crs="EPSG:32650" if case == "crs" else CRS)
    if case == "coarse":  # a one-band image as coarse as the MUL: not a panchromatic band
        grid = dict(crs=CRS, transform=Affine(MUL_PX, 0, ORIGIN[0], 0, -MUL_PX, ORIGIN[1]))
        raster.write_geotiff(pan, np.ones((16, 16), np.uint16), **grid)
    if case == "pan_bands":
        pan = mul
    declared = {"unnamed": None, "band": "red=9", "twice": "1,1,2"}.get(
        case, "red=3,green=2,blue=1"
    )
    nodata = float("nan") if case == "nan" else None
    out = tmp_path / ("ps.png" if case == "png" else "ps.tif")
    args = ["pansharpen", str(pan), str(mul), "-o", str(out)]
    args += ["--bands", declared] if declared else []
    args += ["--nodata", "nan"] if nodata is not None else []
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("ps*"))
    bands = parse_band_spec(declared) if declared else None
    with pytest.raises(PansharpenError, match=r"MUL\.tif|PAN\.tif|ps\.png"):
        pansharpen(pan, mul, out, bands=bands, nodata=nodata)
