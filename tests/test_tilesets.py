"""Tile sets (pipeline/tilesets.py): PNG/JPEG tiles without georeferencing, written here, tiled
through `pipeline tile`: fill colour as nodata in image and labels, label conventions, whole
tiles split deterministically, and clear errors naming the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml

from pipeline import raster, tilesets
from pipeline.chip_format import MASK_NODATA
from pipeline.cli import main
from pipeline.config import TileSetSplit, load_params
from pipeline.tilesets import assign_splits

SIZE = 64
FILL_COLS = 24  # left columns of every Massachusetts-like tile are white fill
ROAD_ROWS = slice(30, 36)  # a road stripe across the whole tile, fill included
STEMS = ["10078660_15", "10228660_15", "10378795_15", "10528795_15", "10828720_15"]


def write_image(path: Path, array: np.ndarray, driver: str) -> None:
    """A plain PNG/JPEG without georeferencing, as public tile sets ship."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = array if array.ndim == 3 else array[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver=driver,
            width=array.shape[2],
            height=array.shape[1],
            count=array.shape[0],
            dtype="uint8",
        ) as dst:
            dst.write(array)


def massachusetts_like(root: Path) -> None:
    """images/<id>.png RGB with a white fill block; masks/<id>.png 0/255 running into it."""
    rng = np.random.default_rng(0)
    for stem in STEMS:
        image = rng.integers(20, 200, (3, SIZE, SIZE), dtype=np.uint8)
        image[:, :, :FILL_COLS] = 255
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[ROAD_ROWS, :] = 255
        write_image(root / "images" / f"{stem}.png", image, "PNG")
        write_image(root / "masks" / f"{stem}.png", mask, "PNG")


def red_on_white(root: Path) -> None:
    """train/<id>_sat.jpg and train/<id>_mask.png: red road on white, anti-aliased edges."""
    rng = np.random.default_rng(1)
    for stem in ["104", "113", "343"]:
        write_image(
            root / "train" / f"{stem}_sat.jpg",
            rng.integers(20, 200, (3, SIZE, SIZE), dtype=np.uint8),
            "JPEG",
        )
        label = np.full((3, SIZE, SIZE), 255, np.uint8)
        label[1:, 10:20, :] = 0  # red road
        label[1:, 20, :] = 100  # edge nearer the road: road
        label[1:, 21, :] = 200  # edge nearer the background: background
        write_image(root / "train" / f"{stem}_mask.png", label, "PNG")


def params_file(tmp_path: Path, scenes: list[dict]) -> Path:
    params = {
        "synth": {"scenes": []},
        "data": {"bands": ["red", "green", "blue"], "scenes": scenes},
        "tile": {
            "out_dir": str(tmp_path / "chips"),
            "chip_size": 32,
            "stride": 32,
            "max_nodata_fraction": 0.9,
            "workers": 1,
        },
        "pretrain": {"archs": []},
        "train": {"encoder_weights": "none"},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def mass_entry(root: Path, **over) -> dict:
    return {
        "name": "mass",
        "root": str(root),
        "images": "images/*.png",
        "labels": "masks/{stem}.png",
        "pixel_size_m": 0.5,
        "label": {"road": [255], "background": [0]},
        "fill": [255, 255, 255],
        "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 3},
        **over,
    }


def red_entry(root: Path) -> dict:
    return {
        "name": "dg",
        "root": str(root),
        "images": "train/*_sat.jpg",
        "labels": "train/{stem}_mask.png",
        "pixel_size_m": 0.5,
        "label": {"road": [255, 0, 0], "background": [255, 255, 255], "edge_threshold": 0.5},
        "split": {"val_fraction": 0.0, "test_fraction": 0.0, "test": ["343"]},
    }


def test_tile_sets_tile_through_the_cli(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")
    red_on_white(tmp_path / "dg")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass"), red_entry(tmp_path / "dg")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    out = tmp_path / "chips"
    stats = json.loads((out / "stats.json").read_text())

    # the summary, not every tile
    mass = stats["tilesets"]["mass"]
    assert mass["tiles"] == 5 and mass["splits"] == {"train": 3, "val": 1, "test": 1}
    assert mass["area_km2"] == pytest.approx(5 * (SIZE * 0.5) ** 2 / 1e6)
    assert mass["nodata_fraction"] == pytest.approx(FILL_COLS / SIZE, abs=1e-3)
    assert stats["tilesets"]["dg"]["splits"] == {"train": 2, "val": 0, "test": 1}
    assert stats["scenes"] == {} and stats["gsd_m"] == 0.5

    # fill is nodata in the labels, even where the road runs on into it; road = 1 elsewhere
    index = gpd.read_file(out / "index.gpkg")
    for scene in (f"mass_{s}" for s in STEMS):
        rows = index[index["scene"] == scene]
        assert rows["split"].nunique() == 1, "a tile goes whole to one split"
        masks = np.load(out / f"{scene}.masks.npy")
        whole = np.zeros((SIZE, SIZE), np.uint8)
        for row, mask in zip(rows.itertuples(), masks, strict=True):
            whole[row.row_off : row.row_off + 32, row.col_off : row.col_off + 32] = mask
        assert (whole[:, :FILL_COLS] == MASK_NODATA).all()
        assert (whole[ROAD_ROWS, FILL_COLS:] == 1).all()
        assert whole[:, FILL_COLS:].sum() == 6 * (SIZE - FILL_COLS)

    # red on white with anti-aliased edges: the nearer colour wins
    masks = np.load(out / "dg_104.masks.npy")
    rows = index[index["scene"] == "dg_104"]
    col0 = rows[(rows.row_off == 0) & (rows.col_off == 0)].array_index.item()
    assert (masks[col0][10:21] == 1).all() and (masks[col0][21:] == 0).all()
    assert (masks[col0][:10] == 0).all()
    assert index[index["scene"] == "dg_343"]["split"].unique().tolist() == ["test"]

    # what the model card and the evaluate MLflow run say of the data: one line per tile set
    data = load_params(params).data
    lines = tilesets.describe(data, tilesets.read_summaries(out / "stats.json"))
    assert lines[0] == (
        f"mass: tile set {tmp_path / 'mass' / 'images/*.png'}, 5 tiles, 0.00512 km² "
        "(3 train / 1 val / 1 test)"
    )


def test_labels_under_fixed_names_beside_each_image_are_found_by_folder(tmp_path, capsys):
    """RoadNet ships each scene as a folder (11/Ottawa-11.tif beside 11/segmentation.png):
    '{dir}' in the labels pattern is the image's folder below root, so one entry takes them
    all, each tile with its own labels."""
    rng = np.random.default_rng(2)
    for k, stem in enumerate(["11", "12", "13"]):
        write_image(tmp_path / "rn" / stem / f"Ottawa-{stem}.png",
                    rng.integers(20, 200, (3, SIZE, SIZE), dtype=np.uint8), "PNG")  # fmt: skip
        label = np.full((3, SIZE, SIZE), 255, np.uint8)
        label[1:, 8 * k : 8 * k + 4, :] = 0  # a red road, a different row in each scene
        write_image(tmp_path / "rn" / stem / "segmentation.png", label, "PNG")
    entry = red_entry(tmp_path / "rn") | {
        "name": "rn",
        "images": "*/Ottawa-*.png",
        "labels": "{dir}/segmentation.png",
        "split": {"val_fraction": 0.0, "test_fraction": 0.0, "val": ["12"], "test": ["13"]},
    }
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [entry]))]) == 0
    out = tmp_path / "chips"
    assert json.loads((out / "stats.json").read_text())["tilesets"]["rn"]["tiles"] == 3
    for k, stem in enumerate(["11", "12", "13"]):
        with rasterio.open(out / "tilesets" / "rn" / f"{stem}.labels.tif") as ds:
            road = ds.read(1) == 1
        assert road.any(axis=1).nonzero()[0].tolist() == list(range(8 * k, 8 * k + 4)), stem


def test_split_is_deterministic_whole_tile_and_exact():
    stems = [f"tile{i:03d}" for i in range(20)]
    split = TileSetSplit(val_fraction=0.1, test_fraction=0.2, seed=0)
    first = assign_splits(stems, split)
    assert first == assign_splits(list(reversed(stems)), split)
    counts = {s: list(first.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 2, "test": 4}
    other = assign_splits(stems, TileSetSplit(val_fraction=0.1, test_fraction=0.2, seed=1))
    assert other != first, "the seed draws another split"
    named = assign_splits(stems, TileSetSplit(test_fraction=0.2, test=["tile007"], val=["tile001"]))
    assert named["tile007"] == "test" and named["tile001"] == "val"
    assert list(named.values()).count("test") == 4


def test_unmatched_label_names_the_image(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")
    (tmp_path / "mass/masks" / f"{STEMS[2]}.png").unlink()
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"images/{STEMS[2]}.png" in err and "no label image" in err
    assert not (tmp_path / "chips" / "stats.json").exists()


def test_centrelines_are_matched_by_name_and_go_with_labels(tmp_path, capsys):
    """A tile without its centreline image is named before any work; centrelines in a
    tile set of road vectors (their own centrelines) are refused by the params check."""
    from pydantic import ValidationError

    from pipeline.config import SceneSource, TileSetSource

    massachusetts_like(tmp_path / "mass")
    entry = {**mass_entry(tmp_path / "mass"), "centrelines": "masks/{stem}_centre.png"}
    for stem in STEMS[1:]:
        write_image(
            tmp_path / "mass/masks" / f"{stem}_centre.png", np.zeros((SIZE, SIZE), np.uint8), "PNG"
        )
    params = params_file(tmp_path, [entry])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"images/{STEMS[0]}.png: no centreline image" in err and "centrelines" in err
    line = np.zeros((SIZE, SIZE), np.uint8)
    line[32, :] = 255  # inside the road rows
    write_image(tmp_path / "mass/masks" / f"{STEMS[0]}_centre.png", line, "PNG")
    assert main(["tile", "-q", "--params", str(params)]) == 0
    centres = raster.read_all(tmp_path / "chips/tilesets/mass" / f"{STEMS[0]}.centrelines.tif")[0]
    assert (centres[32, FILL_COLS:] == 1).all() and (centres[:, :FILL_COLS] == MASK_NODATA).all()
    assert centres[:, FILL_COLS:].sum() == SIZE - FILL_COLS
    described = tilesets.describe(
        load_params(params).data, tilesets.read_summaries(tmp_path / "chips/stats.json")
    )
    assert described[0].endswith(
        "truth networks from masks/{stem}_centre.png (3 train / 1 val / 1 test)"
    )
    roads = {"name": "sn", "root": str(tmp_path), "images": "*.tif", "roads": "{stem}.geojson"}
    with pytest.raises(
        ValidationError, match=r"\['centrelines'\] do not apply to a tile set with road"
    ):
        TileSetSource(**roads, centrelines="{stem}_centre.png")
    scene = {"name": "s", "image": "s.tif", "roads": "s.gpkg", "centrelines": "c.tif"}
    with pytest.raises(ValidationError, match="centrelines go with labels"):
        SceneSource(**scene)


def test_size_mismatch_names_the_label(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")
    write_image(tmp_path / "mass/masks" / f"{STEMS[1]}.png", np.zeros((60, SIZE), np.uint8), "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"masks/{STEMS[1]}.png" in err and "64x60" in err


def test_label_colour_outside_the_convention_names_file_and_colour(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[40:42, 40:42] = 1  # a 0/1 mask declared as 0/255
    write_image(tmp_path / "mass/masks" / f"{STEMS[0]}.png", label, "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"masks/{STEMS[0]}.png" in err and "outside the declared convention" in err
    assert "[[1]]" in err


def test_a_label_image_with_alpha_is_read_by_its_grey_band(tmp_path):
    """Masks saved with an alpha band (grey + alpha PNG, as image editors save them): the
    convention's one value is read on the grey band, not required of alpha too, and the
    labels are those of the same masks without alpha."""
    massachusetts_like(tmp_path / "mass")
    for stem in STEMS:
        path = tmp_path / "mass/masks" / f"{stem}.png"
        grey = raster.read_all(path)[0]
        write_image(path, np.stack([grey, np.full_like(grey, 255)]), "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    labels = raster.read_all(tmp_path / "chips/tilesets/mass" / f"{STEMS[0]}.labels.tif")[0]
    assert (labels[ROAD_ROWS, FILL_COLS:] == 1).all()
    assert (labels[: ROAD_ROWS.start, FILL_COLS:] == 0).all()


def test_image_without_crs_needs_a_pixel_size(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")
    entry = mass_entry(tmp_path / "mass")
    del entry["pixel_size_m"]
    params = params_file(tmp_path, [entry])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    assert "pixel_size_m" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": "images/*_*.png"}, "exactly one '*'"),
        ({"labels": "masks/x.png"}, "needs {stem}"),
        ({"label": {"road": [255, 0, 0], "background": [0]}}, "need as many values"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.5}}, "must be below 1"),
        ({"imagess": "x"}, "imagess"),
    ],
)
def test_tile_set_entry_mistakes_are_config_errors(tmp_path, capsys, change, message):
    entry = mass_entry(tmp_path) | change
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [entry]))]) == 2
    err = capsys.readouterr().err
    assert "data.scenes.0.tileset" in err and message in err


def test_a_transfer_tile_set_is_prepared_held_out_whole_and_not_chipped(tmp_path):
    """`transfer: true`: every tile is test, prepared for evaluate but cut into no chip, and
    the data line says so; the other set trains as before."""
    massachusetts_like(tmp_path / "mass")
    red_on_white(tmp_path / "dg")
    dg = {**red_entry(tmp_path / "dg"), "transfer": True}
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass"), dg])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    out = tmp_path / "chips"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tilesets"]["dg"]["splits"] == {"train": 0, "val": 0, "test": 3}
    index = gpd.read_file(out / "index.gpkg")
    assert not index["scene"].str.startswith("dg_").any()
    assert index["scene"].str.startswith("mass_").any()
    for stem in ("104", "113", "343"):
        assert (out / "tilesets" / "dg" / f"{stem}.labels.tif").is_file()
    data = load_params(params).data
    expanded = tilesets.expand(data, out / "tilesets")
    far = [s for s in expanded.scenes if s.transfer]
    assert [s.name for s in far] == ["dg_104", "dg_113", "dg_343"]
    assert {s.split for s in far} == {"test"}
    assert tilesets.entry_scene_names(data.scenes[1]) == ["dg_104", "dg_113", "dg_343"]
    line = tilesets.describe(data, tilesets.read_summaries(out / "stats.json"))[1]
    assert line.endswith("3 tiles, 0.003072 km² (all held out: transfer)")


def test_a_transfer_scene_may_come_from_another_sensor(tmp_path, capsys):
    """A transfer scene is never chipped, so it may have another sample type (an 11-bit
    satellite chip beside 8-bit aerial tiles): predict stretches it. A training scene of
    another sample type is still refused, naming both files."""
    from affine import Affine

    massachusetts_like(tmp_path / "mass")
    image = np.random.default_rng(2).integers(0, 2047, (3, SIZE, SIZE), dtype=np.uint16)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[20:24, :] = 1
    grid = dict(crs="EPSG:32651", transform=Affine(0.3, 0, 350000.0, 0, -0.3, 3450000.0))
    sat = raster.write_geotiff(tmp_path / "wv3.tif", image, **grid)
    lab = raster.write_geotiff(tmp_path / "wv3.labels.tif", labels, **grid)
    far = {"name": "wv3", "image": str(sat), "labels": str(lab), "transfer": True}
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass"), far])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    stats = json.loads((tmp_path / "chips" / "stats.json").read_text())
    assert "wv3" not in stats["percentiles"]

    params = params_file(tmp_path, [mass_entry(tmp_path / "mass"), {**far, "transfer": False}])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    assert "wv3.tif: sample type uint16, but" in capsys.readouterr().err


def test_local_tile_grids_train_beside_georeferenced_scenes(tmp_path, caplog):
    """PNG tiles without georeferencing (a local grid) and a georeferenced scene train
    together: there is no common CRS for the chip index, so its footprints stay in each
    scene's own coordinates, without a CRS, and the tile stage says so."""
    from affine import Affine

    massachusetts_like(tmp_path / "mass")
    # 0.24 m wide, 0.33 m tall: chipped through a VRT of square 0.5 m pixels, 60 x 85 of them
    image = np.random.default_rng(3).integers(0, 255, (3, 2 * SIZE, 2 * SIZE), dtype=np.uint8)
    labels = np.zeros((2 * SIZE, 2 * SIZE), np.uint8)
    labels[:, 60:68] = 1
    grid = dict(crs="EPSG:4326", transform=Affine(3e-6, 0, -75.9, 0, -3e-6, 45.33))
    img = raster.write_geotiff(tmp_path / "ottawa.tif", image, **grid)
    lab = raster.write_geotiff(tmp_path / "ottawa.labels.tif", labels, **grid)
    other = {"name": "ottawa", "image": str(img), "labels": str(lab), "split": "train"}
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass"), other])
    with caplog.at_level("WARNING", logger="pipeline.tiling"):
        assert main(["tile", "-q", "--params", str(params)]) == 0
    assert "the scenes' grids are not related" in caplog.text
    index = gpd.read_file(tmp_path / "chips" / "index.gpkg")
    assert index.crs is None
    assert set(index["scene"].str.split("_").str[0]) == {"mass", "ottawa"}
    ottawa = index[index["scene"] == "ottawa"].total_bounds
    assert ottawa[0] == pytest.approx(-75.9) and ottawa[3] == pytest.approx(45.33)


SN_IMAGES = "PS-RGB/SN3_roads_train_AOI_4_Shanghai_PS-RGB_*.tif"
SN_ROADS = "geojson_roads/SN3_roads_train_AOI_4_Shanghai_geojson_roads_{stem}.geojson"
SN_PIXEL_DEG = 5e-6  # ~0.5 m at 31 N: SpaceNet's 0.3 m chips, coarser for a small test
SN_ROAD_ROW = 40


def spacenet_like(root: Path, stems: list[str], empty: str, north: float = 31.2) -> None:
    """Georeferenced EPSG:4326 chips as SpaceNet 3 ships them, each with its centreline
    GeoJSON (a road across the chip at SN_ROAD_ROW); ``empty``'s file has 0 bytes, as
    SpaceNet's files for chips without roads do."""
    from affine import Affine
    from shapely.geometry import LineString

    rng = np.random.default_rng(4)
    for i, stem in enumerate(stems):
        west = 121.4 + i * 0.01
        transform = Affine(SN_PIXEL_DEG, 0, west, 0, -SN_PIXEL_DEG, north)
        image = rng.integers(20, 200, (3, SIZE, SIZE), dtype=np.uint8)
        (root / "PS-RGB").mkdir(parents=True, exist_ok=True)
        raster.write_geotiff(
            root / SN_IMAGES.replace("*", stem), image, crs="EPSG:4326", transform=transform
        )
        roads = root / SN_ROADS.format(stem=stem)
        roads.parent.mkdir(parents=True, exist_ok=True)
        if stem == empty:
            roads.write_bytes(b"")
            continue
        y = north - (SN_ROAD_ROW + 0.5) * SN_PIXEL_DEG
        line = LineString([(west - 1e-4, y), (west + (SIZE + 20) * SN_PIXEL_DEG, y)])
        gdf = gpd.GeoDataFrame({"road_type": ["5"]}, geometry=[line], crs="EPSG:4326")
        gdf.to_file(roads, driver="GeoJSON")


def sn_entry(root: Path, **over) -> dict:
    return {
        "name": "sn",
        "root": str(root),
        "images": SN_IMAGES,
        "roads": SN_ROADS,
        "split": {"val_fraction": 0.0, "test_fraction": 0.0, "test": ["img7"]},
        **over,
    }


def test_a_tile_set_with_road_vectors_tiles_as_it_ships(tmp_path):
    """SpaceNet-like chips with centreline GeoJSON as one entry: each chip a scene with its
    roads burned as a scene's are, a 0-byte road file a chip without roads, the summary in
    km of road, and evaluate's network truth read from the centrelines."""
    from pipeline.network_eval import truth_network

    stems = ["img1", "img3", "img7", "img12"]
    spacenet_like(tmp_path / "sn", stems, empty="img3")
    params = params_file(tmp_path, [sn_entry(tmp_path / "sn")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    out = tmp_path / "chips"
    sn = json.loads((out / "stats.json").read_text())["tilesets"]["sn"]
    assert sn["tiles"] == 4 and sn["splits"] == {"train": 3, "val": 0, "test": 1}
    chip_width_km = SIZE * SN_PIXEL_DEG * 111.32 * np.cos(np.radians(31.2))  # ~30 m
    assert sn["road_km"] == pytest.approx(3 * chip_width_km, rel=0.02)  # the line inside only
    assert sn["roads"] == SN_ROADS and "labels" not in sn

    index = gpd.read_file(out / "index.gpkg")
    assert set(index["scene"]) == {"sn_img1", "sn_img3", "sn_img7", "sn_img12"}
    assert index[index["scene"] == "sn_img7"]["split"].unique().tolist() == ["test"]
    masks = np.load(out / "sn_img1.masks.npy")
    rows = index[index["scene"] == "sn_img1"]
    top = rows[(rows.row_off == 32) & (rows.col_off == 0)].array_index.item()
    road_rows = np.flatnonzero(masks[top].any(axis=1)) + 32
    assert SN_ROAD_ROW in road_rows and len(road_rows) <= 10  # 2 m each side of the line
    assert (np.load(out / "sn_img3.masks.npy") == 0).all()  # no roads: all background

    data = tilesets.expand(load_params(params).data, out / "tilesets")
    test = next(s for s in data.scenes if s.split == "test")
    assert test.roads == tmp_path / "sn" / SN_ROADS.format(stem="img7") and test.labels is None
    assert truth_network(test, data).number_of_edges() == 1
    line = tilesets.describe(load_params(params).data, tilesets.read_summaries(out / "stats.json"))
    assert f"4 tiles, {sn['area_km2']:g} km², {sn['road_km']:g} km of road" in line[0]


def test_a_stretched_tile_is_named_by_its_own_file(tmp_path, caplog):
    """Chips in degrees at 60 N (pixels twice as tall as wide) chipped as they are
    (`tile.resample: false`): the warning names the user's GeoTIFF, not the VRT the tile
    stage prepared over it."""
    spacenet_like(tmp_path / "sn", ["img1", "img2"], empty="", north=60.0)
    params = params_file(tmp_path, [sn_entry(tmp_path / "sn", split={"test_fraction": 0.0})])
    settings = yaml.safe_load(params.read_text())
    settings["tile"]["resample"] = False
    params.write_text(yaml.safe_dump(settings, sort_keys=False))
    with caplog.at_level("WARNING", logger="pipeline.tiling"):
        assert main(["tile", "-q", "--params", str(params)]) == 0
    image = tmp_path / "sn" / SN_IMAGES.replace("*", "img1")
    assert f"{image} (as " in caplog.text and "m tall on the ground" in caplog.text


def test_a_road_vector_tile_set_needs_georeferenced_images_and_every_road_file(tmp_path, capsys):
    spacenet_like(tmp_path / "sn", ["img1", "img2"], empty="")
    (tmp_path / "sn" / SN_ROADS.format(stem="img2")).unlink()
    assert (
        main(
            [
                "tile",
                "-q",
                "--params",
                str(params_file(tmp_path, [sn_entry(tmp_path / "sn", split={})])),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "SN3_roads_train_AOI_4_Shanghai_PS-RGB_img2.tif: no road file" in err

    massachusetts_like(tmp_path / "mass")
    plain = {**mass_entry(tmp_path / "mass"), "roads": "roads/{stem}.geojson"}
    for key in ("labels", "label", "pixel_size_m"):  # a label image set's settings
        del plain[key]
    (tmp_path / "mass" / "roads").mkdir()
    for stem in STEMS:
        (tmp_path / "mass" / "roads" / f"{stem}.geojson").write_bytes(b"")
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [plain]))]) == 2
    err = capsys.readouterr().err
    assert "no georeferencing, so the road vectors of tile set 'mass'" in err
    both = {**mass_entry(tmp_path / "mass"), "roads": "roads/{stem}.geojson"}
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [both]))]) == 2
    assert "exactly one of 'labels'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("entry", "unused"),
    [
        (lambda root: sn_entry(root, pixel_size_m=0.3), "['pixel_size_m'] do not apply"),
        (lambda root: sn_entry(root, label={"road": [1]}), "['label'] do not apply"),
        (lambda root: mass_entry(root, label_offset_m=[1, 2]), "['label_offset_m'] do not apply"),
    ],
)
def test_settings_of_the_other_kind_of_truth_are_refused(tmp_path, capsys, entry, unused):
    params = params_file(tmp_path, [entry(tmp_path)])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    assert unused in capsys.readouterr().err


def test_a_road_vector_tile_set_offset_moves_every_tile(tmp_path):
    spacenet_like(tmp_path / "sn", ["img1", "img2"], empty="")
    entry = sn_entry(tmp_path / "sn", split={}, label_offset_m=[1.5, -2.0])
    data = load_params(params_file(tmp_path, [entry])).data
    scenes = tilesets.expand(data, tmp_path / "chips" / "tilesets", check_prepared=False).scenes
    assert [s.label_offset_m for s in scenes] == [(1.5, -2.0), (1.5, -2.0)]


def test_a_tile_set_of_pan_and_mul_chips_is_fused_while_prepared(tmp_path, capsys):
    """SpaceNet's PAN/ and MUL/ folders as they ship: each tile's VRT is the pansharpened
    image (named bands, the PAN grid), chipped and labelled from its road file."""
    from affine import Affine
    from shapely.geometry import LineString

    root = tmp_path / "sn"
    for folder in ("PAN", "MUL", "roads"):
        (root / folder).mkdir(parents=True)
    pan = np.random.default_rng(5).integers(100, 400, (SIZE, SIZE)).astype(np.uint16)
    pan[:, SIZE - 16 :] = 0  # outside the imagery, as SpaceNet's PAN chips are, no nodata set
    mul = np.stack([np.full((SIZE // 4, SIZE // 4), v, np.uint16) for v in (10, 20, 30, 40, 50)])
    for i, stem in enumerate(["img1", "img2"]):
        x0, y0 = 350000.0 + 1000 * i, 3450000.0
        raster.write_geotiff(
            root / "PAN" / f"PAN_{stem}.tif", pan, crs="EPSG:32651",
            transform=Affine(0.5, 0, x0, 0, -0.5, y0),
        )  # fmt: skip
        raster.write_geotiff(
            root / "MUL" / f"MUL_{stem}.tif", mul, crs="EPSG:32651",
            transform=Affine(2.0, 0, x0, 0, -2.0, y0),
        )  # fmt: skip
        road = LineString([(x0 - 5, y0 - 10), (x0 + 40, y0 - 10)])
        gpd.GeoDataFrame(geometry=[road], crs="EPSG:32651").to_file(
            root / "roads" / f"{stem}.geojson", driver="GeoJSON"
        )
    entry = {
        "name": "sn", "root": str(root), "images": "PAN/PAN_*.tif", "roads": "roads/{stem}.geojson",
        "pansharpen": {"mul": "MUL/MUL_{stem}.tif", "bands": {"red": 5, "green": 3, "blue": 2}},
        "fill": [0], "split": {"val_fraction": 0.0, "test_fraction": 0.0, "test": ["img2"]},
    }  # fmt: skip
    params = params_file(tmp_path, [entry])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    vrt = tmp_path / "chips" / "tilesets" / "sn" / "img1.vrt"
    assert raster.band_names(vrt) == ["red", "green", "blue"]
    fused = raster.read_all(vrt).astype(float)[:, :, : SIZE - 16]
    # weighted Brovey on constant MUL bands 50, 30, 20: each band is PAN x level / their mean
    for band, level in zip(fused, (50, 30, 20), strict=True):
        np.testing.assert_allclose(band, pan[:, : SIZE - 16] * level / (100 / 3), atol=1.0)
    valid = raster.read_valid_mask(vrt)  # the fill is nodata in the fused image
    assert valid[:, : SIZE - 16].all() and not valid[:, SIZE - 16 :].any()
    summary = json.loads((tmp_path / "chips" / "stats.json").read_text())["tilesets"]["sn"]
    assert summary["nodata_fraction"] == pytest.approx(16 / SIZE)
    assert summary["pansharpen"]["bands"] == {"red": 5, "green": 3, "blue": 2}
    chips = np.load(tmp_path / "chips" / "sn_img1.images.npy")
    assert chips.shape[1] == 3 and chips.dtype == np.uint16
    index = gpd.read_file(tmp_path / "chips" / "index.gpkg")
    rows = index[index["scene"] == "sn_img1"]
    first = rows[(rows.row_off == 0) & (rows.col_off == 0)].array_index.item()
    mask = np.load(tmp_path / "chips" / "sn_img1.masks.npy")[first]
    assert mask[20].all() and not mask[28].any()  # the road 10 m (20 px) down, 2 m each side

    (root / "MUL" / "MUL_img2.tif").unlink()
    assert main(["tile", "-q", "--params", str(params)]) == 2
    assert "PAN_img2.tif: no multispectral image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": "masks/{stem}_{x}.png"}, "needs {stem} (or {dir}, the image's folder"),
        ({"pansharpen": {"mul": "MUL/{id}.tif", "bands": {"red": 1}}}, "mul 'MUL/{id}.tif'"),
        ({"pansharpen": {"mul": "M/{stem}.tif", "bands": {"red": 0}}}, "greater than 0"),
        (
            {"pansharpen": {"mul": "M/{stem}.tif", "bands": {"Red": 5, "green": 3}}, "fill": [0]},
            "data.bands asks for ['blue'], which pansharpen.bands does not name",
        ),
        (
            {"pansharpen": {"mul": "M/{stem}.tif", "bands": {"red": 5, "green": 3, "blue": 2}}},
            "fill [255, 255, 255] of a pansharpened set is one value",
        ),
    ],
)
def test_pansharpen_and_pattern_mistakes_are_config_errors(tmp_path, capsys, change, message):
    entry = mass_entry(tmp_path) | change
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [entry]))]) == 2
    assert message in capsys.readouterr().err


def test_a_pansharpened_tile_without_crs_stops_before_writing(tmp_path, capsys):
    massachusetts_like(tmp_path / "mass")  # PNGs: no CRS
    (tmp_path / "mass" / "MUL").mkdir()
    for stem in STEMS:
        (tmp_path / "mass" / "MUL" / f"{stem}.png").write_bytes(
            (tmp_path / "mass" / "images" / f"{stem}.png").read_bytes()
        )
    ps = {"mul": "MUL/{stem}.png", "bands": {"red": 1, "green": 2, "blue": 3}}
    entry = mass_entry(tmp_path / "mass", pansharpen=ps, fill=[255])
    assert main(["tile", "-q", "--params", str(params_file(tmp_path, [entry]))]) == 2
    assert "no CRS; a panchromatic image is fused" in capsys.readouterr().err
    assert not list((tmp_path / "chips" / "tilesets" / "mass").glob("*"))


def test_tiles_keep_their_own_transparency_and_an_opaque_alpha_goes_with_fill(tmp_path, capsys):
    """RGBA tiles: with `fill`, an opaque alpha is no matter (the broadcast error of a 4-band
    tile against a 3-value fill, before); without `fill`, a transparent strip is nodata in the
    prepared tile and its labels (it was valid black imagery with background labels); a
    transparent strip and a fill are refused, naming the tile."""
    massachusetts_like(tmp_path / "mass")
    for stem in STEMS:
        path = tmp_path / "mass/images" / f"{stem}.png"
        rgb = raster.read_all(path)
        write_image(path, np.concatenate([rgb, np.full_like(rgb[:1], 255)]), "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    prepared = tmp_path / "chips/tilesets/mass" / f"{STEMS[0]}.vrt"
    assert (raster.read_valid_mask(prepared)[:, :FILL_COLS] == 0).all()
    # transparent where the white fill was, no `fill` declared
    for stem in STEMS:
        path = tmp_path / "mass/images" / f"{stem}.png"
        rgba = raster.read_all(path)
        rgba[3, :, :FILL_COLS] = 0
        rgba[:3, :, :FILL_COLS] = 0
        write_image(path, rgba, "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass", fill=None)])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    valid = raster.read_valid_mask(prepared)
    assert not valid[:, :FILL_COLS].any() and valid[:, FILL_COLS:].all()
    labels = raster.read_all(tmp_path / "chips/tilesets/mass" / f"{STEMS[0]}.labels.tif")[0]
    assert (labels[:, :FILL_COLS] == 255).all()  # MASK_NODATA, not background
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    assert "its alpha band or mask leaves out pixels that are not of the fill colour" in (
        capsys.readouterr().err
    )


def test_one_label_for_two_images_is_refused(tmp_path, capsys):
    """A stray copy of an image beside its original would put one label in two splits."""
    ottawa = tmp_path / "ottawa"
    rng = np.random.default_rng(2)
    for name in ("Ottawa-11.png", "Ottawa-11-copy.png"):
        write_image(
            ottawa / "11" / name, rng.integers(20, 200, (3, SIZE, SIZE), dtype=np.uint8), "PNG"
        )
    write_image(ottawa / "11/segmentation.png", np.zeros((SIZE, SIZE), np.uint8), "PNG")
    entry = mass_entry(ottawa, images="*/Ottawa-*.png", labels="{dir}/segmentation.png", fill=None)
    params = params_file(tmp_path, [entry])
    assert main(["tile", "-q", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "segmentation.png is also that of" in err and "Ottawa-11" in err


def test_files_missed_by_case_and_tiles_smaller_than_a_chip_are_said(tmp_path, caplog):
    massachusetts_like(tmp_path / "mass")
    images = tmp_path / "mass/images"
    (images / f"{STEMS[0]}.png").rename(images / f"{STEMS[0]}.PNG")
    small = raster.read_all(images / f"{STEMS[1]}.png")[:, :20, -20:]  # imagery, no fill
    write_image(images / f"{STEMS[1]}.png", small, "PNG")
    write_image(tmp_path / "mass/masks" / f"{STEMS[1]}.png", np.zeros((20, 20), np.uint8), "PNG")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    with caplog.at_level("WARNING"):
        assert main(["tile", "-q", "--params", str(params)]) == 0
    case = f"differ from images 'images/*.png' only in case and are left out, e.g. {images}"
    assert f"1 file(s) {case}/{STEMS[0]}.PNG" in caplog.text
    said = f"1 scene(s) smaller than a chip (32 px) give no chips: {images / STEMS[1]}.png (as "
    assert said in caplog.text and ".vrt) (20x20); use a smaller tile.chip_size" in caplog.text


def test_a_removed_tile_leaves_no_prepared_files_and_a_split_left_empty_is_said(tmp_path, caplog):
    """Tiled again after one tile was taken out of the set, its prepared VRT and labels are
    gone (a `predict <set>/*.vrt` picked them up); 4 tiles at val_fraction 0.1 give no val
    tile, which is said at tile time, not found out in train."""
    massachusetts_like(tmp_path / "mass")
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    prepared = tmp_path / "chips/tilesets/mass"
    assert (prepared / f"{STEMS[0]}.vrt").exists()
    for folder in ("images", "masks"):
        (tmp_path / "mass" / folder / f"{STEMS[0]}.png").unlink()
    split = {"val_fraction": 0.1, "test_fraction": 0.25, "seed": 3}
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass", split=split)])
    with caplog.at_level("WARNING"):
        assert main(["tile", "-q", "--params", str(params)]) == 0
    assert sorted(p.name for p in prepared.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in STEMS[1:] for suffix in (".vrt", ".labels.tif")
    )
    assert "4 tiles: val_fraction 0.1 gives no val tile (round(0.1 x 4) = 0)" in caplog.text


def test_a_paletted_label_image_is_read_by_its_colours(tmp_path):
    """Red roads on white saved as a palette PNG (what paint programs write): read by the
    colours of its table, as the same mask in RGB (its indexes were read as grey values)."""
    red_on_white(tmp_path / "dg")
    for stem in ["104", "113", "343"]:
        path = tmp_path / "dg/train" / f"{stem}_mask.png"
        rgb = raster.read_all(path)
        colours, index = np.unique(rgb.reshape(3, -1).T, axis=0, return_inverse=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(
                path, "w", driver="PNG", width=SIZE, height=SIZE, count=1, dtype="uint8",
                photometric="palette",
            ) as dst:  # fmt: skip
                dst.write(index.reshape(1, SIZE, SIZE).astype(np.uint8))
                dst.write_colormap(1, {i: (*map(int, c), 255) for i, c in enumerate(colours)})
    params = params_file(tmp_path, [red_entry(tmp_path / "dg")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    labels = raster.read_all(tmp_path / "chips/tilesets/dg/104.labels.tif")[0]
    assert (labels[10:21] == 1).all() and (labels[21:] == 0).all() and (labels[:10] == 0).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the writing
def test_a_fill_that_is_the_tiles_own_nodata_is_no_conflict(tmp_path):
    """GeoTIFF tiles declaring nodata 255 in a set with fill [255, 255, 255] (SpaceNet's recipe
    declares fill 0 for tiles that declare nodata 0): prepared as before, the fill nodata."""
    massachusetts_like(tmp_path / "mass")
    for stem in STEMS:
        png = tmp_path / "mass/images" / f"{stem}.png"
        raster.write_geotiff(
            png.with_suffix(".tif"), raster.read_all(png), crs=None, transform=None, nodata=255
        )
        png.unlink()
    params = params_file(tmp_path, [mass_entry(tmp_path / "mass", images="images/*.tif")])
    assert main(["tile", "-q", "--params", str(params)]) == 0
    valid = raster.read_valid_mask(tmp_path / "chips/tilesets/mass" / f"{STEMS[0]}.vrt")
    assert not valid[:, :FILL_COLS].any() and valid[:, FILL_COLS:].all()
