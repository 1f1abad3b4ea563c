"""Points from the training set's mean mask (paper 002's best prompt for chest X-rays)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from .._geometry import connected_components
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import as_image, as_mask, check_probability

__all__ = ["MeanMaskPointPrompter"]


def _spread_points(region: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """Pick ``k`` interior points of ``region``, far from its border and from each other.

    The first point is the most interior pixel (largest distance to the border, ties
    broken by ``weight``); each next point maximises ``min(distance to border,
    distance to the points already chosen)``. Deterministic.

    Returns:
        ``(k', 2)`` float32 ``(x, y)`` grid coordinates, ``k' <= k``.
    """
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    score = depth + 1e-3 * weight
    ys, xs = np.nonzero(region)
    chosen: list[tuple[int, int]] = []
    nearest = np.full(ys.shape, np.inf)
    for _ in range(min(k, ys.size)):
        values = np.minimum(score[ys, xs], nearest)
        i = int(np.argmax(values))
        chosen.append((xs[i], ys[i]))
        nearest = np.minimum(nearest, np.hypot(xs - xs[i], ys - ys[i]))
    return np.asarray(chosen, dtype=np.float32)


@register_component("prompter", "mean-mask-points", fitted=True)
class MeanMaskPointPrompter:
    """Foreground points placed in the high-probability regions of the training set's mean mask.

    ``fit`` resizes every training mask to a ``grid_size`` x ``grid_size`` grid
    (normalised image coordinates, so sets of mixed resolution average correctly)
    and averages them. Each connected region where the mean mask reaches
    ``probability`` becomes one prompt with ``points_per_component`` points spread
    through its interior (for chest X-rays: one prompt per lung). At call time the
    points are scaled to the image's size. If no grid cell reaches
    ``probability`` (a target whose position varies a lot), the region is where
    the mean mask reaches half its maximum.

    Args:
        points_per_component: Foreground points per region (prompt).
        probability: Mean-mask level that defines the regions, in ``[0, 1]``.
        min_area_fraction: Regions smaller than this fraction of the grid are ignored
            (the largest region is always kept).
        grid_size: Side of the averaging grid in cells.
        group: ``"component"``: one prompt per region; ``"all"``: a single prompt
            holding the points of every region.
    """

    requires_target = False
    uses_encoding = False
    state_suffix = ".npz"

    def __init__(
        self,
        *,
        points_per_component: int = 3,
        probability: float = 0.5,
        min_area_fraction: float = 0.01,
        grid_size: int = 256,
        group: Literal["component", "all"] = "component",
    ) -> None:
        if isinstance(points_per_component, bool) or not isinstance(points_per_component, int) or points_per_component < 1:
            raise ValueError(f"points_per_component: expected a positive int, got {points_per_component!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 8:
            raise ValueError(f"grid_size: expected an int >= 8, got {grid_size!r}")
        if group not in ("component", "all"):
            raise ValueError(f"group: expected 'component' or 'all', got {group!r}")
        self.points_per_component = points_per_component
        self.probability = check_probability(probability, name="probability")
        self.min_area_fraction = check_probability(min_area_fraction, name="min_area_fraction")
        self.grid_size = grid_size
        self.group = group
        self.mean_mask: np.ndarray | None = None
        self.n_fitted = 0
        self._points: list[np.ndarray] = []

    def __repr__(self) -> str:
        state = f"fitted on {self.n_fitted} masks" if self.mean_mask is not None else "not fitted"
        return f"MeanMaskPointPrompter(points_per_component={self.points_per_component}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving)."""
        return {
            "points_per_component": self.points_per_component,
            "probability": self.probability,
            "min_area_fraction": self.min_area_fraction,
            "grid_size": self.grid_size,
            "group": self.group,
        }

    def fit(self, samples: Iterable[Any], *, val: Iterable[Any] | None = None, progress: bool = False) -> MeanMaskPointPrompter:
        """Average the training masks and place the points.

        Args:
            samples: ``(H, W)`` masks, or items with a ``load_mask()`` method (the
                samples of a ``MaskFolder``). Use the training split only.
            val: Not read: the mean mask has nothing to validate (accepted so that
                every learned provider is fitted the same way, see
                :class:`~medsamkit.FittablePrompter`).
            progress: Show a progress bar.

        Returns:
            self.

        Raises:
            ValueError: If no mask is given or every mask is empty.
        """
        import cv2
        from tqdm.auto import tqdm

        total = np.zeros((self.grid_size, self.grid_size), dtype=np.float64)
        n = 0
        for item in tqdm(samples, desc="mean mask", disable=not progress, unit="mask"):
            mask = item.load_mask() if hasattr(item, "load_mask") else item
            mask = as_mask(mask, name="samples[]").astype(np.float32)
            total += cv2.resize(mask, (self.grid_size, self.grid_size), interpolation=cv2.INTER_AREA)
            n += 1
        if n == 0:
            raise ValueError("samples: expected at least one training mask, got none")
        mean = (total / n).astype(np.float32)
        if mean.max() <= 0:
            raise ValueError(f"samples: expected some foreground, got {n} empty masks")
        self.mean_mask, self.n_fitted = mean, n
        self._points = self._place_points(mean)
        return self

    def _place_points(self, mean: np.ndarray) -> list[np.ndarray]:
        level = self.probability if mean.max() >= self.probability else 0.5 * float(mean.max())
        labels, n = connected_components(mean >= level)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-areas, kind="stable")
        min_area = self.min_area_fraction * mean.size
        keep = [i for i in order if areas[i] >= min_area] or [order[0]]
        # Left-to-right order gives stable prompt indices (e.g. right lung first on a radiograph).
        groups = [_spread_points(labels == i + 1, mean, self.points_per_component) for i in keep]
        groups.sort(key=lambda pts: float(pts[:, 0].mean()))
        return groups

    @property
    def points_normalized(self) -> list[np.ndarray]:
        """Per region, ``(K, 2)`` point coordinates as fractions of image width and height."""
        self._check_fitted()
        return [(pts + 0.5) / self.grid_size for pts in self._points]

    def _check_fitted(self) -> None:
        if self.mean_mask is None:
            raise RuntimeError("MeanMaskPointPrompter is not fitted: call fit(training_masks) or load(path) first")

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Points scaled to ``image``'s size (``target`` is not read)."""
        image = as_image(image)
        h, w = image.shape[:2]
        scale = np.array([w, h], dtype=np.float32)
        groups = [np.clip(p * scale - 0.5, 0, [w - 1, h - 1]) for p in self.points_normalized]
        if self.group == "all":
            groups = [np.concatenate(groups, axis=0)]
        k = max(len(g) for g in groups)
        # Prompts are batched, so every group needs k points: pad short groups with label -1 (not a point).
        points = np.zeros((len(groups), k, 2), dtype=np.float32)
        labels = np.full((len(groups), k), -1, dtype=np.int64)
        for i, g in enumerate(groups):
            points[i, : len(g)] = g
            labels[i, : len(g)] = 1
        return Prompts(points_xy=points, point_labels=labels)

    def save(self, path: str | Path) -> Path:
        """Save the fitted mean mask and parameters to ``path`` (``.npz``), atomically."""
        from ..data import atomic_write_bytes

        self._check_fitted()
        import io

        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            mean_mask=cast(np.ndarray, self.mean_mask),  # fitted: checked above
            n_fitted=np.int64(self.n_fitted),
            params=np.frombuffer(json.dumps(self.params()).encode(), dtype=np.uint8),
        )
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> MeanMaskPointPrompter:
        """Load a prompter saved with :meth:`save`.

        Args:
            path: The ``.npz`` file.
            **overrides: Parameters (:meth:`params`) as a config states them: each must
                equal the saved value (the points were placed with them).

        Raises:
            TypeError: For a name that is not a parameter.
            ValueError: For a value that contradicts the saved one.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a saved MeanMaskPointPrompter .npz, got missing file {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                params = json.loads(data["params"].tobytes().decode())
                mean = data["mean_mask"].astype(np.float32)
                n_fitted = int(data["n_fitted"])
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"path: {path} is not a saved MeanMaskPointPrompter ({exc})") from exc
        unknown = sorted(set(overrides) - set(params))
        if unknown:  # TypeError, like an unexpected keyword argument
            raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(params)}")
        for key, value in overrides.items():
            if params[key] != value:
                raise ValueError(f"{key}: the saved prompter {path} has {params[key]!r}, the config {value!r}")
        prompter = cls(**params)
        prompter.mean_mask, prompter.n_fitted = mean, n_fitted
        prompter._points = prompter._place_points(mean)
        return prompter
