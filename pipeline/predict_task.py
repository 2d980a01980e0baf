"""The job and result types that travel between the predict client and its Dask workers.

``pipeline.predict`` (the client, no torch) builds a :class:`PredictJob` from the run's
``config.PredictOptions`` and what it planned (``predict.plan_run``), and receives
:class:`GroupResult` objects; ``pipeline.inference`` (the workers, torch) consumes the one and
produces the other. Keeping them here lets both import them without importing each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from pipeline.raster import BandPlan
from pipeline.windows import Rect, WindowGrid

# model pixels per raster pixel (down the rows, across the columns); AS_IS: no resampling
PixelScale = tuple[float, float]
AS_IS: PixelScale = (1.0, 1.0)


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


@dataclass
class GroupResult:
    """One task's output: summed normalised contributions and validity over ``region``."""

    region: Rect
    contrib: np.ndarray | None  # None when every window of the task was all nodata
    valid: np.ndarray | None
    ran: int
    skipped: int
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds by phase
