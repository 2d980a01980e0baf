"""LeNet-5 (the paper's 60,000-parameter configuration) on scikit-learn's handwritten digits.

Data and training: tests/backbones/digits.py. Prints the test accuracy and the wall time; exits
non-zero below the target accuracy.

    .venv/bin/python benchmarks/lenet_digits.py [--epochs 60] [--seed 0] [--target 0.98]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.backbones.digits import train_lenet_digits  # noqa: E402


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
    r = train_lenet_digits(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    print(
        f"LeNet-5 ({r.trainable_parameters:,} trainable parameters) on sklearn digits: "
        f"test accuracy {r.accuracy:.4f} ({r.test_digits} digits), "
        f"{args.epochs} epochs in {r.seconds:.1f} s on {args.threads} CPU thread(s)"
    )
    return 0 if r.accuracy >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
