"""Mask and box geometry helpers (connected components, boxes, box growth, model frames)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_mask

__all__ = ["component_boxes_xyxy", "connected_components", "grow_boxes_xyxy", "mask_to_xyxy", "target_at_logits"]

_EIGHT = np.ones((3, 3), dtype=bool)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 8-connected foreground components.

    Args:
        mask: ``(H, W)`` bool mask.

    Returns:
        ``(labels, n)``: int32 ``(H, W)`` labels (0 = background) and the count.
    """
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=_EIGHT)
    return labels.astype(np.int32, copy=False), int(n)


def mask_to_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """Tight box around all foreground pixels.

    Args:
        mask: ``(H, W)`` mask, non-zero = foreground.

    Returns:
        ``(4,)`` float32 ``(x_min, y_min, x_max, y_max)`` in pixels (inclusive), or
        None when the mask is empty.
    """
    mask = as_mask(mask, name="mask")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def component_boxes_xyxy(mask: np.ndarray, *, min_area: int = 0, keep_largest: bool = True) -> np.ndarray:
    """One tight box per 8-connected component, largest component first.

    Components of equal area are ordered by the top, then the left edge of their box.

    Components smaller than ``min_area`` pixels are dropped, except that with
    ``keep_largest`` the largest component is always kept, so a small but real
    structure of a reference mask still gets a box.

    Args:
        mask: ``(H, W)`` mask, non-zero = foreground.
        min_area: Minimum component area in pixels.
        keep_largest: Keep the largest component even when it is below ``min_area``.

    Returns:
        ``(N, 4)`` float32 boxes; ``N = 0`` for an empty mask.
    """
    import cv2

    mask = as_mask(mask, name="mask")
    # One OpenCV pass gives every component's box and area.
    n_labels, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    n = int(n_labels) - 1
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    stats = stats[1:]
    areas = stats[:, cv2.CC_STAT_AREA]
    order = np.lexsort((stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP], -areas))  # ties: top, then left
    keep = [i for i in order if areas[i] >= min_area] or ([order[0]] if keep_largest else [])
    if not keep:
        return np.zeros((0, 4), dtype=np.float32)
    x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
    w, h = stats[keep, cv2.CC_STAT_WIDTH], stats[keep, cv2.CC_STAT_HEIGHT]
    return np.stack([x, y, x + w - 1, y + h - 1], axis=1).astype(np.float32)


def grow_boxes_xyxy(box_xyxy: np.ndarray, margin: float, size_hw: tuple[int, int]) -> np.ndarray:
    """Grow (or with a negative margin shrink) each box by ``margin`` pixels per side, clipped to the image.

    Args:
        box_xyxy: ``(N, 4)`` boxes in pixels.
        margin: Pixels added on every side.
        size_hw: Image ``(height, width)`` used for clipping.

    Returns:
        ``(N, 4)`` float32 boxes; a shrunk box never inverts (it collapses to its centre).
    """
    h, w = size_hw
    boxes = np.asarray(box_xyxy, dtype=np.float32).copy()
    boxes[:, :2] -= margin
    boxes[:, 2:] += margin
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    boxes[:, :2] = np.minimum(boxes[:, :2], centre)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], centre)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
    return boxes


def grow_boxes_by_fraction(box_xyxy: np.ndarray, fraction: float, size_hw: tuple[int, int]) -> np.ndarray:
    """Grow (``fraction`` < 0: shrink) each inclusive-pixel box by ``fraction`` of its width / height per side,
    clipped to the image (:func:`grow_boxes_xyxy`: a shrunk box never inverts).

    Returns:
        ``(N, 4)`` float32 boxes.
    """
    boxes = np.asarray(box_xyxy, dtype=np.float32).copy()
    size = boxes[:, 2:] - boxes[:, :2] + 1
    boxes[:, :2] -= fraction * size
    boxes[:, 2:] += fraction * size
    return grow_boxes_xyxy(boxes, 0, size_hw)


def target_at_logits(mask: np.ndarray, input_size_hw: tuple[int, int], image_size: int, logits_side: int) -> Any:
    """A reference mask in a SAM-family model's low-resolution frame (the training target).

    The mask is resized like the image (long side to ``image_size``, giving
    ``input_size_hw``), padded at the bottom and right to the square model input and
    scaled to the ``logits_side`` x ``logits_side`` grid of the decoder's logits (or of
    an embedding): area interpolation, then foreground where at least half covered.

    Returns:
        ``(1, logits_side, logits_side)`` float32 torch tensor of 0 and 1.
    """
    import cv2
    import torch

    scale = logits_side / image_size
    h = max(1, round(input_size_hw[0] * scale))
    w = max(1, round(input_size_hw[1] * scale))
    small = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    target = np.zeros((logits_side, logits_side), dtype=np.float32)
    target[:h, :w] = small
    return torch.from_numpy(target)[None]
