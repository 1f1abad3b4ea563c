"""Segmentation metrics for binary 2-D masks.

Overlap metrics (:func:`dice`, :func:`iou`, :func:`precision`, :func:`recall`,
:func:`f1`) count pixels; boundary distances (:func:`hausdorff`, :func:`hd95`) are
computed between mask edges (``mask XOR binary_erosion(mask)``, as MONAI's
``get_mask_edges``) and scaled by the pixel ``spacing`` ``(row, col)``.
:func:`compute_metrics` evaluates several metrics at once, :func:`summarize` and
:class:`MetricAccumulator` aggregate them over images.

Every function takes the prediction ``pred`` and the reference ``target``, two
``(H, W)`` masks of the same shape where any non-zero value is foreground.

Empty-mask conventions:

=====================  ====================================  ===================
case                   dice, iou, precision, recall, f1      hausdorff, hd95
=====================  ====================================  ===================
both empty             1.0                                   0.0
pred empty only        0.0                                   NaN (undefined)
target empty only      0.0                                   NaN (undefined)
=====================  ====================================  ===================

:func:`summarize` skips NaN and reports in ``n`` how many values were defined.
See ``docs/metrics.md`` for the formulas.
"""

from __future__ import annotations

from ._aggregate import DEFAULT_METRICS, METRICS, MetricAccumulator, compute_metrics, summarize
from ._distance import hausdorff, hd95
from ._overlap import dice, f1, iou, precision, recall

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MetricAccumulator",
    "compute_metrics",
    "dice",
    "f1",
    "hausdorff",
    "hd95",
    "iou",
    "precision",
    "recall",
    "summarize",
]
