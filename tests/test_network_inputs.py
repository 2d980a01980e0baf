"""`pipeline network --labels / --pixel-size`: road label masks and tiles without
georeferencing traced as public sets ship them (PNG masks written here, no CRS)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from pipeline.cli import main
from tests.test_network import draw

pytestmark = pytest.mark.filterwarnings(
    "ignore::rasterio.errors.NotGeoreferencedWarning", "ignore:'crs' was not provided"
)
# an L of two 160 px roads, 7 px wide, on a 200 px tile: 80 m each at 0.5 m a pixel
SHAPE = (200, 200)
ROADS = [(20, 30, 180, 30, 1.0), (180, 30, 180, 190, 1.0)]


def write_png(path, values: np.ndarray):
    """A PNG as public sets ship their masks: no georeferencing; (bands, rows, cols)."""
    values = values[None] if values.ndim == 2 else values
    with rasterio.open(
        path, "w", driver="PNG", width=values.shape[2], height=values.shape[1],
        count=values.shape[0], dtype="uint8",
    ) as dst:  # fmt: skip
        dst.write(values)
    return path


def mask(high: int = 255) -> np.ndarray:
    return (draw(SHAPE, ROADS, width=7.0) > 0).astype(np.uint8) * high


def edges(path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer="edges")


def test_a_label_mask_is_traced_in_metres_of_the_pixel_size_given(tmp_path, monkeypatch):
    """A 0/255 mask and its 0/1 and white-on-black RGB copies give one network: the L, in
    pixels (no CRS) and measured in metres, one network `score-network` scores 1.0."""
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the default cleaning
    copies = {
        "255": write_png(tmp_path / "m255.png", mask()),
        "01": write_png(tmp_path / "m01.png", mask(1)),
        "rgb": write_png(tmp_path / "mrgb.png", np.stack([mask()] * 3)),
    }
    for name, path in copies.items():
        out = tmp_path / f"{name}.gpkg"
        assert main(["network", str(path), "--labels", "--pixel-size", "0.5", "-o", str(out)]) == 0
    found = {name: edges(tmp_path / f"{name}.gpkg") for name in copies}
    assert found["255"].crs is None
    assert found["255"]["length_m"].sum() == pytest.approx(160.0, rel=0.04)
    for name in ("01", "rgb"):
        assert found[name].geometry.geom_equals(found["255"].geometry).all(), name
    assert list(tmp_path.glob("*.vrt")) == []  # the VRT stays in a temporary folder
    scored = ["score-network", "255.gpkg", "rgb.gpkg", "--pixel-size", "0.5", "--json", "s.json"]
    assert main(scored) == 0
    assert '"apls": 1.0' in (tmp_path / "s.json").read_text()


def test_a_mask_without_labels_or_without_road_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_png(tmp_path / "m.png", mask())
    assert main(["network", str(path), "--threshold", "0.5", "-o", "n.gpkg"]) == 2
    assert "pass --labels" in capsys.readouterr().err
    empty = write_png(tmp_path / "empty.png", np.zeros(SHAPE, np.uint8))
    assert main(["network", str(empty), "--labels", "-o", "n.gpkg"]) == 2
    assert f"{empty}: no road in the mask" in capsys.readouterr().err
    assert not (tmp_path / "n.gpkg").exists()


def test_pixel_size_declares_metres_for_a_probability_tile_without_a_crs(tmp_path, monkeypatch):
    """A probability PNG of another tool (0..1 in 0..255, its scale not declared): pixels
    of 0.5 m turn the same network's lengths into metres, half the pixel count."""
    monkeypatch.chdir(tmp_path)
    path = write_png(tmp_path / "p.png", mask())
    common = ["network", str(path), "--labels", "-o"]
    assert main([*common, "px.gpkg"]) == 0
    assert main([*common, "m.gpkg", "--pixel-size", "0.5"]) == 0
    in_pixels, in_metres = edges(tmp_path / "px.gpkg"), edges(tmp_path / "m.gpkg")
    assert in_metres["length_m"].sum() == pytest.approx(in_pixels["length_m"].sum() / 2, rel=0.05)
