"""`pipeline network --labels / --pixel-size`: road label masks and tiles without
georeferencing traced as public sets ship them (PNG masks written here, no CRS)."""

from __future__ import annotations

import json
import tempfile

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline import raster
from pipeline.cli import main
from tests.test_network import UTM, draw, write_prob

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
    pixels (no CRS) and measured in metres."""
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


def test_networks_in_pixels_score_as_the_same_masks_placed_on_earth(tmp_path, monkeypatch):
    """The truth L and a proposal that lost half an arm, traced from PNG masks without
    georeferencing and scored with --pixel-size 0.5, score what the same masks give as
    GeoTIFFs with 0.5 m UTM pixels (the pixel grid runs y down: distances are the same)."""
    monkeypatch.chdir(tmp_path)
    shortened = [ROADS[0], (180, 30, 180, 110, 1.0)]
    proposal = (draw(SHAPE, shortened, width=7.0) > 0).astype(np.uint8) * 255
    placed = Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0)
    for name, values in (("truth", mask()), ("proposal", proposal)):
        write_png(tmp_path / f"{name}.png", values)
        raster.write_geotiff(tmp_path / f"{name}.tif", values, crs=UTM, transform=placed)
        assert (
            main(
                [
                    "network",
                    f"{name}.png",
                    "--labels",
                    "--pixel-size",
                    "0.5",
                    "-o",
                    f"{name}.px.gpkg",
                ]
            )
            == 0
        )
        assert main(["network", f"{name}.tif", "--labels", "-o", f"{name}.utm.gpkg"]) == 0
    assert main(["score-network", "truth.px.gpkg", "proposal.px.gpkg", "--pixel-size", "0.5",
                 "--json", "px.json", "--points", "px_points.gpkg"]) == 0  # fmt: skip
    assert main(["score-network", "truth.utm.gpkg", "proposal.utm.gpkg", "--json", "utm.json"]) == 0
    px, utm = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("px", "utm"))
    assert 0.3 < utm["apls"] < 0.9
    for key in ("apls", "apls_gt_onto_prop", "apls_prop_onto_gt", "topo_f1", "truth_length_m"):
        assert px[key] == pytest.approx(utm[key], abs=1e-6), key
    # the truth clipped to an image's valid area, the image without a CRS (a PNG tile's
    # prediction) as with one: the same scores (a raster without a CRS was refused)
    valid = np.ones(SHAPE, np.uint8)
    valid[:, : SHAPE[1] // 3] = 0
    raster.write_geotiff(
        tmp_path / "within.px.tif", valid, crs=None, transform=Affine.identity(), nodata=0
    )
    raster.write_geotiff(tmp_path / "within.utm.tif", valid, crs=UTM, transform=placed, nodata=0)
    for grid, extra in (("px", ["--pixel-size", "0.5"]), ("utm", [])):
        args = ["score-network", f"truth.{grid}.gpkg", f"proposal.{grid}.gpkg", *extra]
        assert main([*args, "--within", f"within.{grid}.tif", "--json", f"w{grid}.json"]) == 0
    wpx, wutm = (json.loads((tmp_path / f"w{n}.json").read_text()) for n in ("px", "utm"))
    assert wutm["truth_length_m"] < 0.9 * utm["truth_length_m"]
    for key in ("apls", "topo_f1", "truth_length_m"):
        assert wpx[key] == pytest.approx(wutm[key], abs=1e-6), key
    # the points go back to the networks' pixels, without a CRS, so that they overlay them
    points = gpd.read_file(tmp_path / "px_points.gpkg", layer="truth_points")
    assert points.crs is None and points.total_bounds[2] <= SHAPE[1]
    assert points.total_bounds[3] == pytest.approx(
        edges(tmp_path / "truth.px.gpkg").total_bounds[3], abs=1
    )


def test_a_mask_without_labels_or_without_road_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_png(tmp_path / "m.png", mask())
    assert main(["network", str(path), "--threshold", "0.5", "-o", "n.gpkg"]) == 2
    assert "pass --labels" in capsys.readouterr().err
    red_on_white = np.stack([np.full(SHAPE, 255, np.uint8), 255 - mask(), 255 - mask()])
    red = write_png(tmp_path / "red.png", red_on_white)  # would read as road everywhere
    assert main(["network", str(red), "--labels", "-o", "n.gpkg"]) == 2
    assert f"{red}: a colour mask (its bands differ)" in capsys.readouterr().err
    empty = write_png(tmp_path / "empty.png", np.zeros(SHAPE, np.uint8))
    assert main(["network", str(empty), "--labels", "-o", "n.gpkg"]) == 2
    assert f"{empty}: no road in the mask" in capsys.readouterr().err
    assert not (tmp_path / "n.gpkg").exists()


def anti_aliased() -> np.ndarray:
    """The L's 0/255 mask with grey edges (a 3 x 3 mean), as drawing programs write masks."""
    padded = np.pad(mask().astype(np.float32), 1, mode="edge")
    rows, cols = SHAPE
    box = sum(padded[i : i + rows, j : j + cols] for i in range(3) for j in range(3)) / 9
    return np.rint(box).astype(np.uint8)


def test_a_colour_mask_is_traced_as_its_grey_twin(tmp_path, monkeypatch):
    """RoadNet's convention, red road on white with anti-aliased edges: --road-colour 255,0,0
    cuts the edges half way, as --labels cuts the same mask drawn in grey, so both give one
    network, of the L's length. The converted mask lives in a temporary folder, gone after."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    grey = anti_aliased()
    write_png(tmp_path / "grey.png", grey)
    write_png(
        tmp_path / "red.png", np.stack([np.full(SHAPE, 255, np.uint8), 255 - grey, 255 - grey])
    )
    common = ["--pixel-size", "0.5"]
    assert main(["network", "grey.png", "--labels", "-o", "grey.gpkg", *common]) == 0
    assert main(["network", "red.png", "--road-colour", "255,0,0", "-o", "red.gpkg", *common]) == 0
    red, grey_net = edges(tmp_path / "red.gpkg"), edges(tmp_path / "grey.gpkg")
    assert red["length_m"].sum() == pytest.approx(160.0, rel=0.04)
    assert red.geometry.geom_equals(grey_net.geometry).all()
    assert list(tmp_path.glob("*.tif")) == [] and list((tmp_path / "tmp").iterdir()) == []


def test_a_colour_mask_is_converted_strip_by_strip(tmp_path, monkeypatch):
    """The colour mask is read and written a strip of rows at a time (memory flat in its
    size): the 0/1 raster is the whole mask's, and a colour outside the convention is named
    with the rows it was found in."""
    from pipeline import network_inputs
    from pipeline.config import LabelConvention
    from pipeline.tilesets import road_mask

    monkeypatch.setattr(network_inputs, "COLOUR_STRIP_ROWS", 16)  # 13 strips of 200 rows
    grey = anti_aliased()
    red = np.stack([np.full(SHAPE, 255, np.uint8), 255 - grey, 255 - grey])
    write_png(tmp_path / "red.png", red)
    colours = LabelConvention(road=[255, 0, 0], background=[255, 255, 255], edge_threshold=0.5)
    view = network_inputs.network_view(
        tmp_path / "red.png", tmp_path, labels=False, pixel_size_m=0.5, colours=colours
    )
    whole = road_mask(red, colours, np.ones(SHAPE, bool), tmp_path / "red.png")
    np.testing.assert_array_equal(raster.read_band_array(view), whole)
    assert raster.raster_tags(view)["pixel_size_m"] == "0.5"
    red[:, 100, 50] = (0, 0, 255)  # one blue pixel in rows 96-111
    write_png(tmp_path / "blue_dot.png", red)
    with pytest.raises(
        network_inputs.LabelMaskError,
        match=r"blue_dot.png \(rows 96-111\): 1 pixels \(0.03 % of rows 96-111\)",
    ):
        network_inputs.network_view(
            tmp_path / "blue_dot.png", tmp_path, labels=False, pixel_size_m=0.5, colours=colours
        )
    assert not list(tmp_path.glob("blue_dot*.tif"))


def test_a_mask_with_an_alpha_band_reads_its_colours_not_its_alpha(tmp_path, monkeypatch):
    """Black roads on white with an alpha band (transparent in a corner): one value,
    --road-colour 0, reads the grey band alone (alpha is the mask, not a colour) and gives
    the network of the same mask without alpha."""
    monkeypatch.chdir(tmp_path)
    grey = 255 - mask()
    alpha = np.full(SHAPE, 255, np.uint8)
    alpha[:10, :10] = 0
    write_png(tmp_path / "ga.png", np.stack([grey, alpha]))
    write_png(tmp_path / "g.png", grey)
    for name in ("ga", "g"):
        assert main(["network", f"{name}.png", "--road-colour", "0", "--background-colour",
                     "255", "--pixel-size", "0.5", "-o", f"{name}.gpkg"]) == 0  # fmt: skip
    with_alpha, without = edges(tmp_path / "ga.gpkg"), edges(tmp_path / "g.gpkg")
    assert with_alpha["length_m"].sum() == pytest.approx(160.0, rel=0.04)
    assert with_alpha.geometry.geom_equals(without.geometry).all()


def test_a_mask_is_placed_on_the_grid_of_its_image(tmp_path, monkeypatch):
    """A PNG mask beside a georeferenced image (RoadNet's layout): --grid-of gives the network
    the image's CRS and transform, the network the same mask gives written on that grid."""
    monkeypatch.chdir(tmp_path)
    placed = Affine(0.5, 0, 500000.0, 0, -0.5, 5400000.0)
    image = np.zeros((3, *SHAPE), np.uint8)
    raster.write_geotiff(tmp_path / "image.tif", image, crs=UTM, transform=placed)
    raster.write_geotiff(tmp_path / "placed.tif", mask(), crs=UTM, transform=placed)
    red = np.stack([np.full(SHAPE, 255, np.uint8), 255 - mask(), 255 - mask()])
    write_png(tmp_path / "red.png", red)
    write_png(tmp_path / "grey.png", mask())
    assert main(["network", "placed.tif", "--labels", "-o", "placed.gpkg"]) == 0
    assert main(["network", "grey.png", "--labels", "--grid-of", "image.tif", "-o", "g.gpkg"]) == 0
    assert main(["network", "red.png", "--road-colour", "255,0,0", "--grid-of", "image.tif",
                 "-o", "r.gpkg"]) == 0  # fmt: skip
    expected = edges(tmp_path / "placed.gpkg")
    for name in ("g", "r"):
        found = edges(tmp_path / f"{name}.gpkg")
        assert found.crs == expected.crs, name
        assert found.geometry.geom_equals(expected.geometry).all(), name
        assert found["length_m"].sum() == pytest.approx(80 + 80, rel=0.04), name


def test_colours_and_grids_that_do_not_fit_are_refused(tmp_path, capsys, monkeypatch):
    """An unknown colour, an image of another size, a mask with a CRS of its own, colour
    options without --road-colour: one line naming the file and what to pass; no output."""
    monkeypatch.chdir(tmp_path)
    blue = np.stack([255 - mask(), 255 - mask(), np.full(SHAPE, 255, np.uint8)])
    write_png(tmp_path / "blue.png", blue)
    assert main(["network", "blue.png", "--road-colour", "255,0,0", "-o", "n.gpkg"]) == 2
    err = capsys.readouterr().err
    assert "blue.png: " in err and "outside the declared convention" in err
    assert "--road-colour and --background-colour" in err
    raster.write_geotiff(tmp_path / "small.tif", np.zeros((1, 100, 100), np.uint8), crs=UTM,
                         transform=Affine(1, 0, 500000, 0, -1, 5400000))  # fmt: skip
    write_png(tmp_path / "grey.png", mask())
    assert main(["network", "grey.png", "--labels", "--grid-of", "small.tif", "-o", "n.gpkg"]) == 2
    assert "grey.png: 200x200 pixels, but small.tif (--grid-of) is 100x100" in (
        capsys.readouterr().err
    )
    assert main(["network", "small.tif", "--labels", "--grid-of", "small.tif"]) == 2
    assert "small.tif: has a CRS of its own" in capsys.readouterr().err
    assert main(["network", "grey.png", "--edge-threshold", "0.3", "-o", "n.gpkg"]) == 2
    assert "go with --road-colour" in capsys.readouterr().err
    cases = {  # options that would be silently ignored, or trace the wrong thing
        ("--labels", "--road-colour", "0"): "pass one of them",
        ("--road-colour", "255", "--threshold", "0.3"): "cut by --edge-threshold",
        ("--labels", "--grid-of", "image.tif", "--pixel-size", "0.5"): "pass one of them",
        ("--labels", "--grid-of", "blue.png"): "blue.png (--grid-of): no CRS of its own",
        ("--road-colour", "255,0,0"): "grey.png: 1 band(s), but the label convention gives 3",
    }
    raster.write_geotiff(tmp_path / "image.tif", np.zeros((1, *SHAPE), np.uint8), crs=UTM,
                         transform=Affine(1, 0, 500000, 0, -1, 5400000))  # fmt: skip
    for options, expected in cases.items():
        assert main(["network", "grey.png", *options, "-o", "n.gpkg"]) == 2, options
        assert expected in capsys.readouterr().err, options
    assert not (tmp_path / "n.gpkg").exists()


def test_pixel_size_declares_metres_for_a_probability_tile_without_a_crs(tmp_path, monkeypatch):
    """Predict's output of a tile without georeferencing it was not told the size of: a uint8
    COG with its 1/254 scale and threshold tag, no CRS. --pixel-size 0.5 keeps both (no
    --threshold needed) and turns the network's lengths into metres, half the pixel count."""
    monkeypatch.chdir(tmp_path)
    write_prob(tmp_path / "p.tif", draw(SHAPE, ROADS, width=5.0) * 0.9, crs=None,
               transform=Affine.identity(), threshold=0.5)  # fmt: skip
    assert main(["network", "p.tif", "-o", "px.gpkg"]) == 0
    assert main(["network", "p.tif", "-o", "m.gpkg", "--pixel-size", "0.5"]) == 0
    in_pixels, in_metres = edges(tmp_path / "px.gpkg"), edges(tmp_path / "m.gpkg")
    assert in_pixels["length_m"].sum() == pytest.approx(320.0, rel=0.04)
    assert in_metres["length_m"].sum() == pytest.approx(160.0, rel=0.04)
