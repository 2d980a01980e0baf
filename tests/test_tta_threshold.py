"""The threshold of predictions averaged over the eight flips and rotations: chosen by evaluate
with tta on the validation chips, kept in model.json, used by predict --tta."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline import tta_threshold
from pipeline.config import (
    DataParams,
    EvaluateParams,
    PredictOptions,
    RegisterParams,
    SceneSource,
    TileParams,
)
from pipeline.datasets import SegmentationChips, chip_normalisation, read_stats
from pipeline.evaluate import run_evaluate
from pipeline.inference import forward_probs
from pipeline.metrics import DEFAULT_THRESHOLDS
from pipeline.model import ModelConfig, build_unet, load_model, save_model
from pipeline.model_config import read_config
from pipeline.predict import predict_raster
from pipeline.tta_threshold import choose_tta_threshold
from tests.conftest import BANDS, scene_entries


def _model(folder: Path, chips_dir: Path, **update) -> Path:
    stats = read_stats(chips_dir)
    torch.manual_seed(3)
    cfg = ModelConfig(
        encoder="resnet18",
        bands=BANDS,
        mean=stats["mean"],
        std=stats["std"],
        chip_size=64,
        threshold=0.3,
        **update,
    )
    model = build_unet(cfg)
    head = [m for m in model.segmentation_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # a head biased so that probabilities spread over (0, 1)
        head.bias.fill_(-0.3)
    return save_model(model, cfg, folder)


def _eight_view_mean(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The mean of the eight dihedral views, undone, written out with numpy rotations."""
    device = torch.device("cpu")
    total = np.zeros((x.shape[0], x.shape[2], x.shape[3]))
    for k in range(4):
        for flip in (False, True):
            view = torch.rot90(x, k, (2, 3))
            view = torch.flip(view, (3,)) if flip else view
            p = forward_probs(model, view.contiguous(), device)
            p = np.flip(p, 2) if flip else p
            total += np.rot90(p, -k, (1, 2))
    return total / 8


def test_the_tta_threshold_is_f1_best_on_the_eight_view_mean_of_the_validation_chips(
    tmp_path, chips_dir, monkeypatch
):
    model_dir = _model(tmp_path / "model", chips_dir)
    tile = TileParams(out_dir=chips_dir, chip_size=64, stride=64)
    views = []  # the real forward pass, its tta argument recorded: F1 alone cannot tell here

    def recorded(*args, **kwargs):
        views.append(kwargs.get("tta"))
        return forward_probs(*args, **kwargs)

    monkeypatch.setattr(tta_threshold, "forward_probs", recorded)
    chosen = choose_tta_threshold(model_dir, tile)
    assert chosen is not None
    assert views and all(views), "every validation batch predicted as the eight-view mean"

    stats = read_stats(chips_dir)
    norm, _, _ = chip_normalisation(stats, "dataset", tile.stats_path)
    val = SegmentationChips(chips_dir, "val", norm)
    model, _ = load_model(model_dir)
    probs, truth, valid = [], [], []
    for i in range(len(val)):
        x, y, v = val[i]
        probs.append(_eight_view_mean(model, x[None])[0])
        truth.append(y[0].numpy() > 0.5)
        valid.append(v[0].numpy() > 0.5)
    p, t, ok = (np.stack(a)[np.stack(valid)] for a in (probs, truth, valid))

    def f1(th: float) -> float:
        tp = np.sum((p >= th) & t)
        fp, fn = np.sum((p >= th) & ~t), np.sum((p < th) & t)
        return 2 * tp / max(2 * tp + fp + fn, 1)

    best = max(f1(th) for th in DEFAULT_THRESHOLDS)
    assert f1(chosen) == pytest.approx(best, abs=2e-3)
    assert 0 < best < 1, "the check needs a model whose F1 depends on the threshold"


def test_model_json_names_threshold_tta_only_when_it_is_set(tmp_path, chips_dir):
    """A roadseg from before threshold_tta refuses fields it does not know: a model without
    one must not name it."""
    model_dir = _model(tmp_path / "model", chips_dir)
    assert "threshold_tta" not in json.loads((model_dir / "model.json").read_text())
    assert read_config(model_dir).threshold_tta is None
    with_tta = _model(tmp_path / "tta", chips_dir, threshold_tta=0.38)
    assert json.loads((with_tta / "model.json").read_text())["threshold_tta"] == 0.38


def test_without_validation_chips_or_with_other_bands_there_is_no_tta_threshold(
    tmp_path, chips_dir
):
    model_dir = _model(tmp_path / "model", chips_dir)
    config = read_config(model_dir)
    other = config.model_copy(update={"bands": ["nir", "red", "green", "blue"]})
    (model_dir / "model.json").write_text(other.model_dump_json())
    assert choose_tta_threshold(model_dir, TileParams(out_dir=chips_dir)) is None
    assert choose_tta_threshold(model_dir, TileParams(out_dir=tmp_path / "no_chips")) is None


def test_validation_chips_without_road_choose_no_threshold(tmp_path, chips_dir, caplog):
    """With no road pixel F1 is best at "nothing is road" (a threshold of 1) or "all is road":
    no threshold is chosen, the model's stays."""
    roadless = tmp_path / "chips"
    shutil.copytree(chips_dir, roadless)
    for path in roadless.glob("*.masks.npy"):
        masks = np.load(path)
        np.save(path, np.where(masks == 1, 0, masks).astype(masks.dtype))
    model_dir = _model(tmp_path / "model", roadless)
    assert choose_tta_threshold(model_dir, TileParams(out_dir=chips_dir)) is not None
    assert choose_tta_threshold(model_dir, TileParams(out_dir=roadless)) is None
    assert "no road in the validation chips" in caplog.text


def test_evaluate_with_tta_keeps_its_threshold_and_predict_tta_uses_it(
    tmp_path, chips_dir, scenes_dir, scheduler, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    model_dir = _model(tmp_path / "model", chips_dir)
    entries = scene_entries(scenes_dir)
    test = next(e for e in entries if e.get("split") == "test")
    data = DataParams(
        scenes=[SceneSource(**{**test, "name": "held_out"})],
        bands=BANDS,
    )
    ev = EvaluateParams(
        window=128,
        overlap=32,
        batch_size=4,
        tta=True,
        metrics_path=tmp_path / "eval.json",
        plots_dir=tmp_path / "plots",
        reports_dir=tmp_path / "reports",
    )
    tile = TileParams(out_dir=chips_dir, chip_size=64, stride=64, workers=1)
    reg = RegisterParams(experiment="tta", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    expected = choose_tta_threshold(model_dir, tile)
    result = run_evaluate(ev, data, tile, model_dir, reg)

    config = read_config(model_dir)
    assert config.threshold == 0.3, "the plain threshold stays train's"
    assert config.threshold_tta == pytest.approx(expected) and expected != 0.3
    assert result["threshold"] == pytest.approx(expected)
    scores = json.loads(ev.metrics_path.read_text())
    assert "eight flips" in scores["threshold_source"] and scores["views"] == 8

    image = Path(test["image"])
    for tta, threshold in ((True, expected), (False, 0.3)):
        out = tmp_path / f"pred_{tta}.tif"
        options = PredictOptions(model=model_dir, scheduler=scheduler, tta=tta, progress=False)
        predict_raster(image, out, options)
        with rasterio.open(out) as dst:
            assert float(dst.tags()["threshold"]) == pytest.approx(threshold)
        assert f'minimumValue="{threshold:.6g}"' in out.with_suffix(".qml").read_text()
