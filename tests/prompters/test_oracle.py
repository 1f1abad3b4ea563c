"""Tests for OracleBoxPrompter and PerturbedBoxPrompter."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit import Pipeline, Prompts
from medsamkit.prompters import OracleBoxPrompter, PerturbedBoxPrompter
from medsamkit.testing import FakeSegmenter


def two_rectangles_with_speck() -> np.ndarray:
    """40x50 mask: rectangles rows 2-5 x cols 3-10 (32 px), rows 10-24 x cols 20-35 (240 px), 2x2 speck."""
    mask = np.zeros((40, 50), dtype=bool)
    mask[2:6, 3:11] = True
    mask[10:25, 20:36] = True
    mask[35:37, 45:47] = True  # 4 px speck
    return mask


IMAGE = np.zeros((40, 50), np.uint8)


class TestOracleBoxPrompter:
    def test_one_box_per_component_largest_first(self):
        prompts = OracleBoxPrompter()(IMAGE, target=two_rectangles_with_speck())
        assert isinstance(prompts, Prompts)
        assert prompts.points_xy is None
        np.testing.assert_array_equal(prompts.box_xyxy, [[20, 10, 35, 24], [3, 2, 10, 5]])

    def test_min_area_zero_keeps_speck(self):
        prompts = OracleBoxPrompter(min_area=0)(IMAGE, target=two_rectangles_with_speck())
        np.testing.assert_array_equal(prompts.box_xyxy, [[20, 10, 35, 24], [3, 2, 10, 5], [45, 35, 46, 36]])

    def test_largest_kept_even_if_below_min_area(self):
        mask = np.zeros((40, 50), bool)
        mask[5:7, 5:8] = True  # 6 px
        mask[20, 20] = True  # 1 px
        prompts = OracleBoxPrompter(min_area=16)(IMAGE, target=mask)
        np.testing.assert_array_equal(prompts.box_xyxy, [[5, 5, 7, 6]])

    def test_whole_mode(self):
        prompts = OracleBoxPrompter(mode="whole")(IMAGE, target=two_rectangles_with_speck())
        np.testing.assert_array_equal(prompts.box_xyxy, [[3, 2, 46, 36]])

    @pytest.mark.parametrize("mode", ["components", "whole"])
    def test_empty_target_gives_no_prompt(self, mode):
        prompts = OracleBoxPrompter(mode=mode)(IMAGE, target=np.zeros((40, 50), bool))
        assert prompts.n == 0
        assert prompts.box_xyxy.shape == (0, 4)

    def test_empty_target_through_pipeline(self):
        segmenter = FakeSegmenter()
        result = Pipeline(OracleBoxPrompter(), segmenter)(IMAGE, target=np.zeros((40, 50), bool))
        assert result.note == "no prompt"
        assert not result.has_prompts
        assert result.mask.shape == (40, 50) and not result.mask.any()
        assert segmenter.encode_calls == 0 and segmenter.decode_calls == 0

    def test_missing_target(self):
        with pytest.raises(ValueError, match=r"^target: OracleBoxPrompter .*got None"):
            OracleBoxPrompter()(IMAGE)

    def test_target_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"^target: expected shape \(40, 50\).*got shape \(50, 40\)"):
            OracleBoxPrompter()(IMAGE, target=np.ones((50, 40), bool))

    def test_image_validated(self):
        with pytest.raises(ValueError, match=r"^image: "):
            OracleBoxPrompter()(np.zeros((3, 40, 50)), target=np.ones((40, 50)))

    def test_rgb_image_and_uint8_target(self):
        target = two_rectangles_with_speck().astype(np.uint8) * 255
        prompts = OracleBoxPrompter()(np.zeros((40, 50, 3), np.uint8), target=target)
        assert prompts.n == 2

    @pytest.mark.parametrize(
        "kwargs, param", [({"mode": "box"}, "mode"), ({"min_area": -1}, "min_area"), ({"min_area": 2.5}, "min_area")]
    )
    def test_bad_arguments(self, kwargs, param):
        with pytest.raises(ValueError, match=rf"^{param}: "):
            OracleBoxPrompter(**kwargs)

    def test_params(self):
        assert OracleBoxPrompter(mode="whole", min_area=3).params() == {"mode": "whole", "min_area": 3}
        assert OracleBoxPrompter.requires_target is True


def centre_rectangle() -> np.ndarray:
    """80x80 mask with a rectangle rows 30-40 (height 11) x cols 20-40 (width 21), far from borders."""
    mask = np.zeros((80, 80), bool)
    mask[30:41, 20:41] = True
    return mask


ORACLE_CENTRE = np.array([20, 30, 40, 40], np.float32)


class TestPerturbedBoxPrompter:
    def test_defaults_equal_oracle(self):
        mask = two_rectangles_with_speck()
        np.testing.assert_array_equal(
            PerturbedBoxPrompter()(IMAGE, target=mask).box_xyxy, OracleBoxPrompter()(IMAGE, target=mask).box_xyxy
        )

    def test_margin_exact(self):
        prompts = PerturbedBoxPrompter(margin=5)(IMAGE, target=two_rectangles_with_speck())
        # (20,10,35,24) -> (15,5,40,29); (3,2,10,5) -> (-2,-3,15,10) clipped to (0,0,15,10)
        np.testing.assert_array_equal(prompts.box_xyxy, [[15, 5, 40, 29], [0, 0, 15, 10]])

    def test_margin_clipped_at_right_and_bottom(self):
        mask = np.zeros((40, 50), bool)
        mask[30:38, 40:48] = True
        prompts = PerturbedBoxPrompter(margin=10)(IMAGE, target=mask)
        np.testing.assert_array_equal(prompts.box_xyxy, [[30, 20, 49, 39]])

    def test_negative_margin_shrinks(self):
        prompts = PerturbedBoxPrompter(margin=-3)(np.zeros((80, 80)), target=centre_rectangle())
        np.testing.assert_array_equal(prompts.box_xyxy, [[23, 33, 37, 37]])

    def test_jitter_bounded_and_uses_box_sides(self):
        jitter, fraction = 2.0, 0.1
        limit = np.array([jitter + fraction * 21, jitter + fraction * 11] * 2)  # x: 4.1, y: 3.1
        image, mask = np.zeros((80, 80)), centre_rectangle()
        deviations = np.stack(
            [
                PerturbedBoxPrompter(jitter=jitter, jitter_fraction=fraction, seed=seed)(image, target=mask).box_xyxy[0]
                - ORACLE_CENTRE
                for seed in range(200)
            ]
        )
        assert (np.abs(deviations) <= limit + 1e-4).all()
        # the jitter is really used, up to close to its bounds, and x moves more than y could
        assert np.abs(deviations[:, [0, 2]]).max() > 3.5
        assert np.abs(deviations[:, [1, 3]]).max() > 2.5
        assert (np.abs(deviations[:, [0, 2]]) > 3.1 + 1e-3).any()
        # roughly symmetric around the oracle box
        assert (deviations < -1).any() and (deviations > 1).any()

    def test_jitter_only_absolute(self):
        image, mask = np.zeros((80, 80)), centre_rectangle()
        for seed in range(20):
            box = PerturbedBoxPrompter(jitter=1.5, seed=seed)(image, target=mask).box_xyxy[0]
            assert (np.abs(box - ORACLE_CENTRE) <= 1.5 + 1e-5).all()

    def test_jitter_then_margin(self):
        image, mask = np.zeros((80, 80)), centre_rectangle()
        jittered = PerturbedBoxPrompter(jitter=3, seed=7)(image, target=mask).box_xyxy
        both = PerturbedBoxPrompter(jitter=3, margin=4, seed=7)(image, target=mask).box_xyxy
        np.testing.assert_allclose(both, jittered + np.array([-4, -4, 4, 4]), atol=1e-5)

    def test_same_seed_and_mask_is_deterministic_regardless_of_order(self):
        image = np.zeros((80, 80))
        mask_a = centre_rectangle()
        mask_b = np.zeros((80, 80), bool)
        mask_b[5:25, 50:70] = True
        first = PerturbedBoxPrompter(jitter=3, jitter_fraction=0.1, seed=11)
        a_first = first(image, target=mask_a).box_xyxy
        b_second = first(image, target=mask_b).box_xyxy
        second = PerturbedBoxPrompter(jitter=3, jitter_fraction=0.1, seed=11)
        b_first = second(image, target=mask_b).box_xyxy
        a_second = second(image, target=mask_a).box_xyxy
        a_third = second(image, target=mask_a).box_xyxy
        np.testing.assert_array_equal(a_first, a_second)
        np.testing.assert_array_equal(a_first, a_third)
        np.testing.assert_array_equal(b_first, b_second)
        assert not np.array_equal(a_first, ORACLE_CENTRE[None])

    def test_different_seeds_differ(self):
        image, mask = np.zeros((80, 80)), centre_rectangle()
        boxes = [PerturbedBoxPrompter(jitter=3, seed=seed)(image, target=mask).box_xyxy for seed in range(5)]
        for i in range(5):
            for j in range(i + 1, 5):
                assert not np.array_equal(boxes[i], boxes[j])

    def test_different_masks_get_different_jitter(self):
        image = np.zeros((80, 80))
        mask = centre_rectangle()
        shifted = np.roll(mask, 5, axis=1)
        prompter = PerturbedBoxPrompter(jitter=3, seed=0)
        d1 = prompter(image, target=mask).box_xyxy - ORACLE_CENTRE
        d2 = prompter(image, target=shifted).box_xyxy - (ORACLE_CENTRE + [5, 0, 5, 0])
        assert not np.allclose(d1, d2)

    def test_jittered_boxes_stay_valid_and_inside(self):
        mask = np.zeros((20, 20), bool)
        mask[0:3, 17:20] = True  # small box in a corner, large jitter
        image = np.zeros((20, 20))
        for seed in range(30):
            box = PerturbedBoxPrompter(jitter=6, seed=seed)(image, target=mask).box_xyxy[0]
            assert box[0] <= box[2] and box[1] <= box[3]
            assert box.min() >= 0 and box[[0, 2]].max() <= 19 and box[[1, 3]].max() <= 19

    def test_whole_mode_and_min_area(self):
        mask = two_rectangles_with_speck()
        np.testing.assert_array_equal(PerturbedBoxPrompter(mode="whole", margin=1)(IMAGE, target=mask).box_xyxy, [[2, 1, 47, 37]])
        assert PerturbedBoxPrompter(min_area=0)(IMAGE, target=mask).n == 3

    def test_empty_target(self):
        assert PerturbedBoxPrompter(jitter=3, margin=2)(IMAGE, target=np.zeros((40, 50))).n == 0

    def test_missing_target(self):
        with pytest.raises(ValueError, match=r"^target: PerturbedBoxPrompter"):
            PerturbedBoxPrompter(margin=5)(IMAGE)

    @pytest.mark.parametrize(
        "kwargs, param",
        [
            ({"margin": float("nan")}, "margin"),
            ({"margin": "5"}, "margin"),
            ({"jitter": -1}, "jitter"),
            ({"jitter_fraction": -0.1}, "jitter_fraction"),
            ({"jitter": True}, "jitter"),
            ({"seed": 1.5}, "seed"),
            ({"seed": -1}, "seed"),
            ({"mode": "all"}, "mode"),
        ],
    )
    def test_bad_arguments(self, kwargs, param):
        with pytest.raises(ValueError, match=rf"^{param}: "):
            PerturbedBoxPrompter(**kwargs)

    def test_params(self):
        params = PerturbedBoxPrompter(margin=5, jitter=1, jitter_fraction=0.1, seed=3, mode="whole", min_area=2).params()
        assert params == {"margin": 5.0, "jitter": 1.0, "jitter_fraction": 0.1, "seed": 3, "mode": "whole", "min_area": 2}
