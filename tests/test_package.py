"""Tests for the lazy flat API of ``medsamkit`` (``__init__``)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medsamkit

PACKAGE_DIR = Path(medsamkit.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
HEAVY = ("torch", "cv2", "scipy", "pydantic")


def _module_exists(relative: str) -> bool:
    """Whether the module ``relative`` (e.g. ``._types`` or ``.prompters``) has a file in the package."""
    parts = relative.lstrip(".").split(".")
    base = PACKAGE_DIR.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter and return which heavy modules it imported."""
    script = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_DIR.parent), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_light():
    assert _heavy_modules_after("import medsamkit") == []


def test_light_names_do_not_import_heavy_dependencies():
    code = (
        "import medsamkit as m\n"
        "m.Prompts, m.SegmentationResult, m.Segmenter, m.PromptProvider\n"
        "m.OracleBoxPrompter, m.MeanMaskPointPrompter, m.FixedPrompter, m.mask_to_xyxy\n"
        "m.build_prompter, m.testing"
    )
    assert _heavy_modules_after(code) == []


def test_segmenter_class_access_does_not_import_torch():
    assert "torch" not in _heavy_modules_after("import medsamkit as m\nm.LiteMedSAM")


def test_pipeline_imports_pydantic_when_used():
    assert "pydantic" in _heavy_modules_after("import medsamkit as m\nm.Pipeline")


# Every name of the export table must resolve (a module that disappears fails here and in
# test_every_module_of_the_export_table_exists); the evaluation names are listed separately below.
_NOT_EVALUATION = sorted(name for name, module in medsamkit._EXPORTS.items() if module != ".evaluation")
_EVALUATION = sorted(name for name, module in medsamkit._EXPORTS.items() if module == ".evaluation")


@pytest.mark.parametrize("module", sorted(set(medsamkit._EXPORTS.values())))
def test_every_module_of_the_export_table_exists(module):
    assert _module_exists(module), f"medsamkit._EXPORTS names {module!r}, which has no file in {PACKAGE_DIR}"
    assert importlib.import_module(module, "medsamkit").__name__ == "medsamkit" + module


@pytest.mark.parametrize("name", _NOT_EVALUATION)
def test_exported_name_resolves(name):
    value = getattr(medsamkit, name)
    assert value is not None
    if hasattr(value, "__name__") and not isinstance(value, type(medsamkit)):
        assert value.__name__ == name
    # cached as a real module attribute after the first access
    assert vars(medsamkit)[name] is value
    assert name in medsamkit.__all__


@pytest.mark.parametrize("name", _EVALUATION or ["evaluate", "EvaluationReport"])
def test_evaluation_names_resolve(name):
    assert name in medsamkit.__all__
    value = getattr(medsamkit, name)
    assert getattr(value, "__name__", name) == name


@pytest.mark.parametrize("name", ["metrics", "testing"])
def test_submodules_in_all(name):
    assert name in medsamkit.__all__
    assert getattr(medsamkit, name).__name__ == f"medsamkit.{name}"


def test_exports_include_the_core_api():
    for name in (
        "Prompts",
        "Pipeline",
        "PipelineConfig",
        "OracleBoxPrompter",
        "PerturbedBoxPrompter",
        "MeanMaskPointPrompter",
        "FixedPrompter",
        "KeepLargestComponents",
        "RemoveSmallComponents",
        "FillHoles",
        "load_segmenter",
        "build_prompter",
        "evaluate",
        "EvaluationReport",
    ):
        assert name in medsamkit.__all__


def test_all_is_sorted_unique_and_is_dir():
    assert medsamkit.__all__ == sorted(set(medsamkit.__all__))
    assert dir(medsamkit) == medsamkit.__all__
    assert "__version__" in medsamkit.__all__


def test_version_matches_pyproject():
    match = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match is not None
    assert medsamkit.__version__ == match.group(1)


def test_unknown_attribute():
    with pytest.raises(AttributeError, match=r"module 'medsamkit' has no attribute 'NoSuchThing'"):
        medsamkit.NoSuchThing  # noqa: B018


def test_type_checking_imports_match_exports():
    """The TYPE_CHECKING imports (for IDEs and type checkers) list exactly the lazy exports."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING")
    imported: dict[str, str] = {}
    for node in ast.walk(block):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = "." * node.level + (node.module or "")
    expected = {**medsamkit._EXPORTS, "metrics": ".", "testing": "."}
    assert imported == expected


def test_core_modules_exist():
    """The filter above must not hide a missing core module."""
    for module in ("._types", "._protocols", "._pipeline", "._postprocess", "._registry", "._geometry", ".prompters"):
        assert _module_exists(module), module
    assert set(_NOT_EVALUATION) >= {
        name for name, mod in medsamkit._EXPORTS.items() if mod in ("._types", "._pipeline", ".prompters")
    }
