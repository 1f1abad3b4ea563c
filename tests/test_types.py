"""Tests for medsamkit._types (Prompts and the result value types) and medsamkit._protocols."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medsamkit._protocols import PromptProvider, Segmenter
from medsamkit._types import ImageEncoding, PromptMasks, Prompts, SegmentationResult
from medsamkit.prompters import FixedPrompter, OracleBoxPrompter
from medsamkit.testing import FakeSegmenter


class TestPromptsConstruction:
    def test_boxes_converted_to_float32(self):
        p = Prompts(box_xyxy=[[1, 2, 3, 4], [0, 0, 5, 5]])
        assert p.box_xyxy.dtype == np.float32
        assert p.box_xyxy.shape == (2, 4)
        assert p.points_xy is None and p.point_labels is None
        assert p.n == len(p) == 2

    def test_points_default_to_foreground_labels(self):
        p = Prompts(points_xy=np.zeros((2, 3, 2)))
        assert p.points_xy.dtype == np.float32
        assert p.point_labels.dtype == np.int64
        np.testing.assert_array_equal(p.point_labels, np.ones((2, 3)))
        assert p.n == 2

    def test_labels_kept_and_cast(self):
        p = Prompts(points_xy=[[[1, 1], [2, 2]]], point_labels=[[True, False]])
        assert p.point_labels.dtype == np.int64
        np.testing.assert_array_equal(p.point_labels, [[1, 0]])

    def test_boxes_and_points_together(self):
        p = Prompts(box_xyxy=[[0, 0, 4, 4]], points_xy=[[[2, 2]]])
        assert p.n == 1

    def test_no_prompt_at_all(self):
        assert Prompts().n == 0
        empty = Prompts.empty()
        assert empty.n == 0
        assert empty.box_xyxy.shape == (0, 4)

    @pytest.mark.parametrize("boxes", [[1, 2, 3, 4], [[1, 2, 3]], np.zeros((2, 4, 1)), 5])
    def test_box_shape(self, boxes):
        with pytest.raises(ValueError, match=r"^box_xyxy: expected shape \(N, 4\), got shape"):
            Prompts(box_xyxy=boxes)

    @pytest.mark.parametrize("points", [[[1, 2]], np.zeros((2, 3)), np.zeros((1, 2, 3))])
    def test_points_shape(self, points):
        with pytest.raises(ValueError, match=r"^points_xy: expected shape \(N, P, 2\), got shape"):
            Prompts(points_xy=points)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_box(self, bad):
        with pytest.raises(ValueError, match=r"^box_xyxy: expected finite coordinates"):
            Prompts(box_xyxy=[[0, 0, bad, 3]])

    def test_non_finite_points(self):
        with pytest.raises(ValueError, match=r"^points_xy: expected finite coordinates"):
            Prompts(points_xy=[[[np.nan, 1.0]]])

    def test_non_numeric_box(self):
        with pytest.raises(TypeError, match=r"^box_xyxy: expected numbers"):
            Prompts(box_xyxy=[["a", "b", "c", "d"]])

    @pytest.mark.parametrize("box", [[5, 0, 4, 3], [0, 5, 3, 4]])
    def test_inverted_box(self, box):
        with pytest.raises(ValueError, match=r"^box_xyxy: expected x_min <= x_max and y_min <= y_max"):
            Prompts(box_xyxy=[box])

    def test_degenerate_box_allowed(self):
        assert Prompts(box_xyxy=[[3, 3, 3, 3]]).n == 1

    def test_label_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"^point_labels: expected shape \(1, 2\).*got shape \(1, 3\)"):
            Prompts(points_xy=np.zeros((1, 2, 2)), point_labels=np.ones((1, 3)))

    @pytest.mark.parametrize("label", [2, -2, 0.5])
    def test_label_values(self, label):
        with pytest.raises(ValueError, match=r"^point_labels: expected 1 \(foreground\), 0 \(background\) or -1 \(padding\)"):
            Prompts(points_xy=np.zeros((1, 2, 2)), point_labels=[[1, label]])

    def test_padding_label(self):
        assert Prompts(points_xy=np.zeros((1, 2, 2)), point_labels=[[1, -1]]).point_labels.tolist() == [[1, -1]]

    def test_labels_without_points(self):
        with pytest.raises(ValueError, match=r"^point_labels: given without points_xy"):
            Prompts(point_labels=[[1]])

    def test_prompt_count_mismatch(self):
        with pytest.raises(ValueError, match=r"^points_xy: expected 2 prompts to match box_xyxy, got 3"):
            Prompts(box_xyxy=np.zeros((2, 4)), points_xy=np.zeros((3, 1, 2)))

    def test_frozen(self):
        p = Prompts(box_xyxy=[[0, 0, 1, 1]])
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.box_xyxy = None

    def test_repr_mentions_count(self):
        assert repr(Prompts(box_xyxy=[[0, 0, 1, 1]])).startswith("Prompts(n=1, box_xyxy=[[0.0, 0.0, 1.0, 1.0]]")
        assert "<2x3 points>" in repr(Prompts(points_xy=np.zeros((2, 3, 2))))


class TestClippedTo:
    def test_partially_outside_boxes_are_clipped(self):
        # 20 wide (x in 0..19), 10 high (y in 0..9)
        p = Prompts(box_xyxy=[[-5, -3, 25, 4], [2, 3, 8, 30], [1.5, 2.5, 3.5, 4.5]])
        clipped = p.clipped_to((10, 20))
        np.testing.assert_array_equal(clipped.box_xyxy, [[0, 0, 19, 4], [2, 3, 8, 9], [1.5, 2.5, 3.5, 4.5]])
        # the original is untouched
        np.testing.assert_array_equal(p.box_xyxy[0], [-5, -3, 25, 4])

    @pytest.mark.parametrize(
        "box",
        [
            [-10, 0, -1, 5],  # left of the image
            [0, -10, 5, -0.5],  # above
            [20, 0, 30, 5],  # right of the last column (x = 19)
            [0, 10, 5, 12],  # below the last row (y = 9)
        ],
    )
    def test_box_entirely_outside_is_error(self, box):
        p = Prompts(box_xyxy=[[1, 1, 2, 2], box])
        with pytest.raises(ValueError, match=r"^prompts\.box_xyxy: .*20x10 \(WxH\).*entirely outside"):
            p.clipped_to((10, 20))

    def test_box_touching_edge_is_kept(self):
        p = Prompts(box_xyxy=[[19, 9, 40, 40], [-4, -4, 0, 0]])
        np.testing.assert_array_equal(p.clipped_to((10, 20)).box_xyxy, [[19, 9, 19, 9], [0, 0, 0, 0]])

    def test_custom_name(self):
        with pytest.raises(ValueError, match=r"^fixed\.box_xyxy: "):
            Prompts(box_xyxy=[[50, 50, 60, 60]]).clipped_to((10, 10), name="fixed")

    def test_points_inside_pixel_area_accepted(self):
        points = [[[-0.5, -0.5], [19.5, 9.5], [3, 4]]]
        out = Prompts(points_xy=points, point_labels=[[1, 0, 1]]).clipped_to((10, 20))
        np.testing.assert_array_equal(out.points_xy, np.asarray(points, np.float32))
        np.testing.assert_array_equal(out.point_labels, [[1, 0, 1]])

    @pytest.mark.parametrize("point", [[-0.6, 0], [19.6, 0], [0, -1], [0, 10]])
    def test_points_outside_is_error(self, point):
        with pytest.raises(ValueError, match=r"^prompts\.points_xy: expected points inside the 20x10"):
            Prompts(points_xy=[[point]]).clipped_to((10, 20))

    def test_empty_prompts(self):
        assert Prompts.empty().clipped_to((5, 5)).n == 0


class TestDictRoundTrip:
    def test_boxes_points_labels(self):
        p = Prompts(
            box_xyxy=[[1.25, 2.5, 10.75, 20.0], [0, 0, 3, 3]],
            points_xy=[[[4.5, 5.5], [6.0, 7.0]], [[1, 1], [2, 2]]],
            point_labels=[[1, 0], [1, 1]],
        )
        data = p.to_dict()
        # JSON-friendly
        data = json.loads(json.dumps(data))
        assert data["box_xyxy"] == [[1.25, 2.5, 10.75, 20.0], [0.0, 0.0, 3.0, 3.0]]
        assert data["point_labels"] == [[1, 0], [1, 1]]
        q = Prompts.from_dict(data)
        np.testing.assert_array_equal(q.box_xyxy, p.box_xyxy)
        np.testing.assert_array_equal(q.points_xy, p.points_xy)
        np.testing.assert_array_equal(q.point_labels, p.point_labels)

    def test_rounds_to_two_decimals(self):
        data = Prompts(box_xyxy=[[1.234567, 0, 2, 2]]).to_dict()
        assert data["box_xyxy"][0][0] == pytest.approx(1.23, abs=1e-6)

    def test_absent_parts_are_none(self):
        data = Prompts(points_xy=[[[1, 2]]]).to_dict()
        assert data["box_xyxy"] is None
        q = Prompts.from_dict(data)
        assert q.box_xyxy is None
        np.testing.assert_array_equal(q.points_xy, [[[1, 2]]])
        assert Prompts.from_dict({}).n == 0

    def test_empty_prompts_round_trip(self):
        q = Prompts.from_dict(json.loads(json.dumps(Prompts.empty().to_dict())))
        assert q.n == 0
        assert q.box_xyxy.shape == (0, 4)

    def test_empty_points_round_trip(self):
        q = Prompts.from_dict(Prompts(points_xy=np.zeros((0, 3, 2))).to_dict())
        assert q.n == 0
        assert q.points_xy.shape[0] == 0 and q.points_xy.shape[-1] == 2


class TestResultTypes:
    def test_image_encoding_fields(self):
        enc = ImageEncoding(features=np.zeros(3), size_hw=(4, 5), input_size_hw=(4, 5), model_id="m")
        assert enc.size_hw == (4, 5) and enc.model_id == "m"
        with pytest.raises(dataclasses.FrozenInstanceError):
            enc.model_id = "other"

    def test_prompt_masks_fields(self):
        pm = PromptMasks(probabilities=np.zeros((2, 3, 3), np.float32), scores=np.ones(2, np.float32))
        assert pm.probabilities.shape == (2, 3, 3) and pm.scores.shape == (2,)

    @pytest.mark.parametrize("prompts, expected", [(Prompts.empty(), False), (Prompts(box_xyxy=[[0, 0, 1, 1]]), True)])
    def test_segmentation_result_has_prompts(self, prompts, expected):
        result = SegmentationResult(
            mask=np.zeros((2, 2), bool),
            probabilities=np.zeros((2, 2), np.float32),
            prompt_masks=np.zeros((prompts.n, 2, 2), bool),
            scores=np.zeros(prompts.n, np.float32),
            prompts=prompts,
        )
        assert result.has_prompts is expected
        assert result.note is None


class TestProtocols:
    def test_fake_segmenter_is_segmenter(self):
        assert isinstance(FakeSegmenter(), Segmenter)

    def test_duck_typed_segmenter(self):
        class Mine:
            model_id = "mine"

            def encode(self, image):  # pragma: no cover - not called
                raise NotImplementedError

            def decode(self, encoding, prompts):  # pragma: no cover - not called
                raise NotImplementedError

        assert isinstance(Mine(), Segmenter)

    def test_incomplete_segmenter_is_not_segmenter(self):
        class NoDecode:
            model_id = "x"

            def encode(self, image):  # pragma: no cover - not called
                raise NotImplementedError

        assert not isinstance(NoDecode(), Segmenter)
        assert not isinstance(object(), Segmenter)

    def test_prompters_are_prompt_providers(self):
        assert isinstance(OracleBoxPrompter(), PromptProvider)
        assert isinstance(FixedPrompter(Prompts.empty()), PromptProvider)
        assert not isinstance(FakeSegmenter(), PromptProvider)


def test_compact_reprs():
    import torch

    result = SegmentationResult(
        mask=np.pad(np.ones((3, 4), bool), ((0, 7), (0, 6))),
        probabilities=np.zeros((10, 10), np.float32),
        prompt_masks=np.zeros((1, 10, 10), bool),
        scores=np.array([0.91234], np.float32),
        prompts=Prompts(box_xyxy=[[0, 0, 3, 2]]),
    )
    assert repr(result) == "SegmentationResult(shape=(10, 10), area=12 px (12.0%), prompts=1 boxes, scores=[0.912])"
    encoding = ImageEncoding(features=torch.zeros(1, 256, 64, 64), size_hw=(10, 10), input_size_hw=(256, 256), model_id="m")
    assert (
        repr(encoding) == "ImageEncoding(model_id='m', size_hw=(10, 10), input_size_hw=(256, 256), features=[(1, 256, 64, 64)])"
    )
    assert "tensor" not in repr(encoding)
