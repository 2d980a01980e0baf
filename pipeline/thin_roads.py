"""``train.thin_roads``: road pixels weighted up by how narrow their road is.

A pixel loss counts road by area: a 20 m motorway weighs five times a 4 m track per metre of
road, so a model on a small budget learns wide roads first and faint narrow ones last, while
a road network (and APLS) counts every metre alike. Here a road pixel weighs
``reference_width / local road width``, between 1 and ``max_weight``: per metre of road, every
road narrower than the reference counts about as much as one at the reference width.

The local width comes from the label alone, by torch max pools on the training device: the
chessboard depth of each road pixel (how many 3 x 3 erosions it survives), then the deepest
pixel within that many pixels of it, i.e. the half-width of the road it lies on. Roads wider
than the reference are not measured further (the erosions stop there). On labels drawn at one
fixed width every road pixel gets the same weight: a plain positive weight.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import ThinRoadParams
from pipeline.label_noise import near

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThinRoadWeight:
    """``train.thin_roads`` in pixels of the chips."""

    reference_px: float
    max_weight: float

    @classmethod
    def from_params(cls, params: ThinRoadParams, gsd_m: float | None) -> ThinRoadWeight | None:
        """None when off (``max_weight`` 1). Metres become pixels at the chips' pixel size."""
        if params.max_weight == 1.0:
            return None
        if not gsd_m:
            raise ValueError(
                "train.thin_roads needs the chips' pixel size (stats.json gsd_m); re-run the tile stage"
            )
        weight = cls(reference_px=params.reference_width_m / gsd_m, max_weight=params.max_weight)
        log.info(
            "thin roads: road pixels of roads narrower than %.1f px weigh up to %.2f",
            weight.reference_px,
            weight.max_weight,
        )
        return weight

    def weights(self, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``valid`` times the per-pixel weight; same shape (N, 1, H, W), no gradient."""
        with torch.no_grad():
            road = (target > 0.5).to(valid.dtype) * valid
            half = half_width(road, math.ceil((self.reference_px + 1) / 2))
            width = (2 * half - 0.5).clamp_min(1.0)  # 2h - 1 (odd widths) or 2h (even)
            weight = (self.reference_px / width).clamp(1.0, self.max_weight)
            return valid * torch.where(road > 0, weight, torch.ones_like(weight))


def half_width(road: torch.Tensor, cap: int) -> torch.Tensor:
    """Per road pixel, the half-width in pixels (chessboard depth of the road's centre) of the
    road it lies on, up to ``cap``; 0 off the road.

    A pixel's depth is how many 3 x 3 erosions it survives (1 at the road's edge); the
    half-width is the largest depth within ``cap`` pixels, so the edge pixels of a road get its
    centre's depth. Past the image border the road is taken to go on (replicate padding)."""
    depth = road.clone()
    eroded = road
    for _ in range(cap - 1):
        padded = F.pad(eroded, (1, 1, 1, 1), mode="replicate")
        eroded = -F.max_pool2d(-padded, 3, stride=1)
        if not eroded.any():
            break
        depth = depth + eroded
    return near(depth, cap) * road
