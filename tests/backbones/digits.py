"""LeNet-5 on real handwriting: scikit-learn's bundled digits, shaped as the paper's input.

The 8x8 digits become a 20x20 digit centred in a 32x32 field, background -0.1 and ink 1.175
(LeCun 1998: mean input about 0, variance about 1). 75 % train / 25 % test, stratified.
Training: AdamW with a one-cycle schedule, cross-entropy over minus the RBF distances divided
by the model's ``loss_temperature`` (see lenet.py), and random affine distortions, as the
paper trains with distorted copies. Shared by the digits test and benchmarks/lenet_digits.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backbones import build_backbone

BACKGROUND, INK = -0.1, 1.175


def digits_32(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); x is (N, 1, 32, 32)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.pad(F.interpolate(x, size=20, mode="bilinear", align_corners=False), (6, 6, 6, 6))
    x = BACKGROUND + x * (INK - BACKGROUND)
    y = torch.tensor(digits.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def distort(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    rotate_deg: float = 10.0,
    scale: float = 0.1,
    shift_px: float = 2.0,
) -> torch.Tensor:
    """Random rotation (+-rotate_deg), scale (+-scale) and shift (+-shift_px), background-filled."""
    n = len(x)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(rotate_deg)
    factor = 1 + (torch.rand(n, generator=g) * 2 - 1) * scale
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * shift_px / 16  # 32 px span 2 units
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / factor
    theta[:, 0, 1] = -torch.sin(angle) / factor
    theta[:, 1, 0] = torch.sin(angle) / factor
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND


@dataclass(frozen=True)
class DigitsResult:
    accuracy: float
    test_digits: int
    seconds: float
    trainable_parameters: int


def train_lenet_digits(
    *, epochs: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, **distortion: float
) -> DigitsResult:
    """Train the paper's LeNet-5 on the digits and return its test accuracy."""
    xtr, ytr, xte, yte = digits_32(seed)
    torch.manual_seed(seed)
    model = build_backbone("lenet5", num_classes=10, in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(xtr) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(batch_size):
            logits = model(distort(xtr[idx], g, **distortion))  # minus the RBF distances
            loss = F.cross_entropy(logits / model.loss_temperature, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = (model(xte).argmax(1) == yte).float().mean().item()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return DigitsResult(accuracy, len(xte), seconds, n_params)
