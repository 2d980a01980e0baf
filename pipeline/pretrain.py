"""Classification pretraining of a zoo backbone on patches (the ``pretrain`` stage).

The patch classes come from ``pretrain.task`` (:mod:`pipeline.pretrain_data`): land cover,
classes derived from the road masks, or rotation prediction on imagery alone.

One loop for every architecture: AdamW, cross-entropy, ``epochs`` passes over the train split
(capped at ``max_batches_per_epoch``), validation after each epoch. Two architecture rules from
the papers: GoogLeNet's loss while training is ``main + aux_weight * (aux1 + aux2)`` (eval uses
the main head only), and AlexNet trains with its crops, flips and PCA colour noise
(:mod:`pipeline.pretrain_data`, :mod:`backbones.augment`). LeNet-5's logits are minus its RBF distances, so cross-entropy is its
MAP criterion; a model may declare a ``loss_temperature`` dividing its logits (LeNet-5: 10).

Outputs (docs/formats.md): ``<arch>.safetensors`` (the full state dict, head included) and
``<arch>.json`` (meta), both written to a temporary file first and moved into place. Loading
them (:func:`load_pretrained`) reads tensors and JSON only; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from backbones import build_backbone
from backbones.augment import PcaNoise
from backbones.losses import classification_loss
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.config import PretrainParams, RegisterParams
from pipeline.model import autocast_dtype, pick_device
from pipeline.pretrain_data import ChipFolder, PatchDataset, Task, read_chip_folder, resolve_task
from pipeline.pretrain_rasters import RasterRotationPatches
from pipeline.registry import log_dict, log_figure, log_metrics, log_params, tracked_run

AUGMENTED_ARCHS = frozenset({"alexnet"})


def _batches(loader: DataLoader, limit: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    aux_weight: float,
    max_batches: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean training loss over the epoch's batches (forward under autocast to ``amp_dtype``
    when given; the loss in float32)."""
    model.train()
    temperature = getattr(model, "loss_temperature", 1.0)
    total, n = 0.0, 0
    for x, y in _batches(loader, max_batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x.contiguous(memory_format=torch.channels_last))
        out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
        loss = classification_loss(out, y, aux_weight, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
    return total / max(n, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    num_classes: int,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) of the main head."""
    model.eval()
    temperature = getattr(model, "loss_temperature", 1.0)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    total, n = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        total += float(F.cross_entropy(logits / temperature, y, reduction="sum"))
        n += len(y)
        pred = logits.argmax(1)
        confusion += torch.bincount(
            y.cpu() * num_classes + pred.cpu(), minlength=num_classes**2
        ).view(num_classes, num_classes)
    if n == 0:
        return {"loss": None, "accuracy": None, "confusion": confusion.numpy()}
    return {
        "loss": total / n,
        "accuracy": float(confusion.diag().sum()) / n,
        "confusion": confusion.numpy(),
    }


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str) -> Figure:
    """Row-normalised confusion matrix with counts (Agg-rendered, no pyplot state)."""
    fig = Figure(figsize=(1.0 + 0.6 * len(classes), 0.8 + 0.6 * len(classes)))
    ax = fig.add_subplot()
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_pretrained(
    model: nn.Module, meta: dict[str, Any], weights_path: Path, meta_path: Path
) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"arch": str(meta["arch"])})
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")


def load_pretrained(arch: str, out_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and meta written by :func:`pretrain_backbone` for ``arch`` in ``out_dir``."""
    paths = PretrainParams(out_dir=Path(out_dir))
    meta = json.loads(paths.meta_path(arch).read_text())
    if meta.get("arch") != arch:
        raise ValueError(f"{paths.meta_path(arch)}: holds arch {meta.get('arch')!r}, not {arch!r}")
    return load_file(str(paths.weights_path(arch))), meta


@torch.no_grad()
def _check_input_size(
    model: nn.Module, arch: str, in_channels: int, size: int, device: torch.device
) -> None:
    """Fail before training (and before an MLflow run) when patches are too small for ``arch``."""
    model.eval()
    try:
        model(torch.zeros(1, in_channels, size, size, device=device))
    except RuntimeError as e:
        raise ValueError(
            f"{arch} cannot classify {size} px patches (pretrain.input_size): {e}"
        ) from e


@dataclass(frozen=True)
class _Patches:
    """What a backbone learns from: the chips folder's labelled patches (and unlabelled
    rotation patches of ``pretrain.unlabelled`` rasters) for ``task``."""

    task: Task
    chips: ChipFolder
    train: PatchDataset
    val: PatchDataset
    unlabelled: RasterRotationPatches
    train_data: Dataset  # train, with the unlabelled patches when there are any


def _load_patches(arch: str, params: PretrainParams, chips_dir: Path) -> _Patches:
    """The patches of ``params.task``; ValueError when there is no train patch."""
    task = resolve_task(Path(chips_dir), params.task)
    chips = read_chip_folder(Path(chips_dir), task)
    augment = arch in AUGMENTED_ARCHS
    train_set = PatchDataset(chips, "train", params.input_size, augment=augment, seed=params.seed)
    val_set = PatchDataset(chips, "val", params.input_size)
    if len(train_set) == 0:
        raise ValueError(
            f"{chips_dir}: no labelled train patches for pretrain.task {task} "
            f"({params.input_size} px, no nodata{', land cover >= 60%' if task == 'landcover' else ''})"
        )
    if augment:
        train_set.pca = PcaNoise.fit(train_set.sample_pixels(seed=params.seed))
    unlabelled = RasterRotationPatches(
        params.unlabelled, params.input_size, chips.stats["mean"], chips.stats["std"]
    )
    train_data: Dataset = ConcatDataset([train_set, unlabelled]) if len(unlabelled) else train_set
    return _Patches(task, chips, train_set, val_set, unlabelled, train_data)


@dataclass(frozen=True)
class _Learner:
    """A backbone ready to train: model (channels-last, on ``device``), optimiser, autocast."""

    model: nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer


def _build_learner(arch: str, params: PretrainParams, num_classes: int, bands: int) -> _Learner:
    """Seed torch, build ``arch`` and check it can classify ``params.input_size`` patches."""
    torch.manual_seed(params.seed)
    device = pick_device("auto")
    model = build_backbone(arch, num_classes=num_classes, in_channels=bands).to(device)
    _check_input_size(model, arch, bands, params.input_size, device)
    model = model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(device, params.precision, training=True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    return _Learner(model, device, amp_dtype, optimizer)


def _log_run_params(
    arch: str, params: PretrainParams, patches: _Patches, learner: _Learner
) -> None:
    """The MLflow run's params: arch, task, settings, data, device and autocast type."""
    log_params(
        {
            "arch": arch,
            "task": patches.task,
            "pretrain": params.model_dump(mode="json"),
            "data": {
                "fingerprint": patches.chips.stats["fingerprint"],
                "train_patches": len(patches.train),
                "unlabelled_patches": len(patches.unlabelled),
                "val_patches": len(patches.val),
            },
            "device": learner.device.type,
            "autocast": str(learner.amp_dtype or "float32"),
        }
    )


def _fit(
    learner: _Learner,
    train_loader: DataLoader,
    val_loader: DataLoader,
    params: PretrainParams,
    num_classes: int,
) -> dict[str, Any]:
    """Train ``params.epochs`` epochs, validating and logging after each; the last validation."""
    val: dict[str, Any] = {
        "accuracy": None,
        "confusion": np.zeros((num_classes,) * 2, dtype=np.int64),
    }
    model, device, amp_dtype = learner.model, learner.device, learner.amp_dtype
    for epoch in range(1, params.epochs + 1):
        train_loss = train_one_epoch(
            model,
            train_loader,
            learner.optimizer,
            device,
            params.aux_weight,
            params.max_batches_per_epoch,
            amp_dtype,
        )
        val = evaluate(model, val_loader, device, num_classes, amp_dtype)
        metrics = {"train_loss": train_loss}
        if val["accuracy"] is not None:
            metrics |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
        log_metrics(metrics, step=epoch)
    return val


def _backbone_meta(
    arch: str, params: PretrainParams, patches: _Patches, val_accuracy: float | None
) -> dict[str, Any]:
    """The ``<arch>.json`` beside the weights: what the backbone was trained on and for."""
    stats = patches.chips.stats
    return {
        "arch": arch,
        "task": patches.task,
        "in_channels": len(patches.chips.bands),
        "num_classes": len(patches.chips.classes),
        "classes": patches.chips.classes,
        "input_size": params.input_size,
        "mean": [float(v) for v in stats["mean"]],
        "std": [float(v) for v in stats["std"]],
        "data_fingerprint": stats["fingerprint"],
        "val_accuracy": val_accuracy,
        "epochs": params.epochs,
    }


def pretrain_backbone(
    arch: str, params: PretrainParams, chips_dir: Path, tracking: RegisterParams
) -> dict[str, Any]:
    """Train ``arch`` to classify patches (``params.task``); write weights + meta; log an
    MLflow run.

    Returns the meta dict plus ``run_id``, ``weights_path`` and ``meta_path``.
    """
    patches = _load_patches(arch, params, chips_dir)
    classes = patches.chips.classes
    learner = _build_learner(arch, params, len(classes), len(patches.chips.bands))
    train_loader = DataLoader(
        patches.train_data,
        batch_size=params.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(params.seed),
        pin_memory=learner.device.type == "cuda",
    )
    val_loader = DataLoader(patches.val, batch_size=params.batch_size)

    with tracked_run(
        tracking.experiment,
        f"pretrain-{arch}",
        tags={"stage": "pretrain", "arch": arch, "task": patches.task},
        tracking_default=tracking.tracking_uri,
    ) as run_id:
        _log_run_params(arch, params, patches, learner)
        val = _fit(learner, train_loader, val_loader, params, len(classes))
        log_figure(
            confusion_figure(val["confusion"], classes, f"{arch}: validation"),
            "confusion_matrix.png",
        )
        meta = _backbone_meta(arch, params, patches, val["accuracy"])
        log_dict(meta, f"{arch}.json")
        save_pretrained(
            learner.model.cpu(), meta, params.weights_path(arch), params.meta_path(arch)
        )
    return {
        **meta,
        "run_id": run_id,
        "weights_path": str(params.weights_path(arch)),
        "meta_path": str(params.meta_path(arch)),
    }
