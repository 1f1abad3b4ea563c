"""Mask post-processing steps: small callables ``mask -> mask`` chained by a pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._geometry import connected_components
from ._registry import register_component
from ._validation import as_mask

__all__ = ["FillHoles", "KeepLargestComponents", "RemoveSmallComponents"]


@register_component("postprocess", "keep-largest")
class KeepLargestComponents:
    """Keep the ``n`` largest 8-connected components (e.g. ``n=2`` for two lungs, 1 for a liver).

    Args:
        n: Number of components to keep.
    """

    name = "keep-largest"

    def __init__(self, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        self.n = n

    def __repr__(self) -> str:
        return f"KeepLargestComponents(n={self.n})"

    def params(self) -> dict[str, Any]:
        return {"n": self.n}

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool mask with only the ``n`` largest components."""
        mask = as_mask(mask, name="mask")
        labels, count = connected_components(mask)
        if count <= self.n:
            return mask
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        areas[0] = 0
        keep = np.argsort(-areas, kind="stable")[: self.n]
        return np.isin(labels, keep)


@register_component("postprocess", "remove-small")
class RemoveSmallComponents:
    """Drop components smaller than ``min_area`` pixels.

    Args:
        min_area: Minimum component area in pixels.
    """

    name = "remove-small"

    def __init__(self, min_area: int = 64) -> None:
        if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 0:
            raise ValueError(f"min_area: expected a non-negative int (pixels), got {min_area!r}")
        self.min_area = min_area

    def __repr__(self) -> str:
        return f"RemoveSmallComponents(min_area={self.min_area})"

    def params(self) -> dict[str, Any]:
        return {"min_area": self.min_area}

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool mask without components below ``min_area``."""
        mask = as_mask(mask, name="mask")
        labels, count = connected_components(mask)
        if count == 0:
            return mask
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        small = areas < self.min_area
        small[0] = True
        return ~small[labels]


@register_component("postprocess", "fill-holes")
class FillHoles:
    """Fill holes (background regions not connected to the image border)."""

    name = "fill-holes"

    def __repr__(self) -> str:
        return "FillHoles()"

    def params(self) -> dict[str, Any]:
        return {}

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool mask with holes filled."""
        from scipy import ndimage

        return ndimage.binary_fill_holes(as_mask(mask, name="mask"))
