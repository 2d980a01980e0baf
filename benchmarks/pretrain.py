"""Land-cover pretraining of zoo backbones at the default budget: time and validation accuracy.

Runs ``pipeline.pretrain.pretrain_backbone`` (the code behind ``pipeline pretrain <arch>``)
for each architecture with the params file's ``pretrain`` section unchanged (epochs, input
size, batch, lr, seed) on its tile stage's chips, into a scratch folder, so the pipeline's own
``models/backbones`` and MLflow store are never touched. Prints one row per backbone:
trainable parameters as built for the task (its classes and bands), wall seconds, train
patches per second and validation accuracy (the spatial split's val patches).

    .venv/bin/python benchmarks/pretrain.py --archs resnet50,resnet101 --json /tmp/pre.json

``--threads`` sets torch's intra-op threads (default: torch's choice, every core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import RegisterParams, load_params  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--archs", required=True, help="comma list of registered backbones")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: temporary)")
    ap.add_argument(
        "--json", type=Path, default=None, help="also write the rows here (after each arch)"
    )
    args = ap.parse_args()

    import torch

    from backbones import build_backbone
    from pipeline.model import autocast_dtype
    from pipeline.pretrain import pretrain_backbone
    from pipeline.pretrain_data import PatchDataset, read_chip_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)  # runs go to the scratch store, never a shared one
    p = load_params(args.params)
    work = (args.work or Path(tempfile.mkdtemp(prefix="roadseg-pretrain-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    budget = p.pretrain.model_copy(update={"out_dir": work / "backbones"})
    tracking = RegisterParams(
        experiment="bench-pretrain", tracking_uri=f"sqlite:///{work}/mlflow.db"
    )
    chips = read_chip_folder(p.tile.out_dir)
    train_patches = len(PatchDataset(chips, "train", budget.input_size))
    print(
        f"chips {p.tile.out_dir.resolve()} ({len(chips.classes)} classes, {len(chips.bands)} bands); "
        f"{train_patches} train patches, {budget.epochs} epochs, {budget.input_size} px, batch {budget.batch_size}; "
        f"precision {budget.precision} (autocast {autocast_dtype(torch.device('cpu'), budget.precision, training=True) or 'off'} on CPU); "
        f"torch threads {torch.get_num_threads()}; work {work}",
        flush=True,
    )

    rows = []
    for arch in [a for a in args.archs.split(",") if a]:
        model = build_backbone(arch, num_classes=len(chips.classes), in_channels=len(chips.bands))
        n_params = sum(t.numel() for t in model.parameters() if t.requires_grad)
        del model
        t0 = time.perf_counter()
        meta = pretrain_backbone(arch, budget, p.tile.out_dir, tracking)
        seconds = time.perf_counter() - t0
        row = {
            "arch": arch,
            "parameters": n_params,
            "seconds": round(seconds, 1),
            "patches_per_s": round(train_patches * budget.epochs / seconds, 1),
            "val_accuracy": meta["val_accuracy"],
            "epochs": budget.epochs,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))

    print(
        "\n| backbone | trainable parameters | pretraining time | train patches/s | val accuracy |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['parameters']:,} | {r['seconds']:.0f} s | {r['patches_per_s']} "
            f"| {r['val_accuracy']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
