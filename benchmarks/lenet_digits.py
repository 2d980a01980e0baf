"""LeNet-5 (the paper's 60,000-parameter configuration) on scikit-learn's handwritten digits.

The 8x8 digits become the paper's input: a 20x20 digit centred in a 32x32 field, background
-0.1 and ink 1.175. 75% train / 25% test (stratified, fixed seed). Training: AdamW with a
one-cycle schedule, cross-entropy over minus the RBF distances divided by the model's
``loss_temperature`` (see backbones/lenet.py), and small random affine distortions (rotation,
scale, shift), as the paper trains with distorted copies. Prints the test accuracy and the wall
time; exits non-zero below the target accuracy.

    .venv/bin/python benchmarks/lenet_digits.py [--epochs 60] [--seed 0] [--target 0.98]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import build_backbone  # noqa: E402

BACKGROUND, INK = -0.1, 1.175


def digits_32(seed: int) -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.pad(F.interpolate(x, size=20, mode="bilinear", align_corners=False), (6, 6, 6, 6))
    x = BACKGROUND + x * (INK - BACKGROUND)
    y = torch.tensor(digits.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def distort(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random rotation (+-10 deg), scale (+-10%) and shift (+-2 px), background-filled."""
    n = len(x)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.pi / 18
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 / 16  # 32 px span 2 units: 1 px = 1/16
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.98)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    xtr, ytr, xte, yte = digits_32(args.seed)
    torch.manual_seed(args.seed)
    model = build_backbone("lenet5", num_classes=10, in_channels=1)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=g).split(args.batch_size):
            logits = model(distort(xtr[idx], g))  # minus the RBF distances
            loss = F.cross_entropy(logits / model.loss_temperature, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = (model(xte).argmax(1) == yte).float().mean().item()

    print(
        f"LeNet-5 ({n_params:,} trainable parameters) on sklearn digits: "
        f"test accuracy {accuracy:.4f} ({len(xte)} digits), "
        f"{args.epochs} epochs in {seconds:.1f} s on {args.threads} CPU thread(s)"
    )
    return 0 if accuracy >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
