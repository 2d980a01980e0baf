"""Vector helpers in local metres: smooth and meandering polylines, points and frames along
lines, oriented rectangles, dashes."""

from __future__ import annotations

import numpy as np
import shapely
from scipy import signal


def chaikin(pts: np.ndarray, iterations: int) -> np.ndarray:
    """Corner cutting: a polyline becomes a smooth curve with the same end points."""
    for _ in range(iterations):
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        mid = np.empty((2 * len(q), 2))
        mid[0::2], mid[1::2] = q, r
        pts = np.vstack([pts[:1], mid, pts[-1:]])
    return pts


def wander(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    step: float,
    turn_sd: float,
    persistence: float,
) -> np.ndarray:
    """A path whose heading meanders around ``heading`` (AR(1) deviations): rivers, tracks."""
    n = max(2, int(length / step))
    deviation = signal.lfilter([1.0], [1.0, -persistence], rng.normal(0.0, turn_sd, n))
    h = heading + deviation
    steps = step * np.stack([np.cos(h), np.sin(h)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def edge_point(rng: np.random.Generator, extent: float, side: int, margin: float) -> np.ndarray:
    """A point just outside scene edge ``side`` (0 top, 1 right, 2 bottom, 3 left)."""
    t = rng.uniform(0.1, 0.9) * extent
    return np.array(
        [(t, margin), (extent + margin, -t), (t, -extent - margin), (-margin, -t)][side]
    )


def curve_through(
    rng: np.random.Generator, ctrl: list[np.ndarray], spacing: float, wiggle: float, smooth: int = 5
) -> shapely.LineString:
    """A smooth road through control points, bent sideways by up to ~``wiggle`` metres."""
    pts = [ctrl[0]]
    for a, b in zip(ctrl[:-1], ctrl[1:], strict=True):
        seg = b - a
        length = float(np.hypot(*seg)) + 1e-9
        normal = np.array([-seg[1], seg[0]]) / length
        n = max(1, int(length // spacing))
        pts.extend(a + seg * k / n + normal * rng.normal(0.0, wiggle) for k in range(1, n))
        pts.append(b)
    return shapely.LineString(chaikin(np.array(pts), smooth))


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(c)`` for each count c."""
    counts = np.asarray(counts, dtype=np.intp)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def frames(lines: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point, unit tangent and left normal at distances along lines (arrays of equal length)."""
    length = shapely.length(lines)
    d = np.clip(dist, 0.0, length)
    a = np.maximum(np.minimum(d, length - 0.5), 0.0)
    p = shapely.get_coordinates(shapely.line_interpolate_point(lines, d))
    p0 = shapely.get_coordinates(shapely.line_interpolate_point(lines, a))
    p1 = shapely.get_coordinates(shapely.line_interpolate_point(lines, np.minimum(a + 0.5, length)))
    t = p1 - p0
    t /= np.maximum(np.hypot(t[:, 0], t[:, 1]), 1e-9)[:, None]
    return p, t, np.stack([-t[:, 1], t[:, 0]], axis=1)


def rects(
    centre: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    lo: float = -0.5,
    hi: float = 0.5,
) -> np.ndarray:
    """Rectangles (polygons) spanning ``a`` along ``e1`` and ``b * [lo, hi]`` along ``e2``."""
    a = np.asarray(a, float)[:, None]
    b = np.asarray(b, float)[:, None]
    corners = [
        centre - e1 * a / 2 + e2 * b * lo,
        centre + e1 * a / 2 + e2 * b * lo,
        centre + e1 * a / 2 + e2 * b * hi,
        centre - e1 * a / 2 + e2 * b * hi,
    ]
    return shapely.polygons(np.stack(corners, axis=1))


def line_parts(geoms) -> list[shapely.LineString]:
    parts = shapely.get_parts(np.asarray(geoms, dtype=object))
    return [g for g in parts if g.geom_type == "LineString" and g.length > 1.0]


def dashes(lines: np.ndarray, dash: float, gap: float, rng: np.random.Generator) -> np.ndarray:
    """Dashed copies of lines: straight pieces ``dash`` long every ``dash + gap`` metres."""
    if not len(lines):
        return lines
    period = dash + gap
    counts = (shapely.length(lines) // period).astype(np.intp)
    idx = np.repeat(np.arange(len(lines)), counts)
    start = ragged_arange(counts) * period + rng.uniform(0, gap, len(lines))[idx]
    p0 = shapely.get_coordinates(shapely.line_interpolate_point(lines[idx], start))
    p1 = shapely.get_coordinates(shapely.line_interpolate_point(lines[idx], start + dash))
    return shapely.linestrings(np.stack([p0, p1], axis=1))
