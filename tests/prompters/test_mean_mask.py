"""Tests for MeanMaskPointPrompter (mean-mask points, fitted on synthetic masks)."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit import Prompts
from medsamkit.prompters import MeanMaskPointPrompter

LEFT = (slice(20, 44), slice(8, 24))  # rows 20-43, cols 8-23: identical in every training mask


def two_blob_masks() -> list[np.ndarray]:
    """Six 64x64 masks: a fixed left rectangle and a right rectangle shifted diagonally by -2..3 px."""
    masks = []
    for s in range(-2, 4):
        mask = np.zeros((64, 64), bool)
        mask[LEFT] = True
        mask[16 + s : 48 + s, 38 + s : 56 + s] = True
        masks.append(mask)
    return masks


def fitted(**kwargs) -> MeanMaskPointPrompter:
    kwargs.setdefault("grid_size", 64)
    return MeanMaskPointPrompter(**kwargs).fit(two_blob_masks())


def assert_points_in(points: np.ndarray, mask: np.ndarray) -> None:
    xs, ys = points[:, 0], points[:, 1]
    np.testing.assert_array_equal(xs, np.round(xs))
    assert mask[ys.astype(int), xs.astype(int)].all(), points


class TestFitAndCall:
    def test_two_blobs_give_two_prompts_inside_the_blobs(self):
        masks = two_blob_masks()
        prompter = fitted()
        prompts = prompter(np.zeros((64, 64), np.uint8))
        assert isinstance(prompts, Prompts)
        assert prompts.box_xyxy is None
        assert prompts.points_xy.shape == (2, 3, 2)
        np.testing.assert_array_equal(prompts.point_labels, np.ones((2, 3)))
        mean = np.mean(masks, axis=0)
        left_blob = np.zeros((64, 64), bool)
        left_blob[LEFT] = True
        right_blob = np.zeros((64, 64), bool)
        right_blob[14:51, 36:59] = True  # union of the shifted right rectangles
        for points in prompts.points_xy:
            assert_points_in(points, mean >= 0.5)
            # three distinct points per prompt
            assert len({tuple(p) for p in points.tolist()}) == 3
        # prompts are ordered left to right: left blob first
        assert_points_in(prompts.points_xy[0], left_blob)
        assert_points_in(prompts.points_xy[1], right_blob)

    def test_mean_mask_is_the_average(self):
        masks = two_blob_masks()
        prompter = fitted()
        assert prompter.n_fitted == 6
        assert prompter.mean_mask.shape == (64, 64)
        np.testing.assert_allclose(prompter.mean_mask, np.mean(masks, axis=0), atol=1e-6)

    def test_first_point_is_the_most_interior(self):
        # left region = the 24x16 rectangle rows 20-43, cols 8-23: the pixels farthest from its
        # border (distance 8) are cols 15-16, rows 27-36
        first = fitted()(np.zeros((64, 64)), target=None).points_xy[0, 0]
        assert first[0] in (15, 16)
        assert 27 <= first[1] <= 36

    def test_points_scale_with_image_size(self):
        prompter = fitted()
        small = prompter(np.zeros((64, 64))).points_xy
        big = prompter(np.zeros((128, 256, 3), np.uint8)).points_xy  # H = 128, W = 256
        # cell centre (c + 0.5) / 64 of the width/height -> pixel (c + 0.5) * scale - 0.5
        np.testing.assert_allclose(big[..., 0], (small[..., 0] + 0.5) * 4 - 0.5)
        np.testing.assert_allclose(big[..., 1], (small[..., 1] + 0.5) * 2 - 0.5)
        # and they land inside the left rectangle scaled to the big image
        left = big[0]
        assert (left[:, 0] >= 8 * 4).all() and (left[:, 0] <= 24 * 4 - 1).all()
        assert (left[:, 1] >= 20 * 2).all() and (left[:, 1] <= 44 * 2 - 1).all()

    def test_default_grid_resamples_masks(self):
        prompter = MeanMaskPointPrompter().fit(two_blob_masks())
        assert prompter.mean_mask.shape == (256, 256)
        points = prompter(np.zeros((128, 256))).points_xy
        assert points.shape == (2, 3, 2)
        # the left blob in 128x256 pixels covers x in [32, 95], y in [40, 87]
        assert (points[0, :, 0] > 32).all() and (points[0, :, 0] < 95).all()
        assert (points[0, :, 1] > 40).all() and (points[0, :, 1] < 87).all()
        assert (points[1, :, 0] > 38 * 4).all()

    def test_points_normalized(self):
        prompter = fitted()
        normalized = prompter.points_normalized
        assert len(normalized) == 2
        pixels = prompter(np.zeros((64, 64))).points_xy
        np.testing.assert_allclose(normalized[0], (pixels[0] + 0.5) / 64)

    def test_group_all_gives_one_prompt(self):
        per_component = fitted()(np.zeros((64, 64))).points_xy
        prompts = fitted(group="all")(np.zeros((64, 64)))
        assert prompts.n == 1
        assert prompts.points_xy.shape == (1, 6, 2)
        np.testing.assert_array_equal(prompts.points_xy[0], per_component.reshape(6, 2))

    def test_points_per_component(self):
        prompts = fitted(points_per_component=1)(np.zeros((64, 64)))
        assert prompts.points_xy.shape == (2, 1, 2)

    def test_short_group_padded_with_not_a_point_labels(self):
        masks = []
        for _ in range(3):
            mask = np.zeros((64, 64), bool)
            mask[10:40, 5:30] = True
            mask[50, 50:52] = True  # a 2-pixel region: only two points fit
            masks.append(mask)
        prompter = MeanMaskPointPrompter(grid_size=64, min_area_fraction=0.0).fit(masks)
        prompts = prompter(np.zeros((64, 64)))
        points, labels = prompts.points_xy, prompts.point_labels
        assert points.shape == (2, 3, 2)
        assert labels[0].tolist() == [1, 1, 1] and labels[1].tolist() == [1, 1, -1]
        small = points[1][labels[1] == 1]
        assert {tuple(p) for p in small.tolist()} == {(50.0, 50.0), (51.0, 50.0)}

    def test_min_area_fraction_drops_small_regions(self):
        masks = []
        for _ in range(2):
            mask = np.zeros((64, 64), bool)
            mask[10:40, 5:30] = True
            mask[50:55, 50:55] = True  # 25 cells = 0.6 % of the 4096-cell grid
            masks.append(mask)
        assert MeanMaskPointPrompter(grid_size=64).fit(masks)(np.zeros((64, 64))).n == 1
        assert MeanMaskPointPrompter(grid_size=64, min_area_fraction=0.005).fit(masks)(np.zeros((64, 64))).n == 2
        # the largest region is kept whatever the threshold
        assert MeanMaskPointPrompter(grid_size=64, min_area_fraction=1.0).fit(masks)(np.zeros((64, 64))).n == 1

    def test_probability_level(self):
        masks = []
        for i in range(5):
            mask = np.zeros((64, 64), bool)
            mask[10:30, 10:30] = True  # mean 1.0
            if i < 2:
                mask[10:30, 40:60] = True  # mean 0.4
            masks.append(mask)
        assert MeanMaskPointPrompter(grid_size=64, probability=0.5).fit(masks)(np.zeros((64, 64))).n == 1
        prompts = MeanMaskPointPrompter(grid_size=64, probability=0.3).fit(masks)(np.zeros((64, 64)))
        assert prompts.n == 2
        assert (prompts.points_xy[1, :, 0] >= 40).all()

    def test_low_mean_falls_back_to_half_maximum(self):
        corners = [
            (slice(5, 20), slice(5, 20)),
            (slice(5, 20), slice(40, 55)),
            (slice(40, 55), slice(5, 20)),
            (slice(40, 55), slice(40, 55)),
        ]
        masks = []
        for rows, cols in corners:
            mask = np.zeros((64, 64), bool)
            mask[rows, cols] = True
            masks.append(mask)
        prompter = MeanMaskPointPrompter(grid_size=64).fit(masks)
        assert prompter.mean_mask.max() == pytest.approx(0.25)
        prompts = prompter(np.zeros((64, 64)))
        assert prompts.n == 4
        hit = []
        for points in prompts.points_xy:
            inside = [k for k, m in enumerate(masks) if m[points[:, 1].astype(int), points[:, 0].astype(int)].all()]
            assert len(inside) == 1
            hit.append(inside[0])
        assert sorted(hit) == [0, 1, 2, 3]

    def test_mixed_resolutions_and_load_mask_items(self):
        class Item:
            def __init__(self, mask):
                self.mask = mask

            def load_mask(self):
                return self.mask

        small = np.zeros((32, 32), np.uint8)
        small[8:24, 4:16] = 255
        large = np.zeros((128, 128), bool)
        large[32:96, 16:64] = True
        prompter = MeanMaskPointPrompter(grid_size=32).fit([Item(small), large])
        assert prompter.n_fitted == 2
        # both masks cover the same normalised region, so the mean reaches 1 there
        assert prompter.mean_mask.max() == pytest.approx(1.0)
        points = prompter(np.zeros((32, 32))).points_xy
        assert_points_in(points[0], small > 0)

    def test_fit_returns_self_and_repr(self):
        prompter = MeanMaskPointPrompter(grid_size=64)
        assert "not fitted" in repr(prompter)
        assert prompter.fit(two_blob_masks()) is prompter
        assert "fitted on 6 masks" in repr(prompter)


class TestErrors:
    def test_not_fitted(self):
        prompter = MeanMaskPointPrompter()
        with pytest.raises(RuntimeError, match="not fitted"):
            prompter(np.zeros((8, 8)))
        with pytest.raises(RuntimeError, match="not fitted"):
            prompter.points_normalized

    def test_save_not_fitted(self, tmp_path):
        with pytest.raises(RuntimeError, match="not fitted"):
            MeanMaskPointPrompter().save(tmp_path / "p.npz")
        assert not (tmp_path / "p.npz").exists()

    def test_all_empty_masks(self):
        with pytest.raises(ValueError, match=r"^samples: expected some foreground, got 3 empty masks"):
            MeanMaskPointPrompter().fit([np.zeros((16, 16), bool)] * 3)

    def test_no_masks(self):
        with pytest.raises(ValueError, match=r"^samples: expected at least one training mask"):
            MeanMaskPointPrompter().fit([])

    def test_bad_mask_in_training_set(self):
        with pytest.raises(ValueError, match=r"samples\[\]: expected shape \(H, W\)"):
            MeanMaskPointPrompter().fit([np.zeros((16, 16, 3))])

    def test_bad_image_at_call(self):
        with pytest.raises(ValueError, match=r"^image: "):
            fitted()(np.zeros((3, 64, 64)))

    @pytest.mark.parametrize(
        "kwargs, exc, param",
        [
            ({"points_per_component": 0}, ValueError, "points_per_component"),
            ({"points_per_component": 2.0}, ValueError, "points_per_component"),
            ({"grid_size": 4}, ValueError, "grid_size"),
            ({"group": "each"}, ValueError, "group"),
            ({"probability": 1.5}, ValueError, "probability"),
            ({"min_area_fraction": -0.1}, ValueError, "min_area_fraction"),
            ({"probability": "half"}, TypeError, "probability"),
        ],
    )
    def test_bad_arguments(self, kwargs, exc, param):
        with pytest.raises(exc, match=rf"^{param}: "):
            MeanMaskPointPrompter(**kwargs)


class TestSaveLoad:
    def test_round_trip(self, tmp_path):
        prompter = fitted(points_per_component=2, probability=0.6, group="all")
        path = prompter.save(tmp_path / "prompter.npz")
        assert path == tmp_path / "prompter.npz" and path.is_file()
        loaded = MeanMaskPointPrompter.load(str(path))
        assert loaded.params() == prompter.params()
        assert loaded.params()["group"] == "all" and loaded.params()["points_per_component"] == 2
        assert loaded.n_fitted == 6
        np.testing.assert_array_equal(loaded.mean_mask, prompter.mean_mask)
        image = np.zeros((100, 70))
        np.testing.assert_array_equal(loaded(image).points_xy, prompter(image).points_xy)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"^path: "):
            MeanMaskPointPrompter.load(tmp_path / "nope.npz")

    def test_not_a_saved_prompter(self, tmp_path):
        other = tmp_path / "other.npz"
        np.savez(other, something=np.zeros(3))
        with pytest.raises(ValueError, match=r"^path: .* is not a saved MeanMaskPointPrompter"):
            MeanMaskPointPrompter.load(other)
        garbage = tmp_path / "garbage.npz"
        garbage.write_bytes(b"not an npz file at all")
        with pytest.raises(ValueError, match=r"^path: .* is not a saved MeanMaskPointPrompter"):
            MeanMaskPointPrompter.load(garbage)
