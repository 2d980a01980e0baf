"""Does pretraining pay? Repo-pretrained vs random U-Net encoder at equal total CPU time.

For each seed, two arms on the same chips (params' ``tile.out_dir``):

- ``none``: ``run_train`` with a random encoder for ``--epochs`` x ``--batches`` steps;
- ``<task>``: ``pretrain_backbone`` (``pretrain.task`` = ``--task``, capped at
  ``--pretrain-epochs`` x ``--pretrain-batches``), then ``run_train`` from those weights for
  fewer steps per epoch: the pretraining's CPU seconds are taken off its U-Net budget at the
  random arm's CPU seconds per step, so both arms spend about the same CPU time in all.

Both arms keep their best epoch on the val chips (and its F1-best threshold, as ``pipeline
train`` does); the figure is the IoU on the test split's chips (whole held-out scenes or tiles) at
that threshold. CPU seconds are ``time.process_time`` of this process (torch threads
included; ``--threads`` sets them), wall seconds ``time.perf_counter``. Runs, models and MLflow
(SQLite) go to ``--work``.

    python benchmarks/pretrain_gain.py --params P --task roads --seeds 0,1,2 \\
        --epochs 4 --batches 40 --pretrain-epochs 2 --pretrain-batches 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encoders import absolute  # noqa: E402
from pipeline.config import Params, RegisterParams, load_params  # noqa: E402


def test_iou(model_dir: Path, chips_dir: Path) -> float:
    """IoU over the valid pixels of the test chips at the model's own threshold."""
    import numpy as np
    import torch

    from pipeline.datasets import Normalisation, SegmentationChips
    from pipeline.model import load_model

    model, config = load_model(model_dir)
    model.eval()
    ds = SegmentationChips(chips_dir, "test", Normalisation.from_lists(config.mean, config.std))
    tp = fp = fn = 0
    with torch.no_grad():
        for x, y, v in torch.utils.data.DataLoader(ds, batch_size=8):
            pred = (torch.sigmoid(model(x).float()) > config.threshold).numpy()
            truth, valid = y.numpy() > 0.5, v.numpy() > 0.5
            tp += int((pred & truth & valid).sum())
            fp += int((pred & ~truth & valid).sum())
            fn += int((~pred & truth & valid).sum())
    return tp / max(tp + fp + fn, 1) if len(ds) else float(np.nan)


def validation_cpu_s(model_dir: Path, chips_dir: Path, train_params) -> float:
    """CPU seconds of one validation pass (``run_train`` makes one per epoch)."""
    import torch

    from pipeline.datasets import Normalisation, SegmentationChips
    from pipeline.model import autocast_dtype, load_model
    from pipeline.train import evaluate_chips

    model, config = load_model(model_dir)
    ds = SegmentationChips(chips_dir, "val", Normalisation.from_lists(config.mean, config.std))
    device = torch.device("cpu")
    amp = autocast_dtype(device, train_params.precision, training=True)
    cpu = time.process_time()
    evaluate_chips(model, ds, train_params, device, amp)
    return time.process_time() - cpu


def run_unet(
    p: Params,
    weights: str,
    backbones: Path,
    run_dir: Path,
    seed: int,
    batches: int,
    epochs: int,
    calibrate: bool = False,
) -> dict:
    """One U-Net run; with ``calibrate`` also the CPU seconds of one validation pass."""
    from pipeline.train import run_train

    run_dir.mkdir(parents=True, exist_ok=True)
    train = p.train.model_copy(
        update={
            "encoder_weights": weights,
            "out_dir": run_dir / "unet",
            "epochs": epochs,
            "max_batches_per_epoch": batches,
            "early_stopping_patience": None,
            "seed": seed,
        }
    )
    tracking = RegisterParams(experiment="pretrain-gain", tracking_uri=f"sqlite:///{run_dir}/m.db")
    pretrain = p.pretrain.model_copy(update={"out_dir": backbones})
    cwd = Path.cwd()
    os.chdir(run_dir)  # train writes metrics/ and plots/ where it runs
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        metrics = run_train(train, p.tile, pretrain, tracking)
    finally:
        os.chdir(cwd)
    return {
        "train_cpu_s": time.process_time() - cpu,
        "train_wall_s": time.perf_counter() - wall,
        "steps": batches * epochs,
        "best_val_iou": metrics["val_iou"],
        "threshold": metrics["threshold"],
        "test_iou": test_iou(train.out_dir, p.tile.out_dir),
    } | (
        {"val_pass_cpu_s": validation_cpu_s(train.out_dir, p.tile.out_dir, train)}
        if calibrate
        else {}
    )


def run_pretrain(p: Params, args: argparse.Namespace, folder: Path, seed: int) -> dict:
    from pipeline.pretrain import pretrain_backbone

    pretrain = p.pretrain.model_copy(
        update={
            "out_dir": folder,
            "task": args.task,
            "epochs": args.pretrain_epochs,
            "max_batches_per_epoch": args.pretrain_batches,
            "seed": seed,
        }
    )
    tracking = RegisterParams(experiment="pretrain-gain", tracking_uri=f"sqlite:///{folder}/m.db")
    cpu, wall = time.process_time(), time.perf_counter()
    meta = pretrain_backbone(p.train.encoder, pretrain, p.tile.out_dir, tracking)
    return {
        "pretrain_cpu_s": time.process_time() - cpu,
        "pretrain_wall_s": time.perf_counter() - wall,
        "pretrain_val_accuracy": meta["val_accuracy"],
        "task": meta["task"],
    }


def summary(rows: list[dict], arm: str) -> str:
    mine = [r for r in rows if r["arm"] == arm]
    ious = [r["test_iou"] for r in mine]
    spread = statistics.stdev(ious) if len(ious) > 1 else float("nan")
    cpu = statistics.mean(r["total_cpu_s"] for r in mine)
    return (
        f"| {arm} | {len(mine)} | {statistics.mean(ious):.3f} ± {spread:.3f} "
        f"| {min(ious):.3f} – {max(ious):.3f} | {cpu:.0f} s | "
        + " ".join(f"{v:.3f}" for v in ious)
        + " |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--task", default="roads", help="pretrain.task of the pretrained arm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4, help="U-Net epochs (both arms)")
    ap.add_argument("--batches", type=int, default=40, help="random arm's batches per epoch")
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--pretrain-batches", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(var, None)
    p = absolute(load_params(args.params))
    work = (args.work or Path(tempfile.mkdtemp(prefix="roadseg-gain-"))).resolve()
    rows: list[dict] = []
    val_pass_cpu_s = None  # measured once, in the first random run
    for seed in [int(s) for s in args.seeds.split(",")]:
        rnd = run_unet(
            p,
            "none",
            work / "none",
            work / f"none-{seed}",
            seed,
            args.batches,
            args.epochs,
            calibrate=val_pass_cpu_s is None,
        )
        val_pass_cpu_s = rnd.get("val_pass_cpu_s", val_pass_cpu_s)
        rows.append({"arm": "none", "seed": seed, **rnd, "total_cpu_s": rnd["train_cpu_s"]})
        print(json.dumps(rows[-1]), flush=True)
        pre = run_pretrain(p, args, work / f"backbones-{seed}", seed)
        # CPU per U-Net step: the random run's CPU less its validation passes, per step
        steps = args.batches * args.epochs
        cpu_per_batch = (rnd["train_cpu_s"] - args.epochs * val_pass_cpu_s) / steps
        batches = max(1, args.batches - round(pre["pretrain_cpu_s"] / cpu_per_batch / args.epochs))
        rep = run_unet(
            p, "repo", work / f"backbones-{seed}", work / f"repo-{seed}", seed, batches, args.epochs
        )
        total = pre["pretrain_cpu_s"] + rep["train_cpu_s"]
        rows.append({"arm": args.task, "seed": seed, **pre, **rep, "total_cpu_s": total})
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))

    print(f"\nchips {p.tile.out_dir}; {args.epochs} epochs; work {work}")
    print(
        "| encoder init | seeds | test IoU mean ± sd | min – max | CPU s (pretrain + train) | per seed |"
    )
    print("|---|---|---|---|---|---|")
    for arm in ("none", args.task):
        print(summary(rows, arm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
