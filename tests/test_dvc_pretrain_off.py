"""`dvc repro` with pretraining off: `pretrain.archs: []` and `train.encoder_weights: none`.

The train stage depends on models/backbones (the pretrain stages' outputs); with no backbone to
pretrain the folder holds only its tracked README, and the pipeline must still run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_end_to_end import BIN, ROOT, copy_project, run, tiny_params

pytestmark = pytest.mark.slow


def test_dvc_repro_trains_without_pretraining(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["pretrain"]["archs"] = []
    params["train"].update(encoder_weights="none", epochs=1, max_batches_per_epoch=2)
    env = copy_project(repo, params)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo, env)
    run([*git, "add", "-A"], repo, env)
    run([*git, "commit", "-qm", "init"], repo, env)
    assert (repo / "models/backbones/README.md").exists(), "the README is tracked by git"

    run([str(BIN / "dvc"), "repro", "train"], repo, env)

    assert (repo / "models/unet").is_dir()
    assert not list((repo / "models/backbones").glob("*.safetensors"))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert not any(name.startswith("pretrain") for name in lock["stages"])
    assert "models/backbones" in [d["path"] for d in lock["stages"]["train"]["deps"]]
    status = run([str(BIN / "dvc"), "status", "train"], repo, env).stdout
    assert "changed" not in status, status
