"""Band normalisation, in one place: what train, pretrain, predict and the MLflow model feed
the network.

``standardise`` is ``(x - mean) / std`` per band in float32, optionally after a per-band
(low, high) -> (0, 1) stretch (``normalisation: percentile``), with nodata pixels set to 0.
Every path that normalises pixels calls it, so a model sees the same numbers in training and
in use. ``percentile_stretch`` gives the (low, high) of that stretch from pixel samples.
"""

from __future__ import annotations

import numpy as np

PERCENTILE_RANGE = (2.0, 98.0)  # the per-raster stretch of ``normalisation: percentile``


def standardise(
    image: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    valid: np.ndarray | None = None,
    stretch: np.ndarray | None = None,
) -> np.ndarray:
    """(C, H, W) band values of any dtype -> float32 ``(x - mean) / std``, a new array.

    ``mean`` and ``std`` are float32 (C,). With ``stretch`` (C, 2) float32, each band's
    (low, high) is first mapped to (0, 1). Pixels where ``valid`` (H, W) is False are set
    to 0, whatever they held (a NaN nodata value included).
    """
    x = image.astype(np.float32)
    if stretch is not None:
        lo, hi = stretch[:, 0], stretch[:, 1]
        x = (x - lo[:, None, None]) / (hi - lo)[:, None, None]
    x = (x - mean[:, None, None]) / std[:, None, None]
    if valid is not None:
        x[:, ~valid] = 0.0
    return x


def percentile_stretch(pixels: np.ndarray) -> list[tuple[float, float]]:
    """Each band's (2nd, 98th) percentile of ``pixels`` (C, N), computed in float64; high is at
    least low + 1, so a flat band does not divide by zero."""
    lo, hi = np.percentile(np.asarray(pixels, np.float64), PERCENTILE_RANGE, axis=1)
    return [(float(a), float(max(b, a + 1.0))) for a, b in zip(lo, hi, strict=True)]


def pretrain_band_stats(mean: list[float], std: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (C,) mean and std for pretraining, a std of 0 (a constant band in the chips)
    replaced by 1 so the band stays finite."""
    s = np.asarray(std, dtype=np.float32)
    return np.asarray(mean, dtype=np.float32), np.where(s > 0, s, 1.0).astype(np.float32)
