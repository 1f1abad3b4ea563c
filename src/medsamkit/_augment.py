"""Augmented copies of training samples for the learned prompters (``fit(..., augment=K)``).

One random affine map (scale, shift, rotation) for image and mask, then a random gamma
and contrast on the image: the transforms that helped the embedding head on breast
ultrasound (docs/results.md, "More augmentation in training"). No flips: the fits mirror
samples themselves (``flip=True``). Every copy is seeded by ``(seed, the sample's stem,
copy)``, so the same pixels come back on every run and an embedding cache recognises them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AugmentedSample", "augment_pair", "augmented_copies"]


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random geometric + intensity transform of ``image`` and its ``mask`` (same shape and dtype back).

    Scale 0.8-1.25 (log-uniform) with a shift of up to 10% of each side and a rotation
    within +-10 degrees about the centre: one affine map, bilinear for the image, nearest
    neighbour for the mask, zero outside (cropped or padded back to the original size);
    then gamma 0.7-1.4 and contrast 0.8-1.25 about the mean, on the image only.
    """
    from scipy import ndimage

    h, w = mask.shape
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    angle = np.deg2rad(rng.uniform(-10.0, 10.0))
    shift = rng.uniform(-0.1, 0.1, size=2) * np.array([h, w])
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    contrast = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    # output (row, col) o = scale * R (i - c) + c + shift  =>  input i = R^T (o - c - shift) / scale + c
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rot.T / scale
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ (centre + shift)

    def warp(plane: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(plane, matrix, offset=offset, output_shape=(h, w), order=order, mode="constant", cval=0)

    out_mask = warp(mask.astype(np.uint8), 0).astype(mask.dtype)
    planes = image[..., None] if image.ndim == 2 else image
    warped = np.stack([warp(planes[..., c].astype(np.float32), 1) for c in range(planes.shape[-1])], axis=-1)
    top = 255.0 if image.dtype == np.uint8 else max(float(warped.max()), 1e-6)
    x = np.clip(warped / top, 0.0, 1.0) ** gamma
    x = np.clip((x - x.mean()) * contrast + x.mean(), 0.0, 1.0) * top
    x = np.rint(x) if np.issubdtype(image.dtype, np.integer) else x
    out_image = x.astype(image.dtype)
    return (out_image[..., 0] if image.ndim == 2 else out_image), out_mask


class AugmentedSample:
    """Copy ``copy`` of ``sample``, in memory: ``load()`` gives :func:`augment_pair` of the
    sample's ``(image, mask)`` with a generator seeded by ``(seed, CRC-32 of the stem, copy)``."""

    def __init__(self, sample: Any, copy: int, seed: int = 0, *, index: int = 0) -> None:
        self.sample, self.copy, self.seed = sample, copy, seed
        stem = getattr(sample, "stem", None)
        self._key = zlib.crc32(stem.encode()) if isinstance(stem, str) else index
        self.stem = f"{stem if isinstance(stem, str) else index}-aug{copy}"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.sample.load()
        return augment_pair(np.asarray(image), np.asarray(mask), np.random.default_rng([self.seed, self._key, self.copy]))


def augmented_copies(samples: Sequence[Any], copies: int, seed: int = 0) -> list[Any]:
    """``samples`` followed by ``copies`` :class:`AugmentedSample` of each (sample by sample).

    Raises:
        ValueError: If ``copies`` is not a non-negative integer.
    """
    if isinstance(copies, bool) or not isinstance(copies, int | np.integer) or copies < 0:
        raise ValueError(f"augment: expected a number of copies >= 0, got {copies!r}")
    return [*samples, *(AugmentedSample(s, c, seed, index=i) for i, s in enumerate(samples) for c in range(int(copies)))]
