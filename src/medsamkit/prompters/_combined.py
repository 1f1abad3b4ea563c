"""Boxes and points in the same prompts (paper 002's third prompt type)."""

from __future__ import annotations

import numpy as np

from .._protocols import PromptProvider, prompts_for
from .._types import ImageEncoding, Prompts

__all__ = ["BoxesWithPointsPrompter"]


class BoxesWithPointsPrompter:
    """Each box of one provider, with the point groups of another that fall inside it.

    Paper 002 compares boxes, mean-mask points and both. Here prompt ``i`` is box
    ``i`` of ``boxes`` together with every point prompt of ``points`` whose centroid
    lies inside that box (for chest X-rays: each lung's box with that lung's
    mean-mask points). Boxes without points keep only the box; point groups outside
    every box are dropped. Prompts with fewer points are padded with label -1 (not a
    point), as SAM's prompt encoder expects.

    Args:
        boxes: A provider giving boxes (e.g. ``OracleBoxPrompter``, ``YOLOBoxPrompter``).
        points: A provider giving points (e.g. ``MeanMaskPointPrompter``).
    """

    def __init__(self, boxes: PromptProvider, points: PromptProvider) -> None:
        for name, value in (("boxes", boxes), ("points", points)):
            if not callable(value) or not hasattr(value, "requires_target"):
                raise TypeError(f"{name}: expected a prompt provider, got {type(value).__name__}")
        self.boxes = boxes
        self.points = points
        self.requires_target = bool(boxes.requires_target or points.requires_target)
        self.uses_encoding = bool(getattr(boxes, "uses_encoding", False) or getattr(points, "uses_encoding", False))

    def __repr__(self) -> str:
        return f"BoxesWithPointsPrompter({self.boxes!r}, {self.points!r})"

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Box prompts, each with the points inside it."""
        box_prompts = prompts_for(self.boxes, image, target=target, encoding=encoding)
        point_prompts = prompts_for(self.points, image, target=target, encoding=encoding)
        boxes = box_prompts.box_xyxy
        if boxes is None or len(boxes) == 0:
            return Prompts.empty()
        if point_prompts.points_xy is None or point_prompts.n == 0:
            return Prompts(box_xyxy=boxes)
        groups: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(boxes))]
        point_labels = point_prompts.point_labels
        assert point_labels is not None  # Prompts: points always come with labels
        for pts, labels in zip(point_prompts.points_xy, point_labels):
            real = labels != -1
            if not real.any():
                continue
            cx, cy = pts[real].mean(axis=0)
            inside = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
            if inside.any():
                groups[int(np.flatnonzero(inside)[0])].append((pts[real], labels[real]))
        merged = [
            (np.concatenate([p for p, _ in g]), np.concatenate([lab for _, lab in g])) if g else (np.zeros((0, 2)), np.zeros(0))
            for g in groups
        ]
        k = max(len(p) for p, _ in merged)
        if k == 0:
            return Prompts(box_xyxy=boxes)
        points = np.zeros((len(boxes), k, 2), dtype=np.float32)
        labels = np.full((len(boxes), k), -1, dtype=np.int64)
        for i, (p, lab) in enumerate(merged):
            points[i, : len(p)] = p
            labels[i, : len(p)] = lab
        return Prompts(box_xyxy=boxes, points_xy=points, point_labels=labels)
