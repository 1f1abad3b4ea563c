"""``segmenter(image, boxes=...)``: one image, prompts you already have, one call."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._types import Prompts, SegmentationResult
from ._validation import as_image, check_probability

__all__ = ["OneShotMixin"]


class OneShotMixin:
    """Makes a segmenter callable: encode, decode the given prompts, threshold, in one call.

    For one image and prompts you already have (as in other SAM front-ends). For a
    folder or automatic prompts use :class:`~medsamkit.Pipeline` and
    :func:`~medsamkit.evaluate`, which reuse encodings and write results.
    """

    def __call__(
        self,
        image: Any,
        *,
        boxes: Any = None,
        points: Any = None,
        labels: Any = None,
        prompts: Any = None,
        threshold: float = 0.5,
        combine: str = "union",
    ) -> SegmentationResult:
        """Segment ``image`` (an array or an image file's path) with the given prompts.

        The same steps as a :class:`~medsamkit.Pipeline` with a ``FixedPrompter`` and no
        post-processing: encode, decode every prompt, threshold, combine.

        Args:
            image: ``(H, W)``/``(H, W, C)`` array, or a path (read with ``read_image``).
            boxes: One box ``(x0, y0, x1, y1)`` or ``(N, 4)`` boxes, in image pixels.
            points: ``(P, 2)`` points of one prompt or ``(N, P, 2)``, ``(x, y)`` pixels.
            labels: Point labels (1 foreground, 0 background); default all foreground.
            prompts: A :class:`~medsamkit.Prompts` (or a shorthand of
                :meth:`Prompts.coerce`) instead of ``boxes``/``points``.
            threshold: Probability threshold in ``[0, 1]``.
            combine: ``"union"`` (any prompt) or ``"best"`` (the prompt with the highest score).

        Returns:
            A :class:`~medsamkit.SegmentationResult`.
        """
        if prompts is None:
            if boxes is None and points is None:
                raise ValueError("prompts: give boxes=..., points=... (with labels=...) or prompts=...; got none")
            prompts = {"boxes": boxes, "points": points, "labels": labels}
        elif boxes is not None or points is not None or labels is not None:
            raise ValueError("prompts: give either prompts=... or boxes/points/labels, not both")
        if combine not in ("union", "best"):
            raise ValueError(f"combine: expected 'union' or 'best', got {combine!r}")
        threshold = check_probability(threshold, name="threshold")
        if isinstance(image, (str, os.PathLike)):
            from .data import read_image

            image = read_image(image)
        image = as_image(image)
        size_hw = image.shape[:2]
        given = Prompts.coerce(prompts, name="prompts")
        if given.n == 0:
            return SegmentationResult(
                mask=np.zeros(size_hw, dtype=bool),
                probabilities=np.zeros(size_hw, dtype=np.float32),
                prompt_masks=np.zeros((0, *size_hw), dtype=bool),
                scores=np.zeros(0, dtype=np.float32),
                prompts=given,
                note="no prompt",
            )
        given = given.clipped_to(size_hw)
        decoded = self.decode(self.encode(image), given)  # type: ignore[attr-defined]
        prompt_masks = decoded.probabilities > threshold
        if combine == "best":
            best = int(np.argmax(decoded.scores))
            probabilities, mask = decoded.probabilities[best], prompt_masks[best].copy()
        else:
            probabilities, mask = decoded.probabilities.max(axis=0), prompt_masks.any(axis=0)
        return SegmentationResult(
            mask=mask,
            probabilities=probabilities.astype(np.float32, copy=False),
            prompt_masks=prompt_masks,
            scores=np.asarray(decoded.scores, dtype=np.float32),
            prompts=given,
        )
