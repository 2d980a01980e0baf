"""Shared settings for the backbone tests: one intra-op thread (the CI box has 2 shared cores;
oversubscribed threads make tiny convolutions 10-30x slower)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
