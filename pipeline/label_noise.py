"""Loss weights that tolerate road labels with omissions and loose widths (``train.label_noise``).

Labels made from OpenStreetMap (Massachusetts Roads among them) miss roads: driveways, some
residential streets, new estates. The plain loss punishes a model that finds such a road as
hard as a real false alarm, and teaches it to ignore what the labels forgot. Labels drawn as a
fixed-width band around a centreline also mark the road's edge wrongly wherever the road is
wider or narrower than the band. Two per-pixel weights, both on background pixels only:

- *far positives*: a background pixel farther than ``far_from_label_m`` from any road label that
  the model already calls road with probability >= ``confidence`` weighs ``far_positive_weight``
  (0: ignored). A confident detection far from every label is more likely an omission than a
  mistake; close to a label it is a width error, which the band below handles.
- *edge band*: background pixels within ``edge_band_m`` of a road label weigh 0, so the
  road's exact edge is not learnt from a band drawn at a guessed width.

Distances are Chebyshev (square neighbourhoods, a max filter of the road mask), cheap on any
device; road pixels and nodata keep their weights (1 and 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import LabelNoiseParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelNoise:
    """``train.label_noise`` in pixels of the chips."""

    far_px: int
    far_weight: float
    confidence: float
    band_px: int

    @classmethod
    def from_params(cls, params: LabelNoiseParams, gsd_m: float | None) -> LabelNoise | None:
        """None when both weights are off. Metres become pixels at the chips' pixel size."""
        if params.far_positive_weight == 1.0 and params.edge_band_m == 0:
            return None
        if not gsd_m:
            raise ValueError(
                "train.label_noise needs the chips' pixel size (stats.json gsd_m); re-run the tile stage"
            )
        noise = cls(
            far_px=max(1, round(params.far_from_label_m / gsd_m)),
            far_weight=params.far_positive_weight,
            confidence=params.confidence,
            band_px=round(params.edge_band_m / gsd_m),
        )
        log.info(
            "label noise: far positives (> %d px from a label, p >= %.2f) weigh %.2f; "
            "edge band %d px ignored",
            noise.far_px,
            noise.confidence,
            noise.far_weight,
            noise.band_px,
        )
        return noise

    def weights(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """``valid`` times the per-pixel weight; same shape (N, 1, H, W), no gradient."""
        with torch.no_grad():
            road = (target > 0.5).to(valid.dtype) * valid
            background = 1.0 - road
            weight = valid.clone()
            if self.band_px > 0:
                band = (near(road, self.band_px) - road).clamp(0, 1)
                weight = weight * (1.0 - band)
            if self.far_weight < 1.0:
                confident = (torch.sigmoid(logits.float()) >= self.confidence).to(valid.dtype)
                far = 1.0 - near(road, self.far_px)
                far_positive = far * confident * background
                weight = weight * (1.0 - (1.0 - self.far_weight) * far_positive)
        return weight


def near(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """The largest value of ``mask`` within ``radius`` pixels (square neighbourhood): for a 0/1
    mask, 1 where it has a 1 that near, else 0.

    Two separable max filters; the border is padded with -inf (nothing beyond it)."""
    k = 2 * radius + 1
    rows = F.max_pool2d(mask, (k, 1), stride=1, padding=(radius, 0))
    return F.max_pool2d(rows, (1, k), stride=1, padding=(0, radius))
