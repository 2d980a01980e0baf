"""The train stage: fit the road U-Net on the chips; ``run_train`` reads top to bottom.

Phases: seed and device -> the fine-tuning source, if any (``fine_tune_source``) -> chips
(``chip_datasets``) -> model config and network, weight average, optimiser and schedule
(``start_fitting``) -> resume from a checkpoint (``checkpoints.py``) -> epochs
(``run_epochs``: train, validate, log, keep the best, checkpoint, stop early) -> publish the
best model folder and the DVC metrics/plots, log figures (``train_report.py``).

The best epoch is the one of highest validation IoU at 0.5; its model.json carries the decision
threshold that is F1-best on the validation chips of that epoch (nodata excluded), so no test
data chooses it. A checkpoint carries model, optimiser, scheduler, epoch and RNG state (and the
weight average when ``train.ema_decay`` is set: validation and the saved model then use the
average), so ``--resume`` after a kill ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from pipeline import distributed, registry

# check_resumable and load_checkpoint lived here before pipeline/checkpoints.py: callers that
# import them from pipeline.train keep working
from pipeline.checkpoints import (
    Progress,
    check_resumable,  # noqa: F401
    load_checkpoint,  # noqa: F401
    resume_checkpoint,
    run_identity,
    write_checkpoint,
)
from pipeline.config import PretrainParams, RegisterParams, TileParams, TrainParams
from pipeline.datasets import Normalisation, SegmentationChips, chip_normalisation, read_stats
from pipeline.label_noise import LabelNoise
from pipeline.metrics import DEFAULT_THRESHOLDS, Confusion, ThresholdSweep, best_f1_threshold
from pipeline.model import (
    WEIGHTS_FILE,
    ModelConfig,
    autocast_dtype,
    build_unet,
    pick_device,
    save_model,
)
from pipeline.model_config import check_weights, file_sha256, read_config, resolve_model
from pipeline.thin_roads import ThinRoadWeight
from pipeline.train_report import log_figures, publish_model

log = logging.getLogger(__name__)


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
        # valid may carry weights (train.label_noise, train.thin_roads): each pixel counts once, weighted
        prob = torch.sigmoid(logits)
        inter = (prob * target * valid).sum()
        dice = 1 - (2 * inter + 1) / ((prob * valid).sum() + (target * valid).sum() + 1)
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
    if source.decoder_channels != params.decoder_channels:
        diffs.append(
            f"decoder_channels {source.decoder_channels} there, {params.decoder_channels} here"
        )
    if diffs:
        raise ValueError(
            f"{ref}: cannot fine-tune from this model ({'; '.join(diffs)}); set train.* to match it"
        )


# ------------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class FineTuneSource:
    """The model ``train.init_from`` names: its folder, its config and its weights' digest."""

    ref: str
    model_dir: Path
    config: ModelConfig
    digest: str


@dataclass
class Fitting:
    """What the epochs update (the network, its weight average, the optimiser and its
    schedule) and how they run (device, autocast type, batches per epoch)."""

    model: nn.Module
    ema: AveragedModel | None
    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    device: torch.device
    amp_dtype: torch.dtype | None
    trained: nn.Module | None = None  # under torchrun: the DDP wrapper of ``model``
    chip_weights: torch.Tensor | None = None  # train.road_sampling's draw weights; None: uniform
    label_noise: LabelNoise | None = None  # train.label_noise's loss weights; None: plain loss
    thin_roads: ThinRoadWeight | None = None  # train.thin_roads' road weights; None: plain loss

    @property
    def stepped(self) -> nn.Module:
        """What the optimiser steps run: the DDP wrapper under torchrun, else the model."""
        return self.trained if self.trained is not None else self.model

    @property
    def scored(self) -> nn.Module:
        """What validation scores and the best model keeps: the average when there is one."""
        return self.ema.module if self.ema is not None else self.model


@distributed.data_parallel  # under torchrun: one process of a data-parallel run
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
    distributed.per_process_batch(params.batch_size)  # refuse a global batch that does not divide
    device = distributed.local_device(pick_device("auto"))
    amp_dtype = autocast_dtype(device, params.precision, training=True)
    log.info("training on %s, autocast %s", device, amp_dtype or "off (float32)")
    stats = read_stats(tile.out_dir)
    source = fine_tune_source(params, register, stats["bands"])
    # weights fine-tuned from a model learnt on inputs normalised the source's way: keep them
    normalisation = source.config.normalisation if source else params.normalisation
    fixed = (source.config.mean, source.config.std) if source else None
    norm, mean, std = chip_normalisation(stats, normalisation, tile.stats_path, fixed)
    train_ds, val_ds = chip_datasets(params, tile, norm)
    config = model_config(params, stats, mean, std, source, normalisation)
    fit = start_fitting(config, params, pretrain, source, len(train_ds), device, amp_dtype)
    fit.chip_weights = road_sampling_weights(train_ds, params.road_sampling)
    fit.label_noise = LabelNoise.from_params(params.label_noise, stats.get("gsd_m"))
    fit.thin_roads = ThinRoadWeight.from_params(params.thin_roads, stats.get("gsd_m"))

    ckpt_path = params.checkpoint_path
    identity = run_identity(params, stats["fingerprint"], source.digest if source else "")
    progress = _resume(ckpt_path, identity, fit) if resume else Progress()

    # under torchrun only rank 0 tracks, writes and publishes; the others train and validate
    main = distributed.is_main()
    with _tracked_run(params, register, progress.run_id, main) as run_id:
        progress.run_id = run_id
        if progress.start_epoch == 0 and main:
            _log_run_params(params, stats["fingerprint"], params_file)
        stopped = run_epochs(
            fit, progress, params, train_ds, val_ds, config, identity, stop_after_epoch
        )
        if stopped is not None:
            return {"stopped_after_epoch": stopped}
        final = {}
        if main:
            final = publish_model(_best_dir(params), params, progress.history, run_id)
            log_figures(progress.history, fit.scored, val_ds, device)
            registry.log_metrics({"best_val_iou": progress.best_iou})
    distributed.barrier()  # the others end when rank 0 has published
    return final


def _resume(ckpt_path: Path, identity: dict, fit: Fitting) -> Progress:
    """Restore model, weight average, optimiser, schedule and progress from the checkpoint at
    ``ckpt_path``; a fresh start when there is none yet (every process must see the same)."""
    distributed.check_seen_by_all(ckpt_path)
    if not ckpt_path.exists():
        return Progress()
    progress = resume_checkpoint(
        ckpt_path,
        identity,
        model=fit.model,
        ema=fit.ema,
        optimiser=fit.optimiser,
        scheduler=fit.scheduler,
    )
    log.info("resumed from %s at epoch %d", ckpt_path, progress.start_epoch)
    return progress


def _tracked_run(
    params: TrainParams, register: RegisterParams, run_id: str | None, main: bool
) -> contextlib.AbstractContextManager[str | None]:
    """The MLflow run ``train-<encoder>`` (continued when ``run_id`` is given) on the main
    process; elsewhere just ``run_id``."""
    if not main:
        return contextlib.nullcontext(run_id)
    return registry.tracked_run(
        register.experiment,
        f"train-{params.encoder}",
        tags={"stage": "train", "encoder": params.encoder},
        tracking_default=register.tracking_uri,
        run_id=run_id,
    )


def fine_tune_source(
    params: TrainParams, register: RegisterParams, bands: list[str]
) -> FineTuneSource | None:
    """The model to fine-tune from (``train.init_from``), checked against ``params`` and the
    chips' bands; None when training starts from the encoder weights."""
    if not params.init_from:
        return None
    model_dir = resolve_model(params.init_from, register.tracking_uri)
    config = read_config(model_dir)
    check_weights(model_dir, config)
    check_fine_tunable(params.init_from, config, params, bands)
    # check_weights has just hashed the file against the recorded digest: reuse it
    digest = config.weights_sha256 or file_sha256(model_dir / WEIGHTS_FILE)
    log.info("fine-tuning from %s (%s)", params.init_from, model_dir)
    return FineTuneSource(params.init_from, model_dir, config, digest)


def chip_datasets(
    params: TrainParams, tile: TileParams, norm: Normalisation
) -> tuple[SegmentationChips, SegmentationChips]:
    """The train chips (augmented as ``params`` says) and the validation chips; ValueError
    when either split is empty."""
    train_ds = SegmentationChips(
        tile.out_dir,
        "train",
        norm,
        augment=params.augment,
        seed=params.seed,
        jitter=params.colour_jitter,
        scale_jitter=params.scale_jitter,
        negative_weight=params.negative_weight,
    )
    val_ds = SegmentationChips(tile.out_dir, "val", norm)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(
            f"{tile.index_path}: {len(train_ds)} train and {len(val_ds)} val chips; both splits need chips "
            "(check tile.split and data.scenes in params.yaml)"
        )
    if not val_ds.road_fractions().any():
        # F1 is 0 at every threshold: the model's threshold would be 0.0 ("all is road") and
        # no epoch would beat the first, so the saved model would be an untrained one
        raise ValueError(
            f"{tile.index_path}: the {len(val_ds)} val chips hold no road pixel, so neither "
            "the model's threshold nor its best epoch can be chosen on them; put tiles or "
            "scenes with roads in val (tile.split in params.yaml, or the tile set's `split`)"
        )
    return train_ds, val_ds


def model_config(
    params: TrainParams,
    stats: dict,
    mean: list[float],
    std: list[float],
    source: FineTuneSource | None,
    normalisation: str = "dataset",
) -> ModelConfig:
    """Everything predict needs to rebuild the model: network, bands, normalisation, chips."""
    return ModelConfig(
        encoder=params.encoder,
        encoder_weights=source.config.encoder_weights if source else params.encoder_weights,
        init_from=params.init_from or "",
        bands=stats["bands"],
        mean=mean,
        std=std,
        normalisation=normalisation,
        chip_size=stats["chip_size"],
        dtype=stats.get("dtype", ""),
        gsd_m=stats.get("gsd_m"),
        decoder_upsampling=params.decoder_upsampling,
        dropout=params.dropout,
        decoder_attention=params.decoder_attention,
        decoder_channels=params.decoder_channels,
        data_fingerprint=stats["fingerprint"],
        git_commit=git_commit(),
    )


def start_fitting(
    config: ModelConfig,
    params: TrainParams,
    pretrain: PretrainParams,
    source: FineTuneSource | None,
    n_train_chips: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Fitting:
    """Build the U-Net with its starting weights (the fine-tuning source's, else the
    pretrained encoder's), its weight average, the optimiser and the warm-up + cosine
    schedule."""
    model = build_unet(config)
    if source is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(source.model_dir / WEIGHTS_FILE)), strict=True)
    else:
        init_encoder(model, params, pretrain)
    # channels_last: oneDNN's and cuDNN's fast convolution layout (1.17x in fp32 on CPU, more with bf16)
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = weight_average(model, params.ema_decay)
    steps_per_epoch = math.ceil(n_train_chips / params.batch_size)
    if params.max_batches_per_epoch:
        steps_per_epoch = min(steps_per_epoch, params.max_batches_per_epoch)
    total_steps = steps_per_epoch * params.epochs
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lr_lambda(total_steps, round(params.warmup_epochs * steps_per_epoch))
    )
    trained = distributed.wrap(model, device) if distributed.active() else None
    return Fitting(model, ema, optimiser, scheduler, steps_per_epoch, device, amp_dtype, trained)


def road_sampling_weights(ds: SegmentationChips, strength: float) -> torch.Tensor | None:
    """Draw weights 1 + strength x road fraction / mean road fraction (``train.road_sampling``);
    None for 0 (or chips without any road), which keeps the plain shuffle."""
    if strength == 0:
        return None
    fractions = ds.road_fractions()
    if fractions.mean() == 0:
        return None
    weights = 1.0 + strength * fractions / fractions.mean()
    log.info(
        "road sampling: chip weights %.2f-%.2f (mean road fraction %.3f)",
        weights.min(),
        weights.max(),
        fractions.mean(),
    )
    return torch.as_tensor(weights, dtype=torch.float64)


def _log_run_params(params: TrainParams, data_fingerprint: str, params_file: Path | None) -> None:
    registry.log_params(
        {"train": params.model_dump(mode="json"), "data_fingerprint": data_fingerprint}
    )
    if params_file is not None and Path(params_file).exists():
        registry.log_artifact(params_file)


def run_epochs(
    fit: Fitting,
    progress: Progress,
    params: TrainParams,
    train_ds: SegmentationChips,
    val_ds: SegmentationChips,
    config: ModelConfig,
    identity: dict,
    stop_after_epoch: int | None,
) -> int | None:
    """Train and validate from ``progress.start_epoch``; after each epoch keep the model if
    it is the best so far, write the checkpoint, and stop early after
    ``train.early_stopping_patience`` epochs without gain. Returns the epoch after which
    ``stop_after_epoch`` stopped the run, else None."""
    epochs_without_gain = 0
    for epoch in range(progress.start_epoch, params.epochs):
        row, val = train_epoch(fit, params, train_ds, val_ds, epoch)
        progress.history.append(row)
        gain = val["iou"] > progress.best_iou  # every process has the same (pooled) val IoU
        progress.best_iou = max(progress.best_iou, val["iou"])
        epochs_without_gain = 0 if gain else epochs_without_gain + 1
        if distributed.is_main():
            registry.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
            if gain:
                save_best_model(fit.scored, config, val, _best_dir(params))
            write_checkpoint(
                params.checkpoint_path,
                model=fit.model,
                ema=fit.ema,
                optimiser=fit.optimiser,
                scheduler=fit.scheduler,
                epoch=epoch,
                progress=progress,
                identity=identity,
            )
        distributed.barrier()  # the checkpoint is whole before any process goes on
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return epoch
        if params.early_stopping_patience and epochs_without_gain >= params.early_stopping_patience:
            log.info("early stop: no val IoU gain for %d epochs", epochs_without_gain)
            break
    return None


def train_epoch(
    fit: Fitting,
    params: TrainParams,
    train_ds: SegmentationChips,
    val_ds: SegmentationChips,
    epoch: int,
) -> tuple[dict, dict]:
    """One epoch of optimiser steps, then validation; returns the history row and the
    validation metrics (``evaluate_chips``)."""
    t0 = time.perf_counter()
    train_loss, n_seen = _optimiser_steps(fit, params, train_ds, epoch)
    val = evaluate_chips(fit.scored, val_ds, params, fit.device, fit.amp_dtype)
    seconds = time.perf_counter() - t0
    row = {
        "epoch": epoch,
        "train_loss": train_loss / max(n_seen, 1),
        **{f"val_{k}": v for k, v in val.items()},
        "lr": fit.scheduler.get_last_lr()[0],
        "chips_per_s": n_seen / seconds,
        "seconds": seconds,
    }
    return row, val


def _optimiser_steps(
    fit: Fitting, params: TrainParams, train_ds: SegmentationChips, epoch: int
) -> tuple[float, int]:
    """Up to ``fit.steps_per_epoch`` batches in this epoch's shuffled order (seeded by epoch,
    so a resumed run draws the same batches); returns the summed loss and the chips seen."""
    train_ds.set_epoch(epoch)
    generator = torch.Generator().manual_seed(params.seed * 1000 + epoch)
    loader = distributed.train_loader(  # under torchrun: this process's share of each batch
        train_ds,
        params.batch_size,
        generator,
        fit.chip_weights,
        num_workers=params.num_workers,
        pin_memory=fit.device.type == "cuda",
    )
    device, amp_dtype = fit.device, fit.amp_dtype
    fit.model.train()
    train_loss, n_seen = 0.0, 0
    for step, (x, y, v) in enumerate(loader):
        if step >= fit.steps_per_epoch:
            break
        x, y, v = x.to(device), y.to(device), v.to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = fit.stepped(x)
        if fit.label_noise is not None:
            v = fit.label_noise.weights(logits, y, v)
        if fit.thin_roads is not None:
            v = fit.thin_roads.weights(y, v)
        loss = masked_loss(logits.float(), y, v, params)
        fit.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimiser.step()
        fit.scheduler.step()
        if fit.ema is not None:
            fit.ema.update_parameters(fit.model)
        train_loss += loss.item() * len(x)
        n_seen += len(x)
    if distributed.active():  # rank 0's BatchNorm statistics everywhere; loss over all chips
        distributed.sync_buffers(fit.model)
        if fit.ema is not None:
            distributed.sync_buffers(fit.ema)
        train_loss, n_seen = distributed.sum_over_processes([train_loss, n_seen])
    return train_loss, n_seen


def _best_dir(params: TrainParams) -> Path:
    """Where the best model so far is kept until the run publishes it."""
    return params.checkpoint_path.parent / "best"


def save_best_model(model: nn.Module, config: ModelConfig, val: dict, best_dir: Path) -> None:
    """Save the model folder with the validation F1-best threshold of this epoch."""
    chosen = {
        "threshold": val["best_threshold"],
        "metrics": {
            "val_iou": val["iou"],
            "val_iou_at_threshold": val["iou_at_best_threshold"],
        },
    }
    save_model(model, config.model_copy(update=chosen), best_dir)


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
    chips = distributed.own_share(ds)  # under torchrun each process scores a share of the chips
    for x, y, v in DataLoader(chips, batch_size=params.batch_size, num_workers=params.num_workers):
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
    counts, sweep, loss_sum, n = distributed.sum_over_processes([counts, sweep, loss_sum, n])
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
