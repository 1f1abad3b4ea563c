"""Prompts drawn from the reference mask: oracle boxes and perturbed oracle boxes."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

from .._geometry import component_boxes_xyxy, grow_boxes_xyxy, mask_to_xyxy
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import as_image, as_mask

__all__ = ["OracleBoxPrompter", "PerturbedBoxPrompter"]

BoxMode = Literal["components", "whole"]


def _require_target(target: np.ndarray | None, image: np.ndarray, owner: str) -> np.ndarray:
    if target is None:
        raise ValueError(
            f"target: {owner} draws its boxes from the reference mask, so it needs "
            "target=<(H, W) mask>; got None. Use a learned prompt provider for images without masks."
        )
    image = as_image(image)
    return as_mask(target, name="target", size_hw=image.shape[:2])


@register_component("prompter", "oracle-box")
class OracleBoxPrompter:
    """Boxes around the reference mask (the upper bound of any box prompter).

    Args:
        mode: ``"components"`` gives one box per 8-connected component (for
            example one per lung), ``"whole"`` one box around the whole mask.
        min_area: Components smaller than this many pixels get no box (annotation
            specks); the largest component always gets one.

    An empty reference mask gives no prompt (and so an empty prediction).
    """

    requires_target = True
    uses_encoding = False

    def __init__(self, *, mode: BoxMode = "components", min_area: int = 16) -> None:
        if mode not in ("components", "whole"):
            raise ValueError(f"mode: expected 'components' or 'whole', got {mode!r}")
        if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
            raise ValueError(f"min_area: expected a non-negative int (pixels), got {min_area!r}")
        self.mode = mode
        self.min_area = int(min_area)

    def __repr__(self) -> str:
        return f"OracleBoxPrompter(mode={self.mode!r}, min_area={self.min_area})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs)."""
        return {"mode": self.mode, "min_area": self.min_area}

    def boxes(self, target: np.ndarray) -> np.ndarray:
        """``(N, 4)`` oracle boxes for a validated ``(H, W)`` bool mask."""
        if self.mode == "whole":
            box = mask_to_xyxy(target)
            return np.zeros((0, 4), np.float32) if box is None else box[None]
        return component_boxes_xyxy(target, min_area=self.min_area)

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Boxes for ``image`` from its reference mask ``target`` (required)."""
        mask = _require_target(target, image, "OracleBoxPrompter")
        return Prompts(box_xyxy=self.boxes(mask))


@register_component("prompter", "perturbed-box")
class PerturbedBoxPrompter:
    """Oracle boxes grown by a margin and/or with seeded random corner jitter.

    Paper 000's box study grows each side by 0, 5 or 10 px (DS0/DS5/DS10);
    paper 002 trains with boxes whose coordinates are randomly perturbed.

    Args:
        margin: Pixels added to every side of every box (negative shrinks).
        jitter: Maximum random shift of each box coordinate in pixels, drawn
            uniformly from ``[-jitter, +jitter]`` independently per coordinate.
        jitter_fraction: Additional maximum shift as a fraction of the box's own
            width (x coordinates) or height (y coordinates); SAM's training used 0.1.
        seed: Seed of the jitter. The random stream of each image is derived from
            the seed and the reference mask's content, so results do not depend on
            the order images are processed in (resumed runs give the same boxes).
        mode, min_area: As in :class:`OracleBoxPrompter`.
    """

    requires_target = True
    uses_encoding = False

    def __init__(
        self,
        *,
        margin: float = 0.0,
        jitter: float = 0.0,
        jitter_fraction: float = 0.0,
        seed: int = 0,
        mode: BoxMode = "components",
        min_area: int = 16,
    ) -> None:
        for name, value in (("margin", margin), ("jitter", jitter), ("jitter_fraction", jitter_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        for name, value in (("jitter", jitter), ("jitter_fraction", jitter_fraction)):
            if value < 0:
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.oracle = OracleBoxPrompter(mode=mode, min_area=min_area)
        self.margin = float(margin)
        self.jitter = float(jitter)
        self.jitter_fraction = float(jitter_fraction)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (
            f"PerturbedBoxPrompter(margin={self.margin}, jitter={self.jitter}, "
            f"jitter_fraction={self.jitter_fraction}, seed={self.seed})"
        )

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs)."""
        return {
            "margin": self.margin,
            "jitter": self.jitter,
            "jitter_fraction": self.jitter_fraction,
            "seed": self.seed,
            **self.oracle.params(),
        }

    def _rng(self, mask: np.ndarray) -> np.random.Generator:
        digest = hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=8).digest()
        return np.random.default_rng([self.seed, int.from_bytes(digest, "little")])

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Perturbed oracle boxes for ``image`` (``target`` required)."""
        mask = _require_target(target, image, "PerturbedBoxPrompter")
        boxes = self.oracle.boxes(mask)
        if len(boxes) == 0:
            return Prompts(box_xyxy=boxes)
        if self.jitter or self.jitter_fraction:
            size_wh = boxes[:, 2:] - boxes[:, :2] + 1
            sides = np.concatenate([size_wh, size_wh], axis=1)
            limit = self.jitter + self.jitter_fraction * sides
            boxes = boxes + self._rng(mask).uniform(-1.0, 1.0, size=boxes.shape) * limit
            boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
        return Prompts(box_xyxy=grow_boxes_xyxy(boxes, self.margin, mask.shape))
