"""BoxesWithPointsPrompter: each box gets the point groups inside it, padded with -1."""

from __future__ import annotations

import numpy as np
import pytest

import medsamkit as msk
from medsamkit.testing import FakeSegmenter, make_blob_image


def test_points_are_attached_to_the_box_that_contains_them():
    boxes = msk.FixedPrompter(msk.Prompts(box_xyxy=[[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]]))
    points = msk.FixedPrompter(
        msk.Prompts(
            points_xy=[[[22, 5], [24, 5]], [[3, 3], [3, 3]], [[70, 5], [71, 5]]], point_labels=[[1, 1], [1, 0]] + [[1, 1]]
        )
    )
    out = msk.BoxesWithPointsPrompter(boxes, points)(np.zeros((10, 80)))
    assert out.n == 3
    np.testing.assert_array_equal(out.box_xyxy, boxes.prompts.box_xyxy)
    # box 0 <- group 1 (centroid (3, 3)); box 1 <- group 0; box 2 <- nothing; group 2 lies outside every box.
    np.testing.assert_array_equal(out.points_xy[0], [[3, 3], [3, 3]])
    np.testing.assert_array_equal(out.point_labels[0], [1, 0])
    np.testing.assert_array_equal(out.points_xy[1], [[22, 5], [24, 5]])
    np.testing.assert_array_equal(out.point_labels[2], [-1, -1])


def test_no_box_means_no_prompt_and_no_points_means_boxes_only():
    image = np.zeros((10, 10))
    none = msk.FixedPrompter(msk.Prompts.empty())
    pts = msk.FixedPrompter(msk.Prompts(points_xy=[[[2, 2]]]))
    box = msk.FixedPrompter(msk.Prompts(box_xyxy=[[0, 0, 5, 5]]))
    assert msk.BoxesWithPointsPrompter(none, pts)(image).n == 0
    only = msk.BoxesWithPointsPrompter(box, msk.FixedPrompter(msk.Prompts(points_xy=np.zeros((0, 1, 2)))))(image)
    assert only.n == 1 and only.points_xy is None


def test_with_oracle_boxes_and_mean_mask_points_in_a_pipeline():
    masks = [make_blob_image((64, 96), n_blobs=2, seed=s)[1] for s in range(4)]
    points = msk.MeanMaskPointPrompter(points_per_component=2).fit(masks)
    combined = msk.BoxesWithPointsPrompter(msk.OracleBoxPrompter(), points)
    assert combined.requires_target
    image, mask = make_blob_image((64, 96), n_blobs=2, seed=1)
    prompts = combined(image, target=mask)
    assert prompts.n == 2 and prompts.points_xy.shape == (2, 2, 2)
    result = msk.Pipeline(combined, FakeSegmenter())(image, target=mask)
    assert 2 * (result.mask & mask).sum() / (result.mask.sum() + mask.sum()) > 0.9


def test_padding_label_is_accepted_and_not_checked_against_the_image():
    prompts = msk.Prompts(points_xy=[[[5, 5], [0, 0]]], point_labels=[[1, -1]])
    assert prompts.clipped_to((10, 10)).n == 1
    far = msk.Prompts(points_xy=[[[5, 5], [500, 500]]], point_labels=[[1, -1]])
    far.clipped_to((10, 10))  # a padding point may lie anywhere
    with pytest.raises(ValueError, match="point_labels"):
        msk.Prompts(points_xy=[[[5, 5]]], point_labels=[[2]])


def test_bad_arguments():
    with pytest.raises(TypeError, match="boxes"):
        msk.BoxesWithPointsPrompter(object(), msk.OracleBoxPrompter())
