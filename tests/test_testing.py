"""Tests for the test doubles in medsamkit.testing (FakeSegmenter, make_blob_image)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsamkit import Prompts, Segmenter
from medsamkit._types import ImageEncoding
from medsamkit.testing import FakeSegmenter, make_blob_image


def square_image() -> np.ndarray:
    """64x64 image, 0 background with a bright 10x10 square (rows/cols 10-19) and a 4x4 one (rows/cols 40-43)."""
    image = np.zeros((64, 64), np.uint8)
    image[10:20, 10:20] = 250
    image[40:44, 40:44] = 250
    return image


class TestFakeSegmenter:
    def test_is_a_segmenter(self):
        fake = FakeSegmenter()
        assert isinstance(fake, Segmenter)
        assert fake.model_id == "fake:intensity:20"
        assert FakeSegmenter(mode="box", point_radius=3).model_id == "fake:box:3"

    def test_encode_scales_to_unit_range_and_counts(self):
        fake = FakeSegmenter()
        image = np.array([[10, 20], [30, 50]], np.uint16)
        enc = fake.encode(image)
        assert isinstance(enc, ImageEncoding)
        np.testing.assert_allclose(enc.features, [[0, 0.25], [0.5, 1.0]])
        assert enc.size_hw == (2, 2) and enc.model_id == fake.model_id
        fake.encode(image)
        assert fake.encode_calls == 2 and fake.decode_calls == 0

    def test_encode_rgba_ignores_alpha(self):
        fake = FakeSegmenter()
        rgb = np.zeros((4, 4, 3), np.uint8)
        rgb[1:3, 1:3] = [30, 60, 90]
        alpha = np.random.default_rng(0).integers(0, 256, (4, 4, 1), dtype=np.uint8)
        np.testing.assert_allclose(fake.encode(np.concatenate([rgb, alpha], axis=2)).features, fake.encode(rgb).features)

    def test_constant_image_does_not_divide_by_zero(self):
        features = FakeSegmenter().encode(np.full((5, 5), 7.0)).features
        assert np.isfinite(features).all() and (features == 0).all()

    def test_box_mode_probabilities_and_scores(self):
        fake = FakeSegmenter(mode="box")
        prompts = Prompts(box_xyxy=[[2, 3, 5, 7], [0, 0, 63, 63]])
        out = fake.decode(fake.encode(square_image()), prompts)
        assert out.probabilities.shape == (2, 64, 64) and out.probabilities.dtype == np.float32
        expected = np.zeros((64, 64), np.float32)
        expected[3:8, 2:6] = 0.9
        np.testing.assert_allclose(out.probabilities[0], expected)
        np.testing.assert_allclose(out.probabilities[1], 0.9)
        np.testing.assert_allclose(out.scores, [0.9, 0.9], rtol=1e-5)
        assert fake.decode_calls == 1

    def test_intensity_mode_segments_bright_pixels_in_box(self):
        fake = FakeSegmenter()
        # box rows/cols 5-24 (400 px) holds the 100 px square: mean 0.25, so the square is above it
        out = fake.decode(fake.encode(square_image()), Prompts(box_xyxy=[[5, 5, 24, 24]]))
        expected = np.zeros((64, 64), np.float32)
        expected[5:25, 5:25] = 0.1
        expected[10:20, 10:20] = 0.9
        np.testing.assert_allclose(out.probabilities[0], expected)
        assert out.scores[0] == pytest.approx((100 * 0.9 + 300 * 0.1) / 400)

    def test_uniform_box_is_all_low(self):
        fake = FakeSegmenter()
        out = fake.decode(fake.encode(square_image()), Prompts(box_xyxy=[[10, 10, 19, 19]]))
        assert out.scores[0] == pytest.approx(0.1)
        assert (out.probabilities[0] <= 0.1 + 1e-6).all()

    def test_point_prompts_use_a_box_of_point_radius(self):
        fake = FakeSegmenter(mode="box", point_radius=3)
        prompts = Prompts(points_xy=[[[10, 20], [14, 22], [50, 50]]], point_labels=[[1, 1, 0]])
        out = fake.decode(fake.encode(square_image()), prompts)
        expected = np.zeros((64, 64), np.float32)
        expected[17:26, 7:18] = 0.9  # x 10-3 .. 14+3, y 20-3 .. 22+3; the background point is ignored
        np.testing.assert_allclose(out.probabilities[0], expected)

    def test_point_box_clipped_to_image(self):
        fake = FakeSegmenter(mode="box", point_radius=5)
        out = fake.decode(fake.encode(square_image()), Prompts(points_xy=[[[1, 62]]]))
        expected = np.zeros((64, 64), np.float32)
        expected[57:64, 0:7] = 0.9
        np.testing.assert_allclose(out.probabilities[0], expected)

    def test_background_points_only_give_nothing(self):
        fake = FakeSegmenter(mode="box")
        out = fake.decode(fake.encode(square_image()), Prompts(points_xy=[[[10, 10]]], point_labels=[[0]]))
        assert not out.probabilities.any() and out.scores[0] == 0

    def test_rejects_foreign_encoding(self):
        encoding = FakeSegmenter(mode="box").encode(square_image())
        with pytest.raises(ValueError, match=r"^encoding: expected an encoding made by 'fake:intensity:20'"):
            FakeSegmenter().decode(encoding, Prompts(box_xyxy=[[0, 0, 5, 5]]))
        with pytest.raises(ValueError, match=r"^encoding: "):
            FakeSegmenter().decode("features", Prompts(box_xyxy=[[0, 0, 5, 5]]))

    def test_bad_mode(self):
        with pytest.raises(ValueError, match=r"^mode: expected 'intensity' or 'box'"):
            FakeSegmenter(mode="perfect")

    def test_params(self):
        assert FakeSegmenter(mode="box", point_radius=4).params() == {"mode": "box", "point_radius": 4}


class TestMakeBlobImage:
    def test_default_shapes_and_dtypes(self):
        image, mask = make_blob_image()
        assert image.shape == (96, 128) and image.dtype == np.uint8
        assert mask.shape == (96, 128) and mask.dtype == bool
        assert 0 < mask.mean() < 0.5

    def test_blob_is_brighter(self):
        image, mask = make_blob_image(seed=3)
        assert image[mask].mean() > 150 and image[~mask].mean() < 80

    def test_noise_free_values(self):
        image, mask = make_blob_image(noise=0.0)
        assert set(np.unique(image[mask])) == {round(0.75 * 255)}
        assert set(np.unique(image[~mask])) == {round(0.2 * 255)}
        image16, mask16 = make_blob_image(noise=0.0, dtype=np.uint16)
        np.testing.assert_array_equal(mask16, mask)
        assert set(np.unique(image16[mask16])) == {round(0.75 * 65535)}

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_float_images_in_unit_range(self, dtype):
        image, _ = make_blob_image(dtype=dtype)
        assert image.dtype == dtype
        assert image.min() >= 0 and image.max() <= 1

    @pytest.mark.parametrize("n_blobs", [1, 2, 3])
    def test_separate_blobs(self, n_blobs):
        _, mask = make_blob_image((80, 240), n_blobs=n_blobs, seed=n_blobs)
        _, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count == n_blobs
        # blob k lies in vertical band k and does not touch the image border
        band = 240 / n_blobs
        cols = np.flatnonzero(mask.any(axis=0))
        for k in range(n_blobs):
            assert mask[:, int(band * k) : int(band * (k + 1))].any()
        assert not mask[0].any() and not mask[-1].any() and cols.min() > 0 and cols.max() < 239

    def test_seeded(self):
        a = make_blob_image(seed=5)
        b = make_blob_image(seed=5)
        c = make_blob_image(seed=6)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])


def test_make_presence_folder_alternates_target_and_empty_images(tmp_path):
    from medsamkit.testing import make_presence_folder

    folder = make_presence_folder(tmp_path / "p", 5, size_hw=(40, 50), seed=3)
    assert list(folder.stems) == [f"img_{i:03d}" for i in range(5)]
    present = [bool(s.load_mask().any()) for s in folder]
    assert present == [True, False, True, False, True]
    highs = [int(s.load_image().max()) for s in folder]
    assert all(h == 250 or h == 255 for h in highs)  # specks in every image: the range is no cue
    again = make_presence_folder(tmp_path / "q", 5, size_hw=(40, 50), seed=3)
    assert all((a.load_image() == b.load_image()).all() for a, b in zip(folder, again))
