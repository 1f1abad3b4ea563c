"""Tests for medsamkit._postprocess on hand-drawn masks."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit._postprocess import FillHoles, KeepLargestComponents, RemoveSmallComponents


def three_components() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 12x12 mask with components of area 9 (3x3), 4 (2x2) and 1, returned with each part."""
    big = np.zeros((12, 12), bool)
    big[1:4, 1:4] = True
    mid = np.zeros((12, 12), bool)
    mid[8:10, 8:10] = True
    dot = np.zeros((12, 12), bool)
    dot[1, 10] = True
    return big | mid | dot, big, mid, dot


class TestKeepLargest:
    def test_keep_one(self):
        mask, big, _, _ = three_components()
        out = KeepLargestComponents()(mask)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, big)

    def test_keep_two(self):
        mask, big, mid, _ = three_components()
        np.testing.assert_array_equal(KeepLargestComponents(2)(mask), big | mid)

    def test_more_requested_than_present(self):
        mask, *_ = three_components()
        np.testing.assert_array_equal(KeepLargestComponents(5)(mask), mask)

    def test_diagonal_pixels_count_as_one_component(self):
        mask = np.zeros((8, 8), bool)
        mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # one diagonal component of 3 px
        mask[5:7, 6] = True  # vertical pair, 2 px
        expected = np.zeros((8, 8), bool)
        expected[0, 0] = expected[1, 1] = expected[2, 2] = True
        np.testing.assert_array_equal(KeepLargestComponents(1)(mask), expected)

    def test_accepts_uint8_masks(self):
        mask, big, _, _ = three_components()
        np.testing.assert_array_equal(KeepLargestComponents(1)(mask.astype(np.uint8) * 255), big)

    def test_empty(self):
        assert not KeepLargestComponents(1)(np.zeros((4, 4), bool)).any()

    @pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
    def test_bad_n(self, n):
        with pytest.raises(ValueError, match=r"^n: expected a positive int"):
            KeepLargestComponents(n)

    def test_params_and_name(self):
        step = KeepLargestComponents(2)
        assert step.params() == {"n": 2}
        assert step.name == "keep-largest"
        assert repr(step) == "KeepLargestComponents(n=2)"


class TestRemoveSmall:
    def test_drops_below_min_area(self):
        mask, big, mid, _ = three_components()
        np.testing.assert_array_equal(RemoveSmallComponents(2)(mask), big | mid)
        # a component of exactly min_area pixels is kept
        np.testing.assert_array_equal(RemoveSmallComponents(4)(mask), big | mid)
        np.testing.assert_array_equal(RemoveSmallComponents(5)(mask), big)

    def test_can_remove_everything(self):
        mask, *_ = three_components()
        assert not RemoveSmallComponents(10)(mask).any()

    def test_zero_keeps_all(self):
        mask, *_ = three_components()
        np.testing.assert_array_equal(RemoveSmallComponents(0)(mask), mask)

    def test_empty(self):
        out = RemoveSmallComponents(3)(np.zeros((4, 5), bool))
        assert out.shape == (4, 5) and not out.any()

    @pytest.mark.parametrize("min_area", [-1, 2.0, False])
    def test_bad_min_area(self, min_area):
        with pytest.raises(ValueError, match=r"^min_area: expected a non-negative int"):
            RemoveSmallComponents(min_area)

    def test_params(self):
        assert RemoveSmallComponents(7).params() == {"min_area": 7}
        assert RemoveSmallComponents.name == "remove-small"


class TestFillHoles:
    def test_fills_enclosed_hole(self):
        mask = np.zeros((9, 9), bool)
        mask[1:8, 1:8] = True
        mask[3:6, 3:6] = False  # 3x3 hole
        expected = np.zeros((9, 9), bool)
        expected[1:8, 1:8] = True
        out = FillHoles()(mask)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, expected)

    def test_background_open_to_border_is_not_a_hole(self):
        # a "C": the gap at the right connects the inside to the outside
        mask = np.zeros((9, 9), bool)
        mask[1:8, 1:8] = True
        mask[3:6, 3:9] = False
        np.testing.assert_array_equal(FillHoles()(mask), mask)

    def test_concavity_at_image_border_is_not_a_hole(self):
        mask = np.ones((6, 6), bool)
        mask[0:3, 2:4] = False  # notch touching the top edge
        np.testing.assert_array_equal(FillHoles()(mask), mask)

    def test_two_objects_each_with_hole(self):
        mask = np.zeros((7, 12), bool)
        mask[1:6, 1:6] = True
        mask[1:6, 7:11] = True
        holes = np.zeros_like(mask)
        holes[3, 3] = True
        holes[2:5, 8:10] = True
        np.testing.assert_array_equal(FillHoles()(mask & ~holes), mask)

    def test_params(self):
        assert FillHoles().params() == {}
        assert FillHoles.name == "fill-holes"
        assert repr(FillHoles()) == "FillHoles()"
