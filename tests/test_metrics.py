"""Hand-computed cases for pipeline.metrics, plus cross-checks between its two code paths
(threshold sweep by histograms vs. direct masks; relaxed recall by max filter vs. EDT)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import (
    Confusion,
    RelaxedCounts,
    SweepResult,
    ThresholdSweep,
    best_f1_threshold,
    confusion,
    disk,
    pr_curve,
    relaxed_break_even,
    relaxed_counts,
)

# A vertical road in column 1; the prediction finds 3 of its 4 pixels and adds 2 false alarms.
TRUTH = np.array(
    [
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 0, 0],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 1, 0, 1],
    ],
    dtype=bool,
)


# ------------------------------------------------------------------------------- confusion
def test_confusion_hand_computed():
    c = confusion(PRED, TRUTH)
    assert c == Confusion(tp=3, fp=2, fn=1, tn=10)
    assert c.precision == pytest.approx(3 / 5)
    assert c.recall == pytest.approx(3 / 4)
    assert c.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert c.iou == pytest.approx(3 / 6)
    # F1 is the harmonic mean of precision and recall
    assert c.f1 == pytest.approx(2 * c.precision * c.recall / (c.precision + c.recall))


def test_confusion_ignores_nodata_pixels():
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 2] = False  # a false positive
    valid[2, 1] = False  # the false negative
    valid[3, 0] = False  # a true negative
    c = confusion(PRED, TRUTH, valid)
    assert c == Confusion(tp=3, fp=1, fn=0, tn=9)
    assert c.total == 13
    assert c.iou == pytest.approx(3 / 4)


def test_confusion_both_empty_is_perfect():
    empty = np.zeros((4, 4), dtype=bool)
    c = confusion(empty, empty)
    assert c == Confusion(0, 0, 0, 16)
    assert (c.iou, c.f1, c.precision, c.recall) == (1.0, 1.0, 1.0, 1.0)


def test_confusion_empty_prediction_on_roads():
    c = confusion(np.zeros((4, 4), dtype=bool), TRUTH)
    assert c == Confusion(0, 0, 4, 12)
    assert (c.precision, c.recall, c.f1, c.iou) == (1.0, 0.0, 0.0, 0.0)


def test_confusion_prediction_without_roads():
    c = confusion(PRED, np.zeros((4, 4), dtype=np.uint8))
    assert c == Confusion(0, 5, 0, 11)
    assert (c.precision, c.recall, c.f1, c.iou) == (0.0, 1.0, 0.0, 0.0)


def test_confusion_all_nodata_counts_nothing():
    c = confusion(PRED, TRUTH, np.zeros((4, 4), dtype=bool))
    assert c == Confusion(0, 0, 0, 0)
    assert c.total == 0 and c.iou == 1.0


def test_confusions_pool_by_addition():
    a = confusion(PRED[:2], TRUTH[:2])
    b = confusion(PRED[2:], TRUTH[2:])
    assert a + b == confusion(PRED, TRUTH)


def test_label_value_255_is_refused():
    truth = TRUTH.copy()
    truth[0, 0] = 255
    with pytest.raises(ValueError, match="0 or 1"):
        confusion(PRED, truth)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        confusion(PRED, TRUTH[:3])
    with pytest.raises(ValueError, match="valid"):
        confusion(PRED, TRUTH, np.ones((3, 4), dtype=bool))


# ---------------------------------------------------------------------------- relaxed metrics
def _line(col: int, shape=(8, 8)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[:, col] = True
    return m


def test_relaxed_forgives_a_one_pixel_shift():
    truth, pred = _line(3), _line(4)
    plain = confusion(pred, truth)
    assert plain.iou == 0.0 and plain.precision == 0.0 and plain.recall == 0.0
    for rho in (1, 2, 3):
        r = relaxed_counts(pred, truth, rho=rho)
        assert r == RelaxedCounts(
            predicted=8, predicted_near_truth=8, true=8, true_near_prediction=8
        )
        assert (r.precision, r.recall) == (1.0, 1.0)
    strict = relaxed_counts(pred, truth, rho=0)
    assert (strict.precision, strict.recall) == (0.0, 0.0)


def test_relaxed_uses_euclidean_distance():
    truth = np.zeros((7, 9), dtype=bool)
    truth[2, 2] = True
    pred = np.zeros_like(truth)
    pred[2, 3] = True  # distance 1
    pred[3, 3] = True  # distance sqrt(2)
    pred[2, 5] = True  # distance 3
    pred[2, 6] = True  # distance 4
    r1 = relaxed_counts(pred, truth, rho=1)
    assert (r1.predicted, r1.predicted_near_truth) == (4, 1)
    assert r1.precision == pytest.approx(0.25) and r1.recall == 1.0
    assert relaxed_counts(pred, truth, rho=2).predicted_near_truth == 2
    assert relaxed_counts(pred, truth, rho=3).predicted_near_truth == 3
    assert relaxed_counts(pred, truth, rho=4).predicted_near_truth == 4


def test_relaxed_respects_nodata():
    truth = np.zeros((5, 5), dtype=bool)
    truth[2, 2] = True
    pred = np.zeros_like(truth)
    pred[2, 3] = True
    valid = np.ones_like(truth)
    valid[2, 2] = False  # the only road pixel is under nodata: it excuses nothing
    r = relaxed_counts(pred, truth, valid, rho=3)
    assert r == RelaxedCounts(predicted=1, predicted_near_truth=0, true=0, true_near_prediction=0)
    assert (r.precision, r.recall) == (0.0, 1.0)


def test_relaxed_empty_cases():
    empty = np.zeros((6, 6), dtype=bool)
    line = _line(2, (6, 6))
    none_predicted = relaxed_counts(empty, line)
    assert (none_predicted.precision, none_predicted.recall) == (1.0, 0.0)
    no_roads = relaxed_counts(line, empty)
    assert (no_roads.precision, no_roads.recall) == (0.0, 1.0)
    both = relaxed_counts(empty, empty)
    assert (both.precision, both.recall) == (1.0, 1.0)
    assert relaxed_counts(line, line, np.zeros_like(line)) == RelaxedCounts(0, 0, 0, 0)


def test_disk_footprint():
    d = disk(2)
    assert d.shape == (5, 5)
    assert d[2, 0] and d[0, 2] and d[1, 1]  # distance 2, 2, sqrt(2)
    assert not d[0, 0] and not d[0, 1]  # sqrt(8), sqrt(5)
    assert disk(0).tolist() == [[True]]


# --------------------------------------------------------------------------- threshold sweeps
def test_pr_curve_hand_computed():
    prob = np.array([[0.1, 0.4], [0.6, 0.9]], dtype=np.float32)
    truth = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    c = pr_curve(prob, truth, thresholds=np.array([0.0, 0.25, 0.5, 0.75, 1.0]), rho=0)
    assert c.tp.tolist() == [2, 2, 1, 0, 0]
    assert c.fp.tolist() == [2, 1, 1, 1, 0]
    assert c.fn.tolist() == [0, 0, 1, 2, 2]
    assert c.tn.tolist() == [0, 1, 1, 1, 2]
    np.testing.assert_allclose(c.precision, [0.5, 2 / 3, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(c.recall, [1.0, 1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(c.iou, [0.5, 2 / 3, 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(c.f1, [2 / 3, 0.8, 0.5, 0.0, 0.0])
    assert best_f1_threshold(c) == 0.25
    # rho = 0: relaxed metrics are the plain ones
    np.testing.assert_allclose(c.relaxed_precision, c.precision)
    np.testing.assert_allclose(c.relaxed_recall, c.recall)


def test_pixel_equal_to_threshold_counts_as_road():
    prob = np.array([[0.5, 0.3]], dtype=np.float32)
    truth = np.array([[1, 1]], dtype=np.uint8)
    c = pr_curve(prob, truth, thresholds=np.array([0.3, 0.5]))
    assert c.tp.tolist() == [2, 1]  # float32(0.3) >= 0.3 as numpy compares it


def test_nan_probability_is_nodata():
    prob = np.array([[np.nan, 0.9], [0.1, 0.1]], dtype=np.float32)
    truth = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    c = pr_curve(prob, truth, thresholds=np.array([0.5]))
    assert (c.tp[0], c.fp[0], c.fn[0], c.tn[0]) == (1, 0, 0, 2)


def _random_scene(rng: np.random.Generator, shape=(32, 40)):
    # Probabilities on a 0.01 grid hit the thresholds exactly; roads are a few sparse lines.
    prob = np.round(rng.random(shape) ** 3, 2).astype(np.float32)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[rng.integers(0, shape[0], 3), :] = 1
    truth[:, rng.integers(0, shape[1], 2)] = 1
    valid = np.ones(shape, dtype=bool)
    valid[:5, :7] = False
    valid[rng.random(shape) < 0.05] = False
    return prob, truth, valid


def test_sweep_matches_direct_masks_at_every_threshold():
    rng = np.random.default_rng(0)
    prob, truth, valid = _random_scene(rng)
    c = pr_curve(prob, truth, valid, rho=2)
    for k, t in enumerate(c.thresholds.tolist()):
        pred = prob >= t
        assert c.confusion_at(k) == confusion(pred, truth, valid), t
        assert c.relaxed_at(k) == relaxed_counts(pred, truth, valid, rho=2), t


def test_accumulator_pools_scenes_and_sweeps():
    rng = np.random.default_rng(1)
    a, b = _random_scene(rng), _random_scene(rng, (24, 24))
    both = ThresholdSweep(rho=3)
    both.update(*a)
    both.update(*b)
    sa, sb = ThresholdSweep(rho=3), ThresholdSweep(rho=3)
    sa.update(*a)
    sb.update(*b)
    sa += sb
    pooled, separate = both.compute(), sa.compute()
    for name in ("tp", "fp", "fn", "tn", "predicted_near_truth", "true_near_prediction"):
        np.testing.assert_array_equal(getattr(pooled, name), getattr(separate, name))
        np.testing.assert_array_equal(
            getattr(pooled, name),
            getattr(pr_curve(*a, rho=3), name) + getattr(pr_curve(*b, rho=3), name),
        )
    assert both.n_valid == int(a[2].sum() + b[2].sum())


def test_pooling_needs_the_same_thresholds_not_the_same_rho():
    """Scenes on grids of other pixel sizes are scored with one slack in metres, so another
    rho in pixels: their counts pool all the same."""
    s = ThresholdSweep(np.array([0.0, 0.5]))
    with pytest.raises(ValueError, match="same thresholds"):
        s += ThresholdSweep(np.array([0.0, 0.6]))
    other = ThresholdSweep(np.array([0.0, 0.5]), rho=10)
    other.update(np.full((4, 4), 0.7, np.float32), np.eye(4, dtype=np.uint8))
    s += other
    assert s.n_valid == 16 and s.n_true == 4


def test_bad_sweep_inputs_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        ThresholdSweep(np.array([0.5, 0.5]))
    with pytest.raises(TypeError, match="floating"):
        ThresholdSweep().update(np.ones((2, 2), dtype=np.uint8), np.ones((2, 2), dtype=np.uint8))


def test_index_of_threshold():
    c = pr_curve(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    assert c.index_of(0.37) == 37
    with pytest.raises(ValueError, match="not in the sweep"):
        c.index_of(0.375)


def test_all_nodata_sweep_counts_nothing():
    c = pr_curve(
        np.full((3, 3), 0.7, np.float32), np.ones((3, 3), np.uint8), np.zeros((3, 3), bool)
    )
    assert not c.tp.any() and not c.fp.any() and not c.fn.any() and not c.tn.any()


# ------------------------------------------------------------------------- break-even point
def _curve(rp_num, predicted, rr_num, true, thresholds) -> SweepResult:
    """A sweep with the given relaxed counts (plain counts follow from them, tn = 0)."""
    predicted, true = np.asarray(predicted), np.asarray(true)
    tp = np.minimum(predicted, true)
    return SweepResult(
        thresholds=np.asarray(thresholds, dtype=float),
        tp=tp,
        fp=predicted - tp,
        fn=true - tp,
        tn=np.zeros_like(tp),
        predicted_near_truth=np.asarray(rp_num),
        true_near_prediction=np.asarray(rr_num),
        rho=3,
    )


def test_break_even_interpolates_the_crossing():
    # relaxed precision 0.5, 0.9, 1 (nothing predicted); relaxed recall 1.0, 0.7, 0.0
    c = _curve([5, 9, 0], [10, 10, 0], [10, 7, 0], [10, 10, 10], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(c.relaxed_precision, [0.5, 0.9, 1.0])
    np.testing.assert_allclose(c.relaxed_recall, [1.0, 0.7, 0.0])
    value, threshold = relaxed_break_even(c)
    a = 0.5 / 0.7  # where 0.5 + 0.4a == 1.0 - 0.3a
    assert value == pytest.approx(0.5 + 0.4 * a)
    assert value == pytest.approx(1.0 - 0.3 * a)
    assert threshold == pytest.approx(0.5 * a)


def test_break_even_at_an_exact_meeting_point():
    c = _curve([2, 8, 9], [10, 10, 10], [10, 8, 1], [10, 10, 10], [0.1, 0.2, 0.3])
    assert relaxed_break_even(c) == (pytest.approx(0.8), pytest.approx(0.2))


def test_break_even_without_crossing_uses_the_closest_point():
    c = _curve([2, 3], [10, 10], [9, 8], [10, 10], [0.4, 0.6])
    value, threshold = relaxed_break_even(c)
    assert value == pytest.approx((0.3 + 0.8) / 2) and threshold == 0.6


def test_break_even_is_never_taken_from_beyond_the_highest_prediction():
    """Above the highest probability nothing is predicted: precision 1 by convention, recall
    0. A model whose precision stays below its recall wherever it predicts anything (many
    false alarms: another source) has no break-even on its curve; the "crossing" into that
    convention point would invent one (0.46 at 0.62 here). Its closest point is used."""
    # relaxed precision 0.2, 0.3, then nothing predicted; relaxed recall 0.9, 0.6, 0
    c = _curve([2, 3, 0], [10, 10, 0], [9, 6, 0], [10, 10, 10], [0.0, 0.5, 1.0])
    assert relaxed_break_even(c) == (pytest.approx((0.3 + 0.6) / 2), 0.5)
    nothing = _curve([0, 0], [0, 0], [0, 0], [10, 10], [0.0, 0.5])
    assert relaxed_break_even(nothing) == (0.0, 0.0)


def test_break_even_of_a_shifted_line_is_perfect_with_slack():
    truth = _line(3, (16, 16))
    prob = np.where(_line(4, (16, 16)), 0.8, 0.05).astype(np.float32)
    with_slack = pr_curve(prob, truth, rho=1)
    assert relaxed_break_even(with_slack)[0] == pytest.approx(1.0)
    no_slack = pr_curve(prob, truth, rho=0)
    assert relaxed_break_even(no_slack)[0] < 0.5
