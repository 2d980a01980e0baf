"""Road segmentation metrics: confusion counts, IoU / F1 / precision / recall, relaxed
precision / recall (Mnih 2013), and threshold sweeps that stream scene by scene.

Pure numpy/scipy. Conventions used everywhere in this module:

- A pixel is predicted road when ``prob >= threshold``; the comparison is made in the
  probability's own dtype (as ``prob >= t`` does in numpy 2 for a Python float ``t``).
- Pixels where ``valid`` is False (nodata) or the probability is NaN never count, in any metric,
  neither as prediction nor as truth.
- 0/0 is resolved so that "nothing to do, nothing done" is perfect and the counts stay
  consistent: precision = 1 when nothing is predicted (no false alarm was made), recall = 1 when
  there is no road to find, IoU = F1 = 1 when prediction and truth are both empty. An empty
  prediction on a scene with roads therefore scores precision 1, recall 0, F1 0, IoU 0.
- Relaxed metrics (Mnih 2013, Massachusetts Roads): a predicted road pixel is correct when a true
  road pixel lies within ``rho`` pixels (Euclidean, ``dx² + dy² <= rho²``); a true road pixel
  is found when a predicted road pixel lies within ``rho`` pixels. The break-even point is where
  relaxed precision and relaxed recall meet as the threshold varies.

Counts are kept as integers so that scenes pool by addition (micro averaging).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

DEFAULT_RHO = 3
# 0.00..1.00 in steps of 0.01: i / 100 is the double nearest to the decimal, as a JSON value is.
DEFAULT_THRESHOLDS = np.arange(101) / 100


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num) / float(den) if den else empty


def _ratios(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    den_f = den.astype(np.float64)
    return np.where(den > 0, num / np.where(den > 0, den_f, 1.0), empty)


# ------------------------------------------------------------------------------ input checks
def _as_mask(name: str, a: np.ndarray) -> np.ndarray:
    """A boolean view of a 0/1 mask; refuses other values (nodata goes in ``valid``, not 255)."""
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name}: expected a boolean or 0/1 integer mask, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(
            f"{name}: mask values must be 0 or 1, got {int(a.min())}..{int(a.max())} "
            "(pass nodata as the `valid` mask, not as a label value)"
        )
    return a.astype(bool)


def _valid_mask(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if valid is None:
        return np.ones(shape, dtype=bool)
    v = _as_mask("valid", valid)
    if v.shape != shape:
        raise ValueError(f"valid: shape {v.shape} differs from the masks' shape {shape}")
    return v


def _check_same_shape(**arrays: np.ndarray) -> tuple[int, ...]:
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"arrays must have the same shape, got {shapes}")
    return next(iter(shapes.values()))


# ------------------------------------------------------------------------------ plain metrics
@dataclass(frozen=True)
class Confusion:
    """Pixel counts of a binary road prediction over valid pixels."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 1 when nothing is predicted."""
        return _ratio(self.tp, self.tp + self.fp, 1.0)

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 1 when there is no road to find."""
        return _ratio(self.tp, self.tp + self.fn, 1.0)

    @property
    def f1(self) -> float:
        """2tp / (2tp + fp + fn), the harmonic mean of precision and recall; 1 when both are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def iou(self) -> float:
        """tp / (tp + fp + fn) of the road class; 1 when prediction and truth are both empty."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, 1.0)


def confusion(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Confusion:
    """Confusion counts of boolean (or 0/1) masks over the pixels where ``valid`` is True."""
    shape = _check_same_shape(pred=pred, truth=truth)
    p, t, v = _as_mask("pred", pred), _as_mask("truth", truth), _valid_mask(valid, shape)
    tp = int(np.count_nonzero(p & t & v))
    fp = int(np.count_nonzero(p & ~t & v))
    fn = int(np.count_nonzero(~p & t & v))
    tn = int(np.count_nonzero(v)) - tp - fp - fn
    return Confusion(tp=tp, fp=fp, fn=fn, tn=tn)


# ---------------------------------------------------------------------------- relaxed metrics
@dataclass(frozen=True)
class RelaxedCounts:
    """Counts behind relaxed precision/recall; they pool across scenes by addition."""

    predicted: int  # predicted road pixels
    predicted_near_truth: int  # ... of which a true road pixel lies within rho
    true: int  # true road pixels
    true_near_prediction: int  # ... of which a predicted road pixel lies within rho

    def __add__(self, other: RelaxedCounts) -> RelaxedCounts:
        return RelaxedCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    @property
    def precision(self) -> float:
        """Share of predicted road pixels within rho of true road; 1 when nothing is predicted."""
        return _ratio(self.predicted_near_truth, self.predicted, 1.0)

    @property
    def recall(self) -> float:
        """Share of true road pixels within rho of a prediction; 1 when there is no road."""
        return _ratio(self.true_near_prediction, self.true, 1.0)


def within_distance(mask: np.ndarray, rho: float) -> np.ndarray:
    """Pixels whose Euclidean distance to the nearest True pixel of ``mask`` is at most ``rho``.

    All False when ``mask`` has no True pixel (scipy's transform is undefined without a zero).
    """
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(~mask) <= rho


def disk(rho: int) -> np.ndarray:
    """Boolean footprint of the offsets with ``dx² + dy² <= rho²`` (the pixels within rho)."""
    r = int(rho)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= rho * rho


def relaxed_counts(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None, rho: int = DEFAULT_RHO
) -> RelaxedCounts:
    """Relaxed precision/recall counts with slack ``rho`` pixels (Mnih 2013).

    Only valid pixels count, and only valid pixels can be the near neighbour: a true road
    pixel under nodata neither needs to be found nor excuses a prediction.
    """
    if rho < 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    shape = _check_same_shape(pred=pred, truth=truth)
    v = _valid_mask(valid, shape)
    p = _as_mask("pred", pred) & v
    t = _as_mask("truth", truth) & v
    return RelaxedCounts(
        predicted=int(np.count_nonzero(p)),
        predicted_near_truth=int(np.count_nonzero(p & within_distance(t, rho))),
        true=int(np.count_nonzero(t)),
        true_near_prediction=int(np.count_nonzero(t & within_distance(p, rho))),
    )


# --------------------------------------------------------------------------- threshold sweeps
def _count_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold ``t_k`` (sorted), how many ``values`` are ``>= t_k``.

    One histogram over the threshold bins plus a reversed cumulative sum: no per-threshold
    masks. Thresholds are cast to the values' dtype so the result matches ``values >= t``.
    """
    th = thresholds.astype(values.dtype)
    bins = np.searchsorted(th, values, side="right") - 1  # last k with t_k <= v; -1: below all
    hist = np.bincount(bins[bins >= 0], minlength=len(th))
    return np.cumsum(hist[::-1])[::-1].astype(np.int64)


@dataclass(frozen=True)
class SweepResult:
    """Counts and metrics at every threshold of a sweep (arrays indexed like ``thresholds``)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray
    predicted_near_truth: np.ndarray
    true_near_prediction: np.ndarray
    rho: int

    @property
    def precision(self) -> np.ndarray:
        return _ratios(self.tp, self.tp + self.fp, 1.0)

    @property
    def recall(self) -> np.ndarray:
        return _ratios(self.tp, self.tp + self.fn, 1.0)

    @property
    def f1(self) -> np.ndarray:
        return _ratios(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def iou(self) -> np.ndarray:
        return _ratios(self.tp, self.tp + self.fp + self.fn, 1.0)

    @property
    def relaxed_precision(self) -> np.ndarray:
        return _ratios(self.predicted_near_truth, self.tp + self.fp, 1.0)

    @property
    def relaxed_recall(self) -> np.ndarray:
        return _ratios(self.true_near_prediction, self.tp + self.fn, 1.0)

    def index_of(self, threshold: float) -> int:
        """Index of ``threshold`` in the sweep; ValueError when it is not one of its thresholds."""
        hits = np.flatnonzero(np.isclose(self.thresholds, threshold, rtol=0.0, atol=1e-9))
        if not len(hits):
            raise ValueError(f"threshold {threshold} is not in the sweep; add it to the thresholds")
        return int(hits[0])

    def confusion_at(self, index: int) -> Confusion:
        return Confusion(
            tp=int(self.tp[index]),
            fp=int(self.fp[index]),
            fn=int(self.fn[index]),
            tn=int(self.tn[index]),
        )

    def relaxed_at(self, index: int) -> RelaxedCounts:
        return RelaxedCounts(
            predicted=int(self.tp[index] + self.fp[index]),
            predicted_near_truth=int(self.predicted_near_truth[index]),
            true=int(self.tp[index] + self.fn[index]),
            true_near_prediction=int(self.true_near_prediction[index]),
        )


class ThresholdSweep:
    """Streaming accumulator of plain and relaxed counts at many thresholds.

    ``update`` once per scene, or once per block with a margin of ``rho`` pixels and ``core``
    (exactly the same counts), then ``compute``. Memory is a few integer arrays per
    threshold, independent of how many pixels went in. Accumulators over the same thresholds
    pool by ``+=`` (per-scene accumulators -> an overall one).
    """

    def __init__(self, thresholds: np.ndarray = DEFAULT_THRESHOLDS, rho: int = DEFAULT_RHO) -> None:
        th = np.asarray(thresholds, dtype=np.float64)
        if th.ndim != 1 or th.size == 0 or np.any(np.diff(th) <= 0) or not np.all(np.isfinite(th)):
            raise ValueError(
                "thresholds must be a non-empty, finite, strictly increasing 1-D sequence"
            )
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        self.thresholds = th
        self.rho = int(rho)
        self._predicted = np.zeros(th.size, dtype=np.int64)  # valid pixels with prob >= t
        self._tp = np.zeros(th.size, dtype=np.int64)
        self._near = np.zeros(th.size, dtype=np.int64)  # predicted pixels within rho of truth
        self._reached = np.zeros(th.size, dtype=np.int64)  # true pixels within rho of a prediction
        self.n_valid = 0
        self.n_true = 0

    def update(
        self,
        prob: np.ndarray,
        truth: np.ndarray,
        valid: np.ndarray | None = None,
        core: tuple[slice, slice] | None = None,
    ) -> None:
        """Add one scene, or one block of it: road probabilities, 0/1 truth and the valid mask
        (NaN prob = invalid).

        With ``core`` (row and column slices), only the pixels inside it are counted, while the
        relaxed slack still looks at the whole arrays: blocks of a scene read with a margin of
        at least ``rho`` pixels (cut at the scene's edges) whose cores tile the scene add up to
        exactly the counts of the whole scene in one update.
        """
        shape = _check_same_shape(prob=prob, truth=truth)
        prob = np.asarray(prob)
        if not np.issubdtype(prob.dtype, np.floating):
            raise TypeError(f"prob: expected floating-point probabilities, got dtype {prob.dtype}")
        v = _valid_mask(valid, shape) & np.isfinite(prob)
        t = _as_mask("truth", truth) & v
        near_truth = within_distance(t, self.rho)
        # A true pixel is found at threshold t iff the largest valid prob within rho is >= t.
        best_nearby = ndimage.maximum_filter(
            np.where(v, prob, -np.inf).astype(prob.dtype),
            footprint=disk(self.rho),
            mode="constant",
            cval=-np.inf,
        )
        if core is not None:
            counted = np.zeros(shape, dtype=bool)
            counted[core] = True
            v, t = v & counted, t & counted
        th = self.thresholds
        self._predicted += _count_at_or_above(prob[v], th)
        self._tp += _count_at_or_above(prob[t], th)
        self._near += _count_at_or_above(prob[v & near_truth], th)
        self._reached += _count_at_or_above(best_nearby[t], th)
        self.n_valid += int(np.count_nonzero(v))
        self.n_true += int(np.count_nonzero(t))

    def __iadd__(self, other: ThresholdSweep) -> ThresholdSweep:
        """Pool ``other``'s counts into these. Its ``rho`` may differ: scenes on grids of other
        pixel sizes are scored with the same slack in metres, so another in pixels."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("can only pool sweeps with the same thresholds")
        self._predicted += other._predicted
        self._tp += other._tp
        self._near += other._near
        self._reached += other._reached
        self.n_valid += other.n_valid
        self.n_true += other.n_true
        return self

    def compute(self) -> SweepResult:
        fp = self._predicted - self._tp
        fn = self.n_true - self._tp
        return SweepResult(
            thresholds=self.thresholds.copy(),
            tp=self._tp.copy(),
            fp=fp,
            fn=fn,
            tn=self.n_valid - self._tp - fp - fn,
            predicted_near_truth=self._near.copy(),
            true_near_prediction=self._reached.copy(),
            rho=self.rho,
        )


def pr_curve(
    prob: np.ndarray,
    truth: np.ndarray,
    valid: np.ndarray | None = None,
    thresholds: np.ndarray = DEFAULT_THRESHOLDS,
    rho: int = DEFAULT_RHO,
) -> SweepResult:
    """Plain and relaxed precision/recall, F1 and IoU of one array at every threshold."""
    sweep = ThresholdSweep(thresholds, rho)
    sweep.update(prob, truth, valid)
    return sweep.compute()


def best_f1_threshold(curve: SweepResult) -> float:
    """The threshold of highest F1 (the lowest such threshold on ties)."""
    return float(curve.thresholds[int(np.argmax(curve.f1))])


def relaxed_break_even(curve: SweepResult) -> tuple[float, float]:
    """(value, threshold) where relaxed precision and relaxed recall meet (Mnih 2013).

    Scanning thresholds upwards, the first sign change of precision - recall is interpolated
    linearly between the two neighbouring thresholds (both curves take the same value there).
    Only thresholds at which something is predicted count: above the highest probability
    precision is 1 by convention (nothing predicted, nothing wrong), a point not on the
    model's curve, whose "crossing" would invent a break-even. When the curves never cross,
    the threshold where they are closest is used and the value is their mean there; with
    nothing predicted at any threshold, 0.
    """
    predicted = int(np.count_nonzero(curve.tp + curve.fp > 0))  # a prefix: thresholds ascend
    if predicted == 0:
        return 0.0, float(curve.thresholds[0])
    p, r = curve.relaxed_precision[:predicted], curve.relaxed_recall[:predicted]
    t = curve.thresholds[:predicted]
    d = p - r
    for k in range(len(d)):
        if d[k] == 0:
            return float(p[k]), float(t[k])
        if k + 1 < len(d) and d[k] * d[k + 1] < 0:
            a = d[k] / (d[k] - d[k + 1])
            return float(p[k] + a * (p[k + 1] - p[k])), float(t[k] + a * (t[k + 1] - t[k]))
    k = int(np.argmin(np.abs(d)))
    return float((p[k] + r[k]) / 2), float(t[k])
