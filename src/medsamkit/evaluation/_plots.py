"""Pictures for the evaluation report: mask overlays and metric box plots.

Overlays (:func:`overlay_image`, :func:`overlay_panel`, :func:`save_overlay`) are drawn
with OpenCV on an RGB ``uint8`` copy of the image. Box plots
(:func:`save_metric_boxplot`, :func:`save_grouped_boxplot`) are drawn with matplotlib's
object-oriented API (``Figure`` + ``FigureCanvasAgg``): ``matplotlib.pyplot`` is never
imported, no GUI backend is touched and no global matplotlib state is changed.
Every file is written atomically (see :func:`medsamkit.data.atomic_write_bytes`).

Overlay legend (RGB colours, also the module constants):

=====================  ==================  =========================================
what                   colour              drawn as
=====================  ==================  =========================================
prediction             ``PRED_COLOR``      translucent fill + contour (amber)
reference (target)     ``TARGET_COLOR``    contour only (green)
prompt box             ``BOX_COLOR``       rectangle outline (cyan)
foreground point       ``FG_POINT_COLOR``  filled disc with a dark rim (light cyan)
background point       ``BG_POINT_COLOR``  filled disc with a dark rim (red)
=====================  ==================  =========================================

Line widths are ``max(1, round(max(H, W) / 400))`` pixels and point radii four times
that, so a 4000 px radiograph and a 256 px crop look alike once shown at screen size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np

from .._types import Prompts
from .._validation import as_image, as_mask, check_probability, describe
from ..data import atomic_write_bytes, write_image

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "BG_POINT_COLOR",
    "BOX_COLOR",
    "FG_POINT_COLOR",
    "PRED_COLOR",
    "TARGET_COLOR",
    "overlay_image",
    "overlay_panel",
    "plot_overlay",
    "save_grouped_boxplot",
    "save_metric_boxplot",
    "save_overlay",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Prediction: translucent fill and contour (amber).
PRED_COLOR: tuple[int, int, int] = (255, 176, 0)
#: Reference mask: contour only (green).
TARGET_COLOR: tuple[int, int, int] = (0, 220, 60)
#: Prompt boxes: rectangle outline (cyan).
BOX_COLOR: tuple[int, int, int] = (0, 200, 255)
#: Foreground prompt points: filled discs (light cyan).
FG_POINT_COLOR: tuple[int, int, int] = (120, 255, 255)
#: Background prompt points: filled discs (red).
BG_POINT_COLOR: tuple[int, int, int] = (255, 40, 40)

_RIM_COLOR = (20, 20, 20)
_STRIP_COLOR = (32, 32, 32)
_TEXT_COLOR = (240, 240, 240)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_MAX_PANEL_SIDE = 1024

# Box plot style (matplotlib colours).
_BOX_FACE = "#9ecae1"
_BOX_EDGE = "#2b5d7d"
_MEDIAN_COLOR = "#d95f02"
_POINT_COLOR = "#253494"
_DISTANCE_METRICS = ("hausdorff", "hd95")
_DPI = 110


# ---------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------


def _to_rgb_uint8(image: Any) -> np.ndarray:
    """Min-max scale any image to a new RGB ``uint8`` array (the input is not modified)."""
    array = as_image(image, name="image")
    if array.ndim == 3:
        array = array[..., 0] if array.shape[2] == 1 else array[..., :3]
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    lo, hi = array.min(), array.max()
    if array.dtype == np.uint8 and lo == 0 and hi == 255:
        scaled = array.copy()
    elif hi <= lo:  # constant image: nothing to stretch
        value = float(np.clip(float(lo), 0, 255)) if array.dtype == np.uint8 else 0.0
        scaled = np.full(array.shape, round(value), dtype=np.uint8)
    else:
        work = np.float64 if array.dtype in (np.float64, np.int64, np.uint64) else np.float32
        scaled_f = array.astype(work)
        scaled_f -= work(lo)
        scaled_f *= work(255.0 / (float(hi) - float(lo)))
        np.clip(scaled_f, 0, 255, out=scaled_f)
        scaled = np.rint(scaled_f).astype(np.uint8)
    if scaled.ndim == 2:
        scaled = cv2.cvtColor(scaled, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(scaled)


def _line_width(size_hw: tuple[int, int]) -> int:
    return max(1, round(max(size_hw) / 400))


def _check_prompts(prompts: Any) -> Prompts | None:
    if prompts is None or isinstance(prompts, Prompts):
        return prompts
    raise TypeError(f"prompts: expected a medsamkit.Prompts or None, got {describe(prompts)}")


def _contours(mask: np.ndarray) -> Sequence[np.ndarray]:
    # A fresh contiguous uint8 copy: OpenCV 3 modified its input here.
    found = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return found[-2]  # (contours, hierarchy) in OpenCV >= 4, 3 values in OpenCV 3


def _pixel(value: float, limit: int) -> int:
    # Clip far-away coordinates so OpenCV's int conversion cannot overflow; drawing
    # itself is clipped to the image by OpenCV.
    return int(round(min(max(float(value), -limit), 2 * limit)))


def _draw_prompts(canvas: np.ndarray, prompts: Prompts, width: int) -> None:
    h, w = canvas.shape[:2]
    limit = max(h, w) + 1
    if prompts.box_xyxy is not None:
        for x0, y0, x1, y1 in prompts.box_xyxy:
            cv2.rectangle(
                canvas,
                (_pixel(x0, limit), _pixel(y0, limit)),
                (_pixel(x1, limit), _pixel(y1, limit)),
                BOX_COLOR,
                width,
                cv2.LINE_8,
            )
    if prompts.points_xy is not None and prompts.points_xy.size:
        radius = 4 * width
        rim = max(1, width // 2)
        labels = prompts.point_labels
        assert labels is not None  # set by Prompts when points are given
        for (x, y), label in zip(prompts.points_xy.reshape(-1, 2), labels.reshape(-1)):
            centre = (_pixel(x, limit), _pixel(y, limit))
            colour = FG_POINT_COLOR if label == 1 else BG_POINT_COLOR
            cv2.circle(canvas, centre, radius + rim, _RIM_COLOR, -1, cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, colour, -1, cv2.LINE_AA)


def overlay_image(
    image: Any,
    *,
    pred: Any = None,
    target: Any = None,
    prompts: Prompts | None = None,
    alpha: float = 0.35,
) -> np.ndarray:
    """Draw a prediction, the reference mask and the prompts over an image.

    The image is min-max scaled to ``uint8`` per image (so a 16-bit radiograph or a
    float CT slice shows its full contrast); grayscale becomes RGB and an alpha
    channel is dropped. Then, in drawing order:

    - ``pred``: translucent fill (``alpha``) plus contour in :data:`PRED_COLOR` (amber);
    - ``target``: contour only in :data:`TARGET_COLOR` (green);
    - prompt boxes: rectangles in :data:`BOX_COLOR` (cyan);
    - prompt points: filled discs with a dark rim, :data:`FG_POINT_COLOR` (light cyan)
      for foreground, :data:`BG_POINT_COLOR` (red) for background.

    Lines are ``max(1, round(max(H, W) / 400))`` px wide, point radii four times that.

    Args:
        image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA image
            of any numeric or bool dtype.
        pred: ``(H, W)`` predicted mask (non-zero = foreground), or None.
        target: ``(H, W)`` reference mask (non-zero = foreground), or None.
        prompts: Prompts in image pixels (:class:`medsamkit.Prompts`), or None.
        alpha: Opacity of the prediction fill, in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` RGB ``uint8`` picture, a new array (inputs are not modified).

    Raises:
        TypeError: If ``image``, ``pred`` or ``target`` is not numeric, ``prompts`` is
            not a :class:`~medsamkit.Prompts` or ``alpha`` is not a number.
        ValueError: If ``image`` has a bad shape, or ``pred`` / ``target`` does not have
            the image's height and width (the message names the parameter), or
            ``alpha`` is outside ``[0, 1]``.
    """
    return _draw_overlay(_to_rgb_uint8(image), pred=pred, target=target, prompts=prompts, alpha=alpha)


def plot_overlay(
    image: Any,
    pred: Any = None,
    *,
    target: Any = None,
    prompts: Prompts | None = None,
    ax: Any = None,
    title: str | None = None,
    alpha: float = 0.35,
) -> Any:
    """Show :func:`overlay_image` on a matplotlib ``Axes`` (for notebooks and scripts).

    Args:
        image, pred, target, prompts, alpha: As for :func:`overlay_image`.
        ax: The ``Axes`` to draw on; default: a new figure from ``matplotlib.pyplot``.
        title: Axes title.

    Returns:
        The ``Axes``.
    """
    picture = overlay_image(image, pred=pred, target=target, prompts=prompts, alpha=alpha)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 6 * picture.shape[0] / max(picture.shape[1], 1)))
    ax.imshow(picture)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def _draw_overlay(canvas: np.ndarray, *, pred: Any, target: Any, prompts: Any, alpha: float) -> np.ndarray:
    """Validate the overlay inputs and draw them in place on ``canvas`` (RGB uint8)."""
    size_hw = canvas.shape[:2]
    pred_mask = None if pred is None else as_mask(pred, name="pred", size_hw=size_hw)
    target_mask = None if target is None else as_mask(target, name="target", size_hw=size_hw)
    prompts = _check_prompts(prompts)
    alpha = check_probability(alpha, name="alpha")
    width = _line_width(size_hw)

    if pred_mask is not None and pred_mask.any():
        inside = canvas[pred_mask].astype(np.float32)
        inside *= 1.0 - alpha
        inside += alpha * np.asarray(PRED_COLOR, dtype=np.float32)
        canvas[pred_mask] = np.rint(inside).astype(np.uint8)
        cv2.drawContours(canvas, _contours(pred_mask), -1, PRED_COLOR, width, cv2.LINE_8)
    if target_mask is not None and target_mask.any():
        cv2.drawContours(canvas, _contours(target_mask), -1, TARGET_COLOR, width, cv2.LINE_8)
    if prompts is not None and prompts.n:
        _draw_prompts(canvas, prompts, width)
    return canvas


_ASCII_SUBSTITUTES = {"\u00b1": "+/-", "\u2013": "-", "\u2014": "-", "\u00b5": "u", "\u00d7": "x", "\t": " "}


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts only draw ASCII: spell a few common symbols out and make
    # any other character visible as '?'.
    return "".join(_ASCII_SUBSTITUTES.get(c, c if 32 <= ord(c) < 127 else "?") for c in text.replace("\n", "  "))


def _text_strip(width: int, title: str | None, legend: list[tuple[tuple[int, int, int], str]]) -> np.ndarray:
    """A dark strip ``(h, width, 3)`` with the title on the left and a colour legend on the right."""
    height = int(min(44, max(20, round(width * 0.028))))
    strip = np.empty((height, width, 3), dtype=np.uint8)
    strip[:] = _STRIP_COLOR
    (_, ref_h), _ = cv2.getTextSize("Ag", _FONT, 1.0, 1)
    scale = 0.5 * height / ref_h
    thickness = max(1, round(scale * 1.6))
    pad = max(3, height // 4)

    def text_width(text: str, s: float) -> int:
        return cv2.getTextSize(text, _FONT, s, thickness)[0][0]

    def baseline_y(s: float) -> int:
        (_, th), _ = cv2.getTextSize("Ag", _FONT, s, thickness)
        return (height + th) // 2 - max(1, th // 6)

    used = pad
    if title:
        text = _ascii(title)
        available = width - 2 * pad
        s = scale
        while text_width(text, s) > available and s > 0.3:
            s *= 0.9
        while len(text) > 1 and text_width(text, s) > available:
            text = text[:-2] + "~"  # truncated; '~' marks the cut
        cv2.putText(strip, text, (pad, baseline_y(s)), _FONT, s, _TEXT_COLOR, thickness, cv2.LINE_AA)
        used = pad + text_width(text, s) + 3 * pad

    # Legend, right-aligned, only if it fits next to the title.
    swatch = max(6, height // 2)
    items = [(colour, _ascii(label), text_width(_ascii(label), scale * 0.85)) for colour, label in legend]
    legend_width = sum(swatch + pad // 2 + tw + 2 * pad for _, _, tw in items)
    if items and used + legend_width <= width:
        x = width - legend_width
        y_text = baseline_y(scale * 0.85)
        top = (height - swatch) // 2
        for colour, label, tw in items:
            cv2.rectangle(strip, (x, top), (x + swatch - 1, top + swatch - 1), colour, -1)
            x += swatch + pad // 2
            cv2.putText(strip, label, (x, y_text), _FONT, scale * 0.85, _TEXT_COLOR, thickness, cv2.LINE_AA)
            x += tw + 2 * pad
    return strip


def overlay_panel(
    image: Any,
    *,
    pred: Any,
    target: Any = None,
    prompts: Prompts | None = None,
    title: str | None = None,
    max_side: int = _MAX_PANEL_SIDE,
) -> np.ndarray:
    """Side-by-side ``[image | overlay]`` panel with a text strip on top.

    The left half is the min-max scaled image, the right half :func:`overlay_image`.
    The strip above shows ``title`` (e.g. ``"CHNCXR_0601_1  Dice 0.971"``, ASCII; other
    characters are drawn as ``?``) and, when there is room, a colour legend.

    Args:
        image: ``(H, W)`` / ``(H, W, C)`` image, any numeric or bool dtype.
        pred: ``(H, W)`` predicted mask, or None.
        target: ``(H, W)`` reference mask, or None.
        prompts: Prompts to draw, or None.
        title: Text for the strip, or None.
        max_side: If the image's long side exceeds this, both halves are downscaled
            (``INTER_AREA``) so that it equals ``max_side``; keeps panels light to view.

    Returns:
        RGB ``uint8`` array of shape ``(strip + h, 2 * w, 3)`` where ``(h, w)`` is the
        (possibly downscaled) image size.

    Raises:
        TypeError, ValueError: As for :func:`overlay_image`; also for a non-str
            ``title`` or a ``max_side`` that is not a positive int.
    """
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title: expected a str or None, got {describe(title)}")
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ValueError(f"max_side: expected a positive int, got {max_side!r}")
    plain = _to_rgb_uint8(image)
    overlay = _draw_overlay(plain.copy(), pred=pred, target=target, prompts=prompts, alpha=0.35)
    h, w = plain.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))  # cv2 wants (width, height)
        plain = cv2.resize(plain, size, interpolation=cv2.INTER_AREA)
        overlay = cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
    body = np.concatenate([plain, overlay], axis=1)
    legend: list[tuple[tuple[int, int, int], str]] = []
    if pred is not None:
        legend.append((PRED_COLOR, "prediction"))
    if target is not None:
        legend.append((TARGET_COLOR, "reference"))
    if prompts is not None and prompts.n:
        has_boxes = prompts.box_xyxy is not None and len(prompts.box_xyxy) > 0
        legend.append((BOX_COLOR if has_boxes else FG_POINT_COLOR, "prompt"))
    strip = _text_strip(body.shape[1], title, legend)
    return np.ascontiguousarray(np.concatenate([strip, body], axis=0))


def save_overlay(
    path: PathLike,
    image: Any,
    *,
    pred: Any,
    target: Any = None,
    prompts: Prompts | None = None,
    title: str | None = None,
) -> Path:
    """Write the :func:`overlay_panel` of an image as a PNG, atomically.

    Args:
        path: Target ``.png`` file; parent directories are created.
        image, pred, target, prompts, title: As for :func:`overlay_panel`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError, ValueError: As for :func:`overlay_panel`, or if ``path`` does not
            end in ``.png``.
    """
    panel = overlay_panel(image, pred=pred, target=target, prompts=prompts, title=title)
    write_image(path, panel)
    return Path(path)


# ---------------------------------------------------------------------------------------
# Box plots
# ---------------------------------------------------------------------------------------


def _png_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"path: expected a str or os.PathLike file path, got {describe(path)}")
    result = Path(path)
    if result.suffix.lower() != ".png":
        raise ValueError(f"path: expected a path ending in '.png' (the plot is written as PNG), got '{result}'")
    return result


def _finite_values(values: Any, *, name: str) -> np.ndarray:
    """Numbers to a float64 array of the finite ones (None, NaN and +-inf are skipped)."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Iterable, np.ndarray)):
        raise TypeError(f"{name}: expected a sequence of numbers, got {describe(values)}")
    out = []
    for i, value in enumerate(np.asarray(values).ravel() if isinstance(values, np.ndarray) else values):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}[{i}]: expected a number or None, got {describe(value)}")
        out.append(float(value))
    array = np.asarray(out, dtype=np.float64)
    return array[np.isfinite(array)]


def _panel_widths(n_boxes: Sequence[int]) -> list[float]:
    return [max(2.0, 0.9 * n + 1.0) for n in n_boxes]


def _figure_size(n_boxes: Sequence[int], title: str | None) -> tuple[float, float]:
    """Size in inches of a figure of ``len(n_boxes)`` box-plot panels (``n_boxes[i]`` boxes in panel i)."""
    return sum(_panel_widths(n_boxes)) + 0.3, 4.2 if title else 3.9


def _new_figure(n_boxes: Sequence[int], title: str | None) -> tuple[Any, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_figure_size(n_boxes, title), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(n_boxes), squeeze=False, gridspec_kw={"width_ratios": _panel_widths(n_boxes)})[0]
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, list(axes)


def _plot(path: Path, n_boxes: Sequence[int], title: str | None, draw: Callable[[list[Axes]], None]) -> Path:
    """A figure of ``len(n_boxes)`` box-plot panels (:func:`_new_figure`), drawn by ``draw(axes)``
    and written to ``path`` as a PNG (:func:`_save_figure`)."""
    fig, axes = _new_figure(n_boxes, title)
    draw(axes)
    return _save_figure(fig, path)


def _draw_one_box(ax: Axes, x: float, values: np.ndarray, *, half_width: float) -> None:
    """Tukey box at ``x``: quartiles, median, whiskers to the furthest value within 1.5 IQR.

    Drawn from patches and lines rather than ``Axes.boxplot``, which reads every
    ``rcParams`` entry and thereby imports ``matplotlib.pyplot`` to resolve the backend.
    """
    from matplotlib.patches import Rectangle

    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    low = float(values[values >= q1 - 1.5 * iqr].min())
    high = float(values[values <= q3 + 1.5 * iqr].max())
    ax.add_patch(
        Rectangle(
            (x - half_width, q1),
            2 * half_width,
            q3 - q1,
            facecolor=_BOX_FACE,
            edgecolor=_BOX_EDGE,
            linewidth=1.2,
            alpha=0.9,
            zorder=2,
        )
    )
    ax.vlines([x, x], [low, q3], [q1, high], colors=_BOX_EDGE, linewidth=1.2, zorder=2)
    ax.hlines([low, high], x - half_width / 2, x + half_width / 2, colors=_BOX_EDGE, linewidth=1.2, zorder=2)
    ax.hlines([median], x - half_width, x + half_width, colors=_MEDIAN_COLOR, linewidth=2.2, zorder=4)


def _draw_boxes(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[np.ndarray],
    *,
    ylabel: str,
    unit_interval: bool,
    seed: int,
) -> None:
    """Box per label (empty ones leave their slot with ``n=0``), jittered points on top."""
    positions = np.arange(1, len(labels) + 1)
    filled = [i for i, v in enumerate(values) if v.size]
    for i in filled:
        _draw_one_box(ax, float(positions[i]), values[i], half_width=0.28)
    rng = np.random.default_rng(seed)
    for i in filled:
        v = values[i]
        size = 14 if v.size <= 100 else 6
        x = positions[i] + rng.uniform(-0.17, 0.17, size=v.size)
        ax.scatter(x, v, s=size, color=_POINT_COLOR, alpha=0.55, linewidths=0, zorder=3)
    for i, v in enumerate(values):
        if not v.size:
            ax.text(
                positions[i],
                0.5,
                "no data",
                ha="center",
                va="center",
                fontsize=8,
                color="0.45",
                rotation=90,
                transform=ax.get_xaxis_transform(),
            )
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{label}\nn={v.size}" for label, v in zip(labels, values)], fontsize=9)
    ax.set_xlim(0.4, len(labels) + 0.6)
    ax.set_ylabel(ylabel)
    if unit_interval:
        everything = np.concatenate([v for v in values if v.size] or [np.zeros(0)])
        lo = min(0.0, float(everything.min())) if everything.size else 0.0
        hi = max(1.0, float(everything.max())) if everything.size else 1.0
        pad = 0.03 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    elif not any(v.size for v in values):
        ax.set_ylim(0.0, 1.0)
    else:
        ax.set_ylim(bottom=0.0 if min(float(v.min()) for v in values if v.size) >= 0 else None)
    ax.grid(axis="y", color="0.88", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _save_figure(fig: Any, path: Path) -> Path:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_metric_boxplot(
    path: PathLike,
    rows: Iterable[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = ("dice", "iou", "precision", "recall", "f1"),
    title: str | None = None,
) -> Path:
    """Box plot of per-image metric values, one box per metric, written as a PNG.

    Overlap metrics share one axis fixed to ``0..1`` (widened if a value falls
    outside). Distance metrics (``"hd95"``, ``"hausdorff"``) go to a second subplot
    with its own axis labelled ``"HD95 (px or mm)"`` (``"distance (px or mm)"`` when
    ``"hausdorff"`` is there too); ``"hd95"`` is added there
    automatically when any row has an ``"hd95"`` key. Each image's value is drawn as a
    jittered point (seeded, so the file is reproducible) over the box; the tick labels
    give the number of values used (``"dice\\nn=58"``). None, NaN, infinite and missing
    values are skipped; a metric with no value keeps its slot, marked ``n=0``.

    Args:
        path: Target ``.png`` file; parent directories are created. Written atomically.
        rows: One mapping per image, ``{metric: value}`` (other keys are ignored).
        metrics: Metric names to plot, in order (a single str is one metric).
        title: Figure title, or None.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``rows`` is not a sequence of mappings, a value is neither a
            number nor None, or ``metrics`` is not a sequence of str.
        ValueError: If ``metrics`` is empty or ``path`` does not end in ``.png``.
    """
    target = _png_path(path)
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not isinstance(metrics, Iterable) or not all(isinstance(m, str) for m in metrics):
        raise TypeError(f"metrics: expected a sequence of metric names (str), got {describe(metrics)}")
    metrics = tuple(dict.fromkeys(metrics))
    if not metrics:
        raise ValueError("metrics: expected at least one metric name, got none")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title: expected a str or None, got {describe(title)}")
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise TypeError(f"rows: expected a sequence of mappings (one per image), got {describe(rows)}")
    rows = list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}]: expected a mapping of metric values, got {describe(row)}")

    overlap = [m for m in metrics if m not in _DISTANCE_METRICS]
    distance = [m for m in metrics if m in _DISTANCE_METRICS]
    if "hd95" not in distance and any("hd95" in row for row in rows):
        distance.append("hd95")

    def column(name: str) -> np.ndarray:
        return _finite_values([row.get(name) for row in rows], name=f"rows[...][{name!r}]")

    groups = [(names, [column(m) for m in names]) for names in (overlap, distance) if names]

    def draw(axes: list[Axes]) -> None:
        for ax, (names, values) in zip(axes, groups):
            is_distance = names is distance
            _draw_boxes(
                ax,
                names,
                values,
                ylabel=("HD95 (px or mm)" if names == ["hd95"] else "distance (px or mm)") if is_distance else "score",
                unit_interval=not is_distance,
                seed=0,
            )

    return _plot(target, [len(names) for names, _ in groups], title, draw)


def save_grouped_boxplot(
    path: PathLike,
    groups: Mapping[Any, Iterable[float | None]],
    *,
    ylabel: str = "Dice",
    title: str | None = None,
    xlabel: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Box plot with one box per group (e.g. Dice per box margin or per prompter), as a PNG.

    Same style as :func:`save_metric_boxplot`: jittered per-image points (seeded) over
    each box and ``n`` in the tick labels; None/NaN/inf values are skipped and an empty
    group keeps its slot marked ``n=0``.

    Args:
        path: Target ``.png`` file; parent directories are created. Written atomically.
        groups: ``{label: values}`` in display order; labels are shown with ``str()``
            (so ``{0: [...], 5: [...]}`` works for margins in px).
        ylabel: Y-axis label.
        title: Figure title, or None.
        xlabel: X-axis label (e.g. ``"box margin (px)"``), or None.
        ylim: Y-axis limits. By default ``0..1`` when every value lies in ``[0, 1]``
            (overlap scores), else automatic from 0.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If ``groups`` is not a mapping of number sequences.
        ValueError: If ``path`` does not end in ``.png``.
    """
    target = _png_path(path)
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups: expected a mapping {{label: values}}, got {describe(groups)}")
    for name, value in (("ylabel", ylabel), ("title", title), ("xlabel", xlabel)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name}: expected a str or None, got {describe(value)}")
    labels = [str(label) for label in groups]
    values = [_finite_values(v, name=f"groups[{label!r}]") for label, v in groups.items()]
    if ylim is not None:
        try:
            lo, hi = (float(x) for x in ylim)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ylim: expected (low, high) numbers, got {describe(ylim)}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"ylim: expected finite low < high, got {ylim!r}")

    def draw(axes: list[Axes]) -> None:
        (ax,) = axes
        if labels:
            in_unit = all(v.size == 0 or (v.min() >= 0.0 and v.max() <= 1.0) for v in values)
            _draw_boxes(ax, labels, values, ylabel=ylabel, unit_interval=in_unit, seed=0)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="0.45", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel)
        if ylim is not None:
            ax.set_ylim(lo, hi)

    return _plot(target, [max(1, len(labels))], title, draw)
