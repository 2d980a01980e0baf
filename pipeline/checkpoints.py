"""Training checkpoints: what ``pipeline train --resume`` needs to end exactly where an
uninterrupted run ends.

A checkpoint (``train.checkpoint_path``, a torch file of tensors and plain containers) carries
the model, the weight average when ``train.ema_decay`` is set, the optimiser, the learning-rate
schedule, the epoch, the best validation IoU so far, the per-epoch history, every random
generator's state, the MLflow run, and the identity of the run (train params, chips, starting
weights) that a resume must match.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pipeline.atomic import atomic_path, free_bytes_if_full
from pipeline.config import TrainParams


@dataclass
class Progress:
    """Where a run stands: the next epoch to train, the best validation IoU so far, one history
    row per epoch done, and the MLflow run it logs to (None until one is started)."""

    start_epoch: int = 0
    best_iou: float = -1.0
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None


class CheckpointError(ValueError):
    """A checkpoint that could not be written; the message names the file and why."""


def save_checkpoint(path: Path, **state) -> None:
    """Write ``state`` to ``path`` through a temporary file: a write that fails (a full disk)
    leaves the previous checkpoint as it was and says so in one line."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (RuntimeError, OSError) as e:
        raise CheckpointError(_write_failure(Path(path), e)) from None


def _write_failure(path: Path, error: BaseException) -> str:
    kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
    free = free_bytes_if_full(path, error)
    if free is not None:
        return (
            f"{path}: the disk is full ({free / 2**20:.0f} MiB free) while writing a "
            f"checkpoint; {kept}. Free some space (or set train.out_dir on another disk) "
            "and run again with --resume"
        )
    return f"{path}: cannot write a checkpoint ({str(error).splitlines()[0]}); {kept}"


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


def write_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    ema: AveragedModel | None,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    progress: Progress,
    identity: dict,
) -> None:
    """Save the state after ``epoch``, random generators included, atomically."""
    save_checkpoint(
        path,
        model=model.state_dict(),
        **({"ema": ema.state_dict()} if ema is not None else {}),
        optimiser=optimiser.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=epoch,
        best_iou=progress.best_iou,
        rng=rng_state(),
        history=json.dumps(progress.history),
        run_id=progress.run_id,
        identity=json.dumps(identity, sort_keys=True),
    )


def resume_checkpoint(
    path: Path,
    identity: dict,
    *,
    model: nn.Module,
    ema: AveragedModel | None,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Progress:
    """Load a checkpoint of this run (``identity``, else ValueError) into the model, its
    average, the optimiser, the schedule and the random generators; returns where it stood."""
    ckpt = load_checkpoint(path)
    check_resumable(path, ckpt, identity)
    model.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    optimiser.load_state_dict(ckpt["optimiser"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return Progress(
        start_epoch=int(ckpt["epoch"]) + 1,
        best_iou=float(ckpt["best_iou"]),
        history=json.loads(ckpt["history"]),
        run_id=ckpt["run_id"] or None,
    )
