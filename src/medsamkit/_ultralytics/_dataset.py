"""Image/mask pairs as an Ultralytics (YOLO format) dataset: 8-bit images, box or polygon labels."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._geometry import component_boxes_xyxy
from .._validation import as_image, as_mask, describe

__all__ = ["CLASS_NAME", "masks_to_yolo_dataset", "to_bgr", "to_uint8_image"]

#: The single class every dataset written here uses.
CLASS_NAME = "foreground"
_MARKER = ".medsamkit-yolo-dataset"


def to_uint8_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Convert any medsamkit image to 8 bits, as written for and fed to the detector.

    ``uint8`` is kept; ``bool`` becomes 0/255; other dtypes (``uint16``, float, ...)
    are min-max scaled per image to ``0..255`` (a constant image becomes 0). An
    alpha channel is dropped and ``(H, W, 1)`` becomes ``(H, W)``.

    Returns:
        ``(H, W)`` gray or ``(H, W, 3)`` RGB ``uint8``.
    """
    image = as_image(image, name=name)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 1 else image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    values = image.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_bgr(image: np.ndarray) -> np.ndarray:
    """3-channel BGR ``uint8``, Ultralytics' convention for numpy inputs."""
    image = to_uint8_image(image)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2))
    return np.ascontiguousarray(image[..., ::-1])


def _load_pair(item: Any, index: int, *, name: str) -> tuple[str, np.ndarray, np.ndarray]:
    """``(stem, image, mask)`` from a :class:`~medsamkit.data.Sample` or an ``(image, mask)`` pair."""
    if hasattr(item, "load") and hasattr(item, "stem"):
        image, mask = item.load()
        return str(item.stem), image, mask
    if isinstance(item, (tuple, list)) and len(item) == 2:
        image = as_image(item[0], name=f"{name}[{index}] image")
        mask = as_mask(item[1], name=f"{name}[{index}] mask", size_hw=image.shape[:2])
        return f"{index:06d}", image, mask
    raise TypeError(f"{name}[{index}]: expected a Sample (with load()) or an (image, mask) pair, got {describe(item)}")


def _label_lines(mask: np.ndarray, *, min_area: int) -> list[str]:
    """YOLO ``cls cx cy w h`` lines (normalised), one per connected component.

    A component covering pixels ``x0..x1`` spans the continuous interval
    ``[x0, x1 + 1)``: that is the box Ultralytics learns.
    """
    h, w = mask.shape
    lines = []
    for x0, y0, x1, y1 in component_boxes_xyxy(mask, min_area=min_area).astype(np.float64):
        cx, cy = (x0 + x1 + 1) / 2 / w, (y0 + y1 + 1) / 2 / h
        bw, bh = (x1 - x0 + 1) / w, (y1 - y0 + 1) / h
        lines.append(f"0 {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return lines


def _polygon_lines(mask: np.ndarray, *, min_area: int) -> list[str]:
    """YOLO segmentation lines ``cls x1 y1 x2 y2 ...`` (normalised), one per component's outer contour."""
    import cv2

    from .._geometry import connected_components

    h, w = mask.shape
    labels, n = connected_components(mask)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    keep = [i for i in order if areas[i] >= min_area] or [order[0]]
    lines = []
    for i in keep:
        component = (labels == i + 1).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=len).reshape(-1, 2).astype(np.float64)
        if len(contour) < 3:  # a one- or two-pixel component: use its pixel square
            x0, y0 = contour.min(axis=0)
            x1, y1 = contour.max(axis=0) + 1
            contour = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        else:
            contour = contour + 0.5  # pixel centres -> continuous coordinates
        xy = np.clip(contour / [w, h], 0, 1)
        lines.append("0 " + " ".join(f"{v:.6f}" for v in xy.ravel()))
    return lines


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise NotADirectoryError(f"out_dir: '{out_dir}' exists and is not a folder")
        entries = [p for p in out_dir.iterdir()]
        if entries and not (out_dir / _MARKER).is_file():
            raise ValueError(
                f"out_dir: '{out_dir}' is not empty and was not written by masks_to_yolo_dataset; "
                "give an empty or new folder (nothing in it is deleted)"
            )
        for sub in ("images", "labels"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / "data.yaml").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _MARKER).write_text("written by medsamkit.prompters.masks_to_yolo_dataset\n")


def _write_split(
    samples: Iterable[Any], out_dir: Path, split: str, *, min_area: int, polygons: bool, progress: bool, name: str
) -> int:
    from tqdm.auto import tqdm

    from ..data import atomic_write_text, write_image

    seen: set[str] = set()
    lines_for = _polygon_lines if polygons else _label_lines
    for index, item in enumerate(tqdm(samples, desc=f"yolo dataset ({split})", disable=not progress, unit="image")):
        stem, image, mask = _load_pair(item, index, name=name)
        if stem in seen:
            raise ValueError(f"{name}: duplicate stem '{stem}'")
        seen.add(stem)
        write_image(out_dir / "images" / split / f"{stem}.png", to_uint8_image(image, name=f"{name}[{index}] image"))
        lines = lines_for(as_mask(mask, name=f"{name}[{index}] mask"), min_area=min_area)
        atomic_write_text(out_dir / "labels" / split / f"{stem}.txt", "".join(f"{line}\n" for line in lines))
    if not seen:
        raise ValueError(f"{name}: expected at least one image/mask pair, got none")
    return len(seen)


def masks_to_yolo_dataset(
    samples: Iterable[Any],
    out_dir: str | os.PathLike[str],
    *,
    min_area: int = 16,
    val_samples: Iterable[Any] | None = None,
    polygons: bool = False,
    progress: bool = False,
) -> Path:
    """Write image/mask pairs as an Ultralytics (YOLO format) detection dataset.

    Layout::

        out_dir/data.yaml
        out_dir/images/train/<stem>.png    out_dir/labels/train/<stem>.txt
        out_dir/images/val/<stem>.png      out_dir/labels/val/<stem>.txt   (with val_samples)

    Images are written as 8-bit PNG (see :func:`to_uint8_image`: uint8 kept,
    16-bit and float min-max scaled, gray kept gray, alpha dropped). Each label file
    has one line ``0 cx cy w h`` (class 0, normalised centre and size) per
    8-connected mask component of at least ``min_area`` pixels (the largest
    component is always kept). An empty mask gives an empty label file: a
    background image, which teaches the detector where *not* to fire.

    Args:
        samples: Training items: :class:`~medsamkit.data.Sample` (e.g. a
            :class:`~medsamkit.data.MaskFolder`) or ``(image, mask)`` pairs (named
            ``000000``, ``000001``, ...).
        out_dir: Dataset folder. Must be new, empty, or a previous output of this
            function (whose ``images``/``labels`` are then replaced).
        min_area: Smallest component, in pixels, that gets a box.
        val_samples: Validation items; without them ``val`` points at the training images.
        polygons: Write segmentation labels (one outer-contour polygon per
            component) instead of boxes, for YOLOv8-seg (:class:`YOLOSegmenter`).
        progress: Show a progress bar.

    Returns:
        The path of ``data.yaml`` (pass it to Ultralytics as ``data=``).

    Raises:
        ValueError: If there are no samples, stems repeat, or ``out_dir`` holds other files.
    """
    from ..data import atomic_write_text

    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 0:
        raise ValueError(f"min_area: expected a non-negative int, got {min_area!r}")
    out_dir = Path(out_dir).expanduser().absolute()
    _prepare_out_dir(out_dir)
    kwargs: dict[str, Any] = {"min_area": int(min_area), "polygons": polygons, "progress": progress}
    _write_split(samples, out_dir, "train", name="samples", **kwargs)
    val = "images/train"
    if val_samples is not None:
        _write_split(val_samples, out_dir, "val", name="val_samples", **kwargs)
        val = "images/val"
    # JSON is valid YAML and quotes any path safely.
    data = {"path": str(out_dir), "train": "images/train", "val": val, "names": [CLASS_NAME]}
    path = out_dir / "data.yaml"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
