"""Value types shared by prompt providers, segmenters and pipelines.

Coordinates are always in input-image pixels, ``x`` to the right and ``y`` down,
with the pixel centre of the top-left pixel at ``(0, 0)``. Boxes are ``xyxy``:
``(x_min, y_min, x_max, y_max)`` inclusive of the extreme pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validation import describe

__all__ = ["ImageEncoding", "PromptMasks", "Prompts", "SegmentationResult"]


def _as_float_array(value: Any, *, name: str, ndim: int, last: int) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected numbers, got {describe(value)}") from exc
    if array.shape == (0,):
        # An empty list (e.g. ``to_dict()`` of zero prompts) means zero prompts.
        array = array.reshape((0,) * (ndim - 1) + (last,))
    if array.ndim != ndim or array.shape[-1] != last:
        expected = "(N, 4)" if ndim == 2 else "(N, P, 2)"
        raise ValueError(f"{name}: expected shape {expected}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite coordinates, got NaN or infinite values")
    return array


@dataclass(frozen=True, eq=False)
class Prompts:
    """Prompts for one image: ``N`` prompts, each a box, a set of points, or both.

    Prompt ``i`` is made of ``box_xyxy[i]`` (if boxes are given) and the points
    ``points_xy[i]`` with labels ``point_labels[i]`` (if points are given). When both
    are given they must describe the same number of prompts ``N``.

    Attributes:
        box_xyxy: ``(N, 4)`` float32 boxes ``(x_min, y_min, x_max, y_max)`` in
            input-image pixels, or None.
        points_xy: ``(N, P, 2)`` float32 point coordinates ``(x, y)`` in
            input-image pixels, or None.
        point_labels: ``(N, P)`` int64 labels, 1 = foreground, 0 = background,
            -1 = padding (not a point: lets prompts with fewer points share one
            batch, as in SAM's prompt encoder). Defaults to all foreground when
            points are given without labels.
    """

    box_xyxy: np.ndarray | None = None
    points_xy: np.ndarray | None = None
    point_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = self.box_xyxy
        if boxes is not None:
            boxes = _as_float_array(boxes, name="box_xyxy", ndim=2, last=4)
            if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
                raise ValueError(f"box_xyxy: expected x_min <= x_max and y_min <= y_max for every box, got {boxes.tolist()}")
        points, labels = self.points_xy, self.point_labels
        if points is not None:
            points = _as_float_array(points, name="points_xy", ndim=3, last=2)
            if labels is None:
                labels = np.ones(points.shape[:2], dtype=np.int64)
            labels = np.asarray(labels)
            if labels.size == 0 and points.size == 0:
                labels = labels.reshape(points.shape[:2])
            if labels.shape != points.shape[:2]:
                raise ValueError(f"point_labels: expected shape {points.shape[:2]} to match points_xy, got shape {labels.shape}")
            if not np.isin(labels, (-1, 0, 1)).all():
                raise ValueError(
                    f"point_labels: expected 1 (foreground), 0 (background) or -1 (padding), got {np.unique(labels)}"
                )
            labels = labels.astype(np.int64)
        elif labels is not None:
            raise ValueError("point_labels: given without points_xy")
        if boxes is not None and points is not None and len(boxes) != len(points):
            raise ValueError(f"points_xy: expected {len(boxes)} prompts to match box_xyxy, got {len(points)}")
        object.__setattr__(self, "box_xyxy", boxes)
        object.__setattr__(self, "points_xy", points)
        object.__setattr__(self, "point_labels", labels)

    @classmethod
    def coerce(cls, value: Any, *, name: str = "prompts") -> Prompts:
        """Prompts from the usual shorthands.

        Accepts :class:`Prompts`; one box ``(x0, y0, x1, y1)``; a list or ``(N, 4)``
        array of boxes; or a dict with ``"boxes"`` (or ``"box"``/``"box_xyxy"``),
        ``"points"`` (``(P, 2)`` for one prompt or ``(N, P, 2)``) and ``"labels"``
        (``(P,)`` or ``(N, P)``; default all foreground).

        Raises:
            TypeError, ValueError: Naming ``name``, the forms accepted and what came.
        """
        if isinstance(value, Prompts):
            return value
        forms = "Prompts, a box (x0, y0, x1, y1), a list/(N, 4) array of boxes, or a dict {'boxes': ..., 'points': ..., 'labels': ...}"
        if isinstance(value, dict):
            aliases = {
                "boxes": "box_xyxy",
                "box": "box_xyxy",
                "box_xyxy": "box_xyxy",
                "points": "points_xy",
                "points_xy": "points_xy",
                "labels": "point_labels",
                "point_labels": "point_labels",
            }
            unknown = sorted(set(value) - set(aliases))
            if unknown:
                raise ValueError(f"{name}: unknown keys {unknown}; expected {forms}")
            fields: dict[str, Any] = {}
            for key, item in value.items():
                if item is not None:
                    fields[aliases[key]] = item
            boxes = fields.get("box_xyxy")
            if boxes is not None and np.ndim(boxes) == 1:
                fields["box_xyxy"] = np.reshape(np.asarray(boxes, dtype=np.float32), (1, -1))
            points = fields.get("points_xy")
            if points is not None and np.ndim(points) == 2:  # the points of one prompt
                fields["points_xy"] = np.asarray(points, dtype=np.float32)[None]
                if fields.get("point_labels") is not None and np.ndim(fields["point_labels"]) == 1:
                    fields["point_labels"] = np.asarray(fields["point_labels"])[None]
            return cls(**fields)
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name}: expected {forms}, got {describe(value)}")
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected {forms}, got {describe(value)}") from None
        if array.shape == (4,):
            array = array[None]
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(f"{name}: expected {forms}, got an array of shape {array.shape}")
        return cls(box_xyxy=array)

    @classmethod
    def empty(cls) -> Prompts:
        """No prompt at all (the provider found nothing in the image)."""
        return cls(box_xyxy=np.zeros((0, 4), dtype=np.float32))

    @property
    def n(self) -> int:
        """Number of prompts ``N``."""
        if self.box_xyxy is not None:
            return len(self.box_xyxy)
        if self.points_xy is not None:
            return len(self.points_xy)
        return 0

    def __len__(self) -> int:
        return self.n

    def clipped_to(self, size_hw: tuple[int, int], *, name: str = "prompts") -> Prompts:
        """Return the prompts with boxes clipped to the image and points checked.

        Boxes partly outside are clipped to the pixel grid ``[0, W-1] x [0, H-1]``.
        Points must lie on the image, ``[-0.5, W-0.5] x [-0.5, H-0.5]`` (pixel
        edges), and are returned unchanged.

        Args:
            size_hw: Image ``(height, width)``.
            name: Parameter name used in error messages.

        Raises:
            ValueError: If a box or point lies entirely outside the image (clipping
                would silently invent a prompt the caller did not mean).
        """
        h, w = size_hw
        boxes = self.box_xyxy
        if boxes is not None and len(boxes):
            outside = (boxes[:, 2] < 0) | (boxes[:, 3] < 0) | (boxes[:, 0] > w - 1) | (boxes[:, 1] > h - 1)
            if outside.any():
                raise ValueError(
                    f"{name}.box_xyxy: expected boxes overlapping the {w}x{h} (WxH) image, "
                    f"got boxes entirely outside it: {boxes[outside].tolist()}"
                )
            boxes = boxes.copy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
        points = self.points_xy
        if points is not None and points.size:
            bad = (points[..., 0] < -0.5) | (points[..., 0] > w - 0.5) | (points[..., 1] < -0.5) | (points[..., 1] > h - 0.5)
            bad &= self.point_labels != -1  # padding is not a point
            if bad.any():
                raise ValueError(f"{name}.points_xy: expected points inside the {w}x{h} (WxH) image, got {points[bad].tolist()}")
        return Prompts(box_xyxy=boxes, points_xy=points, point_labels=self.point_labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly representation (lists of floats / ints, None when absent)."""
        return {
            "box_xyxy": None if self.box_xyxy is None else self.box_xyxy.round(2).tolist(),
            "points_xy": None if self.points_xy is None else self.points_xy.round(2).tolist(),
            "point_labels": None if self.point_labels is None else self.point_labels.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prompts:
        """Inverse of :meth:`to_dict`."""
        return cls(
            box_xyxy=data.get("box_xyxy"),
            points_xy=data.get("points_xy"),
            point_labels=data.get("point_labels"),
        )

    def __repr__(self) -> str:
        parts = []
        if self.box_xyxy is not None:
            parts.append(f"box_xyxy={self.box_xyxy.tolist()}")
        if self.points_xy is not None:
            parts.append(f"points_xy=<{self.points_xy.shape[0]}x{self.points_xy.shape[1]} points>")
        return f"Prompts(n={self.n}, {', '.join(parts)})"


@dataclass(frozen=True, eq=False)
class ImageEncoding:
    """An image encoded once by a segmenter, reusable for any number of prompts.

    Attributes:
        features: Backend-specific embedding (for SAM-family models a
            ``torch.Tensor`` of shape ``(1, C, h, w)``).
        size_hw: ``(height, width)`` of the original input image in pixels.
        input_size_hw: ``(height, width)`` of the resized image inside the
            model's square input before padding.
        model_id: Identifies the model weights and preprocessing that produced
            the encoding; a segmenter refuses encodings made by another model.
    """

    features: Any
    size_hw: tuple[int, int]
    input_size_hw: tuple[int, int]
    model_id: str

    def __repr__(self) -> str:
        items = self.features if isinstance(self.features, (tuple, list)) else (self.features,)
        shapes = ", ".join(str(tuple(getattr(f, "shape", ()))) for f in items)
        return (
            f"ImageEncoding(model_id={self.model_id!r}, size_hw={tuple(self.size_hw)}, "
            f"input_size_hw={tuple(self.input_size_hw)}, features=[{shapes}])"
        )


@dataclass(frozen=True, eq=False)
class PromptMasks:
    """What a segmenter decodes for ``N`` prompts against one encoding.

    Attributes:
        probabilities: ``(N, H, W)`` float32 foreground probabilities in ``[0, 1]``
            at the input-image resolution.
        scores: ``(N,)`` float32 quality score per prompt (the model's predicted IoU).
    """

    probabilities: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """The result of a pipeline on one image.

    Attributes:
        mask: ``(H, W)`` bool final mask (thresholded, combined, post-processed).
        probabilities: ``(H, W)`` float32 combined foreground probability (for the
            ``union`` combination the pixel-wise maximum over prompts; zeros when
            there was no prompt).
        prompt_masks: ``(N, H, W)`` bool mask of each prompt after thresholding.
        scores: ``(N,)`` float32 predicted quality of each prompt's mask.
        prompts: The prompts that were decoded.
        note: Why the mask is empty without the model having been asked (for
            example ``"no prompt"``), else None.
    """

    mask: np.ndarray
    probabilities: np.ndarray
    prompt_masks: np.ndarray
    scores: np.ndarray
    prompts: Prompts
    note: str | None = field(default=None)

    @property
    def has_prompts(self) -> bool:
        """Whether the prompt provider gave at least one prompt."""
        return self.prompts.n > 0

    def __repr__(self) -> str:
        h, w = self.mask.shape[:2]
        area = int(np.count_nonzero(self.mask))
        scores = "[" + ", ".join(f"{float(v):.3f}" for v in np.asarray(self.scores).ravel()[:8])
        scores += ", ...]" if np.size(self.scores) > 8 else "]"
        kinds = [k for k, v in (("boxes", self.prompts.box_xyxy), ("points", self.prompts.points_xy)) if v is not None and len(v)]
        note = f", note={self.note!r}" if self.note else ""
        return (
            f"SegmentationResult(shape=({h}, {w}), area={area} px ({area / max(h * w, 1):.1%}), "
            f"prompts={self.prompts.n}{' ' + '+'.join(kinds) if kinds else ''}, scores={scores}{note})"
        )
