"""Per-image metric tables and their summaries.

:func:`compute_metrics` evaluates several metrics on one image (validating the masks
once and sharing the pixel counts and boundary distances between metrics),
:func:`summarize` reduces one metric's per-image values to mean / median / std, and
:class:`MetricAccumulator` collects per-image rows over a dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._validation import describe
from ._distance import (
    boundary_distances,
    check_pixel_spacing,
    hausdorff,
    hausdorff_from_distances,
    hd95,
    percentile_from_distances,
)
from ._overlap import (
    dice,
    dice_from_counts,
    f1,
    f1_from_counts,
    iou,
    iou_from_counts,
    overlap_counts,
    precision,
    precision_from_counts,
    recall,
    recall_from_counts,
    validate_pair,
)
from ._surface import nsd_from_distances

__all__ = ["DEFAULT_METRICS", "METRICS", "NSD_TOLERANCE", "MetricAccumulator", "compute_metrics", "nsd", "summarize"]

NSD_TOLERANCE = 2.0
"""Tolerance of the ``nsd`` metric in the units of ``spacing`` (2 mm in the MedSAM-on-laptop challenge)."""


def nsd(pred: Any, target: Any, *, spacing: Any = (1.0, 1.0)) -> float:
    """Normalized surface Dice of two 2D masks at :data:`NSD_TOLERANCE` (see
    :func:`~medsamkit.metrics.normalized_surface_dice` for any tolerance and 3D)."""
    pred_mask, target_mask = validate_pair(pred, target)
    return nsd_from_distances(boundary_distances(pred_mask, target_mask, check_pixel_spacing(spacing)), NSD_TOLERANCE)


METRICS: dict[str, Callable[..., float]] = {
    "dice": dice,
    "iou": iou,
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "hausdorff": hausdorff,
    "hd95": hd95,
    "nsd": nsd,
}
"""Metric name -> function. The distance metrics take a keyword-only ``spacing``.

``nsd`` (normalized surface Dice at :data:`NSD_TOLERANCE` in the units of ``spacing``) is
available by name but not in :data:`DEFAULT_METRICS`, so default tables keep their columns.
"""

DEFAULT_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "f1", "hd95")
"""Metrics computed by :func:`compute_metrics` and :class:`MetricAccumulator` by default."""

_FROM_COUNTS: dict[str, Callable[[int, int, int], float]] = {
    "dice": dice_from_counts,
    "iou": iou_from_counts,
    "precision": precision_from_counts,
    "recall": recall_from_counts,
    "f1": f1_from_counts,
}
_DISTANCE_METRICS = ("hausdorff", "hd95", "nsd")
_UNSET = object()


def _check_metric_names(metrics: Any) -> tuple[str, ...]:
    """Validate a sequence of metric names against :data:`METRICS`."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not isinstance(metrics, Iterable):
        raise TypeError(f"metrics: expected a sequence of metric names, got {describe(metrics)}")
    names = tuple(metrics)
    valid = ", ".join(sorted(METRICS))
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metrics: expected metric names (str), got {describe(name)}")
        if name not in METRICS:
            raise ValueError(f"metrics: unknown metric {name!r}; valid names are: {valid}")
    if not names:
        raise ValueError(f"metrics: expected at least one metric name from: {valid}")
    if len(set(names)) != len(names):
        raise ValueError(f"metrics: expected unique names, got {list(names)}")
    return names


def compute_metrics(
    pred: Any,
    target: Any,
    *,
    spacing: Any = (1.0, 1.0),
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Compute several metrics for one predicted mask against its reference.

    The masks are validated once; pixel counts and boundary distances are computed
    once and shared (``hausdorff`` and ``hd95`` together cost one pair of distance
    transforms). Results equal calling the individual functions in :data:`METRICS`.

    Args:
        pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``; non-zero is foreground.
        target: Reference mask of the same shape as ``pred``.
        spacing: Pixel size ``(row, col)`` for the distance metrics, two positive
            finite numbers in any length unit (typically mm). Validated even when no
            distance metric is requested.
        metrics: Names from :data:`METRICS` (``"dice"``, ``"iou"``, ``"precision"``,
            ``"recall"``, ``"f1"``, ``"hausdorff"``, ``"hd95"``). A function you add
            to :data:`METRICS` yourself is called as ``fn(pred, target)`` with the
            validated boolean masks.

    Returns:
        ``{name: value}`` in the order of ``metrics``. Overlap metrics are unitless in
        ``[0, 1]``; distances are in the units of ``spacing`` and NaN when exactly one
        mask is empty (see the module documentation for all empty-mask conventions).

    Raises:
        TypeError: If a mask, ``spacing`` or ``metrics`` has the wrong type.
        ValueError: For invalid masks (wrong dimensions, NaN, shape mismatch), invalid
            ``spacing``, or an unknown metric name (the message lists the valid names).
    """
    names = _check_metric_names(metrics)
    sampling = check_pixel_spacing(spacing)
    pred_mask, target_mask = validate_pair(pred, target)

    results: dict[str, float] = {}
    counts: tuple[int, int, int] | None = None
    distances: Any = _UNSET  # None would mean "both masks empty"
    for name in names:
        if name in _FROM_COUNTS:
            if counts is None:
                counts = overlap_counts(pred_mask, target_mask)
            results[name] = float(_FROM_COUNTS[name](*counts))
        elif name in _DISTANCE_METRICS:
            if distances is _UNSET:
                distances = boundary_distances(pred_mask, target_mask, sampling)
            if name == "hausdorff":
                results[name] = hausdorff_from_distances(distances)
            elif name == "nsd":
                results[name] = nsd_from_distances(distances, NSD_TOLERANCE)
            else:
                results[name] = percentile_from_distances(distances, 95.0)
        else:  # a metric registered in METRICS by the user
            results[name] = float(METRICS[name](pred_mask, target_mask))
    return results


def _as_values(values: Any) -> np.ndarray:
    """Convert per-image values (numbers, None = undefined) to a 1-D float64 array."""
    if isinstance(values, np.ndarray):
        items: Any = values
    elif isinstance(values, Iterable) and not isinstance(values, (str, bytes, Mapping)):
        items = [math.nan if v is None else v for v in values]
    else:
        raise TypeError(f"values: expected a sequence of numbers, got {describe(values)}")
    try:
        array = np.asarray(items, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"values: expected numbers (or None), got {describe(values)}") from exc
    if array.ndim != 1:
        raise ValueError(f"values: expected a 1-D sequence of numbers, got shape {array.shape}")
    return array


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, median and standard deviation of one metric over images.

    Only finite values are used: NaN (an undefined metric, e.g. a distance with one
    empty mask), None and +-inf are skipped.

    Args:
        values: Per-image values, a 1-D sequence or array of numbers; None is treated
            as NaN.

    Returns:
        ``{"mean", "median", "std", "n"}``. ``n`` (int) is the number of finite values
        used. ``std`` is the population standard deviation (``ddof=0``), so it is 0.0
        for a single value. When ``n == 0``, mean, median and std are None (not NaN),
        which keeps the result JSON-serialisable.

    Raises:
        TypeError: If ``values`` is not a sequence of numbers.
        ValueError: If ``values`` is not 1-D.
    """
    array = _as_values(values)
    finite = array[np.isfinite(array)]
    n = int(finite.size)
    if n == 0:
        return {"mean": None, "median": None, "std": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "std": float(finite.std(ddof=0)),
        "n": n,
    }


def _as_metric_value(value: Any, *, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"values[{name!r}]: expected a number or None, got {describe(value)}")
    return float(value)


class MetricAccumulator:
    """Collect per-image metric values over a dataset and summarise them.

    Modelled on torchmetrics: :meth:`update` per image, :meth:`compute` at the end,
    :meth:`reset` to start over. Every stored row is kept, so per-image results can be
    written out (:attr:`rows`) as well as summarised.

    Examples:
        >>> acc = MetricAccumulator(("dice", "hd95"), spacing=(0.8, 0.8))
        >>> acc.update(pred, target, key="case_001")  # doctest: +SKIP
        >>> acc.compute()["dice"]["mean"]  # doctest: +SKIP

    Args:
        metrics: Metric names from :data:`METRICS`.
        spacing: Pixel size ``(row, col)`` used for the distance metrics of every
            :meth:`update`.

    Raises:
        TypeError / ValueError: For unknown metric names or invalid ``spacing``.
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS, *, spacing: Any = (1.0, 1.0)) -> None:
        self._metrics = _check_metric_names(metrics)
        self._spacing = check_pixel_spacing(spacing)
        self._rows: list[dict[str, Any]] = []

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names tracked, in order."""
        return self._metrics

    @property
    def spacing(self) -> tuple[float, float]:
        """Pixel size ``(row, col)`` used by :meth:`update`."""
        return self._spacing

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Copies of the stored rows: ``{"key": key, metric: value, ...}`` per image."""
        return [dict(row) for row in self._rows]

    def update(self, pred: Any, target: Any, *, key: Any = None) -> dict[str, float]:
        """Compute the metrics for one image and store them as a row.

        Args:
            pred: Predicted mask, ``(H, W)`` or ``(H, W, 1)``.
            target: Reference mask of the same shape.
            key: Optional identifier stored with the row (e.g. a case id).

        Returns:
            ``{metric: value}`` for this image (see :func:`compute_metrics`).
        """
        values = compute_metrics(pred, target, spacing=self._spacing, metrics=self._metrics)
        self._rows.append({"key": key, **values})
        return dict(values)

    def add(self, values: Mapping[str, Any], key: Any = None) -> None:
        """Store a row of precomputed values.

        Args:
            values: ``{metric: number or None}`` with every tracked metric (None or NaN
                mean undefined). A ``"key"`` entry is allowed (as in :attr:`rows`) and
                used when ``key`` is None, so rows can be re-added.
            key: Optional identifier stored with the row.

        Raises:
            TypeError: If ``values`` is not a mapping or holds a non-number.
            ValueError: If a tracked metric is missing or an unknown name is present.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a dict of metric values, got {describe(values)}")
        extra = sorted(str(k) for k in values if k != "key" and k not in self._metrics)
        if extra:
            raise ValueError(f"values: unknown names {extra}; this accumulator tracks {list(self._metrics)}")
        missing = [m for m in self._metrics if m not in values]
        if missing:
            raise ValueError(f"values: missing {missing}; this accumulator tracks {list(self._metrics)}")
        if key is None:
            key = values.get("key")
        row: dict[str, Any] = {"key": key}
        for name in self._metrics:
            row[name] = _as_metric_value(values[name], name=name)
        self._rows.append(row)

    def compute(self) -> dict[str, dict[str, float | int | None]]:
        """Summarise every tracked metric over the stored rows.

        Returns:
            ``{metric: summarize(values)}``; NaN values (undefined distances) are
            skipped and each summary's ``n`` says how many values were defined.
        """
        return {name: summarize([row[name] for row in self._rows]) for name in self._metrics}

    def reset(self) -> None:
        """Forget all stored rows."""
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"MetricAccumulator(metrics={self._metrics!r}, spacing={self._spacing!r}, rows={len(self._rows)})"
