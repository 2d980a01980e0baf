"""The spatial split: chips of different splits never overlap, and keep the configured gap."""

import itertools

import pytest

from pipeline.splits import (
    ChipWindow,
    assign_blocks,
    block_grid,
    chips_in_blocks,
    overlaps,
    whole_scene_chips,
)


def _plan(height=1000, width=900, block_px=256, gap_px=0, chip=64, stride=32, seed=0):
    keys = [("s", r, c) for r, c in block_grid(height, width, block_px)]
    assigned = assign_blocks(keys, 0.3, 0.2, seed)
    split_of = {(r, c): s for (_, r, c), s in assigned.items()}
    return chips_in_blocks(
        height,
        width,
        block_px=block_px,
        gap_px=gap_px,
        chip_size=chip,
        stride=stride,
        split_of=split_of,
    )


@pytest.mark.parametrize("gap_px", [0, 16, 33])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_chip_of_one_split_overlaps_another(gap_px, seed):
    chips = _plan(gap_px=gap_px, seed=seed)
    assert {c.split for c in chips} == {"train", "val", "test"}
    for a, b in itertools.combinations(chips, 2):
        if a.split != b.split:
            assert not overlaps(a, b, margin=gap_px // 2), (a, b)


def test_gap_separates_edge_neighbours_by_the_full_gap():
    split_of = {(0, 0): "train", (0, 1): "val"}
    chips = chips_in_blocks(
        256, 512, block_px=256, gap_px=32, chip_size=64, stride=64, split_of=split_of
    )
    right_edge_train = max(c.col_off + c.size for c in chips if c.split == "train")
    left_edge_val = min(c.col_off for c in chips if c.split == "val")
    assert left_edge_val - right_edge_train >= 32


def test_chips_stay_inside_the_raster_and_cover_blocks_to_their_edge():
    chips = _plan(height=300, width=290, block_px=128, chip=64, stride=64)
    for c in chips:
        assert 0 <= c.row_off and c.row_off + c.size <= 300
        assert 0 <= c.col_off and c.col_off + c.size <= 290
    split_of = {(0, 0): "train"}
    one = chips_in_blocks(
        100, 100, block_px=100, gap_px=0, chip_size=64, stride=64, split_of=split_of
    )
    # a 100 px block gets a regular chip and one snapped to its far edge on each axis
    assert sorted({c.col_off for c in one}) == [0, 36]


def test_assignment_is_deterministic_and_respects_fractions():
    keys = [("a", r, c) for r in range(5) for c in range(4)]
    first = assign_blocks(keys, 0.25, 0.1, seed=3)
    assert first == assign_blocks(list(reversed(keys)), 0.25, 0.1, seed=3)
    counts = {s: sum(v == s for v in first.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 13, "val": 5, "test": 2}
    assert first != assign_blocks(keys, 0.25, 0.1, seed=4)


def test_small_sets_still_get_a_validation_block():
    keys = [("a", 0, c) for c in range(3)]
    splits = sorted(assign_blocks(keys, 0.1, 0.0, seed=0).values())
    assert splits == ["train", "train", "val"]


def test_whole_scene_chips_cover_the_scene():
    chips = whole_scene_chips(300, 200, 64, 64, "test")
    covered = set()
    for c in chips:
        assert c.split == "test"
        covered |= {
            (r, q)
            for r in range(c.row_off, c.row_off + 64)
            for q in range(c.col_off, c.col_off + 64)
        }
    assert len(covered) == 300 * 200


def test_overlaps():
    a = ChipWindow(0, 0, 10, "train")
    assert overlaps(a, ChipWindow(9, 9, 10, "val"))
    assert not overlaps(a, ChipWindow(10, 0, 10, "val"))
    assert overlaps(a, ChipWindow(12, 0, 10, "val"), margin=3)
