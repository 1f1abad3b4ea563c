"""Ultralytics, offline: its settings in a folder medsamkit owns, no download, telemetry or update check.

Before ``ultralytics`` is first imported, :func:`configure_ultralytics_offline` points
its settings directory at a medsamkit folder and switches it to offline mode;
:func:`offline_guard` switches off, while training or predicting, every Ultralytics
call that could still reach the network; :func:`preserve_global_state` undoes the
global RNG and determinism changes its training makes.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "configure_ultralytics_offline",
    "default_ultralytics_dir",
    "font_source",
    "import_ultralytics",
    "offline_guard",
    "preserve_global_state",
]

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_configured_dir: Path | None = None


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


def font_source() -> Path:
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
    source = font_source()
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


def import_ultralytics() -> Any:
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
                "YOLOBoxPrompter needs Ultralytics: pip install 'medsamkit[yolo]' (or pip install ultralytics-opencv-headless)"
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
    if _configured_dir is None:  # pragma: no cover - import_ultralytics configures first
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
def offline_guard(*, verbose: bool = True) -> Iterator[None]:
    """While training or predicting: no integration callbacks, no font download, no pip check.

    These are the Ultralytics calls that can reach the network; with
    ``YOLO_OFFLINE=1`` they are already inert, the guard also covers an Ultralytics
    imported before medsamkit could configure it. ``verbose=False`` quiets its logger.
    """
    import logging

    import ultralytics.data.utils as data_utils
    from ultralytics.utils import callbacks, checks

    font = font_source()
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
def preserve_global_state() -> Iterator[None]:
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
