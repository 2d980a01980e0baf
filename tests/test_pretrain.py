"""The pretrain stage end to end on a tiny chips folder, with a real MLflow SQLite store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from rasterio.transform import from_origin
from safetensors.torch import load_file

from backbones import build_backbone
from backbones.encoders import encoder_name, load_backbone_weights
from pipeline.config import PretrainParams, RegisterParams, TrainParams
from pipeline.model import build_unet
from pipeline.model_config import ModelConfig
from pipeline.pretrain import load_pretrained, pretrain_backbone
from pipeline.pretrain_targets import ROAD_CLASSES
from pipeline.raster import write_geotiff
from pipeline.train import init_encoder
from tests.chipdata import BANDS, CLASSES, write_chips

META_KEYS = {
    "arch", "task", "in_channels", "num_classes", "classes", "input_size", "mean", "std",
    "data_fingerprint", "val_accuracy", "epochs",
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Chips + an MLflow store in one folder, which is also the working directory (MLflow puts
    its artifact root there)."""
    root = tmp_path_factory.mktemp("pretrain")
    write_chips(root / "chips")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root


def tracking(root: Path) -> RegisterParams:
    return RegisterParams(experiment="pretrain-test", tracking_uri=f"sqlite:///{root}/mlflow.db")


def params(root: Path, arch: str, **overrides: object) -> PretrainParams:
    cfg = dict(
        archs=[arch],
        out_dir=root / "models",
        input_size=32,
        epochs=2,
        batch_size=8,
        max_batches_per_epoch=2,
        lr=2e-3,
    )
    cfg.update(overrides)
    return PretrainParams(**cfg)


def run_rows(root: Path, run_id: str, table: str) -> list[tuple]:
    with sqlite3.connect(root / "mlflow.db") as db:
        cols = "key, value, step" if table == "metrics" else "key, value"
        return db.execute(f"SELECT {cols} FROM {table} WHERE run_uuid = ?", (run_id,)).fetchall()


def test_pretrain_writes_weights_meta_and_run(workdir: Path) -> None:
    # float32: at this 4-step budget the val accuracy on 12 patches swings between 0.25 and 1.0
    # with the seed and the precision (measured), and seed 0 in float32 is the case whose
    # accuracy check below was calibrated; bf16 pretraining runs in test_same_loop_trains_every_family
    p = params(workdir, "resnet18", precision="fp32")
    result = pretrain_backbone("resnet18", p, workdir / "chips", tracking(workdir))

    meta = json.loads(p.meta_path("resnet18").read_text())
    assert set(meta) == META_KEYS
    stats = json.loads((workdir / "chips" / "stats.json").read_text())
    assert meta["arch"] == "resnet18" and meta["classes"] == CLASSES and meta["num_classes"] == 3
    assert meta["task"] == "landcover"  # task auto, and the chips have land cover
    assert meta["in_channels"] == len(BANDS) and meta["input_size"] == 32 and meta["epochs"] == 2
    assert meta["mean"] == stats["mean"] and meta["std"] == stats["std"]
    assert meta["data_fingerprint"] == stats["fingerprint"]
    # colours separate the classes: well above chance (1/3)
    assert 0.5 < meta["val_accuracy"] <= 1.0
    assert {k: result[k] for k in META_KEYS} == meta
    # the atomic writes left no temporary files behind
    assert not [f for f in p.out_dir.iterdir() if f.name.endswith(".tmp")]

    # weights: the full classifier, loadable without unpickling, strictly into the classifier ...
    state = load_file(str(p.weights_path("resnet18")))
    assert "fc.weight" in state and state["fc.weight"].shape == (3, 512)
    build_backbone("resnet18", num_classes=3, in_channels=4).load_state_dict(state, strict=True)
    # ... and strictly into the U-Net encoder
    unet = smp.Unet(encoder_name("resnet18"), encoder_weights=None, in_channels=4, classes=1)
    load_backbone_weights(unet.encoder, state)
    torch.testing.assert_close(unet.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    loaded_state, loaded_meta = load_pretrained("resnet18", p.out_dir)
    assert loaded_meta == meta and loaded_state.keys() == state.keys()

    # the MLflow run: params, one train/val point per epoch, the confusion matrix
    metrics = run_rows(workdir, result["run_id"], "metrics")
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert sorted(step for k, _, step in metrics if k == key) == [1, 2], key
    assert [v for k, v, s in metrics if k == "val_accuracy" and s == 2] == [
        pytest.approx(meta["val_accuracy"])
    ]
    logged = dict(run_rows(workdir, result["run_id"], "params"))
    assert logged["arch"] == "resnet18" and logged["pretrain.lr"] == "0.002"
    with sqlite3.connect(workdir / "mlflow.db") as db:
        name, status, artifact_uri = db.execute(
            "SELECT name, status, artifact_uri FROM runs WHERE run_uuid = ?", (result["run_id"],)
        ).fetchone()
    assert (name, status) == ("pretrain-resnet18", "FINISHED")
    artifacts = Path(urlparse(artifact_uri).path if "://" in artifact_uri else artifact_uri)
    assert (artifacts / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((artifacts / "resnet18.json").read_text()) == meta


@pytest.mark.parametrize("arch", ["googlenet", "alexnet", "lenet5"])
def test_same_loop_trains_every_family(workdir: Path, arch: str) -> None:
    size = 64 if arch == "alexnet" else 32  # AlexNet's stride-4 stem and three pools need >= 63 px
    p = params(workdir, arch, epochs=1, max_batches_per_epoch=1, batch_size=4, input_size=size)
    result = pretrain_backbone(arch, p, workdir / "chips", tracking(workdir))
    state, meta = load_pretrained(arch, p.out_dir)
    assert meta["arch"] == arch and meta["val_accuracy"] == result["val_accuracy"]
    model = build_backbone(arch, num_classes=meta["num_classes"], in_channels=meta["in_channels"])
    model.load_state_dict(state, strict=True)
    if arch == "googlenet":
        assert any(k.startswith("aux1.") for k in state)  # aux heads trained and saved ...
        unet = smp.Unet(encoder_name(arch), encoder_weights=None, in_channels=4, classes=1)
        load_backbone_weights(unet.encoder, state)  # ... and skipped by the encoder


def test_too_small_patches_fail_early(workdir: Path) -> None:
    with pytest.raises(ValueError, match="cannot classify 32 px"):
        pretrain_backbone(
            "alexnet", params(workdir, "alexnet"), workdir / "chips", tracking(workdir)
        )


def test_load_pretrained_checks_the_arch(workdir: Path, tmp_path: Path) -> None:
    p = params(tmp_path, "resnet18")
    p.out_dir.mkdir()
    p.meta_path("resnet18").write_text(json.dumps({"arch": "resnet34"}))
    with pytest.raises(ValueError, match="resnet34"):
        load_pretrained("resnet18", p.out_dir)


@pytest.mark.parametrize(("task", "classes"), [("auto", ROAD_CLASSES), ("rotation", None)])
def test_pretraining_without_land_cover_feeds_the_unet_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, classes: list[str] | None
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    chips = write_chips(tmp_path / "chips", with_landcover=False, roads=True)
    extra = []
    if task == "rotation":  # and an unlabelled raster: 2 x 2 cells of 32 px, each 4 times
        image = np.random.default_rng(0).integers(1, 255, (4, 64, 64)).astype(np.uint8)
        grid = from_origin(500000, 5400000, 1.0, 1.0)
        extra = [write_geotiff(tmp_path / "u.tif", image, crs="EPSG:32632", transform=grid)]
    p = params(tmp_path, "resnet18", task=task, epochs=1, batch_size=8, unlabelled=extra)
    result = pretrain_backbone("resnet18", p, chips, tracking(tmp_path))
    logged = dict(run_rows(tmp_path, result["run_id"], "params"))
    assert logged["data.unlabelled_patches"] == ("16" if extra else "0")
    state, meta = load_pretrained("resnet18", p.out_dir)
    assert meta["task"] == ("roads" if task == "auto" else task)
    assert meta["classes"] == (classes or ["0°", "90°", "180°", "270°"])
    assert state["fc.weight"].shape == (len(meta["classes"]), 512)
    assert result["val_accuracy"] is not None
    # the train stage's own path: a U-Net as pipeline.model builds it, encoder_weights repo
    stats = json.loads((chips / "stats.json").read_text())
    config = ModelConfig(
        encoder="resnet18", bands=stats["bands"], mean=stats["mean"], std=stats["std"], chip_size=64
    )
    unet = build_unet(config)
    init_encoder(unet, TrainParams(encoder="resnet18", encoder_weights="repo"), p)
    torch.testing.assert_close(unet.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
