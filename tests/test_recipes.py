"""The shipped recipes as their README section runs them: `cp recipes/<r>/params.yaml
params.yaml && dvc repro` in a copy of the project, on small tile sets laid out as the public
sets ship (written here), with only the data root and the budgets shrunk. Every stage runs
(synth with no scenes, no pretraining) through to a registered model. Both recipes share that
layout of stages; the Massachusetts one runs whole, every recipe's keys are checked against
dvc.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_end_to_end import BIN, ROOT, copy_project, run
from tests.test_tilesets import STEMS, massachusetts_like

pytestmark = pytest.mark.slow

RECIPES = sorted((ROOT / "recipes").glob("*/params.yaml"))


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """Every dotted key path of a params tree ("train", "train.epochs", ...)."""
    keys = set()
    for name, value in tree.items():
        key = f"{prefix}{name}"
        keys.add(key)
        if isinstance(value, dict):
            keys |= _keys(value, key + ".")
    return keys


def _declared(dvc_yaml: dict) -> set[str]:
    """The params keys the stages declare or interpolate (``${...}``), pretrain's included."""
    keys = set(re.findall(r"\$\{([\w.]+)\}", json.dumps(dvc_yaml))) - {"item"}
    for stage in dvc_yaml["stages"].values():
        for param in stage.get("params", []) + stage.get("do", {}).get("params", []):
            keys.add(param)
    return keys


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_a_recipe_has_every_param_the_stages_read(recipe: Path) -> None:
    """DVC stops before any stage ("Could not find 'evaluate.release_dir'", a missing
    params key) when the recipe lacks a key dvc.yaml names."""
    params = yaml.safe_load(recipe.read_text())
    missing = _declared(yaml.safe_load((ROOT / "dvc.yaml").read_text())) - _keys(params)
    assert not missing, f"{recipe} lacks {sorted(missing)}"


def _shrunk(recipe: Path, entry: dict) -> dict:
    """The recipe with its one tile set pointed at test data and budgets a test can afford."""
    p = yaml.safe_load(recipe.read_text())
    (scene,) = p["data"]["scenes"]
    scene.update(entry)
    p["tile"].update(chip_size=32, stride=32, workers=1)
    p["train"].update(epochs=1, max_batches_per_epoch=2, batch_size=4, warmup_epochs=0.0)
    p["evaluate"].update(window=64, overlap=16, batch_size=4)
    return p


def _repro(repo: Path, params: dict) -> dict:
    env = copy_project(repo, params)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo, env)
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "recipe"], repo, env)
    run([str(BIN / "dvc"), "repro"], repo, env)
    return env


def _check_registered(repo: Path, env: dict, model_name: str) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"synth", "tile", "train", "evaluate", "register"} <= set(lock["stages"])
    assert not any(name.startswith("pretrain") for name in lock["stages"])
    scores = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= scores["iou"] <= 1 and scores["valid_pixels"] > 0
    registered = json.loads((repo / "models/registered.json").read_text())
    assert registered["model_name"] == model_name and registered["alias"] == "champion"
    status = run([str(BIN / "dvc"), "status"], repo, env).stdout
    assert "changed" not in status, status


def test_the_massachusetts_recipe_runs_under_dvc_repro(tmp_path: Path) -> None:
    recipe = ROOT / "recipes/massachusetts/params.yaml"
    data = tmp_path / "massachusetts"
    massachusetts_like(data)  # images/<id>.png and masks/<id>.png, white fill
    split = {"val_fraction": 0.0, "test_fraction": 0.0, "val": [STEMS[0]], "test": [STEMS[1]]}
    params = _shrunk(recipe, {"root": str(data), "split": split})
    repo = tmp_path / "repo"
    env = _repro(repo, params)
    _check_registered(repo, env, params["register"]["model_name"])
