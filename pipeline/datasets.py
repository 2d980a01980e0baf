"""Torch datasets over the tile stage's chips, and the training augmentations.

Chips are memory-mapped ``.npy`` arrays (docs/formats.md), so a dataset costs no memory up
front and a DataLoader worker reads only the chips it serves. Augmentation randomness is
derived from (seed, epoch, chip) rather than from a global RNG: the same epoch gives the same
batches whatever the number of workers, which is what makes ``train --resume`` exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from pipeline.chip_format import MASK_NEGATIVE, MASK_NODATA, ChipArrays, read_chip_index
from pipeline.chip_format import read_stats as read_stats  # where train and tests find it
from pipeline.normalise import standardise


@dataclass(frozen=True)
class Normalisation:
    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)
    # normalisation "percentile": each scene's per-band (low, high), stretched to 0..1 first
    stretch: dict[str, np.ndarray] | None = None  # scene -> (C, 2)

    @classmethod
    def from_lists(
        cls, mean: list[float], std: list[float], stretch: dict[str, list] | None = None
    ) -> Normalisation:
        scenes = {k: np.asarray(v, np.float32) for k, v in (stretch or {}).items()}
        return cls(np.asarray(mean, np.float32), np.asarray(std, np.float32), scenes or None)

    def apply(
        self, image: np.ndarray, valid: np.ndarray | None = None, scene: str | None = None
    ) -> np.ndarray:
        """(C,H,W) raw band values -> float32 standardised (``normalise.standardise``); nodata
        pixels set to 0. With a stretch, ``scene``'s band range is mapped to 0..1 first."""
        stretch = None if self.stretch is None else self.stretch[scene]
        return standardise(image, self.mean, self.std, valid, stretch)


def chip_normalisation(
    stats: dict, kind: str, stats_path: Path, fixed: tuple[list[float], list[float]] | None = None
) -> tuple[Normalisation, list[float], list[float]]:
    """The training normalisation ``kind`` (dataset or percentile) of the chips ``stats``
    describes, and its mean and std: those of the train chips (after each scene's stretch for
    percentile), or ``fixed`` (a fine-tuned model keeps its source's)."""
    if kind == "dataset":
        mean, std = fixed or (stats["mean"], stats["std"])
        return Normalisation.from_lists(mean, std), mean, std
    if "percentiles" not in stats:
        raise ValueError(
            f"{stats_path}: no per-scene band percentiles (tiled by an older version); "
            "re-run `pipeline tile` for normalisation: percentile"
        )
    mean, std = fixed or (stats["percentile_mean"], stats["percentile_std"])
    return Normalisation.from_lists(mean, std, stats["percentiles"]), mean, std


def dihedral(arr: np.ndarray, k: int) -> np.ndarray:
    """One of the eight dihedral transforms (k in 0..7) on the last two axes."""
    out = np.rot90(arr, k % 4, axes=(-2, -1))
    if k >= 4:
        out = out[..., ::-1]
    return out


def rescale(
    x: np.ndarray, y: np.ndarray, v: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zoom image (C,H,W), mask (H,W) and valid (H,W) by ``scale`` about the chip centre, keeping
    the chip size; one sampling grid for all three, so they stay aligned.

    Output pixel ``p`` takes the input at ``c + (p - c) / scale`` (``c`` the centre): bilinear for
    the image, nearest for mask and valid. Pixels that fall outside the input (``scale < 1``)
    become nodata: valid 0, image 0, mask 0. ``v`` may carry loss weights (any value > 0 is valid).
    """
    if scale == 1.0:
        return x, y, v
    h, w = y.shape
    inv = 1.0 / scale
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - inv * centre
    matrix = np.array([inv, inv])
    kw = dict(matrix=matrix, offset=offset, mode="constant", cval=0.0)
    y_out = ndimage.affine_transform(y, order=0, **kw)
    v_out = ndimage.affine_transform(v, order=0, **kw)
    x_out = np.stack([ndimage.affine_transform(band, order=1, **kw) for band in x])
    return (x_out * (v_out[None] > 0)).astype(np.float32), y_out, v_out


class SegmentationChips(Dataset):
    """(image, mask, valid) chips of one split for U-Net training.

    Returns float32 tensors: image (C,H,W) standardised, mask (1,H,W) in {0,1}, valid (1,H,W)
    in {0,1} (0 where the chip has nodata; loss and metrics ignore those pixels), or with
    ``negative_weight`` that weight on hard-negative background (loss weights; metrics read
    valid > 0.5).

    With ``augment``: one of the eight dihedral transforms, then (``scale_jitter`` > 0) a zoom
    about the centre (:func:`rescale`), both applied identically to image, mask and valid; then
    per-band brightness/contrast/gamma jitter of the image.
    """

    def __init__(
        self,
        chips_dir: Path,
        split: str,
        norm: Normalisation,
        *,
        augment: bool = False,
        seed: int = 0,
        jitter: float = 0.1,
        scale_jitter: float = 0.0,
        negative_weight: float = 1.0,
    ) -> None:
        index = read_chip_index(chips_dir)
        rows = index[index["split"] == split].sort_values(["scene", "array_index"])
        self.items = list(zip(rows["scene"], rows["array_index"].astype(int), strict=True))
        self.arrays = ChipArrays(chips_dir)
        self.norm = norm
        self.augment = augment
        self.seed = seed
        self.jitter = jitter
        self.scale_jitter = scale_jitter
        self.negative_weight = negative_weight
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def road_fractions(self) -> np.ndarray:
        """Each chip's share of road among its valid pixels, in dataset order (float64)."""
        out = np.zeros(len(self.items))
        by_scene: dict[str, list[int]] = {}
        for i, (scene, _) in enumerate(self.items):
            by_scene.setdefault(scene, []).append(i)
        for scene, positions in by_scene.items():
            masks = self.arrays.get(scene, "masks")
            for i in positions:
                mask = np.asarray(masks[self.items[i][1]])
                valid = np.count_nonzero(mask != MASK_NODATA)
                out[i] = np.count_nonzero(mask == 1) / valid if valid else 0.0
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scene, j = self.items[i]
        image = np.asarray(self.arrays.get(scene, "images")[j])
        mask = np.asarray(self.arrays.get(scene, "masks")[j])
        valid = mask != MASK_NODATA
        x = self.norm.apply(image, valid, scene)
        y = (mask == 1).astype(np.float32)
        v = valid.astype(np.float32)
        if self.negative_weight != 1.0:
            v[mask == MASK_NEGATIVE] = self.negative_weight
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            k = int(rng.integers(8))
            x, y, v = dihedral(x, k), dihedral(y, k), dihedral(v, k)
            if self.scale_jitter > 0:
                x, y, v = rescale(x, y, v, self.draw_scale(rng))
            x = self._jitter(x, v, rng)
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.ascontiguousarray(y))[None],
            torch.from_numpy(np.ascontiguousarray(v))[None],
        )

    def draw_scale(self, rng: np.random.Generator) -> float:
        """A zoom factor, log-uniform in [1 / (1 + scale_jitter), 1 + scale_jitter]."""
        top = np.log1p(self.scale_jitter)
        return float(np.exp(rng.uniform(-top, top)))

    def _jitter(self, x: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per-band brightness, contrast and gamma jitter in standardised units."""
        c = x.shape[0]
        brightness = rng.uniform(-self.jitter, self.jitter, c).astype(np.float32)
        contrast = rng.uniform(1 - self.jitter, 1 + self.jitter, c).astype(np.float32)
        gamma = rng.uniform(1 - self.jitter, 1 + self.jitter, c).astype(np.float32)
        x = np.sign(x) * np.abs(x) ** gamma[:, None, None]
        x = x * contrast[:, None, None] + brightness[:, None, None]
        return (x * (v[None] > 0)).astype(np.float32)
