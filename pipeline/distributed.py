"""Data-parallel training under ``torchrun``: the process group, rank helpers, the batches each
process trains on, and the sums that make every process agree on validation.

``torchrun`` starts one process per GPU (or CPU worker) and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK). `pipeline train` sees those variables, joins the
process group (NCCL on GPUs, gloo on CPU) and trains a DistributedDataParallel copy of the model;
without them nothing here does anything and training is a single process, unchanged.

``train.batch_size`` is the GLOBAL batch: each of the W processes trains on batch_size / W chips
per step, and DDP averages their gradients. The processes take their chips from the very
permutation a single process draws for the epoch (``GlobalBatchShards``), so one optimiser step
sees the same chips however many processes share it. What still differs from one process:
BatchNorm statistics are computed per process (on batch_size / W chips, as in torchvision's
reference scripts without --sync-bn), and the loss is averaged per process before the gradients
are (with nodata pixels, processes with fewer valid pixels weigh a little more).

Only rank 0 writes files and talks to MLflow; the others wait at ``barrier``.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, WeightedRandomSampler

from pipeline.config import ConfigError

log = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
F = TypeVar("F", bound=Callable[..., Any])


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its variables) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """The process that writes checkpoints, the model folder, metrics and talks to MLflow."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if active():
        dist.barrier()


def data_parallel(fn: F) -> F:
    """Run ``fn`` inside a process group when torchrun launched this process (and none is open
    yet): gloo on CPU, NCCL when CUDA is there; the group is closed when ``fn`` returns or
    raises. Without torchrun's variables ``fn`` runs as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not launched_by_torchrun() or dist.is_initialized():
            return fn(*args, **kwargs)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend)
        log.info("process %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
        try:
            return fn(*args, **kwargs)
        finally:
            dist.destroy_process_group()

    return wrapper  # type: ignore[return-value]


def local_device(device: torch.device) -> torch.device:
    """This process's GPU (``cuda:LOCAL_RANK``) when training on CUDA under torchrun."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def per_process_batch(global_batch: int) -> int:
    """The chips each process trains on per step; ConfigError when the global batch does not
    divide evenly over the processes."""
    n = world_size()
    if global_batch % n:
        raise ConfigError(
            f"train.batch_size {global_batch} is the global batch, shared by the {n} processes "
            f"torchrun started: it must be a multiple of {n}"
        )
    return global_batch // n


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the training steps call: a DistributedDataParallel wrapper of ``model`` in a
    process group (same parameters, gradients averaged over processes), else ``model``.
    Checkpoints and the weight average keep using ``model`` itself, so their keys never change."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics, which each process updates on
    its own chips), so that all validate, and rank 0 saves, the same model."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def sum_over_processes(values: list[Any]) -> list[Any]:
    """Each value summed (``+=``: numbers, arrays, metric accumulators such as ThresholdSweep)
    over the processes, in rank order; ``values`` itself in a single process. For validation
    counts: every process then agrees on the metrics, hence on the best epoch and on early
    stopping."""
    if not active():
        return values
    gathered: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(gathered, values)
    total = list(gathered[0])  # unpickled copies: summing in place touches no caller's value
    for other in gathered[1:]:
        total = [operator.iadd(a, b) for a, b in zip(total, other, strict=True)]
    return total


class GlobalBatchShards(Sampler[list[int]]):
    """This process's part of each global batch, for a ``DataLoader(batch_sampler=...)``.

    The epoch's order is the permutation a single process's shuffling DataLoader draws from
    ``generator`` (``torch.randperm``); it is cut into global batches of ``global_batch`` chips
    and each batch into ``world`` consecutive parts, of which rank r takes part r. A last batch
    too small to give every process a chip is topped up from the start of the permutation, so
    that every process runs the same number of steps (DDP needs that).
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        generator: torch.Generator,
        rank: int,
        world: int,
        weights: torch.Tensor | None = None,
    ) -> None:
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.generator = generator
        self.weights = weights

    def __len__(self) -> int:
        return -(-self.n // self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.weights is None:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:  # the draw a single process's WeightedRandomSampler makes
            order = torch.multinomial(self.weights, self.n, True, generator=self.generator).tolist()
        for start in range(0, self.n, self.global_batch):
            batch = order[start : start + self.global_batch]
            if len(batch) < self.world:
                batch += (order * self.world)[: self.world - len(batch)]
            parts = torch.tensor_split(torch.tensor(batch), self.world)
            yield parts[self.rank].tolist()


def train_loader(
    ds: Dataset,
    global_batch: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
    **loader_kw,
) -> DataLoader:
    """The epoch's shuffled training batches for this process. In a single process: a
    shuffling DataLoader of ``global_batch`` chips drawing its order from ``generator`` (with
    ``weights``: ``len(ds)`` chips drawn with replacement, chip i with probability
    proportional to ``weights[i]``); in a process group, this process's ``GlobalBatchShards``
    of the same order (the DataLoader draws its worker seed from ``generator`` first in both
    cases, so the orders are equal)."""
    if not active():
        sampler = (
            None
            if weights is None
            else WeightedRandomSampler(weights, len(ds), replacement=True, generator=generator)
        )
        return DataLoader(
            ds,
            batch_size=global_batch,
            shuffle=sampler is None,
            sampler=sampler,
            generator=generator,
            drop_last=False,
            **loader_kw,
        )
    shards = GlobalBatchShards(len(ds), global_batch, generator, rank(), world_size(), weights)
    return DataLoader(ds, batch_sampler=shards, generator=generator, **loader_kw)


def shard(n: int) -> list[int]:
    """This process's share of ``n`` items (every world-th one, from its rank): validation
    chips, each seen by exactly one process."""
    return list(range(rank(), n, world_size()))


def own_share(ds: Dataset) -> Dataset:
    """This process's share of ``ds`` (``shard``); ``ds`` itself in a single process."""
    return Subset(ds, shard(len(ds))) if active() else ds


def check_seen_by_all(path: Path) -> None:
    """ConfigError unless ``path`` exists for every process or for none: a checkpoint on one
    machine's disk cannot be resumed by processes on the others."""
    if not active():
        return
    seen: list[bool | None] = [None] * world_size()
    dist.all_gather_object(seen, path.exists())
    if len(set(seen)) > 1:
        blind = [r for r, s in enumerate(seen) if not s]
        raise ConfigError(
            f"{path}: processes {blind} do not see it; to resume on several machines put "
            f"{path.parent} on storage they all share"
        )


def launched_as_main() -> bool:
    """True unless torchrun started this process as another than rank 0 (for what a command
    prints once, after the process group has closed)."""
    return int(os.environ.get("RANK", "0")) == 0
