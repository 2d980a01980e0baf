"""train.thin_roads: road pixels weighted by how narrow their road is, so a metre of track
counts about as much as a metre of motorway."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ThinRoadParams, load_params
from pipeline.thin_roads import ThinRoadWeight, half_width
from pipeline.train import masked_loss
from tests.test_label_noise import train_losses


def _roads(size: int = 64) -> torch.Tensor:
    """A 3 px track (rows 10-12), a 20 px motorway (rows 30-49) and a 6 px road (cols 5-10),
    crossing them."""
    target = torch.zeros(1, 1, size, size)
    target[..., 10:13, :] = 1.0
    target[..., 30:50, :] = 1.0
    target[..., :, 5:11] = 1.0
    return target


def test_half_width_is_the_depth_of_the_road_centre_on_every_pixel_of_the_road():
    half = half_width(_roads(), cap=5)[0, 0]
    assert half[10:13, 30].tolist() == [2, 2, 2]  # the track's edges get its centre's depth
    assert half[20, 5:11].tolist() == [3] * 6
    assert half[30:50, 30].eq(5).all()  # wider than the cap: the cap
    assert half[0:8, 30].eq(0).all()  # off the road


def test_narrow_roads_weigh_more_per_pixel_and_wide_ones_one():
    target, valid = _roads(), torch.ones(1, 1, 64, 64)
    valid[..., 60:, :] = 0.0  # nodata stays out whatever the label says
    w = ThinRoadWeight(reference_px=8.0, max_weight=3.0).weights(target, valid)[0, 0]
    assert torch.allclose(w[10:13, 30], torch.tensor(8 / 3.5))  # 3 px: width 2 x 2 - 0.5
    assert torch.allclose(w[20, 5:11], torch.tensor(8 / 5.5))  # 6 px
    assert w[30:50, 30].eq(1).all()  # the motorway
    assert w[0:8, 30].eq(1).all() and w[14:28, 40].eq(1).all()  # background
    assert w[60:].eq(0).all()
    capped = ThinRoadWeight(reference_px=20.0, max_weight=3.0).weights(target, valid)[0, 0]
    assert capped[10:13, 30].eq(3).all()  # 20 / 3.5 > 3


def test_a_road_along_the_chip_edge_is_not_taken_for_a_thinner_one():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 0:2, :] = 1.0  # the last 2 px of a 6 px road whose rest is off the chip
    half = half_width(target, cap=5)[0, 0]
    assert half[0:2, 10].eq(2).all()  # as deep as the chip shows it, never less


def test_a_perfect_prediction_costs_nothing_whatever_the_weights():
    """Weights enter the soft Dice once per pixel: with them squared in the overlap the loss
    went below zero and rewarded over-weighting rather than finding roads."""
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train
    params = params.model_copy(update={"loss": "bce_dice"})
    target = _roads()
    logits = torch.where(target > 0, 12.0, -12.0)
    weights = ThinRoadWeight(reference_px=8.0, max_weight=3.0).weights(
        target, torch.ones_like(target)
    )
    assert weights.max() > 2  # the track weighs more than one
    assert 0 <= masked_loss(logits, target, weights, params).item() < 1e-3
    missed = torch.where(target > 0, -12.0, -12.0)
    assert masked_loss(missed, target, weights, params).item() > 1.0


def test_metres_become_chip_pixels_and_the_default_is_off():
    assert ThinRoadWeight.from_params(ThinRoadParams(), 1.0) is None
    weight = ThinRoadWeight.from_params(ThinRoadParams(max_weight=2.5, reference_width_m=8), 0.5)
    assert (weight.reference_px, weight.max_weight) == (16.0, 2.5)
    with pytest.raises(ValueError, match="pixel size"):
        ThinRoadWeight.from_params(ThinRoadParams(max_weight=2.0), None)


def test_training_uses_the_weights_and_records_them(tmp_path, scenes_dir, chips_dir, monkeypatch):
    arms = {
        "plain": {"thin_roads": {"max_weight": 1.0}},
        # and its metrics and plot where this run's params say, beside another run's
        "thin": {
            "thin_roads": {"max_weight": 3.0, "reference_width_m": 12},
            "metrics_path": "runs/thin/train.json",
            "plot_path": "runs/thin/train.csv",
        },
    }
    losses = {}
    for name, train in arms.items():
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        losses[name] = train_losses(
            tmp_path / name, scenes_dir, chips_dir, precision="fp32", **train
        )
    assert len(losses["plain"]) == len(losses["thin"]) == 2
    assert all(abs(a - b) > 1e-4 for a, b in zip(losses["plain"], losses["thin"], strict=True))
    assert (tmp_path / "thin/runs/thin/train.json").exists()
    assert not (tmp_path / "thin/metrics").exists() and not (tmp_path / "thin/plots").exists()

    import mlflow

    p = load_params(tmp_path / "thin/params.yaml")
    mlflow.set_tracking_uri(p.register.tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.params["train.thin_roads.max_weight"] == "3.0"
