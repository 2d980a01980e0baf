"""LeNet-5's published structure, and that it learns handwritten digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from backbones.lenet import C3_TABLE, SQUASH_A, SQUASH_S, PartialConv2d, Subsampling, rbf_codes

from .digits import train_lenet_digits


def test_c3_table_is_table_one() -> None:
    contiguous3 = [tuple(sorted((i + k) % 6 for k in range(3))) for i in range(6)]
    contiguous4 = [tuple(sorted((i + k) % 6 for k in range(4))) for i in range(6)]
    assert list(C3_TABLE[:6]) == contiguous3
    assert list(C3_TABLE[6:12]) == contiguous4
    assert list(C3_TABLE[12:15]) == [(0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)]
    assert C3_TABLE[15] == tuple(range(6))
    assert sum(len(t) for t in C3_TABLE) == 60


def test_c3_output_ignores_unconnected_maps() -> None:
    torch.manual_seed(0)
    c3 = PartialConv2d(C3_TABLE, in_maps=6, kernel_size=5)
    x = torch.randn(1, 6, 14, 14)
    base = c3(x)
    for j in range(6):
        bumped = x.clone()
        bumped[:, j] += torch.randn(14, 14)
        changed = (c3(bumped) - base).abs().amax(dim=(0, 2, 3)) > 0
        assert changed.tolist() == [j in inputs for inputs in C3_TABLE]


def test_subsampling_sums_scales_and_shifts() -> None:
    s = Subsampling(2)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([0.5, -2.0]))
        s.bias.copy_(torch.tensor([1.0, 0.25]))
    x = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    with torch.no_grad():
        out = s(x)
    block_sum = x[0, 0, :2, :2].sum()
    assert out.shape == (1, 2, 2, 2)
    assert out[0, 0, 0, 0] == pytest.approx(0.5 * float(block_sum) + 1.0)
    assert out[0, 1, 1, 1] == pytest.approx(-2.0 * float(x[0, 1, 2:, 2:].sum()) + 0.25)


def test_squash_and_rbf_output() -> None:
    model = build_backbone("lenet5", num_classes=10, in_channels=1).eval()
    # f(1) = 1: the +-1 codes are reachable states of F6
    assert SQUASH_A * math.tanh(SQUASH_S) == pytest.approx(1.0, abs=1e-4)
    codes = model.output.centres
    assert codes.shape == (10, 84) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(codes, rbf_codes(10))  # deterministic
    assert len({tuple(c.tolist()) for c in codes}) == 10
    assert "output.centres" in model.state_dict()
    assert not any(p is codes for p in model.parameters())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        f6 = model.act6(model.f6(model.forward_features(x)[-1].flatten(1)))
        expected = -((f6[:, None, :] - codes[None]) ** 2).sum(-1)
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.distances(x), -expected)


def test_paper_layer_sizes_and_other_inputs() -> None:
    model = build_backbone("lenet5", num_classes=10, in_channels=1).eval()
    shapes = [tuple(f.shape[1:]) for f in model.forward_features(torch.randn(1, 1, 32, 32))]
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1)]
    multi = build_backbone("lenet5", num_classes=4, in_channels=13).eval()
    with torch.no_grad():
        assert multi(torch.randn(2, 13, 32, 32)).shape == (2, 4)
        assert multi(torch.randn(2, 13, 64, 64)).shape == (2, 4)  # C5 averaged over space


def test_training_loss_uses_the_temperature() -> None:
    from backbones.losses import classification_loss

    model = build_backbone("lenet5", num_classes=10, in_channels=1)
    assert model.loss_temperature == 10.0
    assert build_backbone("resnet18").loss_temperature == 1.0
    logits, y = -torch.rand(4, 10) * 300, torch.tensor([0, 1, 2, 3])
    loss = classification_loss(logits, y, aux_weight=0.3, temperature=model.loss_temperature)
    assert loss.item() == pytest.approx(F.cross_entropy(logits / 10, y).item())


def test_lenet5_learns_digits() -> None:
    # shifts only (no rotation or scaling) and a short schedule: well under a minute
    result = train_lenet_digits(
        epochs=15, batch_size=32, lr=1e-2, seed=0, rotate_deg=0.0, scale=0.0, shift_px=2.0
    )
    assert result.trainable_parameters == 60_000
    assert result.accuracy >= 0.95, result.accuracy
