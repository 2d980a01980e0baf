"""What the train stage leaves behind once its epochs are done: the best model copied to
``train.out_dir`` with ``run.json``, the DVC metrics and plot (``train.metrics_path``,
``train.plot_path``), and the training curves and validation overlays as MLflow figures."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import registry
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.config import TrainParams
from pipeline.datasets import SegmentationChips
from pipeline.model import CONFIG_FILE, WEIGHTS_FILE


def publish_model(best_dir: Path, params: TrainParams, history: list[dict], run_id: str) -> dict:
    """Copy the best model to ``params.out_dir`` and write the DVC metrics and plot
    (``params.metrics_path``, ``params.plot_path``); returns the metrics."""
    out_dir = Path(params.out_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(best_dir / name, tmp)
    write_text_atomic(out_dir / "run.json", json.dumps({"mlflow_run_id": run_id}))
    metrics = train_metrics(history)
    write_text_atomic(params.metrics_path, json.dumps(metrics, indent=2))
    with atomic_path(params.plot_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0].keys()))
        writer.writeheader()
        writer.writerows(history)
    return metrics


def train_metrics(history: list[dict]) -> dict:
    """The best epoch's validation figures (highest IoU at 0.5), and the run's totals."""
    best = max(history, key=lambda r: r["val_iou"])
    return {
        "best_epoch": best["epoch"],
        "val_iou": best["val_iou"],
        "val_f1": best["val_f1"],
        "val_precision": best["val_precision"],
        "val_recall": best["val_recall"],
        "threshold": best["val_best_threshold"],
        "val_iou_at_threshold": best["val_iou_at_best_threshold"],
        "val_f1_at_threshold": best["val_f1_at_best_threshold"],
        "epochs": len(history),
        "train_seconds": sum(r["seconds"] for r in history),
        "chips_per_s": float(np.mean([r["chips_per_s"] for r in history])),
    }


def log_figures(
    history: list[dict], model: nn.Module, val_ds: SegmentationChips, device: torch.device
) -> None:
    """Training curves and a few validation overlays, as MLflow figures."""
    import matplotlib

    matplotlib.use("Agg")
    _log_curves(history)
    _log_samples(model, val_ds, device)


def _log_curves(history: list[dict]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    ax[0].plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax[0].plot(epochs, [r["val_loss"] for r in history], label="val loss")
    ax[0].set_xlabel("epoch")
    ax[0].legend()
    for key in ("val_iou", "val_f1"):
        ax[1].plot(epochs, [r[key] for r in history], label=key)
    ax[1].set_xlabel("epoch")
    ax[1].legend()
    registry.log_figure(fig, "training_curves.png")
    plt.close(fig)


def _log_samples(model: nn.Module, val_ds: SegmentationChips, device: torch.device) -> None:
    """Image, truth and probability of up to four validation chips spread over the split."""
    import matplotlib.pyplot as plt

    model.eval()
    n = min(4, len(val_ds))
    if n == 0:
        return
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    with torch.no_grad():
        for i in range(n):
            x, y, v = val_ds[i * max(1, len(val_ds) // n)]
            prob = torch.sigmoid(model(x[None].to(device))).cpu()[0, 0].numpy()
            rgb = x[:3].numpy().transpose(1, 2, 0)
            rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-6)
            axes[i, 0].imshow(rgb)
            axes[i, 1].imshow(y[0].numpy(), cmap="gray")
            axes[i, 2].imshow(prob, cmap="magma", vmin=0, vmax=1)
            for a, t in zip(axes[i], ("image", "truth", "probability"), strict=True):
                a.set_title(t)
                a.axis("off")
    registry.log_figure(fig, "val_samples.png")
    plt.close(fig)
