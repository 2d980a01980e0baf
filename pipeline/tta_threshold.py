"""The decision threshold for predictions averaged over the eight flips and rotations.

Train chooses a model's threshold as the F1-best on its validation chips, predicted once each.
The mean of eight views is smoother: its probabilities around a road's edge are lower and its
false alarms fainter, so its F1-best threshold is another one (the Massachusetts recipe's
percentile model: 0.07 plain, 0.40 best on its test tiles averaged). ``evaluate.tta`` chooses
it the same way, on the same validation chips averaged over the eight views, stores it in
model.json as ``threshold_tta``, and ``predict --tta`` uses it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.config import TileParams
from pipeline.datasets import SegmentationChips, chip_normalisation, read_stats
from pipeline.inference import forward_probs
from pipeline.metrics import DEFAULT_THRESHOLDS, ThresholdSweep, best_f1_threshold
from pipeline.model import load_model, pick_device
from pipeline.model_config import read_config

log = logging.getLogger(__name__)


def validation_chips(model_dir: Path, tile: TileParams) -> SegmentationChips | None:
    """The validation chips normalised as the model was trained, or None (logged) where they
    cannot stand for it (no validation chips, or chips of other bands than the model's)."""
    config = read_config(model_dir)
    stats = read_stats(tile.out_dir, required=False)
    if stats and list(stats["bands"]) != list(config.bands):
        log.warning(
            "%s: chips of bands %s, model of %s: the threshold for --tta stays the model's",
            tile.out_dir,
            stats["bands"],
            config.bands,
        )
        return None
    chips = None
    if stats:
        norm, _, _ = chip_normalisation(
            stats, config.normalisation, tile.stats_path, (config.mean, config.std)
        )
        chips = SegmentationChips(tile.out_dir, "val", norm)
    if not chips:
        log.warning(
            "%s: no validation chips: the threshold for --tta stays the model's", tile.out_dir
        )
        return None
    return chips


def choose_tta_threshold(
    model_dir: Path, tile: TileParams, precision: str = "auto", batch_size: int = 4
) -> float | None:
    """The F1-best threshold of the eight-view mean on the validation chips (nodata left
    out), as train chooses the plain one; None, with a warning saying why, when there are no
    chips to choose on, or no road in them."""
    chips = validation_chips(model_dir, tile)
    if chips is None:
        return None
    device = pick_device("auto")
    model, _ = load_model(model_dir, device=device)
    sweep = ThresholdSweep(DEFAULT_THRESHOLDS, rho=0)
    for x, y, v in DataLoader(chips, batch_size=batch_size):
        prob = forward_probs(model, x, device, tta=True, precision=precision)
        truth, valid = y[:, 0].numpy() > 0.5, v[:, 0].numpy() > 0.5
        for k in range(len(prob)):
            sweep.update(prob[k], truth[k], valid[k])
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the prediction workers size their batches to free memory
    if not sweep.n_true:
        log.warning(
            "%s: no road in the validation chips: the threshold for --tta stays the model's",
            tile.out_dir,
        )
        return None  # F1 would be best at "nothing is road" (1.0) or "all is road" (0.0)
    return float(best_f1_threshold(sweep.compute()))
