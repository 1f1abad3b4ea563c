"""Boxes from a YOLOv8 detector trained on a few image/mask pairs (paper 000).

A small Ultralytics detector learns where the structure is from ~100 labelled
images; its boxes then prompt a SAM-family segmenter. Everything runs offline:
before ``ultralytics`` is first imported, :func:`configure_ultralytics_offline`
points its settings directory at a folder medsamkit owns and switches it to
offline mode, and training and prediction run with every download, update check,
telemetry and integration callback disabled.

Ultralytics is an optional dependency: ``pip install medsamkit[yolo]`` (which
installs ``ultralytics-opencv-headless``, the variant without GUI OpenCV).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._geometry import component_boxes_xyxy
from .._registry import register_component
from .._types import ImageEncoding, PromptMasks, Prompts
from .._validation import as_image, as_mask, check_probability, describe

__all__ = [
    "YOLOBoxPrompter",
    "YOLOSegmenter",
    "configure_ultralytics_offline",
    "masks_to_yolo_dataset",
    "to_uint8_image",
]

#: The single class every dataset written here uses.
CLASS_NAME = "foreground"
_MARKER = ".medsamkit-yolo-dataset"
_FORMAT = "medsamkit.YOLOBoxPrompter"
_SEG_FORMAT = "medsamkit.YOLOSegmenter"
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
# Arguments medsamkit sets itself for training (offline guarantees and bookkeeping).
_RESERVED_TRAIN_ARGS = frozenset(
    {"data", "model", "pretrained", "amp", "plots", "project", "name", "exist_ok", "epochs", "imgsz", "batch",
     "seed", "deterministic", "device", "verbose", "resume", "save", "val", "task", "mode"}
)

_configured_dir: Path | None = None


# ---------------------------------------------------------------------------------------
# Offline Ultralytics
# ---------------------------------------------------------------------------------------


def default_ultralytics_dir() -> Path:
    """The folder medsamkit gives Ultralytics as ``YOLO_CONFIG_DIR``.

    ``$MEDSAMKIT_HOME/ultralytics`` if ``MEDSAMKIT_HOME`` is set, else
    ``$XDG_CACHE_HOME/medsamkit/ultralytics`` (default ``~/.cache/medsamkit/ultralytics``).
    Ultralytics keeps its ``settings.json`` (and the fonts medsamkit provides) in
    the ``Ultralytics`` subfolder.
    """
    home = os.environ.get("MEDSAMKIT_HOME")
    if home:
        return Path(home).expanduser() / "ultralytics"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "medsamkit" / "ultralytics"


def _font_source() -> Path:
    """matplotlib's bundled DejaVuSans.ttf (matplotlib is a medsamkit dependency)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _provide_fonts(settings_dir: Path) -> None:
    """Put the fonts Ultralytics would download (Arial*.ttf) into its settings folder.

    Ultralytics' ``check_font`` looks there first and downloads otherwise; it is
    called by every dataset check, so without a local file training goes online.
    DejaVuSans only labels plots, which medsamkit switches off anyway.
    """
    settings_dir.mkdir(parents=True, exist_ok=True)
    source = _font_source()
    for name in _FONT_NAMES:
        target = settings_dir / name
        if not target.is_file() and source.is_file():
            from ..data import atomic_write_bytes

            atomic_write_bytes(target, source.read_bytes())


def configure_ultralytics_offline(config_dir: str | os.PathLike[str] | None = None) -> Path:
    """Configure Ultralytics to stay offline and keep its files in a medsamkit folder.

    Sets, for this process, ``YOLO_CONFIG_DIR`` (``config_dir``; else a
    ``YOLO_CONFIG_DIR`` you set yourself; else :func:`default_ultralytics_dir`),
    ``YOLO_OFFLINE=1`` (no online check, so no telemetry, update checks or
    auto-installs) and ``YOLO_AUTOINSTALL=False``, and copies a font where
    Ultralytics' ``check_font`` would otherwise download ``Arial.ttf``.

    Ultralytics reads these variables once, at its first import. medsamkit calls
    this function before it imports ``ultralytics``; call it yourself first if
    your own code imports ``ultralytics`` before medsamkit does. If Ultralytics
    was already imported elsewhere a :class:`RuntimeWarning` says so; medsamkit's
    call-time guards (no fonts download, no integrations, no update check, no AMP
    check, plots off) still apply during ``fit`` and prediction.

    Args:
        config_dir: Folder for Ultralytics' settings (``<config_dir>/Ultralytics``).

    Returns:
        The folder used as ``YOLO_CONFIG_DIR``.
    """
    global _configured_dir
    if config_dir is not None:
        base = Path(config_dir).expanduser()
    elif os.environ.get("YOLO_CONFIG_DIR"):
        base = Path(os.environ["YOLO_CONFIG_DIR"]).expanduser()
    else:
        base = default_ultralytics_dir()
    base = base.absolute()
    os.environ["YOLO_CONFIG_DIR"] = str(base)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    _provide_fonts(base / "Ultralytics")
    _configured_dir = base
    if "ultralytics.utils" in sys.modules:
        utils = sys.modules["ultralytics.utils"]
        actual = Path(getattr(utils, "USER_CONFIG_DIR", ""))
        if actual != base / "Ultralytics" or getattr(utils, "ONLINE", False):
            warnings.warn(
                "ultralytics was imported before medsamkit could configure it: its settings stay in "
                f"'{actual}' and its online checks may run. Call "
                "medsamkit.prompters.configure_ultralytics_offline() before importing ultralytics.",
                RuntimeWarning,
                stacklevel=3,
            )
    return base


def _import_ultralytics() -> Any:
    """Configure (once), import Ultralytics, undo its global print/thread settings; return ``YOLO``."""
    first = "ultralytics" not in sys.modules
    if _configured_dir is None:
        configure_ultralytics_offline()
    if first:
        import cv2

        np_options = np.get_printoptions()
        cv2_threads = cv2.getNumThreads()
        try:
            import ultralytics  # noqa: F401
            from ultralytics.utils import SETTINGS
        except ImportError as exc:
            raise ImportError(
                "YOLOBoxPrompter needs Ultralytics: pip install 'medsamkit[yolo]' "
                "(or pip install ultralytics-opencv-headless)"
            ) from exc
        finally:
            # Importing ultralytics changes numpy's print format and OpenCV's thread count globally.
            np.set_printoptions(**np_options)
            cv2.setNumThreads(cv2_threads)
        _settle_settings(SETTINGS)
    from ultralytics import YOLO

    return YOLO


def _settle_settings(settings: Any) -> None:
    """Turn off sync, integrations and hub key in Ultralytics settings that medsamkit owns."""
    if _configured_dir is None:  # pragma: no cover - _import_ultralytics configures first
        return
    try:
        ours = Path(settings.file).resolve().is_relative_to(_configured_dir.resolve())
    except (AttributeError, OSError):  # pragma: no cover - unexpected settings object
        return
    if not ours:  # never rewrite the user's own Ultralytics settings
        return
    wanted: dict[str, Any] = {
        "sync": False,
        "api_key": "",
        "datasets_dir": str(_configured_dir / "datasets"),
        "weights_dir": str(_configured_dir / "weights"),
        "runs_dir": str(_configured_dir / "runs"),
    }
    for key in ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "vscode_msg", "openvino_msg"):
        wanted[key] = False
    wanted = {k: v for k, v in wanted.items() if k in getattr(settings, "defaults", wanted)}
    if any(settings.get(k) != v for k, v in wanted.items()):
        settings.update(wanted)


@contextlib.contextmanager
def _offline_guard(*, verbose: bool = True) -> Iterator[None]:
    """While training or predicting: no integration callbacks, no font download, no pip check.

    These are the Ultralytics calls that can reach the network; with
    ``YOLO_OFFLINE=1`` they are already inert, the guard also covers an Ultralytics
    imported before medsamkit could configure it. ``verbose=False`` quiets its logger.
    """
    import logging

    import ultralytics.data.utils as data_utils
    import ultralytics.utils.callbacks as callbacks
    import ultralytics.utils.checks as checks

    font = _font_source()
    patches: list[tuple[Any, str, Any]] = [
        (callbacks, "add_integration_callbacks", lambda instance: None),
        (data_utils, "check_font", lambda *args, **kwargs: font),
        (checks, "check_pip_update_available", lambda: False),
    ]
    plotting = sys.modules.get("ultralytics.utils.plotting")
    if plotting is not None:
        patches.append((plotting, "check_font", lambda *args, **kwargs: font))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    logger = logging.getLogger("ultralytics")
    level = logger.level
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        if not verbose:
            logger.setLevel(logging.WARNING)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        logger.setLevel(level)


@contextlib.contextmanager
def _preserve_global_state() -> Iterator[None]:
    """Restore RNG states and torch's determinism flags that Ultralytics' training changes."""
    import torch

    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    fill = getattr(getattr(torch.utils, "deterministic", None), "fill_uninitialized_memory", None)
    env = {k: os.environ.get(k) for k in ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")}
    try:
        yield
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2], flags[3]
        if fill is not None:
            torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------
# Images and datasets
# ---------------------------------------------------------------------------------------


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


def _to_bgr(image: np.ndarray) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------
# Box conversion
# ---------------------------------------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _result_boxes(
    result: Any, size_hw: tuple[int, int], *, conf: float, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one Ultralytics ``Results`` as medsamkit boxes.

    Ultralytics boxes are continuous ``[x0, x1)`` intervals in input pixels; the
    inclusive medsamkit box of pixels ``x0 .. x1 - 1`` (the inverse of the dataset
    labels), clipped to the image.

    Returns:
        ``(boxes (N, 4) float32, scores (N,) float32, order)`` sorted by decreasing
        confidence, ``N <= max_boxes``, all with confidence ``>= conf``; ``order``
        indexes the kept detections in ``result``.
    """
    h, w = size_hw
    boxes = getattr(result, "boxes", None)
    if boxes is None or len(_numpy(boxes.conf)) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    xyxy = _numpy(boxes.xyxy).reshape(-1, 4)
    scores = _numpy(boxes.conf).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= conf][:max_boxes]
    xyxy, scores = xyxy[order].astype(np.float64), scores[order]
    out = np.empty_like(xyxy)
    out[:, 0] = np.clip(xyxy[:, 0], 0, w - 1)
    out[:, 1] = np.clip(xyxy[:, 1], 0, h - 1)
    out[:, 2] = np.clip(np.maximum(xyxy[:, 2] - 1, xyxy[:, 0]), 0, w - 1)
    out[:, 3] = np.clip(np.maximum(xyxy[:, 3] - 1, xyxy[:, 1]), 0, h - 1)
    return out.astype(np.float32), scores.astype(np.float32), order.astype(np.int64)


# ---------------------------------------------------------------------------------------
# The prompter
# ---------------------------------------------------------------------------------------


def _check_positive_int(value: Any, *, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _read_weights(path: str | os.PathLike[str], *, name: str = "weights") -> tuple[Path, bytes]:
    path = Path(path).expanduser()
    if path.suffix.lower() != ".pt":
        raise ValueError(f"{name}: expected an Ultralytics checkpoint file ending in '.pt', got '{path}'")
    if not path.is_file():
        # Ultralytics would try to download a missing 'yolov8n.pt'; medsamkit never does.
        raise FileNotFoundError(
            f"{name}: checkpoint '{path}' not found (medsamkit never downloads weights; give a local .pt file)"
        )
    return path.absolute(), path.read_bytes()


class _YOLOModel:
    """Shared machinery: model YAML or weights, offline training, in-memory checkpoint, save/load."""

    _task = "detect"
    _format = _FORMAT
    _default_model = "yolov8n.yaml"

    requires_target = False
    uses_encoding = False
    state_suffix = ".npz"

    def __init__(
        self,
        *,
        model: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_boxes: int = 4,
        imgsz: int = 640,
        device: str = "cpu",
    ) -> None:
        model = self._default_model if model is None else model
        if not isinstance(model, str) or not model.lower().endswith((".yaml", ".yml")):
            raise ValueError(
                f"model: expected an Ultralytics model YAML such as {self._default_model!r}, got {model!r} "
                "(pass a .pt checkpoint as weights=)"
            )
        if not isinstance(device, str):
            raise TypeError(f"device: expected a str such as 'cpu' or 'cuda:0', got {describe(device)}")
        self.model = model
        self.conf = check_probability(conf, name="conf")
        self.iou = check_probability(iou, name="iou")
        self.max_boxes = _check_positive_int(max_boxes, name="max_boxes")
        self.imgsz = _check_positive_int(imgsz, name="imgsz", minimum=32)
        self.device = device
        self.weights: Path | None = None
        self._init_weights: Path | None = None
        self._init_checkpoint: bytes | None = None
        self._checkpoint: bytes | None = None
        self._yolo: Any = None
        self.train_info: dict[str, Any] = {}
        if weights is not None:
            self.weights, self._checkpoint = _read_weights(weights)
            self._init_weights, self._init_checkpoint = self.weights, self._checkpoint

    # -- description ---------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        """Whether there are weights to predict with (trained, loaded or given)."""
        return self._checkpoint is not None

    def __repr__(self) -> str:
        if self.train_info:
            state = f"trained {self.train_info.get('epochs')} epochs on {self.train_info.get('n_train')} images"
        elif self.fitted:
            state = f"weights={str(self.weights) if self.weights else '<in memory>'}"
        else:
            state = "not fitted"
        return f"{type(self).__name__}(model={self.model!r}, conf={self.conf}, imgsz={self.imgsz}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving).

        ``weights`` is the ``.pt`` file the model predicts with, when there is one on
        disk: the file given to the constructor, or the ``best.pt`` of a ``fit`` with
        a ``work_dir``; ``None`` for weights held only in memory (save them with :meth:`save`).
        """
        return {
            "model": self.model,
            "weights": None if self.weights is None else str(self.weights),
            "conf": self.conf,
            "iou": self.iou,
            "max_boxes": self.max_boxes,
            "imgsz": self.imgsz,
            "device": self.device,
        }

    # -- model ---------------------------------------------------------------------

    def _check_fitted(self) -> bytes:
        """The checkpoint bytes; RuntimeError when there are none yet."""
        if self._checkpoint is None:
            raise RuntimeError(
                f"{type(self).__name__} has no weights: call fit(samples), load(path) or pass weights=PATH"
            )
        return self._checkpoint

    def _load_yolo(self) -> Any:
        """The Ultralytics model for prediction, built from the in-memory checkpoint."""
        if self._yolo is None:
            checkpoint = self._check_fitted()
            yolo_cls = _import_ultralytics()
            with tempfile.TemporaryDirectory(prefix="medsamkit-yolo-") as tmp:
                path = Path(tmp) / "model.pt"
                path.write_bytes(checkpoint)
                with _offline_guard(verbose=False):
                    yolo = yolo_cls(str(path), task=self._task)
            if yolo.task != self._task:
                raise ValueError(f"weights: expected a YOLO '{self._task}' checkpoint, got a '{yolo.task}' model")
            self._yolo = yolo
        return self._yolo

    def fit(
        self,
        samples: Iterable[Any],
        *,
        val: Iterable[Any] | None = None,
        epochs: int = 100,
        imgsz: int | None = None,
        batch: int = 16,
        seed: int = 0,
        work_dir: str | os.PathLike[str] | None = None,
        min_area: int = 16,
        progress: bool = False,
        **train_args: Any,
    ) -> Any:
        """Train the detector on image/mask pairs, offline.

        The pairs are converted with :func:`masks_to_yolo_dataset`, then an
        Ultralytics model is trained from the model YAML with random initial weights
        (``pretrained=False``), or fine-tuned from the ``weights`` given to the
        constructor. Training is seeded and uses ``deterministic=True``; AMP and
        plots are off (both would download files); no integration (hub, MLflow,
        W&B, ...) runs. With ``val`` samples the checkpoint with the best
        validation fitness is kept, otherwise the last epoch's.

        Args:
            samples: :class:`~medsamkit.data.Sample` items (a
                :class:`~medsamkit.data.MaskFolder` split) or ``(image, mask)`` pairs.
            val: Validation items (recommended; used for checkpoint selection).
            epochs: Training epochs.
            imgsz: Training (and from then on prediction) image size; default ``self.imgsz``.
            batch: Batch size.
            seed: Random seed.
            work_dir: Folder for the dataset and the Ultralytics run (kept, with
                ``train/weights/best.pt``). Default: a temporary folder, deleted
                after training (the weights stay in memory; use :meth:`save`).
            min_area: Smallest mask component, in pixels, that becomes a training box.
            progress: Show Ultralytics' training log (default: quiet).
            **train_args: Further Ultralytics training arguments (``lr0``,
                ``patience``, ``workers``, augmentation settings such as ``fliplr``, ...).

        Returns:
            self.
        """
        epochs = _check_positive_int(epochs, name="epochs")
        batch = _check_positive_int(batch, name="batch")
        imgsz = self.imgsz if imgsz is None else _check_positive_int(imgsz, name="imgsz", minimum=32)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        reserved = sorted(set(train_args) & _RESERVED_TRAIN_ARGS)
        if reserved:
            raise ValueError(f"train_args: {reserved} are set by fit() itself; use its own arguments instead")
        yolo_cls = _import_ultralytics()
        temporary = work_dir is None
        root = Path(tempfile.mkdtemp(prefix="medsamkit-yolo-")) if work_dir is None else Path(work_dir).expanduser().absolute()
        try:
            data_yaml = masks_to_yolo_dataset(
                samples, root / "dataset", min_area=min_area, val_samples=val,
                polygons=self._task == "segment", progress=progress,
            )
            n_train = len(list((root / "dataset" / "labels" / "train").glob("*.txt")))
            n_val = len(list((root / "dataset" / "labels" / "val").glob("*.txt")))
            args: dict[str, Any] = {
                "workers": 0,
                "cache": False,
                "patience": max(epochs, 100),
                **train_args,
                "data": str(data_yaml),
                "epochs": epochs,
                "imgsz": imgsz,
                "batch": batch,
                "seed": int(seed),
                "deterministic": True,
                "device": self.device,
                "amp": False,  # the AMP check downloads yolo26n.pt
                "plots": False,  # plots need fonts (downloads) and time
                "val": n_val > 0,  # without a validation set: no per-epoch validation, keep the last epoch
                "project": str(root),
                "name": "train",
                "exist_ok": True,
                "verbose": progress,
            }
            start = time.perf_counter()
            with _preserve_global_state(), _offline_guard(verbose=progress):
                if self._init_checkpoint is not None:
                    init = root / "init.pt"
                    init.write_bytes(self._init_checkpoint)
                    yolo = yolo_cls(str(init), task=self._task)
                else:
                    yolo = yolo_cls(self.model, task=self._task)
                    args["pretrained"] = False
                yolo.train(**args)
                trainer = yolo.trainer
            seconds = time.perf_counter() - start
            best = trainer.best if Path(trainer.best).is_file() else trainer.last
            checkpoint = Path(best).read_bytes()
        finally:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
        import ultralytics

        self._checkpoint = checkpoint
        self.weights = None if temporary else Path(best).absolute()
        self.imgsz = imgsz
        self._yolo = None
        self.train_info = {
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": batch,
            "seed": int(seed),
            "n_train": n_train,
            "n_val": n_val,
            "seconds": round(seconds, 1),
            "ultralytics": ultralytics.__version__,
            "init_weights": None if self._init_weights is None else str(self._init_weights),
        }
        return self

    def _predict(self, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        image = as_image(image)
        yolo = self._load_yolo()
        with _offline_guard(verbose=False):
            results = yolo.predict(
                _to_bgr(image),
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_boxes,
                imgsz=self.imgsz,
                device=self.device,
                verbose=False,
                save=False,
                **({"retina_masks": True} if self._task == "segment" else {}),
            )
        return results[0], image.shape[:2]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detected boxes and their confidences, best first.

        Returns:
            ``(boxes (N, 4) float32 xyxy in input pixels, scores (N,) float32)``,
            ``N <= max_boxes``, every score ``>= conf``.
        """
        result, size_hw = self._predict(image)
        boxes, scores, _ = _result_boxes(result, size_hw, conf=self.conf, max_boxes=self.max_boxes)
        return boxes, scores

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the weights and parameters to one file, atomically.

        The file is an ``.npz`` archive holding the Ultralytics checkpoint
        (``best.pt``) bytes and a JSON of :meth:`params` and ``train_info``; any
        name works (``Pipeline.save`` uses ``prompter.npz``). Extract the checkpoint
        for Ultralytics with :meth:`export_weights`.
        """
        from ..data import atomic_write_bytes

        checkpoint = self._check_fitted()
        params = {**self.params(), "weights": None}
        meta = {"format": self._format, "params": params, "train_info": self.train_info}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            checkpoint=np.frombuffer(checkpoint, dtype=np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def export_weights(self, path: str | os.PathLike[str]) -> Path:
        """Write the Ultralytics checkpoint (``.pt``) itself, e.g. to use it with ``yolo predict``."""
        from ..data import atomic_write_bytes

        checkpoint = self._check_fitted()
        path = Path(path)
        atomic_write_bytes(path, checkpoint)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Any:
        """Load a prompter saved with :meth:`save`.

        Args:
            path: The saved file.
            **overrides: Parameters to change (``conf``, ``max_boxes``, ``device``, ...).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a saved {cls.__name__} file, got missing file {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode())
                checkpoint = data["checkpoint"].tobytes()
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"path: {path} is not a saved {cls.__name__} ({exc})") from exc
        if meta.get("format") != cls._format:
            raise ValueError(f"path: {path} holds a {meta.get('format')!r}, expected a saved {cls.__name__}")
        params = {k: v for k, v in meta["params"].items() if k != "weights"}
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(params)}")
        prompter = cls(**{**params, **overrides})
        prompter._checkpoint = checkpoint
        prompter.train_info = dict(meta.get("train_info") or {})
        return prompter


def build_yolo_box_prompter(*, weights: str | None = None, state: str | None = None, **params: Any) -> YOLOBoxPrompter:
    """Registry builder for ``"yolo-box"``: a saved prompter (``state``) or a checkpoint (``weights``).

    ``Pipeline.save`` stores a fitted prompter as ``state``; it wins over ``weights``
    (which then only documents where the weights came from). Other parameters
    override the saved ones.
    """
    if state is not None:
        return YOLOBoxPrompter.load(state, **params)
    if weights is None:
        raise ValueError(
            "weights: the 'yolo-box' prompter needs trained weights: weights=PATH to an Ultralytics .pt "
            "checkpoint, or state=PATH saved by YOLOBoxPrompter.save() (CLI: --prompter-state PATH)"
        )
    return YOLOBoxPrompter(weights=weights, **params)


@register_component("prompter", "yolo-box", build=build_yolo_box_prompter, fitted=True)
class YOLOBoxPrompter(_YOLOModel):
    """Boxes from a YOLO detector trained on a few image/mask pairs (paper 000).

    Train once with :meth:`fit` (about 100 labelled images are enough in paper
    000), then every call detects boxes in an image: at most ``max_boxes``, each
    with confidence ``>= conf``, best first, in input-image pixels. An image where
    nothing is detected gets :meth:`Prompts.empty` (the pipeline then returns an
    empty mask); that is not an error.

    Images of any dtype and channel count work: they are converted to 8 bits
    exactly as the training images were (:func:`to_uint8_image`).

    Args:
        model: Ultralytics model YAML to train from scratch (``yolov8n.yaml``,
            ``yolov8s.yaml``, ``yolo11n.yaml``, ... bundled with Ultralytics).
        weights: A local Ultralytics ``.pt`` checkpoint: predict with it directly
            (e.g. a ``best.pt`` trained with the ``yolo`` CLI), or fine-tune from it
            in :meth:`fit`. Never downloaded.
        conf: Minimum detection confidence, in ``[0, 1]``.
        iou: Non-maximum-suppression IoU threshold, in ``[0, 1]``.
        max_boxes: At most this many boxes per image (prompts).
        imgsz: Detector input size (long side); :meth:`fit` sets it to its training size.
        device: Torch device for training and prediction (``"cpu"``, ``"cuda:0"``).

    Example:
        >>> prompter = YOLOBoxPrompter().fit(folder.subset(train_stems), val=folder.subset(val_stems))
        >>> prompter.save("busi_yolo.npz")
        >>> pipe = Pipeline(YOLOBoxPrompter.load("busi_yolo.npz"), LiteMedSAM())
    """

    requires_target = False

    def __call__(
        self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None
    ) -> Prompts:
        """The detected boxes as prompts (``target`` is not read)."""
        boxes, _ = self.detect(image)
        if len(boxes) == 0:
            return Prompts.empty()
        return Prompts(box_xyxy=boxes)


class YOLOSegmenter(_YOLOModel):
    """The detector's own segmentation (YOLOv8-seg): the baseline SAM is compared with in paper 000.

    Trained like :class:`YOLOBoxPrompter` (:meth:`fit`, with polygon labels made
    from the masks), from ``yolov8n-seg.yaml`` by default. It is both a
    :class:`~medsamkit.PromptProvider` (its detected boxes) and a
    :class:`~medsamkit.Segmenter`: ``encode`` runs the model once and keeps the
    instance masks; ``decode`` returns, for each prompt box, the mask of the
    detected instance whose box overlaps it most (an empty mask if none does). So
    ``Pipeline(seg, seg)`` is the pure YOLOv8-seg baseline, evaluated with the same
    :func:`~medsamkit.evaluate` as ``Pipeline(seg, LiteMedSAM())`` or a box prompter.

    Args: as :class:`YOLOBoxPrompter`, with ``model="yolov8n-seg.yaml"``.
    """

    _task = "segment"
    _format = _SEG_FORMAT
    _default_model = "yolov8n-seg.yaml"

    requires_target = False

    @property
    def model_id(self) -> str:
        """Identifies the weights (a hash of the checkpoint) and the prediction settings."""
        import hashlib

        checkpoint = self._checkpoint
        cached = getattr(self, "_digest", None)
        if cached is None or cached[0] is not checkpoint:
            digest = hashlib.sha256(checkpoint).hexdigest()[:12] if checkpoint else "unfitted"
            self._digest = cached = (checkpoint, digest)
        return f"yolo-seg:{cached[1]}:{self.imgsz}:{self.conf}:{self.iou}:{self.max_boxes}"

    def __call__(
        self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None
    ) -> Prompts:
        """The detected boxes as prompts (``target`` is not read)."""
        boxes, _ = self.detect(image)
        return Prompts.empty() if len(boxes) == 0 else Prompts(box_xyxy=boxes)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances: ``(boxes (N, 4), scores (N,), masks (N, H, W) bool)``, best first."""
        result, size_hw = self._predict(image)
        boxes, scores, order = _result_boxes(result, size_hw, conf=self.conf, max_boxes=self.max_boxes)
        masks = np.zeros((len(boxes), *size_hw), dtype=bool)
        if len(boxes) and getattr(result, "masks", None) is not None:
            data = _numpy(result.masks.data)[order]  # retina_masks: at the input image's size
            masks[:] = data > 0.5
        return boxes, scores, masks

    def encode(self, image: np.ndarray) -> Any:
        """Run the model once; the encoding keeps boxes, scores and instance masks."""
        from .._types import ImageEncoding

        image = as_image(image)
        boxes, scores, masks = self.segment(image)
        return ImageEncoding(
            features={"boxes": boxes, "scores": scores, "masks": masks},
            size_hw=tuple(image.shape[:2]),
            input_size_hw=tuple(image.shape[:2]),
            model_id=self.model_id,
        )

    def decode(self, encoding: Any, prompts: Prompts) -> PromptMasks:
        """Per prompt box, the instance mask whose box overlaps it most (its confidence as score)."""
        if getattr(encoding, "model_id", None) != self.model_id:
            raise ValueError(f"encoding: expected an encoding made by {self.model_id!r}")
        if prompts.box_xyxy is None:
            raise ValueError("prompts: YOLOSegmenter needs box prompts (points are not supported)")
        h, w = encoding.size_hw
        found = encoding.features
        probabilities = np.zeros((prompts.n, h, w), dtype=np.float32)
        scores = np.zeros(prompts.n, dtype=np.float32)
        for i, box in enumerate(prompts.box_xyxy):
            if len(found["boxes"]) == 0:
                break
            overlaps = _box_iou(box, found["boxes"])
            j = int(np.argmax(overlaps))
            if overlaps[j] > 0:
                probabilities[i] = found["masks"][j].astype(np.float32)
                scores[i] = found["scores"][j]
        return PromptMasks(probabilities=probabilities, scores=scores)


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one inclusive-pixel box with each of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / np.maximum(area + areas - inter, 1e-9)
