"""stitching.py: weights, normalisation, streaming block assembly, encoding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.stitching import (
    NODATA_UINT8,
    BlockAssembler,
    axis_weight_sum,
    axis_weights,
    decode,
    encode_float32,
    encode_uint8,
    taper,
    window_contribution_weight,
)
from pipeline.windows import Rect, WindowGrid, axis_spans, window_groups

CASES = [
    (1, 64, 16),
    (40, 64, 16),
    (64, 64, 0),
    (100, 64, 16),
    (300, 64, 16),
    (300, 64, 0),
    (300, 64, 40),
    (513, 128, 32),
    (1000, 96, 8),
]


def test_taper_shape() -> None:
    w = taper(64, 16, 16)
    assert w.shape == (64,)
    assert (w > 0).all() and (w <= 1).all()
    assert (w[16:48] == 1).all()
    assert np.all(np.diff(w[:16]) > 0) and np.all(np.diff(w[48:]) < 0)
    np.testing.assert_allclose(w, w[::-1])
    assert (taper(64, 0, 0) == 1).all()
    # the border side of a window is not tapered: full weight up to the raster edge
    assert taper(64, 0, 16)[0] == 1.0 and taper(64, 16, 0)[-1] == 1.0
    with pytest.raises(ValueError):
        taper(8, 9, 0)


def test_ramps_cross_fade_to_one() -> None:
    """A falling and a rising ramp over the same pixels sum to exactly 1 (cos^2 + sin^2)."""
    left, right = taper(64, 0, 24), taper(64, 24, 0)
    np.testing.assert_allclose(left[-24:] + right[:24], 1.0, atol=1e-12)


@pytest.mark.parametrize(("size", "window", "overlap"), CASES)
def test_axis_weights_positive_everywhere_and_sum_matches(
    size: int, window: int, overlap: int
) -> None:
    spans = axis_spans(size, window, overlap)
    ws = axis_weights(size, window, overlap)
    total = np.zeros(max(size, sum(spans[-1])))
    for (o, n), w in zip(spans, ws, strict=True):
        assert w.shape == (n,) and (w > 0).all()
        total[o : o + n] += w
    s = axis_weight_sum(size, window, overlap)
    assert s.shape == (size,)
    assert (s > 0).all()
    np.testing.assert_allclose(s, total[:size])
    pairs = list(itertools.pairwise(spans))
    if pairs and all(a + n - b <= min(n, m) // 2 for (a, n), (b, m) in pairs):
        # ramps over exactly the shared pixels cross-fade: a partition of unity
        np.testing.assert_allclose(s, 1.0, atol=1e-12)
    # border windows keep full weight at the raster edges
    assert ws[0][0] == 1.0 and ws[-1][min(spans[-1][1], size - spans[-1][0]) - 1] == 1.0


def test_cropped_last_window_blends_smoothly() -> None:
    """8192 px at 512/64: the last window is 128 px; the weight sum stays smooth (no step)."""
    s = axis_weight_sum(8192, 512, 64)
    np.testing.assert_allclose(s, 1.0, atol=1e-12)  # shared 64 = ramp: still a cross-fade
    s = axis_weight_sum(900, 512, 64)  # the last pair shares 92 px: the ramp spans all of them
    np.testing.assert_allclose(s, 1.0, atol=1e-12)
    w_last = axis_weights(900, 512, 64)[-1]
    assert w_last.shape == (480,) and (np.diff(w_last[:92]) > 0).all() and (w_last[92:] == 1).all()


@pytest.mark.parametrize(("size", "window", "overlap"), CASES)
def test_contributions_reproduce_any_constant(size: int, window: int, overlap: int) -> None:
    """Blending windows that all predict p gives exactly p everywhere (weights normalised)."""
    grid = WindowGrid(size, size + 37, window, overlap)
    out = np.zeros((grid.height, grid.width))
    for i, j in grid.indices():
        rect, w = window_contribution_weight(grid, i, j)
        assert rect == grid.rect(i, j).intersect(grid.bounds)
        assert w.shape == (rect.height, rect.width) and (w > 0).all()
        out[rect.row_off : rect.row_end, rect.col_off : rect.col_end] += 0.7 * w
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)


def test_windows_taller_than_wide_blend_to_any_constant() -> None:
    """Windows of their own width and overlap across the columns (a raster whose pixels are
    not square on the ground) still sum to exactly p, with the column ramps of the column
    overlap."""
    grid = WindowGrid(300, 410, 64, 16, col_window=128, col_overlap=32)
    assert {grid.rect(i, j).width for i, j in grid.indices()} >= {128}
    assert {grid.rect(i, j).height for i, j in grid.indices()} <= {64, 32}
    out = np.zeros((grid.height, grid.width))
    for i, j in grid.indices():
        rect, w = window_contribution_weight(grid, i, j)
        out[rect.row_off : rect.row_end, rect.col_off : rect.col_end] += 0.7 * w
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)
    # a window's weight ramps over the column overlap (32 px), not the row overlap (16 px)
    _, w = window_contribution_weight(grid, 1, 1)
    assert (w[32, :32] < w[32, 40]).all() and w[32, 40] == pytest.approx(w[32, 64])


def _blend_whole(grid: WindowGrid, probs: dict) -> np.ndarray:
    out = np.zeros((grid.height, grid.width), np.float64)
    for (i, j), p in probs.items():
        rect, w = window_contribution_weight(grid, i, j)
        out[rect.row_off : rect.row_end, rect.col_off : rect.col_end] += (
            w * p[: rect.height, : rect.width]
        )
    return out


def _assemble(grid: WindowGrid, probs: dict, block: int, per_task: int, order_seed: int):
    groups = window_groups(grid, per_task)
    asm = BlockAssembler(grid.height, grid.width, block, [g.region for g in groups])
    out = np.full((grid.height, grid.width), np.nan, np.float32)
    seen = np.zeros((grid.height, grid.width), int)
    rng = np.random.default_rng(order_seed)
    for k in rng.permutation(len(groups)):
        g = groups[k]
        contrib = np.zeros((g.region.height, g.region.width), np.float32)
        for w in g.windows:
            rect, weight = window_contribution_weight(grid, *w)
            rs, cs = rect.slices_in(g.region)
            contrib[rs, cs] += weight * probs[w][: rect.height, : rect.width]
        valid = np.ones_like(contrib, bool)
        for rect, prob, ok in asm.add(g.region, contrib, valid):
            assert ok.all()
            out[rect.row_off : rect.row_end, rect.col_off : rect.col_end] = prob
            seen[rect.row_off : rect.row_end, rect.col_off : rect.col_end] += 1
    assert asm.done and asm.open_blocks == 0
    assert (seen == 1).all()  # every block handed back exactly once
    return out, asm.peak_open


def test_block_assembly_independent_of_block_size_task_size_and_order() -> None:
    grid = WindowGrid(300, 410, 64, 16)
    rng = np.random.default_rng(0)
    probs = {w: rng.random((64, 64)).astype(np.float32) for w in grid.indices()}
    whole = _blend_whole(grid, probs)
    for block, per_task, seed in itertools.product((64, 128, 256), (1, 3), (0, 1)):
        out, _ = _assemble(grid, probs, block, per_task, seed)
        np.testing.assert_allclose(out, whole, atol=2e-6)


def test_assembler_streams_blocks_in_order() -> None:
    """Submitted in order, only about a row of blocks is open at a time."""
    grid = WindowGrid(1024, 1024, 64, 16)
    groups = window_groups(grid, 4)
    asm = BlockAssembler(grid.height, grid.width, 128, [g.region for g in groups])
    n_done = 0
    for g in groups:
        c = np.ones((g.region.height, g.region.width), np.float32)
        n_done += len(asm.add(g.region, c, c > 0))
    assert n_done == len(asm.blocks) == 64
    assert asm.peak_open <= 2 * 8  # two block rows of 8, never the whole scene (64)


def test_assembler_skipped_tasks_and_errors() -> None:
    grid = WindowGrid(100, 100, 64, 16)
    groups = window_groups(grid, 1)
    asm = BlockAssembler(100, 100, 64, [g.region for g in groups])
    finished = []
    for g in groups:
        finished += asm.add(g.region, None, None)  # all windows skipped (nodata)
    assert len(finished) == 4 and asm.done
    assert all(not ok.any() for _, _, ok in finished)
    with pytest.raises(RuntimeError):
        asm.add(groups[0].region, None, None)
    asm2 = BlockAssembler(100, 100, 64, [g.region for g in groups])
    with pytest.raises(ValueError):
        asm2.add(groups[0].region, np.zeros((3, 3), np.float32), np.zeros((3, 3), bool))


def test_assembler_without_tasks_returns_nodata_blocks() -> None:
    asm = BlockAssembler(10, 20, 16, [])
    out = asm.initially_complete()
    assert [r for r, _, _ in out] == [Rect(0, 0, 10, 16), Rect(0, 16, 10, 4)]
    assert asm.done


def test_encoding_roundtrip_and_nodata() -> None:
    p = np.array([[0.0, 0.5, 1.0], [1.2, -0.1, 0.25]], np.float32)
    valid = np.array([[True, True, True], [True, True, False]])
    q = encode_uint8(p, valid)
    assert q.dtype == np.uint8
    assert q.tolist() == [[0, 127, 254], [254, 0, NODATA_UINT8]]
    back = decode(q)
    assert np.isnan(back[1, 2]) and abs(back[0, 1] - 0.5) < 1 / 254
    f = encode_float32(p, valid)
    assert f.dtype == np.float32 and np.isnan(f[1, 2]) and f[1, 0] == 1.0
    assert np.isnan(decode(f)[1, 2])
