"""The evaluate stage's figures: per test scene an error map (each pixel's class at the model's
threshold) and a quicklook (the scene's RGB with the road probability over it), both PNGs at
overview resolution (at most ``PNG_MAX_SIDE`` pixels a side).

Error classes are computed block by block while a scene is scored (``error_codes``,
``reduce_codes``); this module draws what the scoring collected.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import raster
from pipeline.atomic import atomic_path

PNG_MAX_SIDE = 1024  # figures of larger scenes are downsampled to at most this many pixels a side

# Error map classes, in increasing priority when a downsampled block holds several.
NODATA, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = range(5)
ERROR_PALETTE = np.array(
    [
        [128, 128, 128],  # nodata: grey
        [0, 0, 0],  # background correctly left out: black
        [255, 255, 0],  # road found: yellow
        [255, 0, 0],  # false alarm: red
        [0, 0, 255],  # road missed: blue
    ],
    dtype=np.uint8,
)
ERROR_LABELS = ("nodata", "background", "road found (TP)", "false alarm (FP)", "road missed (FN)")


def error_codes(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel class (NODATA, TRUE_NEGATIVE, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE)."""
    codes = np.full(pred.shape, TRUE_NEGATIVE, dtype=np.uint8)
    codes[pred & truth] = TRUE_POSITIVE
    codes[pred & ~truth] = FALSE_POSITIVE
    codes[~pred & truth] = FALSE_NEGATIVE
    codes[~valid] = NODATA
    return codes


def downsample_factor(shape: tuple[int, int], max_side: int = PNG_MAX_SIDE) -> int:
    """Smallest integer factor that brings both sides to ``max_side`` or less."""
    return max(1, math.ceil(max(shape) / max_side))


def reduce_codes(codes: np.ndarray, factor: int) -> np.ndarray:
    """Downsample class codes by ``factor``; a block shows its highest-priority class, so a
    one-pixel road error stays visible in an overview (missed > false alarm > found > rest)."""
    if factor == 1:
        return codes
    h, w = codes.shape
    hp, wp = math.ceil(h / factor) * factor, math.ceil(w / factor) * factor
    padded = np.full((hp, wp), NODATA, dtype=codes.dtype)
    padded[:h, :w] = codes
    return padded.reshape(hp // factor, factor, wp // factor, factor).max(axis=(1, 3))


def rgb_band_indexes(bands: list[str], count: int) -> list[int]:
    """1-based indexes of red, green, blue by band name; else the first three (or band 1)."""
    names = [b.lower() for b in bands]
    if all(c in names for c in ("red", "green", "blue")):
        return [names.index(c) + 1 for c in ("red", "green", "blue")]
    return [1, 2, 3] if count >= 3 else [1, 1, 1]


def stretch(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) floats in 0..1, each band stretched between its 2nd and 98th
    percentiles over valid pixels (raw uint8/uint16 imagery is rarely full-range)."""
    out = np.zeros(image.shape[1:] + (image.shape[0],), dtype=np.float32)
    for i, band in enumerate(image.astype(np.float32)):
        values = band[valid]
        lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def _new_figure(shape: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = shape
    fig = Figure(figsize=(8, 8 * h / w + 0.8), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def write_error_map(path: Path, codes: np.ndarray, title: str) -> Path:
    """A scene's error classes (``error_codes``, at overview resolution) as a PNG with a legend."""
    from matplotlib.patches import Patch

    rgb = ERROR_PALETTE[codes]
    fig = _new_figure(rgb.shape[:2])
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    handles = [
        Patch(color=ERROR_PALETTE[i] / 255, label=ERROR_LABELS[i]) for i in range(len(ERROR_LABELS))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    _save_figure(fig, path)
    return path


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")


def write_quicklook(
    path: Path,
    image: Path,
    prob: np.ndarray,
    valid: np.ndarray,
    bands: list[str],
    title: str,
    declared: raster.BandSpec | None = None,
) -> Path:
    """The scene's RGB with the road probability overlaid (transparent where it is low).
    ``prob`` and ``valid`` are at overview resolution; ``declared``: the scene's own band
    declaration (``raster.band_plan``)."""
    plan = raster.band_plan(image, bands, declared)
    rgb_idx = [plan.bands[i - 1] for i in rgb_band_indexes(bands, len(plan.bands))]
    rgb = stretch(raster.read_decimated(image, rgb_idx, *valid.shape), valid)
    fig = _new_figure(valid.shape)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    overlay = np.nan_to_num(prob, nan=0.0)
    im = ax.imshow(overlay, cmap="plasma", vmin=0, vmax=1, alpha=np.clip(overlay, 0, 1) * 0.8)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="road probability")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    _save_figure(fig, path)
    return path


def scene_title(name: str, threshold: float, metrics: dict[str, float], rho: int) -> str:
    """The error map's title: the scene's scores at the model's threshold."""
    return (
        f"{name}: threshold {threshold:.2f} (from validation), "
        f"IoU {metrics['iou']:.3f}, F1 {metrics['f1']:.3f}, "
        f"relaxed break-even {metrics['relaxed_break_even']:.3f} (rho {rho} px)"
    )
