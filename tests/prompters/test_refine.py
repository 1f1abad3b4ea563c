"""RefinedPrompter: loose automatic boxes become tight ones through the segmenter's own masks."""

from __future__ import annotations

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._geometry import component_boxes_xyxy
from medsamkit.prompters import FixedPrompter, RefinedPrompter
from medsamkit.testing import FakeSegmenter, make_blob_image


def _loose(box, margin, size_hw):
    h, w = size_hw
    x0, y0, x1, y1 = box
    return [max(0, x0 - margin), max(0, y0 - margin), min(w - 1, x1 + margin), min(h - 1, y1 + margin)]


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_loose_box_becomes_the_tight_box_of_the_object():
    image, mask = make_blob_image((96, 128), seed=3)
    tight = component_boxes_xyxy(mask)[0]
    loose = _loose(tight, 25, mask.shape)
    seg = FakeSegmenter()  # intensity mode: inside a box, brighter-than-mean pixels
    base = FixedPrompter(msk.Prompts(box_xyxy=[loose]))
    refined = RefinedPrompter(base)
    pipe = msk.Pipeline(refined, seg)  # the pipeline hands its segmenter over
    assert refined.segmenter is seg
    boxes = refined(image, encoding=seg.encode(image)).box_xyxy
    assert boxes.shape == (1, 4)
    assert np.abs(boxes[0] - tight).max() <= 2
    assert 1 <= refined.last_rounds <= 3
    assert np.abs(np.asarray(loose) - tight).max() >= 20  # the base box was loose
    plain = msk.Pipeline(base, seg)(image).mask
    assert _dice(pipe(image).mask, mask) > _dice(plain, mask)


def test_one_box_over_two_objects_splits_into_two():
    image, mask = make_blob_image((96, 160), n_blobs=2, seed=1)
    seg = FakeSegmenter(mode="intensity")
    h, w = mask.shape
    refined = RefinedPrompter(FixedPrompter(msk.Prompts(box_xyxy=[[0, 0, w - 1, h - 1]])), segmenter=seg)
    boxes = refined(image).box_xyxy
    truth = component_boxes_xyxy(mask)
    assert len(boxes) == 2
    for box in truth:
        assert min(np.abs(b - box).max() for b in boxes) <= 2


def test_zero_iterations_keeps_the_boxes_and_min_score_drops_poor_prompts():
    image, mask = make_blob_image(seed=2)
    seg = FakeSegmenter(mode="box")  # score 0.9 for every non-empty box
    box = component_boxes_xyxy(mask)[0]
    base = FixedPrompter(msk.Prompts(box_xyxy=[box]))
    kept = RefinedPrompter(base, segmenter=seg, iterations=0, min_score=0.5)(image)
    np.testing.assert_allclose(kept.box_xyxy, [box])
    assert RefinedPrompter(base, segmenter=seg, iterations=0, min_score=0.95)(image).n == 0


def test_points_and_empty_prompts_pass_through():
    image, _ = make_blob_image(seed=0)
    seg = FakeSegmenter()
    points = msk.Prompts(points_xy=[[[30.0, 40.0]]])
    assert RefinedPrompter(FixedPrompter(points), segmenter=seg)(image).points_xy is not None
    empty = RefinedPrompter(FixedPrompter(msk.Prompts.empty()), segmenter=seg)(image)
    assert empty.n == 0


def test_config_round_trip_through_the_registry():
    image, mask = make_blob_image(seed=4)
    loose = _loose(component_boxes_xyxy(mask)[0], 10, mask.shape)
    refined = RefinedPrompter(FixedPrompter(msk.Prompts(box_xyxy=[loose])), iterations=2, min_score=0.1)
    pipe = msk.Pipeline(refined, FakeSegmenter())
    rebuilt = msk.Pipeline.from_config(pipe.config)
    assert isinstance(rebuilt.prompter, RefinedPrompter)
    assert rebuilt.prompter.iterations == 2 and rebuilt.prompter.min_score == 0.1
    np.testing.assert_array_equal(rebuilt(image).mask, pipe(image).mask)


def test_errors():
    base = FixedPrompter(msk.Prompts.empty())
    with pytest.raises(TypeError, match="base"):
        RefinedPrompter(object())
    with pytest.raises(ValueError, match="iterations"):
        RefinedPrompter(base, iterations=-1)
    with pytest.raises(ValueError, match="max_boxes"):
        RefinedPrompter(base, max_boxes=0)
    with pytest.raises(ValueError, match="min_score"):
        RefinedPrompter(base, min_score=2.0)
    image, _ = make_blob_image(seed=0)
    with pytest.raises(ValueError, match="segmenter"):
        RefinedPrompter(base)(image)
    with pytest.raises(ValueError, match="base"):
        msk.build_prompter("refined", base="fixed")


def test_margin_grows_each_new_box_by_a_fraction_of_its_side():
    seg = FakeSegmenter(mode="box")  # the mask of a box is the box itself
    image = np.zeros((100, 200), dtype=np.uint8)
    base = FixedPrompter(msk.Prompts(box_xyxy=[[50, 20, 99, 59]]))  # 50 x 40 px
    boxes = RefinedPrompter(base, segmenter=seg, iterations=1, margin_fraction=0.1)(image).box_xyxy
    np.testing.assert_allclose(boxes, [[45, 16, 104, 63]])  # 5 px and 4 px per side
    with pytest.raises(ValueError, match="margin_fraction"):
        RefinedPrompter(base, margin_fraction=-0.1)
