"""train.label_noise: loss weights that do not punish roads the labels miss (OSM omissions)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipeline.config import LabelNoiseParams, load_params
from pipeline.label_noise import LabelNoise, near
from pipeline.train import masked_loss
from tests.test_train import write_params


def _road_column(size: int = 32, col: int = 4) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size)
    target[..., col] = 1.0
    return target


def test_near_marks_every_pixel_within_the_radius_in_a_square():
    mask = torch.zeros(1, 1, 9, 9)
    mask[0, 0, 4, 4] = 1.0
    grown = near(mask, 2)[0, 0]
    assert grown[2:7, 2:7].eq(1).all() and grown.sum() == 25
    assert near(mask, 0).equal(mask)


def test_edge_band_ignores_background_beside_the_labels_only():
    noise = LabelNoise(far_px=10, far_weight=1.0, confidence=0.8, band_px=2)
    target, valid = _road_column(), torch.ones(1, 1, 32, 32)
    valid[..., 20:, :] = 0.0  # nodata stays out whatever the label says
    w = noise.weights(torch.zeros_like(target), target, valid)[0, 0]
    assert w[:20, 4].eq(1).all()  # the road itself
    assert w[:20, 2:4].eq(0).all() and w[:20, 5:7].eq(0).all()  # the band, 2 px each side
    assert w[:20, 7:].eq(1).all() and w[:20, :2].eq(1).all()  # beyond it
    assert w[20:].eq(0).all()


def test_only_confident_positives_far_from_every_label_are_down_weighted():
    noise = LabelNoise(far_px=6, far_weight=0.1, confidence=0.8, band_px=0)
    target, valid = _road_column(), torch.ones(1, 1, 32, 32)
    logits = torch.full_like(target, -3.0)
    logits[..., 20] = 3.0  # the model finds a road 16 px from the labelled one
    logits[..., 8] = 3.0  # and a false alarm 4 px beside it, within far_px
    logits[..., 28] = 0.5  # p = 0.62 < confidence: an unsure guess far away
    w = noise.weights(logits, target, valid)[0, 0]
    assert torch.allclose(w[:, 20], torch.tensor(0.1))
    assert w[:, 8].eq(1).all() and w[:, 28].eq(1).all() and w[:, 4].eq(1).all()
    assert w[:, 15].eq(1).all()  # far, but the model calls it background: no change


def test_an_unlabelled_road_found_costs_less_with_the_weights_and_a_near_miss_does_not():
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train
    params = params.model_copy(update={"loss": "bce_dice"})
    noise = LabelNoise(far_px=6, far_weight=0.0, confidence=0.8, band_px=0)
    target, valid = _road_column(), torch.ones(1, 1, 32, 32)
    logits = torch.full_like(target, -4.0)
    logits[..., 4] = 4.0
    found = logits.clone()
    found[..., 20] = 4.0  # the road the labels forgot
    plain = masked_loss(found, target, valid, params)
    tolerant = masked_loss(found, target, noise.weights(found, target, valid), params)
    exact = masked_loss(logits, target, valid, params)
    assert tolerant.item() == pytest.approx(exact.item(), rel=0.05) and plain > 2 * tolerant
    wide = logits.clone()
    wide[..., 6] = 4.0  # a false alarm 2 px from the label is still a mistake
    assert masked_loss(wide, target, noise.weights(wide, target, valid), params).item() == (
        pytest.approx(masked_loss(wide, target, valid, params).item())
    )


def test_metres_become_chip_pixels_and_defaults_are_off():
    assert LabelNoise.from_params(LabelNoiseParams(), 1.0) is None
    noise = LabelNoise.from_params(
        LabelNoiseParams(far_positive_weight=0.2, far_from_label_m=10, edge_band_m=1.0), 0.5
    )
    assert (noise.far_px, noise.band_px, noise.far_weight) == (20, 2, 0.2)
    with pytest.raises(ValueError, match="pixel size"):
        LabelNoise.from_params(LabelNoiseParams(edge_band_m=2), None)


def train_losses(tmp_path: Path, scenes_dir: Path, chips_dir: Path, **train) -> list[float]:
    """Train 2 epochs in ``tmp_path`` with the ``train`` params given; the loss per epoch."""
    from pipeline.train import run_train

    params_file = write_params(tmp_path, scenes_dir, chips_dir, epochs=2, **train)
    p = load_params(params_file)
    run_train(p.train, p.tile, p.pretrain, p.register, params_file=params_file)
    with open(tmp_path / p.train.plot_path) as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def test_training_uses_the_weights_and_records_them(tmp_path, scenes_dir, chips_dir, monkeypatch):
    (tmp_path / "plain").mkdir()
    (tmp_path / "tolerant").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    plain = train_losses(tmp_path / "plain", scenes_dir, chips_dir, precision="fp32")
    monkeypatch.chdir(tmp_path / "tolerant")
    noise = {"far_positive_weight": 0.0, "edge_band_m": 3.0}
    tolerant = train_losses(
        tmp_path / "tolerant", scenes_dir, chips_dir, precision="fp32", label_noise=noise
    )
    assert len(plain) == len(tolerant) == 2
    # the band takes background pixels out of the loss from the first step: a different loss
    assert all(abs(a - b) > 1e-4 for a, b in zip(plain, tolerant, strict=True))

    import mlflow

    p = load_params(tmp_path / "tolerant/params.yaml")
    mlflow.set_tracking_uri(p.register.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["train.label_noise.edge_band_m"] == "3.0"
