"""The train stage: fit the road U-Net on the chips; reads top to bottom.

setup -> (resume?) -> for each epoch: train, validate, log, checkpoint, keep best -> save the
best model folder (safetensors + model.json) and DVC metrics/plots. The best epoch is the one
of highest validation IoU at 0.5; its model.json carries the decision threshold that is
F1-best on the validation chips of that epoch (nodata excluded), so no test data chooses it. A checkpoint carries model,
optimiser, scheduler, epoch and RNG state (and the weight average when ``train.ema_decay`` is set:
validation and the saved model then use the average), so ``--resume`` after a kill ends exactly where an
uninterrupted run ends.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from pipeline import registry
from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.config import PretrainParams, RegisterParams, TileParams, TrainParams
from pipeline.datasets import Normalisation, SegmentationChips, read_stats
from pipeline.metrics import DEFAULT_THRESHOLDS, Confusion, ThresholdSweep, best_f1_threshold
from pipeline.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    autocast_dtype,
    build_unet,
    pick_device,
    save_model,
)
from pipeline.model_config import read_config, resolve_model

log = logging.getLogger(__name__)

TRAIN_METRICS_PATH = Path("metrics/train.json")
TRAIN_PLOT_PATH = Path("plots/train.csv")


# ------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up to the peak rate, then cosine decay to zero."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def weight_average(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the model's weights and buffers (BatchNorm statistics
    included), to be updated after every optimiser step; None when ``decay`` is None.

    With batches of 4 chips on a CPU budget each step's gradient is noisy; the average smooths
    that noise out of the weights validation picks from. The decay warms up as
    min(decay, (1+t)/(10+t)) after t updates (timm's ModelEma warm-up), so the random start
    stops weighing on the average after a few hundred steps instead of a few thousand.
    """
    if decay is None:
        return None

    @torch.no_grad()
    def ema_(
        averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor
    ) -> None:
        t = int(n_averaged)
        d = min(decay, (1 + t) / (10 + t))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): the count, not an average
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=ema_, use_buffers=True)


IGNORE_LABEL = 255.0  # target value of nodata pixels for smp's Lovasz loss, which drops them


def masked_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, params: TrainParams
) -> torch.Tensor:
    """Per-pixel BCE over valid pixels only, plus soft Dice (``bce_dice``) or the Lovasz hinge
    over the batch's valid pixels (``bce_lovasz``, smp's implementation)."""
    pos_weight = torch.tensor(params.pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=pos_weight
    )
    n_valid = valid.sum().clamp_min(1.0)
    loss = (bce * valid).sum() / n_valid
    if params.loss == "bce_dice":
        prob = torch.sigmoid(logits) * valid
        inter = (prob * target * valid).sum()
        dice = 1 - (2 * inter + 1) / (prob.sum() + (target * valid).sum() + 1)
        loss = loss + dice
    elif params.loss == "bce_lovasz":
        from segmentation_models_pytorch.losses import LovaszLoss

        labels = torch.where(valid > 0.5, target, torch.full_like(target, IGNORE_LABEL))
        loss = loss + LovaszLoss("binary", per_image=False, ignore_index=IGNORE_LABEL)(
            logits, labels
        )
    return loss


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    pred = logits > 0
    truth = target > 0.5
    v = valid > 0.5
    tp = (pred & truth & v).sum().item()
    fp = (pred & ~truth & v).sum().item()
    fn = (~pred & truth & v).sum().item()
    tn = (~pred & ~truth & v).sum().item()
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def init_encoder(model: nn.Module, params: TrainParams, pretrain: PretrainParams) -> None:
    """Load this repository's pretrained backbone into the encoder, strictly."""
    if params.encoder_weights == "none":
        return
    if params.encoder_weights == "imagenet":
        raise NotImplementedError(
            "encoder_weights=imagenet needs the internet and torchvision weights; "
            "use 'repo' (pretrained here) or 'none'"
        )
    from safetensors.torch import load_file

    from backbones.encoders import load_backbone_weights

    path = pretrain.weights_path(params.encoder)
    if not path.exists():
        listed = params.encoder in pretrain.archs
        raise FileNotFoundError(
            f"{path}: no pretrained {params.encoder} yet; "
            + ("" if listed else f"add {params.encoder} to pretrain.archs, then ")
            + f"run `dvc repro pretrain` or `pipeline pretrain {params.encoder}` "
            "(or set train.encoder_weights: none)"
        )
    load_backbone_weights(model.encoder, load_file(str(path)))


def check_fine_tunable(
    ref: str, source: ModelConfig, params: TrainParams, bands: list[str]
) -> None:
    """Refuse to fine-tune from a model whose weights cannot load into the network ``params``
    describes, or that reads other bands than the chips hold. Raises ValueError naming each
    difference."""
    diffs = []
    if source.encoder != params.encoder:
        diffs.append(f"encoder {source.encoder!r} there, train.encoder {params.encoder!r} here")
    if source.bands != bands:
        diffs.append(f"bands {source.bands} there, the chips hold {bands}")
    if source.decoder_upsampling != params.decoder_upsampling:
        diffs.append(
            f"decoder_upsampling {source.decoder_upsampling!r} there, {params.decoder_upsampling!r} here"
        )
    if source.decoder_attention != params.decoder_attention:
        diffs.append(
            f"decoder_attention {source.decoder_attention!r} there, {params.decoder_attention!r} here"
        )
    if diffs:
        raise ValueError(
            f"{ref}: cannot fine-tune from this model ({'; '.join(diffs)}); set train.* to match it"
        )


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    # weights_only=True: tensors and plain containers only, no arbitrary unpickling.
    return torch.load(path, map_location="cpu", weights_only=True)


def run_identity(params: TrainParams, data_fingerprint: str, init_digest: str = "") -> dict:
    """What a checkpoint must match to be resumed: the train params, the chips it saw and, when
    fine-tuning, the starting weights (an alias such as @champion may have moved since)."""
    return {
        "train": params.model_dump(mode="json"),
        "data_fingerprint": data_fingerprint,
        "init_weights": init_digest,
    }


def check_resumable(path: Path, ckpt: dict, identity: dict) -> None:
    """Refuse to resume a checkpoint of another run (other params or other chips): the result
    would be neither run. Raises ValueError naming what differs."""
    if "identity" not in ckpt:
        raise ValueError(
            f"{path}: checkpoint carries no run parameters (an older format); train without --resume"
        )
    saved = json.loads(ckpt["identity"])
    diffs = [
        f"train.{k}: {saved['train'].get(k)!r} in the checkpoint, {v!r} now"
        for k, v in identity["train"].items()
        if saved["train"].get(k) != v
    ]
    if saved["data_fingerprint"] != identity["data_fingerprint"]:
        diffs.append("the chips changed since the checkpoint (data fingerprint)")
    if saved.get("init_weights", "") != identity["init_weights"]:
        diffs.append(
            f"the weights of train.init_from {identity['train']['init_from']!r} changed since the checkpoint"
        )
    if diffs:
        raise ValueError(
            f"{path}: cannot resume a different run ({'; '.join(diffs)}); "
            "restore those settings, or train without --resume to start over"
        )


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        ("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))


# ------------------------------------------------------------------------------- the stage
def run_train(
    params: TrainParams,
    tile: TileParams,
    pretrain: PretrainParams,
    register: RegisterParams,
    *,
    resume: bool = False,
    params_file: Path | None = None,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train the U-Net; returns the final metrics. ``stop_after_epoch`` simulates a kill (tests)."""
    seed_everything(params.seed)
    device = pick_device("auto")
    amp_dtype = autocast_dtype(device, params.precision, training=True)
    log.info("training on %s, autocast %s", device, amp_dtype or "off (float32)")
    stats = read_stats(tile.out_dir)
    mean, std = stats["mean"], stats["std"]
    source_dir, source, init_digest = None, None, ""
    if params.init_from:
        source_dir = resolve_model(params.init_from, register.tracking_uri)
        source = read_config(source_dir)
        check_fine_tunable(params.init_from, source, params, stats["bands"])
        # the weights learnt on inputs normalised the source's way: keep its statistics
        mean, std = source.mean, source.std
        init_digest = file_digest(source_dir / WEIGHTS_FILE)
        log.info("fine-tuning from %s (%s)", params.init_from, source_dir)
    norm = Normalisation.from_lists(mean, std)

    train_ds = SegmentationChips(
        tile.out_dir,
        "train",
        norm,
        augment=params.augment,
        seed=params.seed,
        scale_jitter=params.scale_jitter,
    )
    val_ds = SegmentationChips(tile.out_dir, "val", norm)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(
            f"{tile.index_path}: {len(train_ds)} train and {len(val_ds)} val chips; both splits need chips "
            "(check tile.split and data.scenes in params.yaml)"
        )

    config = ModelConfig(
        encoder=params.encoder,
        encoder_weights=source.encoder_weights if source else params.encoder_weights,
        init_from=params.init_from or "",
        bands=stats["bands"],
        mean=mean,
        std=std,
        chip_size=stats["chip_size"],
        dtype=stats.get("dtype", ""),
        gsd_m=stats.get("gsd_m"),
        decoder_upsampling=params.decoder_upsampling,
        dropout=params.dropout,
        decoder_attention=params.decoder_attention,
        data_fingerprint=stats["fingerprint"],
        git_commit=git_commit(),
    )
    model = build_unet(config)
    if source_dir is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(source_dir / WEIGHTS_FILE)), strict=True)
    else:
        init_encoder(model, params, pretrain)
    # channels_last: oneDNN's and cuDNN's fast convolution layout (1.17x in fp32 on CPU, more with bf16)
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = weight_average(model, params.ema_decay)
    scored = (
        ema.module if ema is not None else model
    )  # what validation scores and the best model keeps

    steps_per_epoch = math.ceil(len(train_ds) / params.batch_size)
    if params.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_batches_per_epoch)
    total_steps = steps_per_epoch * params.epochs
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_lambda(total_steps, round(params.warmup_epochs * steps_per_epoch))
    )

    start_epoch, best_iou, history, run_id = 0, -1.0, [], None
    ckpt_path = params.checkpoint_path
    identity = run_identity(params, stats["fingerprint"], init_digest)
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        check_resumable(ckpt_path, ckpt, identity)
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best_iou = int(ckpt["epoch"]) + 1, float(ckpt["best_iou"])
        history = json.loads(ckpt["history"])
        run_id = ckpt["run_id"] or None
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    best_dir = ckpt_path.parent / "best"
    loader_kw = dict(
        batch_size=params.batch_size,
        num_workers=params.num_workers,
        pin_memory=device.type == "cuda",
    )
    epochs_without_gain = 0
    with registry.tracked_run(
        register.experiment,
        f"train-{params.encoder}",
        tags={"stage": "train", "encoder": params.encoder},
        tracking_default=register.tracking_uri,
        run_id=run_id,
    ) as run_id:
        if start_epoch == 0:
            registry.log_params(
                {"train": params.model_dump(mode="json"), "data_fingerprint": stats["fingerprint"]}
            )
            if params_file is not None and Path(params_file).exists():
                registry.log_artifact(params_file)
        for epoch in range(start_epoch, params.epochs):
            t0 = time.perf_counter()
            train_ds.set_epoch(epoch)
            generator = torch.Generator().manual_seed(params.seed * 1000 + epoch)
            loader = DataLoader(
                train_ds, shuffle=True, generator=generator, drop_last=False, **loader_kw
            )
            model.train()
            train_loss, n_seen = 0.0, 0
            for step, (x, y, v) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                x, y, v = x.to(device), y.to(device), v.to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(x)
                loss = masked_loss(logits.float(), y, v, params)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                train_loss += loss.item() * len(x)
                n_seen += len(x)
            val = evaluate_chips(scored, val_ds, params, device, amp_dtype)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "train_loss": train_loss / max(n_seen, 1),
                **{f"val_{k}": v for k, v in val.items()},
                "lr": scheduler.get_last_lr()[0],
                "chips_per_s": n_seen / seconds,
                "seconds": seconds,
            }
            history.append(row)
            registry.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
            if val["iou"] > best_iou:
                best_iou, epochs_without_gain = val["iou"], 0
                chosen = {
                    "threshold": val["best_threshold"],
                    "metrics": {
                        "val_iou": val["iou"],
                        "val_iou_at_threshold": val["iou_at_best_threshold"],
                    },
                }
                save_model(scored, config.model_copy(update=chosen), best_dir)
            else:
                epochs_without_gain += 1
            save_checkpoint(
                ckpt_path,
                model=model.state_dict(),
                **({"ema": ema.state_dict()} if ema is not None else {}),
                optimiser=optimiser.state_dict(),
                scheduler=scheduler.state_dict(),
                epoch=epoch,
                best_iou=best_iou,
                rng=rng_state(),
                history=json.dumps(history),
                run_id=run_id,
                identity=json.dumps(identity, sort_keys=True),
            )
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return {"stopped_after_epoch": epoch}
            if (
                params.early_stopping_patience
                and epochs_without_gain >= params.early_stopping_patience
            ):
                log.info("early stop: no val IoU gain for %d epochs", epochs_without_gain)
                break

        final = _publish(best_dir, params.out_dir, history, run_id)
        _log_figures(history, scored, val_ds, device)
        registry.log_metrics({"best_val_iou": best_iou})
    return final


def _publish(best_dir: Path, out_dir: Path, history: list[dict], run_id: str) -> dict:
    """Copy the best model to the stage output and write DVC metrics/plots."""
    out_dir = Path(out_dir)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(best_dir / name, tmp)
    write_text_atomic(out_dir / "run.json", json.dumps({"mlflow_run_id": run_id}))
    best = max(history, key=lambda r: r["val_iou"])
    metrics = {
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
    write_text_atomic(TRAIN_METRICS_PATH, json.dumps(metrics, indent=2))
    with atomic_path(TRAIN_PLOT_PATH) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0].keys()))
        writer.writeheader()
        writer.writerows(history)
    return metrics


@torch.no_grad()
def evaluate_chips(
    model: nn.Module,
    ds: SegmentationChips,
    params: TrainParams,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict:
    """Validation loss and pixel metrics at threshold 0.5 over valid pixels, plus the F1-best
    threshold of these chips (``best_threshold``) and IoU/F1 there."""
    model.eval()
    counts = np.zeros(4, np.int64)
    sweep = ThresholdSweep(DEFAULT_THRESHOLDS, rho=0)  # plain counts only: no slack
    loss_sum, n = 0.0, 0
    for x, y, v in DataLoader(ds, batch_size=params.batch_size, num_workers=params.num_workers):
        x, y, v = x.to(device), y.to(device), v.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        loss_sum += masked_loss(logits, y, v, params).item() * len(x)
        n += len(x)
        counts += confusion_counts(logits, y, v)
        prob = torch.sigmoid(logits).cpu().numpy()
        truth, valid = (y > 0.5).cpu().numpy(), (v > 0.5).cpu().numpy()
        for k in range(len(prob)):
            sweep.update(prob[k, 0], truth[k, 0], valid[k, 0])
    c = Confusion(*[int(k) for k in counts])
    curve = sweep.compute()
    best = best_f1_threshold(curve)
    k = curve.index_of(best)
    return {
        "loss": loss_sum / max(n, 1),
        "iou": c.iou,
        "f1": c.f1,
        "precision": c.precision,
        "recall": c.recall,
        "best_threshold": best,
        "iou_at_best_threshold": float(curve.iou[k]),
        "f1_at_best_threshold": float(curve.f1[k]),
    }


def _log_figures(
    history: list[dict], model: nn.Module, val_ds: SegmentationChips, device: torch.device
) -> None:
    """Training curves and a few validation overlays, as MLflow figures."""
    import matplotlib

    matplotlib.use("Agg")
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
