"""params.yaml -> typed Params: the shipped file validates, mistakes are errors naming the key."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.tile.chip_size % 32 == 0
    assert p.train.encoder in p.pretrain.archs
    assert any(s.split == "test" for s in p.data.scenes)
    assert "demo_region" not in {s.name for s in p.data.scenes}, "the demo region must stay unseen"
    assert "demo_region" in {s.name for s in p.synth.scenes}


def test_unknown_key_is_an_error_naming_it(tmp_path):
    data = _shipped()
    data["tile"]["chip_sise"] = 256
    with pytest.raises(ConfigError, match=r"tile\.chip_sise"):
        load_params(_write(tmp_path, data))


def test_chip_size_must_divide_by_32(tmp_path):
    data = _shipped()
    data["tile"]["chip_size"] = 250
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_params(_write(tmp_path, data))


def test_encoder_needs_pretraining_when_repo_weights(tmp_path):
    data = _shipped()
    data["train"]["encoder"] = "vgg16_bn"
    with pytest.raises(ConfigError, match="pretrain.archs"):
        load_params(_write(tmp_path, data))


def test_scene_needs_exactly_one_label_source(tmp_path):
    data = _shipped()
    data["data"]["scenes"].append({"name": "own", "image": "own.tif"})
    with pytest.raises(ConfigError, match="exactly one of 'roads' or 'labels'"):
        load_params(_write(tmp_path, data))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")


# ------------------------------------------------------------- data.scenes {synth: all}
def test_synth_scenes_reach_data_once_with_their_splits():
    """The shipped params list each synthetic scene once (synth.scenes); data.scenes takes them
    all with {synth: all}: their files, their splits, and no demo_region (split: none)."""
    raw = _shipped()
    assert raw["data"]["scenes"] == [{"synth": "all"}]
    p = load_params(ROOT / "params.yaml")
    by_name = {s.name: s for s in p.data.scenes}
    assert set(by_name) == {s.name for s in p.synth.scenes if s.split != "none"}
    assert by_name["heldout"].split == "test"
    assert by_name["val_a"].split == by_name["val_b"].split == "val"
    assert by_name["scene_a"].split == "auto"
    a = by_name["scene_a"]
    out = p.synth.out_dir
    assert (a.image, a.roads, a.landcover) == (
        out / "scene_a.tif",
        out / "scene_a.roads.gpkg",
        out / "scene_a.landcover.tif",
    )
    assert [s.name for s in p.data.scenes][-1] == "heldout", "test scenes come last"


def test_synth_scenes_beside_a_users_own_scene(tmp_path):
    data = _shipped()
    data["synth"]["out_dir"] = "elsewhere"
    data["data"]["scenes"].insert(0, {"name": "own", "image": "own.tif", "labels": "own.lab.tif"})
    p = load_params(_write(tmp_path, data))
    names = [s.name for s in p.data.scenes]
    assert names[0] == "own" and "scene_a" in names
    assert p.data.scenes[1].image == Path("elsewhere") / f"{names[1]}.tif"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["data"]["scenes"].append({"synth": "all"}), "listed more than once"),
        (lambda d: d["synth"].update(scenes=[]), r"takes synth.scenes, which is empty"),
        (
            lambda d: d["synth"]["scenes"][0].update(split="tset"),
            r"synth.scenes.0.split: Input should be 'auto', 'train', 'val', 'test' or 'none'",
        ),
        (
            lambda d: d["synth"].update(scenes=[{"name": "x", "seed": 1, "split": "none"}]),
            "every synth scene has split: none",
        ),
        (
            lambda d: d["data"]["scenes"].append(
                {"name": "scene_a", "image": "a.tif", "labels": "a.tif"}
            ),
            r"data.scenes.1: scene 'scene_a' is also a synthetic scene",
        ),
        (
            lambda d: d["data"]["scenes"].append({"synth": "some"}),
            r"data.scenes.1.synth.synth: Input should be 'all'",
        ),
        (
            lambda d: d["data"]["scenes"][0].update(split="val"),
            r"data.scenes.0.synth.split: Extra inputs",
        ),
        (
            lambda d: d["synth"]["scenes"].append({"name": "scene_a", "seed": 99}),
            r"synth.scenes: Value error, duplicate scene names: \['scene_a'\]",
        ),
        (  # a mistake in a user's own scene is named at its place in params.yaml
            lambda d: d["data"]["scenes"].append({"name": "own", "image": "own.tif"}),
            r"data.scenes.1.scene: Value error, scene 'own': give exactly one of",
        ),
    ],
)
def test_synth_scenes_mistakes_are_errors_naming_them(tmp_path, change, message):
    data = _shipped()
    change(data)
    with pytest.raises(ConfigError, match=message):
        load_params(_write(tmp_path, data))


def test_the_shipped_recipes_are_valid_params_files():
    from pipeline.config import TileSetSource

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/params.yaml"))
    assert recipes
    for path in recipes:
        p = load_params(path)  # a ConfigError names the file and the field
        tile_sets = [e for e in p.data.scenes if isinstance(e, TileSetSource)]
        # a tile without georeferencing needs a pixel size; road vectors need georeferencing
        assert tile_sets and all(t.pixel_size_m or t.roads for t in tile_sets), path
        assert p.pretrain.archs or p.train.encoder_weights == "none", path
