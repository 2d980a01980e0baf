"""The job and result types that travel between the predict client and its Dask workers.

``pipeline.predict`` (the client, no torch) builds a :class:`PredictJob` from the run's
``config.PredictOptions`` and what it planned (``predict.plan_run``), and receives
:class:`GroupResult` objects; ``pipeline.inference`` (the workers, torch) consumes the one and
produces the other. Keeping them here lets both import them without importing each other.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

import numpy as np

from pipeline.model_config import ModelConfig, config_json
from pipeline.raster import BandPlan
from pipeline.windows import Rect, WindowGrid

# model pixels per raster pixel (down the rows, across the columns); AS_IS: no resampling
PixelScale = tuple[float, float]
AS_IS: PixelScale = (1.0, 1.0)


def model_version(config: ModelConfig) -> str:
    """A short digest of a model folder's config, which records its weights' SHA-256: the
    version of the model a predict run was planned with, which its workers load and check."""
    return hashlib.sha256(config_json(config).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PredictJob:
    """Everything a worker needs to run windows; small, so it travels with each task."""

    image: str
    model_dir: str
    device: str
    grid: WindowGrid
    batch_size: int
    tta: bool
    precision: str = "auto"
    # the raster's data bands, in the model's order, and where validity comes from
    plan: BandPlan | None = None
    # model pixels per raster pixel, down and across: windows (on ``grid``, in raster pixels)
    # are resampled to the model's pixel size and their probability back; AS_IS runs them as
    # they are
    scale: PixelScale = AS_IS
    # per-band (low, high) raw values mapped to 0..1 before mean/std (percentile normalisation)
    stretch: tuple[tuple[float, float], ...] | None = None
    # names this predict run: workers keep the raster open between its tasks, never into another run
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # the model's ``model_version`` when the run was planned: every window of the run uses it
    model_version: str | None = None


@dataclass
class GroupResult:
    """One task's output: summed normalised contributions and validity over ``region``."""

    region: Rect
    contrib: np.ndarray | None  # None when every window of the task was all nodata
    valid: np.ndarray | None
    ran: int
    skipped: int
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds by phase
