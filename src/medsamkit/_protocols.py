"""Extension points: anything with these methods plugs into a :class:`Pipeline`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ._types import ImageEncoding, PromptMasks, Prompts

__all__ = ["PromptProvider", "Segmenter"]


@runtime_checkable
class PromptProvider(Protocol):
    """Finds where to segment: turns an image into :class:`Prompts`.

    Attributes:
        requires_target: True for providers that read the reference mask (oracle
            and perturbed boxes); a pipeline passes ``target`` to them and they
            raise ``ValueError`` when it is missing.
    """

    requires_target: bool

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None) -> Prompts:
        """Return the prompts for ``image`` (``(H, W)`` or ``(H, W, C)``)."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """A promptable segmentation model: encode an image once, decode many prompts.

    Attributes:
        model_id: Identifies weights and preprocessing (used to check encodings
            and, later, as a cache key).
    """

    model_id: str

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """Run the image encoder once on ``image`` (``(H, W)`` or ``(H, W, C)``)."""
        ...

    def decode(self, encoding: ImageEncoding, prompts: Prompts) -> PromptMasks:
        """Decode all ``prompts`` against ``encoding`` in one batched call."""
        ...
