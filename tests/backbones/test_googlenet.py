"""GoogLeNet's auxiliary classifiers: in the training loss, gone at evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from backbones.googlenet import GoogLeNetOutputs
from backbones.losses import classification_loss


def test_aux_heads_in_training_only() -> None:
    torch.manual_seed(0)
    model = build_backbone("googlenet", num_classes=4, in_channels=4)
    x, y = torch.randn(2, 4, 64, 64), torch.tensor([0, 3])
    model.train()
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs) and all(t.shape == (2, 4) for t in out)
    loss = classification_loss(out, y, aux_weight=0.3)
    expected = F.cross_entropy(out.logits, y) + 0.3 * (
        F.cross_entropy(out.aux1, y) + F.cross_entropy(out.aux2, y)
    )
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert model.aux1.fc2.weight.grad.abs().sum() > 0 and model.aux2.fc2.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 4)
    assert classification_loss(logits, y, aux_weight=0.3).item() == pytest.approx(
        F.cross_entropy(logits, y).item()
    )


def test_aux_head_order_follows_the_network() -> None:
    """aux1 branches off inception 4a, aux2 off 4d: zeroing aux2's head changes aux2 only."""
    torch.manual_seed(0)
    model = build_backbone("googlenet", num_classes=3).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    before = model(x)
    with torch.no_grad():
        model.aux2.fc2.weight.zero_()
        model.aux2.fc2.bias.zero_()
    torch.manual_seed(1)
    after = model(x)
    torch.testing.assert_close(after.logits, before.logits)
    torch.testing.assert_close(after.aux1, before.aux1)
    assert torch.count_nonzero(after.aux2) == 0
