"""Does land-cover pretraining help road segmentation? U-Net from scratch vs pretrained encoder.

Reads a chips folder (the tile stage's output, docs/formats.md) and the pretrain stage's
``<arch>.safetensors``; trains the same ``smp.Unet("rs-<arch>")`` twice with the same seed, data
order and step budget: once with a random encoder, once with the pretrained backbone loaded
strictly (:func:`backbones.encoders.load_backbone_weights`). Prints validation IoU of the road
class (threshold 0.5, nodata ignored) and wall time for both. No MLflow, nothing written.

    .venv/bin/python benchmarks/transfer.py --chips data/chips --weights models/backbones \\
        --arch resnet18 [--steps 300] [--batch-size 8] [--crop 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones.encoders import encoder_name, load_backbone_weights  # noqa: E402
from backbones.pretrain import load_pretrained  # noqa: E402

NODATA = 255


def load_split(
    chips: Path, split: str, mean: np.ndarray, std: np.ndarray
) -> tuple[torch.Tensor, ...]:
    index = pyogrio.read_dataframe(chips / "index.gpkg", layer="chips", read_geometry=False)
    rows = index[index["split"] == split]
    images, masks = [], []
    for scene, part in rows.groupby("scene"):
        idx = part["array_index"].to_numpy()
        images.append(np.load(chips / f"{scene}.images.npy", mmap_mode="r")[idx].astype(np.float32))
        masks.append(np.load(chips / f"{scene}.masks.npy", mmap_mode="r")[idx])
    if not images:
        raise SystemExit(f"{chips}: no {split} chips")
    x = (np.concatenate(images) - mean[:, None, None]) / std[:, None, None]
    return torch.from_numpy(x), torch.from_numpy(np.concatenate(masks).astype(np.int64))


def masked_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = mask != NODATA
    return F.binary_cross_entropy_with_logits(logits[valid], mask[valid].float())


def train_and_score(
    arch: str, state: dict | None, data: tuple[torch.Tensor, ...], args: argparse.Namespace
) -> tuple[float, float]:
    xtr, ytr, xva, yva = data
    torch.manual_seed(args.seed)
    model = smp.Unet(encoder_name(arch), encoder_weights=None, in_channels=xtr.shape[1], classes=1)
    if state is not None:
        load_backbone_weights(model.encoder, state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    size, crop = xtr.shape[-1], min(args.crop, xtr.shape[-1])
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        idx = torch.randint(len(xtr), (args.batch_size,), generator=g)
        r, c = (int(v) for v in torch.randint(size - crop + 1, (2,), generator=g))
        x = xtr[idx, :, r : r + crop, c : c + crop].to(device)
        y = ytr[idx, r : r + crop, c : c + crop].to(device)
        loss = masked_bce(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    inter = union = 0
    with torch.no_grad():
        for i in range(0, len(xva), args.batch_size):
            pred = model(xva[i : i + args.batch_size].to(device))[:, 0].sigmoid().cpu() > 0.5
            y = yva[i : i + args.batch_size]
            valid = y != NODATA
            truth = (y == 1) & valid
            pred = pred & valid
            inter += int((pred & truth).sum())
            union += int((pred | truth).sum())
    return (inter / union if union else float("nan")), seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=Path, default=Path("data/chips"))
    ap.add_argument("--weights", type=Path, default=Path("models/backbones"))
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128, help="training crop side, a multiple of 32")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    stats = json.loads((args.chips / "stats.json").read_text())
    state, meta = load_pretrained(args.arch, args.weights)
    if meta["data_fingerprint"] != stats["fingerprint"]:
        print("note: the backbone was pretrained on other chips (fingerprints differ)")
    mean, std = np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    data = (*load_split(args.chips, "train", mean, std), *load_split(args.chips, "val", mean, std))

    print(f"{args.arch}: {len(data[0])} train / {len(data[2])} val chips, {args.steps} steps")
    for label, weights in (("scratch", None), ("pretrained", state)):
        iou, seconds = train_and_score(args.arch, weights, data, args)
        print(f"  {label:<10} val road IoU {iou:.4f}   ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
