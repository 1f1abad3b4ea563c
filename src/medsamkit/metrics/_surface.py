"""Metrics for 2D and 3D masks in physical units: overlap, surface distances and NSD.

Every function takes ``pred`` and ``target`` of the same shape, ``(H, W)`` or
``(D, H, W)``, and a ``spacing`` with one positive number per axis in the same
order (for a :class:`~medsamkit.data.Volume`, ``volume.spacing`` = ``(z, y, x)``
in mm). Distances are in the units of ``spacing``.

Surfaces are the voxels ``mask XOR binary_erosion(mask)`` (scipy's default
structuring element: 4-connected in 2D, 6-connected in 3D; outside the array is
background), as MONAI's ``get_mask_edges``; distances are exact Euclidean
distances between voxel centres. The definitions follow MONAI:

* HD95: ``max`` of the two directed 95th percentiles
  (``compute_hausdorff_distance(percentile=95)``).
* ASD: mean over the edge voxels of both masks of the distance to the other
  surface (``compute_average_surface_distance(symmetric=True)``).
* NSD at tolerance ``tau``: ``(|{p in dP: d(p, dT) <= tau}| + |{t in dT: d(t, dP) <= tau}|) / (|dP| + |dT|)``
  (``compute_surface_dice``), the second metric of the CVPR 2024 "MedSAM on
  laptop" challenge (there with ``tau = 2`` mm).

Empty masks: both empty gives dice = iou = nsd = 1 and distances 0; exactly one
empty gives dice = iou = nsd = 0 and NaN distances (undefined).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import describe
from ._distance import crop_to_union, edge_distances, mask_edges, percentile_from_distances

__all__ = [
    "average_surface_distance",
    "normalized_surface_dice",
    "surface_distances",
    "volume_dice",
    "volume_hd95",
    "volume_iou",
    "volume_metrics",
]


def _as_nd_mask(mask: Any, *, name: str) -> np.ndarray:
    if mask is None:
        raise TypeError(f"{name}: expected a mask array of shape (H, W) or (D, H, W), got None")
    array = np.asarray(mask)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric or bool mask, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (H, W) or (D, H, W), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f"{name}: expected a binary mask, got NaN values")
    return array.astype(bool, copy=False)


def _validate(pred: Any, target: Any, spacing: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    pred_mask = _as_nd_mask(pred, name="pred")
    target_mask = _as_nd_mask(target, name="target")
    if pred_mask.shape != target_mask.shape:
        raise ValueError(f"target: expected the shape of pred {pred_mask.shape}, got {target_mask.shape}")
    return pred_mask, target_mask, _check_spacing_nd(spacing, pred_mask.ndim)


def _check_spacing_nd(spacing: Any, ndim: int) -> tuple[float, ...]:
    axes = "(row, col)" if ndim == 2 else "(z, y, x)"
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__len__"):
        raise TypeError(f"spacing: expected {ndim} positive numbers {axes}, got {describe(spacing)}")
    values = list(spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing: expected {ndim} values {axes} for {ndim}D masks, got {len(values)}: {values!r}"[:200])
    out = []
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"spacing: expected positive numbers {axes}, got {values!r}"[:200])
        if not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"spacing: expected positive finite numbers, got {values!r}")
        out.append(float(value))
    return tuple(out)


def _check_positive(value: Any, *, name: str, allow_zero: bool = True) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a non-negative number (mm), got {describe(value)}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a non-negative finite number (mm), got {value}")
    return value


def surface_distances(pred: Any, target: Any, *, spacing: Any = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed surface distances between two 2D or 3D masks.

    Returns:
        ``(pred_to_target, target_to_pred)``: for each edge voxel of one mask, the
        distance (in the units of ``spacing``) to the nearest edge voxel of the other.
        None when both masks are empty; two empty arrays when exactly one is empty.
    """
    pred_mask, target_mask, sampling = _validate(pred, target, spacing)
    return _distances(pred_mask, target_mask, sampling)


def _distances(pred: np.ndarray, target: np.ndarray, sampling: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    cropped = crop_to_union(pred, target)
    if cropped is None:
        return None
    return edge_distances(mask_edges(cropped[0]), mask_edges(cropped[1]), sampling)


def _asd(distances: tuple[np.ndarray, np.ndarray] | None) -> float:
    if distances is None:
        return 0.0
    a, b = distances
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(np.concatenate([a, b]).mean())


def nsd_from_distances(distances: tuple[np.ndarray, np.ndarray] | None, tolerance: float) -> float:
    """Share of boundary distances within ``tolerance`` (1.0 for two empty masks, 0.0 when one is empty)."""
    if distances is None:
        return 1.0
    a, b = distances
    if a.size == 0 or b.size == 0:
        return 0.0
    return float((np.count_nonzero(a <= tolerance) + np.count_nonzero(b <= tolerance)) / (a.size + b.size))


def _overlap(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    n_pred, n_target = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    if n_pred + n_target == 0:
        return 1.0, 1.0
    tp = int(np.count_nonzero(pred & target)) if n_pred and n_target else 0
    return 2.0 * tp / (n_pred + n_target), tp / (n_pred + n_target - tp)


def volume_dice(pred: Any, target: Any) -> float:
    """Dice ``2|P & T| / (|P| + |T|)`` over all voxels of two 2D or 3D masks (1.0 when both are empty)."""
    pred_mask, target_mask, _ = _validate(pred, target, None)
    return _overlap(pred_mask, target_mask)[0]


def volume_iou(pred: Any, target: Any) -> float:
    """IoU ``|P & T| / |P | T|`` over all voxels of two 2D or 3D masks (1.0 when both are empty)."""
    pred_mask, target_mask, _ = _validate(pred, target, None)
    return _overlap(pred_mask, target_mask)[1]


def volume_hd95(pred: Any, target: Any, *, spacing: Any = None, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance (MONAI's convention) between two 2D or 3D masks, in spacing units."""
    pred_mask, target_mask, sampling = _validate(pred, target, spacing)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile: expected a number in [0, 100], got {percentile!r}")
    return percentile_from_distances(_distances(pred_mask, target_mask, sampling), float(percentile))


def average_surface_distance(pred: Any, target: Any, *, spacing: Any = None) -> float:
    """Symmetric average surface distance (MONAI's ``symmetric=True``), in spacing units."""
    pred_mask, target_mask, sampling = _validate(pred, target, spacing)
    return _asd(_distances(pred_mask, target_mask, sampling))


def normalized_surface_dice(pred: Any, target: Any, *, tolerance: float = 2.0, spacing: Any = None) -> float:
    """Normalized surface Dice: the fraction of both surfaces within ``tolerance`` of the other.

    Args:
        pred, target: ``(H, W)`` or ``(D, H, W)`` masks of one shape.
        tolerance: Distance in the units of ``spacing`` (mm for a volume's spacing);
            2 mm in the CVPR 2024 MedSAM-on-laptop challenge.
        spacing: One positive number per axis (default 1).

    Returns:
        A value in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    tau = _check_positive(tolerance, name="tolerance")
    pred_mask, target_mask, sampling = _validate(pred, target, spacing)
    return nsd_from_distances(_distances(pred_mask, target_mask, sampling), tau)


def volume_metrics(pred: Any, target: Any, *, spacing: Any = None, nsd_tolerance: float = 2.0) -> dict[str, float]:
    """Dice, IoU, NSD, HD95 and ASD of one 2D or 3D prediction, sharing one distance computation.

    Returns:
        ``{"dice", "iou", "nsd", "hd95", "asd"}``; distances in the units of ``spacing``.
    """
    tau = _check_positive(nsd_tolerance, name="nsd_tolerance")
    pred_mask, target_mask, sampling = _validate(pred, target, spacing)
    d, j = _overlap(pred_mask, target_mask)
    distances = _distances(pred_mask, target_mask, sampling)
    return {
        "dice": d,
        "iou": j,
        "nsd": nsd_from_distances(distances, tau),
        "hd95": percentile_from_distances(distances, 95.0),
        "asd": _asd(distances),
    }
