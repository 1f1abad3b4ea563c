"""Checks of the package metadata in ``pyproject.toml`` (extras, classifiers, dependencies)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
SRC = REPO_ROOT / "src" / "medsamkit"
TOOL_EXTRAS = {"all", "test", "docs", "dev"}  # the others enable features of the library


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requirements}


def _self_extras(requirements: list[str]) -> set[str]:
    extras: set[str] = set()
    for r in requirements:
        match = re.fullmatch(r"medsamkit\[([a-z0-9,-]+)\]", r)
        if match:
            extras.update(match.group(1).split(","))
    return extras


def test_all_extra_is_every_feature_extra():
    features = set(EXTRAS) - TOOL_EXTRAS
    assert _self_extras(EXTRAS["all"]) == features


def test_test_extra_is_the_feature_extras_plus_pytest():
    assert _self_extras(EXTRAS["test"]) == set(EXTRAS) - TOOL_EXTRAS
    assert "pytest" in _names(EXTRAS["test"])


def test_dev_extra_has_tests_docs_and_lint():
    assert _self_extras(EXTRAS["dev"]) == {"test", "docs"}
    assert "ruff" in _names(EXTRAS["dev"])
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= _names(EXTRAS["docs"])


def test_self_referenced_extras_exist():
    for name, requirements in EXTRAS.items():
        assert _self_extras(requirements) <= set(EXTRAS), name


def test_openvino_is_optional_not_both():
    """The code treats OpenVINO as optional (``openvino_available()``, a PyTorch fallback): an extra, not a dependency."""
    assert "openvino" not in _names(PROJECT["dependencies"])
    assert "openvino" in _names(EXTRAS["openvino"])
    assert "openvino_available" in (SRC / "segmenters" / "_fast.py").read_text()


def test_torchvision_is_declared_where_it_is_imported():
    assert "from torchvision" in (SRC / "prompters" / "_cam.py").read_text()
    assert "torchvision" in _names(EXTRAS["cam"])
    assert "torchvision" in _names(EXTRAS["sam"])  # segment-anything imports it without declaring it
    assert "torchvision" not in _names(PROJECT["dependencies"])


def test_python_versions_and_licence():
    low = re.fullmatch(r">=3\.(\d+)", PROJECT["requires-python"])
    assert low is not None
    versions = {
        int(m) for m in re.findall(r"Programming Language :: Python :: 3\.(\d+)$", "\n".join(PROJECT["classifiers"]), re.M)
    }
    assert versions and min(versions) == int(low.group(1))
    assert versions == set(range(min(versions), max(versions) + 1))
    assert PROJECT["license"] == "Apache-2.0" and (REPO_ROOT / "LICENSE").is_file()
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639: the expression replaces them


def test_the_cli_names_extras_that_exist():
    from medsamkit.cli._errors import OPTIONAL_PACKAGES

    for module, extra in OPTIONAL_PACKAGES.items():
        assert extra in EXTRAS, module
        renamed = {"pytorch_grad_cam": "grad-cam", "ultralytics": "ultralytics-opencv-headless"}
        distribution = renamed.get(module, module.replace("_", "-").lower())
        assert distribution in _names(EXTRAS[extra]), module
