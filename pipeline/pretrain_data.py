"""Patch classification data cut from the tile stage's chips, for pretraining the zoo.

Reads a chips folder as docs/formats.md describes it (``<scene>.images.npy``,
``<scene>.landcover.npy``, ``<scene>.masks.npy``, ``index.gpkg`` layer ``chips``, ``stats.json``)
and cuts every chip of a split into a grid of square patches, labelled by one of the tasks
(``pretrain.task``):

- ``landcover`` (EuroSAT-like): a patch is kept when it has no nodata (no land-cover 255, no
  mask 255) and one land-cover class covers at least 60% of it; that class is its label;
- ``roads``: classes derived from the road mask (no road, direction, junction;
  :mod:`pipeline.pretrain_targets`);
- ``rotation``: self-supervised, the patch turned by a multiple of 90 degrees, the turn is the
  class (imagery only).

``auto`` picks land cover where the chips have it, else roads. Images are normalised with the
train statistics of ``stats.json``.

AlexNet trains with the paper's augmentations (section 4.1), applied here when asked:
random crops (the patch window jitters by up to 16/224 of its side, the 256 -> 224 crop margin,
staying inside the chip, so there is no jitter when patches are as large as the chips),
horizontal flips, and "fancy PCA" colour noise: each image gets
``sum_i alpha_i * lambda_i * p_i`` added to every pixel (:class:`backbones.augment.PcaNoise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from backbones.augment import PcaNoise
from pipeline.chip_format import (
    LANDCOVER_UNKNOWN,
    MASK_NODATA,
    STATS_FILE,
    open_chip_array,
    read_chip_index,
    read_stats,
)
from pipeline.normalise import pretrain_band_stats, standardise
from pipeline.pretrain_targets import (
    ROAD_CLASSES,
    ROTATION_CLASSES,
    label_road_patches,
    label_rotation_patches,
)

Task = Literal["landcover", "roads", "rotation"]

MIN_CLASS_SHARE = 0.6
CROP_MARGIN = 16 / 224  # AlexNet: 224 crops out of 256 images move by up to 16 px each way
# a left-right flip turns a NE-SW road into a NW-SE one (ROAD_CLASSES order)
ROAD_CLASS_MIRRORED = [0, 1, 4, 3, 2, 5]


@dataclass(frozen=True)
class ChipFolder:
    """Arrays (memory-mapped), chip index and stats of a chips folder."""

    images: dict[str, np.ndarray]
    landcover: dict[str, np.ndarray]
    masks: dict[str, np.ndarray | None]
    index: pd.DataFrame
    stats: dict[str, Any]
    task: Task = "landcover"

    @property
    def classes(self) -> list[str]:
        if self.task == "roads":
            return list(ROAD_CLASSES)
        if self.task == "rotation":
            return list(ROTATION_CLASSES)
        return list(self.stats["landcover_classes"])

    @property
    def scenes(self) -> list[str]:
        """The scenes that give patches for the task."""
        if self.task == "landcover":
            return sorted(self.landcover)
        if self.task == "roads":
            return sorted(s for s, m in self.masks.items() if m is not None)
        return sorted(self.images)

    @property
    def bands(self) -> list[str]:
        return list(self.stats["bands"])


def _has_landcover(chips_dir: Path, stats: dict[str, Any]) -> bool:
    return bool(stats.get("landcover_classes")) and any(chips_dir.glob("*.landcover.npy"))


def resolve_task(chips_dir: Path, requested: str) -> Task:
    """``requested`` unless it is ``auto``: then land cover where the chips have it, else roads."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    stats = read_stats(chips_dir)
    return "landcover" if _has_landcover(Path(chips_dir), stats) else "roads"


def read_chip_folder(chips_dir: Path, task: Task = "landcover") -> ChipFolder:
    chips_dir = Path(chips_dir)
    stats = read_stats(chips_dir)
    for key in ("bands", "mean", "std", "landcover_classes", "fingerprint"):
        if key not in stats:
            raise ValueError(f"{chips_dir / STATS_FILE}: missing {key!r}")
    if task == "landcover" and not stats["landcover_classes"]:
        raise ValueError(
            f"{chips_dir}: no land-cover classes; use pretrain.task auto, roads or rotation, "
            "or give the scenes land cover"
        )
    index = read_chip_index(chips_dir, geometry=False)
    images, landcover, masks = {}, {}, {}
    for scene in sorted(index["scene"].unique()):
        images[scene] = open_chip_array(chips_dir, scene, "images")
        masks[scene] = open_chip_array(chips_dir, scene, "masks", required=False)
        lc = open_chip_array(chips_dir, scene, "landcover", required=False)
        if lc is not None:  # a scene without land cover gives no land-cover patches
            landcover[scene] = lc
    chips = ChipFolder(images, landcover, masks, index, stats, task)
    if not chips.scenes:
        need = {
            "landcover": "land cover (<scene>.landcover.npy)",
            "roads": "road masks (<scene>.masks.npy)",
            "rotation": "imagery (<scene>.images.npy)",
        }[task]
        raise ValueError(f"{chips_dir}: no {need}; pretrain.task {task} needs it")
    return chips


def label_patches(
    landcover: np.ndarray,
    nodata: np.ndarray,
    patch: int,
    num_classes: int,
    min_share: float = MIN_CLASS_SHARE,
) -> list[tuple[int, int, int]]:
    """``(row, col, label)`` of the labelled ``patch`` x ``patch`` grid cells of one chip."""
    nr, nc = landcover.shape[0] // patch, landcover.shape[1] // patch
    if nr == 0 or nc == 0:
        return []
    lc = np.asarray(landcover[: nr * patch, : nc * patch])
    bad = np.asarray(nodata[: nr * patch, : nc * patch])
    valid = lc[~bad]
    if valid.size and valid.max() >= num_classes:
        raise ValueError(f"land-cover value {int(valid.max())} outside the {num_classes} classes")
    cells = lc.reshape(nr, patch, nc, patch).transpose(0, 2, 1, 3).reshape(nr, nc, -1)
    has_nodata = bad.reshape(nr, patch, nc, patch).any(axis=(1, 3))
    shares = np.stack([(cells == c).mean(-1) for c in range(num_classes)], axis=-1)
    label, share = shares.argmax(-1), shares.max(-1)
    keep = (~has_nodata) & (share >= min_share)
    return [
        (int(r) * patch, int(c) * patch, int(label[r, c]))
        for r, c in zip(*np.nonzero(keep), strict=True)
    ]


class PatchDataset(Dataset):
    """Normalised labelled patches of one split (the chip folder's task),
    ``(image (C, S, S) float32, label int64)``."""

    def __init__(
        self,
        chips: ChipFolder,
        split: str,
        input_size: int,
        augment: bool = False,
        pca: PcaNoise | None = None,
        seed: int = 0,
    ) -> None:
        self.chips = chips
        self.input_size = input_size
        self.augment = augment
        self.pca = pca
        self.rng = np.random.default_rng(seed)
        self.mean, self.std = pretrain_band_stats(chips.stats["mean"], chips.stats["std"])
        if self.mean.shape[0] != len(chips.bands) or self.std.shape[0] != len(chips.bands):
            raise ValueError("stats.json: mean/std need one value per band")
        chip_size = chips.images[chips.scenes[0]].shape[-1]
        self.patch = min(input_size, chip_size)  # chips smaller than input_size are resized
        self.items: list[tuple[str, int, int, int, int]] = []  # scene, array_index, row, col, label
        rows = chips.index[
            (chips.index["split"] == split) & chips.index["scene"].isin(chips.scenes)
        ]
        for scene, array_index in zip(rows["scene"], rows["array_index"], strict=True):
            for r, c, label in self._label_chip(scene, int(array_index)):
                self.items.append((scene, int(array_index), r, c, label))

    def _label_chip(self, scene: str, i: int) -> list[tuple[int, int, int]]:
        mask = self.chips.masks[scene]
        mask_i = None if mask is None else np.asarray(mask[i])
        size = self.chips.images[scene].shape[-2:]
        nodata = np.zeros(size, bool) if mask_i is None else mask_i == MASK_NODATA
        if self.chips.task == "roads":
            return label_road_patches(mask_i, nodata, self.patch)
        if self.chips.task == "rotation":
            return label_rotation_patches(nodata, self.patch)
        lc = np.asarray(self.chips.landcover[scene][i])
        return label_patches(
            lc, nodata | (lc == LANDCOVER_UNKNOWN), self.patch, len(self.chips.classes)
        )

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.asarray([it[-1] for it in self.items], dtype=np.int64)

    def _window(self, scene: str, i: int, r: int, c: int) -> np.ndarray:
        chip = self.chips.images[scene][i]
        if self.augment:
            size = chip.shape[-1]
            m = max(1, round(self.patch * CROP_MARGIN))
            r = int(np.clip(r + self.rng.integers(-m, m + 1), 0, size - self.patch))
            c = int(np.clip(c + self.rng.integers(-m, m + 1), 0, size - self.patch))
        return np.asarray(chip[:, r : r + self.patch, c : c + self.patch], dtype=np.float32)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scene, i, r, c, label = self.items[k]
        x = standardise(self._window(scene, i, r, c), self.mean, self.std)
        if self.augment:
            if self.rng.random() < 0.5:
                x = x[:, :, ::-1]
                if self.chips.task == "roads":
                    label = ROAD_CLASS_MIRRORED[label]
            if self.pca is not None:
                x = x + self.pca.sample(self.rng)[:, None, None]
        if self.chips.task == "rotation":
            x = np.rot90(x, label, axes=(1, 2))  # counter-clockwise quarter turns
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.patch != self.input_size:
            size = (self.input_size, self.input_size)
            t = F.interpolate(t.unsqueeze(0), size=size, mode="bilinear", align_corners=False)
            t = t.squeeze(0)
        return t, torch.tensor(label, dtype=torch.int64)

    def sample_pixels(self, max_patches: int = 256, seed: int = 0) -> np.ndarray:
        """Normalised pixels (N, C) of up to ``max_patches`` patches, for :meth:`PcaNoise.fit`."""
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(self.items))[:max_patches]
        chans = []
        for k in picks:
            scene, i, r, c, _ = self.items[int(k)]
            chip = self.chips.images[scene][i]
            window = np.asarray(chip[:, r : r + self.patch, c : c + self.patch])
            x = standardise(window, self.mean, self.std)
            chans.append(x.reshape(x.shape[0], -1).T)
        return np.concatenate(chans) if chans else np.zeros((0, len(self.mean)), np.float32)
