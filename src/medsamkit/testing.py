"""Test doubles: segment without weights in your own test suite.

``FakeSegmenter`` follows the :class:`~medsamkit.Segmenter` protocol with plain
numpy, so pipelines, evaluation and your own code can be tested in milliseconds::

    from medsamkit import Pipeline, OracleBoxPrompter
    from medsamkit.testing import FakeSegmenter, make_blob_image

    image, mask = make_blob_image(seed=0)
    result = Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ._oneshot import OneShotMixin
from ._registry import register_component
from ._types import ImageEncoding, PromptMasks, Prompts
from ._validation import as_image

__all__ = ["FakeSegmenter", "make_blob_image", "make_presence_folder"]


@register_component("segmenter", "fake")
class FakeSegmenter(OneShotMixin):
    """A deterministic segmenter without a model.

    ``encode`` stores the image scaled to ``[0, 1]``; ``decode`` returns, for each
    prompt:

    * ``mode="intensity"``: inside the prompt's box, pixels brighter than the mean
      of the box get probability 0.9, others 0.1; outside the box 0.0. Points
      without a box use a box of ``point_radius`` around the points. On images
      with bright objects on a dark background this segments the object for real.
    * ``mode="box"``: 0.9 inside the box (or point discs), 0.0 outside.

    Scores are the mean probability inside the box. ``encode_calls`` and
    ``decode_calls`` count calls so tests can check an image is encoded once.

    Args:
        mode: ``"intensity"`` or ``"box"``.
        point_radius: Half-side in pixels of the region a point-only prompt covers.
    """

    def __init__(self, *, mode: Literal["intensity", "box"] = "intensity", point_radius: int = 20) -> None:
        if mode not in ("intensity", "box"):
            raise ValueError(f"mode: expected 'intensity' or 'box', got {mode!r}")
        self.mode = mode
        self.point_radius = int(point_radius)
        self.model_id = f"fake:{mode}:{self.point_radius}"
        self.encode_calls = 0
        self.decode_calls = 0

    def __repr__(self) -> str:
        return f"FakeSegmenter(mode={self.mode!r})"

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "point_radius": self.point_radius}

    def encode(self, image: np.ndarray) -> ImageEncoding:
        image = as_image(image)
        self.encode_calls += 1
        gray = image.astype(np.float32)
        if gray.ndim == 3:
            gray = gray[..., :3].mean(axis=2)
        lo, hi = float(gray.min()), float(gray.max())
        gray = (gray - lo) / max(hi - lo, 1e-8)
        return ImageEncoding(features=gray, size_hw=gray.shape, input_size_hw=gray.shape, model_id=self.model_id)

    def _prompt_box(self, prompts: Prompts, i: int, size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        h, w = size_hw
        if prompts.box_xyxy is not None:
            x0, y0, x1, y1 = prompts.box_xyxy[i]
        else:
            assert prompts.points_xy is not None and prompts.point_labels is not None  # Prompts: boxes or points
            pts = prompts.points_xy[i][prompts.point_labels[i] == 1]
            if len(pts) == 0:
                return 0, 0, -1, -1
            r = self.point_radius
            x0, y0 = pts.min(axis=0) - r
            x1, y1 = pts.max(axis=0) + r
        return (
            int(np.clip(round(x0), 0, w - 1)),
            int(np.clip(round(y0), 0, h - 1)),
            int(np.clip(round(x1), 0, w - 1)),
            int(np.clip(round(y1), 0, h - 1)),
        )

    def decode(self, encoding: ImageEncoding, prompts: Prompts) -> PromptMasks:
        if not isinstance(encoding, ImageEncoding) or encoding.model_id != self.model_id:
            raise ValueError(f"encoding: expected an encoding made by {self.model_id!r}")
        self.decode_calls += 1
        gray = encoding.features
        h, w = encoding.size_hw
        prompts = prompts.clipped_to((h, w))
        probabilities = np.zeros((prompts.n, h, w), dtype=np.float32)
        scores = np.zeros(prompts.n, dtype=np.float32)
        for i in range(prompts.n):
            x0, y0, x1, y1 = self._prompt_box(prompts, i, (h, w))
            if x1 < x0 or y1 < y0:
                continue
            crop = gray[y0 : y1 + 1, x0 : x1 + 1]
            if self.mode == "intensity":
                region = np.where(crop > crop.mean(), 0.9, 0.1).astype(np.float32)
            else:
                region = np.full(crop.shape, 0.9, dtype=np.float32)
            probabilities[i, y0 : y1 + 1, x0 : x1 + 1] = region
            scores[i] = float(region.mean())
        return PromptMasks(probabilities=probabilities, scores=scores)


def make_blob_image(
    size_hw: tuple[int, int] = (96, 128),
    *,
    n_blobs: int = 1,
    seed: int = 0,
    dtype: Any = np.uint8,
    noise: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic image with bright elliptical blobs on a dark background, and its mask.

    Args:
        size_hw: ``(height, width)`` in pixels.
        n_blobs: Number of non-overlapping blobs (placed in separate vertical bands).
        seed: Random seed (positions, radii, noise).
        dtype: ``np.uint8``, ``np.uint16`` or a float dtype (``[0, 1]`` range).
        noise: Gaussian noise standard deviation as a fraction of the full range.

    Returns:
        ``(image (H, W) of dtype, mask (H, W) bool)``.
    """
    h, w = size_hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), dtype=bool)
    band = w / n_blobs
    for k in range(n_blobs):
        ry = rng.uniform(0.15, 0.3) * h
        rx = rng.uniform(0.25, 0.4) * band
        cy = rng.uniform(ry + 2, h - ry - 2)
        cx = band * k + band / 2 + rng.uniform(-0.05, 0.05) * band
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = np.where(mask, 0.75, 0.2) + rng.normal(0, noise, size=(h, w))
    image = np.clip(image, 0, 1)
    if np.issubdtype(np.dtype(dtype), np.integer):
        image = np.round(image * np.iinfo(dtype).max).astype(dtype)
    else:
        image = image.astype(dtype)
    return image, mask


def make_presence_folder(root: Any, n: int, *, size_hw: tuple[int, int] = (64, 80), seed: int = 0) -> Any:
    """Write a small image/mask folder with and without the target, for presence classifiers.

    Image ``i`` (``img_000.png``, ...) holds a blob (:func:`make_blob_image`) when ``i``
    is even and only dark noise (an empty mask) when it is odd. Every image gets three
    small bright specks, so the intensity range (and min-max scaling) does not tell
    the classes apart: a classifier must find the blob. Meant for tests of CAM boxes,
    SAM-Mix and other providers that learn presence.

    Args:
        root: Folder to create (``images/`` and ``masks/`` inside).
        n: Number of images.
        size_hw: ``(height, width)`` in pixels.
        seed: Seed of image ``0``; image ``i`` uses ``seed + i``.

    Returns:
        A :class:`~medsamkit.MaskFolder` of the written images.
    """
    from pathlib import Path

    from .data import MaskFolder, write_image, write_mask

    root = Path(root)
    for i in range(n):
        if i % 2 == 0:
            image, mask = make_blob_image(size_hw, seed=seed + i)
        else:
            rng = np.random.default_rng(10_000 + seed + i)
            image = np.round(np.clip(0.2 + rng.normal(0, 0.05, size_hw), 0, 1) * 255).astype(np.uint8)
            mask = np.zeros(size_hw, dtype=bool)
        rng = np.random.default_rng(20_000 + seed + i)
        for _ in range(3):  # specks in both classes: same min-max range, not a cue
            y, x = rng.integers(0, size_hw[0] - 2), rng.integers(0, size_hw[1] - 2)
            image[y : y + 2, x : x + 2] = 250
        write_image(root / "images" / f"img_{i:03d}.png", image)
        write_mask(root / "masks" / f"img_{i:03d}.png", mask)
    return MaskFolder(root)
