"""DVC as its users expect: metrics and plots live in git, `dvc exp run -S` tries a param.

A tiny copy of the project in a fresh git repository with pretraining off (`pretrain.archs:
[]`, `train.encoder_weights: none`): `dvc repro` runs without a backbone (the train stage
depends on models/backbones, which then holds only its tracked README); the metrics and plots
files are not git-ignored, so they are committed with dvc.lock; `dvc exp run -S
train.epochs=2` then runs an experiment that `dvc exp show` lists with its metrics, `dvc
metrics diff` compares it with the commit, and `dvc plots diff` draws the training curves, the
precision-recall curve and the error maps of both.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_end_to_end import BIN, ROOT, copy_project, run, tiny_params

pytestmark = pytest.mark.slow

COMMITTED = ["metrics/train.json", "metrics/eval.json", "plots/train.csv", "plots/pr.csv"]


def _project(repo: Path) -> dict:
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["pretrain"]["archs"] = []
    params["train"].update(encoder_weights="none", epochs=1, max_batches_per_epoch=2)
    return copy_project(repo, params)


def _exit_code(cmd: list[str], cwd: Path, env: dict) -> int:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=60).returncode


def _experiment(shown: list[dict], name: str) -> dict:
    """The data of experiment ``name`` in `dvc exp show --json`."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") == name:
                return exp["revs"][0]["data"]
    raise AssertionError(f"experiment {name!r} not listed by dvc exp show: {shown}")


def _check_trained_without_pretraining(repo: Path, env: dict) -> None:
    """No pretrain stage ran, no backbone was written, and the train stage is up to date."""
    assert (repo / "models/unet").is_dir()
    assert not list((repo / "models/backbones").glob("*.safetensors"))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert not any(name.startswith("pretrain") for name in lock["stages"])
    assert "models/backbones" in [d["path"] for d in lock["stages"]["train"]["deps"]]
    status = run([str(BIN / "dvc"), "status", "train"], repo, env).stdout
    assert "changed" not in status, status


def test_dvc_exp_run_sets_a_param_and_compares_with_the_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = _project(repo)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], repo, env)
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "project"], repo, env)

    assert (repo / "models/backbones/README.md").exists(), "the README is tracked by git"
    run([dvc, "repro"], repo, env)
    _check_trained_without_pretraining(repo, env)
    for rel in COMMITTED:  # DVC does not cache them: git must not ignore them
        assert (repo / rel).is_file(), rel
        ignored = _exit_code(["git", "check-ignore", "-q", rel], repo, env)
        assert ignored == 1, f"{rel} is git-ignored: dvc metrics/plots diff could not compare it"
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "one epoch"], repo, env)
    tracked = run(["git", "ls-files"], repo, env).stdout.split()
    assert set(COMMITTED) <= set(tracked)

    run([dvc, "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs"], repo, env)

    shown = json.loads(run([dvc, "exp", "show", "--json"], repo, env).stdout)
    exp = _experiment(shown, "two-epochs")
    assert exp["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert exp["metrics"]["metrics/train.json"]["data"]["epochs"] == 2
    assert 0.0 <= exp["metrics"]["metrics/eval.json"]["data"]["iou"] <= 1.0

    diff = json.loads(run([dvc, "metrics", "diff", "HEAD", "--json"], repo, env).stdout)
    assert diff["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}

    plots = json.loads(run([dvc, "plots", "diff", "HEAD", "--json"], repo, env).stdout)["data"]
    for title in (
        "Validation IoU and F1 by epoch",
        "Loss by epoch",
        "Precision-recall on the test scenes",
    ):
        [vega] = plots[title]
        assert set(vega["revisions"]) == {"workspace", "HEAD"}, title
        assert vega["content"]["data"]["values"], title
    images = {key: [p["revisions"] for p in found] for key, found in plots.items()}
    assert sorted(images["reports/heldout_error_map.png"]) == [["HEAD"], ["workspace"]]
    assert "reports/heldout_quicklook.png" in images
