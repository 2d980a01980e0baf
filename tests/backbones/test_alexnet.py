"""AlexNet's published layout: two streams, LRN as in the paper, overlapping pools, 224 px maps."""

from __future__ import annotations

import torch

from backbones import build_backbone
from backbones.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, paper_lrn


def test_lrn_is_the_papers_formula() -> None:
    """b_i = a_i / (k + alpha * sum_{|j-i| <= n/2} a_j^2)^beta, neighbours within the 5 maps."""
    a = torch.randn(2, 12, 3, 3) * 20
    sq = a.pow(2)
    expected = torch.empty_like(a)
    for i in range(a.shape[1]):
        lo, hi = max(0, i - LRN_SIZE // 2), min(a.shape[1], i + LRN_SIZE // 2 + 1)
        expected[:, i] = a[:, i] / (LRN_K + LRN_ALPHA * sq[:, lo:hi].sum(1)) ** LRN_BETA
    torch.testing.assert_close(paper_lrn()(a), expected)


def test_streams_are_separate_where_the_paper_keeps_gpus_apart() -> None:
    model = build_backbone("alexnet", num_classes=10)
    groups = {
        n: m.groups for n, m in model.features.named_children() if isinstance(m, torch.nn.Conv2d)
    }
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    conv2 = model.features.conv2
    x = torch.randn(1, 96, 13, 13)
    bumped = x.clone()
    bumped[:, 48:] += 1.0  # second stream's input
    with torch.no_grad():
        delta = (conv2(bumped) - conv2(x)).abs().amax(dim=(0, 2, 3))
    assert (delta[:128] == 0).all() and (delta[128:] > 0).all()


def test_layout_at_224_px_and_paper_init() -> None:
    model = build_backbone("alexnet", features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in model(torch.randn(1, 3, 224, 224))]
    assert shapes == [(96, 55, 55), (256, 27, 27), (256, 13, 13), (256, 6, 6)]
    full = build_backbone("alexnet", num_classes=7)
    ones = {
        "features.conv2",
        "features.conv4",
        "features.conv5",
        "classifier.fc6",
        "classifier.fc7",
    }
    for name, m in full.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert bool((m.bias == 1).all()) == (name in ones), name
            assert 0.005 < float(m.weight.detach().std()) < 0.015, name
    pools = [m for m in full.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)
    assert [m.p for m in full.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
