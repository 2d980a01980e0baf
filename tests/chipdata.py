"""A tiny chips folder written by code, in the layout of docs/formats.md (tile stage output)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
from shapely.geometry import box

CLASSES = ["water", "forest", "urban"]
BANDS = ["red", "green", "blue", "nir"]
# Per-class band means: the classes differ in colour, so a few steps can learn them.
CLASS_COLOURS = np.array(
    [[40, 60, 120, 30], [50, 120, 50, 200], [160, 150, 140, 90]], dtype=np.float32
)


ROAD_DRAWINGS = ("none", "horizontal", "vertical", "cross")


def draw_road(side: int, kind: str, width: int = 4) -> np.ndarray:
    """A ``side`` x ``side`` 0/1 road mask: no road, a band across (E-W or N-S), or a cross."""
    road = np.zeros((side, side), np.uint8)
    lo = side // 2 - width // 2
    if kind in ("horizontal", "cross"):
        road[lo : lo + width, :] = 1
    if kind in ("vertical", "cross"):
        road[:, lo : lo + width] = 1
    return road


def write_chips(
    out_dir: Path,
    chip_size: int = 64,
    chips_per_split: tuple[int, int] = (6, 3),
    seed: int = 0,
    *,
    with_landcover: bool = True,
    roads: bool = False,
) -> Path:
    """One scene ``s1``: each chip's quadrants carry one land-cover class each (plus noise).

    Chip 0 has a nodata corner (mask and land cover 255); the last train chip has an unknown
    (255) land-cover stripe. Masks are 5 % random road pixels, or with ``roads`` one drawing of
    :data:`ROAD_DRAWINGS` per quadrant, painted dark grey into the image. Without
    ``with_landcover`` there is no land-cover file and no class list. Returns ``out_dir``.
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = sum(chips_per_split)
    half = chip_size // 2
    landcover = np.zeros((n, chip_size, chip_size), np.uint8)
    for i in range(n):
        for qr in range(2):
            for qc in range(2):
                landcover[i, qr * half : (qr + 1) * half, qc * half : (qc + 1) * half] = (
                    rng.integers(0, len(CLASSES))
                )
    colours = CLASS_COLOURS[landcover].transpose(0, 3, 1, 2)
    images = np.clip(colours + rng.normal(0, 12, colours.shape), 1, 255).astype(np.uint8)
    masks = (rng.random((n, chip_size, chip_size)) < 0.05).astype(np.uint8)
    if roads:
        draw = np.random.default_rng(seed + 1)  # the land-cover draws above stay as they were
        for i in range(n):
            for qr in range(2):
                for qc in range(2):
                    kind = ROAD_DRAWINGS[draw.integers(len(ROAD_DRAWINGS))]
                    cell = (i, slice(qr * half, (qr + 1) * half), slice(qc * half, (qc + 1) * half))
                    masks[cell] = draw_road(half, kind)
        images[:, :3][np.broadcast_to((masks == 1)[:, None], images[:, :3].shape)] = 90
    masks[0, :8, :8] = 255
    landcover[0, :8, :8] = 255
    images[0, :, :8, :8] = 0
    landcover[chips_per_split[0] - 1, :, :2] = 255

    np.save(out_dir / "s1.images.npy", images)
    np.save(out_dir / "s1.masks.npy", masks)
    if with_landcover:
        np.save(out_dir / "s1.landcover.npy", landcover)

    splits = ["train"] * chips_per_split[0] + ["val"] * chips_per_split[1]
    x0, y0 = 500000.0, 5400000.0
    index = gpd.GeoDataFrame(
        {
            "chip_id": [f"s1_{i:04d}" for i in range(n)],
            "scene": ["s1"] * n,
            "array_index": np.arange(n, dtype=np.int64),
            "row_off": np.zeros(n, dtype=np.int64),
            "col_off": np.arange(n, dtype=np.int64) * chip_size,
            "size": np.full(n, chip_size, dtype=np.int64),
            "split": splits,
            "road_fraction": np.zeros(n),
            "nodata_fraction": (masks == 255).mean(axis=(1, 2)),
        },
        geometry=[
            box(x0 + i * chip_size, y0 - chip_size, x0 + (i + 1) * chip_size, y0) for i in range(n)
        ],
        crs="EPSG:32632",
    )
    index.to_file(out_dir / "index.gpkg", layer="chips", driver="GPKG", engine="pyogrio")

    train = images[: chips_per_split[0]].astype(np.float64)
    valid = train.min(axis=1) > 0
    digest = hashlib.sha256()
    for arr in (images, masks, landcover):
        digest.update(arr.tobytes())
    stats = {
        "bands": BANDS,
        "dtype": "uint8",
        "mean": [float(train[:, b][valid].mean()) for b in range(len(BANDS))],
        "std": [float(train[:, b][valid].std()) for b in range(len(BANDS))],
        "landcover_classes": CLASSES if with_landcover else [],
        "scenes": {"s1": "auto"},
        "fingerprint": digest.hexdigest(),
        "chip_size": chip_size,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    return out_dir
