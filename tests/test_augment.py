"""medsamkit._augment: augmented copies of training samples (the embedding head's fit(..., augment=K))."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit._augment import AugmentedSample, augment_pair, augmented_copies


class _Sample:
    def __init__(self, stem, image, mask):
        self.stem, self.image, self.mask = stem, image, mask

    def load(self):
        return self.image, self.mask


def _square(dtype=np.uint8, size=64):
    image = np.full((size, size), 40, dtype=dtype)
    mask = np.zeros((size, size), bool)
    mask[24:40, 20:36] = True
    image[mask] = 200
    return image, mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_image_and_mask_move_together_and_keep_shape_and_dtype(dtype):
    image, mask = _square(dtype)
    for seed in range(5):
        out_image, out_mask = augment_pair(image, mask, np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_image.dtype == image.dtype
        assert out_mask.shape == mask.shape and out_mask.dtype == mask.dtype
        # the mask stays on the bright square: the moved square's pixels are brighter than the rest
        inside, outside = out_image[out_mask].astype(float), out_image[~out_mask].astype(float)
        assert out_mask.sum() > 0.4 * mask.sum() and inside.mean() > outside.mean() + 50
        assert not np.array_equal(out_mask, mask)  # it did move


def test_rgb_images_keep_their_channels():
    image, mask = _square()
    rgb = np.stack([image, image // 2, image // 3], axis=-1)
    out, _ = augment_pair(rgb, mask, np.random.default_rng(0))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out[..., 0].mean() > out[..., 2].mean()


def test_copies_are_seeded_by_stem_and_copy():
    image, mask = _square()
    samples = [_Sample("a", image, mask), _Sample("b", image, mask)]
    out = augmented_copies(samples, 2, seed=3)
    assert out[:2] == samples and [s.stem for s in out[2:]] == ["a-aug0", "a-aug1", "b-aug0", "b-aug1"]
    first, again = out[2].load(), AugmentedSample(samples[0], 0, 3).load()
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])  # the same pixels every run
    assert not np.array_equal(out[2].load()[0], out[3].load()[0])  # copies differ
    assert not np.array_equal(out[2].load()[0], out[4].load()[0])  # samples differ (same pixels, other stem)
    assert augmented_copies(samples, 0) == samples


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_number_of_copies(bad):
    with pytest.raises(ValueError, match=r"^augment: expected a number of copies >= 0, got"):
        augmented_copies([], bad)
