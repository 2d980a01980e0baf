"""Zoo encoders at equal budget: U-Net training time, chips/s, validation IoU per epoch and
held-out IoU, with repo-pretrained and with random encoder weights (issues 4 and 5).

Everything runs through the pipeline's own code, nothing is re-implemented here:
``pipeline.pretrain.pretrain_backbone`` for a backbone whose weights are missing (its time and
validation accuracy are reported), ``pipeline.train.run_train`` for the U-Net (same seed, same
chips, same number of steps for every run), ``pipeline.evaluate.run_evaluate`` (predict's
windows and stitching) on the held-out scenes of ``data.scenes``. The params file gives
everything else (chips, scenes, loss, lr, ...). Models, MLflow runs (a SQLite store) and
reports go to ``--work`` (a temporary folder by default).

    .venv/bin/python benchmarks/encoders.py --params params.yaml \\
        --encoders resnet18,resnet34,vgg16_bn,googlenet --weights repo,none \\
        --epochs 3 --batches-per-epoch 20 --backbones /tmp/bench-backbones --pretrain-epochs 1

``--backbones`` is where pretrained weights are looked up (default: params' pretrain.out_dir);
missing ones are pretrained there with params' pretrain section, capped by
``--pretrain-epochs`` / ``--pretrain-batches``. An empty folder gives every backbone the same
pretraining budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import (  # noqa: E402
    Params,
    RegisterParams,
    SceneSource,
    TileSetSource,
    load_params,
)


def absolute(p: Params) -> Params:
    """The same params with every relative input path made absolute (runs chdir elsewhere)."""
    fields = {  # the input paths of a scene entry, of a tile set entry
        SceneSource: ("image", "roads", "labels", "landcover"),
        TileSetSource: ("root",),
    }
    scenes = [
        s.model_copy(
            update={
                k: Path(getattr(s, k)).resolve()
                for k in fields[type(s)]
                if getattr(s, k) is not None
            }
        )
        for s in p.data.scenes
    ]
    return p.model_copy(
        update={
            "data": p.data.model_copy(update={"scenes": scenes}),
            "tile": p.tile.model_copy(update={"out_dir": p.tile.out_dir.resolve()}),
            "pretrain": p.pretrain.model_copy(update={"out_dir": p.pretrain.out_dir.resolve()}),
        }
    )


def ensure_backbone(
    arch: str, p: Params, folder: Path, args: argparse.Namespace, tracking: RegisterParams
) -> dict:
    """Pretrained weights of ``arch`` in ``folder``; pretrains them there when missing."""
    from pipeline.pretrain import pretrain_backbone

    pretrain = p.pretrain.model_copy(
        update={
            "out_dir": folder,
            "epochs": args.pretrain_epochs or p.pretrain.epochs,
            "max_batches_per_epoch": args.pretrain_batches,
        }
    )
    if pretrain.weights_path(arch).exists() and pretrain.meta_path(arch).exists():
        meta = json.loads(pretrain.meta_path(arch).read_text())
        return {
            "pretrain_seconds": None,
            "pretrain_val_accuracy": meta["val_accuracy"],
            "found": True,
        }
    print(
        f"pretraining {arch} ({pretrain.epochs} epochs, batches/epoch {pretrain.max_batches_per_epoch or 'all'})",
        flush=True,
    )
    t0 = time.perf_counter()
    meta = pretrain_backbone(arch, pretrain, p.tile.out_dir, tracking)
    seconds = time.perf_counter() - t0
    print(f"  {arch}: {seconds:.0f} s, val accuracy {meta['val_accuracy']:.3f}", flush=True)
    return {
        "pretrain_seconds": seconds,
        "pretrain_val_accuracy": meta["val_accuracy"],
        "found": False,
    }


def train_and_evaluate(
    arch: str,
    weights: str,
    p: Params,
    backbones: Path,
    run_dir: Path,
    args: argparse.Namespace,
    tracking: RegisterParams,
) -> dict:
    """One U-Net run with the pipeline's train and evaluate stages; returns its figures."""
    from pipeline.evaluate import run_evaluate
    from pipeline.train import run_train

    run_dir.mkdir(parents=True, exist_ok=True)
    train = p.train.model_copy(
        update={
            "encoder": arch,
            "encoder_weights": weights,
            "out_dir": run_dir / "models" / "unet",
            "epochs": args.epochs,
            "max_batches_per_epoch": args.batches_per_epoch,
            "early_stopping_patience": None,
        }
    )
    pretrain = p.pretrain.model_copy(update={"out_dir": backbones})
    evaluate = p.evaluate.model_copy(
        update={
            "metrics_path": run_dir / "eval.json",
            "plots_dir": run_dir / "plots",
            "reports_dir": run_dir / "reports",
        }
    )
    cwd = Path.cwd()
    os.chdir(run_dir)  # train writes metrics/train.json and plots/train.csv where it runs
    try:
        metrics = run_train(train, p.tile, pretrain, tracking)
        with open(run_dir / "plots" / "train.csv", newline="") as fh:
            curve = [float(r["val_iou"]) for r in csv.DictReader(fh)]
        held = run_evaluate(evaluate, p.data, p.tile, train.out_dir, tracking)
    finally:
        os.chdir(cwd)
    return {
        "encoder": arch,
        "weights": weights,
        "train_seconds": metrics["train_seconds"],
        "chips_per_s": metrics["chips_per_s"],
        "best_val_iou": metrics["val_iou"],
        "threshold": metrics["threshold"],
        "val_iou_curve": curve,
        "heldout_iou": held["iou"],
        "heldout_relaxed_break_even": held["relaxed_break_even"],
    }


def table(rows: list[dict], backbones: dict[str, dict]) -> str:
    head = (
        "| encoder | weights | pretrain s | pretrain val acc | train s | chips/s | best val IoU @0.5 "
        "| threshold (val) | held-out IoU | held-out relaxed break-even |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        b = backbones.get(r["encoder"], {}) if r["weights"] == "repo" else {}
        secs = b.get("pretrain_seconds")
        acc = b.get("pretrain_val_accuracy")
        lines.append(
            f"| {r['encoder']} | {r['weights']} | {'' if secs is None else f'{secs:.0f}'} "
            f"| {'' if acc is None else f'{acc:.3f}'} | {r['train_seconds']:.0f} | {r['chips_per_s']:.2f} "
            f"| {r['best_val_iou']:.3f} | {r['threshold']:.2f} | {r['heldout_iou']:.3f} "
            f"| {r['heldout_relaxed_break_even']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--encoders", default="resnet18,resnet34,vgg16_bn,googlenet")
    ap.add_argument("--weights", default="repo,none", help="comma list of repo, none")
    ap.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="training epochs of every run (0: params' train.epochs)",
    )
    ap.add_argument(
        "--batches-per-epoch",
        type=int,
        default=20,
        help="optimiser steps per epoch (0: every train chip once, the demo's budget)",
    )
    ap.add_argument("--backbones", type=Path, default=None, help="pretrained weights folder")
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="cap for missing backbones")
    ap.add_argument(
        "--pretrain-batches", type=int, default=None, help="batches/epoch cap, missing backbones"
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="output folder (default: a temporary one)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)  # runs go to the benchmark's own store, never a shared one
    p = absolute(load_params(args.params))
    args.epochs = args.epochs or p.train.epochs
    args.batches_per_epoch = args.batches_per_epoch or None
    work = (args.work or Path(tempfile.mkdtemp(prefix="roadseg-encoders-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    backbones_dir = (args.backbones or p.pretrain.out_dir).resolve()
    tracking = RegisterParams(
        experiment="bench-encoders", tracking_uri=f"sqlite:///{work}/mlflow.db"
    )
    encoders = [e for e in args.encoders.split(",") if e]
    weights = [w for w in args.weights.split(",") if w]
    print(
        f"work {work}; {args.epochs} epochs x {args.batches_per_epoch or 'all'} batches of {p.train.batch_size} "
        f"chips per run; chips {p.tile.out_dir}; backbones {backbones_dir}",
        flush=True,
    )

    backbones = {}
    if "repo" in weights:
        for arch in encoders:
            backbones[arch] = ensure_backbone(arch, p, backbones_dir, args, tracking)
    rows = []
    for arch in encoders:
        for w in weights:
            print(f"training {arch} / {w}", flush=True)
            row = train_and_evaluate(
                arch, w, p, backbones_dir, work / f"{arch}-{w}", args, tracking
            )
            print(
                f"  val IoU per epoch: {' '.join(f'{v:.3f}' for v in row['val_iou_curve'])}; held-out IoU {row['heldout_iou']:.3f}",
                flush=True,
            )
            rows.append(row)
            if args.json:  # after every run, so a long benchmark cut short keeps what it measured
                args.json.write_text(json.dumps({"backbones": backbones, "runs": rows}, indent=2))

    print("\nvalidation IoU @0.5 per epoch")
    for r in rows:
        print(
            f"  {r['encoder']:<10} {r['weights']:<5} {' '.join(f'{v:.3f}' for v in r['val_iou_curve'])}"
        )
    print()
    print(table(rows, backbones))
    return 0


if __name__ == "__main__":
    sys.exit(main())
