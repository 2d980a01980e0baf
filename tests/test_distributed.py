"""Data-parallel mechanics (pipeline/distributed.py) with two real gloo processes: the global
batch is shared out exactly, and DDP steps on the shares end where one process ends."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline import distributed
from pipeline.config import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n,batch,world", [(11, 4, 2), (9, 4, 2), (12, 6, 3), (5, 4, 4)])
def test_global_batch_shards_share_out_the_single_process_batches(n, batch, world):
    single = [
        b.tolist()
        for b in DataLoader(
            list(range(n)),
            batch_size=batch,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
        )
    ]
    per_rank = []
    for r in range(world):
        g = torch.Generator().manual_seed(3)
        shards = distributed.GlobalBatchShards(n, batch, g, r, world)
        per_rank.append(
            [b.tolist() for b in DataLoader(list(range(n)), batch_sampler=shards, generator=g)]
        )
    assert all(len(steps) == len(single) for steps in per_rank), "every process runs every step"
    for step, expected in enumerate(single):
        got = [i for r in range(world) for i in per_rank[r][step]]
        assert all(per_rank[r][step] for r in range(world)), "a process got no chip"
        if len(expected) >= world:
            assert got == expected, f"step {step}"
        else:  # a last batch smaller than the world is topped up from the epoch's start
            assert got[: len(expected)] == expected


def test_weighted_shards_share_out_the_single_process_weighted_draw():
    n, batch, world = 10, 4, 2
    weights = torch.tensor([1.0] * 5 + [20.0] * 5, dtype=torch.float64)
    ds = list(range(n))
    single = [
        b.tolist()
        for b in distributed.train_loader(ds, batch, torch.Generator().manual_seed(5), weights)
    ]
    drawn = [i for b in single for i in b]
    assert len(drawn) == n and len(set(drawn)) < n, "drawn with replacement"
    assert sum(i >= 5 for i in drawn) > sum(i < 5 for i in drawn), "heavy chips drawn more"
    per_rank = []
    for r in range(world):
        g = torch.Generator().manual_seed(5)
        shards = distributed.GlobalBatchShards(n, batch, g, r, world, weights)
        per_rank.append([b.tolist() for b in DataLoader(ds, batch_sampler=shards, generator=g)])
    for step, expected in enumerate(single):
        assert [i for r in range(world) for i in per_rank[r][step]] == expected


def test_a_single_process_is_untouched():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.per_process_batch(5) == 5
    model = nn.Linear(2, 1)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.sum_over_processes([1, 2.0]) == [1, 2.0]


def _tiny_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(10, 2, 8, 8, generator=g), torch.randn(10, 1, 8, 8, generator=g)
    )


@distributed.data_parallel
def _train_tiny(global_batch: int, disks: Path | None = None) -> dict:
    """Two epochs of SGD on a BatchNorm-free conv net: with equal per-process batches, DDP's
    averaged gradient is exactly the gradient of the global batch's mean loss."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    trained = distributed.wrap(model, torch.device("cpu"))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    ds = _tiny_data()
    for epoch in range(2):
        loader = distributed.train_loader(ds, global_batch, torch.Generator().manual_seed(epoch))
        for x, y in loader:
            optimiser.zero_grad()
            nn.functional.mse_loss(trained(x), y).backward()
            optimiser.step()
    counts = distributed.sum_over_processes([np.array([1, distributed.rank()]), 0.5])
    refused = ""
    if disks is not None:  # a checkpoint that only rank 0's machine has
        try:
            distributed.check_seen_by_all(disks / f"machine{distributed.rank()}" / "last.pt")
        except ConfigError as e:
            refused = str(e)
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "counts": counts,
        "shard": distributed.shard(10),
        "world": distributed.world_size(),
        "refused": refused,
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.save(_train_tiny(4, Path(out)), Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_end_with_the_weights_of_one_process(tmp_path):
    one = _train_tiny(4)
    (tmp_path / "machine0").mkdir()
    (tmp_path / "machine0" / "last.pt").write_bytes(b"")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert one["world"] == 1 and all(r["world"] == 2 for r in ranks)
    for k, w in one["weights"].items():
        for r in ranks:
            torch.testing.assert_close(r["weights"][k], w, rtol=1e-5, atol=1e-6)
    for r in ranks:  # every process holds the sum over both
        assert r["counts"][0].tolist() == [2, 1] and r["counts"][1] == 1.0
    assert sorted(ranks[0]["shard"] + ranks[1]["shard"]) == list(range(10))
    assert not set(ranks[0]["shard"]) & set(ranks[1]["shard"])
    for r in ranks:  # both refuse to resume, naming the process that cannot see it
        assert "processes [1] do not see it" in r["refused"]
    assert not distributed.active(), "the process group of the test process was left open"


def test_a_batch_that_does_not_divide_over_the_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match="train.batch_size 5 is the global batch.*multiple of 2"):
        distributed.per_process_batch(5)
