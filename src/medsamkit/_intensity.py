"""Intensity steps: callables ``image -> uint8 image`` run by a pipeline before prompting.

Medical images keep their physical values when read (Hounsfield units for CT,
arbitrary scanner units for MR). A SAM-family segmenter min-max scales whatever it
gets, so a CT slice from -1024 HU (air) to 3071 HU (metal) becomes a grey image with
all soft tissue in a few grey levels. An intensity step chooses what the model sees:

* :class:`Window` ``(level, width)``: CT windowing, with named presets.
* :class:`PercentileClip`: clip to per-image percentiles (MR, ultrasound, anything
  without calibrated units).
* :class:`CLAHE`: contrast-limited adaptive histogram equalisation (OpenCV), as in
  the CXLSeg chest X-ray paper.

Each step returns a ``uint8`` image of the same ``(H, W)`` / ``(H, W, C)`` shape and is
saved in the pipeline config (``Pipeline(..., preprocess=[Window.preset("abdomen")])``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._registry import register_component
from ._validation import as_image, describe

__all__ = ["CLAHE", "WINDOW_PRESETS", "PercentileClip", "Window", "parse_window"]

#: CT window presets ``name -> (level, width)`` in HU.
#:
#: * ``abdomen`` / ``soft-tissue``: L40 / W400, the window of MedSAM's CT pre-processing
#:   (``pre_CT_MR.py`` in github.com/bowang-lab/MedSAM: ``WINDOW_LEVEL = 40``,
#:   ``WINDOW_WIDTH = 400``) and within Radiopaedia's soft-tissue range (W350-400, L20-60).
#: * ``liver`` L30 / W150, ``lung`` L-600 / W1500, ``bone`` L400 / W1800,
#:   ``brain`` L40 / W80, ``mediastinum`` L50 / W350: Radiopaedia, "Windowing (CT)"
#:   (radiopaedia.org/articles/windowing-ct), the typical values listed there.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "soft-tissue": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}


def _number(value: Any, *, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _to_uint8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map ``[lo, hi]`` to ``[0, 255]``, clipping outside, rounding to uint8."""
    scaled = (image.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@register_component("preprocess", "window")
class Window:
    """CT windowing: values in ``[level - width/2, level + width/2]`` map to 0..255, others clip.

    Args:
        level: Window centre (HU for CT).
        width: Window width (> 0).

    Example:
        >>> Window(40, 400)  # abdomen / soft tissue
        >>> Window.preset("lung")  # L-600 / W1500, see WINDOW_PRESETS for the sources
    """

    name = "window"

    def __init__(self, level: float, width: float) -> None:
        self.level = _number(level, name="level")
        self.width = _number(width, name="width")
        if self.width <= 0:
            raise ValueError(f"width: expected a positive window width, got {self.width}")

    @classmethod
    def preset(cls, name: str) -> Window:
        """A named window from :data:`WINDOW_PRESETS` (``abdomen``, ``soft-tissue``, ``liver``, ``lung``, ``bone``, ``brain``, ``mediastinum``)."""
        if name not in WINDOW_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(WINDOW_PRESETS)}, got {name!r}")
        return cls(*WINDOW_PRESETS[name])

    def __repr__(self) -> str:
        return f"Window(level={self.level:g}, width={self.width:g})"

    def params(self) -> dict[str, Any]:
        return {"level": self.level, "width": self.width}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = as_image(image)
        return _to_uint8(image, self.level - self.width / 2, self.level + self.width / 2)


def parse_window(text: str) -> Window:
    """A :class:`Window` from a preset name (``"abdomen"``) or ``"LEVEL,WIDTH"`` (``"40,400"``)."""
    if not isinstance(text, str):
        raise TypeError(f"window: expected a preset name or 'LEVEL,WIDTH', got {describe(text)}")
    if text in WINDOW_PRESETS:
        return Window.preset(text)
    parts = text.split(",")
    if len(parts) == 2:
        try:
            level, width = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            return Window(level, width)
    raise ValueError(
        f"window: expected a preset ({', '.join(sorted(WINDOW_PRESETS))}) or 'LEVEL,WIDTH' such as '40,400', got {text!r}"
    )


@register_component("preprocess", "percentile-clip")
class PercentileClip:
    """Clip each image to its own ``[low, high]`` percentiles, then map that range to 0..255.

    For modalities without calibrated units (MR, ultrasound): robust to a few very
    bright or dark voxels, unlike plain min-max scaling.

    Args:
        low: Lower percentile in ``[0, 100)``.
        high: Upper percentile in ``(low, 100]``.
    """

    name = "percentile-clip"

    def __init__(self, low: float = 0.5, high: float = 99.5) -> None:
        self.low = _number(low, name="low")
        self.high = _number(high, name="high")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError(f"low, high: expected 0 <= low < high <= 100, got low={self.low}, high={self.high}")

    def __repr__(self) -> str:
        return f"PercentileClip(low={self.low:g}, high={self.high:g})"

    def params(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = as_image(image)
        lo, hi = (float(v) for v in np.percentile(image, [self.low, self.high]))
        return _to_uint8(image, lo, hi)


@register_component("preprocess", "clahe")
class CLAHE:
    """Contrast-limited adaptive histogram equalisation (OpenCV ``createCLAHE``).

    Images that are not ``uint8`` are first min-max scaled to 0..255 (put a
    :class:`Window` or :class:`PercentileClip` before it for CT or MR); colour images
    are equalised on their lightness (L of Lab).

    Args:
        clip_limit: Contrast limit (OpenCV's ``clipLimit``, default 2.0).
        tile_grid_size: Tiles per side (OpenCV's ``tileGridSize``, default 8).
    """

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, tile_grid_size: int = 8) -> None:
        self.clip_limit = _number(clip_limit, name="clip_limit")
        if self.clip_limit <= 0:
            raise ValueError(f"clip_limit: expected a positive number, got {self.clip_limit}")
        if isinstance(tile_grid_size, bool) or not isinstance(tile_grid_size, (int, np.integer)) or tile_grid_size < 1:
            raise ValueError(f"tile_grid_size: expected a positive int, got {tile_grid_size!r}")
        self.tile_grid_size = int(tile_grid_size)

    def __repr__(self) -> str:
        return f"CLAHE(clip_limit={self.clip_limit:g}, tile_grid_size={self.tile_grid_size})"

    def params(self) -> dict[str, Any]:
        return {"clip_limit": self.clip_limit, "tile_grid_size": self.tile_grid_size}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        image = as_image(image)
        if image.dtype != np.uint8:
            image = _to_uint8(image, float(image.min()), float(image.max()))
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid_size,) * 2)
        if image.ndim == 2:
            return clahe.apply(np.ascontiguousarray(image))
        if image.shape[2] == 1:
            return clahe.apply(np.ascontiguousarray(image[..., 0]))[..., None]
        rgb = np.ascontiguousarray(image[..., :3])
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        return np.concatenate([out, image[..., 3:]], axis=2) if image.shape[2] == 4 else out


def needs_intensity_step(image: np.ndarray) -> bool:
    """Whether an image's values are physical or float (signed ints such as HU, floats), not display grey levels."""
    return image.dtype.kind in "fi"
