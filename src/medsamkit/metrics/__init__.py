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
For 3D volumes (and 2D masks in physical units), :func:`volume_metrics`,
:func:`volume_dice`, :func:`volume_iou`, :func:`volume_hd95`,
:func:`average_surface_distance` and :func:`normalized_surface_dice` take ``(D, H, W)``
masks and a ``(z, y, x)`` spacing in mm (MONAI's definitions; NSD as in the CVPR 2024
MedSAM-on-laptop challenge). ``nsd`` is also a 2D metric name (not a default one).

See ``docs/metrics.md`` for the formulas.
"""

from __future__ import annotations

from ._aggregate import DEFAULT_METRICS, METRICS, NSD_TOLERANCE, MetricAccumulator, compute_metrics, nsd, summarize
from ._distance import hausdorff, hd95
from ._overlap import dice, f1, iou, precision, recall
from ._surface import (
    average_surface_distance,
    normalized_surface_dice,
    surface_distances,
    volume_dice,
    volume_hd95,
    volume_iou,
    volume_metrics,
)

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MetricAccumulator",
    "NSD_TOLERANCE",
    "average_surface_distance",
    "compute_metrics",
    "dice",
    "f1",
    "hausdorff",
    "hd95",
    "iou",
    "normalized_surface_dice",
    "nsd",
    "precision",
    "recall",
    "summarize",
    "surface_distances",
    "volume_dice",
    "volume_hd95",
    "volume_iou",
    "volume_metrics",
]
