"""Tests for medsamkit._geometry: boxes from masks, per-component boxes, box growth, components."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit._geometry import (
    component_boxes_xyxy,
    connected_components,
    grow_boxes_by_fraction,
    grow_boxes_xyxy,
    mask_to_xyxy,
    target_at_logits,
)


def two_rectangles() -> np.ndarray:
    """30x40 mask: a 4x8 rectangle (rows 2-5, cols 3-10) and a 15x16 one (rows 10-24, cols 20-35)."""
    mask = np.zeros((30, 40), dtype=bool)
    mask[2:6, 3:11] = True  # area 32
    mask[10:25, 20:36] = True  # area 240
    return mask


class TestMaskToXyxy:
    def test_single_pixel(self):
        mask = np.zeros((5, 7), np.uint8)
        mask[3, 6] = 1
        box = mask_to_xyxy(mask)
        assert box.dtype == np.float32
        np.testing.assert_array_equal(box, [6, 3, 6, 3])

    def test_tight_box_around_all_components(self):
        np.testing.assert_array_equal(mask_to_xyxy(two_rectangles()), [3, 2, 35, 24])

    def test_full_mask(self):
        np.testing.assert_array_equal(mask_to_xyxy(np.ones((4, 6))), [0, 0, 5, 3])

    def test_empty_is_none(self):
        assert mask_to_xyxy(np.zeros((4, 4))) is None

    def test_bad_mask(self):
        with pytest.raises(ValueError, match=r"^mask: expected shape \(H, W\)"):
            mask_to_xyxy(np.zeros((4, 4, 3)))


class TestConnectedComponents:
    def test_diagonal_neighbours_are_one_component(self):
        mask = np.zeros((5, 5), bool)
        mask[1, 1] = mask[2, 2] = mask[3, 3] = True
        mask[0, 4] = True  # isolated
        labels, n = connected_components(mask)
        assert n == 2
        assert labels.dtype == np.int32
        assert labels[1, 1] == labels[2, 2] == labels[3, 3] != 0
        assert labels[0, 4] not in (0, labels[1, 1])
        assert (labels[~mask] == 0).all()

    def test_empty(self):
        labels, n = connected_components(np.zeros((3, 3), bool))
        assert n == 0 and not labels.any()


class TestComponentBoxes:
    def test_one_box_per_component_largest_first(self):
        boxes = component_boxes_xyxy(two_rectangles())
        assert boxes.dtype == np.float32
        np.testing.assert_array_equal(boxes, [[20, 10, 35, 24], [3, 2, 10, 5]])

    def test_min_area_drops_small_components(self):
        mask = two_rectangles()
        np.testing.assert_array_equal(component_boxes_xyxy(mask, min_area=33), [[20, 10, 35, 24]])
        # area exactly min_area is kept
        np.testing.assert_array_equal(component_boxes_xyxy(mask, min_area=32), [[20, 10, 35, 24], [3, 2, 10, 5]])

    def test_largest_always_kept(self):
        np.testing.assert_array_equal(component_boxes_xyxy(two_rectangles(), min_area=10_000), [[20, 10, 35, 24]])

    def test_l_shape_box(self):
        mask = np.zeros((10, 10), bool)
        mask[2:8, 2] = True
        mask[7, 2:9] = True
        np.testing.assert_array_equal(component_boxes_xyxy(mask), [[2, 2, 8, 7]])

    def test_empty_mask(self):
        boxes = component_boxes_xyxy(np.zeros((6, 6)))
        assert boxes.shape == (0, 4) and boxes.dtype == np.float32


class TestGrowBoxes:
    def test_grow_inside_image(self):
        out = grow_boxes_xyxy(np.array([[5, 10, 14, 19]]), 3, (40, 40))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [[2, 7, 17, 22]])

    def test_grow_clipped_at_border(self):
        # H = 30 (y in 0..29), W = 50 (x in 0..49)
        out = grow_boxes_xyxy(np.array([[1, 2, 47, 27], [0, 0, 0, 0]]), 5, (30, 50))
        np.testing.assert_array_equal(out, [[0, 0, 49, 29], [0, 0, 5, 5]])

    def test_fractional_margin(self):
        np.testing.assert_allclose(grow_boxes_xyxy(np.array([[10, 10, 20, 20]]), 2.5, (40, 40)), [[7.5, 7.5, 22.5, 22.5]])

    def test_shrink(self):
        np.testing.assert_array_equal(grow_boxes_xyxy(np.array([[5, 10, 14, 19]]), -2, (40, 40)), [[7, 12, 12, 17]])

    def test_shrink_collapses_to_centre_without_inverting(self):
        out = grow_boxes_xyxy(np.array([[5, 10, 14, 19]]), -10, (40, 40))
        np.testing.assert_allclose(out, [[9.5, 14.5, 9.5, 14.5]])

    def test_does_not_modify_input(self):
        boxes = np.array([[5.0, 5.0, 6.0, 6.0]], np.float32)
        grow_boxes_xyxy(boxes, 2, (20, 20))
        np.testing.assert_array_equal(boxes, [[5, 5, 6, 6]])

    def test_empty(self):
        assert grow_boxes_xyxy(np.zeros((0, 4)), 5, (10, 10)).shape == (0, 4)

    def test_by_fraction_of_the_side(self):
        # a 20 x 10 box (x 10..29, y 5..14): 10% of its side is 2 px in x, 1 px in y
        boxes = np.array([[10, 5, 29, 14], [0, 0, 9, 9]], np.int64)
        out = grow_boxes_by_fraction(boxes, 0.1, (40, 50))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, [[8, 4, 31, 15], [0, 0, 10, 10]])  # the second clipped at the top left
        np.testing.assert_array_equal(grow_boxes_by_fraction(boxes[:1], -0.1, (40, 50)), [[12, 6, 27, 13]])
        np.testing.assert_array_equal(boxes, [[10, 5, 29, 14], [0, 0, 9, 9]])  # input untouched


def test_component_boxes_match_scipy_labelling_on_random_masks():
    """Independent reference: scipy.ndimage.label + find_objects, sorted by area, then top, then left."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for trial in range(200):
        mask = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 50)))) < rng.uniform(0.05, 0.6)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        slices = ndimage.find_objects(labels)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        order = sorted(range(n), key=lambda i: (-areas[i], slices[i][0].start, slices[i][1].start))
        for min_area in (0, 3, 10):
            keep = [i for i in order if areas[i] >= min_area] or order[:1]
            expected = np.array(
                [(slices[i][1].start, slices[i][0].start, slices[i][1].stop - 1, slices[i][0].stop - 1) for i in keep],
                dtype=np.float32,
            ).reshape(-1, 4)
            np.testing.assert_array_equal(component_boxes_xyxy(mask, min_area=min_area), expected, err_msg=f"{trial}")


def test_target_in_the_logits_frame_is_resized_and_padded():
    mask = np.zeros((100, 200), dtype=bool)
    mask[:, :100] = True  # left half
    # LiteMedSAM frame: 200 -> 256 wide, 100 -> 128 high; logits at 256: same frame.
    target = target_at_logits(mask, (128, 256), 256, 256)[0].numpy()
    assert target.shape == (256, 256)
    assert target[:128, :128].all() and not target[:128, 128:].any() and not target[128:].any()
    # SAM frame: input 1024, logits 256 -> a quarter.
    target = target_at_logits(mask, (512, 1024), 1024, 256)[0].numpy()
    assert target[:128, :128].all() and not target[:, 128:].any() and not target[128:].any()
