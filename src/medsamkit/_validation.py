"""Input validators that say what was expected and what came.

Every public entry point validates user input here instead of using ``assert``, so
that bad input fails early with an exception naming the parameter.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["as_image", "as_mask", "check_probability", "describe"]

_CHANNELS = (1, 3, 4)


def describe(value: Any) -> str:
    """Short description of a value for error messages (type, shape and dtype)."""
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def as_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Validate an image and return it as a numpy array (no copy when possible).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array with ``C`` in 1, 3 or 4 (RGBA: the
            alpha channel is ignored later). Any of bool, unsigned or signed integer
            or floating dtypes; floating images must be finite.
        name: Parameter name used in error messages.

    Returns:
        The image as an ``np.ndarray``.

    Raises:
        TypeError: If ``image`` is not array-like or has a non-numeric dtype.
        ValueError: If the shape is not ``(H, W)`` / ``(H, W, C)``, the image is
            smaller than 2x2 pixels, or it holds NaN or infinite values.
    """
    if image is None:
        raise TypeError(f"{name}: expected a numpy array of shape (H, W) or (H, W, C), got None")
    if isinstance(image, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{name}: expected a numpy array of shape (H, W) or (H, W, C), got the path {image!r}; "
            "read the file first: medsamkit.read_image(path)"
        )
    try:
        array = np.asarray(image)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name}: expected an array-like image, got {describe(image)}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric dtype (uint8, uint16, int, float or bool), got {array.dtype}")
    if np.iscomplexobj(array):
        raise TypeError(f"{name}: expected a real-valued image, got complex dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] not in _CHANNELS:
        raise ValueError(
            f"{name}: expected shape (H, W) or (H, W, C) with C in {_CHANNELS} (channels last), "
            f"got shape {array.shape}"
            + (
                "; a 3D volume (D, H, W) is segmented slice by slice with medsamkit.volumes.segment_volume"
                if array.shape[2] > 4
                else ""
            )
        )
    if array.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape (H, W) or (H, W, C), got shape {array.shape}")
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"{name}: expected at least 2x2 pixels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinite pixels")
    return array


def as_mask(mask: Any, *, name: str = "target", size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Validate a binary mask and return it as a boolean ``(H, W)`` array.

    Any non-zero value is foreground. ``(H, W, 1)`` is accepted and squeezed.

    Args:
        mask: Mask array, ``(H, W)`` or ``(H, W, 1)``.
        name: Parameter name used in error messages.
        size_hw: If given, the ``(height, width)`` the mask must have (the image's).

    Returns:
        Boolean array of shape ``(H, W)``.

    Raises:
        TypeError: If the mask is not numeric.
        ValueError: If the shape is wrong, does not match ``size_hw``, or holds NaN.
    """
    if mask is None:
        raise TypeError(f"{name}: expected a mask array of shape (H, W), got None")
    array = np.asarray(mask)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric or bool mask, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected shape (H, W), got shape {array.shape}")
    if size_hw is not None and tuple(array.shape) != tuple(size_hw):
        raise ValueError(f"{name}: expected shape {tuple(size_hw)} (the image's height and width), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f"{name}: expected a binary mask, got NaN values")
    return array.astype(bool, copy=False)


def check_probability(value: Any, *, name: str) -> float:
    """Validate a number in ``[0, 1]`` (a threshold or fraction) and return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number in [0, 1], got {describe(value)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return value
