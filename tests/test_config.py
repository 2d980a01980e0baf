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
    data["data"]["scenes"][0].pop("roads")
    with pytest.raises(ConfigError, match="exactly one of 'roads' or 'labels'"):
        load_params(_write(tmp_path, data))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
