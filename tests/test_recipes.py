"""The shipped recipes as their README section runs them, and DVC as its users expect.

`cp recipes/<r>/params.yaml params.yaml && dvc repro` in a copy of the project, on a small tile
set laid out as the public sets ship (written here), with only the data root and the budgets
shrunk: every stage runs (synth with no scenes, no pretraining: `pretrain.archs: []`,
`train.encoder_weights: none`) through to a registered model. Both recipes share that layout of
stages; the Massachusetts one runs whole, every recipe's keys are checked against dvc.yaml.

On that repository (one `dvc repro` for both, the slowest part of the suite): the metrics and
plots files are not git-ignored, so they are committed with dvc.lock; `dvc exp run -S
train.epochs=2` then runs an experiment that `dvc exp show` lists with its metrics, `dvc
metrics diff` compares it with the commit, and `dvc plots diff` draws the training curves, the
precision-recall curve and the error maps of both."""

from __future__ import annotations

import json
import re
import subprocess
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


GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
DVC = str(BIN / "dvc")
COMMITTED = ["metrics/train.json", "metrics/eval.json", "plots/train.csv", "plots/pr.csv"]


@pytest.fixture(scope="module")
def massachusetts_repo(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A copy of the project with the Massachusetts recipe as params.yaml, committed, after one
    `dvc repro`: (repository, environment, params)."""
    recipe = ROOT / "recipes/massachusetts/params.yaml"
    data = tmp_path_factory.mktemp("massachusetts")
    massachusetts_like(data)  # images/<id>.png and masks/<id>.png, white fill
    split = {"val_fraction": 0.0, "test_fraction": 0.0, "val": [STEMS[0]], "test": [STEMS[1]]}
    params = _shrunk(recipe, {"root": str(data), "split": split})
    repo = tmp_path_factory.mktemp("repo")
    env = copy_project(repo, params)
    run(["git", "init", "-q"], repo, env)
    run([*GIT, "add", "-A"], repo, env)
    run([*GIT, "commit", "-qm", "recipe"], repo, env)
    assert (repo / "models/backbones/README.md").exists(), "the README is tracked by git"
    run([DVC, "repro"], repo, env)
    return repo, env, params


def test_the_massachusetts_recipe_runs_under_dvc_repro(massachusetts_repo) -> None:
    """No pretrain stage ran, no backbone was written (train depends on models/backbones,
    which then holds only its tracked README), and the model is registered as champion."""
    repo, env, params = massachusetts_repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"synth", "tile", "train", "evaluate", "register"} <= set(lock["stages"])
    assert not any(name.startswith("pretrain") for name in lock["stages"])
    assert "models/backbones" in [d["path"] for d in lock["stages"]["train"]["deps"]]
    assert not list((repo / "models/backbones").glob("*.safetensors"))
    scores = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= scores["iou"] <= 1 and scores["valid_pixels"] > 0
    registered = json.loads((repo / "models/registered.json").read_text())
    model_name = params["register"]["model_name"]
    assert registered["model_name"] == model_name and registered["alias"] == "champion"
    status = run([DVC, "status"], repo, env).stdout
    assert "changed" not in status, status


def _exit_code(cmd: list[str], cwd: Path, env: dict) -> int:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=60).returncode


def _experiment(shown: list[dict], name: str) -> dict:
    """The data of experiment ``name`` in `dvc exp show --json`."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") == name:
                return exp["revs"][0]["data"]
    raise AssertionError(f"experiment {name!r} not listed by dvc exp show: {shown}")


def test_dvc_exp_run_sets_a_param_and_compares_with_the_commit(massachusetts_repo) -> None:
    """Runs after the test above (pytest keeps file order): it commits to the shared
    repository and runs an experiment in it."""
    repo, env, _ = massachusetts_repo
    for rel in COMMITTED:  # DVC does not cache them: git must not ignore them
        assert (repo / rel).is_file(), rel
        ignored = _exit_code(["git", "check-ignore", "-q", rel], repo, env)
        assert ignored == 1, f"{rel} is git-ignored: dvc metrics/plots diff could not compare it"
    run([*GIT, "add", "-A"], repo, env)
    run([*GIT, "commit", "-qm", "one epoch"], repo, env)
    tracked = run(["git", "ls-files"], repo, env).stdout.split()
    assert set(COMMITTED) <= set(tracked)
    [error_map] = [p.relative_to(repo).as_posix() for p in repo.glob("reports/*_error_map.png")]

    run([DVC, "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs"], repo, env)

    shown = json.loads(run([DVC, "exp", "show", "--json"], repo, env).stdout)
    exp = _experiment(shown, "two-epochs")
    assert exp["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert exp["metrics"]["metrics/train.json"]["data"]["epochs"] == 2
    assert 0.0 <= exp["metrics"]["metrics/eval.json"]["data"]["iou"] <= 1.0

    diff = json.loads(run([DVC, "metrics", "diff", "HEAD", "--json"], repo, env).stdout)
    assert diff["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}

    plots = json.loads(run([DVC, "plots", "diff", "HEAD", "--json"], repo, env).stdout)["data"]
    for title in (
        "Validation IoU and F1 by epoch",
        "Loss by epoch",
        "Precision-recall on the test scenes",
    ):
        [vega] = plots[title]
        assert set(vega["revisions"]) == {"workspace", "HEAD"}, title
        assert vega["content"]["data"]["values"], title
    images = {key: [p["revisions"] for p in found] for key, found in plots.items()}
    assert sorted(images[error_map]) == [["HEAD"], ["workspace"]]
    assert error_map.replace("_error_map", "_quicklook") in images
