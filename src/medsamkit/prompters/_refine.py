"""Tighter automatic boxes: refine any provider's prompts with the segmenter's own output.

An automatic provider's boxes are often loose, split one target into pieces or
catch a speck; the segmenter itself is good at outlining a target once a box
roughly covers it. :class:`RefinedPrompter` decodes the provider's boxes, takes
each component of the resulting mask as a new box, decodes again, and repeats
until the boxes stop moving. Components the segmenter itself rates poorly (low
predicted IoU) or that are tiny are dropped on the way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._geometry import component_boxes_xyxy
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import check_probability

__all__ = ["RefinedPrompter"]


def _from_config(*, base: dict[str, Any], state: Any = None, **params: Any) -> RefinedPrompter:
    """Build from a config: ``base`` is the wrapped provider's ``{"name", "params"}``; a ``state``
    file (``Pipeline.save`` stores the fitted base's state at the top level) goes to the base."""
    from .._registry import build_prompter

    if not isinstance(base, dict) or "name" not in base:
        raise ValueError(f"base: expected the base prompter as {{'name': ..., 'params': {{...}}}}, got {base!r}")
    base_params = dict(base.get("params", {}))
    if state is not None:
        base_params["state"] = state
    return RefinedPrompter(build_prompter(base["name"], **base_params), **params)


@register_component("prompter", "refined", build=_from_config)
class RefinedPrompter:
    """Wrap a prompt provider; re-box its prompts from the segmenter's masks until stable.

    One round: decode the current boxes against the image's encoding, threshold the
    union of the masks at ``threshold``, keep every 8-connected component of at least
    ``min_area_fraction`` of the image (the largest ``max_boxes``) and box it. The
    next round decodes those boxes. Rounds stop when no box moves by more than
    ``tolerance_px`` pixels, or after ``iterations`` rounds. Prompts whose decoded
    mask has a predicted IoU below ``min_score`` are dropped before the union (all of
    them: no prompt, an empty result). A provider that returns points only is passed
    through unchanged.

    The wrapper needs the segmenter: a :class:`~medsamkit.Pipeline` hands it over
    when it is built (:meth:`bind_segmenter`), or pass ``segmenter=``. With a
    :class:`~medsamkit.CachedSegmenter` the final boxes' decode is a cache hit when
    the pipeline decodes them again.

    Args:
        base: The provider whose prompts are refined (for example a fitted
            :class:`EmbeddingHeadPrompter`).
        segmenter: The segmenter to decode with (default: the pipeline's).
        iterations: At most this many re-boxing rounds (0: only the score filter).
        tolerance_px: Boxes that move less than this are stable.
        min_area_fraction: Smallest component (fraction of the image area) kept.
        max_boxes: At most this many boxes, largest components first.
        min_score: Drop prompts whose predicted IoU is below this, in ``[0, 1]``.
        threshold: Probability threshold of the masks, in ``[0, 1]``.
        margin_fraction: Each new box grows by this fraction of its width / height
            per side (a mask's tight box tends to shrink round after round on large
            targets whose edges the segmenter under-segments).
    """

    uses_encoding = True
    requires_target = False
    """Class default; an instance reads the reference mask exactly when its base provider does."""

    def __init__(
        self,
        base: Any,
        *,
        segmenter: Any = None,
        iterations: int = 3,
        tolerance_px: float = 2.0,
        min_area_fraction: float = 0.002,
        max_boxes: int = 4,
        min_score: float = 0.0,
        threshold: float = 0.5,
        margin_fraction: float = 0.0,
    ) -> None:
        if not callable(base) or not hasattr(base, "requires_target"):
            raise TypeError(f"base: expected a PromptProvider, got {type(base).__name__}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations: expected a non-negative int, got {iterations!r}")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes: expected a positive int, got {max_boxes!r}")
        if isinstance(tolerance_px, bool) or not isinstance(tolerance_px, (int, float)) or tolerance_px < 0:
            raise ValueError(f"tolerance_px: expected a non-negative number, got {tolerance_px!r}")
        self.base = base
        self.requires_target = bool(base.requires_target)
        self.segmenter = segmenter
        self.iterations = iterations
        self.tolerance_px = float(tolerance_px)
        self.min_area_fraction = check_probability(min_area_fraction, name="min_area_fraction")
        self.max_boxes = max_boxes
        self.min_score = check_probability(min_score, name="min_score")
        self.threshold = check_probability(threshold, name="threshold")
        if isinstance(margin_fraction, bool) or not isinstance(margin_fraction, (int, float)) or not 0 <= margin_fraction <= 1:
            raise ValueError(f"margin_fraction: expected a number in [0, 1], got {margin_fraction!r}")
        self.margin_fraction = float(margin_fraction)
        self.last_rounds = 0

    def __repr__(self) -> str:
        return f"RefinedPrompter({self.base!r}, iterations={self.iterations}, min_score={self.min_score})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (the base provider as ``{"name", "params"}``)."""
        from .._registry import component_config

        return {
            "base": component_config(self.base),
            "iterations": self.iterations,
            "tolerance_px": self.tolerance_px,
            "min_area_fraction": self.min_area_fraction,
            "max_boxes": self.max_boxes,
            "min_score": self.min_score,
            "threshold": self.threshold,
            "margin_fraction": self.margin_fraction,
        }

    def bind_segmenter(self, segmenter: Any) -> None:
        """Use ``segmenter`` for the refinement (unless one was given) and let the base check it."""
        bind = getattr(self.base, "bind_segmenter", None)
        if callable(bind):
            bind(segmenter)
        if self.segmenter is None:
            self.segmenter = segmenter

    @property
    def state_suffix(self) -> str:
        return str(getattr(self.base, "state_suffix", ".npz"))

    def save(self, path: Any) -> Any:
        """Save the base provider's fitted state (the refinement itself has none)."""
        save = getattr(self.base, "save", None)
        if not callable(save):
            raise TypeError(f"base: {type(self.base).__name__} has no fitted state to save")
        return save(path)

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """The base provider's prompts, re-boxed from the segmenter's masks until stable."""
        if self.segmenter is None:
            raise ValueError("segmenter: RefinedPrompter decodes with the segmenter; use it inside a Pipeline or pass segmenter=")
        if encoding is None:
            encoding = self.segmenter.encode(image)
        kwargs: dict[str, Any] = {}
        if self.requires_target:
            kwargs["target"] = target
        if getattr(self.base, "uses_encoding", False):
            kwargs["encoding"] = encoding
        prompts = self.base(image, **kwargs)
        self.last_rounds = 0
        if prompts.n == 0 or prompts.box_xyxy is None:
            return prompts
        boxes = prompts.clipped_to(encoding.size_hw).box_xyxy
        boxes = np.asarray(boxes, dtype=np.float32)
        h, w = encoding.size_hw
        min_area = max(1, int(self.min_area_fraction * h * w))
        for round_ in range(self.iterations + 1):
            decoded = self.segmenter.decode(encoding, Prompts(box_xyxy=boxes))
            keep = decoded.scores >= self.min_score
            if not keep.any():
                return Prompts.empty()
            if round_ == self.iterations:
                return Prompts(box_xyxy=boxes[keep])
            union = (decoded.probabilities[keep] > self.threshold).any(axis=0)
            new = component_boxes_xyxy(union, min_area=min_area, keep_largest=False)[: self.max_boxes]
            if len(new) and self.margin_fraction:
                size = new[:, 2:] - new[:, :2] + 1
                new = np.concatenate([new[:, :2] - self.margin_fraction * size, new[:, 2:] + self.margin_fraction * size], axis=1)
                new = np.asarray(Prompts(box_xyxy=new).clipped_to((h, w)).box_xyxy)
            self.last_rounds = round_ + 1
            if len(new) == 0:
                return Prompts.empty()
            if _same_boxes(new, boxes[keep], self.tolerance_px):
                return Prompts(box_xyxy=new)
            boxes = new
        return Prompts(box_xyxy=boxes)  # pragma: no cover - the loop always returns


def _same_boxes(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    """True when ``a`` and ``b`` hold the same number of boxes, each within ``tolerance`` px (any order)."""
    if len(a) != len(b):
        return False
    used = set()
    for box in a:
        diffs = [np.abs(box - other).max() if j not in used else np.inf for j, other in enumerate(b)]
        j = int(np.argmin(diffs))
        if diffs[j] > tolerance:
            return False
        used.add(j)
    return True
