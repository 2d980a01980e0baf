"""How well a scene's road labels sit on its imagery, before a model learns from them.

OpenStreetMap roads are drawn over other imagery than yours: a whole extract is often a few
metres off, and it misses driveways and new streets. ``pipeline label-check`` measures, per
scene:

* **the shift that best aligns the labels**: the label raster is cross-correlated with a
  response of the imagery over shifts up to ``max_shift_m``. Without a model the response is
  the image's edge strength (Sobel magnitude summed over bands) and the labels' own edges are
  what is matched: a road's two edges sit at its label's two edges. With a probability raster
  of a first model (``pipeline predict`` output) the labels' edges are matched to the
  probability's edges. The peak's height over the surface's median says how clear the answer is; only a
  clear answer is flagged (image edges alone are a weak signal on real imagery: buildings and
  verges have edges too, and label widths rarely match road widths). The shift
  is the correction to apply (``data.scenes[].label_offset_m: [east, north]``), measured after
  any correction already declared;
* with a probability raster, **what the labels miss**: the length of predicted road centreline
  (skeleton of probability >= threshold) farther than ``omission_distance_m`` from any label.

Only the ``windows`` windows of ``window_px`` with the most labelled road are read, so the check
costs the same on a large scene as on a small one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, signal

from pipeline import raster, vectors
from pipeline.config import DataParams, LabelCheckParams, SceneSource


@dataclass(frozen=True)
class SceneLabelCheck:
    """What ``check_scene`` found for one scene."""

    scene: str
    shift_east_m: float
    shift_north_m: float
    shift_m: float
    peak_to_median: float
    clear: bool  # the peak stands out (peak_to_median >= min_clarity)
    declared_offset_m: tuple[float, float] | None
    flagged: bool  # clear, and larger than the tolerance
    response: str  # "edges" or "probability"
    labels: str = "vectors"  # "vectors" (burned) or "raster" (a label raster, a tile set's tile)
    predicted_km: float | None = None
    omitted_km: float | None = None
    omitted_fraction: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def median_shift(results: list[SceneLabelCheck]) -> tuple[int, float, float] | None:
    """(clear results, median east, median north shift in metres) of the results whose answer
    is clear: the one shift a tile set's ``label_offset_m`` gives all its tiles (None when no
    answer is clear)."""
    clear = [r for r in results if r.clear]
    if not clear:
        return None
    east = float(np.median([r.shift_east_m for r in clear]))
    north = float(np.median([r.shift_north_m for r in clear]))
    return len(clear), round(east, 2), round(north, 2)


def best_shift(response: np.ndarray, label: np.ndarray, max_shift: int) -> tuple[int, int, float]:
    """(rows, cols, peak/median) shift of ``label`` that best matches ``response``.

    ``response`` is ``label``'s window grown by ``max_shift`` on every side. The score of a
    shift (dr, dc) is ``sum(label[y, x] * response[y + dr, x + dc])`` over the window, so the
    answer is where the labels should move to lie on the response.
    """
    surface = _correlation(response, label, max_shift)
    return _peak(surface, max_shift)


def _correlation(response: np.ndarray, label: np.ndarray, max_shift: int) -> np.ndarray:
    """(2m+1, 2m+1) correlation surface of ``label`` against ``response`` for shifts up to m."""
    lab = label - label.mean()
    return signal.fftconvolve(response, lab[::-1, ::-1], mode="valid")


def _peak(surface: np.ndarray, max_shift: int) -> tuple[int, int, float]:
    i, j = np.unravel_index(int(np.argmax(surface)), surface.shape)
    median = float(np.median(surface))
    spread = float(surface.max()) - median
    floor = float(np.median(np.abs(surface - median))) or 1e-12
    return int(i) - max_shift, int(j) - max_shift, spread / floor


def edge_strength(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude summed over bands, each band scaled to unit spread; 0 where
    the pixel or a neighbour is nodata."""
    out = np.zeros(valid.shape, np.float32)
    for band in image.astype(np.float32):
        spread = float(band[valid].std()) if valid.any() else 0.0
        if spread > 0:
            b = band / spread
            out += np.hypot(ndimage.sobel(b, axis=0), ndimage.sobel(b, axis=1))
    out[~ndimage.binary_erosion(valid, iterations=2)] = 0.0
    return out


def _label_edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float32)
    return np.hypot(ndimage.sobel(m, axis=0), ndimage.sobel(m, axis=1))


def _windows(
    info: raster.RasterInfo, labels: _Labels, params: LabelCheckParams
) -> list[tuple[int, int]]:
    """Top-left (row, col) of the ``params.windows`` windows with the most labelled road."""
    size = params.window_px
    found = []
    for r in range(0, max(1, info.height - size // 2), size):
        for c in range(0, max(1, info.width - size // 2), size):
            found.append((int(labels.window(r, c, (size, size)).sum()), r, c))
    found.sort(reverse=True)
    return [(r, c) for n, r, c in found[: params.windows] if n > 0]


class _Labels:
    """A scene's road labels window by window: its vectors burned (with any declared offset),
    or its label raster read (1 = road; background and nodata 0)."""

    def __init__(self, scene: SceneSource, data: DataParams, info: raster.RasterInfo) -> None:
        self.info = info
        self.roads = vectors.load_scene_roads(scene, data, info) if scene.roads else None
        self.path = scene.labels
        self.kind = "vectors" if self.roads is not None else "raster"

    def window(self, row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
        if self.roads is not None:
            return vectors.burn_mask(self.roads, _window_transform(self.info, row, col), shape)
        with raster.open_reader(self.path) as reader:
            values = reader.read_band(1, col, row, shape[1], shape[0])
        return (values == 1).astype(np.uint8)


def _window_transform(info: raster.RasterInfo, row: int, col: int):
    return info.transform * info.transform.translation(col, row)


def check_scene(
    scene: SceneSource,
    data: DataParams,
    params: LabelCheckParams,
    probability: Path | None = None,
) -> SceneLabelCheck:
    """Measure the label shift (and, with ``probability``, the omissions) of one scene."""
    info = raster.raster_info(scene.image)
    labels = _Labels(scene, data, info)
    res = info.metres_per_pixel or 1.0
    m = max(1, int(round(params.max_shift_m / res)))
    surface = np.zeros((2 * m + 1, 2 * m + 1))
    omission = _Omission(params, res) if probability is not None else None
    for row, col in _windows(info, labels, params):
        size = params.window_px
        big = (size + 2 * m, size + 2 * m)
        if probability is None:
            label = labels.window(row, col, (size, size))
            with raster.open_reader(scene.image) as reader:
                image, valid = reader.read(col - m, row - m, *big)
            response = edge_strength(image, valid)
        else:
            wide = labels.window(row - m, col - m, big)  # the omission count looks past the window
            label = wide[m : m + size, m : m + size]
            prob = _read_probability(probability, row - m, col - m, big)
            omission.add(prob, wide.astype(bool))
            # the probability's edges against the labels' edges, as with image edges: the
            # probability itself correlates with the label band over a broad plateau of shifts
            # (roads are several pixels wide), which hides how clear the best shift is
            response = edge_strength(prob[None], np.ones(big, bool))
        surface += _correlation(response, _label_edges(label), m)
    dr, dc, clarity = _peak(surface, m)
    down, across = _pixel_sides(info)
    east, north = dc * across, -dr * down
    shift = float(np.hypot(east, north))
    extra = omission.result() if omission is not None else {}
    return SceneLabelCheck(
        scene=scene.name,
        shift_east_m=round(float(east), 2),
        shift_north_m=round(float(north), 2),
        shift_m=round(shift, 2),
        peak_to_median=round(clarity, 2),
        clear=clarity >= params.min_clarity,
        declared_offset_m=tuple(scene.label_offset_m) if scene.label_offset_m else None,
        flagged=clarity >= params.min_clarity and shift > params.tolerance_m,
        response="edges" if probability is None else "probability",
        labels=labels.kind,
        **extra,
    )


def _pixel_sides(info: raster.RasterInfo) -> tuple[float, float]:
    """(metres per row, metres per column) on the ground: they differ for square-degree pixels
    away from the equator; without a CRS, the transform's own units."""
    return info.pixel_metres or info.res[::-1]


def _read_probability(path: Path, row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
    from pipeline.stitching import decode

    with raster.open_reader(path) as reader:
        values = reader.read_band(1, col, row, shape[1], shape[0])
    return np.nan_to_num(decode(values), nan=0.0).astype(np.float32)


class _Omission:
    """Predicted centreline length with and without a label within ``omission_distance_m``."""

    def __init__(self, params: LabelCheckParams, res_m: float) -> None:
        self.threshold = params.threshold
        self.reach_px = params.omission_distance_m / res_m
        self.res_m = res_m
        self.predicted = 0
        self.omitted = 0

    def add(self, prob: np.ndarray, label: np.ndarray) -> None:
        from skimage.morphology import skeletonize

        skeleton = skeletonize(prob >= self.threshold)
        far = ndimage.distance_transform_edt(~label) > self.reach_px
        self.predicted += int(skeleton.sum())
        self.omitted += int((skeleton & far).sum())

    def result(self) -> dict:
        km = self.res_m / 1000.0
        return {
            "predicted_km": round(self.predicted * km, 3),
            "omitted_km": round(self.omitted * km, 3),
            "omitted_fraction": round(self.omitted / self.predicted, 4) if self.predicted else 0.0,
        }


def check_labels(
    data: DataParams, params: LabelCheckParams, probabilities: Path | None = None
) -> list[SceneLabelCheck]:
    """``check_scene`` for every scene (tile sets expanded to their tiles, as ``data`` holds them
    after ``tilesets.expand``). With ``probabilities``, a folder holding ``<image stem>_roads.tif``
    for each scene."""
    results = []
    for scene in data.scenes:
        prob = None
        if probabilities is not None:
            prob = Path(probabilities) / f"{Path(scene.image).stem}_roads.tif"
            if not prob.exists():
                raise FileNotFoundError(
                    f"{prob}: no probability raster for scene {scene.name}; run "
                    f"pipeline predict {scene.image} -o {prob}"
                )
        results.append(check_scene(scene, data, params, prob))
    return results
