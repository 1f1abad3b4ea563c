"""Overlap metrics for one pair of binary masks: Dice, IoU, precision, recall, F1.

All functions take a predicted mask ``pred`` and a reference mask ``target`` of the
same ``(H, W)`` shape (any non-zero value is foreground) and return a Python float in
``[0, 1]``. They only count pixels (no float copies of the masks are made).

Empty-mask conventions (the same for every function here):

* both masks empty: 1.0 (a correct "nothing here" answer);
* any other zero denominator: 0.0 (e.g. precision of an empty prediction against a
  non-empty target, recall of a non-empty prediction against an empty target).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_mask

__all__ = ["dice", "f1", "iou", "precision", "recall"]


def validate_pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``pred`` and ``target`` as boolean ``(H, W)`` masks of the same shape."""
    pred_mask = as_mask(pred, name="pred")
    target_mask = as_mask(target, name="target", size_hw=pred_mask.shape)
    return pred_mask, target_mask


def overlap_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    """Return ``(tp, n_pred, n_target)`` pixel counts for two validated boolean masks."""
    n_pred = int(np.count_nonzero(pred))
    n_target = int(np.count_nonzero(target))
    if n_pred == 0 or n_target == 0:
        return 0, n_pred, n_target
    tp = int(np.count_nonzero(np.logical_and(pred, target)))
    return tp, n_pred, n_target


def dice_from_counts(tp: int, n_pred: int, n_target: int) -> float:
    """Dice from :func:`overlap_counts` (1.0 when both masks are empty)."""
    denominator = n_pred + n_target
    if denominator == 0:
        return 1.0
    return 2 * tp / denominator


def iou_from_counts(tp: int, n_pred: int, n_target: int) -> float:
    """IoU from :func:`overlap_counts` (1.0 when both masks are empty)."""
    union = n_pred + n_target - tp
    if union == 0:
        return 1.0
    return tp / union


def precision_from_counts(tp: int, n_pred: int, n_target: int) -> float:
    """Precision from :func:`overlap_counts` (empty prediction: 1.0 if the target is empty too, else 0.0)."""
    if n_pred == 0:
        return 1.0 if n_target == 0 else 0.0
    return tp / n_pred


def recall_from_counts(tp: int, n_pred: int, n_target: int) -> float:
    """Recall from :func:`overlap_counts` (empty target: 1.0 if the prediction is empty too, else 0.0)."""
    if n_target == 0:
        return 1.0 if n_pred == 0 else 0.0
    return tp / n_target


def f1_from_counts(tp: int, n_pred: int, n_target: int) -> float:
    """F1 (harmonic mean of precision and recall) from :func:`overlap_counts`."""
    p = precision_from_counts(tp, n_pred, n_target)
    r = recall_from_counts(tp, n_pred, n_target)
    if p + r == 0.0:
        return 0.0
    return 2 * p * r / (p + r)


def dice(pred: Any, target: Any) -> float:
    """Dice similarity coefficient ``2 |P ∩ T| / (|P| + |T|)``.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.

    Returns:
        Dice in ``[0, 1]`` (unitless). 1.0 when both masks are empty; 0.0 when exactly
        one of them is empty.

    Raises:
        TypeError: If a mask is not a numeric or bool array.
        ValueError: If a mask is not 2-D, holds NaN, or the shapes differ (the error
            names ``target`` and gives both shapes).
    """
    return dice_from_counts(*overlap_counts(*validate_pair(pred, target)))


def iou(pred: Any, target: Any) -> float:
    """Intersection over union (Jaccard index) ``|P ∩ T| / |P ∪ T|``.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.

    Returns:
        IoU in ``[0, 1]`` (unitless). 1.0 when both masks are empty; 0.0 when exactly
        one of them is empty.

    Raises:
        TypeError: If a mask is not a numeric or bool array.
        ValueError: If a mask is not 2-D, holds NaN, or the shapes differ.
    """
    return iou_from_counts(*overlap_counts(*validate_pair(pred, target)))


def precision(pred: Any, target: Any) -> float:
    """Precision (positive predictive value) ``|P ∩ T| / |P|``.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.

    Returns:
        Precision in ``[0, 1]`` (unitless). 1.0 when both masks are empty; 0.0 when
        ``pred`` is empty but ``target`` is not (zero denominator), and 0.0 when
        ``target`` is empty but ``pred`` is not (every predicted pixel is a false
        positive).

    Raises:
        TypeError: If a mask is not a numeric or bool array.
        ValueError: If a mask is not 2-D, holds NaN, or the shapes differ.
    """
    return precision_from_counts(*overlap_counts(*validate_pair(pred, target)))


def recall(pred: Any, target: Any) -> float:
    """Recall (sensitivity) ``|P ∩ T| / |T|``.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.

    Returns:
        Recall in ``[0, 1]`` (unitless). 1.0 when both masks are empty; 0.0 when
        ``target`` is empty but ``pred`` is not (zero denominator), and 0.0 when
        ``pred`` is empty but ``target`` is not.

    Raises:
        TypeError: If a mask is not a numeric or bool array.
        ValueError: If a mask is not 2-D, holds NaN, or the shapes differ.
    """
    return recall_from_counts(*overlap_counts(*validate_pair(pred, target)))


def f1(pred: Any, target: Any) -> float:
    """F1 score ``2 P R / (P + R)`` computed from :func:`precision` and :func:`recall`.

    For a single image this equals :func:`dice` (``2 TP / (2 TP + FP + FN)``), up to
    floating-point rounding, and with the conventions used here it also agrees with
    Dice in every empty-mask case: both empty gives 1.0 (``P = R = 1``); exactly one
    empty gives ``P = R = 0`` and hence 0.0. F1 and Dice only differ when F1 is formed
    from precision and recall that were aggregated over a dataset first.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.

    Returns:
        F1 in ``[0, 1]`` (unitless); 0.0 when ``P + R == 0``.

    Raises:
        TypeError: If a mask is not a numeric or bool array.
        ValueError: If a mask is not 2-D, holds NaN, or the shapes differ.
    """
    return f1_from_counts(*overlap_counts(*validate_pair(pred, target)))
